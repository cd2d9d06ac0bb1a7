//! weftd's pod wiring (`weftd::datapath::pod`: `setup`, `check`, `teardown`, `is_weft_veth`,
//! `host_veth_name`, `gateway_for`) against the kernel, as root. The node is a network namespace of
//! the test's own: one thread enters a new namespace (`unshare(CLONE_NEWNET)`) and runs a
//! current-thread tokio runtime there, and `ip` run as its child sees what the node sees. The pod
//! is a named namespace (`/run/netns/<unique>-pod`) whose guard deletes it on drop; the node's
//! namespace vanishes with the thread, so both go whether the test passes or panics. Nothing on
//! the host is read or changed.
//!
//! Run: `cargo test -p weft-lab --test datapath_pod`.

use std::net::IpAddr;
use std::path::Path;
use weft_lab::netns::in_fresh_netns_async;

use serde_json::Value;
use weft_lab::netns::{unique_prefix, NetnsGuard};
use weft_proto::names::IfName;
use weftd::datapath::netns::Netns;
use weftd::datapath::nl;
use weftd::datapath::pod::{self, PodError, PodSpec, PodWiring, GATEWAY_V4, GATEWAY_V6};
use weftd::ipam::Allocation;

const POD_V4: &str = "10.244.1.5";
const POD_V6: &str = "fd00:10:244:1::5";

/// Run a command as the operator would (in the node); its standard output.
fn sh(args: &[&str]) -> String {
    weft_lab::netns::run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The JSON array a `-j` command prints (nothing printed reads as empty).
fn json(out: &str) -> Vec<Value> {
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(out) {
        Ok(Value::Array(items)) => items,
        other => panic!("not a JSON array: {other:?}\n{out}"),
    }
}

fn text(item: &Value, key: &str) -> String {
    item[key].as_str().unwrap_or_default().to_string()
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The node's underlay, so it has addresses to ping the pod from: `u0` (192.0.2.1/24,
/// 2001:db8::1/64) of a veth pair, up.
fn underlay() {
    for line in [
        "ip link add u0 type veth peer name u1",
        "ip addr add 192.0.2.1/24 dev u0",
        "ip addr add 2001:db8::1/64 dev u0 nodad",
        "ip link set u0 up",
        "ip link set u1 up",
    ] {
        sh(&line.split_whitespace().collect::<Vec<_>>());
    }
}

/// A pod namespace (removed when the guard drops), open as weftd opens one.
fn pod_netns() -> (NetnsGuard, Netns) {
    let guard =
        NetnsGuard::create(&format!("{}-pod", unique_prefix())).unwrap_or_else(|e| panic!("{e}"));
    let netns = Netns::open(Path::new(&guard.path())).expect("open the pod's namespace");
    (guard, netns)
}

/// The dual-stack pod interface `eth0` of container `container` in `netns`, MTU 1450.
fn spec<'a>(netns: &'a Netns, ifname: &'a IfName, container: &str) -> PodSpec<'a> {
    PodSpec {
        netns,
        ifname,
        host_veth: pod::host_veth_name(container, ifname.as_str()),
        addresses: Allocation {
            v4: Some(POD_V4.parse().unwrap()),
            v6: Some(POD_V6.parse().unwrap()),
            masquerade: true,
        },
        mtu: 1450,
    }
}

/// Route lines (`DST [via GW] dev DEV [scope S]`) that `ip FAMILY -j route show ARGS` prints in
/// `netns` (the node when `None`); `family` is `-4` or `-6`.
fn routes(netns: Option<&NetnsGuard>, family: &str, args: &[&str]) -> Vec<String> {
    json(&ip_in(
        netns,
        &[&[family, "-j", "route", "show"][..], args].concat(),
    ))
    .iter()
    .map(|r| {
        let via = match text(r, "gateway") {
            gw if gw.is_empty() => String::new(),
            gw => format!(" via {gw}"),
        };
        let scope = match text(r, "scope") {
            s if s.is_empty() => String::new(),
            s => format!(" scope {s}"),
        };
        format!("{}{via} dev {}{scope}", text(r, "dst"), text(r, "dev"))
    })
    .collect()
}

/// `ip ARGS` in `netns` (the node when `None`); its output.
fn ip_in(netns: Option<&NetnsGuard>, args: &[&str]) -> String {
    match netns {
        Some(ns) => ns
            .exec(&[&["ip"][..], args].concat())
            .unwrap_or_else(|e| panic!("{e}")),
        None => sh(&[&["ip"][..], args].concat()),
    }
}

/// The names of the links in `netns` (the node when `None`), sorted.
fn link_names(netns: Option<&NetnsGuard>) -> Vec<String> {
    let mut names: Vec<String> = json(&ip_in(netns, &["-j", "link", "show"]))
        .iter()
        .map(|l| text(l, "ifname"))
        .collect();
    names.sort();
    names
}

/// The pod's view of `eth0`: its MAC, MTU and state, global addresses, permanent neighbours.
fn pod_interface(pod: &NetnsGuard) -> Vec<String> {
    let link = json(&ip_in(Some(pod), &["-j", "addr", "show", "dev", "eth0"])).remove(0);
    let mut lines = vec![format!(
        "eth0 {} mtu {} {}",
        text(&link, "address"),
        link["mtu"],
        text(&link, "operstate")
    )];
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if text(a, "scope") == "global" {
            lines.push(format!("inet {}/{}", text(a, "local"), a["prefixlen"]));
        }
    }
    for n in json(&ip_in(Some(pod), &["-j", "neigh", "show", "dev", "eth0"])) {
        if n["state"]
            .as_array()
            .is_some_and(|s| s.contains(&"PERMANENT".into()))
        {
            lines.push(format!(
                "neigh {} lladdr {}",
                text(&n, "dst"),
                text(&n, "lladdr")
            ));
        }
    }
    lines
}

/// The node's view of the host veth `name`: kind, MAC, MTU and whether it is up.
fn host_veth(name: &str) -> String {
    let link = json(&sh(&["ip", "-d", "-j", "link", "show", name])).remove(0);
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.contains(&"UP".into()));
    format!(
        "{name} {} {} mtu {} up {up}",
        text(&link["linkinfo"], "info_kind"),
        text(&link, "address"),
        link["mtu"]
    )
}

