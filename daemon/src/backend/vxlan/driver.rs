//! The VXLAN driver over rtnetlink: read weft's devices and their routes, neighbour and FDB
//! entries into a [`Datapath`], and apply [`Op`]s from [`super::diff()`].
//!
//! Only weft's own devices (`weft.vxlan`, `weft-v6.vxlan`) and entries on them are ever read or
//! changed, and of those only what weft makes: routes carrying weft's route protocol number
//! ([`ROUTE_PROTOCOL`], `proto 87` in `ip route`), permanent neighbour entries for addresses inside
//! the cluster CIDRs, and permanent FDB entries with a remote. A route or neighbour entry an
//! operator adds to a weft device is left alone. Direct routes (on the underlay interface) are the
//! one thing read off weft's devices: `proto 87` routes into the cluster CIDRs, wherever they
//! leave. Routes are `replace`d and neighbour/FDB entries `replace`d (idempotent); deletes that
//! find nothing are fine. A VXLAN link cannot be replaced in place: a changed VNI, port, local
//! address, learning flag or MAC means delete and create (the plan says why, for the log).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteFlags, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use weft_proto::lease::MacAddr;
use weft_proto::names::IfName;

use super::{device_names, Address, Datapath, Fdb, Neighbour, Op, Route, Vxlan, VxlanDevice};
use crate::backend::{Driver, DriverError};
use crate::datapath::nl;
use crate::net::is_link_local;

/// The `rtm_protocol` of every route weft makes on its devices (`ip route show proto 87`): how
/// weft tells its routes from anyone else's.
pub const ROUTE_PROTOCOL: u8 = 87;

/// The VXLAN driver: a netlink handle in the node's namespace, and the device indexes learnt.
pub struct VxlanDriver {
    handle: Handle,
    /// Neighbour entries inside these are weft's; others on its devices are an operator's.
    cluster_cidrs: Vec<IpNet>,
    indexes: BTreeMap<IfName, u32>,
    requests: usize,
}

impl VxlanDriver {
    /// A driver acting through `handle`.
    pub fn new(handle: Handle, cluster_cidrs: &[IpNet]) -> VxlanDriver {
        VxlanDriver {
            handle,
            cluster_cidrs: cluster_cidrs.to_vec(),
            indexes: BTreeMap::new(),
            requests: 0,
        }
    }
}

impl Driver<Vxlan> for VxlanDriver {
    async fn observe(&mut self) -> Result<Datapath, DriverError> {
        self.indexes.clear();
        Ok(observe(&self.handle, &self.cluster_cidrs).await?)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), DriverError> {
        self.apply_op(op).await
    }

    fn requests(&self) -> usize {
        self.requests
    }
}

/// What the kernel holds on weft's devices now.
pub async fn observe(
    handle: &Handle,
    cluster_cidrs: &[IpNet],
) -> Result<Datapath, rtnetlink::Error> {
    let mut observed = Datapath::default();
    let mut indexes = BTreeMap::new();
    for name in device_names() {
        let Some(link) = nl::link_by_name(handle, name.as_str()).await? else {
            continue;
        };
        indexes.insert(link.header.index, name.clone());
        observed.insert_device(device_of(&name, &link));
    }
    observe_addresses(handle, &indexes, &mut observed).await?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        observe_routes(handle, family, &indexes, cluster_cidrs, &mut observed).await?;
        observe_neighbours(handle, family, &indexes, cluster_cidrs, &mut observed).await?;
    }
    observe_fdb(handle, &indexes, &mut observed).await?;
    Ok(observed)
}

/// Device indexes → weft's device names.
type Indexes = BTreeMap<u32, IfName>;

/// The addresses on weft's devices, except the link-local ones the kernel adds itself.
async fn observe_addresses(
    handle: &Handle,
    indexes: &Indexes,
    observed: &mut Datapath,
) -> Result<(), rtnetlink::Error> {
    let messages: Vec<_> = handle.address().get().execute().try_collect().await?;
    for message in messages {
        let Some(dev) = indexes.get(&message.header.index) else {
            continue;
        };
        let ip = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(address) = ip
            .filter(|ip| !is_link_local(ip))
            .and_then(|ip| IpNet::new(ip, message.header.prefix_len).ok())
        {
            observed.insert_address(Address {
                dev: dev.clone(),
                address,
            });
        }
    }
    Ok(())
}

