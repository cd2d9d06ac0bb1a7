//! Links the release `weftd` with the functions a running node executes placed first and
//! together, in the order `weftd.order` lists them (lld's `--symbol-ordering-file`; the list is
//! made by `scripts/order-file.sh`).
//!
//! Why: on Linux 6.18 a page fault in a binary maps the whole cached folio around it, 64 KiB
//! and more, so a daemon whose hot code is scattered over a 13 MB text segment keeps most of
//! it resident. With the hot functions side by side, weftd's resident text fell from 7.7 to
//! about 3 MB (README, Benchmarks). Names the list holds that the binary lacks (after a
//! dependency or compiler change) are skipped; a stale list costs memory, never correctness.
//!
//! Only for release builds on x86_64-unknown-linux-gnu, where rustc links with lld by default
//! (Rust 1.90 and later); `WEFT_NO_ORDER_FILE=1` turns it off (for a linker other than lld).

fn main() {
    println!("cargo:rerun-if-changed=weftd.order");
    println!("cargo:rerun-if-env-changed=WEFT_NO_ORDER_FILE");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let x86_64_gnu = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !release || !x86_64_gnu || std::env::var_os("WEFT_NO_ORDER_FILE").is_some() {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,--symbol-ordering-file={dir}/weftd.order");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,-z,pack-relative-relocs");
}
