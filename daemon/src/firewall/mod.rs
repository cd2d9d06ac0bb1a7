//! weft's nftables table `inet weft` as desired state: the data ([`Firewall`], from [`desired`]), its
//! rendering into an nftables JSON batch with the `nftables` crate's typed schema, a summary of
//! what the kernel holds ([`Observed`]) and the [`diff`] of the two. Everything here is pure;
//! [`nft`] runs the `nft` binary to read and write the kernel.
//!
//! ```text
//! table inet weft {
//!   set nomasq4 { type ipv4_addr; elements = { … } }       # pods whose network says "ipMasq": false
//!   set nomasq6 { type ipv6_addr; elements = { … } }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @nomasq4 return comment "weft:FINGERPRINT"            # keeps its pod address
//!     ip saddr <own pod CIDR> ip daddr != <cluster CIDR> masquerade   # pods → world: node address
//!     ip6 saddr @nomasq6 return
//!     ip6 saddr <own pod CIDR> ip6 daddr != <cluster CIDR> masquerade
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ip saddr <cluster CIDR> accept comment "weft:FINGERPRINT"
//!     ip daddr <cluster CIDR> accept                     # and the same two for the IPv6 CIDR
//!   }
//! }
//! ```
//! Pod-to-pod traffic, on this node or across nodes, keeps its source address, and so does the
//! traffic of a pod whose network configuration says `"ipMasq": false` (its addresses are in the
//! `nomasq` sets; both sets always exist, whatever the node's families). A whole table is written
//! as one transaction, `add table; delete table; add table {…}`, which replaces weft's table
//! atomically on Debian 12's nft 1.0.6 (no `destroy`). No other table is read or changed.
//!
//! What [`diff`] compares, so that an unchanged ruleset costs no write, drift is repaired, and nft
//! versions' JSON quirks do not matter: each chain's rule count and policy; the fingerprint of the
//! ruleset's shape (a hash of the rendered sets, chains and rules, set elements left out) that the
//! first rule of each chain carries as its comment; the sets' names; and their elements, parsed
//! as addresses. Rule expressions are never compared, so their output form (which differs between
//! nft versions) does not matter. Where the fingerprint lives was measured on nft 1.0.6: its JSON
//! neither takes nor prints a table comment, and takes no set comment (it prints one made with
//! the `nft` syntax); rule comments go both ways. A table that is missing, unreadable, made for
//! another ruleset, or whose chains were flushed or changed is replaced whole; when only set
//! elements differ, both sets are refilled in one transaction.
//!
//! Limit, from nftables' semantics: an `accept` ends only its own base chain. A drop policy in
//! another table's forward chain (for example `iptables -P FORWARD DROP`, which Docker sets) still
//! drops pod traffic, and no rule in weft's own table can override it; such a host needs the pod
//! CIDRs allowed in its own firewall ([`nft::forward_drop_chains`] finds such chains).

pub mod nft;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use weft_proto::lease::PodCidrs;

/// The name of weft's table (family `inet`).
pub const TABLE: &str = "weft";
/// The NAT chain (hook postrouting, priority srcnat = 100).
pub const POSTROUTING: &str = "postrouting";
/// The filter chain (hook forward, priority filter = 0).
pub const FORWARD: &str = "forward";
/// The set of IPv4 pod addresses that are not masqueraded.
pub const NOMASQ_V4: &str = "nomasq4";
/// The set of IPv6 pod addresses that are not masqueraded.
pub const NOMASQ_V6: &str = "nomasq6";
/// The filter chain on the input hook (priority filter = 0), present with a tunnel to guard.
pub const INPUT: &str = "input";
/// The set of the current peers' IPv4 underlay addresses: the only sources let in to the tunnel port.
pub const PEERS_V4: &str = "peers4";
/// The same for IPv6 underlay addresses.
pub const PEERS_V6: &str = "peers6";
/// What the comment of each chain's first rule starts with; the ruleset's fingerprint follows.
const FINGERPRINT_PREFIX: &str = "weft:";

