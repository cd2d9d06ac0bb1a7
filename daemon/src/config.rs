//! weftd's configuration: flags, environment variables and an optional TOML file.
//!
//! Every setting is read as text into [`RawSettings`] (from clap for flags and `WEFT_*` variables,
//! from serde for the file), the two are merged (flag or variable wins over the file), and
//! [`RawSettings::validate`] turns the result into a typed [`Config`]. One validator for all three
//! sources means one error format: `invalid setting --NAME (file key NAME): VALUE: why`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use weft_proto::lease::Backend;
use weft_proto::names::{IfName, NodeName};

use crate::subnet::SubnetPool;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting --{setting}: {value:?}: {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: String,
    },
    #[error("missing setting --{setting}: {reason}")]
    Missing {
        setting: &'static str,
        reason: &'static str,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn invalid(setting: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The settings as text, before validation. Flags are `--kebab-case`, variables `WEFT_SNAKE_CASE`,
/// file keys `kebab-case`.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawSettings {
    /// This node's name (a DNS-1123 subdomain); defaults to the host name.
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Cluster pod CIDRs, comma-separated: one IPv4, one IPv6, or both.
    #[arg(long, env = "WEFT_CLUSTER_CIDR")]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's IPv4 pod CIDR [default: 24].
    #[arg(long, env = "WEFT_NODE_PREFIX_V4")]
    pub node_prefix_v4: Option<String>,
    /// Prefix length of each node's IPv6 pod CIDR [default: 64].
    #[arg(long, env = "WEFT_NODE_PREFIX_V6")]
    pub node_prefix_v6: Option<String>,
    /// Service CIDRs, comma-separated; a peer claiming pod CIDRs inside them is refused.
    #[arg(long, env = "WEFT_SERVICE_CIDR")]
    pub service_cidr: Option<String>,
    /// Tunnel backend: vxlan or wireguard [default: vxlan].
    #[arg(long, env = "WEFT_BACKEND")]
    pub backend: Option<String>,
    /// Lease store: file, etcd or kube [default: file].
    #[arg(long, env = "WEFT_STORE")]
    pub store: Option<String>,
    /// Directory of the single-host file store, shared by the daemons of one host
    /// [default: /var/lib/weft/store].
    #[arg(long, env = "WEFT_STORE_DIR")]
    pub store_dir: Option<String>,
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379].
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// Key prefix in etcd [default: /weft].
    #[arg(long, env = "WEFT_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Lease time-to-live in seconds; a node silent for this long loses its lease [default: 60].
    #[arg(long, env = "WEFT_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Persistent state directory [default: /var/lib/weft].
    #[arg(long, env = "WEFT_STATE_DIR")]
    pub state_dir: Option<String>,
    /// Runtime directory for sockets [default: /run/weft].
    #[arg(long, env = "WEFT_RUN_DIR")]
    pub run_dir: Option<String>,
    /// The node's underlay address(es), comma-separated; overrides interface detection.
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<String>,
    /// Use this interface's address as the underlay address.
    #[arg(long, env = "WEFT_IFACE")]
    pub iface: Option<String>,
    /// Use the first interface whose name matches this regular expression.
    #[arg(long, env = "WEFT_IFACE_REGEX")]
    pub iface_regex: Option<String>,
    /// Use the interface that routes to this address (comma-separated, one per family).
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<String>,
    /// MTU of the overlay devices; derived from the underlay interface when unset.
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<String>,
    /// Give the lease back when the daemon exits (otherwise it is kept for a restart).
    #[arg(long, env = "WEFT_RELEASE_ON_EXIT")]
    pub release_on_exit: Option<String>,
    /// `kernel` programs tunnels, routes and pods; `none` only keeps the lease and follows peers
    /// (for store debugging and the lease tests) [default: kernel].
    #[arg(long, env = "WEFT_DATAPATH")]
    pub datapath: Option<String>,
}

