//! weftd: the weft node agent.
//!
//! - [`config`]: flags, environment, file → a validated [`config::Config`];
//! - [`store`]: the lease stores (file, etcd) behind [`store::LeaseStore`];
//! - [`subnet`]: carving node subnets from the cluster CIDRs (pure);
//! - [`underlay`]: choosing the node's underlay address;
//! - [`agent`]: the lease keeper and peer tracker;
//! - [`firewall`]: weft's nftables table as desired state (pure), and its `nft` driver;
//! - [`state`], [`fsutil`]: what survives a restart, written atomically.

pub mod agent;
pub mod cni_server;
pub mod config;
pub mod datapath;
pub mod firewall;
pub mod fsutil;
pub mod ipam;
pub mod node;
pub mod plan;
pub mod state;
pub mod store;
pub mod subnet;
pub mod underlay;
