//! The daemon side of the CNI shim: a unix socket (`RUN_DIR/cni.sock`, mode 0600) serving one
//! request per connection, as `weft_proto::shim` documents.
//!
//! [`CniService::handle`] is the whole logic and takes a request and its namespace descriptor
//! straight (tests can call it without a socket); [`serve`] only frames bytes and descriptors
//! (the `wire` module). The pod's namespace is the descriptor the shim sent: weftd opens the
//! `CNI_NETNS` path itself only for a shim that sent none (one older than the descriptor), since the
//! path is the runtime's and may mean nothing in weftd's mount namespace. Every daemon-side failure
//! maps to a CNI error here:
//!
//! | code | when |
//! | --- | --- |
//! | 4 | CNI_NETNS (the descriptor, or the path) is not a network namespace, CNI_IFNAME already exists in the pod |
//! | 5 | netlink or state-file failure while wiring |
//! | 6 | the request does not decode, or carries more descriptors than the verb allows |
//! | 7 | the network configuration is invalid (from `NetConf`) |
//! | 11 | the node has no lease yet (try again later) |
//! | 50 | STATUS: no lease yet, or no free address |
//! | 100 | ADD: the node's pod CIDR has no free address |
//! | 101 | CHECK: the pod's interface, addresses or routes are not what ADD made |

mod wire;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use rtnetlink::Handle;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};
use weft_proto::cni::{
    self, CniCommand, CniEnv, CniError, CniResult, Interface, IpConfig, NetConf, Route,
};
use weft_proto::lease::Lease;
use weft_proto::names::IfName;
use weft_proto::shim::{self, ShimReply, ShimRequest};

use crate::datapath::netns::{Netns, NetnsError};
use crate::datapath::nl;
use crate::datapath::pod::{self, PodError, PodSpec};
use crate::ipam::{Allocation, AttachmentKey, Ipam, IpamError};
use crate::net::host_prefix;

/// How long a connection may take to deliver its request.
const REQUEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// ADD: no free address in the node's pod CIDR.
pub const CODE_POOL_EXHAUSTED: u32 = 100;
/// CHECK: the pod's network is not what ADD made.
pub const CODE_CHECK_FAILED: u32 = 101;

pub struct CniService {
    host: Handle,
    ipam: Mutex<Ipam>,
    lease: watch::Receiver<Option<Lease>>,
    /// MTU of pod interfaces unless the network configuration sets one.
    pod_mtu: u32,
    /// The addresses of the pods whose network says `"ipMasq": false`, as IPAM records them.
    unmasqueraded: watch::Sender<BTreeSet<IpAddr>>,
}

impl CniService {
    pub fn new(
        host: Handle,
        ipam: Ipam,
        lease: watch::Receiver<Option<Lease>>,
        pod_mtu: u32,
    ) -> CniService {
        let (unmasqueraded, _) = watch::channel(ipam.unmasqueraded());
        CniService {
            host,
            ipam: Mutex::new(ipam),
            lease,
            pod_mtu,
            unmasqueraded,
        }
    }

    /// The addresses of the pods that must not be masqueraded (their network configuration says
    /// `"ipMasq": false`): initially those IPAM holds, then updated as ADD allocates (before the
    /// pod is wired, so the firewall can follow early), and as DEL and GC release.
    pub fn unmasqueraded(&self) -> watch::Receiver<BTreeSet<IpAddr>> {
        self.unmasqueraded.subscribe()
    }

    /// Publish IPAM's unmasqueraded addresses; receivers are woken only if they changed.
    fn publish_unmasqueraded(&self, ipam: &Ipam) {
        let now = ipam.unmasqueraded();
        self.unmasqueraded.send_if_modified(|published| {
            let changed = *published != now;
            if changed {
                *published = now;
            }
            changed
        });
    }

    /// IPAM's use per pod CIDR: addresses in use and usable ([`Ipam::usage`]).
    pub async fn ipam_usage(&self) -> Vec<(ipnet::IpNet, u64, u64)> {
        self.ipam.lock().await.usage()
    }

