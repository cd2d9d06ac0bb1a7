//! Desired against observed → the minimal list of operations, in an order that applies cleanly:
//!
//! 1. the device: created when missing (it then comes back empty, so everything on it is added
//!    again), else its MTU, up state, key and port changed in place;
//! 2. addresses: set the desired, delete the stale;
//! 3. stale routes deleted, before their peers go;
//! 4. peers: stale and changed ones removed, then new and changed ones added — removals first, so
//!    allowed IPs moving from one key to another (a key rotation) never overlap, and a changed peer
//!    is remove + add, never modified in place (see [`Op`]);
//! 5. routes added last, once their peers are there.
//!
//! An unchanged peer gets no operation: a restarted weftd reading a device that already holds
//! every peer applies nothing, and traffic through it never stops.

use super::ops::Op;
use super::state::{WgDevice, WgState};

/// The minimal operations that make `observed` equal `desired`, ordered as the module explains.
pub fn diff(desired: &WgState, observed: &WgState) -> Vec<Op> {
    let Some(device) = &desired.device else {
        return Vec::new();
    };
    let (mut ops, base) = match &observed.device {
        None => (vec![Op::CreateDevice(device.clone())], WgState::default()),
        Some(current) => (device_changes(device, current), observed.clone()),
    };
    let dev = &device.name;
    for address in desired.addresses.difference(&base.addresses) {
        ops.push(Op::SetAddress {
            dev: dev.clone(),
            address: *address,
        });
    }
    for address in base.addresses.difference(&desired.addresses) {
        ops.push(Op::DeleteAddress {
            dev: dev.clone(),
            address: *address,
        });
    }
    for dst in base.routes.difference(&desired.routes) {
        ops.push(Op::DeleteRoute {
            dev: dev.clone(),
            dst: *dst,
        });
    }
    peer_ops(desired, &base, &mut ops, device);
    for dst in desired.routes.difference(&base.routes) {
        ops.push(Op::ReplaceRoute {
            dev: dev.clone(),
            dst: *dst,
        });
    }
    ops
}

/// In-place changes of an existing device.
fn device_changes(desired: &WgDevice, observed: &WgDevice) -> Vec<Op> {
    let dev = desired.name.clone();
    let mut ops = Vec::new();
    if desired.mtu != observed.mtu {
        ops.push(Op::SetMtu {
            dev: dev.clone(),
            mtu: desired.mtu,
        });
    }
    if desired.up && !observed.up {
        ops.push(Op::SetUp(dev.clone()));
    }
    if let Some(key) = desired
        .public_key
        .filter(|k| observed.public_key != Some(*k))
    {
        ops.push(Op::SetKey {
            dev: dev.clone(),
            public_key: key,
        });
    }
    if desired.port != observed.port {
        ops.push(Op::SetPort {
            dev,
            port: desired.port,
        });
    }
    ops
}

/// Removals of stale and changed peers, then additions of new and changed ones.
fn peer_ops(desired: &WgState, base: &WgState, ops: &mut Vec<Op>, device: &WgDevice) {
    let dev = &device.name;
    let changed = |key| desired.peers.get(key) != base.peers.get(key);
    for key in base.peers.keys().filter(|k| changed(k)) {
        ops.push(Op::RemovePeer {
            dev: dev.clone(),
            public_key: *key,
        });
    }
    for (key, peer) in desired.peers.iter().filter(|(k, _)| changed(k)) {
        ops.push(Op::AddPeer {
            dev: dev.clone(),
            public_key: *key,
            peer: peer.clone(),
        });
    }
}
