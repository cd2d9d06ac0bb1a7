//! Peer admission, shared by every backend: which peers' records this node trusts enough to program
//! tunnels for, and why each other one is refused. Pure; each backend supplies its identity claim
//! (VXLAN: a VTEP MAC per device; WireGuard: a public key) through [`IdentityRule`].
//!
//! # What a peer must not claim
//!
//! Every check runs on every peer; a peer that fails any of them programs nothing at all, and is
//! listed in [`Admission::refused`] with every reason found. Checks of one peer alone:
//!
//! - it carries this node's own name, or it runs another backend than this node;
//! - a pod CIDR (of a family this node runs a device for) has host bits set, is a default route
//!   (prefix 0), lies outside the cluster CIDRs, overlaps this node's own pod CIDR, or overlaps a
//!   service CIDR (inside it or around it);
//! - its identity claim for such a family (the backend's [`IdentityRule::claim`]) is missing or
//!   invalid (VXLAN: a VTEP MAC that is absent, not unicast, or this node's own on that device);
//! - it publishes no underlay address of the family the tunnels use (the family of `local`);
//! - any underlay address it publishes is not unicast (unspecified, loopback, multicast,
//!   broadcast), is one of this node's own underlay addresses (the Vagrant trap: every VM has
//!   10.0.2.15 on its NAT interface), or lies inside a cluster CIDR, a service CIDR, this node's
//!   pod CIDRs or its own pod CIDRs — an underlay address routed into the overlay would loop. (It
//!   is not checked against other peers' pod CIDRs: an accepted one lies inside the cluster CIDRs
//!   anyway, and a refused peer's claim must not refuse anyone else.)
//!
//! Then, among the peers that passed those checks, come the conflicts between peers: overlapping
//! pod CIDRs, the same identity claim (a VTEP MAC on a device, a public key), the same underlay
//! address. They are settled by
//! **incumbency**. [`admit`] is given the [`Incumbents`]: the claims of the peers the previous
//! plan accepted (the plan this node is programming, [`super::Plan::accepted`]), each as the peer's
//! name with the exact value — its pod CIDR of a family, its identity claims, its underlay address.
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
//! node's **own** pod CIDR, identity claims or underlay address are not conflicts between peers: this
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
use weft_proto::lease::{Backend, Lease};
use weft_proto::names::NodeName;

use super::{Family, PlanConfig};
use crate::net::{end, net_list, overlap, start};

/// A claim only one peer may make on this node's tunnels, as the text that names it in a refusal
/// (`VTEP MAC 02:00:00:00:02:04 on weft.vxlan`, `WireGuard public key …`): two peers making equal
/// claims conflict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub String);

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a backend adds to the admission rules: which backend it is, and each peer's identity
/// claim on its tunnels.
pub trait IdentityRule {
    /// The backend this node runs; a peer publishing another one is refused.
    fn backend(&self) -> Backend;

    /// The identity `peer` claims for its pod CIDR of `family` on this node's tunnel for that
    /// family, or why that claim is unusable (missing, malformed, or equal to this node's own,
    /// `own`). Called only for peers running [`Self::backend`] and families this node runs.
    fn claim(&self, family: Family, peer: &Lease, own: &Lease) -> Result<Identity, String>;
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

/// A peer admitted with something to program: the input of a backend's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'a> {
    pub lease: &'a Lease,
    /// Per family both this node and the peer run: the peer's pod CIDR and identity claim, in
    /// family order (IPv4 first). Never empty.
    pub entries: Vec<(Family, IpNet, Identity)>,
    /// The peer's underlay address of the tunnels' family: where its tunnel traffic goes.
    pub underlay: IpAddr,
}

/// The outcome of [`admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<'a> {
    /// Peers accepted that program something, in node-name order.
    pub admitted: Vec<Admitted<'a>>,
    /// Peers refused, in node-name order, each with every reason.
    pub refused: Vec<Refusal>,
    /// The claims of [`Self::admitted`]: the incumbents of the next admission, once this one is
    /// being programmed.
    pub incumbents: Incumbents,
}

