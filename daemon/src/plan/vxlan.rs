//! The VXLAN plan: this node's lease and its peers' leases → the desired [`Datapath`], and the peers
//! refused, each with its reason.
//!
//! # What a peer must not claim
//!
//! Every check runs on every peer; a peer that fails any of them programs nothing at all, and is
//! listed in [`Plan::refused`] with every reason found. Checks of one peer alone:
//!
//! - it carries this node's own name, or it runs another backend than VXLAN;
//! - a pod CIDR (of a family this node runs a device for) has host bits set, is a default route
//!   (prefix 0), lies outside the cluster CIDRs, overlaps this node's own pod CIDR, or overlaps a
//!   service CIDR (inside it or around it);
//! - its VTEP MAC for such a family is missing, is not a unicast address, or is this node's own
//!   MAC for that device;
//! - it publishes no underlay address of the family the tunnels use (the family of `local`);
//! - any underlay address it publishes is not unicast (unspecified, loopback, multicast,
//!   broadcast), is one of this node's own underlay addresses (the Vagrant trap: every VM has
//!   10.0.2.15 on its NAT interface), or lies inside a cluster CIDR, a service CIDR, this node's
//!   pod CIDRs or its own pod CIDRs — an underlay address routed into the overlay would loop. (It
//!   is not checked against other peers' pod CIDRs: an accepted one lies inside the cluster CIDRs
//!   anyway, and a refused peer's claim must not refuse anyone else.)
//!
//! Then, among the peers that passed those checks, come the conflicts between peers: overlapping
//! pod CIDRs, the same VTEP MAC on a device, the same underlay address. They are settled by
//! **incumbency**. [`desired`] is given the [`Incumbents`]: the claims of the peers the previous
//! plan accepted (the plan this node is programming, [`Plan::accepted`]), each as the peer's name
//! with the exact value — its pod CIDR of a family, its VTEP MAC on a device, its underlay address.
//!
//! - A claim held by an incumbent stays: the incumbent keeps its routes, neighbour and FDB entries,
//!   and every newcomer conflicting with it is refused ("… already programmed for b"). A newcomer
//!   is a claim not held: a peer not accepted before, or an accepted peer whose record changed to
//!   a new value (b moving its pod CIDR onto c's loses, and c keeps it). Being refused, such a peer
//!   programs nothing at all — its unchanged claims included — and holds nothing at the next plan.
//! - A conflict no claimant holds (at start-up, when [`Incumbents::default`] is passed and a
//!   hostile record is already present; or between two newcomers) refuses **every** claimant, as
//!   we cannot know who is honest: keeping the first by name would let an attacker win by choosing
//!   a name that sorts first, keeping the oldest needs a clock we do not trust, and routing a pod
//!   CIDR to the wrong node sends its traffic to whoever lied. That costs availability (a peer can
//!   deny service to the node it imitates, until the operator removes the false record) but never
//!   diverts traffic, and the refusal names both sides for the operator. Arbitrating is the
//!   store's job, not the plan's: an honest agent claims its subnet there atomically (etcd claims
//!   are compare-and-swap guarded), so honest records never overlap; the plan, which sees only
//!   the records, can only refuse what it cannot trust.
//! - Two leases carrying the same node name are both refused, whatever they held (the stores key
//!   peers by name, so this does not happen short of a broken store; for the same reason two
//!   incumbents never conflict otherwise: the claims of one plan's accepted peers are disjoint).
//!
//! Incumbency is local to this node and to its lifetime: another node may have seen the records
//! arrive in another order, and this one starts every run with none (so a false record present at
//! a restart refuses the peer it imitates too, until the store is fixed). Conflicts with this
//! node's **own** pod CIDR, VTEP MAC or underlay address are not conflicts between peers: this
//! node is the incumbent of its own, and the peer is refused whatever it held (checked above). A
//! peer refused on its own checks (a /16 covering this node's pod CIDR, say) takes no part in the
//! conflict checks, so its claim cannot knock out honest peers; peers not party to a conflict are
//! never affected. The other side of that rule: an incumbent refused on its own checks (its record
//! went bad) holds nothing from then on, and a claim on its pod CIDR is judged without it.
//!
//! Families this node runs no device for are not checked (they program nothing), so a cluster
//! moving from single to dual stack keeps its IPv4 tunnels while nodes change over. A peer with no
//! pod CIDR of a family this node runs has nothing to program for it and is not refused for that.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_proto::lease::{Backend, BackendData, Lease, MacAddr, PodCidrs, PublicIps};
use weft_proto::names::{IfName, NodeName};

