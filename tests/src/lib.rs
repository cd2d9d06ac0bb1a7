//! weft-lab: weft's single-host lab and the pieces its end-to-end tests share.
//!
//! - [`lab`]: node namespaces on a bridge underlay, each running a real `weftd`, and pods wired
//!   through the real `weft-cni`;
//! - [`netns`]: network namespaces removed when their guard drops, and commands run inside them;
//! - [`containerd`]: a private containerd in a lab node's namespace, and `ctr run --cni` with the
//!   run's own CNI directories; [`oci`]: a busybox image built locally for it;
//! - [`etcd`]: a real etcd server on a free loopback port with a temporary data directory, in
//!   plain text or TLS with client certificates signed by [`pki`]'s throwaway CA;
//! - [`k8s`]: a real kube-apiserver (with its etcd) for the Kubernetes tests, and [`relay`]: a
//!   TCP relay that makes it reachable at 127.0.0.1 inside a lab node's namespace;
//! - [`capture`]: `tcpdump` captures, and a known payload sent pod to pod to look for in them;
//! - [`procs`]: weft's binaries (built on first use under cargo, so `cargo test` just works), and
//!   child processes that are killed when their guard drops;
//! - [`error`]: [`LabError`], what every fallible function here returns.
//!
//! The library knows weft only from the outside: its binaries, its CNI protocol and its files. It
//! does not link `weftd`; the benchmarks that do live in the `weft-lab` binary.

pub mod capture;
pub mod containerd;
pub mod error;
pub mod etcd;
pub mod flow;
pub mod k8s;
pub mod lab;
pub mod netns;
pub mod oci;
pub mod pki;
pub mod procs;
pub mod relay;

pub use error::LabError;

/// The repository's `deploy/` directory (`install-cni.sh`, `10-weft.conflist`).
pub const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
