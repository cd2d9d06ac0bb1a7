//! The WireGuard driver: the device's peers, key and port through its control socket
//! ([`super::uapi`], on a blocking thread), its MTU, up state, addresses and routes through
//! rtnetlink.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use weft_proto::names::IfName;

use super::keys::Keyring;
use super::uapi::{DeviceInfo, Uapi, UapiError};
use super::userspace::{self, Launcher};
use super::{Op, WgDevice, WgPeer, WgState, WireGuard};
use crate::backend::vxlan::driver::ROUTE_PROTOCOL;
use crate::backend::{Driver, DriverError};
use crate::datapath::nl;
use crate::net::is_link_local;

/// Drives the userspace device `device` served by `weft-wg`.
pub struct WgDriver {
    handle: Handle,
    device: IfName,
    uapi: Uapi,
    keys: Keyring,
    launcher: Launcher,
    requests: usize,
}

impl WgDriver {
    pub fn new(handle: Handle, backend: &WireGuard) -> WgDriver {
        WgDriver {
            handle,
            device: backend.device.clone(),
            uapi: Uapi::new(backend.device.as_str()),
            keys: backend.keys.clone(),
            launcher: backend.launcher.clone(),
            requests: 0,
        }
    }

    /// Run a control-socket call on a blocking thread.
    async fn control<T: Send + 'static>(
        &mut self,
        call: impl FnOnce(&Uapi) -> Result<T, UapiError> + Send + 'static,
    ) -> Result<T, DriverError> {
        self.requests += 1;
        let uapi = self.uapi.clone();
        tokio::task::spawn_blocking(move || call(&uapi))
            .await
            .map_err(|e| DriverError::Invalid(format!("control call panicked: {e}")))?
            .map_err(|e| DriverError::Device(e.to_string()))
    }

    async fn index(&self) -> Result<u32, DriverError> {
        match nl::link_by_name(&self.handle, self.device.as_str()).await? {
            Some(link) => Ok(link.header.index),
            None => Err(DriverError::NoDevice(self.device.clone())),
        }
    }

    /// Start `weft-wg` if nothing serves the device, then give it key, port, MTU, up.
    async fn create(&mut self, device: &WgDevice) -> Result<(), DriverError> {
        let name = device.name.clone();
        let launcher = self.launcher.clone();
        let started = tokio::task::spawn_blocking(move || userspace::ensure_running(&name, &launcher))
            .await
            .map_err(|e| DriverError::Invalid(format!("starting weft-wg panicked: {e}")))?
            .map_err(|e| DriverError::Device(e.to_string()))?;
        if let Some(pid) = started {
            tracing::info!(device = %device.name, pid, "started weft-wg");
        }
        if let Some(key) = device.public_key {
            self.set_key(&key).await?;
        }
        let port = device.port;
        self.control(move |u| u.set_port(port)).await?;
        self.set_link(Some(device.mtu), true).await
    }

    async fn set_key(&mut self, public: &weft_proto::lease::WgPublicKey) -> Result<(), DriverError> {
        let private = self.keys.private(public).ok_or_else(|| {
            DriverError::Invalid(format!("no private key for public key {public}"))
        })?;
        self.control(move |u| u.set_key(&private)).await
    }

    async fn set_link(&mut self, mtu: Option<u32>, up: bool) -> Result<(), DriverError> {
        let index = self.index().await?;
        let mut builder = LinkUnspec::new_with_index(index);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if up {
            builder = builder.up();
        }
        self.requests += 1;
        Ok(self.handle.link().set(builder.build()).execute().await?)
    }

    async fn route(&mut self, dst: IpNet, add: bool) -> Result<(), DriverError> {
        let index = self.index().await?;
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| DriverError::Invalid(format!("route to {dst}: {e}")))?
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        self.requests += 1;
        if add {
            self.handle.route().add(message).replace().execute().await?;
            poke(dst);
            Ok(())
        } else {
            let result = self.handle.route().del(message).execute().await;
            Ok(nl::ignore(result, &[Errno::ESRCH])?)
        }
    }

    async fn apply_op(&mut self, op: &Op) -> Result<(), DriverError> {
        match op {
            Op::CreateDevice(device) => self.create(device).await,
            Op::SetMtu { mtu, .. } => self.set_link(Some(*mtu), false).await,
            Op::SetUp(_) => self.set_link(None, true).await,
            Op::SetKey { public_key, .. } => self.set_key(public_key).await,
            Op::SetPort { port, .. } => {
                let port = *port;
                self.control(move |u| u.set_port(port)).await
            }
            Op::SetAddress { address, .. } => {
                let index = self.index().await?;
                self.requests += 1;
                Ok(nl::replace_address(&self.handle, index, *address).await?)
            }
            Op::DeleteAddress { address, .. } => {
                let index = self.index().await?;
                self.requests += 1;
                Ok(nl::delete_address(&self.handle, index, *address).await?)
            }
            Op::AddPeer {
                public_key, peer, ..
            } => {
                let (key, peer) = (*public_key, peer.clone());
                self.control(move |u| u.add_peer(&key, &peer)).await
            }
            Op::RemovePeer { public_key, .. } => {
                let key = *public_key;
                self.control(move |u| u.remove_peer(&key)).await
            }
            Op::ReplaceRoute { dst, .. } => self.route(*dst, true).await,
            Op::DeleteRoute { dst, .. } => self.route(*dst, false).await,
        }
    }

    async fn observe_state(&mut self) -> Result<WgState, DriverError> {
        let Some(link) = nl::link_by_name(&self.handle, self.device.as_str()).await? else {
            return Ok(WgState::default());
        };
        let index = link.header.index;
        let info = match self.control(|u| u.get()).await {
            Ok(info) => info,
            // A TUN device left behind by a dead weft-wg: nothing serves it, so it counts as absent
            // and CreateDevice starts weft-wg again.
            Err(_) => return Ok(WgState::default()),
        };
        let mut state = state_of(&self.device, &link, info);
        for message in nl::addresses_of(&self.handle, index).await? {
            let ip = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip
                .filter(|ip| !is_link_local(ip))
                .and_then(|ip| IpNet::new(ip, message.header.prefix_len).ok())
            {
                state.addresses.insert(net);
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for view in nl::main_routes(&self.handle, family).await? {
                let ours = view.message.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL);
                if ours && view.oif == Some(index) {
                    state.routes.insert(view.dst);
                }
            }
        }
        Ok(state)
    }
}