use super::state::{Address, Datapath, Fdb, Neighbour, Route, VxlanDevice};
use crate::config::Config;

/// UDP port of both VXLAN devices (the Linux and flannel default).
pub const VXLAN_PORT: u16 = 8472;
/// Encapsulation overhead over an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V4_UNDERLAY: u32 = 50;
/// Encapsulation overhead over an IPv6 underlay: outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V6_UNDERLAY: u32 = 70;

/// What the plan needs from the configuration and the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// The cluster's pod CIDRs, at most one per family. A peer's pod CIDR must lie inside the one
    /// of its family. Empty (or missing a family) refuses every peer with a pod CIDR of that family:
    /// without the cluster range an honest claim cannot be told from a hijack.
    pub cluster_cidrs: Vec<IpNet>,
    /// The service CIDRs; a peer's pod CIDR must not overlap them and a peer's underlay address
    /// must not lie in them. Empty when the operator gave none: that check is then skipped.
    pub service_cidrs: Vec<IpNet>,
    /// MTU of the underlay interface (the one holding `local`); the devices' MTU derives from it.
    pub underlay_mtu: u32,
    /// An explicit MTU for the VXLAN devices (`--mtu`); `None` derives it from `underlay_mtu`.
    pub mtu: Option<u32>,
    /// The prefix length every node's IPv4 / IPv6 pod CIDR has (`--node-prefix-v4/-v6`): a peer
    /// claiming a wider or narrower one is refused, so one record cannot squat on a range that
    /// honest nodes will later claim. `None` skips the check.
    pub node_prefix_v4: Option<u8>,
    pub node_prefix_v6: Option<u8>,
}

impl PlanConfig {
    /// The overlay MTU (VXLAN devices and pod interfaces) over an underlay of `family`: the
    /// configured one, else the underlay MTU less the encapsulation.
    pub fn overlay_mtu(&self, underlay: Family) -> u32 {
        self.mtu
            .unwrap_or(self.underlay_mtu.saturating_sub(underlay.overhead()))
    }

    /// From the daemon's configuration and the MTU of the underlay interface it found.
    pub fn new(config: &Config, underlay_mtu: u32) -> PlanConfig {
        PlanConfig {
            cluster_cidrs: config
                .pool_v4
                .iter()
                .chain(config.pool_v6.iter())
                .map(|pool| pool.cluster)
                .collect(),
            service_cidrs: config.service_cidrs.clone(),
            underlay_mtu,
            mtu: config.mtu,
            node_prefix_v4: config.pool_v4.map(|p| p.prefix_len),
            node_prefix_v6: config.pool_v6.map(|p| p.prefix_len),
        }
    }
}

/// A peer refused: it programs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub node: NodeName,
    /// Every problem found, `; `-separated, each naming the value (and the other peer, for a
    /// conflict).
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} refused: {}", self.node, self.reason)
    }
}

/// The outcome of [`desired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What the kernel should hold.
    pub datapath: Datapath,
    /// Peers that program nothing, by node name; empty when every peer was accepted.
    pub refused: Vec<Refusal>,
    /// The claims of the peers this plan programs: what to pass to the next [`desired`] once this
    /// plan is the one being programmed (see [`Incumbents`]).
    pub accepted: Incumbents,
}

/// Claims that win a conflict: for each peer a plan accepted and programs something for, its pod
/// CIDR and VTEP MAC of each family this node runs, and its underlay address of the tunnels'
/// family — the exact values programmed. Made only by [`desired`] ([`Plan::accepted`]), so its
/// claims never conflict with one another; [`Incumbents::default`] holds nothing (start-up: every
/// claimant of a conflict is refused). See the [module documentation](self) for the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incumbents {
    held: BTreeMap<NodeName, Held>,
}

/// What one accepted peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// Per family this node runs: the pod CIDR and VTEP MAC programmed.
    entries: Vec<(Family, IpNet, MacAddr)>,
    /// The underlay address its FDB entries send to.
    underlay: IpAddr,
}

