//! The WireGuard datapath as data: what weft wants ([`super::WireGuard`]'s plan) and what the
//! device and the kernel hold ([`super::driver`] reads it), in one type so the two compare.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use weft_proto::lease::WgPublicKey;
use weft_proto::names::IfName;

/// The one WireGuard device (`weft.wg`), carrying both pod families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDevice {
    pub name: IfName,
    /// Device MTU: the configured override, or underlay MTU − 60 (IPv4 endpoints) / − 80 (IPv6).
    pub mtu: u32,
    /// Administratively up: always `true` in the desired state.
    pub up: bool,
    /// UDP port the device listens on (51820 unless configured).
    pub port: u16,
    /// The public key of the private key the device holds (`None`: it holds none). The private
    /// key itself never enters the state, the plan or a log line.
    pub public_key: Option<WgPublicKey>,
}

/// One WireGuard peer of the device, keyed by its public key in [`WgState::peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// The peer's underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Its pod CIDRs: what it may send from and what is sent to it (cryptokey routing).
    pub allowed_ips: BTreeSet<IpNet>,
    /// Persistent keepalive in seconds; `None` is off.
    pub keepalive: Option<u16>,
}

/// Everything weft programs for WireGuard. Addresses and routes are on the device; routes carry
/// `proto 87` like every weft route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgState {
    /// `None`: no device.
    pub device: Option<WgDevice>,
    /// The network address of each of this node's pod CIDRs as a host prefix
    /// (`10.244.1.0/32`, `fd00:10:244:1::/128`): the source of the node's own overlay traffic.
    pub addresses: BTreeSet<IpNet>,
    pub peers: BTreeMap<WgPublicKey, WgPeer>,
    /// Routes `DST dev weft.wg proto 87`, one per peer pod CIDR.
    pub routes: BTreeSet<IpNet>,
}

impl WgState {
    /// The peer whose allowed IPs overlap `allowed`, other than `except`: WireGuard would move
    /// the overlap to the newer peer silently (cryptokey routing keeps one peer per prefix).
    pub fn overlapping(
        &self,
        allowed: &BTreeSet<IpNet>,
        except: &WgPublicKey,
    ) -> Option<WgPublicKey> {
        self.peers
            .iter()
            .filter(|(key, _)| *key != except)
            .find(|(_, peer)| {
                peer.allowed_ips
                    .iter()
                    .any(|a| allowed.iter().any(|b| a.contains(b) || b.contains(a)))
            })
            .map(|(key, _)| *key)
    }
}
