//! The node's datapath side of the daemon, started once the lease is held:
//!
//! - [`sysctl`]: forwarding for the pod families in use, set at start and kept by the loop;
//! - the CNI server for pods (IPAM opened here, the socket bound here);
//! - [`reconcile`]: the loop keeping the backend's tunnels and routes, and [`firewall`]: weft's
//!   nftables table, in step with the lease and the peers;
//! - [`cleanup`]: `weftd cleanup`.
//!
//! [`start`] is where a backend is chosen: one line per backend.

pub mod cleanup;
pub mod firewall;
pub mod reconcile;
pub mod sysctl;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_proto::lease::{Backend as BackendKind, Lease, PublicIps};

use crate::agent::AgentView;
use crate::backend::none::NoDatapath;
use crate::backend::vxlan::Vxlan;
use crate::backend::wireguard::WireGuard;
use crate::backend::Backend;
use crate::cni_server::{self, CniService};
use crate::config::{Config, DatapathMode, DirectRoutingChoice};
use crate::datapath::{nl, pod};
use crate::inspect::probe;
use crate::inspect::state::{DatapathParts, Inspector, IpamUsage, WireGuardSource};
use crate::ipam::Ipam;
use crate::plan::{DirectRouting, PlanConfig};
use crate::underlay;
use firewall::FirewallKeeper;
use reconcile::Reconciler;

/// The node's services, running.
pub struct Started {
    /// Run until aborted.
    pub tasks: Vec<JoinHandle<()>>,
    /// Unix seconds of the reconcile loop's last pass.
    pub heartbeat: Arc<AtomicU64>,
    /// Whether pods are served (not with `--datapath none`).
    pub serves_pods: bool,
}

/// Start the node's services for the configured backend.
pub async fn start(
    config: &Config,
    lease: &Lease,
    host: Handle,
    view: AgentView,
    inspector: &Inspector,
) -> anyhow::Result<Started> {
    if config.datapath == DatapathMode::None {
        return start_without_datapath(config, config.backend, host, view, inspector).await;
    }
    let node = NodeContext {
        config,
        lease,
        host,
        view,
        inspector,
    };
    match config.backend {
        BackendKind::Vxlan => start_with(Vxlan, node, None).await,
        BackendKind::WireGuard => {
            let key = crate::agent::wireguard_key_path(config);
            let (wireguard, reason) =
                WireGuard::from_config(&config.wireguard, &key, &config.run_dir).await?;
            info!(implementation = ?wireguard.implementation, reason, device = %wireguard.device, "WireGuard");
            let source = WireGuardSource {
                implementation: wireguard.implementation,
                device: wireguard.device.to_string(),
            };
            start_with(wireguard, node, Some(source)).await
        }
    }
}

/// What every backend's start needs.
struct NodeContext<'a> {
    config: &'a Config,
    lease: &'a Lease,
    host: Handle,
    view: AgentView,
    inspector: &'a Inspector,
}

/// `--datapath none`: only the reconcile loop with a backend that programs nothing, so peers are
/// still judged and refusals logged; no forwarding, firewall or CNI server.
async fn start_without_datapath(
    config: &Config,
    kind: BackendKind,
    host: Handle,
    view: AgentView,
    inspector: &Inspector,
) -> anyhow::Result<Started> {
    let backend = NoDatapath { kind };
    let driver = backend.driver(host, &[]);
    let reconciler = Reconciler::new(backend, driver, PlanConfig::new(config, 1500), None)
        .resync_every(config.resync_interval);
    // Nothing is programmed, so nothing is announced as up (NetworkUnavailable stays as it is).
    let view = AgentView {
        programmed: Arc::new(tokio::sync::watch::channel(false).0),
        ..view
    };
    inspector.set_datapath(DatapathParts {
        backend_impl: None,
        pod_mtu: None,
        programmed: view.programmed.subscribe(),
        mesh: reconciler.mesh(),
        health: None,
        ipam: None,
        wireguard: None,
    });
    Ok(Started {
        heartbeat: reconciler.heartbeat(),
        tasks: vec![tokio::spawn(reconciler.run(view))],
        serves_pods: false,
    })
}

