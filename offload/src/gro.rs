//! Merging decrypted TCP segments into superpackets for the TUN device.

use crate::segment::{
    checksum_fold, set_ip_length, tcp_checksum_ok, tcp_header_lengths, tcp_pseudo_header_sum,
    VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, TCP_FLAG_PSH, VNET_HDR_LEN,
};

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
            && tcp_checksum_ok(pkt, ip)
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
        set_ip_length(pkt, ip);
        let partial = checksum_fold(tcp_pseudo_header_sum(pkt, total - ip));
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
/// without extension headers, not a fragment, carrying data, with ACK (and perhaps PSH) only,
/// and a right checksum. The kernel takes a merged packet's data as checked
/// (`CHECKSUM_PARTIAL`), so each segment is checked before it joins, as `tcp4_gro_receive` does;
/// a wrong one is written as it came, for the kernel to drop.
fn mergeable_head(pkt: &[u8]) -> Option<(usize, usize)> {
    let (ip, tcp) = tcp_header_lengths(pkt).ok()?;
    let plain = match pkt[0] >> 4 {
        4 => pkt[0] == 0x45 && pkt[6] & 0x3f == 0 && pkt[7] == 0,
        _ => ip == 40,
    };
    if !plain || pkt.len() <= ip + tcp || pkt[ip + 13] & !TCP_FLAG_PSH != TCP_FLAG_ACK {
        return None;
    }
    tcp_checksum_ok(pkt, ip).then_some((ip, tcp))
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
