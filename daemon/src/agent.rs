//! The node agent's lease and peer loops.
//!
//! - the lease keeper acquires the node's lease (retrying while the store is unreachable), renews it
//!   every TTL/3, republishes it when the underlay address changes, and re-acquires it when it is
//!   lost, asking for the same subnets;
//! - the peer tracker turns the store's watch into added / updated / removed events, logs each, and
//!   publishes the current peer set on a `watch` channel for the parts that act on it.
//!
//! SIGTERM keeps the lease (a restarted daemon finds it again); `release_on_exit` gives it back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{error, info, warn};
use weft_proto::lease::{BackendData, Lease, MacAddr, PublicIps};

use crate::config::{Config, DatapathMode};
use crate::node;
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
}

/// The backend data this node publishes: VTEP MACs derived from the node name, one per pod family,
/// so they survive restarts and device re-creation.
pub fn backend_data(config: &Config) -> BackendData {
    let mac = |family: &str| MacAddr::stable_local(&format!("{}/{family}", config.node_name));
    BackendData::Vxlan {
        vtep_mac: config.pool_v4.map(|_| mac("v4")),
        vtep_mac_v6: config.pool_v6.map(|_| mac("v6")),
    }
}

pub fn lease_request(config: &Config, public_ips: PublicIps) -> LeaseRequest {
    LeaseRequest {
        node: config.node_name.clone(),
        pool_v4: config.pool_v4,
        pool_v6: config.pool_v6,
        preferred: state::load_previous_cidrs(&config.state_dir),
        public_ips,
        backend: backend_data(config),
    }
}

/// Run the lease keeper and the peer tracker until `shutdown` turns true.
pub async fn run<S: LeaseStore>(
    config: Config,
    mut store: S,
    mut shutdown: watch::Receiver<bool>,
    view_tx: Option<tokio::sync::oneshot::Sender<AgentView>>,
) -> anyhow::Result<()> {
    let public_ips = underlay::detect(&config.underlay).context("choose the underlay address")?;
    let request = lease_request(&config, public_ips);
    let Some(mut lease) = acquire(&mut store, &request, &mut shutdown).await? else {
        return Ok(());
    };
    remember(&config, &lease);
    info!(node = %lease.node, pod_cidrs = %lease.pod_cidrs, public_ip = ?lease.public_ips, "lease acquired");

    let (lease_tx, lease_rx) = watch::channel(Some(lease.clone()));
    let (peers_tx, peers_rx) = watch::channel(None);
    let view = AgentView {
        lease: lease_rx,
        peers: peers_rx,
    };
    let datapath_tasks = match config.datapath {
        DatapathMode::Kernel => node::start(&config, &lease, view.clone()).await?,
        DatapathMode::None => Vec::new(),
    };
    if let Some(tx) = view_tx {
        let _ = tx.send(view);
    }
    let tracker = tokio::spawn(track_peers(store.watch_peers(&config.node_name), peers_tx));

    let renew_every = (config.lease_ttl / 3).max(Duration::from_millis(500));
    let mut backoff = MIN_BACKOFF;
    // After a failed renewal the next try comes after the backoff, not a whole interval later:
    // two slow failures in a row must not cost the lease.
    let mut next_renewal = renew_every;
    let mut family_misses = 0;
    loop {
        let wait = tokio::time::sleep(next_renewal);
        let scheduled = next_renewal == renew_every;
        next_renewal = renew_every;
        tokio::select! {
            _ = wait => {}
            _ = shutdown.changed() => break,
        }
        follow_underlay(&config, &mut lease, &mut family_misses, scheduled);
        match store.renew(&lease).await {
            Ok(renewed) => {
                lease = renewed;
                backoff = MIN_BACKOFF;
            }
            Err(StoreError::LeaseLost { reason, .. }) => {
                warn!(%reason, "lease lost; acquiring it again");
                let again = LeaseRequest {
                    preferred: lease.pod_cidrs,
                    public_ips: lease.public_ips,
                    ..request.clone()
                };
                let Some(new) = acquire(&mut store, &again, &mut shutdown).await? else {
                    break;
                };
                if new.pod_cidrs != lease.pod_cidrs {
                    error!(old = %lease.pod_cidrs, new = %new.pod_cidrs, "pod CIDRs changed after the lease was lost: pods started before keep addresses outside this node's CIDRs");
                }
                lease = new;
                remember(&config, &lease);
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "lease renewal failed");
                next_renewal = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        lease_tx.send_replace(Some(lease.clone()));
    }
    tracker.abort();
    for task in datapath_tasks {
        task.abort();
    }
    if config.release_on_exit {
        store.release(&lease).await.context("release the lease")?;
        info!(pod_cidrs = %lease.pod_cidrs, "lease released");
    } else {
        info!(pod_cidrs = %lease.pod_cidrs, "stopping; the lease is kept for the next start");
    }
    Ok(())
}

/// Acquire, retrying transient errors; `None` if shutdown came first.
async fn acquire<S: LeaseStore>(
    store: &mut S,
    request: &LeaseRequest,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Lease>> {
    let mut backoff = MIN_BACKOFF;
    loop {
        match store.acquire(request).await {
            Ok(lease) => return Ok(Some(lease)),
            Err(e) if e.is_transient() => {
                warn!(error = %e, retry_in = ?backoff, "cannot acquire the lease yet");
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

/// Re-detect the underlay address; a change is published with the next renewal.
fn follow_underlay(config: &Config, lease: &mut Lease, family_misses: &mut u32, scheduled: bool) {
    let detected = match underlay::detect(&config.underlay) {
        Ok(ips) => ips,
        Err(e) => {
            warn!(error = %e, "cannot detect the underlay address; keeping the published one");
            return;
        }
    };
    let (merged, held) = merge_underlay(
        &lease.public_ips,
        &detected,
        *family_misses < FAMILY_MISSES_BEFORE_DROP,
    );
    if held {
        if scheduled {
            *family_misses += 1;
        }
        warn!(published = ?lease.public_ips, detected = ?detected, "an underlay family is missing; keeping it published for now");
    } else {
        *family_misses = 0;
    }
    if merged != lease.public_ips {
        info!(old = ?lease.public_ips, new = ?merged, "underlay address changed; republishing");
        lease.public_ips = merged;
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
    loop {
        match watcher.next().await {
            Ok(update) => {
                backoff = MIN_BACKOFF;
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
                warn!(error = %e, retry_in = ?backoff, "peer watch failed");
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