/// Send one datagram through the tunnel to the network address of a peer's pod CIDR (its own
/// address on its device; UDP port 9, discard), so the device starts the handshake now. A device
/// that was just re-created (say `weft-wg` restarted) has no sessions while its peers still hold
/// theirs; without this nudge a peer that only sends would wait up to 15 s for WireGuard's own
/// retry before the two agree again. Best effort: errors are ignored.
fn poke(dst: IpNet) {
    let unspecified: IpAddr = match dst {
        IpNet::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpNet::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    if let Ok(socket) = std::net::UdpSocket::bind((unspecified, 0)) {
        let _ = socket.send_to(&[0], (dst.network(), 9));
    }
}

/// The device and peers as `link` and the control socket report them.
fn state_of(name: &IfName, link: &netlink_packet_route::link::LinkMessage, info: DeviceInfo) -> WgState {
    let device = WgDevice {
        name: name.clone(),
        mtu: nl::link_mtu(link).unwrap_or(0),
        up: link.header.flags.contains(LinkFlags::Up),
        port: info.listen_port,
        public_key: info.public_key,
    };
    let peers = info
        .peers
        .into_iter()
        .map(|p| {
            let peer = WgPeer {
                // A peer without an endpoint (set by hand) differs from every desired one.
                endpoint: p.endpoint.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                allowed_ips: p.allowed_ips.into_iter().collect(),
                keepalive: p.keepalive,
            };
            (p.public_key, peer)
        })
        .collect();
    WgState {
        device: Some(device),
        peers,
        ..WgState::default()
    }
}

impl Driver<WireGuard> for WgDriver {
    async fn observe(&mut self) -> Result<WgState, DriverError> {
        self.observe_state().await
    }

    async fn apply(&mut self, op: &Op) -> Result<(), DriverError> {
        self.apply_op(op).await
    }

    fn requests(&self) -> usize {
        self.requests
    }

    /// Resolves once the control socket stops accepting connections (`weft-wg` died), checked
    /// every [`LIVENESS_PERIOD`] with a bare connect.
    async fn drifted(&mut self) {
        let path = self.uapi.path.clone();
        loop {
            tokio::time::sleep(LIVENESS_PERIOD).await;
            if tokio::net::UnixStream::connect(&path).await.is_err() {
                return;
            }
        }
    }
}

/// How often the driver checks that `weft-wg` still answers.
pub const LIVENESS_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

impl crate::backend::Backend for WireGuard {
    type Driver = WgDriver;

    fn driver(&self, host: Handle, _cluster_cidrs: &[IpNet]) -> WgDriver {
        WgDriver::new(host, self)
    }

    fn device_names(&self) -> Vec<IfName> {
        vec![self.device.clone()]
    }
}
