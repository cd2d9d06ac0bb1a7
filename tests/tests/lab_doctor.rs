//! `weftd doctor` in the lab: each check's fault induced on a real node, named by the doctor with
//! its fix, and the same node reported `ok` once the fault is gone.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lab_doctor`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_lab::lab::{Lab, LabConfig, StoreKind};
use weft_lab::procs::{bin_path, wait_for, ChildGuard};

/// The doctor's findings on node `index` (`weftd doctor -o json`) and its exit code.
fn doctor(lab: &Lab, index: usize, cni_dir: &Path) -> (i32, Vec<Value>) {
    let node = &lab.nodes[index];
    let mut command = node.netns.command(bin_path("weftd").to_str().unwrap());
    command
        .args(["doctor", "-o", "json", "--run-dir"])
        .arg(node.run_dir());
    command.arg("--cni-conf-dir").arg(cni_dir);
    run_doctor(&mut command)
}

fn run_doctor(command: &mut Command) -> (i32, Vec<Value>) {
    let output = command.output().expect("run weftd doctor");
    let findings = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor -o json ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), findings)
}

/// `check`'s finding: verdict, detail and fix as one line; `missing` and every finding when the
/// doctor did not report that check.
fn finding(findings: &[Value], check: &str) -> (String, String) {
    let Some(f) = findings.iter().find(|f| f["check"] == check) else {
        return ("missing".into(), format!("{findings:#?}"));
    };
    let text = format!("{} / fix: {}", f["detail"], f["fix"]);
    (f["verdict"].as_str().unwrap().to_string(), text)
}

/// Wait (up to 25 s) until `check` on node `index` has `verdict`; its finding then (or the last).
fn wait_verdict(
    lab: &Lab,
    index: usize,
    cni: &Path,
    check: &str,
    verdict: &str,
) -> (String, String) {
    let found = wait_for(Duration::from_secs(25), || {
        let (_, findings) = doctor(lab, index, cni);
        let seen = finding(&findings, check);
        (seen.0 == verdict).then_some(seen)
    });
    found.unwrap_or_else(|| finding(&doctor(lab, index, cni).1, check))
}

fn exec(lab: &Lab, index: usize, args: &[&str]) {
    lab.nodes[index]
        .netns
        .exec(args)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A CNI configuration directory holding weft's conflist, as `install-cni.sh` leaves it.
fn cni_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let conflist = Path::new(weft_lab::DEPLOY_DIR).join("10-weft.conflist");
    std::fs::copy(conflist, dir.path().join("10-weft.conflist")).unwrap();
    dir
}

/// Wait until node `index`'s prober sees `peer` up (`weftd peers -o json`).
fn wait_peer_up(lab: &Lab, index: usize, peer: &str) {
    let node = &lab.nodes[index];
    let up = wait_for(Duration::from_secs(20), || {
        let mut command = node.netns.command(bin_path("weftd").to_str().unwrap());
        command
            .args(["peers", "-o", "json", "--run-dir"])
            .arg(node.run_dir());
        let output = command.output().ok()?;
        let snapshot: Value = serde_json::from_slice(&output.stdout).ok()?;
        let peers = snapshot["peers"].as_array()?.clone();
        peers
            .iter()
            .any(|p| p["node"] == peer && p["health"]["state"] == "up")
            .then_some(())
    });
    assert!(up.is_some(), "{peer} never came up on node {}", index + 1);
}

fn assert_all_ok(lab: &Lab, cni: &Path) {
    let (code, findings) = doctor(lab, 0, cni);
    let not_ok: Vec<&Value> = findings.iter().filter(|f| f["verdict"] != "ok").collect();
    assert!(not_ok.is_empty(), "a healthy node: {not_ok:#?}");
    assert_eq!(code, 0);
}

#[test]
fn each_fault_on_a_vxlan_node_is_named_with_its_fix_and_ok_once_gone() {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let cni = cni_dir();
    let cni = cni.path();
    // New namespaces take the host's IPv4 conf/all and conf/default: start from a known place.
    for key in ["all", "default", "eth0", "weft/vxlan"] {
        exec(
            &lab,
            0,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
        );
    }
    wait_peer_up(&lab, 0, "node-2");
    assert_all_ok(&lab, cni);

    path_mtu(&lab, cni);
    blocked_tunnel_port(&lab, cni);
    strict_rp_filter(&lab, cni);
    forward_drop_policy(&lab, cni);
    cni_config_order(&lab, cni);
    forwarding_off(&lab, cni);
    stale_route(&lab, cni);
    shared_underlay_address(&lab, cni);
    assert_all_ok(&lab, cni);
}

/// node-2's underlay link carries 1400 bytes: VXLAN's 1500-byte packets do not pass.
fn path_mtu(lab: &Lab, cni: &Path) {
    exec(lab, 1, &["ip", "link", "set", "eth0", "mtu", "1400"]);
    let (verdict, text) = finding(&doctor(lab, 0, cni).1, "mtu");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("node-2") && text.contains("--mtu"), "{text}");
    exec(lab, 1, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    assert_eq!(finding(&doctor(lab, 0, cni).1, "mtu").0, "ok");
}

