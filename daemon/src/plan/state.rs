//! Datapath state as data: what weft wants in the kernel ([`super::desired`]) and what the kernel
//! has ([`super::diff`]'s `observed`, read by `datapath::vxlan`), in one type so the two compare
//! directly. Every collection is keyed the way the kernel keys the object, so a diff is a merge of
//! sorted maps and "same key, other content" is one replace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_proto::lease::MacAddr;
use weft_proto::names::IfName;

use super::diff::Op;

/// One VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VxlanDevice {
    /// `weft.vxlan` (IPv4 pods) or `weft-v6.vxlan` (IPv6 pods).
    pub name: IfName,
    /// VXLAN network identifier: 1 on `weft.vxlan`, 2 on `weft-v6.vxlan`. Fixed by convention and
    /// never taken from a peer.
    pub vni: u32,
    /// UDP destination port of the tunnel: 8472 (the Linux and flannel default) on both devices.
    pub port: u16,
    /// This node's underlay address the tunnel sends from: its IPv4 underlay address if it has one,
    /// else its IPv6 one. Both devices use the same family.
    pub local: IpAddr,
    /// The device's MAC, the node's published VTEP MAC for this family (stable across restarts,
    /// so peers' neighbour and FDB entries survive a re-creation).
    pub mac: MacAddr,
    /// Device MTU: the configured override, or underlay MTU − 50 (IPv4 underlay) / − 70 (IPv6).
    pub mtu: u32,
    /// Whether the kernel learns remote MACs from received packets: always `false` in the desired
    /// state; every FDB entry comes from a lease.
    pub learning: bool,
    /// Administratively up: always `true` in the desired state. Created devices are created up; an
    /// observed device that is down (someone ran `ip link set … down`, which also drops its
    /// routes) is brought up in place.
    pub up: bool,
}

/// An address on one of weft's devices: the network address of this node's pod CIDR of the
/// device's family, as a host prefix (`10.244.1.0/32` on `weft.vxlan`, `fd00:10:244:1::/128` on
/// `weft-v6.vxlan`), as flannel puts it on `flannel.1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub dev: IfName,
    /// The address with its prefix length (/32 or /128 in the desired state).
    pub address: IpNet,
}

/// A route to a peer's pod CIDR through its gateway address, on-link on a VXLAN device. Keyed by
/// `dst` in [`Datapath::routes`] (main table, one route per destination).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The peer's pod CIDR of the device's family.
    pub dst: IpNet,
    /// The network address of that pod CIDR: the peer's own address on its VXLAN device.
    pub gateway: IpAddr,
    pub dev: IfName,
    /// Always `true` in the desired state: the gateway is not in any prefix on the device, and
    /// `onlink` tells the kernel to resolve it on the device regardless.
    pub onlink: bool,
}

/// A permanent neighbour entry: a peer's gateway address resolves to its VTEP MAC, so the kernel
/// never sends an ARP or NDP query into the tunnel. Keyed by `(dev, ip)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub dev: IfName,
    /// The peer's gateway address (the network address of its pod CIDR of this family).
    pub ip: IpAddr,
    /// The peer's VTEP MAC for this family.
    pub mac: MacAddr,
}

/// A permanent FDB entry on a VXLAN device: frames for the peer's VTEP MAC are sent to the peer's
/// underlay address. Keyed by `(dev, mac)`: one destination per MAC, so a peer whose underlay
/// address moved is one replace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub dev: IfName,
    /// The peer's VTEP MAC for this family.
    pub mac: MacAddr,
    /// The peer's underlay address, of the same family as the device's `local`.
    pub dst: IpAddr,
}

/// The key of [`Datapath::neighbours`].
pub type NeighbourKey = (IfName, IpAddr);
/// The key of [`Datapath::fdb`].
pub type FdbKey = (IfName, MacAddr);

