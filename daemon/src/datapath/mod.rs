//! Applying desired state to the kernel, and reading what is there.
//!
//! - [`netns`]: netlink connections and sysctl writes inside another network namespace;
//! - [`nl`]: small rtnetlink helpers (link lookup, errno matching, route and address dumps);
//! - [`pod`]: a pod's veth pair, addresses, routes and gateway neighbours.

pub mod netns;
pub mod nl;
pub mod pod;
pub mod vxlan;

use std::io;

/// Turn on forwarding in this (the node's) namespace for the pod families in use: pods are
/// routed, not bridged. With IPv6 forwarding on, the kernel ignores router advertisements on
/// interfaces with `accept_ra=1`; those are moved to `accept_ra=2` ("accept even when
/// forwarding") so an underlay configured by SLAAC keeps its addresses and default route.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> io::Result<Vec<String>> {
    let mut kept_ra = Vec::new();
    if ipv4 {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if ipv6 {
        for entry in std::fs::read_dir("/proc/sys/net/ipv6/conf")?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `default` too: an interface created later inherits it.
            if name == "all" || name == "lo" {
                continue;
            }
            let accept_ra = entry.path().join("accept_ra");
            if std::fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
                std::fs::write(&accept_ra, "2")?;
                kept_ra.push(name);
            }
        }
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(kept_ra)
}