    /// Answer one shim request. `netns` is the descriptor that came with it (the pod's network
    /// namespace as the shim opened it); it is closed when the request is answered.
    pub async fn handle(&self, request: &ShimRequest, netns: Option<OwnedFd>) -> ShimReply {
        let started = std::time::Instant::now();
        let outcome = match (request.cni_env(), NetConf::from_value(&request.config)) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(env), Ok(conf)) => self.dispatch(&env, &conf, netns).await,
        };
        let verb = request.command.as_str();
        crate::metrics::global().cni_request(verb, outcome.is_ok(), started.elapsed());
        match outcome {
            Ok(result) => ShimReply::Success { result },
            Err(error) => {
                debug!(command = %request.command, code = error.code, msg = %error.msg, "CNI request failed");
                ShimReply::Error { error }
            }
        }
    }

    async fn dispatch(
        &self,
        env: &CniEnv,
        conf: &NetConf,
        netns: Option<OwnedFd>,
    ) -> Result<Value, CniError> {
        match env.command {
            CniCommand::Version => Ok(cni::version_result()),
            CniCommand::Add => self.add(env, conf, netns).await,
            // DEL releases everything from the node's side: a descriptor (of a namespace that may
            // be gone, or none at all) is closed unused.
            CniCommand::Del => self.del(env, conf).await.map(|()| Value::Null),
            CniCommand::Check => self.check(env, conf, netns).await.map(|()| Value::Null),
            CniCommand::Status => self.status().await.map(|()| Value::Null),
            CniCommand::Gc => self.gc(conf).await.map(|()| Value::Null),
        }
    }

    async fn add(
        &self,
        env: &CniEnv,
        conf: &NetConf,
        netns: Option<OwnedFd>,
    ) -> Result<Value, CniError> {
        let (key, ifname) = attachment(env, conf)?;
        let netns = pod_netns(env, netns)?;
        let lease = self.lease.borrow().clone().ok_or_else(not_ready)?;
        let (allocation, fresh) = {
            let mut ipam = self.ipam.lock().await;
            report_outside(&ipam.set_cidrs(lease.pod_cidrs), lease.pod_cidrs);
            let existed = ipam.get(&key).is_some();
            // Absent `ipMasq` means masquerade.
            let masquerade = conf.ip_masq.unwrap_or(true);
            let allocation = ipam.allocate(&key, masquerade).map_err(ipam_error)?;
            self.publish_unmasqueraded(&ipam);
            (allocation, !existed)
        };
        let spec = self.pod_spec(&netns, &ifname, &key, allocation, conf);
        // A netlink socket of this ADD's own: the kernel runs one socket's requests one after
        // another, so on the shared one concurrent ADDs would queue behind each other.
        let host = crate::datapath::netns::connect_here().unwrap_or_else(|_| self.host.clone());
        let wiring = match pod::setup(&host, &spec).await {
            Ok(wiring) => wiring,
            Err(e) => {
                if fresh {
                    let mut ipam = self.ipam.lock().await;
                    let _ = ipam.release(&key);
                    self.publish_unmasqueraded(&ipam);
                }
                return Err(pod_error(e));
            }
        };
        info!(container = %key.container_id, ifname = %key.ifname, ips = ?allocation, veth = %spec.host_veth, "pod added");
        let result = CniResult {
            interfaces: vec![
                Interface {
                    name: spec.host_veth.to_string(),
                    mac: Some(mac_text(wiring.host_mac)),
                    ..Interface::default()
                },
                Interface {
                    name: ifname.to_string(),
                    mac: Some(mac_text(wiring.pod_mac)),
                    mtu: Some(spec.mtu),
                    sandbox: Some(netns.path().display().to_string()),
                    ..Interface::default()
                },
            ],
            ips: ip_configs(&allocation),
            routes: default_routes(&allocation),
            dns: conf.dns.clone().unwrap_or_default(),
        };
        Ok(result.to_json(&conf.cni_version))
    }

    async fn del(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let (key, _) = attachment(env, conf)?;
        if self.ipam.lock().await.held_by_another_network(&key) {
            // The interface is another weft network's (a DEL of a network it was never added
            // to): nothing of this network to remove.
            return Ok(());
        }
        pod::teardown(
            &self.host,
            &pod::host_veth_name(&key.container_id, &key.ifname),
        )
        .await
        .map_err(pod_error)?;
        let released = {
            let mut ipam = self.ipam.lock().await;
            let released = ipam.release(&key).map_err(ipam_error)?;
            self.publish_unmasqueraded(&ipam);
            released
        };
        if let Some(allocation) = released {
            info!(container = %key.container_id, ifname = %key.ifname, ips = ?allocation, "pod deleted");
        }
        Ok(())
    }

    async fn check(
        &self,
        env: &CniEnv,
        conf: &NetConf,
        netns: Option<OwnedFd>,
    ) -> Result<(), CniError> {
        let (key, ifname) = attachment(env, conf)?;
        let netns = pod_netns(env, netns)?;
        let (allocation, holds, cidrs) = {
            let ipam = self.ipam.lock().await;
            let allocation = ipam.get(&key).ok_or_else(|| {
                CniError::new(
                    CniError::UNKNOWN_CONTAINER,
                    format!(
                        "no addresses are allocated to {}/{}",
                        key.container_id, key.ifname
                    ),
                )
            })?;
            (allocation, ipam.holds(&allocation), ipam.cidrs())
        };
        if !holds {
            return Err(CniError::new(
                CODE_CHECK_FAILED,
                format!(
                    "the pod's addresses {:?} are outside this node's pod CIDRs {cidrs}: the node came back with other CIDRs, and another node may give the same addresses to its pods; recreate the pod",
                    allocation.addresses().collect::<Vec<_>>()
                ),
            ));
        }
        if let Some(prev) = conf.prev_result()? {
            let ours: BTreeSet<IpAddr> = allocation.addresses().collect();
            let theirs: BTreeSet<IpAddr> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
            if !ours.is_subset(&theirs) {
                return Err(CniError::new(
                    CODE_CHECK_FAILED,
                    format!("prevResult lists {theirs:?}, weft allocated {ours:?}"),
                ));
            }
        }
        let spec = self.pod_spec(&netns, &ifname, &key, allocation, conf);
        pod::check(&self.host, &spec).await.map_err(|e| match e {
            PodError::Missing(what) => CniError::new(CODE_CHECK_FAILED, what),
            other => pod_error(other),
        })
    }

    fn pod_spec<'a>(
        &self,
        netns: &'a Netns,
        ifname: &'a IfName,
        key: &AttachmentKey,
        addresses: Allocation,
        conf: &NetConf,
    ) -> PodSpec<'a> {
        PodSpec {
            netns,
            ifname,
            host_veth: pod::host_veth_name(&key.container_id, &key.ifname),
            addresses,
            mtu: conf.mtu.unwrap_or(self.pod_mtu),
        }
    }

    async fn status(&self) -> Result<(), CniError> {
        if self.lease.borrow().is_none() {
            return Err(CniError::new(
                CniError::PLUGIN_NOT_AVAILABLE,
                "the node has no pod CIDR lease yet",
            ));
        }
        if !self.ipam.lock().await.has_room() {
            return Err(CniError::new(
                CniError::PLUGIN_NOT_AVAILABLE,
                "the node's pod CIDR has no free address",
            ));
        }
        Ok(())
    }

    /// Release every allocation the runtime no longer lists, and remove weft veths that belong to no
    /// allocation (left by a daemon killed in the middle of an ADD).
    async fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let Some(valid) = conf.gc_attachments() else {
            return Ok(());
        };
        let network = &conf.name;
        let valid: BTreeSet<AttachmentKey> = valid
            .iter()
            .map(|a| AttachmentKey::new(a.container_id.clone(), a.ifname.clone()))
            .map(|key| key.in_network(network.clone()))
            .collect();
        let mut ipam = self.ipam.lock().await;
        // Only this network's attachments are judged: another network's GC lists its own.
        let released = ipam.retain(|key| &key.network != network || valid.contains(key));
        self.publish_unmasqueraded(&ipam);
        let released = released.map_err(ipam_error)?;
        let keep: BTreeSet<String> = ipam
            .allocations()
            .map(|(key, _)| pod::host_veth_name(&key.container_id, &key.ifname).to_string())
            .collect();
        // The lock is held to the end: an ADD that allocates meanwhile would otherwise see its
        // fresh veth removed as a leftover.
        let links = nl::links(&self.host)
            .await
            .map_err(|e| io_error("list links", e))?;
        let mut removed = 0;
        let mut failures = Vec::new();
        for link in links.iter().filter(|l| pod::is_weft_veth(l)) {
            let name = nl::link_name(link).unwrap_or_default().to_string();
            if keep.contains(&name) {
                continue;
            }
            let Ok(ifname) = IfName::new(name.clone()) else {
                continue;
            };
            match pod::teardown(&self.host, &ifname).await {
                Ok(()) => removed += 1,
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        drop(ipam);
        info!(
            released = released.len(),
            veths_removed = removed,
            "GC done"
        );
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                CniError::IO_FAILURE,
                format!("GC could not remove {}", failures.join("; ")),
            ))
        }
    }
}

