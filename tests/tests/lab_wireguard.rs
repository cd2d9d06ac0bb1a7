//! Across nodes, encrypted: the WireGuard backend in the lab (userspace `weft-wg`, as this kernel
//! has no WireGuard module). Each test builds its own lab (root) and removes it when it ends, even
//! on failure; every node's device has its own name, as all of them share `/var/run/wireguard`.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lab_wireguard`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_lab::capture::{read, send_marker, Capture};
use weft_lab::flow::TcpFlow;
use weft_lab::lab::{render_matrix, Lab, LabBackend, LabConfig};
use weft_lab::procs::{bin_path, wait_for};

fn wg_lab(nodes: usize, pods: usize, detect_underlay: bool) -> Lab {
    let lab = Lab::up(LabConfig {
        nodes,
        pods_per_node: pods,
        backend: LabBackend::WireGuard,
        detect_underlay,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(15));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
    lab
}

/// `wg show DEV ARGS…` in node `node`.
fn wg(lab: &Lab, node: usize, args: &[&str]) -> String {
    let device = lab.nodes[node].wg_device();
    let mut command = vec!["wg", "show", device.as_str()];
    command.extend_from_slice(args);
    lab.nodes[node]
        .netns
        .exec(&command)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn public_key(lab: &Lab, node: usize) -> String {
    wg(lab, node, &["public-key"]).trim().to_string()
}

/// Per peer key: (received, sent) bytes, from `wg show DEV transfer`.
fn transfer(lab: &Lab, node: usize) -> Vec<(String, u64, u64)> {
    wg(lab, node, &["transfer"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let key = f.next()?.to_string();
            Some((key, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn three_nodes_dual_stack_encrypted_and_wg_show_lists_every_peer() {
    let lab = wg_lab(3, 2, false);
    let probes = lab.probes();
    assert_eq!(probes.iter().filter(|p| p.to != "outside").count(), 60);
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));

    let shown = wg(&lab, 0, &[]);
    for peer in 1..3 {
        let key = public_key(&lab, peer);
        let section = shown
            .split("\n\n")
            .find(|s| s.contains(&format!("peer: {key}")))
            .unwrap_or_else(|| panic!("node-{} is a peer of node-1:\n{shown}", peer + 1));
        let underlay = lab.nodes[peer].underlay_v4.to_string();
        assert!(
            section.contains(&format!("endpoint: {underlay}:51820")),
            "{section}"
        );
        for pod in lab.pods.iter().filter(|p| p.node == peer) {
            let v4 = pod.v4.unwrap().to_string();
            let cidr_v4 = format!("{}.0/24", v4.rsplit_once('.').unwrap().0);
            assert!(
                section.contains(&cidr_v4),
                "allowed IPs hold {cidr_v4}:\n{section}"
            );
        }
        assert!(
            section.contains("fd00:10:244:"),
            "IPv6 allowed IPs:\n{section}"
        );
        assert!(
            section.contains("latest handshake"),
            "a handshake happened:\n{section}"
        );
    }
    let link = lab.nodes[0]
        .netns
        .exec(&["ip", "-d", "link", "show", &lab.nodes[0].wg_device()])
        .unwrap();
    assert!(
        link.contains("mtu 1440"),
        "1500 − 60 over IPv4 endpoints:\n{link}"
    );
}

#[test]
fn the_underlay_carries_only_wireguard_between_nodes_never_the_payload() {
    let lab = wg_lab(2, 1, false);
    let capture =
        Capture::start(&lab.underlay, "br0", &lab.dir.join("underlay.pcap"), &[]).unwrap();
    let marker = "weft-plaintext-marker-4242";
    let (client, server) = (&lab.pods[0], &lab.pods[1]);
    send_marker(&client.netns, &server.netns, &server.addresses(), marker).unwrap();
    let capture = capture.stop();

    let bytes = std::fs::read(&capture).unwrap();
    let found = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    assert!(!found, "the payload crossed the underlay in clear");
    let packets = read(&lab.underlay, &capture, &[]).unwrap();
    let nodes: BTreeSet<String> = lab
        .nodes
        .iter()
        .flat_map(|n| [n.underlay_v4.to_string(), n.underlay_v6.to_string()])
        .collect();
    let between_nodes: Vec<&str> = packets
        .lines()
        .filter(|l| !l.contains("ARP") && !l.contains("ICMP6"))
        .filter(|l| endpoints(l).is_some_and(|(a, b)| nodes.contains(&a) && nodes.contains(&b)))
        .collect();
    assert!(
        between_nodes.len() >= 4,
        "the capture saw the tunnel:\n{packets}"
    );
    // The data packets (50 markers, 1300 bytes) were captured, encrypted: the check above is not
    // vacuous.
    let length = |l: &str| -> usize {
        l.rsplit("length ")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        between_nodes.iter().any(|l| length(l) >= 1000),
        "a data packet was captured:\n{packets}"
    );
    for line in &between_nodes {
        assert!(
            line.contains(".51820 > ") && line.contains("UDP"),
            "only WireGuard between nodes, got: {line}"
        );
    }
}

/// The source and destination addresses (ports cut off) of a `tcpdump -n -q` IP line.
fn endpoints(line: &str) -> Option<(String, String)> {
    let rest = line.split_once(" IP6 ").or(line.split_once(" IP "))?.1;
    let (src, rest) = rest.split_once(" > ")?;
    let dst = rest.split_once(':').map(|(d, _)| d)?;
    let strip = |a: &str| {
        a.rsplit_once('.')
            .map_or(a.to_string(), |(ip, _)| ip.to_string())
    };
    Some((strip(src), strip(dst)))
}

#[test]
fn weftd_sigkilled_keeps_the_stream_and_weft_wg_sigkilled_is_brought_back() {
    let mut lab = wg_lab(2, 1, false);
    let (client, server) = (&lab.pods[0], &lab.pods[1]);
    let target = SocketAddr::new(IpAddr::V4(server.v4.unwrap()), 5201);
    let flow = TcpFlow::start(&client.netns, &server.netns, target).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = transfer(&lab, 0);
    let wg_pid = lab.nodes[0].weft_wg_pid().expect("weft-wg runs for node-1");

    lab.stop_daemon(0, true); // SIGKILL
    lab.start_daemon(0).unwrap();
    assert!(
        flow.time_to_progress(Duration::from_secs(2)).is_some(),
        "bytes flow after weftd restarted"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lab.nodes[0].weft_wg_pid(),
        Some(wg_pid),
        "the restarted weftd adopted weft-wg"
    );
    let after = transfer(&lab, 0);
    for ((key, rx0, tx0), (key1, rx1, tx1)) in before.iter().zip(&after) {
        assert_eq!(key, key1);
        assert!(
            rx1 >= rx0 && tx1 > tx0,
            "counters kept: the peer was never re-added"
        );
    }
    let log = lab.nodes[0].log();
    assert_eq!(log.matches("lease acquired").count(), 2, "{log}");
    assert!(!log.contains(" remove"), "no peer removed:\n{log}");
    assert_eq!(
        log.matches("op=ip link add").count(),
        1,
        "the device was made once:\n{log}"
    );

    // weft-wg killed on the server's node: weftd starts it again and programs it. Bytes already
    // past weft-wg (in the server's TCP queue) may still arrive after the kill, so the gap is
    // measured to the first progress after the new weft-wg runs.
    let killed = lab.nodes[1].weft_wg_pid().expect("weft-wg runs for node-2");
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = wait_for(Duration::from_secs(10), || {
        lab.nodes[1].weft_wg_pid().filter(|pid| *pid != killed)
    });
    assert!(restarted.is_some(), "weft-wg is back within 10 s");
    let progress = flow.time_to_progress(Duration::from_secs(10));
    let gap = killed_at.elapsed();
    eprintln!("traffic resumed {gap:?} after weft-wg was killed (restarted: {restarted:?})");
    assert!(
        progress.is_some() && gap < Duration::from_secs(10),
        "resumed: {progress:?}, {gap:?} after the kill"
    );
    let (sent, received) = flow.finish(Duration::from_secs(10));
    assert_eq!(
        received,
        sent.expect("the stream never broke"),
        "every byte arrived"
    );
}

/// Byte `i` of the bulk transfer: a pattern that never repeats within it, so a segment merged
/// at the wrong offset, dropped or doubled shows up.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Send `len` pattern bytes from `client` to `target` in `server`; return how many arrived and
/// the offset of the first wrong one, if any.
fn bulk(
    lab: &Lab,
    client: usize,
    server: usize,
    target: SocketAddr,
    len: u64,
) -> (u64, Option<u64>) {
    use std::io::{Read, Write};
    let listener = lab.pods[server].netns.tcp_listen(target).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let (mut at, mut first_wrong) = (0u64, None);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                return (at, first_wrong);
            }
            for b in &buf[..n] {
                if first_wrong.is_none() && *b != pattern(at) {
                    first_wrong = Some(at);
                }
                at += 1;
            }
        }
    });
    let mut stream = lab.pods[client]
        .netns
        .tcp_connect(target, Duration::from_secs(3))
        .unwrap();
    let mut at = 0u64;
    while at < len {
        let chunk: Vec<u8> = (at..(at + (1 << 16)).min(len)).map(pattern).collect();
        stream.write_all(&chunk).unwrap();
        at += chunk.len() as u64;
    }
    drop(stream);
    reader.join().unwrap()
}

/// weft-wg batches: it reads TCP superpackets from its TUN device and cuts them, and merges what
/// it decrypts before writing it back (`weft-offload`). A bulk transfer on each family arrives
/// byte for byte, through devices that really have the virtio-net header on.
#[test]
fn bulk_tcp_through_the_batching_data_path_arrives_byte_for_byte_on_both_families() {
    let lab = wg_lab(2, 1, false);
    for node in &lab.nodes {
        let flags = node
            .netns
            .exec(&[
                "cat",
                &format!("/sys/class/net/{}/tun_flags", node.wg_device()),
            ])
            .unwrap();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_ne!(
            flags & 0x4000,
            0,
            "IFF_VNET_HDR on {}: {flags:#x}",
            node.wg_device()
        );
    }
    bulk_on_both_families(&lab);
}

/// The same over an IPv6 underlay: the UDP batching (GSO sends, GRO reads) on IPv6 sockets.
#[test]
fn bulk_tcp_over_an_ipv6_underlay_arrives_byte_for_byte() {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        backend: LabBackend::WireGuard,
        ipv6_underlay: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(15));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
    let shown = wg(&lab, 0, &["endpoints"]);
    let underlay = lab.nodes[1].underlay_v6.to_string();
    assert!(
        shown.contains(&format!("[{underlay}]:51820")),
        "the peer's endpoint is its IPv6 underlay address:\n{shown}"
    );
    bulk_on_both_families(&lab);
}

