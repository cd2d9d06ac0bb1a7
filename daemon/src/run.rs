//! `weftd run`: the agent (lease and peers) and the node's datapath, wired together.

use anyhow::Context;
use tokio::sync::watch;

use std::sync::Arc;

use crate::config::Config;
use crate::datapath::netns;
use crate::health::{self, Probes, Served};
use crate::inspect::control;
use crate::inspect::state::Inspector;
use crate::{agent, node, store};

/// Run the daemon until `shutdown` turns true: acquire the lease from the configured store,
/// start the node's services for the configured backend, keep the lease until shutdown.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = store::open(&config.store, config.lease_ttl);
    let inspector = Inspector::new(&config);
    // Inspection is for people: without its socket, the node still works.
    let control = match control::serve(&config.run_dir, inspector.clone()).await {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: weftd status, peers, graph and doctor will not reach this daemon");
            tokio::spawn(std::future::pending())
        }
    };
    // A netlink socket runs one dump at a time (a second gets EBUSY): the agent (underlay routes),
    // the reconcile loop and the CNI service each have their own connection.
    let connect = || netns::connect_here().context("open a netlink connection");
    let agent = agent::start(&config, store, connect()?, shutdown, inspector.clone()).await;
    let Some(agent) = agent.inspect_err(|_| control.abort())? else {
        control.abort();
        return Ok(());
    };
    let view = agent.view.clone();
    let started = node::start(&config, &agent.lease, connect()?, view, &inspector).await?;
    let probes = Probes {
        lease: agent.view.lease.clone(),
        programmed: agent.view.programmed.subscribe(),
        heartbeat: started.heartbeat.clone(),
        serves_pods: started.serves_pods,
        inspector: Some(inspector.clone()),
    };
    let http = serve_http(&config, Arc::new(probes)).await;
    let stopped = agent.keeper.await.context("the lease keeper panicked");
    for task in started.tasks.into_iter().chain(http).chain([control]) {
        task.abort();
    }
    stopped?
}

/// `--http-addr` (probes, status page) and `--metrics-addr` (`/metrics`): one listener when they
/// are the same address.
async fn serve_http(config: &Config, probes: Arc<Probes>) -> Vec<tokio::task::JoinHandle<()>> {
    let both = Served {
        probes: true,
        metrics: config.metrics_addr == config.http_addr,
    };
    let mut tasks: Vec<_> = health::serve(config.http_addr, probes.clone(), both)
        .await
        .into_iter()
        .collect();
    if !both.metrics {
        let metrics = Served {
            probes: false,
            metrics: true,
        };
        tasks.extend(health::serve(config.metrics_addr, probes, metrics).await);
    }
    tasks
}