/// weft's routes (`proto 87`) through its devices, and its direct routes: `proto 87` routes into
/// the cluster CIDRs on any other interface (the underlay's, or one a changed underlay left).
async fn observe_routes(
    handle: &Handle,
    family: AddressFamily,
    indexes: &Indexes,
    cluster_cidrs: &[IpNet],
    observed: &mut Datapath,
) -> Result<(), rtnetlink::Error> {
    let mut direct = Vec::new();
    for view in nl::main_routes(handle, family).await? {
        let (Some(oif), Some(gateway)) = (view.oif, view.gateway) else {
            continue;
        };
        if view.message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let onlink = view.message.header.flags.contains(RouteFlags::Onlink);
        match indexes.get(&oif) {
            Some(dev) => observed.insert_route(Route {
                dst: view.dst,
                gateway,
                dev: dev.clone(),
                onlink,
            }),
            None if cluster_cidrs.iter().any(|c| c.contains(&view.dst)) => {
                direct.push((oif, view.dst, gateway, onlink))
            }
            None => {}
        }
    }
    if direct.is_empty() {
        return Ok(());
    }
    let names = link_names(handle).await?;
    for (oif, dst, gateway, onlink) in direct {
        if let Some(dev) = names.get(&oif) {
            let dev = dev.clone();
            observed.insert_route(Route {
                dst,
                gateway,
                dev,
                onlink,
            });
        }
    }
    Ok(())
}

/// Every link's index → name.
async fn link_names(handle: &Handle) -> Result<Indexes, rtnetlink::Error> {
    Ok(nl::links(handle)
        .await?
        .iter()
        .filter_map(|link| {
            let name = IfName::new(nl::link_name(link)?).ok()?;
            Some((link.header.index, name))
        })
        .collect())
}

/// Whether a neighbour or FDB entry is permanent: its state has `NUD_PERMANENT` (0x80), alone or
/// with other bits (`bridge fdb add … permanent` on a VXLAN device makes `PERMANENT|NOARP`).
fn is_permanent(state: NeighbourState) -> bool {
    u16::from(state) & u16::from(NeighbourState::Permanent) != 0
}

/// Permanent neighbour entries on weft's devices for addresses inside the cluster CIDRs.
async fn observe_neighbours(
    handle: &Handle,
    family: AddressFamily,
    indexes: &Indexes,
    cluster_cidrs: &[IpNet],
    observed: &mut Datapath,
) -> Result<(), rtnetlink::Error> {
    for message in neighbours(handle, family).await? {
        let Some(dev) = indexes.get(&message.header.ifindex) else {
            continue;
        };
        if !is_permanent(message.header.state) {
            continue;
        }
        let ip = neighbour_ip(&message).filter(|ip| cluster_cidrs.iter().any(|c| c.contains(ip)));
        if let (Some(ip), Some(mac)) = (ip, neighbour_mac(&message)) {
            observed.insert_neighbour(Neighbour {
                dev: dev.clone(),
                ip,
                mac,
            });
        }
    }
    Ok(())
}

/// Permanent FDB entries with a remote on weft's devices.
async fn observe_fdb(
    handle: &Handle,
    indexes: &Indexes,
    observed: &mut Datapath,
) -> Result<(), rtnetlink::Error> {
    for message in neighbours(handle, AddressFamily::Bridge).await? {
        let Some(dev) = indexes.get(&message.header.ifindex) else {
            continue;
        };
        if !is_permanent(message.header.state) {
            continue;
        }
        if let (Some(dst), Some(mac)) = (neighbour_ip(&message), neighbour_mac(&message)) {
            observed.insert_fdb(Fdb {
                dev: dev.clone(),
                mac,
                dst,
            });
        }
    }
    Ok(())
}

