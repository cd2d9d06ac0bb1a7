//! Pod addresses from the node's pod CIDRs, both families, persisted under the state directory.
//!
//! ```text
//! STATE_DIR/ipam.json   {"allocations": {"CONTAINER_ID/IFNAME": {"v4": "...", "v6": "..."}},
//!                        "next_v4": "...", "next_v6": "..."}
//! ```
//! Every change is written (temporary file, rename) before the caller acts on it, so a daemon killed
//! at any point has either not handed the address out or remembers it (no fsync: a power loss
//! reboots the node, its runtime re-creates every pod, and GC releases what the old file held); GC releases what the runtime
//! no longer knows. One container ID + interface always gets the same addresses back (a repeated ADD).
//! Allocation is next-fit from a cursor, as host-local does, so a just-released address is not
//! handed out again at once (stale conntrack entries and ARP caches point at it for a while).
//!
//! Reserved: the CIDR's network address (the VXLAN device holds it, as flannel does) and, for
//! IPv4, the broadcast address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use weft_proto::lease::PodCidrs;

use crate::fsutil::atomic_replace;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {cidr}: {in_use} of {usable} in use")]
    Exhausted {
        cidr: IpNet,
        in_use: usize,
        usable: u128,
    },
    #[error("IPAM state {path} is damaged ({reason}) while pods are wired: restore it, or remove the pods' veths and the file")]
    Damaged { path: PathBuf, reason: String },
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One pod interface: the runtime's container ID and the interface name inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn encode(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    fn decode(text: &str) -> Option<AttachmentKey> {
        let (cid, ifname) = text.rsplit_once('/')?;
        Some(AttachmentKey::new(cid, ifname))
    }
}

/// The addresses of one pod interface; a single-stack node leaves the other family empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Addr>,
}

impl Allocation {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpamState {
    allocations: BTreeMap<String, Allocation>,
    #[serde(default)]
    next_v4: Option<Ipv4Addr>,
    #[serde(default)]
    next_v6: Option<Ipv6Addr>,
}

pub struct Ipam {
    path: PathBuf,
    cidrs: PodCidrs,
    state: IpamState,
}

impl Ipam {
    /// Load the state under `state_dir` (empty if there is none) for a node holding `cidrs`.
    ///
    /// A damaged file is an error unless `set_aside_damage`: the caller passes that only when no
    /// pod of this node is wired (after a reboot), since an empty IPAM would otherwise hand out
    /// addresses running pods hold, and GC would remove their veths.
    pub fn open(
        state_dir: &Path,
        cidrs: PodCidrs,
        set_aside_damage: bool,
    ) -> Result<Ipam, IpamError> {
        let path = state_dir.join("ipam.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => state,
                Err(e) if set_aside_damage => set_aside(&path, &e.to_string())?,
                Err(e) => {
                    return Err(IpamError::Damaged {
                        path,
                        reason: e.to_string(),
                    })
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        Ok(Ipam { path, cidrs, state })
    }

    /// The node's CIDRs changed (a lease lost and re-acquired elsewhere): new pods get addresses
    /// from the new CIDRs; existing allocations stay until their pods go.
    pub fn set_cidrs(&mut self, cidrs: PodCidrs) {
        self.cidrs = cidrs;
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<Allocation> {
        self.state.allocations.get(&key.encode()).copied()
    }

    pub fn len(&self) -> usize {
        self.state.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.allocations.is_empty()
    }

    pub fn allocations(&self) -> impl Iterator<Item = (AttachmentKey, Allocation)> + '_ {
        self.state
            .allocations
            .iter()
            .filter_map(|(k, a)| AttachmentKey::decode(k).map(|key| (key, *a)))
    }

    /// The addresses of `key`: the ones it already has, else new ones (persisted before returning).
    pub fn allocate(&mut self, key: &AttachmentKey) -> Result<Allocation, IpamError> {
        if let Some(existing) = self.get(key) {
            return Ok(existing);
        }
        let mut allocation = Allocation::default();
        if let Some(net) = self.cidrs.v4 {
            let ip = self.free_v4(net)?;
            allocation.v4 = Some(ip);
            self.state.next_v4 = Some(ip);
        }
        if let Some(net) = self.cidrs.v6 {
            let ip = self.free_v6(net)?;
            allocation.v6 = Some(ip);
            self.state.next_v6 = Some(ip);
        }
        self.state.allocations.insert(key.encode(), allocation);
        self.save()?;
        Ok(allocation)
    }

    /// Forget `key`; `None` if it had nothing (a repeated DEL).
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Allocation>, IpamError> {
        let released = self.state.allocations.remove(&key.encode());
        if released.is_some() {
            self.save()?;
        }
        Ok(released)
    }

    /// Keep only the attachments `keep` accepts; returns what was released.
    pub fn retain(
        &mut self,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Result<Vec<(AttachmentKey, Allocation)>, IpamError> {
        let released: Vec<(AttachmentKey, Allocation)> =
            self.allocations().filter(|(k, _)| !keep(k)).collect();
        for (key, _) in &released {
            self.state.allocations.remove(&key.encode());
        }
        if !released.is_empty() {
            self.save()?;
        }
        Ok(released)
    }

    /// Whether an address of every family can still be handed out.
    pub fn has_room(&self) -> bool {
        let v4_ok = self
            .cidrs
            .v4
            .is_none_or(|net| self.in_use(IpNet::V4(net)) < usable_v4(net) as usize);
        let v6_ok = self
            .cidrs
            .v6
            .is_none_or(|net| (self.in_use(IpNet::V6(net)) as u128) < usable_v6(net));
        v4_ok && v6_ok
    }

    fn in_use(&self, net: IpNet) -> usize {
        self.state
            .allocations
            .values()
            .flat_map(|a| a.addresses())
            .filter(|ip| net.contains(ip))
            .count()
    }

    fn is_taken(&self, ip: IpAddr) -> bool {
        self.state
            .allocations
            .values()
            .any(|a| a.addresses().any(|x| x == ip))
    }

    fn free_v4(&self, net: Ipv4Net) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(net.network()) as u128 + 1;
        let usable = usable_v4(net) as u128;
        let after = self
            .state
            .next_v4
            .filter(|ip| net.contains(ip))
            .map(|ip| u32::from(ip) as u128);
        self.scan(IpNet::V4(net), first, usable, after, |n| {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        })
        .map(|ip| match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => unreachable!("scan of an IPv4 range"),
        })
    }

    fn free_v6(&self, net: Ipv6Net) -> Result<Ipv6Addr, IpamError> {
        let first = u128::from(net.network()) + 1;
        let usable = usable_v6(net);
        let after = self
            .state
            .next_v6
            .filter(|ip| net.contains(ip))
            .map(u128::from);
        self.scan(IpNet::V6(net), first, usable, after, |n| {
            IpAddr::V6(Ipv6Addr::from(n))
        })
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6,
            IpAddr::V4(_) => unreachable!("scan of an IPv6 range"),
        })
    }

