//! The node's datapath side of the agent, started once the lease is held: forwarding, the CNI
//! server for pods, and the reconcile loop that keeps tunnels, routes and masquerade in step with
//! the lease and the peers.
//!
//! Reconcile: on every lease or peer change, and every [`RESYNC_EVERY`], compute the desired
//! datapath (`plan::desired`), diff it against the observed one and apply the operations. The
//! observed state is read from the kernel at start (nothing is flushed: a restart converges what is
//! there, so pod traffic keeps flowing), after any failed operation, and at every resync (which
//! repairs drift); in between, the result of the last apply stands for it, so one peer change costs
//! its handful of netlink operations and no dump.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rtnetlink::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use weft_proto::lease::{Lease, PublicIps};

use crate::agent::AgentView;
use crate::cni_server::{self, CniService};
use crate::config::Config;
use crate::datapath::vxlan::{self, Applier};
use crate::datapath::{self, netns, nl};
use crate::firewall::{self, nft};
use crate::ipam::Ipam;
use crate::plan::{self, Datapath, Family, PlanConfig};
use crate::underlay;

/// The MTU of the interface holding the node's underlay address (1500 if it cannot be found).
pub async fn underlay_mtu(host: &Handle, public_ips: &PublicIps) -> u32 {
    let wanted: Vec<IpAddr> = public_ips
        .v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(public_ips.v6.map(IpAddr::V6))
        .collect();
    let Ok(addresses) = underlay::list_addresses() else {
        return 1500;
    };
    let Some(iface) = addresses
        .iter()
        .find(|a| wanted.contains(&a.ip))
        .map(|a| a.iface.clone())
    else {
        return 1500;
    };
    match nl::link_by_name(host, &iface).await {
        Ok(Some(link)) => nl::link_mtu(&link).unwrap_or(1500),
        _ => 1500,
    }
}

/// Start the node's datapath services; the returned tasks run until aborted.
pub async fn start(
    config: &Config,
    lease: &Lease,
    view: AgentView,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let kept_ra = datapath::enable_forwarding(config.pool_v4.is_some(), config.pool_v6.is_some())
        .context("enable IP forwarding")?;
    if !kept_ra.is_empty() {
        info!(interfaces = ?kept_ra, "accept_ra 1 → 2: router advertisements stay accepted with IPv6 forwarding on");
    }
    let host = netns::connect_here().context("open a netlink connection")?;
    let underlay = underlay_mtu(&host, &lease.public_ips).await;
    let plan_config = PlanConfig::new(config, underlay);
    let underlay_family = if lease.public_ips.v4.is_some() {
        Family::V4
    } else {
        Family::V6
    };
    let mtu = plan_config.overlay_mtu(underlay_family);
    let pods_wired = nl::links(&host)
        .await
        .context("list links")?
        .iter()
        .any(datapath::pod::is_weft_veth);
    let ipam = Ipam::open(&config.state_dir, lease.pod_cidrs, !pods_wired)
        .context("open the IPAM state")?;
    let socket = config.run_dir.join("cni.sock");
    let listener = cni_server::bind(&socket)
        .with_context(|| format!("bind the CNI socket {}", socket.display()))?;
    let service = Arc::new(CniService::new(host.clone(), ipam, view.lease.clone(), mtu));
    info!(socket = %socket.display(), pod_mtu = mtu, "serving CNI requests");
    let reconciler = Reconciler::new(host, plan_config, service.unmasqueraded());
    Ok(vec![
        tokio::spawn(cni_server::serve(listener, service)),
        tokio::spawn(reconciler.run(view)),
    ])
}

/// How soon a pass in which something failed is retried.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// How often the observed state is read again from the kernel, repairing drift.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Failed operations logged one by one in a pass; the rest are counted.
const LOG_FAILURES_UP_TO: usize = 5;
/// Above this many operations, one summary line is logged instead of one line per operation.
const LOG_EACH_OP_UP_TO: usize = 20;

struct Reconciler {
    host: Handle,
    plan_config: PlanConfig,
    /// What the kernel holds, as far as weft knows; `None` means "read it again".
    observed: Option<Datapath>,
    /// The peers' claims the last plan accepted: they win conflicts with newcomers at the next one.
    incumbents: plan::Incumbents,
    refusals: BTreeSet<String>,
    /// The addresses of the pods not to masquerade (`"ipMasq": false`), from the CNI service.
    unmasqueraded: watch::Receiver<BTreeSet<IpAddr>>,
    /// weft's nftables table as the kernel holds it, as far as weft knows; `None`: read it again.
    firewall: Option<firewall::Observed>,
    /// Forward chains of other tables already warned about.
    warned_chains: BTreeSet<String>,
    /// Something failed in the last pass: read the kernel again and retry after `retry_delay`,
    /// which doubles (up to the resync period) while failures go on.
    retry_soon: bool,
    retry_delay: Duration,
}

