//! weftd's configuration: flags, environment variables and an optional TOML file.
//!
//! Every setting is one typed field of [`RawSettings`], with its doc line. Its type's `FromStr` (or
//! `clap::ValueEnum`) parses it, whether it comes from a flag, a `WEFT_*` variable (clap) or a key
//! of the file (serde, through `text` and `choice` below), so all three give the same error:
//! `invalid setting --NAME: "VALUE": why`. The file is read into a [`RawSettings`]; clap's matches
//! of the command line ([`CliSettings`]) then overwrite the settings that were given as flags or
//! variables. [`RawSettings::validate`] checks what spans settings (CIDRs against prefix lengths,
//! store-specific settings, one underlay selector) and fills the defaults, giving a [`Config`].

use std::fmt::{self, Display};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, FromArgMatches, ValueEnum};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::value::MapDeserializer;
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde::Deserialize;
use weft_proto::lease::Backend;
use weft_proto::names::{IfName, NodeName};

use crate::subnet::SubnetPool;

/// Why the configuration was refused; each one displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value it cannot have.
    #[error("{}", invalid_line(.setting, .value, .reason))]
    Invalid {
        setting: &'static str,
        value: String,
        reason: String,
    },
    /// A required setting is not given.
    #[error("missing setting --{setting}: {reason}")]
    Missing {
        setting: &'static str,
        reason: &'static str,
    },
    /// The file given with `--config` cannot be read, or one of its keys or values is refused.
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

/// The one error format for a refused value, whatever its source.
fn invalid_line(setting: &str, value: &str, reason: &dyn Display) -> String {
    format!("invalid setting --{setting}: {value:?}: {reason}")
}

