//! Child processes owned by a guard, and the paths of weft's binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// The workspace's binaries, built together the first time one is asked for.
pub const BINARIES: [&str; 4] = ["weftd", "weft-cni", "weft-wg", "weft-lab"];

/// The path of a workspace binary (`weftd`, `weft-cni`, `weft-lab`), panicking when there is none:
/// see [`locate`].
pub fn bin_path(name: &str) -> PathBuf {
    locate(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The path of a workspace binary, built first when this process runs under cargo.
///
/// Under `cargo test` or `cargo run` (cargo sets `CARGO` for what it runs), the first call in a
/// process builds [`BINARIES`] (`cargo build --bin …`) from this workspace with the same cargo,
/// profile, target directory and target triple as the running executable, so the binaries are
/// there on a fresh clone and never stale; a failed build is an error, not a stale binary. Run any
/// other way (say `target/release/weft-lab` from a release build, with no cargo around), or moved
/// away from its sources, it is the binary next to the running executable.
pub fn locate(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|source| LabError::Binary {
        name: name.to_string(),
        reason: format!("the running executable is unknown: {source}"),
    })?;
    let layout = Layout::of(&exe);
    if let (Some(cargo), Some(layout)) = (std::env::var_os("CARGO"), &layout) {
        static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
        BUILT
            .get_or_init(|| build_workspace(Path::new(&cargo), layout))
            .clone()
            .map_err(|reason| LabError::Binary {
                name: name.to_string(),
                reason,
            })?;
    }
    let dir = layout.map_or_else(|| exe_dir(&exe), |l| l.out_dir);
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Binary {
            name: name.to_string(),
            reason: format!(
                "not built in {} (next to {}): run `cargo build --workspace` first",
                dir.display(),
                exe.display()
            ),
        })
    }
}

/// Where cargo put the running executable: `TARGET_DIR[/TRIPLE]/PROFILE_DIR[/deps]/EXE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The directory the workspace's binaries land in (`target/debug`).
    pub out_dir: PathBuf,
    pub target_dir: PathBuf,
    /// The cargo profile (`dev` for `target/debug`).
    pub profile: String,
    /// The `--target` triple, when the build was for an explicit one.
    pub triple: Option<String>,
}

impl Layout {
    /// The layout of `exe`, when it sits in a cargo target directory (one holding `CACHEDIR.TAG`
    /// or `.rustc_info.json`, as cargo leaves them).
    pub fn of(exe: &Path) -> Option<Layout> {
        let out_dir = exe_dir(exe);
        let profile = match out_dir.file_name()?.to_str()? {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let is_target_dir = |dir: &Path| {
            dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file()
        };
        let parent = out_dir.parent()?;
        let (target_dir, triple) = if is_target_dir(parent) {
            (parent.to_path_buf(), None)
        } else {
            let grandparent = parent.parent().filter(|d| is_target_dir(d))?;
            let triple = parent.file_name()?.to_str()?.to_string();
            (grandparent.to_path_buf(), Some(triple))
        };
        Some(Layout {
            out_dir,
            target_dir,
            profile,
            triple,
        })
    }
}

/// The directory of the executable's profile: its own, or the one above `deps/` or `examples/`.
fn exe_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// This workspace's manifest, where it was compiled from.
const WORKSPACE_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");

/// `cargo build` the workspace's binaries into `layout`; the error carries cargo's output.
fn build_workspace(cargo: &Path, layout: &Layout) -> Result<(), String> {
    if !Path::new(WORKSPACE_MANIFEST).is_file() || !cargo.is_file() {
        return Ok(()); // Away from its sources, or cargo is gone: the binaries as they are.
    }
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "--manifest-path", WORKSPACE_MANIFEST])
        .args(BINARIES.iter().flat_map(|b| ["--bin", b]))
        .args(["--profile", &layout.profile])
        .arg("--target-dir")
        .arg(&layout.target_dir);
    if let Some(triple) = &layout.triple {
        command.args(["--target", triple]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{}` failed ({}):\n{}",
        command_line(&command),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A command as it would be typed: the program and its arguments.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process killed (SIGKILL) and reaped when the guard drops.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<ChildGuard> {
        let child = command.spawn().map_err(|source| LabError::Spawn {
            command: command_line(command),
            source,
        })?;
        Ok(ChildGuard {
            name: name.into(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Send a signal (e.g. SIGTERM) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Whether the process has exited, and how.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The child's piped standard output and error, taken (each `None` when not piped or taken).
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        match self.child.as_mut() {
            Some(child) => (child.stdout.take(), child.stderr.take()),
            None => (None, None),
        }
    }

    /// Let the process outlive the guard (for `weft-lab up`).
    pub fn detach(mut self) {
        self.child.take();
    }

    /// Kill now (SIGKILL) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_cargo_target_directories() {
        let target = tempfile::tempdir().unwrap();
        let t = target.path();
        std::fs::write(t.join("CACHEDIR.TAG"), "").unwrap();
        let layout = |exe: &str| Layout::of(&t.join(exe));
        let debug = layout("debug/deps/lab_vxlan-0123").unwrap();
        assert_eq!(
            (debug.out_dir, debug.profile.as_str(), debug.triple),
            (t.join("debug"), "dev", None)
        );
        let release = layout("release/weft-lab").unwrap();
        assert_eq!(
            (release.out_dir, release.profile.as_str()),
            (t.join("release"), "release")
        );
        let cross = layout("x86_64-unknown-linux-musl/ci/deps/cni_pods-4567").unwrap();
        assert_eq!(
            (
                cross.target_dir,
                cross.profile.as_str(),
                cross.triple.as_deref()
            ),
            (t.to_path_buf(), "ci", Some("x86_64-unknown-linux-musl"))
        );
        assert_eq!(Layout::of(Path::new("/usr/local/bin/weft-lab")), None);
    }
}
