//! Segmentation and merging checked against a plain RFC 1071 checksum written here, and each
//! other: cutting a superpacket and merging the segments gives the superpacket back. UDP GSO and
//! GRO checked on loopback sockets.

use proptest::prelude::*;

use crate::{for_each_segment, GsoBatch, OffloadError, TcpCoalescer, VnetHdr, VNET_HDR_LEN};

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;

/// The Internet checksum, 16 bits at a time, as RFC 1071 writes it.
fn rfc1071_sum(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// IP header length, with one IPv6 destination options header if there is one.
fn ip_len(pkt: &[u8]) -> usize {
    match (pkt[0] >> 4, pkt[6]) {
        (4, _) => 20,
        (_, 60) => 40 + (usize::from(pkt[41]) + 1) * 8,
        _ => 40,
    }
}

/// The pseudo header (RFC 793 / RFC 8200 §8.1) followed by the TCP segment.
fn with_pseudo_header(pkt: &[u8]) -> Vec<u8> {
    let ip = ip_len(pkt);
    let tcp_len = (pkt.len() - ip) as u32;
    let mut v = Vec::new();
    if ip == 20 {
        v.extend_from_slice(&pkt[12..20]);
        v.extend_from_slice(&[0, 6]);
        v.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    } else {
        v.extend_from_slice(&pkt[8..40]);
        v.extend_from_slice(&tcp_len.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 6]);
    }
    v.extend_from_slice(&pkt[ip..]);
    v
}

/// Asserts that the IPv4 header checksum, the lengths and the TCP checksum of `pkt` are right.
fn assert_valid(pkt: &[u8]) {
    if pkt[0] >> 4 == 4 {
        assert_eq!(rfc1071_sum(&pkt[..20]), 0xffff, "IPv4 header checksum");
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
    } else {
        let payload_len = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
        assert_eq!(payload_len + 40, pkt.len());
    }
    assert_eq!(
        rfc1071_sum(&with_pseudo_header(pkt)),
        0xffff,
        "TCP checksum"
    );
}

/// A TCP packet with the timestamp option, checksums complete.
fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = if v6 {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h
    } else {
        vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 1, 1,
        ]
    };
    let ip = p.len();
    p.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51]); // ports 40000 -> 5201
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // ACK number
    p.extend_from_slice(&[0x80, flags, 0x01, 0xf6, 0, 0, 0, 0]); // 32-byte header, window 502
    p.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]); // NOP NOP timestamps
    p.extend_from_slice(payload);
    fix(&mut p, ip);
    p
}

