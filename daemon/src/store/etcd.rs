//! The etcd v3 store.
//!
//! ```text
//! PREFIX/subnets/v4/10.244.3.0-24        = NODE   claim, under the node's etcd lease
//! PREFIX/subnets/v6/fd00:10:244:3::-64   = NODE   claim, under the node's etcd lease
//! PREFIX/nodes/NODE                      = NodeRecord JSON (pod CIDRs + annotations), same lease
//! ```
//! A node claims a subnet with one transaction: "the claim key does not exist" (or "it already holds
//! my name") → put the claims and the record under a fresh etcd lease with the configured TTL. Losing
//! the race means reading the claims again and trying the next free subnet. The lease is kept alive
//! by the daemon; when it stops, etcd deletes the keys after the TTL and every watcher sees the node
//! go. After a restart, the node finds its claims by name (still alive) or is handed its previous
//! subnets through `LeaseRequest::preferred` (expired but free).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnet::IpNet;
use tracing::{debug, warn};
use weft_proto::lease::{Lease, NodeRecord, PodCidrs};
use weft_proto::names::NodeName;

use crate::config::{EtcdAccess, EtcdTls};

use super::{LeaseRequest, LeaseStore, PeerChange, PeerUpdate, PeerWatcher, StoreError};

/// How long one etcd call may take before the store counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Transactions tried before giving up on a contended claim.
const MAX_CLAIM_ATTEMPTS: u32 = 1000;

#[derive(Clone)]
pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    ttl: Duration,
    /// TLS and user, for a secured etcd.
    access: EtcdAccess,
    client: Option<Client>,
    /// The etcd lease the node's keys live under, once acquired.
    lease_id: Option<i64>,
    keeper: Option<std::sync::Arc<tokio::sync::Mutex<(LeaseKeeper, LeaseKeepAliveStream)>>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd {what}: {e}"))
}

/// Run one etcd call under [`CALL_TIMEOUT`].
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(what, e)),
        Err(_) => Err(unavailable(
            what,
            format!("no answer within {CALL_TIMEOUT:?}"),
        )),
    }
}

/// A failed call: refused for good when etcd turns this node's credentials or permissions down
/// (the operator must fix them; retrying cannot help), unavailable otherwise. The text carries
/// the transport's causes, which name what failed in TLS.
fn classify(what: &str, error: etcd_client::Error) -> StoreError {
    use std::error::Error as _;
    if let etcd_client::Error::GRpcStatus(status) = &error {
        let refused = matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) || status.message().contains("authentication failed");
        if refused {
            let why = status.message();
            return StoreError::Refused(format!("etcd {what}: etcd refused this node: {why}"));
        }
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    unavailable(what, text)
}

/// `error` as a lost lease when etcd says the lease it names is gone ("requested lease not found":
/// it expired while this node could not reach etcd, or etcd was restored without it); otherwise as
/// it is. Retrying such a call can never succeed, so it must not count as transient.
fn lost_if_lease_gone(error: StoreError, node: &NodeName, lease_id: i64) -> StoreError {
    match error {
        StoreError::Unavailable(reason) if reason.contains("lease not found") => {
            StoreError::LeaseLost {
                node: node.clone(),
                reason: format!("etcd lease {lease_id:x} is gone ({reason})"),
            }
        }
        other => other,
    }
}

/// `options` with the TLS material and the user of `access`, read from their files now.
///
/// # Errors
/// [`StoreError::Refused`] naming the setting whose file cannot be read (the password never
/// appears in it).
fn secured(options: ConnectOptions, access: &EtcdAccess) -> Result<ConnectOptions, StoreError> {
    let mut options = options;
    if let Some(tls) = &access.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    if let Some(user) = &access.user {
        let password = user.password.reveal().map_err(|e| {
            StoreError::Refused(format!("etcd password of user {}: {e}", user.name))
        })?;
        if access.tls.is_none() {
            warn!(user = %user.name, "the etcd password travels unencrypted: the endpoints are http://");
        }
        options = options
            .with_user(user.name.clone(), password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// rustls settings from PEM files: the CA (else the system's roots) and the client identity.
fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| StoreError::Refused(format!("--{setting} {}: {e}", path.display())))
    };
    let mut options = TlsOptions::new();
    options = match &tls.ca_file {
        Some(ca) => options.ca_certificate(Certificate::from_pem(read("etcd-cafile", ca)?)),
        None => options.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        let identity = Identity::from_pem(read("etcd-certfile", cert)?, read("etcd-keyfile", key)?);
        options = options.identity(identity);
    }
    Ok(options)
}