impl RawSettings {
    /// Fill every unset field from `file`.
    pub fn or(self, file: RawSettings) -> RawSettings {
        RawSettings {
            node_name: self.node_name.or(file.node_name),
            cluster_cidr: self.cluster_cidr.or(file.cluster_cidr),
            node_prefix_v4: self.node_prefix_v4.or(file.node_prefix_v4),
            node_prefix_v6: self.node_prefix_v6.or(file.node_prefix_v6),
            service_cidr: self.service_cidr.or(file.service_cidr),
            backend: self.backend.or(file.backend),
            store: self.store.or(file.store),
            store_dir: self.store_dir.or(file.store_dir),
            etcd_endpoints: self.etcd_endpoints.or(file.etcd_endpoints),
            etcd_prefix: self.etcd_prefix.or(file.etcd_prefix),
            lease_ttl: self.lease_ttl.or(file.lease_ttl),
            state_dir: self.state_dir.or(file.state_dir),
            run_dir: self.run_dir.or(file.run_dir),
            public_ip: self.public_ip.or(file.public_ip),
            iface: self.iface.or(file.iface),
            iface_regex: self.iface_regex.or(file.iface_regex),
            iface_can_reach: self.iface_can_reach.or(file.iface_can_reach),
            mtu: self.mtu.or(file.mtu),
            release_on_exit: self.release_on_exit.or(file.release_on_exit),
            datapath: self.datapath.or(file.datapath),
        }
    }

