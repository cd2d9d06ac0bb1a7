//! The WireGuard cross-platform control protocol ("UAPI", <https://www.wireguard.com/xplatform/>),
//! as `weft-wg` (boringtun) and wireguard-go serve it on `/var/run/wireguard/IFNAME.sock`, and as
//! `wg show` / `wg set` speak it.
//!
//! A request is `get=1\n\n` or `set=1\n` + `key=value` lines + `\n`; every reply ends with
//! `errno=N\n\n`, N = 0 on success. Keys are lowercase hex. weft sends one peer per `set` and
//! checks the `errno` line itself: a socket that closes without one is an error, never success.
//! Every call blocks (run it off the async workers) and gives up after [`TIMEOUT`].

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use weft_proto::lease::WgPublicKey;

use super::keys::PrivateKey;
use super::state::WgPeer;

/// How long one request may take before it counts as hung.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the control socket of `device` is: `/var/run/wireguard/DEVICE.sock`.
pub fn socket_path(device: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{device}.sock"))
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// Nothing listens: no socket file, or no process behind it.
    #[error("{path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the device answered errno={errno}")]
    Errno { path: PathBuf, errno: i32 },
    #[error("{path}: the socket closed without an errno line")]
    NoReply { path: PathBuf },
    #[error("{path}: cannot read the reply line {line:?}")]
    Malformed { path: PathBuf, line: String },
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub public_key: WgPublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 (off) reads as `None`.
    pub keepalive: Option<u16>,
    /// Time since the Unix epoch of the latest handshake; `None` if none yet.
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerInfo {
    /// A peer known by its key only, before its other attributes are read.
    pub fn new(public_key: WgPublicKey) -> PeerInfo {
        PeerInfo {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// The device as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The public key of the device's private key (which never leaves this module).
    pub public_key: Option<WgPublicKey>,
    pub listen_port: u16,
    pub peers: Vec<PeerInfo>,
}

/// A client of one device's control socket.
#[derive(Debug, Clone)]
pub struct Uapi {
    pub path: PathBuf,
}

impl Uapi {
    pub fn new(device: &str) -> Uapi {
        Uapi {
            path: socket_path(device),
        }
    }

    /// Whether something answers on the socket (a `get` succeeds).
    pub fn alive(&self) -> bool {
        self.get().is_ok()
    }

    /// The device's key, port and peers.
    pub fn get(&self) -> Result<DeviceInfo, UapiError> {
        let lines = self.request("get=1\n\n")?;
        parse_get(&lines).map_err(|line| UapiError::Malformed {
            path: self.path.clone(),
            line: redact(line),
        })
    }

    /// Set the device's private key.
    pub fn set_key(&self, key: &PrivateKey) -> Result<(), UapiError> {
        self.set(&format!("private_key={}\n", key.hex()))
    }

    pub fn set_port(&self, port: u16) -> Result<(), UapiError> {
        self.set(&format!("listen_port={port}\n"))
    }

    /// Add a peer the device does not hold (its allowed IPs replace any it had).
    pub fn add_peer(&self, key: &WgPublicKey, peer: &WgPeer) -> Result<(), UapiError> {
        self.set(&add_peer_body(key, peer))
    }

    pub fn remove_peer(&self, key: &WgPublicKey) -> Result<(), UapiError> {
        self.set(&format!("public_key={}\nremove=true\n", hex(&key.0)))
    }

    fn set(&self, body: &str) -> Result<(), UapiError> {
        self.request(&format!("set=1\n{body}\n")).map(|_| ())
    }

    /// Send `request`, read the reply up to its `errno` line; the lines before it on success.
    fn request(&self, request: &str) -> Result<Vec<String>, UapiError> {
        let io = |source| UapiError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.path).map_err(|source| UapiError::Connect {
            path: self.path.clone(),
            source,
        })?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(io)?;
            if let Some(errno) = line.strip_prefix("errno=") {
                return match errno.trim().parse::<i32>() {
                    Ok(0) => Ok(lines),
                    Ok(errno) => Err(UapiError::Errno {
                        path: self.path.clone(),
                        errno,
                    }),
                    Err(_) => Err(UapiError::Malformed {
                        path: self.path.clone(),
                        line,
                    }),
                };
            }
            lines.push(line);
        }
        Err(UapiError::NoReply {
            path: self.path.clone(),
        })
    }
}

/// The `set` body adding `key` as a new peer.
pub fn add_peer_body(key: &WgPublicKey, peer: &WgPeer) -> String {
    let mut body = format!(
        "public_key={}\nendpoint={}\npersistent_keepalive_interval={}\nreplace_allowed_ips=true\n",
        hex(&key.0),
        peer.endpoint,
        peer.keepalive.unwrap_or(0)
    );
    for net in &peer.allowed_ips {
        body.push_str(&format!("allowed_ip={net}\n"));
    }
    body
}

/// `line` with the value of a `private_key` line blanked: nothing secret goes into an error.
fn redact(line: String) -> String {
    match line.split_once('=') {
        Some(("private_key", _)) => "private_key=(hidden)".to_string(),
        _ => line,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The lines of a `get` reply (without its `errno` line) → the device; the offending line on error.
pub fn parse_get(lines: &[String]) -> Result<DeviceInfo, String> {
    let mut device = DeviceInfo::default();
    for line in lines.iter().filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| line.clone())?;
        let bad = || line.clone();
        if key == "public_key" {
            let public_key = WgPublicKey(unhex(value).ok_or_else(bad)?);
            device.peers.push(PeerInfo::new(public_key));
            continue;
        }
        match device.peers.last_mut() {
            None => device_line(&mut device, key, value).ok_or_else(bad)?,
            Some(peer) => peer_line(peer, key, value).ok_or_else(bad)?,
        }
    }
    Ok(device)
}

/// One device-level `key=value`; `None` if the value does not parse. Unknown keys are skipped.
fn device_line(device: &mut DeviceInfo, key: &str, value: &str) -> Option<()> {
    match key {
        "private_key" => {
            let private = PrivateKey::from_bytes(unhex(value)?);
            device.public_key = (private.bytes() != [0; 32]).then(|| private.public_key());
        }
        "listen_port" => device.listen_port = value.parse().ok()?,
        _ => {}
    }
    Some(())
}

/// One peer-level `key=value`; `None` if the value does not parse. Unknown keys are skipped.
fn peer_line(peer: &mut PeerInfo, key: &str, value: &str) -> Option<()> {
    match key {
        "endpoint" => peer.endpoint = Some(value.parse().ok()?),
        "allowed_ip" => peer.allowed_ips.push(value.parse().ok()?),
        "persistent_keepalive_interval" => {
            peer.keepalive = Some(value.parse::<u16>().ok()?).filter(|s| *s != 0)
        }
        "last_handshake_time_sec" => {
            let seconds: u64 = value.parse().ok()?;
            peer.last_handshake = (seconds != 0).then(|| Duration::from_secs(seconds));
        }
        "last_handshake_time_nsec" => {
            let nanos: u32 = value.parse().ok()?;
            peer.last_handshake = peer
                .last_handshake
                .map(|t| t + Duration::from_nanos(nanos.into()));
        }
        "rx_bytes" => peer.rx_bytes = value.parse().ok()?,
        "tx_bytes" => peer.tx_bytes = value.parse().ok()?,
        _ => {}
    }
    Some(())
}