/// The settings as given, typed, before the checks that span settings and before the defaults.
/// Flags are `--kebab-case`, variables `WEFT_SNAKE_CASE`, file keys `kebab-case`; a value in the
/// file may be a string, an integer or a boolean, read as its text.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawSettings {
    /// This node's name (a DNS-1123 subdomain); defaults to the host name.
    #[arg(long, env = "WEFT_NODE_NAME")]
    #[serde(deserialize_with = "text")]
    pub node_name: Option<NodeName>,
    /// Cluster pod CIDRs, comma-separated: one IPv4, one IPv6, or both.
    #[arg(long, env = "WEFT_CLUSTER_CIDR")]
    #[serde(deserialize_with = "text")]
    pub cluster_cidr: Option<Cidrs>,
    /// Prefix length of each node's IPv4 pod CIDR [default: 24].
    #[arg(long, env = "WEFT_NODE_PREFIX_V4")]
    #[serde(deserialize_with = "text")]
    pub node_prefix_v4: Option<PrefixLen<32>>,
    /// Prefix length of each node's IPv6 pod CIDR [default: 64].
    #[arg(long, env = "WEFT_NODE_PREFIX_V6")]
    #[serde(deserialize_with = "text")]
    pub node_prefix_v6: Option<PrefixLen<128>>,
    /// Service CIDRs, comma-separated; a peer claiming pod CIDRs inside them is refused.
    #[arg(long, env = "WEFT_SERVICE_CIDR")]
    #[serde(deserialize_with = "text")]
    pub service_cidr: Option<Cidrs>,
    /// Tunnel backend: vxlan or wireguard [default: vxlan].
    #[arg(long, env = "WEFT_BACKEND")]
    #[serde(deserialize_with = "text")]
    pub backend: Option<Backend>,
    /// Lease store [default: file].
    #[arg(long, env = "WEFT_STORE")]
    #[serde(deserialize_with = "choice")]
    pub store: Option<StoreKind>,
    /// Directory of the single-host file store, shared by the daemons of one host
    /// [default: /var/lib/weft/store].
    #[arg(long, env = "WEFT_STORE_DIR")]
    #[serde(deserialize_with = "text")]
    pub store_dir: Option<PathBuf>,
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379].
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS")]
    #[serde(deserialize_with = "text")]
    pub etcd_endpoints: Option<Endpoints>,
    /// Key prefix in etcd [default: /weft].
    #[arg(long, env = "WEFT_ETCD_PREFIX")]
    #[serde(deserialize_with = "text")]
    pub etcd_prefix: Option<String>,
    /// etcd over TLS: the CA bundle (PEM) that signed etcd's server certificate [default: the
    /// system's trusted roots, for `https://` endpoints].
    #[arg(long, env = "WEFT_ETCD_CAFILE")]
    #[serde(deserialize_with = "text")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd over TLS: this node's client certificate (PEM), for etcd's `--client-cert-auth`;
    /// goes with `--etcd-keyfile`.
    #[arg(long, env = "WEFT_ETCD_CERTFILE")]
    #[serde(deserialize_with = "text")]
    pub etcd_certfile: Option<PathBuf>,
    /// etcd over TLS: the private key (PEM) of `--etcd-certfile`.
    #[arg(long, env = "WEFT_ETCD_KEYFILE")]
    #[serde(deserialize_with = "text")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd authentication: the user; its password comes from `--etcd-password-file` or the
    /// variable `WEFT_ETCD_PASSWORD`, never from a flag.
    #[arg(long, env = "WEFT_ETCD_USERNAME")]
    #[serde(deserialize_with = "text")]
    pub etcd_username: Option<String>,
    /// etcd authentication: a file holding the password of `--etcd-username` (one line; a
    /// trailing newline is ignored).
    #[arg(long, env = "WEFT_ETCD_PASSWORD_FILE")]
    #[serde(deserialize_with = "text")]
    pub etcd_password_file: Option<PathBuf>,
    /// Lease time-to-live in seconds; a node silent for this long loses its lease [default: 60].
    #[arg(long, env = "WEFT_LEASE_TTL")]
    #[serde(deserialize_with = "text")]
    pub lease_ttl: Option<Seconds<2, 86_400>>,
    /// Seconds between full reads of the datapath, firewall and kernel settings, which repair
    /// drift; at most 30, as `/healthz` expects a pass within three periods [default: 30].
    #[arg(long, env = "WEFT_RESYNC_INTERVAL")]
    #[serde(deserialize_with = "text")]
    pub resync_interval: Option<Seconds<1, 30>>,
    /// Persistent state directory [default: /var/lib/weft].
    #[arg(long, env = "WEFT_STATE_DIR")]
    #[serde(deserialize_with = "text")]
    pub state_dir: Option<PathBuf>,
    /// Runtime directory for sockets [default: /run/weft].
    #[arg(long, env = "WEFT_RUN_DIR")]
    #[serde(deserialize_with = "text")]
    pub run_dir: Option<PathBuf>,
    /// The node's underlay address(es), comma-separated; overrides interface detection.
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    #[serde(deserialize_with = "text")]
    pub public_ip: Option<Ips>,
    /// Use this interface's address as the underlay address.
    #[arg(long, env = "WEFT_IFACE")]
    #[serde(deserialize_with = "text")]
    pub iface: Option<IfName>,
    /// Use the first interface whose name matches this regular expression.
    #[arg(long, env = "WEFT_IFACE_REGEX")]
    #[serde(deserialize_with = "text")]
    pub iface_regex: Option<String>,
    /// Use the interface that routes to this address (comma-separated, one per family).
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    #[serde(deserialize_with = "text")]
    pub iface_can_reach: Option<Ips>,
    /// MTU of the overlay devices; derived from the underlay interface when unset.
    #[arg(long, env = "WEFT_MTU")]
    #[serde(deserialize_with = "text")]
    pub mtu: Option<Mtu>,
    /// VXLAN: route a peer's pod CIDR straight to its underlay address when that address is on a
    /// subnet directly connected to this node's underlay interface (flannel's DirectRouting,
    /// decided per peer and family), `off` for the tunnel to every peer. Never on WireGuard:
    /// encryption asked for means encryption [default: auto].
    #[arg(long, env = "WEFT_DIRECT_ROUTING")]
    #[serde(deserialize_with = "choice")]
    pub direct_routing: Option<DirectRoutingChoice>,
    /// Give the lease back when the daemon exits (otherwise it is kept for a restart).
    #[arg(long, env = "WEFT_RELEASE_ON_EXIT")]
    #[serde(deserialize_with = "text")]
    pub release_on_exit: Option<Switch>,
    /// `kernel` programs tunnels, routes and pods; `none` only keeps the lease and follows peers
    /// (for store debugging and the lease tests) [default: kernel].
    #[arg(long, env = "WEFT_DATAPATH")]
    #[serde(deserialize_with = "choice")]
    pub datapath: Option<DatapathMode>,
    /// kubeconfig for `--store kube`; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long, env = "WEFT_KUBECONFIG")]
    #[serde(deserialize_with = "text")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the HTTP endpoints `/healthz` and `/readyz` [default: 127.0.0.1:9475].
    #[arg(long, env = "WEFT_HTTP_ADDR")]
    #[serde(deserialize_with = "text")]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Address of the Prometheus endpoint `/metrics` (OpenMetrics text): `IP:PORT`, `[IPv6]:PORT`,
    /// or an address alone for port 9476; the DaemonSet sets the node's address so Prometheus
    /// can scrape it [default: 127.0.0.1:9476].
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    #[serde(deserialize_with = "text")]
    pub metrics_addr: Option<ListenAddr<9476>>,
    /// WireGuard: UDP port of the device [default: 51820].
    #[arg(long, env = "WEFT_WIREGUARD_PORT")]
    #[serde(deserialize_with = "text")]
    pub wireguard_port: Option<Port>,
    /// WireGuard: `kernel` (the module), `userspace` (`weft-wg`), or `auto` (the kernel where the
    /// `wireguard` generic-netlink family exists) [default: auto].
    #[arg(long, env = "WEFT_WIREGUARD_IMPL")]
    #[serde(deserialize_with = "choice")]
    pub wireguard_impl: Option<WgImplChoice>,
    /// WireGuard: persistent keepalive in seconds, 0 for off (25 is usual behind NAT) [default: 0].
    #[arg(long, env = "WEFT_WIREGUARD_KEEPALIVE")]
    #[serde(deserialize_with = "text")]
    pub wireguard_keepalive: Option<u16>,
    /// WireGuard: the device name [default: weft.wg]. Labs give each node of one host its own,
    /// since they share /var/run/wireguard.
    #[arg(long, env = "WEFT_WIREGUARD_DEVICE")]
    #[serde(deserialize_with = "text")]
    pub wireguard_device: Option<IfName>,
    /// WireGuard, userspace: worker threads of `weft-wg` [default: 1, the fastest measured on
    /// 2 cores].
    #[arg(long, env = "WEFT_WIREGUARD_THREADS")]
    #[serde(deserialize_with = "text")]
    pub wireguard_threads: Option<Threads>,
    /// WireGuard, userspace: start `weft-wg` when nothing serves the device; `false` where it
    /// runs as a container of its own (deploy/wireguard) and weftd waits for it [default: true].
    #[arg(long, env = "WEFT_WIREGUARD_SPAWN")]
    #[serde(deserialize_with = "text")]
    pub wireguard_spawn: Option<Switch>,
    /// WireGuard, userspace: the `weft-wg` binary [default: `weft-wg` beside weftd, else on PATH].
    #[arg(long, env = "WEFT_WEFT_WG")]
    #[serde(deserialize_with = "text")]
    pub weft_wg: Option<PathBuf>,
}

