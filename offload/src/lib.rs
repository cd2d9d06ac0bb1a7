//! Batching for `weft-wg`'s device loop (the vendored `defguard_boringtun` calls it; see
//! `vendor/defguard_boringtun/WEFT.md`): TUN offloads and UDP GSO/GRO.
//!
//! - **TUN, read side (TSO):** the TUN device is opened with `IFF_VNET_HDR` and
//!   `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`, so the kernel hands over TCP
//!   "superpackets" of up to 64 KiB, each behind a 10-byte `virtio_net_hdr`
//!   (`include/uapi/linux/virtio_net.h`). [`for_each_segment`] cuts one into MTU-sized IP packets
//!   with finished checksums, as the kernel's `tcp_gso_segment` would.
//! - **TUN, write side (GRO):** [`TcpCoalescer`] merges consecutive in-order TCP segments of one
//!   flow into one superpacket, written with `VIRTIO_NET_HDR_GSO_TCPV4/6` and a partial checksum,
//!   so the kernel's TCP receives one packet instead of forty (what wireguard-go's `tcpGRO` does).
//! - **UDP, send side (GSO):** [`GsoBatch`] gathers encrypted datagrams of equal size for one
//!   destination and sends them with one `sendmsg` carrying `UDP_SEGMENT`
//!   (`Documentation/networking/segmentation-offloads.rst`); the last one may be shorter.
//! - **UDP, receive side (GRO):** sockets get `UDP_GRO`, and [`recv_gro`] returns the segment size
//!   the kernel reports in its control message, so one `recvmsg` yields many datagrams.

use std::io;
use std::os::unix::io::RawFd;

/// Length of `struct virtio_net_hdr`, the header the TUN device puts before every packet.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_CWR: u8 = 0x80;
const IPPROTO_TCP: u8 = 6;

/// Why a packet read from the TUN device could not be cut into segments.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Shorter than its headers say, or than a virtio-net header.
    #[error("packet shorter than its headers")]
    Truncated,
    /// A GSO type other than TCP over IPv4 or IPv6, or TCP after IPv6 extension headers.
    #[error("unsupported GSO type or protocol {0}")]
    Unsupported(u8),
    /// `gso_size` is zero.
    #[error("GSO segment size 0")]
    ZeroSegmentSize,
}

/// `struct virtio_net_hdr`, little-endian fields as the TUN device writes them (it speaks the
/// host's byte order unless `TUNSETVNETBE`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b = buf.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's 10 bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Adds `data` as big-endian 16-bit words to `sum` (the Internet checksum of RFC 1071, unfolded).
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = sum.overflowing_add(v);
        sum = s + carry as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        sum += u64::from(rest[i]) << 8;
    }
    sum
}

/// Folds an unfolded sum to 16 bits (not complemented).
pub fn checksum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP/UDP pseudo-header sum for an IPv4 or IPv6 packet (`ip` starts at its IP header),
/// for an upper-layer length of `len` bytes.
fn pseudo_header_sum(ip: &[u8], len: usize) -> u64 {
    if ip[0] >> 4 == 4 {
        let sum = checksum_add(0, &ip[12..20]);
        sum + u64::from(ip[9]) + len as u64
    } else {
        let sum = checksum_add(0, &ip[8..40]);
        sum + u64::from(ip[6]) + len as u64
    }
}

