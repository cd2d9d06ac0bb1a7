//! The protocol between `weft-cni` (the shim the runtime executes) and `weftd`, over the unix
//! socket named by the configuration's `daemonSocket` (default `/run/weft/cni.sock`, mode 0600).
//!
//! # Framing
//!
//! One request per connection. The shim connects, writes one JSON document (a [`ShimRequest`]) and
//! shuts down its write half; the daemon reads to end of stream (at most [`MAX_MESSAGE_BYTES`]),
//! writes one JSON document (a [`ShimReply`]) and closes. Nothing else crosses the socket: no
//! length prefix, no newline delimiting, no keep-alive. The shim waits at most 60 s for the reply.
//!
//! ## The pod's network namespace, as a descriptor
//!
//! `CNI_NETNS` is a path in the runtime's mount namespace (`/var/run/netns/cni-…`,
//! `/proc/PID/ns/net`). The shim runs there (the runtime executes it); `weftd` in a DaemonSet does
//! not, and a namespace mounted in a private mount namespace is an empty file to everyone else. So
//! the shim opens `CNI_NETNS` itself (read-only, close-on-exec, non-blocking so that a FIFO cannot
//! hang it) and sends the descriptor with the request as `SCM_RIGHTS` ancillary data on its first
//! message (the first `sendmsg`, which carries the first bytes of the JSON). At most one descriptor
//! crosses per connection ([`MAX_DESCRIPTORS`]); which verbs carry it is
//! [`NetnsDescriptor::for_command`]:
//!
//! | verb | descriptor | when the shim cannot open `CNI_NETNS` |
//! | --- | --- | --- |
//! | `ADD`, `CHECK` | always | the invocation fails, naming the path: code 4, or 11 when the shim is out of descriptors or memory |
//! | `DEL` | when `CNI_NETNS` is set and opens | none is sent and DEL goes on: the runtime may have deleted the namespace already |
//! | `STATUS`, `GC` | never | — |
//!
//! The daemon reads every chunk with `recvmsg` and takes ownership of every descriptor that comes,
//! so none leaks: more than one, or one on a verb that carries none, is refused
//! ([`check_descriptors`], code 6) and all are closed. For `ADD` and `CHECK` it uses only the
//! descriptor, after checking that it is a network namespace (code 4 when it is not); the `netns`
//! field is kept for logs and for the result's `sandbox`. A request without a descriptor comes from
//! a shim older than this rule: the daemon then opens `netns` itself, in its own mount namespace,
//! as every release did before (and logs that at debug level). `DEL` needs no namespace (the
//! daemon releases everything from the node's side): the descriptor is closed unused, whatever
//! it is, so a DEL never fails over a namespace that is gone or no namespace at all.
//!
//! # Versioning
//!
//! Every request carries `api_version`, [`SHIM_API_VERSION`] today. A daemon that receives another
//! version answers with an error reply rather than guessing ([`decode_request`] returns
//! [`ShimError::UnsupportedVersion`], and [`ShimError::to_cni_error`] turns it into the reply):
//! during a rolling upgrade the host's shim and the node's daemon can be different releases for a
//! moment. Adding an optional request field does not change the version; changing or removing one
//! does. The namespace descriptor is such an optional addition, so it came without a new version:
//! an older shim sends none and the daemon falls back to the `netns` path; an older daemon reads
//! with `read(2)`, so the kernel closes the descriptor it never asked for, and it opens the path as
//! it always did. The error reply's shape, `{"status": "error", "error": {"code", "msg", "details"}}`, never
//! changes, so any shim can print any daemon's refusal.
//!
//! # Request
//!
//! ```json
//! {
//!   "api_version": 1,
//!   "command": "ADD",
//!   "container_id": "3f6940ab…",
//!   "netns": "/var/run/netns/cni-1234",
//!   "ifname": "eth0",
//!   "args": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-0"]],
//!   "path": "/opt/cni/bin",
//!   "config": { "cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", … }
//! }
//! ```
//!
//! `command` is the `CNI_COMMAND` verb; `container_id`, `netns`, `ifname`, `args` and `path` are the
//! other `CNI_*` variables (absent or empty ones are `null`; `args` split into pairs). `config` is
//! the network configuration from stdin exactly as the runtime wrote it: the shim checks only that
//! it is JSON, and the daemon validates it with [`crate::cni::NetConf::from_value`]. The shim has
//! already checked the environment for the verb with [`crate::cni::CniEnv`]; the daemon re-checks
//! with [`ShimRequest::cni_env`] rather than trust it.
//!
//! # Reply
//!
//! ```json
//! {"status": "success", "result": { "cniVersion": "1.1.0", "interfaces": […], "ips": […] }}
//! {"status": "success", "result": null}
//! {"status": "error", "error": {"code": 7, "msg": "field \"mtu\": 70000 is outside 68..=65535", "details": ""}}
//! ```
//!
//! On success the shim prints `result` on stdout exactly as given (nothing at all when it is
//! `null`) and exits 0, so the daemon renders it for the request's `cniVersion` itself
//! ([`crate::cni::CniResult::to_json`]). On error the shim prints
//! [`crate::cni::CniError::to_json`] with the configuration's `cniVersion` (the newest when that is
//! unsupported) and exits 1.
//!
//! # Verbs
//!
//! | verb | env the shim guarantees | daemon does | success `result` |
//! | --- | --- | --- | --- |
//! | `ADD` | container_id, netns, ifname | validates config; allocates addresses (keyed by container ID + ifname); creates the veth into the namespace (the descriptor); routes | the [`crate::cni::CniResult`] for `config.cniVersion` |
//! | `DEL` | container_id, ifname (netns may be null: the namespace is gone) | releases everything held for the attachment; idempotent, succeeds when nothing is left | `null` |
//! | `CHECK` | container_id, netns, ifname | compares the attachment, in the namespace of the descriptor, with `config.prevResult` | `null`, or an error |
//! | `STATUS` | nothing | reports readiness to serve ADD | `null`; else error 50 (not available) or 51 (and existing pods may have limited connectivity) |
//! | `GC` | nothing | releases every attachment not in `config["cni.dev/valid-attachments"]` | `null` |
//! | `VERSION` | — | never sent: the shim answers it alone | — |
//!
//! Errors the shim produces itself, without a reply: daemon socket absent or refusing
//! connections → code 11 "try again later" (STATUS: 50), naming the socket; no reply within 60 s,
//! or the connection closed without a reply → 11 (STATUS: 50); a reply that does not decode → 6;
//! stdin not JSON → 6; a missing or invalid `CNI_*` variable → 4; ADD or CHECK with a `CNI_NETNS`
//! that does not open → 4 naming the path (11 when the shim ran out of descriptors or memory).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::{self, CniCommand, CniEnv, CniError};