/// Lengths and checksums, computed with the plain checksum.
fn fix(p: &mut [u8], ip: usize) {
    let len = p.len();
    if ip == 20 {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !(rfc1071_sum(&p[..20]) as u16);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
    p[ip + 16..ip + 18].copy_from_slice(&[0, 0]);
    let c = !(rfc1071_sum(&with_pseudo_header(p)) as u16);
    p[ip + 16..ip + 18].copy_from_slice(&c.to_be_bytes());
}

/// What the kernel hands over for a TSO send: the whole payload behind one set of headers, the
/// TCP checksum field holding the pseudo-header sum, and a GSO virtio-net header.
fn superpacket(v6: bool, seq: u32, flags: u8, payload: &[u8], mss: u16) -> Vec<u8> {
    let mut pkt = tcp_packet(v6, seq, flags, payload);
    let ip = ip_len(&pkt);
    let pseudo = with_pseudo_header(&pkt);
    let partial = rfc1071_sum(&pseudo[..pseudo.len() - (pkt.len() - ip)]) as u16;
    pkt[ip + 16..ip + 18].copy_from_slice(&partial.to_be_bytes());
    with_gso_header(&pkt, mss)
}

/// `pkt` (its TCP checksum field holding the pseudo-header sum) behind a TCP GSO header.
fn with_gso_header(pkt: &[u8], mss: u16) -> Vec<u8> {
    let ip = ip_len(pkt);
    let hdr = VnetHdr {
        flags: 1,
        gso_type: if pkt[0] >> 4 == 6 { 4 } else { 1 },
        hdr_len: (ip + 32) as u16,
        gso_size: mss,
        csum_start: ip as u16,
        csum_offset: 16,
    };
    let mut buf = hdr.to_bytes().to_vec();
    buf.extend_from_slice(pkt);
    buf
}

fn segments(buf: &mut [u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut scratch = vec![0u8; 65_536];
    let mut out = Vec::new();
    for_each_segment(buf, &mut scratch, |p| out.push(p.to_vec()))?;
    Ok(out)
}

fn coalesce(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut gro = TcpCoalescer::default();
    let mut writes = Vec::new();
    for p in packets {
        gro.push(p, &mut |w| writes.push(w.to_vec()));
    }
    gro.flush(&mut |w| writes.push(w.to_vec()));
    writes
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(crate::checksum_fold(crate::checksum_add(0, &data)), 0xddf2);
}

#[test]
fn a_superpacket_is_cut_as_the_kernel_would() {
    for v6 in [false, true] {
        let data = payload(3500);
        let mut buf = superpacket(v6, 1000, ACK | PSH | FIN, &data, 1000);
        let segs = segments(&mut buf).unwrap();
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            assert_valid(seg);
            let ip = ip_len(seg);
            let seq = u32::from_be_bytes(seg[ip + 4..ip + 8].try_into().unwrap());
            assert_eq!(seq, 1000 + 1000 * i as u32);
            let last = i == 3;
            assert_eq!(seg[ip + 13], if last { ACK | PSH | FIN } else { ACK });
            if !v6 {
                assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + i as u16);
            }
            joined.extend_from_slice(&seg[ip + 32..]);
        }
        assert_eq!(segs[3].len() - ip_len(&segs[3]) - 32, 500);
        assert_eq!(joined, data);
    }
}

#[test]
fn an_ipv6_superpacket_with_destination_options_is_cut_with_them() {
    let mut pkt = tcp_packet(true, 77, ACK, &payload(2500));
    // Destination options (next header TCP, 8 bytes: PadN of 4), after the fixed header.
    pkt.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    pkt[6] = 60;
    fix(&mut pkt, 48);
    let pseudo = with_pseudo_header(&pkt);
    let partial = rfc1071_sum(&pseudo[..pseudo.len() - (pkt.len() - 48)]) as u16;
    pkt[48 + 16..48 + 18].copy_from_slice(&partial.to_be_bytes());
    let segs = segments(&mut with_gso_header(&pkt, 1000)).unwrap();
    assert_eq!(segs.len(), 3);
    for seg in &segs {
        assert_eq!(
            seg[40..48],
            [6, 0, 1, 4, 0, 0, 0, 0],
            "the options travel with each"
        );
        assert_valid(seg);
    }
}

#[test]
fn a_checksum_that_comes_out_zero_is_sent_as_ffff() {
    // csum_start 0, offset 0: the sum covers the field itself (0) and 0xffff, so the
    // complement is 0, which UDP would read as "no checksum".
    let hdr = VnetHdr {
        flags: 1,
        ..VnetHdr::default()
    };
    let mut buf = hdr.to_bytes().to_vec();
    buf.extend_from_slice(&[0, 0, 0xff, 0xff]);
    assert_eq!(
        segments(&mut buf).unwrap(),
        vec![vec![0xff, 0xff, 0xff, 0xff]]
    );
}

#[test]
fn a_segment_with_a_wrong_checksum_is_not_merged_but_passed_on_as_it_came() {
    let first = tcp_packet(false, 0, ACK, &payload(100));
    let mut second = tcp_packet(false, 100, ACK, &payload(100));
    second[60] ^= 1; // payload changed, checksum not
    let writes = coalesce(&[first.clone(), second.clone()]);
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1][VNET_HDR_LEN..], second[..]);
    let writes = coalesce(&[second, first]);
    assert_eq!(writes.len(), 2, "nor does a wrong one start a merge");
}

