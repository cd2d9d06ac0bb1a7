//! Lease stores: where a node claims its pod CIDRs and learns its peers.
//!
//! Two narrow contracts, as Kilo splits node and peer backends:
//! - [`LeaseStore`]: this node's own lease (acquire, renew, release);
//! - [`PeerWatcher`]: everyone else's, as a stream of [`PeerUpdate`]s — a full snapshot when a watch
//!   (re)starts, incremental changes after that. [`peers::PeerSet`] turns both into the same
//!   added / updated / removed events, so a restart and a steady state look alike downstream.
//!
//! Implementations: [`file`](mod@file) (the single-host store of a lab), [`etcd`], and [`kube`] (Node
//! objects: the API server assigns the pod CIDRs, weft publishes annotations); [`open`] gives the one
//! the configuration names, as a [`Store`]. A record that fails to parse is skipped with a warning
//! naming its key; it never stops the store.

pub mod etcd;
pub mod file;
pub mod kube;
pub mod peers;

use std::collections::BTreeSet;
use std::future::Future;

use ipnet::IpNet;

use weft_proto::lease::{BackendData, Lease, PodCidrs, PublicIps};
use weft_proto::names::NodeName;

use crate::config::StoreConfig;
use crate::subnet::{SubnetError, SubnetPool};
use etcd::{EtcdStore, EtcdWatcher};
use file::{FileStore, FileWatcher};
use kube::{KubeStore, KubeWatcher};

/// What a node asks the store for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub node: NodeName,
    pub pool_v4: Option<SubnetPool>,
    pub pool_v6: Option<SubnetPool>,
    /// The subnets this node held before (from its state directory); reclaimed if still free.
    pub preferred: PodCidrs,
    pub public_ips: PublicIps,
    pub backend: BackendData,
    /// This machine's identity (`STATE_DIR/machine-id`); see [`Lease::machine`].
    pub machine: Option<String>,
}

impl LeaseRequest {
    /// Refuse when `current`, this node's live record, names another machine than this request.
    /// A record without a machine id (from an older weft) is taken over.
    pub fn check_machine(&self, current: &Lease) -> Result<(), StoreError> {
        match (&current.machine, &self.machine) {
            (Some(holder), Some(ours)) if holder != ours => Err(StoreError::HeldElsewhere {
                node: self.node.clone(),
                holder: holder.clone(),
                ours: ours.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The pod CIDRs to claim, per family this node runs: the one the store already gives this
    /// node (`held`), else the one it remembers (`preferred`) if free, else the first free one.
    /// `taken` holds every other node's subnets. The one place this choice is made, for every
    /// store that picks subnets itself.
    pub fn choose_cidrs(
        &self,
        held: &PodCidrs,
        taken: &BTreeSet<IpNet>,
    ) -> Result<PodCidrs, SubnetError> {
        let mut chosen = PodCidrs::default();
        if let Some(pool) = &self.pool_v4 {
            let want = held.v4.or(self.preferred.v4).map(IpNet::V4);
            if let IpNet::V4(net) = pool.choose(taken, want)? {
                chosen.v4 = Some(net);
            }
        }
        if let Some(pool) = &self.pool_v6 {
            let want = held.v6.or(self.preferred.v6).map(IpNet::V6);
            if let IpNet::V6(net) = pool.choose(taken, want)? {
                chosen.v6 = Some(net);
            }
        }
        Ok(chosen)
    }

    /// The lease this request asks for, once subnets are chosen.
    pub fn lease_with(&self, pod_cidrs: PodCidrs, expires: Option<u64>) -> Lease {
        Lease {
            node: self.node.clone(),
            pod_cidrs,
            public_ips: self.public_ips,
            backend: self.backend,
            expires,
            machine: self.machine.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Exhausted(#[from] SubnetError),
    /// The store cannot be reached right now; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A live lease of this node name is held from another machine (two machines started with one
    /// node name, say cloned VMs): refused, so the holder keeps working.
    #[error("node {node} is held by another machine (machine-id {holder}; this one is {ours}): give this machine its own --node-name, or stop the other weftd and wait for its lease to expire")]
    HeldElsewhere {
        node: NodeName,
        holder: String,
        ours: String,
    },
    /// The lease expired or was taken over; the node must acquire again.
    #[error("lease of node {node} is lost: {reason}")]
    LeaseLost { node: NodeName, reason: String },
    #[error("store file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not claim a subnet after {attempts} attempts: other nodes kept winning the race"
    )]
    Contended { attempts: u32 },
    /// The store's answer cannot be used as it is (a configuration mismatch an operator must
    /// fix); retrying does not help.
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    /// Whether waiting and trying again is the right response.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Contended { .. } | StoreError::Io { .. }
        )
    }
}

/// One change in the peer view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Put(Lease),
    Delete(NodeName),
}

/// What a watcher reports: everything (after a start or a reconnect) or what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerUpdate {
    Snapshot(Vec<Lease>),
    Changes(Vec<PeerChange>),
}

/// A node's own lease.
pub trait LeaseStore: Send + Sync + 'static {
    type Watcher: PeerWatcher;

