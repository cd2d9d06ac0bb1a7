//! The `weft.dev/` node annotations: every key in one place, and a strict codec.
//!
//! Annotations are hostile input: any agent that can write its own Node object can write any value
//! here. Decoding never panics and never turns a bad value into "absent": a value that fails to parse
//! is an [`AnnotationError`] naming the key, the value and the reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::lease::{Backend, BackendData, MacAddr, PodCidrs, PublicIps, WgPublicKey};

pub const PREFIX: &str = "weft.dev/";
pub const BACKEND: &str = "weft.dev/backend";
pub const PUBLIC_IP: &str = "weft.dev/public-ip";
pub const PUBLIC_IPV6: &str = "weft.dev/public-ipv6";
/// Set by an operator, never by weft: the underlay address to use instead of the detected one.
pub const PUBLIC_IP_OVERWRITE: &str = "weft.dev/public-ip-overwrite";
pub const VTEP_MAC: &str = "weft.dev/vtep-mac";
pub const VTEP_MAC_V6: &str = "weft.dev/vtep-mac-v6";
pub const WIREGUARD_PUBLIC_KEY: &str = "weft.dev/wireguard-public-key";
/// The identity of the machine holding the node's lease (`STATE_DIR/machine-id`), so a second
/// machine started with the same node name is refused instead of sharing the lease.
pub const MACHINE_ID: &str = "weft.dev/machine-id";
pub const WIREGUARD_PORT: &str = "weft.dev/wireguard-port";

/// Longest value accepted for any weft annotation (the longest legitimate one, an IPv6 address, is 45).
pub const VALUE_MAX: usize = 128;

/// A bad annotation: which key, what value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={}: {reason}", shown(value))]
pub struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// The value as it appears in an error: quoted, and cut short when oversized.
fn shown(value: &str) -> String {
    if value.len() > 64 {
        let cut: String = value.chars().take(64).collect();
        format!("{cut:?}… ({} bytes)", value.len())
    } else {
        format!("{value:?}")
    }
}

fn error(key: &str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The annotations a node publishes for its underlay addresses and backend.
pub fn encode(public_ips: &PublicIps, backend: &BackendData) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(BACKEND.to_string(), backend.backend().as_str().to_string());
    if let Some(ip) = public_ips.v4 {
        out.insert(PUBLIC_IP.to_string(), ip.to_string());
    }
    if let Some(ip) = public_ips.v6 {
        out.insert(PUBLIC_IPV6.to_string(), ip.to_string());
    }
    match backend {
        BackendData::Vxlan {
            vtep_mac,
            vtep_mac_v6,
        } => {
            if let Some(mac) = vtep_mac {
                out.insert(VTEP_MAC.to_string(), mac.to_string());
            }
            if let Some(mac) = vtep_mac_v6 {
                out.insert(VTEP_MAC_V6.to_string(), mac.to_string());
            }
        }
        BackendData::WireGuard { public_key, port } => {
            out.insert(WIREGUARD_PUBLIC_KEY.to_string(), public_key.to_string());
            out.insert(WIREGUARD_PORT.to_string(), port.to_string());
        }
    }
    out
}

/// Decode a node's annotations, given the pod CIDRs it holds (they decide which VTEP MACs it needs).
/// Keys outside `weft.dev/` and unknown `weft.dev/` keys are ignored; every known key is checked.
pub fn decode(
    annotations: &BTreeMap<String, String>,
    pod_cidrs: &PodCidrs,
) -> Result<(PublicIps, BackendData), AnnotationError> {
    for (key, value) in annotations.range(PREFIX.to_string()..) {
        if !key.starts_with(PREFIX) {
            break;
        }
        if value.len() > VALUE_MAX {
            return Err(error(
                key,
                value,
                format!(
                    "value is {} bytes; at most {VALUE_MAX} are allowed",
                    value.len()
                ),
            ));
        }
    }
    let public_ips = decode_public_ips(annotations)?;
    let backend = decode_backend(annotations, pod_cidrs)?;
    Ok((public_ips, backend))
}

/// The operator's `weft.dev/public-ip-overwrite`, if set: an address of either family.
pub fn public_ip_overwrite(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<IpAddr>, AnnotationError> {
    annotations
        .get(PUBLIC_IP_OVERWRITE)
        .map(|value| parse_underlay_ip(PUBLIC_IP_OVERWRITE, value))
        .transpose()
}

fn decode_public_ips(annotations: &BTreeMap<String, String>) -> Result<PublicIps, AnnotationError> {
    let v4 = match annotations.get(PUBLIC_IP) {
        None => None,
        Some(value) => match parse_underlay_ip(PUBLIC_IP, value)? {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => return Err(error(PUBLIC_IP, value, "an IPv6 address; expected IPv4")),
        },
    };
    let v6 = match annotations.get(PUBLIC_IPV6) {
        None => None,
        Some(value) => match parse_underlay_ip(PUBLIC_IPV6, value)? {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => {
                return Err(error(PUBLIC_IPV6, value, "an IPv4 address; expected IPv6"))
            }
        },
    };
    if v4.is_none() && v6.is_none() {
        return Err(error(
            PUBLIC_IP,
            "",
            "missing: a node publishes at least one underlay address",
        ));
    }
    Ok(PublicIps { v4, v6 })
}

fn parse_underlay_ip(key: &str, value: &str) -> Result<IpAddr, AnnotationError> {
    if value.is_empty() {
        return Err(error(key, value, "empty"));
    }
    let ip: IpAddr = value
        .parse()
        .map_err(|_| error(key, value, "not an IP address"))?;
    let unusable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST,
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6 == Ipv6Addr::LOCALHOST,
    };
    if unusable {
        return Err(error(
            key,
            value,
            "not a unicast address a tunnel can reach",
        ));
    }
    Ok(ip)
}

