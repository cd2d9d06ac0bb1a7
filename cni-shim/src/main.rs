//! weft-cni: the CNI plugin binary the container runtime executes for every pod attachment.
//!
//! It holds no networking logic. It reads the `CNI_*` environment and the network configuration on
//! stdin, forwards them as one request to `weftd` over a unix socket, and prints what comes back:
//! the daemon's result (exit 0) or a CNI error as JSON on stdout (exit 1), as the CNI spec asks.
//! The protocol is documented in `weft_proto::shim`.
//!
//! - `VERSION` is answered here, without the daemon and without reading stdin.
//! - The pod's network namespace goes to `weftd` as a descriptor: the shim opens `CNI_NETNS` here,
//!   in the runtime's mount namespace, where the path means what the runtime meant (`weftd` in a
//!   DaemonSet may see another `/run/netns`, or none). ADD and CHECK fail when it does not open
//!   (code 4 naming the path; 11 when the shim is out of descriptors or memory); DEL sends it when
//!   it opens and goes on without it when it does not (the runtime may have deleted it already).
//! - The socket is the configuration's `daemonSocket`, else `/run/weft/cni.sock`; the environment
//!   variable `WEFT_CNI_SOCKET` overrides both (tests and the lab use it).
//! - The configuration is checked only for being JSON (code 6) and for a string `daemonSocket`:
//!   `weftd` validates the rest, so there is one set of rules in one place.
//! - `weftd` not running (socket missing or refusing connections), closing without an answer, or
//!   not answering within 60 s: code 11 "try again later" naming the socket; for `STATUS`, code 50
//!   "plugin not available".
//!
//! It links std, weft-proto, serde_json and libc (for `sendmsg`) and nothing else, so it starts in
//! about a millisecond.

mod netns_fd;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use weft_proto::cni::{self, CniCommand, CniEnv, CniError};
use weft_proto::shim::{self, NetnsDescriptor, ShimError, ShimReply, ShimRequest};

/// Overrides `daemonSocket` and the default socket path.
const SOCKET_ENV: &str = "WEFT_CNI_SOCKET";

/// How long to wait for weftd's reply (per read): long enough for an ADD under load, short enough
/// that a hung daemon does not hang the runtime.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for weftd to take the request.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let outcome = run(&environment(), &mut io::stdin().lock());
    finish(outcome, &mut io::stdout().lock())
}

