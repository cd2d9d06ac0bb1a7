//! CNI spec 1.1.0: what a container runtime hands a plugin and what the plugin hands back.
//!
//! A runtime runs a plugin binary with the request split in two: the verb and the attachment's
//! identity in `CNI_*` environment variables ([`CniEnv`]), the network configuration as JSON on stdin
//! ([`NetConf`]). The plugin answers on stdout with a result ([`CniResult`], rendered for the version
//! the configuration asked for) or an error ([`CniError`], one of the spec's well-known codes), and
//! exits 0 or 1. `VERSION` is answered with [`version_result`].
//!
//! Everything here is pure: the environment comes in as a map, the configuration as bytes or a
//! parsed `serde_json::Value`. Every rejection is a [`CniError`] whose message names the variable or
//! field at fault, so what the runtime logs is enough to fix the configuration.
//!
//! Versions: weft reads and writes 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0. The result type is the same
//! model throughout; [`CniResult::to_json`] adds the 0.x `"version"` key on each address and leaves
//! out the fields 1.1 introduced (interface `mtu`, `socketPath`, `pciID`; route `mtu`, `advmss`,
//! `priority`, `table`, `scope`) when rendering for an older version.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::names::IfName;

/// The CNI spec versions weft reads and writes, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version weft implements: used for output when the request names no usable one.
pub const LATEST_VERSION: &str = "1.1.0";

/// Where `weft-cni` finds `weftd` unless the configuration's `daemonSocket` says otherwise.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/weft/cni.sock";

/// The MTU range weft accepts in the `mtu` field: IPv4's minimum to the largest IP packet.
pub const MTU_MIN: u32 = 68;
pub const MTU_MAX: u32 = 65535;

/// Longest unix socket path (`sun_path` is 108 bytes, including the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;

pub const ENV_COMMAND: &str = "CNI_COMMAND";
pub const ENV_CONTAINERID: &str = "CNI_CONTAINERID";
pub const ENV_NETNS: &str = "CNI_NETNS";
pub const ENV_IFNAME: &str = "CNI_IFNAME";
pub const ENV_ARGS: &str = "CNI_ARGS";
pub const ENV_PATH: &str = "CNI_PATH";

/// Whether weft reads and writes this spec version.
pub fn is_supported_version(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The version to stamp on output for a request that asked for `requested`: that version when weft
/// supports it, else [`LATEST_VERSION`] (an error about an unsupported version still needs one).
pub fn output_version(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(LATEST_VERSION)
}

/// The reply to `VERSION`.
pub fn version_result() -> Value {
    json!({
        "cniVersion": LATEST_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A CNI error as the spec defines it: printed on stdout as `{cniVersion, code, msg, details}`
/// with exit status 1. Codes 0–99 are the spec's (the associated constants below); 100 and up are
/// free for plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{} (CNI error code {code})", detail_suffix(.details))]
pub struct CniError {
    pub code: u32,
    /// Short, and names what is wrong (the variable, the field, the socket).
    pub msg: String,
    /// Longer explanation; may be empty.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// The configuration's `cniVersion` is one weft does not implement.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field of the configuration is not supported; the message must name key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or gone: the runtime need not clean up (e.g. call DEL).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or invalid; the message names it.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure, e.g. reading the configuration from stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Content could not be decoded, e.g. the configuration is not JSON.
    pub const DECODING_FAILURE: u32 = 6;
    /// The configuration decoded but failed validation.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// A transient condition (weftd not up yet): the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADD requests, and existing containers may have limited
    /// connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(Self::INVALID_ENVIRONMENT, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(Self::INVALID_NETWORK_CONFIG, msg)
    }

    /// The error as printed on stdout for a request of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

fn detail_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// A value as it appears in an error message: JSON, cut short when oversized.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 64 {
        let cut: String = text.chars().take(64).collect();
        format!("{cut}… ({} bytes)", text.len())
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// CNI_COMMAND and the environment
// ---------------------------------------------------------------------------------------------

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    /// Attach the container to the network (or apply modifications); answers a result.
    Add,
    /// Detach and release everything held for the attachment; idempotent; answers nothing.
    Del,
    /// Check that the attachment in `prevResult` is still as expected; answers nothing or an error.
    Check,
    /// Report the supported spec versions; never needs the daemon.
    Version,
    /// Report whether the plugin can serve ADD (errors 50/51 when it cannot); answers nothing.
    Status,
    /// Release everything not in `cni.dev/valid-attachments`; answers nothing.
    Gc,
}

impl CniCommand {
    pub const ALL: [CniCommand; 6] = [
        CniCommand::Add,
        CniCommand::Del,
        CniCommand::Check,
        CniCommand::Version,
        CniCommand::Status,
        CniCommand::Gc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }

    /// The environment variables the spec requires for this verb, besides `CNI_COMMAND`.
    /// `CNI_ARGS` and `CNI_PATH` are optional for every verb; so is `CNI_NETNS` for DEL.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            CniCommand::Add | CniCommand::Check => &[ENV_CONTAINERID, ENV_NETNS, ENV_IFNAME],
            CniCommand::Del => &[ENV_CONTAINERID, ENV_IFNAME],
            CniCommand::Version | CniCommand::Status | CniCommand::Gc => &[],
        }
    }
}

impl FromStr for CniCommand {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniCommand::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                CniError::invalid_env(format!("{ENV_COMMAND}={s:?} is not a CNI command"))
                    .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC")
            })
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `CNI_*` environment of one invocation, validated for its verb.
///
/// A variable the verb requires is always `Some` (ADD and CHECK: container ID, netns, ifname; DEL:
/// container ID and ifname). An empty variable counts as absent (runtimes pass `CNI_NETNS=` on DEL
/// when the namespace is gone). For VERSION only `CNI_COMMAND` is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: CniCommand,
    /// `CNI_CONTAINERID`: starts with a letter or digit, then letters, digits, `_`, `.` and `-`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: path of the container's network namespace, as given.
    pub netns: Option<String>,
    /// `CNI_IFNAME`: the interface to create inside the container.
    pub ifname: Option<IfName>,
    /// `CNI_ARGS`, split into `(key, value)` pairs in their original order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, as given (a `:`-separated list of directories); see [`CniEnv::path_dirs`].
    pub path: Option<String>,
}

