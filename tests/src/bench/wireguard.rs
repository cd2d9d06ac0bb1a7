//! `weft-lab bench-overlay --backend wireguard`: TCP throughput through weft's userspace WireGuard
//! (`weft-wg`: 1 and 2 worker threads, with and without its TUN/UDP batching) beside Debian's
//! `wireguard-go` carrying the same traffic between the same two node namespaces, VXLAN, and the
//! underlay; iperf3, 1 and 4 streams, with retransmits and the CPU the WireGuard processes used
//! per Gbit/s.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use weft_lab::lab::{Lab, LabBackend, LabConfig};
use weft_lab::netns::NetnsGuard;

use super::overlay::{iperf3_run, Iperf};

/// wireguard-go's addresses inside its tunnel, and its port (weft-wg has 51820).
const WGO_NET: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
const WGO_PORT: &str = "51821";

pub fn wireguard_throughput(seconds: u32) -> anyhow::Result<String> {
    let mut table = format!(
        "TCP throughput through WireGuard, {seconds} s per run, iperf3, two lab nodes\n\
         {:<46} {:>7} {:>10} {:>8} {:>12}\n",
        "path", "streams", "Gbit/s", "retrans", "cores/Gbit/s"
    );
    // (threads, offload): the default first, then what each of its choices is worth.
    for (threads, offload) in [(1, true), (1, false), (2, true)] {
        let default = threads == 1 && offload;
        let lab = wg_lab(threads, offload)?;
        let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
        let pids: Vec<i32> = lab.nodes.iter().filter_map(|n| n.weft_wg_pid()).collect();
        let peer_device_ip = peer_device_address(&lab)?;
        for streams in [1, 4] {
            if default {
                let underlay = n2.underlay_v4.to_string();
                let run = iperf3_run(&n1.netns, &n2.netns, &underlay, streams, seconds)?;
                table += &row("underlay, node to node", streams, &run, None);
                let pod = lab.pods[1].v4.context("IPv4 pod")?.to_string();
                let run = measured(&pids, || {
                    iperf3_run(
                        &lab.pods[0].netns,
                        &lab.pods[1].netns,
                        &pod,
                        streams,
                        seconds,
                    )
                })?;
                table += &row("weft-wg 1 thread, pod to pod", streams, &run.0, Some(run.1));
            }
            let run = measured(&pids, || {
                iperf3_run(&n1.netns, &n2.netns, &peer_device_ip, streams, seconds)
            })?;
            let batching = if offload { "" } else { ", batching off" };
            let name = format!("weft-wg {threads} thread(s){batching}, node to node");
            table += &row(&name, streams, &run.0, Some(run.1));
        }
        if default {
            table += &wireguard_go_rows(&lab, seconds)?;
        }
    }
    table += &vxlan_rows(seconds)?;
    Ok(table)
}

/// A two-node WireGuard lab whose `weft-wg` runs `threads` workers, with or without its batching
/// (`WEFT_WG_NO_OFFLOAD`).
fn wg_lab(threads: usize, offload: bool) -> anyhow::Result<Lab> {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ipv6: false,
        backend: LabBackend::WireGuard,
        weftd_args: vec!["--wireguard-threads".into(), threads.to_string()],
        weftd_env: vec![("WEFT_WG_NO_OFFLOAD".into(), (!offload).to_string())],
        ..Default::default()
    })?;
    if !lab
        .wait_converged(Duration::from_secs(15))
        .iter()
        .all(|p| p.ok)
    {
        bail!("the WireGuard lab did not converge");
    }
    Ok(lab)
}

/// Node 2's own address on its WireGuard device (the network address of its pod CIDR), which
/// node 1 reaches through the tunnel with no veth in the way.
fn peer_device_address(lab: &Lab) -> anyhow::Result<String> {
    let pod = lab.pods[1].v4.context("IPv4 pod")?;
    let [a, b, c, _] = pod.octets();
    Ok(format!("{a}.{b}.{c}.0"))
}

fn row(path: &str, streams: u32, run: &Iperf, cpu_seconds: Option<f64>) -> String {
    let gbits = run.bits_per_second / 1e9;
    let cores = cpu_seconds
        .map(|cpu| format!("{:.2}", cpu / run.seconds / gbits))
        .unwrap_or_else(|| "-".into());
    format!(
        "{path:<46} {streams:>7} {gbits:>10.2} {:>8} {cores:>12}\n",
        run.retransmits
    )
}