/// The variables the shim reads. Values that are not UTF-8 are converted lossily, and then fail
/// validation by name rather than vanish.
fn environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            let wanted = key.starts_with("CNI_") || key == SOCKET_ENV;
            wanted.then(|| (key, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// A failed invocation: the error, and the spec version to print it in.
#[derive(Debug)]
struct Failure {
    error: CniError,
    cni_version: &'static str,
}

/// Everything but the printing: the result to print (if any), or the failure.
fn run(env: &BTreeMap<String, String>, stdin: &mut impl Read) -> Result<Option<Value>, Failure> {
    let latest = |error| Failure {
        error,
        cni_version: cni::LATEST_VERSION,
    };

    let command: CniCommand =
        match env.get(cni::ENV_COMMAND).filter(|c| !c.is_empty()) {
            Some(command) => command.parse().map_err(latest)?,
            None => return Err(latest(
                CniError::invalid_env(format!("{} is not set", cni::ENV_COMMAND)).with_details(
                    "weft-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND and \
                     the other CNI_* variables set and the network configuration on stdin",
                ),
            )),
        };
    if command == CniCommand::Version {
        return Ok(Some(cni::version_result()));
    }

    let config = read_config(stdin).map_err(latest)?;
    let cni_version = cni::output_version(config.get("cniVersion").and_then(Value::as_str));
    let fail = |error| Failure { error, cni_version };

    let env_vars = CniEnv::from_map(env).map_err(fail)?;
    let socket = socket_path(env, &config).map_err(fail)?;
    let netns = open_netns(&env_vars).map_err(fail)?;
    let request = ShimRequest::new(&env_vars, config);
    let netns = netns.as_ref().map(File::as_fd);
    match exchange(&socket, &request, netns).map_err(fail)? {
        ShimReply::Success {
            result: Value::Null,
        } => Ok(None),
        ShimReply::Success { result } => Ok(Some(result)),
        ShimReply::Error { error } => Err(fail(error)),
    }
}

/// Prints the outcome on stdout and picks the exit status: 0 with the result (or nothing), or 1
/// with the error JSON.
fn finish(outcome: Result<Option<Value>, Failure>, out: &mut impl Write) -> ExitCode {
    let (document, status) = match outcome {
        Ok(result) => (result, ExitCode::SUCCESS),
        Err(Failure { error, cni_version }) => {
            (Some(error.to_json(cni_version)), ExitCode::FAILURE)
        }
    };
    if let Some(document) = document {
        // If stdout is gone there is no one left to tell; the exit status still says it.
        let _ = writeln!(out, "{document}").and_then(|()| out.flush());
    }
    status
}

/// The network configuration on stdin: any JSON document (weftd validates it).
fn read_config(stdin: &mut impl Read) -> Result<Value, CniError> {
    let mut raw = Vec::new();
    stdin
        .take(shim::MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| {
            CniError::new(
                CniError::IO_FAILURE,
                format!("cannot read the network configuration from stdin: {e}"),
            )
        })?;
    if raw.len() > shim::MAX_MESSAGE_BYTES {
        return Err(CniError::invalid_config(format!(
            "the network configuration on stdin is larger than {} bytes",
            shim::MAX_MESSAGE_BYTES
        )));
    }
    serde_json::from_slice(&raw).map_err(|e| {
        CniError::new(
            CniError::DECODING_FAILURE,
            format!("the network configuration on stdin is not valid JSON: {e}"),
        )
    })
}

/// The pod's network namespace, opened here for the verbs that send it
/// ([`NetnsDescriptor::for_command`]).
fn open_netns(env: &CniEnv) -> Result<Option<File>, CniError> {
    let Some(path) = env.netns.as_deref() else {
        return Ok(None);
    };
    match NetnsDescriptor::for_command(env.command) {
        NetnsDescriptor::Never => Ok(None),
        NetnsDescriptor::IfItOpens => Ok(netns_fd::open(Path::new(path)).ok()),
        NetnsDescriptor::Required => netns_fd::open(Path::new(path)).map(Some).map_err(|e| {
            let code = if netns_fd::is_transient(&e) {
                CniError::TRY_AGAIN_LATER
            } else {
                CniError::INVALID_ENVIRONMENT
            };
            CniError::new(
                code,
                format!("CNI_NETNS={path}: cannot open the pod's network namespace: {e}"),
            )
        }),
    }
}

/// `WEFT_CNI_SOCKET`, else the configuration's `daemonSocket`, else the default.
fn socket_path(env: &BTreeMap<String, String>, config: &Value) -> Result<PathBuf, CniError> {
    if let Some(path) = env.get(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    match config.get("daemonSocket") {
        None | Some(Value::Null) => Ok(PathBuf::from(cni::DEFAULT_DAEMON_SOCKET)),
        Some(Value::String(path)) => Ok(PathBuf::from(path)),
        Some(other) => Err(CniError::invalid_config(format!(
            "field \"daemonSocket\" must be a string path, not {other}"
        ))),
    }
}

/// weftd not there (yet): the runtime should retry; for STATUS that is "not available".
fn unavailable(command: CniCommand, msg: String) -> CniError {
    let code = match command {
        CniCommand::Status => CniError::PLUGIN_NOT_AVAILABLE,
        _ => CniError::TRY_AGAIN_LATER,
    };
    CniError::new(code, msg)
}

/// A connection to weftd, with the send and reply timeouts set.
fn connect(socket: &Path, command: CniCommand) -> Result<UnixStream, CniError> {
    let shown = socket.display();
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => unavailable(
            command,
            format!("weftd is not running: cannot connect to {shown}: {e}"),
        )
        .with_details("weftd serves CNI requests on this socket once it has started"),
        _ => CniError::new(
            CniError::IO_FAILURE,
            format!("cannot connect to weftd at {shown}: {e}"),
        ),
    })?;
    let timeouts = stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SEND_TIMEOUT)));
    timeouts.map_err(|e| {
        CniError::new(
            CniError::IO_FAILURE,
            format!("cannot set timeouts on the connection to {shown}: {e}"),
        )
    })?;
    Ok(stream)
}

