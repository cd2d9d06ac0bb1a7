//! A pod's network: a routed veth pair, no bridge.
//!
//! ```text
//!   pod netns                          node netns
//!   eth0 10.244.1.5/32, fd00::5/128 ── weftXXXXXXXXXXX (host end)
//!   default via 169.254.1.1 dev eth0   10.244.1.5/32 dev weftXXX scope link
//!   default via fe80::1 dev eth0       fd00::5/128 dev weftXXX
//!   169.254.1.1, fe80::1 → host-end MAC   fd00::5 → pod-end MAC
//!   (permanent neighbours)                 (permanent neighbour)
//! ```
//! The veth is created with its peer already inside the pod's namespace (one request: no link
//! moved between namespaces). IPv6 must work the moment ADD returns: in the pod, duplicate address
//! detection is off before the interface appears (our IPAM guarantees uniqueness); on the node,
//! the pod's IPv6 address is a permanent neighbour, so the node never has to solicit it from a
//! host end whose link-local address is still tentative. The gateway is a link-local address
//! answered by permanent neighbour entries, so the node needs no address of its own on the veth
//! and no proxy ARP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::{RouteMessage, RouteScope};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use weft_proto::lease::stable_hash;
use weft_proto::names::IfName;

use super::netns::{Netns, NetnsError};
use super::nl;
use crate::ipam::Allocation;
use crate::net::host_prefix;
use crate::plan::Family;
use ipnet::IpNet;

/// The pods' IPv4 gateway: link-local, the same on every node.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The gateway of a pod's default route for addresses of `ip`'s family: [`GATEWAY_V4`] or
/// [`GATEWAY_V6`]. The one place that choice is made (the wiring and the CNI result use it).
pub fn gateway_for(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// Prefix of every host-side veth weft makes.
pub const HOST_VETH_PREFIX: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname} already exists in {netns}")]
    IfnameTaken { ifname: String, netns: String },
    #[error("{0}")]
    Missing(String),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Netlink { what, source }
}

/// The host-side veth name of a pod interface: `weft` + 11 hex digits of a hash of container ID and
/// interface name (15 bytes, IFNAMSIZ). Stable, so DEL and GC find it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> IfName {
    let hash = stable_hash(format!("{container_id}/{ifname}").as_bytes());
    IfName::new(format!("{HOST_VETH_PREFIX}{:011x}", hash >> 20)).expect("15 ASCII bytes")
}

/// What a pod interface should look like.
pub struct PodSpec<'a> {
    pub netns: &'a Netns,
    pub ifname: &'a IfName,
    pub host_veth: IfName,
    pub addresses: Allocation,
    pub mtu: u32,
}