/// The version of this protocol. See the module documentation for when it changes.
pub const SHIM_API_VERSION: u32 = 1;

/// The largest request or reply either side accepts. A configuration with a `prevResult`, or GC's
/// list of valid attachments on a full node, is a few tens of kilobytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The most file descriptors a request may carry: the pod's network namespace.
pub const MAX_DESCRIPTORS: usize = 1;

/// Whether a verb's request carries the pod's network namespace as a descriptor (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsDescriptor {
    /// `ADD`, `CHECK`: the shim opens `CNI_NETNS` and sends the descriptor; not being able to open
    /// it is the invocation's error.
    Required,
    /// `DEL`: sent when `CNI_NETNS` is set and opens, else none; never an error.
    IfItOpens,
    /// `STATUS`, `GC` (and `VERSION`, never sent): no descriptor.
    Never,
}

impl NetnsDescriptor {
    /// The rule for `command`.
    pub fn for_command(command: CniCommand) -> NetnsDescriptor {
        match command {
            CniCommand::Add | CniCommand::Check => NetnsDescriptor::Required,
            CniCommand::Del => NetnsDescriptor::IfItOpens,
            CniCommand::Status | CniCommand::Gc | CniCommand::Version => NetnsDescriptor::Never,
        }
    }
}

/// Checks the descriptors that came with a request of `command`: `count` of them were received,
/// and `truncated` says the kernel had to drop more for want of room. At most
/// [`MAX_DESCRIPTORS`], and none for a verb that never carries one.
pub fn check_descriptors(
    command: CniCommand,
    count: usize,
    truncated: bool,
) -> Result<(), ShimError> {
    if truncated || count > MAX_DESCRIPTORS {
        return Err(ShimError::TooManyDescriptors { count, truncated });
    }
    if count > 0 && NetnsDescriptor::for_command(command) == NetnsDescriptor::Never {
        return Err(ShimError::UnexpectedDescriptor { command });
    }
    Ok(())
}