/// Claims that win a conflict: for each peer an admission accepted and programs something for,
/// its pod CIDR and identity claim of each family this node runs, and its underlay address of the
/// tunnels' family — the exact values programmed. Made only by [`admit`], so its claims never
/// conflict with one another; [`Incumbents::default`] holds nothing (start-up: every claimant of
/// a conflict is refused). See the [module documentation](self) for the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incumbents {
    held: BTreeMap<NodeName, Held>,
}

/// What one accepted peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    entries: Vec<(Family, IpNet, Identity)>,
    underlay: IpAddr,
}

impl Incumbents {
    /// The underlay addresses of the peers held: the only sources a tunnel should take packets
    /// from.
    pub fn underlays(&self) -> std::collections::BTreeSet<IpAddr> {
        self.held.values().map(|h| h.underlay).collect()
    }

    /// Whether no peer holds anything.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The peers holding claims, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.held.keys()
    }

    /// Each peer held, in name order: its pod CIDRs (in family order) and its underlay address.
    pub fn held(&self) -> impl Iterator<Item = (&NodeName, Vec<IpNet>, IpAddr)> {
        self.held.iter().map(|(node, held)| {
            let cidrs = held.entries.iter().map(|(_, cidr, _)| *cidr).collect();
            (node, cidrs, held.underlay)
        })
    }

    /// Whether `node` holds exactly `cidr` as its pod CIDR.
    pub fn holds_pod_cidr(&self, node: &NodeName, cidr: &IpNet) -> bool {
        self.held
            .get(node)
            .is_some_and(|h| h.entries.iter().any(|(_, c, _)| c == cidr))
    }

    /// Whether `node` holds the identity claim `identity`.
    pub fn holds_identity(&self, node: &NodeName, identity: &Identity) -> bool {
        self.held
            .get(node)
            .is_some_and(|h| h.entries.iter().any(|(_, _, i)| i == identity))
    }

    /// Whether `node` holds `ip` as its underlay address.
    pub fn holds_underlay(&self, node: &NodeName, ip: IpAddr) -> bool {
        self.held.get(node).is_some_and(|h| h.underlay == ip)
    }

    /// The claims `node` holds, as the [`Admitted`] of `lease` (its record when they were
    /// accepted); `None` if it holds none. O(log n).
    pub(crate) fn admitted<'a>(&self, node: &NodeName, lease: &'a Lease) -> Option<Admitted<'a>> {
        self.held.get(node).map(|h| Admitted {
            lease,
            entries: h.entries.clone(),
            underlay: h.underlay,
        })
    }

    /// Let `peer` hold its claims (replacing what its node held), as [`admit`] would once it is
    /// accepted: for the incremental planner, which keeps these disjoint itself. O(log n).
    pub(crate) fn hold(&mut self, peer: &Admitted<'_>) {
        let held = Held {
            entries: peer.entries.clone(),
            underlay: peer.underlay,
        };
        self.held.insert(peer.lease.node.clone(), held);
    }

    /// `node` holds nothing any more. O(log n).
    pub(crate) fn release(&mut self, node: &NodeName) {
        self.held.remove(node);
    }
}

/// A peer under examination.
struct Candidate<'a> {
    lease: &'a Lease,
    /// Per family this node runs: the peer's pod CIDR and identity claim.
    entries: Vec<(Family, IpNet, Identity)>,
    /// The peer's underlay address of the tunnels' family.
    underlay: Option<IpAddr>,
    /// Problems of this peer alone.
    problems: Vec<String>,
    /// Conflicts with other peers: what conflicts → with whom.
    conflicts: BTreeMap<String, Others>,
}

impl Candidate<'_> {
    fn accepted(&self) -> bool {
        self.problems.is_empty() && self.conflicts.is_empty()
    }

    /// Every problem and conflict, for the refusal.
    fn reasons(&self) -> String {
        let mut reasons = self.problems.clone();
        reasons.extend(
            self.conflicts
                .iter()
                .map(|(what, others)| match others.shown.is_empty() {
                    true => what.clone(),
                    false => format!("{what} {others}"),
                }),
        );
        if self.conflicts.values().any(|others| others.open) {
            reasons.push("where no claimant held it before, every claimant is refused".to_string());
        }
        reasons.join("; ")
    }
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