/// The attachment a call names: the network (`conf.name`), `CNI_CONTAINERID`, `CNI_IFNAME`.
fn attachment(env: &CniEnv, conf: &NetConf) -> Result<(AttachmentKey, IfName), CniError> {
    let container_id = env
        .container_id
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_CONTAINERID is required"))?;
    let ifname = env
        .ifname
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_IFNAME is required"))?;
    let key = AttachmentKey::new(container_id, ifname.to_string()).in_network(conf.name.clone());
    Ok((key, ifname))
}

/// The pod's namespace: the descriptor the shim sent, checked; the `CNI_NETNS` path, opened here,
/// only when the shim sent none (a shim from before the descriptor).
fn pod_netns(env: &CniEnv, fd: Option<OwnedFd>) -> Result<Netns, CniError> {
    let path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required"))?;
    let netns = match fd {
        Some(fd) => Netns::from_fd(fd, path),
        None => {
            debug!(netns = path, "the request carries no namespace descriptor (a weft-cni older than weftd): opening CNI_NETNS by path");
            Netns::open(Path::new(path))
        }
    };
    netns.map_err(|e| CniError::invalid_env(format!("CNI_NETNS={path}: {e}")))
}

fn not_ready() -> CniError {
    CniError::new(
        CniError::TRY_AGAIN_LATER,
        "weftd has no pod CIDR lease yet; try again later",
    )
}

fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(CODE_POOL_EXHAUSTED, e.to_string()),
        other => CniError::new(CniError::IO_FAILURE, other.to_string()),
    }
}

/// One error line per pod interface whose addresses lie outside the node's pod CIDRs `cidrs`.
pub fn report_outside(pods: &[(AttachmentKey, Allocation)], cidrs: weft_proto::lease::PodCidrs) {
    for (key, allocation) in pods {
        tracing::error!(
            container = %key.container_id,
            ifname = %key.ifname,
            ips = ?allocation.addresses().collect::<Vec<_>>(),
            %cidrs,
            "pod holds addresses outside this node's pod CIDRs (the node came back with other CIDRs): another node may give them to its pods; its CNI CHECK fails so the runtime recreates it"
        );
    }
}

fn pod_error(e: PodError) -> CniError {
    match e {
        PodError::Netns(NetnsError::NotANetns { .. }) | PodError::IfnameTaken { .. } => {
            CniError::invalid_env(e.to_string())
        }
        other => CniError::new(CniError::IO_FAILURE, other.to_string()),
    }
}

fn io_error(what: &str, e: rtnetlink::Error) -> CniError {
    CniError::new(CniError::IO_FAILURE, format!("{what}: {e}"))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip_configs(allocation: &Allocation) -> Vec<IpConfig> {
    allocation
        .addresses()
        .map(|ip| IpConfig {
            address: host_prefix(ip),
            gateway: Some(pod::gateway_for(&ip)),
            interface: Some(1),
        })
        .collect()
}

fn default_routes(allocation: &Allocation) -> Vec<Route> {
    allocation
        .addresses()
        .map(|ip| {
            let any = IpNet::new(ip, 0).expect("a /0 prefix is valid").trunc();
            Route::new(any, Some(pod::gateway_for(&ip)))
        })
        .collect()
}

/// Bind the socket: a stale file from a previous run is replaced; only root may connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accept connections until the listener fails; each is served on its own task.
pub async fn serve(listener: UnixListener, service: Arc<CniService>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &service).await {
                        warn!(error = %e, "CNI connection failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept on the CNI socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_one(mut stream: UnixStream, service: &CniService) -> std::io::Result<()> {
    // The shim writes its request at once; a client that never finishes must not hold a task.
    // Descriptors received so far are closed with the future when it times out.
    let received = wire::read_request(&stream, shim::MAX_MESSAGE_BYTES);
    let received = tokio::time::timeout(REQUEST_READ_TIMEOUT, received)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete request in time")
        })??;
    let reply = answer(received, service).await;
    stream.write_all(&shim::encode_reply(&reply)).await?;
    stream.shutdown().await
}

/// Decode what came, check its descriptors, and let the service answer. Every descriptor that
/// is not handed on is closed here.
async fn answer(received: wire::Received, service: &CniService) -> ShimReply {
    let wire::Received {
        bytes,
        mut fds,
        truncated,
    } = received;
    let request = shim::decode_request(&bytes).and_then(|request| {
        shim::check_descriptors(request.command, fds.len(), truncated).map(|()| request)
    });
    match request {
        Ok(request) => service.handle(&request, fds.pop()).await,
        Err(e) => ShimReply::from(e.to_cni_error()),
    }
}
