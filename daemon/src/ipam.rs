//! Pod addresses from the node's pod CIDRs, both families, persisted under the state directory.
//!
//! ```text
//! STATE_DIR/ipam/CONTAINER_ID@IFNAME   {"v4": "10.244.1.5", "v6": "fd00:10:244:1::5"}
//! STATE_DIR/ipam/CONTAINER_ID@IFNAME   {"v4": "10.244.1.6", "masquerade": false}   # "ipMasq": false
//! ```
//! One small file per pod interface, written (temporary file, rename to a new name) before the
//! caller acts on it and removed when the address is released. A daemon killed at any point has
//! either not handed the address out or remembers it, and an ADD costs one small file however
//! many pods the node runs (a single state file rewritten per ADD grew with the pod count and cost
//! 0.67 ms per ADD, measured). No fsync: a power loss reboots the node,
//! its runtime re-creates every pod, and GC releases what the old files held.
//!
//! One container ID + interface always gets the same addresses back (a repeated ADD). Allocation
//! is next-fit from a cursor, as host-local does, so a just-released address is not handed out
//! again at once (stale conntrack entries and ARP caches point at it for a while); after a restart
//! the cursor starts at the highest address in use.
//!
//! Reserved: the CIDR's network address (the VXLAN device holds it, as flannel does) and, for
//! IPv4, the broadcast address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use weft_proto::lease::PodCidrs;

use crate::fsutil::atomic_replace;
use crate::net::start;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {cidr}: {in_use} of {usable} in use")]
    Exhausted {
        cidr: IpNet,
        in_use: usize,
        usable: u128,
    },
    #[error("IPAM state {path} is damaged ({reason}) while pods are wired: restore it, or remove the pod's veth and the file")]
    Damaged { path: PathBuf, reason: String },
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network/container ID {0:?} cannot name an IPAM record")]
    BadKey(String),
}

/// The network of records written before records named their network, and the name of the
/// shipped conflist (`deploy/10-weft.conflist`): its records keep the plain `CONTAINER_ID@IFNAME`
/// file name, so existing state reads the same.
pub const DEFAULT_NETWORK: &str = "weft";

/// One pod interface, as the CNI spec keys an attachment: the network's name (the conflist's
/// `name`), the runtime's container ID and the interface name inside the pod. Two weft networks in
/// one pod (Multus) are two keys, and a DEL or GC of one never touches the other's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    /// An attachment of [`DEFAULT_NETWORK`].
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AttachmentKey {
            network: DEFAULT_NETWORK.to_string(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// The same attachment on the network `name`.
    pub fn in_network(self, name: impl Into<String>) -> Self {
        AttachmentKey {
            network: name.into(),
            ..self
        }
    }

    /// The record's file name: `CONTAINER_ID@IFNAME` on [`DEFAULT_NETWORK`], else
    /// `NETWORK#CONTAINER_ID@IFNAME`. Container IDs and network names are CNI identifiers
    /// (letters, digits, `_`, `-`, `.`), so `#` and the first `@` separate the parts; anything that
    /// could escape the directory or hide the file is refused.
    fn file_name(&self) -> Result<String, IpamError> {
        let cid = &self.container_id;
        let net = &self.network;
        let bad = cid.is_empty()
            || cid.starts_with('.')
            || cid.contains(['/', '@', '#', '\0'])
            || self.ifname.contains('/')
            || net.is_empty()
            || net.starts_with('.')
            || net.contains(['/', '@', '#', '\0']);
        if bad {
            return Err(IpamError::BadKey(format!("{net}/{cid}")));
        }
        Ok(match net == DEFAULT_NETWORK {
            true => format!("{cid}@{}", self.ifname),
            false => format!("{net}#{cid}@{}", self.ifname),
        })
    }

    fn from_file_name(name: &str) -> Option<AttachmentKey> {
        let (network, rest) = match name.split_once('#') {
            Some((network, rest)) => (network, rest),
            None => (DEFAULT_NETWORK, name),
        };
        let (cid, ifname) = rest.split_once('@')?;
        Some(AttachmentKey::new(cid, ifname).in_network(network))
    }
}

/// The addresses of one pod interface; a single-stack node leaves the other family empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Addr>,
    /// Whether the pod's traffic leaving the cluster is masqueraded: false when its network
    /// configuration says `"ipMasq": false`. Written only when false, so a record of a
    /// masqueraded pod reads the same as before the field existed, and an older record (without
    /// it) loads as masqueraded.
    #[serde(default = "masquerade_by_default", skip_serializing_if = "is_true")]
    pub masquerade: bool,
}