/// One masquerade rule: traffic from `pods` (this node's pod CIDR) to any address outside
/// `cluster` (the cluster CIDR of the same family) leaves with the node's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// This node's pod CIDR of one family.
    pub pods: IpNet,
    /// The cluster CIDR of the same family.
    pub cluster: IpNet,
}

/// weft's desired table `inet weft`, as data. Build it with [`desired`]; render it with
/// [`Firewall::replacement`]; compare it with the kernel's with [`diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// Masquerade rules in chain order (IPv4 first); each family's rules follow that family's
    /// `return` for the no-masquerade set.
    pub masquerade: Vec<Masquerade>,
    /// Cluster CIDRs: forwarded packets from or to them are accepted (two rules each).
    pub forward: Vec<IpNet>,
    /// Pod addresses whose traffic is never masqueraded (their network says `"ipMasq": false`).
    pub unmasqueraded: BTreeSet<IpAddr>,
    /// The tunnel port only current peers may send to (VXLAN; WireGuard authenticates every
    /// packet itself), `None` for none.
    pub tunnel: Option<TunnelGuard>,
}

/// The tunnel's UDP port and who may send to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelGuard {
    /// UDP destination port of the tunnel (8472 for VXLAN).
    pub port: u16,
    /// The current peers' underlay addresses.
    pub peers: BTreeSet<IpAddr>,
}

/// The firewall of a node holding `own` inside the cluster CIDRs `cluster` (at most one per
/// family), where the pods at `unmasqueraded` keep their own source address leaving the cluster.
///
/// With a `tunnel`, the input chain drops packets to its port from any address but a current
/// peer's, and the forward chain drops pods' packets to that port of any node:
///
/// ```text
///   chain input { type filter hook input priority filter; policy accept;
///     udp dport 8472 ip saddr != @peers4 drop
///     udp dport 8472 ip6 saddr != @peers6 drop
///   }
///   chain forward { …
///     ip saddr <cluster CIDR> udp dport 8472 drop       # before the accepts; IPv6 the same
/// ```
pub fn desired(
    own: &PodCidrs,
    cluster: &[IpNet],
    unmasqueraded: &BTreeSet<IpAddr>,
    tunnel: Option<TunnelGuard>,
) -> Firewall {
    let masquerade = own
        .iter()
        .flat_map(|pods| {
            cluster
                .iter()
                .filter(move |c| c.addr().is_ipv4() == pods.addr().is_ipv4())
                .map(move |&cluster| Masquerade { pods, cluster })
        })
        .collect();
    Firewall {
        masquerade,
        forward: cluster.to_vec(),
        unmasqueraded: unmasqueraded.clone(),
        tunnel,
    }
}

/// An IP family, as nftables names its pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn of(net: &IpNet) -> Family {
        if net.addr().is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn set_name(self) -> &'static str {
        match self {
            Family::V4 => NOMASQ_V4,
            Family::V6 => NOMASQ_V6,
        }
    }

    fn peers_set(self) -> &'static str {
        match self {
            Family::V4 => PEERS_V4,
            Family::V6 => PEERS_V6,
        }
    }

    fn set_type(self) -> SetType {
        match self {
            Family::V4 => SetType::Ipv4Addr,
            Family::V6 => SetType::Ipv6Addr,
        }
    }

    fn holds(self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn base_chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    }
}

/// `<ip|ip6> <field> <op> <right>`.
fn matches(
    family: Family,
    field: &'static str,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: family.protocol().into(),
                field: field.into(),
            },
        ))),
        right,
        op,
    })
}

/// `udp dport <port>`.
fn udp_dport(port: u16) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: "udp".into(),
                field: "dport".into(),
            },
        ))),
        right: Expression::Number(u32::from(port)),
        op: Operator::EQ,
    })
}

fn prefix(net: &IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn address(ip: &IpAddr) -> Expression<'static> {
    Expression::String(ip.to_string().into())
}

