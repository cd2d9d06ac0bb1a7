//! The one place the benchmarks use weftd as a library: `weft-lab bench-program` times the VXLAN
//! backend's plan, diff and driver through the backend seam (`weftd::plan::plan`,
//! `weftd::backend::{Backend, Driver}`), which no binary or socket exposes.
//!
//! Errors stay strings here, whatever types weftd's functions use, so re-pointing never touches
//! error handling.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_proto::lease::Lease;
use weftd::backend::vxlan::Vxlan;
use weftd::backend::{Backend, Driver};
use weftd::datapath::netns::Netns;
use weftd::plan::admission::Incumbents;
use weftd::plan::{plan, BackendPlan, PlanConfig};

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
    let first = plan(&Vxlan, own, &peers[..n], &config, &Incumbents::default())
        .map_err(|e| e.to_string())?;
    if let Some(refusal) = first.refused.first() {
        return Err(format!(
            "{} simulated peers refused, e.g. {refusal}",
            first.refused.len()
        ));
    }
    let mut driver = Vxlan.driver(handle, &config.cluster_cidrs);
    let observed = driver.observe().await.map_err(|e| e.to_string())?;
    let ops = Vxlan.diff(&first.datapath, &observed);
    for op in &ops {
        driver.apply(op).await.map_err(|e| format!("{op}: {e}"))?;
    }
    let elapsed = started.elapsed();
    let requests = driver.requests();

    // One further peer joins.
    let started = Instant::now();
    let next =
        plan(&Vxlan, own, &peers[..=n], &config, &first.accepted).map_err(|e| e.to_string())?;
    let change = Vxlan.diff(&next.datapath, &first.datapath);
    let before = driver.requests();
    for op in &change {
        driver.apply(op).await.map_err(|e| format!("{op}: {e}"))?;
    }
    let change_elapsed = started.elapsed();
    let change_requests = driver.requests() - before;
    let check = driver.observe().await.map_err(|e| e.to_string())?;
    if !Vxlan.diff(&next.datapath, &check).is_empty() {
        return Err(format!(
            "{n} peers: the kernel does not hold the plan after applying it"
        ));
    }
    Ok(ProgramCost {
        elapsed,
        requests,
        change_ops: change.len(),
        change_requests,
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