impl Reconciler {
    fn new(
        host: Handle,
        plan_config: PlanConfig,
        unmasqueraded: watch::Receiver<BTreeSet<IpAddr>>,
    ) -> Reconciler {
        Reconciler {
            host,
            plan_config,
            observed: None,
            incumbents: plan::Incumbents::default(),
            refusals: BTreeSet::new(),
            unmasqueraded,
            firewall: None,
            warned_chains: BTreeSet::new(),
            retry_soon: false,
            retry_delay: RETRY_AFTER_FAILURE,
        }
    }

    async fn run(mut self, view: AgentView) {
        let (mut lease_rx, mut peers_rx) = (view.lease, view.peers);
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.tick().await;
        loop {
            let own = lease_rx.borrow_and_update().clone();
            let peers = peers_rx.borrow_and_update().clone();
            if let (Some(own), Some(peers)) = (own, peers) {
                self.reconcile(&own, peers.iter()).await;
            }
            let retry = std::mem::take(&mut self.retry_soon);
            let retry_timer = tokio::time::sleep(self.retry_delay);
            tokio::select! {
                changed = lease_rx.changed() => if changed.is_err() { return },
                changed = peers_rx.changed() => if changed.is_err() { return },
                _ = retry_timer, if retry => {}
                Ok(()) = self.unmasqueraded.changed() => {}
                _ = resync.tick() => {
                    self.observed = None;
                    self.firewall = None;
                }
            }
        }
    }

