//! A private containerd for tests (Debian's `containerd` and `runc`), and `ctr run --cni` against
//! it, the way a new user tries a CNI plugin.
//!
//! Everything lives in one temporary directory of the run: containerd's root, state, socket and
//! config file, ctr's FIFOs and runc root, and the CNI directories. containerd runs inside a lab
//! node's network namespace, so the containers' pods hang off that node.
//!
//! `ctr run --cni` makes the CNI calls itself, from libcni's fixed places: the conflist from
//! `/etc/cni/net.d`, the plugins from `/opt/cni/bin` (Debian's build also looks in `/usr/lib/cni`),
//! cached results in `/var/lib/cni`. (containerd's CRI plugin, which would read the `[cni]` dirs of
//! the config file, takes no part in `ctr run` and is disabled.) So ctr runs in a mount namespace
//! of its own where an overlay over `/etc`, `/opt` and `/var/lib` makes those three directories the
//! run's own: the host's are never read or written.
//!
//! What containerd 1.6 still puts on the host: the shims' sockets in `/run/containerd/s/` (named
//! from a hash of this run's socket path; gone when the shims exit, and the directory is removed
//! again if the run made it), and each container's cgroup while it runs. Dropping [`Containerd`]
//! deletes every container left in its namespace, stops the daemon, kills any shim of its own it
//! left behind and removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::{run, NetnsGuard};
use crate::procs::{command_line, wait_for, ChildGuard};

/// The programs a private containerd needs, and the Debian package of each.
const PROGRAMS: [(&str, &str); 4] = [
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("runc", "runc"),
];

/// Where containerd 1.6 puts shim sockets whatever its configuration says.
const RUN_DIR: &str = "/run/containerd";

/// Run in ctr's mount namespace before ctr: `/etc/cni/net.d`, `/opt/cni/bin` and `/var/lib/cni`
/// become the run's directories (`$1/cni/{net.d,bin,cache}`), over overlays of their parents.
const SHADOW_CNI_DIRS: &str = r#"set -e
d=$1
shift
shadow() {
  mkdir -p "$d/overlay$1/upper" "$d/overlay$1/work"
  mount -t overlay weft-test -o "lowerdir=$1,upperdir=$d/overlay$1/upper,workdir=$d/overlay$1/work" "$1"
  mkdir -p "$1/$2"
  mount --bind "$3" "$1/$2"
}
shadow /etc cni/net.d "$d/cni/net.d"
shadow /opt cni/bin "$d/cni/bin"
shadow /var/lib cni "$d/cni/cache"
exec "$@"
"#;

/// A containerd of the test's own, running in a lab node's network namespace.
pub struct Containerd {
    dir: tempfile::TempDir,
    /// The containerd namespace every `ctr` call here uses.
    namespace: String,
    /// The network namespace containerd and `ctr run` run in.
    netns: String,
    daemon: Option<ChildGuard>,
    /// Whether `/run/containerd` was absent at start (then it is removed again, if empty).
    made_run_dir: bool,
    /// The containers run, for the clean-up of their cgroups.
    containers: Vec<String>,
}

impl Containerd {
    /// Start containerd inside `netns`, with ctr namespace `namespace`, and wait until it answers.
    pub fn start(netns: &NetnsGuard, namespace: &str) -> Result<Containerd> {
        for (program, package) in PROGRAMS {
            if !on_path(program) {
                return Err(LabError::NotInstalled {
                    program: program.into(),
                    problem: "is missing".into(),
                    package: package.into(),
                });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("weft-containerd-")
            .tempdir()
            .map_err(LabError::io(std::env::temp_dir()))?;
        let mut containerd = Containerd {
            dir,
            namespace: namespace.to_string(),
            netns: netns.name().to_string(),
            daemon: None,
            made_run_dir: !Path::new(RUN_DIR).exists(),
            containers: Vec::new(),
        };
        for sub in [
            "cni/bin",
            "cni/net.d",
            "cni/cache",
            "fifo",
            "runc",
            "shared",
        ] {
            let path = containerd.dir().join(sub);
            std::fs::create_dir_all(&path).map_err(LabError::io(&path))?;
        }
        containerd.spawn()?;
        Ok(containerd)
    }

    /// The run's directory: everything containerd and ctr keep is under it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// What ctr sees as `/opt/cni/bin`.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir().join("cni/bin")
    }

    /// What ctr sees as `/etc/cni/net.d`.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir().join("cni/net.d")
    }

