//! Kernel WireGuard: the `wireguard` generic-netlink family, spoken with the typed messages of
//! `netlink-packet-wireguard` over a `genetlink` connection (the rust-netlink crates weft's
//! rtnetlink already uses). The device is a `wireguard` link made over rtnetlink.
//!
//! The same per-peer operations as the userspace control socket: a peer is added with
//! `WGPEER_F_REPLACE_ALLOWEDIPS` and removed with `WGPEER_F_REMOVE_ME`, one peer per request, and
//! the device's key and port are set without naming any peer, so an adopted device keeps its
//! peers and sessions. The message builders and the reply reader are pure and unit-tested; the
//! requests need the kernel module (the namespace test says SKIP without it).

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use weft_proto::lease::WgPublicKey;

use super::keys::PrivateKey;
use super::state::WgPeer;
use super::uapi::{DeviceInfo, PeerInfo};

/// Why a kernel WireGuard request failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("wireguard generic netlink on {device}: {reason}")]
    Request { device: String, reason: String },
}

/// A generic-netlink connection to the kernel's WireGuard, for one device.
pub struct KernelControl {
    handle: GenetlinkHandle,
    device: String,
}

impl KernelControl {
    /// A connection in the calling thread's network namespace (needs a tokio runtime).
    pub fn connect(device: &str) -> std::io::Result<KernelControl> {
        let (connection, handle, _) = genetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(KernelControl {
            handle,
            device: device.to_string(),
        })
    }

    fn error(&self, reason: impl ToString) -> KernelError {
        KernelError::Request {
            device: self.device.clone(),
            reason: reason.to_string(),
        }
    }

    /// `WG_CMD_GET_DEVICE`: key, port and peers.
    pub async fn get(&mut self) -> Result<DeviceInfo, KernelError> {
        let request = get_message(&self.device);
        let replies = self.send(request, NLM_F_REQUEST | NLM_F_DUMP).await?;
        Ok(device_info(&replies))
    }

    pub async fn set_key(&mut self, key: &PrivateKey) -> Result<(), KernelError> {
        let attributes = vec![WireguardAttribute::PrivateKey(key.bytes())];
        self.set(attributes).await
    }

    pub async fn set_port(&mut self, port: u16) -> Result<(), KernelError> {
        self.set(vec![WireguardAttribute::ListenPort(port)]).await
    }

    pub async fn add_peer(&mut self, key: &WgPublicKey, peer: &WgPeer) -> Result<(), KernelError> {
        let peers = vec![peer_to_add(key, peer)];
        self.set(vec![WireguardAttribute::Peers(peers)]).await
    }

    pub async fn remove_peer(&mut self, key: &WgPublicKey) -> Result<(), KernelError> {
        let peers = vec![peer_to_remove(key)];
        self.set(vec![WireguardAttribute::Peers(peers)]).await
    }

    async fn set(&mut self, attributes: Vec<WireguardAttribute>) -> Result<(), KernelError> {
        let request = set_message(&self.device, attributes);
        self.send(request, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Send one request; its replies, or the kernel's error.
    async fn send(
        &mut self,
        message: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, KernelError> {
        let mut request = NetlinkMessage::from(GenlMessage::from_payload(message));
        request.header.flags = flags;
        let mut stream = self
            .handle
            .request(request)
            .await
            .map_err(|e| self.error(e))?;
        let mut replies = Vec::new();
        while let Some(reply) = stream.next().await {
            match reply.map_err(|e| self.error(e))?.payload {
                NetlinkPayload::InnerMessage(genl) => replies.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(self.error(e.to_io())),
                _ => {}
            }
        }
        Ok(replies)
    }
}

/// Whether this kernel speaks WireGuard: `Ok` if the `wireguard` generic-netlink family resolves
/// (asking also loads the module where it is available but not loaded), else why not.
pub async fn supported() -> Result<(), String> {
    let (connection, handle, _) =
        genetlink::new_connection().map_err(|e| format!("open generic netlink: {e}"))?;
    let task = tokio::spawn(connection);
    let resolved = handle.resolve_family::<WireguardMessage>().await;
    task.abort();
    resolved
        .map(|_| ())
        .map_err(|e| format!("the kernel has no wireguard generic-netlink family ({e})"))
}

/// `WG_CMD_GET_DEVICE` for `device`.
pub fn get_message(device: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(device.to_string())],
    }
}

/// `WG_CMD_SET_DEVICE` for `device` with `attributes`.
pub fn set_message(device: &str, mut attributes: Vec<WireguardAttribute>) -> WireguardMessage {
    attributes.insert(0, WireguardAttribute::IfName(device.to_string()));
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

/// A peer to add, its allowed IPs replacing whatever it had.
pub fn peer_to_add(key: &WgPublicKey, peer: &WgPeer) -> WireguardPeer {
    let allowed = peer.allowed_ips.iter().map(allowed_ip).collect();
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(key.0),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::Endpoint(peer.endpoint),
        WireguardPeerAttribute::PersistentKeepalive(peer.keepalive.unwrap_or(0)),
        WireguardPeerAttribute::AllowedIps(allowed),
    ])
}

/// A peer to remove.
pub fn peer_to_remove(key: &WgPublicKey) -> WireguardPeer {
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(key.0),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
    ])
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// The device as the replies of one `WG_CMD_GET_DEVICE` dump give it (a device with many peers
/// comes in several messages, each with some of them).
pub fn device_info(replies: &[WireguardMessage]) -> DeviceInfo {
    let mut device = DeviceInfo::default();
    for attribute in replies.iter().flat_map(|m| &m.attributes) {
        match attribute {
            WireguardAttribute::PrivateKey(bytes) if *bytes != [0; 32] => {
                device.public_key = Some(PrivateKey::from_bytes(*bytes).public_key());
            }
            WireguardAttribute::ListenPort(port) => device.listen_port = *port,
            WireguardAttribute::Peers(peers) => {
                device.peers.extend(peers.iter().filter_map(peer_info));
            }
            _ => {}
        }
    }
    device
}

fn peer_info(peer: &WireguardPeer) -> Option<PeerInfo> {
    let mut info = PeerInfo::new(WgPublicKey([0; 32]));
    let mut keyed = false;
    for attribute in &peer.0 {
        match attribute {
            WireguardPeerAttribute::PublicKey(key) => {
                info.public_key = WgPublicKey(*key);
                keyed = true;
            }
            WireguardPeerAttribute::Endpoint(endpoint) => info.endpoint = Some(*endpoint),
            WireguardPeerAttribute::PersistentKeepalive(s) => {
                info.keepalive = Some(*s).filter(|s| *s != 0)
            }
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                let nanos = u32::try_from(t.nano_seconds).unwrap_or(0);
                info.last_handshake = Some(Duration::new(t.seconds as u64, nanos));
            }
            WireguardPeerAttribute::RxBytes(n) => info.rx_bytes = *n,
            WireguardPeerAttribute::TxBytes(n) => info.tx_bytes = *n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                info.allowed_ips.extend(ips.iter().filter_map(allowed_net))
            }
            _ => {}
        }
    }
    keyed.then_some(info)
}

fn allowed_net(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let mut addr: Option<IpAddr> = None;
    let mut len = None;
    for attribute in &ip.0 {
        match attribute {
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => len = Some(*c),
            _ => {}
        }
    }
    IpNet::new(addr?, len?).ok()
}
