//! The VXLAN backend: flannel's scheme, planned purely here and applied by [`driver`].
//!
//! - this file: the plan — the VTEP MAC as each peer's identity claim, the desired [`Datapath`]
//!   for the admitted peers, the MTU;
//! - `state`: the datapath as data ([`Datapath`]); `ops`: the operations ([`Op`]) and their model; [`diff()`]: desired
//!   against observed → operations; [`driver`]: rtnetlink, observing and applying.
//!
//!
//! **Scheme (flannel's, per pod family).** This node runs one VXLAN device per pod family it holds
//! a pod CIDR for: `weft.vxlan` (IPv4 pods, VNI 1) and `weft-v6.vxlan` (IPv6 pods, VNI 2), both on
//! UDP 8472, both with learning off. Each device carries the network address of this node's pod
//! CIDR of its family as a /32 or /128 (`10.244.1.0/32 dev weft.vxlan`), so the node's own traffic
//! into the overlay has a source address peers route back. For every accepted peer and every family
//! both sides hold a pod CIDR for, the device gets:
//!
//! ```text
//! ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink            # the peer's pods
//! ip neigh replace 10.244.2.0 lladdr <peer VTEP MAC> dev weft.vxlan nud permanent # its gateway's MAC
//! bridge fdb replace <peer VTEP MAC> dev weft.vxlan dst <peer underlay IP> self permanent
//! ```
//!
//! Cost per peer per family: one route, one neighbour, one FDB entry — nothing is broadcast, nothing
//! is learnt, and a peer change touches only that peer's entries.
//!
//! **Direct routing** (`--direct-routing auto`, the default; flannel's DirectRouting, decided per
//! peer and per family). A peer whose underlay address of a pod family lies on a subnet directly
//! connected to this node's underlay interface ([`PlanConfig::direct_routing`]) needs no tunnel
//! for that family: its pod CIDR is routed straight to that address, and nothing else is
//! programmed for it on the device:
//!
//! ```text
//! ip route replace 10.244.2.0/24 via 192.168.56.12 dev eth1 proto 87    # the peer's pods, unwrapped
//! ```
//!
//! Peers elsewhere keep the tunnel. The route is keyed by its destination like the tunnel's, so a
//! peer moving between the two is one route replace (and the entries the tunnel needs, added
//! before it or deleted after it): other peers' entries are not touched.
//!
//! **Underlay family.** Both devices send from the same underlay address (`local`): the node's IPv4
//! underlay address if it has one, else its IPv6 one (a v6-only underlay). A peer's FDB `dst` is
//! its underlay address of that same family; a peer without one cannot be reached and is refused.
//! MTU: the configured override, else the underlay MTU less the encapsulation (50 bytes over IPv4,
//! 70 over IPv6).
//!
//! **Trust nothing a peer publishes.** Any node agent can write any Node object today, so
//! admission (`crate::plan::admission`) checks every peer record and refuses (programs
//! nothing for, and says why) a peer whose claims would hijack or break traffic; see that module
//! for the list and the conflict policy:
//! incumbency. A peer's claim (pod CIDR, VTEP MAC, underlay address) that the plan being
//! programmed accepted stays programmed, and a newcomer conflicting with it is refused; so a record
//! imitating node b's cannot cut b's pods off. Only a conflict no claimant held before (at
//! start-up, say) refuses every claimant, since the plan cannot know who is honest: the store
//! arbitrates claims, the plan can only refuse.
//!
//! **Steps.** [`desired`] (own lease, peers, [`PlanConfig`], the [`Incumbents`] — the previous
//! plan's [`Plan::accepted`]) → [`Plan`] (a [`Datapath`], the refusals and the claims accepted);
//! the datapath reads the kernel into an observed [`Datapath`]; [`diff()`] → `Vec<`[`Op`]`>`
//! in an order that applies cleanly; the datapath applies them (each op's meaning is pinned down by
//! [`Datapath::apply`], the reference model the tests check the diff against). A restart and a
//! steady-state peer event go through the same two functions, so a restart converges what is there
//! instead of flushing it.
//!
//! **Operation counts.** A peer added or removed: three operations per shared family. A peer whose
//! underlay address moved: one FDB replace per family. A new VTEP MAC: FDB add, neighbour replace
//! and the delete of the old FDB entry. Never a full resync.

mod diff;
pub mod driver;
mod ops;
mod state;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use weft_proto::lease::{Backend, BackendData, Lease, MacAddr};
use weft_proto::names::IfName;

pub use diff::diff;
pub use ops::Op;
pub use state::{Address, Datapath, Fdb, FdbKey, Neighbour, NeighbourKey, Route, VxlanDevice};

