//! UDP GSO (many datagrams per send) and GRO (many per read).

use std::io;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;

/// Most datagrams one `UDP_SEGMENT` send may carry (`UDP_MAX_SEGMENTS` in the kernel).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one send may carry: an IPv4 UDP payload is at most 65507 bytes.
const GSO_MAX_BYTES: usize = 65_000;

/// Encrypted datagrams for one destination, back to back, all `segment` bytes long except
/// perhaps the last: the shape one `sendmsg` with `UDP_SEGMENT` sends as separate datagrams.
#[derive(Default)]
pub struct GsoBatch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl GsoBatch {
    /// Whether `len` more bytes can join: same size as the others (or shorter, closing the batch),
    /// under the segment and byte limits.
    pub fn fits(&self, len: usize) -> bool {
        self.count == 0
            || (!self.closed
                && len <= self.segment
                && self.count < GSO_MAX_SEGMENTS
                && self.buf.len() + len <= GSO_MAX_BYTES)
    }

    /// Appends one datagram; the caller checked [`GsoBatch::fits`].
    pub fn push(&mut self, datagram: &[u8]) {
        if self.count == 0 {
            self.segment = datagram.len();
        } else if datagram.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sends the batch on `fd` (to `dest`, or the connected peer) and empties it. One datagram
    /// goes out plainly; more go out in one `sendmsg` with `UDP_SEGMENT`, or one by one where
    /// that fails (on `EIO`, the device cannot do it at all: `gso_ok` is then cleared, so later
    /// batches skip the attempt).
    pub fn flush(&mut self, fd: RawFd, dest: Option<&socket2::SockAddr>, gso_ok: &mut bool) {
        if self.count > 1 && *gso_ok {
            match send_segments(fd, dest, &self.buf, self.segment) {
                Ok(()) => return self.clear(),
                // EIO: the device cannot checksum UDP (wireguard-go turns GSO off on it too);
                // anything else (EINVAL for one route's MTU, EAGAIN, ENOBUFS) concerns this batch.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => *gso_ok = false,
                Err(_) => {}
            }
        }
        for datagram in self.buf.chunks(self.segment.max(1)) {
            let _ = send_segments(fd, dest, datagram, 0);
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

/// One `sendmsg` of `buf` to `dest` (or the connected peer); `segment > 0` adds a `UDP_SEGMENT`
/// control message cutting it into datagrams of that size.
fn send_segments(
    fd: RawFd,
    dest: Option<&socket2::SockAddr>,
    buf: &[u8],
    segment: usize,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(addr) = dest {
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if segment > 0 {
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds CMSG_SPACE(2) bytes, set as msg_controllen above.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    match unsafe { libc::sendmsg(fd, &msg, 0) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Turns on `UDP_GRO` for `fd`: the kernel may then deliver several datagrams from one sender
/// in one read, reporting their size in a control message ([`recv_gro`]).
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// One `recvmsg` on a socket with `UDP_GRO`: returns the bytes read, the size of each datagram
/// in them (the whole read when the kernel coalesced nothing), and the sender.
pub fn recv_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, usize, socket2::SockAddr)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: sockaddr_storage and msghdr are plain data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in msg refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        // Cannot happen with a 64 KiB buffer; if it does, the datagrams are dropped, not misread.
        return Ok((
            0,
            1,
            socket_addr(&storage)
                .unwrap_or(SocketAddr::from(([0; 4], 0)))
                .into(),
        ));
    }
    let n = n as usize;
    let mut segment = n;
    // SAFETY: walks the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                if size > 0 {
                    segment = size as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let addr = socket_addr(&storage).ok_or_else(|| io::Error::other("sender not IP"))?;
    Ok((n, segment.max(1), addr.into()))
}

/// The IPv4 or IPv6 address the kernel wrote into `storage`.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// Sets the socket's receive and send buffers to `bytes` each (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`,
/// which pass `net.core.rmem_max` and need CAP_NET_ADMIN; the plain options, capped, otherwise).
/// One GSO send or GRO read moves up to 64 KiB, so the defaults (about 208 KiB) overflow in a
/// burst; wireguard-go asks for 7 MiB for the same reason.
pub fn grow_buffers(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, forced, value).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, value)?;
        }
    }
    Ok(())
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
