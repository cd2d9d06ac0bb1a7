//! weft-proto: the types that cross a process or node boundary.
//!
//! Everything here is pure (no I/O) and unit-tested:
//! - [`lease`]: a node's lease (pod CIDRs, underlay addresses, backend data) and its store record;
//! - [`annotations`]: the `weft.dev/` node annotation keys and their strict codec;
//! - [`record`]: a lease to and from its store record (pod CIDRs plus annotations);
//! - [`names`]: validated interface names (IFNAMSIZ);
//! - [`cni`]: CNI spec 1.1 requests, results and errors;
//! - [`shim`]: the versioned request and reply between `weft-cni` and `weftd`.

pub mod annotations;
pub mod cni;
pub mod lease;
pub mod names;
pub mod record;
pub mod shim;
