//! `weftd cleanup`: remove everything weft made on this node. Every step runs; the failures are
//! reported together.

use anyhow::Context;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use tracing::info;

use crate::backend;
use crate::backend::vxlan::driver::ROUTE_PROTOCOL;
use crate::datapath::{self, netns, nl};
use crate::firewall::{self, nft};

/// Remove weft's tunnel devices of every backend (their routes, neighbour and FDB entries go
/// with them), its direct routes (`proto 87` on the underlay interface), its nftables table and
/// its pod veths.
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
    if let Err(e) = delete_weft_routes(&host).await {
        failures.push(format!("delete weft's direct routes: {e}"));
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
        info!("cleanup done: weft's devices, routes, nftables table and pod veths are gone");
        Ok(())
    } else {
        anyhow::bail!("cleanup incomplete: {}", failures.join("; "))
    }
}

/// Delete every main-table route tagged with weft's protocol (`proto 87`) that outlived the
/// devices: VXLAN's direct routes on the underlay interface.
async fn delete_weft_routes(host: &rtnetlink::Handle) -> Result<(), rtnetlink::Error> {
    let ours = RouteProtocol::Other(ROUTE_PROTOCOL);
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for view in nl::main_routes(host, family).await? {
            if view.message.header.protocol != ours {
                continue;
            }
            let result = host.route().del(view.message).execute().await;
            nl::ignore(result, &[Errno::ESRCH, Errno::ENOENT])?;
        }
    }
    Ok(())
}
