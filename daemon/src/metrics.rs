//! Prometheus metrics, in the OpenMetrics text format (`prometheus-client`), served at `/metrics`
//! on `--metrics-addr`.
//!
//! Events are counted where they happen ([`global`]): reconcile passes, datapath (netlink and
//! WireGuard) operations, CNI requests. What is a state rather than an event (peers by health,
//! each peer's reachability and round trip, IPAM use, the lease's expiry, WireGuard bytes and
//! handshake age) is read from the daemon's [`Snapshot`] at each scrape.

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::inspect::snapshot::{HealthState, Snapshot};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    kind: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    verb: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric weftd exports.
pub struct Metrics {
    registry: Registry,
    reconcile_runs: Counter,
    reconcile_errors: Counter,
    reconcile_seconds: Histogram,
    datapath_ops: Family<OpLabels, Counter>,
    cni_requests: Family<CniLabels, Counter>,
    cni_seconds: Histograms<VerbLabel>,
    scraped: Scraped,
    /// One scrape at a time sets the state gauges and encodes.
    scrape: Mutex<()>,
}

/// The gauges set from the snapshot at each scrape.
#[derive(Default)]
struct Scraped {
    peers: Family<StateLabel, Gauge>,
    peer_up: Family<PeerLabel, Gauge>,
    peer_rtt: Family<PeerLabel, FloatGauge>,
    ipam_in_use: Family<FamilyLabel, Gauge>,
    ipam_capacity: Family<FamilyLabel, FloatGauge>,
    lease_held: Gauge,
    lease_expiry: Gauge,
    wg_rx: Family<PeerLabel, Gauge>,
    wg_tx: Family<PeerLabel, Gauge>,
    wg_handshake_age: Family<PeerLabel, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("weft"),
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_seconds: latency_histogram(),
            datapath_ops: Family::default(),
            cni_requests: Family::default(),
            cni_seconds: Family::new_with_constructor(latency_histogram),
            scraped: Scraped::default(),
            scrape: Mutex::new(()),
        };
        metrics.register_events();
        metrics.scraped.register(&mut metrics.registry);
        metrics
    }

    /// The counters and histograms of events.
    fn register_events(&mut self) {
        let r = &mut self.registry;
        r.register(
            "reconcile_runs",
            "Reconcile passes",
            self.reconcile_runs.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile passes that left something undone",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "datapath_operations",
            "Datapath operations (netlink, WireGuard) by kind and result",
            self.datapath_ops.clone(),
        );
        r.register(
            "cni_requests",
            "CNI requests by verb and result",
            self.cni_requests.clone(),
        );
        r.register(
            "cni_request_duration_seconds",
            "CNI request latency by verb",
            self.cni_seconds.clone(),
        );
    }

    /// A reconcile pass that took `took`; `complete` when it left nothing undone.
    pub fn reconcile(&self, took: Duration, complete: bool) {
        self.reconcile_runs.inc();
        if !complete {
            self.reconcile_errors.inc();
        }
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// One datapath operation of `kind` (an operation type's variant name), done or failed.
    pub fn datapath_op(&self, kind: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        let labels = OpLabels {
            kind: kind.to_string(),
            result,
        };
        self.datapath_ops.get_or_create(&labels).inc();
    }

    /// One CNI request of `verb` (`ADD`, `DEL`, …), answered in `took`, successfully or not.
    pub fn cni_request(&self, verb: &str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        let verb = verb.to_string();
        let labels = CniLabels {
            verb: verb.clone(),
            result,
        };
        self.cni_requests.get_or_create(&labels).inc();
        let histogram = self.cni_seconds.get_or_create(&VerbLabel { verb });
        histogram.observe(took.as_secs_f64());
    }

    /// The exposition, with the state gauges set from `snapshot` (taken at `now`, Unix seconds).
    pub fn encode(&self, snapshot: &Snapshot, now: u64) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.scraped.set(snapshot, now);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Scraped {
    /// The gauges set at each scrape.
    fn register(&self, r: &mut Registry) {
        let s = self;
        r.register(
            "peers",
            "Peers by state: up, down, unknown (probes) and refused",
            s.peers.clone(),
        );
        r.register(
            "peer_reachable",
            "1 if the peer answers probes through its tunnel, 0 if not",
            s.peer_up.clone(),
        );
        r.register(
            "peer_rtt_seconds",
            "Last probe round-trip time through the peer's tunnel",
            s.peer_rtt.clone(),
        );
        r.register(
            "ipam_addresses_in_use",
            "Pod addresses in use, per family",
            s.ipam_in_use.clone(),
        );
        r.register(
            "ipam_addresses_capacity",
            "Pod addresses IPAM can hand out, per family",
            s.ipam_capacity.clone(),
        );
        r.register(
            "lease_held",
            "1 while the node holds its lease",
            s.lease_held.clone(),
        );
        r.register(
            "lease_expiry_timestamp_seconds",
            "When the lease expires unless renewed (Unix time)",
            s.lease_expiry.clone(),
        );
        r.register(
            "wireguard_peer_received_bytes",
            "Bytes received from the WireGuard peer",
            s.wg_rx.clone(),
        );
        r.register(
            "wireguard_peer_sent_bytes",
            "Bytes sent to the WireGuard peer",
            s.wg_tx.clone(),
        );
        r.register(
            "wireguard_peer_handshake_age_seconds",
            "Seconds since the latest handshake with the WireGuard peer",
            s.wg_handshake_age.clone(),
        );
    }
}

impl Scraped {
    fn set(&self, snapshot: &Snapshot, now: u64) {
        self.set_peers(snapshot);
        self.set_wireguard(snapshot, now);
        self.ipam_in_use.clear();
        self.ipam_capacity.clear();
        let ipam = snapshot.ipam.clone().unwrap_or_default();
        for (family, pool) in [("ipv4", ipam.v4), ("ipv6", ipam.v6)] {
            if let Some(pool) = pool {
                let label = FamilyLabel { family };
                self.ipam_in_use
                    .get_or_create(&label)
                    .set(gauge(pool.in_use));
                self.ipam_capacity
                    .get_or_create(&label)
                    .set(pool.capacity as f64);
            }
        }
        self.lease_held.set(i64::from(snapshot.lease.is_some()));
        let expiry = snapshot.lease.as_ref().map_or(0, |l| l.expires_at);
        self.lease_expiry.set(gauge(expiry));
    }

    fn set_peers(&self, snapshot: &Snapshot) {
        self.peers.clear();
        self.peer_up.clear();
        self.peer_rtt.clear();
        for state in ["up", "down", "unknown", "refused"] {
            self.peers.get_or_create(&StateLabel { state }).set(0);
        }
        for peer in &snapshot.peers {
            let state = match peer.health.state {
                HealthState::Up => "up",
                HealthState::Down => "down",
                HealthState::Unknown => "unknown",
            };
            self.peers.get_or_create(&StateLabel { state }).inc();
            let label = PeerLabel {
                peer: peer.node.clone(),
            };
            if peer.health.state != HealthState::Unknown {
                let up = i64::from(peer.health.state == HealthState::Up);
                self.peer_up.get_or_create(&label).set(up);
            }
            if let Some(rtt) = peer.health.rtt_us {
                self.peer_rtt.get_or_create(&label).set(rtt as f64 / 1e6);
            }
        }
        let refused = gauge(snapshot.refused.len() as u64);
        self.peers
            .get_or_create(&StateLabel { state: "refused" })
            .set(refused);
    }

    fn set_wireguard(&self, snapshot: &Snapshot, now: u64) {
        self.wg_rx.clear();
        self.wg_tx.clear();
        self.wg_handshake_age.clear();
        for peer in &snapshot.peers {
            let Some(wg) = &peer.wireguard else { continue };
            let label = PeerLabel {
                peer: peer.node.clone(),
            };
            self.wg_rx.get_or_create(&label).set(gauge(wg.rx_bytes));
            self.wg_tx.get_or_create(&label).set(gauge(wg.tx_bytes));
            if let Some(at) = wg.latest_handshake {
                let age = gauge(now.saturating_sub(at));
                self.wg_handshake_age.get_or_create(&label).set(age);
            }
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The variant name of an operation (`AddRoute` of `AddRoute { .. }`), as the `kind` label.
pub fn variant_name(op: &impl std::fmt::Debug) -> String {
    let text = format!("{op:?}");
    let end = text
        .find(|c: char| !c.is_alphanumeric() && c != '_')
        .unwrap_or(text.len());
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::snapshot::{Health, PeerView, RefusedView};

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Op {
        AddRoute { dev: String },
        Flush,
        Set(u8),
    }

    #[test]
    fn kinds_are_variant_names() {
        assert_eq!(variant_name(&Op::AddRoute { dev: "x".into() }), "AddRoute");
        assert_eq!(variant_name(&Op::Flush), "Flush");
        assert_eq!(variant_name(&Op::Set(3)), "Set");
    }

    #[test]
    fn the_exposition_carries_events_and_states() {
        let metrics = Metrics::new();
        metrics.reconcile(Duration::from_millis(3), true);
        metrics.datapath_op("AddRoute", true);
        metrics.cni_request("ADD", true, Duration::from_millis(2));
        let peer = |node: &str, state| PeerView {
            node: node.into(),
            pod_cidrs: vec![],
            endpoint: "192.0.2.2".parse().unwrap(),
            port: None,
            health: Health {
                state,
                rtt_us: Some(250),
                ..Health::default()
            },
            wireguard: None,
        };
        let snapshot = Snapshot {
            peers: vec![
                peer("node-2", HealthState::Up),
                peer("node-3", HealthState::Down),
            ],
            refused: vec![RefusedView::default()],
            ..Snapshot::default()
        };
        let text = metrics.encode(&snapshot, 1000);
        for line in [
            "weft_reconcile_runs_total 1",
            "weft_datapath_operations_total{kind=\"AddRoute\",result=\"ok\"} 1",
            "weft_cni_requests_total{verb=\"ADD\",result=\"ok\"} 1",
            "weft_peers{state=\"up\"} 1",
            "weft_peers{state=\"down\"} 1",
            "weft_peers{state=\"refused\"} 1",
            "weft_peer_reachable{peer=\"node-3\"} 0",
            "weft_peer_rtt_seconds{peer=\"node-2\"} 0.00025",
            "weft_lease_held 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // A peer that left is gone from the next scrape.
        let text = metrics.encode(&Snapshot::default(), 1000);
        assert!(!text.contains("node-3"), "{text}");
    }
}
