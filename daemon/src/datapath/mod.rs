//! Applying desired state to the kernel, and reading what is there.
//!
//! - [`netns`]: netlink connections and sysctl writes inside another network namespace;
//! - [`nl`]: small rtnetlink helpers (link lookup, errno matching, route and address dumps);
//! - [`pod`]: a pod's veth pair, addresses, routes and gateway neighbours.

pub mod masq;
pub mod netns;
pub mod nl;
pub mod pod;
pub mod vxlan;

use std::io;

/// Turn on forwarding in this (the node's) namespace, both families: pods are routed, not bridged.
pub fn enable_forwarding() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    Ok(())
}