async fn neighbours(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>, rtnetlink::Error> {
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
}

fn neighbour_ip(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        // FDB entries (AF_BRIDGE) carry NDA_DST unparsed.
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(&bytes[..])
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(&bytes[..])
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_mac(message: &NeighbourMessage) -> Option<MacAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            let mac: [u8; 6] = bytes.as_slice().try_into().ok()?;
            (mac != [0; 6]).then_some(MacAddr(mac))
        }
        _ => None,
    })
}

/// A device as the kernel reports it; attributes it lacks read as values no plan asks for, so a
/// foreign link squatting on weft's name is re-created.
fn device_of(name: &IfName, link: &LinkMessage) -> VxlanDevice {
    let mut device = VxlanDevice {
        name: name.clone(),
        vni: 0,
        port: 0,
        local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        mac: MacAddr(nl::link_mac(link).unwrap_or([0; 6])),
        mtu: nl::link_mtu(link).unwrap_or(0),
        learning: true,
        up: link.header.flags.contains(LinkFlags::Up),
    };
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    let is_vxlan = infos.is_some_and(|i| {
        i.iter()
            .any(|x| matches!(x, LinkInfo::Kind(InfoKind::Vxlan)))
    });
    let data = infos.and_then(|i| {
        i.iter().find_map(|x| match x {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
            _ => None,
        })
    });
    if let (true, Some(data)) = (is_vxlan, data) {
        for attr in data {
            match attr {
                InfoVxlan::Id(vni) => device.vni = *vni,
                InfoVxlan::Port(port) => device.port = *port,
                InfoVxlan::Local(ip) => device.local = IpAddr::V4(*ip),
                InfoVxlan::Local6(ip) => device.local = IpAddr::V6(*ip),
                InfoVxlan::Learning(learning) => device.learning = *learning,
                _ => {}
            }
        }
    }
    device
}

impl VxlanDriver {
    async fn index(&mut self, dev: &IfName) -> Result<u32, DriverError> {
        if let Some(index) = self.indexes.get(dev) {
            return Ok(*index);
        }
        self.requests += 1;
        let link = nl::link_by_name(&self.handle, dev.as_str()).await?;
        let index = link
            .map(|l| l.header.index)
            .ok_or_else(|| DriverError::NoDevice(dev.clone()))?;
        self.indexes.insert(dev.clone(), index);
        Ok(index)
    }

    /// Apply one operation, as [`Datapath::apply`] models it.
    pub async fn apply_op(&mut self, op: &Op) -> Result<(), DriverError> {
        self.requests += 1;
        match op {
            Op::CreateDevice(device) => Ok(self.create(device).await?),
            Op::RecreateDevice { device, .. } => {
                self.delete_device(&device.name).await?;
                self.requests += 1;
                Ok(self.create(device).await?)
            }
            Op::SetMtu { dev, mtu } => {
                let index = self.index(dev).await?;
                let change = LinkUnspec::new_with_index(index).mtu(*mtu).build();
                Ok(self.handle.link().change(change).execute().await?)
            }
            Op::SetUp(dev) => {
                let index = self.index(dev).await?;
                let change = LinkUnspec::new_with_index(index).up().build();
                Ok(self.handle.link().change(change).execute().await?)
            }
            Op::DeleteDevice(dev) => Ok(self.delete_device(dev).await?),
            Op::SetAddress(address) => self.set_address(address).await,
            Op::DeleteAddress(address) => self.delete_address(address).await,
            Op::ReplaceRoute(route) => {
                let message = self.route_message(route).await?;
                Ok(self.handle.route().add(message).replace().execute().await?)
            }
            Op::DeleteRoute(route) => {
                let message = self.route_message(route).await?;
                let result = self.handle.route().del(message).execute().await;
                Ok(nl::ignore(result, &[Errno::ESRCH, Errno::ENOENT])?)
            }
            Op::ReplaceNeighbour(neighbour) => self.replace_neighbour(neighbour).await,
            Op::DeleteNeighbour(neighbour) => self.delete_neighbour(neighbour).await,
            Op::ReplaceFdb(fdb) => self.replace_fdb(fdb).await,
            Op::DeleteFdb(fdb) => self.delete_fdb(fdb).await,
        }
    }