use crate::net::host_prefix;
use crate::plan::admission::{Admitted, Identity, IdentityRule, Incumbents};
use crate::plan::{
    tunnel_family, BackendPlan, DirectRouting, Family, ModelError, PlanConfig, PlanError,
};

/// UDP port of both VXLAN devices (the Linux and flannel default).
pub const VXLAN_PORT: u16 = 8472;
/// Encapsulation overhead over an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V4_UNDERLAY: u32 = 50;
/// Encapsulation overhead over an IPv6 underlay: outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const OVERHEAD_V6_UNDERLAY: u32 = 70;

/// The device carrying pods of `family`: `weft.vxlan` or `weft-v6.vxlan`.
pub fn device_name(family: Family) -> IfName {
    // Both constants are valid interface names (checked by a test).
    IfName::new(device_str(family)).expect("constant device names are valid")
}

fn device_str(family: Family) -> &'static str {
    match family {
        Family::V4 => "weft.vxlan",
        Family::V6 => "weft-v6.vxlan",
    }
}

/// weft's VXLAN device names, one per pod family.
pub fn device_names() -> [IfName; 2] {
    [device_name(Family::V4), device_name(Family::V6)]
}

/// VNI 1 for IPv4 pods, 2 for IPv6 pods.
pub fn vni(family: Family) -> u32 {
    match family {
        Family::V4 => 1,
        Family::V6 => 2,
    }
}

/// The VTEP MAC a VXLAN node publishes for `family`; `None` for another backend too.
pub fn vtep_mac(family: Family, backend: &BackendData) -> Option<MacAddr> {
    match (family, backend) {
        (Family::V4, BackendData::Vxlan { vtep_mac, .. }) => *vtep_mac,
        (Family::V6, BackendData::Vxlan { vtep_mac_v6, .. }) => *vtep_mac_v6,
        (_, BackendData::WireGuard { .. }) => None,
    }
}

/// The identity claim of a peer whose VTEP MAC on the device of `family` is `mac`.
pub fn identity(family: Family, mac: MacAddr) -> Identity {
    Identity(format!("VTEP MAC {mac} on {}", device_str(family)))
}

/// Encapsulation overhead over an underlay of `family`.
pub fn overhead(underlay: Family) -> u32 {
    match underlay {
        Family::V4 => OVERHEAD_V4_UNDERLAY,
        Family::V6 => OVERHEAD_V6_UNDERLAY,
    }
}

/// The VXLAN backend's plan (no state: everything comes from the leases and the config).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vxlan;

/// A VXLAN plan.
pub type Plan = crate::plan::Plan<Datapath>;

/// The VXLAN plan of the node holding `own` (see [`crate::plan::plan`]).
pub fn desired<'a>(
    own: &Lease,
    peers: impl IntoIterator<Item = &'a Lease>,
    config: &PlanConfig,
    incumbents: &Incumbents,
) -> Result<Plan, PlanError> {
    crate::plan::plan(&Vxlan, own, peers, config, incumbents)
}

impl IdentityRule for Vxlan {
    fn backend(&self) -> Backend {
        Backend::Vxlan
    }

    /// Its VTEP MAC on the device of `family`: present, unicast, not this node's own.
    fn claim(&self, family: Family, peer: &Lease, own: &Lease) -> Result<Identity, String> {
        let cidr = family
            .pod_cidr(&peer.pod_cidrs)
            .map(|c| c.to_string())
            .unwrap_or_default();
        match vtep_mac(family, &peer.backend) {
            None => Err(format!(
                "publishes no VTEP MAC for its {family} pod CIDR {cidr}"
            )),
            Some(mac) if mac.0 == [0; 6] || mac.0[0] & 1 == 1 => {
                Err(format!("VTEP MAC {mac} is not a unicast address"))
            }
            Some(mac) if Some(mac) == vtep_mac(family, &own.backend) => Err(format!(
                "VTEP MAC {mac} is this node's own on {}",
                device_name(family)
            )),
            Some(mac) => Ok(identity(family, mac)),
        }
    }
}

impl BackendPlan for Vxlan {
    type State = Datapath;
    type Op = Op;

