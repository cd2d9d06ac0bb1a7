//! `weft-lab bench-overlay`: pod-to-pod TCP throughput across two nodes (through VXLAN) as a ratio
//! of node-to-node throughput on the same underlay, with iperf3, 1 and 4 streams.

use std::time::Duration;

use anyhow::Context;

use weft_lab::lab::{Lab, LabConfig};
use weft_lab::netns::NetnsGuard;

pub fn overlay_throughput(seconds: u32) -> anyhow::Result<String> {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ..Default::default()
    })?;
    lab.wait_converged(Duration::from_secs(10));
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
    let mut table =
        format!("TCP throughput, {seconds} s per run (Gbit/s), iperf3, two lab nodes\n");
    table += &format!(
        "{:<10} {:>10} {:>10} {:>8}\n",
        "streams", "underlay", "overlay", "ratio"
    );
    for streams in [1, 4] {
        let underlay = iperf3(
            &n1.netns,
            &n2.netns,
            &n2.underlay_v4.to_string(),
            streams,
            seconds,
        )?;
        let overlay = iperf3(
            &a.netns,
            &b.netns,
            &b.v4.expect("IPv4 pod").to_string(),
            streams,
            seconds,
        )?;
        table += &format!(
            "{streams:<10} {:>10.2} {:>10.2} {:>8.2}\n",
            underlay / 1e9,
            overlay / 1e9,
            overlay / underlay
        );
    }
    Ok(table)
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