fn required<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
    why: &str,
) -> Result<&'a str, AnnotationError> {
    annotations
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| error(key, "", format!("missing: {why}")))
}

fn decode_backend(
    annotations: &BTreeMap<String, String>,
    pod_cidrs: &PodCidrs,
) -> Result<BackendData, AnnotationError> {
    let value = required(annotations, BACKEND, "every weft node names its backend")?;
    let backend: Backend = value
        .parse()
        .map_err(|reason: String| error(BACKEND, value, reason))?;
    match backend {
        Backend::Vxlan => Ok(BackendData::Vxlan {
            vtep_mac: vtep_mac(annotations, VTEP_MAC, pod_cidrs.v4.is_some(), "IPv4")?,
            vtep_mac_v6: vtep_mac(annotations, VTEP_MAC_V6, pod_cidrs.v6.is_some(), "IPv6")?,
        }),
        Backend::WireGuard => {
            let key = required(
                annotations,
                WIREGUARD_PUBLIC_KEY,
                "the wireguard backend needs a key",
            )?;
            let public_key: WgPublicKey = key
                .parse()
                .map_err(|reason: String| error(WIREGUARD_PUBLIC_KEY, key, reason))?;
            let port_text = required(
                annotations,
                WIREGUARD_PORT,
                "the wireguard backend needs a port",
            )?;
            let port = match port_text.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(error(WIREGUARD_PORT, port_text, "not a UDP port (1-65535)"))
                }
                Ok(port) => port,
            };
            Ok(BackendData::WireGuard { public_key, port })
        }
    }
}