impl RawSettings {
    /// Read a TOML file of settings: keys as the long flags, values strings, integers or booleans.
    pub fn from_file(path: &Path) -> Result<RawSettings, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(e.message().to_string()))?;
        let entries = table
            .into_iter()
            .map(|(key, value)| (key.clone(), FileValue { key, value }));
        RawSettings::deserialize(MapDeserializer::new(entries))
            .map_err(|e: toml::de::Error| file_error(e.message().to_string()))
    }

    /// Check what spans settings and fill in the defaults.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => default_node_name()?,
        };
        let (pool_v4, pool_v6) = self.pools()?;
        let backend = self.backend.unwrap_or(Backend::Vxlan);
        Ok(Config {
            datapath: self.datapath.unwrap_or(DatapathMode::Kernel),
            node_name,
            pool_v4,
            pool_v6,
            service_cidrs: self.service_cidr.clone().map_or_else(Vec::new, |c| c.0),
            backend,
            store: self.store()?,
            lease_ttl: self.lease_ttl.map_or(Duration::from_secs(60), |t| t.0),
            resync_interval: self
                .resync_interval
                .map_or(Duration::from_secs(30), |t| t.0),
            state_dir: path_or(&self.state_dir, "/var/lib/weft"),
            run_dir: path_or(&self.run_dir, "/run/weft"),
            underlay: self.underlay()?,
            mtu: self.mtu.map(|m| m.0),
            direct_routing: self.direct_routing.unwrap_or(DirectRoutingChoice::Auto),
            release_on_exit: self.release_on_exit.is_some_and(|s| s.0),
            http_addr: self
                .http_addr
                .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9475))),
            metrics_addr: self
                .metrics_addr
                .map_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9476)), |a| a.0),
            wireguard: self.wireguard(),
        })
    }

    /// The WireGuard settings with their defaults.
    fn wireguard(&self) -> WireGuardConfig {
        WireGuardConfig {
            port: self.wireguard_port.map_or(51820, |p| p.0),
            implementation: self.wireguard_impl.unwrap_or(WgImplChoice::Auto),
            keepalive: self.wireguard_keepalive.filter(|s| *s != 0),
            device: self
                .wireguard_device
                .clone()
                .unwrap_or_else(|| IfName::new("weft.wg").expect("a valid constant name")),
            threads: self.wireguard_threads.map_or(1, |t| t.0),
            weft_wg: self.weft_wg.clone().unwrap_or_else(default_weft_wg),
            spawn: self.wireguard_spawn.is_none_or(|s| s.0),
        }
    }

    /// The subnet pools: at most one cluster CIDR per family, each cut into node prefixes.
    fn pools(&self) -> Result<(Option<SubnetPool>, Option<SubnetPool>), ConfigError> {
        let (v4, v6) = cluster_cidrs(self.cluster_cidr.as_ref())?;
        let prefix_v4 = self.node_prefix_v4.map_or(24, |p| p.0);
        let prefix_v6 = self.node_prefix_v6.map_or(64, |p| p.0);
        let pool_v4 = v4
            .map(|c| SubnetPool::new(IpNet::V4(c), prefix_v4))
            .transpose()
            .map_err(|e| invalid("node-prefix-v4", &prefix_v4.to_string(), e.to_string()))?;
        let pool_v6 = v6
            .map(|c| SubnetPool::new(IpNet::V6(c), prefix_v6))
            .transpose()
            .map_err(|e| invalid("node-prefix-v6", &prefix_v6.to_string(), e.to_string()))?;
        Ok((pool_v4, pool_v6))
    }

    fn store(&self) -> Result<StoreConfig, ConfigError> {
        match self.store.unwrap_or(StoreKind::File) {
            StoreKind::File => Ok(StoreConfig::File {
                dir: path_or(&self.store_dir, "/var/lib/weft/store"),
            }),
            StoreKind::Etcd => {
                let endpoints = match &self.etcd_endpoints {
                    Some(Endpoints(list)) if list.is_empty() => {
                        return Err(invalid("etcd-endpoints", "", "no endpoint given"))
                    }
                    Some(Endpoints(list)) => list.clone(),
                    None => vec!["http://127.0.0.1:2379".to_string()],
                };
                let prefix = self.etcd_prefix.clone().unwrap_or_else(|| "/weft".into());
                if !prefix.starts_with('/') || prefix.ends_with('/') {
                    return Err(invalid(
                        "etcd-prefix",
                        &prefix,
                        "must start with '/' and not end with '/'",
                    ));
                }
                let access = self.etcd_access(&endpoints)?;
                Ok(StoreConfig::Etcd {
                    endpoints,
                    prefix,
                    access,
                })
            }
            StoreKind::Kube => Ok(StoreConfig::Kube {
                kubeconfig: self.kubeconfig.clone(),
            }),
        }
    }

    /// TLS and authentication for etcd; reads the password variable `WEFT_ETCD_PASSWORD`.
    fn etcd_access(&self, endpoints: &[String]) -> Result<EtcdAccess, ConfigError> {
        self.etcd_access_with(endpoints, std::env::var(ETCD_PASSWORD_VAR).ok())
    }

    /// [`RawSettings::etcd_access`] with the variable's value given: TLS exactly when the
    /// endpoints are `https://` (all or none), a client certificate with its key, a user with
    /// exactly one source of password.
    fn etcd_access_with(
        &self,
        endpoints: &[String],
        env_password: Option<String>,
    ) -> Result<EtcdAccess, ConfigError> {
        let secure = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if secure != 0 && secure != endpoints.len() {
            let value = endpoints.join(",");
            return Err(invalid(
                "etcd-endpoints",
                &value,
                "all https:// or all http://",
            ));
        }
        let tls = match secure {
            0 => {
                let given = [
                    ("etcd-cafile", &self.etcd_cafile),
                    ("etcd-certfile", &self.etcd_certfile),
                    ("etcd-keyfile", &self.etcd_keyfile),
                ];
                if let Some((setting, Some(path))) = given.into_iter().find(|(_, p)| p.is_some()) {
                    let value = path.display().to_string();
                    return Err(invalid(
                        setting,
                        &value,
                        "TLS needs https:// etcd endpoints",
                    ));
                }
                None
            }
            _ => Some(self.etcd_tls()?),
        };
        let user = self.etcd_user(env_password.filter(|p| !p.is_empty()))?;
        Ok(EtcdAccess { tls, user })
    }

    fn etcd_tls(&self) -> Result<EtcdTls, ConfigError> {
        let identity = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    setting: "etcd-keyfile",
                    reason: "--etcd-certfile needs the key of its certificate",
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    setting: "etcd-certfile",
                    reason: "--etcd-keyfile needs the certificate it belongs to",
                })
            }
        };
        Ok(EtcdTls {
            ca_file: self.etcd_cafile.clone(),
            identity,
        })
    }

    fn etcd_user(&self, env_password: Option<String>) -> Result<Option<EtcdUser>, ConfigError> {
        let password = match (&self.etcd_password_file, env_password) {
            (Some(path), Some(_)) => {
                let value = path.display().to_string();
                let why = format!("give the password once: this file or {ETCD_PASSWORD_VAR}");
                return Err(invalid("etcd-password-file", &value, why));
            }
            (Some(path), None) => Some(Password::File(path.clone())),
            (None, Some(text)) => Some(Password::Given(text)),
            (None, None) => None,
        };
        match (&self.etcd_username, password) {
            (Some(name), _) if name.is_empty() => Err(invalid("etcd-username", name, "is empty")),
            (Some(name), Some(password)) => Ok(Some(EtcdUser {
                name: name.clone(),
                password,
            })),
            (Some(_), None) => Err(ConfigError::Missing {
                setting: "etcd-password-file",
                reason: "--etcd-username needs a password: a file, or WEFT_ETCD_PASSWORD",
            }),
            (None, Some(_)) => Err(ConfigError::Missing {
                setting: "etcd-username",
                reason: "an etcd password is given without the user it belongs to",
            }),
            (None, None) => Ok(None),
        }
    }

    fn underlay(&self) -> Result<UnderlaySelector, ConfigError> {
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
        if let Some(Ips(ips)) = &self.public_ip {
            return Ok(UnderlaySelector::Addresses(ips.clone()));
        }
        if let Some(name) = &self.iface {
            return Ok(UnderlaySelector::Interface(name.clone()));
        }
        if let Some(pattern) = &self.iface_regex {
            if pattern.is_empty() {
                return Err(invalid("iface-regex", pattern, "empty pattern"));
            }
            return Ok(UnderlaySelector::InterfacePattern(pattern.clone()));
        }
        if let Some(Ips(ips)) = &self.iface_can_reach {
            return Ok(UnderlaySelector::CanReach(ips.clone()));
        }
        Ok(UnderlaySelector::DefaultRoute)
    }
}

