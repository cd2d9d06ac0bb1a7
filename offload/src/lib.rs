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

mod gro;
mod segment;
mod udp;

pub use gro::TcpCoalescer;
pub use segment::{
    checksum_add, checksum_fold, for_each_segment, OffloadError, VnetHdr, VNET_HDR_LEN,
};
pub use udp::{enable_udp_gro, grow_buffers, recv_gro, GsoBatch};

#[cfg(test)]
mod tests;