impl Incumbents {
    /// Whether no peer holds anything.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The peers holding claims, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.held.keys()
    }

    /// Whether `node` holds exactly `cidr` as its pod CIDR.
    pub fn holds_pod_cidr(&self, node: &NodeName, cidr: &IpNet) -> bool {
        self.held
            .get(node)
            .is_some_and(|h| h.entries.iter().any(|(_, c, _)| c == cidr))
    }

    /// Whether `node` holds `mac` as its VTEP MAC on the device of `family`.
    pub fn holds_vtep_mac(&self, node: &NodeName, family: Family, mac: MacAddr) -> bool {
        self.held
            .get(node)
            .is_some_and(|h| h.entries.iter().any(|&(f, _, m)| f == family && m == mac))
    }

    /// Whether `node` holds `ip` as its underlay address.
    pub fn holds_underlay(&self, node: &NodeName, ip: IpAddr) -> bool {
        self.held.get(node).is_some_and(|h| h.underlay == ip)
    }
}

/// This node's own lease cannot be planned. Nothing should be applied then: the datapath keeps
/// what it has rather than dropping every tunnel over a local mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("this node ({node}) runs the {backend} backend, not vxlan")]
    NotVxlan { node: NodeName, backend: Backend },
    #[error("this node ({node}) has no underlay address in its lease")]
    NoUnderlay { node: NodeName },
    #[error(
        "this node ({node}) holds {family} pod CIDR {cidr} but its lease has no VTEP MAC for {dev}"
    )]
    NoVtepMac {
        node: NodeName,
        family: Family,
        cidr: IpNet,
        dev: IfName,
    },
}

/// A pod family, and the device that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `weft.vxlan` or `weft-v6.vxlan`.
    pub fn device_name(self) -> IfName {
        let name = match self {
            Family::V4 => "weft.vxlan",
            Family::V6 => "weft-v6.vxlan",
        };
        // Both constants are valid interface names (checked by a test).
        IfName::new(name).expect("constant device names are valid")
    }

    /// VNI 1 for IPv4 pods, 2 for IPv6 pods.
    pub fn vni(self) -> u32 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn pod_cidr(self, cidrs: &PodCidrs) -> Option<IpNet> {
        match self {
            Family::V4 => cidrs.v4.map(IpNet::V4),
            Family::V6 => cidrs.v6.map(IpNet::V6),
        }
    }

    pub fn public_ip(self, ips: &PublicIps) -> Option<IpAddr> {
        match self {
            Family::V4 => ips.v4.map(IpAddr::V4),
            Family::V6 => ips.v6.map(IpAddr::V6),
        }
    }

    /// The VTEP MAC a VXLAN node publishes for this family; `None` for another backend too.
    pub fn vtep_mac(self, backend: &BackendData) -> Option<MacAddr> {
        match (self, backend) {
            (Family::V4, BackendData::Vxlan { vtep_mac, .. }) => *vtep_mac,
            (Family::V6, BackendData::Vxlan { vtep_mac_v6, .. }) => *vtep_mac_v6,
            (_, BackendData::WireGuard { .. }) => None,
        }
    }

    /// Encapsulation overhead over an underlay of this family.
    fn overhead(self) -> u32 {
        match self {
            Family::V4 => OVERHEAD_V4_UNDERLAY,
            Family::V6 => OVERHEAD_V6_UNDERLAY,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One of this node's devices: the family, its own pod CIDR, its MAC.
struct OwnDevice {
    family: Family,
    cidr: IpNet,
    mac: MacAddr,
}

/// A peer under examination.
struct Candidate<'a> {
    lease: &'a Lease,
    /// Per family this node runs: the peer's pod CIDR and VTEP MAC.
    entries: Vec<(Family, IpNet, MacAddr)>,
    /// The peer's underlay address of the tunnels' family.
    underlay: Option<IpAddr>,
    /// Problems of this peer alone.
    problems: Vec<String>,
    /// Conflicts with other peers: what conflicts → with whom.
    conflicts: BTreeMap<String, Others>,
}

/// The other side of a conflict: the first few, and how many in all.
#[derive(Default)]
struct Others {
    shown: Vec<String>,
    count: usize,
    /// No single claimant held the claim, so every claimant is refused (rather than this one
    /// losing to an incumbent).
    open: bool,
}

impl fmt::Display for Others {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown.join(", "))?;
        if self.count > self.shown.len() {
            write!(f, " and {} more", self.count - self.shown.len())?;
        }
        Ok(())
    }
}

