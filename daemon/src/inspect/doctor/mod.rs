//! `weftd doctor`: one pass over a node for the faults operators of flannel and Kilo hit most,
//! each reported as `ok`, `warning` or `FAILURE` with its fix in one line.
//!
//! [`examine`] takes the daemon's [`Snapshot`] (or the one-line reason it did not answer),
//! gathers what the node shows ([`gather`]: `/proc/sys`, netlink dumps, `nft -j list ruleset`,
//! `iptables-legacy -S FORWARD`, the CNI directory, ICMP probes) and hands the facts to the pure
//! decisions ([`checks`], [`path`], [`forward`]), one [`Finding`] per check. [`render`] prints
//! them and [`exit_code`] turns them into the command's status. Gathering never errs out: what it
//! cannot read (without root, say) becomes a warning saying so.
//!
//! The checks, by their stable names, in the order they are reported:
//!
//! | name               | reads                                                    | fault         |
//! |--------------------|----------------------------------------------------------|---------------|
//! | `daemon`           | the snapshot result                                      | failure       |
//! | `mtu`              | pod MTU, peers; DF pings at the tunnel's packet size     | failure       |
//! | `tunnel-port`      | peers' health; plain pings of their underlay addresses   | failure       |
//! | `underlay-address` | this node's underlay addresses, peers' and refused ones' | failure       |
//! | `ip-forward`       | `net/ipv4/ip_forward`, `net/ipv6/conf/all/forwarding`    | failure       |
//! | `rp-filter`        | `net/ipv4/conf/{all,default,DEV}/rp_filter`              | failure, warning |
//! | `forward-policy`   | `nft -j list ruleset`, `iptables-legacy -S FORWARD`      | warning       |
//! | `cni-config`       | the CNI configuration directory                          | failure       |
//! | `stale-entries`    | proto-87 routes, neighbour and FDB entries on weft's devices | warning   |
//! | `pod-cidr`         | store, lease, waiting reason                             | failure       |
//! | `ipam`             | IPAM pool use                                            | warning, failure |
//!
//! Without the daemon, `mtu`, `tunnel-port`, `underlay-address`, `stale-entries`, `pod-cidr` and
//! `ipam` cannot be decided; the `daemon` finding names them instead of six lines saying so.
//!
//! # Inducing each fault in a network-namespace lab
//!
//! [`examine`] takes the snapshot as a value, so a test may hand it a made-up [`Snapshot`] and run
//! without weftd; it reads the namespace of the calling thread (run the test under
//! `ip netns exec NODE`). `a` is the node examined, `b` a peer, both on a veth pair `eth0`.
//!
//! - `daemon`: stop weftd (or pass `Err("connect /run/weft/weftd.sock: connection refused")`).
//! - `mtu`, path too small: `ip -n b link set eth0 mtu 1400` with pod MTU 1450 (VXLAN over
//!   IPv4 needs 1500-byte packets): failure naming `b`. A veth takes frames up to 4 bytes over
//!   its MTU (the kernel's VLAN allowance), so this finds 1404-byte packets and `--mtu 1354`; a
//!   router namespace with a 1400-byte link between the nodes finds exactly 1400 and `--mtu
//!   1350`. Local interface too small: `ip -n a link set eth0 mtu 1400` instead (`EMSGSIZE`).
//! - `tunnel-port`, blocked port: in `b`, `nft add table inet lab; nft add chain inet lab in
//!   '{ type filter hook input priority -10; }'; nft add rule inet lab in udp dport 8472 drop`,
//!   then wait for `b`'s health to go down (three probes, ~6 s). Silent peer: `ip -n b link set
//!   eth0 down`, or a snapshot with `b` down at an address nothing holds.
//! - `underlay-address`: start `b` with `--public-ip` equal to `a`'s underlay address, or two
//!   peers with the same `--public-ip` (or a snapshot saying so).
//! - `ip-forward`: `ip netns exec a sysctl -w net.ipv4.ip_forward=0` with weftd stopped (a running
//!   weftd restores it at its next resync).
//! - `rp-filter`: `ip netns exec a sysctl -w net.ipv4.conf.weft/vxlan.rp_filter=1` (failure), or
//!   the same on `eth0` (warning); `net.ipv4.conf.all.rp_filter=1` makes both strict.
//! - `forward-policy`: in `a`, `nft add table ip filter; nft add chain ip filter FORWARD
//!   '{ type filter hook forward priority 0; policy drop; }'` (warning), cleared by
//!   `nft add rule ip filter FORWARD ip saddr 10.244.0.0/16 accept` and the same with `daddr`;
//!   or `iptables-legacy -P FORWARD DROP`.
//! - `cni-config`: point [`DoctorConfig::cni_conf_dir`] at a temporary directory holding
//!   `00-other.conflist` beside `10-weft.conflist` (failure naming it), or no weft file at all.
//! - `stale-entries`: a route by hand, with weftd stopped (it prunes at its resync): `ip -n a
//!   route add 10.244.99.0/24 via 10.244.99.0 dev weft.vxlan onlink proto 87` and `ip -n a
//!   neigh add 10.244.99.0 lladdr 02:00:00:00:00:99 dev weft.vxlan nud permanent`, with a
//!   snapshot without such a peer; or an FDB entry, `bridge fdb append 02:00:00:00:09:04 dev
//!   weft.vxlan dst 192.0.2.9 permanent` (its state `PERMANENT|NOARP` counts as permanent).
//! - `pod-cidr`: the kube store with a Node without `spec.podCIDRs` (kube-controller-manager
//!   without `--allocate-node-cidrs`), or a snapshot with store `kube`, no lease and the store's
//!   waiting reason.
//! - `ipam`: a snapshot with `ipam.v4` at 230 of 253 (warning) or 253 of 253 (failure); live, a
//!   small `--node-prefix-v4` and pods enough to fill it.