#[test]
fn a_packet_without_gso_gets_its_partial_checksum_finished() {
    let data = payload(333);
    let mut buf = superpacket(false, 5, ACK, &data, 0);
    buf[1] = 0; // no GSO, checksum still partial
    let segs = segments(&mut buf).unwrap();
    assert_eq!(segs.len(), 1);
    assert_valid(&segs[0]);
}

#[test]
fn malformed_reads_are_errors_not_panics() {
    let mut short = vec![0u8; 4];
    assert_eq!(segments(&mut short), Err(OffloadError::Truncated));
    let mut zero_mss = superpacket(false, 0, ACK, &payload(100), 0);
    assert_eq!(segments(&mut zero_mss), Err(OffloadError::ZeroSegmentSize));
    let mut udp_gso = superpacket(false, 0, ACK, &payload(100), 50);
    udp_gso[1] = 5; // VIRTIO_NET_HDR_GSO_UDP_L4, which weft does not ask for
    assert_eq!(segments(&mut udp_gso), Err(OffloadError::Unsupported(5)));
    let mut cut_short = superpacket(false, 0, ACK, &payload(100), 50);
    cut_short.truncate(VNET_HDR_LEN + 30);
    assert_eq!(segments(&mut cut_short), Err(OffloadError::Truncated));
}

#[test]
fn segments_of_two_flows_or_with_a_gap_are_not_merged() {
    let a = tcp_packet(false, 0, ACK, &payload(100));
    let gap = tcp_packet(false, 150, ACK, &payload(100));
    assert_eq!(coalesce(&[a.clone(), gap]).len(), 2);
    let mut other_flow = tcp_packet(false, 100, ACK, &payload(100));
    other_flow[20] = 0x9d; // another source port
    fix(&mut other_flow, 20);
    assert_eq!(coalesce(&[a.clone(), other_flow]).len(), 2);
    let next = tcp_packet(false, 100, ACK, &payload(100));
    assert_eq!(coalesce(&[a, next]).len(), 1);
}

#[test]
fn control_segments_and_pure_acks_pass_through_unmerged_and_unchanged() {
    let syn = tcp_packet(false, 0, SYN, &[]);
    let ack = tcp_packet(false, 1, ACK, &[]);
    let fin = tcp_packet(true, 1, ACK | FIN, &payload(10));
    for p in [syn, ack, fin] {
        let writes = coalesce(&[p.clone(), p.clone()]);
        assert_eq!(writes.len(), 2);
        for w in writes {
            assert_eq!(VnetHdr::parse(&w).unwrap(), VnetHdr::default());
            assert_eq!(w[VNET_HDR_LEN..], p[..]);
        }
    }
}

#[test]
fn a_shorter_segment_or_psh_ends_the_merge() {
    let p = |seq: u32, flags: u8, len: usize| tcp_packet(false, seq, flags, &payload(len));
    let writes = coalesce(&[p(0, ACK, 100), p(100, ACK, 50), p(150, ACK, 100)]);
    assert_eq!(writes.len(), 2);
    let writes = coalesce(&[p(0, ACK, 100), p(100, ACK | PSH, 100), p(200, ACK, 100)]);
    assert_eq!(writes.len(), 2);
    let merged = &writes[0][VNET_HDR_LEN..];
    assert_eq!(merged[33] & PSH, PSH, "the merged header keeps PSH");
}

#[test]
fn udp_batch_sizes_follow_udp_segment_rules() {
    let mut batch = GsoBatch::default();
    assert!(batch.fits(1452));
    batch.push(&[0; 1452]);
    assert!(batch.fits(1452));
    assert!(!batch.fits(1453), "a longer datagram cannot join");
    batch.push(&[0; 700]);
    assert!(
        !batch.fits(1452),
        "after a shorter one, the batch is closed"
    );
    let mut full = GsoBatch::default();
    for _ in 0..44 {
        full.push(&[0; 1452]);
    }
    assert!(!full.fits(1452), "44 more would pass 65,000 bytes");
    let mut many = GsoBatch::default();
    for _ in 0..64 {
        many.push(&[0; 100]);
    }
    assert!(!many.fits(100), "at most 64 segments");
}

