//! A real Kubernetes API server for tests: upstream kube-apiserver and etcd started by
//! `start-apiserver.sh` (from `../shared/k8s`, beside the workspace) in a temporary work directory,
//! stopped and removed when the [`ApiServer`] guard drops; and a [`Relay`] that makes the server,
//! which listens on 127.0.0.1 of this network namespace only, reachable at the same address inside
//! a lab node's namespace, so its kubeconfig works there unchanged.
//!
//! The binaries are looked for the way the script looks for them, in the same order:
//! kube-apiserver in `$KUBE_APISERVER`, `$KUBEBUILDER_ASSETS/kube-apiserver`, then `bin/` beside
//! the script; etcd in `$ETCD`, `$KUBEBUILDER_ASSETS/etcd`, then PATH. The script itself is
//! `$WEFT_K8S_DIR/start-apiserver.sh`, else `../shared/k8s/start-apiserver.sh` from the
//! workspace root. kubectl is `$KUBECTL`, else `/usr/bin/kubectl`, else PATH. The harness hands
//! the script the binaries it found, so both always agree.
//!
//! Tests call [`ApiServer::start_or_skip`]: when a piece is missing it prints
//! `SKIP: TEST: no kube-apiserver (looked in …)` and the test passes, unless `WEFT_K8S_REQUIRED=1`
//! (CI sets it), where a missing piece fails the test.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::netns::{run, NetnsGuard};
use crate::procs::{command_line, wait_for, ChildGuard};

pub use crate::relay::Relay;

/// A directory holding `start-apiserver.sh` (and its `bin/`): overrides `../shared/k8s`.
pub const DIR_VAR: &str = "WEFT_K8S_DIR";
/// Set to `1` where the API server tests must run (CI): a missing piece is then a failure.
pub const REQUIRED_VAR: &str = "WEFT_K8S_REQUIRED";

/// `../shared/k8s` from the workspace root, where the workspace was compiled.
const SHARED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/k8s");

/// How long a stopped kube-apiserver gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a restarted kube-apiserver gets to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything an [`ApiServer`] needs, found.
#[derive(Debug, Clone)]
pub struct Found {
    pub script: PathBuf,
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
}

/// One piece that was not found, and every place it was looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPiece {
    pub what: &'static str,
    pub looked_in: Vec<String>,
}

/// The pieces that were not found (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Missing(pub Vec<MissingPiece>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pieces: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("no {} (looked in {})", p.what, p.looked_in.join(", ")))
            .collect();
        f.write_str(&pieces.join("; "))
    }
}

