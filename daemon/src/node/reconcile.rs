//! The reconcile loop, generic over the backend: on every lease or peer change, and every resync
//! period (`--resync-interval`, [`RESYNC_EVERY`] by default), plan the desired state
//! ([`crate::plan::incremental::Planner`], equal to [`crate::plan::plan`]), diff it against the
//! observed one and apply the operations through the backend's driver; then the firewall, the
//! same way.
//!
//! The observed state is read from the kernel at start (nothing is flushed: a restart converges
//! what is there, so pod traffic keeps flowing), after any failed operation, and at every resync
//! (which repairs drift); in between, the last plan applied stands for it, so one peer change
//! costs its handful of netlink operations and no dump. While it stands, a change the planner
//! made incrementally is applied as the planner's operations (exactly the diff of the two plans,
//! found in O(change)); after a full plan, the new plan is diffed against the previous one.
//!
//! The kernel settings weft depends on ([`super::sysctl`]: forwarding) are read at start
//! and at every resync too; any that drifted is restored and named in a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtnetlink::Handle;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use weft_proto::lease::{Lease, PublicIps};
use weft_proto::names::{IfName, NodeName};

use super::firewall::FirewallKeeper;
use super::sysctl::{self, Setting};
use crate::agent::AgentView;
use crate::backend::{Backend, Driver, DriverError};
use crate::firewall::TunnelGuard;
use crate::inspect::snapshot::RefusedView;
use crate::inspect::state::{Mesh, MeshPeer};
use crate::metrics::variant_name;
use crate::plan::admission::{Incumbents, Refusal};
use crate::plan::incremental::{Planner, Update};
use crate::plan::{self, PlanConfig};
use crate::store::unix_now;

/// How soon a pass in which something failed is retried.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// How often, by default, the observed state is read again from the kernel, repairing drift.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Failed operations logged one by one in a pass; the rest are counted.
const LOG_FAILURES_UP_TO: usize = 5;
/// Above this many operations, one summary line is logged instead of one line per operation.
const LOG_EACH_OP_UP_TO: usize = 20;

/// The loop's state between passes.
pub struct Reconciler<B: Backend> {
    backend: B,
    driver: B::Driver,
    plan_config: PlanConfig,
    /// Whether the kernel holds the planner's last plan, as far as weft knows (it was applied
    /// without a failure since the kernel was last read); `false` means "read it again".
    in_sync: bool,
    /// The plan, kept between passes: the peers' claims the last plan accepted win conflicts with
    /// newcomers at the next one, and one peer change is planned in O(change).
    planner: Planner<B>,
    /// The peers refused at the last pass: node name → reason.
    refusals: BTreeMap<String, String>,
    /// weft's nftables table; `None` where weft keeps no firewall (`--datapath none`).
    firewall: Option<FirewallKeeper>,
    /// The kernel settings kept (none with `--datapath none`).
    sysctls: Vec<Setting>,
    /// How often the kernel is read again.
    resync: Duration,
    /// Something failed in the last pass: read the kernel again and retry after `retry_delay`,
    /// which doubles (up to the resync period) while failures go on.
    retry_soon: bool,
    retry_delay: Duration,
    /// Unix seconds of the last pass, for `/healthz`.
    heartbeat: Arc<AtomicU64>,
    /// The peers the last plan accepted and refused, for inspection and the prober.
    mesh: watch::Sender<Mesh>,
    /// Direct routing on: where to read the underlay interface's subnets from, and the underlay
    /// addresses they were last read for (`None`: read them again before the next plan).
    direct: Option<(Handle, Option<PublicIps>)>,
}

impl<B: Backend> Reconciler<B> {
    /// A loop programming `backend` through `driver`, and the firewall where one is given.
    pub fn new(
        backend: B,
        driver: B::Driver,
        plan_config: PlanConfig,
        firewall: Option<FirewallKeeper>,
    ) -> Self {
        Reconciler {
            backend,
            driver,
            plan_config,
            in_sync: false,
            planner: Planner::new(),
            refusals: BTreeMap::new(),
            firewall,
            sysctls: Vec::new(),
            resync: RESYNC_EVERY,
            retry_soon: false,
            retry_delay: RETRY_AFTER_FAILURE,
            heartbeat: Arc::new(AtomicU64::new(0)),
            mesh: watch::channel(Mesh::default()).0,
            direct: None,
        }
    }

