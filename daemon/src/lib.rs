//! weftd: the weft node agent.
//!
//! - [`config`]: flags, environment, file → a validated [`config::Config`];
//! - [`store`]: the lease stores (file, etcd, kube) behind [`store::LeaseStore`], opened by [`store::open`];
//! - [`agent`]: the lease keeper and peer tracker;
//! - [`plan`]: pure — peer admission and the seam every backend's plan implements;
//! - [`backend`]: the backends (VXLAN, none), each its plan, diff and driver;
//! - [`firewall`]: weft's nftables table as desired state (pure), and its `nft` driver;
//! - [`node`]: forwarding, the CNI server, the reconcile loop, cleanup;
//! - [`run`]: `weftd run`, wiring the agent to the node; [`health`]: `/healthz` and `/readyz`;
//! - [`inspect`]: what the running daemon knows, for `weftd status`, `peers`, `graph`, `doctor`.
//!
//! Inside: [`subnet`] (carving node subnets), [`underlay`] (choosing the underlay address),
//! `ipam`, `cni_server`, `datapath` (pod wiring, netlink helpers), `state` and `fsutil` (what
//! survives a restart, written atomically), `net` (address facts).

pub mod agent;
pub mod backend;
pub(crate) mod cni_server;
pub mod config;
pub mod datapath;
pub mod firewall;
pub(crate) mod fsutil;
pub mod health;
pub mod inspect;
pub mod ipam;
pub mod metrics;
pub(crate) mod net;
pub mod node;
pub mod plan;
pub mod run;
pub mod state;
pub mod store;
pub mod subnet;
pub mod underlay;
