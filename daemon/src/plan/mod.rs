//! The pure planning core, shared by every backend: leases in, desired kernel state out, and the
//! minimal operations that turn the observed state into the desired one. Nothing here does I/O.
//!
//! **Steps.** [`plan`] runs, for the node holding `own`:
//! 1. [`admission::admit`]: which peers to program and which to refuse, with every reason — the
//!    same trust and conflict rules for every backend, each backend adding its identity claim
//!    (VXLAN: a VTEP MAC per device; WireGuard: a public key) through [`admission::IdentityRule`];
//! 2. [`BackendPlan::desired`]: this node's lease and the admitted peers → the backend's desired
//!    state (devices, routes, neighbour and FDB entries, or WireGuard peers), MTU included;
//! 3. after the driver read the observed state, [`BackendPlan::diff`] → the minimal operations, in
//!    an order that applies cleanly. [`BackendPlan::model_apply`] pins down what each operation
//!    means: it is the reference the model tests check every diff against.
//!
//! A restart and a steady-state peer event go through the same functions, so a restart converges
//! what is there instead of flushing it.
//!
//! **Incrementally.** [`incremental::Planner`] keeps the last plan and gives the same plan as
//! [`plan`] in O(change) when a few peers changed and no conflict is in play, with the operations
//! between the two datapaths (exactly what [`BackendPlan::diff`] of the two returns); anything
//! else it plans in full with [`plan`], which stays the reference. It relies on a backend's
//! desired state being this node's devices (from its own lease and the config) plus, per admitted
//! peer, entries keyed by that peer's claims — see [`BackendPlan::desired`]. The firewall (`crate::firewall`) is planned beside the
//! backend from the same lease. Each backend lives in `crate::backend::<kind>` (its plan, its diff,
//! its driver); adding one is a new folder there and one line in `crate::backend::choose`.

pub mod admission;
pub mod incremental;
#[cfg(test)]
pub(crate) mod model;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_proto::lease::{Backend, Lease, PodCidrs, PublicIps};
use weft_proto::names::NodeName;

use crate::config::Config;
use admission::{Admitted, IdentityRule, Incumbents, Refusal};

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
    /// MTU of the underlay interface (the one holding the tunnel source address); the overlay MTU
    /// derives from it.
    pub underlay_mtu: u32,
    /// An explicit overlay MTU (`--mtu`); `None` derives it from `underlay_mtu`.
    pub mtu: Option<u32>,
    /// The prefix length every node's IPv4 / IPv6 pod CIDR has (`--node-prefix-v4/-v6`): a peer
    /// claiming a wider or narrower one is refused, so one record cannot squat on a range that
    /// honest nodes will later claim. `None` skips the check.
    pub node_prefix_v4: Option<u8>,
    pub node_prefix_v6: Option<u8>,
    /// Direct routing (`--direct-routing auto`, VXLAN only): the underlay interface and the
    /// subnets directly connected to it. A peer whose underlay address of a pod family lies in one
    /// of them gets its pod CIDR of that family routed straight to that address on the interface,
    /// not through the tunnel. `None`: every peer goes through the tunnel.
    pub direct_routing: Option<DirectRouting>,
}

/// The underlay interface and its directly connected subnets (both families), for direct routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRouting {
    /// The interface holding the tunnel source address (`eth1`).
    pub iface: weft_proto::names::IfName,
    /// Its on-link prefixes (`192.168.56.0/24`, `fd00:56::/64`), link-local ones left out.
    pub subnets: Vec<IpNet>,
}

impl DirectRouting {
    /// The subnet holding `ip`, if `ip` is directly reachable on the interface.
    pub fn reaches(&self, ip: IpAddr) -> bool {
        self.subnets.iter().any(|net| net.contains(&ip))
    }
}

impl PlanConfig {
    /// The overlay MTU (tunnel devices and pod interfaces) for a backend whose encapsulation
    /// costs `overhead` bytes: the configured one, else the underlay MTU less the overhead.
    pub fn overlay_mtu(&self, overhead: u32) -> u32 {
        self.mtu
            .unwrap_or(self.underlay_mtu.saturating_sub(overhead))
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
            direct_routing: None,
        }
    }
}

