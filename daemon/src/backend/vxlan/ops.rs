//! The operations of the VXLAN datapath: each one's `ip` / `bridge` equivalent for the log, and
//! its meaning as a model ([`Datapath::apply`]) that the driver follows and the tests check the
//! diff against.

use std::fmt;

use weft_proto::names::IfName;

use super::state::{is_tunnel_device, Address, Datapath, Fdb, Neighbour, Route, VxlanDevice};
use crate::plan::ModelError;

/// One change to the kernel. [`super::Datapath::apply`] defines what each one does; `Display` gives
/// the equivalent `ip` / `bridge` command, one line, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the device, up, with all its attributes.
    CreateDevice(VxlanDevice),
    /// Delete the device and create it anew: a VXLAN link cannot be changed in place (`replace`
    /// fails with EOPNOTSUPP) when one of vni, port, local, learning or mac differs. `reason`
    /// lists the differences, old → new.
    RecreateDevice { device: VxlanDevice, reason: String },
    /// Change a device's MTU in place.
    SetMtu { dev: IfName, mtu: u32 },
    /// Set a device administratively up.
    SetUp(IfName),
    /// Delete one of weft's devices; its addresses and entries go with it.
    DeleteDevice(IfName),
    /// Add an address to a device (`ip addr replace`: idempotent).
    SetAddress(Address),
    /// Remove a stale address from a device.
    DeleteAddress(Address),
    /// Add or replace the route to `dst` (`ip route replace`).
    ReplaceRoute(Route),
    /// Delete a stale route (one whose destination is no longer desired).
    DeleteRoute(Route),
    /// Add or replace the permanent neighbour entry for `(dev, ip)`.
    ReplaceNeighbour(Neighbour),
    /// Delete a stale neighbour entry.
    DeleteNeighbour(Neighbour),
    /// Add or replace the permanent FDB entry for `(dev, mac)`.
    ReplaceFdb(Fdb),
    /// Delete a stale FDB entry (a peer gone, or its old VTEP MAC).
    DeleteFdb(Fdb),
}

impl Op {
    /// The device the operation acts on.
    pub fn dev(&self) -> &IfName {
        match self {
            Op::CreateDevice(d) | Op::RecreateDevice { device: d, .. } => &d.name,
            Op::SetMtu { dev, .. } | Op::SetUp(dev) | Op::DeleteDevice(dev) => dev,
            Op::SetAddress(a) | Op::DeleteAddress(a) => &a.dev,
            Op::ReplaceRoute(r) | Op::DeleteRoute(r) => &r.dev,
            Op::ReplaceNeighbour(n) | Op::DeleteNeighbour(n) => &n.dev,
            Op::ReplaceFdb(f) | Op::DeleteFdb(f) => &f.dev,
        }
    }
}

struct LinkAdd<'a>(&'a VxlanDevice);

impl fmt::Display for LinkAdd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(f, "ip link add {}", d.name)?;
        if d.up {
            f.write_str(" up")?;
        }
        write!(
            f,
            " address {} mtu {} type vxlan id {} local {} dstport {} {}",
            d.mac,
            d.mtu,
            d.vni,
            d.local,
            d.port,
            if d.learning { "learning" } else { "nolearning" }
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateDevice(d) => LinkAdd(d).fmt(f),
            Op::RecreateDevice { device, reason } => write!(
                f,
                "ip link del {} && {} # {reason}",
                device.name,
                LinkAdd(device)
            ),
            Op::SetMtu { dev, mtu } => write!(f, "ip link set {dev} mtu {mtu}"),
            Op::SetUp(dev) => write!(f, "ip link set {dev} up"),
            Op::DeleteDevice(dev) => write!(f, "ip link del {dev}"),
            Op::SetAddress(a) => write!(f, "ip addr replace {} dev {}", a.address, a.dev),
            Op::DeleteAddress(a) => write!(f, "ip addr del {} dev {}", a.address, a.dev),
            Op::ReplaceRoute(r) | Op::DeleteRoute(r) => {
                let verb = if matches!(self, Op::ReplaceRoute(_)) {
                    "replace"
                } else {
                    "del"
                };
                write!(
                    f,
                    "ip route {verb} {} via {} dev {}{}",
                    r.dst,
                    r.gateway,
                    r.dev,
                    if r.onlink { " onlink" } else { "" }
                )
            }
            Op::ReplaceNeighbour(n) => write!(
                f,
                "ip neigh replace {} lladdr {} dev {} nud permanent",
                n.ip, n.mac, n.dev
            ),
            Op::DeleteNeighbour(n) => write!(f, "ip neigh del {} dev {}", n.ip, n.dev),
            Op::ReplaceFdb(e) => write!(
                f,
                "bridge fdb replace {} dev {} dst {} self permanent",
                e.mac, e.dev, e.dst
            ),
            Op::DeleteFdb(e) => write!(
                f,
                "bridge fdb del {} dev {} dst {} self",
                e.mac, e.dev, e.dst
            ),
        }
    }
}

