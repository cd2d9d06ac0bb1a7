//! The doctor's I/O: reading what the node shows into plain facts for the pure checks. Nothing
//! here decides anything, panics or waits unboundedly: every ping is bounded by
//! [`DoctorConfig::probe_timeout`], every command and netlink dump by
//! [`DoctorConfig::command_timeout`], and what cannot be read is kept as a [`GatherError`] for the
//! finding to report (most often: it needs root).
//!
//! - [`probe_peers`]: a plain echo to each peer's underlay address, then the path-MTU probe
//!   ([`super::path::measure`]) at the tunnel's packet size; raw ICMP sockets (`CAP_NET_RAW`);
//! - [`forwarding`], [`rp_filter`]: files under `/proc/sys` (readable without root);
//! - [`firewall`]: `nft -j list ruleset` and `iptables-legacy -S FORWARD` (root);
//! - [`cni_dir`]: the CNI configuration directory's file names and weft's file;
//! - [`weft_entries`]: netlink dumps of weft's routes, neighbour and FDB entries (no root).

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

use super::path::{self, PathProbe, Probe};
use super::DoctorConfig;
use crate::backend::vxlan::driver::{self as vxlan_driver, ROUTE_PROTOCOL};
use crate::datapath::{netns, nl};
use crate::inspect::icmp;
use crate::inspect::snapshot::{PeerView, Snapshot};
use crate::node::sysctl::{self, Setting};

/// Why something could not be gathered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// Refused for want of privilege (`EPERM`, `EACCES`, "you must be root").
    #[error("{what} needs root ({reason})")]
    NeedsRoot { what: String, reason: String },
    /// The program is not installed (not on `PATH`).
    #[error("{program} is not installed")]
    Missing { program: String },
    /// No answer within the bound.
    #[error("{what}: no answer within {} ms", after.as_millis())]
    Timeout { what: String, after: Duration },
    /// Anything else, with the error's text.
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
}

impl GatherError {
    /// `what` failed with `error`, classified by its kind.
    pub fn from_io(what: impl Into<String>, error: &io::Error) -> GatherError {
        let what = what.into();
        let reason = error.to_string();
        match error.kind() {
            io::ErrorKind::PermissionDenied => GatherError::NeedsRoot { what, reason },
            _ => GatherError::Failed { what, reason },
        }
    }

    /// Whether running as root would have helped.
    pub fn needs_root(&self) -> bool {
        matches!(self, GatherError::NeedsRoot { .. })
    }
}

/// What probing one peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProbe {
    pub node: String,
    /// Its underlay address, where its tunnel packets go.
    pub endpoint: IpAddr,
    /// Whether it answers a plain (small, fragmentable) echo there, within two tries.
    pub underlay: Result<bool, GatherError>,
    /// The path-MTU probe; `None` when not run (no pod MTU, no tunnel, or no underlay answer).
    pub path: Option<PathProbe>,
}

/// The forwarding settings weft needs for the node's pod families, and their values as read
/// (`None`: unreadable), in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    pub settings: Vec<Setting>,
    pub observed: Vec<Option<String>>,
}

/// `net/ipv4/conf/*/rp_filter` values: 0 off, 1 strict, 2 loose; `None` unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpFilter {
    pub all: Option<u8>,
    /// What interfaces created from now on get (weft re-creates its devices at times).
    pub default: Option<u8>,
    pub interfaces: Vec<RpInterface>,
}

/// One interface's own `rp_filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpInterface {
    pub name: String,
    /// One of weft's tunnel devices (else the underlay interface).
    pub tunnel: bool,
    /// `None`: no such interface (or unreadable).
    pub value: Option<u8>,
}

/// The host firewall's listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallFacts {
    /// `nft -j list ruleset`'s output.
    pub nft: Result<String, GatherError>,
    /// `iptables-legacy -S FORWARD` and `ip6tables-legacy -S FORWARD` outputs, by program, for
    /// those installed.
    pub legacy: Vec<(String, Result<String, GatherError>)>,
}

/// The CNI configuration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniDir {
    pub dir: PathBuf,
    /// weft's file name in it (`10-weft.conflist`).
    pub weft_name: String,
    /// The names of the non-directory entries, in no particular order.
    pub files: Result<Vec<String>, GatherError>,
    /// weft's file's text, when the listing has it.
    pub weft_conf: Option<Result<String, GatherError>>,
}

/// A route, neighbour or FDB entry weft made on one of its devices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum WeftEntry {
    /// A main-table route with protocol 87 through a weft device.
    Route { dev: String, dst: IpNet },
    /// A permanent neighbour entry on a VXLAN device (a peer's gateway → its VTEP MAC).
    Neighbour { dev: String, ip: IpAddr },
    /// A permanent FDB entry with a remote on a VXLAN device (a VTEP MAC → a peer's underlay).
    Fdb {
        dev: String,
        mac: String,
        dst: IpAddr,
    },
}

