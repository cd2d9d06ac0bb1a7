//! The single-host file store: a directory shared by the daemons of one host (a lab).
//!
//! ```text
//! DIR/lock               flock held while a node claims or renews (never while idle)
//! DIR/nodes/NODE.json    the node's NodeRecord, with `expires` (unix seconds); replaced by rename
//! ```
//! A daemon killed at any point leaves either its old record or its new one (atomic rename), and
//! its lock is released by the kernel. A record past `expires` is void: its subnets are free and
//! peers no longer see it. Peers are found by reading the directory every `poll` interval.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tracing::warn;
use weft_proto::lease::{Lease, NodeRecord};
use weft_proto::names::NodeName;

use super::{unix_now, Clock, LeaseRequest, LeaseStore, PeerUpdate, PeerWatcher, StoreError};
use crate::fsutil::{atomic_write, FileLock};

/// The file store of the directory `dir`, records living `ttl`, time read from `clock`.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    ttl: Duration,
    poll: Duration,
    clock: Clock,
}

impl FileStore {
    /// The store in `dir` on the system clock.
    pub fn new(dir: impl Into<PathBuf>, ttl: Duration) -> FileStore {
        FileStore::with_clock(dir, ttl, Arc::new(unix_now))
    }

    /// The store in `dir`, reading the time (seconds since the Unix epoch) from `clock`: expiry
    /// is decided by the time passed in, so tests move it instead of sleeping.
    pub fn with_clock(dir: impl Into<PathBuf>, ttl: Duration, clock: Clock) -> FileStore {
        FileStore {
            dir: dir.into(),
            ttl,
            poll: Duration::from_millis(200),
            clock,
        }
    }

    fn nodes_dir(&self) -> PathBuf {
        self.dir.join("nodes")
    }

    fn record_path(&self, node: &NodeName) -> PathBuf {
        self.nodes_dir().join(format!("{node}.json"))
    }

    fn lock(&self) -> Result<FileLock, StoreError> {
        let path = self.dir.join("lock");
        FileLock::exclusive(&path).map_err(|source| StoreError::Io { path, source })
    }

    fn expires(&self, now: u64) -> Option<u64> {
        Some(now + self.ttl.as_secs().max(1))
    }

    fn write(&self, lease: &Lease) -> Result<(), StoreError> {
        let path = self.record_path(&lease.node);
        let json =
            serde_json::to_vec_pretty(&lease.to_record()).expect("a record always serialises");
        atomic_write(&path, &json).map_err(|source| StoreError::Io { path, source })
    }

    fn acquire_blocking(&self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        let _lock = self.lock()?;
        let now = (self.clock)();
        let records = read_records(&self.nodes_dir())?;
        let own_previous = records.iter().find(|l| l.node == request.node);
        if let Some(current) = own_previous.filter(|l| is_live(l, now)) {
            request.check_machine(current)?;
        }
        let taken: BTreeSet<IpNet> = records
            .iter()
            .filter(|l| l.node != request.node && is_live(l, now))
            .flat_map(|l| l.pod_cidrs.iter())
            .collect();
        // The store's own record wins over the state directory's memory of it.
        let held = own_previous.map(|l| l.pod_cidrs).unwrap_or_default();
        let pod_cidrs = request.choose_cidrs(&held, &taken)?;
        self.remove_expired(&records, now);
        let lease = request.lease_with(pod_cidrs, self.expires(now));
        self.write(&lease)?;
        Ok(lease)
    }

    fn renew_blocking(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let _lock = self.lock()?;
        let now = (self.clock)();
        let records = read_records(&self.nodes_dir())?;
        let lost = |reason: String| StoreError::LeaseLost {
            node: lease.node.clone(),
            reason,
        };
        let Some(current) = records.iter().find(|l| l.node == lease.node) else {
            return Err(lost("its record is gone from the store".into()));
        };
        if current.pod_cidrs != lease.pod_cidrs {
            return Err(lost(format!(
                "the store holds {} for it, not {}",
                current.pod_cidrs, lease.pod_cidrs
            )));
        }
        let ours: BTreeSet<IpNet> = lease.pod_cidrs.iter().collect();
        if let Some(thief) = records
            .iter()
            .filter(|l| l.node != lease.node && is_live(l, now))
            .find(|l| l.pod_cidrs.iter().any(|n| ours.contains(&n)))
        {
            return Err(lost(format!(
                "node {} claimed {} after our lease expired",
                thief.node, thief.pod_cidrs
            )));
        }
        let mut renewed = lease.clone();
        renewed.expires = self.expires(now);
        self.write(&renewed)?;
        Ok(renewed)
    }

    fn release_blocking(&self, lease: &Lease) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let path = self.record_path(&lease.node);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn remove_expired(&self, records: &[Lease], now: u64) {
        for stale in records.iter().filter(|l| !is_live(l, now)) {
            let _ = std::fs::remove_file(self.record_path(&stale.node));
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("file store task failed: {e}")))?
    }
}