/// Run `f` and the CPU seconds (user + system) the processes `pids` spent meanwhile.
fn measured(
    pids: &[i32],
    f: impl FnOnce() -> anyhow::Result<Iperf>,
) -> anyhow::Result<(Iperf, f64)> {
    let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let run = f()?;
    let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    Ok((run, after - before))
}

/// utime + stime of `pid`, seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// Debian's wireguard-go between the same two node namespaces, on its own devices and port.
fn wireguard_go_rows(lab: &Lab, seconds: u32) -> anyhow::Result<String> {
    let devices: Vec<String> = (1..=2).map(|i| format!("wgo{}{i}", lab.prefix)).collect();
    let mut children = Vec::new();
    let result = (|| {
        for (node, device) in lab.nodes.iter().zip(&devices) {
            children.push(start_wireguard_go(&node.netns, device)?);
        }
        configure_pair(lab, &devices)?;
        let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
        let mut rows = String::new();
        for streams in [1, 4] {
            let run = measured(&pids, || {
                iperf3_run(
                    &lab.nodes[0].netns,
                    &lab.nodes[1].netns,
                    WGO_NET[1],
                    streams,
                    seconds,
                )
            })?;
            rows += &row(
                "wireguard-go (Debian), node to node",
                streams,
                &run.0,
                Some(run.1),
            );
        }
        Ok(rows)
    })();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    for device in &devices {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{device}.sock"));
    }
    result
}

fn start_wireguard_go(netns: &NetnsGuard, device: &str) -> anyhow::Result<Child> {
    let child = netns
        .command("wireguard-go")
        .args(["-f", device])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("wireguard-go (Debian package wireguard-go)")?;
    let socket = format!("/var/run/wireguard/{device}.sock");
    let up = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        std::path::Path::new(&socket).exists().then_some(())
    });
    up.context("wireguard-go did not create its socket")?;
    Ok(child)
}

/// Keys, addresses, peers and MTU 1440 (as weft's device) for the two wireguard-go devices.
fn configure_pair(lab: &Lab, devices: &[String]) -> anyhow::Result<()> {
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let private = weft_lab::netns::run(&["wg", "genkey"])?.trim().to_string();
            let public = pipe("wg pubkey", &private)?;
            Ok((private, public))
        })
        .collect::<anyhow::Result<_>>()?;
    for i in 0..2 {
        let (node, device, other) = (&lab.nodes[i], &devices[i], 1 - i);
        let key_file = lab.dir.join(format!("wgo{i}.key"));
        std::fs::write(&key_file, &keys[i].0)?;
        let endpoint = format!("{}:{WGO_PORT}", lab.nodes[other].underlay_v4);
        let allowed = format!("{}/32", WGO_NET[other]);
        let key_path = key_file.to_str().context("utf-8 path")?;
        let address = format!("{}/24", WGO_NET[i]);
        let ns = &node.netns;
        ns.exec(&[
            "wg",
            "set",
            device,
            "private-key",
            key_path,
            "listen-port",
            WGO_PORT,
        ])?;
        ns.exec(&[
            "wg",
            "set",
            device,
            "peer",
            &keys[other].1,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &allowed,
        ])?;
        ns.exec(&["ip", "addr", "add", &address, "dev", device])?;
        ns.exec(&["ip", "link", "set", device, "mtu", "1440", "up"])?;
    }
    Ok(())
}

/// `sh -c COMMAND` with `input` on stdin, its trimmed stdout.
fn pipe(command: &str, input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// VXLAN pod to pod, from a VXLAN lab, for reference.
fn vxlan_rows(seconds: u32) -> anyhow::Result<String> {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ipv6: false,
        ..Default::default()
    })?;
    lab.wait_converged(Duration::from_secs(10));
    let pod = lab.pods[1].v4.context("IPv4 pod")?.to_string();
    let mut rows = String::new();
    for streams in [1, 4] {
        let run = iperf3_run(
            &lab.pods[0].netns,
            &lab.pods[1].netns,
            &pod,
            streams,
            seconds,
        )?;
        rows += &row("VXLAN, pod to pod (not encrypted)", streams, &run, None);
    }
    Ok(rows)
}