/// What the shim sends: one CNI invocation, environment and configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimRequest {
    /// Always [`SHIM_API_VERSION`] from this release.
    pub api_version: u32,
    /// `CNI_COMMAND`; never `VERSION` in practice (the shim answers that alone).
    pub command: CniCommand,
    /// `CNI_CONTAINERID`.
    #[serde(default)]
    pub container_id: Option<String>,
    /// `CNI_NETNS`: for logs, the result's `sandbox`, and a daemon talking to a shim that sends
    /// no descriptor. The namespace itself travels as a descriptor (see the module documentation).
    #[serde(default)]
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: Option<String>,
    /// `CNI_ARGS` as `(key, value)` pairs, in order.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, unsplit.
    #[serde(default)]
    pub path: Option<String>,
    /// The network configuration from stdin, unvalidated.
    #[serde(default)]
    pub config: Value,
}

impl ShimRequest {
    /// The request for an invocation whose environment the shim has parsed.
    pub fn new(env: &CniEnv, config: Value) -> Self {
        ShimRequest {
            api_version: SHIM_API_VERSION,
            command: env.command,
            container_id: env.container_id.clone(),
            netns: env.netns.clone(),
            ifname: env.ifname.as_ref().map(|n| n.as_str().to_string()),
            args: env.args.clone(),
            path: env.path.clone(),
            config,
        }
    }

    /// The environment, validated again with the rules the shim applied (code 4 when it fails).
    pub fn cni_env(&self) -> Result<CniEnv, CniError> {
        CniEnv::from_parts(
            self.command,
            self.container_id.clone(),
            self.netns.clone(),
            self.ifname.clone(),
            self.args.clone(),
            self.path.clone(),
        )
    }

    /// The version the shim will print an error reply in: the configuration's `cniVersion` when
    /// weft supports it, else the newest.
    pub fn output_version(&self) -> &'static str {
        cni::output_version(self.config.get("cniVersion").and_then(Value::as_str))
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ShimReply {
    /// `result` is printed on stdout as is; `null` prints nothing (DEL, CHECK, STATUS, GC).
    Success { result: Value },
    /// Printed as a CNI error in the request's version; the shim exits 1.
    Error { error: CniError },
}

impl ShimReply {
    /// Success with nothing to print.
    pub fn empty() -> Self {
        ShimReply::Success {
            result: Value::Null,
        }
    }
}

impl From<CniError> for ShimReply {
    fn from(error: CniError) -> Self {
        ShimReply::Error { error }
    }
}

/// Why bytes from the socket are not a usable request or reply.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("empty shim {what}: the peer closed the connection without sending anything")]
    Empty { what: &'static str },
    #[error("shim {what} is {len} bytes; at most {MAX_MESSAGE_BYTES} are allowed")]
    TooLarge { what: &'static str, len: usize },
    #[error("malformed shim {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "shim request has no api_version (a number); this weftd speaks version {SHIM_API_VERSION}"
    )]
    MissingVersion,
    #[error(
        "unsupported shim API version {got}: weft-cni and weftd are from different releases \
         (this weftd speaks version {SHIM_API_VERSION})"
    )]
    UnsupportedVersion { got: u64 },
    #[error(
        "shim request carried {count}{} file descriptors; at most {MAX_DESCRIPTORS} (the pod's \
         network namespace) is allowed",
        if *truncated { " or more" } else { "" }
    )]
    TooManyDescriptors { count: usize, truncated: bool },
    #[error("a {command} request carries no file descriptor, but one came with it")]
    UnexpectedDescriptor { command: CniCommand },
}

impl ShimError {
    /// The CNI error a daemon answers with when a request fails to decode. A version mismatch is a
    /// rolling upgrade caught half way, so it is "try again later" (11); the rest are decoding
    /// failures (6).
    pub fn to_cni_error(&self) -> CniError {
        let code = match self {
            ShimError::UnsupportedVersion { .. } => CniError::TRY_AGAIN_LATER,
            _ => CniError::DECODING_FAILURE,
        };
        CniError::new(code, self.to_string())
    }
}

/// The request as written on the socket.
pub fn encode_request(request: &ShimRequest) -> Vec<u8> {
    // Strings, numbers and a `Value` always serialize.
    serde_json::to_vec(request).expect("a ShimRequest always serializes")
}

/// The reply as written on the socket.
pub fn encode_reply(reply: &ShimReply) -> Vec<u8> {
    serde_json::to_vec(reply).expect("a ShimReply always serializes")
}

