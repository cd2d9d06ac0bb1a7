//! The daemon's side of inspection: [`Inspector`], filled in by the parts of `weftd run` as they
//! start (the agent's lease, the reconcile loop's [`Mesh`], the prober's health table, IPAM), and
//! turned into a [`Snapshot`] on request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use tokio::sync::watch;
use weft_proto::lease::{Backend, Lease};

use super::probe::{self, SharedHealth, Target};
use super::snapshot::{
    IpamView, LeaseView, PeerView, RefusedView, Snapshot, UnderlayView, WireGuardPeerView,
};
use crate::backend::wireguard::Implementation;
use crate::config::{Config, StoreConfig};
use crate::store::unix_now;

/// What the reconcile loop's last plan programs: accepted and refused peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mesh {
    /// Accepted peers, by node name.
    pub peers: Vec<MeshPeer>,
    /// Refused peers, by node name.
    pub refused: Vec<RefusedView>,
}

/// A peer the node programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub node: String,
    /// Its pod CIDRs of the families this node runs, IPv4 first.
    pub pod_cidrs: Vec<IpNet>,
    /// Its underlay address of the tunnels' family.
    pub endpoint: IpAddr,
    /// WireGuard: its port and public key (base64).
    pub wireguard: Option<(u16, String)>,
}

impl Mesh {
    /// The prober's targets: each peer's tunnel address per pod CIDR (the CIDR's network address,
    /// which weft puts on the peer's tunnel device).
    pub fn targets(&self) -> Vec<Target> {
        self.peers
            .iter()
            .flat_map(|peer| {
                peer.pod_cidrs.iter().map(|cidr| Target {
                    node: peer.node.clone(),
                    addr: cidr.network(),
                })
            })
            .collect()
    }
}

/// A source of per-peer WireGuard figures (handshakes, bytes): the device.
#[derive(Debug, Clone)]
pub struct WireGuardSource {
    pub implementation: Implementation,
    pub device: String,
}

/// What the node's datapath side gives inspection once it runs.
pub struct DatapathParts {
    pub backend_impl: Option<String>,
    pub pod_mtu: Option<u32>,
    pub programmed: watch::Receiver<bool>,
    pub mesh: watch::Receiver<Mesh>,
    pub health: Option<SharedHealth>,
    /// Pod addresses in use and usable, per pod CIDR.
    pub ipam: Option<IpamUsage>,
    pub wireguard: Option<WireGuardSource>,
}

/// Reads IPAM's use: addresses in use and usable, per pod CIDR.
pub type IpamUsage = Arc<dyn Fn() -> BoxFuture<'static, Vec<(IpNet, u64, u64)>> + Send + Sync>;

/// The running daemon's inspectable state; cheap to share.
pub struct Inspector {
    node: String,
    cluster_cidrs: Vec<IpNet>,
    tunnel_devices: Vec<String>,
    store: String,
    backend: Backend,
    ttl: Duration,
    waiting: Mutex<Option<String>>,
    lease: Mutex<Option<watch::Receiver<Option<Lease>>>>,
    /// Unix seconds of the last acquisition or renewal.
    renewed_at: Arc<AtomicU64>,
    datapath: Mutex<Option<DatapathParts>>,
}

impl Inspector {
    pub fn new(config: &Config) -> Arc<Inspector> {
        let pools = [config.pool_v4, config.pool_v6];
        let mut tunnel_devices: Vec<String> = crate::backend::all_device_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let wireguard = config.wireguard.device.to_string();
        if !tunnel_devices.contains(&wireguard) {
            tunnel_devices.push(wireguard);
        }
        Arc::new(Inspector {
            node: config.node_name.to_string(),
            cluster_cidrs: pools.iter().flatten().map(|p| p.cluster).collect(),
            tunnel_devices,
            store: store_line(&config.store),
            backend: config.backend,
            ttl: config.lease_ttl,
            waiting: Mutex::new(None),
            lease: Mutex::new(None),
            renewed_at: Arc::new(AtomicU64::new(0)),
            datapath: Mutex::new(None),
        })
    }

    /// Where the lease keeper records each acquisition and renewal (Unix seconds).
    pub fn renewed_at(&self) -> Arc<AtomicU64> {
        self.renewed_at.clone()
    }

    /// Why the node has no lease yet; `None` once it has one.
    pub fn set_waiting(&self, reason: Option<String>) {
        *lock(&self.waiting) = reason;
    }

    pub fn set_lease(&self, lease: watch::Receiver<Option<Lease>>) {
        *lock(&self.lease) = Some(lease);
    }

    pub fn set_datapath(&self, parts: DatapathParts) {
        *lock(&self.datapath) = Some(parts);
    }