    /// Read a TOML file of settings; its values are strings, numbers or booleans.
    pub fn from_file(path: &Path) -> Result<RawSettings, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(e.message().to_string()))?;
        // Numbers and booleans are accepted and read as their text, like flags.
        let as_text: toml::Table = table
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => return Err(file_error(format!("key {k}: unsupported value {other}"))),
                };
                Ok((k, toml::Value::String(text)))
            })
            .collect::<Result<_, _>>()?;
        as_text
            .try_into()
            .map_err(|e: toml::de::Error| file_error(e.message().to_string()))
    }

    pub fn validate(&self) -> Result<Config, ConfigError> {
        let node_name = match &self.node_name {
            Some(name) => NodeName::new(name.clone())
                .map_err(|e| invalid("node-name", name, e.to_string()))?,
            None => default_node_name()?,
        };
        let (cluster_v4, cluster_v6) = parse_cluster_cidrs(self.cluster_cidr.as_deref())?;
        let prefix_v4 = parse_prefix("node-prefix-v4", self.node_prefix_v4.as_deref(), 24, 32)?;
        let prefix_v6 = parse_prefix("node-prefix-v6", self.node_prefix_v6.as_deref(), 64, 128)?;
        let pool_v4 = cluster_v4
            .map(|c| SubnetPool::new(IpNet::V4(c), prefix_v4))
            .transpose()
            .map_err(|e| invalid("node-prefix-v4", &prefix_v4.to_string(), e.to_string()))?;
        let pool_v6 = cluster_v6
            .map(|c| SubnetPool::new(IpNet::V6(c), prefix_v6))
            .transpose()
            .map_err(|e| invalid("node-prefix-v6", &prefix_v6.to_string(), e.to_string()))?;
        let service_cidrs = match &self.service_cidr {
            None => Vec::new(),
            Some(text) => split_list(text)
                .map(|item| {
                    item.parse::<IpNet>()
                        .map_err(|_| invalid("service-cidr", item, "not a CIDR"))
                })
                .collect::<Result<_, _>>()?,
        };
        let backend = match &self.backend {
            None => Backend::Vxlan,
            Some(text) => text
                .parse()
                .map_err(|reason: String| invalid("backend", text, reason))?,
        };
        if backend == Backend::WireGuard {
            return Err(invalid(
                "backend",
                "wireguard",
                "the WireGuard backend is not built yet; use vxlan (traffic is not encrypted)",
            ));
        }
        let store = self.parse_store()?;
        let lease_ttl = match &self.lease_ttl {
            None => Duration::from_secs(60),
            Some(text) => match text.parse::<u64>() {
                Ok(secs @ 2..=86_400) => Duration::from_secs(secs),
                _ => return Err(invalid("lease-ttl", text, "seconds between 2 and 86400")),
            },
        };
        let underlay = self.parse_underlay()?;
        let mtu = match &self.mtu {
            None => None,
            Some(text) => match text.parse::<u32>() {
                Ok(mtu @ 1280..=65535) => Some(mtu),
                _ => return Err(invalid("mtu", text, "an MTU between 1280 and 65535")),
            },
        };
        let release_on_exit = match self.release_on_exit.as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(other) => return Err(invalid("release-on-exit", other, "expected true or false")),
        };
        let datapath = match self.datapath.as_deref() {
            None | Some("kernel") => DatapathMode::Kernel,
            Some("none") => DatapathMode::None,
            Some(other) => return Err(invalid("datapath", other, "expected kernel or none")),
        };
        Ok(Config {
            datapath,
            node_name,
            pool_v4,
            pool_v6,
            service_cidrs,
            backend,
            store,
            lease_ttl,
            state_dir: path_or(&self.state_dir, "/var/lib/weft"),
            run_dir: path_or(&self.run_dir, "/run/weft"),
            underlay,
            mtu,
            release_on_exit,
        })
    }

    fn parse_store(&self) -> Result<StoreConfig, ConfigError> {
        match self.store.as_deref().unwrap_or("file") {
            "file" => Ok(StoreConfig::File {
                dir: path_or(&self.store_dir, "/var/lib/weft/store"),
            }),
            "etcd" => {
                let text = self
                    .etcd_endpoints
                    .as_deref()
                    .unwrap_or("http://127.0.0.1:2379");
                let endpoints: Vec<String> = split_list(text).map(str::to_string).collect();
                for endpoint in &endpoints {
                    let scheme_ok =
                        endpoint.starts_with("http://") || endpoint.starts_with("https://");
                    if !scheme_ok || endpoint.len() < 10 {
                        return Err(invalid(
                            "etcd-endpoints",
                            endpoint,
                            "expected http://HOST:PORT or https://HOST:PORT",
                        ));
                    }
                }
                if endpoints.is_empty() {
                    return Err(invalid("etcd-endpoints", text, "no endpoint given"));
                }
                let prefix = self.etcd_prefix.clone().unwrap_or_else(|| "/weft".into());
                if !prefix.starts_with('/') || prefix.ends_with('/') {
                    return Err(invalid(
                        "etcd-prefix",
                        &prefix,
                        "must start with '/' and not end with '/'",
                    ));
                }
                Ok(StoreConfig::Etcd { endpoints, prefix })
            }
            "kube" => Err(invalid(
                "store",
                "kube",
                "the Kubernetes store is not built yet; use file or etcd",
            )),
            other => Err(invalid("store", other, "expected file, etcd or kube")),
        }
    }

    fn parse_underlay(&self) -> Result<UnderlaySelector, ConfigError> {
        let chosen = [
            self.public_ip.is_some(),
            self.iface.is_some(),
            self.iface_regex.is_some(),
            self.iface_can_reach.is_some(),
        ];
        if chosen.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                "public-ip",
                "",
                "set only one of --public-ip, --iface, --iface-regex, --iface-can-reach",
            ));
        }
        if let Some(text) = &self.public_ip {
            let ips = parse_ip_list("public-ip", text)?;
            return Ok(UnderlaySelector::Addresses(ips));
        }
        if let Some(name) = &self.iface {
            let name =
                IfName::new(name.clone()).map_err(|e| invalid("iface", name, e.to_string()))?;
            return Ok(UnderlaySelector::Interface(name));
        }
        if let Some(pattern) = &self.iface_regex {
            if pattern.is_empty() {
                return Err(invalid("iface-regex", pattern, "empty pattern"));
            }
            return Ok(UnderlaySelector::InterfacePattern(pattern.clone()));
        }
        if let Some(text) = &self.iface_can_reach {
            return Ok(UnderlaySelector::CanReach(parse_ip_list(
                "iface-can-reach",
                text,
            )?));
        }
        Ok(UnderlaySelector::DefaultRoute)
    }
}

/// How the node's underlay address is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlaySelector {
    /// Given explicitly (`--public-ip`), at most one per family.
    Addresses(Vec<IpAddr>),
    Interface(IfName),
    /// A regular expression over interface names (`--iface-regex`).
    InterfacePattern(String),
    /// The interface whose route reaches these addresses.
    CanReach(Vec<IpAddr>),
    /// The interface of the default route, per family.
    DefaultRoute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    File {
        dir: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// Whether weftd programs the node's datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathMode {
    Kernel,
    None,
}