    /// What ctr sees as `/var/lib/cni` (libcni's cache of results).
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.dir().join("cni/cache")
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    fn config(&self) -> String {
        let d = self.dir().display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
# ctr run --cni does its CNI calls itself; nothing here speaks CRI.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        )
    }

    /// Write the config, start the daemon in the node's namespace, wait for its socket to answer.
    fn spawn(&mut self) -> Result<()> {
        let config = self.dir().join("config.toml");
        std::fs::write(&config, self.config()).map_err(LabError::io(&config))?;
        let log_path = self.dir().join("containerd.log");
        let log = std::fs::File::create(&log_path).map_err(LabError::io(&log_path))?;
        let mut command = self.in_netns("containerd");
        command
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(LabError::io(&log_path))?)
            .stderr(log);
        self.daemon = Some(ChildGuard::spawn("containerd", &mut command)?);
        let after = Duration::from_secs(20);
        wait_for(after, || self.ctr(&["version"]).ok()).ok_or_else(|| LabError::Timeout {
            what: format!("containerd to answer on {}", self.socket().display()),
            after,
            log: self.log(),
        })?;
        Ok(())
    }

    /// `ctr ARGS…` against this containerd, in its namespace (bounded to 60 s); its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket();
        let mut full = vec!["timeout", "60", "ctr", "-a"];
        full.push(socket.to_str().expect("utf-8 path"));
        full.extend(["-n", &self.namespace]);
        full.extend_from_slice(args);
        run(&full)
    }

    /// `program` in the node's network namespace, with nothing else changed: not `ip netns exec`,
    /// whose fresh `/sys` hides the cgroup mounts runc needs.
    fn in_netns(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program);
        command
    }

    /// Import an image tarball (an OCI image layout).
    pub fn import(&self, tarball: &Path) -> Result<()> {
        let path = tarball.to_str().expect("utf-8 path");
        self.ctr(&["images", "import", path]).map(|_| ())
    }

    /// The IDs of the containers in this namespace.
    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.ctr(&["containers", "list", "--quiet"])?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Start `ctr run --cni --rm IMAGE ID sh -c SCRIPT` in the node's namespace (with the run's CNI
    /// directories) and return at once. The container sees a directory of the run at `/shared`
    /// ([`CtrRun::shared`]): a test and its container can signal each other there.
    pub fn run_cni(&mut self, image: &str, id: &str, script: &str) -> Result<CtrRun> {
        let shared = self.dir().join("shared").join(id);
        std::fs::create_dir_all(&shared).map_err(LabError::io(&shared))?;
        let (stdout, stderr) = (
            self.dir().join(format!("{id}.out")),
            self.dir().join(format!("{id}.err")),
        );
        let open = |path: &Path| std::fs::File::create(path).map_err(LabError::io(path));
        let (dir, socket) = (self.dir().to_path_buf(), self.socket());
        let mut command = self.in_netns("unshare");
        command
            .args(["--mount", "--propagation", "private"])
            .args(["sh", "-c", SHADOW_CNI_DIRS, "sh"])
            .arg(&dir)
            .args(["ctr", "-a"])
            .arg(&socket)
            .args(["-n", &self.namespace, "run", "--cni", "--rm"])
            // runc's own cgroup path (the container ID), not /NAMESPACE/ID: nothing left over.
            .args(["--cgroup", "", "--runc-root"])
            .arg(dir.join("runc"))
            .arg("--fifo-dir")
            .arg(dir.join("fifo"))
            .arg("--mount")
            .arg(format!(
                "type=bind,src={},dst=/shared,options=rbind:rw",
                shared.display()
            ))
            .args([image, id, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?);
        self.containers.push(id.to_string());
        let process = ChildGuard::spawn(format!("ctr run {id}"), &mut command)?;
        let command = command_line(&command);
        Ok(CtrRun {
            process,
            command,
            shared,
            stdout,
            stderr,
        })
    }

    /// Delete every container of the namespace, with its task and snapshot.
    fn remove_containers(&self) {
        for id in self.containers().unwrap_or_default() {
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
            let _ = self.ctr(&["containers", "delete", &id]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_containers();
        if let Some(mut daemon) = self.daemon.take() {
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            daemon.wait_timeout(Duration::from_secs(10));
            daemon.kill();
        }
        kill_processes_naming(&self.socket());
        for id in &self.containers {
            remove_cgroups(id);
        }
        if self.made_run_dir {
            // Only what is empty: a containerd that started meanwhile keeps its directories.
            for dir in ["s", "fifo", "runc", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_DIR).join(dir));
            }
        }
    }
}

