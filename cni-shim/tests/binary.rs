//! The real `weft-cni` binary, run as a container runtime runs it: `CNI_*` variables, the network
//! configuration on stdin, JSON on stdout and the exit status. No root needed; the daemon, where
//! there is one, is a tiny fake on a socket in a temporary directory.
//!
//! Run with `cargo test -p weft-cni`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};

use serde_json::{json, Value};
use weft_proto::cni::{self, CniCommand, CniError};
use weft_proto::shim::{self, ShimReply, ShimRequest};

const CONTAINER_ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";

/// A network namespace any process may open without privileges: its own. The shim opens it and
/// sends the descriptor; the fake daemon compares it with the test's own (the same namespace).
const NETNS: &str = "/proc/self/ns/net";

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
        ("CNI_NETNS", NETNS.to_string()),
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

/// The first chunk of a connection, with the descriptors that came with it (`recvmsg`, as weftd
/// reads).
fn recv_first(conn: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: recvmsg into buffers that outlive it; the kernel installed the descriptors it
    // reports in SCM_RIGHTS messages, so they are ours.
    let read = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let read = libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(read >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            for i in 0..len / std::mem::size_of::<RawFd>() {
                fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        read as usize
    };
    buf.truncate(read);
    (buf, fds)
}

/// The device and inode of what a descriptor or path refers to.
fn identity(file: &std::fs::File) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().unwrap();
    (meta.dev(), meta.ino())
}

/// What the fake daemon received: the request and the descriptors that came with it.
type Received = (ShimRequest, Vec<OwnedFd>);

/// A one-shot daemon: accepts one connection, reads the request to end of stream (the first chunk
/// with `recvmsg`, collecting descriptors), answers with `reply` (or closes without answering when
/// it is `None`), and hands back what it received.
struct FakeDaemon {
    socket: PathBuf,
    handle: Option<JoinHandle<Option<Received>>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    fn start(reply: Option<ShimReply>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let (mut bytes, fds) = recv_first(&conn);
            conn.read_to_end(&mut bytes).unwrap();
            if bytes.is_empty() {
                return None; // the unblocking connection from `received`
            }
            let request = shim::decode_request(&bytes).unwrap();
            if let Some(reply) = reply {
                conn.write_all(&shim::encode_reply(&reply)).unwrap();
            }
            Some((request, fds))
        });
        FakeDaemon {
            socket,
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// The request the daemon received; call after the binary has exited.
    fn received(self) -> Option<ShimRequest> {
        self.received_with_fds().map(|(request, _)| request)
    }

    /// The request and the descriptors the daemon received; call after the binary has exited.
    fn received_with_fds(mut self) -> Option<Received> {
        let handle = self.handle.take().unwrap();
        if !handle.is_finished() {
            // The binary never connected (or is just finishing): unblock accept() with an empty
            // connection rather than hang.
            let _ = UnixStream::connect(&self.socket);
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
    let (request, fds) = daemon
        .received_with_fds()
        .expect("the daemon got no request");

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
    assert_eq!(request.netns.as_deref(), Some(NETNS), "the path, for logs");
    let [fd] = <[OwnedFd; 1]>::try_from(fds).expect("one descriptor");
    let ours = std::fs::File::open("/proc/self/ns/net").unwrap();
    assert_eq!(
        identity(&std::fs::File::from(fd)),
        identity(&ours),
        "the namespace at CNI_NETNS, opened by the shim"
    );
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

#[test]
fn add_and_check_with_a_namespace_that_does_not_open_fail_before_the_daemon() {
    let daemon = FakeDaemon::start(Some(ShimReply::empty()));
    let missing = daemon._dir.path().join("gone");
    for verb in ["ADD", "CHECK"] {
        let mut vars = add_vars(&daemon.socket);
        vars.retain(|(k, _)| *k != "CNI_NETNS" && *k != "CNI_COMMAND");
        vars.push(("CNI_COMMAND", verb.to_string()));
        vars.push(("CNI_NETNS", missing.display().to_string()));
        let run = weft_cni(&borrowed(&vars), &config("1.1.0"));
        let path = format!("CNI_NETNS={}: cannot open", missing.display());
        assert_cni_error(&run, CniError::INVALID_ENVIRONMENT, "1.1.0", &[&path]);
    }
    assert!(daemon.received().is_none(), "weftd was not asked");
}

#[test]
fn del_sends_the_namespace_when_it_opens_and_goes_on_when_it_is_gone() {
    for (netns, descriptors) in [(NETNS, 1), ("/var/run/netns/deleted-already", 0)] {
        let daemon = FakeDaemon::start(Some(ShimReply::empty()));
        let socket = daemon.socket.display().to_string();
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", CONTAINER_ID),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("WEFT_CNI_SOCKET", &socket),
        ];
        let run = weft_cni(&vars, &config("1.1.0"));
        let (request, fds) = daemon.received_with_fds().expect("a request");
        assert_eq!(run.status, 0, "{netns}: {}", run.stdout);
        assert_eq!(request.netns.as_deref(), Some(netns));
        assert_eq!(fds.len(), descriptors, "{netns}");
    }
}

#[test]
fn status_and_gc_send_no_descriptor() {
    for verb in ["STATUS", "GC"] {
        let daemon = FakeDaemon::start(Some(ShimReply::empty()));
        let socket = daemon.socket.display().to_string();
        let vars = [
            ("CNI_COMMAND", verb),
            ("CNI_NETNS", NETNS),
            ("WEFT_CNI_SOCKET", &socket),
        ];
        let run = weft_cni(&vars, &config("1.1.0"));
        let (_, fds) = daemon.received_with_fds().expect("a request");
        assert_eq!(run.status, 0, "{verb}: {}", run.stdout);
        assert!(fds.is_empty(), "{verb}");
    }
}