fn masquerade_by_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for Allocation {
    /// No address, masqueraded.
    fn default() -> Self {
        Allocation {
            v4: None,
            v6: None,
            masquerade: true,
        }
    }
}

impl Allocation {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }
}

pub struct Ipam {
    dir: PathBuf,
    cidrs: PodCidrs,
    allocations: BTreeMap<AttachmentKey, Allocation>,
    /// Every address held, for O(log n) "is it free?".
    taken: BTreeSet<IpAddr>,
    next_v4: Option<Ipv4Addr>,
    next_v6: Option<Ipv6Addr>,
}

impl Ipam {
    /// Load the records under `state_dir` (none yet is fine) for a node holding `cidrs`.
    ///
    /// A damaged record is an error unless `set_aside_damage`: the caller passes that only when no
    /// pod of this node is wired (after a reboot), since forgetting a record would otherwise hand
    /// out an address a running pod holds.
    pub fn open(
        state_dir: &Path,
        cidrs: PodCidrs,
        set_aside_damage: bool,
    ) -> Result<Ipam, IpamError> {
        let dir = state_dir.join("ipam");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut ipam = Ipam {
            dir: dir.clone(),
            cidrs,
            allocations: BTreeMap::new(),
            taken: BTreeSet::new(),
            next_v4: None,
            next_v6: None,
        };
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // a write in progress when the daemon died, or a record set aside
            }
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Allocation>(&bytes).map_err(|e| e.to_string())
                })
                .and_then(|a| {
                    AttachmentKey::from_file_name(&name)
                        .map(|k| (k, a))
                        .ok_or_else(|| "not CONTAINER_ID@IFNAME".to_string())
                });
            match parsed {
                Ok((key, allocation)) => ipam.remember(key, allocation),
                Err(reason) if set_aside_damage => set_aside(&path, &name, &reason)?,
                Err(reason) => return Err(IpamError::Damaged { path, reason }),
            }
        }
        ipam.next_v4 = ipam
            .taken
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                _ => None,
            })
            .max();
        ipam.next_v6 = ipam
            .taken
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                _ => None,
            })
            .max();
        Ok(ipam)
    }

    fn remember(&mut self, key: AttachmentKey, allocation: Allocation) {
        self.taken.extend(allocation.addresses());
        self.allocations.insert(key, allocation);
    }

    fn forget(&mut self, key: &AttachmentKey) -> Option<Allocation> {
        let allocation = self.allocations.remove(key)?;
        for ip in allocation.addresses() {
            self.taken.remove(&ip);
        }
        Some(allocation)
    }

    /// The node's CIDRs changed (a lease lost and re-acquired elsewhere): new pods get addresses
    /// from the new CIDRs; existing allocations stay until their pods go, and each one now
    /// outside them is reported (see [`Ipam::outside`]). Returns those, only when the CIDRs changed.
    pub fn set_cidrs(&mut self, cidrs: PodCidrs) -> Vec<(AttachmentKey, Allocation)> {
        if self.cidrs == cidrs {
            return Vec::new();
        }
        self.cidrs = cidrs;
        self.outside()
    }

    /// The pod interfaces holding an address outside the node's current pod CIDRs: after the node
    /// came back with other CIDRs, another node may hand the same address to one of its pods.
    /// Their CNI CHECK fails, so the runtime recreates them.
    pub fn outside(&self) -> Vec<(AttachmentKey, Allocation)> {
        self.allocations
            .iter()
            .filter(|(_, a)| !self.holds(a))
            .map(|(k, a)| (k.clone(), *a))
            .collect()
    }

    /// Whether every address of `allocation` is inside the node's current pod CIDRs.
    pub fn holds(&self, allocation: &Allocation) -> bool {
        let inside = |ip: &IpAddr| self.cidrs.iter().any(|net| net.contains(ip));
        allocation.addresses().all(|ip| inside(&ip))
    }

    /// Whether the pod interface of `key` (container and interface name) holds addresses of
    /// another network than `key`'s.
    pub fn held_by_another_network(&self, key: &AttachmentKey) -> bool {
        self.allocations.keys().any(|k| {
            k.container_id == key.container_id && k.ifname == key.ifname && k.network != key.network
        })
    }

    /// The node's current pod CIDRs.
    pub fn cidrs(&self) -> PodCidrs {
        self.cidrs
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<Allocation> {
        self.allocations.get(key).copied()
    }

    /// How many pod interfaces hold addresses.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn allocations(&self) -> impl Iterator<Item = (AttachmentKey, Allocation)> + '_ {
        self.allocations.iter().map(|(k, a)| (k.clone(), *a))
    }

    /// The addresses of `key`: the ones it already has (with the `masquerade` flag it was given
    /// then), else new ones, recorded with `masquerade` (persisted before returning).
    pub fn allocate(
        &mut self,
        key: &AttachmentKey,
        masquerade: bool,
    ) -> Result<Allocation, IpamError> {
        if let Some(existing) = self.get(key) {
            return Ok(existing);
        }
        let name = key.file_name()?;
        let mut allocation = Allocation {
            masquerade,
            ..Allocation::default()
        };
        if let Some(net) = self.cidrs.v4 {
            allocation.v4 = Some(self.free_v4(net)?);
        }
        if let Some(net) = self.cidrs.v6 {
            allocation.v6 = Some(self.free_v6(net)?);
        }
        let path = self.dir.join(name);
        let json = serde_json::to_vec(&allocation).expect("an allocation always serialises");
        atomic_replace(&path, &json).map_err(|source| IpamError::Io { path, source })?;
        self.next_v4 = allocation.v4.or(self.next_v4);
        self.next_v6 = allocation.v6.or(self.next_v6);
        self.remember(key.clone(), allocation);
        Ok(allocation)
    }

    /// The addresses of the pods whose traffic is not masqueraded (`"ipMasq": false`).
    pub fn unmasqueraded(&self) -> BTreeSet<IpAddr> {
        self.allocations
            .values()
            .filter(|a| !a.masquerade)
            .flat_map(Allocation::addresses)
            .collect()
    }

    /// Forget `key`; `None` if it had nothing (a repeated DEL).
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Allocation>, IpamError> {
        if !self.allocations.contains_key(key) {
            return Ok(None);
        }
        let path = self.dir.join(key.file_name()?);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IpamError::Io { path, source }),
        }
        Ok(self.forget(key))
    }

    /// Keep only the attachments `keep` accepts; returns what was released.
    pub fn retain(
        &mut self,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Result<Vec<(AttachmentKey, Allocation)>, IpamError> {
        let gone: Vec<AttachmentKey> = self
            .allocations
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for key in gone {
            if let Some(allocation) = self.release(&key)? {
                released.push((key, allocation));
            }
        }
        Ok(released)
    }

    /// Per pod CIDR: addresses in use and addresses IPAM can hand out (capped at `u64::MAX`).
    pub fn usage(&self) -> Vec<(IpNet, u64, u64)> {
        self.cidrs
            .iter()
            .map(|net| {
                let usable = u64::try_from(usable(&net)).unwrap_or(u64::MAX);
                (net, self.in_use(net) as u64, usable)
            })
            .collect()
    }

    /// Whether an address of every family can still be handed out.
    pub fn has_room(&self) -> bool {
        self.cidrs
            .iter()
            .all(|net| (self.in_use(net) as u128) < usable(&net))
    }

    fn in_use(&self, net: IpNet) -> usize {
        self.taken.iter().filter(|ip| net.contains(*ip)).count()
    }

    fn is_taken(&self, ip: IpAddr) -> bool {
        self.taken.contains(&ip)
    }

    fn free_v4(&self, net: Ipv4Net) -> Result<Ipv4Addr, IpamError> {
        match self.free(IpNet::V4(net), self.next_v4.map(IpAddr::V4))? {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(_) => unreachable!("a free address of an IPv4 range"),
        }
    }

    fn free_v6(&self, net: Ipv6Net) -> Result<Ipv6Addr, IpamError> {
        match self.free(IpNet::V6(net), self.next_v6.map(IpAddr::V6))? {
            IpAddr::V6(v6) => Ok(v6),
            IpAddr::V4(_) => unreachable!("a free address of an IPv6 range"),
        }
    }

    /// A free address of `net`, the first after `last` (the address last handed out) if it lies
    /// in `net`: next fit over the usable addresses, which start after the network address.
    fn free(&self, net: IpNet, last: Option<IpAddr>) -> Result<IpAddr, IpamError> {
        let first = start(&net) + 1;
        let after = last.filter(|ip| net.contains(ip)).map(number);
        let to_ip = |n: u128| match net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        };
        self.scan(net, first, usable(&net), after, to_ip)
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
}