/// How many of a conflict's other parties a reason names.
const SHOWN: usize = 3;

/// The desired VXLAN datapath of the node holding `own`, given its peers' leases and the claims
/// the previous plan accepted.
///
/// `peers` are the other nodes (the stores leave this node out; a peer carrying this node's name is
/// refused). They are examined in node-name order, so the result does not depend on the order
/// given. `incumbents` settles conflicts between peers: pass the [`Plan::accepted`] of the plan
/// being programmed, or [`Incumbents::default`] at start-up (see the [module documentation](self)).
/// Pure; cost: O(n log n) in the number of peers.
pub fn desired<'a>(
    own: &Lease,
    peers: impl IntoIterator<Item = &'a Lease>,
    config: &PlanConfig,
    incumbents: &Incumbents,
) -> Result<Plan, PlanError> {
    if let BackendData::WireGuard { .. } = own.backend {
        return Err(PlanError::NotVxlan {
            node: own.node.clone(),
            backend: own.backend.backend(),
        });
    }
    let local = Family::V4
        .public_ip(&own.public_ips)
        .or(Family::V6.public_ip(&own.public_ips))
        .ok_or_else(|| PlanError::NoUnderlay {
            node: own.node.clone(),
        })?;
    let underlay = Family::of(&local);
    let mtu = config.overlay_mtu(underlay);

    let mut own_devices = Vec::new();
    for family in Family::ALL {
        let Some(cidr) = family.pod_cidr(&own.pod_cidrs) else {
            continue;
        };
        let mac = family
            .vtep_mac(&own.backend)
            .ok_or_else(|| PlanError::NoVtepMac {
                node: own.node.clone(),
                family,
                cidr,
                dev: family.device_name(),
            })?;
        own_devices.push(OwnDevice { family, cidr, mac });
    }

    let mut datapath = Datapath::default();
    for d in &own_devices {
        let name = d.family.device_name();
        datapath.insert_device(VxlanDevice {
            name: name.clone(),
            vni: d.family.vni(),
            port: VXLAN_PORT,
            local,
            mac: d.mac,
            mtu,
            learning: false,
            up: true,
        });
        datapath.insert_address(Address {
            dev: name,
            address: host_prefix(d.cidr.network()),
        });
    }

    let mut peers: Vec<&Lease> = peers.into_iter().collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    let mut candidates: Vec<Candidate> = peers
        .into_iter()
        .map(|peer| examine(peer, own, &own_devices, underlay, config))
        .collect();
    find_conflicts(&mut candidates, incumbents);

    let mut refused = Vec::new();
    let mut accepted = Incumbents::default();
    for c in &candidates {
        if c.problems.is_empty() && c.conflicts.is_empty() {
            program(&mut datapath, c);
            if let (Some(underlay), false) = (c.underlay, c.entries.is_empty()) {
                accepted.held.insert(
                    c.lease.node.clone(),
                    Held {
                        entries: c.entries.clone(),
                        underlay,
                    },
                );
            }
        } else {
            let mut reasons = c.problems.clone();
            reasons.extend(c.conflicts.iter().map(
                |(what, others)| match others.shown.is_empty() {
                    true => what.clone(),
                    false => format!("{what} {others}"),
                },
            ));
            if c.conflicts.values().any(|others| others.open) {
                reasons.push(
                    "where no claimant held it before, every claimant is refused".to_string(),
                );
            }
            refused.push(Refusal {
                node: c.lease.node.clone(),
                reason: reasons.join("; "),
            });
        }
    }
    Ok(Plan {
        datapath,
        refused,
        accepted,
    })
}