fn blocked_tunnel_port(lab: &Lab, cni: &Path) {
    let hook = "{ type filter hook input priority -10; }";
    exec(lab, 1, &["nft", "add", "table", "inet", "fault"]);
    exec(
        lab,
        1,
        &["nft", "add", "chain", "inet", "fault", "input", hook],
    );
    exec(
        lab,
        1,
        &[
            "nft", "add", "rule", "inet", "fault", "input", "udp", "dport", "8472", "drop",
        ],
    );
    let (verdict, text) = wait_verdict(lab, 0, cni, "tunnel-port", "failure");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("node-2") && text.contains("8472"), "{text}");
    exec(lab, 1, &["nft", "delete", "table", "inet", "fault"]);
    assert_eq!(wait_verdict(lab, 0, cni, "tunnel-port", "ok").0, "ok");
}

fn strict_rp_filter(lab: &Lab, cni: &Path) {
    exec(
        lab,
        0,
        &["sysctl", "-qw", "net.ipv4.conf.weft/vxlan.rp_filter=1"],
    );
    let (verdict, text) = finding(&doctor(lab, 0, cni).1, "rp-filter");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("rp_filter=2"), "{text}");
    exec(
        lab,
        0,
        &["sysctl", "-qw", "net.ipv4.conf.weft/vxlan.rp_filter=0"],
    );
    assert_eq!(finding(&doctor(lab, 0, cni).1, "rp-filter").0, "ok");
}

/// Docker's way: a forward chain with policy drop in another table.
fn forward_drop_policy(lab: &Lab, cni: &Path) {
    let hook = "{ type filter hook forward priority 0; policy drop; }";
    exec(lab, 0, &["nft", "add", "table", "ip", "filter"]);
    exec(
        lab,
        0,
        &["nft", "add", "chain", "ip", "filter", "FORWARD", hook],
    );
    let (verdict, text) = finding(&doctor(lab, 0, cni).1, "forward-policy");
    assert_eq!(verdict, "warning", "{text}");
    assert!(text.contains("FORWARD"), "{text}");
    exec(lab, 0, &["nft", "delete", "table", "ip", "filter"]);
    assert_eq!(finding(&doctor(lab, 0, cni).1, "forward-policy").0, "ok");
}

fn cni_config_order(lab: &Lab, cni: &Path) {
    let other = cni.join("00-other.conflist");
    std::fs::write(
        &other,
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let (verdict, text) = finding(&doctor(lab, 0, cni).1, "cni-config");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("00-other.conflist"), "{text}");
    std::fs::remove_file(other).unwrap();
    assert_eq!(finding(&doctor(lab, 0, cni).1, "cni-config").0, "ok");
}

