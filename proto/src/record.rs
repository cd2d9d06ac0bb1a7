//! The store record codec: a [`Lease`] to and from the [`NodeRecord`] every store keeps (pod CIDRs
//! as a Node's `spec.podCIDRs`, everything else as `weft.dev/` annotations).
//!
//! [`Lease`] and [`NodeRecord`] are plain types in [`crate::lease`]; the annotation codec is
//! [`crate::annotations`]; this module joins the two, so neither of them needs the other's module.

use ipnet::IpNet;

use crate::annotations::{self, AnnotationError};
use crate::lease::{Lease, NodeRecord, PodCidrs};
use crate::names::{NameError, NodeName};

/// A store record that does not decode to a lease: the node, the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("node name: {0}")]
    Name(#[from] NameError),
    #[error("node {node}: pod CIDR {value:?}: {reason}")]
    PodCidr {
        node: String,
        value: String,
        reason: String,
    },
    #[error("node {node}: {source}")]
    Annotation {
        node: String,
        #[source]
        source: AnnotationError,
    },
}

impl Lease {
    /// Encode for a store: pod CIDRs plus annotations.
    pub fn to_record(&self) -> NodeRecord {
        NodeRecord {
            name: self.node.to_string(),
            pod_cidrs: self.pod_cidrs.iter().map(|n| n.to_string()).collect(),
            annotations: self.annotations(),
            expires: self.expires,
        }
    }

    /// The `weft.dev/` annotations of this lease: [`annotations::encode`] and the machine id.
    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let mut annotations = annotations::encode(&self.public_ips, &self.backend);
        if let Some(machine) = &self.machine {
            annotations.insert(annotations::MACHINE_ID.to_string(), machine.clone());
        }
        annotations
    }

    /// Decode a store record strictly: every problem is an error naming the field and the value.
    pub fn from_record(record: &NodeRecord) -> Result<Lease, RecordError> {
        let node = NodeName::new(record.name.clone())?;
        let pod_cidrs = parse_pod_cidrs(&record.name, &record.pod_cidrs)?;
        let (public_ips, backend) =
            annotations::decode(&record.annotations, &pod_cidrs).map_err(|source| {
                RecordError::Annotation {
                    node: record.name.clone(),
                    source,
                }
            })?;
        Ok(Lease {
            node,
            pod_cidrs,
            public_ips,
            backend,
            expires: record.expires,
            machine: record.annotations.get(annotations::MACHINE_ID).cloned(),
        })
    }
}

fn parse_pod_cidrs(node: &str, values: &[String]) -> Result<PodCidrs, RecordError> {
    let err = |value: &str, reason: &str| RecordError::PodCidr {
        node: node.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut cidrs = PodCidrs::default();
    for value in values {
        let net: IpNet = value.parse().map_err(|_| err(value, "not a CIDR"))?;
        if net != net.trunc() {
            return Err(err(value, "host bits are set"));
        }
        match net {
            IpNet::V4(n) if cidrs.v4.is_none() => cidrs.v4 = Some(n),
            IpNet::V6(n) if cidrs.v6.is_none() => cidrs.v6 = Some(n),
            _ => return Err(err(value, "a second CIDR of the same family")),
        }
    }
    if cidrs.is_empty() {
        return Err(err("", "the node has no pod CIDR"));
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::tests::lease;

    #[test]
    fn record_round_trip() {
        let original = lease();
        let record = original.to_record();
        assert_eq!(
            record.pod_cidrs,
            vec!["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        let json = serde_json::to_string(&record).unwrap();
        let back: NodeRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(Lease::from_record(&back).unwrap(), original);
    }

    #[test]
    fn record_rejects_bad_pod_cidrs() {
        let cases = [
            (vec!["10.244.1.0/33"], "not a CIDR"),
            (vec!["10.244.1.1/24"], "host bits"),
            (vec!["10.244.1.0/24", "10.244.2.0/24"], "second CIDR"),
            (vec![], "no pod CIDR"),
        ];
        for (cidrs, reason) in cases {
            let mut record = lease().to_record();
            record.pod_cidrs = cidrs.iter().map(|s| s.to_string()).collect();
            let err = Lease::from_record(&record).unwrap_err().to_string();
            assert!(err.contains(reason), "{cidrs:?}: {err}");
            assert!(err.contains("node-a"), "{err} should name the node");
        }
    }

    #[test]
    fn record_rejects_unknown_fields_and_bad_names() {
        let json = r#"{"name":"node-a","podCIDRs":[],"annotations":{},"extra":1}"#;
        assert!(serde_json::from_str::<NodeRecord>(json).is_err());
        let mut record = lease().to_record();
        record.name = "Node_A".into();
        assert!(matches!(
            Lease::from_record(&record),
            Err(RecordError::Name(_))
        ));
    }
}
