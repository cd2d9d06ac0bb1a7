//! The real `weft-cni` binary, run as a container runtime runs it: `CNI_*` variables, the network
//! configuration on stdin, JSON on stdout and the exit status. No root needed; the daemon, where
//! there is one, is a tiny fake on a socket in a temporary directory.
//!
//! Run with `cargo test -p weft-cni`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};

use serde_json::{json, Value};
use weft_proto::cni::{self, CniCommand, CniError};
use weft_proto::shim::{self, ShimReply, ShimRequest};

const CONTAINER_ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout {:?} is not JSON: {e}", self.stdout))
    }
}

/// Runs the binary with exactly these variables (nothing inherited) and this stdin.
fn weft_cni(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft-cni");
    // VERSION exits without reading stdin, so the pipe may already be closed.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait for weft-cni");
    Run {
        status: out.status.code().expect("weft-cni exited by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn config(version: &str) -> String {
    json!({"cniVersion": version, "name": "weft", "type": "weft-cni", "mtu": 1450}).to_string()
}

fn add_vars(socket: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", CONTAINER_ID.to_string()),
        ("CNI_NETNS", "/var/run/netns/cni-1234".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".to_string(),
        ),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
        ("WEFT_CNI_SOCKET", socket.display().to_string()),
    ]
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[track_caller]
fn assert_cni_error(run: &Run, code: u32, version: &str, needles: &[&str]) {
    assert_eq!(
        run.status, 1,
        "stdout {:?} stderr {:?}",
        run.stdout, run.stderr
    );
    let out = run.json();
    assert_eq!(out["code"], code, "{out}");
    assert_eq!(out["cniVersion"], version, "{out}");
    let msg = out["msg"].as_str().unwrap();
    for needle in needles {
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
}

/// A one-shot daemon: accepts one connection, reads the request to end of stream, answers with
/// `reply` (or closes without answering when it is `None`), and hands back what it received.
struct FakeDaemon {
    socket: PathBuf,
    handle: Option<JoinHandle<Option<ShimRequest>>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    fn start(reply: Option<ShimReply>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut bytes = Vec::new();
            conn.read_to_end(&mut bytes).unwrap();
            if bytes.is_empty() {
                return None; // the unblocking connection from `received`
            }
            let request = shim::decode_request(&bytes).unwrap();
            if let Some(reply) = reply {
                conn.write_all(&shim::encode_reply(&reply)).unwrap();
            }
            Some(request)
        });
        FakeDaemon {
            socket,
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// The request the daemon received; call after the binary has exited.
    fn received(mut self) -> Option<ShimRequest> {
        let handle = self.handle.take().unwrap();
        if !handle.is_finished() {
            // The binary never connected (or is just finishing): unblock accept() with an empty
            // connection rather than hang.
            let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        }
        handle.join().expect("fake daemon panicked")
    }
}

#[test]
fn version_works_without_daemon() {
    let run = weft_cni(
        &[
            ("CNI_COMMAND", "VERSION"),
            ("WEFT_CNI_SOCKET", "/nonexistent/weft.sock"),
        ],
        r#"{"cniVersion": "1.1.0"}"#,
    );
    assert_eq!(run.status, 0, "{}", run.stdout);
    assert_eq!(run.json(), cni::version_result());
    assert_eq!(run.json()["supportedVersions"][4], "1.1.0");
}

#[test]
fn add_without_daemon_is_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let vars = add_vars(&socket);
    let run = weft_cni(&borrowed(&vars), &config("1.0.0"));
    assert_cni_error(
        &run,
        CniError::TRY_AGAIN_LATER,
        "1.0.0",
        &["weftd is not running", &socket.display().to_string()],
    );
}

#[test]
fn add_with_socket_nobody_listens_on_is_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    drop(UnixListener::bind(&socket).unwrap()); // the file stays: ECONNREFUSED
    let vars = add_vars(&socket);
    let run = weft_cni(&borrowed(&vars), &config("0.4.0"));
    assert_cni_error(
        &run,
        CniError::TRY_AGAIN_LATER,
        "0.4.0",
        &[&socket.display().to_string()],
    );
}

#[test]
fn daemon_socket_comes_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("from-config.sock");
    let mut vars = add_vars(&socket);
    vars.retain(|(k, _)| *k != "WEFT_CNI_SOCKET");
    let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
                      "daemonSocket": socket});
    let run = weft_cni(&borrowed(&vars), &conf.to_string());
    assert_cni_error(
        &run,
        CniError::TRY_AGAIN_LATER,
        "1.1.0",
        &[&socket.display().to_string()],
    );
}