/// The checks of one peer alone.
fn examine<'a>(
    peer: &'a Lease,
    own: &Lease,
    own_devices: &[OwnDevice],
    underlay: Family,
    config: &PlanConfig,
) -> Candidate<'a> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    if peer.node == own.node {
        problems.push("carries this node's own name".to_string());
    }
    if let BackendData::WireGuard { .. } = peer.backend {
        problems.push(format!(
            "runs the {} backend, not vxlan",
            peer.backend.backend()
        ));
    }
    let vxlan = matches!(peer.backend, BackendData::Vxlan { .. });
    for d in own_devices {
        let Some(cidr) = d.family.pod_cidr(&peer.pod_cidrs) else {
            continue;
        };
        if cidr.trunc() != cidr {
            problems.push(format!("pod CIDR {cidr} has host bits set"));
        }
        let expected_len = if cidr.addr().is_ipv4() {
            config.node_prefix_v4
        } else {
            config.node_prefix_v6
        };
        if let Some(len) = expected_len.filter(|len| *len != cidr.prefix_len()) {
            problems.push(format!(
                "pod CIDR {cidr} is not a /{len}, the size of every node's pod CIDR"
            ));
        }
        if cidr.prefix_len() == 0 {
            problems.push(format!("pod CIDR {cidr} is a default route"));
        } else if !config.cluster_cidrs.iter().any(|c| c.contains(&cidr)) {
            problems.push(format!(
                "pod CIDR {cidr} lies outside the cluster CIDRs ({})",
                net_list(&config.cluster_cidrs)
            ));
        }
        if overlap(&cidr, &d.cidr) {
            problems.push(format!(
                "pod CIDR {cidr} overlaps this node's pod CIDR {}",
                d.cidr
            ));
        }
        for service in &config.service_cidrs {
            if overlap(&cidr, service) {
                problems.push(format!(
                    "pod CIDR {cidr} overlaps the service CIDR {service}"
                ));
            }
        }
        if vxlan {
            match d.family.vtep_mac(&peer.backend) {
                None => problems.push(format!(
                    "publishes no VTEP MAC for its {} pod CIDR {cidr}",
                    d.family
                )),
                Some(mac) if mac.0 == [0; 6] || mac.0[0] & 1 == 1 => {
                    problems.push(format!("VTEP MAC {mac} is not a unicast address"))
                }
                Some(mac) if mac == d.mac => problems.push(format!(
                    "VTEP MAC {mac} is this node's own on {}",
                    d.family.device_name()
                )),
                Some(mac) => entries.push((d.family, cidr, mac)),
            }
        }
    }

    let tunnel_ip = underlay.public_ip(&peer.public_ips);
    if tunnel_ip.is_none() && !entries.is_empty() {
        problems.push(format!(
            "publishes no {underlay} underlay address, and this node's tunnels run over {underlay}"
        ));
    }
    // Its pod CIDRs of the families this node runs (the others are not looked at).
    let peer_cidrs: Vec<IpNet> = own_devices
        .iter()
        .filter_map(|d| d.family.pod_cidr(&peer.pod_cidrs))
        .collect();
    for ip in Family::ALL
        .iter()
        .filter_map(|f| f.public_ip(&peer.public_ips))
    {
        problems.extend(check_public_ip(ip, &peer_cidrs, own, config));
    }

    Candidate {
        lease: peer,
        entries,
        underlay: tunnel_ip,
        problems,
        conflicts: BTreeMap::new(),
    }
}

/// What is wrong with a peer's underlay address `ip`, if anything.
fn check_public_ip(
    ip: IpAddr,
    peer_cidrs: &[IpNet],
    own: &Lease,
    config: &PlanConfig,
) -> Vec<String> {
    let mut problems = Vec::new();
    let not_unicast = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback() || v6.is_multicast(),
    };
    if not_unicast {
        problems.push(format!("underlay address {ip} is not a unicast address"));
    }
    if Family::of(&ip).public_ip(&own.public_ips) == Some(ip) {
        problems.push(format!(
            "underlay address {ip} is this node's own (nodes sharing one address, such as \
             Vagrant's 10.0.2.15 NAT address, need --iface or --public-ip)"
        ));
    }
    let ranges = (config
        .cluster_cidrs
        .iter()
        .map(|n| ("the cluster CIDR", *n)))
    .chain(
        config
            .service_cidrs
            .iter()
            .map(|n| ("the service CIDR", *n)),
    )
    .chain(own.pod_cidrs.iter().map(|n| ("this node's pod CIDR", n)))
    .chain(peer_cidrs.iter().map(|n| ("its own pod CIDR", *n)));
    for (what, net) in ranges {
        if net.contains(&ip) {
            problems.push(format!("underlay address {ip} lies inside {what} {net}"));
        }
    }
    problems
}