/// Decodes a request, checking its `api_version` before anything else so that a request from
/// another release is refused as such, not as a malformed one.
pub fn decode_request(bytes: &[u8]) -> Result<ShimRequest, ShimError> {
    let what = "request";
    let value = decode_value(bytes, what)?;
    match value.get("api_version").and_then(Value::as_u64) {
        None => return Err(ShimError::MissingVersion),
        Some(v) if v != u64::from(SHIM_API_VERSION) => {
            return Err(ShimError::UnsupportedVersion { got: v })
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|source| ShimError::Malformed { what, source })
}

/// Decodes a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<ShimReply, ShimError> {
    let what = "reply";
    let value = decode_value(bytes, what)?;
    serde_json::from_value(value).map_err(|source| ShimError::Malformed { what, source })
}

fn decode_value(bytes: &[u8], what: &'static str) -> Result<Value, ShimError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ShimError::TooLarge {
            what,
            len: bytes.len(),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ShimError::Empty { what });
    }
    serde_json::from_slice(bytes).map_err(|source| ShimError::Malformed { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::CniResult;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn add_request() -> ShimRequest {
        let env: BTreeMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = CniEnv::from_map(&env).unwrap();
        ShimRequest::new(
            &env,
            json!({"cniVersion": "0.4.0", "name": "weft", "type": "weft-cni", "mtu": 1450}),
        )
    }

    #[test]
    fn request_round_trip_and_wire_shape() {
        let request = add_request();
        let bytes = encode_request(&request);
        let wire: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(wire["api_version"], 1);
        assert_eq!(wire["command"], "ADD");
        assert_eq!(wire["ifname"], "eth0");
        assert_eq!(
            wire["args"],
            json!([["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-0"]])
        );
        assert_eq!(wire["config"]["mtu"], 1450);

        let back = decode_request(&bytes).unwrap();
        assert_eq!(back, request);
        let env = back.cni_env().unwrap();
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(back.output_version(), "0.4.0");
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let status = decode_request(br#"{"api_version": 1, "command": "STATUS"}"#).unwrap();
        assert_eq!(status.command, CniCommand::Status);
        assert_eq!(status.container_id, None);
        assert!(status.args.is_empty());
        assert_eq!(status.config, Value::Null);
        assert_eq!(status.output_version(), cni::LATEST_VERSION);
        assert!(status.cni_env().is_ok());
    }

    #[test]
    fn daemon_revalidates_the_environment() {
        let mut forged = add_request();
        forged.ifname = Some("much-too-long-name0".into());
        let err = forged.cni_env().unwrap_err();
        assert_eq!(err.code, CniError::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("CNI_IFNAME"), "{err}");

        let mut missing = add_request();
        missing.netns = None;
        let err = missing.cni_env().unwrap_err();
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
    }

    #[test]
    fn version_mismatch_is_answered() {
        let mut wire: Value = serde_json::from_slice(&encode_request(&add_request())).unwrap();
        wire["api_version"] = 2.into();
        // A future release may also change fields: the version is checked first.
        wire["command"] = json!({"verb": "ADD"});
        let err = decode_request(&serde_json::to_vec(&wire).unwrap()).unwrap_err();
        assert!(
            matches!(err, ShimError::UnsupportedVersion { got: 2 }),
            "{err:?}"
        );
        let cni = err.to_cni_error();
        assert_eq!(cni.code, CniError::TRY_AGAIN_LATER);
        assert!(cni.msg.contains("unsupported shim API version 2"), "{cni}");
        assert!(cni.msg.contains("version 1"), "{cni}");

        // The daemon's answer, as an old or new shim reads it.
        let reply = decode_reply(&encode_reply(&ShimReply::from(cni.clone()))).unwrap();
        assert_eq!(reply, ShimReply::Error { error: cni });

        let err = decode_request(br#"{"command": "ADD"}"#).unwrap_err();
        assert!(matches!(err, ShimError::MissingVersion), "{err:?}");
        let err = decode_request(br#"{"api_version": "1", "command": "ADD"}"#).unwrap_err();
        assert!(matches!(err, ShimError::MissingVersion), "{err:?}");
        assert_eq!(err.to_cni_error().code, CniError::DECODING_FAILURE);
    }

    #[test]
    fn which_verbs_carry_the_namespace_descriptor() {
        use NetnsDescriptor::*;
        let rules: Vec<(CniCommand, NetnsDescriptor)> = CniCommand::ALL
            .into_iter()
            .map(|c| (c, NetnsDescriptor::for_command(c)))
            .collect();
        assert_eq!(
            rules,
            [
                (CniCommand::Add, Required),
                (CniCommand::Del, IfItOpens),
                (CniCommand::Check, Required),
                (CniCommand::Version, Never),
                (CniCommand::Status, Never),
                (CniCommand::Gc, Never),
            ]
        );
    }

    #[test]
    fn descriptor_counts() {
        for command in [CniCommand::Add, CniCommand::Check, CniCommand::Del] {
            assert!(
                check_descriptors(command, 0, false).is_ok(),
                "{command}: none (an old shim)"
            );
            assert!(
                check_descriptors(command, 1, false).is_ok(),
                "{command}: one"
            );
        }
        for command in [CniCommand::Status, CniCommand::Gc] {
            assert!(check_descriptors(command, 0, false).is_ok());
            let err = check_descriptors(command, 1, false).unwrap_err();
            assert!(
                matches!(err, ShimError::UnexpectedDescriptor { .. }),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("a {command} request carries no file descriptor, but one came with it")
            );
            assert_eq!(err.to_cni_error().code, CniError::DECODING_FAILURE);
        }
        let err = check_descriptors(CniCommand::Add, 2, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shim request carried 2 file descriptors; at most 1 (the pod's network namespace) \
             is allowed"
        );
        assert_eq!(err.to_cni_error().code, CniError::DECODING_FAILURE);
        // The kernel dropped some for want of room: too many, however many arrived.
        let err = check_descriptors(CniCommand::Add, 1, true).unwrap_err();
        assert!(err.to_string().contains("carried 1 or more file"), "{err}");
    }

    #[test]
    fn reply_shapes() {
        let result = CniResult::default().to_json("1.1.0");
        let success = ShimReply::Success {
            result: result.clone(),
        };
        let wire: Value = serde_json::from_slice(&encode_reply(&success)).unwrap();
        assert_eq!(
            wire,
            json!({"status": "success", "result": {"cniVersion": "1.1.0"}})
        );
        assert_eq!(decode_reply(&encode_reply(&success)).unwrap(), success);

        let empty: Value = serde_json::from_slice(&encode_reply(&ShimReply::empty())).unwrap();
        assert_eq!(empty, json!({"status": "success", "result": null}));

        let error = ShimReply::from(
            CniError::new(CniError::PLUGIN_NOT_AVAILABLE, "weftd has no lease yet")
                .with_details("waiting for the node's pod CIDR"),
        );
        let wire: Value = serde_json::from_slice(&encode_reply(&error)).unwrap();
        assert_eq!(
            wire,
            json!({"status": "error", "error": {"code": 50, "msg": "weftd has no lease yet",
                   "details": "waiting for the node's pod CIDR"}})
        );
        assert_eq!(decode_reply(&encode_reply(&error)).unwrap(), error);
        // The error shape is frozen: details may be absent.
        assert_eq!(
            decode_reply(br#"{"status":"error","error":{"code":11,"msg":"later"}}"#).unwrap(),
            ShimReply::from(CniError::new(11, "later"))
        );
    }

    #[test]
    fn bad_bytes() {
        for (bytes, check) in [
            (&b""[..], "empty shim reply"),
            (b"  \n", "empty shim reply"),
            (b"{\"status\":", "malformed shim reply"),
            (b"{\"status\":\"maybe\"}", "malformed shim reply"),
            (b"{\"status\":\"success\"}", "malformed shim reply"),
            (
                b"{\"status\":\"error\",\"error\":{\"msg\":\"x\"}}",
                "malformed shim reply",
            ),
        ] {
            let err = decode_reply(bytes).unwrap_err();
            assert!(err.to_string().contains(check), "{bytes:?}: {err}");
        }
        let err = decode_request(b"").unwrap_err();
        assert!(
            matches!(err, ShimError::Empty { what: "request" }),
            "{err:?}"
        );
        assert_eq!(err.to_cni_error().code, CniError::DECODING_FAILURE);
        let err = decode_request(br#"{"api_version": 1, "command": "FROB"}"#).unwrap_err();
        assert!(err.to_string().contains("FROB"), "{err}");

        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let err = decode_request(&huge).unwrap_err();
        assert!(matches!(err, ShimError::TooLarge { .. }), "{err:?}");
    }
}
