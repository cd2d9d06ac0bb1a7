//! The virtio-net header, the Internet checksum, and cutting TCP superpackets into segments.

/// Length of `struct virtio_net_hdr`, the header the TUN device puts before every packet.
pub const VNET_HDR_LEN: usize = 10;
pub(crate) const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const TCP_FLAG_FIN: u8 = 0x01;
pub(crate) const TCP_FLAG_PSH: u8 = 0x08;
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

/// `struct virtio_net_hdr`, fields in the host's byte order, as the TUN device writes them unless
/// told otherwise (`TUNSETVNETLE`/`TUNSETVNETBE`, which weft does not use).
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
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
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
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Adds `data` as big-endian 16-bit words to `sum` (the Internet checksum of RFC 1071, unfolded).
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum = add_carry(sum, v);
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum = add_carry(sum, u64::from(u16::from_be_bytes([rest[i], rest[i + 1]])));
        i += 2;
    }
    if i < rest.len() {
        sum = add_carry(sum, u64::from(rest[i]) << 8);
    }
    sum
}

/// One's-complement addition of 64-bit words: the carry out of the top goes back in at the bottom.
fn add_carry(sum: u64, v: u64) -> u64 {
    let (s, carry) = sum.overflowing_add(v);
    s + u64::from(carry)
}

/// Folds an unfolded sum to 16 bits (not complemented).
pub fn checksum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1) for an IPv4 or IPv6 packet (`ip`
/// starts at its IP header), for a TCP length of `len` bytes.
pub(crate) fn tcp_pseudo_header_sum(ip: &[u8], len: usize) -> u64 {
    let addresses = if ip[0] >> 4 == 4 {
        &ip[12..20]
    } else {
        &ip[8..40]
    };
    let sum = add_carry(checksum_add(0, addresses), u64::from(IPPROTO_TCP));
    add_carry(sum, len as u64)
}

/// Whether the TCP checksum of `pkt` (TCP at `ip_len`) is right: the pseudo header and the
/// segment sum to 0xffff.
pub(crate) fn tcp_checksum_ok(pkt: &[u8], ip_len: usize) -> bool {
    let sum = tcp_pseudo_header_sum(pkt, pkt.len() - ip_len);
    checksum_fold(checksum_add(sum, &pkt[ip_len..])) == 0xffff
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
    // As the kernel's skb_checksum_help: a checksum that comes out 0 is sent as 0xffff, its
    // equal in one's complement, because 0 in a UDP header means "none" (and IPv6 drops it).
    let csum = match !checksum_fold(sum) {
        0 => 0xffff,
        csum => csum,
    };
    pkt[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Header lengths (IP, TCP) of a TCP packet over IPv4, or IPv6 with perhaps hop-by-hop and
/// destination options before TCP (the IP length then counts them). Other extension headers
/// (a routing header changes the pseudo header's destination) are unsupported.
pub(crate) fn tcp_header_lengths(pkt: &[u8]) -> Result<(usize, usize), OffloadError> {
    let version = pkt.first().ok_or(OffloadError::Truncated)? >> 4;
    let (ip_len, proto) = match version {
        4 if pkt.len() >= 20 => (usize::from(pkt[0] & 0x0f) * 4, pkt[9]),
        6 if pkt.len() >= 40 => ipv6_upper_layer(pkt)?,
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

/// Where the upper layer of an IPv6 packet starts, and its protocol, past hop-by-hop (0) and
/// destination options (60) headers, each `(length byte + 1) × 8` bytes long.
fn ipv6_upper_layer(pkt: &[u8]) -> Result<(usize, u8), OffloadError> {
    const HOP_BY_HOP: u8 = 0;
    const DESTINATION_OPTIONS: u8 = 60;
    let (mut next, mut at) = (pkt[6], 40);
    while next == HOP_BY_HOP || next == DESTINATION_OPTIONS {
        let header = pkt.get(at..at + 2).ok_or(OffloadError::Truncated)?;
        next = header[0];
        at += (usize::from(header[1]) + 1) * 8;
    }
    Ok((at, next))
}

/// Sets the IP header's length to the packet's: the IPv4 total length and header checksum
/// (`ip_len` bytes of header), or the IPv6 payload length.
pub(crate) fn set_ip_length(pkt: &mut [u8], ip_len: usize) {
    let total = pkt.len();
    if pkt[0] >> 4 == 4 {
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let csum = !checksum_fold(checksum_add(0, &pkt[..ip_len]));
        pkt[10..12].copy_from_slice(&csum.to_be_bytes());
    } else {
        pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
}

/// Sets the lengths and checksums of one IP/TCP packet whose headers and payload are in place:
/// the IP length ([`set_ip_length`]) and the TCP checksum.
fn finish_tcp_packet(seg: &mut [u8], ip_len: usize) {
    let total = seg.len();
    set_ip_length(seg, ip_len);
    let tcp = ip_len;
    seg[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let sum = tcp_pseudo_header_sum(seg, total - ip_len);
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