/// A conflict found: `who` is told `what`, naming the first others and counting them all.
struct Found {
    who: usize,
    what: String,
    shown: Vec<String>,
    count: usize,
    /// See [`Others::open`].
    open: bool,
}

/// A pod CIDR claimed by an eligible peer, as an interval.
struct Span {
    lo: u128,
    hi: u128,
    /// The claimant (an index into the candidates).
    who: usize,
    cidr: IpNet,
    /// Whether the claimant holds exactly this CIDR (an incumbent).
    held: bool,
}

/// Conflicts between peers that passed their own checks and program something, settled by
/// incumbency (see the module documentation). Linear in the number of conflicts: a group of k
/// claimants of one MAC costs O(k), not O(k²).
fn find_conflicts(candidates: &mut [Candidate], incumbents: &Incumbents) {
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].problems.is_empty() && !candidates[i].entries.is_empty())
        .collect();
    let node = |i: usize| &candidates[i].lease.node;
    let name = |i: usize| node(i).to_string();
    let mut found: Vec<Found> = Vec::new();

    // Node names (candidates are sorted by name): incumbency cannot tell such leases apart.
    let names = eligible.iter().map(|&i| (node(i).clone(), i));
    for (_, group) in groups(names) {
        for &i in &group {
            found.push(Found {
                who: i,
                what: "another lease carries the same node name".to_string(),
                shown: Vec::new(),
                count: 0,
                open: true,
            });
        }
    }

    for family in Family::ALL {
        // Pod CIDRs: as intervals sorted by start, widest first, one sweep pairs every CIDR that
        // lies inside an earlier one with the earlier one reaching furthest (which contains it,
        // prefixes being nested or disjoint), and with the earlier held one reaching furthest
        // (which contains it too, if any held one does). So every claimant of an overlap is in a
        // pair, every claim inside a held one is paired with a holder, and every two overlapping
        // held claims are paired with each other.
        let mut spans: Vec<Span> = Vec::new();
        for &i in &eligible {
            for &(f, cidr, _) in &candidates[i].entries {
                if f == family {
                    spans.push(Span {
                        lo: start(&cidr),
                        hi: end(&cidr),
                        who: i,
                        cidr,
                        held: incumbents.holds_pod_cidr(node(i), &cidr),
                    });
                }
            }
        }
        spans.sort_by(|a, b| a.lo.cmp(&b.lo).then(b.hi.cmp(&a.hi)));
        let (mut widest, mut widest_held): (Option<usize>, Option<usize>) = (None, None);
        for (k, s) in spans.iter().enumerate() {
            let containers = [widest, widest_held.filter(|&h| Some(h) != widest)];
            for other in containers.into_iter().flatten().map(|j| &spans[j]) {
                if s.lo <= other.hi {
                    let claimant = |s: &Span| Claimant {
                        who: s.who,
                        held: s.held,
                        cidr: s.cidr,
                    };
                    found.extend(settle_overlap(claimant(s), claimant(other), &name));
                }
            }
            if widest.is_none_or(|w| s.hi > spans[w].hi) {
                widest = Some(k);
            }
            if s.held && widest_held.is_none_or(|w| s.hi > spans[w].hi) {
                widest_held = Some(k);
            }
        }

        // VTEP MACs on this family's device.
        let macs = eligible.iter().flat_map(|&i| {
            candidates[i]
                .entries
                .iter()
                .filter(|(f, _, _)| *f == family)
                .map(move |&(_, _, mac)| {
                    (mac, (i, incumbents.holds_vtep_mac(node(i), family, mac)))
                })
        });
        for (mac, group) in groups(macs) {
            let claim = format!("VTEP MAC {mac} on {}", family.device_name());
            found.extend(group_conflicts(&group, &claim, &name));
        }
    }

    // Underlay addresses.
    let ips = eligible.iter().filter_map(|&i| {
        candidates[i]
            .underlay
            .map(|ip| (ip, (i, incumbents.holds_underlay(node(i), ip))))
    });
    for (ip, group) in groups(ips) {
        let claim = format!("underlay address {ip}");
        found.extend(group_conflicts(&group, &claim, &name));
    }

    for f in found {
        let others = candidates[f.who].conflicts.entry(f.what).or_default();
        for other in f.shown {
            if others.shown.len() < SHOWN {
                others.shown.push(other);
            }
        }
        others.count += f.count;
        others.open |= f.open;
    }
}