/// Judge `peers` from the point of view of the node holding `own`, whose tunnels run over
/// `underlay` (the family of its tunnel source address), with the claims the previous admission
/// accepted as `incumbents` and `rule` supplying the backend's identity claims.
///
/// `peers` are the other nodes (the stores leave this node out; a peer carrying this node's name
/// is refused). They are examined in node-name order, so the result does not depend on the order
/// given. Pure; cost: O(n log n) in the number of peers.
pub fn admit<'a>(
    own: &Lease,
    peers: impl IntoIterator<Item = &'a Lease>,
    underlay: Family,
    config: &PlanConfig,
    incumbents: &Incumbents,
    rule: &dyn IdentityRule,
) -> Admission<'a> {
    let mut peers: Vec<&Lease> = peers.into_iter().collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    let mut candidates: Vec<Candidate> = peers
        .into_iter()
        .map(|peer| examine(peer, own, underlay, config, rule))
        .collect();
    find_conflicts(&mut candidates, incumbents);

    let mut admission = Admission {
        admitted: Vec::new(),
        refused: Vec::new(),
        incumbents: Incumbents::default(),
    };
    for c in candidates {
        if !c.accepted() {
            admission.refused.push(Refusal {
                node: c.lease.node.clone(),
                reason: c.reasons(),
            });
            continue;
        }
        let Some(underlay) = c.underlay.filter(|_| !c.entries.is_empty()) else {
            continue;
        };
        let held = Held {
            entries: c.entries.clone(),
            underlay,
        };
        admission.incumbents.held.insert(c.lease.node.clone(), held);
        admission.admitted.push(Admitted {
            lease: c.lease,
            entries: c.entries,
            underlay,
        });
    }
    admission
}

/// What one peer's own checks say, before any conflict between peers: the incremental planner
/// ([`super::incremental`]) judges a changed peer with this and settles its conflicts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Alone<'a> {
    /// Refused on its own checks, with the exact refusal [`admit`] gives it (such a peer takes no
    /// part in conflicts, so nothing else can change it).
    Refused(Refusal),
    /// Passed, with nothing to program (no pod CIDR of a family this node runs): accepted, holds
    /// nothing, takes no part in conflicts.
    Idle,
    /// Passed, with claims: accepted exactly so unless a claim collides with another eligible
    /// peer's.
    Eligible(Admitted<'a>),
}

/// [`Alone`] for `peer`, with the arguments of [`admit`]. Pure; O(1) (one peer's checks).
pub(crate) fn judge_alone<'a>(
    peer: &'a Lease,
    own: &Lease,
    underlay: Family,
    config: &PlanConfig,
    rule: &dyn IdentityRule,
) -> Alone<'a> {
    let c = examine(peer, own, underlay, config, rule);
    if !c.problems.is_empty() {
        return Alone::Refused(Refusal {
            node: peer.node.clone(),
            reason: c.reasons(),
        });
    }
    match c.underlay.filter(|_| !c.entries.is_empty()) {
        None => Alone::Idle,
        Some(underlay) => Alone::Eligible(Admitted {
            lease: peer,
            entries: c.entries,
            underlay,
        }),
    }
}