#[test]
fn status_without_daemon_is_plugin_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let socket_var = socket.display().to_string();
    let run = weft_cni(
        &[("CNI_COMMAND", "STATUS"), ("WEFT_CNI_SOCKET", &socket_var)],
        &config("1.1.0"),
    );
    assert_cni_error(
        &run,
        CniError::PLUGIN_NOT_AVAILABLE,
        "1.1.0",
        &[&socket_var],
    );
}

#[test]
fn invalid_environment_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");

    let mut vars = add_vars(&socket);
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    let run = weft_cni(&borrowed(&vars), &config("1.1.0"));
    assert_cni_error(&run, CniError::INVALID_ENVIRONMENT, "1.1.0", &["CNI_NETNS"]);

    let run = weft_cni(&borrowed(&add_vars(&socket)), "{\"cniVersion\": ");
    assert_cni_error(&run, CniError::DECODING_FAILURE, "1.1.0", &["JSON"]);

    let run = weft_cni(&[("CNI_COMMAND", "UPDATE")], "");
    assert_cni_error(
        &run,
        CniError::INVALID_ENVIRONMENT,
        "1.1.0",
        &["CNI_COMMAND", "UPDATE"],
    );
}

#[test]
fn add_through_a_daemon_prints_its_result() {
    let result = json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "weft1a2b3c4d5e6", "mac": "0a:58:0a:f4:01:01"},
            {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/cni-1234"}
        ],
        "ips": [{"address": "10.244.1.5/24", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    });
    let daemon = FakeDaemon::start(Some(ShimReply::Success {
        result: result.clone(),
    }));
    let vars = add_vars(&daemon.socket);
    let stdin = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
                       "mtu": 1450, "ipMasq": true});
    let run = weft_cni(&borrowed(&vars), &stdin.to_string());
    let request = daemon.received().expect("the daemon got no request");

    assert_eq!(
        run.status, 0,
        "stdout {:?} stderr {:?}",
        run.stdout, run.stderr
    );
    assert_eq!(
        run.stdout,
        format!("{result}\n"),
        "printed exactly the result"
    );
    assert_eq!(run.json(), result);

    assert_eq!(request.api_version, shim::SHIM_API_VERSION);
    assert_eq!(request.command, CniCommand::Add);
    assert_eq!(request.container_id.as_deref(), Some(CONTAINER_ID));
    assert_eq!(request.netns.as_deref(), Some("/var/run/netns/cni-1234"));
    assert_eq!(request.ifname.as_deref(), Some("eth0"));
    assert_eq!(
        request.args,
        vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), "web-0".to_string()),
        ]
    );
    assert_eq!(request.path.as_deref(), Some("/opt/cni/bin"));
    assert_eq!(
        request.config, stdin,
        "the configuration is passed on unchanged"
    );
}

#[test]
fn daemon_error_is_printed_in_the_request_version() {
    let daemon = FakeDaemon::start(Some(ShimReply::from(
        CniError::new(
            CniError::INVALID_NETWORK_CONFIG,
            "field \"mtu\": 70000 is outside 68..=65535",
        )
        .with_details("see weftd's log"),
    )));
    let vars = add_vars(&daemon.socket);
    let run = weft_cni(&borrowed(&vars), &config("0.3.1"));
    assert!(daemon.received().is_some());
    assert_cni_error(
        &run,
        CniError::INVALID_NETWORK_CONFIG,
        "0.3.1",
        &["\"mtu\""],
    );
    assert_eq!(run.json()["details"], "see weftd's log");
}

#[test]
fn del_with_empty_result_prints_nothing() {
    let daemon = FakeDaemon::start(Some(ShimReply::empty()));
    let socket = daemon.socket.display().to_string();
    let run = weft_cni(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", CONTAINER_ID),
            ("CNI_IFNAME", "eth0"),
            ("WEFT_CNI_SOCKET", &socket),
        ],
        &config("1.1.0"),
    );
    let request = daemon.received().unwrap();
    assert_eq!(run.status, 0, "{}", run.stdout);
    assert_eq!(run.stdout, "");
    assert_eq!(request.command, CniCommand::Del);
    assert_eq!(request.netns, None);
}

#[test]
fn daemon_closing_without_answer_is_try_again_later() {
    let daemon = FakeDaemon::start(None);
    let vars = add_vars(&daemon.socket);
    let run = weft_cni(&borrowed(&vars), &config("1.1.0"));
    let socket = daemon.socket.display().to_string();
    assert!(daemon.received().is_some());
    assert_cni_error(
        &run,
        CniError::TRY_AGAIN_LATER,
        "1.1.0",
        &["without answering", &socket],
    );
}