/// A VTEP MAC is required exactly when the node has a pod CIDR of that family.
fn vtep_mac(
    annotations: &BTreeMap<String, String>,
    key: &str,
    family_in_use: bool,
    family: &str,
) -> Result<Option<MacAddr>, AnnotationError> {
    match annotations.get(key) {
        None if family_in_use => Err(error(
            key,
            "",
            format!("missing: the node has an {family} pod CIDR"),
        )),
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|reason: String| error(key, value, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual_stack() -> PodCidrs {
        PodCidrs {
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: Some("fd00:10:244:1::/64".parse().unwrap()),
        }
    }

    fn vxlan_annotations() -> BTreeMap<String, String> {
        [
            (BACKEND, "vxlan"),
            (PUBLIC_IP, "192.0.2.10"),
            (PUBLIC_IPV6, "2001:db8::10"),
            (VTEP_MAC, "02:11:22:33:44:55"),
            (VTEP_MAC_V6, "02:11:22:33:44:66"),
            ("kubernetes.io/hostname", "node-a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn wireguard_annotations() -> BTreeMap<String, String> {
        [
            (BACKEND, "wireguard"),
            (PUBLIC_IP, "192.0.2.10"),
            (
                WIREGUARD_PUBLIC_KEY,
                "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            ),
            (WIREGUARD_PORT, "51820"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn good_values_round_trip() {
        for annotations in [vxlan_annotations(), wireguard_annotations()] {
            let (ips, backend) = decode(&annotations, &dual_stack()).unwrap();
            let mut expected = annotations.clone();
            expected.remove("kubernetes.io/hostname");
            assert_eq!(encode(&ips, &backend), expected);
        }
    }

    #[test]
    fn single_stack_needs_only_its_mac() {
        let mut annotations = vxlan_annotations();
        annotations.remove(VTEP_MAC_V6);
        let v4_only = PodCidrs {
            v4: dual_stack().v4,
            v6: None,
        };
        let (_, backend) = decode(&annotations, &v4_only).unwrap();
        assert!(matches!(
            backend,
            BackendData::Vxlan {
                vtep_mac_v6: None,
                ..
            }
        ));
    }

    /// Each case: key, bad value (None removes the key), words the reason must contain.
    #[test]
    fn malformed_values_are_errors_naming_key_and_value() {
        let oversized = "1".repeat(VALUE_MAX + 1);
        let vx: &[(&str, Option<&str>, &str)] = &[
            (BACKEND, Some("geneve"), "unknown backend"),
            (BACKEND, Some(""), "unknown backend"),
            (BACKEND, None, "missing"),
            (PUBLIC_IP, Some("192.0.2.300"), "not an IP"),
            (PUBLIC_IP, Some("2001:db8::1"), "expected IPv4"),
            (PUBLIC_IP, Some(""), "empty"),
            (PUBLIC_IP, Some("0.0.0.0"), "unicast"),
            (PUBLIC_IP, Some("224.0.0.1"), "unicast"),
            (PUBLIC_IP, Some(" 192.0.2.1"), "not an IP"),
            (PUBLIC_IP, Some(&oversized), "at most 128"),
            (PUBLIC_IPV6, Some("192.0.2.1"), "expected IPv6"),
            (PUBLIC_IPV6, Some("2001:db8::g"), "not an IP"),
            (PUBLIC_IPV6, Some("ff02::1"), "unicast"),
            (VTEP_MAC, Some("02:11:22:33:44"), "six hex pairs"),
            (VTEP_MAC, Some("02:11:22:33:44:zz"), "hex byte"),
            (VTEP_MAC, Some("01:00:5e:00:00:01"), "multicast"),
            (VTEP_MAC, Some("00:00:00:00:00:00"), "all-zero"),
            (VTEP_MAC, Some(""), "six hex pairs"),
            (VTEP_MAC, None, "IPv4 pod CIDR"),
            (VTEP_MAC_V6, Some("0211:2233:4455"), "six hex pairs"),
            (VTEP_MAC_V6, None, "IPv6 pod CIDR"),
        ];
        let wg: &[(&str, Option<&str>, &str)] = &[
            (WIREGUARD_PUBLIC_KEY, Some("not base64!"), "not base64"),
            (WIREGUARD_PUBLIC_KEY, Some("AAAA"), "decodes to 3 bytes"),
            (WIREGUARD_PUBLIC_KEY, Some(""), "decodes to 0 bytes"),
            (WIREGUARD_PUBLIC_KEY, None, "missing"),
            (WIREGUARD_PORT, Some("0"), "UDP port"),
            (WIREGUARD_PORT, Some("65536"), "UDP port"),
            (WIREGUARD_PORT, Some("-1"), "UDP port"),
            (WIREGUARD_PORT, Some(""), "UDP port"),
            (WIREGUARD_PORT, None, "missing"),
        ];
        let runs = [(vxlan_annotations(), vx), (wireguard_annotations(), wg)];
        for (base, cases) in runs {
            for (key, value, reason) in cases {
                let mut annotations = base.clone();
                match value {
                    Some(v) => annotations.insert(key.to_string(), v.to_string()),
                    None => annotations.remove(*key),
                };
                let err = decode(&annotations, &dual_stack()).unwrap_err();
                assert_eq!(err.key, *key, "case {key}={value:?}: {err}");
                assert_eq!(err.value, value.unwrap_or(""), "case {key}={value:?}");
                let text = err.to_string();
                assert!(text.contains(key), "{text} should name the key");
                assert!(text.contains(reason), "case {key}={value:?}: {text}");
            }
        }
    }

    #[test]
    fn no_underlay_address_is_an_error() {
        let mut annotations = vxlan_annotations();
        annotations.remove(PUBLIC_IP);
        annotations.remove(PUBLIC_IPV6);
        let err = decode(&annotations, &dual_stack()).unwrap_err();
        assert!(
            err.reason.contains("at least one underlay address"),
            "{err}"
        );
    }

    #[test]
    fn oversized_value_is_cut_in_the_message() {
        let mut annotations = vxlan_annotations();
        annotations.insert(VTEP_MAC.into(), "a".repeat(10_000));
        let text = decode(&annotations, &dual_stack()).unwrap_err().to_string();
        assert!(
            text.len() < 300,
            "message should stay short: {} bytes",
            text.len()
        );
        assert!(text.contains("10000 bytes"), "{text}");
    }

    #[test]
    fn overwrite_is_either_family_and_checked() {
        let mut annotations = BTreeMap::new();
        assert_eq!(public_ip_overwrite(&annotations).unwrap(), None);
        annotations.insert(PUBLIC_IP_OVERWRITE.to_string(), "2001:db8::7".to_string());
        assert_eq!(
            public_ip_overwrite(&annotations).unwrap(),
            Some("2001:db8::7".parse().unwrap())
        );
        annotations.insert(PUBLIC_IP_OVERWRITE.to_string(), "nope".to_string());
        assert_eq!(
            public_ip_overwrite(&annotations).unwrap_err().key,
            PUBLIC_IP_OVERWRITE
        );
    }

    /// Hostile input never panics: arbitrary byte soup in every key.
    #[test]
    fn arbitrary_values_never_panic() {
        let keys = [
            BACKEND,
            PUBLIC_IP,
            PUBLIC_IPV6,
            VTEP_MAC,
            VTEP_MAC_V6,
            WIREGUARD_PUBLIC_KEY,
            WIREGUARD_PORT,
        ];
        let mut seed: u64 = 0x5eed;
        for _ in 0..2000 {
            let mut annotations = vxlan_annotations();
            for key in keys {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = (seed >> 58) as usize;
                let value: String = (0..len)
                    .map(|i| char::from_u32(((seed >> (i % 50)) as u32 % 0x2FF) + 1).unwrap_or('?'))
                    .collect();
                annotations.insert(key.to_string(), value);
            }
            let _ = decode(&annotations, &dual_stack());
        }
    }
}