/// The settings given on the command line or as `WEFT_*` variables: the arguments of
/// [`RawSettings`], kept as clap's matches so that [`CliSettings::over`] overwrites exactly the
/// settings that were given.
#[derive(Debug, Clone)]
pub struct CliSettings(ArgMatches);

impl CliSettings {
    /// `file` with every setting given as a flag or a variable overwritten.
    pub fn over(&self, mut file: RawSettings) -> RawSettings {
        file.update_from_arg_matches(&self.0)
            .expect("the matches hold RawSettings' own arguments, parsed by their own types");
        file
    }
}

impl FromArgMatches for CliSettings {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(CliSettings(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl clap::Args for CliSettings {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        <RawSettings as clap::Args>::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        <RawSettings as clap::Args>::augment_args_for_update(cmd)
    }
}

/// [`clap::Parser::parse`], except that a refused flag or variable value stops the program with
/// the one line a refused file value gets (`invalid setting --NAME: "VALUE": why`) instead of
/// clap's paragraph.
pub fn parse_command_line<P: clap::Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| match refused_value(&e) {
        Some(line) => {
            eprintln!("{}: error: {line}", P::command().get_name());
            std::process::exit(2)
        }
        None => e.exit(),
    })
}

/// The one-line message of a clap error about a value, from the error's context.
fn refused_value(e: &clap::Error) -> Option<String> {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    // The argument is shown as `--lease-ttl <LEASE_TTL>`.
    let arg = context(ContextKind::InvalidArg)?;
    let setting = arg.split(' ').next()?.strip_prefix("--")?;
    let value = context(ContextKind::InvalidValue)?;
    let reason = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::ValueValidation, _) => std::error::Error::source(e)?.to_string(),
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(names))) => expected(names),
        _ => return None,
    };
    Some(invalid_line(setting, value, &reason))
}

/// One value of the file with its key, so that a refused value names its setting.
struct FileValue {
    key: String,
    value: toml::Value,
}

impl<'de> Deserializer<'de> for FileValue {
    type Error = toml::de::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let text = match &self.value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        self.value
            .deserialize_any(visitor)
            .map_err(|e| de::Error::custom(invalid_line(&self.key, &text, &e.message())))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

impl IntoDeserializer<'_, toml::de::Error> for FileValue {
    type Deserializer = FileValue;

    fn into_deserializer(self) -> FileValue {
        self
    }
}

/// serde's side of a setting parsed by `FromStr`: the same parser as its flag.
fn text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let parse: fn(&str) -> Result<T, String> =
        |text| text.parse().map_err(|e: T::Err| e.to_string());
    deserializer.deserialize_any(Text(parse)).map(Some)
}

/// serde's side of a setting that is a [`ValueEnum`]: the same names as its flag.
fn choice<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: ValueEnum,
{
    deserializer.deserialize_any(Text(choose::<T>)).map(Some)
}

