//! Benchmarks, each beside its reference in one run (not timed tests).
//!
//! `weft-lab bench-cni`: CNI ADD and DEL latency of weft (the real `weft-cni` shim talking to a real
//! `weftd`) beside Debian's reference `bridge` + `host-local` plugins doing the same job (a veth per
//! pod, an address, a default route), both executed from inside the same node namespace, one pod of
//! each in turn so both see the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::lab::{call_plugin, Lab, LabConfig};
use crate::netns::NetnsGuard;
use crate::procs::bin_path;

/// Latency percentiles of one operation.
#[derive(Debug, Clone)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn enter(netns: &NetnsGuard) -> Result<(), String> {
    let file = std::fs::File::open(netns.path()).map_err(|e| e.to_string())?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
}

/// Run the CNI benchmark for `pods` pods per plugin; prints a table and returns it.
pub fn cni_latency(pods: usize) -> Result<String, String> {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        ..Default::default()
    })?;
    let node = &lab.nodes[0];
    let weft_conf = lab.netconf(0);
    let reference_conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench-reference",
        "type": "bridge",
        "bridge": "cni-bench0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/16"}], [{"subnet": "fd00:99::/64"}]],
            "dataDir": lab.dir.join("host-local"),
        },
    });
    let weft_plugin = bin_path("weft-cni");
    let bridge_plugin = Path::new("/usr/lib/cni/bridge");
    let weft_pods: Vec<NetnsGuard> = (0..pods)
        .map(|i| NetnsGuard::create(&format!("{}-bw{i}", lab.prefix)))
        .collect::<Result<_, _>>()?;
    let ref_pods: Vec<NetnsGuard> = (0..pods)
        .map(|i| NetnsGuard::create(&format!("{}-br{i}", lab.prefix)))
        .collect::<Result<_, _>>()?;

    // Every plugin runs from inside the node's namespace, so both pay the same to start.
    let results = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<[Vec<Duration>; 4], String> {
                enter(&node.netns)?;
                let mut samples: [Vec<Duration>; 4] = Default::default();
                let mut timed = |slot: usize,
                                 plugin: &Path,
                                 command: &str,
                                 id: &str,
                                 ns: &NetnsGuard,
                                 conf: &serde_json::Value| {
                    let start = Instant::now();
                    let out = call_plugin(plugin, command, id, Some(&ns.path()), "eth0", conf);
                    samples[slot].push(start.elapsed());
                    if out.success {
                        Ok(())
                    } else {
                        Err(format!(
                            "{command} {}: {} {}",
                            plugin.display(),
                            out.stdout,
                            out.stderr
                        ))
                    }
                };
                // Slots: weft ADD, reference ADD, weft DEL, reference DEL.
                for (command, slot) in [("ADD", 0), ("DEL", 2)] {
                    for i in 0..pods {
                        let weft_id = format!("weft{i}");
                        timed(
                            slot,
                            &weft_plugin,
                            command,
                            &weft_id,
                            &weft_pods[i],
                            &weft_conf,
                        )?;
                        let ref_id = format!("ref{i}");
                        timed(
                            slot + 1,
                            bridge_plugin,
                            command,
                            &ref_id,
                            &ref_pods[i],
                            &reference_conf,
                        )?;
                    }
                }
                Ok(samples)
            })
            .join()
            .map_err(|_| "benchmark thread panicked".to_string())?
    })?;
    let [mut weft_add, mut ref_add, mut weft_del, mut ref_del] = results;
    let rows = [
        ("weft ADD", percentiles(&mut weft_add)),
        ("bridge+host-local ADD", percentiles(&mut ref_add)),
        ("weft DEL", percentiles(&mut weft_del)),
        ("bridge+host-local DEL", percentiles(&mut ref_del)),
    ];
    let mut table = format!("CNI latency over {pods} pods each (ms), dual stack, one node\n");
    table += &format!(
        "{:<24} {:>8} {:>8} {:>8}\n",
        "operation", "p50", "p90", "p99"
    );
    for (name, p) in &rows {
        table += &format!(
            "{name:<24} {:>8} {:>8} {:>8}\n",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99)
        );
    }
    let speedup = rows[1].1.p50.as_secs_f64() / rows[0].1.p50.as_secs_f64();
    table += &format!("ADD p50 speed-up of weft over the reference: {speedup:.1}x\n");
    Ok(table)
}

