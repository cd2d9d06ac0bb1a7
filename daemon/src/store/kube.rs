//! The Kubernetes store: Node objects are the peer directory, and weft keeps nothing of its own.
//!
//! - **Pod CIDRs** come from the node's `spec.podCIDRs`, assigned by kube-controller-manager
//!   (`--allocate-node-cidrs`): weft never picks them in this mode. [`KubeStore::acquire`] reports
//!   a transient error naming what is missing until there is one per configured family, and
//!   refuses one outside weft's cluster CIDRs (a configuration mismatch an operator must fix).
//! - **This node's record** is published as `weft.dev/*` annotations on its own Node with a JSON
//!   merge patch, and only when they differ from what the Node carries: the API server is shared by
//!   the whole cluster, so a steady state (and a restart with nothing changed) writes nothing.
//!   The Node as the watch last saw it stands for "what it carries", so an annotation someone
//!   removed or changed by hand is put back at the next renewal.
//! - **`NetworkUnavailable`** is set to False (status patch) once the datapath is up, unless it
//!   already is.
//! - **Peers** come from a watch of all Nodes (kube-runtime's `watcher`: list, then watch; after an
//!   expired resource version, 410 Gone or an API server restart it lists again, and the relist
//!   is reported as a snapshot, so peers that still exist are never dropped). A Node with
//!   podCIDRs and valid annotations is a peer; one deleted, without weft's annotations, or with
//!   a value that does not parse is not (the last is logged, naming the node and the reason).
//!
//! The same admission rules as for every store then apply (`crate::plan::admission`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use tracing::{info, warn};
use weft_proto::annotations;
use weft_proto::lease::{Lease, NodeRecord, PodCidrs};
use weft_proto::names::NodeName;

use super::{LeaseRequest, LeaseStore, PeerChange, PeerUpdate, PeerWatcher, StoreError};

/// The field manager weft's patches carry.
const FIELD_MANAGER: &str = "weftd";

/// This node as the watch last saw it: its `weft.dev/*` annotations, or `None` once deleted.
type OwnNode = Arc<Mutex<Option<BTreeMap<String, String>>>>;

/// The Kubernetes store of one node.
pub struct KubeStore {
    kubeconfig: Option<PathBuf>,
    client: Option<Client>,
    /// This node's `weft.dev/*` annotations as last read, written or watched; `None`: unknown.
    own: OwnNode,
}

impl KubeStore {
    /// A store reaching the API server through `kubeconfig` (else in-cluster or `$KUBECONFIG`).
    /// Nothing is contacted until the first call.
    pub fn new(kubeconfig: Option<PathBuf>) -> KubeStore {
        KubeStore {
            kubeconfig,
            client: None,
            own: Arc::new(Mutex::new(None)),
        }
    }

    async fn client(&mut self) -> Result<Client, StoreError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = connect(self.kubeconfig.as_ref()).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn nodes(&mut self) -> Result<Api<Node>, StoreError> {
        Ok(Api::all(self.client().await?))
    }

    /// Patch this node's annotations to `desired` unless it already carries them.
    async fn publish(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let desired = weft_annotations(&lease.to_record().annotations);
        let current = self.own.lock().expect("own node lock").clone();
        let Some(patch) = annotation_patch(current.as_ref(), &desired) else {
            return Ok(());
        };
        let nodes = self.nodes().await?;
        let params = PatchParams::apply(FIELD_MANAGER);
        match nodes
            .patch(lease.node.as_str(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(node) => {
                info!(node = %lease.node, "published weft.dev annotations on the Node");
                *self.own.lock().expect("own node lock") = Some(weft_annotations_of(&node));
                Ok(())
            }
            Err(e) if is_not_found(&e) => Err(node_gone(&lease.node)),
            Err(e) => Err(unavailable("patch the Node's annotations", e)),
        }
    }
}

/// A client from the kubeconfig file given, else the inferred configuration (in-cluster, then
/// `$KUBECONFIG` / `~/.kube/config`).
async fn connect(kubeconfig: Option<&PathBuf>) -> Result<Client, StoreError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StoreError::Refused(format!("kubeconfig {}: {e}", path.display())))?;
            let options = kube::config::KubeConfigOptions::default();
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| StoreError::Refused(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => Config::infer()
            .await
            .map_err(|e| StoreError::Refused(format!("no Kubernetes configuration: {e}")))?,
    };
    Client::try_from(config).map_err(|e| unavailable("make a Kubernetes client", e))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.is_not_found())
}

