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
                for i in 0..pods {
                    timed(
                        0,
                        &weft_plugin,
                        "ADD",
                        &format!("weft{i}"),
                        &weft_pods[i],
                        &weft_conf,
                    )?;
                    timed(
                        1,
                        bridge_plugin,
                        "ADD",
                        &format!("ref{i}"),
                        &ref_pods[i],
                        &reference_conf,
                    )?;
                }
                for i in 0..pods {
                    timed(
                        2,
                        &weft_plugin,
                        "DEL",
                        &format!("weft{i}"),
                        &weft_pods[i],
                        &weft_conf,
                    )?;
                    timed(
                        3,
                        bridge_plugin,
                        "DEL",
                        &format!("ref{i}"),
                        &ref_pods[i],
                        &reference_conf,
                    )?;
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
