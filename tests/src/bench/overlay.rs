//! `weft-lab bench-overlay`: pod-to-pod TCP throughput across two nodes as a ratio of
//! node-to-node throughput between the same two nodes, with iperf3, 1 and 4 streams, for three
//! pairs: routed directly (two nodes on one subnet, weftd's default), through VXLAN on one subnet
//! (`--direct-routing off`), and through VXLAN between subnets (the lab's routed underlay, where
//! the underlay itself crosses the router).

use std::time::Duration;

use anyhow::Context;

use weft_lab::lab::{Lab, LabConfig};
use weft_lab::netns::NetnsGuard;

/// The table: one row per pair and stream count.
pub fn overlay_throughput(seconds: u32) -> anyhow::Result<String> {
    let mut table =
        format!("TCP throughput, {seconds} s per run (Gbit/s), iperf3, lab nodes over IPv4\n");
    table += &format!(
        "{:<32} {:<8} {:>10} {:>10} {:>8}\n",
        "pair", "streams", "underlay", "overlay", "ratio"
    );
    let routed = Lab::up(LabConfig {
        nodes: 3,
        pods_per_node: 1,
        routed_underlay: true,
        direct_routing: true,
        ..Default::default()
    })?;
    routed.wait_converged(Duration::from_secs(10));
    table += &pair_rows(&routed, "direct route, one subnet", (0, 1), seconds)?;
    table += &pair_rows(&routed, "VXLAN, across the router", (0, 2), seconds)?;
    drop(routed);
    let flat = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ..Default::default()
    })?;
    flat.wait_converged(Duration::from_secs(10));
    table += &pair_rows(&flat, "VXLAN, one subnet", (0, 1), seconds)?;
    Ok(table)
}

/// Rows for nodes `pair` (each with its first pod, pods numbered as nodes): underlay, then
/// overlay, 1 and 4 streams.
fn pair_rows(lab: &Lab, name: &str, pair: (usize, usize), seconds: u32) -> anyhow::Result<String> {
    let (n1, n2) = (&lab.nodes[pair.0], &lab.nodes[pair.1]);
    let (a, b) = (&lab.pods[pair.0], &lab.pods[pair.1]);
    let mut rows = String::new();
    for streams in [1, 4] {
        let to = n2.underlay_v4.to_string();
        let underlay = iperf3(&n1.netns, &n2.netns, &to, streams, seconds)?;
        let pod = b.v4.expect("IPv4 pod").to_string();
        let overlay = iperf3(&a.netns, &b.netns, &pod, streams, seconds)?;
        rows += &format!(
            "{name:<32} {streams:<8} {:>10.2} {:>10.2} {:>8.2}\n",
            underlay / 1e9,
            overlay / 1e9,
            overlay / underlay
        );
    }
    Ok(rows)
}

/// One iperf3 run: what was received, and TCP's retransmits.
pub struct Iperf {
    pub bits_per_second: f64,
    pub retransmits: u64,
    pub seconds: f64,
}

/// Bits per second received, client in `from` to a one-off server in `to`.
fn iperf3(
    from: &NetnsGuard,
    to: &NetnsGuard,
    address: &str,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    Ok(iperf3_run(from, to, address, streams, seconds)?.bits_per_second)
}

/// One iperf3 run, client in `from` to a one-off server in `to`.
pub fn iperf3_run(
    from: &NetnsGuard,
    to: &NetnsGuard,
    address: &str,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<Iperf> {
    let mut server = to
        .command("iperf3")
        .args(["-s", "-1", "-B", address])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(300));
    let output = from.exec(&[
        "iperf3",
        "-J",
        "-c",
        address,
        "-P",
        &streams.to_string(),
        "-t",
        &seconds.to_string(),
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_str(&output?).context("iperf3 output")?;
    let end = &report["end"];
    Ok(Iperf {
        bits_per_second: end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no throughput")?,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        seconds: end["sum_received"]["seconds"]
            .as_f64()
            .unwrap_or(f64::from(seconds)),
    })
}
