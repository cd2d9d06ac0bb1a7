//! weft-lab: weft's single-host lab and the pieces its end-to-end tests share.
//!
//! - [`etcd`]: a real etcd server on a free loopback port with a temporary data directory;
//! - [`procs`]: weft binaries located next to the test executable, and child processes that are
//!   killed when their guard drops.

pub mod bench;
pub mod etcd;
pub mod lab;
pub mod netns;
pub mod procs;