/// `weft-lab bench-overlay`: pod-to-pod TCP throughput across two nodes (through VXLAN) as a ratio
/// of node-to-node throughput on the same underlay, with iperf3, 1 and 4 streams.
pub fn overlay_throughput(seconds: u32) -> Result<String, String> {
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

/// Bits per second received, client in `from` to a one-off server in `to`.
fn iperf3(
    from: &NetnsGuard,
    to: &NetnsGuard,
    address: &str,
    streams: u32,
    seconds: u32,
) -> Result<f64, String> {
    let mut server = to
        .command("iperf3")
        .args(["-s", "-1", "-B", address])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
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
    let report: serde_json::Value =
        serde_json::from_str(&output?).map_err(|e| format!("iperf3 output: {e}"))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| "iperf3 reported no throughput".to_string())
}

/// `weft-lab bench-program`: programming N simulated VXLAN peers on an empty node namespace
/// (dual stack), counted in netlink requests, then one further peer change.
pub fn programming_cost(counts: &[usize]) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut table =
        "Programming N peers from an empty node, dual stack (plan + diff + netlink)\n".to_string();
    table += &format!(
        "{:>6} {:>10} {:>10} {:>12} {:>12} {:>10}\n",
        "peers", "ms", "requests", "change: ops", "change: req", "change ms"
    );
    for &n in counts {
        let netns = NetnsGuard::create(&format!("{}-prog{n}", crate::netns::unique_prefix()))?;
        netns.exec(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        netns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
        netns.exec(&["ip", "link", "set", "eth0", "up"])?;
        let row = rt.block_on(program_peers(&netns, n))?;
        table += &row;
    }
    Ok(table)
}

async fn program_peers(netns: &NetnsGuard, n: usize) -> Result<String, String> {
    use weftd::backend::vxlan::{desired, diff, driver::VxlanDriver};
    use weftd::backend::Driver;
    use weftd::plan::{admission::Incumbents, PlanConfig};
    let ns =
        weftd::datapath::netns::Netns::open(Path::new(&netns.path())).map_err(|e| e.to_string())?;
    let handle = ns.connect(&[]).map_err(|e| e.to_string())?;
    let config = PlanConfig {
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/48".parse().unwrap()],
        service_cidrs: Vec::new(),
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: Some(24),
        node_prefix_v6: Some(64),
    };
    let own = simulated_lease(0);
    let peers: Vec<_> = (1..=n + 1).map(simulated_lease).collect();
    let started = Instant::now();
    let plan =
        desired(&own, &peers[..n], &config, &Incumbents::default()).map_err(|e| e.to_string())?;
    if let Some(refusal) = plan.refused.first() {
        return Err(format!(
            "{} simulated peers refused, e.g. {refusal}",
            plan.refused.len()
        ));
    }
    let mut driver = VxlanDriver::new(handle.clone(), &config.cluster_cidrs);
    let observed = driver.observe().await.map_err(|e| e.to_string())?;
    let ops = diff(&plan.datapath, &observed);
    for op in &ops {
        driver.apply(op).await.map_err(|e| format!("{op}: {e}"))?;
    }
    let elapsed = started.elapsed();
    let requests = driver.requests();

    // One further peer joins.
    let started = Instant::now();
    let next = desired(&own, &peers[..=n], &config, &plan.accepted).map_err(|e| e.to_string())?;
    let change = diff(&next.datapath, &plan.datapath);
    let before = driver.requests();
    for op in &change {
        driver.apply(op).await.map_err(|e| format!("{op}: {e}"))?;
    }
    let change_elapsed = started.elapsed();
    let change_requests = driver.requests() - before;
    let check = driver.observe().await.map_err(|e| e.to_string())?;
    if !diff(&next.datapath, &check).is_empty() {
        return Err(format!(
            "{n} peers: the kernel does not hold the plan after applying it"
        ));
    }
    Ok(format!(
        "{n:>6} {:>10.1} {requests:>10} {:>12} {:>12} {:>10.2}\n",
        elapsed.as_secs_f64() * 1000.0,
        change.len(),
        change_requests,
        change_elapsed.as_secs_f64() * 1000.0
    ))
}

