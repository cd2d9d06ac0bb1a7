//! A real etcd server for tests and the lab: Debian's `etcd` binary, on free loopback ports, with a
//! temporary data directory; stopped and removed when the guard drops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::enter_path;
use crate::pki::{CertFiles, TestPki};
use crate::procs::{wait_for, ChildGuard};

pub struct EtcdServer {
    process: Option<ChildGuard>,
    data: tempfile::TempDir,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    /// The network namespace it runs in (`/run/netns/NAME`), if not this process's own.
    netns: Option<String>,
    /// TLS on the client port, with client certificates required.
    tls: Option<ServerTls>,
}

/// The files of a TLS etcd: its CA (which also signs the clients it accepts) and its certificate.
struct ServerTls {
    ca: PathBuf,
    server: CertFiles,
    /// Plain-HTTP port of `/health` (`--listen-metrics-urls`), as the client port needs a
    /// client certificate.
    health_port: u16,
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// The etcd binary: `$WEFT_ETCD_BIN`, else `etcd` on PATH (Debian's `etcd-server` package).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("WEFT_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// A fresh temporary data directory.
fn data_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("weft-etcd-")
        .tempdir()
        .map_err(LabError::io(std::env::temp_dir()))
}

impl EtcdServer {
    /// Start etcd on loopback and wait until it answers.
    pub fn start() -> Result<EtcdServer> {
        let data = data_dir()?;
        let mut server = EtcdServer {
            process: None,
            data,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: free_port(),
            peer_port: free_port(),
            netns: None,
            tls: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Start etcd on loopback serving TLS with a certificate of `pki`, and accepting only clients
    /// that show a certificate `pki` signed (`--client-cert-auth`).
    pub fn start_tls(pki: &TestPki) -> Result<EtcdServer> {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut server = EtcdServer {
            process: None,
            data: data_dir()?,
            ip,
            client_port: free_port(),
            peer_port: free_port(),
            netns: None,
            tls: Some(ServerTls {
                ca: pki.ca_file(),
                server: pki.server("etcd-server", ip)?,
                health_port: free_port(),
            }),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Start etcd inside the named network namespace, listening on `ip` (the lab puts it on its
    /// underlay, where every node can reach it).
    pub fn start_in(netns: &str, ip: IpAddr) -> Result<EtcdServer> {
        let data = data_dir()?;
        let mut server = EtcdServer {
            process: None,
            data,
            ip,
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns.to_string()),
            tls: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL: `http://IP:PORT`, or `https://` when serving TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(self.ip, self.client_port))
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn spawn(&mut self) -> Result<()> {
        let peer = format!("http://{}", SocketAddr::new(self.ip, self.peer_port));
        let log_path = self.data.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(LabError::io(&log_path))?;
        let log_copy = log.try_clone().map_err(LabError::io(&log_path))?;
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(etcd_binary());
                c
            }
            None => Command::new(etcd_binary()),
        };
        command
            .arg("--name=weft-test")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .args(self.tls_args())
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log);
        self.process = Some(ChildGuard::spawn("etcd", &mut command)?);
        self.wait_ready()
    }

    /// The TLS flags, when serving TLS.
    fn tls_args(&self) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        vec![
            format!("--cert-file={}", tls.server.cert.display()),
            format!("--key-file={}", tls.server.key.display()),
            format!("--trusted-ca-file={}", tls.ca.display()),
            "--client-cert-auth".into(),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", tls.health_port),
        ]
    }

    fn wait_ready(&self) -> Result<()> {
        let addr = match &self.tls {
            Some(tls) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), tls.health_port),
            None => SocketAddr::new(self.ip, self.client_port),
        };
        let netns = self.netns.clone();
        let health = || {
            let netns = netns.clone();
            let connect = move || -> Option<std::net::TcpStream> {
                if let Some(name) = &netns {
                    enter_path(&format!("/run/netns/{name}")).ok()?;
                }
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
            };
            let mut stream = std::thread::spawn(connect).join().ok()??;
            use std::io::{Read, Write};
            stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).ok()?;
            reply.contains("\"health\":\"true\"").then_some(())
        };
        let after = Duration::from_secs(20);
        wait_for(after, health).ok_or_else(|| LabError::Timeout {
            what: format!("etcd to become healthy on {addr}"),
            after,
            log: std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default(),
        })
    }

    /// Let the server and its data outlive the guard (for `weft-lab up`).
    pub fn detach(mut self) {
        if let Some(process) = self.process.take() {
            process.detach();
        }
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("tempdir"));
        let _ = data.keep();
    }

    /// Kill the server (SIGKILL), keeping its data for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Start again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
