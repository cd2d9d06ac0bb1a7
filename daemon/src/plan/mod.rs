//! The pure planning core of weft's VXLAN datapath: leases in, desired kernel state out, and the
//! minimal operations that turn the observed kernel state into the desired one. Nothing here does
//! I/O; `datapath::vxlan` reads the observed [`Datapath`] over netlink and applies the [`Op`]s.
//!
//! # Design notes
//!
//! **Scheme (flannel's, per pod family).** This node runs one VXLAN device per pod family it holds
//! a pod CIDR for: `weft.vxlan` (IPv4 pods, VNI 1) and `weft-v6.vxlan` (IPv6 pods, VNI 2), both on
//! UDP 8472, both with learning off. Each device carries the network address of this node's pod
//! CIDR of its family as a /32 or /128 (`10.244.1.0/32 dev weft.vxlan`), so the node's own traffic
//! into the overlay has a source address peers route back. For every accepted peer and every family
//! both sides hold a pod CIDR for, the device gets:
//!
//! ```text
//! ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink            # the peer's pods
//! ip neigh replace 10.244.2.0 lladdr <peer VTEP MAC> dev weft.vxlan nud permanent # its gateway's MAC
//! bridge fdb replace <peer VTEP MAC> dev weft.vxlan dst <peer underlay IP> self permanent
//! ```
//!
//! Cost per peer per family: one route, one neighbour, one FDB entry — nothing is broadcast, nothing
//! is learnt, and a peer change touches only that peer's entries.
//!
//! **Underlay family.** Both devices send from the same underlay address (`local`): the node's IPv4
//! underlay address if it has one, else its IPv6 one (a v6-only underlay). A peer's FDB `dst` is
//! its underlay address of that same family; a peer without one cannot be reached and is refused.
//! MTU: the configured override, else the underlay MTU less the encapsulation (50 bytes over IPv4,
//! 70 over IPv6).
//!
//! **Trust nothing a peer publishes.** Any node agent can write any Node object today, so
//! [`desired`] checks every peer record and refuses (programs nothing for, and says why) a peer
//! whose claims would hijack or break traffic; see [`vxlan`] for the list and the conflict policy:
//! incumbency. A peer's claim (pod CIDR, VTEP MAC, underlay address) that the plan being
//! programmed accepted stays programmed, and a newcomer conflicting with it is refused; so a record
//! imitating node b's cannot cut b's pods off. Only a conflict no claimant held before (at
//! start-up, say) refuses every claimant, since the plan cannot know who is honest: the store
//! arbitrates claims, the plan can only refuse.
//!
//! **Steps.** [`desired`] (own lease, peers, [`PlanConfig`], the [`Incumbents`] — the previous
//! plan's [`Plan::accepted`]) → [`Plan`] (a [`Datapath`], the refusals and the claims accepted);
//! the datapath reads the kernel into an observed [`Datapath`]; [`diff`] → `Vec<`[`Op`]`>`
//! in an order that applies cleanly; the datapath applies them (each op's meaning is pinned down by
//! [`Datapath::apply`], the reference model the tests check the diff against). A restart and a
//! steady-state peer event go through the same two functions, so a restart converges what is there
//! instead of flushing it.
//!
//! **Operation counts.** A peer added or removed: three operations per shared family. A peer whose
//! underlay address moved: one FDB replace per family. A new VTEP MAC: FDB add, neighbour replace
//! and the delete of the old FDB entry. Never a full resync.

mod diff;
mod state;
pub mod vxlan;

#[cfg(test)]
mod tests;

pub use diff::{diff, Op};
pub use state::{
    Address, ApplyError, Datapath, Fdb, FdbKey, Neighbour, NeighbourKey, Route, VxlanDevice,
};
pub use vxlan::{desired, Family, Incumbents, Plan, PlanConfig, PlanError, Refusal};