/// A damaged record (a power loss without fsync can leave it empty) is renamed `.damaged-NAME`
/// (kept for inspection, ignored from then on): after a reboot its pod is being re-created
/// anyway, and refusing to start would block every pod on the node.
fn set_aside(path: &Path, name: &str, reason: &str) -> Result<(), IpamError> {
    let aside = path.with_file_name(format!(".damaged-{name}"));
    std::fs::rename(path, &aside).map_err(|source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(path = %path.display(), moved_to = %aside.display(), %reason, "IPAM record was damaged; set aside");
    Ok(())
}

/// Host addresses of a pod CIDR: less the network address (the tunnel device's) in both
/// families, and less the broadcast address in IPv4.
fn usable(net: &IpNet) -> u128 {
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size = 1u128.checked_shl(bits);
    match net {
        IpNet::V4(_) => size.map_or(0, |s| s.saturating_sub(2)),
        IpNet::V6(_) => size.map_or(u128::MAX, |s| s - 1),
    }
}

/// An address as a number.
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
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
        let a = ipam.allocate(&key(1), true).unwrap();
        let b = ipam.allocate(&key(2), true).unwrap();
        assert_eq!(a.v4, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(a.v6, Some("fd00:10:244:1::1".parse().unwrap()));
        assert_eq!(b.v4, Some("10.244.1.2".parse().unwrap()));
        assert_eq!(
            ipam.allocate(&key(1), true).unwrap(),
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
    fn pods_outside_new_cidrs_are_named_once_and_new_pods_use_the_new_cidrs() {
        let dir = tempfile::tempdir().unwrap();
        let old = cidrs("10.244.1.0/24", "fd00:10:244:1::/64");
        let mut ipam = Ipam::open(dir.path(), old, false).unwrap();
        let a = ipam.allocate(&key(1), true).unwrap();
        assert!(ipam.outside().is_empty());
        let new = cidrs("10.244.7.0/24", "fd00:10:244:7::/64");
        assert_eq!(
            ipam.set_cidrs(new),
            vec![(key(1), a)],
            "named when the CIDRs change"
        );
        assert!(ipam.set_cidrs(new).is_empty(), "and only then");
        assert!(!ipam.holds(&a));
        let b = ipam.allocate(&key(2), true).unwrap();
        assert!(ipam.holds(&b), "{b:?} is in the new CIDRs");
        let reopened = Ipam::open(dir.path(), new, false).unwrap();
        assert_eq!(
            reopened.outside(),
            vec![(key(1), a)],
            "a restart names it too"
        );
        ipam.release(&key(1)).unwrap();
        assert!(ipam.outside().is_empty());
    }

    #[test]
    fn records_are_keyed_by_network_and_the_default_network_keeps_its_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false).unwrap();
        let other = key(1).in_network("second");
        let a = ipam.allocate(&key(1), true).unwrap();
        let b = ipam.allocate(&other, true).unwrap();
        assert_ne!(a, b, "two networks, two attachments");
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join("ipam"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["container-1@eth0", "second#container-1@eth0"]);
        let reopened = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false).unwrap();
        assert_eq!(
            (reopened.get(&key(1)), reopened.get(&other)),
            (Some(a), Some(b))
        );
        assert!(ipam.held_by_another_network(&key(1).in_network("third")));
        assert!(matches!(
            ipam.allocate(&key(2).in_network("a#b"), true),
            Err(IpamError::BadKey(_))
        ));
    }

    #[test]
    fn single_stack_gets_one_family() {
        let dir = tempfile::tempdir().unwrap();
        let mut v6_only = Ipam::open(dir.path(), cidrs("", "fd00::/120"), false).unwrap();
        let a = v6_only.allocate(&key(1), true).unwrap();
        assert_eq!((a.v4, a.v6), (None, Some("fd00::1".parse().unwrap())));
    }

    #[test]
    fn next_fit_does_not_reuse_a_released_address_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/29", ""), false).unwrap();
        let a = ipam.allocate(&key(1), true).unwrap();
        ipam.release(&key(1)).unwrap();
        let b = ipam.allocate(&key(2), true).unwrap();
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
        let held: Vec<Allocation> = (0..6)
            .map(|n| ipam.allocate(&key(n), true).unwrap())
            .collect();
        let v4s: std::collections::BTreeSet<_> = held.iter().map(|a| a.v4.unwrap()).collect();
        assert_eq!(v4s.len(), 6, "the six usable addresses .1-.6");
        assert!(
            !v4s.contains(&"10.0.0.0".parse().unwrap())
                && !v4s.contains(&"10.0.0.7".parse().unwrap())
        );
        assert!(!ipam.has_room());
        let err = ipam.allocate(&key(7), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in 10.0.0.0/29: 6 of 6 in use"
        );
        assert_eq!(ipam.get(&key(7)), None, "nothing half-allocated");
        for (n, a) in held.iter().enumerate() {
            assert_eq!(ipam.get(&key(n as u32)), Some(*a));
        }
        ipam.release(&key(3)).unwrap();
        assert_eq!(ipam.allocate(&key(7), true).unwrap().v4, held[3].v4);
    }

    #[test]
    fn retain_releases_what_the_runtime_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false).unwrap();
        for n in 0..5 {
            ipam.allocate(&key(n), true).unwrap();
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
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false).unwrap();
        ipam.allocate(&key(1), true).unwrap();
        std::fs::write(dir.path().join("ipam").join("container-2@eth0"), b"").unwrap();
        let err = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), false)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("container-2@eth0 is damaged"),
            "{err}"
        );
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", ""), true).unwrap();
        assert_eq!(ipam.len(), 1, "the sound record is kept");
        assert!(
            dir.path()
                .join("ipam")
                .join(".damaged-container-2@eth0")
                .exists(),
            "kept for inspection"
        );
        ipam.allocate(&key(2), true).unwrap();
    }

    #[test]
    fn records_are_one_file_each_and_a_restart_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidrs("10.0.0.0/24", "fd00::/64"), false).unwrap();
        for n in 0..3 {
            ipam.allocate(&key(n), true).unwrap();
        }
        ipam.release(&key(1)).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join("ipam"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["container-0@eth0", "container-2@eth0"]);
        let mut again = Ipam::open(dir.path(), cidrs("10.0.0.0/24", "fd00::/64"), false).unwrap();
        assert_eq!(again.get(&key(2)), ipam.get(&key(2)));
        let next = again.allocate(&key(9), true).unwrap();
        assert_eq!(
            next.v4,
            Some("10.0.0.4".parse().unwrap()),
            "the cursor resumes after the highest address"
        );
        assert!(matches!(
            again.allocate(&AttachmentKey::new("../evil", "eth0"), true),
            Err(IpamError::BadKey(_))
        ));
    }

    #[test]
    fn the_masquerade_flag_is_recorded_and_old_records_load_as_masqueraded() {
        let dir = tempfile::tempdir().unwrap();
        let cidrs = || cidrs("10.0.0.0/24", "fd00::/64");
        let mut ipam = Ipam::open(dir.path(), cidrs(), false).unwrap();
        let masqueraded = ipam.allocate(&key(1), true).unwrap();
        let kept = ipam.allocate(&key(2), false).unwrap();
        assert!(masqueraded.masquerade && !kept.masquerade);
        assert_eq!(
            ipam.allocate(&key(2), true).unwrap(),
            kept,
            "a repeated ADD keeps what the first one recorded"
        );
        assert_eq!(ipam.unmasqueraded(), kept.addresses().collect());
        let record = |n: u32| {
            let path = dir.path().join("ipam").join(format!("container-{n}@eth0"));
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap()
        };
        assert_eq!(
            record(1),
            serde_json::json!({"v4": "10.0.0.1", "v6": "fd00::1"}),
            "a masqueraded pod's record is what it always was"
        );
        assert_eq!(record(2)["masquerade"], serde_json::json!(false));

        std::fs::write(
            dir.path().join("ipam").join("container-3@eth0"),
            br#"{"v4": "10.0.0.9"}"#,
        )
        .unwrap();
        let mut again = Ipam::open(dir.path(), cidrs(), false).unwrap();
        assert!(again.get(&key(3)).unwrap().masquerade, "an old record");
        assert_eq!(again.unmasqueraded(), kept.addresses().collect());
        again.release(&key(2)).unwrap();
        assert!(again.unmasqueraded().is_empty());
    }
}
