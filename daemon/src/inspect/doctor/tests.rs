//! The doctor's pure checks, each with a healthy and a faulty case; `render` and `exit_code`;
//! the gathering that reads files, against a fake `/proc/sys` and CNI directory; `examine`
//! without a daemon.

use std::net::IpAddr;
use std::path::Path;

use super::checks::*;
use super::gather::{
    self, CniDir, Forwarding, GatherError, PeerProbe, RpFilter, RpInterface, WeftEntry,
};
use super::*;
use crate::inspect::snapshot::{
    Health, HealthState, IpamView, LeaseView, PeerView, PoolUse, RefusedView, Snapshot,
    UnderlayView,
};
use crate::node::sysctl;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn peer(node: &str, cidr: &str, endpoint: &str, state: HealthState) -> PeerView {
    PeerView {
        node: node.into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        endpoint: ip(endpoint),
        port: None,
        health: Health {
            state,
            ..Health::default()
        },
        wireguard: None,
    }
}

/// Node `a` (192.0.2.1, pods 10.244.1.0/24) with peers `b` and `c`, both up.
fn snapshot() -> Snapshot {
    Snapshot {
        node: "a".into(),
        version: "0.1.0".into(),
        store: "kube".into(),
        backend: "vxlan".into(),
        lease: Some(LeaseView {
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            ..LeaseView::default()
        }),
        underlay: UnderlayView {
            v4: Some(ip("192.0.2.1")),
            interface: Some("eth0".into()),
            mtu: Some(1500),
            ..UnderlayView::default()
        },
        pod_mtu: Some(1450),
        programmed: true,
        peers: vec![
            peer("b", "10.244.2.0/24", "192.0.2.2", HealthState::Up),
            peer("c", "10.244.3.0/24", "192.0.2.3", HealthState::Up),
        ],
        ..Snapshot::default()
    }
}

fn probe(node: &str, endpoint: &str, underlay: Result<bool, GatherError>) -> PeerProbe {
    PeerProbe {
        node: node.into(),
        endpoint: ip(endpoint),
        underlay,
        path: None,
    }
}

fn fix(finding: &Finding) -> &str {
    finding.fix.as_deref().unwrap_or_default()
}

#[test]
fn daemon_answering_is_ok_and_silence_fails_naming_what_is_not_checked() {
    let ok = daemon(&Ok(snapshot()));
    assert_eq!(ok.verdict, Verdict::Ok);
    assert!(ok.detail.contains("node a, backend vxlan"), "{ok:?}");
    let down = daemon(&Err(
        "connect /run/weft/weftd.sock: connection refused".into()
    ));
    assert_eq!(down.verdict, Verdict::Failure);
    assert!(down.detail.contains("connection refused"), "{down:?}");
    assert!(down.detail.contains("mtu, tunnel-port"), "{down:?}");
    assert!(fix(&down).contains("weftd runs on this node"));
}

#[test]
fn a_tunnel_down_to_a_peer_that_answers_ping_is_a_blocked_port() {
    let mut s = snapshot();
    s.peers[1].health.state = HealthState::Down;
    let probes = [
        probe("b", "192.0.2.2", Ok(true)),
        probe("c", "192.0.2.3", Ok(true)),
    ];
    let finding = tunnel_port("vxlan", &s.peers, &probes);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert!(
        finding
            .detail
            .starts_with("c: tunnel down but 192.0.2.3 answers ping, so UDP 8472 is blocked"),
        "{finding:?}"
    );
    assert!(
        fix(&finding).starts_with("allow UDP 8472 between"),
        "{finding:?}"
    );
    s.peers[1].port = Some(51821);
    let finding = tunnel_port("wireguard", &s.peers, &probes);
    assert!(
        finding.detail.contains("UDP 51821 is blocked"),
        "the peer's own port: {finding:?}"
    );
}

#[test]
fn a_tunnel_down_to_a_silent_peer_says_it_does_not_answer() {
    let mut s = snapshot();
    s.peers[0].health.state = HealthState::Down;
    let probes = [
        probe("b", "192.0.2.2", Ok(false)),
        probe("c", "192.0.2.3", Ok(true)),
    ];
    let finding = tunnel_port("vxlan", &s.peers, &probes);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert_eq!(
        finding.detail,
        "b does not answer on its underlay address 192.0.2.2"
    );
    assert!(fix(&finding).contains("check that b is up"), "{finding:?}");
}

