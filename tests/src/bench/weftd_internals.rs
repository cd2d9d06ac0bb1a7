//! The one place the benchmarks use weftd as a library: `weft-lab bench-program` times the VXLAN
//! backend's plan, diff and driver through the backend seam (`weftd::plan::incremental::Planner`
//! and `weftd::plan::plan`, `weftd::backend::{Backend, Driver}`), and `bench-probe` runs the peer prober
//! (`weftd::inspect::probe`) on a thread of its own, neither of which a binary or socket exposes.
//!
//! Errors stay strings here, whatever types weftd's functions use, so re-pointing never touches
//! error handling.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_proto::lease::Lease;
use weftd::backend::vxlan::{Op, Plan, Vxlan};
use weftd::backend::{Backend, Driver};
use weftd::datapath::netns::Netns;
use weftd::plan::incremental::{Planner, Update};
use weftd::plan::{plan, BackendPlan, PlanConfig};

/// What programming `n` peers and then one further peer cost.
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub elapsed: Duration,
    /// Netlink requests to program the `n` peers from empty.
    pub requests: usize,
    /// Operations and netlink requests for the one further peer, and the time they took: the
    /// incremental planner's update (plan + diff) and applying its operations, as weftd does.
    pub change_ops: usize,
    pub change_requests: usize,
    pub change_elapsed: Duration,
    /// Of `change_elapsed`, the planner's update alone (plan + diff, no netlink).
    pub change_plan: Duration,
    /// The same change planned in full (`weftd::plan::plan`, then the diff of the two plans; not
    /// applied), as weftd planned every change before: for comparison.
    pub full_plan: Duration,
}

/// Program `peers[..n]` (dual-stack VXLAN leases) from empty into the namespace at `netns_path`
/// as node `own`, then `peers[..=n]`; the kernel must hold the plan afterwards. The peers go to
/// the planner in node-name order, as weftd's peer set hands them over.
pub async fn program_peers(
    netns_path: &Path,
    own: &Lease,
    peers: &[Lease],
    n: usize,
) -> Result<ProgramCost, String> {
    let ns = Netns::open(netns_path).map_err(|e| e.to_string())?;
    let handle = ns.connect(&[]).await.map_err(|e| e.to_string())?;
    let config = plan_config();
    let mut set: BTreeMap<&str, &Lease> = peers[..n].iter().map(|l| (l.node.as_str(), l)).collect();
    let mut planner = Planner::new();
    let started = Instant::now();
    planner
        .update(&Vxlan, own, set.values().copied(), &config)
        .map_err(|e| e.to_string())?;
    let first = planner.plan().ok_or("no plan")?.clone();
    if let Some(refusal) = first.refused.first() {
        return Err(format!(
            "{} simulated peers refused, e.g. {refusal}",
            first.refused.len()
        ));
    }
    let mut driver = Vxlan.driver(handle, &config.cluster_cidrs);
    let observed = driver.observe().await.map_err(|e| e.to_string())?;
    apply_all(&mut driver, &Vxlan.diff(&first.datapath, &observed)).await?;
    let (elapsed, requests) = (started.elapsed(), driver.requests());

    // One further peer joins: first planned in full for comparison (not applied), then as weftd
    // does it.
    set.insert(peers[n].node.as_str(), &peers[n]);
    let (next, full_ops, full_plan) = planned_in_full(own, set.values().copied(), &config, &first)?;
    let (change, change_plan, change_elapsed, change_requests) = one_more_peer(
        &mut planner,
        &mut driver,
        own,
        set.values().copied(),
        &config,
    )
    .await?;
    if change != full_ops {
        return Err(format!(
            "{n} peers: the planner's operations are not the full diff"
        ));
    }
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
        change_plan,
        full_plan,
    })
}

/// The planner's update for `peers` and its operations applied, timed: the operations, the
/// update's time, the whole time and the netlink requests. An update planned in full is an error.
async fn one_more_peer<'a>(
    planner: &mut Planner<Vxlan>,
    driver: &mut <Vxlan as Backend>::Driver,
    own: &Lease,
    peers: impl Iterator<Item = &'a Lease>,
    config: &PlanConfig,
) -> Result<(Vec<Op>, Duration, Duration, usize), String> {
    let started = Instant::now();
    let update = planner
        .update(&Vxlan, own, peers, config)
        .map_err(|e| e.to_string())?;
    let planned = started.elapsed();
    let Update::Incremental(change) = update else {
        return Err("one further peer was planned in full".to_string());
    };
    let before = driver.requests();
    apply_all(driver, &change).await?;
    let elapsed = started.elapsed();
    Ok((change, planned, elapsed, driver.requests() - before))
}

