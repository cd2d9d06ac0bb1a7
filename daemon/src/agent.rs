//! The node agent's lease and peer loops.
//!
//! - the lease keeper acquires the node's lease (retrying while the store is unreachable), renews it
//!   every TTL/3, republishes it when the underlay address changes, and re-acquires it when it is
//!   lost, asking for the same subnets;
//! - the peer tracker turns the store's watch into added / updated / removed events, logs each, and
//!   publishes the current peer set on a `watch` channel for the parts that act on it.
//!
//! SIGTERM keeps the lease (a restarted daemon finds it again); `release_on_exit` gives it back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use weft_proto::lease::{Backend, BackendData, Lease, MacAddr, PublicIps};

use crate::backend::wireguard::keys::{self, PrivateKey};
use crate::config::Config;
use crate::inspect::state::Inspector;
use crate::state;
use crate::store::peers::{PeerEvent, PeerSet};
use crate::store::{LeaseRequest, LeaseStore, PeerWatcher, StoreError};
use crate::underlay;

/// The first retry delay after a transient store error; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Renewals in a row that must miss an underlay family before it is unpublished.
const FAMILY_MISSES_BEFORE_DROP: u32 = 2;

/// What the agent publishes for the rest of the daemon.
#[derive(Clone)]
pub struct AgentView {
    pub lease: watch::Receiver<Option<Lease>>,
    /// `None` until the store's first snapshot arrives: acting on "no peers" before then would
    /// tear down every tunnel of a restarted node.
    pub peers: watch::Receiver<Option<Arc<PeerSet>>>,
    /// Set to true by the node once its datapath is programmed; the agent then tells the store
    /// (Kubernetes: `NetworkUnavailable` False).
    pub programmed: Arc<watch::Sender<bool>>,
}

/// The backend data this node publishes. VXLAN: VTEP MACs derived from the node name, one per pod
/// family, so they survive restarts and device re-creation. WireGuard: the public key of
/// `STATE_DIR/wireguard.key` (made on first start) and the port.
pub fn backend_data(config: &Config) -> anyhow::Result<BackendData> {
    if config.backend == Backend::WireGuard {
        let key = keys::load_or_create(&wireguard_key_path(config))?;
        return Ok(BackendData::WireGuard {
            public_key: key.public_key(),
            port: config.wireguard.port,
        });
    }
    let mac = |family: &str| MacAddr::stable_local(&format!("{}/{family}", config.node_name));
    Ok(BackendData::Vxlan {
        vtep_mac: config.pool_v4.map(|_| mac("v4")),
        vtep_mac_v6: config.pool_v6.map(|_| mac("v6")),
    })
}

/// `STATE_DIR/wireguard.key`.
pub fn wireguard_key_path(config: &Config) -> std::path::PathBuf {
    config.state_dir.join(keys::KEY_FILE)
}

/// What this node asks the store for; fails only when the WireGuard key cannot be read or made.
pub fn lease_request(config: &Config, public_ips: PublicIps) -> anyhow::Result<LeaseRequest> {
    Ok(LeaseRequest {
        node: config.node_name.clone(),
        pool_v4: config.pool_v4,
        pool_v6: config.pool_v6,
        preferred: state::load_previous_cidrs(&config.state_dir),
        public_ips,
        backend: backend_data(config)?,
        machine: Some(state::machine_id(&config.state_dir).context("the machine id")?),
    })
}

/// The agent once its lease is held: the first lease, the view for the rest of the daemon, and
/// the lease keeper's task.
pub struct Agent {
    /// The lease as first acquired.
    pub lease: Lease,
    pub view: AgentView,
    /// Ends when `shutdown` turns true (after releasing the lease if configured), or with the
    /// error that stopped it.
    pub keeper: JoinHandle<anyhow::Result<()>>,
}

