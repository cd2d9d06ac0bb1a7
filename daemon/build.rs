//! The release `weftd`'s link, for a smaller resident set:
//!
//! - the functions a running node executes placed first and together, in the order
//!   `weftd.order` lists them (lld's `--symbol-ordering-file`; the list is made by
//!   `scripts/order-file.sh`). On Linux 6.18 a page fault in a binary maps the whole cached
//!   folio around it, 64 KiB and more, so a daemon whose hot code is scattered over a 13 MB
//!   text segment keeps most of it resident: 7.5 MB before, about 3 MB with the order (README,
//!   Benchmarks). Names the list holds that the binary lacks (after a code, dependency or
//!   compiler change) are skipped: a stale list costs memory, never correctness.
//! - relative relocations packed (`-z pack-relative-relocs`, DT_RELR, glibc 2.36 and later):
//!   12 KB for the dynamic loader to read at start instead of 0.92 MB of `.rela.dyn`.
//!
//! Only for release builds on x86_64-unknown-linux-gnu, where rustc links with lld by default
//! (Rust 1.90 and later). `WEFT_PLAIN_LINK=1` turns both off (for a linker other than lld, or a
//! glibc older than 2.36 where the binary runs).

fn main() {
    println!("cargo:rerun-if-changed=weftd.order");
    println!("cargo:rerun-if-env-changed=WEFT_PLAIN_LINK");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let x86_64_gnu = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !release || !x86_64_gnu || std::env::var_os("WEFT_PLAIN_LINK").is_some() {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,--symbol-ordering-file={dir}/weftd.order");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,-z,pack-relative-relocs");
}