/// An address family: of pods, of a prefix, or of the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The pod CIDR of this family in `cidrs`, if any.
    pub fn pod_cidr(self, cidrs: &PodCidrs) -> Option<IpNet> {
        match self {
            Family::V4 => cidrs.v4.map(IpNet::V4),
            Family::V6 => cidrs.v6.map(IpNet::V6),
        }
    }

    /// The underlay address of this family in `ips`, if any.
    pub fn public_ip(self, ips: &PublicIps) -> Option<IpAddr> {
        match self {
            Family::V4 => ips.v4.map(IpAddr::V4),
            Family::V6 => ips.v6.map(IpAddr::V6),
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

/// The family of this node's tunnel source address: its IPv4 underlay address if it has one, else
/// its IPv6 one (a v6-only underlay); `None` without either. Every backend sends from one family,
/// and a peer must publish an underlay address of it to be reached.
pub fn tunnel_family(own: &PublicIps) -> Option<Family> {
    if own.v4.is_some() {
        Some(Family::V4)
    } else if own.v6.is_some() {
        Some(Family::V6)
    } else {
        None
    }
}

/// This node's own lease cannot be planned. Nothing should be applied then: the datapath keeps
/// what it has rather than dropping every tunnel over a local mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("this node ({node}) runs the {backend} backend, not {expected}")]
    WrongBackend {
        node: NodeName,
        backend: Backend,
        expected: Backend,
    },
    #[error("this node ({node}) has no underlay address in its lease")]
    NoUnderlay { node: NodeName },
    /// Something the backend needs is missing from this node's lease; `what` says what, as the
    /// rest of the sentence "this node (NAME) …".
    #[error("this node ({node}) {what}")]
    Incomplete { node: NodeName, what: String },
}

/// The outcome of [`plan`] for a backend whose state is `S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<S> {
    /// What the kernel should hold.
    pub datapath: S,
    /// Peers that program nothing, by node name; empty when every peer was accepted.
    pub refused: Vec<Refusal>,
    /// The claims of the peers this plan programs: what to pass to the next [`plan`] once this
    /// plan is the one being programmed (see [`Incumbents`]).
    pub accepted: Incumbents,
}

/// A backend's pure half: its identity claim for admission, its desired state, its diff, the MTU
/// its encapsulation leaves for pods, and the model of its operations.
pub trait BackendPlan: IdentityRule + Send + Sync + 'static {
    /// The backend's datapath state, desired and observed, in one type so the two compare.
    type State: Clone + Default + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// One change to that state; `Display` gives the equivalent command for the log.
    type Op: fmt::Display + fmt::Debug + Clone + PartialEq + Send + Sync + 'static;

    /// The state the node holding `own` wants, given the peers admission accepted (in node-name
    /// order). An `own` lease the backend cannot serve is an error, never an empty state.
    ///
    /// For [`incremental::Planner`]: the state is what `own` and `config` alone give (devices,
    /// addresses) plus, for each admitted peer, entries that depend on that peer alone and are
    /// keyed by its claims (pod CIDRs, identity, underlay address), so two accepted peers never
    /// share a key; and of `own` only its name, pod CIDRs, underlay addresses and backend data
    /// count, not its expiry. The incremental model test checks this for each backend.
    fn desired(
        &self,
        own: &Lease,
        admitted: &[Admitted<'_>],
        config: &PlanConfig,
    ) -> Result<Self::State, PlanError>;

    /// The minimal operations that make `observed` equal `desired`, in an order that applies
    /// cleanly.
    fn diff(&self, desired: &Self::State, observed: &Self::State) -> Vec<Self::Op>;

    /// The MTU of pod interfaces (and tunnel devices) on the node holding `own`.
    fn pod_mtu(&self, own: &Lease, config: &PlanConfig) -> u32;

    /// The device an operation acts on, if any: once one cannot be created, the operations on it
    /// are skipped for the rest of the pass.
    fn op_device<'o>(&self, op: &'o Self::Op) -> Option<&'o weft_proto::names::IfName>;

    /// Whether `op` creates its device (so its failure means the device is missing).
    fn creates_device(&self, op: &Self::Op) -> bool;

    /// What `op` does to `state`, as a model: the reference meaning of each operation for the
    /// driver that applies them, refusing what the kernel would refuse.
    fn model_apply(&self, state: &mut Self::State, op: &Self::Op) -> Result<(), ModelError>;

    /// The UDP port of a tunnel that takes any packet that reaches it (VXLAN: 8472), which the
    /// firewall then opens to current peers only; `None` where the tunnel authenticates every
    /// packet itself (WireGuard) or there is none.
    fn guarded_port(&self) -> Option<u16> {
        None
    }
}

/// An operation the kernel would refuse, as a backend's model says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {reason}")]
pub struct ModelError {
    /// The operation, as its log line.
    pub op: String,
    pub reason: &'static str,
}

/// The plan of the node holding `own` on `backend`: admission of `peers` (with the previous plan's
/// [`Plan::accepted`] as `incumbents`, or [`Incumbents::default`] at start-up), then the backend's
/// desired state for the admitted peers. Pure; O(n log n) in the number of peers.
pub fn plan<'a, B: BackendPlan>(
    backend: &B,
    own: &Lease,
    peers: impl IntoIterator<Item = &'a Lease>,
    config: &PlanConfig,
    incumbents: &Incumbents,
) -> Result<Plan<B::State>, PlanError> {
    let underlay = tunnel_family(&own.public_ips).unwrap_or(Family::V4);
    let admission = admission::admit(own, peers, underlay, config, incumbents, backend);
    let datapath = backend.desired(own, &admission.admitted, config)?;
    Ok(Plan {
        datapath,
        refused: admission.refused,
        accepted: admission.incumbents,
    })
}