impl EtcdStore {
    pub fn new(endpoints: Vec<String>, prefix: String, ttl: Duration) -> EtcdStore {
        EtcdStore {
            endpoints,
            prefix,
            ttl,
            access: EtcdAccess::default(),
            client: None,
            lease_id: None,
            keeper: None,
        }
    }

    /// The same store, reaching etcd over TLS and/or as a user.
    pub fn with_access(mut self, access: EtcdAccess) -> EtcdStore {
        self.access = access;
        self
    }

    async fn client(&mut self) -> Result<Client, StoreError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let options = secured(options, &self.access)?;
        let connect = Client::connect(self.endpoints.clone(), Some(options));
        let client = match tokio::time::timeout(CALL_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => {
                let why = format!("no answer within {CALL_TIMEOUT:?}");
                return Err(unavailable("connect", why));
            }
        };
        self.client = Some(client.clone());
        Ok(client)
    }

    /// [`classify`], with a hint when TLS without a client certificate fails: etcd with
    /// `--client-cert-auth` ends the handshake (the transport reports a closed connection or a
    /// broken pipe, depending on timing).
    fn connect_error(&self, error: etcd_client::Error) -> StoreError {
        let without_identity = self
            .access
            .tls
            .as_ref()
            .is_some_and(|t| t.identity.is_none());
        match classify("connect", error) {
            StoreError::Unavailable(text) if without_identity => StoreError::Unavailable(format!(
                "{text} (if etcd runs with --client-cert-auth, give --etcd-certfile and --etcd-keyfile)"
            )),
            other => other,
        }
    }

    fn claim_key(&self, net: &IpNet) -> String {
        let family = if net.addr().is_ipv4() { "v4" } else { "v6" };
        format!(
            "{}/subnets/{family}/{}-{}",
            self.prefix,
            net.network(),
            net.prefix_len()
        )
    }

    fn claims_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn node_key(&self, node: &NodeName) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// Every claim: subnet and holder. A key that does not parse is skipped with a warning.
    async fn read_claims(&mut self) -> Result<Vec<(IpNet, String)>, StoreError> {
        let mut client = self.client().await?;
        let prefix = self.claims_prefix();
        let resp = call(
            "read claims",
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut claims = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match parse_claim_key(&key[prefix.len()..]) {
                Some(net) => claims.push((net, String::from_utf8_lossy(kv.value()).into_owned())),
                None => warn!(%key, "skipping a subnet claim whose key does not parse"),
            }
        }
        Ok(claims)
    }

    /// Refuse when this node's record (alive: records live under an etcd lease) names another
    /// machine.
    async fn check_not_held_elsewhere(&mut self, request: &LeaseRequest) -> Result<(), StoreError> {
        let (key, nodes_prefix) = (self.node_key(&request.node), self.nodes_prefix());
        let mut client = self.client().await?;
        let resp = call("read this node's record", client.get(key, None)).await?;
        for kv in resp.kvs() {
            if let Some(current) = decode_node(kv, &nodes_prefix) {
                request.check_machine(&current)?;
            }
        }
        Ok(())
    }

    async fn grant(&mut self) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let ttl = self.ttl.as_secs().max(2) as i64;
        let resp = call("grant lease", client.lease_grant(ttl, None)).await?;
        Ok(resp.id())
    }

    /// One claim transaction; `Ok(None)` when another node won a race and the caller should retry.
    async fn try_claim(
        &mut self,
        request: &LeaseRequest,
        lease_id: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let claims = self.read_claims().await?;
        let node = request.node.as_str();
        let mut held = PodCidrs::default();
        for (net, _) in claims.iter().filter(|(_, holder)| holder == node) {
            match net {
                IpNet::V4(n) if request.pool_v4.is_some_and(|p| p.contains_subnet(net)) => {
                    held.v4 = Some(*n)
                }
                IpNet::V6(n) if request.pool_v6.is_some_and(|p| p.contains_subnet(net)) => {
                    held.v6 = Some(*n)
                }
                _ => {}
            }
        }
        let taken: BTreeSet<IpNet> = claims
            .iter()
            .filter(|(_, holder)| holder != node)
            .map(|(net, _)| *net)
            .collect();
        let pod_cidrs = request.choose_cidrs(&held, &taken)?;
        let put = || Some(PutOptions::new().with_lease(lease_id));
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for net in pod_cidrs.iter() {
            let key = self.claim_key(&net);
            compares.push(match held.iter().any(|h| h == net) {
                true => Compare::value(key.clone(), CompareOp::Equal, node),
                false => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            });
            ops.push(TxnOp::put(key, node, put()));
        }
        // Claims this node holds but no longer wants (its pools changed) are given back.
        for (net, holder) in &claims {
            if holder == node && !pod_cidrs.iter().any(|c| c == *net) {
                compares.push(Compare::value(self.claim_key(net), CompareOp::Equal, node));
                ops.push(TxnOp::delete(self.claim_key(net), None));
            }
        }
        let lease = request.lease_with(pod_cidrs, None);
        ops.push(TxnOp::put(
            self.node_key(&request.node),
            record_json(&lease),
            put(),
        ));
        let mut client = self.client().await?;
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = call("claim transaction", client.txn(txn)).await?;
        Ok(resp.succeeded().then_some(lease))
    }

    async fn keep_alive_once(&mut self, lease_id: i64, node: &NodeName) -> Result<(), StoreError> {
        self.keep_alive_call(lease_id, node)
            .await
            .map_err(|e| lost_if_lease_gone(e, node, lease_id))
    }

    async fn keep_alive_call(&mut self, lease_id: i64, node: &NodeName) -> Result<(), StoreError> {
        if self.keeper.is_none() {
            let mut client = self.client().await?;
            let pair = call("keep-alive stream", client.lease_keep_alive(lease_id)).await?;
            self.keeper = Some(std::sync::Arc::new(tokio::sync::Mutex::new(pair)));
        }
        let keeper = self.keeper.clone().expect("set above");
        let mut guard = keeper.lock().await;
        let (keeper_tx, stream) = &mut *guard;
        let sent = call("keep-alive", keeper_tx.keep_alive()).await;
        let answer = match sent {
            Ok(()) => call("keep-alive answer", stream.message()).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
            Ok(Some(_)) => {
                self.keeper = None;
                Err(StoreError::LeaseLost {
                    node: node.clone(),
                    reason: format!("etcd lease {lease_id:x} expired"),
                })
            }
            Ok(None) => {
                self.keeper = None;
                Err(unavailable("keep-alive", "stream closed"))
            }
            Err(e) => {
                self.keeper = None;
                Err(e)
            }
        }
    }
}