/// Acquire the lease (retrying while the store is unreachable), then start the lease keeper and
/// the peer tracker; `host` is the node's netlink connection (for the underlay address). `None`
/// if shutdown came before the lease.
pub async fn start<S: LeaseStore>(
    config: &Config,
    mut store: S,
    host: rtnetlink::Handle,
    mut shutdown: watch::Receiver<bool>,
    inspector: Arc<Inspector>,
) -> anyhow::Result<Option<Agent>> {
    let public_ips = underlay::detect(&config.underlay, &host)
        .await
        .context("choose the underlay address")?;
    let request = lease_request(config, public_ips)?;
    let Some(lease) = acquire(&mut store, &request, &mut shutdown, &inspector).await? else {
        return Ok(None);
    };
    remember(config, &lease);
    inspector
        .renewed_at()
        .store(crate::store::unix_now(), Ordering::Relaxed);
    info!(node = %lease.node, pod_cidrs = %lease.pod_cidrs, public_ip = ?lease.public_ips, "lease acquired");

    let (lease_tx, lease_rx) = watch::channel(Some(lease.clone()));
    inspector.set_lease(lease_rx.clone());
    let (peers_tx, peers_rx) = watch::channel(None);
    let (programmed_tx, programmed_rx) = watch::channel(false);
    let tracker = tokio::spawn(track_peers(store.watch_peers(&config.node_name), peers_tx));
    let keeper = Keeper {
        config: config.clone(),
        store,
        request,
        lease: lease.clone(),
        lease_tx,
        family_misses: 0,
        host,
        programmed: programmed_rx,
        announced: false,
        inspector,
    };
    Ok(Some(Agent {
        lease,
        view: AgentView {
            lease: lease_rx,
            peers: peers_rx,
            programmed: Arc::new(programmed_tx),
        },
        keeper: tokio::spawn(keeper.run(shutdown, tracker)),
    }))
}

/// The lease keeper's state.
struct Keeper<S> {
    config: Config,
    store: S,
    request: LeaseRequest,
    lease: Lease,
    lease_tx: watch::Sender<Option<Lease>>,
    /// Scheduled renewals in a row that missed an underlay family.
    family_misses: u32,
    /// Netlink, for following the underlay address.
    host: rtnetlink::Handle,
    /// Whether the node's datapath is programmed, and whether the store was told so.
    programmed: watch::Receiver<bool>,
    announced: bool,
    /// Told of each renewal and of why a lost lease cannot be acquired again.
    inspector: Arc<Inspector>,
}