fn node_gone(node: &NodeName) -> StoreError {
    StoreError::LeaseLost {
        node: node.clone(),
        reason: "its Node object was deleted".to_string(),
    }
}

impl LeaseStore for KubeStore {
    type Watcher = KubeWatcher;

    /// Wait (by failing transiently, one reason at a time) for this node's Node and its
    /// `spec.podCIDRs`, then publish its annotations if they differ.
    async fn acquire(&mut self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        let nodes = self.nodes().await?;
        let node = nodes
            .get_opt(request.node.as_str())
            .await
            .map_err(|e| unavailable("read this node's Node", e))?
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "waiting for the Node {} to exist (the kubelet registers it)",
                    request.node
                ))
            })?;
        let pod_cidrs = assigned_cidrs(&node, request)?;
        *self.own.lock().expect("own node lock") = Some(weft_annotations_of(&node));
        let lease = request.lease_with(pod_cidrs, None);
        self.publish(&lease).await?;
        Ok(lease)
    }

    /// Publish again only what changed; a Node deleted means the lease is lost.
    async fn renew(&mut self, lease: &Lease) -> Result<Lease, StoreError> {
        if self.own.lock().expect("own node lock").is_none() && self.client.is_some() {
            return Err(node_gone(&lease.node));
        }
        self.publish(lease).await?;
        Ok(lease.clone())
    }

    /// Remove weft's annotations from this node (the pod CIDRs stay: they are the cluster's).
    async fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let nodes = self.nodes().await?;
        let current = match nodes.get_opt(lease.node.as_str()).await {
            Ok(Some(node)) => weft_annotations_of(&node),
            Ok(None) => return Ok(()),
            Err(e) => return Err(unavailable("read this node's Node", e)),
        };
        let Some(patch) = annotation_patch(Some(&current), &BTreeMap::new()) else {
            return Ok(());
        };
        let params = PatchParams::apply(FIELD_MANAGER);
        match nodes
            .patch(lease.node.as_str(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(unavailable("remove the Node's annotations", e)),
        }
    }

    fn watch_peers(&self, own: &NodeName) -> KubeWatcher {
        KubeWatcher {
            kubeconfig: self.kubeconfig.clone(),
            own: own.clone(),
            own_node: self.own.clone(),
            stream: None,
            listing: None,
            unusable: BTreeMap::new(),
        }
    }

    /// Set `NetworkUnavailable` to False on this node, unless it already is.
    async fn datapath_ready(&mut self, node: &NodeName) -> Result<(), StoreError> {
        let nodes = self.nodes().await?;
        let current = nodes
            .get_opt(node.as_str())
            .await
            .map_err(|e| unavailable("read this node's Node", e))?
            .ok_or_else(|| node_gone(node))?;
        if network_available(&current) {
            return Ok(());
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "WeftIsUp",
            "message": "weft programmed this node's pod network",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        nodes
            .patch_status(
                node.as_str(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(|e| unavailable("set the Node's NetworkUnavailable condition", e))?;
        info!(%node, "NetworkUnavailable set to False");
        Ok(())
    }
}

/// The watcher's stream of Node events.
type NodeEvents =
    std::pin::Pin<Box<dyn Stream<Item = watcher::Result<watcher::Event<Node>>> + Send>>;

/// The watch of every Node, as peer updates.
pub struct KubeWatcher {
    kubeconfig: Option<PathBuf>,
    own: NodeName,
    own_node: OwnNode,
    stream: Option<NodeEvents>,
    /// The peers listed so far while a (re)list is under way.
    listing: Option<Vec<Lease>>,
    /// Why each unusable Node was last logged as such: a Node whose status the kubelet updates
    /// is logged again only when the reason changes.
    unusable: BTreeMap<String, String>,
}

impl PeerWatcher for KubeWatcher {
    async fn next(&mut self) -> Result<PeerUpdate, StoreError> {
        if self.stream.is_none() {
            let client = connect(self.kubeconfig.as_ref()).await?;
            let nodes: Api<Node> = Api::all(client);
            self.stream = Some(Box::pin(watcher(nodes, watcher::Config::default())));
        }
        loop {
            let stream = self.stream.as_mut().expect("stream just made");
            let event = match stream.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(unavailable("watch Nodes", e)),
                None => {
                    self.stream = None;
                    return Err(StoreError::Unavailable("the Node watch ended".into()));
                }
            };
            if let Some(update) = self.absorb(event) {
                return Ok(update);
            }
        }
    }
}

impl KubeWatcher {
    /// Fold one watch event in; an update once there is one to report.
    fn absorb(&mut self, event: watcher::Event<Node>) -> Option<PeerUpdate> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(node) => {
                let peer = self.observe(&node);
                if let (Some(listing), Some(Ok(lease))) = (self.listing.as_mut(), peer) {
                    listing.push(lease);
                }
                None
            }
            watcher::Event::InitDone => self.listing.take().map(PeerUpdate::Snapshot),
            watcher::Event::Apply(node) => {
                let name = NodeName::new(node_name(&node)).ok()?;
                let change = match self.observe(&node)? {
                    Ok(lease) => PeerChange::Put(lease),
                    Err(()) => PeerChange::Delete(name),
                };
                Some(PeerUpdate::Changes(vec![change]))
            }
            watcher::Event::Delete(node) => {
                let name = NodeName::new(node_name(&node)).ok()?;
                if name == self.own {
                    *self.own_node.lock().expect("own node lock") = None;
                    return None;
                }
                Some(PeerUpdate::Changes(vec![PeerChange::Delete(name)]))
            }
        }
    }

    /// This node: remember its annotations, `None`. Another: the peer it is, or `Err` (logged)
    /// when it is not one.
    fn observe(&mut self, node: &Node) -> Option<Result<Lease, ()>> {
        if node_name(node) == self.own.as_str() {
            *self.own_node.lock().expect("own node lock") = Some(weft_annotations_of(node));
            return None;
        }
        let peer = peer_of(node);
        let name = node_name(node).to_string();
        match &peer {
            Err(Some(reason)) if self.unusable.get(&name) != Some(reason) => {
                warn!(node = %name, %reason, "Node is not a usable peer");
                self.unusable.insert(name, reason.clone());
            }
            Err(Some(_)) => {}
            _ => {
                self.unusable.remove(&name);
            }
        }
        Some(peer.map_err(|_| ()))
    }
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// A Node's `weft.dev/*` annotations that weftd writes.
fn weft_annotations_of(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .as_ref()
        .map(weft_annotations)
        .unwrap_or_default()
}

