//! The claims of the accepted peers, indexed so that whether one peer's claims collide with any
//! other's costs O(log n): pod CIDRs as intervals per family, identity claims and underlay
//! addresses by value, each naming its holder.
//!
//! The claims of one plan's accepted peers are disjoint (admission refuses every overlap), so the
//! pod CIDRs of a family sorted by first address also have their last addresses in order: the
//! ones a prefix overlaps are the run just before its end, walked back until one ends before it
//! starts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_proto::names::NodeName;

use crate::net::{end, start};
use crate::plan::admission::{Admitted, Identity};
use crate::plan::Family;

/// Accepted claims by value → their holder. Disjoint: see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ClaimIndex {
    /// (family, first address) → (last address, holder).
    cidrs: BTreeMap<(Family, u128), (u128, NodeName)>,
    identities: BTreeMap<Identity, NodeName>,
    underlays: BTreeMap<IpAddr, NodeName>,
}

impl ClaimIndex {
    /// The claims of `peer`, held by its node. The caller keeps the index disjoint (checks
    /// [`Self::collision`] first). O(log n).
    pub(super) fn insert(&mut self, peer: &Admitted<'_>) {
        let node = &peer.lease.node;
        for (family, cidr, identity) in &peer.entries {
            let span = (end(cidr), node.clone());
            self.cidrs.insert((*family, start(cidr)), span);
            self.identities.insert(identity.clone(), node.clone());
        }
        self.underlays.insert(peer.underlay, node.clone());
    }

    /// Forget the claims of `peer` that its node holds (a claim another node holds by now
    /// stays). O(log n).
    pub(super) fn remove(&mut self, peer: &Admitted<'_>) {
        let node = &peer.lease.node;
        for (family, cidr, identity) in &peer.entries {
            let key = (*family, start(cidr));
            if self.cidrs.get(&key).is_some_and(|(_, n)| n == node) {
                self.cidrs.remove(&key);
            }
            if self.identities.get(identity) == Some(node) {
                self.identities.remove(identity);
            }
        }
        if self.underlays.get(&peer.underlay) == Some(node) {
            self.underlays.remove(&peer.underlay);
        }
    }

    /// A holder, other than the nodes `ignored` says, of a claim colliding with one of `peer`'s:
    /// an overlapping pod CIDR of the same family, the same identity claim or the same underlay
    /// address; `None` when there is none. O(log n + k) for k ignored claims met on the way.
    pub(super) fn collision(
        &self,
        peer: &Admitted<'_>,
        ignored: &dyn Fn(&NodeName) -> bool,
    ) -> Option<NodeName> {
        let other = |holder: Option<&NodeName>| holder.filter(|h| !ignored(h)).cloned();
        for (family, cidr, identity) in &peer.entries {
            let (lo, hi) = (start(cidr), end(cidr));
            let before = self.cidrs.range((*family, 0)..=(*family, hi)).rev();
            let overlapping = before.take_while(|(_, (last, _))| *last >= lo);
            if let Some(holder) = overlapping.filter_map(|(_, (_, h))| other(Some(h))).next() {
                return Some(holder);
            }
            if let Some(holder) = other(self.identities.get(identity)) {
                return Some(holder);
            }
        }
        other(self.underlays.get(&peer.underlay))
    }

    /// Whether the index holds no claim at all.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.identities.is_empty() && self.underlays.is_empty()
    }
}