fn record_json(lease: &Lease) -> String {
    serde_json::to_string(&lease.to_record()).expect("a record always serialises")
}

/// `10.244.3.0-24` (after `v4/` or `v6/`) back to a subnet.
fn parse_claim_key(rest: &str) -> Option<IpNet> {
    let (_family, cidr) = rest.split_once('/')?;
    let (addr, len) = cidr.rsplit_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

/// A node record from etcd; an unparsable one is skipped with a warning naming its key.
fn decode_node(kv: &KeyValue, nodes_prefix: &str) -> Option<Lease> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let result = serde_json::from_slice::<NodeRecord>(kv.value())
        .map_err(|e| e.to_string())
        .and_then(|record| Lease::from_record(&record).map_err(|e| e.to_string()))
        .and_then(|lease| {
            if key[nodes_prefix.len()..] == *lease.node.as_str() {
                Ok(lease)
            } else {
                Err(format!(
                    "record names node {} under another node's key",
                    lease.node
                ))
            }
        });
    match result {
        Ok(lease) => Some(lease),
        Err(reason) => {
            warn!(%key, %reason, "skipping a store record that does not parse");
            None
        }
    }
}

impl LeaseStore for EtcdStore {
    type Watcher = EtcdWatcher;

    async fn acquire(&mut self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        self.check_not_held_elsewhere(request).await?;
        let lease_id = self.grant().await?;
        for attempt in 1..=MAX_CLAIM_ATTEMPTS {
            if let Some(lease) = self.try_claim(request, lease_id).await? {
                debug!(attempt, lease_id, "claimed {}", lease.pod_cidrs);
                self.lease_id = Some(lease_id);
                self.keeper = None;
                return Ok(lease);
            }
            let jitter = u64::from(attempt % 7) * 3 + (std::process::id() as u64 % 5);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(StoreError::Contended {
            attempts: MAX_CLAIM_ATTEMPTS,
        })
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Lease, StoreError> {
        let lost = |reason: &str| StoreError::LeaseLost {
            node: lease.node.clone(),
            reason: reason.into(),
        };
        let lease_id = self
            .lease_id
            .ok_or_else(|| lost("no etcd lease was acquired"))?;
        self.keep_alive_once(lease_id, &lease.node).await?;
        // One transaction per renewal: the claims must still be this node's, under this very
        // etcd lease (a claim deleted, or moved to another lease, means the lease is lost), and
        // the record is put back as it should be — one deleted by hand comes back.
        let mut client = self.client().await?;
        let compares: Vec<Compare> = lease
            .pod_cidrs
            .iter()
            .flat_map(|net| {
                let key = self.claim_key(&net);
                [
                    Compare::value(key.clone(), CompareOp::Equal, lease.node.as_str()),
                    Compare::lease(key, CompareOp::Equal, lease_id),
                ]
            })
            .collect();
        let put = TxnOp::put(
            self.node_key(&lease.node),
            record_json(lease),
            Some(PutOptions::new().with_lease(lease_id)),
        );
        let resp = call(
            "renew",
            client.txn(Txn::new().when(compares).and_then([put])),
        )
        .await
        .map_err(|e| lost_if_lease_gone(e, &lease.node, lease_id))?;
        if !resp.succeeded() {
            return Err(lost(
                "its subnet claims are gone or held under another etcd lease",
            ));
        }
        Ok(lease.clone())
    }

    async fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        if let Some(lease_id) = self.lease_id.take() {
            // Revoking deletes every key attached to the lease: claims and record.
            call("revoke lease", client.lease_revoke(lease_id)).await?;
        }
        // A `weftd leave` in another process holds no lease id: delete the record first (peers
        // drop the node cleanly), then the claims that still name this node (compare-and-swap, so
        // a claim taken over meanwhile is left alone).
        call(
            "delete record",
            client.delete(self.node_key(&lease.node), None),
        )
        .await?;
        let node = lease.node.as_str();
        let held: Vec<IpNet> = self
            .read_claims()
            .await?
            .into_iter()
            .filter(|(_, holder)| holder == node)
            .map(|(net, _)| net)
            .collect();
        for net in held {
            let key = self.claim_key(&net);
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, node)])
                .and_then([TxnOp::delete(key, None)]);
            call("delete claim", client.txn(txn)).await?;
        }
        self.keeper = None;
        Ok(())
    }

    fn watch_peers(&self, own: &NodeName) -> EtcdWatcher {
        EtcdWatcher {
            store: self.clone(),
            own: own.clone(),
            stream: None,
            view: ClaimedView::default(),
        }
    }
}