/// What the wiring produced, for the CNI result.
#[derive(Debug, Clone)]
pub struct PodWiring {
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// Wire the pod. A repeated ADD for the same pod interface re-creates its veth.
pub async fn setup(host: &Handle, spec: &PodSpec<'_>) -> Result<PodWiring, PodError> {
    let has_v6 = spec.addresses.v6.is_some();
    let pod_sysctls: &[(&str, &str)] = if has_v6 {
        &[
            ("/proc/sys/net/ipv6/conf/default/accept_dad", "0"),
            ("/proc/sys/net/ipv6/conf/all/accept_dad", "0"),
        ]
    } else {
        &[]
    };
    let pod = spec.netns.connect(pod_sysctls).await?;
    teardown(host, &spec.host_veth).await?;
    if nl::link_by_name(&pod, spec.ifname.as_str())
        .await
        .map_err(netlink("look up the pod interface"))?
        .is_some()
    {
        return Err(PodError::IfnameTaken {
            ifname: spec.ifname.to_string(),
            netns: spec.netns.path().display().to_string(),
        });
    }
    create_veth(host, spec).await?;
    let wired = configure(host, &pod, spec).await;
    if wired.is_err() {
        let _ = teardown(host, &spec.host_veth).await;
    }
    wired
}

/// Create the veth, its peer in the pod, each end with one transmit and one receive queue, the
/// host end already up (one request fewer). The pod end cannot come up in the same request: the
/// kernel opens it before the pair is joined and refuses (`ENOTCONN`).
///
/// The queue counts are given because the kernel's default costs two RCU grace periods under the
/// RTNL lock per veth: a veth gets one queue per possible CPU, then `veth_init_queues` cuts the
/// real count to 1, and lowering it waits for `synchronize_net()` once per end. Concurrent ADDs
/// queue behind those waits (measured with `perf` on this machine's burst of 20). With one queue
/// from the start nothing is lowered (`ip link add … numtxqueues 1 numrxqueues 1`).
async fn create_veth(host: &Handle, spec: &PodSpec<'_>) -> Result<(), PodError> {
    let peer = LinkUnspec::new_with_name(spec.ifname.as_str())
        .setns_by_fd(spec.netns.file().as_raw_fd())
        .mtu(spec.mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host_veth.to_string())
        .mtu(spec.mtu)
        .up()
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await.map_err(|source| {
        if nl::is_errno(&source, &[Errno::EEXIST]) {
            PodError::IfnameTaken {
                ifname: spec.ifname.to_string(),
                netns: spec.netns.path().display().to_string(),
            }
        } else {
            PodError::Netlink {
                what: format!("create veth {}", spec.host_veth),
                source,
            }
        }
    })
}

async fn configure(host: &Handle, pod: &Handle, spec: &PodSpec<'_>) -> Result<PodWiring, PodError> {
    let host_link = nl::link_by_name(host, spec.host_veth.as_str())
        .await
        .map_err(netlink("look up the host veth"))?
        .ok_or_else(|| PodError::Missing(format!("host veth {} vanished", spec.host_veth)))?;
    let host_index = host_link.header.index;
    let host_mac =
        nl::link_mac(&host_link).ok_or_else(|| PodError::Missing("host veth has no MAC".into()))?;
    let pod_link = nl::link_by_name(pod, spec.ifname.as_str())
        .await
        .map_err(netlink("look up the pod interface"))?
        .ok_or_else(|| PodError::Missing(format!("{} did not appear in the pod", spec.ifname)))?;
    let pod_index = pod_link.header.index;
    let pod_mac = nl::link_mac(&pod_link)
        .ok_or_else(|| PodError::Missing("pod interface has no MAC".into()))?;
    set_up(pod, pod_index, "set the pod interface up").await?;

    let ends = Ends {
        host,
        pod,
        host_index,
        pod_index,
        host_mac,
        pod_mac,
    };
    for ip in spec.addresses.addresses() {
        ends.route_address(ip).await?;
    }
    Ok(PodWiring { host_mac, pod_mac })
}

async fn set_up(handle: &Handle, index: u32, what: &str) -> Result<(), PodError> {
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(what))
}

/// Both ends of a pod's veth, up.
struct Ends<'a> {
    host: &'a Handle,
    pod: &'a Handle,
    host_index: u32,
    pod_index: u32,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
}

