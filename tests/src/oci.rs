//! A busybox container image made on this machine, with no registry: Debian's `busybox-static`
//! (`/bin/busybox`, a static binary) and one symlink per applet, as one layer of an OCI image
//! layout tarball that `ctr images import` takes.
//!
//! The layout: `oci-layout`, `index.json` (one manifest, named by the `io.containerd.image.name`
//! annotation), and `blobs/sha256/` holding the uncompressed layer tar, the image config and the
//! manifest, each under its SHA-256. `tar` and `sha256sum` do the archiving and hashing.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::netns::run;

/// Debian's static busybox (package `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A content-addressed blob: `sha256:HEX` and its size in bytes.
struct Blob {
    digest: String,
    size: u64,
}

impl Blob {
    fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.size})
    }
}

/// Build the image `name` (e.g. `weft.test/busybox:w1a2b0`) under `work` (a directory of the
/// caller's, left for it to remove); returns the path of the image tarball.
pub fn busybox_image(work: &Path, name: &str) -> Result<PathBuf> {
    let problem = match std::fs::read(BUSYBOX) {
        Err(_) => Some("is missing"),
        Ok(binary) if has_interpreter(&binary) => Some("is linked dynamically"),
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        return Err(LabError::NotInstalled {
            program: BUSYBOX.into(),
            problem: problem.into(),
            package: "busybox-static".into(),
        });
    }
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    let blobs = layout.join("blobs").join("sha256");
    for dir in [&rootfs, &blobs] {
        std::fs::create_dir_all(dir).map_err(LabError::io(dir))?;
    }
    busybox_rootfs(&rootfs)?;
    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar, &["."])?;
    let layer = store_blob(&blobs, &layer_tar)?;
    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = store_json(&blobs, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config.descriptor(CONFIG),
        "layers": [layer.descriptor(LAYER)],
    });
    let mut entry = store_json(&blobs, &manifest)?.descriptor(MANIFEST);
    entry["annotations"] = json!({"io.containerd.image.name": name});
    write(
        &layout.join("index.json"),
        &json!({"schemaVersion": 2, "manifests": [entry]}),
    )?;
    write(
        &layout.join("oci-layout"),
        &json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    let image = work.join("image.tar");
    tar(&layout, &image, &["oci-layout", "index.json", "blobs"])?;
    Ok(image)
}

/// `rootfs/bin/busybox`, a symlink `bin/APPLET -> busybox` for each applet, and the directories a
/// runtime mounts over.
fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(LabError::io(&bin))?;
    let target = bin.join("busybox");
    std::fs::copy(BUSYBOX, &target).map_err(LabError::io(&target))?;
    for applet in run(&[BUSYBOX, "--list"])?.split_whitespace() {
        let link = bin.join(applet);
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", &link).map_err(LabError::io(&link))?;
        }
    }
    for dir in ["proc", "sys", "dev", "etc", "tmp", "root"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(LabError::io(&path))?;
    }
    Ok(())
}

/// Whether an ELF executable names a program interpreter (is linked dynamically): a 64-bit
/// little-endian one with a `PT_INTERP` program header. Anything else counts as static.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| u32_at(phoff + i * size) == Some(PT_INTERP))
}

/// The image architecture in Go's spelling, as containerd matches platforms.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `tar` the `entries` of `dir` into `out`, owned by root, in a stable order.
fn tar(dir: &Path, out: &Path, entries: &[&str]) -> Result<()> {
    let (dir, out) = (dir.to_string_lossy(), out.to_string_lossy());
    let mut args = vec![
        "tar",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "--sort=name",
        "-C",
        &dir,
        "-cf",
        &out,
    ];
    args.extend_from_slice(entries);
    run(&args).map(|_| ())
}

/// Move `file` into `blobs` under its SHA-256.
fn store_blob(blobs: &Path, file: &Path) -> Result<Blob> {
    let sum = run(&["sha256sum", &file.to_string_lossy()])?;
    let hex = sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let size = std::fs::metadata(file).map_err(LabError::io(file))?.len();
    let target = blobs.join(&hex);
    std::fs::rename(file, &target).map_err(LabError::io(&target))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size,
    })
}

/// Store a JSON document as a blob.
fn store_json(blobs: &Path, value: &Value) -> Result<Blob> {
    let file = blobs.join("new.json");
    write(&file, value)?;
    store_blob(blobs, &file)
}

fn write(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, value.to_string()).map_err(LabError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter_and_busybox_static_does_not() {
        let sh = std::fs::read("/bin/sh").unwrap(); // dash, linked dynamically
        assert!(has_interpreter(&sh));
        if let Ok(busybox) = std::fs::read(BUSYBOX) {
            assert!(
                !has_interpreter(&busybox),
                "{BUSYBOX} is not busybox-static's"
            );
        }
        assert!(!has_interpreter(b"#!/bin/sh\n"));
    }
}