#[test]
fn tunnels_up_are_ok_and_unknown_health_is_noted() {
    let mut s = snapshot();
    let probes = [probe("b", "192.0.2.2", Ok(false))];
    let finding = tunnel_port("vxlan", &s.peers, &probes);
    assert_eq!(
        finding.verdict,
        Verdict::Ok,
        "ICMP filtered on the underlay is fine: {finding:?}"
    );
    s.peers[1].health.state = HealthState::Unknown;
    let finding = tunnel_port("vxlan", &s.peers, &probes);
    assert_eq!(finding.verdict, Verdict::Ok);
    assert!(
        finding.detail.contains("1 of 2 peers answer"),
        "{finding:?}"
    );
    assert!(
        finding
            .detail
            .contains("not probed long enough yet (just started?): c"),
        "{finding:?}"
    );
}

#[test]
fn two_nodes_with_one_underlay_address_fail_naming_both() {
    let mut s = snapshot();
    assert_eq!(underlay_address(&s).verdict, Verdict::Ok);
    s.peers[1].endpoint = ip("192.0.2.2");
    let finding = underlay_address(&s);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert_eq!(
        finding.detail,
        "b, c publish the same underlay address 192.0.2.2"
    );
    assert!(fix(&finding).contains("--iface, --iface-regex or --iface-can-reach (on b, c"));
    let mut s = snapshot();
    s.refused.push(RefusedView {
        node: "d".into(),
        reason: "underlay address taken".into(),
        endpoint: Some(ip("192.0.2.1")),
    });
    let finding = underlay_address(&s);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert_eq!(
        finding.detail,
        "d publishes 192.0.2.1, this node's own underlay address"
    );
}

fn forwarding(v4: &str, v6: Option<&str>) -> Forwarding {
    let settings = sysctl::desired(true, v6.is_some());
    let mut observed = vec![Some(v4.to_string())];
    observed.extend(v6.map(|v| Some(v.to_string())));
    Forwarding { settings, observed }
}

#[test]
fn forwarding_off_fails_with_the_sysctl_that_turns_it_on() {
    let ok = ip_forward(&forwarding("1\n", Some("1\n")));
    assert_eq!(
        (ok.verdict, ok.detail.as_str()),
        (Verdict::Ok, "IPv4 and IPv6 forwarding on")
    );
    let off = ip_forward(&forwarding("1\n", Some("0\n")));
    assert_eq!(off.verdict, Verdict::Failure);
    assert!(
        off.detail.starts_with("net.ipv6.conf.all.forwarding is 0"),
        "{off:?}"
    );
    assert!(
        fix(&off).starts_with("sysctl -w net.ipv6.conf.all.forwarding=1;"),
        "{off:?}"
    );
    let unreadable = ip_forward(&Forwarding {
        settings: sysctl::desired(true, false),
        observed: vec![None],
    });
    assert_eq!(unreadable.verdict, Verdict::Warning);
    assert_eq!(unreadable.detail, "cannot read net.ipv4.ip_forward");
}

fn rp(all: u8, default: u8, interfaces: &[(&str, bool, Option<u8>)]) -> RpFilter {
    RpFilter {
        all: Some(all),
        default: Some(default),
        interfaces: interfaces
            .iter()
            .map(|&(name, tunnel, value)| RpInterface {
                name: name.into(),
                tunnel,
                value,
            })
            .collect(),
    }
}

#[test]
fn strict_reverse_path_filtering_on_a_tunnel_device_fails_with_the_loose_setting() {
    let facts = rp(
        1,
        1,
        &[
            ("weft.vxlan", true, Some(0)),
            ("weft.wg", true, None),
            ("eth0", false, Some(0)),
        ],
    );
    let finding = rp_filter(&facts);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert!(
        finding
            .detail
            .contains("conf/all is 1) on weft.vxlan, eth0"),
        "max(all, dev): {finding:?}"
    );
    assert_eq!(
        fix(&finding),
        "sysctl -w net.ipv4.conf.weft/vxlan.rp_filter=2; sysctl -w net.ipv4.conf.eth0.rp_filter=2; \
         sysctl -w net.ipv4.conf.default.rp_filter=2 (loose)"
    );
    let none_yet = rp_filter(&rp(0, 1, &[("weft.vxlan", true, None)]));
    assert_eq!(
        none_yet.verdict,
        Verdict::Failure,
        "devices weft creates inherit default"
    );
    assert!(none_yet.detail.contains("on default"), "{none_yet:?}");
}