/// Finishes a checksum the kernel left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the sum from
/// `csum_start` to the end, stored complemented at `csum_start + csum_offset`.
fn finish_partial_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return Err(OffloadError::Truncated);
    }
    let sum = checksum_add(0, &pkt[start..]);
    let csum = !checksum_fold(sum);
    pkt[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Header lengths (IP, TCP) of a TCP packet over IPv4 or IPv6 without extension headers.
fn tcp_header_lengths(pkt: &[u8]) -> Result<(usize, usize), OffloadError> {
    let version = pkt.first().ok_or(OffloadError::Truncated)? >> 4;
    let (ip_len, proto) = match version {
        4 if pkt.len() >= 20 => (usize::from(pkt[0] & 0x0f) * 4, pkt[9]),
        6 if pkt.len() >= 40 => (40, pkt[6]),
        _ => return Err(OffloadError::Truncated),
    };
    if proto != IPPROTO_TCP {
        return Err(OffloadError::Unsupported(proto));
    }
    let tcp_len = usize::from(*pkt.get(ip_len + 12).ok_or(OffloadError::Truncated)? >> 4) * 4;
    if tcp_len < 20 || pkt.len() < ip_len + tcp_len {
        return Err(OffloadError::Truncated);
    }
    Ok((ip_len, tcp_len))
}

/// Sets the lengths and checksums of one IP/TCP packet whose headers and payload are in place:
/// IPv4 total length and header checksum, or IPv6 payload length; the TCP checksum.
fn finish_tcp_packet(seg: &mut [u8], ip_len: usize) {
    let total = seg.len();
    if seg[0] >> 4 == 4 {
        seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        seg[10..12].copy_from_slice(&[0, 0]);
        let csum = !checksum_fold(checksum_add(0, &seg[..ip_len]));
        seg[10..12].copy_from_slice(&csum.to_be_bytes());
    } else {
        seg[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
    let tcp = ip_len;
    seg[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let sum = pseudo_header_sum(seg, total - ip_len);
    let csum = !checksum_fold(checksum_add(sum, &seg[tcp..]));
    seg[tcp + 16..tcp + 18].copy_from_slice(&csum.to_be_bytes());
}

/// Calls `f` with each IP packet in `buf`, a read from a TUN device with `IFF_VNET_HDR`
/// (header first). A packet without GSO is passed through, its checksum finished if the kernel
/// left it partial; a TCP superpacket is cut into `gso_size`-byte segments in `scratch` (at least
/// the MTU long), with sequence numbers, IPv4 IDs, lengths, flags and checksums as
/// `tcp_gso_segment` sets them: FIN and PSH only on the last, CWR only on the first.
pub fn for_each_segment(
    buf: &mut [u8],
    scratch: &mut [u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let hdr = VnetHdr::parse(buf)?;
    let pkt = &mut buf[VNET_HDR_LEN..];
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                finish_partial_checksum(&hdr, pkt)?;
            }
            f(pkt);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(&hdr, pkt, scratch, f),
        other => Err(OffloadError::Unsupported(other)),
    }
}

fn segment_tcp(
    hdr: &VnetHdr,
    pkt: &[u8],
    scratch: &mut [u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let (ip_len, tcp_len) = tcp_header_lengths(pkt)?;
    let headers = ip_len + tcp_len;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::ZeroSegmentSize);
    }
    if scratch.len() < headers + mss {
        return Err(OffloadError::Truncated);
    }
    let is_v4 = pkt[0] >> 4 == 4;
    let ip_id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes(pkt[ip_len + 4..ip_len + 8].try_into().unwrap());
    let flags = pkt[ip_len + 13];
    let payload = &pkt[headers..];
    let count = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let seg = &mut scratch[..headers + chunk.len()];
        seg[..headers].copy_from_slice(&pkt[..headers]);
        seg[headers..].copy_from_slice(chunk);
        if is_v4 {
            seg[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
        }
        let seg_seq = seq.wrapping_add((i * mss) as u32);
        seg[ip_len + 4..ip_len + 8].copy_from_slice(&seg_seq.to_be_bytes());
        let mut seg_flags = flags;
        if i + 1 < count {
            seg_flags &= !(TCP_FLAG_FIN | TCP_FLAG_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_FLAG_CWR;
        }
        seg[ip_len + 13] = seg_flags;
        finish_tcp_packet(seg, ip_len);
        f(seg);
    }
    Ok(())
}

/// Decrypted packets on their way to the TUN device, consecutive TCP segments of one flow merged
/// into one superpacket (generic receive offload done here, as the kernel's `tcp_gro_receive`
/// would): same addresses, ports, ACK, window and options; sequence numbers back to back; every
/// payload `gso_size` long but the last; ACK (and PSH, which ends the merge) the only flags.
/// Anything else is written as it came.
pub struct TcpCoalescer {
    /// A virtio-net header's room, then the packet being built.
    buf: Vec<u8>,
    ip_len: usize,
    tcp_len: usize,
    gso_size: usize,
    next_seq: u32,
    count: usize,
    closed: bool,
}

const TCP_FLAG_ACK: u8 = 0x10;
/// Most bytes of one merged IP packet (the IPv4 total length field).
const GRO_MAX_BYTES: usize = 65_535;

impl Default for TcpCoalescer {
    fn default() -> Self {
        TcpCoalescer {
            buf: Vec::with_capacity(VNET_HDR_LEN + GRO_MAX_BYTES),
            ip_len: 0,
            tcp_len: 0,
            gso_size: 0,
            next_seq: 0,
            count: 0,
            closed: false,
        }
    }
}

impl TcpCoalescer {
    /// Takes one decrypted IP packet: merged into the pending one where it continues it; else
    /// the pending one is written first (through `write`, which gets header and packet as one
    /// buffer) and this one starts anew, or is written at once if it cannot be merged at all.
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8])) {
        if self.count > 0 && self.continues(pkt) {
            self.append(pkt);
            return;
        }
        self.flush(write);
        match mergeable_head(pkt) {
            Some((ip_len, tcp_len)) => self.start(pkt, ip_len, tcp_len),
            None => write_plain(&mut self.buf, pkt, write),
        }
    }

    /// Writes the pending packet, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        if self.count == 0 {
            return;
        }
        if self.count > 1 {
            self.finish_superpacket();
        }
        write(&self.buf);
        self.buf.clear();
        self.count = 0;
    }

    fn start(&mut self, pkt: &[u8], ip_len: usize, tcp_len: usize) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        self.buf.extend_from_slice(pkt);
        self.ip_len = ip_len;
        self.tcp_len = tcp_len;
        self.gso_size = pkt.len() - ip_len - tcp_len;
        self.next_seq = tcp_seq(pkt, ip_len).wrapping_add(self.gso_size as u32);
        self.count = 1;
        self.closed = pkt[ip_len + 13] & TCP_FLAG_PSH != 0;
    }

    fn continues(&self, pkt: &[u8]) -> bool {
        let head = &self.buf[VNET_HDR_LEN..];
        let (ip, tcp) = (self.ip_len, self.tcp_len);
        let headers = ip + tcp;
        if self.closed || pkt.len() <= headers || pkt.len() - headers > self.gso_size {
            return false;
        }
        if self.buf.len() - VNET_HDR_LEN + pkt.len() - headers > GRO_MAX_BYTES {
            return false;
        }
        let same_ip = if head[0] >> 4 == 4 {
            // Version, header length, TOS; fragment bits; TTL, protocol; addresses.
            pkt[0..2] == head[0..2] && pkt[6..10] == head[6..10] && pkt[12..20] == head[12..20]
        } else {
            // Version, traffic class, flow label; next header, hop limit; addresses.
            pkt[0..4] == head[0..4] && pkt[6..40] == head[6..40]
        };
        let (t, h) = (&pkt[ip..], &head[ip..]);
        let flags = t[13] & !TCP_FLAG_PSH;
        same_ip
            && t[0..4] == h[0..4] // ports
            && t[8..13] == h[8..13] // ACK number, data offset
            && flags == TCP_FLAG_ACK
            && t[14..16] == h[14..16] // window
            && t[20..tcp] == h[20..tcp] // options
            && tcp_seq(pkt, ip) == self.next_seq
    }

    fn append(&mut self, pkt: &[u8]) {
        let (ip, headers) = (self.ip_len, self.ip_len + self.tcp_len);
        let payload = &pkt[headers..];
        self.buf.extend_from_slice(payload);
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        self.count += 1;
        if pkt[ip + 13] & TCP_FLAG_PSH != 0 {
            self.buf[VNET_HDR_LEN + ip + 13] |= TCP_FLAG_PSH;
            self.closed = true;
        }
        if payload.len() < self.gso_size {
            self.closed = true;
        }
    }

    /// Lengths, IPv4 header checksum, the TCP checksum left partial (the pseudo-header sum, as
    /// the kernel expects with `VIRTIO_NET_HDR_F_NEEDS_CSUM`), and the virtio-net header.
    fn finish_superpacket(&mut self) {
        let (ip, tcp) = (self.ip_len, self.tcp_len);
        let pkt = &mut self.buf[VNET_HDR_LEN..];
        let total = pkt.len();
        let is_v4 = pkt[0] >> 4 == 4;
        if is_v4 {
            pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            pkt[10..12].copy_from_slice(&[0, 0]);
            let csum = !checksum_fold(checksum_add(0, &pkt[..ip]));
            pkt[10..12].copy_from_slice(&csum.to_be_bytes());
        } else {
            pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let partial = checksum_fold(pseudo_header_sum(pkt, total - ip));
        pkt[ip + 16..ip + 18].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if is_v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: (ip + tcp) as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip as u16,
            csum_offset: 16,
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    }
}

