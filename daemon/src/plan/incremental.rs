//! The incremental planner: the same [`Plan`] as [`super::plan`], in O(change) rather than
//! O(peers) when only a few peers changed, and the operations that take the previous plan's
//! datapath to the new one. Pure, like the full plan, which stays the reference: every update
//! either is provably equal to it or falls back to it.
//!
//! **State.** [`Planner`] keeps the inputs of the last plan (this node's lease, the config, a copy
//! of every peer's lease), that plan, and an index of the claims it accepted (`claims`: pod CIDRs
//! as intervals per family, identity claims, underlay addresses, each → its holder).
//!
//! **One update.** The new peers (in node-name order, as the store's `PeerSet` hands them) are
//! compared with the kept ones, lease by lease: the changed set C (joined, left, or with another
//! record; a renewal that moves only `expires` is no change). That walk is the only O(n) step,
//! one comparison per peer. Then the fast path applies when all of these hold:
//!
//! 1. this node's lease (but for its expiry) and the config are unchanged;
//! 2. the last plan refused no peer for a *conflict* — only for its own checks;
//! 3. every peer in C, judged alone (`admission::judge_alone`: the checks of one peer), is
//!    refused on its own checks, has nothing to program, or has claims colliding with none of
//!    the claims of the other accepted peers (index look-ups) nor of the other peers in C.
//!
//! Then the full plan is this one, by the admission rules: the eligible peers (those that passed
//! their own checks and claim something) are the unchanged accepted ones — by 2., none was
//! refused for a conflict — and the eligible ones in C; by 3. no two of them collide, so there
//! is no conflict and incumbency decides nothing: every eligible peer is accepted with the
//! claims its own checks found, every other keeps the refusal of its own checks, which depend on
//! nothing but its record, this node's lease and the config (unchanged by 1.). So only C's
//! verdicts change: C's old claims are released and its new ones held, its refusals replaced.
//!
//! **The datapath.** A backend's desired state is this node's devices (from its lease and the
//! config alone) plus, for each admitted peer, entries keyed by that peer's claims (routes by pod
//! CIDR, neighbour and FDB entries by gateway and VTEP MAC, WireGuard peers by public key); the
//! accepted claims are disjoint, so no two peers share a key. So the operations between the old
//! and the new full states are exactly those between two small fragments, the backend's desired
//! state for C's old admitted peers and for its new ones
//! (`diff(desired(own, new C), desired(own, old C))`): both hold the same devices, the other
//! peers' keys appear in neither and differ in neither full state, and a diff treats each key on
//! its own, in the same order. Those operations, applied to the previous datapath through the
//! backend's model ([`BackendPlan::model_apply`], the reference meaning of each operation), give
//! the new one. The model test of this module checks all of it against the full plan and its
//! diff, for every backend.
//!
//! Anything else plans in full ([`super::plan`], with the last plan's claims as incumbents) and
//! rebuilds the state: O(n log n), as before. So does an update after a conflict, until the plan
//! refuses no peer for one (a conflict's verdicts can move with incumbency alone).
//!
//! **Costs.** An update with k changed peers among n: O(n) comparisons of leases, then
//! O(k log n) (admission of C, index look-ups and updates, the fragments' plan and diff, the
//! model of their few operations — WireGuard's model of a peer added scans the device's peers
//! for overlapping allowed IPs, O(n) cheap comparisons). Memory: one copy of every peer's lease
//! and the index, O(n).

mod claims;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use weft_proto::lease::Lease;
use weft_proto::names::NodeName;

use super::admission::{judge_alone, Admitted, Alone};
use super::{plan, tunnel_family, BackendPlan, Family, Plan, PlanConfig, PlanError};
use claims::ClaimIndex;

/// What one [`Planner::update`] did; the new plan is [`Planner::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<S, O> {
    /// The plan moved by exactly these operations: what the backend's `diff(new, previous)` of
    /// the two datapaths returns (empty when nothing the plan reads changed).
    Incremental(Vec<O>),
    /// Planned in full. `previous`: the previous plan's datapath; `None` at the first plan, or
    /// when it is not known (the previous state must then be read from the kernel).
    Full { previous: Option<S> },
}

/// The incremental planner of one node on one backend; see the [module documentation](self).
/// Give it the same backend (with the same settings) at every update.
pub struct Planner<B: BackendPlan> {
    last: Option<Last<B>>,
}

impl<B: BackendPlan> Default for Planner<B> {
    fn default() -> Self {
        Planner { last: None }
    }
}

/// The last plan and its inputs.
struct Last<B: BackendPlan> {
    own: Lease,
    config: PlanConfig,
    /// Every peer's lease, by name.
    peers: BTreeMap<NodeName, Lease>,
    plan: Plan<B::State>,
    /// The claims of `plan.accepted`.
    claims: ClaimIndex,
    /// Whether `plan` refused a peer for a conflict (or the peers carried a name twice): its
    /// verdicts may then move with incumbency alone, so the next update plans in full.
    conflicted: bool,
}