/// One request (with the namespace descriptor on its first bytes, when there is one), one reply,
/// one connection.
fn exchange(
    socket: &Path,
    request: &ShimRequest,
    netns: Option<BorrowedFd<'_>>,
) -> Result<ShimReply, CniError> {
    let shown = socket.display();
    let unavailable = |msg: String| unavailable(request.command, msg);
    let stream = connect(socket, request.command)?;

    let bytes = shim::encode_request(request);
    let first = match netns {
        Some(fd) => netns_fd::send_with_fd(&stream, &bytes, fd),
        None => Ok(0),
    };
    first
        .and_then(|sent| (&stream).write_all(&bytes[sent..]))
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|e| unavailable(format!("weftd at {shown} did not take the request: {e}")))?;

    let mut reply = Vec::new();
    (&stream)
        .take(shim::MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut reply)
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => unavailable(format!(
                "weftd at {shown} did not answer within {} s",
                REPLY_TIMEOUT.as_secs()
            )),
            _ => unavailable(format!("reading weftd's reply from {shown}: {e}")),
        })?;

    shim::decode_reply(&reply).map_err(|e| match e {
        ShimError::Empty { .. } => unavailable(format!(
            "weftd at {shown} closed the connection without answering"
        )),
        _ => CniError::new(
            CniError::DECODING_FAILURE,
            format!("cannot decode weftd's reply from {shown}: {e}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Stdin that must not be read.
    struct Untouchable;
    impl Read for Untouchable {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("stdin was read");
        }
    }

    #[test]
    fn version_needs_neither_stdin_nor_daemon() {
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), &mut Untouchable).unwrap();
        assert_eq!(out, Some(cni::version_result()));
    }

    #[test]
    fn bad_command_fails_before_stdin() {
        let err = run(&env(&[]), &mut Untouchable).unwrap_err();
        assert_eq!(err.error.code, CniError::INVALID_ENVIRONMENT);
        assert!(err.error.msg.contains("CNI_COMMAND"));
        let err = run(&env(&[("CNI_COMMAND", "frob")]), &mut Untouchable).unwrap_err();
        assert!(err.error.msg.contains("frob"));
        assert_eq!(err.cni_version, cni::LATEST_VERSION);
    }

    #[test]
    fn errors_use_the_configuration_version() {
        let stdin = br#"{"cniVersion": "0.3.1", "name": "weft", "type": "weft-cni"}"#;
        let err = run(&env(&[("CNI_COMMAND", "ADD")]), &mut &stdin[..]).unwrap_err();
        assert_eq!(err.error.code, CniError::INVALID_ENVIRONMENT);
        assert_eq!(err.cni_version, "0.3.1");

        let err = run(&env(&[("CNI_COMMAND", "DEL")]), &mut &b"{nope"[..]).unwrap_err();
        assert_eq!(err.error.code, CniError::DECODING_FAILURE);
        assert_eq!(err.cni_version, cni::LATEST_VERSION);
    }

    #[test]
    fn socket_precedence() {
        let config = json!({"daemonSocket": "/run/weft-a/cni.sock"});
        assert_eq!(
            socket_path(&env(&[]), &json!({})).unwrap(),
            Path::new(cni::DEFAULT_DAEMON_SOCKET)
        );
        assert_eq!(
            socket_path(&env(&[]), &config).unwrap(),
            Path::new("/run/weft-a/cni.sock")
        );
        assert_eq!(
            socket_path(&env(&[(SOCKET_ENV, "/tmp/x.sock")]), &config).unwrap(),
            Path::new("/tmp/x.sock")
        );
        // Not an object: weftd will say so; the shim just uses the default.
        assert_eq!(
            socket_path(&env(&[]), &json!([1])).unwrap(),
            Path::new(cni::DEFAULT_DAEMON_SOCKET)
        );
        let err = socket_path(&env(&[]), &json!({"daemonSocket": 7})).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_NETWORK_CONFIG);
        assert!(err.msg.contains("daemonSocket"));
    }

    #[test]
    fn the_namespace_is_opened_for_the_verbs_that_send_it() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("ns");
        std::fs::write(&there, b"").unwrap();
        let missing = dir.path().join("gone");
        let parsed = |command: &str, netns: &Path| {
            let netns = netns.to_str().unwrap();
            let vars = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ];
            CniEnv::from_map(&env(&vars)).unwrap()
        };
        for verb in ["ADD", "CHECK", "DEL"] {
            assert!(
                open_netns(&parsed(verb, &there)).unwrap().is_some(),
                "{verb}"
            );
        }
        for verb in ["ADD", "CHECK"] {
            let err = open_netns(&parsed(verb, &missing)).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT, "{verb}");
            assert!(
                err.msg
                    .starts_with(&format!("CNI_NETNS={}: cannot open", missing.display())),
                "{verb}: {err}"
            );
        }
        // DEL goes on without it: the runtime may have deleted the namespace.
        assert!(open_netns(&parsed("DEL", &missing)).unwrap().is_none());
        let mut status = parsed("DEL", &there);
        status.command = CniCommand::Status;
        assert!(open_netns(&status).unwrap().is_none(), "STATUS sends none");
        let mut del = parsed("DEL", &there);
        del.netns = None;
        assert!(open_netns(&del).unwrap().is_none(), "DEL without CNI_NETNS");
    }

    #[test]
    fn oversized_stdin() {
        let big = vec![b' '; shim::MAX_MESSAGE_BYTES + 10];
        let err = read_config(&mut &big[..]).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn printing_and_exit_status() {
        let mut out = Vec::new();
        let status = finish(Ok(Some(json!({"cniVersion": "1.1.0"}))), &mut out);
        assert_eq!(status, ExitCode::SUCCESS);
        assert_eq!(out, b"{\"cniVersion\":\"1.1.0\"}\n");

        let mut out = Vec::new();
        assert_eq!(finish(Ok(None), &mut out), ExitCode::SUCCESS);
        assert!(out.is_empty());

        let mut out = Vec::new();
        let failure = Failure {
            error: CniError::new(CniError::TRY_AGAIN_LATER, "later"),
            cni_version: "0.4.0",
        };
        assert_eq!(finish(Err(failure), &mut out), ExitCode::FAILURE);
        let printed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            printed,
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "later", "details": ""})
        );
    }
}