#[test]
fn strict_filtering_on_the_underlay_alone_is_a_warning_and_loose_is_ok() {
    let underlay = rp_filter(&rp(
        0,
        0,
        &[("weft.vxlan", true, Some(2)), ("eth0", false, Some(1))],
    ));
    assert_eq!(underlay.verdict, Verdict::Warning);
    assert_eq!(
        fix(&underlay),
        "sysctl -w net.ipv4.conf.eth0.rp_filter=2 (loose)"
    );
    let loose = rp_filter(&rp(
        2,
        1,
        &[("weft.vxlan", true, Some(1)), ("eth0", false, Some(0))],
    ));
    assert_eq!(
        loose.verdict,
        Verdict::Ok,
        "all 2 makes every device loose: {loose:?}"
    );
    assert_eq!(loose.detail, "not strict: weft.vxlan 2, eth0 2 (all 2)");
}

fn cni(files: &[&str], weft_conf: Option<&str>) -> CniDir {
    CniDir {
        dir: "/etc/cni/net.d".into(),
        weft_name: "10-weft.conflist".into(),
        files: Ok(files.iter().map(|f| f.to_string()).collect()),
        weft_conf: weft_conf.map(|t| Ok(t.to_string())),
    }
}

const WEFT_CONFLIST: &str = include_str!("../../../../deploy/10-weft.conflist");

#[test]
fn weft_first_in_the_cni_directory_is_ok() {
    let finding = cni_config(&cni(
        &["10-weft.conflist", "20-x.conf.bak", "README"],
        Some(WEFT_CONFLIST),
    ));
    assert_eq!(finding.verdict, Verdict::Ok, "{finding:?}");
    assert_eq!(
        finding.detail,
        "the runtime uses /etc/cni/net.d/10-weft.conflist"
    );
}