/// A plausible dual-stack VXLAN peer number `i` (0 is the node itself).
pub fn simulated_lease(i: usize) -> weft_proto::lease::Lease {
    use weft_proto::lease::{BackendData, Lease, MacAddr, PodCidrs, PublicIps};
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    let name = format!("sim-{i}");
    Lease {
        node: weft_proto::names::NodeName::new(name.clone()).unwrap(),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.{hi}.{lo}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:0:0:{i:x}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(std::net::Ipv4Addr::new(100, 64 + hi, lo, 1)),
            v6: None,
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(MacAddr::stable_local(&format!("{name}/v4"))),
            vtep_mac_v6: Some(MacAddr::stable_local(&format!("{name}/v6"))),
        },
        expires: None,
    }
}

/// `weft-lab bench-memory`: weftd's resident memory idle, and with `peers` simulated peers (records
/// written to the lab's file store) programmed.
pub fn daemon_memory(peers: usize) -> Result<String, String> {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        ..Default::default()
    })?;
    let pid = lab.nodes[0]
        .daemon
        .as_ref()
        .map(|d| d.pid())
        .ok_or("no daemon")?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid)?;
    let nodes_dir = lab.dir.join("store").join("nodes");
    for i in 1..=peers {
        let mut lease = simulated_lease(i + 1000);
        // Inside the lab's cluster CIDRs: 10.244.0.0/16 and fd00:10:244::/48.
        lease.pod_cidrs.v4 = Some(format!("10.244.{}.0/24", (i % 255) + 1).parse().unwrap());
        lease.pod_cidrs.v4 = if i < 255 { lease.pod_cidrs.v4 } else { None };
        lease.pod_cidrs.v6 = Some(format!("fd00:10:244:{:x}::/64", i + 1).parse().unwrap());
        lease.expires = Some(4_000_000_000);
        if lease.pod_cidrs.v4.is_none() {
            if let weft_proto::lease::BackendData::Vxlan { vtep_mac, .. } = &mut lease.backend {
                *vtep_mac = None;
            }
        }
        let record = serde_json::to_vec(&lease.to_record()).map_err(|e| e.to_string())?;
        std::fs::write(nodes_dir.join(format!("{}.json", lease.node)), record)
            .map_err(|e| e.to_string())?;
    }
    let programmed = crate::procs::wait_for(Duration::from_secs(60), || {
        let routes = lab.nodes[0]
            .netns
            .exec(&["ip", "-6", "route", "show", "dev", "weft-v6.vxlan"])
            .ok()?;
        (routes.lines().filter(|l| l.contains("onlink")).count() >= peers).then_some(())
    });
    if programmed.is_none() {
        return Err(format!("{peers} peers were not programmed within 60 s"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_kib(pid)?;
    Ok(format!(
        "weftd resident memory (VmRSS): idle {:.1} MiB; with {peers} peers programmed {:.1} MiB\n",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    ))
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = percentiles(&mut samples);
        assert_eq!(
            (p.p50, p.p90, p.p99),
            (
                Duration::from_millis(50),
                Duration::from_millis(90),
                Duration::from_millis(99)
            )
        );
    }
}
