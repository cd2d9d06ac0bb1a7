//! Choosing the node's underlay address: the address tunnels to this node are sent to.
//!
//! The order operators know from flannel: an explicit `--public-ip`, else `--iface`, `--iface-regex`
//! or `--iface-can-reach`, else the interface of the default route (per family). Loopback, link-local
//! and unspecified addresses are never chosen.
//!
//! Every Vagrant VM has 10.0.2.15 on its NAT interface, which is also where its default route points:
//! picking it gives every node the same address. [`SHARED_NAT_ADDRESS`] is refused when it was found
//! by detection rather than named explicitly, and the agent refuses any peer publishing the node's own
//! underlay address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAttribute, RouteType};
use netlink_packet_route::AddressFamily;
use regex::Regex;
use rtnetlink::Handle;
use weft_proto::lease::PublicIps;
use weft_proto::names::IfName;

use crate::config::UnderlaySelector;
use crate::datapath::nl;
use crate::net::is_link_local;

/// The address of VirtualBox's (and so Vagrant's) NAT interface, identical on every VM.
pub const SHARED_NAT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("cannot list interface addresses: {0}")]
    ListAddresses(#[source] nix::Error),
    #[error("interface {0} has no usable unicast address")]
    NoAddress(String),
    #[error("no interface name matches --iface-regex {0:?}")]
    NoMatch(String),
    #[error("--iface-regex {pattern:?} is not a valid regular expression: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("no route to {0}: cannot find the interface that reaches it")]
    NoRoute(IpAddr),
    #[error("no default route in either family; choose the underlay with --iface, --iface-can-reach or --public-ip")]
    NoDefaultRoute,
    #[error("the detected underlay address is 10.0.2.15 on {iface}, the NAT address every Vagrant/VirtualBox VM shares; choose the host-only interface with --iface or --iface-can-reach")]
    SharedNatAddress { iface: String },
}

/// One interface address as the system lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub iface: String,
    pub ip: IpAddr,
}

/// The node's public IPs for `selector`, looking at the live system (routes through `handle`).
pub async fn detect(
    selector: &UnderlaySelector,
    handle: &Handle,
) -> Result<PublicIps, UnderlayError> {
    match selector {
        UnderlaySelector::Addresses(ips) => Ok(from_list(ips)),
        UnderlaySelector::Interface(name) => {
            let ips = addresses_of(&list_addresses()?, name.as_str());
            non_empty(ips, name.as_str())
        }
        UnderlaySelector::InterfacePattern(pattern) => {
            let re = Regex::new(pattern).map_err(|e| UnderlayError::BadPattern {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
            let all = list_addresses()?;
            let iface = all
                .iter()
                .find(|a| re.is_match(&a.iface) && usable(&a.ip))
                .map(|a| a.iface.clone())
                .ok_or_else(|| UnderlayError::NoMatch(pattern.clone()))?;
            checked_detected(addresses_of(&all, &iface), &iface)
        }
        UnderlaySelector::CanReach(targets) => {
            let mut ips = Vec::new();
            for target in targets {
                ips.push(source_address_towards(*target)?);
            }
            Ok(from_list(&ips))
        }
        UnderlaySelector::DefaultRoute => {
            let all = list_addresses()?;
            let v4_iface = default_route_iface(handle, AddressFamily::Inet).await;
            let v6_iface = default_route_iface(handle, AddressFamily::Inet6).await;
            if v4_iface.is_none() && v6_iface.is_none() {
                return Err(UnderlayError::NoDefaultRoute);
            }
            let mut ips = PublicIps::default();
            if let Some(iface) = &v4_iface {
                ips.v4 = addresses_of(&all, iface).v4;
                if ips.v4 == Some(SHARED_NAT_ADDRESS) {
                    return Err(UnderlayError::SharedNatAddress {
                        iface: iface.clone(),
                    });
                }
            }
            if let Some(iface) = &v6_iface {
                ips.v6 = addresses_of(&all, iface).v6;
            }
            non_empty(
                ips,
                v4_iface.or(v6_iface).as_deref().unwrap_or("default route"),
            )
        }
    }
}

fn checked_detected(ips: PublicIps, iface: &str) -> Result<PublicIps, UnderlayError> {
    if ips.v4 == Some(SHARED_NAT_ADDRESS) {
        return Err(UnderlayError::SharedNatAddress {
            iface: iface.to_string(),
        });
    }
    non_empty(ips, iface)
}

fn non_empty(ips: PublicIps, iface: &str) -> Result<PublicIps, UnderlayError> {
    if ips.v4.is_none() && ips.v6.is_none() {
        return Err(UnderlayError::NoAddress(iface.to_string()));
    }
    Ok(ips)
}

fn from_list(ips: &[IpAddr]) -> PublicIps {
    let mut out = PublicIps::default();
    for ip in ips {
        match ip {
            IpAddr::V4(v4) => out.v4 = out.v4.or(Some(*v4)),
            IpAddr::V6(v6) => out.v6 = out.v6.or(Some(*v6)),
        }
    }
    out
}

/// Whether an address can carry tunnels to other nodes.
pub fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || is_link_local(ip) || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || is_link_local(ip) || v6.is_unspecified() || v6.is_multicast())
        }
    }
}

