//! Network namespaces for tests and the lab, removed when their guard drops.
//!
//! The harness uses `ip` (iproute2) to build topologies and to run commands inside namespaces: it
//! plays the part of the operator and the container runtime. weftd itself never shells out.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{LabError, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short prefix unique to this process and call: `w` + pid (hex) + `x` + a counter (hex), e.g.
/// `w1a2x3`: the `x`, not a hex digit, keeps pid 0x1a2 call 0x10 apart from pid 0x1a21 call 0.
/// Interface names built from it stay within IFNAMSIZ.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("w{:x}x{n:x}", std::process::id() & 0xfffff)
}

/// Run a command; its stdout on success, else an error carrying the command line and its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: args.join(" "),
            source,
        })?;
    output_text(args, output)
}

pub(crate) fn output_text(args: &[&str], output: Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Run `ip ARGS…`, panicking with the error (test set-up that must not fail).
pub fn ip(args: &[&str]) -> String {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    run(&full).unwrap_or_else(|e| panic!("{e}"))
}

/// A named network namespace (`/run/netns/NAME`) with `lo` up.
pub struct NetnsGuard {
    name: String,
    keep: bool,
}

impl NetnsGuard {
    pub fn create(name: &str) -> Result<NetnsGuard> {
        run(&["ip", "netns", "add", name])?;
        let guard = NetnsGuard {
            name: name.to_string(),
            keep: false,
        };
        guard.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// Adopt an existing namespace (for `weft-lab down`).
    pub fn adopt(name: &str) -> NetnsGuard {
        NetnsGuard {
            name: name.to_string(),
            keep: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Leave the namespace in place when the guard drops (a lab that outlives `weft-lab up`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Move the calling thread into the namespace (for a thread of its own: it stays there).
    pub fn enter(&self) -> Result<()> {
        enter_path(&self.path())
    }

    /// Run `work` on a thread that has entered the namespace; sockets it opens stay there.
    pub fn within<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            work()
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }

    /// A TCP listener inside the namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        self.within(move || TcpListener::bind(addr))
    }

    /// A TCP connection made from inside the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.within(move || TcpStream::connect_timeout(&addr, timeout))
    }

    /// `ping` once (both families by address); whether a reply came back within `wait_secs`.
    pub fn ping(&self, target: &str, wait_secs: u32) -> bool {
        self.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            &wait_secs.to_string(),
            "-q",
            target,
        ])
        .is_ok()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = delete(&self.name);
        }
    }
}

/// SIGKILL every process in the namespace `name` (a detached `weft-wg` outlives its weftd), then
/// delete the namespace; the error of the deletion.
pub fn delete(name: &str) -> Result<()> {
    let pids = run(&["ip", "netns", "pids", name]).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    run(&["ip", "netns", "del", name]).map(|_| ())
}

/// Move the calling thread into the network namespace at `path` (`/run/netns/NAME`).
pub fn enter_path(path: &str) -> Result<()> {
    let netns_error = |source| LabError::Netns {
        netns: path.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(netns_error)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| netns_error(std::io::Error::from(e)))
}

/// A named network namespace that exists only inside a mount namespace of its own, as a container
/// runtime that runs in its own mount namespace (or under `ip netns exec`) makes one: a holder
/// process started with `unshare --mount --propagation private` runs `ip netns add NAME` and then
/// sleeps, so `/run/netns/NAME` is a namespace there and an empty file everywhere else (weftd's
/// mount namespace included). Commands that should see it run in the holder's mount namespace
/// through `nsenter`.
///
/// Dropping the guard deletes the namespace inside, kills the holder and removes the empty file
/// left outside.
pub struct PrivateNetns {
    name: String,
    holder: crate::procs::ChildGuard,
}

impl PrivateNetns {
    /// Start the holder and wait until the namespace exists (with `lo` up) in its mount namespace.
    pub fn create(name: &str) -> Result<PrivateNetns> {
        use std::io::{BufRead, Read};
        let script = r#"ip netns add "$1" && ip -n "$1" link set lo up && echo ready && exec sleep infinity"#;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .args([script, "sh", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let holder = crate::procs::ChildGuard::spawn(format!("{name} holder"), &mut command)?;
        let mut guard = PrivateNetns {
            name: name.to_string(),
            holder,
        };
        let (stdout, stderr) = guard.holder.take_output();
        let mut line = String::new();
        if let Some(stdout) = stdout {
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() == "ready" {
            return Ok(guard);
        }
        let mut message = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut message);
        }
        let status = guard.holder.wait_timeout(Duration::from_secs(5));
        Err(LabError::Command {
            command: crate::procs::command_line(&command),
            status: status.unwrap_or_default(),
            stderr: message.trim().to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: a namespace only in the holder's mount namespace.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A `Command` that runs `program` in the holder's mount namespace (not in the network
    /// namespace: where a runtime runs a CNI plugin).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.args([
            "--target",
            &self.holder.pid().to_string(),
            "--mount",
            "--",
            program,
        ]);
        command
    }

    /// Run a command in the holder's mount namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let pid = self.holder.pid().to_string();
        let mut full = vec!["nsenter", "--target", &pid, "--mount", "--"];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Run a command inside the network namespace (entered from the holder's mount namespace).
    pub fn exec_inside(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// `ping` once from inside the namespace; whether a reply came back within `wait_secs`.
    pub fn ping(&self, target: &str, wait_secs: u32) -> bool {
        let wait = wait_secs.to_string();
        self.exec_inside(&["ping", "-c", "1", "-W", &wait, "-q", target])
            .is_ok()
    }
}

impl Drop for PrivateNetns {
    fn drop(&mut self) {
        let _ = self.exec(&["ip", "netns", "del", &self.name]);
        self.holder.kill();
        // What `ip netns add` left outside: the empty file the namespace was mounted on.
        let _ = std::fs::remove_file(self.path());
    }
}

/// Run `work` on a thread of its own inside a fresh network namespace (`unshare(CLONE_NEWNET)`:
/// only that thread is inside, and the namespace with everything in it goes when the thread
/// ends, whether `work` returns or panics); its panic is the caller's. Needs root.
pub fn in_fresh_netns<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace (the test needs root)");
        work()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// [`in_fresh_netns`] for async work, on a current-thread runtime inside the namespace.
pub fn in_fresh_netns_async<F>(work: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    in_fresh_netns(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(work())
    })
}
