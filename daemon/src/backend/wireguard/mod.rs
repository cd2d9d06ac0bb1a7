//! The WireGuard backend: one device (`weft.wg`) for both pod families, every packet between
//! nodes encrypted, one UDP port per node. Planned purely here, applied by [`driver`].
//!
//! - this file: the plan — the public key as each peer's identity claim, the desired [`WgState`]
//!   for the admitted peers, the MTU;
//! - `state`: the datapath as data; `ops`: the operations and their model; [`diff()`];
//! - [`keys`]: the node's private key (`STATE_DIR/wireguard.key`, mode 0600, never logged);
//! - [`uapi`]: the WireGuard cross-platform control protocol, which `weft-wg` serves;
//! - [`userspace`]: finding or starting `weft-wg`; [`driver`]: applying operations.
//!
//! **Scheme.** For every admitted peer: one WireGuard peer whose allowed IPs are its pod CIDRs and
//! whose endpoint is its published underlay address (of the tunnel family) and port, and one route
//! per pod CIDR through the device:
//!
//! ```text
//! wg set weft.wg peer <peer key> endpoint 192.0.2.12:51820 allowed-ips 10.244.2.0/24,fd00:10:244:2::/64
//! ip route replace 10.244.2.0/24 dev weft.wg proto 87
//! ```
//!
//! The device carries the network address of each of this node's pod CIDRs as a host prefix, so the
//! node's own traffic into the overlay has a source address inside its allowed IPs at every peer.
//! MTU: the configured override, else the underlay MTU less 60 (IPv4 endpoints: IPv4 20 + UDP 8 +
//! WireGuard 32) or 80 (IPv6 endpoints).
//!
//! **Identity.** A peer's claim is its public key: one that equals this node's own, or another
//! peer's, is refused by admission (`crate::plan::admission`) like a duplicated VTEP MAC, and so are
//! allowed IPs that overlap another peer's (they are its pod CIDRs). A key that does not decode
//! never becomes a lease: the store refuses the record.

mod diff;
pub mod driver;
pub mod kernel;
pub mod keys;
mod ops;
mod state;
pub mod uapi;
pub mod userspace;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use weft_proto::lease::{Backend, BackendData, Lease, WgPublicKey};
use weft_proto::names::IfName;

pub use diff::diff;
pub use ops::Op;
pub use state::{WgDevice, WgPeer, WgState};

use crate::config::{WgImplChoice, WireGuardConfig};
use crate::net::host_prefix;
use crate::plan::admission::{Admitted, Identity, IdentityRule};
use crate::plan::{tunnel_family, BackendPlan, Family, ModelError, PlanConfig, PlanError};
use keys::Keyring;

/// The default UDP port (WireGuard's conventional one).
pub const DEFAULT_PORT: u16 = 51820;
/// The device name in production.
pub const DEFAULT_DEVICE: &str = "weft.wg";
/// Overhead over IPv4 endpoints: IPv4 20 + UDP 8 + WireGuard header and tag 32.
pub const OVERHEAD_V4_UNDERLAY: u32 = 60;
/// Overhead over IPv6 endpoints: IPv6 40 + UDP 8 + WireGuard 32.
pub const OVERHEAD_V6_UNDERLAY: u32 = 80;

/// Which WireGuard implementation runs the device (`--wireguard-impl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// The kernel module, where the `wireguard` generic-netlink family exists.
    Kernel,
    /// `weft-wg`, a process of its own serving the standard control socket.
    Userspace,
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Implementation::Kernel => "kernel",
            Implementation::Userspace => "userspace",
        })
    }
}

/// The WireGuard backend's plan and what its driver needs.
#[derive(Debug, Clone)]
pub struct WireGuard {
    /// `weft.wg` in production; labs give each node its own name, since every node of one host
    /// shares `/var/run/wireguard`.
    pub device: IfName,
    /// Persistent keepalive for every peer, seconds; `None` is off.
    pub keepalive: Option<u16>,
    pub implementation: Implementation,
    /// The node's private keys, by public key.
    pub keys: Keyring,
    /// How to start `weft-wg` when it is not running.
    pub launcher: userspace::Launcher,
}

/// Why the WireGuard backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("--wireguard-impl kernel: {0}")]
    Kernel(String),
}

/// The implementation for `choice`, given whether this kernel speaks WireGuard (`kernel`: `Ok`, or
/// why not), and the reason for the log.
pub fn choose(
    choice: WgImplChoice,
    kernel: Result<(), String>,
) -> Result<(Implementation, String), SetupError> {
    match (choice, kernel) {
        (WgImplChoice::Userspace, _) => Ok((Implementation::Userspace, "asked for".to_string())),
        (WgImplChoice::Kernel, Ok(())) => Ok((Implementation::Kernel, "asked for".to_string())),
        (WgImplChoice::Kernel, Err(why)) => Err(SetupError::Kernel(why)),
        (WgImplChoice::Auto, Ok(())) => Ok((
            Implementation::Kernel,
            "the kernel has WireGuard".to_string(),
        )),
        (WgImplChoice::Auto, Err(why)) => Ok((Implementation::Userspace, why)),
    }
}

impl WireGuard {
    /// The backend as configured: its key read from (or made at) `key_path`, its implementation
    /// chosen (see [`choose`]).
    pub async fn from_config(
        config: &WireGuardConfig,
        key_path: &std::path::Path,
        run_dir: &std::path::Path,
    ) -> Result<(WireGuard, String), SetupError> {
        let key = keys::load_or_create(key_path)?;
        let kernel = match config.implementation {
            WgImplChoice::Userspace => Err("not asked".to_string()),
            _ => kernel::supported().await,
        };
        let (implementation, reason) = choose(config.implementation, kernel)?;
        let backend = WireGuard {
            device: config.device.clone(),
            keepalive: config.keepalive,
            implementation,
            keys: Keyring::with(key, key_path.parent().map(|d| d.to_path_buf())),
            launcher: userspace::Launcher {
                program: config.weft_wg.clone(),
                threads: config.threads,
                log: run_dir.join(format!("weft-wg-{}.log", config.device)),
                spawn: config.spawn,
            },
        };
        Ok((backend, reason))
    }
}