/// Lists the node records, then watches the prefix from the listed revision on.
pub struct EtcdWatcher {
    store: EtcdStore,
    own: NodeName,
    stream: Option<WatchStream>,
    view: ClaimedView,
}

/// Node records checked against the claim keys: etcd's compare-and-swap makes a claim key the
/// authority on who holds a subnet, so a record whose pod CIDRs are not all claimed by its own node
/// (an impostor copying another node's CIDR, or a record written by hand) is no peer. This turns
/// the store into the arbiter the plan cannot be on its own after a restart.
#[derive(Debug, Default)]
pub struct ClaimedView {
    records: BTreeMap<NodeName, Lease>,
    claims: BTreeMap<IpNet, String>,
}

impl ClaimedView {
    /// The peer change `node` amounts to now: its record if every pod CIDR in it is claimed by it,
    /// else a removal (with a warning naming the CIDR and its holder).
    pub fn verdict(&self, node: &NodeName) -> PeerChange {
        let Some(lease) = self.records.get(node) else {
            return PeerChange::Delete(node.clone());
        };
        for net in lease.pod_cidrs.iter() {
            let holder = self.claims.get(&net).map(String::as_str);
            if holder != Some(node.as_str()) {
                warn!(peer = %node, pod_cidr = %net, claimed_by = holder.unwrap_or("no one"), "ignoring a node record whose pod CIDR etcd's claims do not give it");
                return PeerChange::Delete(node.clone());
            }
        }
        PeerChange::Put(lease.clone())
    }