/// The validated configuration of one `weftd`.
#[derive(Debug, Clone)]
pub struct Config {
    pub datapath: DatapathMode,
    pub node_name: NodeName,
    pub pool_v4: Option<SubnetPool>,
    pub pool_v6: Option<SubnetPool>,
    pub service_cidrs: Vec<IpNet>,
    pub backend: Backend,
    pub store: StoreConfig,
    pub lease_ttl: Duration,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub underlay: UnderlaySelector,
    pub mtu: Option<u32>,
    pub release_on_exit: bool,
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn path_or(value: &Option<String>, default: &str) -> PathBuf {
    PathBuf::from(value.as_deref().unwrap_or(default))
}

fn default_node_name() -> Result<NodeName, ConfigError> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .to_lowercase();
    NodeName::new(host.clone()).map_err(|e| {
        invalid(
            "node-name",
            &host,
            format!("the host name is not usable as a node name ({e}); set --node-name"),
        )
    })
}

fn parse_cluster_cidrs(
    text: Option<&str>,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), ConfigError> {
    let text = text.ok_or(ConfigError::Missing {
        setting: "cluster-cidr",
        reason: "give the cluster's pod CIDR(s), e.g. 10.244.0.0/16,fd00:10:244::/48",
    })?;
    let (mut v4, mut v6) = (None, None);
    for item in split_list(text) {
        let net: IpNet = item
            .parse()
            .map_err(|_| invalid("cluster-cidr", item, "not a CIDR"))?;
        if net.trunc() != net {
            return Err(invalid(
                "cluster-cidr",
                item,
                format!("host bits are set; did you mean {}?", net.trunc()),
            ));
        }
        match net {
            IpNet::V4(n) if v4.is_none() => v4 = Some(n),
            IpNet::V6(n) if v6.is_none() => v6 = Some(n),
            _ => return Err(invalid("cluster-cidr", text, "at most one CIDR per family")),
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(invalid("cluster-cidr", text, "no CIDR given"));
    }
    Ok((v4, v6))
}

fn parse_prefix(
    setting: &'static str,
    text: Option<&str>,
    default: u8,
    max: u8,
) -> Result<u8, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => match t.trim_start_matches('/').parse::<u8>() {
            Ok(len) if len <= max => Ok(len),
            _ => Err(invalid(
                setting,
                t,
                format!("a prefix length between 0 and {max}"),
            )),
        },
    }
}

