//! The one place the benchmarks reach into weftd's internals (`weftd::plan`,
//! `weftd::datapath::vxlan`, `weftd::datapath::netns`): `weft-lab bench-program` times weftd's own
//! plan, diff and netlink applier, which no binary or socket exposes. When those modules move,
//! re-point the `use` lines below and nothing else.
//!
//! Errors stay strings here, whatever types weftd's functions use, so re-pointing never touches
//! error handling.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_proto::lease::Lease;
use weftd::datapath::netns::Netns;
use weftd::datapath::vxlan::{observe, Applier};
use weftd::plan::{desired, diff, Incumbents, PlanConfig};

/// What programming `n` peers and then one further peer cost.
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub elapsed: Duration,
    /// Netlink requests to program the `n` peers from empty.
    pub requests: usize,
    /// Operations and netlink requests for the one further peer, and the time they took.
    pub change_ops: usize,
    pub change_requests: usize,
    pub change_elapsed: Duration,
}

/// Program `peers[..n]` (dual-stack VXLAN leases) from empty into the namespace at `netns_path`
/// as node `own`, then `peers[..=n]`; the kernel must hold the plan afterwards.
pub async fn program_peers(
    netns_path: &Path,
    own: &Lease,
    peers: &[Lease],
    n: usize,
) -> Result<ProgramCost, String> {
    let ns = Netns::open(netns_path).map_err(|e| e.to_string())?;
    let handle = ns.connect(&[]).map_err(|e| e.to_string())?;
    let config = plan_config();
    let started = Instant::now();
    let plan =
        desired(own, &peers[..n], &config, &Incumbents::default()).map_err(|e| e.to_string())?;
    if let Some(refusal) = plan.refused.first() {
        return Err(format!(
            "{} simulated peers refused, e.g. {refusal}",
            plan.refused.len()
        ));
    }
    let observed = observe(&handle, &config.cluster_cidrs)
        .await
        .map_err(|e| e.to_string())?;
    let ops = diff(&plan.datapath, &observed);
    let mut applier = Applier::new(&handle);
    applier.apply_all(&ops).await.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let requests = applier.requests;

    // One further peer joins.
    let started = Instant::now();
    let next = desired(own, &peers[..=n], &config, &plan.accepted).map_err(|e| e.to_string())?;
    let change = diff(&next.datapath, &plan.datapath);
    let mut applier = Applier::new(&handle);
    applier
        .apply_all(&change)
        .await
        .map_err(|e| e.to_string())?;
    let change_elapsed = started.elapsed();
    let check = observe(&handle, &config.cluster_cidrs)
        .await
        .map_err(|e| e.to_string())?;
    if !diff(&next.datapath, &check).is_empty() {
        return Err(format!(
            "{n} peers: the kernel does not hold the plan after applying it"
        ));
    }
    Ok(ProgramCost {
        elapsed,
        requests,
        change_ops: change.len(),
        change_requests: applier.requests,
        change_elapsed,
    })
}

/// Dual stack, /24 and /64 per node, a 1500-byte underlay: the simulated peers' cluster.
fn plan_config() -> PlanConfig {
    PlanConfig {
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/48".parse().unwrap()],
        service_cidrs: Vec::new(),
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: Some(24),
        node_prefix_v6: Some(64),
    }
}