impl Ends<'_> {
    /// Give the pod `ip` (DAD off for IPv6), a default route via the link-local gateway of its
    /// family (resolved by a permanent neighbour entry to the host end), and the node a host
    /// route to it through the veth. A pod that already has a default route of that family
    /// through another interface (this is a second weft interface, `eth1` beside `eth0`) keeps
    /// it: this interface gets its address and neighbour entry only, so adding or removing it
    /// leaves the other interface's routes as they were.
    async fn route_address(&self, ip: IpAddr) -> Result<(), PodError> {
        let family = Family::of(&ip);
        let len = host_prefix(ip).prefix_len();
        let mut add = self.pod.address().add(self.pod_index, ip, len).replace();
        if ip.is_ipv6() {
            add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        add.execute()
            .await
            .map_err(netlink(format!("add the pod's {family} address")))?;
        let gateway = gateway_for(&ip);
        let what = format!("add the gateway neighbour {gateway}");
        permanent_neighbour(self.pod, self.pod_index, gateway, &self.host_mac, what).await?;
        if self.default_elsewhere(&ip).await? {
            return self.route_to_pod(ip).await;
        }
        if ip.is_ipv4() {
            // An IPv4 gateway outside every prefix on the interface needs a link route to it;
            // IPv6's link-local one is on-link by definition.
            let to_gateway = route_to(gateway, self.pod_index, RouteScope::Link)?;
            replace_route(self.pod, to_gateway, "add the IPv4 gateway route").await?;
        }
        let any = IpNet::new(ip, 0).expect("a /0 prefix is valid").trunc();
        let default = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any.addr(), 0)
            .and_then(|b| b.gateway(gateway))
            .map_err(|_| PodError::Missing(format!("a default route via {gateway}")))?
            .output_interface(self.pod_index)
            .build();
        let what = format!("add the pod's {family} default route");
        replace_route(self.pod, default, &what).await?;
        self.route_to_pod(ip).await
    }

    /// The node's host route to `ip` through the veth; for IPv6 also a permanent neighbour
    /// entry, `ip` at the pod end's MAC.
    ///
    /// The neighbour entry is why the host end needs no `accept_dad=0`: the kernel sends a
    /// neighbour solicitation only from a usable link-local address (`ndisc_send_ns`), and the
    /// host end's is tentative for its first second or so while DAD runs. With the pod's
    /// address resolved in advance the node never solicits it, and IPv6 works the moment ADD
    /// returns. (Writing `/proc/sys/net/ipv6/conf/HOST_VETH/accept_dad` instead cost about a
    /// sixth of the daemon's CPU per ADD in a burst of 20, measured with `perf`: a path walk
    /// through a directory holding every interface of the node.)
    async fn route_to_pod(&self, ip: IpAddr) -> Result<(), PodError> {
        let scope = if ip.is_ipv4() {
            RouteScope::Link
        } else {
            let what = format!("add the node's neighbour entry for {ip}");
            permanent_neighbour(self.host, self.host_index, ip, &self.pod_mac, what).await?;
            RouteScope::Universe
        };
        let to_pod = route_to(ip, self.host_index, scope)?;
        replace_route(self.host, to_pod, "add the node's route to the pod").await
    }

    /// Whether the pod has a default route of `ip`'s family through an interface other than
    /// this one.
    async fn default_elsewhere(&self, ip: &IpAddr) -> Result<bool, PodError> {
        let family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let routes = nl::main_routes(self.pod, family)
            .await
            .map_err(netlink("list the pod's routes"))?;
        Ok(routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.oif.is_some_and(|i| i != self.pod_index)))
    }
}

/// A host route to `ip` through interface `index`.
fn route_to(ip: IpAddr, index: u32, scope: RouteScope) -> Result<RouteMessage, PodError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, host_prefix(ip).prefix_len())
        .map_err(|_| PodError::Missing(format!("route to {ip}")))?
        .output_interface(index)
        .scope(scope)
        .build())
}

/// A permanent neighbour entry on interface `index`: `ip` at `mac` (the pod's gateway at the host
/// end's MAC, or on the node the pod's IPv6 address at the pod end's MAC).
async fn permanent_neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8; 6],
    what: String,
) -> Result<(), PodError> {
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(netlink(what))
}

async fn replace_route(handle: &Handle, route: RouteMessage, what: &str) -> Result<(), PodError> {
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(netlink(what))
}

/// Remove the pod's veth (the pod end and every route through it go with it). Nothing there is fine.
pub async fn teardown(host: &Handle, host_veth: &IfName) -> Result<(), PodError> {
    let Some(link) = nl::link_by_name(host, host_veth.as_str())
        .await
        .map_err(netlink("look up the host veth"))?
    else {
        return Ok(());
    };
    match delete_link_alone(link.header.index).await? {
        Ok(()) => Ok(()),
        Err(e) if nl::is_errno(&e, &[Errno::ENODEV]) => Ok(()),
        Err(source) => Err(PodError::Netlink {
            what: format!("delete veth {host_veth}"),
            source,
        }),
    }
}