pub mod checks;
pub mod forward;
pub mod gather;
pub mod path;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::snapshot::Snapshot;
use crate::backend;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Worth a look; the node may still work.
    Warning,
    /// Traffic breaks (or will) until fixed.
    Failure,
}

impl fmt::Display for Verdict {
    /// `ok`, `warning`, `FAILURE` (padding and width flags are honoured).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warning => "warning",
            Verdict::Failure => "FAILURE",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The check's stable name (`mtu`, `ip-forward`, …; see the module table).
    pub check: &'static str,
    pub verdict: Verdict,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it, one line; `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Finding {
    /// An `ok` finding without a fix.
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding::new(check, Verdict::Ok, detail, None::<String>)
    }

    /// A finding of any verdict.
    pub fn new(
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Finding {
        Finding {
            check,
            verdict,
            detail: detail.into(),
            fix: fix.map(Into::into),
        }
    }
}

/// Where and how long `doctor` looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorConfig {
    /// The CNI configuration directory the container runtime reads (`/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// weft's file in it (`10-weft.conflist`, as `deploy/install-cni.sh` writes it).
    pub cni_conf_name: String,
    /// The longest wait for one echo reply (1 s).
    pub probe_timeout: Duration,
    /// Peers probed at once (16).
    pub probe_concurrency: usize,
    /// Peers probed at most, the first by the snapshot's order (32).
    pub max_probed_peers: usize,
    /// The longest wait for a command (`nft`, `iptables-legacy`) or a netlink dump (5 s).
    pub command_timeout: Duration,
    /// Where `/proc/sys` is (tests point it at a fake tree).
    pub proc_sys: PathBuf,
    /// weft's tunnel device names: every backend's by default; add a `--wireguard-device` other
    /// than `weft.wg` here.
    pub tunnel_devices: Vec<String>,
    /// The cluster CIDRs, when known (the snapshot does not carry them): only permanent
    /// neighbour entries inside them count as weft's, and the `forward-policy` fix names them.
    /// Empty: every permanent neighbour entry on weft's devices counts.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Default for DoctorConfig {
    fn default() -> DoctorConfig {
        DoctorConfig {
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_conf_name: "10-weft.conflist".to_string(),
            probe_timeout: Duration::from_secs(1),
            probe_concurrency: 16,
            max_probed_peers: 32,
            command_timeout: Duration::from_secs(5),
            proc_sys: PathBuf::from("/proc/sys"),
            tunnel_devices: backend::all_device_names()
                .iter()
                .map(|n| n.as_str().to_string())
                .collect(),
            cluster_cidrs: Vec::new(),
        }
    }
}

