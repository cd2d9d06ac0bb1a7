//! The node's datapath side of the agent, started once the lease is held: forwarding, the CNI
//! server for pods, and (with the VXLAN issue) the reconcile loop for peers.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tracing::info;
use weft_proto::lease::{Lease, PublicIps};

use crate::agent::AgentView;
use crate::cni_server::{self, CniService};
use crate::config::Config;
use crate::datapath::{self, netns, nl};
use crate::ipam::Ipam;
use crate::underlay;

/// VXLAN encapsulation overhead over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// … and over an IPv6 underlay (outer IPv6 40).
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// The overlay MTU: the configured one, else the underlay interface's less the encapsulation.
pub fn overlay_mtu(config: &Config, public_ips: &PublicIps, underlay_mtu: u32) -> u32 {
    let overhead = if public_ips.v4.is_some() {
        VXLAN_OVERHEAD_V4
    } else {
        VXLAN_OVERHEAD_V6
    };
    config.mtu.unwrap_or(underlay_mtu.saturating_sub(overhead))
}

/// The MTU of the interface holding the node's underlay address (1500 if it cannot be found).
pub async fn underlay_mtu(host: &Handle, public_ips: &PublicIps) -> u32 {
    let wanted: Vec<IpAddr> = public_ips
        .v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(public_ips.v6.map(IpAddr::V6))
        .collect();
    let Ok(addresses) = underlay::list_addresses() else {
        return 1500;
    };
    let Some(iface) = addresses
        .iter()
        .find(|a| wanted.contains(&a.ip))
        .map(|a| a.iface.clone())
    else {
        return 1500;
    };
    match nl::link_by_name(host, &iface).await {
        Ok(Some(link)) => nl::link_mtu(&link).unwrap_or(1500),
        _ => 1500,
    }
}

/// Start the node's datapath services; the returned tasks run until aborted.
pub async fn start(
    config: &Config,
    lease: &Lease,
    view: AgentView,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    datapath::enable_forwarding().context("enable IP forwarding")?;
    let host = netns::connect_here().context("open a netlink connection")?;
    let mtu = overlay_mtu(
        config,
        &lease.public_ips,
        underlay_mtu(&host, &lease.public_ips).await,
    );
    let ipam = Ipam::open(&config.state_dir, lease.pod_cidrs).context("open the IPAM state")?;
    let socket = config.run_dir.join("cni.sock");
    let listener = cni_server::bind(&socket)
        .with_context(|| format!("bind the CNI socket {}", socket.display()))?;
    let service = Arc::new(CniService::new(host, ipam, view.lease.clone(), mtu));
    info!(socket = %socket.display(), pod_mtu = mtu, "serving CNI requests");
    Ok(vec![tokio::spawn(cni_server::serve(listener, service))])
}
