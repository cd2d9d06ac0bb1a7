//! ICMP echo, for the peer health prober and the doctor's path-MTU probe: the echo request and
//! reply of both families (RFC 792, RFC 4443) on raw sockets, which need `CAP_NET_RAW`.
//!
//! IPv4 raw sockets receive the IP header and leave the ICMP checksum to us; ICMPv6 raw sockets
//! receive the message alone and the kernel fills its checksum (RFC 3542 §3.1). A raw socket sees
//! every echo reply reaching the host, so replies are matched by identifier and sequence number.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// The ICMP echo header: type, code, checksum, identifier, sequence number.
pub const ECHO_HEADER_LEN: usize = 8;

/// The receive buffer of a probing socket, bytes: room for the replies of thousands of peers.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// `setsockopt` of one `int`.
fn set_int(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_raw(socket, level, option, &value)
}

fn set_raw<T>(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` outlives the call and `len` is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (value as *const T).cast(),
            len,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Let only echo replies reach the socket (a raw socket otherwise gets every ICMP message of the
/// host, the echo requests of local pings included): `ICMP_FILTER` (IPv4, a mask of the types
/// to drop) and `ICMP6_FILTER` (RFC 3542 §3.2; a set bit blocks the type).
fn only_echo_replies(socket: &Socket, v6: bool) -> io::Result<()> {
    const ICMP_FILTER: libc::c_int = 1;
    const ICMP6_FILTER: libc::c_int = 1;
    match v6 {
        false => {
            let blocked: u32 = !(1u32 << ECHO_REPLY_V4);
            set_raw(socket, libc::SOL_RAW, ICMP_FILTER, &blocked)
        }
        true => {
            let mut blocked = [u32::MAX; 8];
            let reply = usize::from(ECHO_REPLY_V6);
            blocked[reply / 32] &= !(1u32 << (reply % 32));
            set_raw(socket, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &blocked)
        }
    }
}

/// An echo reply: who answered, and the identifier and sequence number it echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: IpAddr,
    pub ident: u16,
    pub seq: u16,
}

/// An echo request of `payload_len` bytes of payload (zeros), checksummed for IPv4; ICMPv6
/// leaves the checksum to the kernel.
pub fn echo_request(v6: bool, ident: u16, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut packet = vec![0u8; ECHO_HEADER_LEN + payload_len];
    packet[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The identifier and sequence number of an echo reply, or `None` for any other message. `data`
/// is what the raw socket received: with the IPv4 header for IPv4, the bare message for IPv6.
pub fn parse_reply(v6: bool, data: &[u8]) -> Option<(u16, u16)> {
    let message = match v6 {
        true => data,
        false => {
            let header_len = usize::from(*data.first()? & 0x0f) * 4;
            data.get(header_len..)?
        }
    };
    let expected = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if message.len() < ECHO_HEADER_LEN || message[0] != expected || message[1] != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([message[4], message[5]]);
    let seq = u16::from_be_bytes([message[6], message[7]]);
    Some((ident, seq))
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw ICMP socket of one family, non-blocking, on the runtime.
pub struct EchoSocket {
    socket: AsyncFd<Socket>,
    v6: bool,
}

impl EchoSocket {
    /// A socket for `v6` or IPv4 echo.
    ///
    /// # Errors
    /// `EPERM` without `CAP_NET_RAW`; `EAFNOSUPPORT` where the family is off.
    pub fn open(v6: bool) -> io::Result<EchoSocket> {
        let (domain, protocol) = match v6 {
            true => (Domain::IPV6, Protocol::ICMPV6),
            false => (Domain::IPV4, Protocol::ICMPV4),
        };
        let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
        socket.set_nonblocking(true)?;
        only_echo_replies(&socket, v6)?;
        // A round's replies arrive together; the default buffer (rmem_max) holds a few hundred.
        // Root may go beyond rmem_max; elsewhere the default stays.
        let _ = set_int(
            &socket,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RECEIVE_BUFFER,
        );
        // SAFETY: the socket is owned by the AsyncFd for its whole life, so its descriptor stays
        // open and the same.
        let socket = unsafe { AsyncFd::register(socket)? };
        Ok(EchoSocket { socket, v6 })
    }

    /// Set the Don't Fragment bit (IPv4) or forbid fragmentation (IPv6) and ignore the path-MTU
    /// cache, so an echo larger than the path is lost rather than fragmented
    /// (`IP_PMTUDISC_PROBE`, `IPV6_PMTUDISC_PROBE`).
    pub fn probe_path_mtu(&self) -> io::Result<()> {
        let (level, option, value) = match self.v6 {
            true => (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_PROBE,
            ),
            false => (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            ),
        };
        set_int(self.socket.get_ref(), level, option, value)
    }

    /// Send one echo request to `to`.
    pub async fn send(
        &self,
        to: IpAddr,
        ident: u16,
        seq: u16,
        payload_len: usize,
    ) -> io::Result<()> {
        let packet = echo_request(self.v6, ident, seq, payload_len);
        let to = SockAddr::from(SocketAddr::new(to, 0));
        loop {
            let mut ready = self.socket.writable().await?;
            match ready.try_io(|s| s.get_ref().send_to(&packet, &to)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next echo reply that reaches this socket (other messages are skipped).
    pub async fn recv(&self) -> io::Result<Reply> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let mut ready = self.socket.readable().await?;
            let received = ready.try_io(|s| s.get_ref().recv_from(&mut buf));
            let Ok(result) = received else { continue };
            let (len, from) = result?;
            // SAFETY: recv_from initialised the first `len` bytes.
            let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
            let (Some((ident, seq)), Some(from)) = (parse_reply(self.v6, data), from.as_socket())
            else {
                continue;
            };
            return Ok(Reply {
                from: from.ip(),
                ident,
                seq,
            });
        }
    }
}

/// An identifier for this process's echo requests: its PID, mixed with `salt` so that two
/// probers of one process (the daemon's and a doctor's) differ.
pub fn ident(salt: u16) -> u16 {
    (std::process::id() as u16) ^ salt.rotate_left(8)
}

/// Ping `target` once with `payload_len` bytes of payload, fragmentation forbidden when
/// `dont_fragment`; the round-trip time, or `None` when no reply came within `timeout`.
///
/// # Errors
/// The socket cannot be opened or the request cannot be sent (`EMSGSIZE`: larger than the
/// local interface allows).
pub async fn ping(
    target: IpAddr,
    payload_len: usize,
    dont_fragment: bool,
    timeout: Duration,
) -> io::Result<Option<Duration>> {
    let socket = EchoSocket::open(target.is_ipv6())?;
    if dont_fragment {
        socket.probe_path_mtu()?;
    }
    let ident = ident(0xd0c7 ^ (payload_len as u16));
    let started = Instant::now();
    socket.send(target, ident, 1, payload_len).await?;
    let wait = async {
        loop {
            let reply = socket.recv().await?;
            if reply.from == target && reply.ident == ident && reply.seq == 1 {
                return io::Result::Ok(started.elapsed());
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(rtt) => rtt.map(Some),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_request_carries_a_valid_checksum() {
        let packet = echo_request(false, 0x1234, 7, 56);
        assert_eq!(packet.len(), 64);
        assert_eq!(packet[0], ECHO_REQUEST_V4);
        // A correct checksum makes the sum over the whole message zero.
        assert_eq!(checksum(&packet), 0);
        let v6 = echo_request(true, 0x1234, 7, 0);
        assert_eq!((v6[0], &v6[2..4]), (ECHO_REQUEST_V6, &[0u8, 0][..]));
    }

    #[test]
    fn replies_are_told_from_other_messages() {
        let mut reply = echo_request(true, 0xbeef, 9, 4);
        reply[0] = ECHO_REPLY_V6;
        assert_eq!(parse_reply(true, &reply), Some((0xbeef, 9)));
        assert_eq!(parse_reply(true, &echo_request(true, 1, 1, 0)), None);
        // IPv4: a 20-byte header (IHL 5) before the message.
        let mut v4 = vec![0x45u8; 1];
        v4.resize(20, 0);
        let mut message = echo_request(false, 0xbeef, 9, 0);
        message[0] = ECHO_REPLY_V4;
        v4.extend_from_slice(&message);
        assert_eq!(parse_reply(false, &v4), Some((0xbeef, 9)));
        assert_eq!(parse_reply(false, &v4[..24]), None, "truncated");
        assert_eq!(parse_reply(false, &[]), None);
        assert_eq!(
            parse_reply(false, &[0x4f]),
            None,
            "header longer than the data"
        );
    }

    #[test]
    fn checksum_of_odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x00, 0x01, 0xf2]), !(0x0001u16 + 0xf200));
    }
}