    /// Next fit over `usable` addresses from `first`, starting after `after`; visits at most
    /// in-use + 1 addresses.
    fn scan(
        &self,
        cidr: IpNet,
        first: u128,
        usable: u128,
        after: Option<u128>,
        to_ip: impl Fn(u128) -> IpAddr,
    ) -> Result<IpAddr, IpamError> {
        let in_use = self.in_use(cidr);
        let exhausted = || IpamError::Exhausted {
            cidr,
            in_use,
            usable,
        };
        if usable == 0 {
            return Err(exhausted());
        }
        let start = after.map(|a| (a + 1 - first) % usable).unwrap_or(0);
        let limit = (in_use as u128 + 1).min(usable);
        for step in 0..limit {
            let ip = to_ip(first + (start + step) % usable);
            if !self.is_taken(ip) {
                return Ok(ip);
            }
        }
        Err(exhausted())
    }

    fn save(&self) -> Result<(), IpamError> {
        let json = serde_json::to_vec(&self.state).expect("IPAM state always serialises");
        atomic_replace(&self.path, &json).map_err(|source| IpamError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A damaged state file (a power loss without fsync can leave it empty) is moved aside and IPAM
/// starts empty: after a reboot the node's pods are being re-created anyway, and refusing to start
/// would block every pod on the node until someone deletes the file by hand.
fn set_aside(path: &Path, reason: &str) -> Result<IpamState, IpamError> {
    let aside = path.with_extension("json.damaged");
    std::fs::rename(path, &aside).map_err(|source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(path = %path.display(), moved_to = %aside.display(), %reason, "IPAM state was damaged; starting empty");
    Ok(IpamState::default())
}

/// Host addresses of an IPv4 pod CIDR, less the network address (the VXLAN device's) and broadcast.
fn usable_v4(net: Ipv4Net) -> u32 {
    let size = 1u64 << (32 - net.prefix_len());
    size.saturating_sub(2) as u32
}

/// Host addresses of an IPv6 pod CIDR, less the network (subnet-router anycast) address.
fn usable_v6(net: Ipv6Net) -> u128 {
    let bits = 128 - u32::from(net.prefix_len());
    1u128.checked_shl(bits).map(|s| s - 1).unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(v4: &str, v6: &str) -> PodCidrs {
        PodCidrs {
            v4: v4.parse().ok(),
            v6: v6.parse().ok(),
        }
    }

    fn key(n: u32) -> AttachmentKey {
        AttachmentKey::new(format!("container-{n}"), "eth0")
    }

    #[test]
    fn dual_stack_allocation_is_distinct_idempotent_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(
            dir.path(),
            cidrs("10.244.1.0/24", "fd00:10:244:1::/64"),
            false,
        )
        .unwrap();
        let a = ipam.allocate(&key(1)).unwrap();
        let b = ipam.allocate(&key(2)).unwrap();
        assert_eq!(a.v4, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(a.v6, Some("fd00:10:244:1::1".parse().unwrap()));
        assert_eq!(b.v4, Some("10.244.1.2".parse().unwrap()));
        assert_eq!(
            ipam.allocate(&key(1)).unwrap(),
            a,
            "a repeated ADD gets the same addresses"
        );
        let reopened = Ipam::open(
            dir.path(),
            cidrs("10.244.1.0/24", "fd00:10:244:1::/64"),
            false,
        )
        .unwrap();
        assert_eq!(reopened.get(&key(1)), Some(a));
        assert_eq!(reopened.len(), 2);
    }

    #[test]
    fn single_stack_gets_one_family() {
        let dir = tempfile::tempdir().unwrap();
        let mut v6_only = Ipam::open(dir.path(), cidrs("", "fd00::/120"), false).unwrap();
        let a = v6_only.allocate(&key(1)).unwrap();
        assert_eq!((a.v4, a.v6), (None, Some("fd00::1".parse().unwrap())));
    }

    #[test]
    fn next_fit_does_not_reuse_a_released_address_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/29", ""), false).unwrap();
        let a = ipam.allocate(&key(1)).unwrap();
        ipam.release(&key(1)).unwrap();
        let b = ipam.allocate(&key(2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            ipam.release(&key(99)).unwrap(),
            None,
            "a DEL of an unknown container is fine"
        );
    }

    #[test]
    fn exhaustion_is_clear_and_leaves_others_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/29", "fd00::/64"), false).unwrap();
        let held: Vec<Allocation> = (0..6).map(|n| ipam.allocate(&key(n)).unwrap()).collect();
        let v4s: std::collections::BTreeSet<_> = held.iter().map(|a| a.v4.unwrap()).collect();
        assert_eq!(v4s.len(), 6, "the six usable addresses .1-.6");
        assert!(
            !v4s.contains(&"10.0.0.0".parse().unwrap())
                && !v4s.contains(&"10.0.0.7".parse().unwrap())
        );
        assert!(!ipam.has_room());
        let err = ipam.allocate(&key(7)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in 10.0.0.0/29: 6 of 6 in use"
        );
        assert_eq!(ipam.get(&key(7)), None, "nothing half-allocated");
        for (n, a) in held.iter().enumerate() {
            assert_eq!(ipam.get(&key(n as u32)), Some(*a));
        }
        ipam.release(&key(3)).unwrap();
        assert_eq!(ipam.allocate(&key(7)).unwrap().v4, held[3].v4);
    }

    #[test]
    fn retain_releases_what_the_runtime_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false).unwrap();
        for n in 0..5 {
            ipam.allocate(&key(n)).unwrap();
        }
        let released = ipam
            .retain(|k| k.container_id.ends_with(['1', '3']))
            .unwrap();
        assert_eq!(released.len(), 3);
        let left: Vec<String> = ipam.allocations().map(|(k, _)| k.container_id).collect();
        assert_eq!(left, ["container-1", "container-3"]);
    }

    #[test]
    fn damaged_state_is_set_aside_only_when_no_pod_is_wired() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipam.json"), b"").unwrap();
        let err = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("ipam.json is damaged"), "{err}");
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), true).unwrap();
        assert!(ipam.is_empty());
        assert!(
            dir.path().join("ipam.json.damaged").exists(),
            "kept for inspection"
        );
        ipam.allocate(&key(1)).unwrap();
    }
}
