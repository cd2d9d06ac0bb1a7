// Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
// SPDX-License-Identifier: BSD-3-Clause

pub mod allowed_ips;
pub mod api;
mod dev_lock;
pub mod drop_privileges;
#[cfg(test)]
mod integration_tests;
pub mod peer;

#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
#[path = "kqueue.rs"]
pub mod poll;

#[cfg(target_os = "linux")]
#[path = "epoll.rs"]
pub mod poll;

#[cfg(any(target_os = "macos", target_os = "ios", target_os = "tvos"))]
#[path = "tun_darwin.rs"]
pub mod tun;

#[cfg(target_os = "linux")]
#[path = "tun_linux.rs"]
pub mod tun;

#[cfg(any(target_os = "freebsd", target_os = "netbsd"))]
#[path = "tun_bsd.rs"]
pub mod tun;

use std::{
    collections::HashMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::io::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use allowed_ips::AllowedIps;
use parking_lot::Mutex;
use peer::{AllowedIP, Peer};
use poll::{EventPoll, EventRef, WaitResult};
use rand::Rng;
use socket2::{Domain, Protocol, Type};
use tun::TunSocket;

use weft_offload as offload;
use weft_offload::{GsoBatch, TcpCoalescer, VNET_HDR_LEN};

use crate::{
    noise::{
        Packet, Tunn, TunnResult, errors::WireGuardError, handshake::parse_handshake_anon,
        rate_limiter::RateLimiter,
    },
    x25519,
};

use dev_lock::{Lock, LockReadGuard};

const HANDSHAKE_RATE_LIMIT: u64 = 100; // The number of handshakes per second we can tolerate before using cookies

const MAX_UDP_SIZE: usize = (1 << 16) - 1;
// weft: a TUN read with TSO holds a virtio-net header and an IP packet of up to 64 KiB.
const MAX_TUN_READ: usize = MAX_UDP_SIZE + VNET_HDR_LEN;
const MAX_ITR: usize = 100; // Number of packets to handle per handler call
const PEER_TIMER_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error: {0}")]
    IoError(#[from] io::Error),
    #[error("{0}")]
    Socket(io::Error),
    #[error("{0}")]
    Bind(String),
    #[error("{0}")]
    FCntl(io::Error),
    #[error("{0}")]
    EventQueue(io::Error),
    #[error("{0}")]
    IOCtl(io::Error),
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    SetSockOpt(String),
    #[error("Invalid tunnel name")]
    InvalidTunnelName,
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "tvos"))]
    #[error("{0}")]
    GetSockOpt(io::Error),
    #[error("{0}")]
    GetSockName(String),
    #[cfg(target_os = "linux")]
    #[error("{0}")]
    Timer(io::Error),
    #[error("iface read: {0}")]
    IfaceRead(io::Error),
    #[error("{0}")]
    DropPrivileges(String),
    #[error("API socket error: {0}")]
    ApiSocket(io::Error),
}

// What the event loop should do after a handler returns
enum Action {
    Continue, // Continue the loop
    Yield,    // Yield the read lock and acquire it again
    Exit,     // Stop the loop
}

// Event handler function
type Handler = Box<dyn Fn(&mut LockReadGuard<Device>, &mut ThreadData) -> Action + Send + Sync>;

pub struct DeviceHandle {
    device: Arc<Lock<Device>>, // The interface this handle owns
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
pub struct DeviceConfig {
    pub n_threads: usize,
    pub use_connected_socket: bool,
    #[cfg(target_os = "linux")]
    pub use_multi_queue: bool,
    #[cfg(target_os = "linux")]
    pub uapi_fd: i32,
    /// weft: TUN segmentation offload and UDP GSO/GRO (the `weft-offload` crate).
    pub offload: bool,
    /// weft: receive and send buffer of each listening socket, bytes; 0 keeps the kernel's.
    pub socket_buffer: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            n_threads: 4,
            use_connected_socket: true,
            #[cfg(target_os = "linux")]
            use_multi_queue: true,
            #[cfg(target_os = "linux")]
            uapi_fd: -1,
            offload: true,
            socket_buffer: 0,
        }
    }
}

pub struct Device {
    key_pair: Option<(x25519::StaticSecret, x25519::PublicKey)>,
    queue: Arc<EventPoll<Handler>>,