impl Firewall {
    /// The families that have masquerade rules, IPv4 first.
    fn masquerading_families(&self) -> impl Iterator<Item = Family> + '_ {
        Family::BOTH
            .into_iter()
            .filter(|f| self.masquerade.iter().any(|m| Family::of(&m.pods) == *f))
    }

    /// The postrouting rules, in order.
    fn postrouting_rules(&self) -> Vec<Rule<'static>> {
        let mut rules = Vec::new();
        for family in self.masquerading_families() {
            let set = Expression::String(format!("@{}", family.set_name()).into());
            rules.push(rule(
                POSTROUTING,
                vec![
                    matches(family, "saddr", Operator::EQ, set),
                    Statement::Return(None),
                ],
            ));
            for m in self
                .masquerade
                .iter()
                .filter(|m| Family::of(&m.pods) == family)
            {
                rules.push(rule(
                    POSTROUTING,
                    vec![
                        matches(family, "saddr", Operator::EQ, prefix(&m.pods)),
                        matches(family, "daddr", Operator::NEQ, prefix(&m.cluster)),
                        Statement::Masquerade(None),
                    ],
                ));
            }
        }
        rules
    }

    /// The forward rules, in order: pods' packets to the tunnel port dropped, then the accepts.
    fn forward_rules(&self) -> Vec<Rule<'static>> {
        let mut rules = Vec::new();
        for net in self.forward.iter().filter(|_| self.tunnel.is_some()) {
            let port = self.tunnel.as_ref().map_or(0, |t| t.port);
            rules.push(rule(
                FORWARD,
                vec![
                    matches(Family::of(net), "saddr", Operator::EQ, prefix(net)),
                    udp_dport(port),
                    Statement::Drop(None),
                ],
            ));
        }
        for net in &self.forward {
            for field in ["saddr", "daddr"] {
                rules.push(rule(
                    FORWARD,
                    vec![
                        matches(Family::of(net), field, Operator::EQ, prefix(net)),
                        Statement::Accept(None),
                    ],
                ));
            }
        }
        rules
    }

    /// The input rules, in order: the tunnel port closed to all but the peers, per family.
    fn input_rules(&self) -> Vec<Rule<'static>> {
        let Some(tunnel) = &self.tunnel else {
            return Vec::new();
        };
        Family::BOTH
            .into_iter()
            .map(|family| {
                let set = Expression::String(format!("@{}", family.peers_set()).into());
                rule(
                    INPUT,
                    vec![
                        udp_dport(tunnel.port),
                        matches(family, "saddr", Operator::NEQ, set),
                        Statement::Drop(None),
                    ],
                )
            })
            .collect()
    }

    /// The sets: the no-masquerade ones, and the peer sets with a tunnel to guard; each with its
    /// family and its addresses.
    fn sets(&self) -> Vec<(&'static str, Family, BTreeSet<IpAddr>)> {
        let of = |addresses: &BTreeSet<IpAddr>, family: Family| -> BTreeSet<IpAddr> {
            addresses
                .iter()
                .filter(|ip| family.holds(ip))
                .copied()
                .collect()
        };
        let mut sets: Vec<_> = Family::BOTH
            .into_iter()
            .map(|f| (f.set_name(), f, of(&self.unmasqueraded, f)))
            .collect();
        if let Some(tunnel) = &self.tunnel {
            sets.extend(Family::BOTH.map(|f| (f.peers_set(), f, of(&tunnel.peers, f))));
        }
        sets
    }

    /// A set's addresses as set elements (`None` when there are none: nft refuses an empty
    /// element list).
    fn elements(addresses: &BTreeSet<IpAddr>) -> Option<Cow<'static, [Expression<'static>]>> {
        let elements: Vec<Expression<'static>> = addresses.iter().map(address).collect();
        (!elements.is_empty()).then(|| elements.into())
    }

    fn set(
        name: &'static str,
        family: Family,
        addresses: Option<&BTreeSet<IpAddr>>,
    ) -> Set<'static> {
        Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            set_type: SetTypeValue::Single(family.set_type()),
            elem: addresses.and_then(Firewall::elements),
            ..Set::default()
        }
    }

    /// The table's contents in creation order: sets, chains, rules. Without `fingerprint` and
    /// elements, this is the ruleset's shape, which the fingerprint hashes; with it, the first
    /// rule of each chain carries it as its comment.
    fn contents(&self, fingerprint: Option<&str>, elements: bool) -> Vec<NfListObject<'static>> {
        let mut objects: Vec<NfListObject<'static>> = self
            .sets()
            .iter()
            .map(|(name, family, addresses)| {
                let addresses = elements.then_some(addresses);
                NfListObject::Set(Box::new(Firewall::set(name, *family, addresses)))
            })
            .collect();
        objects.push(NfListObject::Chain(base_chain(
            POSTROUTING,
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        )));
        objects.push(NfListObject::Chain(base_chain(
            FORWARD,
            NfChainType::Filter,
            NfHook::Forward,
            0,
        )));
        if self.tunnel.is_some() {
            objects.push(NfListObject::Chain(base_chain(
                INPUT,
                NfChainType::Filter,
                NfHook::Input,
                0,
            )));
        }
        for mut rules in [
            self.postrouting_rules(),
            self.forward_rules(),
            self.input_rules(),
        ] {
            if let (Some(first), Some(fingerprint)) = (rules.first_mut(), fingerprint) {
                first.comment = Some(format!("{FINGERPRINT_PREFIX}{fingerprint}").into());
            }
            objects.extend(rules.into_iter().map(NfListObject::Rule));
        }
        objects
    }

    /// The fingerprint of this ruleset's shape: 16 hex digits of a 64-bit FNV-1a hash of the
    /// rendered sets, chains and rules, set elements left out (they are compared one by one).
    pub fn fingerprint(&self) -> String {
        let shape = serde_json::to_vec(&self.contents(None, false))
            .expect("nftables objects always serialise");
        let hash = shape.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }

    /// The batch that replaces weft's table with this one atomically: `add table; delete table;
    /// add table`, then its sets (with the fingerprint and elements), chains and rules.
    pub fn replacement(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        let fingerprint = self.fingerprint();
        for object in self.contents(Some(&fingerprint), true) {
            batch.add(object);
        }
        batch.to_nftables()
    }

    /// The batch that empties every set and fills it with this firewall's addresses, in one
    /// transaction (a peer come or gone, a pod without masquerade added or deleted).
    pub fn refill(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        for (name, family, addresses) in self.sets() {
            let set = Firewall::set(name, family, None);
            batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set))));
            if let Some(elem) = Firewall::elements(&addresses) {
                batch.add(NfListObject::Element(Element {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    name: name.into(),
                    elem,
                }));
            }
        }
        batch.to_nftables()
    }

    /// What [`Observed::summarise`] reads back once this firewall is applied.
    pub fn summary(&self) -> TableSummary {
        let comment = format!("{FINGERPRINT_PREFIX}{}", self.fingerprint());
        let chain = |rules: usize| ChainSummary {
            rules,
            policy: Some(NfChainPolicy::Accept),
            comment: (rules > 0).then(|| comment.clone()),
        };
        let mut chains = BTreeMap::from([
            (
                POSTROUTING.to_string(),
                chain(self.postrouting_rules().len()),
            ),
            (FORWARD.to_string(), chain(self.forward_rules().len())),
        ]);
        if self.tunnel.is_some() {
            chains.insert(INPUT.to_string(), chain(self.input_rules().len()));
        }
        TableSummary {
            chains,
            sets: self
                .sets()
                .into_iter()
                .map(|(name, _, elements)| {
                    let summary = SetSummary {
                        elements,
                        unreadable: 0,
                    };
                    (name.to_string(), summary)
                })
                .collect(),
        }
    }
}