/// Delete link `index` of this thread's namespace on a netlink socket and a thread of its own.
/// The kernel answers `RTM_DELLINK` only once the device is unregistered, after every reference
/// to it dropped (tens of milliseconds for a veth): on the shared connection every other pod's
/// request would queue behind that wait, and the blocked `sendmsg` would hold an async worker.
/// So concurrent DELs wait side by side. The outer error: the thread or its socket failed.
async fn delete_link_alone(index: u32) -> Result<Result<(), rtnetlink::Error>, PodError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| PodError::Io { what, source }
    };
    let (done, result) = tokio::sync::oneshot::channel();
    // A new thread shares the creating thread's network namespace: the daemon's own.
    std::thread::Builder::new()
        .name("weft-link-del".into())
        .spawn(move || {
            let deleted = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let (connection, handle, _) = rtnetlink::new_connection()?;
                        tokio::spawn(connection);
                        Ok(handle.link().del(index).execute().await)
                    })
                });
            let _ = done.send(deleted);
        })
        .map_err(io("start a thread to delete a veth"))?;
    let deleted = result.await.map_err(|_| PodError::Io {
        what: "delete a veth".into(),
        source: std::io::Error::other("the deleting thread ended without an answer"),
    })?;
    deleted.map_err(io("open a netlink socket to delete a veth"))
}

/// Whether a link is one of weft's host-side pod veths.
pub fn is_weft_veth(link: &netlink_packet_route::link::LinkMessage) -> bool {
    let is_veth = link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
    });
    is_veth && nl::link_name(link).is_some_and(|n| n.starts_with(HOST_VETH_PREFIX) && n.len() == 15)
}

/// Verify the pod's interface, addresses and routes exist, in the pod and on the node.
pub async fn check(host: &Handle, spec: &PodSpec<'_>) -> Result<(), PodError> {
    let pod = spec.netns.connect(&[]).await?;
    let missing = |what: String| PodError::Missing(what);
    let host_link = nl::link_by_name(host, spec.host_veth.as_str())
        .await
        .map_err(netlink("look up the host veth"))?
        .ok_or_else(|| missing(format!("host veth {} is missing", spec.host_veth)))?;
    let pod_link = nl::link_by_name(&pod, spec.ifname.as_str())
        .await
        .map_err(netlink("look up the pod interface"))?
        .ok_or_else(|| {
            missing(format!(
                "interface {} is missing in {}",
                spec.ifname,
                spec.netns.path().display()
            ))
        })?;
    if !pod_link.header.flags.contains(LinkFlags::Up) {
        return Err(missing(format!("interface {} is down", spec.ifname)));
    }
    let pod_addresses: Vec<IpAddr> = pod
        .address()
        .get()
        .set_link_index_filter(pod_link.header.index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(netlink("list the pod's addresses"))?
        .iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
        .collect();
    for ip in spec.addresses.addresses() {
        if !pod_addresses.contains(&ip) {
            return Err(missing(format!(
                "address {ip} is missing on {}",
                spec.ifname
            )));
        }
        check_routes(host, &pod, ip, host_link.header.index, &spec.host_veth).await?;
    }
    Ok(())
}

/// The pod's default route via the gateway of `ip`'s family, and the node's route to `ip`
/// through `host_veth` (index `host_index`).
async fn check_routes(
    host: &Handle,
    pod: &Handle,
    ip: IpAddr,
    host_index: u32,
    host_veth: &IfName,
) -> Result<(), PodError> {
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let gateway = gateway_for(&ip);
    let pod_routes = nl::main_routes(pod, family)
        .await
        .map_err(netlink("list the pod's routes"))?;
    if !pod_routes
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gateway))
    {
        return Err(PodError::Missing(format!(
            "the pod's default route via {gateway} is missing"
        )));
    }
    let host_routes = nl::main_routes(host, family)
        .await
        .map_err(netlink("list the node's routes"))?;
    let to_pod = host_prefix(ip);
    if !host_routes
        .iter()
        .any(|r| r.dst == to_pod && r.oif == Some(host_index))
    {
        return Err(PodError::Missing(format!(
            "the node's route to {to_pod} via {host_veth} is missing"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_distinct_and_fit_ifnamsiz() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth_name("0123456789abcdee", "eth0"));
        assert_eq!(a.as_str().len(), 15);
        assert!(a.as_str().starts_with("weft"));
    }
}