    listen_port: u16,
    fwmark: Option<u32>,

    iface: Arc<TunSocket>,
    udp4: Option<socket2::Socket>,
    udp6: Option<socket2::Socket>,

    yield_notice: Option<EventRef>,
    exit_notice: Option<EventRef>,

    peers: HashMap<x25519::PublicKey, Arc<Mutex<Peer>>>,
    peers_by_ip: AllowedIps<Arc<Mutex<Peer>>>,
    peers_by_idx: HashMap<u32, Arc<Mutex<Peer>>>,
    next_index: IndexLfsr,

    config: DeviceConfig,

    cleanup_paths: Vec<String>,

    mtu: AtomicUsize,

    rate_limiter: Option<Arc<RateLimiter>>,

    #[cfg(target_os = "linux")]
    uapi_fd: i32,
}

struct ThreadData {
    iface: Arc<TunSocket>,
    src_buf: [u8; MAX_TUN_READ],
    dst_buf: [u8; MAX_UDP_SIZE],
    /// weft: one segment of a TCP superpacket read from the TUN device.
    seg_buf: Vec<u8>,
    /// weft: encrypted datagrams waiting to go out together.
    outbox: Outbox,
    /// weft: decrypted TCP segments waiting to go to the TUN device as one.
    gro: TcpCoalescer,
}

/// weft: where decrypted packets go: the TUN device, through the coalescer when the device
/// takes virtio-net headers.
struct ToTun<'a> {
    iface: &'a TunSocket,
    gro: &'a mut TcpCoalescer,
}

impl ToTun<'_> {
    fn write(self, packet: &[u8]) {
        if self.iface.vnet_hdr() {
            let iface = self.iface;
            self.gro.push(packet, &mut |buf| {
                iface.write_vnet(buf);
            });
        } else {
            let _ = self.iface.write4(packet);
        }
    }
}

/// weft: encrypted datagrams for one destination, sent together with UDP GSO.
struct Outbox {
    batch: GsoBatch,
    /// The socket and, unless it is connected, the address the batch goes to.
    dest: Option<(i32, Option<socket2::SockAddr>)>,
    /// Cleared when the kernel refuses UDP_SEGMENT; datagrams then go one by one.
    gso_ok: bool,
}

impl Outbox {
    fn new(gso_ok: bool) -> Outbox {
        Outbox {
            batch: GsoBatch::default(),
            dest: None,
            gso_ok,
        }
    }

    /// Queues `datagram` for `fd` (and `addr`), sending what was queued first if it went
    /// elsewhere or the batch is full.
    fn push(&mut self, fd: i32, addr: Option<socket2::SockAddr>, datagram: &[u8]) {
        let same_dest = matches!(&self.dest, Some((f, a)) if *f == fd && *a == addr);
        if !same_dest || !self.batch.fits(datagram.len()) {
            self.flush();
            self.dest = Some((fd, addr));
        }
        self.batch.push(datagram);
    }

    fn flush(&mut self) {
        if let Some((fd, addr)) = &self.dest
            && !self.batch.is_empty()
        {
            self.batch.flush(*fd, addr.as_ref(), &mut self.gso_ok);
        }
    }
}

impl DeviceHandle {
    pub fn new(name: &str, config: DeviceConfig) -> Result<DeviceHandle, Error> {
        let n_threads = config.n_threads;
        let mut wg_interface = Device::new(name, config)?;
        wg_interface.open_listen_socket(0)?; // Start listening on a random port

        let interface_lock = Arc::new(Lock::new(wg_interface));

        let mut threads = Vec::new();

        for i in 0..n_threads {
            threads.push({
                let dev = Arc::clone(&interface_lock);
                thread::spawn(move || DeviceHandle::event_loop(i, &dev))
            });
        }

        Ok(DeviceHandle {
            device: interface_lock,
            threads,
        })
    }

    pub fn wait(&mut self) {
        while let Some(thread) = self.threads.pop() {
            thread.join().unwrap();
        }
    }

    pub fn clean(&mut self) {
        for path in &self.device.read().cleanup_paths {
            // attempt to remove any file we created in the work dir
            let _ = std::fs::remove_file(path);
        }
    }