/// What an operator sees of a wired pod (`eth0` in `pod`, host end `veth`): both ends up with
/// the MTU and MACs setup reported, the pod's addresses, gateway neighbours and default routes,
/// and the node's host routes to the pod through `veth`.
fn assert_wired(pod: &NetnsGuard, veth: &str, wiring: &PodWiring) {
    let host_mac = mac_text(&wiring.host_mac);
    assert_eq!(
        host_veth(veth),
        format!("{veth} veth {host_mac} mtu 1450 up true")
    );
    assert_eq!(
        pod_interface(pod),
        [
            format!("eth0 {} mtu 1450 UP", mac_text(&wiring.pod_mac)),
            format!("inet {POD_V4}/32"),
            format!("inet {POD_V6}/128"),
            format!("neigh {GATEWAY_V4} lladdr {host_mac}"),
            format!("neigh {GATEWAY_V6} lladdr {host_mac}"),
        ]
    );
    let (v4, v6): (IpAddr, IpAddr) = (POD_V4.parse().unwrap(), POD_V6.parse().unwrap());
    let (gw4, gw6) = (pod::gateway_for(&v4), pod::gateway_for(&v6));
    assert_eq!((gw4, gw6), (IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)));
    assert_eq!(
        routes(Some(pod), "-4", &[]),
        [
            format!("default via {gw4} dev eth0"),
            format!("{gw4} dev eth0 scope link"),
        ]
    );
    assert_eq!(
        routes(Some(pod), "-6", &["default"]),
        [format!("default via {gw6} dev eth0")]
    );
    let to_pod = routes(None, "-4", &[POD_V4]);
    assert_eq!(to_pod, [format!("{POD_V4} dev {veth} scope link")]);
    let to_pod = routes(None, "-6", &[POD_V6]);
    assert_eq!(to_pod, [format!("{POD_V6} dev {veth}")]);
    let neighbours = sh(&["ip", "-6", "neigh", "show", "dev", veth, "nud", "permanent"]);
    assert_eq!(
        neighbours.trim(),
        format!("{POD_V6} lladdr {} PERMANENT", mac_text(&wiring.pod_mac))
    );
}