/// Forwarding, the CNI server, the reconcile loop and the peer prober for `backend`.
async fn start_with<B: Backend>(
    backend: B,
    node: NodeContext<'_>,
    wireguard: Option<WireGuardSource>,
) -> anyhow::Result<Started> {
    let NodeContext {
        config,
        lease,
        host,
        view,
        inspector,
    } = node;
    let kept_ra = sysctl::enable_forwarding(config.pool_v4.is_some(), config.pool_v6.is_some())
        .context("enable IP forwarding")?;
    if !kept_ra.is_empty() {
        info!(interfaces = ?kept_ra, "accept_ra 1 → 2: router advertisements stay accepted with IPv6 forwarding on");
    }
    let underlay_mtu = underlay::mtu(&host, &lease.public_ips).await;
    let plan_config = PlanConfig::new(config, underlay_mtu);
    let direct = routes_directly(config, backend.backend()).then(|| host.clone());
    let pod_mtu = backend.pod_mtu(lease, &plan_config);
    let (cni, service) = serve_cni(config, lease, cni_host()?, view.clone(), pod_mtu).await?;
    let unmasqueraded = service.unmasqueraded();
    let driver = backend.driver(host, &plan_config.cluster_cidrs);
    let firewall = Some(FirewallKeeper::new(unmasqueraded));
    let sysctls = sysctl::desired(config.pool_v4.is_some(), config.pool_v6.is_some());
    let reconciler = Reconciler::new(backend, driver, plan_config, firewall)
        .resync_every(config.resync_interval)
        .keeping(sysctls)
        .routing_directly(direct);
    let (health, prober) = probe::spawn(reconciler.mesh(), probe::PROBE_INTERVAL);
    inspector.set_datapath(DatapathParts {
        backend_impl: wireguard.as_ref().map(|w| w.implementation.to_string()),
        pod_mtu: Some(pod_mtu),
        programmed: view.programmed.subscribe(),
        mesh: reconciler.mesh(),
        health: Some(health),
        ipam: Some(ipam_usage(service)),
        wireguard,
    });
    Ok(Started {
        heartbeat: reconciler.heartbeat(),
        tasks: vec![cni, prober, tokio::spawn(reconciler.run(view))],
        serves_pods: true,
    })
}

/// Whether `--direct-routing auto` asks for direct routes and the backend allows them (VXLAN;
/// never WireGuard: encryption asked for means encryption). Logged when off.
fn routes_directly(config: &Config, backend: BackendKind) -> bool {
    if config.direct_routing == DirectRoutingChoice::Off {
        info!("direct routing off (--direct-routing off): every peer through the tunnel");
        return false;
    }
    if backend != BackendKind::Vxlan {
        info!(%backend, "direct routing off: every peer through the encrypted tunnel");
        return false;
    }
    true
}

/// The underlay interface holding one of `public_ips` and its connected subnets, for direct
/// routing; `None` (every peer through the tunnel) where no interface holds them or they cannot
/// be read (logged).
pub(crate) async fn direct_routing(host: &Handle, public_ips: &PublicIps) -> Option<DirectRouting> {
    match underlay::connected(host, public_ips).await {
        Ok(Some((iface, subnets))) => Some(DirectRouting { iface, subnets }),
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "cannot read the underlay interface's subnets: no direct routes");
            None
        }
    }
}

/// IPAM's use, read through the CNI service (which owns IPAM).
fn ipam_usage(service: Arc<CniService>) -> IpamUsage {
    Arc::new(move || {
        let service = service.clone();
        Box::pin(async move { service.ipam_usage().await })
    })
}

/// The CNI service's own netlink connection: pod wiring dumps links and routes while the reconcile
/// loop dumps the datapath, and one socket runs one dump at a time (EBUSY).
fn cni_host() -> anyhow::Result<Handle> {
    crate::datapath::netns::connect_here().context("open a netlink connection for pods")
}

/// Open IPAM (its damaged records are set aside only when no pod is wired) and serve the CNI
/// socket `RUN_DIR/cni.sock`; also returns the service (which keeps IPAM and the addresses of
/// the pods not to masquerade).
async fn serve_cni(
    config: &Config,
    lease: &Lease,
    host: Handle,
    view: AgentView,
    pod_mtu: u32,
) -> anyhow::Result<(JoinHandle<()>, Arc<CniService>)> {
    let pods_wired = nl::links(&host)
        .await
        .context("list links")?
        .iter()
        .any(pod::is_weft_veth);
    let ipam = Ipam::open(&config.state_dir, lease.pod_cidrs, !pods_wired)
        .context("open the IPAM state")?;
    cni_server::report_outside(&ipam.outside(), lease.pod_cidrs);
    let socket = config.run_dir.join("cni.sock");
    let listener = cni_server::bind(&socket)
        .with_context(|| format!("bind the CNI socket {}", socket.display()))?;
    let service = Arc::new(CniService::new(host, ipam, view.lease.clone(), pod_mtu));
    info!(socket = %socket.display(), pod_mtu, "serving CNI requests");
    Ok((
        tokio::spawn(cni_server::serve(listener, service.clone())),
        service,
    ))
}