    fn event_loop(_i: usize, device: &Lock<Device>) {
        #[cfg(target_os = "linux")]
        let mut thread_local = ThreadData {
            src_buf: [0u8; MAX_TUN_READ],
            dst_buf: [0u8; MAX_UDP_SIZE],
            seg_buf: vec![0u8; MAX_UDP_SIZE],
            outbox: Outbox::new(device.read().config.offload),
            gro: TcpCoalescer::default(),
            iface: {
                let device_read = device.read();
                if _i == 0 || !device_read.config.use_multi_queue {
                    // For the first thread use the original iface
                    Arc::clone(&device_read.iface)
                } else {
                    // For for the rest create a new iface queue
                    let iface_local = Arc::new(
                        device_read
                            .iface
                            .another_queue()
                            .unwrap()
                            .set_non_blocking()
                            .unwrap(),
                    );

                    device_read
                        .register_iface_handler(Arc::clone(&iface_local))
                        .ok();

                    iface_local
                }
            },
        };

        // weft: Linux only (the batching needs IFF_VNET_HDR, UDP_SEGMENT and UDP_GRO).

        #[cfg(not(target_os = "linux"))]
        let uapi_fd = -1;
        #[cfg(target_os = "linux")]
        let uapi_fd = device.read().uapi_fd;

        loop {
            // The event loop keeps a read lock on the device, because we assume write access is rarely needed
            let mut device_lock = device.read();
            let queue = Arc::clone(&device_lock.queue);

            loop {
                match queue.wait() {
                    WaitResult::Ok(handler) => {
                        let action = (*handler)(&mut device_lock, &mut thread_local);
                        match action {
                            Action::Continue => {}
                            Action::Yield => break,
                            Action::Exit => {
                                device_lock.trigger_exit();
                                return;
                            }
                        }
                    }
                    WaitResult::EoF(handler) => {
                        if uapi_fd >= 0 && uapi_fd == handler.fd() {
                            device_lock.trigger_exit();
                            return;
                        }
                        handler.cancel();
                    }
                    WaitResult::Error(e) => tracing::error!(message = "Poll error", error = ?e),
                }
            }
        }
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        self.device.read().trigger_exit();
        self.clean();
    }
}

impl Device {
    fn next_index(&mut self) -> u32 {
        self.next_index.next()
    }