    /// Route peers on the underlay interface's subnets directly, reading those subnets through
    /// `host` at the first pass, whenever this node's underlay addresses change, and at every
    /// resync (`None`: never, every peer through the tunnel).
    pub fn routing_directly(mut self, host: Option<Handle>) -> Self {
        self.direct = host.map(|h| (h, None));
        self
    }

    /// The peers each plan accepts and refuses, as they change.
    pub fn mesh(&self) -> watch::Receiver<Mesh> {
        self.mesh.subscribe()
    }

    /// Read the kernel again every `resync` rather than every [`RESYNC_EVERY`].
    pub fn resync_every(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Keep `sysctls` too: read at start and at every resync, restored when they drifted.
    pub fn keeping(mut self, sysctls: Vec<Setting>) -> Self {
        self.sysctls = sysctls;
        self
    }

    /// Where each pass records its time (Unix seconds), for `/healthz`.
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.heartbeat.clone()
    }

    /// Run until the agent's channels close.
    pub async fn run(mut self, view: AgentView) {
        let (mut lease_rx, mut peers_rx) = (view.lease.clone(), view.peers.clone());
        let mut resync = tokio::time::interval(self.resync);
        resync.tick().await;
        self.keep_sysctls();
        loop {
            self.heartbeat.store(unix_now(), Ordering::Relaxed);
            let own = lease_rx.borrow_and_update().clone();
            let peers = peers_rx.borrow_and_update().clone();
            if let (Some(own), Some(peers)) = (own, peers) {
                let started = std::time::Instant::now();
                let complete = self.reconcile(&own, peers.iter()).await;
                crate::metrics::global().reconcile(started.elapsed(), complete);
                if complete {
                    view.programmed
                        .send_if_modified(|p| !std::mem::replace(p, true));
                }
            }
            let retry = std::mem::take(&mut self.retry_soon);
            let retry_timer = tokio::time::sleep(self.retry_delay);
            tokio::select! {
                changed = lease_rx.changed() => if changed.is_err() { return },
                changed = peers_rx.changed() => if changed.is_err() { return },
                _ = retry_timer, if retry => {}
                _ = firewall_changed(&mut self.firewall) => {}
                _ = self.driver.drifted() => {
                    warn!("the datapath changed under weft; reading it again");
                    self.in_sync = false;
                }
                _ = resync.tick() => {
                    self.in_sync = false;
                    if let Some((_, read_for)) = &mut self.direct {
                        *read_for = None;
                    }
                    if let Some(firewall) = &mut self.firewall {
                        firewall.resync();
                    }
                    self.keep_sysctls();
                }
            }
        }
    }