impl std::fmt::Display for WeftEntry {
    /// As `ip route`, `ip neigh` and `bridge fdb` show them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeftEntry::Route { dev, dst } => write!(f, "route {dst} dev {dev}"),
            WeftEntry::Neighbour { dev, ip } => write!(f, "neighbour {ip} dev {dev}"),
            WeftEntry::Fdb { dev, mac, dst } => write!(f, "fdb {mac} dst {dst} dev {dev}"),
        }
    }
}

/// Echo payload of the plain underlay ping (`ping`'s default).
const PLAIN_PAYLOAD: usize = 56;

/// Probe the snapshot's first [`DoctorConfig::max_probed_peers`] peers, at most
/// [`DoctorConfig::probe_concurrency`] at once; in the snapshot's order.
pub async fn probe_peers(snapshot: &Snapshot, config: &DoctorConfig) -> Vec<PeerProbe> {
    let peers = snapshot.peers.iter().take(config.max_probed_peers);
    futures::stream::iter(peers)
        .map(|peer| {
            probe_peer(
                peer,
                &snapshot.backend,
                snapshot.pod_mtu,
                config.probe_timeout,
            )
        })
        .buffered(config.probe_concurrency.max(1))
        .collect()
        .await
}

/// A plain echo to the peer's underlay address (twice, if the first is lost), then, when it
/// answered and the tunnel's packet size is known, the path-MTU probe.
async fn probe_peer(
    peer: &PeerView,
    backend: &str,
    pod_mtu: Option<u32>,
    timeout: Duration,
) -> PeerProbe {
    let endpoint = peer.endpoint;
    let plain = path::packet_of_payload(PLAIN_PAYLOAD, endpoint.is_ipv6());
    let mut underlay = Ok(false);
    for _ in 0..2 {
        underlay = sized_echo(endpoint, plain, false, timeout)
            .await
            .map(|probe| probe == Probe::Reply);
        if !matches!(underlay, Ok(false)) {
            break;
        }
    }
    let needed = pod_mtu.and_then(|mtu| path::tunnel_packet(backend, mtu, &endpoint));
    let path = match (&underlay, needed) {
        (Ok(true), Some(needed)) => Some(PathProbe {
            needed,
            outcome: path::measure(needed, plain, |size| {
                sized_echo(endpoint, size, true, timeout)
            })
            .await,
        }),
        _ => None,
    };
    PeerProbe {
        node: peer.node.clone(),
        endpoint,
        underlay,
        path,
    }
}

/// One echo whose IP packet is `packet` bytes long, fragmentation forbidden when
/// `dont_fragment`: answered, lost (`ENOBUFS` too: dropped on its way out), or refused by the
/// local interface (`EMSGSIZE`).
async fn sized_echo(
    target: IpAddr,
    packet: u32,
    dont_fragment: bool,
    timeout: Duration,
) -> Result<Probe, GatherError> {
    let payload = path::echo_payload(packet, target.is_ipv6());
    let what = || format!("ICMP echo to {target} (a raw socket)");
    // icmp::ping waits `timeout` for the reply; the outer bound covers the send.
    let ping = icmp::ping(target, payload, dont_fragment, timeout);
    match tokio::time::timeout(timeout + Duration::from_millis(200), ping).await {
        Err(_) | Ok(Ok(None)) => Ok(Probe::Lost),
        Ok(Ok(Some(_))) => Ok(Probe::Reply),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => Ok(Probe::TooBigLocally),
        // Dropped on its way out (an IPv6 raw socket hears of a veth whose peer's MTU is
        // smaller): as good as lost.
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Probe::Lost),
        Ok(Err(e)) => Err(GatherError::from_io(what(), &e)),
    }
}

/// The forwarding settings for the node's pod families (IPv4 unless the lease holds IPv6 pod
/// CIDRs only; IPv6 when it holds one) and their values under [`DoctorConfig::proc_sys`].
pub fn forwarding(snapshot: Option<&Snapshot>, config: &DoctorConfig) -> Forwarding {
    let cidrs = snapshot
        .and_then(|s| s.lease.as_ref())
        .map(|l| &l.pod_cidrs);
    let v4 = cidrs.is_none_or(|c| c.iter().any(|n| matches!(n, IpNet::V4(_))));
    let v6 = cidrs.is_some_and(|c| c.iter().any(|n| matches!(n, IpNet::V6(_))));
    let settings = sysctl::desired(v4, v6);
    let observed = settings
        .iter()
        .map(|s| {
            let relative = s.path.trim_start_matches("/proc/sys/");
            std::fs::read_to_string(config.proc_sys.join(relative)).ok()
        })
        .collect();
    Forwarding { settings, observed }
}

/// `rp_filter` of `all`, `default`, each of weft's tunnel devices and the underlay interface.
pub fn rp_filter(underlay: Option<&str>, config: &DoctorConfig) -> RpFilter {
    let conf = config.proc_sys.join("net/ipv4/conf");
    let read = |name: &str| -> Option<u8> {
        let text = std::fs::read_to_string(conf.join(name).join("rp_filter")).ok()?;
        text.trim().parse().ok()
    };
    let mut interfaces: Vec<RpInterface> = config
        .tunnel_devices
        .iter()
        .map(|name| RpInterface {
            name: name.clone(),
            tunnel: true,
            value: read(name),
        })
        .collect();
    if let Some(name) = underlay {
        interfaces.push(RpInterface {
            name: name.to_string(),
            tunnel: false,
            value: read(name),
        });
    }
    RpFilter {
        all: read("all"),
        default: read("default"),
        interfaces,
    }
}