    fn remove_peer(&mut self, pub_key: &x25519::PublicKey) {
        if let Some(peer) = self.peers.remove(pub_key) {
            // Found a peer to remove, now purge all references to it:
            {
                let p = peer.lock();
                p.shutdown_endpoint(); // close open udp socket and free the closure
                self.peers_by_idx.remove(&p.index());
            }
            self.peers_by_ip
                .remove(&|p: &Arc<Mutex<Peer>>| Arc::ptr_eq(&peer, p));

            tracing::info!("Peer removed");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update_peer(
        &mut self,
        pub_key: x25519::PublicKey,
        remove: bool,
        _replace_ips: bool,
        endpoint: Option<SocketAddr>,
        allowed_ips: &[AllowedIP],
        keepalive: Option<u16>,
        preshared_key: Option<[u8; 32]>,
    ) {
        if remove {
            // Completely remove a peer
            self.remove_peer(&pub_key);
            return;
        }

        // Update an existing peer
        // We already have a peer, we need to merge the existing config into the newly created one
        assert!(
            !self.peers.contains_key(&pub_key),
            "Modifying existing peers is not yet supported. Remove and add again instead."
        );

        let next_index = self.next_index();
        let Some(device_key_pair) = self.key_pair.as_ref() else {
            tracing::error!("Private key must be set first");
            return;
        };

        let tunn = Tunn::new(
            device_key_pair.0.clone(),
            pub_key,
            preshared_key,
            keepalive,
            next_index,
            None,
        );

        let peer = Peer::new(tunn, next_index, endpoint, allowed_ips, preshared_key);

        let peer = Arc::new(Mutex::new(peer));
        self.peers.insert(pub_key, Arc::clone(&peer));
        self.peers_by_idx.insert(next_index, Arc::clone(&peer));

        for AllowedIP { addr, cidr } in allowed_ips {
            self.peers_by_ip
                .insert(*addr, (*cidr).into(), Arc::clone(&peer));
        }

        tracing::info!("Peer added");
    }

    pub fn new(name: &str, config: DeviceConfig) -> Result<Device, Error> {
        let poll = EventPoll::<Handler>::new()?;

        // Create a tunnel device
        let iface = if config.offload {
            TunSocket::new_offloaded(name)?
        } else {
            TunSocket::new(name)?
        };
        let iface = Arc::new(iface.set_non_blocking()?);
        let mtu = iface.mtu()?;

        #[cfg(not(target_os = "linux"))]
        let uapi_fd = -1;
        #[cfg(target_os = "linux")]
        let uapi_fd = config.uapi_fd;

        let mut device = Device {
            queue: Arc::new(poll),
            iface,
            config,
            exit_notice: Option::default(),
            yield_notice: Option::default(),
            fwmark: Option::default(),
            key_pair: Option::default(),
            listen_port: Default::default(),
            next_index: IndexLfsr::default(),
            peers: HashMap::default(),
            peers_by_idx: HashMap::default(),
            peers_by_ip: AllowedIps::new(),
            udp4: Option::default(),
            udp6: Option::default(),
            cleanup_paths: Vec::default(),
            mtu: AtomicUsize::new(mtu),
            rate_limiter: None,
            #[cfg(target_os = "linux")]
            uapi_fd,
        };

        if uapi_fd >= 0 {
            device.register_api_fd(uapi_fd)?;
        } else {
            device.register_api_handler()?;
        }
        device.register_iface_handler(Arc::clone(&device.iface))?;
        device.register_notifiers()?;
        device.register_timers()?;

        #[cfg(target_os = "macos")]
        {
            // Only for macOS write the actual socket name into WG_TUN_NAME_FILE
            if let Ok(name_file) = std::env::var("WG_TUN_NAME_FILE")
                && name == "utun"
            {
                std::fs::write(&name_file, device.iface.name().unwrap().as_bytes()).unwrap();
                device.cleanup_paths.push(name_file);
            }
        }

        Ok(device)
    }

    fn open_listen_socket(&mut self, mut port: u16) -> Result<(), Error> {
        // Binds the network facing interfaces
        // First close any existing open socket, and remove them from the event loop
        if let Some(s) = self.udp4.take() {
            unsafe {
                // This is safe because the event loop is not running yet
                self.queue.clear_event_by_fd(s.as_raw_fd());
            }
        }

        if let Some(s) = self.udp6.take() {
            unsafe { self.queue.clear_event_by_fd(s.as_raw_fd()) };
        }

        for peer in self.peers.values() {
            peer.lock().shutdown_endpoint();
        }

        // Then open new sockets and bind to the port
        let udp_sock4 = socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        udp_sock4.set_reuse_address(true)?;
        udp_sock4.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        udp_sock4.set_nonblocking(true)?;

        if port == 0 {
            // Random port was assigned
            port = udp_sock4.local_addr()?.as_socket().unwrap().port();
        }

        let udp_sock6 = socket2::Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        udp_sock6.set_reuse_address(true)?;
        udp_sock6.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
        udp_sock6.set_nonblocking(true)?;
        if self.config.socket_buffer > 0 {
            // weft: best effort; see `DeviceConfig::socket_buffer`.
            let bytes = self.config.socket_buffer;
            let _ = offload::grow_buffers(udp_sock4.as_raw_fd(), bytes);
            let _ = offload::grow_buffers(udp_sock6.as_raw_fd(), bytes);
        }
        if self.config.offload {
            // weft: best effort; without it every read is one datagram, which recv_gro handles.
            let _ = offload::enable_udp_gro(udp_sock4.as_raw_fd());
            let _ = offload::enable_udp_gro(udp_sock6.as_raw_fd());
        }

        self.register_udp_handler(udp_sock4.try_clone().unwrap())?;
        self.register_udp_handler(udp_sock6.try_clone().unwrap())?;
        self.udp4 = Some(udp_sock4);
        self.udp6 = Some(udp_sock6);

        self.listen_port = port;

        Ok(())
    }

    fn set_key(&mut self, private_key: &x25519::StaticSecret) {
        let public_key = x25519::PublicKey::from(private_key);
        let key_pair = Some((private_key.clone(), public_key));

        // x25519 (rightly) doesn't let us expose secret keys for comparison.
        // If the public keys are the same, then the private keys are the same.
        if Some(&public_key) == self.key_pair.as_ref().map(|p| &p.1) {
            return;
        }

        let rate_limiter = Arc::new(RateLimiter::new(&public_key, HANDSHAKE_RATE_LIMIT));

        for peer in self.peers.values_mut() {
            peer.lock().tunnel.set_static_private(
                private_key.clone(),
                public_key,
                Some(Arc::clone(&rate_limiter)),
            );
        }

        self.key_pair = key_pair;
        self.rate_limiter = Some(rate_limiter);
    }

    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    fn set_fwmark(&mut self, mark: u32) -> Result<(), Error> {
        self.fwmark = Some(mark);

        // First set fwmark on listeners
        if let Some(ref sock) = self.udp4 {
            sock.set_mark(mark)?;
        }

        if let Some(ref sock) = self.udp6 {
            sock.set_mark(mark)?;
        }

        // Then on all currently connected sockets
        for peer in self.peers.values() {
            if let Some(ref sock) = peer.lock().endpoint().conn {
                sock.set_mark(mark)?;
            }
        }

        Ok(())
    }

    fn clear_peers(&mut self) {
        self.peers.clear();
        self.peers_by_idx.clear();
        self.peers_by_ip.clear();
    }

    fn register_notifiers(&mut self) -> Result<(), Error> {
        let yield_ev = self
            .queue
            // The notification event handler simply returns Action::Yield
            .new_notifier(Box::new(|_, _| Action::Yield))?;
        self.yield_notice = Some(yield_ev);

        let exit_ev = self
            .queue
            // The exit event handler simply returns Action::Exit
            .new_notifier(Box::new(|_, _| Action::Exit))?;
        self.exit_notice = Some(exit_ev);
        Ok(())
    }

    fn register_timers(&self) -> Result<(), Error> {
        self.queue.new_periodic_event(
            // Reset the rate limiter every second give or take
            Box::new(|d, _| {
                if let Some(r) = d.rate_limiter.as_ref() {
                    r.reset_count();
                }
                Action::Continue
            }),
            Duration::from_secs(1),
        )?;

        self.queue.new_periodic_event(
            // Execute the timed function of every peer in the list
            Box::new(|d, t| {
                let peer_map = &d.peers;

                let (Some(udp4), Some(udp6)) = (d.udp4.as_ref(), d.udp6.as_ref()) else {
                    return Action::Continue;
                };

                // Go over each peer and invoke the timer function
                for peer in peer_map.values() {
                    let mut p = peer.lock();
                    let Some(endpoint_addr) = p.endpoint().addr else {
                        continue;
                    };

                    match p.update_timers(&mut t.dst_buf[..]) {
                        TunnResult::Done => {}
                        TunnResult::Err(WireGuardError::ConnectionExpired) => {
                            p.shutdown_endpoint(); // close open udp socket
                        }
                        TunnResult::Err(e) => tracing::error!(message = "Timer error", error = ?e),
                        TunnResult::WriteToNetwork(packet) => {
                            match endpoint_addr {
                                SocketAddr::V4(_) => {
                                    udp4.send_to(packet, &endpoint_addr.into()).ok()
                                }
                                SocketAddr::V6(_) => {
                                    udp6.send_to(packet, &endpoint_addr.into()).ok()
                                }
                            };
                        }
                        _ => panic!("Unexpected result from update_timers"),
                    }
                }
                Action::Continue
            }),
            // This used to be 250ms.
            // Peer timers in `noise::timers` are tracked at second-level granularity,
            // so scanning all peers four times per second just adds lock traffic.
            PEER_TIMER_INTERVAL,
        )?;
        Ok(())
    }

    pub(crate) fn trigger_yield(&self) {
        self.queue
            .trigger_notification(self.yield_notice.as_ref().unwrap());
    }

    pub(crate) fn trigger_exit(&self) {
        self.queue
            .trigger_notification(self.exit_notice.as_ref().unwrap());
    }

    pub(crate) fn cancel_yield(&self) {
        self.queue
            .stop_notification(self.yield_notice.as_ref().unwrap());
    }

    fn register_udp_handler(&self, udp: socket2::Socket) -> Result<(), Error> {
        self.queue.new_event(
            udp.as_raw_fd(),
            Box::new(move |d, t| {
                // Handler that handles anonymous packets over UDP
                let mut iter = MAX_ITR;
                // weft: one read may hold several datagrams of one sender (UDP GRO), each
                // `segment` bytes long except perhaps the last.
                while let Ok((len, segment, addr)) =
                    offload::recv_gro(udp.as_raw_fd(), &mut t.src_buf[..MAX_UDP_SIZE])
                {
                    for packet in t.src_buf[..len].chunks(segment) {
                        let to_tun = ToTun {
                            iface: &t.iface,
                            gro: &mut t.gro,
                        };
                        d.handle_anonymous_datagram(&udp, packet, &addr, &mut t.dst_buf, to_tun);
                    }
                    t.gro.flush(&mut |buf| {
                        t.iface.write_vnet(buf);
                    });
                    iter -= 1;
                    if iter == 0 {
                        break;
                    }
                }
                Action::Continue
            }),
        )?;
        Ok(())
    }

    /// One datagram from the shared listening socket: handshake, cookie or data, from `addr`.
    fn handle_anonymous_datagram(
        &self,
        udp: &socket2::Socket,
        packet: &[u8],
        addr: &socket2::SockAddr,
        dst_buf: &mut [u8],
        to_tun: ToTun<'_>,
    ) {
        let d = self;
        let (private_key, public_key) = d.key_pair.as_ref().expect("Key not set");
        let rate_limiter = d.rate_limiter.as_ref().unwrap();
        // The rate limiter initially checks mac1 and mac2, and optionally asks to send a cookie
        let parsed_packet =
            match rate_limiter.verify_packet(Some(addr.as_socket().unwrap().ip()), packet, dst_buf)
            {
                Ok(packet) => packet,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    let _: Result<_, _> = udp.send_to(cookie, addr);
                    return;
                }
                Err(_) => return,
            };

        let peer = match &parsed_packet {
            Packet::HandshakeInit(p) => parse_handshake_anon(private_key, public_key, p)
                .ok()
                .and_then(|hh| d.peers.get(&x25519::PublicKey::from(hh.peer_static_public))),
            Packet::HandshakeResponse(p) => d.peers_by_idx.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => d.peers_by_idx.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => d.peers_by_idx.get(&(p.receiver_idx >> 8)),
        };

        let Some(peer) = peer else { return };
        let mut flush = false;
        let mut packet_to_network = None;
        let mut packet_to_tunnel = None;

        {
            let mut p = peer.lock();

            // We found a peer, use it to decapsulate the message.
            match p.tunnel.handle_verified_packet(parsed_packet, dst_buf) {
                TunnResult::Done => {}
                TunnResult::Err(_) => return,
                TunnResult::WriteToNetwork(packet) => {
                    flush = true;
                    packet_to_network = Some(packet);
                }
                TunnResult::WriteToTunnelV4(packet, addr) if p.is_allowed_ip(addr) => {
                    packet_to_tunnel = Some(packet);
                }
                TunnResult::WriteToTunnelV6(packet, addr) if p.is_allowed_ip(addr) => {
                    packet_to_tunnel = Some(packet);
                }
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }

        if let Some(packet) = packet_to_network {
            let _: Result<_, _> = udp.send_to(packet, addr);
        } else if let Some(packet) = packet_to_tunnel {
            to_tun.write(packet);
        }

        if flush {
            send_queued(peer, udp, addr, dst_buf);
        }
        d.note_endpoint(peer, addr);
    }

    /// This packet was OK, that means we want to create a connected socket for this peer
    fn note_endpoint(&self, peer: &Arc<Mutex<Peer>>, addr: &socket2::SockAddr) {
        let addr = addr.as_socket().unwrap();
        let ip_addr = addr.ip();
        let p = peer.lock();
        let endpoint_changed = p.set_endpoint(addr);
        if self.config.use_connected_socket
            && (endpoint_changed || p.endpoint().conn.is_none())
            && let Ok(sock) = p.connect_endpoint(self.listen_port, self.fwmark)
        {
            self.register_conn_handler(Arc::clone(peer), sock, ip_addr)
                .unwrap();
        }
    }

    fn register_conn_handler(
        &self,
        peer: Arc<Mutex<Peer>>,
        udp: socket2::Socket,
        peer_addr: IpAddr,
    ) -> Result<(), Error> {
        self.queue.new_event(
            udp.as_raw_fd(),
            Box::new(move |_, t| {
                // The conn_handler handles packet received from a connected UDP socket, associated
                // with a known peer, this saves us the hustle of finding the right peer. If another
                // peer gets the same ip, it will be ignored until the socket does not expire.
                let iface = &t.iface;
                let mut iter = MAX_ITR;

                // Safety: the `recv_from` implementation promises not to write uninitialised
                // bytes to the buffer, so this casting is safe.
                let src_buf = unsafe { &mut *(&raw mut t.src_buf[..] as *mut [MaybeUninit<u8>]) };

                while let Ok(read_bytes) = udp.recv(src_buf) {
                    let mut flush = false;
                    let mut packet_to_network = None;
                    let mut packet_to_tunnel = None;
                    let mut packet_to_tunnel_v6 = false;

                    {
                        let mut p = peer.lock();
                        match p.tunnel.decapsulate(
                            Some(peer_addr),
                            &t.src_buf[..read_bytes],
                            &mut t.dst_buf[..],
                        ) {
                            TunnResult::Done => {}
                            TunnResult::Err(e) => eprintln!("Decapsulate error {e:?}"),
                            TunnResult::WriteToNetwork(packet) => {
                                flush = true;
                                packet_to_network = Some(packet);
                            }
                            TunnResult::WriteToTunnelV4(packet, addr) => {
                                if p.is_allowed_ip(addr) {
                                    packet_to_tunnel = Some(packet);
                                }
                            }
                            TunnResult::WriteToTunnelV6(packet, addr) => {
                                if p.is_allowed_ip(addr) {
                                    packet_to_tunnel = Some(packet);
                                    packet_to_tunnel_v6 = true;
                                }
                            }
                        }
                    }

                    if let Some(packet) = packet_to_network {
                        let _: Result<_, _> = udp.send(packet);
                    } else if let Some(packet) = packet_to_tunnel {
                        if packet_to_tunnel_v6 {
                            let _ = iface.write6(packet);
                        } else {
                            let _ = iface.write4(packet);
                        }
                    }

                    if flush {
                        // Flush pending queue
                        while let Some(packet) = {
                            let mut p = peer.lock();
                            match p.tunnel.decapsulate(None, &[], &mut t.dst_buf[..]) {
                                TunnResult::WriteToNetwork(packet) => Some(packet),
                                _ => None,
                            }
                        } {
                            let _: Result<_, _> = udp.send(packet);
                        }
                    }

                    iter -= 1;
                    if iter == 0 {
                        break;
                    }
                }
                Action::Continue
            }),
        )?;
        Ok(())
    }

    fn register_iface_handler(&self, iface: Arc<TunSocket>) -> Result<(), Error> {
        self.queue.new_event(
            iface.as_raw_fd(),
            Box::new(move |d, t| {
                // The iface_handler handles packets received from the WireGuard virtual network
                // interface. The flow is as follows:
                // * Read a packet (weft: or a TCP superpacket, cut into segments)
                // * Determine peer based on packet destination ip
                // * Encapsulate the packet for the given peer
                // * Send encapsulated packets to the peer's endpoint (weft: batched, UDP GSO)
                let read_len = if iface.vnet_hdr() {
                    MAX_TUN_READ
                } else {
                    d.mtu.load(Ordering::Relaxed)
                };
                for _ in 0..MAX_ITR {
                    let src = match iface.read(&mut t.src_buf[..read_len]) {
                        Ok(src) => src,
                        Err(Error::IfaceRead(e)) => {
                            let ek = e.kind();
                            if ek == io::ErrorKind::Interrupted || ek == io::ErrorKind::WouldBlock {
                                break;
                            }
                            eprintln!("Fatal read error on tun interface: {e:?}");
                            return Action::Exit;
                        }
                        Err(e) => {
                            eprintln!("Unexpected error on tun interface: {e:?}");
                            return Action::Exit;
                        }
                    };
                    let ThreadData {
                        dst_buf,
                        seg_buf,
                        outbox,
                        ..
                    } = t;
                    if iface.vnet_hdr() {
                        let cut = offload::for_each_segment(src, seg_buf, |packet| {
                            d.encapsulate_to_outbox(packet, dst_buf, outbox)
                        });
                        if let Err(e) = cut {
                            report_dropped_tun_read(&e);
                        }
                    } else {
                        d.encapsulate_to_outbox(src, dst_buf, outbox);
                    }
                    outbox.flush();
                }
                Action::Continue
            }),
        )?;
        Ok(())
    }

    /// Encrypts one IP packet from the TUN device for the peer whose allowed IPs hold its
    /// destination and queues the datagram (or the handshake it has to wait for) in `outbox`.
    fn encapsulate_to_outbox(&self, src: &[u8], dst_buf: &mut [u8], outbox: &mut Outbox) {
        let Some(dst_addr) = Tunn::dst_address(src) else {
            return;
        };
        let Some(peer) = self.peers_by_ip.find(dst_addr) else {
            return;
        };
        let mut peer = peer.lock();
        let packet = match peer.tunnel.encapsulate(src, dst_buf) {
            TunnResult::Done => return,
            TunnResult::Err(e) => {
                tracing::error!(message = "Encapsulate error", error = ?e);
                return;
            }
            TunnResult::WriteToNetwork(packet) => packet,
            _ => panic!("Unexpected result from encapsulate"),
        };
        let dest = {
            let endpoint = peer.endpoint();
            if let Some(conn) = endpoint.conn.as_ref() {
                // Prefer to send using the connected socket
                Some((conn.as_raw_fd(), None))
            } else if let Some(addr) = endpoint.addr {
                let udp = if addr.is_ipv4() {
                    &self.udp4
                } else {
                    &self.udp6
                };
                let udp = udp.as_ref().expect("Not connected");
                Some((udp.as_raw_fd(), Some(addr.into())))
            } else {
                None
            }
        };
        // The peer is released before the send a full batch may trigger.
        drop(peer);
        match dest {
            Some((fd, addr)) => outbox.push(fd, addr, packet),
            None => tracing::error!("No endpoint"),
        }
    }
}

/// weft: a TUN read that could not be cut is dropped; the first one is reported on stderr (the
/// process's log; weft-wg installs no tracing subscriber), later ones are only counted there.
fn report_dropped_tun_read(error: &offload::OffloadError) {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 || n.is_power_of_two() {
        eprintln!("weft-wg: dropped a packet from the TUN device ({error}); {n} so far");
    }
}

/// weft (moved out of the UDP handler): sends the packets a peer queued while its handshake ran.
fn send_queued(
    peer: &Arc<Mutex<Peer>>,
    udp: &socket2::Socket,
    addr: &socket2::SockAddr,
    dst_buf: &mut [u8],
) {
    // Flush pending queue
    while let Some(packet) = {
        let mut p = peer.lock();
        match p.tunnel.decapsulate(None, &[], dst_buf) {
            TunnResult::WriteToNetwork(packet) => Some(packet),
            _ => None,
        }
    } {
        let _: Result<_, _> = udp.send_to(packet, addr);
    }
}

/// A basic linear-feedback shift register implemented as xorshift, used to
/// distribute peer indexes across the 24-bit address space reserved for peer
/// identification.
/// The purpose is to obscure the total number of peers using the system and to
/// ensure it requires a non-trivial amount of processing power and/or samples
/// to guess other peers' indices. Anything more ambitious than this is wasted
/// with only 24 bits of space.
struct IndexLfsr {
    initial: u32,
    lfsr: u32,
    mask: u32,
}

impl IndexLfsr {
    /// Generate a random 24-bit nonzero integer
    fn random_index() -> u32 {
        const LFSR_MAX: u32 = 0xff_ffff; // 24-bit seed
        loop {
            let i = rand::rng().next_u32() & LFSR_MAX;
            if i > 0 {
                // LFSR seed must be non-zero
                return i;
            }
        }
    }

    /// Generate the next value in the pseudorandom sequence
    fn next(&mut self) -> u32 {
        // 24-bit polynomial for randomness. This is arbitrarily chosen to
        // inject bitflips into the value.
        const LFSR_POLY: u32 = 0xd8_0000; // 24-bit polynomial
        let value = self.lfsr - 1; // lfsr will never have value of 0
        self.lfsr = (self.lfsr >> 1) ^ ((0u32.wrapping_sub(self.lfsr & 1u32)) & LFSR_POLY);
        assert!(self.lfsr != self.initial, "Too many peers created");
        value ^ self.mask
    }
}

impl Default for IndexLfsr {
    fn default() -> Self {
        let seed = Self::random_index();
        IndexLfsr {
            initial: seed,
            lfsr: seed,
            mask: Self::random_index(),
        }
    }
}
