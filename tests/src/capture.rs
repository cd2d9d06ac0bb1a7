//! What crosses a wire, for the tests that must show it: a `tcpdump` capture into a file, and a
//! known payload sent pod to pod over TCP so a capture can be searched for it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::NetnsGuard;
use crate::procs::ChildGuard;

/// How long tcpdump gets to open its interface, and to write out what it holds when stopped (it is
/// slow to do either under a loaded CI machine).
const SETTLE: Duration = Duration::from_millis(1500);

/// A running `tcpdump -i IFACE -n -U -w FILE [FILTER]` in a namespace; killed if dropped unstopped.
pub struct Capture {
    tcpdump: ChildGuard,
    path: PathBuf,
}

impl Capture {
    /// Capture on `iface` in `netns` into `path`, keeping packets that match `filter` (tcpdump's
    /// filter words; empty for all). Returns once tcpdump has had time to start.
    pub fn start(netns: &NetnsGuard, iface: &str, path: &Path, filter: &[&str]) -> Result<Capture> {
        let mut command = netns.command("tcpdump");
        command
            .args(["-i", iface, "-n", "-U", "-w"])
            .arg(path)
            .args(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let tcpdump = ChildGuard::spawn("tcpdump", &mut command)?;
        std::thread::sleep(SETTLE);
        Ok(Capture {
            tcpdump,
            path: path.to_path_buf(),
        })
    }

    /// Stop the capture (SIGINT, after letting tcpdump write what it holds); returns the file.
    pub fn stop(mut self) -> PathBuf {
        std::thread::sleep(SETTLE);
        self.tcpdump.signal(nix::sys::signal::Signal::SIGINT);
        self.tcpdump.wait_timeout(Duration::from_secs(5));
        self.path.clone()
    }
}

/// The packets of the capture file `path` that match `filter`, one `tcpdump -n -q` line each.
pub fn read(netns: &NetnsGuard, path: &Path, filter: &[&str]) -> Result<String> {
    let path = path.to_str().ok_or_else(|| LabError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("not UTF-8"),
    })?;
    let mut args = vec!["tcpdump", "-r", path, "-n", "-q"];
    args.extend_from_slice(filter);
    netns.exec(&args)
}

/// Send `marker` 50 times over TCP (port 7000) from `client` to `server` at each of
/// `addresses`, and check each connection delivered it.
pub fn send_marker(
    client: &NetnsGuard,
    server: &NetnsGuard,
    addresses: &[IpAddr],
    marker: &str,
) -> Result<()> {
    let failed = |what: String| LabError::io(what);
    for &address in addresses {
        let target = SocketAddr::new(address, 7000);
        let listener = server
            .tcp_listen(target)
            .map_err(failed(format!("listen on {target}")))?;
        let reader = std::thread::spawn(move || -> std::io::Result<String> {
            let (mut stream, _) = listener.accept()?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        let mut stream = client
            .tcp_connect(target, Duration::from_secs(3))
            .map_err(failed(format!("connect to {target}")))?;
        for _ in 0..50 {
            stream
                .write_all(marker.as_bytes())
                .map_err(failed(format!("send to {target}")))?;
        }
        drop(stream);
        let received = reader
            .join()
            .map_err(|_| LabError::Panicked(format!("the reader on {target}")))?
            .map_err(failed(format!("receive on {target}")))?;
        if !received.contains(marker) {
            return Err(LabError::io(format!("{target}"))(std::io::Error::other(
                "the marker did not arrive",
            )));
        }
    }
    Ok(())
}