/// `nft -j list ruleset`, and the legacy iptables' FORWARD chains where those are installed.
pub async fn firewall(config: &DoctorConfig) -> FirewallFacts {
    let timeout = config.command_timeout;
    let nft = run("nft", &["-j", "list", "ruleset"], timeout).await;
    let mut legacy = Vec::new();
    for program in ["iptables-legacy", "ip6tables-legacy"] {
        match run(program, &["-S", "FORWARD"], timeout).await {
            Err(GatherError::Missing { .. }) => {}
            result => legacy.push((program.to_string(), result)),
        }
    }
    FirewallFacts { nft, legacy }
}

/// Run `program ARGS` without input; its standard output, or why not. A program still running
/// after `timeout` is killed.
async fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, GatherError> {
    let what = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(GatherError::Timeout {
                what,
                after: timeout,
            })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(GatherError::Missing {
                program: program.to_string(),
            })
        }
        Ok(Err(e)) => return Err(GatherError::from_io(what, &e)),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let reason = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let refused = [
        "Operation not permitted",
        "Permission denied",
        "must be root",
    ];
    match refused.iter().any(|r| reason.contains(r)) {
        true => Err(GatherError::NeedsRoot { what, reason }),
        false => Err(GatherError::Failed { what, reason }),
    }
}

/// The CNI directory's file names, and weft's file's text when it is there.
pub fn cni_dir(config: &DoctorConfig) -> CniDir {
    let dir = config.cni_conf_dir.clone();
    let weft_name = config.cni_conf_name.clone();
    let files = list_files(&dir);
    let weft_conf = match &files {
        Ok(names) if names.contains(&weft_name) => Some(
            std::fs::read_to_string(dir.join(&weft_name))
                .map_err(|e| GatherError::from_io(format!("read {weft_name}"), &e)),
        ),
        _ => None,
    };
    CniDir {
        dir,
        weft_name,
        files,
        weft_conf,
    }
}

/// The names of `dir`'s entries that are not directories.
fn list_files(dir: &Path) -> Result<Vec<String>, GatherError> {
    let what = || format!("list {}", dir.display());
    let entries = std::fs::read_dir(dir).map_err(|e| GatherError::from_io(what(), &e))?;
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// weft's routes (protocol 87) through its tunnel devices, and the permanent neighbour and FDB
/// entries on its VXLAN devices (neighbours inside [`DoctorConfig::cluster_cidrs`], or all when
/// none are given), read over netlink in this thread's namespace.
pub async fn weft_entries(config: &DoctorConfig) -> Result<Vec<WeftEntry>, GatherError> {
    let what = "netlink dump of weft's routes and entries";
    let handle = netns::connect_here().map_err(|e| GatherError::from_io(what, &e))?;
    let dump = dump_entries(&handle, &config.tunnel_devices, &config.cluster_cidrs);
    match tokio::time::timeout(config.command_timeout, dump).await {
        Err(_) => Err(GatherError::Timeout {
            what: what.to_string(),
            after: config.command_timeout,
        }),
        Ok(result) => result.map_err(|e| GatherError::Failed {
            what: what.to_string(),
            reason: e.to_string(),
        }),
    }
}

async fn dump_entries(
    handle: &Handle,
    devices: &[String],
    cluster_cidrs: &[IpNet],
) -> Result<Vec<WeftEntry>, rtnetlink::Error> {
    let mut indexes = BTreeMap::new();
    for name in devices {
        if let Some(link) = nl::link_by_name(handle, name).await? {
            indexes.insert(link.header.index, name.clone());
        }
    }
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for view in nl::main_routes(handle, family).await? {
            let dev = view.oif.and_then(|i| indexes.get(&i));
            let ours = view.message.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL);
            if let (Some(dev), true) = (dev, ours) {
                entries.push(WeftEntry::Route {
                    dev: dev.clone(),
                    dst: view.dst,
                });
            }
        }
    }
    // 0.0.0.0/0 and ::/0.
    let everything = [IpNet::V4(Default::default()), IpNet::V6(Default::default())];
    let cidrs = match cluster_cidrs.is_empty() {
        true => &everything[..],
        false => cluster_cidrs,
    };
    let vxlan = vxlan_driver::observe(handle, cidrs).await?;
    entries.extend(vxlan.neighbours.values().map(|n| WeftEntry::Neighbour {
        dev: n.dev.as_str().to_string(),
        ip: n.ip,
    }));
    entries.extend(vxlan.fdb.values().map(|f| WeftEntry::Fdb {
        dev: f.dev.as_str().to_string(),
        mac: f.mac.to_string(),
        dst: f.dst,
    }));
    Ok(entries)
}