impl<S: LeaseStore> Keeper<S> {
    /// Renew every TTL/3 until shutdown; then keep or release the lease.
    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        tracker: JoinHandle<()>,
    ) -> anyhow::Result<()> {
        let renew_every = (self.config.lease_ttl / 3).max(Duration::from_millis(500));
        let mut backoff = MIN_BACKOFF;
        // After a failed renewal the next try comes after the backoff, not a whole interval
        // later: two slow failures in a row must not cost the lease.
        let mut next_renewal = renew_every;
        loop {
            let scheduled = next_renewal == renew_every;
            if !self.wait(next_renewal, &mut shutdown).await {
                break;
            }
            next_renewal = renew_every;
            self.follow_underlay(scheduled).await;
            self.announce().await;
            match self.renew(&mut shutdown).await? {
                Renewal::Done => backoff = MIN_BACKOFF,
                Renewal::Failed => {
                    next_renewal = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Renewal::Shutdown => break,
            }
            self.lease_tx.send_replace(Some(self.lease.clone()));
        }
        tracker.abort();
        self.stop().await
    }

    /// One renewal; a lost lease is acquired again, asking for the same subnets.
    async fn renew(&mut self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<Renewal> {
        match self.store.renew(&self.lease).await {
            Ok(renewed) => {
                self.lease = renewed;
                self.renewed();
                Ok(Renewal::Done)
            }
            Err(StoreError::LeaseLost { reason, .. }) => {
                warn!(node = %self.lease.node, %reason, "lease lost; acquiring it again");
                let again = LeaseRequest {
                    preferred: self.lease.pod_cidrs,
                    public_ips: self.lease.public_ips,
                    ..self.request.clone()
                };
                let Some(new) = acquire(&mut self.store, &again, shutdown, &self.inspector).await?
                else {
                    return Ok(Renewal::Shutdown);
                };
                self.renewed();
                if new.pod_cidrs != self.lease.pod_cidrs {
                    error!(old = %self.lease.pod_cidrs, new = %new.pod_cidrs, "pod CIDRs changed after the lease was lost: pods started before keep addresses outside this node's CIDRs");
                }
                self.lease = new;
                remember(&self.config, &self.lease);
                Ok(Renewal::Done)
            }
            Err(e) => {
                warn!(error = %e, "lease renewal failed; retrying soon");
                Ok(Renewal::Failed)
            }
        }
    }

    fn renewed(&self) {
        let now = crate::store::unix_now();
        self.inspector.renewed_at().store(now, Ordering::Relaxed);
    }

    /// Re-detect the underlay address; a change is published with the next renewal.
    async fn follow_underlay(&mut self, scheduled: bool) {
        let detected = match underlay::detect(&self.config.underlay, &self.host).await {
            Ok(ips) => ips,
            Err(e) => {
                warn!(error = %e, "cannot detect the underlay address; keeping the published one");
                return;
            }
        };
        let lease = &mut self.lease;
        let hold = self.family_misses < FAMILY_MISSES_BEFORE_DROP;
        let (merged, held) = merge_underlay(&lease.public_ips, &detected, hold);
        if held {
            if scheduled {
                self.family_misses += 1;
            }
            warn!(published = ?lease.public_ips, detected = ?detected, "an underlay family is missing; keeping it published for now");
        } else {
            self.family_misses = 0;
        }
        if merged != lease.public_ips {
            info!(old = ?lease.public_ips, new = ?merged, "underlay address changed; republishing");
            lease.public_ips = merged;
        }
    }

    /// Wait `delay`, telling the store as soon as the datapath is up; `false` on shutdown.
    async fn wait(&mut self, delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        let rotating = self.config.backend == Backend::WireGuard;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = shutdown.changed() => return false,
                Ok(()) = self.programmed.changed(), if !self.announced => self.announce().await,
                next = next_key(&self.config.state_dir), if rotating => self.rotate(next).await,
            }
        }
    }

    /// A live WireGuard key rotation: publish the next key's public key, give peers
    /// [`ROTATION_SETTLE`] to take it, then switch the device (the reconcile loop follows the
    /// lease) and make the next key the key. A daemon killed half-way publishes the old key again
    /// at its start and rotates again, since the next key is still waiting.
    async fn rotate(&mut self, next: PrivateKey) {
        let BackendData::WireGuard { public_key, port } = self.lease.backend else {
            return;
        };
        if public_key == next.public_key() {
            // Published and switched already; only the files were not settled.
            self.settle_rotation(&next);
            return;
        }
        let backend = BackendData::WireGuard {
            public_key: next.public_key(),
            port,
        };
        info!(old = %public_key, new = %next.public_key(), "WireGuard key rotation: publishing the new public key");
        let published = Lease {
            backend,
            ..self.lease.clone()
        };
        match self.store.renew(&published).await {
            Ok(renewed) => self.lease = renewed,
            Err(e) => {
                // Nothing changed: the device keeps the old key, the next key stays waiting.
                warn!(error = %e, retry_in = ?ROTATION_RETRY, "cannot publish the new public key; the rotation waits");
                tokio::time::sleep(ROTATION_RETRY).await;
                return;
            }
        }
        self.request.backend = backend;
        tokio::time::sleep(ROTATION_SETTLE).await;
        self.lease_tx.send_replace(Some(self.lease.clone()));
        self.settle_rotation(&next);
    }

    /// The device uses `next` now: keep it as the key, and drop the next-key file if it still
    /// holds `next` (a newer `rotate-key` may have left another one meanwhile).
    fn settle_rotation(&self, next: &PrivateKey) {
        match keys::promote(&self.config.state_dir, next) {
            Ok(()) => info!(public_key = %next.public_key(), "WireGuard key rotated"),
            Err(e) => error!(error = %e, "the device uses the new key but it could not be saved"),
        }
    }

    /// Tell the store the datapath is up, once; a failure is retried at the next renewal.
    async fn announce(&mut self) {
        if self.announced || !*self.programmed.borrow() {
            return;
        }
        match self.store.datapath_ready(&self.lease.node).await {
            Ok(()) => self.announced = true,
            Err(e) => warn!(error = %e, "cannot tell the store the datapath is up; retrying"),
        }
    }

    /// SIGTERM keeps the lease for the next start, unless `release_on_exit`.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pod_cidrs = self.lease.pod_cidrs;
        if self.config.release_on_exit {
            self.store
                .release(&self.lease)
                .await
                .context("release the lease")?;
            info!(%pod_cidrs, "lease released");
        } else {
            info!(%pod_cidrs, "stopping; the lease is kept for the next start");
        }
        Ok(())
    }
}

/// How long a rotation whose new key could not be published waits before trying again.
pub const ROTATION_RETRY: Duration = Duration::from_secs(5);

/// How long peers get to take a newly published WireGuard public key before this node's device
/// switches to it: the store's watch latency (the file store polls every 200 ms) with margin.
pub const ROTATION_SETTLE: Duration = Duration::from_secs(1);

/// Resolves with the next WireGuard key once `weftd rotate-key` left one in `state_dir` (checked
/// every half second); a malformed one is reported and set aside.
async fn next_key(state_dir: &std::path::Path) -> PrivateKey {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match keys::pending_next(state_dir) {
            None => {}
            Some(Ok(key)) => return key,
            Some(Err(e)) => {
                error!(error = %e, "ignoring the next WireGuard key");
                let path = state_dir.join(keys::NEXT_KEY_FILE);
                let _ = std::fs::rename(&path, path.with_extension("key.bad"));
            }
        }
    }
}

