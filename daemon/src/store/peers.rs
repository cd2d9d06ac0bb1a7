//! The peer view: snapshots and change lists in, added / updated / removed events out.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_proto::lease::Lease;
use weft_proto::names::NodeName;

use super::{PeerChange, PeerUpdate};

/// A change to one peer, carrying the old value as well as the new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Added(Lease),
    Updated { old: Lease, new: Lease },
    Removed(Lease),
}

impl PeerEvent {
    pub fn node(&self) -> &NodeName {
        match self {
            PeerEvent::Added(l) | PeerEvent::Removed(l) => &l.node,
            PeerEvent::Updated { new, .. } => &new.node,
        }
    }
}

/// The known peers, keyed by node name. Each lease is shared: the agent publishes a clone of
/// the set at every change while keeping its own, and a clone costs a reference per peer, not a
/// copy of every record.
#[derive(Debug, Default, Clone)]
pub struct PeerSet {
    peers: BTreeMap<NodeName, Arc<Lease>>,
}

impl PeerSet {
    pub fn get(&self, node: &NodeName) -> Option<&Lease> {
        self.peers.get(node).map(|lease| &**lease)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values().map(|lease| &**lease)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Apply an update; the events say exactly what differs from before.
    pub fn apply(&mut self, update: PeerUpdate) -> Vec<PeerEvent> {
        match update {
            PeerUpdate::Snapshot(leases) => self.reset(leases),
            PeerUpdate::Changes(changes) => {
                changes.into_iter().filter_map(|c| self.change(c)).collect()
            }
        }
    }

    fn reset(&mut self, leases: Vec<Lease>) -> Vec<PeerEvent> {
        let mut incoming: BTreeMap<NodeName, Lease> =
            leases.into_iter().map(|l| (l.node.clone(), l)).collect();
        let mut events = Vec::new();
        let gone: Vec<NodeName> = self
            .peers
            .keys()
            .filter(|n| !incoming.contains_key(*n))
            .cloned()
            .collect();
        for node in gone {
            if let Some(old) = self.peers.remove(&node) {
                events.push(PeerEvent::Removed(Arc::unwrap_or_clone(old)));
            }
        }
        for (_, lease) in std::mem::take(&mut incoming) {
            events.extend(self.change(PeerChange::Put(lease)));
        }
        events
    }

    fn change(&mut self, change: PeerChange) -> Option<PeerEvent> {
        match change {
            PeerChange::Delete(node) => self
                .peers
                .remove(&node)
                .map(|old| PeerEvent::Removed(Arc::unwrap_or_clone(old))),
            PeerChange::Put(lease) => {
                let kept = Arc::new(lease.clone());
                match self.peers.insert(lease.node.clone(), kept) {
                    None => Some(PeerEvent::Added(lease)),
                    Some(old) if same_content(&old, &lease) => None,
                    Some(old) => Some(PeerEvent::Updated {
                        old: Arc::unwrap_or_clone(old),
                        new: lease,
                    }),
                }
            }
        }
    }
}

/// Equal but for the expiry time, which every renewal moves.
fn same_content(a: &Lease, b: &Lease) -> bool {
    a.node == b.node
        && a.pod_cidrs == b.pod_cidrs
        && a.public_ips == b.public_ips
        && a.backend == b.backend
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::lease::{BackendData, MacAddr, PodCidrs, PublicIps};

    fn lease(name: &str, octet: u8, ip: &str) -> Lease {
        Lease {
            node: NodeName::new(name).unwrap(),
            pod_cidrs: PodCidrs {
                v4: Some(format!("10.244.{octet}.0/24").parse().unwrap()),
                v6: None,
            },
            public_ips: PublicIps {
                v4: Some(ip.parse().unwrap()),
                v6: None,
            },
            backend: BackendData::Vxlan {
                vtep_mac: Some(MacAddr::stable_local(name)),
                vtep_mac_v6: None,
            },
            expires: Some(100),
            machine: None,
        }
    }

    #[test]
    fn snapshot_then_changes_give_the_same_events_as_a_fresh_snapshot() {
        let mut set = PeerSet::default();
        let first = set.apply(PeerUpdate::Snapshot(vec![
            lease("a", 1, "192.0.2.1"),
            lease("b", 2, "192.0.2.2"),
        ]));
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| matches!(e, PeerEvent::Added(_))));

        let moved = lease("b", 2, "192.0.2.22");
        let events = set.apply(PeerUpdate::Snapshot(vec![
            lease("a", 1, "192.0.2.1"),
            moved.clone(),
            lease("c", 3, "192.0.2.3"),
        ]));
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            matches!(&events[0], PeerEvent::Updated { old, new } if old.public_ips.v4 != new.public_ips.v4)
        );
        assert!(matches!(&events[1], PeerEvent::Added(l) if l.node.as_str() == "c"));

        let events = set.apply(PeerUpdate::Snapshot(vec![moved.clone()]));
        let removed: Vec<&str> = events.iter().map(|e| e.node().as_str()).collect();
        assert_eq!(removed, ["a", "c"]);
        assert!(events.iter().all(|e| matches!(e, PeerEvent::Removed(_))));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn renewal_alone_is_not_an_update() {
        let mut set = PeerSet::default();
        set.apply(PeerUpdate::Snapshot(vec![lease("a", 1, "192.0.2.1")]));
        let mut renewed = lease("a", 1, "192.0.2.1");
        renewed.expires = Some(200);
        assert!(set
            .apply(PeerUpdate::Changes(vec![PeerChange::Put(renewed)]))
            .is_empty());
    }

    #[test]
    fn deleting_an_unknown_peer_is_no_event() {
        let mut set = PeerSet::default();
        let events = set.apply(PeerUpdate::Changes(vec![PeerChange::Delete(
            NodeName::new("ghost").unwrap(),
        )]));
        assert!(events.is_empty());
    }
}
