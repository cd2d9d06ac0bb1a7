//! The WireGuard driver: the device's peers, key and port through its control channel — the
//! userspace device's control socket ([`super::uapi`], on a blocking thread) or the kernel's
//! generic netlink ([`super::kernel`]) — and its MTU, up state, addresses and routes through
//! rtnetlink.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use weft_proto::lease::WgPublicKey;
use weft_proto::names::IfName;

use super::kernel::{KernelControl, KernelError};
use super::keys::{Keyring, PrivateKey};
use super::uapi::{DeviceInfo, Uapi, UapiError};
use super::userspace::{self, Launcher};
use super::{Implementation, Op, WgDevice, WgPeer, WgState, WireGuard};
use crate::backend::vxlan::driver::ROUTE_PROTOCOL;
use crate::backend::{Driver, DriverError};
use crate::datapath::nl;
use crate::net::is_link_local;

/// Drives the device `device`, kernel or userspace.
pub struct WgDriver {
    handle: Handle,
    device: IfName,
    implementation: Implementation,
    uapi: Uapi,
    /// The kernel's generic-netlink connection, opened at first use.
    kernel: Option<KernelControl>,
    keys: Keyring,
    launcher: Launcher,
    requests: usize,
    /// Whether the control socket accepted a connection at the last liveness check.
    alive: bool,
}

/// One request on the device's control channel, for either implementation.
enum Request {
    Get,
    SetKey(PrivateKey),
    SetPort(u16),
    AddPeer(WgPublicKey, WgPeer),
    RemovePeer(WgPublicKey),
}

/// What a request returns: the device for `Get`, nothing otherwise.
type Reply = Option<DeviceInfo>;

impl WgDriver {
    pub fn new(handle: Handle, backend: &WireGuard) -> WgDriver {
        WgDriver {
            handle,
            device: backend.device.clone(),
            implementation: backend.implementation,
            uapi: Uapi::new(backend.device.as_str()),
            kernel: None,
            keys: backend.keys.clone(),
            launcher: backend.launcher.clone(),
            requests: 0,
            alive: false,
        }
    }

    /// One request on the control channel of the implementation in use.
    async fn control(&mut self, request: Request) -> Result<Reply, DriverError> {
        self.requests += 1;
        match self.implementation {
            Implementation::Userspace => {
                let uapi = self.uapi.clone();
                tokio::task::spawn_blocking(move || userspace_request(&uapi, request))
                    .await
                    .map_err(|e| DriverError::Invalid(format!("control call panicked: {e}")))?
                    .map_err(|e| match e {
                        UapiError::Connect { .. } => DriverError::Absent(e.to_string()),
                        other => DriverError::Device(other.to_string()),
                    })
            }
            Implementation::Kernel => {
                if self.kernel.is_none() {
                    let connected = KernelControl::connect(self.device.as_str())
                        .map_err(|e| DriverError::Device(format!("generic netlink: {e}")))?;
                    self.kernel = Some(connected);
                }
                let kernel = self.kernel.as_mut().expect("connected above");
                let result = kernel_request(kernel, request).await;
                if result.is_err() {
                    self.kernel = None; // reconnect at the next request
                }
                result.map_err(|e| DriverError::Device(e.to_string()))
            }
        }
    }

    async fn get(&mut self) -> Result<DeviceInfo, DriverError> {
        Ok(self.control(Request::Get).await?.unwrap_or_default())
    }

    async fn index(&self) -> Result<u32, DriverError> {
        match nl::link_by_name(&self.handle, self.device.as_str()).await? {
            Some(link) => Ok(link.header.index),
            None => Err(DriverError::NoDevice(self.device.clone())),
        }
    }

    /// Make the device (kernel: a `wireguard` link; userspace: start `weft-wg` if nothing serves
    /// it), then give it key, port, MTU, up.
    async fn create(&mut self, device: &WgDevice) -> Result<(), DriverError> {
        match self.implementation {
            Implementation::Kernel => {
                let link = LinkWireguard::new(device.name.as_str()).build();
                self.requests += 1;
                self.handle.link().add(link).execute().await?;
            }
            Implementation::Userspace => self.start_weft_wg(&device.name).await?,
        }
        if let Some(key) = device.public_key {
            self.set_key(&key).await?;
        }
        self.control(Request::SetPort(device.port)).await?;
        self.set_link(Some(device.mtu), true).await
    }