/// The batch that removes weft's table and nothing else: add it (a no-op if present), delete it.
pub fn removal() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

/// One chain of weft's table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// How many rules it has.
    pub rules: usize,
    /// Its policy (`None`: not a base chain).
    pub policy: Option<NfChainPolicy>,
    /// Its first rule's comment, which carries the fingerprint of the ruleset it was made for.
    pub comment: Option<String>,
}

impl ChainSummary {
    fn empty() -> ChainSummary {
        ChainSummary {
            rules: 0,
            policy: None,
            comment: None,
        }
    }
}

/// One set of weft's table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetSummary {
    /// Its elements that are plain addresses.
    pub elements: BTreeSet<IpAddr>,
    /// How many elements are something else (weft adds none such).
    pub unreadable: usize,
}

/// weft's table as the kernel holds it, summarised: chains and sets by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSummary {
    /// Chain name → its summary.
    pub chains: BTreeMap<String, ChainSummary>,
    /// Set name → its summary.
    pub sets: BTreeMap<String, SetSummary>,
}

/// What the kernel holds of weft's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// There is no table `inet weft`.
    Absent,
    /// The table, summarised.
    Table(TableSummary),
    /// The listing has an object that nftables' types cannot read (something weft never makes, or
    /// an nft version's quirk); the reason. The table is replaced rather than trusted.
    Unreadable(String),
}