fn choose<T: ValueEnum>(text: &str) -> Result<T, String> {
    T::from_str(text, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(ValueEnum::to_possible_value)
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_string())
            .collect();
        expected(&names)
    })
}

/// `expected a, b or c`: the reason a name outside the choices is refused, from a flag or a file.
fn expected(names: &[String]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("expected {} or {last}", rest.join(", ")),
        _ => format!("expected {}", names.join("")),
    }
}

/// Reads a value of the file (a string, an integer or a boolean) as its text and parses it.
struct Text<T>(fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for Text<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an integer or a boolean")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
        self.visit_str(&b.to_string())
    }
}

/// CIDRs, comma-separated; empty items are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs(pub Vec<IpNet>);

impl FromStr for Cidrs {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_list(text, |item| item.parse().map_err(|_| "not a CIDR".into())).map(Cidrs)
    }
}

impl Display for Cidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&items.join(","))
    }
}

/// One or two IP addresses, comma-separated, at most one per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ips(pub Vec<IpAddr>);

impl FromStr for Ips {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let ips: Vec<IpAddr> = parse_list(text, |item| {
            item.parse().map_err(|_| "not an IP address".into())
        })?;
        let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
        if ips.is_empty() || v4 > 1 || ips.len() - v4 > 1 {
            return Err("one or two addresses, at most one per family".into());
        }
        Ok(Ips(ips))
    }
}

/// etcd endpoints, comma-separated, each `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(pub Vec<String>);

impl FromStr for Endpoints {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let endpoint = |item: &str| {
            let scheme_ok = item.starts_with("http://") || item.starts_with("https://");
            match scheme_ok && item.len() >= 10 {
                true => Ok(item.to_string()),
                false => Err("expected http://HOST:PORT or https://HOST:PORT".into()),
            }
        };
        parse_list(text, endpoint).map(Endpoints)
    }
}

/// A prefix length between 0 and `MAX`, with or without its `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLen<const MAX: u8>(pub u8);

impl<const MAX: u8> FromStr for PrefixLen<MAX> {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim_start_matches('/').parse::<u8>() {
            Ok(len) if len <= MAX => Ok(PrefixLen(len)),
            _ => Err(format!("a prefix length between 0 and {MAX}")),
        }
    }
}

/// A whole number of seconds between `MIN` and `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds<const MIN: u64, const MAX: u64>(pub Duration);

impl<const MIN: u64, const MAX: u64> FromStr for Seconds<MIN, MAX> {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.parse::<u64>() {
            Ok(secs) if (MIN..=MAX).contains(&secs) => Ok(Seconds(Duration::from_secs(secs))),
            _ => Err(format!("seconds between {MIN} and {MAX}")),
        }
    }
}

/// An MTU between 1280 (the IPv6 minimum) and 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu(pub u32);

impl FromStr for Mtu {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.parse::<u32>() {
            Ok(mtu @ 1280..=65535) => Ok(Mtu(mtu)),
            _ => Err("an MTU between 1280 and 65535".into()),
        }
    }
}

/// On or off: `true` or `1` (or empty, as a bare variable), `false` or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "true" | "1" | "" => Ok(Switch(true)),
            "false" | "0" => Ok(Switch(false)),
            _ => Err("expected true or false".into()),
        }
    }
}

/// Which lease store keeps the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Files in `--store-dir`, for the daemons of one host.
    File,
    /// An etcd cluster (`--etcd-endpoints`, `--etcd-prefix`).
    Etcd,
    /// Kubernetes Node objects: `spec.podCIDRs` and `weft.dev/*` annotations (`--kubeconfig`).
    Kube,
}

/// Parse a comma-separated list, skipping empty items; a refused item is quoted when the list
/// has several.
fn parse_list<T>(text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let several = items.len() > 1;
    items
        .iter()
        .map(|item| {
            parse(item).map_err(|why| {
                if several {
                    format!("{item:?}: {why}")
                } else {
                    why
                }
            })
        })
        .collect()
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
        access: EtcdAccess,
    },
    /// The Kubernetes API: the kubeconfig given, else in-cluster or `$KUBECONFIG`.
    Kube {
        kubeconfig: Option<PathBuf>,
    },
}

/// The variable that may hold the etcd password (there is no flag: a command line is readable by
/// every user of the host).
pub const ETCD_PASSWORD_VAR: &str = "WEFT_ETCD_PASSWORD";

/// How weftd reaches a secured etcd, as flannel's `--etcd-cafile`, `--etcd-certfile`,
/// `--etcd-keyfile`, `--etcd-username` and `--etcd-password`. Files are read when the client
/// connects to etcd, at start: restart weftd after renewing certificates or the password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// TLS, present exactly when the endpoints are `https://`.
    pub tls: Option<EtcdTls>,
    /// etcd's user authentication (`etcdctl auth enable`).
    pub user: Option<EtcdUser>,
}

/// TLS to etcd: the CA that signed its server certificate (else the system's roots) and this
/// node's client certificate and key (PEM paths), if etcd asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    /// Certificate and private key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// An etcd user and where its password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    pub password: Password,
}

/// A password, by source. Its `Debug` never shows the text, so configurations and errors can be
/// logged whole.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// Read from this file when weftd connects; a trailing newline is not part of it.
    File(PathBuf),
    /// Given in the environment.
    Given(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::File(path) => write!(f, "Password::File({path:?})"),
            Password::Given(_) => f.write_str("Password::Given(<redacted>)"),
        }
    }
}

impl Password {
    /// The password's text.
    ///
    /// # Errors
    /// The file cannot be read, or holds an empty password.
    pub fn reveal(&self) -> std::io::Result<String> {
        let text = match self {
            Password::Given(text) => return Ok(text.clone()),
            Password::File(path) => std::fs::read_to_string(path)?,
        };
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match text.is_empty() {
            true => Err(std::io::Error::other("the password file is empty")),
            false => Ok(text.to_string()),
        }
    }
}

