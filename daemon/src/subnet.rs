//! Carving node subnets out of a cluster CIDR: pure, no I/O.
//!
//! A cluster CIDR of prefix `p` split into node subnets of prefix `n` has `2^(n-p)` slots, numbered
//! from 0. Allocation is first fit from a starting slot, wrapping around: it visits at most
//! `taken + 1` slots, so an IPv6 cluster CIDR with 2^64 slots costs no more than an IPv4 one.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("cluster CIDR {cluster} is exhausted: all {slots} subnets of /{prefix_len} are taken")]
    Exhausted {
        cluster: IpNet,
        prefix_len: u8,
        slots: u128,
    },
    #[error("node prefix /{prefix_len} does not fit in cluster CIDR {cluster}")]
    PrefixDoesNotFit { cluster: IpNet, prefix_len: u8 },
}

/// One family's pool: the cluster CIDR and the prefix length of each node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    pub cluster: IpNet,
    pub prefix_len: u8,
}

impl SubnetPool {
    pub fn new(cluster: IpNet, prefix_len: u8) -> Result<Self, SubnetError> {
        if prefix_len < cluster.prefix_len() || prefix_len > cluster.max_prefix_len() {
            return Err(SubnetError::PrefixDoesNotFit {
                cluster,
                prefix_len,
            });
        }
        Ok(SubnetPool {
            cluster: cluster.trunc(),
            prefix_len,
        })
    }

