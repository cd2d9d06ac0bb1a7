//! Inspection: what the running daemon knows, for people.
//!
//! - [`snapshot`]: the daemon's state as one value (node, store, backend, lease, underlay, MTUs,
//!   peers with their health, refused peers, IPAM use);
//! - [`state`]: the [`state::Inspector`] the daemon's parts fill in, and the reconcile loop's
//!   [`state::Mesh`];
//! - [`icmp`]: ICMP echo on raw sockets; [`probe`]: the peer health prober (echo through each
//!   tunnel);
//! - [`control`]: the control socket `RUN_DIR/weftd.sock` (mode 0600) that serves snapshots to
//!   `weftd status`, `weftd peers`, `weftd graph` and `weftd doctor`;
//! - [`render`]: the human tables of `status` and `peers`;
//! - [`graph`]: the mesh as Graphviz DOT and as the self-contained status page (inline SVG);
//! - [`doctor`]: the node checks of `weftd doctor`.

pub mod control;
pub mod doctor;
pub mod graph;
pub mod icmp;
pub mod probe;
pub mod render;
pub mod snapshot;
pub mod state;
