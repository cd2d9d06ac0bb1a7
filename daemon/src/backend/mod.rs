//! Tunnel backends behind one seam. Each backend is a folder (or file) here holding its pure plan
//! (a [`BackendPlan`]: identity claim, desired state, diff, MTU, model of its operations) and its
//! [`Driver`], which reads the kernel into that state and applies operations. The reconcile loop
//! (`crate::node::reconcile`) is generic over [`Backend`]; `crate::node::start` picks one.
//!
//! - [`vxlan`]: flannel's VXLAN scheme, one device per pod family;
//! - [`wireguard`]: one encrypted device for both pod families, kernel or `weft-wg` (userspace);
//! - [`none`]: programs nothing (`--datapath none`: the lease and the peer view only).
//!
//! Adding a backend: a new folder with its plan and driver implementing these traits, its
//! `pub mod` line here and its devices in [`all_device_names`], plus one line in
//! `crate::node::start`, where backends are chosen.

pub mod none;
pub mod vxlan;
pub mod wireguard;

use std::future::Future;

use ipnet::IpNet;
use rtnetlink::Handle;
use weft_proto::names::IfName;

use crate::plan::BackendPlan;

/// Why the driver could not observe or apply.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
    /// The operation's device is not there (it could not be created, or someone deleted it).
    #[error("device {0} does not exist")]
    NoDevice(IfName),
    /// Nothing serves the device's control channel (WireGuard: no `weft-wg` behind its socket).
    #[error("{0}")]
    Absent(String),
    /// A device's own control channel failed (WireGuard's control socket, starting `weft-wg`).
    #[error("{0}")]
    Device(String),
    /// The operation cannot be expressed to the kernel (a plan bug, never a peer's input).
    #[error("{0}")]
    Invalid(String),
}

/// The I/O half of a backend: reads the kernel into the plan's state and applies its operations.
pub trait Driver<B: BackendPlan + ?Sized>: Send + 'static {
    /// What the kernel holds of this backend's objects now (weft's own only).
    fn observe(&mut self) -> impl Future<Output = Result<B::State, DriverError>> + Send;

    /// Apply one operation; idempotent where the kernel allows ("already gone" is success).
    fn apply(&mut self, op: &B::Op) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Requests sent to the kernel so far (netlink messages), for logs and benchmarks.
    fn requests(&self) -> usize;

    /// Resolves when the driver learns, between resyncs, that what it drives changed under it
    /// (WireGuard: `weft-wg` stopped answering), so the loop reads the datapath again at once
    /// instead of at the next resync. Never resolves by default.
    fn drifted(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A backend: its plan and the driver that applies it.
pub trait Backend: BackendPlan {
    type Driver: Driver<Self>;

    /// A driver acting in the namespace of `host`; `cluster_cidrs` bounds what it observes as
    /// weft's (neighbour entries outside them are an operator's).
    fn driver(&self, host: Handle, cluster_cidrs: &[IpNet]) -> Self::Driver;

    /// Every device this backend may create, for `weftd cleanup`.
    fn device_names(&self) -> Vec<IfName>;
}

/// The devices of every backend, for `weftd cleanup` (which removes them whatever the node ran).
pub fn all_device_names() -> Vec<IfName> {
    let mut names = vxlan::Vxlan.device_names();
    names.extend(IfName::new(wireguard::DEFAULT_DEVICE).ok());
    names
}
