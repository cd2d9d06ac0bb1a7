//! Small facts about addresses and prefixes, shared by the plans, the datapath and underlay
//! detection.

use std::net::IpAddr;

use ipnet::IpNet;

/// `addr` as a host prefix: /32 for IPv4, /128 for IPv6.
pub fn host_prefix(addr: IpAddr) -> IpNet {
    let len = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    // A full-length prefix is always valid.
    IpNet::new(addr, len).expect("a host prefix is valid")
}

/// Whether two prefixes share an address (for prefixes: one contains the other).
pub fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The first address of `net` as a number (IPv4 addresses below 2³²).
pub fn start(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.network())),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

/// The last address of `net` as a number.
pub fn end(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
        IpNet::V6(n) => u128::from(n.broadcast()),
    }
}

/// `a, b, c`, or "none configured".
pub fn net_list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none configured".to_string();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10): addresses the kernel or a pod's
/// gateway use, never weft's own on a device.
pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