/// 24 MiB from pod 0 to pod 1 on IPv4, then on IPv6: every byte arrives, in order, unchanged.
fn bulk_on_both_families(lab: &Lab) {
    let server = &lab.pods[1];
    let len = 24 << 20;
    let targets = [
        SocketAddr::new(IpAddr::V4(server.v4.unwrap()), 5301),
        SocketAddr::new(IpAddr::V6(server.v6.unwrap()), 5302),
    ];
    for target in targets {
        let (arrived, first_wrong) = bulk(lab, 0, 1, target, len);
        assert_eq!(first_wrong, None, "to {target}: the bytes arrived as sent");
        assert_eq!(arrived, len, "to {target}: every byte arrived");
    }
}

#[test]
fn a_peer_whose_underlay_address_changes_is_followed_without_a_restart() {
    let lab = wg_lab(2, 1, true);
    let node2 = &lab.nodes[1].netns;
    for args in [
        &["ip", "addr", "del", "192.0.2.12/24", "dev", "eth0"][..],
        &["ip", "addr", "add", "192.0.2.42/24", "dev", "eth0"],
        &["ip", "route", "replace", "default", "via", "192.0.2.254"],
    ] {
        node2.exec(args).unwrap();
    }
    let followed = wait_for(Duration::from_secs(15), || {
        wg(&lab, 0, &["endpoints"])
            .contains("192.0.2.42:51820")
            .then_some(())
    });
    assert!(followed.is_some(), "{}", wg(&lab, 0, &[]));
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
}

