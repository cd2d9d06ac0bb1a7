//! Userspace WireGuard: `weft-wg DEVICE` owns the TUN device and the UDP socket and serves the
//! standard control socket; weftd only talks to that socket. Restarting weftd therefore never
//! touches a tunnel: a new weftd finds `weft-wg` answering, reads the device and applies the
//! per-peer difference.
//!
//! When nothing answers, weftd starts `weft-wg` in its own session, so it outlives weftd (a
//! DaemonSet can run it as a container of its own instead; weftd then finds it running).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_proto::names::IfName;

use super::uapi::Uapi;

/// How long a started `weft-wg` has to answer on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `weft-wg` could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error("start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing answers on {} (weft-wg runs as its own container here, --wireguard-spawn false); waiting for it", socket.display())]
    NotRunning { socket: PathBuf },
    #[error("{program} {device} started (pid {pid}) but did not answer on {socket} within {seconds} s; see {log}")]
    NoAnswer {
        program: PathBuf,
        device: IfName,
        pid: u32,
        socket: PathBuf,
        seconds: u64,
        log: PathBuf,
    },
}

/// How to run `weft-wg`.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `weft-wg` binary.
    pub program: PathBuf,
    /// Its worker threads (`--threads`).
    pub threads: usize,
    /// Its log file (stdout and stderr, appended).
    pub log: PathBuf,
    /// Whether to start it; `false` when it runs as a container of its own.
    pub spawn: bool,
}

/// `None` if `weft-wg` already serves `device`; else start it and wait until it answers, and
/// return its pid.
pub fn ensure_running(device: &IfName, launcher: &Launcher) -> Result<Option<u32>, UserspaceError> {
    let uapi = Uapi::new(device.as_str());
    if uapi.alive() {
        return Ok(None);
    }
    if !launcher.spawn {
        return Err(UserspaceError::NotRunning { socket: uapi.path });
    }
    let pid = spawn(device, launcher)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if uapi.alive() {
            return Ok(Some(pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Never leave a silent copy holding the device name for the next attempt.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    Err(UserspaceError::NoAnswer {
        program: launcher.program.clone(),
        device: device.clone(),
        pid,
        socket: uapi.path,
        seconds: START_TIMEOUT.as_secs(),
        log: launcher.log.clone(),
    })
}

/// Start `weft-wg DEVICE --threads N` in a session of its own, output appended to the log. A thread
/// waits for it, so it leaves no zombie while weftd lives; once weftd is gone, init reaps it.
fn spawn(device: &IfName, launcher: &Launcher) -> Result<u32, UserspaceError> {
    let error = |source| UserspaceError::Spawn {
        path: launcher.program.clone(),
        source,
    };
    let log = open_log(&launcher.log).map_err(error)?;
    let mut command = Command::new(&launcher.program);
    command
        .env_remove(crate::config::ETCD_PASSWORD_VAR)
        .arg(device.as_str())
        .arg("--threads")
        .arg(launcher.threads.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(error)?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from weftd's session and group,
    // so signals to weftd's process group do not reach it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(error)?;
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