/// How a renewal went.
enum Renewal {
    Done,
    /// A transient failure: retry after the backoff.
    Failed,
    /// Shutdown came while acquiring again.
    Shutdown,
}

/// Acquire, retrying transient errors (the reason is told to `inspector` while it waits);
/// `None` if shutdown came first.
async fn acquire<S: LeaseStore>(
    store: &mut S,
    request: &LeaseRequest,
    shutdown: &mut watch::Receiver<bool>,
    inspector: &Inspector,
) -> anyhow::Result<Option<Lease>> {
    let mut backoff = MIN_BACKOFF;
    let mut last_reason = String::new();
    loop {
        match store.acquire(request).await {
            Ok(lease) => {
                inspector.set_waiting(None);
                return Ok(Some(lease));
            }
            Err(e) if e.is_transient() => {
                // One line per reason, not one per retry (waiting for podCIDRs can take a while).
                let reason = e.to_string();
                if reason != last_reason {
                    warn!(error = %reason, "cannot acquire the lease yet; retrying until it can");
                    inspector.set_waiting(Some(reason.clone()));
                    last_reason = reason;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e).context("acquire the lease"),
        }
    }
}

fn remember(config: &Config, lease: &Lease) {
    if let Err(e) = state::save_cidrs(&config.state_dir, &lease.pod_cidrs) {
        warn!(error = %e, dir = %config.state_dir.display(), "cannot save the lease state");
    }
}

/// The underlay addresses to publish: each detected family as detected; a published family that
/// is missing now kept as it was while `hold` (a DHCP renewal or a re-added default route must
/// not unpublish it: peers of that family would refuse this node). Returns whether one was held.
fn merge_underlay(published: &PublicIps, detected: &PublicIps, hold: bool) -> (PublicIps, bool) {
    let mut merged = *detected;
    let mut held = false;
    if hold && published.v4.is_some() && detected.v4.is_none() {
        merged.v4 = published.v4;
        held = true;
    }
    if hold && published.v6.is_some() && detected.v6.is_none() {
        merged.v6 = published.v6;
        held = true;
    }
    (merged, held)
}

async fn track_peers<W: PeerWatcher>(
    mut watcher: W,
    peers_tx: watch::Sender<Option<Arc<PeerSet>>>,
) {
    let mut peers = PeerSet::default();
    let mut backoff = MIN_BACKOFF;
    // The failure last logged: a store down for a while is one line, and one when it is back.
    let mut failing: Option<String> = None;
    loop {
        match watcher.next().await {
            Ok(update) => {
                backoff = MIN_BACKOFF;
                if let Some(reason) = failing.take() {
                    info!(was = %reason, "peer watch recovered");
                }
                let events = peers.apply(update);
                let first = peers_tx.borrow().is_none();
                if events.is_empty() && !first {
                    continue;
                }
                for event in &events {
                    log_event(event);
                }
                peers_tx.send_replace(Some(Arc::new(peers.clone())));
            }
            Err(e) => {
                let reason = e.to_string();
                if failing.as_ref() != Some(&reason) {
                    warn!(error = %reason, "peer watch failed; retrying (peers stay as they are)");
                    failing = Some(reason);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One line per peer change; the plan judges whether the peer is usable (and says so).
fn log_event(event: &PeerEvent) {
    match event {
        PeerEvent::Added(l) => {
            info!(peer = %l.node, pod_cidrs = %l.pod_cidrs, public_ip = ?l.public_ips, "peer added")
        }
        PeerEvent::Updated { old, new } => info!(
            peer = %new.node,
            old_pod_cidrs = %old.pod_cidrs, pod_cidrs = %new.pod_cidrs,
            old_public_ip = ?old.public_ips, public_ip = ?new.public_ips,
            "peer updated"
        ),
        PeerEvent::Removed(l) => info!(peer = %l.node, pod_cidrs = %l.pod_cidrs, "peer removed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_family_is_held_while_the_other_follows() {
        let published = PublicIps {
            v4: Some("192.0.2.1".parse().unwrap()),
            v6: Some("2001:db8::1".parse().unwrap()),
        };
        let detected = PublicIps {
            v4: Some("192.0.2.9".parse().unwrap()),
            v6: None,
        };
        let (merged, held) = merge_underlay(&published, &detected, true);
        assert!(held);
        assert_eq!(
            merged.v4, detected.v4,
            "the moved IPv4 address is followed at once"
        );
        assert_eq!(merged.v6, published.v6, "the missing IPv6 address is held");
        let (merged, held) = merge_underlay(&published, &detected, false);
        assert!(!held);
        assert_eq!(
            merged, detected,
            "after enough misses the family is dropped"
        );
    }
}