/// Where to look for one piece, in order. `Env` names a variable whose value, when set, is the
/// only candidate (as in the script: a variable that names nothing usable is not skipped).
enum Place {
    Env(&'static str),
    /// `$KUBEBUILDER_ASSETS/NAME`, when the variable is set and the file is executable.
    Assets(&'static str),
    File(PathBuf),
    OnPath(&'static str),
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` as the shell resolves it: a path when it has a slash, else the first executable on PATH.
fn resolve(name: &Path) -> Option<PathBuf> {
    if name.as_os_str().as_bytes().contains(&b'/') {
        return is_executable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn look(what: &'static str, places: &[Place]) -> Result<PathBuf, MissingPiece> {
    let mut looked_in = Vec::new();
    for place in places {
        match place {
            Place::Env(var) => match std::env::var_os(var) {
                Some(value) => {
                    let found = resolve(Path::new(&value));
                    looked_in.push(format!("${var}={}", value.to_string_lossy()));
                    return found.ok_or(MissingPiece { what, looked_in });
                }
                None => looked_in.push(format!("${var} (unset)")),
            },
            Place::Assets(name) => match std::env::var_os("KUBEBUILDER_ASSETS") {
                Some(dir) => {
                    let path = Path::new(&dir).join(name);
                    if is_executable(&path) {
                        return Ok(path);
                    }
                    looked_in.push(path.display().to_string());
                }
                None => looked_in.push(format!("$KUBEBUILDER_ASSETS/{name} (unset)")),
            },
            Place::File(path) => match resolve(path) {
                Some(path) => return Ok(path),
                None => looked_in.push(path.display().to_string()),
            },
            Place::OnPath(name) => match resolve(Path::new(name)) {
                Some(path) => return Ok(path),
                None => looked_in.push(format!("{name} on PATH")),
            },
        }
    }
    Err(MissingPiece { what, looked_in })
}

/// The script's directory: `$WEFT_K8S_DIR`, else `../shared/k8s` beside the workspace.
fn script_dir() -> PathBuf {
    let dir = std::env::var_os(DIR_VAR).map_or_else(|| PathBuf::from(SHARED_DIR), PathBuf::from);
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

impl Found {
    /// Look for every piece; all that are missing are named together.
    pub fn look() -> Result<Found, Missing> {
        let dir = script_dir();
        // The shared folder's script, else this crate's copy of it (for `KUBEBUILDER_ASSETS`
        // users without the shared folder).
        let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/start-apiserver.sh");
        let script = look(
            "start-apiserver.sh",
            &[
                Place::File(dir.join("start-apiserver.sh")),
                Place::File(vendored),
            ],
        );
        let apiserver = look(
            "kube-apiserver",
            &[
                Place::Env("KUBE_APISERVER"),
                Place::Assets("kube-apiserver"),
                Place::File(dir.join("bin/kube-apiserver")),
            ],
        );
        let etcd = look(
            "etcd",
            &[
                Place::Env("ETCD"),
                Place::Assets("etcd"),
                Place::OnPath("etcd"),
            ],
        );
        let kubectl = look(
            "kubectl",
            &[
                Place::Env("KUBECTL"),
                Place::File("/usr/bin/kubectl".into()),
                Place::OnPath("kubectl"),
            ],
        );
        let tools = ["openssl", "curl"].map(|tool| look(tool, &[Place::OnPath(tool)]));
        match (script, apiserver, etcd, kubectl, tools) {
            (Ok(script), Ok(apiserver), Ok(etcd), Ok(kubectl), [Ok(_), Ok(_)]) => Ok(Found {
                script,
                apiserver,
                etcd,
                kubectl,
            }),
            (script, apiserver, etcd, kubectl, [openssl, curl]) => Err(Missing(
                [
                    apiserver.err(),
                    etcd.err(),
                    script.err(),
                    kubectl.err(),
                    openssl.err(),
                    curl.err(),
                ]
                .into_iter()
                .flatten()
                .collect(),
            )),
        }
    }
}

/// A running kube-apiserver with its own etcd, in a temporary work directory; `Drop` runs
/// `start-apiserver.sh stop WORKDIR`, which stops exactly its processes and removes the directory.
/// Should this process die first, the script's watcher (`START_APISERVER_OWNER_PID`) stops it.
pub struct ApiServer {
    found: Found,
    workdir: PathBuf,
    kubeconfig: PathBuf,
    port: u16,
    /// kube-apiserver's command line, read from `/proc` when it is first stopped alone.
    apiserver_command: Option<Vec<OsString>>,
    /// A kube-apiserver this process started again: its child, reaped on drop.
    restarted: Option<ChildGuard>,
}

impl ApiServer {
    /// Everything needed to start a server, or what is missing and where it was looked for.
    pub fn find() -> Result<Found, Missing> {
        Found::look()
    }

    /// Whether the API server tests must run here (`WEFT_K8S_REQUIRED=1`, as CI sets it).
    pub fn required() -> bool {
        std::env::var_os(REQUIRED_VAR).is_some_and(|v| v == "1")
    }

    /// Start a server with what [`ApiServer::find`] finds.
    pub fn start() -> Result<ApiServer> {
        ApiServer::start_with(ApiServer::find()?)
    }

    /// For tests: a started server; or, when a piece is missing and the tests are not required
    /// here, `None` after printing `SKIP: TEST: no … (looked in …)`. Panics when the pieces are
    /// there but the server does not start, or when they are missing and [`ApiServer::required`].
    pub fn start_or_skip(test: &str) -> Option<ApiServer> {
        match ApiServer::find() {
            Ok(found) => Some(ApiServer::start_with(found).unwrap_or_else(|e| panic!("{e}"))),
            Err(missing) if ApiServer::required() => {
                panic!("{test}: {missing} ({REQUIRED_VAR}=1: these tests must run here)")
            }
            Err(missing) => {
                eprintln!("SKIP: {test}: {missing}");
                None
            }
        }
    }

    /// Run `start-apiserver.sh` in a fresh temporary work directory and wait for it (the script
    /// waits until `/readyz` answers, 60 s at most).
    pub fn start_with(found: Found) -> Result<ApiServer> {
        let workdir = tempfile::Builder::new()
            .prefix("weft-k8s-")
            .tempdir()
            .map_err(LabError::io(std::env::temp_dir()))?
            .keep();
        let mut command = Command::new(&found.script);
        command
            .arg(&workdir)
            .env("KUBE_APISERVER", &found.apiserver)
            .env("ETCD", &found.etcd)
            .env("START_APISERVER_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null());
        let started = command.output().map_err(|source| LabError::Spawn {
            command: command_line(&command),
            source,
        });
        let kubeconfig = match started {
            Ok(output) if output.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
            Ok(output) => {
                stop_workdir(&found.script, &workdir);
                return Err(LabError::Command {
                    command: command_line(&command),
                    status: output.status,
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
            Err(e) => {
                stop_workdir(&found.script, &workdir);
                return Err(e);
            }
        };
        let server = ApiServer {
            found,
            workdir,
            kubeconfig,
            port: 0,
            apiserver_command: None,
            restarted: None,
        };
        server.with_port()
    }

    /// Read the server's port from its kubeconfig (`server: https://127.0.0.1:PORT`).
    fn with_port(mut self) -> Result<ApiServer> {
        let text =
            std::fs::read_to_string(&self.kubeconfig).map_err(LabError::io(&self.kubeconfig))?;
        self.port = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| self.error("its kubeconfig names no https://127.0.0.1:PORT server"))?;
        Ok(self)
    }

    fn error(&self, reason: impl Into<String>) -> LabError {
        LabError::ApiServer {
            workdir: self.workdir.clone(),
            reason: reason.into(),
        }
    }

    /// The kubeconfig: the server URL (`https://127.0.0.1:PORT`), its CA and an admin token
    /// (group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The work directory: `kubeconfig`, `pids`, `certs/`, `logs/`, `etcd/`.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn found(&self) -> &Found {
        &self.found
    }

    /// kube-apiserver's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.join("logs/kube-apiserver.log")).unwrap_or_default()
    }