/// "X, Y not set" for the variables `command` requires that are not `present` (a variable not in
/// `present` counts as set).
fn missing_env(command: CniCommand, present: &[(&str, bool)]) -> Option<String> {
    let missing: Vec<&str> = command
        .required_env()
        .iter()
        .copied()
        .filter(|name| present.iter().any(|(n, set)| n == name && !set))
        .collect();
    (!missing.is_empty()).then(|| format!("{} not set", missing.join(", ")))
}

impl CniEnv {
    /// Parses the environment of one invocation (pass `std::env::vars()` collected into a map).
    pub fn from_map(env: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let get = |key: &str| env.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let command: CniCommand = get(ENV_COMMAND)
            .ok_or_else(|| CniError::invalid_env(format!("{ENV_COMMAND} is not set")))?
            .parse()?;
        if command == CniCommand::Version {
            return Ok(CniEnv::bare(command));
        }
        let args = match get(ENV_ARGS) {
            Some(raw) => parse_cni_args(raw)?,
            None => Vec::new(),
        };
        CniEnv::from_parts(
            command,
            get(ENV_CONTAINERID).map(str::to_string),
            get(ENV_NETNS).map(str::to_string),
            get(ENV_IFNAME).map(str::to_string),
            args,
            get(ENV_PATH).map(str::to_string),
        )
    }