/// The public key and port a WireGuard node publishes; `None` for another backend.
pub fn published(backend: &BackendData) -> Option<(WgPublicKey, u16)> {
    match backend {
        BackendData::WireGuard { public_key, port } => Some((*public_key, *port)),
        BackendData::Vxlan { .. } => None,
    }
}

/// The identity claim of a peer holding `key`.
pub fn identity(key: &WgPublicKey) -> Identity {
    Identity(format!("WireGuard public key {key}"))
}

impl IdentityRule for WireGuard {
    fn backend(&self) -> Backend {
        Backend::WireGuard
    }

    /// Its public key, the same for both families: present, not all zeros, not this node's own.
    fn claim(&self, _family: Family, peer: &Lease, own: &Lease) -> Result<Identity, String> {
        let own_key = published(&own.backend).map(|(key, _)| key);
        match published(&peer.backend) {
            None => Err("publishes no WireGuard public key".to_string()),
            Some((key, _)) if key.0 == [0; 32] => {
                Err(format!("WireGuard public key {key} is all zeros"))
            }
            Some((key, _)) if Some(key) == own_key => {
                Err(format!("WireGuard public key {key} is this node's own"))
            }
            Some((_, 0)) => Err("publishes WireGuard port 0".to_string()),
            Some((key, _)) => Ok(identity(&key)),
        }
    }
}

impl WireGuard {
    /// This node's device as the plan wants it, or why its lease cannot be served.
    fn own_device(&self, own: &Lease, config: &PlanConfig) -> Result<WgDevice, PlanError> {
        let Some((public_key, port)) = published(&own.backend) else {
            return Err(PlanError::WrongBackend {
                node: own.node.clone(),
                backend: own.backend.backend(),
                expected: Backend::WireGuard,
            });
        };
        if tunnel_family(&own.public_ips).is_none() {
            return Err(PlanError::NoUnderlay {
                node: own.node.clone(),
            });
        }
        Ok(WgDevice {
            name: self.device.clone(),
            mtu: self.pod_mtu(own, config),
            up: true,
            port,
            public_key: Some(public_key),
        })
    }

    /// One admitted peer's WireGuard peer and routes.
    fn program(&self, state: &mut WgState, peer: &Admitted) {
        // Admission checked the key and port are there.
        let Some((key, port)) = published(&peer.lease.backend) else {
            return;
        };
        let allowed_ips: BTreeSet<_> = peer.entries.iter().map(|(_, cidr, _)| *cidr).collect();
        state.routes.extend(allowed_ips.iter().copied());
        state.peers.insert(
            key,
            WgPeer {
                endpoint: SocketAddr::new(peer.underlay, port),
                allowed_ips,
                keepalive: self.keepalive,
            },
        );
    }
}

impl BackendPlan for WireGuard {
    type State = WgState;
    type Op = Op;

    fn desired(
        &self,
        own: &Lease,
        admitted: &[Admitted<'_>],
        config: &PlanConfig,
    ) -> Result<WgState, PlanError> {
        let device = self.own_device(own, config)?;
        let mut state = WgState {
            device: Some(device),
            addresses: own
                .pod_cidrs
                .iter()
                .map(|cidr| host_prefix(cidr.network()))
                .collect(),
            ..WgState::default()
        };
        for peer in admitted {
            self.program(&mut state, peer);
        }
        Ok(state)
    }

    fn diff(&self, desired: &WgState, observed: &WgState) -> Vec<Op> {
        diff(desired, observed)
    }

    /// The configured MTU, else the underlay MTU less 60 (IPv4 endpoints) or 80 (IPv6).
    fn pod_mtu(&self, own: &Lease, config: &PlanConfig) -> u32 {
        config.overlay_mtu(match tunnel_family(&own.public_ips) {
            Some(Family::V6) => OVERHEAD_V6_UNDERLAY,
            _ => OVERHEAD_V4_UNDERLAY,
        })
    }

    fn op_device<'o>(&self, op: &'o Op) -> Option<&'o IfName> {
        Some(op.dev())
    }

    fn creates_device(&self, op: &Op) -> bool {
        matches!(op, Op::CreateDevice(_))
    }

    fn model_apply(&self, state: &mut WgState, op: &Op) -> Result<(), ModelError> {
        ops::apply(state, op)
    }
}

/// The peers as `device` reports them (handshakes, byte counts): over its control socket
/// (userspace) or generic netlink (kernel).
///
/// # Errors
/// The device cannot be reached or answers badly, as one line.
pub async fn read_peers(
    implementation: Implementation,
    device: &str,
) -> Result<Vec<uapi::PeerInfo>, String> {
    match implementation {
        Implementation::Userspace => {
            let control = uapi::Uapi::new(device);
            let read = tokio::task::spawn_blocking(move || control.get());
            let info = read.await.map_err(|e| e.to_string())?;
            info.map(|d| d.peers).map_err(|e| e.to_string())
        }
        Implementation::Kernel => {
            let mut control = kernel::KernelControl::connect(device).map_err(|e| e.to_string())?;
            let info = control.get().await.map_err(|e| e.to_string())?;
            Ok(info.peers)
        }
    }
}