    async fn start_weft_wg(&mut self, name: &IfName) -> Result<(), DriverError> {
        let (name, launcher) = (name.clone(), self.launcher.clone());
        let device = name.clone();
        let started =
            tokio::task::spawn_blocking(move || userspace::ensure_running(&name, &launcher))
                .await
                .map_err(|e| DriverError::Invalid(format!("starting weft-wg panicked: {e}")))?
                .map_err(|e| DriverError::Device(e.to_string()))?;
        if let Some(pid) = started {
            tracing::info!(%device, pid, "started weft-wg");
        }
        Ok(())
    }

    async fn set_key(&mut self, public: &WgPublicKey) -> Result<(), DriverError> {
        let private = self.keys.private(public).ok_or_else(|| {
            DriverError::Invalid(format!("no private key for public key {public}"))
        })?;
        self.control(Request::SetKey(private)).await.map(|_| ())
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
            Op::SetPort { port, .. } => self.control(Request::SetPort(*port)).await.map(|_| ()),
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
                let request = Request::AddPeer(*public_key, peer.clone());
                self.control(request).await.map(|_| ())
            }
            Op::RemovePeer { public_key, .. } => {
                let request = Request::RemovePeer(*public_key);
                self.control(request).await.map(|_| ())
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
        let info = match self.get().await {
            Ok(info) => info,
            // A TUN device left behind by a dead weft-wg: nothing serves it, so it counts as absent
            // and CreateDevice starts weft-wg again. Any other failure (a timeout, a reply that
            // does not parse) is an error: planning from "empty" would re-add every peer the
            // device holds, which boringtun refuses by aborting.
            Err(DriverError::Absent(_)) => return Ok(WgState::default()),
            Err(e) => return Err(e),
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

/// `request` on the userspace device's control socket (blocking).
fn userspace_request(uapi: &Uapi, request: Request) -> Result<Reply, UapiError> {
    match request {
        Request::Get => uapi.get().map(Some),
        Request::SetKey(key) => uapi.set_key(&key).map(|_| None),
        Request::SetPort(port) => uapi.set_port(port).map(|_| None),
        Request::AddPeer(key, peer) => uapi.add_peer(&key, &peer).map(|_| None),
        Request::RemovePeer(key) => uapi.remove_peer(&key).map(|_| None),
    }
}

/// `request` over the kernel's generic netlink.
async fn kernel_request(
    kernel: &mut KernelControl,
    request: Request,
) -> Result<Reply, KernelError> {
    match request {
        Request::Get => kernel.get().await.map(Some),
        Request::SetKey(key) => kernel.set_key(&key).await.map(|_| None),
        Request::SetPort(port) => kernel.set_port(port).await.map(|_| None),
        Request::AddPeer(key, peer) => kernel.add_peer(&key, &peer).await.map(|_| None),
        Request::RemovePeer(key) => kernel.remove_peer(&key).await.map(|_| None),
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
fn state_of(
    name: &IfName,
    link: &netlink_packet_route::link::LinkMessage,
    info: DeviceInfo,
) -> WgState {
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

    /// Resolves when the control socket, which accepted connections, stops accepting them
    /// (`weft-wg` died), checked every [`LIVENESS_PERIOD`] with a bare connect. A socket that was
    /// never up (weft-wg not started yet, or its container still coming) is the reconcile loop's
    /// retry to handle, not drift.
    async fn drifted(&mut self) {
        if self.implementation == Implementation::Kernel {
            // A kernel device does not die on its own; a deletion shows at the next resync.
            return std::future::pending().await;
        }
        let path = self.uapi.path.clone();
        loop {
            tokio::time::sleep(LIVENESS_PERIOD).await;
            let alive = tokio::net::UnixStream::connect(&path).await.is_ok();
            let was_alive = std::mem::replace(&mut self.alive, alive);
            if was_alive && !alive {
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