/// The first usable address of each family on `iface`.
pub fn addresses_of(all: &[InterfaceAddress], iface: &str) -> PublicIps {
    let on_iface: Vec<IpAddr> = all
        .iter()
        .filter(|a| a.iface == iface && usable(&a.ip))
        .map(|a| a.ip)
        .collect();
    from_list(&on_iface)
}

/// The MTU of the interface holding the node's underlay address (1500 if it cannot be found).
pub async fn mtu(host: &Handle, public_ips: &PublicIps) -> u32 {
    let wanted: Vec<IpAddr> = public_ips
        .v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(public_ips.v6.map(IpAddr::V6))
        .collect();
    let Ok(addresses) = list_addresses() else {
        return 1500;
    };
    let Some(iface) = addresses.iter().find(|a| wanted.contains(&a.ip)) else {
        return 1500;
    };
    match nl::link_by_name(host, &iface.iface).await {
        Ok(Some(link)) => nl::link_mtu(&link).unwrap_or(1500),
        _ => 1500,
    }
}

/// The interface holding one of `public_ips` (the tunnel source address), and the subnets
/// directly connected to it: each of its addresses' prefix (`192.168.56.11/24` →
/// `192.168.56.0/24`), both families, leaving out link-local ones and host prefixes (/32, /128),
/// which hold no neighbour. `None` where no interface holds the address (an explicit
/// `--public-ip` behind NAT, say): then no peer is reached directly.
///
/// Read once, at start: a node whose underlay subnets change needs a restart to route by them.
pub async fn connected(
    host: &Handle,
    public_ips: &PublicIps,
) -> Result<Option<(IfName, Vec<IpNet>)>, rtnetlink::Error> {
    let wanted: Vec<IpAddr> = [public_ips.v4.map(IpAddr::V4), public_ips.v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .collect();
    let Ok(addresses) = list_addresses() else {
        return Ok(None);
    };
    let Some(iface) = addresses.iter().find(|a| wanted.contains(&a.ip)) else {
        return Ok(None);
    };
    let (Ok(name), Some(link)) = (
        IfName::new(&iface.iface),
        nl::link_by_name(host, &iface.iface).await?,
    ) else {
        return Ok(None);
    };
    let mut subnets = Vec::new();
    for message in nl::addresses_of(host, link.header.index).await? {
        let prefix = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => IpNet::new(*ip, message.header.prefix_len).ok(),
            _ => None,
        });
        if let Some(net) = prefix.filter(|n| !is_link_local(&n.addr()) && !is_host(n)) {
            subnets.push(net.trunc());
        }
    }
    subnets.sort();
    subnets.dedup();
    Ok(Some((name, subnets)))
}

/// A /32 or /128: a prefix with no room for a neighbour.
fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// Every address of every interface, as `getifaddrs` lists them.
pub fn list_addresses() -> Result<Vec<InterfaceAddress>, UnderlayError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(UnderlayError::ListAddresses)?;
    Ok(addrs
        .filter_map(|a| {
            let storage = a.address?;
            let ip = if let Some(v4) = storage.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(storage.as_sockaddr_in6()?.ip())
            };
            Some(InterfaceAddress {
                iface: a.interface_name,
                ip,
            })
        })
        .collect())
}