impl Observed {
    /// Summarise the objects of `nft -j list table inet weft` (anything outside weft's table, and
    /// the metainfo object, is ignored).
    pub fn summarise(objects: &[NfListObject<'_>]) -> Observed {
        let ours = |family: &NfFamily, table: &str| *family == NfFamily::INet && table == TABLE;
        let mut present = false;
        let mut summary = TableSummary::default();
        for object in objects {
            match object {
                NfListObject::Table(t) if ours(&t.family, &t.name) => present = true,
                NfListObject::Chain(c) if ours(&c.family, &c.table) => {
                    let entry = summary.chains.entry(c.name.to_string());
                    entry.or_insert_with(ChainSummary::empty).policy = c.policy;
                }
                NfListObject::Rule(r) if ours(&r.family, &r.table) => {
                    let chain = summary
                        .chains
                        .entry(r.chain.to_string())
                        .or_insert_with(ChainSummary::empty);
                    if chain.rules == 0 {
                        chain.comment = r.comment.as_ref().map(|c| c.to_string());
                    }
                    chain.rules += 1;
                }
                NfListObject::Set(s) if ours(&s.family, &s.table) => {
                    summary.sets.insert(s.name.to_string(), summarise_set(s));
                }
                _ => {}
            }
        }
        if present {
            Observed::Table(summary)
        } else {
            Observed::Absent
        }
    }
}

fn summarise_set(set: &Set<'_>) -> SetSummary {
    let mut summary = SetSummary::default();
    for element in set.elem.iter().flat_map(|e| e.iter()) {
        match element {
            Expression::String(text) => match text.parse::<IpAddr>() {
                Ok(ip) => {
                    summary.elements.insert(ip);
                }
                Err(_) => summary.unreadable += 1,
            },
            _ => summary.unreadable += 1,
        }
    }
    summary
}

/// Why weft's table is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// There is no table.
    Missing,
    /// Its listing could not be read (the reason).
    Unreadable(String),
    /// A chain is missing (`have` is `None`), is not weft's (`want` is `None`), or has another
    /// number of rules or another policy than wanted.
    Chain {
        /// The chain's name.
        name: String,
        /// The chain wanted.
        want: Option<ChainSummary>,
        /// The chain found.
        have: Option<ChainSummary>,
    },
    /// A chain's first rule lacks the wanted fingerprint: the table was made for another ruleset
    /// (another configuration or weft version). The comment wanted and the one found.
    Fingerprint {
        /// The chain's name.
        chain: String,
        /// The comment wanted (`weft:` and the fingerprint).
        want: Option<String>,
        /// The comment found.
        have: Option<String>,
    },
    /// A set is missing (`wanted`) or is not weft's (not `wanted`).
    Set {
        /// The set's name.
        name: String,
        /// Whether weft wants it.
        wanted: bool,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing => write!(f, "table inet {TABLE} is missing"),
            Drift::Unreadable(why) => write!(f, "its listing is unreadable ({why})"),
            Drift::Chain { name, want, have } => match (want, have) {
                (Some(_), None) => write!(f, "chain {name} is missing"),
                (None, _) => write!(f, "chain {name} is not weft's"),
                (Some(want), Some(have)) => write!(
                    f,
                    "chain {name} has {} rules and policy {:?} (want {} and {:?})",
                    have.rules, have.policy, want.rules, want.policy
                ),
            },
            Drift::Fingerprint { chain, want, have } => write!(
                f,
                "chain {chain} was made for another ruleset (comment {have:?}, want {want:?})"
            ),
            Drift::Set { name, wanted: true } => write!(f, "set {name} is missing"),
            Drift::Set {
                name,
                wanted: false,
            } => write!(f, "set {name} is not weft's"),
        }
    }
}

