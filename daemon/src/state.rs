//! What weftd remembers across restarts, under the state directory.
//!
//! ```text
//! STATE_DIR/lease.json   {"podCIDRs": [...]}: the subnets last held, reclaimed after a restart
//! ```

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::warn;
use weft_proto::lease::PodCidrs;

use crate::fsutil::atomic_write;

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseState {
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Vec<IpNet>,
}

/// This machine's identity: `STATE_DIR/machine-id`, 32 hex digits made from the kernel's random
/// source on first use and kept. Per state directory rather than `/etc/machine-id`, so the lab's
/// nodes on one host are distinct machines; cloned VMs must not clone the state directory.
pub fn machine_id(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join("machine-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(state_dir)?;
    atomic_write(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

fn lease_path(state_dir: &Path) -> PathBuf {
    state_dir.join("lease.json")
}

/// The subnets this node held before; empty when unknown. A damaged file is reported and ignored:
/// the store then hands out subnets as for a new node.
pub fn load_previous_cidrs(state_dir: &Path) -> PodCidrs {
    let path = lease_path(state_dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return PodCidrs::default();
    };
    match serde_json::from_slice::<LeaseState>(&bytes) {
        Ok(state) => {
            let mut cidrs = PodCidrs::default();
            for net in state.pod_cidrs {
                match net {
                    IpNet::V4(n) => cidrs.v4 = Some(n),
                    IpNet::V6(n) => cidrs.v6 = Some(n),
                }
            }
            cidrs
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring a damaged lease state file");
            PodCidrs::default()
        }
    }
}

pub fn save_cidrs(state_dir: &Path, cidrs: &PodCidrs) -> std::io::Result<()> {
    let state = LeaseState {
        pod_cidrs: cidrs.iter().collect(),
    };
    let json = serde_json::to_vec_pretty(&state).expect("state always serialises");
    atomic_write(&lease_path(state_dir), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_previous_cidrs(dir.path()).is_empty());
        let cidrs = PodCidrs {
            v4: Some("10.244.3.0/24".parse().unwrap()),
            v6: Some("fd00::/64".parse().unwrap()),
        };
        save_cidrs(dir.path(), &cidrs).unwrap();
        assert_eq!(load_previous_cidrs(dir.path()), cidrs);
        std::fs::write(dir.path().join("lease.json"), b"{").unwrap();
        assert!(load_previous_cidrs(dir.path()).is_empty());
    }
}
