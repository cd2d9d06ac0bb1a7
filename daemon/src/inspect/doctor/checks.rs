//! The doctor's pure decisions: each check takes the snapshot and the gathered facts
//! (`super::gather`) and says `ok`, `warning` or `FAILURE`, with the fix in one line. The `mtu`
//! check is in `super::path` and `forward-policy` in `super::forward`, with their arithmetic and
//! parsing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::gather::{CniDir, Forwarding, GatherError, PeerProbe, RpFilter, WeftEntry};
use super::{counted, Finding, Verdict, NEED_SNAPSHOT};
use crate::backend::{vxlan, wireguard};
use crate::inspect::snapshot::{HealthState, PeerView, PoolUse, Snapshot};
use crate::node::sysctl;

/// `daemon`: whether weftd answered on its control socket.
pub fn daemon(snapshot: &Result<Snapshot, String>) -> Finding {
    const CHECK: &str = "daemon";
    match snapshot {
        Ok(s) => Finding::ok(
            CHECK,
            format!(
                "weftd {} answers: node {}, backend {}, store {}",
                s.version, s.node, s.backend, s.store
            ),
        ),
        Err(reason) => Finding::new(
            CHECK,
            Verdict::Failure,
            format!(
                "weftd does not answer: {reason}; not checked without it: {}",
                NEED_SNAPSHOT.join(", ")
            ),
            Some(
                "check that weftd runs on this node (kubectl -n weft-system get pods -o wide, and \
                 its log), and run weftd doctor as root with weftd's --run-dir",
            ),
        ),
    }
}

/// The UDP port of `peer`'s tunnel: 8472 for VXLAN, the peer's own for WireGuard.
fn port_of(backend: &str, peer: &PeerView) -> String {
    match backend {
        "vxlan" => format!("UDP {}", vxlan::VXLAN_PORT),
        "wireguard" => format!("UDP {}", peer.port.unwrap_or(wireguard::DEFAULT_PORT)),
        _ => "its tunnel port".to_string(),
    }
}

/// Why a peer's tunnel is down, as far as its underlay tells.
enum Down {
    /// The underlay address answers: the tunnel's port (named) is blocked.
    Blocked(String),
    /// Nothing answers at the node's (named) underlay address.
    Silent(String),
    /// The underlay was not probed (beyond the cap, or probing failed).
    Unprobed,
}

fn down_peer(
    backend: &str,
    peer: &PeerView,
    underlay: Option<&Result<bool, GatherError>>,
) -> (Down, String) {
    let (node, endpoint) = (&peer.node, peer.endpoint);
    match underlay {
        Some(Ok(true)) => {
            let port = port_of(backend, peer);
            let detail = format!(
                "{node}: tunnel down but {endpoint} answers ping, so {port} is blocked between the \
                 nodes (or {node} does not list this node as a peer)"
            );
            (Down::Blocked(port), detail)
        }
        Some(Ok(false)) => (
            Down::Silent(node.clone()),
            format!("{node} does not answer on its underlay address {endpoint}"),
        ),
        Some(Err(e)) => (
            Down::Unprobed,
            format!("{node}: tunnel down (underlay not probed: {e})"),
        ),
        None => (
            Down::Unprobed,
            format!("{node}: tunnel down (underlay not probed)"),
        ),
    }
}

/// `tunnel-port`: a peer whose tunnel is down is told apart by its underlay: answering there
/// means the tunnel's UDP port is blocked between the nodes; silent there means the node (or its
/// published address) is gone. Peers not probed long enough (health unknown) are noted.
pub fn tunnel_port(backend: &str, peers: &[PeerView], probes: &[PeerProbe]) -> Finding {
    const CHECK: &str = "tunnel-port";
    let probed: BTreeMap<&str, &PeerProbe> = probes.iter().map(|p| (p.node.as_str(), p)).collect();
    let unknown: Vec<&str> = peers
        .iter()
        .filter(|p| p.health.state == HealthState::Unknown)
        .map(|p| p.node.as_str())
        .collect();
    let note = match unknown.is_empty() {
        true => String::new(),
        false => format!(
            "; not probed long enough yet (just started?): {}",
            unknown.join(", ")
        ),
    };
    let down: Vec<(Down, String)> = peers
        .iter()
        .filter(|p| p.health.state == HealthState::Down)
        .map(|p| down_peer(backend, p, probed.get(p.node.as_str()).map(|x| &x.underlay)))
        .collect();
    if down.is_empty() {
        let up = peers.len() - unknown.len();
        return Finding::ok(
            CHECK,
            format!(
                "{up} of {} peers answer through the tunnel{note}",
                peers.len()
            ),
        );
    }
    let details: Vec<&str> = down.iter().map(|(_, d)| d.as_str()).collect();
    let detail = format!("{}{note}", details.join("; "));
    Finding::new(CHECK, Verdict::Failure, detail, down_fix(&down))
}

