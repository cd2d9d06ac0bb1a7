//! `weft-lab bench-probe`: what weftd's peer prober costs with N simulated peers, dual stack
//! (one IPv4 and one IPv6 tunnel address each, answering on the loopback of a namespace of the
//! bench's own), measured as the prober thread's CPU time per second of wall time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use weft_lab::netns::{unique_prefix, NetnsGuard};

use super::weftd_internals::probe_cost;

/// The tunnel addresses of simulated peer `i`: 10.(100 + i / 256).(i % 256).0 and fd00:99:i::.
fn peer_addresses(i: usize) -> (IpAddr, IpAddr) {
    let v4 = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 0);
    let v6 = Ipv6Addr::new(0xfd00, 0x99, i as u16, 0, 0, 0, 0, 0);
    (IpAddr::V4(v4), IpAddr::V6(v6))
}

/// One table: peers, probes per second, replies, CPU share of one core.
pub fn probe_cost_table(peers: usize, seconds: u64) -> anyhow::Result<String> {
    anyhow::ensure!(peers <= 10_000, "at most 10000 simulated peers");
    let netns = NetnsGuard::create(&format!("{}-probe", unique_prefix()))?;
    netns.exec(&["ip", "link", "set", "lo", "up"])?;
    let addresses: Vec<(IpAddr, IpAddr)> = (0..peers).map(peer_addresses).collect();
    let batch: String = addresses
        .iter()
        .flat_map(|(v4, v6)| {
            [
                format!("addr add {v4}/32 dev lo\n"),
                format!("addr add {v6}/128 dev lo nodad\n"),
            ]
        })
        .collect();
    let batch_file = tempfile::NamedTempFile::new().context("a temporary file")?;
    std::fs::write(batch_file.path(), batch).context("write the address batch")?;
    let batch_path = batch_file.path().to_str().context("utf-8 path")?;
    netns.exec(&["ip", "-batch", batch_path])?;
    let settle = Duration::from_secs(6);
    let cost = probe_cost(
        Path::new(&netns.path()),
        &addresses,
        settle,
        Duration::from_secs(seconds),
    )
    .map_err(anyhow::Error::msg)?;
    let mut table = format!(
        "Peer health probing, {peers} simulated dual-stack peers, every {} s, {seconds} s measured\n",
        cost.interval.as_secs()
    );
    table += &format!(
        "{:>6} {:>6} {:>12} {:>12} {:>14}\n",
        "peers", "up", "requests/s", "replies/s", "CPU (cores)"
    );
    table += &format!(
        "{:>6} {:>6} {:>12.0} {:>12.0} {:>14.4}\n",
        cost.peers, cost.up, cost.sent_per_second, cost.received_per_second, cost.cpu_per_second
    );
    Ok(table)
}
