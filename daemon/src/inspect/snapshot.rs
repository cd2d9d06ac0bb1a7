//! What `weftd status`, `weftd peers`, `weftd graph`, `weftd doctor` and the status page show: one
//! [`Snapshot`] of the running daemon, taken on request and sent as JSON over the control socket
//! (`RUN_DIR/weftd.sock`, see [`super::control`]). Plain data: every field is what the daemon
//! knew when it answered, with times as Unix seconds and round trips in microseconds.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The running daemon, as one value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// This node's name.
    pub node: String,
    /// weftd's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Unix seconds when the snapshot was taken.
    pub taken_at: u64,
    /// The lease store, as a line: `file /var/lib/weft/store`, `etcd https://10.0.0.1:2379
    /// prefix /weft`, `kube`.
    pub store: String,
    /// `vxlan` or `wireguard`.
    pub backend: String,
    /// How the backend runs, where it has a choice: `kernel` or `userspace` for WireGuard.
    pub backend_impl: Option<String>,
    /// The lease, once held.
    pub lease: Option<LeaseView>,
    /// Why the node has no lease yet (the last reason the store gave), while it has none.
    pub waiting: Option<String>,
    pub underlay: UnderlayView,
    /// The MTU of pod interfaces and tunnel devices, once the datapath is up.
    pub pod_mtu: Option<u32>,
    /// Whether the datapath was programmed at least once.
    pub programmed: bool,
    /// Peers this node programs, by node name.
    pub peers: Vec<PeerView>,
    /// Peers this node refused, by node name, with the reason.
    pub refused: Vec<RefusedView>,
    /// Pod addresses in use and the pool, per family; `None` without a CNI service.
    pub ipam: Option<IpamView>,
    /// The cluster pod CIDRs (`--cluster-cidr`), IPv4 first.
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNet>,
    /// The names of weft's tunnel devices on this node (VXLAN's, and the WireGuard device).
    #[serde(default)]
    pub tunnel_devices: Vec<String>,
}

/// The node's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// This node's pod CIDRs, IPv4 first.
    pub pod_cidrs: Vec<IpNet>,
    /// Unix seconds when it was last acquired or renewed.
    pub renewed_at: u64,
    /// Unix seconds after which the store drops it unless renewed.
    pub expires_at: u64,
}

/// The node's underlay: the published addresses and what carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayView {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    /// The interface that holds (or routes) the published address.
    pub interface: Option<String>,
    /// That interface's MTU.
    pub mtu: Option<u32>,
}

/// A peer this node programs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    /// Its pod CIDRs this node routes to, IPv4 first.
    pub pod_cidrs: Vec<IpNet>,
    /// Its underlay address: where its tunnel traffic goes.
    pub endpoint: IpAddr,
    /// The tunnel's UDP port at the peer, where the backend has one per peer (WireGuard).
    pub port: Option<u16>,
    pub health: Health,
    /// WireGuard only: what the device knows of the peer.
    pub wireguard: Option<WireGuardPeerView>,
}

/// The result of probing a peer through the tunnel (see [`super::probe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: HealthState,
    /// The last round-trip time, in microseconds.
    pub rtt_us: Option<u64>,
    /// Unix seconds since the peer has been in this state (since it was first probed, for
    /// `unknown`).
    pub since: Option<u64>,
    /// Unix seconds of the last reply.
    pub last_reply: Option<u64>,
    /// Echo requests sent and replies received since the peer appeared.
    pub sent: u64,
    pub received: u64,
}

/// Whether a peer answers through its tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not probed long enough to tell (or probing is off).
    #[default]
    Unknown,
    /// It answered within the last few probes.
    Up,
    /// The last few probes went unanswered.
    Down,
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        })
    }
}

/// WireGuard's view of a peer (from the device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardPeerView {
    /// Base64, as `wg show` prints it.
    pub public_key: String,
    /// Unix seconds of the latest handshake; `None` before the first.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A peer refused: it programs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedView {
    pub node: String,
    pub reason: String,
    /// The underlay address it publishes for the tunnels' family, if any.
    #[serde(default)]
    pub endpoint: Option<IpAddr>,
}

/// Pod addresses in use and the pool, per family (the pool excludes the network, gateway and
/// broadcast addresses IPAM never hands out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    pub v4: Option<PoolUse>,
    pub v6: Option<PoolUse>,
}

/// One family's pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUse {
    pub in_use: u64,
    /// Addresses IPAM can hand out (an IPv6 /64 is capped at `u64::MAX`).
    pub capacity: u64,
}
