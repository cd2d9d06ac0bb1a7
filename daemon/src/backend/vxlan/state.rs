//! Datapath state as data: what weft wants in the kernel ([`super::Vxlan`]'s plan) and what the
//! kernel has ([`super::diff()`]'s `observed`, read by [`super::driver`]), in one type so the two compare
//! directly. Every collection is keyed the way the kernel keys the object, so a diff is a merge of
//! sorted maps and "same key, other content" is one replace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_proto::lease::MacAddr;
use weft_proto::names::IfName;

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

/// A route to a peer's pod CIDR: through its gateway address, on-link on a VXLAN device; or,
/// routed directly, through its underlay address on the underlay interface. Keyed by `dst` in
/// [`Datapath::routes`] (main table, one route per destination).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The peer's pod CIDR of the device's family.
    pub dst: IpNet,
    /// The network address of that pod CIDR (the peer's own address on its VXLAN device); routed
    /// directly, the peer's underlay address.
    pub gateway: IpAddr,
    /// A VXLAN device, or the underlay interface (routed directly).
    pub dev: IfName,
    /// `true` through the tunnel: the gateway is not in any prefix on the device, and `onlink`
    /// tells the kernel to resolve it on the device regardless. `false` routed directly: the
    /// gateway is on the interface's own subnet.
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

/// Whether `dev` is one of weft's VXLAN devices (not, say, the underlay interface a direct route
/// leaves through).
pub fn is_tunnel_device(dev: &IfName) -> bool {
    super::device_names().contains(dev)
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

    /// Forget every address and entry on `dev` (they vanish with the device).
    pub fn remove_entries_on(&mut self, dev: &IfName) {
        self.addresses.retain(|a| &a.dev != dev);
        self.routes.retain(|_, r| &r.dev != dev);
        self.neighbours.retain(|(d, _), _| d != dev);
        self.fdb.retain(|(d, _), _| d != dev);
    }
}