/// A changed peer: its name and its new lease (`None`: gone).
type Changed<'a> = (NodeName, Option<&'a Lease>);

/// Why the fast path was not taken.
enum Fallback {
    /// It does not apply; the last plan is intact.
    Ineligible,
    /// The model refused an operation midway: the kept datapath is no longer known.
    Broken,
}

impl<B: BackendPlan> Planner<B> {
    /// A planner that has planned nothing yet: its first update plans in full.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last plan; `None` before the first successful update.
    pub fn plan(&self) -> Option<&Plan<B::State>> {
        self.last.as_ref().map(|last| &last.plan)
    }

    /// Plan for `own` and `peers` on `backend`: the plan [`super::plan`] gives with the last
    /// plan's [`Plan::accepted`] as incumbents (none at the first), and how it moved. `peers` in
    /// node-name order, one lease per name (as `PeerSet::iter` gives them), for the fast path;
    /// in another order every update plans in full.
    ///
    /// Cost: see the [module documentation](self). On an error (this node's lease cannot be
    /// planned) the last plan stays, as it stays programmed.
    pub fn update<'a>(
        &mut self,
        backend: &B,
        own: &Lease,
        peers: impl IntoIterator<Item = &'a Lease>,
        config: &PlanConfig,
    ) -> Result<Update<B::State, B::Op>, PlanError> {
        let peers: Vec<&Lease> = peers.into_iter().collect();
        let mut known = true;
        if let Some(last) = &mut self.last {
            match last.advance(backend, own, &peers, config) {
                Ok(ops) => return Ok(Update::Incremental(ops)),
                Err(Fallback::Ineligible) => {}
                Err(Fallback::Broken) => known = false,
            }
        }
        let incumbents = self.last.as_ref().map(|l| &l.plan.accepted);
        let planned = plan(
            backend,
            own,
            peers.iter().copied(),
            config,
            incumbents.unwrap_or(&Default::default()),
        )?;
        let last = Last::new(backend, own, &peers, config, planned);
        let previous = self.last.replace(last).map(|l| l.plan.datapath);
        Ok(Update::Full {
            previous: previous.filter(|_| known),
        })
    }
}

impl<B: BackendPlan> Last<B> {
    /// The state after a full plan of `peers`. O(n log n).
    fn new(
        backend: &B,
        own: &Lease,
        peers: &[&Lease],
        config: &PlanConfig,
        plan: Plan<B::State>,
    ) -> Self {
        let by_name: BTreeMap<NodeName, Lease> = peers
            .iter()
            .map(|l| (l.node.clone(), (*l).clone()))
            .collect();
        let mut claims = ClaimIndex::default();
        for node in plan.accepted.nodes() {
            if let Some(admitted) = by_name
                .get(node)
                .and_then(|l| plan.accepted.admitted(node, l))
            {
                claims.insert(&admitted);
            }
        }
        let underlay = tunnel_family(&own.public_ips).unwrap_or(Family::V4);
        let conflicted = by_name.len() != peers.len()
            || plan.refused.iter().any(|r| {
                let lease = by_name.get(&r.node);
                !lease.is_some_and(|l| {
                    matches!(
                        judge_alone(l, own, underlay, config, backend),
                        Alone::Refused(_)
                    )
                })
            });
        Last {
            own: own.clone(),
            config: config.clone(),
            peers: by_name,
            plan,
            claims,
            conflicted,
        }
    }

    /// The fast path (see the module documentation): the operations from the last plan's
    /// datapath to the new one, the state moved to the new plan; or why not.
    fn advance(
        &mut self,
        backend: &B,
        own: &Lease,
        peers: &[&Lease],
        config: &PlanConfig,
    ) -> Result<Vec<B::Op>, Fallback> {
        if self.conflicted || !same_record(own, &self.own) || *config != self.config {
            return Err(Fallback::Ineligible);
        }
        let changed = changes(&self.peers, peers).ok_or(Fallback::Ineligible)?;
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let underlay = tunnel_family(&own.public_ips).unwrap_or(Family::V4);
        let judged: Vec<(&NodeName, Option<Alone>)> = changed
            .iter()
            .map(|(node, new)| {
                (
                    node,
                    new.map(|l| judge_alone(l, own, underlay, config, backend)),
                )
            })
            .collect();
        let old: Vec<Admitted> = changed
            .iter()
            .filter_map(|(node, _)| {
                let lease = self.peers.get(node)?;
                self.plan.accepted.admitted(node, lease)
            })
            .collect();
        let new: Vec<Admitted> = judged
            .iter()
            .filter_map(|(_, alone)| match alone {
                Some(Alone::Eligible(admitted)) => Some(admitted.clone()),
                _ => None,
            })
            .collect();
        if self.collides(&changed, &new) {
            return Err(Fallback::Ineligible);
        }
        let ops = fragment_ops(backend, own, config, &old, &new)?;
        for op in &ops {
            backend
                .model_apply(&mut self.plan.datapath, op)
                .map_err(|_| Fallback::Broken)?;
        }
        // Commit: C's old claims and refusals out, its new ones in.
        for admitted in &old {
            self.claims.remove(admitted);
            self.plan.accepted.release(&admitted.lease.node);
        }
        for (node, alone) in judged {
            self.commit(node, alone);
        }
        self.store(changed);
        Ok(ops)
    }