    /// The kubectl command line for `args`, as strings (for running it elsewhere, e.g. in a
    /// namespace).
    pub fn kubectl_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = vec![
            self.found.kubectl.to_string_lossy().into_owned(),
            "--kubeconfig".to_string(),
            self.kubeconfig.to_string_lossy().into_owned(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    /// Run `kubectl --kubeconfig KUBECONFIG ARGS…`; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let full = self.kubectl_args(args);
        run(&full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`ApiServer::kubectl`] with `input` on its standard input (`create -f -`, `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let full = self.kubectl_args(args);
        let mut command = Command::new(&full[0]);
        command
            .args(&full[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| LabError::Spawn {
            command: full.join(" "),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let fed = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().map_err(spawn_error)?;
        if let Some(Err(source)) = fed {
            return Err(spawn_error(source));
        }
        crate::netns::output_text(&full.iter().map(String::as_str).collect::<Vec<_>>(), output)
    }

    /// One raw API request (curl, with the admin token, impersonating `as_user` when given), for
    /// what kubectl cannot send alone: e.g. a PATCH of `nodes/NAME/status` without the GET that
    /// `kubectl patch` makes first. `body` is (content type, text). The response body, or an
    /// error carrying it.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
        as_user: Option<&str>,
    ) -> Result<String> {
        let certs = self.workdir.join("certs");
        let token_path = certs.join("token");
        let token = std::fs::read_to_string(&token_path).map_err(LabError::io(&token_path))?;
        let mut args: Vec<String> = ["curl", "-sS", "--fail-with-body", "--max-time", "10"]
            .map(String::from)
            .to_vec();
        args.extend([
            "--cacert".into(),
            certs.join("ca.crt").display().to_string(),
        ]);
        args.extend(["-X".into(), method.into()]);
        args.extend([
            "-H".into(),
            format!("Authorization: Bearer {}", token.trim()),
        ]);
        if let Some(user) = as_user {
            args.extend(["-H".into(), format!("Impersonate-User: {user}")]);
        }
        if let Some((content_type, text)) = body {
            args.extend(["-H".into(), format!("Content-Type: {content_type}")]);
            args.extend(["--data-binary".into(), text.into()]);
        }
        args.push(format!("https://127.0.0.1:{}{path}", self.port));
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Run kubectl inside `netns` (which needs a [`Relay`] to reach the server).
    pub fn kubectl_in(&self, netns: &NetnsGuard, args: &[&str]) -> Result<String> {
        let full = self.kubectl_args(args);
        netns.exec(&full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A [`Relay`] to this server from inside the network namespace at `netns_path`.
    pub fn relay_into(&self, netns_path: impl AsRef<Path>) -> Result<Relay> {
        Relay::start(netns_path, self.port)
    }
}

/// Run `start-apiserver.sh stop WORKDIR`; remove the directory if the script left it (it only
/// removes directories it marked as its own).
fn stop_workdir(script: &Path, workdir: &Path) {
    let _ = Command::new(script)
        .arg("stop")
        .arg(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if workdir.exists() {
        let _ = std::fs::remove_dir_all(workdir);
    }
}

/// Stopping and starting kube-apiserver alone, on the same port and etcd. The script has no
/// restart (its start wants an empty work directory, its stop removes it), so this does what the
/// script does: it reads kube-apiserver's command line from `/proc` and runs it again, and it
/// keeps `WORKDIR/pids` current so that `stop` and the owner watcher still find the process.
impl ApiServer {
    /// Stop kube-apiserver (SIGTERM; SIGKILL after 20 s); etcd and its data stay.
    pub fn stop_apiserver_only(&mut self) -> Result<()> {
        if let Some(mut child) = self.restarted.take() {
            child.signal(Signal::SIGTERM);
            if child.wait_timeout(STOP_GRACE).is_none() {
                child.kill();
            }
            return Ok(());
        }
        let pid = self.apiserver_pid()?;
        let command = self
            .command_of(pid)
            .ok_or_else(|| self.error(format!("kube-apiserver (pid {pid}) is not running")))?;
        self.apiserver_command.get_or_insert(command);
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        // Not our child: it is gone when its command line is (a zombie has none).
        if wait_for(STOP_GRACE, || self.command_of(pid).is_none().then_some(())).is_none() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Start kube-apiserver again with the command line it had (same port, certificates and
    /// etcd) and wait until `/readyz` answers.
    pub fn start_apiserver_again(&mut self) -> Result<()> {
        let Some(argv) = self.apiserver_command.clone() else {
            return Err(self.error("kube-apiserver was not stopped by stop_apiserver_only"));
        };
        if self.restarted.is_some() {
            return Err(self.error("kube-apiserver is already running again"));
        }
        let log_path = self.workdir.join("logs/kube-apiserver.log");
        let open_log = || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log_path)
                .map_err(LabError::io(&log_path))
        };
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?);
        let child = ChildGuard::spawn("kube-apiserver", &mut command)?;
        self.set_apiserver_pid(child.pid())?;
        self.restarted = Some(child);
        self.wait_ready()
    }

    /// Stop kube-apiserver alone, leave it down for `down`, and start it again.
    pub fn restart_apiserver_only(&mut self, down: Duration) -> Result<()> {
        self.stop_apiserver_only()?;
        std::thread::sleep(down);
        self.start_apiserver_again()
    }

    /// Wait until `/readyz` answers through the kubeconfig.
    pub fn wait_ready(&self) -> Result<()> {
        let ready = || {
            self.kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"])
                .ok()
                .map(|_| ())
        };
        wait_for(READY_TIMEOUT, ready).ok_or_else(|| LabError::Timeout {
            what: format!("kube-apiserver on 127.0.0.1:{} to be ready", self.port),
            after: READY_TIMEOUT,
            log: tail(&self.log(), 20),
        })
    }

    fn pids_path(&self) -> PathBuf {
        self.workdir.join("pids")
    }

    /// The first line of `WORKDIR/pids`: kube-apiserver.
    fn apiserver_pid(&self) -> Result<i32> {
        let path = self.pids_path();
        let text = std::fs::read_to_string(&path).map_err(LabError::io(&path))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| self.error("its pids file names no kube-apiserver"))
    }

    fn set_apiserver_pid(&self, pid: u32) -> Result<()> {
        let path = self.pids_path();
        let text = std::fs::read_to_string(&path).map_err(LabError::io(&path))?;
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        match lines.first_mut() {
            Some(first) => *first = pid.to_string(),
            None => lines.push(pid.to_string()),
        }
        let tmp = self.workdir.join(".pids.tmp");
        std::fs::write(&tmp, lines.join("\n") + "\n").map_err(LabError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(LabError::io(&path))
    }

    /// The command line of `pid` when it is a live process of this work directory (one of its
    /// arguments lies inside it, the script's own test).
    fn command_of(&self, pid: i32) -> Option<Vec<OsString>> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<OsString> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
            .collect();
        args.iter()
            .any(|a| Path::new(a).starts_with(&self.workdir))
            .then_some(args)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        stop_workdir(&self.found.script, &self.workdir);
        // A kube-apiserver started again here was stopped by the script through `pids`: reap it.
        if let Some(mut child) = self.restarted.take() {
            child.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_name_where_they_were_looked_for() {
        let missing = Missing(vec![
            MissingPiece {
                what: "kube-apiserver",
                looked_in: vec![
                    "$KUBE_APISERVER (unset)".into(),
                    "/x/bin/kube-apiserver".into(),
                ],
            },
            MissingPiece {
                what: "etcd",
                looked_in: vec!["etcd on PATH".into()],
            },
        ]);
        assert_eq!(
            missing.to_string(),
            "no kube-apiserver (looked in $KUBE_APISERVER (unset), /x/bin/kube-apiserver); \
             no etcd (looked in etcd on PATH)"
        );
    }

    #[test]
    fn a_variable_that_is_set_is_the_only_candidate() {
        // As in the script: a set variable naming nothing usable is an error, not a fall-through.
        let piece = look(
            "thing",
            &[
                Place::Env("PATH"), // set, but not a file
                Place::OnPath("sh"),
            ],
        )
        .unwrap_err();
        assert_eq!(piece.what, "thing");
        assert_eq!(piece.looked_in.len(), 1);
        assert!(piece.looked_in[0].starts_with("$PATH="));
        let sh = look(
            "sh",
            &[Place::Env("WEFT_SURELY_UNSET_VAR"), Place::OnPath("sh")],
        )
        .unwrap();
        assert!(sh.ends_with("sh"));
    }
}
