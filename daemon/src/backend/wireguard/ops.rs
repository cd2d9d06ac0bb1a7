//! The operations of the WireGuard datapath: each one's `ip` / `wg` equivalent for the log, and its
//! meaning as a model ([`apply`]) that the driver follows and the tests check the diff against.

use std::fmt;

use ipnet::IpNet;
use weft_proto::lease::WgPublicKey;
use weft_proto::names::IfName;

use super::state::{WgDevice, WgPeer, WgState};
use crate::plan::ModelError;

/// One change to the device or the kernel, on the device `dev` of the plan.
///
/// A peer is never modified in place: boringtun's device hangs when an existing peer's endpoint
/// or keepalive changes ("modifying existing peers is not supported"), so a changed peer is
/// [`Op::RemovePeer`] then [`Op::AddPeer`], one peer per UAPI transaction, on both
/// implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the device (kernel: a `wireguard` link; userspace: start `weft-wg`), then give it
    /// its key, port and MTU, up.
    CreateDevice(WgDevice),
    /// Change the device's MTU in place.
    SetMtu { dev: IfName, mtu: u32 },
    /// Set the device administratively up.
    SetUp(IfName),
    /// Give the device the private key whose public key this is (the driver holds the keys).
    SetKey {
        dev: IfName,
        public_key: WgPublicKey,
    },
    /// Change the UDP listen port.
    SetPort { dev: IfName, port: u16 },
    /// Add an address to the device (`ip addr replace`).
    SetAddress { dev: IfName, address: IpNet },
    /// Remove a stale address.
    DeleteAddress { dev: IfName, address: IpNet },
    /// Add a peer that the device does not have.
    AddPeer {
        dev: IfName,
        public_key: WgPublicKey,
        peer: WgPeer,
    },
    /// Remove a peer (its allowed IPs go with it).
    RemovePeer {
        dev: IfName,
        public_key: WgPublicKey,
    },
    /// Add or replace the route to a peer pod CIDR through the device.
    ReplaceRoute { dev: IfName, dst: IpNet },
    /// Delete a stale route.
    DeleteRoute { dev: IfName, dst: IpNet },
}

impl Op {
    /// The device the operation acts on.
    pub fn dev(&self) -> &IfName {
        match self {
            Op::CreateDevice(d) => &d.name,
            Op::SetMtu { dev, .. }
            | Op::SetUp(dev)
            | Op::SetKey { dev, .. }
            | Op::SetPort { dev, .. }
            | Op::SetAddress { dev, .. }
            | Op::DeleteAddress { dev, .. }
            | Op::AddPeer { dev, .. }
            | Op::RemovePeer { dev, .. }
            | Op::ReplaceRoute { dev, .. }
            | Op::DeleteRoute { dev, .. } => dev,
        }
    }
}

/// `allowed-ips A,B` as `wg set` writes them.
fn allowed_list(peer: &WgPeer) -> String {
    let list: Vec<String> = peer.allowed_ips.iter().map(|n| n.to_string()).collect();
    list.join(",")
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateDevice(d) => write!(
                f,
                "ip link add {} type wireguard; wg set {} listen-port {} private-key (key of {}); ip link set {} mtu {} up",
                d.name,
                d.name,
                d.port,
                d.public_key.map(|k| k.to_string()).unwrap_or_default(),
                d.name,
                d.mtu
            ),
            Op::SetMtu { dev, mtu } => write!(f, "ip link set {dev} mtu {mtu}"),
            Op::SetUp(dev) => write!(f, "ip link set {dev} up"),
            Op::SetKey { dev, public_key } => {
                write!(f, "wg set {dev} private-key (key of {public_key})")
            }
            Op::SetPort { dev, port } => write!(f, "wg set {dev} listen-port {port}"),
            Op::SetAddress { dev, address } => write!(f, "ip addr replace {address} dev {dev}"),
            Op::DeleteAddress { dev, address } => write!(f, "ip addr del {address} dev {dev}"),
            Op::AddPeer {
                dev,
                public_key,
                peer,
            } => {
                write!(
                    f,
                    "wg set {dev} peer {public_key} endpoint {} allowed-ips {}",
                    peer.endpoint,
                    allowed_list(peer)
                )?;
                if let Some(seconds) = peer.keepalive {
                    write!(f, " persistent-keepalive {seconds}")?;
                }
                Ok(())
            }
            Op::RemovePeer { dev, public_key } => write!(f, "wg set {dev} peer {public_key} remove"),
            Op::ReplaceRoute { dev, dst } => {
                write!(f, "ip route replace {dst} dev {dev} proto 87")
            }
            Op::DeleteRoute { dev, dst } => write!(f, "ip route del {dst} dev {dev} proto 87"),
        }
    }
}

fn refuse(op: &Op, reason: &'static str) -> ModelError {
    ModelError {
        op: op.to_string(),
        reason,
    }
}

/// What `op` does to `state`, refusing what the device would refuse (or, for a peer added with
/// allowed IPs another peer holds, what it would silently get wrong).
pub fn apply(state: &mut WgState, op: &Op) -> Result<(), ModelError> {
    if let Op::CreateDevice(device) = op {
        if state.device.is_some() {
            return Err(refuse(op, "the device exists"));
        }
        *state = WgState {
            device: Some(device.clone()),
            ..WgState::default()
        };
        return Ok(());
    }
    let Some(device) = state.device.as_mut() else {
        return Err(refuse(op, "no device"));
    };
    match op {
        Op::CreateDevice(_) => unreachable!("handled above"),
        Op::SetMtu { mtu, .. } => device.mtu = *mtu,
        Op::SetUp(_) => device.up = true,
        Op::SetKey { public_key, .. } => device.public_key = Some(*public_key),
        Op::SetPort { port, .. } => device.port = *port,
        Op::SetAddress { address, .. } => {
            state.addresses.insert(*address);
        }
        Op::DeleteAddress { address, .. } => {
            state.addresses.remove(address);
        }
        Op::AddPeer {
            public_key, peer, ..
        } => add_peer(state, op, public_key, peer)?,
        Op::RemovePeer { public_key, .. } => {
            state.peers.remove(public_key);
        }
        Op::ReplaceRoute { dst, .. } => {
            state.routes.insert(*dst);
        }
        Op::DeleteRoute { dst, .. } => {
            state.routes.remove(dst);
        }
    }
    Ok(())
}

fn add_peer(
    state: &mut WgState,
    op: &Op,
    public_key: &WgPublicKey,
    peer: &WgPeer,
) -> Result<(), ModelError> {
    if state.peers.contains_key(public_key) {
        return Err(refuse(op, "the peer exists (remove it first)"));
    }
    if state.overlapping(&peer.allowed_ips, public_key).is_some() {
        return Err(refuse(op, "another peer holds these allowed IPs"));
    }
    state.peers.insert(*public_key, peer.clone());
    Ok(())
}
