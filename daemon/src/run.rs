//! `weftd run`: the agent (lease and peers) and the node's datapath, wired together.

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::{agent, node, store};

/// Run the daemon until `shutdown` turns true: acquire the lease from the configured store,
/// start the node's services for the configured backend, keep the lease until shutdown.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = store::open(&config.store, config.lease_ttl);
    let Some(agent) = agent::start(&config, store, shutdown).await? else {
        return Ok(());
    };
    let tasks = node::start(&config, &agent.lease, agent.view.clone()).await?;
    let stopped = agent.keeper.await.context("the lease keeper panicked");
    for task in tasks {
        task.abort();
    }
    stopped?
}