/// The `weft.dev/*` annotations weftd writes: all but the operator's
/// `weft.dev/public-ip-overwrite`, which weftd reads and never changes.
fn weft_annotations(all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(k, _)| {
            k.starts_with(annotations::PREFIX) && *k != annotations::PUBLIC_IP_OVERWRITE
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The node record a Node carries: its name, `spec.podCIDRs` and `weft.dev/*` annotations
/// (the operator's overwrite included: the record decoder honours it).
pub fn record_of(node: &Node) -> NodeRecord {
    let pod_cidrs = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default();
    NodeRecord {
        name: node_name(node).to_string(),
        pod_cidrs,
        annotations: node
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(annotations::PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        expires: None,
    }
}

/// The peer a Node is: `Err(None)` when it simply is not one yet (no weft annotations or no
/// pod CIDRs: a node weft does not run on, or not yet), `Err(Some(reason))` when what it carries
/// is malformed.
pub fn peer_of(node: &Node) -> Result<Lease, Option<String>> {
    let record = record_of(node);
    if record.annotations.is_empty() || record.pod_cidrs.is_empty() {
        return Err(None);
    }
    Lease::from_record(&record).map_err(|e| Some(e.to_string()))
}

/// The pod CIDRs assigned to this node, one per configured family; a transient error naming what
/// is missing, or a refusal when one lies outside weft's cluster CIDRs.
pub fn assigned_cidrs(node: &Node, request: &LeaseRequest) -> Result<PodCidrs, StoreError> {
    let record = record_of(node);
    let mut cidrs = PodCidrs::default();
    for text in &record.pod_cidrs {
        match text.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(net)) => cidrs.v4 = Some(net),
            Ok(ipnet::IpNet::V6(net)) => cidrs.v6 = Some(net),
            Err(_) => {
                return Err(StoreError::Refused(format!(
                    "Node {}: spec.podCIDRs holds {text:?}, not a CIDR",
                    record.name
                )))
            }
        }
    }
    let wanted = [
        ("IPv4", request.pool_v4, cidrs.v4.map(ipnet::IpNet::V4)),
        ("IPv6", request.pool_v6, cidrs.v6.map(ipnet::IpNet::V6)),
    ];
    let mut granted = PodCidrs::default();
    for (family, pool, cidr) in wanted {
        let Some(pool) = pool else { continue };
        let Some(cidr) = cidr else {
            return Err(StoreError::Unavailable(format!(
                "waiting for an {family} pod CIDR in spec.podCIDRs of Node {} (assigned by \
                 kube-controller-manager --allocate-node-cidrs)",
                record.name
            )));
        };
        if !pool.contains_subnet(&cidr) {
            return Err(StoreError::Refused(format!(
                "Node {}: spec.podCIDRs {cidr} is not a /{} inside weft's cluster CIDR {}; \
                 make --cluster-cidr and --node-prefix-v4/-v6 match kube-controller-manager's",
                record.name, pool.prefix_len, pool.cluster
            )));
        }
        match cidr {
            ipnet::IpNet::V4(n) => granted.v4 = Some(n),
            ipnet::IpNet::V6(n) => granted.v6 = Some(n),
        }
    }
    Ok(granted)
}

/// The JSON merge patch that makes a Node's `weft.dev/*` annotations `desired` (removing weft
/// keys not desired); `None` when `current` already equals it. An unknown `current` always
/// patches.
pub fn annotation_patch(
    current: Option<&BTreeMap<String, String>>,
    desired: &BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    if current == Some(desired) {
        return None;
    }
    let mut annotations = serde_json::Map::new();
    for key in current.into_iter().flat_map(|c| c.keys()) {
        if !desired.contains_key(key) {
            annotations.insert(key.clone(), serde_json::Value::Null);
        }
    }
    for (key, value) in desired {
        annotations.insert(key.clone(), json!(value));
    }
    Some(json!({"metadata": {"annotations": annotations}}))
}

/// Whether the Node's `NetworkUnavailable` condition is already False.
pub fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;
    use weft_proto::lease::{BackendData, MacAddr, PublicIps};

    use super::*;
    use crate::subnet::SubnetPool;

    fn node(name: &str, cidrs: &[&str], annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("weft.dev/backend", "vxlan"),
        ("weft.dev/public-ip", "192.0.2.2"),
        ("weft.dev/vtep-mac", "02:00:00:00:02:04"),
        ("weft.dev/vtep-mac-v6", "02:00:00:00:02:06"),
        ("kubernetes.io/other", "kept out"),
    ];

    #[test]
    fn a_node_with_pod_cidrs_and_valid_annotations_is_a_peer() {
        let lease = peer_of(&node("b", &["10.244.2.0/24", "fd00:10:244:2::/64"], GOOD)).unwrap();
        assert_eq!(lease.node.as_str(), "b");
        assert_eq!(lease.pod_cidrs.v4, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(
            lease.pod_cidrs.v6,
            Some("fd00:10:244:2::/64".parse().unwrap())
        );
        assert_eq!(lease.public_ips.v4, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(
            lease.backend,
            BackendData::Vxlan {
                vtep_mac: Some(MacAddr([2, 0, 0, 0, 2, 4])),
                vtep_mac_v6: Some(MacAddr([2, 0, 0, 0, 2, 6])),
            }
        );
    }

    #[test]
    fn nodes_that_are_not_peers_say_why_or_are_simply_not_weft_nodes() {
        assert_eq!(
            peer_of(&node("c", &["10.244.3.0/24"], &[])),
            Err(None),
            "no weft"
        );
        assert_eq!(peer_of(&node("c", &[], GOOD)), Err(None), "no pod CIDR yet");
        let bad: &[(&str, &str, &str)] = &[
            ("weft.dev/public-ip", "192.0.2.300", "weft.dev/public-ip"),
            (
                "weft.dev/vtep-mac",
                "02:00:00:zz:00:01",
                "weft.dev/vtep-mac",
            ),
            ("weft.dev/backend", "geneve", "weft.dev/backend"),
        ];
        for (key, value, named) in bad {
            let mut annotations: Vec<(&str, &str)> =
                GOOD.iter().filter(|(k, _)| k != key).copied().collect();
            annotations.push((key, value));
            let reason = peer_of(&node("c", &["10.244.3.0/24"], &annotations))
                .unwrap_err()
                .unwrap_or_else(|| panic!("{key}={value} must be refused with a reason"));
            assert!(reason.contains(named) && reason.contains(value), "{reason}");
        }
        let reason = peer_of(&node("c", &["10.244.3.0/33"], GOOD))
            .unwrap_err()
            .unwrap();
        assert!(reason.contains("10.244.3.0/33"), "{reason}");
    }

    fn request(v6: bool) -> LeaseRequest {
        LeaseRequest {
            node: NodeName::new("a").unwrap(),
            pool_v4: Some(SubnetPool::new("10.244.0.0/16".parse().unwrap(), 24).unwrap()),
            pool_v6: v6.then(|| SubnetPool::new("fd00:10:244::/56".parse().unwrap(), 64).unwrap()),
            preferred: PodCidrs::default(),
            public_ips: PublicIps::default(),
            backend: BackendData::Vxlan {
                vtep_mac: None,
                vtep_mac_v6: None,
            },
            machine: None,
        }
    }

    #[test]
    fn pod_cidrs_come_from_the_node_one_per_configured_family() {
        let dual = node("a", &["10.244.1.0/24", "fd00:10:244:1::/64"], &[]);
        let cidrs = assigned_cidrs(&dual, &request(true)).unwrap();
        assert_eq!(cidrs.v4, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(cidrs.v6, Some("fd00:10:244:1::/64".parse().unwrap()));
        let v4_only = assigned_cidrs(&dual, &request(false)).unwrap();
        assert_eq!(v4_only.v6, None, "a family weft does not run is not taken");

        let waiting = assigned_cidrs(&node("a", &["10.244.1.0/24"], &[]), &request(true));
        let Err(StoreError::Unavailable(why)) = waiting else {
            panic!("missing IPv6 pod CIDR must be waited for: {waiting:?}")
        };
        assert!(
            why.contains("IPv6") && why.contains("--allocate-node-cidrs"),
            "{why}"
        );

        let outside = assigned_cidrs(&node("a", &["10.99.1.0/24"], &[]), &request(false));
        let Err(StoreError::Refused(why)) = outside else {
            panic!("a CIDR outside the cluster CIDR is a refusal: {outside:?}")
        };
        assert!(
            why.contains("10.99.1.0/24") && why.contains("10.244.0.0/16"),
            "{why}"
        );
    }

    #[test]
    fn annotations_are_patched_only_when_they_differ() {
        let desired: BTreeMap<String, String> = [("weft.dev/public-ip", "192.0.2.1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(annotation_patch(Some(&desired), &desired), None);
        let stale: BTreeMap<String, String> = [
            ("weft.dev/public-ip", "192.0.2.9"),
            ("weft.dev/vtep-mac", "02:00:00:00:00:01"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            annotation_patch(Some(&stale), &desired),
            Some(json!({"metadata": {"annotations": {
                "weft.dev/public-ip": "192.0.2.1",
                "weft.dev/vtep-mac": null,
            }}}))
        );
        assert!(annotation_patch(None, &desired).is_some(), "unknown: write");
        let with_overwrite = node(
            "a",
            &[],
            &[("weft.dev/public-ip-overwrite", "198.51.100.1")],
        );
        assert!(
            weft_annotations_of(&with_overwrite).is_empty(),
            "the operator's overwrite is never weftd's to remove"
        );
    }

    #[test]
    fn network_unavailable_false_is_recognised() {
        let mut n = node("a", &[], &[]);
        assert!(!network_available(&n));
        let condition = |status: &str| NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: status.into(),
            ..Default::default()
        };
        n.status = Some(NodeStatus {
            conditions: Some(vec![condition("True")]),
            ..Default::default()
        });
        assert!(!network_available(&n));
        n.status = Some(NodeStatus {
            conditions: Some(vec![condition("False")]),
            ..Default::default()
        });
        assert!(network_available(&n));
    }
}