    fn desired(
        &self,
        own: &Lease,
        admitted: &[Admitted<'_>],
        config: &PlanConfig,
    ) -> Result<Datapath, PlanError> {
        let (local, devices) = own_devices(own)?;
        let mtu = self.pod_mtu(own, config);
        let mut datapath = Datapath::default();
        for (family, cidr, mac) in devices {
            let name = device_name(family);
            datapath.insert_device(VxlanDevice {
                name: name.clone(),
                vni: vni(family),
                port: VXLAN_PORT,
                local,
                mac,
                mtu,
                learning: false,
                up: true,
            });
            datapath.insert_address(Address {
                dev: name,
                address: host_prefix(cidr.network()),
            });
        }
        for peer in admitted {
            program(&mut datapath, peer, config.direct_routing.as_ref());
        }
        Ok(datapath)
    }

    fn diff(&self, desired: &Datapath, observed: &Datapath) -> Vec<Op> {
        diff(desired, observed)
    }

    /// The configured MTU, else the underlay MTU less 50 (IPv4 underlay) or 70 (IPv6).
    fn pod_mtu(&self, own: &Lease, config: &PlanConfig) -> u32 {
        let underlay = tunnel_family(&own.public_ips).unwrap_or(Family::V4);
        config.overlay_mtu(overhead(underlay))
    }

    fn op_device<'o>(&self, op: &'o Op) -> Option<&'o IfName> {
        Some(op.dev())
    }

    fn creates_device(&self, op: &Op) -> bool {
        matches!(op, Op::CreateDevice(_) | Op::RecreateDevice { .. })
    }

    fn model_apply(&self, state: &mut Datapath, op: &Op) -> Result<(), ModelError> {
        state.apply(op)
    }

    /// VXLAN decapsulates whatever reaches UDP 8472: only peers may send there.
    fn guarded_port(&self) -> Option<u16> {
        Some(VXLAN_PORT)
    }
}

/// One of this node's devices: its family, this node's pod CIDR of that family, its VTEP MAC.
type OwnDevice = (Family, ipnet::IpNet, MacAddr);

/// This node's tunnel source address and, per pod family it holds a CIDR of, the CIDR and its
/// VTEP MAC; or why its lease cannot be served.
fn own_devices(own: &Lease) -> Result<(IpAddr, Vec<OwnDevice>), PlanError> {
    if own.backend.backend() != Backend::Vxlan {
        return Err(PlanError::WrongBackend {
            node: own.node.clone(),
            backend: own.backend.backend(),
            expected: Backend::Vxlan,
        });
    }
    let local = tunnel_family(&own.public_ips)
        .and_then(|f| f.public_ip(&own.public_ips))
        .ok_or_else(|| PlanError::NoUnderlay {
            node: own.node.clone(),
        })?;
    let mut devices = Vec::new();
    for family in Family::ALL {
        let Some(cidr) = family.pod_cidr(&own.pod_cidrs) else {
            continue;
        };
        let mac = vtep_mac(family, &own.backend).ok_or_else(|| PlanError::Incomplete {
            node: own.node.clone(),
            what: format!(
                "holds {family} pod CIDR {cidr} but its lease has no VTEP MAC for {}",
                device_name(family)
            ),
        })?;
        devices.push((family, cidr, mac));
    }
    Ok((local, devices))
}

/// One admitted peer's entries, per family: the route straight to its underlay address where
/// direct routing reaches it ([`direct_route`]), else the route, neighbour and FDB entry through
/// the tunnel.
fn program(datapath: &mut Datapath, peer: &Admitted, direct: Option<&DirectRouting>) {
    for &(family, cidr, _) in &peer.entries {
        if let Some(route) = direct_route(family, cidr, peer.lease, direct) {
            datapath.insert_route(route);
            continue;
        }
        // Admission checked the MAC is there.
        let Some(mac) = vtep_mac(family, &peer.lease.backend) else {
            continue;
        };
        let dev = device_name(family);
        let gateway = cidr.network();
        datapath.insert_route(Route {
            dst: cidr,
            gateway,
            dev: dev.clone(),
            onlink: true,
        });
        datapath.insert_neighbour(Neighbour {
            dev: dev.clone(),
            ip: gateway,
            mac,
        });
        datapath.insert_fdb(Fdb {
            dev,
            mac,
            dst: peer.underlay,
        });
    }
}

/// Direct routing of `peer`'s pod CIDR `cidr` of `family`: where its underlay address of that
/// family lies on a subnet connected to this node's underlay interface,
/// `ip route replace <cidr> via <its underlay address> dev <underlay interface>`: the packet
/// leaves unencapsulated, as between two routers on one link. `None` (the tunnel) otherwise,
/// or when direct routing is off.
pub fn direct_route(
    family: Family,
    cidr: ipnet::IpNet,
    peer: &Lease,
    direct: Option<&DirectRouting>,
) -> Option<Route> {
    let direct = direct?;
    let gateway = family
        .public_ip(&peer.public_ips)
        .filter(|ip| direct.reaches(*ip))?;
    Some(Route {
        dst: cidr,
        gateway,
        dev: direct.iface.clone(),
        onlink: false,
    })
}