/// The fix for the peers down: the blocked ports to allow, the silent nodes to look at.
fn down_fix(down: &[(Down, String)]) -> Option<String> {
    let ports: BTreeSet<&str> = down
        .iter()
        .filter_map(|(d, _)| match d {
            Down::Blocked(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    let silent: Vec<&str> = down
        .iter()
        .filter_map(|(d, _)| match d {
            Down::Silent(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let mut fix = Vec::new();
    if !ports.is_empty() {
        let ports: Vec<&str> = ports.into_iter().collect();
        fix.push(format!(
            "allow {} between the nodes' underlay addresses (security groups, host firewalls)",
            ports.join(", ")
        ));
    }
    if !silent.is_empty() {
        fix.push(format!(
            "check that {} is up and publishes an address this node reaches (--iface, \
             --iface-regex, --iface-can-reach)",
            silent.join(", ")
        ));
    }
    (!fix.is_empty()).then(|| fix.join("; "))
}

/// The nodes publishing each underlay address: peers and refused peers.
fn claims(snapshot: &Snapshot) -> BTreeMap<IpAddr, BTreeSet<&str>> {
    let peers = snapshot
        .peers
        .iter()
        .map(|p| (p.node.as_str(), Some(p.endpoint)));
    let refused = snapshot
        .refused
        .iter()
        .map(|r| (r.node.as_str(), r.endpoint));
    let mut by_address: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for (node, endpoint) in peers.chain(refused) {
        if let Some(address) = endpoint {
            by_address.entry(address).or_default().insert(node);
        }
    }
    by_address
}

/// `underlay-address`: two nodes publishing one underlay address (the Vagrant `10.0.2.15` trap:
/// every VM's NAT interface has it), or a peer publishing this node's own.
pub fn underlay_address(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "underlay-address";
    let own: Vec<IpAddr> = [snapshot.underlay.v4, snapshot.underlay.v6]
        .into_iter()
        .flatten()
        .collect();
    let by_address = claims(snapshot);
    let mut faults = Vec::new();
    let mut named = BTreeSet::new();
    for (address, nodes) in &by_address {
        let list = nodes.iter().copied().collect::<Vec<_>>().join(", ");
        if own.contains(address) {
            faults.push(format!(
                "{list} publish{} {address}, this node's own underlay address",
                if nodes.len() == 1 { "es" } else { "" }
            ));
        } else if nodes.len() > 1 {
            faults.push(format!(
                "{list} publish the same underlay address {address}"
            ));
        } else {
            continue;
        }
        named.extend(nodes.iter().copied());
    }
    if faults.is_empty() {
        let own = own
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Finding::ok(
            CHECK,
            format!(
                "{} of peers, all distinct (this node: {own})",
                counted(by_address.len(), "underlay address", "underlay addresses")
            ),
        );
    }
    let nodes = named.into_iter().collect::<Vec<_>>().join(", ");
    let fix = format!(
        "give each node an address of its own: pick the interface with --iface, --iface-regex or \
         --iface-can-reach (on {nodes}, and on this node if it is the one)"
    );
    Finding::new(CHECK, Verdict::Failure, faults.join("; "), Some(fix))
}

/// `net.ipv4.ip_forward` for `/proc/sys/net/ipv4/ip_forward`.
fn sysctl_name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// `ip-forward`: forwarding on for each pod family in use.
pub fn ip_forward(facts: &Forwarding) -> Finding {
    const CHECK: &str = "ip-forward";
    let drifts = sysctl::diff(&facts.settings, &facts.observed);
    let families = facts
        .settings
        .iter()
        .map(|s| {
            if s.path.contains("ipv6") {
                "IPv6"
            } else {
                "IPv4"
            }
        })
        .collect::<Vec<_>>()
        .join(" and ");
    if drifts.is_empty() {
        return Finding::ok(CHECK, format!("{families} forwarding on"));
    }
    let off: Vec<_> = drifts.iter().filter(|d| d.observed.is_some()).collect();
    if off.is_empty() {
        let names: Vec<String> = drifts.iter().map(|d| sysctl_name(d.setting.path)).collect();
        return Finding::new(
            CHECK,
            Verdict::Warning,
            format!("cannot read {}", names.join(", ")),
            None::<String>,
        );
    }
    let found: Vec<String> = off
        .iter()
        .map(|d| {
            format!(
                "{} is {}",
                sysctl_name(d.setting.path),
                d.observed.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let set: Vec<String> = off
        .iter()
        .map(|d| format!("sysctl -w {}=1", sysctl_name(d.setting.path)))
        .collect();
    let fix = format!(
        "{}; weftd sets it at start and every resync, so if it keeps turning off find what does it \
         (/etc/sysctl.d, systemd-networkd's IPForward=)",
        set.join("; ")
    );
    let detail = format!("{}: this node does not route pod traffic", found.join(", "));
    Finding::new(CHECK, Verdict::Failure, detail, Some(fix))
}

/// The sysctl key of an interface's `rp_filter` (`sysctl` writes a dot in a name as `/`).
fn rp_key(name: &str) -> String {
    format!("net.ipv4.conf.{}.rp_filter", name.replace('.', "/"))
}

/// `rp-filter`: strict reverse-path filtering (1; effective value max(all, DEV)) on weft's tunnel
/// devices drops packets a peer's host network sends through the tunnel with its underlay
/// address as source (kube-proxy's ClusterIP path without masquerading): failure. Loose (2) is
/// what weft needs. On the underlay interface, strict drops tunnel packets only from peers routed
/// back through another interface (multi-homed nodes): warning. Without any tunnel device,
/// `default` stands for the ones weft will create.
pub fn rp_filter(facts: &RpFilter) -> Finding {
    const CHECK: &str = "rp-filter";
    let all = facts.all.unwrap_or(0);
    let default = facts.default.unwrap_or(0);
    let mut seen: Vec<(String, u8, bool)> = facts
        .interfaces
        .iter()
        .filter_map(|i| i.value.map(|v| (i.name.clone(), all.max(v), i.tunnel)))
        .collect();
    if !seen.iter().any(|(_, _, tunnel)| *tunnel) {
        seen.push(("default".to_string(), all.max(default), true));
    }
    let strict: Vec<&(String, u8, bool)> = seen.iter().filter(|(_, v, _)| *v == 1).collect();
    if strict.is_empty() {
        let list: Vec<String> = seen.iter().map(|(n, v, _)| format!("{n} {v}")).collect();
        return Finding::ok(
            CHECK,
            format!("not strict: {} (all {all})", list.join(", ")),
        );
    }
    let tunnel_strict = strict.iter().any(|(_, _, tunnel)| *tunnel);
    let mut keys: Vec<String> = strict.iter().map(|(n, _, _)| rp_key(n)).collect();
    let re_created_strict = all.max(default) == 1;
    if tunnel_strict && re_created_strict && !strict.iter().any(|(n, _, _)| n == "default") {
        keys.push(rp_key("default"));
    }
    let fix: Vec<String> = keys.iter().map(|k| format!("sysctl -w {k}=2")).collect();
    let names: Vec<&str> = strict.iter().map(|(n, _, _)| n.as_str()).collect();
    let (verdict, why) = match tunnel_strict {
        true => (
            Verdict::Failure,
            "drops overlay packets whose source is a peer's host address",
        ),
        false => (
            Verdict::Warning,
            "drops tunnel packets from peers routed back through another interface",
        ),
    };
    let detail = format!(
        "strict reverse-path filtering (rp_filter 1; conf/all is {all}) on {}: {why}",
        names.join(", ")
    );
    Finding::new(
        CHECK,
        verdict,
        detail,
        Some(format!("{} (loose)", fix.join("; "))),
    )
}

/// Whether `name` is a CNI configuration file the runtime considers.
fn is_cni_config(name: &str) -> bool {
    [".conf", ".conflist", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// `cni-config`: the runtime uses the first `.conf`, `.conflist` or `.json` file of the directory
/// in lexical order; it must be weft's, and weft's must name the `weft` plugin.
pub fn cni_config(facts: &CniDir) -> Finding {
    const CHECK: &str = "cni-config";
    let dir = facts.dir.display();
    let weft = &facts.weft_name;
    let files = match &facts.files {
        Ok(files) => files,
        Err(e) => {
            return Finding::new(
                CHECK,
                Verdict::Warning,
                format!("cannot read the CNI directory: {e}"),
                None::<String>,
            )
        }
    };
    let mut configs: Vec<&String> = files.iter().filter(|f| is_cni_config(f)).collect();
    configs.sort();
    let Some(first) = configs.first() else {
        return missing(facts, "it holds no CNI configuration".to_string());
    };
    if !configs.contains(&weft) {
        return missing(facts, format!("the runtime uses {dir}/{first}"));
    }
    if *first != weft && first.contains("multus") {
        // A meta-plugin that calls others: weft as its default network is a working setup.
        let detail = format!("the runtime uses {dir}/{first} (Multus), which sorts before {weft}");
        let fix = format!("make sure Multus delegates the default network to weft ({weft})");
        return Finding::new(CHECK, Verdict::Warning, detail, Some(fix));
    }
    if *first != weft {
        let detail = format!("the runtime uses {dir}/{first}, which sorts before {weft}");
        let fix = format!(
            "remove {dir}/{first} if a former CNI (flannel, Kilo, …) left it, or rename it to sort \
             after {weft}; then restart the pods created meanwhile"
        );
        return Finding::new(CHECK, Verdict::Failure, detail, Some(fix));
    }
    match &facts.weft_conf {
        Some(Ok(text)) if names_weft_plugin(text) => Finding::ok(CHECK, format!("the runtime uses {dir}/{weft}")),
        Some(Err(e)) => Finding::new(CHECK, Verdict::Warning, format!("cannot read {dir}/{weft}: {e}"), None::<String>),
        _ => Finding::new(
            CHECK,
            Verdict::Failure,
            format!("{dir}/{weft} is not JSON naming a plugin of type \"weft\""),
            Some("restore it from deploy/10-weft.conflist (the weftd DaemonSet's install-cni container writes it)"),
        ),
    }
}

fn missing(facts: &CniDir, rest: String) -> Finding {
    let detail = format!("no {} in {}; {rest}", facts.weft_name, facts.dir.display());
    let fix =
        "the weftd DaemonSet's install-cni init container writes it (deploy/install-cni.sh): \
               check that it ran and that the runtime reads this directory";
    Finding::new("cni-config", Verdict::Failure, detail, Some(fix))
}

/// Whether `text` is a CNI configuration (list) naming a plugin of type `weft`.
fn names_weft_plugin(text: &str) -> bool {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let is_weft = |plugin: &serde_json::Value| plugin["type"] == "weft";
    match json["plugins"].as_array() {
        Some(plugins) => plugins.iter().any(is_weft),
        None => is_weft(&json),
    }
}

/// The addresses weft's entries may point at for nodes that exist: peers' pod CIDRs, their
/// gateways (each CIDR's network address) and underlay addresses, and this node's own.
fn known(snapshot: &Snapshot) -> (BTreeSet<IpNet>, BTreeSet<IpAddr>) {
    let own = snapshot.lease.iter().flat_map(|l| l.pod_cidrs.iter());
    let cidrs: BTreeSet<IpNet> = snapshot
        .peers
        .iter()
        .flat_map(|p| p.pod_cidrs.iter())
        .chain(own)
        .copied()
        .collect();
    let mut addresses: BTreeSet<IpAddr> = cidrs.iter().map(|c| c.network()).collect();
    addresses.extend(snapshot.peers.iter().map(|p| p.endpoint));
    addresses.extend(snapshot.underlay.v4.iter().chain(&snapshot.underlay.v6));
    (cidrs, addresses)
}

/// `stale-entries`: weft's routes, neighbour and FDB entries pointing at no node of the snapshot.
pub fn stale_entries(
    snapshot: &Snapshot,
    entries: &Result<Vec<WeftEntry>, GatherError>,
) -> Finding {
    const CHECK: &str = "stale-entries";
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            return Finding::new(
                CHECK,
                Verdict::Warning,
                format!("cannot read weft's entries: {e}"),
                None::<String>,
            )
        }
    };
    let (cidrs, addresses) = known(snapshot);
    let stale: Vec<String> = entries
        .iter()
        .filter(|e| match e {
            WeftEntry::Route { dst, .. } => !cidrs.contains(dst),
            WeftEntry::Neighbour { ip, .. } => !addresses.contains(ip),
            WeftEntry::Fdb { dst, .. } => !addresses.contains(dst),
        })
        .map(ToString::to_string)
        .collect();
    if stale.is_empty() {
        return Finding::ok(
            CHECK,
            format!(
                "{} on weft's devices, all for current nodes",
                counted(entries.len(), "entry", "entries")
            ),
        );
    }
    const SHOWN: usize = 6;
    let more = match stale.len() > SHOWN {
        true => format!(" and {} more", stale.len() - SHOWN),
        false => String::new(),
    };
    let detail = format!(
        "{} for nodes that are gone: {}{more}",
        stale.len(),
        stale[..stale.len().min(SHOWN)].join(", ")
    );
    let fix = "weftd prunes them at its next resync; if weftd is gone for good, weftd cleanup";
    Finding::new(CHECK, Verdict::Warning, detail, Some(fix))
}

/// `pod-cidr`: with the Kubernetes store, a node without `spec.podCIDRs` never gets a lease.
pub fn pod_cidr(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "pod-cidr";
    if let Some(lease) = &snapshot.lease {
        let cidrs: Vec<String> = lease.pod_cidrs.iter().map(ToString::to_string).collect();
        return Finding::ok(CHECK, format!("lease holds {}", cidrs.join(", ")));
    }
    let waiting = snapshot.waiting.as_deref().unwrap_or("no reason given yet");
    let kube = snapshot.store.split_whitespace().next() == Some("kube");
    if kube && waiting.contains("spec.podCIDRs") {
        let fix = "run kube-controller-manager with --allocate-node-cidrs (and --cluster-cidr), or set spec.podCIDRs";
        return Finding::new(
            CHECK,
            Verdict::Failure,
            format!("no lease: {waiting}"),
            Some(fix),
        );
    }
    Finding::new(
        CHECK,
        Verdict::Warning,
        format!("no lease yet: {waiting}"),
        None::<String>,
    )
}

/// `ipam`: a pod address pool at 90 % or more in use (warning), or full (failure).
pub fn ipam(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "ipam";
    let Some(ipam) = &snapshot.ipam else {
        return Finding::ok(CHECK, "no CNI service on this node: no pod address pool");
    };
    let pools: Vec<(&str, PoolUse)> = [("IPv4", ipam.v4), ("IPv6", ipam.v6)]
        .into_iter()
        .filter_map(|(family, pool)| pool.filter(|p| p.capacity > 0).map(|p| (family, p)))
        .collect();
    let describe = |(family, p): &(&str, PoolUse)| {
        format!(
            "{family} {} of {} in use",
            p.in_use,
            crate::inspect::render::capacity(p.capacity)
        )
    };
    let full: Vec<String> = pools
        .iter()
        .filter(|(_, p)| p.in_use >= p.capacity)
        .map(describe)
        .collect();
    let high: Vec<String> = pools
        .iter()
        .filter(|(_, p)| {
            p.in_use < p.capacity && u128::from(p.in_use) * 10 >= u128::from(p.capacity) * 9
        })
        .map(describe)
        .collect();
    let fix = "free addresses (delete finished pods), or give nodes larger pod CIDRs \
               (--node-prefix-v4/-v6 with kube-controller-manager's --node-cidr-mask-size)";
    if !full.is_empty() {
        let detail = format!(
            "pool full, new pods get no address: {}",
            full.iter()
                .chain(&high)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Finding::new(CHECK, Verdict::Failure, detail, Some(fix));
    }
    if !high.is_empty() {
        return Finding::new(
            CHECK,
            Verdict::Warning,
            format!("pool at 90 % or more: {}", high.join(", ")),
            Some(fix),
        );
    }
    let all: Vec<String> = pools.iter().map(describe).collect();
    Finding::ok(
        CHECK,
        if all.is_empty() {
            "no pool".to_string()
        } else {
            all.join(", ")
        },
    )
}
