//! `weftd cleanup`: remove everything weft made on this node. Every step runs; the failures are
//! reported together.

use anyhow::Context;
use nix::errno::Errno;
use tracing::info;

use crate::backend;
use crate::datapath::{self, netns, nl};
use crate::firewall::{self, nft};

/// Remove weft's tunnel devices of every backend (their routes, neighbour and FDB entries go
/// with them), its nftables table and its pod veths.
pub async fn cleanup() -> anyhow::Result<()> {
    let host = netns::connect_here().context("open a netlink connection")?;
    let mut failures = Vec::new();
    // A userspace WireGuard device goes with its process: weft-wg exits within a second of its
    // control socket being removed, and the TUN device with it.
    let socket = backend::wireguard::uapi::socket_path(backend::wireguard::DEFAULT_DEVICE);
    if std::fs::remove_file(&socket).is_ok() {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    for name in backend::all_device_names() {
        if let Err(e) = nl::delete_link(&host, name.as_str()).await {
            failures.push(format!("delete {name}: {e}"));
        }
    }
    if let Err(e) = nft::remove() {
        failures.push(format!("remove table inet {}: {e}", firewall::TABLE));
    }
    match nl::links(&host).await {
        Ok(links) => {
            for link in links.iter().filter(|l| datapath::pod::is_weft_veth(l)) {
                let name = nl::link_name(link).unwrap_or_default().to_string();
                let result = host.link().del(link.header.index).execute().await;
                if let Err(e) = result.or_else(|e| match nl::is_errno(&e, &[Errno::ENODEV]) {
                    true => Ok(()),
                    false => Err(e),
                }) {
                    failures.push(format!("delete {name}: {e}"));
                }
            }
        }
        Err(e) => failures.push(format!("list links: {e}")),
    }
    if failures.is_empty() {
        info!("cleanup done: weft's devices, nftables table and pod veths are gone");
        Ok(())
    } else {
        anyhow::bail!("cleanup incomplete: {}", failures.join("; "))
    }
}