    pub fn put_record(&mut self, lease: Lease) {
        self.records.insert(lease.node.clone(), lease);
    }

    pub fn remove_record(&mut self, node: &NodeName) {
        self.records.remove(node);
    }

    /// Record a claim; returns the nodes whose verdict may have changed.
    pub fn put_claim(&mut self, net: IpNet, holder: String) -> Vec<NodeName> {
        let old = self.claims.insert(net, holder.clone());
        [old, Some(holder)]
            .into_iter()
            .flatten()
            .filter_map(|h| NodeName::new(h).ok())
            .collect()
    }

    /// Forget a claim; returns the node whose verdict may have changed.
    pub fn remove_claim(&mut self, net: &IpNet) -> Vec<NodeName> {
        self.claims
            .remove(net)
            .and_then(|h| NodeName::new(h).ok())
            .into_iter()
            .collect()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.records.keys()
    }
}

impl EtcdWatcher {
    /// List claims and records together (one revision), then watch the whole prefix after it.
    async fn start(&mut self) -> Result<PeerUpdate, StoreError> {
        let prefix = format!("{}/", self.store.prefix);
        let mut client = self.store.client().await?;
        let resp = call(
            "list",
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.view = ClaimedView::default();
        for kv in resp.kvs() {
            self.absorb(kv, EventType::Put);
        }
        let peers: Vec<Lease> = self
            .view
            .nodes()
            .filter(|n| **n != self.own)
            .filter_map(|n| match self.view.verdict(n) {
                PeerChange::Put(lease) => Some(lease),
                PeerChange::Delete(_) => None,
            })
            .collect();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let stream = call("watch", client.watch(prefix, Some(options))).await?;
        self.stream = Some(stream);
        Ok(PeerUpdate::Snapshot(peers))
    }

    /// Fold one key into the view; returns the nodes whose verdict may have changed.
    fn absorb(&mut self, kv: &KeyValue, event: EventType) -> Vec<NodeName> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let (nodes_prefix, claims_prefix) = (self.store.nodes_prefix(), self.store.claims_prefix());
        if let Some(name) = key.strip_prefix(&nodes_prefix) {
            let Ok(node) = NodeName::new(name.to_string()) else {
                warn!(%key, "skipping a node key that is not a node name");
                return Vec::new();
            };
            // A record that no longer parses describes no usable peer: it is removed.
            let lease = match event {
                EventType::Put => decode_node(kv, &nodes_prefix),
                EventType::Delete => None,
            };
            match lease {
                Some(lease) => self.view.put_record(lease),
                None => self.view.remove_record(&node),
            }

            return vec![node];
        }
        if let Some(rest) = key.strip_prefix(&claims_prefix) {
            let Some(net) = parse_claim_key(rest) else {
                warn!(%key, "skipping a subnet claim whose key does not parse");
                return Vec::new();
            };
            return match event {
                EventType::Put => self
                    .view
                    .put_claim(net, String::from_utf8_lossy(kv.value()).into_owned()),
                EventType::Delete => self.view.remove_claim(&net),
            };
        }
        Vec::new()
    }

    fn changes(&mut self, resp: &etcd_client::WatchResponse) -> Vec<PeerChange> {
        let mut affected = BTreeSet::new();
        for event in resp.events() {
            if let Some(kv) = event.kv() {
                affected.extend(self.absorb(kv, event.event_type()));
            }
        }
        affected.remove(&self.own);
        affected
            .iter()
            .map(|node| self.view.verdict(node))
            .collect()
    }
}