#[test]
fn a_dual_stack_pod_is_wired_checked_and_torn_down() {
    in_fresh_netns_async(|| async {
        underlay();
        let (pod_ns, netns) = pod_netns();
        let host = weftd::datapath::netns::connect_here().expect("a netlink connection");
        let eth0 = IfName::new("eth0").unwrap();
        let spec = spec(&netns, &eth0, &format!("{}-ctr", unique_prefix()));
        let veth = spec.host_veth.to_string();
        assert!(veth.starts_with("weft") && veth.len() == 15, "{veth}");

        let wiring = pod::setup(&host, &spec).await.expect("setup");
        // IPv6 works the moment ADD returns: no wait for the host end's DAD (a second or more),
        // because the node has the pod's address as a permanent neighbour.
        let started = std::time::Instant::now();
        sh(&["ping", "-c", "1", "-W", "3", "-q", POD_V6]);
        let first_reply = started.elapsed();
        assert!(
            first_reply < std::time::Duration::from_millis(500),
            "first IPv6 reply after {first_reply:?}"
        );
        pod::check(&host, &spec).await.expect("check after setup");
        assert_wired(&pod_ns, &veth, &wiring);

        // Only the pod's host end is weft's: not lo, not the underlay's veths.
        let links = nl::links(&host).await.unwrap();
        let weft: Vec<&str> = links
            .iter()
            .filter(|l| pod::is_weft_veth(l))
            .filter_map(nl::link_name)
            .collect();
        assert_eq!(weft, [veth.as_str()], "of {} links", links.len());

        // The node reaches the pod on both families.
        sh(&["ping", "-c", "1", "-W", "3", "-q", POD_V4]);
        sh(&["ping", "-c", "1", "-W", "3", "-q", POD_V6]);

        // Someone deletes the pod's IPv4 default route: check names it.
        ip_in(Some(&pod_ns), &["-4", "route", "del", "default"]);
        let err = pod::check(&host, &spec).await.unwrap_err();
        assert!(matches!(err, PodError::Missing(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("the pod's default route via {GATEWAY_V4} is missing")
        );

        pod::teardown(&host, &spec.host_veth)
            .await
            .expect("teardown");
        assert_eq!(link_names(None), ["lo", "u0", "u1"]);
        assert_eq!(link_names(Some(&pod_ns)), ["lo"]);
        assert_eq!(routes(None, "-4", &[POD_V4]), Vec::<String>::new());
        pod::teardown(&host, &spec.host_veth)
            .await
            .expect("a second teardown finds nothing and is fine");
        let err = pod::check(&host, &spec).await.unwrap_err();
        assert_eq!(err.to_string(), format!("host veth {veth} is missing"));
    });
}

#[test]
fn an_ifname_taken_in_the_pod_is_refused_and_a_repeated_add_recreates() {
    in_fresh_netns_async(|| async {
        let (pod_ns, netns) = pod_netns();
        let host = weftd::datapath::netns::connect_here().expect("a netlink connection");
        let eth0 = IfName::new("eth0").unwrap();
        let prefix = unique_prefix();
        let first = spec(&netns, &eth0, &format!("{prefix}-a"));
        pod::setup(&host, &first).await.expect("setup");
        let index =
            |name: &str| json(&sh(&["ip", "-j", "link", "show", name]))[0]["ifindex"].clone();
        let before = index(first.host_veth.as_str());

        // Another container's interface cannot take eth0 in the same pod namespace.
        let second = spec(&netns, &eth0, &format!("{prefix}-b"));
        assert_ne!(second.host_veth, first.host_veth);
        let err = pod::setup(&host, &second).await.unwrap_err();
        match &err {
            PodError::IfnameTaken { ifname, netns } => {
                assert_eq!(
                    (ifname.as_str(), netns.as_str()),
                    ("eth0", pod_ns.path().as_str())
                )
            }
            other => panic!("not IfnameTaken: {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("interface eth0 already exists in {}", pod_ns.path())
        );
        let mut expected = vec!["lo".to_string(), first.host_veth.to_string()];
        expected.sort();
        assert_eq!(
            link_names(None),
            expected,
            "no veth made for the refused one"
        );
        pod::check(&host, &first)
            .await
            .expect("the first pod is untouched");

        // The same pod interface added again: its veth is re-created, and checks.
        pod::setup(&host, &first).await.expect("a repeated setup");
        pod::check(&host, &first)
            .await
            .expect("check after the repeat");
        assert_ne!(index(first.host_veth.as_str()), before, "a new veth");
        assert_eq!(link_names(Some(&pod_ns)), ["eth0", "lo"]);
        pod::teardown(&host, &first.host_veth)
            .await
            .expect("teardown");
        assert_eq!(link_names(None), ["lo"]);
    });
}