    /// The daemon as it is now.
    pub async fn snapshot(&self) -> Snapshot {
        let lease = lock(&self.lease).as_ref().and_then(|l| l.borrow().clone());
        let mut snapshot = Snapshot {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            taken_at: unix_now(),
            store: self.store.clone(),
            backend: self.backend.to_string(),
            waiting: lock(&self.waiting).clone(),
            lease: lease.as_ref().map(|l| self.lease_view(l)),
            underlay: lease.as_ref().map(underlay_view).unwrap_or_default(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            tunnel_devices: self.tunnel_devices.clone(),
            ..Snapshot::default()
        };
        let (wireguard, ipam) = self.fill_datapath(&mut snapshot);
        if let Some(source) = wireguard {
            add_wireguard(&mut snapshot, &source).await;
        }
        if let Some(usage) = ipam {
            snapshot.ipam = Some(ipam_view(&usage().await));
        }
        snapshot
    }

    fn lease_view(&self, lease: &Lease) -> LeaseView {
        let renewed_at = self.renewed_at.load(Ordering::Relaxed);
        LeaseView {
            pod_cidrs: lease.pod_cidrs.iter().collect(),
            renewed_at,
            expires_at: lease.expires.unwrap_or(renewed_at + self.ttl.as_secs()),
        }
    }

    /// The datapath's part of `snapshot`; the WireGuard device and IPAM to read, if any.
    fn fill_datapath(
        &self,
        snapshot: &mut Snapshot,
    ) -> (Option<WireGuardSource>, Option<IpamUsage>) {
        let parts = lock(&self.datapath);
        let Some(parts) = parts.as_ref() else {
            return (None, None);
        };
        snapshot.backend_impl = parts.backend_impl.clone();
        snapshot.pod_mtu = parts.pod_mtu;
        snapshot.programmed = *parts.programmed.borrow();
        let mesh = parts.mesh.borrow().clone();
        let health = probe::snapshot(parts.health.as_ref());
        snapshot.peers = mesh
            .peers
            .into_iter()
            .map(|peer| PeerView {
                health: health.get(&peer.node).cloned().unwrap_or_default(),
                port: peer.wireguard.as_ref().map(|(port, _)| *port),
                wireguard: peer.wireguard.map(|(_, key)| WireGuardPeerView {
                    public_key: key,
                    ..WireGuardPeerView::default()
                }),
                node: peer.node,
                pod_cidrs: peer.pod_cidrs,
                endpoint: peer.endpoint,
            })
            .collect();
        snapshot.refused = mesh.refused;
        (parts.wireguard.clone(), parts.ipam.clone())
    }
}

/// The store as one line.
fn store_line(store: &StoreConfig) -> String {
    match store {
        StoreConfig::File { dir } => format!("file {}", dir.display()),
        StoreConfig::Etcd {
            endpoints, prefix, ..
        } => format!("etcd {} prefix {prefix}", endpoints.join(",")),
        StoreConfig::Kube { .. } => "kube".to_string(),
    }
}

/// The interface holding the published address, and its MTU.
fn underlay_view(lease: &Lease) -> UnderlayView {
    let (v4, v6) = (
        lease.public_ips.v4.map(IpAddr::V4),
        lease.public_ips.v6.map(IpAddr::V6),
    );
    let interface = crate::underlay::list_addresses().ok().and_then(|all| {
        all.into_iter()
            .find(|a| Some(a.ip) == v4 || Some(a.ip) == v6)
            .map(|a| a.iface)
    });
    let mtu = interface.as_ref().and_then(|iface| {
        let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu")).ok()?;
        text.trim().parse().ok()
    });
    UnderlayView {
        v4,
        v6,
        interface,
        mtu,
    }
}

fn ipam_view(usage: &[(IpNet, u64, u64)]) -> IpamView {
    let pool = |v6: bool| {
        usage
            .iter()
            .find(|(net, _, _)| net.addr().is_ipv6() == v6)
            .map(|(_, in_use, capacity)| super::snapshot::PoolUse {
                in_use: *in_use,
                capacity: *capacity,
            })
    };
    IpamView {
        v4: pool(false),
        v6: pool(true),
    }
}

/// Handshakes and byte counts from the device, matched by public key; left empty when the
/// device cannot be read.
async fn add_wireguard(snapshot: &mut Snapshot, source: &WireGuardSource) {
    let Ok(peers) =
        crate::backend::wireguard::read_peers(source.implementation, &source.device).await
    else {
        return;
    };
    for view in snapshot
        .peers
        .iter_mut()
        .filter_map(|p| p.wireguard.as_mut())
    {
        if let Some(info) = peers
            .iter()
            .find(|i| i.public_key.to_string() == view.public_key)
        {
            view.latest_handshake = info.last_handshake.map(|d| d.as_secs());
            view.rx_bytes = info.rx_bytes;
            view.tx_bytes = info.tx_bytes;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
