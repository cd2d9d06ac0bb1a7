//! Desired against observed → the minimal list of operations, in an order that applies cleanly.
//!
//! Order, and why:
//! 1. devices: deletions, then creations and re-creations, then in-place MTU and up changes — every
//!    later operation needs its device;
//! 2. addresses: set the desired, delete the stale;
//! 3. stale routes are deleted before the neighbour and FDB entries they lead to;
//! 4. FDB entries replaced, then neighbour entries replaced (a neighbour's MAC is in the FDB before
//!    the neighbour points at it);
//! 5. routes replaced: each one's gateway already resolves, through a permanent neighbour entry,
//!    to a MAC the FDB knows (or, routed directly, is a neighbour on the underlay); an IPv6 route
//!    moving from the underlay interface to a tunnel device is deleted right before (the kernel
//!    refuses that replace);
//! 6. stale neighbour entries, then stale FDB entries, last: a peer's old VTEP MAC goes only after
//!    its neighbour entry moved to the new one, and a peer now routed directly keeps its tunnel
//!    entries until its route no longer uses them.
//!
//! So traffic to an unchanged peer is never interrupted, and a changed peer's traffic has a path at
//! every step but the ones that remove it (a peer moving between the tunnel and direct routing
//! included).
//!
//! Routes may sit on a device weft does not make (direct routing: the underlay interface). Such a
//! device is never created or deleted here, and its routes are compared like any other.
//!
//! A device that is created or re-created comes back empty: every desired entry on it is added
//! again, whatever the observed state listed. A device that is deleted takes its entries with it:
//! they get no operations of their own. Everything else is compared by key: missing → replace,
//! same key with other content → one replace (never delete + add), stale → delete.

use std::collections::BTreeSet;

use weft_proto::names::IfName;

use super::ops::Op;
use super::state::{is_tunnel_device, Datapath, Route, VxlanDevice};

/// Why `observed` cannot become `desired` in place: the attributes a VXLAN link cannot change,
/// old → new; `None` when it can.
fn incompatible(desired: &VxlanDevice, observed: &VxlanDevice) -> Option<String> {
    let mut changes = Vec::new();
    let mut check = |name: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{name} {old} → {new}"));
        }
    };
    check("vni", observed.vni.to_string(), desired.vni.to_string());
    check("port", observed.port.to_string(), desired.port.to_string());
    check(
        "local",
        observed.local.to_string(),
        desired.local.to_string(),
    );
    check(
        "learning",
        observed.learning.to_string(),
        desired.learning.to_string(),
    );
    check("mac", observed.mac.to_string(), desired.mac.to_string());
    (!changes.is_empty()).then(|| changes.join(", "))
}

/// The minimal operations that make `observed` equal `desired`, ordered as the module explains.
///
/// `observed` holds weft's own devices only (see [`Datapath`]): a device in it that `desired` does
/// not name is deleted.
pub fn diff(desired: &Datapath, observed: &Datapath) -> Vec<Op> {
    let (mut ops, fresh) = device_ops(desired, observed);
    // An observed object counts only on a device that stays as it is: one on a deleted or
    // (re-)created device is gone with it. A device weft does not make (the underlay) stays.
    let kept = |dev: &IfName| match desired.devices.contains_key(dev) {
        true => !fresh.contains(dev),
        false => !is_tunnel_device(dev),
    };
    address_ops(desired, observed, &kept, &mut ops);
    entry_ops(desired, observed, &kept, &mut ops);
    ops
}

/// 1. Devices: deletions, creations and re-creations, then in-place changes; and the devices
///    that are (re-)created now (`fresh`), on which nothing observed survives.
fn device_ops<'d>(desired: &'d Datapath, observed: &Datapath) -> (Vec<Op>, BTreeSet<&'d IfName>) {
    let mut ops = Vec::new();
    let mut fresh: BTreeSet<&IfName> = BTreeSet::new();
    for name in observed.devices.keys() {
        if !desired.devices.contains_key(name) {
            ops.push(Op::DeleteDevice(name.clone()));
        }
    }
    let mut in_place = Vec::new();
    for (name, want) in &desired.devices {
        let Some(have) = observed.devices.get(name) else {
            ops.push(Op::CreateDevice(want.clone()));
            fresh.insert(name);
            continue;
        };
        if let Some(reason) = incompatible(want, have) {
            ops.push(Op::RecreateDevice {
                device: want.clone(),
                reason,
            });
            fresh.insert(name);
            continue;
        }
        if have.mtu != want.mtu {
            in_place.push(Op::SetMtu {
                dev: name.clone(),
                mtu: want.mtu,
            });
        }
        if want.up && !have.up {
            in_place.push(Op::SetUp(name.clone()));
        }
    }
    ops.extend(in_place);
    (ops, fresh)
}

/// 2. Addresses: set the desired, delete the stale.
fn address_ops(
    desired: &Datapath,
    observed: &Datapath,
    kept: &dyn Fn(&IfName) -> bool,
    ops: &mut Vec<Op>,
) {
    for address in &desired.addresses {
        if !(kept(&address.dev) && observed.addresses.contains(address)) {
            ops.push(Op::SetAddress(address.clone()));
        }
    }
    for address in &observed.addresses {
        if kept(&address.dev) && !desired.addresses.contains(address) {
            ops.push(Op::DeleteAddress(address.clone()));
        }
    }
}

/// 3–6. Routes, neighbour and FDB entries, in the order the module explains.
fn entry_ops(
    desired: &Datapath,
    observed: &Datapath,
    kept: &dyn Fn(&IfName) -> bool,
    ops: &mut Vec<Op>,
) {
    // 3. Stale routes.
    for (dst, route) in &observed.routes {
        if kept(&route.dev) && !desired.routes.contains_key(dst) {
            ops.push(Op::DeleteRoute(route.clone()));
        }
    }
    // 4. FDB, then neighbours.
    for (key, fdb) in &desired.fdb {
        if observed.fdb.get(key).filter(|e| kept(&e.dev)) != Some(fdb) {
            ops.push(Op::ReplaceFdb(fdb.clone()));
        }
    }
    for (key, neighbour) in &desired.neighbours {
        if observed.neighbours.get(key).filter(|n| kept(&n.dev)) != Some(neighbour) {
            ops.push(Op::ReplaceNeighbour(neighbour.clone()));
        }
    }
    // 5. Routes.
    for (dst, route) in &desired.routes {
        let have = observed.routes.get(dst).filter(|r| kept(&r.dev));
        if have == Some(route) {
            continue;
        }
        // IPv6 checks an on-link gateway against the routes already there: the old route to
        // the same pod CIDR through another device covers it, and the kernel refuses the
        // replace ("Nexthop has invalid gateway or device mismatch"). So that one peer's route
        // is deleted first, right before.
        let refused = |old: &&Route| route.onlink && old.dev != route.dev && dst.addr().is_ipv6();
        if let Some(old) = have.filter(refused) {
            ops.push(Op::DeleteRoute(old.clone()));
        }
        ops.push(Op::ReplaceRoute(route.clone()));
    }
    // 6. Stale neighbour entries, then stale FDB entries.
    for (key, neighbour) in &observed.neighbours {
        if kept(&key.0) && !desired.neighbours.contains_key(key) {
            ops.push(Op::DeleteNeighbour(neighbour.clone()));
        }
    }
    for (key, fdb) in &observed.fdb {
        if kept(&key.0) && !desired.fdb.contains_key(key) {
            ops.push(Op::DeleteFdb(fdb.clone()));
        }
    }
}
