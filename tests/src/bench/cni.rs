//! `weft-lab bench-cni`: CNI ADD and DEL latency of weft (the real `weft-cni` shim talking to a real
//! `weftd`) beside Debian's reference `bridge` + `host-local` plugins doing the same job (a veth per
//! pod, an address, a default route), both executed from inside the same node namespace, one pod of
//! each in turn so both see the same machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use weft_lab::lab::{call_plugin, Lab, LabConfig};
use weft_lab::netns::NetnsGuard;
use weft_lab::procs::locate;
use weft_lab::LabError;

use super::{ms, percentiles};

/// One plugin under test: its binary, its network configuration and a namespace per pod.
struct Contender {
    plugin: PathBuf,
    conf: Value,
    pods: Vec<NetnsGuard>,
    /// Container IDs are this and the pod's number.
    id: &'static str,
}

impl Contender {
    fn new(
        lab: &Lab,
        plugin: PathBuf,
        conf: Value,
        id: &'static str,
        pods: usize,
    ) -> weft_lab::error::Result<Self> {
        let pods = (0..pods)
            .map(|i| NetnsGuard::create(&format!("{}-b{}{i}", lab.prefix, &id[..1])))
            .collect::<Result<_, _>>()?;
        Ok(Contender {
            plugin,
            conf,
            pods,
            id,
        })
    }

    /// Run `command` for pod `i`; how long it took.
    fn call(&self, command: &str, i: usize) -> anyhow::Result<Duration> {
        let id = format!("{}{i}", self.id);
        let ns = self.pods[i].path();
        let start = Instant::now();
        let out = call_plugin(&self.plugin, command, &id, Some(&ns), "eth0", &self.conf);
        let took = start.elapsed();
        if !out.success {
            bail!(
                "{command} {}: {} {}",
                self.plugin.display(),
                out.stdout,
                out.stderr
            );
        }
        Ok(took)
    }
}

/// Run the CNI benchmark for `pods` pods per plugin, one at a time, then in bursts of `burst`
/// at once (none when 0); returns the table.
pub fn cni_latency(pods: usize, burst: usize) -> anyhow::Result<String> {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        ..Default::default()
    })?;
    let weft = Contender::new(&lab, locate("weft-cni")?, lab.netconf(0), "weft", pods)?;
    let bridge = PathBuf::from("/usr/lib/cni/bridge");
    let reference = Contender::new(&lab, bridge, reference_conf(&lab), "ref", pods)?;
    // Every plugin runs from inside the node's namespace, so both pay the same to start.
    let node = &lab.nodes[0].netns;
    let samples = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<_> {
                node.enter()?;
                measure(&weft, &reference, pods)
            })
            .join()
            .map_err(|_| LabError::Panicked("the benchmark thread".into()))?
    })?;
    let mut out = table(pods, samples);
    if burst > 0 {
        let [mut weft_add, mut weft_del] = measure_bursts(node, &weft, pods, burst)?;
        let [mut ref_add, mut ref_del] = measure_bursts(node, &reference, pods, burst)?;
        out += &format!("\n{burst} pods at once, {pods} pods each (ms)\n");
        for (name, samples) in [
            ("weft ADD", &mut weft_add),
            ("bridge+host-local ADD", &mut ref_add),
            ("weft DEL", &mut weft_del),
            ("bridge+host-local DEL", &mut ref_del),
        ] {
            let p = percentiles(samples);
            out += &format!(
                "{name:<24} {:>8} {:>8} {:>8}\n",
                ms(p.p50),
                ms(p.p90),
                ms(p.p99)
            );
        }
    }
    Ok(out)
}

/// ADD `burst` pods at once (a thread each, in the node's namespace, as a runtime starting many
/// pods does), then DEL them at once, until `pods` pods went through; ADD and DEL samples.
fn measure_bursts(
    node: &NetnsGuard,
    contender: &Contender,
    pods: usize,
    burst: usize,
) -> anyhow::Result<[Vec<Duration>; 2]> {
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for start in (0..pods).step_by(burst) {
        let batch: Vec<usize> = (start..(start + burst).min(pods)).collect();
        for (command, slot) in [("ADD", 0), ("DEL", 1)] {
            let took = std::thread::scope(|scope| {
                let calls: Vec<_> = batch
                    .iter()
                    .map(|&i| {
                        scope.spawn(move || -> anyhow::Result<Duration> {
                            node.enter()?;
                            contender.call(command, i)
                        })
                    })
                    .collect();
                calls
                    .into_iter()
                    .map(|c| {
                        c.join()
                            .map_err(|_| LabError::Panicked("a CNI call".into()))?
                    })
                    .collect::<anyhow::Result<Vec<Duration>>>()
            })?;
            samples[slot].extend(took);
        }
    }
    Ok(samples)
}

/// Debian's bridge + host-local, dual stack, on a bridge of its own.
fn reference_conf(lab: &Lab) -> Value {
    json!({
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
    })
}

/// ADD every pod, then DEL every pod, weft and the reference in turn. Samples: weft ADD,
/// reference ADD, weft DEL, reference DEL.
fn measure(
    weft: &Contender,
    reference: &Contender,
    pods: usize,
) -> anyhow::Result<[Vec<Duration>; 4]> {
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for (command, slot) in [("ADD", 0), ("DEL", 2)] {
        for i in 0..pods {
            samples[slot].push(weft.call(command, i)?);
            samples[slot + 1].push(reference.call(command, i)?);
        }
    }
    Ok(samples)
}

fn table(pods: usize, samples: [Vec<Duration>; 4]) -> String {
    let [mut weft_add, mut ref_add, mut weft_del, mut ref_del] = samples;
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
    table
}
