//! `weft-lab bench-memory`: weftd's resident memory idle, and with `peers` simulated peers (records
//! written to the lab's file store) programmed; how much of it is weftd's own code, and how much
//! of the function order the release build links by (`daemon/weftd.order`) the binary still has.

use std::time::Duration;

use anyhow::{bail, Context};

use weft_lab::lab::{Lab, LabConfig};
use weft_lab::procs::{locate, wait_for};
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
    let idle_text = text_rss_kib(pid)?;
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
    let loaded_text = text_rss_kib(pid)?;
    let (listed, found) = order_file_coverage()?;
    Ok(format!(
        "weftd resident memory (VmRSS): idle {:.1} MiB; with {peers} peers programmed {:.1} MiB\n\
         of which weftd's code (its executable mapping): {:.1} MiB idle, {:.1} MiB with the peers\n\
         daemon/weftd.order: {found} of its {listed} functions are in this weftd\n",
        mib(idle),
        mib(loaded),
        mib(idle_text),
        mib(loaded_text),
    ))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How many functions `daemon/weftd.order` lists, and how many of them the built weftd defines
/// (read with `nm`): fewer found means the list has gone stale and should be made again with
/// `scripts/order-file.sh`.
fn order_file_coverage() -> anyhow::Result<(usize, usize)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../daemon/weftd.order");
    let order = std::fs::read_to_string(path).context(path)?;
    let weftd = locate("weftd")?;
    let nm = std::process::Command::new("nm")
        .arg("--defined-only")
        .arg(&weftd)
        .output()
        .context("run nm")?;
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let defined: std::collections::HashSet<&str> = symbols
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let found = listed.iter().filter(|name| defined.contains(*name)).count();
    Ok((listed.len(), found))
}

/// Resident KiB of weftd's executable mapping (its machine code), from `/proc/PID/smaps`.
fn text_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).context(path)?;
    let mut in_text = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_text = fields.get(1) == Some(&"r-xp")
                && fields.last().is_some_and(|p| p.ends_with("/weftd"));
        } else if in_text && fields.first() == Some(&"Rss:") {
            kib += fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(kib)
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