/// `weft-wg` beside the running weftd if it is there, else `weft-wg` on PATH.
fn default_weft_wg() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("weft-wg")))
        .filter(|path| path.exists())
        .unwrap_or_else(|| "weft-wg".into())
}

/// A TCP address to listen on: `IP:PORT`, `[IPv6]:PORT`, or an address alone for port `PORT`
/// (so an IPv6 address from the downward API needs no brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr<const PORT: u16>(pub std::net::SocketAddr);

impl<const PORT: u16> FromStr for ListenAddr<PORT> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
            return Ok(ListenAddr(addr));
        }
        match s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => Ok(ListenAddr(std::net::SocketAddr::new(ip, PORT))),
            Err(_) => Err(format!(
                "expected IP:PORT, [IPv6]:PORT or an address alone (port {PORT})"
            )),
        }
    }
}

/// A UDP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u16>() {
            Ok(0) | Err(_) => Err("a UDP port is 1 to 65535".to_string()),
            Ok(port) => Ok(Port(port)),
        }
    }
}

/// A thread count, 1–64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads(pub usize);

impl FromStr for Threads {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<usize>() {
            Ok(n @ 1..=64) => Ok(Threads(n)),
            _ => Err("a thread count is 1 to 64".to_string()),
        }
    }
}

/// `--direct-routing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectRoutingChoice {
    /// Direct routes to peers on a connected subnet of the underlay interface (VXLAN only).
    Auto,
    /// The tunnel to every peer.
    Off,
}

/// `--wireguard-impl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WgImplChoice {
    /// The kernel module where it exists, else userspace.
    Auto,
    Kernel,
    Userspace,
}

/// The WireGuard backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardConfig {
    pub port: u16,
    pub implementation: WgImplChoice,
    /// Seconds; `None` is off.
    pub keepalive: Option<u16>,
    pub device: IfName,
    pub threads: usize,
    pub weft_wg: PathBuf,
    /// Start `weft-wg` when it is not running (else wait for it).
    pub spawn: bool,
}

/// Whether weftd programs the node's datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatapathMode {
    /// Program tunnels, routes and pods.
    Kernel,
    /// Only keep the lease and follow the peers.
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
    /// How often the reconcile loop reads the kernel again, repairing drift.
    pub resync_interval: Duration,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub underlay: UnderlaySelector,
    pub mtu: Option<u32>,
    /// `--direct-routing`; only the VXLAN backend acts on it.
    pub direct_routing: DirectRoutingChoice,
    pub release_on_exit: bool,
    /// Where `/healthz`, `/readyz` and the status page are served.
    pub http_addr: std::net::SocketAddr,
    /// Where `/metrics` is served (by the same listener when equal to `http_addr`).
    pub metrics_addr: std::net::SocketAddr,
    pub wireguard: WireGuardConfig,
}

fn path_or(value: &Option<PathBuf>, default: &str) -> PathBuf {
    value.clone().unwrap_or_else(|| default.into())
}