/// The checks that need the daemon's snapshot, named by the `daemon` finding when it is missing.
pub const NEED_SNAPSHOT: [&str; 6] = [
    "mtu",
    "tunnel-port",
    "underlay-address",
    "stale-entries",
    "pod-cidr",
    "ipam",
];

/// Check this node: `snapshot` is what the daemon answered on its control socket, or the one-line
/// reason it did not. One finding per check, in the module table's order; checks that need the
/// snapshot are left out without it (the `daemon` finding names them). Never fails: gathering
/// that cannot be done becomes a warning; every probe and command is bounded by `config`.
pub async fn examine(snapshot: Result<Snapshot, String>, config: &DoctorConfig) -> Vec<Finding> {
    let snap = snapshot.as_ref().ok();
    let pod_cidrs: Vec<IpNet> = snap
        .and_then(|s| s.lease.as_ref())
        .map(|l| l.pod_cidrs.clone())
        .unwrap_or_default();
    let (probes, entries, firewall) = tokio::join!(
        async {
            match snap {
                Some(s) => gather::probe_peers(s, config).await,
                None => Vec::new(),
            }
        },
        async {
            match snap {
                Some(_) => Some(gather::weft_entries(config).await),
                None => None,
            }
        },
        gather::firewall(config),
    );
    let mut findings = vec![checks::daemon(&snapshot)];
    if let Some(s) = snap {
        let total = s.peers.len();
        findings.push(path::mtu(&s.backend, s.pod_mtu, &probes, total));
        findings.push(checks::tunnel_port(&s.backend, &s.peers, &probes));
        findings.push(checks::underlay_address(s));
    }
    findings.push(checks::ip_forward(&gather::forwarding(snap, config)));
    let underlay = snap.and_then(|s| s.underlay.interface.as_deref());
    findings.push(checks::rp_filter(&gather::rp_filter(underlay, config)));
    findings.push(forward::forward_policy(
        &firewall,
        &pod_cidrs,
        &config.cluster_cidrs,
    ));
    findings.push(checks::cni_config(&gather::cni_dir(config)));
    if let (Some(s), Some(entries)) = (snap, entries) {
        findings.push(checks::stale_entries(s, &entries));
        findings.push(checks::pod_cidr(s));
        findings.push(checks::ipam(s));
    }
    findings
}

/// The findings for people: one line per check, `VERDICT  CHECK  DETAIL` in aligned columns, a
/// `fix: …` line under each that has one, and a summary line (`11 checks: 9 ok, 1 warning,
/// 1 failure`). Ends with a newline.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for finding in findings {
        let detail = one_line(&finding.detail);
        out.push_str(&format!(
            "{:<8} {:<width$}  {detail}\n",
            finding.verdict, finding.check
        ));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("{:<8} fix: {}\n", "", one_line(fix)));
        }
    }
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    out.push_str(&format!(
        "{}: {} ok, {}, {}\n",
        counted(findings.len(), "check", "checks"),
        count(Verdict::Ok),
        counted(count(Verdict::Warning), "warning", "warnings"),
        counted(count(Verdict::Failure), "failure", "failures"),
    ));
    out
}

/// `1 peer`, `2 peers`.
pub(crate) fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Line breaks in a detail or fix become spaces, so every finding stays one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The exit status of `weftd doctor`: 1 when any check failed, else 0 (warnings included).
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.verdict == Verdict::Failure))
}