/// One side of an overlap of pod CIDRs.
struct Claimant {
    who: usize,
    /// Whether it holds its pod CIDR (an incumbent).
    held: bool,
    cidr: IpNet,
}

/// One overlap of two pod CIDRs: a newcomer loses to an incumbent, who keeps its CIDR; otherwise
/// (neither holds its CIDR, or — two leases of one name — both do) both are refused.
fn settle_overlap(a: Claimant, b: Claimant, name: &dyn Fn(usize) -> String) -> Vec<Found> {
    let told = |me: &Claimant, them: &Claimant, open: bool| Found {
        who: me.who,
        what: match open {
            true => format!("pod CIDR {} overlaps the pod CIDR of", me.cidr),
            false => format!(
                "pod CIDR {} overlaps the pod CIDR already programmed for",
                me.cidr
            ),
        },
        shown: vec![format!("{} ({})", name(them.who), them.cidr)],
        count: 1,
        open,
    };
    match (a.held, b.held) {
        (true, false) => vec![told(&b, &a, false)],
        (false, true) => vec![told(&a, &b, false)],
        _ => vec![told(&a, &b, true), told(&b, &a, true)],
    }
}

/// Items sharing a key, for keys held by more than one item; items in the order given.
fn groups<K: Ord, V>(items: impl Iterator<Item = (K, V)>) -> Vec<(K, Vec<V>)> {
    let mut by_key: BTreeMap<K, Vec<V>> = BTreeMap::new();
    for (key, v) in items {
        by_key.entry(key).or_default().push(v);
    }
    by_key.into_iter().filter(|(_, v)| v.len() > 1).collect()
}

/// A group of claimants of one value, each as (who, holds it): with exactly one holder, each
/// newcomer is told it lost to the holder, who keeps it; otherwise each is told about the others.
fn group_conflicts(
    group: &[(usize, bool)],
    claim: &str,
    name: &dyn Fn(usize) -> String,
) -> Vec<Found> {
    let mut holders = group.iter().filter(|(_, held)| *held).map(|&(i, _)| i);
    if let (Some(holder), None) = (holders.next(), holders.next()) {
        return group
            .iter()
            .filter(|&&(i, _)| i != holder)
            .map(|&(i, _)| Found {
                who: i,
                what: format!("{claim} is already programmed for"),
                shown: vec![name(holder)],
                count: 1,
                open: false,
            })
            .collect();
    }
    let shown: Vec<usize> = group.iter().map(|&(i, _)| i).take(SHOWN + 1).collect();
    group
        .iter()
        .map(|&(i, _)| Found {
            who: i,
            what: format!("{claim} is also published by"),
            shown: shown
                .iter()
                .filter(|&&j| j != i)
                .take(SHOWN)
                .map(|&j| name(j))
                .collect(),
            count: group.len() - 1,
            open: true,
        })
        .collect()
}

fn program(datapath: &mut Datapath, c: &Candidate) {
    let Some(dst) = c.underlay else {
        return;
    };
    for &(family, cidr, mac) in &c.entries {
        let dev = family.device_name();
        let gateway = cidr.network();
        datapath.insert_route(Route {
            dst: cidr,
            gateway,
            dev: dev.clone(),
            onlink: true,
        });
        datapath.insert_neighbour(Neighbour {
            dev: dev.clone(),
            ip: gateway,
            mac,
        });
        datapath.insert_fdb(Fdb { dev, mac, dst });
    }
}

fn host_prefix(addr: IpAddr) -> IpNet {
    let len = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    // A full-length prefix is always valid.
    IpNet::new(addr, len).expect("a host prefix is valid")
}

/// Whether two prefixes share an address (for prefixes: one contains the other).
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

fn start(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.network())),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

fn end(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
        IpNet::V6(n) => u128::from(n.broadcast()),
    }
}

fn net_list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none configured".to_string();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