#[test]
fn hostile_wireguard_records_are_refused_and_the_honest_peer_is_unaffected() {
    let lab = wg_lab(2, 1, false);
    let node2_key = public_key(&lab, 1);
    let nodes_dir = lab.dir.join("store").join("nodes");
    let record = |name: &str, cidr: &str, ip: &str, key: &str| {
        let json = serde_json::json!({
            "name": name,
            "podCIDRs": [cidr],
            "annotations": {
                "weft.dev/backend": "wireguard",
                "weft.dev/public-ip": ip,
                "weft.dev/wireguard-public-key": key,
                "weft.dev/wireguard-port": "51820",
            },
            "expires": 4_000_000_000u64,
        });
        std::fs::write(nodes_dir.join(format!("{name}.json")), json.to_string()).unwrap();
    };
    let fresh = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    record("copies-key", "10.244.7.0/24", "192.0.2.77", &node2_key);
    record("bad-key", "10.244.8.0/24", "192.0.2.78", "not-a-key");
    record("overlaps", "10.244.1.0/24", "192.0.2.79", fresh);
    std::thread::sleep(Duration::from_secs(2));

    let log = lab.nodes[0].log();
    assert!(log.contains("peer copies-key refused"), "{log}");
    assert!(
        log.contains("bad-key.json") && log.contains("wireguard-public-key"),
        "{log}"
    );
    assert!(log.contains("peer overlaps refused"), "{log}");
    let peers = wg(&lab, 0, &["peers"]);
    assert_eq!(
        peers.trim(),
        node2_key,
        "only the honest peer is programmed"
    );
    let probes = lab.probes();
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
}