fn parse_ip_list(setting: &'static str, text: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let ips: Vec<IpAddr> = split_list(text)
        .map(|item| {
            item.parse()
                .map_err(|_| invalid(setting, item, "not an IP address"))
        })
        .collect::<Result<_, _>>()?;
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    if ips.is_empty() || v4 > 1 || ips.len() - v4 > 1 {
        return Err(invalid(
            setting,
            text,
            "one or two addresses, at most one per family",
        ));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawSettings {
        RawSettings {
            node_name: Some("node-a".into()),
            cluster_cidr: Some("10.244.0.0/16,fd00:10:244::/48".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_what_operators_expect() {
        let config = base().validate().unwrap();
        assert_eq!(config.pool_v4.unwrap().prefix_len, 24);
        assert_eq!(config.pool_v6.unwrap().prefix_len, 64);
        assert_eq!(config.backend, Backend::Vxlan);
        assert_eq!(
            config.store,
            StoreConfig::File {
                dir: "/var/lib/weft/store".into()
            }
        );
        assert_eq!(config.lease_ttl, Duration::from_secs(60));
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/weft"));
        assert_eq!(config.underlay, UnderlaySelector::DefaultRoute);
        assert!(!config.release_on_exit);
    }

    #[test]
    fn single_stack_either_family() {
        let mut raw = base();
        raw.cluster_cidr = Some("10.244.0.0/16".into());
        let c = raw.validate().unwrap();
        assert!(c.pool_v4.is_some() && c.pool_v6.is_none());
        raw.cluster_cidr = Some("fd00:10:244::/48".into());
        let c = raw.validate().unwrap();
        assert!(c.pool_v4.is_none() && c.pool_v6.is_some());
    }

    /// Each bad value stops start-up with one line naming the setting, the value and why.
    #[test]
    fn bad_values_name_the_setting() {
        type Edit = fn(&mut RawSettings);
        let cases: &[(Edit, &str, &str)] = &[
            (
                |r| r.cluster_cidr = Some("10.244.0.0/33".into()),
                "--cluster-cidr",
                "not a CIDR",
            ),
            (
                |r| r.cluster_cidr = Some("10.244.1.0/16".into()),
                "--cluster-cidr",
                "host bits",
            ),
            (
                |r| r.cluster_cidr = Some("10.0.0.0/8,10.1.0.0/16".into()),
                "--cluster-cidr",
                "one CIDR per family",
            ),
            (
                |r| r.cluster_cidr = Some(" , ".into()),
                "--cluster-cidr",
                "no CIDR",
            ),
            (|r| r.cluster_cidr = None, "--cluster-cidr", "missing"),
            (
                |r| r.node_prefix_v4 = Some("33".into()),
                "--node-prefix-v4",
                "prefix length",
            ),
            (
                |r| r.node_prefix_v4 = Some("8".into()),
                "--node-prefix-v4",
                "does not fit",
            ),
            (
                |r| r.node_prefix_v6 = Some("abc".into()),
                "--node-prefix-v6",
                "prefix length",
            ),
            (
                |r| r.backend = Some("geneve".into()),
                "--backend",
                "unknown backend",
            ),
            (
                |r| r.backend = Some("wireguard".into()),
                "--backend",
                "not built yet",
            ),
            (
                |r| r.store = Some("consul".into()),
                "--store",
                "expected file, etcd or kube",
            ),
            (
                |r| {
                    r.store = Some("etcd".into());
                    r.etcd_endpoints = Some("127.0.0.1:2379".into())
                },
                "--etcd-endpoints",
                "http://",
            ),
            (
                |r| {
                    r.store = Some("etcd".into());
                    r.etcd_prefix = Some("weft".into())
                },
                "--etcd-prefix",
                "start with '/'",
            ),
            (
                |r| r.lease_ttl = Some("1".into()),
                "--lease-ttl",
                "between 2 and 86400",
            ),
            (
                |r| r.node_name = Some("Node_A".into()),
                "--node-name",
                "DNS-1123",
            ),
            (
                |r| r.public_ip = Some("192.0.2.1,192.0.2.2".into()),
                "--public-ip",
                "one per family",
            ),
            (
                |r| r.public_ip = Some("banana".into()),
                "--public-ip",
                "not an IP",
            ),
            (
                |r| r.iface = Some("much-too-long-interface".into()),
                "--iface",
                "at most 15",
            ),
            (
                |r| {
                    r.iface = Some("eth0".into());
                    r.public_ip = Some("192.0.2.1".into())
                },
                "--public-ip",
                "only one of",
            ),
            (|r| r.mtu = Some("9999999".into()), "--mtu", "between 1280"),
            (
                |r| r.release_on_exit = Some("maybe".into()),
                "--release-on-exit",
                "true or false",
            ),
            (
                |r| r.service_cidr = Some("10.96.0.0/12,x".into()),
                "--service-cidr",
                "not a CIDR",
            ),
            (
                |r| r.datapath = Some("ebpf".into()),
                "--datapath",
                "kernel or none",
            ),
        ];
        for (edit, setting, reason) in cases {
            let mut raw = base();
            edit(&mut raw);
            let err = raw.validate().unwrap_err().to_string();
            assert!(err.contains(setting), "{setting}: {err}");
            assert!(err.contains(reason), "{setting}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "backend = \"vxlan\"\nlease-ttl = 15\nnode-name = \"from-file\"\nrelease-on-exit = true\n").unwrap();
        let file = RawSettings::from_file(&path).unwrap();
        let config = base().or(file).validate().unwrap();
        assert_eq!(config.node_name.as_str(), "node-a", "flag wins");
        assert_eq!(config.backend, Backend::Vxlan);
        assert_eq!(config.lease_ttl, Duration::from_secs(15));
        assert!(config.release_on_exit);
    }

    #[test]
    fn file_with_unknown_key_or_bad_syntax_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "bakend = \"vxlan\"\n").unwrap();
        let err = RawSettings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("bakend") && err.contains("weft.toml"), "{err}");
        std::fs::write(&path, "backend = \n").unwrap();
        assert!(RawSettings::from_file(&path).is_err());
        let err = RawSettings::from_file(&dir.path().join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.toml"), "{err}");
    }
}