/// Whether a record is still in force at `now`.
pub fn is_live(lease: &Lease, now: u64) -> bool {
    lease.expires.is_none_or(|t| t > now)
}

/// Every parsable record in `dir`; a bad one is skipped with a warning naming its file.
fn read_records(dir: &Path) -> Result<Vec<Lease>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut leases = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue; // temporary files of a write in progress
        }
        match read_record(&path) {
            Ok(lease) => leases.push(lease),
            Err(reason) => {
                warn!(key = %path.display(), %reason, "skipping a store record that does not parse")
            }
        }
    }
    leases.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(leases)
}

fn read_record(path: &Path) -> Result<Lease, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let record: NodeRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let lease = Lease::from_record(&record).map_err(|e| e.to_string())?;
    let expected = format!("{}.json", lease.node);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(format!(
            "record names node {} but the file is not {expected}",
            lease.node
        ));
    }
    Ok(lease)
}

impl LeaseStore for FileStore {
    type Watcher = FileWatcher;

    async fn acquire(&mut self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        let request = request.clone();
        self.blocking(move |s| s.acquire_blocking(&request)).await
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Lease, StoreError> {
        let lease = lease.clone();
        self.blocking(move |s| s.renew_blocking(&lease)).await
    }

    async fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.blocking(move |s| s.release_blocking(&lease)).await
    }

    fn watch_peers(&self, own: &NodeName) -> FileWatcher {
        FileWatcher {
            store: self.clone(),
            own: own.clone(),
            last: None,
        }
    }
}

/// Polls the directory; reports a snapshot whenever the live peer set differs from the last one.
pub struct FileWatcher {
    store: FileStore,
    own: NodeName,
    last: Option<Vec<Lease>>,
}

impl FileWatcher {
    fn live_peers(&self) -> Result<Vec<Lease>, StoreError> {
        let now = (self.store.clock)();
        let mut peers = read_records(&self.store.nodes_dir())?;
        peers.retain(|l| l.node != self.own && is_live(l, now));
        for peer in &mut peers {
            peer.expires = None; // renewals are not changes
        }
        Ok(peers)
    }
}