#[test]
fn a_key_rotated_live_is_taken_by_peers_and_a_ping_recovers_within_five_seconds() {
    let lab = wg_lab(2, 1, false);
    let old = public_key(&lab, 0);
    let pids: Vec<u32> = lab
        .nodes
        .iter()
        .map(|n| n.daemon.as_ref().unwrap().pid())
        .collect();
    let target = lab.pods[1].v4.unwrap().to_string();
    let ping = lab.pods[0]
        .netns
        .command("ping")
        .args(["-D", "-n", "-i", "0.1", "-w", "10", &target])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let rotated = Command::new(bin_path("weftd"))
        .args([
            "rotate-key",
            "--backend",
            "wireguard",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/48",
            "--state-dir",
        ])
        .arg(lab.nodes[0].dir.join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rotated.stdout).into_owned()
        + &String::from_utf8_lossy(&rotated.stderr);
    assert!(rotated.status.success(), "{text}");
    eprintln!("rotate-key returned after {:?}: {text}", started.elapsed());
    let new = public_key(&lab, 0);
    assert_ne!(new, old);
    let seen = wait_for(Duration::from_secs(5), || {
        wg(&lab, 1, &["peers"]).contains(&new).then_some(())
    });
    assert!(
        seen.is_some(),
        "node-2 programs the new key:\n{}",
        wg(&lab, 1, &[])
    );
    assert!(
        !wg(&lab, 1, &["peers"]).contains(&old),
        "and dropped the old one"
    );

    let output = ping.wait_with_output().unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let last = times.last().copied().unwrap_or_default();
    eprintln!(
        "longest gap between ping replies across the rotation: {gap:.2} s ({} replies)",
        times.len()
    );
    assert!(gap < 5.0, "recovered within 5 s (longest gap {gap:.2} s)");
    assert!(
        times.len() > 40,
        "pings answered after the rotation too (last at {last})"
    );
    let now: Vec<u32> = lab
        .nodes
        .iter()
        .map(|n| n.daemon.as_ref().unwrap().pid())
        .collect();
    assert_eq!(now, pids, "no daemon restarted");
}