/// The local address the kernel would use to reach `target`: a connected UDP socket sends nothing.
fn source_address_towards(target: IpAddr) -> Result<IpAddr, UnderlayError> {
    let bind: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((bind, 0)).map_err(|_| UnderlayError::NoRoute(target))?;
    socket
        .connect((target, 9))
        .map_err(|_| UnderlayError::NoRoute(target))?;
    let local = socket
        .local_addr()
        .map_err(|_| UnderlayError::NoRoute(target))?
        .ip();
    if !usable(&local) {
        return Err(UnderlayError::NoRoute(target));
    }
    Ok(local)
}

/// The interface of the main table's default route of `family`, over rtnetlink (the one source of
/// routes in weftd); of several, the lowest metric wins. `None` without one.
async fn default_route_iface(handle: &Handle, family: AddressFamily) -> Option<String> {
    let routes = nl::main_routes(handle, family).await.ok()?;
    let candidates = routes.iter().filter_map(|r| {
        let unicast = r.message.header.kind == RouteType::Unicast;
        let metric = r.message.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        (r.dst.prefix_len() == 0 && unicast).then_some((metric.unwrap_or(0), r.oif?))
    });
    let index = lowest_metric(candidates)?;
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await;
    link.ok()
        .flatten()
        .and_then(|l| nl::link_name(&l).map(str::to_string))
}

/// Of `(metric, interface index)` pairs, the interface with the lowest metric (the first of
/// equals).
fn lowest_metric(routes: impl Iterator<Item = (u32, u32)>) -> Option<u32> {
    routes
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        assert_eq!(
            lowest_metric([(100, 2), (50, 3), (1024, 4)].into_iter()),
            Some(3)
        );
        assert_eq!(lowest_metric([(0, 7), (0, 8)].into_iter()), Some(7));
        assert_eq!(lowest_metric(std::iter::empty()), None);
    }

    #[test]
    fn interface_addresses_skip_unusable_ones() {
        let all = vec![
            InterfaceAddress {
                iface: "eth1".into(),
                ip: "fe80::1".parse().unwrap(),
            },
            InterfaceAddress {
                iface: "eth1".into(),
                ip: "192.168.56.11".parse().unwrap(),
            },
            InterfaceAddress {
                iface: "eth1".into(),
                ip: "2001:db8::11".parse().unwrap(),
            },
            InterfaceAddress {
                iface: "lo".into(),
                ip: "127.0.0.1".parse().unwrap(),
            },
        ];
        let ips = addresses_of(&all, "eth1");
        assert_eq!(ips.v4, Some("192.168.56.11".parse().unwrap()));
        assert_eq!(ips.v6, Some("2001:db8::11".parse().unwrap()));
        assert_eq!(addresses_of(&all, "lo"), PublicIps::default());
    }

    #[tokio::test]
    async fn vagrant_nat_address_is_refused_when_detected() {
        let err = checked_detected(
            PublicIps {
                v4: Some(SHARED_NAT_ADDRESS),
                v6: None,
            },
            "eth0",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("10.0.2.15") && err.to_string().contains("--iface"),
            "{err}"
        );
        let handle = crate::datapath::netns::connect_here().unwrap();
        let explicit = detect(
            &UnderlaySelector::Addresses(vec![SHARED_NAT_ADDRESS.into()]),
            &handle,
        )
        .await
        .unwrap();
        assert_eq!(
            explicit.v4,
            Some(SHARED_NAT_ADDRESS),
            "an explicit address is the operator's call"
        );
    }

    #[tokio::test]
    async fn loopback_is_reachable_but_not_usable() {
        let handle = crate::datapath::netns::connect_here().unwrap();
        let loopback = UnderlaySelector::CanReach(vec!["127.0.0.1".parse().unwrap()]);
        assert!(detect(&loopback, &handle).await.is_err());
        assert!(matches!(
            detect(&UnderlaySelector::InterfacePattern("(".into()), &handle).await,
            Err(UnderlayError::BadPattern { .. })
        ));
    }
}