#[test]
fn another_config_sorting_first_or_none_of_weft_fails_naming_it() {
    let finding = cni_config(&cni(
        &["10-weft.conflist", "10-flannel.conflist"],
        Some(WEFT_CONFLIST),
    ));
    assert_eq!(finding.verdict, Verdict::Failure);
    assert_eq!(
        finding.detail,
        "the runtime uses /etc/cni/net.d/10-flannel.conflist, which sorts before 10-weft.conflist"
    );
    assert!(fix(&finding).starts_with("remove /etc/cni/net.d/10-flannel.conflist"));
    let multus = cni_config(&cni(
        &["10-weft.conflist", "00-multus.conf"],
        Some(WEFT_CONFLIST),
    ));
    assert_eq!(
        multus.verdict,
        Verdict::Warning,
        "a meta-plugin may delegate to weft"
    );
    let missing = cni_config(&cni(&["87-podman.conflist"], None));
    assert_eq!(missing.verdict, Verdict::Failure);
    assert!(
        missing
            .detail
            .starts_with("no 10-weft.conflist in /etc/cni/net.d; the runtime uses"),
        "{missing:?}"
    );
    assert!(fix(&missing).contains("install-cni"));
    let broken = cni_config(&cni(
        &["10-weft.conflist"],
        Some(r#"{"plugins": [{"type": "bridge"}]}"#),
    ));
    assert_eq!(broken.verdict, Verdict::Failure);
    let unreadable = CniDir {
        files: Err(GatherError::NeedsRoot {
            what: "list /etc/cni/net.d".into(),
            reason: "Permission denied".into(),
        }),
        ..cni(&[], None)
    };
    assert_eq!(cni_config(&unreadable).verdict, Verdict::Warning);
}

fn route(dst: &str) -> WeftEntry {
    WeftEntry::Route {
        dev: "weft.vxlan".into(),
        dst: dst.parse().unwrap(),
    }
}

#[test]
fn entries_for_current_peers_are_ok_and_others_stale() {
    let s = snapshot();
    let current = vec![
        route("10.244.2.0/24"),
        WeftEntry::Neighbour {
            dev: "weft.vxlan".into(),
            ip: ip("10.244.3.0"),
        },
        WeftEntry::Fdb {
            dev: "weft.vxlan".into(),
            mac: "02:00:00:00:00:02".into(),
            dst: ip("192.0.2.2"),
        },
    ];
    assert_eq!(stale_entries(&s, &Ok(current.clone())).verdict, Verdict::Ok);
    let mut entries = current;
    entries.push(route("10.244.9.0/24"));
    entries.push(WeftEntry::Fdb {
        dev: "weft.vxlan".into(),
        mac: "02:00:00:00:00:09".into(),
        dst: ip("192.0.2.9"),
    });
    let finding = stale_entries(&s, &Ok(entries));
    assert_eq!(finding.verdict, Verdict::Warning);
    assert_eq!(
        finding.detail,
        "2 for nodes that are gone: route 10.244.9.0/24 dev weft.vxlan, fdb 02:00:00:00:00:09 dst \
         192.0.2.9 dev weft.vxlan"
    );
    assert!(fix(&finding).contains("weftd cleanup"));
}

#[test]
fn a_kube_node_without_pod_cidrs_fails_with_the_controller_manager_fix() {
    assert_eq!(pod_cidr(&snapshot()).verdict, Verdict::Ok);
    let mut s = snapshot();
    s.lease = None;
    s.waiting = Some(
        "store unavailable: waiting for an IPv4 pod CIDR in spec.podCIDRs of Node a (assigned by \
         kube-controller-manager --allocate-node-cidrs)"
            .into(),
    );
    let finding = pod_cidr(&s);
    assert_eq!(finding.verdict, Verdict::Failure);
    assert!(
        finding.detail.contains("spec.podCIDRs of Node a"),
        "{finding:?}"
    );
    assert_eq!(
        fix(&finding),
        "run kube-controller-manager with --allocate-node-cidrs (and --cluster-cidr), or set spec.podCIDRs"
    );
    s.store = "etcd https://10.0.0.1:2379 prefix /weft".into();
    assert_eq!(
        pod_cidr(&s).verdict,
        Verdict::Warning,
        "another store's wait is no podCIDRs fault"
    );
}

fn pool(in_use: u64, capacity: u64) -> Option<IpamView> {
    Some(IpamView {
        v4: Some(PoolUse { in_use, capacity }),
        v6: Some(PoolUse {
            in_use: 3,
            capacity: 1 << 32,
        }),
    })
}

#[test]
fn ipam_pools_nearly_full_warn_and_full_ones_fail() {
    let mut s = snapshot();
    s.ipam = pool(10, 253);
    assert_eq!(ipam(&s).verdict, Verdict::Ok);
    s.ipam = pool(228, 253);
    let high = ipam(&s);
    assert_eq!(
        high.verdict,
        Verdict::Warning,
        "228/253 is 90.1 %: {high:?}"
    );
    assert_eq!(high.detail, "pool at 90 % or more: IPv4 228 of 253 in use");
    s.ipam = pool(227, 253);
    assert_eq!(ipam(&s).verdict, Verdict::Ok, "227/253 is 89.7 %");
    s.ipam = pool(253, 253);
    let full = ipam(&s);
    assert_eq!(full.verdict, Verdict::Failure);
    assert_eq!(
        full.detail,
        "pool full, new pods get no address: IPv4 253 of 253 in use"
    );
    assert!(fix(&full).contains("--node-prefix-v4"));
    // An IPv6 /64 holds 2^64 - 1 addresses (u64::MAX): no overflow, far from full.
    s.ipam = Some(IpamView {
        v4: None,
        v6: Some(PoolUse {
            in_use: 3,
            capacity: u64::MAX,
        }),
    });
    assert_eq!(ipam(&s).verdict, Verdict::Ok);
}

fn findings() -> Vec<Finding> {
    vec![
        Finding::ok("ip-forward", "IPv4 and IPv6 forwarding on"),
        Finding::new(
            "mtu",
            Verdict::Failure,
            "too big",
            Some("run weftd with --mtu 1350"),
        ),
        Finding::new("ipam", Verdict::Warning, "nearly\nfull", None::<String>),
    ]
}

#[test]
fn render_aligns_one_line_per_check_with_fixes_below_and_a_summary() {
    let expected = "\
ok       ip-forward  IPv4 and IPv6 forwarding on
FAILURE  mtu         too big
         fix: run weftd with --mtu 1350
warning  ipam        nearly full
3 checks: 1 ok, 1 warning, 1 failure
";
    assert_eq!(render(&findings()), expected);
    assert_eq!(
        render(&[Finding::ok("ip-forward", "IPv4 and IPv6 forwarding on")]),
        "ok       ip-forward  IPv4 and IPv6 forwarding on\n1 check: 1 ok, 0 warnings, 0 failures\n"
    );
}

#[test]
fn exit_code_is_one_only_with_a_failure() {
    assert_eq!(exit_code(&findings()), 1);
    assert_eq!(exit_code(&findings()[..1]), 0);
    assert_eq!(
        exit_code(&[findings()[0].clone(), findings()[2].clone()]),
        0,
        "warnings pass"
    );
    assert_eq!(exit_code(&[]), 0);
}

/// A fake `/proc/sys` with forwarding and rp_filter values.
fn fake_proc(root: &Path, ip_forward: &str, rp: &[(&str, &str)]) {
    std::fs::create_dir_all(root.join("net/ipv4")).unwrap();
    std::fs::write(root.join("net/ipv4/ip_forward"), ip_forward).unwrap();
    std::fs::create_dir_all(root.join("net/ipv6/conf/all")).unwrap();
    std::fs::write(root.join("net/ipv6/conf/all/forwarding"), "1\n").unwrap();
    for (name, value) in rp {
        let dir = root.join("net/ipv4/conf").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rp_filter"), value).unwrap();
    }
}

#[test]
fn gathering_reads_proc_sys_and_the_cni_directory_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let proc_sys = dir.path().join("proc");
    fake_proc(
        &proc_sys,
        "0\n",
        &[("all", "0\n"), ("default", "1\n"), ("weft.vxlan", "1\n")],
    );
    let cni_dir = dir.path().join("cni");
    std::fs::create_dir_all(cni_dir.join("subdir.conf")).unwrap();
    std::fs::write(cni_dir.join("10-weft.conflist"), WEFT_CONFLIST).unwrap();
    let config = DoctorConfig {
        proc_sys,
        cni_conf_dir: cni_dir,
        ..DoctorConfig::default()
    };
    let mut s = snapshot();
    s.lease
        .as_mut()
        .unwrap()
        .pod_cidrs
        .push("fd00:10:244:1::/64".parse().unwrap());
    let forwarding = gather::forwarding(Some(&s), &config);
    assert_eq!(
        forwarding.observed,
        [Some("0\n".to_string()), Some("1\n".to_string())]
    );
    let rp = gather::rp_filter(Some("eth0"), &config);
    assert_eq!((rp.all, rp.default), (Some(0), Some(1)));
    let vxlan = rp
        .interfaces
        .iter()
        .find(|i| i.name == "weft.vxlan")
        .unwrap();
    assert_eq!((vxlan.tunnel, vxlan.value), (true, Some(1)));
    assert_eq!(
        rp.interfaces.last().unwrap().value,
        None,
        "no eth0 in the fake tree"
    );
    let cni = gather::cni_dir(&config);
    assert_eq!(
        cni.files,
        Ok(vec!["10-weft.conflist".to_string()]),
        "directories are left out"
    );
    assert_eq!(cni.weft_conf, Some(Ok(WEFT_CONFLIST.to_string())));
}

#[tokio::test]
async fn without_the_daemon_the_checks_that_need_no_snapshot_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let proc_sys = dir.path().join("proc");
    fake_proc(&proc_sys, "0\n", &[("all", "0\n"), ("default", "0\n")]);
    let config = DoctorConfig {
        proc_sys,
        cni_conf_dir: dir.path().join("no-such-dir"),
        command_timeout: std::time::Duration::from_secs(2),
        ..DoctorConfig::default()
    };
    let findings = examine(Err("connection refused".into()), &config).await;
    let names: Vec<&str> = findings.iter().map(|f| f.check).collect();
    assert_eq!(
        names,
        [
            "daemon",
            "ip-forward",
            "rp-filter",
            "forward-policy",
            "cni-config"
        ]
    );
    let verdicts: Vec<Verdict> = findings.iter().map(|f| f.verdict).collect();
    assert_eq!(
        verdicts[..3],
        [Verdict::Failure, Verdict::Failure, Verdict::Ok]
    );
    assert_eq!(findings[4].verdict, Verdict::Warning, "{:?}", findings[4]);
    assert_eq!(exit_code(&findings), 1);
}