impl PeerWatcher for FileWatcher {
    async fn next(&mut self) -> Result<PeerUpdate, StoreError> {
        loop {
            let peers = self.live_peers()?;
            if self.last.as_ref() != Some(&peers) {
                self.last = Some(peers.clone());
                return Ok(PeerUpdate::Snapshot(peers));
            }
            tokio::time::sleep(self.store.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::SubnetPool;
    use weft_proto::lease::{BackendData, MacAddr, PublicIps};

    fn request(name: &str, cluster: &str) -> LeaseRequest {
        LeaseRequest {
            node: NodeName::new(name).unwrap(),
            pool_v4: Some(SubnetPool::new(cluster.parse().unwrap(), 24).unwrap()),
            pool_v6: Some(SubnetPool::new("fd00:10:244::/48".parse().unwrap(), 64).unwrap()),
            preferred: weft_proto::lease::PodCidrs::default(),
            public_ips: PublicIps {
                v4: Some("192.0.2.1".parse().unwrap()),
                v6: None,
            },
            backend: BackendData::Vxlan {
                vtep_mac: Some(MacAddr::stable_local(name)),
                vtep_mac_v6: Some(MacAddr::stable_local(name)),
            },
            machine: Some(format!("machine-of-{name}")),
        }
    }

    #[tokio::test]
    async fn nodes_get_distinct_subnets_and_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path(), Duration::from_secs(30));
        let a = store.acquire(&request("a", "10.244.0.0/16")).await.unwrap();
        let b = store.acquire(&request("b", "10.244.0.0/16")).await.unwrap();
        assert_eq!(a.pod_cidrs.v4.unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(b.pod_cidrs.v4.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(b.pod_cidrs.v6.unwrap().to_string(), "fd00:10:244:1::/64");
        let again = store.acquire(&request("a", "10.244.0.0/16")).await.unwrap();
        assert_eq!(
            again.pod_cidrs, a.pod_cidrs,
            "a restarted node finds its record"
        );
        store.renew(&a).await.unwrap();
    }

    #[tokio::test]
    async fn exhaustion_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path(), Duration::from_secs(30));
        let a = store.acquire(&request("a", "10.244.0.0/23")).await.unwrap();
        store.acquire(&request("b", "10.244.0.0/23")).await.unwrap();
        let err = store
            .acquire(&request("c", "10.244.0.0/23"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Exhausted(_)), "{err}");
        assert!(err.to_string().contains("exhausted"));
        store.release(&a).await.unwrap();
        let c = store.acquire(&request("c", "10.244.0.0/23")).await.unwrap();
        assert_eq!(c.pod_cidrs.v4, a.pod_cidrs.v4);
        assert!(matches!(
            store.renew(&a).await,
            Err(StoreError::LeaseLost { .. })
        ));
    }

    #[tokio::test]
    async fn bad_records_are_skipped_and_the_watcher_reports_peers() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path(), Duration::from_secs(30));
        store.acquire(&request("a", "10.244.0.0/16")).await.unwrap();
        std::fs::write(dir.path().join("nodes/garbage.json"), b"{not json").unwrap();
        std::fs::write(
            dir.path().join("nodes/evil.json"),
            br#"{"name":"a","podCIDRs":["10.244.9.0/24"],"annotations":{}}"#,
        )
        .unwrap();
        let b = store.acquire(&request("b", "10.244.0.0/16")).await.unwrap();
        assert_eq!(b.pod_cidrs.v4.unwrap().to_string(), "10.244.1.0/24");
        let mut watcher = store.watch_peers(&b.node);
        let PeerUpdate::Snapshot(peers) = watcher.next().await.unwrap() else {
            panic!("snapshot first")
        };
        let names: Vec<&str> = peers.iter().map(|l| l.node.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[tokio::test]
    async fn expired_records_free_their_subnets_and_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path(), Duration::from_secs(30));
        let mut a = store.acquire(&request("a", "10.244.0.0/24")).await.unwrap();
        a.expires = Some(unix_now() - 1);
        store.write(&a).unwrap();
        let watcher = store.watch_peers(&NodeName::new("b").unwrap());
        assert!(watcher.live_peers().unwrap().is_empty());
        let b = store.acquire(&request("b", "10.244.0.0/24")).await.unwrap();
        assert_eq!(
            b.pod_cidrs.v4, a.pod_cidrs.v4,
            "the only subnet was free again"
        );
        assert!(matches!(
            store.renew(&a).await,
            Err(StoreError::LeaseLost { .. })
        ));
    }

    /// Expiry follows the clock passed in: a record is live until its TTL has passed on that
    /// clock, and its subnet is free from then on.
    #[tokio::test]
    async fn expiry_follows_the_clock_passed_in() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_000));
        let time = now.clone();
        let clock: Clock = Arc::new(move || time.load(Ordering::SeqCst));
        let mut store = FileStore::with_clock(dir.path(), Duration::from_secs(10), clock);
        let a = store.acquire(&request("a", "10.244.0.0/24")).await.unwrap();
        assert_eq!(a.expires, Some(1_010));
        let watcher = store.watch_peers(&NodeName::new("b").unwrap());
        now.store(1_009, Ordering::SeqCst);
        assert_eq!(
            watcher.live_peers().unwrap().len(),
            1,
            "live before its expiry"
        );
        assert!(store.acquire(&request("b", "10.244.0.0/24")).await.is_err());
        now.store(1_010, Ordering::SeqCst);
        assert!(watcher.live_peers().unwrap().is_empty(), "gone after it");
        let b = store.acquire(&request("b", "10.244.0.0/24")).await.unwrap();
        assert_eq!(b.pod_cidrs.v4, a.pod_cidrs.v4, "its subnet is free again");
    }

    /// Issue "Faults and hostile input", case 3: a second machine started with a node name whose
    /// lease lives is refused, naming both machines; the holder keeps renewing; once the lease has
    /// expired, the name is free for the other machine.
    #[tokio::test]
    async fn a_second_machine_with_the_same_node_name_is_refused_while_the_lease_lives() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_000));
        let time = now.clone();
        let clock: Clock = Arc::new(move || time.load(Ordering::SeqCst));
        let mut store = FileStore::with_clock(dir.path(), Duration::from_secs(10), clock);
        let first = store.acquire(&request("a", "10.244.0.0/24")).await.unwrap();
        let clone = LeaseRequest {
            machine: Some("cloned-vm".into()),
            ..request("a", "10.244.0.0/24")
        };
        let refused = store.acquire(&clone).await.unwrap_err();
        assert!(
            matches!(refused, StoreError::HeldElsewhere { .. }),
            "{refused}"
        );
        let line = refused.to_string();
        assert!(
            line.contains("machine-of-a") && line.contains("cloned-vm"),
            "{line}"
        );
        assert!(!refused.is_transient());
        let renewed = store.renew(&first).await.unwrap();
        assert_eq!(
            renewed.pod_cidrs, first.pod_cidrs,
            "the holder keeps its lease"
        );
        // The same machine restarting is no clone.
        assert!(store.acquire(&request("a", "10.244.0.0/24")).await.is_ok());
        now.store(2_000, Ordering::SeqCst);
        let taken = store.acquire(&clone).await.unwrap();
        assert_eq!(taken.machine.as_deref(), Some("cloned-vm"), "after expiry");
    }
}