/// The plan for `peers` after `first`, in full (as weftd planned every change before), and the
/// diff of the two; and the time they took.
fn planned_in_full<'a>(
    own: &Lease,
    peers: impl Iterator<Item = &'a Lease>,
    config: &PlanConfig,
    first: &Plan,
) -> Result<(Plan, Vec<Op>, Duration), String> {
    let started = Instant::now();
    let next = plan(&Vxlan, own, peers, config, &first.accepted).map_err(|e| e.to_string())?;
    let ops = Vxlan.diff(&next.datapath, &first.datapath);
    Ok((next, ops, started.elapsed()))
}

/// Apply `ops` in order; the first failure is the error.
async fn apply_all(driver: &mut <Vxlan as Backend>::Driver, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        driver.apply(op).await.map_err(|e| format!("{op}: {e}"))?;
    }
    Ok(())
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
        direct_routing: None,
    }
}

/// What probing simulated peers cost.
#[derive(Debug, Clone)]
pub struct ProbeCost {
    /// CPU time (user + system) of the prober's thread per second of wall time.
    pub cpu_per_second: f64,
    /// Peers `up` at the end, of all.
    pub up: usize,
    pub peers: usize,
    /// Echo requests sent and replies received per second, all peers.
    pub sent_per_second: f64,
    pub received_per_second: f64,
    /// How often each peer is probed.
    pub interval: Duration,
}

/// Run weftd's peer prober (`weftd::inspect::probe`) in the namespace at `netns_path` against
/// `peers` simulated peers whose tunnel addresses are `addresses` (pairs of one IPv4 and one IPv6
/// address per peer, all answering inside that namespace), on one thread: settle for `settle`,
/// then measure that thread's CPU time over `measure`.
pub fn probe_cost(
    netns_path: &Path,
    addresses: &[(std::net::IpAddr, std::net::IpAddr)],
    settle: Duration,
    measure: Duration,
) -> Result<ProbeCost, String> {
    let netns = std::fs::File::open(netns_path).map_err(|e| e.to_string())?;
    let addresses = addresses.to_vec();
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(probe_in_this_thread(&addresses, settle, measure))
    })
    .join()
    .map_err(|_| "the prober thread panicked".to_string())?
}

async fn probe_in_this_thread(
    addresses: &[(std::net::IpAddr, std::net::IpAddr)],
    settle: Duration,
    measure: Duration,
) -> Result<ProbeCost, String> {
    use weftd::inspect::probe;
    use weftd::inspect::snapshot::HealthState;
    use weftd::inspect::state::{Mesh, MeshPeer};
    let peers = addresses
        .iter()
        .enumerate()
        .map(|(i, (v4, v6))| MeshPeer {
            node: format!("peer-{i}"),
            pod_cidrs: vec![
                ipnet::IpNet::new(*v4, 24).unwrap().trunc(),
                ipnet::IpNet::new(*v6, 64).unwrap().trunc(),
            ],
            endpoint: *v4,
            wireguard: None,
        })
        .collect();
    let (_tx, rx) = tokio::sync::watch::channel(Mesh {
        peers,
        refused: Vec::new(),
    });
    let (table, task) = probe::spawn(rx, probe::PROBE_INTERVAL);
    tokio::time::sleep(settle).await;
    let totals = |t: &probe::SharedHealth| {
        let by_node = t.lock().unwrap().by_node();
        let sent: u64 = by_node.values().map(|h| h.sent).sum();
        let received: u64 = by_node.values().map(|h| h.received).sum();
        (sent, received)
    };
    let (sent0, received0, cpu0, wall0) = {
        let (s, r) = totals(&table);
        (s, r, thread_cpu(), Instant::now())
    };
    tokio::time::sleep(measure).await;
    let (sent1, received1) = totals(&table);
    let (cpu1, wall) = (thread_cpu(), wall0.elapsed().as_secs_f64());
    let up = table
        .lock()
        .unwrap()
        .by_node()
        .values()
        .filter(|h| h.state == HealthState::Up)
        .count();
    task.abort();
    Ok(ProbeCost {
        cpu_per_second: (cpu1 - cpu0).as_secs_f64() / wall,
        up,
        peers: addresses.len(),
        sent_per_second: (sent1 - sent0) as f64 / wall,
        received_per_second: (received1 - received0) as f64 / wall,
        interval: probe::PROBE_INTERVAL,
    })
}

/// This thread's CPU time, user and system (`getrusage(RUSAGE_THREAD)`).
fn thread_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .expect("getrusage");
    let to =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    to(usage.user_time()) + to(usage.system_time())
}