    /// Claim this node's subnets (its current ones, its preferred ones if free, else the first free
    /// ones) and publish its record.
    fn acquire(
        &mut self,
        request: &LeaseRequest,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Keep the lease alive and publish `lease` again (a changed underlay address goes out here).
    fn renew(&mut self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Give the lease back: the subnets become free for other nodes.
    fn release(&mut self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A watcher of every other node's lease.
    fn watch_peers(&self, own: &NodeName) -> Self::Watcher;

    /// Tell the cluster this node's datapath is up (Kubernetes: `NetworkUnavailable` False).
    /// Nothing for stores without such a notion.
    fn datapath_ready(
        &mut self,
        _node: &NodeName,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

/// Everyone else's leases.
pub trait PeerWatcher: Send + 'static {
    /// The next update; the first call (and the first after an error) returns a snapshot.
    fn next(&mut self) -> impl Future<Output = Result<PeerUpdate, StoreError>> + Send;
}

/// Where a store reads the time: seconds since the Unix epoch ([`unix_now`] outside tests).
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// Seconds since the Unix epoch, the clock of lease expiry.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The store the configuration names: the one place the store kind is matched.
pub enum Store {
    File(FileStore),
    Etcd(Box<EtcdStore>),
    Kube(Box<KubeStore>),
}

/// That store's peer watcher.
pub enum Watcher {
    File(FileWatcher),
    Etcd(Box<EtcdWatcher>),
    Kube(Box<KubeWatcher>),
}

/// Open the store `config` names, with leases living `ttl`. Nothing is contacted yet: the first
/// call does (and retries while the store is unreachable).
pub fn open(config: &StoreConfig, ttl: std::time::Duration) -> Store {
    match config {
        StoreConfig::File { dir } => Store::File(FileStore::new(dir.clone(), ttl)),
        StoreConfig::Etcd {
            endpoints,
            prefix,
            access,
        } => Store::Etcd(Box::new(
            EtcdStore::new(endpoints.clone(), prefix.clone(), ttl).with_access(access.clone()),
        )),
        StoreConfig::Kube { kubeconfig } => {
            Store::Kube(Box::new(KubeStore::new(kubeconfig.clone())))
        }
    }
}

impl LeaseStore for Store {
    type Watcher = Watcher;

    async fn acquire(&mut self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        match self {
            Store::File(s) => s.acquire(request).await,
            Store::Etcd(s) => s.acquire(request).await,
            Store::Kube(s) => s.acquire(request).await,
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Lease, StoreError> {
        match self {
            Store::File(s) => s.renew(lease).await,
            Store::Etcd(s) => s.renew(lease).await,
            Store::Kube(s) => s.renew(lease).await,
        }
    }

    async fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.release(lease).await,
            Store::Etcd(s) => s.release(lease).await,
            Store::Kube(s) => s.release(lease).await,
        }
    }

    fn watch_peers(&self, own: &NodeName) -> Watcher {
        match self {
            Store::File(s) => Watcher::File(s.watch_peers(own)),
            Store::Etcd(s) => Watcher::Etcd(Box::new(s.watch_peers(own))),
            Store::Kube(s) => Watcher::Kube(Box::new(s.watch_peers(own))),
        }
    }

    async fn datapath_ready(&mut self, node: &NodeName) -> Result<(), StoreError> {
        match self {
            Store::Kube(s) => s.datapath_ready(node).await,
            _ => Ok(()),
        }
    }
}

impl PeerWatcher for Watcher {
    async fn next(&mut self) -> Result<PeerUpdate, StoreError> {
        match self {
            Watcher::File(w) => w.next().await,
            Watcher::Etcd(w) => w.next().await,
            Watcher::Kube(w) => w.next().await,
        }
    }
}