impl Datapath {
    /// What `op` does to the kernel, as a model: the reference meaning of each [`Op`] for the code
    /// that applies them, and what the diff is tested against.
    ///
    /// A device's addresses, routes, neighbour and FDB entries vanish with it (on delete and on
    /// re-create). Like the kernel, the model refuses to create a device that exists, to touch one
    /// that does not, to route on-link through a device that is down, and to delete an entry that
    /// is not there (an entry is deleted only with the content it has).
    pub fn apply(&mut self, op: &Op) -> Result<(), ModelError> {
        let applied = match op {
            Op::CreateDevice(_)
            | Op::RecreateDevice { .. }
            | Op::SetMtu { .. }
            | Op::SetUp(_)
            | Op::DeleteDevice(_) => self.apply_to_device(op),
            _ => self.apply_to_entries(op),
        };
        applied.map_err(|reason| ModelError {
            op: op.to_string(),
            reason,
        })
    }

    /// The device operations (and nothing for the others).
    fn apply_to_device(&mut self, op: &Op) -> Result<(), &'static str> {
        match op {
            Op::DeleteDevice(name) => {
                self.devices.remove(name).ok_or("no such device")?;
                self.remove_entries_on(name);
            }
            Op::CreateDevice(device) => {
                if self.devices.contains_key(&device.name) {
                    return Err("the device exists");
                }
                self.insert_device(device.clone());
            }
            Op::RecreateDevice { device, .. } => {
                self.devices.remove(&device.name).ok_or("no such device")?;
                self.remove_entries_on(&device.name);
                self.insert_device(device.clone());
            }
            Op::SetMtu { dev, mtu } => {
                self.devices.get_mut(dev).ok_or("no such device")?.mtu = *mtu;
            }
            Op::SetUp(dev) => self.devices.get_mut(dev).ok_or("no such device")?.up = true,
            _ => {}
        }
        Ok(())
    }

    /// Addresses, routes, neighbour and FDB entries (and nothing for device operations).
    fn apply_to_entries(&mut self, op: &Op) -> Result<(), &'static str> {
        let device = |dev: &IfName| self.devices.get(dev).ok_or("no such device");
        match op {
            Op::SetAddress(address) => {
                device(&address.dev)?;
                self.addresses.insert(address.clone());
            }
            Op::DeleteAddress(address) if !self.addresses.remove(address) => {
                return Err("no such address")
            }
            // A route on a device weft does not make (direct routing: the underlay interface)
            // is taken as the kernel takes it; that device is not modelled.
            Op::ReplaceRoute(route) => {
                if is_tunnel_device(&route.dev) && !device(&route.dev)?.up {
                    return Err("the device is down");
                }
                self.insert_route(route.clone());
            }
            Op::DeleteRoute(route) => {
                remove_exact(&mut self.routes, &route.dst, route).ok_or("no such route")?
            }
            Op::ReplaceNeighbour(neighbour) => {
                device(&neighbour.dev)?;
                self.insert_neighbour(neighbour.clone());
            }
            Op::DeleteNeighbour(n) => remove_exact(&mut self.neighbours, &(n.dev.clone(), n.ip), n)
                .ok_or("no such neighbour entry")?,
            Op::ReplaceFdb(fdb) => {
                device(&fdb.dev)?;
                self.insert_fdb(fdb.clone());
            }
            Op::DeleteFdb(fdb) => remove_exact(&mut self.fdb, &(fdb.dev.clone(), fdb.mac), fdb)
                .ok_or("no such FDB entry")?,
            _ => {}
        }
        Ok(())
    }
}

/// Remove `key` from `map` if it holds exactly `value` (an entry is deleted only with the content
/// it has); `None` if it does not.
fn remove_exact<K: Ord, V: PartialEq>(
    map: &mut std::collections::BTreeMap<K, V>,
    key: &K,
    value: &V,
) -> Option<()> {
    if map.get(key) != Some(value) {
        return None;
    }
    map.remove(key).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::lease::MacAddr;

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
