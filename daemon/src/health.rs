//! `/healthz` and `/readyz` over HTTP (`--http-addr`, default 127.0.0.1:9475), for a DaemonSet's
//! liveness and readiness probes.
//!
//! - `/healthz`: 200 while the reconcile loop has made a pass within [`STALE_AFTER`] (it passes at
//!   least every resync period, so a loop that is stuck or dead fails it); 503 otherwise.
//! - `/readyz`: 200 once the lease is held, the datapath was programmed at least once and the CNI
//!   socket is serving; 503 with the missing ones, one per line, before that.
//!
//! Both answer `text/plain`. The same server answers `/` with the status page (the mesh as inline
//! SVG, refreshing itself every [`PAGE_REFRESH_SECS`]; see [`crate::inspect::graph::page`]) and
//! `/status.json` with the daemon's snapshot; anything else is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_proto::lease::Lease;

use crate::inspect::graph;
use crate::inspect::state::Inspector;
use crate::metrics;
use crate::store::unix_now;

/// How long without a reconcile pass `/healthz` tolerates: three resync periods.
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// How often the status page reloads itself, seconds.
pub const PAGE_REFRESH_SECS: u32 = 5;

/// What the probes look at.
pub struct Probes {
    pub lease: watch::Receiver<Option<Lease>>,
    /// True once the node's datapath was programmed (backend and firewall).
    pub programmed: watch::Receiver<bool>,
    /// Unix seconds of the reconcile loop's last pass; 0 before the first.
    pub heartbeat: Arc<AtomicU64>,
    /// Whether this node serves pods (false with `--datapath none`: no CNI socket, nothing
    /// programmed, and readiness asks only for the lease).
    pub serves_pods: bool,
    /// The daemon's state for the status page; `None` serves no page.
    pub inspector: Option<Arc<Inspector>>,
}

impl Probes {
    /// Liveness at `now` (Unix seconds): `Err` says why not.
    pub fn healthz(&self, now: u64) -> Result<(), String> {
        let last = self.heartbeat.load(Ordering::Relaxed);
        let age = now.saturating_sub(last);
        if last != 0 && age > STALE_AFTER.as_secs() {
            return Err(format!("the reconcile loop made no pass for {age} s"));
        }
        Ok(())
    }

    /// Readiness: `Err` lists what is missing.
    pub fn readyz(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if self.lease.borrow().is_none() {
            missing.push("no lease held");
        }
        if self.serves_pods && !*self.programmed.borrow() {
            missing.push("the datapath is not programmed yet");
        }
        match missing.is_empty() {
            true => Ok(()),
            false => Err(missing),
        }
    }

    /// The answer to `path` on a listener serving `served`: the metrics, the page and the
    /// snapshot, else [`Probes::answer`] as plain text.
    async fn respond(&self, path: &str, served: Served) -> Response<Full<Bytes>> {
        let inspector = self.inspector.as_ref().filter(|_| served.probes);
        match (path, inspector) {
            ("/metrics", _) if served.metrics => {
                let snapshot = match &self.inspector {
                    Some(inspector) => inspector.snapshot().await,
                    None => Default::default(),
                };
                let text = metrics::global().encode(&snapshot, unix_now());
                typed(StatusCode::OK, text, metrics::CONTENT_TYPE)
            }
            (_, _) if !served.probes => typed(
                StatusCode::NOT_FOUND,
                "not found\n".into(),
                "text/plain; charset=utf-8",
            ),
            ("/", Some(inspector)) => {
                let page = graph::page(&inspector.snapshot().await, PAGE_REFRESH_SECS);
                typed(StatusCode::OK, page, "text/html; charset=utf-8")
            }
            ("/status.json", Some(inspector)) => {
                let json = serde_json::to_string(&inspector.snapshot().await)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                typed(StatusCode::OK, json, "application/json")
            }
            _ => {
                let (status, body) = self.answer(path);
                typed(status, body, "text/plain; charset=utf-8")
            }
        }
    }

    fn answer(&self, path: &str) -> (StatusCode, String) {
        let result = match path {
            "/healthz" => self.healthz(unix_now()),
            "/readyz" => self.readyz().map_err(|m| m.join("\n")),
            _ => return (StatusCode::NOT_FOUND, "not found\n".into()),
        };
        match result {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        }
    }
}

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// `/healthz`, `/readyz`, `/` and `/status.json` (`--http-addr`).
    pub probes: bool,
    /// `/metrics` (`--metrics-addr`).
    pub metrics: bool,
}

/// Serve `served` on `addr`. A port that cannot be bound is logged and the daemon goes on
/// without it (the probes then fail, and the log says why).
pub async fn serve(
    addr: SocketAddr,
    probes: Arc<Probes>,
    served: Served,
) -> Option<JoinHandle<()>> {
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            warn!(%addr, error = %e, ?served, "cannot serve HTTP");
            return None;
        }
    };
    info!(%addr, ?served, "serving HTTP");
    Some(tokio::spawn(accept_loop(listener, probes, served)))
}

async fn accept_loop(listener: TcpListener, probes: Arc<Probes>, served: Served) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let probes = probes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let probes = probes.clone();
                async move {
                    let path = request.uri().path();
                    Ok::<_, Infallible>(probes.respond(path, served).await)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
        });
    }
}

fn typed(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(lease: bool, programmed: bool, heartbeat: u64) -> Probes {
        let lease = lease.then(|| Lease {
            node: weft_proto::names::NodeName::new("a").unwrap(),
            pod_cidrs: Default::default(),
            public_ips: Default::default(),
            backend: weft_proto::lease::BackendData::Vxlan {
                vtep_mac: None,
                vtep_mac_v6: None,
            },
            expires: None,
            machine: None,
        });
        Probes {
            lease: watch::channel(lease).1,
            programmed: watch::channel(programmed).1,
            heartbeat: Arc::new(AtomicU64::new(heartbeat)),
            serves_pods: true,
            inspector: None,
        }
    }

    #[test]
    fn ready_needs_the_lease_and_a_programmed_datapath() {
        assert_eq!(probes(true, true, 1).readyz(), Ok(()));
        assert_eq!(
            probes(false, false, 0).readyz(),
            Err(vec!["no lease held", "the datapath is not programmed yet"])
        );
        let mut lease_only = probes(true, false, 0);
        lease_only.serves_pods = false;
        assert_eq!(
            lease_only.readyz(),
            Ok(()),
            "--datapath none needs the lease only"
        );
    }

    #[test]
    fn alive_while_the_loop_passes() {
        assert_eq!(probes(true, true, 1_000).healthz(1_000 + 90), Ok(()));
        assert!(probes(true, true, 1_000)
            .healthz(1_000 + 91)
            .unwrap_err()
            .contains("no pass for 91 s"));
        assert_eq!(
            probes(true, true, 0).healthz(5_000),
            Ok(()),
            "before the first pass"
        );
        let (status, body) = probes(false, true, 1).answer("/readyz");
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no lease held\n")
        );
        assert_eq!(
            probes(true, true, 1).answer("/metrics").0,
            StatusCode::NOT_FOUND
        );
    }
}
