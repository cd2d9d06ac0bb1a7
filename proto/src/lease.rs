//! A node's lease: the pod CIDRs it holds, the underlay addresses peers reach it on, and the data its
//! tunnel backend needs published.
//!
//! Every store (Kubernetes, etcd, the single-host file store) exchanges the same [`NodeRecord`]: the
//! node's pod CIDRs and its `weft.dev/` annotations, exactly the parts of a Kubernetes Node object
//! that weft reads. [`Lease::from_record`] is the one strict decoder for all of them; it lives with
//! the encoder in [`crate::record`], so this module holds the types alone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::names::NodeName;

/// The node's pod CIDRs, one per family; a single-stack cluster leaves the other family empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PodCidrs {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl PodCidrs {
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// Both families as `IpNet`, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> {
        self.v4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.v6.map(IpNet::V6))
    }
}

impl fmt::Display for PodCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|n| n.to_string()).collect();
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// The node's underlay addresses, the ones tunnels to it use; at least one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PublicIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// Which tunnel backend a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Vxlan,
    #[serde(rename = "wireguard")]
    WireGuard,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::WireGuard => "wireguard",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "wireguard" => Ok(Backend::WireGuard),
            other => Err(format!(
                "unknown backend {other:?}; expected \"vxlan\" or \"wireguard\""
            )),
        }
    }
}

/// What a node publishes for its backend.
///
/// VXLAN runs one device per pod family (`weft.vxlan` with VNI 1 for IPv4 pods, `weft-v6.vxlan` with
/// VNI 2 for IPv6 pods); the VNIs are fixed by that convention and are not published, so a peer
/// cannot make a node program a foreign VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendData {
    Vxlan {
        /// MAC of the node's `weft.vxlan` device; set when the node has an IPv4 pod CIDR.
        vtep_mac: Option<MacAddr>,
        /// MAC of the node's `weft-v6.vxlan` device; set when the node has an IPv6 pod CIDR.
        vtep_mac_v6: Option<MacAddr>,
    },
    WireGuard {
        public_key: WgPublicKey,
        port: u16,
    },
}

impl BackendData {
    pub fn backend(&self) -> Backend {
        match self {
            BackendData::Vxlan { .. } => Backend::Vxlan,
            BackendData::WireGuard { .. } => Backend::WireGuard,
        }
    }
}

/// FNV-1a, 64 bit: a small hash that is stable across Rust releases and machines, for names and
/// addresses derived from identities (VTEP MACs, host veth names).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast MAC derived from `seed`: stable across restarts, so peers'
    /// FDB and neighbour entries stay valid when a node's VXLAN device is re-created.
    pub fn stable_local(seed: &str) -> MacAddr {
        let b = stable_hash(seed.as_bytes()).to_be_bytes();
        MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err("a MAC address is six hex pairs separated by ':'".into());
        }
        let mut bytes = [0u8; 6];
        for (slot, part) in bytes.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err("a MAC address is six hex pairs separated by ':'".into());
            }
            *slot =
                u8::from_str_radix(part, 16).map_err(|_| format!("{part:?} is not a hex byte"))?;
        }
        if bytes == [0; 6] {
            return Err("the all-zero MAC is not a device address".into());
        }
        if bytes[0] & 1 == 1 {
            return Err("a multicast MAC is not a device address".into());
        }
        Ok(MacAddr(bytes))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// A WireGuard (Curve25519) public key; text form is standard base64 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgPublicKey(pub [u8; 32]);

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl FromStr for WgPublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("not base64: {e}"))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("decodes to {} bytes; a key is 32", bytes.len()))?;
        Ok(WgPublicKey(key))
    }
}

impl TryFrom<String> for WgPublicKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WgPublicKey> for String {
    fn from(k: WgPublicKey) -> String {
        k.to_string()
    }
}

/// A node's lease as every part of weft sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub node: NodeName,
    pub pod_cidrs: PodCidrs,
    pub public_ips: PublicIps,
    pub backend: BackendData,
    /// Unix time (seconds) after which the lease is void, for stores that expire leases themselves
    /// (the file store); `None` where the store enforces expiry (an etcd lease, a Node object).
    pub expires: Option<u64>,
    /// The identity of the machine holding the lease (`weft.dev/machine-id`): a second machine
    /// started with the same node name is refused while this lease lives. `None` in records
    /// from before it was published.
    pub machine: Option<String>,
}

/// The wire form every store keeps for a node: the node's name, its pod CIDRs (as a Node's
/// `spec.podCIDRs`) and its `weft.dev/` annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dual-stack VXLAN lease, shared with the record codec's tests.
    pub(crate) fn lease() -> Lease {
        Lease {
            node: NodeName::new("node-a").unwrap(),
            pod_cidrs: PodCidrs {
                v4: Some("10.244.1.0/24".parse().unwrap()),
                v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            },
            public_ips: PublicIps {
                v4: Some("192.0.2.10".parse().unwrap()),
                v6: None,
            },
            backend: BackendData::Vxlan {
                vtep_mac: Some(MacAddr::stable_local("node-a/v4")),
                vtep_mac_v6: Some(MacAddr::stable_local("node-a/v6")),
            },
            expires: Some(1_800_000_000),
            machine: None,
        }
    }

    #[test]
    fn stable_mac_is_local_unicast_and_stable() {
        let a = MacAddr::stable_local("node-a/v4");
        assert_eq!(a, MacAddr::stable_local("node-a/v4"));
        assert_ne!(a, MacAddr::stable_local("node-b/v4"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }

    #[test]
    fn pod_cidrs_display() {
        assert_eq!(
            lease().pod_cidrs.to_string(),
            "10.244.1.0/24,fd00:10:244:1::/64"
        );
        assert_eq!(PodCidrs::default().to_string(), "(none)");
    }
}