    /// Validates already separated parts (as carried by a [`crate::shim::ShimRequest`]) with the
    /// same rules as [`CniEnv::from_map`]. Every missing or invalid variable is named in one error.
    pub fn from_parts(
        command: CniCommand,
        container_id: Option<String>,
        netns: Option<String>,
        ifname: Option<String>,
        args: Vec<(String, String)>,
        path: Option<String>,
    ) -> Result<Self, CniError> {
        if command == CniCommand::Version {
            return Ok(CniEnv::bare(command));
        }
        let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let (container_id, netns, ifname, path) = (
            nonempty(container_id),
            nonempty(netns),
            nonempty(ifname),
            nonempty(path),
        );

        let present = [
            (ENV_CONTAINERID, container_id.is_some()),
            (ENV_NETNS, netns.is_some()),
            (ENV_IFNAME, ifname.is_some()),
        ];
        let mut problems: Vec<String> = missing_env(command, &present).into_iter().collect();
        if let Some(id) = &container_id {
            if !is_valid_identifier(id) {
                problems.push(format!(
                    "{ENV_CONTAINERID}={id:?} is invalid (it must start with a letter or digit, \
                     followed by letters, digits, '_', '.' or '-')"
                ));
            }
        }
        let ifname = match ifname.map(IfName::new).transpose() {
            Ok(name) => name,
            Err(e) => {
                problems.push(format!("{ENV_IFNAME}: {e}"));
                None
            }
        };
        for (key, value) in &args {
            if let Err(reason) = check_arg_pair(key, value) {
                problems.push(format!("{ENV_ARGS}: {reason}"));
            }
        }
        if !problems.is_empty() {
            return Err(CniError::invalid_env(format!(
                "invalid CNI environment for {command}: {}",
                problems.join("; ")
            )));
        }
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    fn bare(command: CniCommand) -> Self {
        CniEnv {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: Vec::new(),
            path: None,
        }
    }

    /// The value of `key` in `CNI_ARGS` (the last one, if it is given twice).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The directories of `CNI_PATH`.
    pub fn path_dirs(&self) -> Vec<&Path> {
        self.path
            .as_deref()
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(Path::new)
            .collect()
    }
}

/// The spec's rule for container IDs and network names: a letter or digit, then letters, digits,
/// `_`, `.` or `-`. (Both end up in state file names, so this also keeps `/` out.)
pub fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, e.g.
/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0`. Empty segments (a trailing `;`)
/// are skipped; a segment without exactly one `=`, or with an empty key, is an error (code 4).
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut pairs = Vec::new();
    for segment in raw.split(';').filter(|s| !s.is_empty()) {
        let pair = segment.split_once('=').ok_or_else(|| {
            CniError::invalid_env(format!("{ENV_ARGS}: {segment:?} is not a KEY=VALUE pair"))
        })?;
        check_arg_pair(pair.0, pair.1)
            .map_err(|reason| CniError::invalid_env(format!("{ENV_ARGS}: {reason}")))?;
        pairs.push((pair.0.to_string(), pair.1.to_string()));
    }
    Ok(pairs)
}

fn check_arg_pair(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("pair \"={value}\" has an empty key"));
    }
    if key.contains([';', '=']) || value.contains([';', '=']) {
        return Err(format!(
            "pair {:?} is not a single KEY=VALUE pair",
            format!("{key}={value}")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Network configuration (stdin)
// ---------------------------------------------------------------------------------------------

/// `{"containerID": …, "ifname": …}`: one attachment the runtime still knows, as listed for GC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// DNS settings, in a configuration or a result. Every part is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    /// Priority-ordered nameserver addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// The local domain for short hostname lookups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Priority-ordered search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The weft plugin's network configuration: the JSON the runtime writes on stdin.
///
/// Parsing is strict: a field weft does not know is an error (code 7) naming it, so a typo such as
/// `"mut": 1400` is caught rather than silently ignored. Exceptions: keys under `cni.dev/` other
/// than the two below are reserved for the runtime and passed over, so a runtime that adds a new one
/// does not break every ADD. `args` is free-form by the spec, and `runtimeConfig` and `prevResult`
/// are kept as JSON for the daemon to read.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: the spec version of this request and of the output; always supported.
    pub cni_version: String,
    /// `cniVersions`: the versions the configuration list declares (the runtime has already picked
    /// `cniVersion` from them; kept for information).
    pub cni_versions: Vec<String>,
    /// `name`: the network name; same character rules as a container ID.
    pub name: String,
    /// `type`: the plugin binary's file name (no `/`).
    pub plugin_type: String,
    /// `args`: free-form arguments from the runtime.
    pub args: Option<Map<String, Value>>,
    /// `ipMasq`: masquerade the pod's traffic leaving the cluster; weftd masquerades when absent.
    pub ip_masq: Option<bool>,
    /// `ipam`: IPAM settings; weft does its own IPAM, so this is only read, never delegated.
    pub ipam: Option<Map<String, Value>>,
    /// `dns`: DNS settings to report in the result.
    pub dns: Option<Dns>,
    /// `capabilities`: which capability keys the runtime may pass in `runtimeConfig`.
    pub capabilities: BTreeMap<String, bool>,
    /// `runtimeConfig`: capability arguments from the runtime (an object when present).
    pub runtime_config: Option<Value>,
    /// `prevResult`: the previous plugin's result (ADD in a chain) or this attachment's ADD result
    /// (CHECK, DEL); an object when present. Read it with [`NetConf::prev_result`].
    pub prev_result: Option<Value>,
    /// `disableCheck` (a configuration-list field, accepted here too).
    pub disable_check: Option<bool>,
    /// `disableGC` (a configuration-list field, accepted here too).
    pub disable_gc: Option<bool>,
    /// `cni.dev/valid-attachments`: GC's list of attachments still in use.
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// `cni.dev/attachments`: the same list under the name an earlier draft used (libcni sends both).
    pub attachments: Option<Vec<GcAttachment>>,
    /// `daemonSocket` (weft): the path of weftd's CNI socket; [`DEFAULT_DAEMON_SOCKET`] when absent.
    pub daemon_socket: String,
    /// `mtu` (weft): the pod interface MTU, [`MTU_MIN`]..=[`MTU_MAX`]; weftd's own value when absent.
    pub mtu: Option<u32>,
}

impl NetConf {
    /// Every top-level field weft accepts.
    pub const KNOWN_FIELDS: [&'static str; 17] = [
        "cniVersion",
        "cniVersions",
        "name",
        "type",
        "args",
        "ipMasq",
        "ipam",
        "dns",
        "capabilities",
        "runtimeConfig",
        "prevResult",
        "disableCheck",
        "disableGC",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
        "daemonSocket",
        "mtu",
    ];

    /// Parses the configuration bytes from stdin. Not JSON: code 6. Unsupported `cniVersion`: code 1.
    /// Anything else wrong (unknown field, wrong type, bad value): code 7, naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                CniError::DECODING_FAILURE,
                format!("network configuration is not valid JSON: {e}"),
            )
        })?;
        NetConf::from_value(&value)
    }

    /// Validates an already decoded configuration (as the daemon receives it from the shim).
    pub fn from_value(value: &Value) -> Result<Self, CniError> {
        let obj = value.as_object().ok_or_else(|| {
            CniError::invalid_config(format!(
                "network configuration must be a JSON object, not {}",
                shown(value)
            ))
        })?;
        // The version first: a configuration for another version may well have other fields.
        let cni_version = config_version(obj)?;
        reject_unknown_fields(obj)?;
        let (name, plugin_type) = name_and_type(obj)?;
        check_dns_fields(obj)?;
        let runtime_config = optional_object(obj, "runtimeConfig")?;
        let prev_result = optional_object(obj, "prevResult")?;
        let (daemon_socket, mtu) = weft_fields(obj)?;
        Ok(NetConf {
            cni_version,
            cni_versions: optional(obj, "cniVersions")?.unwrap_or_default(),
            name,
            plugin_type,
            args: optional(obj, "args")?,
            ip_masq: optional(obj, "ipMasq")?,
            ipam: optional(obj, "ipam")?,
            dns: optional(obj, "dns")?,
            capabilities: optional(obj, "capabilities")?.unwrap_or_default(),
            runtime_config,
            prev_result,
            disable_check: optional(obj, "disableCheck")?,
            disable_gc: optional(obj, "disableGC")?,
            valid_attachments: optional(obj, "cni.dev/valid-attachments")?,
            attachments: optional(obj, "cni.dev/attachments")?,
            daemon_socket,
            mtu,
        })
    }

    /// The attachments GC must keep: `cni.dev/valid-attachments`, else `cni.dev/attachments`.
    /// `None` when neither is present (a GC without a list must not release anything).
    pub fn gc_attachments(&self) -> Option<&[GcAttachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }

    /// `prevResult`, parsed (any supported version). Errors are code 7 and name the bad entry, e.g.
    /// `prevResult.ips[0].address`.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| CniResult::parse_in(v, "prevResult"))
            .transpose()
    }
}

/// `cniVersion` of a network configuration: present, a string, and a version weft supports.
fn config_version(obj: &Map<String, Value>) -> Result<String, CniError> {
    match obj.get("cniVersion") {
        None | Some(Value::Null) => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            "network configuration has no cniVersion (read as 0.1.0, which weft does not support)",
        )
        .with_details(supported_list())),
        Some(Value::String(v)) if is_supported_version(v) => Ok(v.clone()),
        Some(Value::String(v)) => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version: cniVersion {v:?} is not supported"),
        )
        .with_details(supported_list())),
        Some(other) => Err(CniError::invalid_config(format!(
            "field \"cniVersion\" must be a string, not {}",
            shown(other)
        ))),
    }
}

/// Every top-level field must be one of [`NetConf::KNOWN_FIELDS`] or a reserved `cni.dev/` key.
fn reject_unknown_fields(obj: &Map<String, Value>) -> Result<(), CniError> {
    let unknown: Vec<String> = obj
        .iter()
        .filter(|(k, _)| !NetConf::KNOWN_FIELDS.contains(&k.as_str()) && !k.starts_with("cni.dev/"))
        .map(|(k, v)| format!("{k:?} (value {})", shown(v)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(CniError::invalid_config(format!(
        "unknown field{} in network configuration: {}",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    ))
    .with_details(format!(
        "weft accepts: {} (and other reserved cni.dev/ keys)",
        NetConf::KNOWN_FIELDS.join(", ")
    )))
}

/// `name` (a valid network name) and `type` (a plugin file name), both required.
fn name_and_type(obj: &Map<String, Value>) -> Result<(String, String), CniError> {
    let name: String = required(obj, "name")?;
    if !is_valid_identifier(&name) {
        return Err(CniError::invalid_config(format!(
            "field \"name\": {name:?} is not a valid network name (it must start with a letter \
             or digit, followed by letters, digits, '_', '.' or '-')"
        )));
    }
    let plugin_type: String = required(obj, "type")?;
    if plugin_type.is_empty() || plugin_type.contains(['/', '\\']) {
        return Err(CniError::invalid_config(format!(
            "field \"type\": {plugin_type:?} is not a plugin file name"
        )));
    }
    Ok((name, plugin_type))
}

/// `dns`, when it is an object, holds only the four keys the spec defines.
fn check_dns_fields(obj: &Map<String, Value>) -> Result<(), CniError> {
    let Some(dns) = obj.get("dns").and_then(Value::as_object) else {
        return Ok(());
    };
    let known = ["nameservers", "domain", "search", "options"];
    match dns.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(CniError::invalid_config(format!(
            "unknown field {k:?} in \"dns\" (value {}); expected nameservers, domain, search or options",
            shown(&dns[k])
        ))),
        None => Ok(()),
    }
}

/// weft's own fields: `daemonSocket` (an absolute path that fits a socket address; the default
/// when absent) and `mtu` (within [`MTU_MIN`]..=[`MTU_MAX`]).
fn weft_fields(obj: &Map<String, Value>) -> Result<(String, Option<u32>), CniError> {
    let daemon_socket: String =
        optional(obj, "daemonSocket")?.unwrap_or_else(|| DEFAULT_DAEMON_SOCKET.to_string());
    if !daemon_socket.starts_with('/') || daemon_socket.len() > SOCKET_PATH_MAX {
        return Err(CniError::invalid_config(format!(
            "field \"daemonSocket\": {daemon_socket:?} must be an absolute path of at most \
             {SOCKET_PATH_MAX} bytes"
        )));
    }
    let mtu: Option<u32> = optional(obj, "mtu")?;
    if let Some(mtu) = mtu.filter(|m| !(MTU_MIN..=MTU_MAX).contains(m)) {
        return Err(CniError::invalid_config(format!(
            "field \"mtu\": {mtu} is outside {MTU_MIN}..={MTU_MAX}"
        )));
    }
    Ok((daemon_socket, mtu))
}

fn supported_list() -> String {
    format!("weft supports cniVersion {}", SUPPORTED_VERSIONS.join(", "))
}

/// A field that may be absent (or null); present with the wrong type is code 7 naming it.
fn optional<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            CniError::invalid_config(format!("field {key:?}: {e} (value {})", shown(v)))
        }),
    }
}

fn required<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<T, CniError> {
    optional(obj, key)?.ok_or_else(|| {
        CniError::invalid_config(format!(
            "network configuration is missing the required field {key:?}"
        ))
    })
}

fn optional_object(obj: &Map<String, Value>, key: &str) -> Result<Option<Value>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(v) => Err(CniError::invalid_config(format!(
            "field {key:?} must be an object, not {}",
            shown(v)
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// An interface the plugin created or touched. Host-side interfaces have no `sandbox`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff` (absent where L2 addresses mean nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user socket path (1.1 only; other plugins' results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI ID of a passed-through device (1.1 only; other plugins' results).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "pciID")]
    pub pci_id: Option<String>,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, host bits kept: `10.244.1.5/24`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in the container. Everything but `dst` and `gw` is 1.1 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route metric; lower wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst`, via `gw` if given, with none of the 1.1 attributes.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// The result of ADD (and the `prevResult` of CHECK and DEL), in the 1.x model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// The result layouts: 0.3.0 through 0.4.0 share one, 1.0.0 dropped `version`, 1.1.0 added fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V0_4,
    V1_0,
    V1_1,
}

impl Layout {
    /// Unknown versions get the newest layout: callers pass a version from a validated [`NetConf`].
    fn of(cni_version: &str) -> Self {
        match cni_version {
            "0.3.0" | "0.3.1" | "0.4.0" => Layout::V0_4,
            "1.0.0" => Layout::V1_0,
            _ => Layout::V1_1,
        }
    }
}

const INTERFACE_FIELDS_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// The result as printed on stdout for a request of `cni_version` (one of
    /// [`SUPPORTED_VERSIONS`]). Empty lists and an empty `dns` are left out, as libcni does.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let layout = Layout::of(cni_version);
        let mut out = Map::new();
        out.insert("cniVersion".into(), cni_version.into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| {
                let mut v = to_object(i);
                if layout != Layout::V1_1 {
                    for key in INTERFACE_FIELDS_1_1 {
                        v.remove(key);
                    }
                }
                Value::Object(v)
            });
            out.insert("interfaces".into(), list.collect());
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|ip| {
                let mut v = to_object(ip);
                if layout == Layout::V0_4 {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    v.insert("version".into(), family.into());
                }
                Value::Object(v)
            });
            out.insert("ips".into(), list.collect());
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| {
                let mut v = to_object(r);
                if layout != Layout::V1_1 {
                    for key in ROUTE_FIELDS_1_1 {
                        v.remove(key);
                    }
                }
                Value::Object(v)
            });
            out.insert("routes".into(), list.collect());
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), Value::Object(to_object(&self.dns)));
        }
        Value::Object(out)
    }

    /// Parses a result of any supported version (0.3.0 to 1.1.0), e.g. a `prevResult`. Fields this
    /// model does not know are ignored (other plugins in a chain may add some); errors are code 7
    /// and name the entry, e.g. `result.ips[1].address`.
    pub fn from_json(value: &Value) -> Result<Self, CniError> {
        CniResult::parse_in(value, "result")
    }

    fn parse_in(value: &Value, what: &str) -> Result<Self, CniError> {
        let bad = |msg: String| CniError::invalid_config(format!("{what}{msg}"));
        let obj = value
            .as_object()
            .ok_or_else(|| bad(format!(" must be an object, not {}", shown(value))))?;
        match obj.get("cniVersion") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if is_supported_version(v) => {}
            Some(other) => {
                return Err(CniError::new(
                    CniError::INCOMPATIBLE_VERSION,
                    format!(
                        "{what} has cniVersion {}, which weft cannot read",
                        shown(other)
                    ),
                )
                .with_details(supported_list()))
            }
        }
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            return Err(CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!("{what} is in the 0.2.0 layout (ip4/ip6), which weft cannot read"),
            )
            .with_details(supported_list()));
        }

        let interfaces: Vec<Interface> = list_in(obj, "interfaces", what)?;
        let ips: Vec<IpConfig> = list_in(obj, "ips", what)?;
        let routes: Vec<Route> = list_in(obj, "routes", what)?;
        let dns: Dns = match obj.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => Dns::deserialize(v).map_err(|e| bad(format!(".dns: {e}")))?,
        };

        check_ips(obj, &ips, interfaces.len(), what)?;
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

/// Each parsed address in a result against its raw entry: the interface index is in range, and a
/// 0.3.x/0.4.0 `version` label agrees with the address family.
fn check_ips(
    obj: &Map<String, Value>,
    ips: &[IpConfig],
    interfaces: usize,
    what: &str,
) -> Result<(), CniError> {
    let bad = |msg: String| CniError::invalid_config(format!("{what}{msg}"));
    let raw_ips = obj
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, (ip, raw)) in ips.iter().zip(raw_ips).enumerate() {
        if let Some(index) = ip.interface.filter(|n| *n >= interfaces) {
            return Err(bad(format!(
                ".ips[{i}].interface: {index} is not an index into the {interfaces} interfaces"
            )));
        }
        // 0.3.x and 0.4.0 label each address with its family; it must agree with the address.
        if let Some(version) = raw.get("version").filter(|v| !v.is_null()) {
            let family = if ip.address.addr().is_ipv4() {
                "4"
            } else {
                "6"
            };
            if version.as_str() != Some(family) {
                return Err(bad(format!(
                    ".ips[{i}].version: {} does not match address {}",
                    shown(version),
                    ip.address
                )));
            }
        }
    }
    Ok(())
}

fn to_object<T: Serialize>(item: &T) -> Map<String, Value> {
    match serde_json::to_value(item) {
        Ok(Value::Object(map)) => map,
        // Interface, IpConfig, Route and Dns are plain structs of strings, numbers and lists.
        _ => unreachable!("result entries serialize to JSON objects"),
    }
}

fn list_in<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Vec<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                T::deserialize(item).map_err(|e| {
                    CniError::invalid_config(format!(
                        "{what}.{key}[{i}]: {e} (value {})",
                        shown(item)
                    ))
                })
            })
            .collect(),
        Some(other) => Err(CniError::invalid_config(format!(
            "{what}.{key} must be a list, not {}",
            shown(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";

    fn add_env() -> BTreeMap<String, String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", "/var/run/netns/blue"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
    }

    #[track_caller]
    fn assert_err(result: Result<impl fmt::Debug, CniError>, code: u32, needles: &[&str]) {
        let err = result.expect_err("expected an error");
        assert_eq!(err.code, code, "wrong code for {err:?}");
        for needle in needles {
            assert!(
                err.msg.contains(needle),
                "message {:?} should mention {needle:?}",
                err.msg
            );
        }
    }

    // --- commands and environment ---

    #[test]
    fn commands_round_trip() {
        for command in CniCommand::ALL {
            assert_eq!(command.as_str().parse::<CniCommand>().unwrap(), command);
            let json = serde_json::to_value(command).unwrap();
            assert_eq!(json, Value::String(command.as_str().to_string()));
        }
        assert_err("add".parse::<CniCommand>(), 4, &["CNI_COMMAND", "\"add\""]);
        assert_err(
            "UPDATE".parse::<CniCommand>(),
            4,
            &["CNI_COMMAND", "UPDATE"],
        );
    }

    #[test]
    fn add_environment() {
        let e = CniEnv::from_map(&add_env()).unwrap();
        assert_eq!(e.command, CniCommand::Add);
        assert_eq!(e.container_id.as_deref(), Some(ID));
        assert_eq!(e.netns.as_deref(), Some("/var/run/netns/blue"));
        assert_eq!(e.ifname.as_ref().map(IfName::as_str), Some("eth0"));
        assert_eq!(e.args.len(), 3);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(e.arg("K8S_POD_UID"), None);
        assert_eq!(
            e.path_dirs(),
            vec![Path::new("/opt/cni/bin"), Path::new("/usr/lib/cni")]
        );
    }

    #[test]
    fn required_variables_per_verb() {
        // ADD and CHECK need container ID, netns and ifname; each missing one is named.
        for verb in ["ADD", "CHECK"] {
            for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
                let mut e = add_env();
                e.insert("CNI_COMMAND".into(), verb.into());
                e.remove(var);
                assert_err(CniEnv::from_map(&e), 4, &[var, verb]);
                // Empty counts as missing.
                e.insert(var.into(), String::new());
                assert_err(CniEnv::from_map(&e), 4, &[var]);
            }
        }
        // All missing variables are named at once.
        let e = env(&[("CNI_COMMAND", "ADD")]);
        assert_err(
            CniEnv::from_map(&e),
            4,
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        );

        // DEL: the namespace may be gone.
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]);
        let parsed = CniEnv::from_map(&e).unwrap();
        assert_eq!(parsed.netns, None);
        assert_err(
            CniEnv::from_map(&env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")])),
            4,
            &["CNI_CONTAINERID"],
        );

        // CNI_PATH and CNI_ARGS are optional everywhere.
        let mut e = add_env();
        e.remove("CNI_PATH");
        e.remove("CNI_ARGS");
        assert!(CniEnv::from_map(&e).is_ok());

        // VERSION, STATUS and GC need nothing else; VERSION does not even look.
        for verb in ["VERSION", "STATUS", "GC"] {
            let parsed = CniEnv::from_map(&env(&[("CNI_COMMAND", verb)])).unwrap();
            assert_eq!(parsed.command.as_str(), verb);
        }
        let version = env(&[("CNI_COMMAND", "VERSION"), ("CNI_IFNAME", "bad/name")]);
        assert!(CniEnv::from_map(&version).is_ok());
    }

    #[test]
    fn invalid_variables_are_named() {
        assert_err(CniEnv::from_map(&env(&[])), 4, &["CNI_COMMAND"]);
        assert_err(
            CniEnv::from_map(&env(&[("CNI_COMMAND", "FROB")])),
            4,
            &["CNI_COMMAND", "FROB"],
        );

        let cases = [
            ("CNI_IFNAME", "much-too-long-name0"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "a/../../etc"),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "=value"),
            ("CNI_ARGS", "A=1;B=2=3"),
        ];
        for (var, value) in cases {
            let mut e = add_env();
            e.insert(var.into(), value.into());
            assert_err(CniEnv::from_map(&e), 4, &[var]);
        }
    }

    #[test]
    fn cni_args() {
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("FOO=BAR;ABC=123;").unwrap(),
            vec![
                ("FOO".to_string(), "BAR".to_string()),
                ("ABC".to_string(), "123".to_string())
            ]
        );
        assert_eq!(
            parse_cni_args("EMPTY=").unwrap(),
            vec![("EMPTY".to_string(), String::new())]
        );
        assert_err(parse_cni_args("FOO"), 4, &["CNI_ARGS", "\"FOO\""]);
        assert_err(parse_cni_args("A=1;=2"), 4, &["CNI_ARGS", "empty key"]);
        assert_err(parse_cni_args("A=1=2"), 4, &["CNI_ARGS", "A=1=2"]);
    }

    #[test]
    fn from_parts_revalidates() {
        let ok = CniEnv::from_parts(
            CniCommand::Del,
            Some(ID.into()),
            None,
            Some("eth0".into()),
            vec![("K".into(), "V".into())],
            None,
        );
        assert!(ok.is_ok());
        let forged = CniEnv::from_parts(
            CniCommand::Del,
            Some(ID.into()),
            None,
            Some("eth0".into()),
            vec![("K".into(), "V;X=Y".into())],
            None,
        );
        assert_err(forged, 4, &["CNI_ARGS"]);
    }

    // --- network configuration ---

    fn weft_conf(extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "weft",
            "type": "weft-cni",
        });
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        conf
    }

    #[test]
    fn minimal_config_and_defaults() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}"#).unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.daemon_socket, DEFAULT_DAEMON_SOCKET);
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.prev_result().unwrap(), None);
        assert_eq!(conf.gc_attachments(), None);
    }

    /// The spec's section 1 example list, as the runtime derives the first plugin's stdin from it
    /// (section 4): with the bridge plugin's own keys it is refused by name; with weft's type and
    /// keys it parses, and every well-known field is kept.
    #[test]
    fn spec_example_config() {
        let bridge = json!({
            "cniVersion": "1.1.0",
            "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
            "name": "dbnet",
            "type": "bridge",
            "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {
                "type": "host-local",
                "subnet": "10.1.0.0/16",
                "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0"}]
            },
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let err = NetConf::from_value(&bridge).unwrap_err();
        assert_eq!(err.code, 7);
        assert!(
            err.msg.contains("\"bridge\"") && err.msg.contains("\"cni0\""),
            "{err}"
        );
        assert!(err.msg.contains("\"keyA\""), "{err}");
        assert!(err.details.contains("daemonSocket"), "{err}");

        let mut weft = bridge.clone();
        let obj = weft.as_object_mut().unwrap();
        obj.remove("bridge");
        obj.remove("keyA");
        obj.insert("type".into(), "weft-cni".into());
        obj.insert("mtu".into(), 1450.into());
        obj.insert("daemonSocket".into(), "/run/weft-test/cni.sock".into());
        let conf = NetConf::from_value(&weft).unwrap();
        assert_eq!(conf.name, "dbnet");
        assert_eq!(conf.cni_versions, ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(conf.ipam.unwrap()["subnet"], "10.1.0.0/16");
        assert_eq!(
            conf.dns.unwrap().nameservers,
            vec!["10.1.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.daemon_socket, "/run/weft-test/cni.sock");
    }

    /// The 0.4.0 spec's "pci" example: `args` is free-form and kept as given.
    #[test]
    fn spec_example_args() {
        let conf = NetConf::from_value(&json!({
            "cniVersion": "0.4.0",
            "name": "pci",
            "type": "weft-cni",
            "ipam": {
                "type": "dhcp",
                "routes": [ { "dst": "10.3.0.0/16" }, { "dst": "10.4.0.0/16" } ]
            },
            "args": { "labels": { "appVersion": "1.0" } }
        }))
        .unwrap();
        assert_eq!(conf.args.unwrap()["labels"]["appVersion"], "1.0");
    }

    /// The portmap example (capabilities and runtimeConfig) and the tuning example with a 1.1
    /// `prevResult`.
    #[test]
    fn spec_example_runtime_config_and_prev_result() {
        let conf = NetConf::from_value(&json!({
            "cniVersion": "1.1.0",
            "name": "dbnet",
            "type": "weft-cni",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
            },
            "prevResult": spec_result_1_1()
        }))
        .unwrap();
        assert_eq!(conf.capabilities.get("portMappings"), Some(&true));
        assert_eq!(
            conf.runtime_config.as_ref().unwrap()["portMappings"][0]["hostPort"],
            8080
        );
        let prev = conf.prev_result().unwrap().unwrap();
        assert_eq!(prev.interfaces.len(), 3);
        assert_eq!(
            prev.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(prev.ips[0].address.to_string(), "10.1.0.5/16");
        assert_eq!(prev.ips[0].interface, Some(2));
    }

    #[test]
    fn gc_config() {
        let attachments = json!([
            {"containerID": ID, "ifname": "eth0"},
            {"containerID": ID, "ifname": "net1"}
        ]);
        // libcni sends the list under both names.
        let conf = NetConf::from_value(&weft_conf(json!({
            "cni.dev/valid-attachments": attachments,
            "cni.dev/attachments": attachments,
            "disableGC": false,
            "disableCheck": true,
        })))
        .unwrap();
        let list = conf.gc_attachments().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].ifname, "net1");
        assert_eq!(list[0].container_id, ID);
        assert_eq!(conf.disable_check, Some(true));

        let old_name =
            NetConf::from_value(&weft_conf(json!({"cni.dev/attachments": attachments}))).unwrap();
        assert_eq!(old_name.gc_attachments().unwrap().len(), 2);

        let empty =
            NetConf::from_value(&weft_conf(json!({"cni.dev/valid-attachments": []}))).unwrap();
        assert_eq!(empty.gc_attachments(), Some(&[][..]));

        assert_err(
            NetConf::from_value(&weft_conf(
                json!({"cni.dev/valid-attachments": [{"ifname": "eth0"}]}),
            )),
            7,
            &["cni.dev/valid-attachments", "containerID"],
        );
        // Other cni.dev/ keys belong to the runtime and are passed over.
        assert!(NetConf::from_value(&weft_conf(json!({"cni.dev/future-key": 1}))).is_ok());
    }

    #[test]
    fn bad_configs_name_the_problem() {
        // Not JSON: decoding failure.
        assert_err(NetConf::parse(b"{\"cniVersion\": "), 6, &["JSON"]);
        assert_err(NetConf::parse(b""), 6, &["JSON"]);
        // Versions.
        assert_err(
            NetConf::from_value(&json!({"cniVersion": "0.2.0", "name": "n", "type": "t"})),
            1,
            &["0.2.0"],
        );
        assert_err(
            NetConf::from_value(
                &json!({"cniVersion": "2.0.0", "name": "n", "type": "t", "bogus": 1}),
            ),
            1,
            &["2.0.0"],
        );
        assert_err(
            NetConf::from_value(&json!({"name": "n", "type": "t"})),
            1,
            &["cniVersion"],
        );

        let cases: Vec<(Value, &[&str])> = vec![
            (json!([1, 2]), &["object"]),
            (
                json!({"cniVersion": 1.1, "name": "n", "type": "t"}),
                &["cniVersion", "string"],
            ),
            (weft_conf(json!({"mut": 1400})), &["\"mut\"", "1400"]),
            (weft_conf(json!({"mtu": "1400"})), &["\"mtu\"", "\"1400\""]),
            (weft_conf(json!({"mtu": -1})), &["\"mtu\""]),
            (
                weft_conf(json!({"mtu": 67})),
                &["\"mtu\"", "67", "68..=65535"],
            ),
            (weft_conf(json!({"mtu": 65536})), &["\"mtu\"", "65536"]),
            (weft_conf(json!({"daemonSocket": 5})), &["\"daemonSocket\""]),
            (
                weft_conf(json!({"daemonSocket": "run/weft.sock"})),
                &["\"daemonSocket\"", "absolute"],
            ),
            (
                weft_conf(json!({"daemonSocket": format!("/{}", "x".repeat(120))})),
                &["\"daemonSocket\"", "107"],
            ),
            (
                weft_conf(json!({"name": "bad name"})),
                &["\"name\"", "bad name"],
            ),
            (weft_conf(json!({"name": null})), &["\"name\""]),
            (
                json!({"cniVersion": "1.1.0", "type": "t"}),
                &["\"name\"", "missing"],
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n"}),
                &["\"type\"", "missing"],
            ),
            (weft_conf(json!({"type": "../bin/evil"})), &["\"type\""]),
            (weft_conf(json!({"ipMasq": "yes"})), &["\"ipMasq\""]),
            (weft_conf(json!({"ipam": "host-local"})), &["\"ipam\""]),
            (
                weft_conf(json!({"dns": {"nameservers": ["not-an-ip"]}})),
                &["\"dns\""],
            ),
            (
                weft_conf(json!({"dns": {"nameserver": ["10.0.0.1"]}})),
                &["\"nameserver\"", "dns"],
            ),
            (
                weft_conf(json!({"capabilities": {"portMappings": "yes"}})),
                &["\"capabilities\""],
            ),
            (
                weft_conf(json!({"runtimeConfig": []})),
                &["\"runtimeConfig\"", "object"],
            ),
            (
                weft_conf(json!({"prevResult": "none"})),
                &["\"prevResult\"", "object"],
            ),
            (
                weft_conf(json!({"cniVersions": "1.1.0"})),
                &["\"cniVersions\""],
            ),
            (
                weft_conf(json!({"disableCheck": "true"})),
                &["\"disableCheck\""],
            ),
            (
                weft_conf(json!({"cni.dev/attachments": {}})),
                &["\"cni.dev/attachments\""],
            ),
        ];
        for (conf, needles) in cases {
            let err = NetConf::from_value(&conf).unwrap_err();
            assert_eq!(err.code, 7, "{conf} gave {err:?}");
            for needle in needles {
                assert!(
                    err.msg.contains(needle),
                    "{conf}: {:?} should mention {needle}",
                    err.msg
                );
            }
        }
    }

    // --- results ---

    /// The spec's 1.1 ADD result example.
    fn spec_result_1_1() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "ips": [
                {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}
            ],
            "routes": [
                {"dst": "0.0.0.0/0"}
            ],
            "dns": {
                "nameservers": ["10.1.0.1"]
            }
        })
    }

    /// The 0.4.0 spec's `prevResult` example (no cniVersion, `version` on each address).
    fn spec_result_0_4() -> Value {
        json!({
            "ips": [
                {"version": "4", "address": "10.0.0.5/32", "interface": 2}
            ],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    #[test]
    fn spec_results_round_trip() {
        let v11 = spec_result_1_1();
        let parsed = CniResult::from_json(&v11).unwrap();
        assert_eq!(parsed.to_json("1.1.0"), v11);
        // 1.0.0 has the same layout for these fields.
        let mut v10 = v11.clone();
        v10["cniVersion"] = "1.0.0".into();
        assert_eq!(parsed.to_json("1.0.0"), v10);

        let v04 = spec_result_0_4();
        let parsed = CniResult::from_json(&v04).unwrap();
        assert_eq!(parsed.ips[0].address.to_string(), "10.0.0.5/32");
        let mut expected = v04.clone();
        expected["cniVersion"] = "0.4.0".into();
        assert_eq!(parsed.to_json("0.4.0"), expected);
        assert_eq!(parsed.to_json("0.3.1")["ips"][0]["version"], "4");
        assert!(parsed.to_json("1.0.0")["ips"][0].get("version").is_none());
    }

    fn weft_result() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft1a2b3c4d5e6".into(),
                    mac: Some("0a:58:0a:f4:01:01".into()),
                    mtu: Some(1450),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:f4:01:05".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/blue".into()),
                    ..Interface::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/64".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    mtu: Some(1450),
                    advmss: Some(1410),
                    priority: Some(100),
                    table: Some(254),
                    scope: Some(0),
                    ..Route::new(
                        "0.0.0.0/0".parse().unwrap(),
                        Some("169.254.1.1".parse().unwrap()),
                    )
                },
                Route::new("::/0".parse().unwrap(), Some("fe80::1".parse().unwrap())),
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".parse().unwrap()],
                domain: Some("cluster.local".into()),
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    #[test]
    fn rendering_per_version() {
        let result = weft_result();

        let v11 = result.to_json("1.1.0");
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(
            v11["ips"][0]["address"], "10.244.1.5/24",
            "host bits are kept"
        );
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
        assert!(v11["interfaces"][0].get("sandbox").is_none());
        assert_eq!(
            v11["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1", "mtu": 1450, "advmss": 1410,
                   "priority": 100, "table": 254, "scope": 0})
        );
        assert_eq!(v11["dns"]["options"][0], "ndots:5");
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(CniResult::from_json(&v11).unwrap(), result);

        let v10 = result.to_json("1.0.0");
        assert_eq!(
            v10["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert!(v10["ips"][1].get("version").is_none());

        for old in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = result.to_json(old);
            assert_eq!(v["cniVersion"], old);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(
                v["routes"][0],
                json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
            );
            assert!(v["interfaces"][0].get("mtu").is_none());
            // What 0.x loses is only the 1.1 fields.
            let mut back = CniResult::from_json(&v).unwrap();
            back.interfaces.iter_mut().for_each(|i| i.mtu = Some(1450));
            back.routes[0] = result.routes[0].clone();
            assert_eq!(back, result);
        }

        // Empty parts are left out.
        assert_eq!(
            CniResult::default().to_json("1.1.0"),
            json!({"cniVersion": "1.1.0"})
        );
    }

    /// What Debian's reference `static` IPAM plugin (containernetworking-plugins 1.1.1) prints for
    /// the same addresses, routes and DNS in each version: our rendering is identical.
    #[test]
    fn matches_reference_plugin_output() {
        let ips = json!([
            {"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
            {"address": "3ffe:ffff:0:1ff::1/64", "gateway": "3ffe:ffff::1"}
        ]);
        let rest = json!({
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}],
            "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]}
        });
        let reference = |version: &str, with_family: bool| {
            let mut v = rest.clone();
            v["cniVersion"] = version.into();
            v["ips"] = ips.clone();
            if with_family {
                v["ips"][0]["version"] = "4".into();
                v["ips"][1]["version"] = "6".into();
            }
            v
        };
        let ours = CniResult::from_json(&reference("1.0.0", false)).unwrap();
        assert_eq!(ours.to_json("1.0.0"), reference("1.0.0", false));
        assert_eq!(ours.to_json("0.4.0"), reference("0.4.0", true));
        assert_eq!(ours.to_json("0.3.1"), reference("0.3.1", true));
        assert_eq!(
            CniResult::from_json(&reference("0.3.1", true)).unwrap(),
            ours
        );
    }

    #[test]
    fn bad_results_name_the_entry() {
        let mut wrong_family = spec_result_0_4();
        wrong_family["ips"][0]["version"] = "6".into();
        assert_err(
            CniResult::from_json(&wrong_family),
            7,
            &["ips[0].version", "10.0.0.5/32"],
        );

        let mut bad_index = spec_result_1_1();
        bad_index["ips"][0]["interface"] = 3.into();
        assert_err(
            CniResult::from_json(&bad_index),
            7,
            &["ips[0].interface", "3"],
        );

        let mut bad_addr = spec_result_1_1();
        bad_addr["ips"][0]["address"] = "10.1.0.5".into();
        assert_err(
            CniResult::from_json(&bad_addr),
            7,
            &["result.ips[0]", "10.1.0.5"],
        );

        let mut bad_route = spec_result_1_1();
        bad_route["routes"] = json!({"dst": "0.0.0.0/0"});
        assert_err(
            CniResult::from_json(&bad_route),
            7,
            &["result.routes", "list"],
        );

        let mut old = spec_result_1_1();
        old["cniVersion"] = "0.2.0".into();
        assert_err(CniResult::from_json(&old), 1, &["0.2.0"]);
        assert_err(
            CniResult::from_json(&json!({"ip4": {"ip": "10.0.0.5/24"}})),
            1,
            &["0.2.0", "ip4"],
        );

        // Through NetConf the entry is named as prevResult's.
        let conf = NetConf::from_value(&weft_conf(json!({"prevResult": bad_addr}))).unwrap();
        assert_err(conf.prev_result(), 7, &["prevResult.ips[0]"]);
    }

    #[test]
    fn unknown_result_fields_are_ignored() {
        let mut v = spec_result_1_1();
        v["interfaces"][0]["socketPath"] = "/run/vhost.sock".into();
        v["interfaces"][0]["somethingNew"] = true.into();
        v["extra"] = json!({"from": "another plugin"});
        let parsed = CniResult::from_json(&v).unwrap();
        assert_eq!(
            parsed.interfaces[0].socket_path.as_deref(),
            Some("/run/vhost.sock")
        );
        assert_eq!(
            parsed.to_json("1.1.0")["interfaces"][0]["socketPath"],
            "/run/vhost.sock"
        );
        assert!(parsed.to_json("1.0.0")["interfaces"][0]
            .get("socketPath")
            .is_none());
    }

    // --- errors and VERSION ---

    #[test]
    fn error_json_and_codes() {
        let e = CniError::new(CniError::TRY_AGAIN_LATER, "weftd is not running")
            .with_details("cannot connect to /run/weft/cni.sock");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "weftd is not running",
                   "details": "cannot connect to /run/weft/cni.sock"})
        );
        assert_eq!(
            e.to_string(),
            "weftd is not running: cannot connect to /run/weft/cni.sock (CNI error code 11)"
        );
        let codes = [
            (CniError::INCOMPATIBLE_VERSION, 1),
            (CniError::UNSUPPORTED_FIELD, 2),
            (CniError::UNKNOWN_CONTAINER, 3),
            (CniError::INVALID_ENVIRONMENT, 4),
            (CniError::IO_FAILURE, 5),
            (CniError::DECODING_FAILURE, 6),
            (CniError::INVALID_NETWORK_CONFIG, 7),
            (CniError::TRY_AGAIN_LATER, 11),
            (CniError::PLUGIN_NOT_AVAILABLE, 50),
            (CniError::LIMITED_CONNECTIVITY, 51),
        ];
        for (constant, spec) in codes {
            assert_eq!(constant, spec);
        }
        // Without details it reads as just the message; details may be absent on the wire.
        let e: CniError = serde_json::from_value(json!({"code": 50, "msg": "not ready"})).unwrap();
        assert_eq!(e.details, "");
        assert_eq!(e.to_string(), "not ready (CNI error code 50)");
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn version_reply() {
        assert_eq!(
            version_result(),
            json!({"cniVersion": "1.1.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(output_version(Some("0.4.0")), "0.4.0");
        assert_eq!(output_version(Some("0.2.0")), LATEST_VERSION);
        assert_eq!(output_version(None), LATEST_VERSION);
    }
}