/// weft's VXLAN datapath: devices and everything on them.
///
/// As observed state it holds weft's own objects only, as the reader finds them: the devices named
/// `weft.vxlan` / `weft-v6.vxlan`; their addresses except the link-local ones the kernel adds
/// itself; main-table routes on them except `proto kernel` ones; their permanent neighbour entries;
/// and their FDB entries that have a remote `dst`. An object whose device is absent cannot exist in
/// the kernel; [`super::diff`] ignores one if it appears.
///
/// Maps are keyed as the kernel keys the object; the key always equals the value's own key fields
/// (use the `insert_*` methods to keep it so).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Datapath {
    /// By device name. Empty when this node has no pod CIDR (or before anything was created).
    pub devices: BTreeMap<IfName, VxlanDevice>,
    /// Each device's own address; desired: one per device.
    pub addresses: BTreeSet<Address>,
    /// Routes to peers' pod CIDRs, by destination. Empty without accepted peers.
    pub routes: BTreeMap<IpNet, Route>,
    /// Peers' gateway → VTEP MAC, by `(dev, ip)`.
    pub neighbours: BTreeMap<NeighbourKey, Neighbour>,
    /// Peers' VTEP MAC → underlay address, by `(dev, mac)`.
    pub fdb: BTreeMap<FdbKey, Fdb>,
}

/// An operation the kernel would refuse, as [`Datapath::apply`] models it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {reason}")]
pub struct ApplyError {
    /// The operation, as its log line.
    pub op: String,
    pub reason: &'static str,
}

impl Datapath {
    /// Add or replace a device (the reader's way in; not an operation).
    pub fn insert_device(&mut self, device: VxlanDevice) {
        self.devices.insert(device.name.clone(), device);
    }

    pub fn insert_address(&mut self, address: Address) {
        self.addresses.insert(address);
    }

    /// Add or replace the route to `route.dst`.
    pub fn insert_route(&mut self, route: Route) {
        self.routes.insert(route.dst, route);
    }

    /// Add or replace the neighbour entry for `(dev, ip)`.
    pub fn insert_neighbour(&mut self, neighbour: Neighbour) {
        self.neighbours
            .insert((neighbour.dev.clone(), neighbour.ip), neighbour);
    }

    /// Add or replace the FDB entry for `(dev, mac)`.
    pub fn insert_fdb(&mut self, fdb: Fdb) {
        self.fdb.insert((fdb.dev.clone(), fdb.mac), fdb);
    }

    /// Number of routes, neighbour and FDB entries on `dev`.
    pub fn entries_on(&self, dev: &IfName) -> usize {
        self.routes.values().filter(|r| &r.dev == dev).count()
            + self.neighbours.keys().filter(|(d, _)| d == dev).count()
            + self.fdb.keys().filter(|(d, _)| d == dev).count()
    }

    /// What `op` does to the kernel, as a model: the reference meaning of each [`Op`] for the code
    /// that applies them, and what the diff is tested against.
    ///
    /// A device's addresses, routes, neighbour and FDB entries vanish with it (on delete and on
    /// re-create). Like the kernel, the model refuses to create a device that exists, to touch one
    /// that does not, to route on-link through a device that is down, and to delete an entry that
    /// is not there (an entry is deleted only with the content it has).
    pub fn apply(&mut self, op: &Op) -> Result<(), ApplyError> {
        let fail = |reason| {
            Err(ApplyError {
                op: op.to_string(),
                reason,
            })
        };
        match op {
            Op::DeleteDevice(name) => {
                if self.devices.remove(name).is_none() {
                    return fail("no such device");
                }
                self.remove_entries_on(name);
            }
            Op::CreateDevice(device) => {
                if self.devices.contains_key(&device.name) {
                    return fail("the device exists");
                }
                self.insert_device(device.clone());
            }
            Op::RecreateDevice { device, .. } => {
                if self.devices.remove(&device.name).is_none() {
                    return fail("no such device");
                }
                self.remove_entries_on(&device.name);
                self.insert_device(device.clone());
            }
            Op::SetMtu { dev, mtu } => match self.devices.get_mut(dev) {
                Some(device) => device.mtu = *mtu,
                None => return fail("no such device"),
            },
            Op::SetUp(dev) => match self.devices.get_mut(dev) {
                Some(device) => device.up = true,
                None => return fail("no such device"),
            },
            Op::SetAddress(address) => {
                if !self.devices.contains_key(&address.dev) {
                    return fail("no such device");
                }
                self.addresses.insert(address.clone());
            }
            Op::DeleteAddress(address) => {
                if !self.addresses.remove(address) {
                    return fail("no such address");
                }
            }
            Op::ReplaceRoute(route) => {
                match self.devices.get(&route.dev) {
                    None => return fail("no such device"),
                    Some(device) if !device.up => return fail("the device is down"),
                    Some(_) => {}
                }
                self.insert_route(route.clone());
            }
            Op::DeleteRoute(route) => {
                if self.routes.get(&route.dst) != Some(route) {
                    return fail("no such route");
                }
                self.routes.remove(&route.dst);
            }
            Op::ReplaceNeighbour(neighbour) => {
                if !self.devices.contains_key(&neighbour.dev) {
                    return fail("no such device");
                }
                self.insert_neighbour(neighbour.clone());
            }
            Op::DeleteNeighbour(neighbour) => {
                let key = (neighbour.dev.clone(), neighbour.ip);
                if self.neighbours.get(&key) != Some(neighbour) {
                    return fail("no such neighbour entry");
                }
                self.neighbours.remove(&key);
            }
            Op::ReplaceFdb(fdb) => {
                if !self.devices.contains_key(&fdb.dev) {
                    return fail("no such device");
                }
                self.insert_fdb(fdb.clone());
            }
            Op::DeleteFdb(fdb) => {
                let key = (fdb.dev.clone(), fdb.mac);
                if self.fdb.get(&key) != Some(fdb) {
                    return fail("no such FDB entry");
                }
                self.fdb.remove(&key);
            }
        }
        Ok(())
    }

