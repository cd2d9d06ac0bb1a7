//! `weft-lab bench-memory`: weftd's resident memory idle, and with `peers` simulated peers (records
//! written to the lab's file store) programmed.

use std::time::Duration;

use anyhow::{bail, Context};

use weft_lab::lab::{Lab, LabConfig};
use weft_lab::procs::wait_for;
use weft_proto::lease::{BackendData, Lease};

use super::program::simulated_lease;

pub fn daemon_memory(peers: usize) -> anyhow::Result<String> {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        ..Default::default()
    })?;
    let pid = lab.nodes[0]
        .daemon
        .as_ref()
        .map(|d| d.pid())
        .context("no daemon")?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid)?;
    let nodes_dir = lab.dir.join("store").join("nodes");
    for i in 1..=peers {
        let lease = lab_peer(i);
        let record = serde_json::to_vec(&lease.to_record())?;
        let path = nodes_dir.join(format!("{}.json", lease.node));
        std::fs::write(&path, record).with_context(|| path.display().to_string())?;
    }
    let programmed = wait_for(Duration::from_secs(60), || {
        let routes = lab.nodes[0]
            .netns
            .exec(&["ip", "-6", "route", "show", "dev", "weft-v6.vxlan"])
            .ok()?;
        (routes.lines().filter(|l| l.contains("onlink")).count() >= peers).then_some(())
    });
    if programmed.is_none() {
        bail!("{peers} peers were not programmed within 60 s");
    }
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_kib(pid)?;
    Ok(format!(
        "weftd resident memory (VmRSS): idle {:.1} MiB; with {peers} peers programmed {:.1} MiB\n",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    ))
}

/// Simulated peer `i` with pod CIDRs inside the lab's cluster CIDRs (10.244.0.0/16 and
/// fd00:10:244::/48): IPv6 for every peer, IPv4 for the first 254.
fn lab_peer(i: usize) -> Lease {
    let mut lease = simulated_lease(i + 1000);
    lease.pod_cidrs.v4 = Some(format!("10.244.{}.0/24", (i % 255) + 1).parse().unwrap());
    lease.pod_cidrs.v4 = if i < 255 { lease.pod_cidrs.v4 } else { None };
    lease.pod_cidrs.v6 = Some(format!("fd00:10:244:{:x}::/64", i + 1).parse().unwrap());
    lease.expires = Some(4_000_000_000);
    if lease.pod_cidrs.v4.is_none() {
        if let BackendData::Vxlan { vtep_mac, .. } = &mut lease.backend {
            *vtep_mac = None;
        }
    }
    lease
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).context(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