/// Forwarding off: weftd puts it back at its next resync, so this tries until the doctor ran
/// while it was off.
fn forwarding_off(lab: &Lab, cni: &Path) {
    let seen = (0..5).find_map(|_| {
        exec(lab, 0, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        let seen = finding(&doctor(lab, 0, cni).1, "ip-forward");
        (seen.0 != "ok").then_some(seen)
    });
    let (verdict, text) = seen.expect("the doctor never ran while forwarding was off");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("ip_forward"), "{text}");
    exec(lab, 0, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert_eq!(finding(&doctor(lab, 0, cni).1, "ip-forward").0, "ok");
}

/// A weft route (protocol 87) to a node that does not exist; weftd prunes it at its next resync,
/// so this tries until the doctor ran while it was there.
fn stale_route(lab: &Lab, cni: &Path) {
    let route = [
        "route",
        "replace",
        "10.244.99.0/24",
        "via",
        "10.244.99.0",
        "dev",
        "weft.vxlan",
        "onlink",
        "proto",
        "87",
    ];
    let seen = (0..5).find_map(|_| {
        let mut args = vec!["ip"];
        args.extend(route);
        exec(lab, 0, &args);
        let seen = finding(&doctor(lab, 0, cni).1, "stale-entries");
        (seen.0 != "ok").then_some(seen)
    });
    let (verdict, text) = seen.expect("the doctor never ran while the route was there");
    assert_eq!(verdict, "warning", "{text}");
    assert!(text.contains("10.244.99.0/24"), "{text}");
    let _ = lab.nodes[0]
        .netns
        .exec(&["ip", "route", "del", "10.244.99.0/24", "dev", "weft.vxlan"]);
    assert_eq!(wait_verdict(lab, 0, cni, "stale-entries", "ok").0, "ok");
}

/// A third weftd publishing node-2's underlay address (the Vagrant 10.0.2.15 trap).
fn shared_underlay_address(lab: &Lab, cni: &Path) {
    let work = tempfile::tempdir().unwrap();
    let public_ips = format!("{},{}", lab.nodes[1].underlay_v4, lab.nodes[1].underlay_v6);
    let mut command = Command::new(bin_path("weftd"));
    command
        .args([
            "run",
            "--node-name",
            "impostor",
            "--datapath",
            "none",
            "--release-on-exit",
            "true",
        ])
        .args([
            "--cluster-cidr",
            &lab.cluster_cidr(),
            "--public-ip",
            &public_ips,
            "--lease-ttl",
            "10",
        ])
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--store",
            "file",
        ])
        .arg("--store-dir")
        .arg(lab.dir.join("store"))
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--run-dir")
        .arg(work.path().join("run"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut impostor = ChildGuard::spawn("impostor", &mut command).expect("start weftd");
    let (verdict, text) = wait_verdict(lab, 0, cni, "underlay-address", "failure");
    assert_eq!(verdict, "failure", "{text}");
    assert!(
        text.contains("impostor") && text.contains("node-2"),
        "{text}"
    );
    assert!(text.contains("--iface"), "{text}");
    impostor.signal(nix::sys::signal::Signal::SIGTERM);
    impostor.wait_timeout(Duration::from_secs(10));
    assert_eq!(wait_verdict(lab, 0, cni, "underlay-address", "ok").0, "ok");
}

/// Tunnels over IPv6 (VXLAN's packets are 1520 bytes there): a 1400-byte link is named too.
#[test]
fn a_path_too_small_for_tunnels_over_ipv6_is_named() {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ipv6_underlay: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let cni = cni_dir();
    wait_peer_up(&lab, 0, "node-2");
    assert_eq!(finding(&doctor(&lab, 0, cni.path()).1, "mtu").0, "ok");
    exec(&lab, 1, &["ip", "link", "set", "eth0", "mtu", "1400"]);
    let (verdict, text) = finding(&doctor(&lab, 0, cni.path()).1, "mtu");
    assert_eq!(verdict, "failure", "{text}");
    assert!(
        text.contains("node-2") && text.contains("2001:db8::12"),
        "{text}"
    );
    assert!(text.contains("--mtu"), "{text}");
}

#[test]
fn a_nearly_full_pod_address_pool_is_named() {
    // A /29 per node: 6 addresses for pods.
    let mut lab = Lab::up(LabConfig {
        nodes: 1,
        pods_per_node: 5,
        ipv6: false,
        weftd_args: vec!["--node-prefix-v4".into(), "29".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let cni = cni_dir();
    let (verdict, text) = finding(&doctor(&lab, 0, cni.path()).1, "ipam");
    assert_eq!(verdict, "ok", "5 of 6: {text}");
    lab.add_pod(0).unwrap_or_else(|e| panic!("{e}"));
    let (verdict, text) = finding(&doctor(&lab, 0, cni.path()).1, "ipam");
    assert_eq!(verdict, "failure", "{text}");
    assert!(text.contains("6 of 6"), "{text}");
    let gone = lab.pods.len() - 1;
    lab.remove_pod(gone);
    assert_eq!(finding(&doctor(&lab, 0, cni.path()).1, "ipam").0, "ok");
}

#[test]
fn a_kubernetes_node_without_a_pod_cidr_is_named() {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        store: StoreKind::Kube,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let apiserver = lab.apiserver();
    let node =
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "orphan"}});
    apiserver
        .kubectl_stdin(&["create", "-f", "-"], &node.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin_path("weftd"));
    command
        .args([
            "run",
            "--node-name",
            "orphan",
            "--datapath",
            "none",
            "--store",
            "kube",
        ])
        .args([
            "--cluster-cidr",
            &lab.cluster_cidr(),
            "--public-ip",
            "192.0.2.99",
        ])
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kubeconfig",
        ])
        .arg(apiserver.kubeconfig())
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--run-dir")
        .arg(work.path().join("run"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("orphan.log")).unwrap());
    let _orphan = ChildGuard::spawn("orphan", &mut command).expect("start weftd");
    let log = || std::fs::read_to_string(work.path().join("orphan.log")).unwrap_or_default();
    let cni = cni_dir();
    let doctor_orphan = || {
        let mut command = Command::new(bin_path("weftd"));
        command
            .args(["doctor", "-o", "json", "--run-dir"])
            .arg(work.path().join("run"));
        command.arg("--cni-conf-dir").arg(cni.path());
        finding(&run_doctor(&mut command).1, "pod-cidr")
    };
    let failed = wait_for(Duration::from_secs(20), || {
        let seen = doctor_orphan();
        (seen.0 == "failure").then_some(seen)
    });
    let (_, text) = failed.unwrap_or_else(|| panic!("{:?}\n{}", doctor_orphan(), log()));
    assert!(text.contains("--allocate-node-cidrs"), "{text}");
    let patch = r#"{"spec":{"podCIDRs":["10.244.50.0/24","fd00:10:244:50::/64"]}}"#;
    apiserver
        .kubectl(&["patch", "node", "orphan", "--type", "merge", "-p", patch])
        .unwrap_or_else(|e| panic!("{e}"));
    let ok = wait_for(Duration::from_secs(20), || {
        let seen = doctor_orphan();
        (seen.0 == "ok").then_some(seen)
    });
    assert!(ok.is_some(), "{:?}", doctor_orphan());
}