/// The checks of one peer alone.
fn examine<'a>(
    peer: &'a Lease,
    own: &Lease,
    underlay: Family,
    config: &PlanConfig,
    rule: &dyn IdentityRule,
) -> Candidate<'a> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    if peer.node == own.node {
        problems.push("carries this node's own name".to_string());
    }
    let same_backend = peer.backend.backend() == rule.backend();
    if !same_backend {
        problems.push(format!(
            "runs the {} backend, not {}",
            peer.backend.backend(),
            rule.backend()
        ));
    }
    for family in Family::ALL {
        let (Some(own_cidr), Some(cidr)) = (
            family.pod_cidr(&own.pod_cidrs),
            family.pod_cidr(&peer.pod_cidrs),
        ) else {
            continue;
        };
        problems.extend(check_pod_cidr(cidr, own_cidr, config));
        if same_backend {
            match rule.claim(family, peer, own) {
                Ok(identity) => entries.push((family, cidr, identity)),
                Err(problem) => problems.push(problem),
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
    let peer_cidrs: Vec<IpNet> = Family::ALL
        .iter()
        .filter(|f| f.pod_cidr(&own.pod_cidrs).is_some())
        .filter_map(|f| f.pod_cidr(&peer.pod_cidrs))
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

/// What is wrong with a peer's pod CIDR `cidr`, given this node's own of that family.
fn check_pod_cidr(cidr: IpNet, own_cidr: IpNet, config: &PlanConfig) -> Vec<String> {
    let mut problems = Vec::new();
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
    if overlap(&cidr, &own_cidr) {
        problems.push(format!(
            "pod CIDR {cidr} overlaps this node's pod CIDR {own_cidr}"
        ));
    }
    for service in &config.service_cidrs {
        if overlap(&cidr, service) {
            problems.push(format!(
                "pod CIDR {cidr} overlaps the service CIDR {service}"
            ));
        }
    }
    problems
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
/// claimants of one identity costs O(k), not O(k²).
fn find_conflicts(candidates: &mut [Candidate], incumbents: &Incumbents) {
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].problems.is_empty() && !candidates[i].entries.is_empty())
        .collect();
    let cands: &[Candidate] = candidates;
    let node = |i: usize| &cands[i].lease.node;
    let name = |i: usize| node(i).to_string();
    let mut found: Vec<Found> = Vec::new();

    // Node names (candidates are sorted by name): incumbency cannot tell such leases apart.
    let names = eligible.iter().map(|&i| (node(i).clone(), i));
    for (_, group) in groups(names) {
        found.extend(group.into_iter().map(|i| Found {
            who: i,
            what: "another lease carries the same node name".to_string(),
            shown: Vec::new(),
            count: 0,
            open: true,
        }));
    }
    for family in Family::ALL {
        found.extend(pod_cidr_conflicts(cands, &eligible, family, incumbents));
    }
    // Identity claims, each counted once per peer (a WireGuard key serves both families).
    let identities = eligible.iter().flat_map(|&i| {
        let entries = &cands[i].entries;
        entries
            .iter()
            .enumerate()
            .filter(|(k, (_, _, id))| !entries[..*k].iter().any(|(_, _, e)| e == id))
            .map(move |(_, (_, _, id))| (id, (i, incumbents.holds_identity(node(i), id))))
    });
    for (identity, group) in groups(identities) {
        found.extend(group_conflicts(&group, &identity.0, &name));
    }
    // Underlay addresses.
    let ips = eligible.iter().filter_map(|&i| {
        cands[i]
            .underlay
            .map(|ip| (ip, (i, incumbents.holds_underlay(node(i), ip))))
    });
    for (ip, group) in groups(ips) {
        let claim = format!("underlay address {ip}");
        found.extend(group_conflicts(&group, &claim, &name));
    }
    record(candidates, found);
}

/// Overlapping pod CIDRs of `family` among the `eligible` candidates.
///
/// As intervals sorted by start, widest first, one sweep pairs every CIDR that lies inside an
/// earlier one with the earlier one reaching furthest (which contains it, prefixes being nested or
/// disjoint), and with the earlier held one reaching furthest (which contains it too, if any held
/// one does). So every claimant of an overlap is in a pair, every claim inside a held one is paired
/// with a holder, and every two overlapping held claims are paired with each other.
fn pod_cidr_conflicts(
    candidates: &[Candidate],
    eligible: &[usize],
    family: Family,
    incumbents: &Incumbents,
) -> Vec<Found> {
    let name = |i: usize| candidates[i].lease.node.to_string();
    let mut spans: Vec<Span> = Vec::new();
    for &i in eligible {
        for (f, cidr, _) in &candidates[i].entries {
            if *f == family {
                spans.push(Span {
                    lo: start(cidr),
                    hi: end(cidr),
                    who: i,
                    cidr: *cidr,
                    held: incumbents.holds_pod_cidr(&candidates[i].lease.node, cidr),
                });
            }
        }
    }
    spans.sort_by(|a, b| a.lo.cmp(&b.lo).then(b.hi.cmp(&a.hi)));
    let mut found = Vec::new();
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
    found
}

/// File each conflict found under the candidate it refuses.
fn record(candidates: &mut [Candidate], found: Vec<Found>) {
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