    /// One pass: plan, then converge the backend and the firewall; whether both are as planned.
    pub async fn reconcile<'a>(
        &mut self,
        own: &Lease,
        peers: impl Iterator<Item = &'a Lease>,
    ) -> bool {
        let peers: Vec<&Lease> = peers.collect();
        self.follow_underlay(own).await;
        let planned =
            self.planner
                .update(&self.backend, own, peers.iter().copied(), &self.plan_config);
        let (update, plan) = match (planned, self.planner.plan()) {
            (Ok(update), Some(plan)) => (update, plan),
            (Err(e), _) => {
                error!(error = %e, "cannot plan this node's datapath; changing nothing");
                return false;
            }
            (Ok(_), None) => return false,
        };
        // This plan is the one being programmed now (even if applying it fails below): the planner
        // keeps it, and the claims it accepted hold against newcomers at the next pass.
        report_refusals(&mut self.refusals, &own.node, &plan.refused);
        self.publish_mesh(own, &peers, &plan.accepted, &plan.refused);
        let tunnel = self.backend.guarded_port().map(|port| TunnelGuard {
            port,
            peers: plan.accepted.underlays(),
        });
        let mut done = self.converge(&own.node, update).await;
        if let Some(firewall) = &mut self.firewall {
            if !firewall
                .converge(own, &self.plan_config.cluster_cidrs, tunnel)
                .await
            {
                self.schedule_retry();
                done = false;
            }
        }
        done
    }

    /// The operations from what the kernel holds to the planner's plan: the planner's own when
    /// the kernel holds the previous plan, else a diff against the previous plan or, when the
    /// kernel is to be read again, against what it holds. `None` when it cannot be read.
    async fn operations(
        &mut self,
        node: &NodeName,
        update: Update<B::State, B::Op>,
    ) -> Option<Vec<B::Op>> {
        let previous = match update {
            Update::Incremental(ops) if self.in_sync => return Some(ops),
            Update::Full {
                previous: Some(previous),
            } if self.in_sync => previous,
            _ => match self.driver.observe().await {
                Ok(observed) => observed,
                Err(e) => {
                    warn!(%node, error = %e, "cannot read the datapath; will retry");
                    return None;
                }
            },
        };
        let desired = &self.planner.plan()?.datapath;
        Some(self.backend.diff(desired, &previous))
    }

    /// Observe (unless the last plan applied stands for it), diff and apply; whether all of it
    /// worked.
    async fn converge(&mut self, node: &NodeName, update: Update<B::State, B::Op>) -> bool {
        let ops = self.operations(node, update).await;
        self.in_sync = false;
        let Some(ops) = ops else {
            self.schedule_retry();
            return false;
        };
        if self.apply(node, &ops).await > 0 {
            self.schedule_retry();
            return false;
        }
        self.retry_delay = RETRY_AFTER_FAILURE;
        self.in_sync = true;
        true
    }

    /// Apply every operation; returns how many failed or were skipped. One the kernel keeps
    /// refusing must not hold back the others (routes come last) nor the firewall; but once a
    /// device cannot be made, the operations on it are skipped rather than failed one by one.
    async fn apply(&mut self, node: &NodeName, ops: &[B::Op]) -> usize {
        if ops.is_empty() {
            return 0;
        }
        log_ops(ops);
        let requests_before = self.driver.requests();
        let mut broken_devices: BTreeSet<IfName> = BTreeSet::new();
        let (mut failed, mut skipped) = (0, 0);
        for op in ops {
            let dev = self.backend.op_device(op);
            if dev.is_some_and(|d| broken_devices.contains(d)) {
                skipped += 1;
                continue;
            }
            let applied = self.driver.apply(op).await;
            crate::metrics::global().datapath_op(&variant_name(op), applied.is_ok());
            if let Err(e) = applied {
                failed += 1;
                if failed <= LOG_FAILURES_UP_TO {
                    warn!(%node, op = %op, error = %e, "datapath operation failed");
                }
                let device_missing =
                    matches!(e, DriverError::NoDevice(_)) || self.backend.creates_device(op);
                if let (true, Some(dev)) = (device_missing, dev) {
                    broken_devices.insert(dev.clone());
                }
            }
        }
        let requests = self.driver.requests() - requests_before;
        debug!(requests, failed, skipped, "datapath pass done");
        if failed > 0 {
            warn!(failed, skipped, retry_in = ?self.retry_delay, "datapath pass incomplete; reading the kernel again and retrying");
        }
        failed + skipped
    }

    /// Read the underlay interface's subnets again if this node's underlay addresses changed
    /// since they were read (or a resync asked); log the direct routing in force when it changes.
    async fn follow_underlay(&mut self, own: &Lease) {
        let Some((host, read_for)) = &mut self.direct else {
            return;
        };
        if read_for.as_ref() == Some(&own.public_ips) {
            return;
        }
        *read_for = Some(own.public_ips);
        let now = super::direct_routing(host, &own.public_ips).await;
        if now == self.plan_config.direct_routing {
            return;
        }
        match &now {
            Some(direct) => {
                let on = crate::net::net_list(&direct.subnets);
                info!(iface = %direct.iface, subnets = %on, "direct routing: peers on {on} are routed straight to their underlay address");
            }
            None => info!("direct routing: no interface holds this node's underlay address; every peer through the tunnel"),
        }
        self.plan_config.direct_routing = now;
    }

    fn schedule_retry(&mut self) {
        if self.retry_soon {
            return;
        }
        self.retry_soon = true;
        self.retry_delay = (self.retry_delay * 2).min(self.resync);
    }

    /// Read the kept kernel settings; restore and name each one that drifted.
    fn keep_sysctls(&mut self) {
        for (drift, written) in sysctl::restore(&self.sysctls) {
            let (setting, old) = (drift.setting.path, drift.observed.as_deref().unwrap_or("?"));
            let new = drift.setting.value;
            match written {
                Ok(()) => warn!(setting, "sysctl drifted; restored: {old} → {new}"),
                Err(e) => {
                    error!(setting, error = %e, "sysctl drifted; cannot restore {old} → {new}")
                }
            }
        }
    }

    /// Publish what the plan accepted and refused, if it changed.
    fn publish_mesh(
        &self,
        own: &Lease,
        peers: &[&Lease],
        accepted: &Incumbents,
        refused: &[Refusal],
    ) {
        let mesh = plan_mesh(own, peers, accepted, refused);
        self.mesh.send_if_modified(|current| {
            let changed = *current != mesh;
            if changed {
                *current = mesh;
            }
            changed
        });
    }
}