/// What to do to make the kernel's table the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallOp {
    /// Replace the whole table with `firewall`, in one transaction ([`Firewall::replacement`]),
    /// because of `drift`.
    Replace { firewall: Firewall, drift: Drift },
    /// Only set elements differ: refill both sets from `firewall` ([`Firewall::refill`]).
    Refill(Firewall),
}

impl FirewallOp {
    /// The nft batch that carries this operation out in one transaction.
    pub fn batch(&self) -> Nftables<'static> {
        match self {
            FirewallOp::Replace { firewall, .. } => firewall.replacement(),
            FirewallOp::Refill(firewall) => firewall.refill(),
        }
    }
}

impl fmt::Display for FirewallOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirewallOp::Replace { drift, .. } => {
                write!(f, "replace table inet {TABLE}: {drift}")
            }
            FirewallOp::Refill(firewall) => write!(
                f,
                "refill sets {NOMASQ_V4} and {NOMASQ_V6}: {} address(es) not masqueraded",
                firewall.unmasqueraded.len()
            ),
        }
    }
}

/// What must change for the kernel's table (`observed`) to be `desired`; `None`: nothing.
pub fn diff(desired: &Firewall, observed: &Observed) -> Option<FirewallOp> {
    let replace = |drift| {
        Some(FirewallOp::Replace {
            firewall: desired.clone(),
            drift,
        })
    };
    let have = match observed {
        Observed::Absent => return replace(Drift::Missing),
        Observed::Unreadable(why) => return replace(Drift::Unreadable(why.clone())),
        Observed::Table(have) => have,
    };
    let want = desired.summary();
    if want == *have {
        return None;
    }
    let frame = |chain: Option<&ChainSummary>| chain.map(|c| (c.rules, c.policy));
    let chains: BTreeSet<&String> = want.chains.keys().chain(have.chains.keys()).collect();
    if let Some(name) = chains
        .into_iter()
        .find(|n| frame(want.chains.get(*n)) != frame(have.chains.get(*n)))
    {
        return replace(Drift::Chain {
            name: name.clone(),
            want: want.chains.get(name).cloned(),
            have: have.chains.get(name).cloned(),
        });
    }
    // The same chains now: compare the fingerprints their first rules carry.
    let comment = |chains: &BTreeMap<String, ChainSummary>, name: &String| {
        chains.get(name).and_then(|c| c.comment.clone())
    };
    if let Some(name) = want
        .chains
        .keys()
        .find(|n| comment(&want.chains, n) != comment(&have.chains, n))
    {
        return replace(Drift::Fingerprint {
            chain: name.clone(),
            want: comment(&want.chains, name),
            have: comment(&have.chains, name),
        });
    }
    let sets: BTreeSet<&String> = want.sets.keys().chain(have.sets.keys()).collect();
    if let Some(name) = sets
        .into_iter()
        .find(|n| want.sets.contains_key(*n) != have.sets.contains_key(*n))
    {
        return replace(Drift::Set {
            name: name.clone(),
            wanted: want.sets.contains_key(name),
        });
    }
    // Only the sets' elements differ.
    Some(FirewallOp::Refill(desired.clone()))
}