/// Header lengths of a packet that may start a merge: TCP over IPv4 without options or IPv6
/// without extension headers, not a fragment, carrying data, with ACK (and perhaps PSH) only.
fn mergeable_head(pkt: &[u8]) -> Option<(usize, usize)> {
    let (ip, tcp) = tcp_header_lengths(pkt).ok()?;
    let v4_plain = pkt[0] == 0x45 && pkt[6] & 0x3f == 0 && pkt[7] == 0;
    if (pkt[0] >> 4 == 4 && !v4_plain) || pkt.len() <= ip + tcp {
        return None;
    }
    (pkt[ip + 13] & !TCP_FLAG_PSH == TCP_FLAG_ACK).then_some((ip, tcp))
}

fn tcp_seq(pkt: &[u8], ip_len: usize) -> u32 {
    u32::from_be_bytes(pkt[ip_len + 4..ip_len + 8].try_into().unwrap())
}

/// Writes `pkt` behind a zeroed virtio-net header (no GSO, checksum already complete).
fn write_plain(buf: &mut Vec<u8>, pkt: &[u8], write: &mut impl FnMut(&[u8])) {
    buf.clear();
    buf.extend_from_slice(&[0; VNET_HDR_LEN]);
    buf.extend_from_slice(pkt);
    write(buf);
    buf.clear();
}

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
    /// the kernel refuses that (`gso_ok` is then cleared, so later batches skip the attempt).
    pub fn flush(&mut self, fd: RawFd, dest: Option<&socket2::SockAddr>, gso_ok: &mut bool) {
        if self.count > 1 && *gso_ok {
            if let Err(e) = send_segments(fd, dest, &self.buf, self.segment) {
                let refused = matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
                if refused {
                    *gso_ok = false;
                }
                if !refused {
                    self.clear();
                    return;
                }
            } else {
                self.clear();
                return;
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
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
