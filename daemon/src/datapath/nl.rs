//! Small rtnetlink helpers shared by the datapath modules.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::Handle;

/// The errno of a kernel NACK, if that is what the error is.
pub fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// Whether the error is one of `errnos` (e.g. "already gone" on a delete).
pub fn is_errno(e: &rtnetlink::Error, errnos: &[Errno]) -> bool {
    errno(e).is_some_and(|n| errnos.contains(&n))
}

/// A link by name; `None` if there is none.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, &[Errno::ENODEV]) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// Every link in the namespace.
pub async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    handle.link().get().execute().try_collect().await
}

/// A route as weft compares it: destination, gateway, output interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub message: RouteMessage,
}

/// The main table's routes of one family.
pub async fn main_routes(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<RouteView>, rtnetlink::Error> {
    let mut query = RouteMessage::default();
    query.header.address_family = family;
    let messages: Vec<RouteMessage> = handle.route().get(query).execute().try_collect().await?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter_map(|m| route_view(m, family))
        .collect())
}

fn route_view(message: RouteMessage, family: AddressFamily) -> Option<RouteView> {
    let mut dst_ip: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Destination(addr) => dst_ip = route_address(addr),
            RouteAttribute::Gateway(addr) => gateway = route_address(addr),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let len = message.header.destination_prefix_length;
    let ip = dst_ip.unwrap_or(match family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    let dst = IpNet::new(ip, len).ok()?;
    Some(RouteView {
        dst,
        gateway,
        oif,
        message,
    })
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// Delete the link named `name`; one that is not there is fine.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), rtnetlink::Error> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Err(e) if is_errno(&e, &[Errno::ENODEV]) => Ok(()),
        other => other,
    }
}

/// Treat the listed errnos (e.g. "already gone") as success.
pub fn ignore(
    result: Result<(), rtnetlink::Error>,
    errnos: &[Errno],
) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if is_errno(&e, errnos) => Ok(()),
        other => other,
    }
}

/// `ip addr replace NET dev INDEX` (IPv6 without duplicate address detection: the address is
/// weft's own, on a tunnel device).
pub async fn replace_address(
    handle: &Handle,
    index: u32,
    net: IpNet,
) -> Result<(), rtnetlink::Error> {
    let mut add = handle
        .address()
        .add(index, net.addr(), net.prefix_len())
        .replace();
    if net.addr().is_ipv6() {
        add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        add.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    add.execute().await
}

/// `ip addr del NET dev INDEX`; an address already gone is success.
pub async fn delete_address(
    handle: &Handle,
    index: u32,
    net: IpNet,
) -> Result<(), rtnetlink::Error> {
    for message in addresses_of(handle, index).await? {
        let matches = message.header.prefix_len == net.prefix_len()
            && message
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == net.addr()));
        if matches {
            let result = handle.address().del(message).execute().await;
            ignore(result, &[Errno::EADDRNOTAVAIL])?;
        }
    }
    Ok(())
}

/// The address messages of the link `index`.
pub async fn addresses_of(
    handle: &Handle,
    index: u32,
) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
}
