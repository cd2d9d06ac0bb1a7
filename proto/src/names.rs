//! Validated names: Linux interface names and Kubernetes node names.
//!
//! A name that reaches netlink or a store key has been checked here first, so a bad one is a typed
//! error at the boundary rather than an `EINVAL` (or a wrong key) deep inside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest interface name the kernel accepts (IFNAMSIZ is 16, including the NUL).
pub const IFNAME_MAX: usize = 15;

/// Longest Kubernetes node name (a DNS-1123 subdomain).
pub const NODE_NAME_MAX: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("interface name {0:?} is empty")]
    IfNameEmpty(String),
    #[error("interface name {name:?} is {len} bytes; at most {IFNAME_MAX} are allowed")]
    IfNameTooLong { name: String, len: usize },
    #[error("interface name {0:?} contains '/', ':', whitespace or a control character, or is '.' or '..'")]
    IfNameInvalid(String),
    #[error("node name {0:?} is empty")]
    NodeNameEmpty(String),
    #[error("node name {name:?} is {len} bytes; at most {NODE_NAME_MAX} are allowed")]
    NodeNameTooLong { name: String, len: usize },
    #[error("node name {0:?} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)")]
    NodeNameInvalid(String),
}

/// A Linux network interface name, as `dev_valid_name()` in the kernel checks it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::IfNameEmpty(name));
        }
        if name.len() > IFNAME_MAX {
            let len = name.len();
            return Err(NameError::IfNameTooLong { name, len });
        }
        let bad_char = name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if bad_char || name == "." || name == ".." {
            return Err(NameError::IfNameInvalid(name));
        }
        Ok(IfName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        IfName::new(s)
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes node name: a DNS-1123 subdomain. Used as a store key, so it must never contain '/'.
///
/// Shared, not copied: weftd keeps a peer's name in its peer set, planner, claim index, plan and
/// prober, and a clone only counts a reference instead of allocating a copy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(std::sync::Arc<str>);

impl NodeName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::NodeNameEmpty(name));
        }
        if name.len() > NODE_NAME_MAX {
            let len = name.len();
            return Err(NameError::NodeNameTooLong { name, len });
        }
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let labels_ok = name.split('.').all(|label| {
            !label.is_empty() && edge_ok(label.chars().next()) && edge_ok(label.chars().last())
        });
        if !name.chars().all(allowed) || !labels_ok {
            return Err(NameError::NodeNameInvalid(name));
        }
        Ok(NodeName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeName::new(s)
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeName::new(s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0.to_string()
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in [
            "eth0",
            "weft.vxlan",
            "weft-v6.vxlan",
            "wefta1b2c3d4e5f",
            "a",
        ] {
            assert!(IfName::new(good).is_ok(), "{good} should be valid");
        }
        type Check = fn(&NameError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, NameError::IfNameEmpty(_))),
            ("weft-0123456789ab", |e| {
                matches!(e, NameError::IfNameTooLong { len: 17, .. })
            }),
            ("eth/0", |e| matches!(e, NameError::IfNameInvalid(_))),
            ("eth:0", |e| matches!(e, NameError::IfNameInvalid(_))),
            ("eth 0", |e| matches!(e, NameError::IfNameInvalid(_))),
            ("eth\n", |e| matches!(e, NameError::IfNameInvalid(_))),
            (".", |e| matches!(e, NameError::IfNameInvalid(_))),
            ("..", |e| matches!(e, NameError::IfNameInvalid(_))),
        ];
        for (bad, check) in cases {
            let err = IfName::new(*bad).unwrap_err();
            assert!(check(&err), "{bad:?} gave {err:?}");
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{err} should name the value"
            );
        }
    }

    #[test]
    fn node_names() {
        for good in ["node-1", "a", "k8s-worker.example.com", "0abc"] {
            assert!(NodeName::new(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "",
            "Node1",
            "node_1",
            "-node",
            "node-",
            "a..b",
            "a/b",
            "../etc",
            &"n".repeat(254),
        ] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: IfName = serde_json::from_str("\"eth0\"").unwrap();
        assert_eq!(ok.as_str(), "eth0");
        assert!(serde_json::from_str::<IfName>("\"much-too-long-name\"").is_err());
        assert!(serde_json::from_str::<NodeName>("\"Bad\"").is_err());
    }
}