/// A `ctr run` in progress; killed (with its container removed by [`Containerd`]) if dropped.
pub struct CtrRun {
    process: ChildGuard,
    command: String,
    shared: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// How a `ctr run` ended.
#[derive(Debug)]
pub struct CtrOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtrRun {
    /// The host side of the container's `/shared`.
    pub fn shared(&self) -> &Path {
        &self.shared
    }

    /// What the container (and ctr) printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait until the output holds the line `line`; the output so far. Fails when ctr exits first
    /// (with its output) or after `after`.
    pub fn wait_for_line(&mut self, line: &str, after: Duration) -> Result<String> {
        let found = wait_for(after, || {
            let exited = self.process.try_status();
            // Read after the exit check: once ctr has exited, its output is complete.
            let out = self.stdout();
            if out.lines().any(|l| l == line) {
                return Some(Ok(out));
            }
            exited.map(Err)
        });
        match found {
            Some(Ok(out)) => Ok(out),
            Some(Err(status)) => Err(self.failed(status)),
            None => Err(LabError::Timeout {
                what: format!("the line {line:?} from `{}`", self.command),
                after,
                log: self.stdout() + &self.stderr(),
            }),
        }
    }

    /// Wait up to `after` for ctr to exit; how it ended.
    pub fn finish(mut self, after: Duration) -> Result<CtrOutput> {
        match self.process.wait_timeout(after) {
            Some(status) => Ok(CtrOutput {
                status,
                stdout: self.stdout(),
                stderr: self.stderr(),
            }),
            None => Err(LabError::Timeout {
                what: format!("`{}` to exit", self.command),
                after,
                log: self.stdout() + &self.stderr(),
            }),
        }
    }

    fn failed(&self, status: ExitStatus) -> LabError {
        LabError::Command {
            command: self.command.clone(),
            status,
            stderr: format!("{}{}", self.stdout(), self.stderr())
                .trim()
                .to_string(),
        }
    }
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// SIGKILL every process whose command line names `path` (a shim of this run's containerd names
/// its socket): only this run's, by pid.
fn kill_processes_naming(path: &Path) {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid as u32 != std::process::id() && cmdline.windows(needle.len()).any(|w| w == needle) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Kill what is left in the cgroups named `id` (runc names a container's cgroup after it when ctr
/// asks for no path) and remove them: a container whose shim died takes no clean-up of its own.
fn remove_cgroups(id: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        for cgroup in find_dirs_named(&controller.path(), id, 3) {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = wait_for(Duration::from_secs(2), || std::fs::remove_dir(&cgroup).ok());
        }
    }
}

/// The directories named `name` under `dir`, at most `depth` levels down.
fn find_dirs_named(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        if entry.file_name() == name {
            found.push(entry.path());
        } else if depth > 1 {
            found.extend(find_dirs_named(&entry.path(), name, depth - 1));
        }
    }
    found
}