/// One line per peer newly refused (or refused for a new reason), one per peer no longer
/// refused, each with the peer's name as a field; `refusals` (node name → reason) is the last
/// pass's, replaced by this one's.
fn report_refusals(refusals: &mut BTreeMap<String, String>, node: &NodeName, refused: &[Refusal]) {
    let now: BTreeMap<String, String> = refused
        .iter()
        .map(|r| (r.node.to_string(), r.reason.clone()))
        .collect();
    for (peer, reason) in &now {
        if refusals.get(peer) != Some(reason) {
            warn!(%node, %peer, %reason, "peer {peer} refused; programming nothing for it");
        }
    }
    for peer in refusals.keys().filter(|p| !now.contains_key(*p)) {
        info!(%node, %peer, "peer {peer} no longer refused");
    }
    *refusals = now;
}

/// The mesh of a plan: the accepted peers with what was programmed for them (and, for WireGuard,
/// their port and key), the refused ones with the reason and their published underlay address.
fn plan_mesh(own: &Lease, peers: &[&Lease], accepted: &Incumbents, refused: &[Refusal]) -> Mesh {
    let by_name: BTreeMap<&NodeName, &Lease> = peers.iter().map(|l| (&l.node, *l)).collect();
    let family = plan::tunnel_family(&own.public_ips).unwrap_or(plan::Family::V4);
    let peers = accepted
        .held()
        .map(|(node, pod_cidrs, endpoint)| MeshPeer {
            node: node.to_string(),
            pod_cidrs,
            endpoint,
            wireguard: by_name
                .get(node)
                .and_then(|l| crate::backend::wireguard::published(&l.backend))
                .map(|(key, port)| (port, key.to_string())),
        })
        .collect();
    let refused = refused
        .iter()
        .map(|r| RefusedView {
            node: r.node.to_string(),
            reason: r.reason.clone(),
            endpoint: by_name
                .get(&r.node)
                .and_then(|l| family.public_ip(&l.public_ips)),
        })
        .collect();
    Mesh { peers, refused }
}

/// Resolves when the firewall's inputs beyond the lease changed; never without a firewall.
async fn firewall_changed(firewall: &mut Option<FirewallKeeper>) {
    match firewall {
        Some(firewall) => firewall.changed().await,
        None => std::future::pending().await,
    }
}

/// One line per operation, or one summary line for many.
fn log_ops<O: std::fmt::Display>(ops: &[O]) {
    if ops.len() <= LOG_EACH_OP_UP_TO {
        for op in ops {
            info!(op = %op, "datapath");
        }
    } else {
        info!(operations = ops.len(), "datapath: applying");
    }
}
