//! Pod wiring and the netlink helpers every driver shares; backends' drivers live in
//! `crate::backend`.
//!
//! - [`netns`]: netlink connections and sysctl writes inside another network namespace;
//! - [`nl`]: small rtnetlink helpers (link lookup, errno matching, route and address dumps);
//! - [`pod`]: a pod's veth pair, addresses, routes and gateway neighbours.

pub mod netns;
pub mod nl;
pub mod pod;