    fn remove_entries_on(&mut self, dev: &IfName) {
        self.addresses.retain(|a| &a.dev != dev);
        self.routes.retain(|_, r| &r.dev != dev);
        self.neighbours.retain(|(d, _), _| d != dev);
        self.fdb.retain(|(d, _), _| d != dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    fn device(up: bool) -> VxlanDevice {
        VxlanDevice {
            name: dev("weft.vxlan"),
            vni: 1,
            port: 8472,
            local: "192.0.2.1".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            learning: false,
            up,
        }
    }

    fn route() -> Route {
        Route {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: "10.244.2.0".parse().unwrap(),
            dev: dev("weft.vxlan"),
            onlink: true,
        }
    }

    #[test]
    fn model_refuses_what_the_kernel_refuses() {
        let mut dp = Datapath::default();
        let err = dp.apply(&Op::ReplaceRoute(route())).unwrap_err();
        assert_eq!(err.reason, "no such device");
        assert!(err
            .to_string()
            .starts_with("ip route replace 10.244.2.0/24"));

        dp.apply(&Op::CreateDevice(device(false))).unwrap();
        assert_eq!(
            dp.apply(&Op::CreateDevice(device(true)))
                .unwrap_err()
                .reason,
            "the device exists"
        );
        assert_eq!(
            dp.apply(&Op::ReplaceRoute(route())).unwrap_err().reason,
            "the device is down"
        );
        dp.apply(&Op::SetUp(dev("weft.vxlan"))).unwrap();
        dp.apply(&Op::ReplaceRoute(route())).unwrap();

        let mut other = route();
        other.gateway = "10.244.2.1".parse().unwrap();
        assert_eq!(
            dp.apply(&Op::DeleteRoute(other)).unwrap_err().reason,
            "no such route",
            "a delete names the content it removes"
        );
        assert_eq!(
            dp.apply(&Op::DeleteDevice(dev("weft-v6.vxlan")))
                .unwrap_err()
                .reason,
            "no such device"
        );
    }

    #[test]
    fn entries_vanish_with_their_device() {
        let mut dp = Datapath::default();
        dp.apply(&Op::CreateDevice(device(true))).unwrap();
        dp.apply(&Op::SetAddress(Address {
            dev: dev("weft.vxlan"),
            address: "10.244.1.0/32".parse().unwrap(),
        }))
        .unwrap();
        dp.apply(&Op::ReplaceRoute(route())).unwrap();
        dp.apply(&Op::ReplaceNeighbour(Neighbour {
            dev: dev("weft.vxlan"),
            ip: "10.244.2.0".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
        }))
        .unwrap();
        dp.apply(&Op::ReplaceFdb(Fdb {
            dev: dev("weft.vxlan"),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst: "192.0.2.2".parse().unwrap(),
        }))
        .unwrap();
        assert_eq!(dp.entries_on(&dev("weft.vxlan")), 3);

        let mut recreated = dp.clone();
        let mut moved = device(true);
        moved.local = "192.0.2.9".parse().unwrap();
        recreated
            .apply(&Op::RecreateDevice {
                device: moved.clone(),
                reason: "local 192.0.2.1 → 192.0.2.9".into(),
            })
            .unwrap();
        let mut expected = Datapath::default();
        expected.insert_device(moved);
        assert_eq!(recreated, expected);

        dp.apply(&Op::DeleteDevice(dev("weft.vxlan"))).unwrap();
        assert_eq!(dp, Datapath::default());
    }
}