/// `NODE_NAME` (the downward API's `spec.nodeName` in a DaemonSet), else the host name.
fn default_node_name() -> Result<NodeName, ConfigError> {
    if let Ok(name) = std::env::var("NODE_NAME") {
        return NodeName::new(name.clone())
            .map_err(|e| invalid("node-name", &name, format!("NODE_NAME: {e}")));
    }
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

/// The cluster CIDRs: required, without host bits, at most one per family.
fn cluster_cidrs(cidrs: Option<&Cidrs>) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), ConfigError> {
    let cidrs = cidrs.ok_or(ConfigError::Missing {
        setting: "cluster-cidr",
        reason: "give the cluster's pod CIDR(s), e.g. 10.244.0.0/16,fd00:10:244::/48",
    })?;
    let (mut v4, mut v6) = (None, None);
    for net in &cidrs.0 {
        if net.trunc() != *net {
            return Err(invalid(
                "cluster-cidr",
                &net.to_string(),
                format!("host bits are set; did you mean {}?", net.trunc()),
            ));
        }
        match net {
            IpNet::V4(n) if v4.is_none() => v4 = Some(*n),
            IpNet::V6(n) if v6.is_none() => v6 = Some(*n),
            _ => {
                let text = cidrs.to_string();
                return Err(invalid(
                    "cluster-cidr",
                    &text,
                    "at most one CIDR per family",
                ));
            }
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(invalid("cluster-cidr", "", "no CIDR given"));
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawSettings {
        RawSettings {
            node_name: Some("node-a".parse().unwrap()),
            cluster_cidr: Some("10.244.0.0/16,fd00:10:244::/48".parse().unwrap()),
            ..Default::default()
        }
    }

    /// weftd's command line, reduced to the settings.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        given: CliSettings,
    }

    /// The settings `pairs` given as flags; a refused one is reported as weftd reports it.
    fn flags(pairs: &[(&str, &str)]) -> Result<CliSettings, String> {
        use clap::Parser;
        let args = pairs.iter().map(|(key, value)| format!("--{key}={value}"));
        let cli = Cli::try_parse_from(std::iter::once("weftd".to_string()).chain(args))
            .map_err(|e| refused_value(&e).unwrap_or_else(|| e.to_string()))?;
        Ok(cli.given)
    }

    fn from_flags(pairs: &[(&str, &str)]) -> Result<RawSettings, String> {
        flags(pairs).map(|given| given.over(RawSettings::default()))
    }

    /// The settings `pairs` as the keys of a file.
    fn from_file(pairs: &[(&str, &str)]) -> Result<RawSettings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        let table: toml::Table = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), toml::Value::from(*value)))
            .collect();
        std::fs::write(&path, table.to_string()).unwrap();
        RawSettings::from_file(&path).map_err(|e| e.to_string())
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
        assert_eq!(config.resync_interval, Duration::from_secs(30));
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/weft"));
        assert_eq!(config.underlay, UnderlaySelector::DefaultRoute);
        assert!(!config.release_on_exit);
    }

    #[test]
    fn a_listen_address_may_leave_out_its_port() {
        let parse = |s: &str| s.parse::<ListenAddr<9476>>().map(|a| a.0.to_string());
        assert_eq!(parse("10.0.0.1").unwrap(), "10.0.0.1:9476");
        assert_eq!(parse("fd00::1").unwrap(), "[fd00::1]:9476");
        assert_eq!(parse("[fd00::1]:80").unwrap(), "[fd00::1]:80");
        assert_eq!(parse("127.0.0.1:9000").unwrap(), "127.0.0.1:9000");
        assert!(parse("node-1").is_err());
    }

    #[test]
    fn etcd_access_follows_the_endpoints_scheme_and_hides_the_password() {
        let mut raw = base();
        raw.store = Some(StoreKind::Etcd);
        raw.etcd_endpoints = Some("https://10.0.0.1:2379".parse().unwrap());
        raw.etcd_username = Some("weft".into());
        let endpoints = ["https://10.0.0.1:2379".to_string()];
        let access = raw
            .etcd_access_with(&endpoints, Some("s3cret-pw".into()))
            .unwrap();
        let tls = access.tls.clone().expect("https endpoints mean TLS");
        assert_eq!((tls.ca_file, tls.identity), (None, None));
        let user = access.user.clone().unwrap();
        assert_eq!(user.password.reveal().unwrap(), "s3cret-pw");
        let shown = format!("{access:?}");
        assert!(
            !shown.contains("s3cret-pw") && shown.contains("redacted"),
            "{shown}"
        );

        raw.etcd_password_file = Some("/run/secrets/etcd".into());
        let both = raw.etcd_access_with(&endpoints, Some("s3cret-pw".into()));
        let text = both.unwrap_err().to_string();
        assert!(
            text.contains("--etcd-password-file") && !text.contains("s3cret"),
            "{text}"
        );
        let plain = ["http://10.0.0.1:2379".to_string()];
        let access = raw.etcd_access_with(&plain, None).unwrap();
        assert_eq!(access.tls, None);
    }

    #[test]
    fn a_password_file_loses_its_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "pa ss\n").unwrap();
        assert_eq!(Password::File(path.clone()).reveal().unwrap(), "pa ss");
        std::fs::write(&path, "\n").unwrap();
        assert!(Password::File(path.clone()).reveal().is_err());
        let missing = Password::File(dir.path().join("absent")).reveal();
        assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn single_stack_either_family() {
        let mut raw = base();
        raw.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        let c = raw.validate().unwrap();
        assert!(c.pool_v4.is_some() && c.pool_v6.is_none());
        raw.cluster_cidr = Some("fd00:10:244::/48".parse().unwrap());
        let c = raw.validate().unwrap();
        assert!(c.pool_v4.is_none() && c.pool_v6.is_some());
    }

    /// Settings changed from the base (`None`: removed), the setting named, the reason.
    type Case = (
        &'static [(&'static str, Option<&'static str>)],
        &'static str,
        &'static str,
    );

    const BAD_VALUES: &[Case] = &[
        (
            &[("cluster-cidr", Some("10.244.0.0/33"))],
            "--cluster-cidr",
            "not a CIDR",
        ),
        (
            &[("cluster-cidr", Some("10.244.1.0/16"))],
            "--cluster-cidr",
            "host bits",
        ),
        (
            &[("cluster-cidr", Some("10.0.0.0/8,10.1.0.0/16"))],
            "--cluster-cidr",
            "one CIDR per family",
        ),
        (
            &[("cluster-cidr", Some(" , "))],
            "--cluster-cidr",
            "no CIDR",
        ),
        (&[("cluster-cidr", None)], "--cluster-cidr", "missing"),
        (
            &[("node-prefix-v4", Some("33"))],
            "--node-prefix-v4",
            "prefix length",
        ),
        (
            &[("node-prefix-v4", Some("8"))],
            "--node-prefix-v4",
            "does not fit",
        ),
        (
            &[("node-prefix-v6", Some("abc"))],
            "--node-prefix-v6",
            "prefix length",
        ),
        (
            &[("backend", Some("geneve"))],
            "--backend",
            "unknown backend",
        ),
        (
            &[("wireguard-port", Some("0"))],
            "--wireguard-port",
            "1 to 65535",
        ),
        (
            &[("wireguard-impl", Some("ebpf"))],
            "--wireguard-impl",
            "auto",
        ),
        (
            &[("direct-routing", Some("on"))],
            "--direct-routing",
            "auto",
        ),
        (
            &[("wireguard-threads", Some("0"))],
            "--wireguard-threads",
            "1 to 64",
        ),
        (
            &[("store", Some("consul"))],
            "--store",
            "expected file, etcd or kube",
        ),
        (
            &[
                ("store", Some("etcd")),
                ("etcd-endpoints", Some("127.0.0.1:2379")),
            ],
            "--etcd-endpoints",
            "http://",
        ),
        (
            &[("store", Some("etcd")), ("etcd-prefix", Some("weft"))],
            "--etcd-prefix",
            "start with '/'",
        ),
        (
            &[
                ("store", Some("etcd")),
                (
                    "etcd-endpoints",
                    Some("https://10.0.0.1:2379,http://10.0.0.2:2379"),
                ),
            ],
            "--etcd-endpoints",
            "all https:// or all http://",
        ),
        (
            &[
                ("store", Some("etcd")),
                ("etcd-cafile", Some("/etc/ca.pem")),
            ],
            "--etcd-cafile",
            "TLS needs https://",
        ),
        (
            &[
                ("store", Some("etcd")),
                ("etcd-endpoints", Some("https://10.0.0.1:2379")),
                ("etcd-certfile", Some("/etc/node.pem")),
            ],
            "--etcd-keyfile",
            "needs the key",
        ),
        (
            &[("store", Some("etcd")), ("etcd-username", Some("weft"))],
            "--etcd-password-file",
            "needs a password",
        ),
        (
            &[("store", Some("etcd")), ("etcd-password-file", Some("/p"))],
            "--etcd-username",
            "without the user",
        ),
        (
            &[("lease-ttl", Some("1"))],
            "--lease-ttl",
            "between 2 and 86400",
        ),
        (&[("node-name", Some("Node_A"))], "--node-name", "DNS-1123"),
        (
            &[("public-ip", Some("192.0.2.1,192.0.2.2"))],
            "--public-ip",
            "one per family",
        ),
        (&[("public-ip", Some("banana"))], "--public-ip", "not an IP"),
        (
            &[("iface", Some("much-too-long-interface"))],
            "--iface",
            "at most 15",
        ),
        (
            &[("iface", Some("eth0")), ("public-ip", Some("192.0.2.1"))],
            "--public-ip",
            "only one of",
        ),
        (&[("mtu", Some("9999999"))], "--mtu", "between 1280"),
        (
            &[("release-on-exit", Some("maybe"))],
            "--release-on-exit",
            "true or false",
        ),
        (
            &[("service-cidr", Some("10.96.0.0/12,x"))],
            "--service-cidr",
            "not a CIDR",
        ),
        (
            &[("datapath", Some("ebpf"))],
            "--datapath",
            "kernel or none",
        ),
    ];

    /// Each bad value stops start-up with one line naming the setting, the value and why, whether
    /// it is given as a flag or in the file.
    #[test]
    fn bad_values_name_the_setting() {
        for (edits, setting, reason) in BAD_VALUES {
            let mut pairs = vec![
                ("node-name", "node-a"),
                ("cluster-cidr", "10.244.0.0/16,fd00:10:244::/48"),
            ];
            for (key, value) in edits.iter() {
                pairs.retain(|(k, _)| k != key);
                pairs.extend(value.map(|v| (*key, v)));
            }
            for read in [from_flags, from_file] {
                let err = read(&pairs)
                    .and_then(|raw| raw.validate().map_err(|e| e.to_string()))
                    .unwrap_err();
                assert!(err.contains(setting), "{setting}: {err}");
                assert!(err.contains(reason), "{setting}: {err}");
                assert!(!err.contains('\n'), "one line: {err}");
            }
        }
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "backend = \"vxlan\"\nlease-ttl = 15\nnode-name = \"from-file\"\nrelease-on-exit = true\n").unwrap();
        let file = RawSettings::from_file(&path).unwrap();
        let given = flags(&[
            ("node-name", "node-a"),
            ("cluster-cidr", "10.244.0.0/16,fd00:10:244::/48"),
        ])
        .unwrap();
        let config = given.over(file).validate().unwrap();
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

    /// Every field is a flag, a variable and a file key of the same name.
    #[test]
    fn every_setting_is_a_flag_a_variable_and_a_file_key() {
        let cmd = <RawSettings as clap::Args>::augment_args(clap::Command::new("weftd"));
        for arg in cmd.get_arguments() {
            let key = arg.get_long().unwrap();
            assert_eq!(key, arg.get_id().as_str().replace('_', "-"));
            let env = format!("WEFT_{}", arg.get_id().as_str().to_uppercase());
            assert_eq!(arg.get_env().unwrap().to_str(), Some(env.as_str()));
            assert!(arg.get_help().is_some(), "{key} has its doc line");
            let err = from_file(&[(key, "!")]).err().unwrap_or_default();
            assert!(!err.contains("unknown field"), "{key}: {err}");
        }
    }

    mod under_random_input {
        use proptest::prelude::*;

        use super::super::RawSettings;

        /// A TOML file whose keys are often weftd's and values often nearly right.
        fn settings_file() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                prop::sample::select(vec![
                    "cluster-cidr",
                    "node-prefix-v4",
                    "node-prefix-v6",
                    "service-cidr",
                    "backend",
                    "store",
                    "store-dir",
                    "etcd-endpoints",
                    "lease-ttl",
                    "resync-interval",
                    "mtu",
                    "iface",
                    "iface-regex",
                    "iface-can-reach",
                    "public-ip",
                    "release-on-exit",
                    "datapath",
                    "http-addr",
                    "wireguard-port",
                    "wireguard-impl",
                    "wireguard-keepalive",
                    "wireguard-device",
                    "wireguard-threads",
                    "wireguard-spawn",
                    "direct-routing",
                    "node-name",
                ])
                .prop_map(String::from),
                "[a-z-]{1,12}",
            ];
            let value = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<String>().prop_map(|s| format!("{s:?}")),
                "\\[[0-9, ]{0,10}\\]",
                Just("\"10.244.0.0/16,fd00:10:244::/48\"".to_string()),
                Just("\"wireguard\"".to_string()),
                Just("= =".to_string()),
            ];
            prop::collection::vec((key, value), 0..8)
                .prop_map(|pairs| pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Every file is read or refused with one line naming the file; what is read is
            /// validated or refused with one line; nothing panics.
            #[test]
            fn a_settings_file_is_read_or_refused_in_one_line(text in settings_file()) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("weftd.toml");
                std::fs::write(&path, &text).unwrap();
                match RawSettings::from_file(&path) {
                    Ok(settings) => {
                        if let Err(e) = settings.validate() {
                            prop_assert!(!e.to_string().contains('\n'), "{}", e);
                        }
                    }
                    Err(e) => {
                        let line = e.to_string();
                        prop_assert!(line.contains("weftd.toml"), "{}", line);
                    }
                }
            }
        }
    }
}