    /// Whether a claim of a changed peer's `new` admitted record collides with one of an
    /// unchanged accepted peer or of another changed peer.
    fn collides(&self, changed: &[Changed], new: &[Admitted]) -> bool {
        let is_changed = |node: &NodeName| changed.binary_search_by(|(n, _)| n.cmp(node)).is_ok();
        let mut fresh = ClaimIndex::default();
        for admitted in new {
            if self.claims.collision(admitted, &is_changed).is_some()
                || fresh.collision(admitted, &|_| false).is_some()
            {
                return true;
            }
            fresh.insert(admitted);
        }
        false
    }

    /// Record the verdict on one changed peer (its old claims already released): its refusal,
    /// or its claims.
    fn commit(&mut self, node: &NodeName, alone: Option<Alone>) {
        let refused = &mut self.plan.refused;
        let at = refused.binary_search_by(|r| r.node.cmp(node));
        match (alone, at) {
            (Some(Alone::Refused(refusal)), Ok(i)) => refused[i] = refusal,
            (Some(Alone::Refused(refusal)), Err(i)) => refused.insert(i, refusal),
            (other, at) => {
                if let Ok(i) = at {
                    refused.remove(i);
                }
                if let Some(Alone::Eligible(admitted)) = other {
                    self.claims.insert(&admitted);
                    self.plan.accepted.hold(&admitted);
                }
            }
        }
    }

    /// Keep the changed peers' new leases.
    fn store(&mut self, changed: Vec<Changed>) {
        for (node, new) in changed {
            match new {
                Some(lease) => self.peers.insert(node, lease.clone()),
                None => self.peers.remove(&node),
            };
        }
    }
}

/// The operations between the backend's desired states for the changed peers' `old` and `new`
/// admitted records alone (both with this node's devices).
fn fragment_ops<B: BackendPlan>(
    backend: &B,
    own: &Lease,
    config: &PlanConfig,
    old: &[Admitted],
    new: &[Admitted],
) -> Result<Vec<B::Op>, Fallback> {
    let fragment = |admitted: &[Admitted]| {
        backend
            .desired(own, admitted, config)
            .map_err(|_| Fallback::Ineligible)
    };
    Ok(backend.diff(&fragment(new)?, &fragment(old)?))
}

/// The peers whose lease differs between `old` and `new`, in node-name order, each with its new
/// lease (`None`: gone); `None` when `new` is not in strictly increasing name order. O(n): one
/// merge of the two name orders, one comparison of records per name in both.
fn changes<'a>(old: &BTreeMap<NodeName, Lease>, new: &[&'a Lease]) -> Option<Vec<Changed<'a>>> {
    let mut changed = Vec::new();
    let mut kept = old.iter().peekable();
    let mut previous: Option<&NodeName> = None;
    for lease in new {
        if previous.is_some_and(|p| *p >= lease.node) {
            return None;
        }
        previous = Some(&lease.node);
        loop {
            match kept.peek().map(|(node, _)| (*node).cmp(&lease.node)) {
                Some(Ordering::Less) => {
                    changed.extend(kept.next().map(|(node, _)| (node.clone(), None)));
                }
                Some(Ordering::Equal) => {
                    if kept.next().is_some_and(|(_, was)| !same_record(was, lease)) {
                        changed.push((lease.node.clone(), Some(*lease)));
                    }
                    break;
                }
                _ => {
                    changed.push((lease.node.clone(), Some(*lease)));
                    break;
                }
            }
        }
    }
    changed.extend(kept.map(|(node, _)| (node.clone(), None)));
    Some(changed)
}

/// Equal in everything a plan reads: all but the expiry time, which every renewal moves, and the
/// machine identity, which only the store reads.
fn same_record(a: &Lease, b: &Lease) -> bool {
    let Lease {
        node,
        pod_cidrs,
        public_ips,
        backend,
        expires: _,
        machine: _,
    } = a;
    *node == b.node
        && *pod_cidrs == b.pod_cidrs
        && *public_ips == b.public_ips
        && *backend == b.backend
}