    async fn reconcile<'a>(&mut self, own: &Lease, peers: impl Iterator<Item = &'a Lease>) {
        let plan = match plan::desired(own, peers, &self.plan_config, &self.incumbents) {
            Ok(plan) => plan,
            Err(e) => {
                error!(error = %e, "cannot plan this node's datapath; changing nothing");
                return;
            }
        };
        // This plan is the one being programmed now (even if applying it fails below): the claims
        // it accepted hold against newcomers at the next pass.
        self.incumbents = plan.accepted.clone();
        self.report_refusals(&plan.refused);
        let observed = match self.observed.take() {
            Some(observed) => observed,
            None => match vxlan::observe(&self.host, &self.plan_config.cluster_cidrs).await {
                Ok(observed) => observed,
                Err(e) => {
                    warn!(error = %e, "cannot read the datapath; will retry");
                    self.schedule_retry();
                    self.apply_masquerade(own).await;
                    return;
                }
            },
        };
        let ops = plan::diff(&plan.datapath, &observed);
        let failed = self.apply(&ops).await;
        if failed > 0 {
            self.schedule_retry();
        } else {
            self.retry_delay = RETRY_AFTER_FAILURE;
            self.observed = Some(plan.datapath);
        }
        self.apply_masquerade(own).await;
    }

    /// Apply every operation; returns how many failed. One the kernel keeps refusing must not hold
    /// back the others (routes come last) nor the masquerade rules; but once a device cannot be
    /// made, the operations on it are skipped rather than failed one by one.
    async fn apply(&mut self, ops: &[plan::Op]) -> usize {
        if ops.is_empty() {
            return 0;
        }
        if ops.len() <= LOG_EACH_OP_UP_TO {
            for op in ops {
                info!(op = %op, "datapath");
            }
        } else {
            info!(operations = ops.len(), "datapath: applying");
        }
        let mut applier = Applier::new(&self.host);
        let mut broken_devices = BTreeSet::new();
        let (mut failed, mut skipped) = (0, 0);
        for op in ops {
            if broken_devices.contains(op.dev()) {
                skipped += 1;
                continue;
            }
            if let Err(e) = applier.apply(op).await {
                failed += 1;
                if failed <= LOG_FAILURES_UP_TO {
                    warn!(op = %op, error = %e, "datapath operation failed");
                }
                let device_missing = matches!(e, vxlan::OpError::NoDevice(_))
                    || matches!(
                        op,
                        plan::Op::CreateDevice(_) | plan::Op::RecreateDevice { .. }
                    );
                if device_missing {
                    broken_devices.insert(op.dev().clone());
                }
            }
        }
        debug!(
            requests = applier.requests,
            failed, skipped, "datapath pass done"
        );
        if failed > 0 {
            warn!(failed, skipped, retry_in = ?self.retry_delay, "datapath pass incomplete; reading the kernel again and retrying");
        }
        failed + skipped
    }

    fn schedule_retry(&mut self) {
        if self.retry_soon {
            return;
        }
        self.retry_soon = true;
        self.retry_delay = (self.retry_delay * 2).min(RESYNC_EVERY);
    }

    fn report_refusals(&mut self, refused: &[plan::Refusal]) {
        let now: BTreeSet<String> = refused.iter().map(|r| r.to_string()).collect();
        for refusal in now.difference(&self.refusals) {
            warn!("{refusal}; programming nothing for it");
        }
        for cleared in self.refusals.difference(&now) {
            info!("no longer refused: {cleared}");
        }
        self.refusals = now;
    }

    /// Bring weft's nftables table to the desired one: read it from the kernel when unknown (at
    /// start, at every resync, after a failure), diff, and apply the difference if there is one.
    async fn apply_masquerade(&mut self, own: &Lease) {
        let unmasqueraded = self.unmasqueraded.borrow_and_update().clone();
        let desired = firewall::desired(
            &own.pod_cidrs,
            &self.plan_config.cluster_cidrs,
            &unmasqueraded,
        );
        let observed = match self.firewall.take() {
            Some(observed) => observed,
            None => {
                self.warn_about_forward_drop().await;
                match nft::blocking(nft::observe).await {
                    Ok(observed) => observed,
                    Err(e) => {
                        warn!(error = %e, "cannot read the nftables table; will retry");
                        self.schedule_retry();
                        return;
                    }
                }
            }
        };
        let Some(op) = firewall::diff(&desired, &observed) else {
            self.firewall = Some(observed);
            return;
        };
        info!(op = %op, "firewall");
        let to_apply = op.clone();
        match nft::blocking(move || nft::apply(&to_apply)).await {
            Ok(()) => self.firewall = Some(firewall::Observed::Table(desired.summary())),
            Err(e) => {
                warn!(op = %op, error = %e, "cannot apply the firewall; will retry");
                self.schedule_retry();
            }
        }
    }

    /// nftables has no cross-table accept: a forward chain elsewhere with policy drop drops pod
    /// traffic whatever weft's table says, and weft does not edit other tables. Say so, naming
    /// each such chain once.
    async fn warn_about_forward_drop(&mut self) {
        if let Ok(listing) = nft::blocking(nft::list_chains).await {
            let chains: BTreeSet<String> = nft::forward_drop_chains(&listing).into_iter().collect();
            for chain in chains.difference(&self.warned_chains) {
                warn!(chain = %chain, "this chain drops forwarded packets by policy: pod traffic through this node is dropped there unless it accepts the cluster CIDRs (weft changes no table but its own)");
            }
            self.warned_chains = chains;
        }
    }
}

/// `weftd cleanup`: remove everything weft made on this node — its VXLAN devices (with their
/// routes, neighbour and FDB entries), its nftables table and its pod veths. Every step runs; the
/// failures are reported together.
pub async fn cleanup() -> anyhow::Result<()> {
    let host = netns::connect_here().context("open a netlink connection")?;
    let mut failures = Vec::new();
    let mut applier = Applier::new(&host);
    for name in vxlan::device_names() {
        if let Err(e) = applier.apply(&plan::Op::DeleteDevice(name.clone())).await {
            failures.push(format!("delete {name}: {e}"));
        }
    }
    if let Err(e) = nft::remove() {
        failures.push(format!("remove table inet {}: {e}", firewall::TABLE));
    }
    match nl::links(&host).await {
        Ok(links) => {
            for link in links.iter().filter(|l| datapath::pod::is_weft_veth(l)) {
                let name = nl::link_name(link).unwrap_or_default().to_string();
                if let Err(e) = host.link().del(link.header.index).execute().await {
                    failures.push(format!("delete {name}: {e}"));
                }
            }
        }
        Err(e) => failures.push(format!("list links: {e}")),
    }
    if failures.is_empty() {
        info!("cleanup done: weft's devices, nftables table and pod veths are gone");
        Ok(())
    } else {
        anyhow::bail!("cleanup incomplete: {}", failures.join("; "))
    }
}