#[test]
fn udp_gso_sends_and_gro_reads_arrive_whole_on_loopback() {
    use std::os::unix::io::AsRawFd;
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    crate::enable_udp_gro(rx.as_raw_fd()).unwrap();
    let dest = socket2::SockAddr::from(rx.local_addr().unwrap());
    let mut batch = GsoBatch::default();
    let datagrams: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000]).collect();
    for d in &datagrams {
        batch.push(d);
    }
    batch.push(&[42; 300]);
    let mut gso_ok = true;
    batch.flush(tx.as_raw_fd(), Some(&dest), &mut gso_ok);
    assert!(batch.is_empty());
    rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while received.len() < 11 {
        let (n, segment, from) = crate::recv_gro(rx.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(from.as_socket(), Some(tx.local_addr().unwrap()));
        received.extend(buf[..n].chunks(segment).map(<[u8]>::to_vec));
    }
    assert!(gso_ok, "loopback takes UDP_SEGMENT");
    assert_eq!(received[..10], datagrams[..]);
    assert_eq!(received[10], vec![42; 300]);
}

proptest! {
    /// Whatever a TUN read or a peer's decrypted packet holds, cutting and merging return an
    /// error or pass it on; they never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
        gso_type in prop_oneof![Just(0u8), Just(1), Just(4), any::<u8>()],
        first in prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
    ) {
        if bytes.len() > VNET_HDR_LEN {
            bytes[1] = gso_type;
            bytes[VNET_HDR_LEN] = first;
        }
        let _ = segments(&mut bytes.clone());
        let head = tcp_packet(first == 0x60, 0, ACK, &payload(100));
        let _ = coalesce(&[head, bytes[VNET_HDR_LEN.min(bytes.len())..].to_vec()]);
    }

    #[test]
    fn the_fast_checksum_is_rfc1071(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let fast = crate::checksum_fold(crate::checksum_add(0, &data));
        prop_assert_eq!(u32::from(fast), rfc1071_sum(&data));
    }

    /// Any running sum, even one next to u64::MAX, takes more data without overflowing: the
    /// result equals (in one's complement, where 0 and 0xffff are one number) the sums added.
    #[test]
    fn a_running_sum_never_overflows(
        init in prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
        data in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let fast = u32::from(crate::checksum_fold(crate::checksum_add(init, &data)));
        let mut expected = u32::from(crate::checksum_fold(init)) + rfc1071_sum(&data);
        while expected > 0xffff {
            expected = (expected & 0xffff) + (expected >> 16);
        }
        prop_assert_eq!(fast % 0xffff, expected % 0xffff);
    }

    /// Cut a superpacket, merge the segments: the same payload, the same headers but for the
    /// checksum, left partial; cut again: the same segments.
    #[test]
    fn cutting_then_merging_gives_the_superpacket_back(
        v6 in any::<bool>(),
        len in 1usize..60_000,
        mss in 500u16..1500,
        seq in any::<u32>(),
    ) {
        let data = payload(len);
        let mut buf = superpacket(v6, seq, ACK | PSH, &data, mss);
        let original = buf.clone();
        let segs = segments(&mut buf).unwrap();
        for s in &segs {
            assert_valid(s);
        }
        let writes = coalesce(&segs);
        prop_assert_eq!(writes.len(), 1);
        let mut merged = writes[0].clone();
        if segs.len() == 1 {
            prop_assert_eq!(&merged[VNET_HDR_LEN..], &segs[0][..]);
        } else {
            let hdr = VnetHdr::parse(&merged).unwrap();
            prop_assert_eq!(hdr, VnetHdr::parse(&original).unwrap());
            let ip = ip_len(&original[VNET_HDR_LEN..]);
            // The IPv4 ID is the first segment's, as the kernel's GRO keeps it.
            prop_assert_eq!(&merged[VNET_HDR_LEN + ip..], &original[VNET_HDR_LEN + ip..]);
            prop_assert_eq!(segments(&mut merged).unwrap(), segs);
        }
    }
}