    /// How many node subnets the pool holds (saturating at `u128::MAX` for a /0 split into /128s).
    pub fn slots(&self) -> u128 {
        let bits = u32::from(self.prefix_len - self.cluster.prefix_len());
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// Whether `net` is exactly one of this pool's node subnets.
    pub fn contains_subnet(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.prefix_len && self.cluster.contains(net) && net.trunc() == *net
    }

    /// The subnet in slot `index` (which must be below `slots()`).
    pub fn subnet(&self, index: u128) -> IpNet {
        let host_bits = u32::from(self.cluster.max_prefix_len() - self.prefix_len);
        let offset = index.checked_shl(host_bits).unwrap_or(0);
        match self.cluster {
            IpNet::V4(net) => {
                let base = u32::from(net.network()) as u128;
                let addr = Ipv4Addr::from((base + offset) as u32);
                IpNet::V4(Ipv4Net::new(addr, self.prefix_len).expect("prefix checked in new"))
            }
            IpNet::V6(net) => {
                let base = u128::from(net.network());
                let addr = Ipv6Addr::from(base.wrapping_add(offset));
                IpNet::V6(Ipv6Net::new(addr, self.prefix_len).expect("prefix checked in new"))
            }
        }
    }

    /// The slot of a subnet of this pool.
    pub fn index_of(&self, net: &IpNet) -> Option<u128> {
        if !self.contains_subnet(net) {
            return None;
        }
        let host_bits = u32::from(self.cluster.max_prefix_len() - self.prefix_len);
        let diff = ip_to_u128(net.network()) - ip_to_u128(self.cluster.network());
        Some(diff.checked_shr(host_bits).unwrap_or(0))
    }

    /// The first free subnet at or after slot `start`, wrapping around to slot 0.
    pub fn first_free(&self, taken: &BTreeSet<IpNet>, start: u128) -> Result<IpNet, SubnetError> {
        let slots = self.slots();
        let taken_here = taken.iter().filter(|n| self.contains_subnet(n)).count() as u128;
        let limit = taken_here.saturating_add(1).min(slots);
        let start = start % slots.max(1);
        for step in 0..limit {
            let index = (start + step) % slots;
            let candidate = self.subnet(index);
            if !taken.contains(&candidate) {
                return Ok(candidate);
            }
        }
        Err(SubnetError::Exhausted {
            cluster: self.cluster,
            prefix_len: self.prefix_len,
            slots,
        })
    }

    /// `preferred` if it is one of this pool's subnets and free, else the first free one.
    pub fn choose(
        &self,
        taken: &BTreeSet<IpNet>,
        preferred: Option<IpNet>,
    ) -> Result<IpNet, SubnetError> {
        match preferred {
            Some(net) if self.contains_subnet(&net) && !taken.contains(&net) => Ok(net),
            _ => self.first_free(taken, 0),
        }
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn pool(cluster: &str, len: u8) -> SubnetPool {
        SubnetPool::new(net(cluster), len).unwrap()
    }

    #[test]
    fn first_fit_takes_the_lowest_free_slot() {
        let p = pool("10.244.0.0/16", 24);
        let mut taken = BTreeSet::new();
        assert_eq!(p.first_free(&taken, 0).unwrap(), net("10.244.0.0/24"));
        taken.insert(net("10.244.0.0/24"));
        taken.insert(net("10.244.2.0/24"));
        assert_eq!(p.first_free(&taken, 0).unwrap(), net("10.244.1.0/24"));
        taken.insert(net("10.244.1.0/24"));
        assert_eq!(p.first_free(&taken, 0).unwrap(), net("10.244.3.0/24"));
    }

    #[test]
    fn search_wraps_around_to_slot_zero() {
        let p = pool("10.244.0.0/22", 24);
        let taken: BTreeSet<_> = [net("10.244.2.0/24"), net("10.244.3.0/24")].into();
        assert_eq!(p.first_free(&taken, 2).unwrap(), net("10.244.0.0/24"));
        assert_eq!(
            p.first_free(&taken, 7).unwrap(),
            net("10.244.0.0/24"),
            "start is taken modulo slots"
        );
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_pool() {
        let p = pool("10.244.0.0/23", 24);
        let taken: BTreeSet<_> = [net("10.244.0.0/24"), net("10.244.1.0/24")].into();
        let err = p.first_free(&taken, 0).unwrap_err();
        assert_eq!(
            err,
            SubnetError::Exhausted {
                cluster: net("10.244.0.0/23"),
                prefix_len: 24,
                slots: 2
            }
        );
        assert!(err.to_string().contains("10.244.0.0/23 is exhausted"));
    }

    #[test]
    fn ipv6_pools_are_cheap_even_with_huge_slot_counts() {
        let p = pool("fd00:10:244::/48", 64);
        assert_eq!(p.slots(), 65536);
        let taken: BTreeSet<_> = [net("fd00:10:244::/64")].into();
        assert_eq!(p.first_free(&taken, 0).unwrap(), net("fd00:10:244:1::/64"));
        let huge = pool("fd00::/16", 120);
        assert_eq!(huge.slots(), 1 << 104);
        assert_eq!(
            huge.first_free(&BTreeSet::new(), 0).unwrap(),
            net("fd00::/120")
        );
        let last = huge.subnet(huge.slots() - 1);
        assert_eq!(last, net("fd00:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"));
        assert_eq!(huge.index_of(&last), Some(huge.slots() - 1));
    }

    #[test]
    fn choose_prefers_a_free_previous_subnet() {
        let p = pool("10.244.0.0/16", 24);
        let taken: BTreeSet<_> = [net("10.244.0.0/24")].into();
        assert_eq!(
            p.choose(&taken, Some(net("10.244.7.0/24"))).unwrap(),
            net("10.244.7.0/24")
        );
        assert_eq!(
            p.choose(&taken, Some(net("10.244.0.0/24"))).unwrap(),
            net("10.244.1.0/24"),
            "taken"
        );
        assert_eq!(
            p.choose(&taken, Some(net("10.99.0.0/24"))).unwrap(),
            net("10.244.1.0/24"),
            "outside"
        );
        assert_eq!(
            p.choose(&taken, Some(net("10.244.7.0/25"))).unwrap(),
            net("10.244.1.0/24"),
            "wrong size"
        );
    }

    #[test]
    fn prefix_must_fit() {
        assert!(SubnetPool::new(net("10.244.0.0/16"), 15).is_err());
        assert!(SubnetPool::new(net("10.244.0.0/16"), 33).is_err());
        assert_eq!(pool("10.244.0.0/16", 16).slots(), 1);
        assert_eq!(pool("10.244.0.0/16", 32).slots(), 65536);
    }

    #[test]
    fn foreign_taken_entries_do_not_count() {
        let p = pool("10.244.0.0/23", 24);
        let taken: BTreeSet<_> =
            [net("10.9.0.0/24"), net("10.244.0.0/24"), net("fd00::/64")].into();
        assert_eq!(p.first_free(&taken, 0).unwrap(), net("10.244.1.0/24"));
    }
}