    async fn set_address(&mut self, address: &Address) -> Result<(), DriverError> {
        let index = self.index(&address.dev).await?;
        Ok(nl::replace_address(&self.handle, index, address.address).await?)
    }

    async fn delete_address(&mut self, address: &Address) -> Result<(), DriverError> {
        let index = self.index(&address.dev).await?;
        Ok(nl::delete_address(&self.handle, index, address.address).await?)
    }

    async fn replace_neighbour(&mut self, neighbour: &Neighbour) -> Result<(), DriverError> {
        let index = self.index(&neighbour.dev).await?;
        Ok(self
            .handle
            .neighbours()
            .add(index, neighbour.ip)
            .link_layer_address(&neighbour.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    async fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<(), DriverError> {
        let index = self.index(&neighbour.dev).await?;
        let mut message = NeighbourMessage::default();
        message.header.family = if neighbour.ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                neighbour.ip,
            )));
        let result = self.handle.neighbours().del(message).execute().await;
        Ok(nl::ignore(result, &[Errno::ENOENT])?)
    }

    async fn replace_fdb(&mut self, fdb: &Fdb) -> Result<(), DriverError> {
        let index = self.index(&fdb.dev).await?;
        Ok(self
            .handle
            .neighbours()
            .add_bridge(index, &fdb.mac.0)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(fdb.dst)
            .replace()
            .execute()
            .await?)
    }

    async fn delete_fdb(&mut self, fdb: &Fdb) -> Result<(), DriverError> {
        let index = self.index(&fdb.dev).await?;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(fdb.mac.0.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                fdb.dst,
            )));
        let result = self.handle.neighbours().del(message).execute().await;
        Ok(nl::ignore(result, &[Errno::ENOENT])?)
    }

    async fn create(&mut self, device: &VxlanDevice) -> Result<(), rtnetlink::Error> {
        let builder = LinkVxlan::new(device.name.as_str(), device.vni)
            .port(device.port)
            .learning(device.learning)
            .address(device.mac.0.to_vec())
            .mtu(device.mtu)
            .up();
        let builder = match device.local {
            IpAddr::V4(ip) => builder.local(ip),
            IpAddr::V6(ip) => builder.local6(ip),
        };
        self.handle.link().add(builder.build()).execute().await?;
        self.indexes.remove(&device.name);
        Ok(())
    }

    async fn delete_device(&mut self, dev: &IfName) -> Result<(), rtnetlink::Error> {
        self.indexes.remove(dev);
        match nl::link_by_name(&self.handle, dev.as_str()).await? {
            Some(link) => nl::ignore(
                self.handle.link().del(link.header.index).execute().await,
                &[Errno::ENODEV],
            ),
            None => Ok(()),
        }
    }

    async fn route_message(&mut self, route: &Route) -> Result<RouteMessage, DriverError> {
        let index = self.index(&route.dev).await?;
        let mixed = || {
            DriverError::Invalid(format!(
                "route to {} via {}: mixed address families",
                route.dst, route.gateway
            ))
        };
        if route.dst.addr().is_ipv4() != route.gateway.is_ipv4() {
            return Err(mixed());
        }
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .and_then(|b| b.gateway(route.gateway))
            .map_err(|_| mixed())?
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        let message = if route.onlink {
            builder.onlink().build()
        } else {
            builder.build()
        };
        Ok(message)
    }
}

impl crate::backend::Backend for Vxlan {
    type Driver = VxlanDriver;

    fn driver(&self, host: Handle, cluster_cidrs: &[IpNet]) -> VxlanDriver {
        VxlanDriver::new(host, cluster_cidrs)
    }

    fn device_names(&self) -> Vec<IfName> {
        device_names().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_is_a_bit_not_a_value() {
        assert!(is_permanent(NeighbourState::Permanent));
        // PERMANENT|NOARP, as `bridge fdb add … permanent` leaves it on a VXLAN device.
        assert!(is_permanent(NeighbourState::from(0xc0)));
        assert!(!is_permanent(NeighbourState::Reachable));
        assert!(!is_permanent(NeighbourState::Noarp));
        assert!(!is_permanent(NeighbourState::Stale));
    }
}