impl PeerWatcher for EtcdWatcher {
    async fn next(&mut self) -> Result<PeerUpdate, StoreError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return self.start().await;
            };
            let message = stream.message().await;
            match message {
                Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => {
                    self.stream = None; // compacted or cancelled: list again
                }
                Ok(Some(resp)) => {
                    let changes = self.changes(&resp);
                    if !changes.is_empty() {
                        return Ok(PeerUpdate::Changes(changes));
                    }
                }
                Ok(None) => {
                    self.stream = None;
                    return Err(unavailable("watch", "stream closed"));
                }
                Err(e) => {
                    self.stream = None;
                    return Err(unavailable("watch", e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_round_trip() {
        let store = EtcdStore::new(vec![], "/weft".into(), Duration::from_secs(10));
        for cidr in ["10.244.3.0/24", "fd00:10:244:3::/64"] {
            let net: IpNet = cidr.parse().unwrap();
            let key = store.claim_key(&net);
            assert!(key.starts_with("/weft/subnets/v"), "{key}");
            assert_eq!(
                parse_claim_key(&key[store.claims_prefix().len()..]),
                Some(net)
            );
        }
        assert_eq!(parse_claim_key("v4/garbage"), None);
        assert_eq!(parse_claim_key("v4/10.0.0.0-99"), None);
    }

    fn lease(name: &str, cidr: &str) -> Lease {
        use weft_proto::lease::{BackendData, MacAddr, PublicIps};
        Lease {
            node: NodeName::new(name).unwrap(),
            pod_cidrs: PodCidrs {
                v4: Some(cidr.parse().unwrap()),
                v6: None,
            },
            public_ips: PublicIps {
                v4: Some("192.0.2.1".parse().unwrap()),
                v6: None,
            },
            backend: BackendData::Vxlan {
                vtep_mac: Some(MacAddr::stable_local(name)),
                vtep_mac_v6: None,
            },
            expires: None,
            machine: None,
        }
    }

    #[test]
    fn records_count_only_with_their_claims() {
        let mut view = ClaimedView::default();
        let b = NodeName::new("b").unwrap();
        let thief = NodeName::new("thief").unwrap();
        view.put_record(lease("b", "10.244.1.0/24"));
        assert_eq!(
            view.verdict(&b),
            PeerChange::Delete(b.clone()),
            "no claim yet"
        );
        let touched = view.put_claim("10.244.1.0/24".parse().unwrap(), "b".into());
        assert_eq!(touched, vec![b.clone()]);
        assert!(matches!(view.verdict(&b), PeerChange::Put(_)));
        view.put_record(lease("thief", "10.244.1.0/24"));
        assert_eq!(
            view.verdict(&thief),
            PeerChange::Delete(thief.clone()),
            "the claim is b's"
        );
        let touched = view.remove_claim(&"10.244.1.0/24".parse().unwrap());
        assert_eq!(touched, vec![b.clone()]);
        assert_eq!(view.verdict(&b), PeerChange::Delete(b));
        assert_eq!(
            view.verdict(&NodeName::new("ghost").unwrap()),
            PeerChange::Delete(NodeName::new("ghost").unwrap())
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Claim keys read back from etcd (anyone with write access can put one) parse or are
        /// skipped, and what a node writes parses back to its subnet.
        #[test]
        fn claim_keys_parse_or_are_skipped(rest in "(v4|v6|[a-z0-9]{0,3})/[0-9a-f.:]{0,40}-[0-9]{0,4}") {
            let _ = parse_claim_key(&rest);
        }

        #[test]
        fn a_written_claim_key_reads_back(a in 0u8.., b in 0u8.., n in 0u16..) {
            let v4: IpNet = format!("10.{a}.{b}.0/24").parse().unwrap();
            let v6: IpNet = format!("fd00:10:244:{n:x}::/64").parse().unwrap();
            for net in [v4, v6] {
                let family = if net.addr().is_ipv4() { "v4" } else { "v6" };
                let key = format!("{family}/{}-{}", net.addr(), net.prefix_len());
                proptest::prop_assert_eq!(parse_claim_key(&key), Some(net));
            }
        }
    }
}
