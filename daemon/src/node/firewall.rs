//! Keeping weft's nftables table in step with the lease, and warning about other tables that
//! drop forwarded traffic.

use std::collections::BTreeSet;

use ipnet::IpNet;
use tracing::{info, warn};
use weft_proto::lease::Lease;

use crate::datapath::masq;

/// The firewall side of the reconcile loop.
#[derive(Default)]
pub struct FirewallKeeper {
    /// The ruleset last applied, and whether it still needs applying (the resync re-applies it,
    /// repairing drift, without logging it again).
    applied: Option<serde_json::Value>,
    due: bool,
    /// Forward chains of other tables already warned about.
    warned_chains: BTreeSet<String>,
}

impl FirewallKeeper {
    /// A keeper that applies the ruleset at the first pass.
    pub fn new() -> FirewallKeeper {
        FirewallKeeper {
            due: true,
            ..Default::default()
        }
    }

    /// Check the kernel again at the next pass (the periodic resync).
    pub fn resync(&mut self) {
        self.due = true;
    }

    /// Bring the table in line with `own`'s pod CIDRs; `false` when it failed (retry soon).
    pub async fn converge(&mut self, own: &Lease, cluster_cidrs: &[IpNet]) -> bool {
        let batch = masq::ruleset(&own.pod_cidrs, cluster_cidrs);
        let changed = self.applied.as_ref() != Some(&batch);
        if !changed && !self.due {
            return true;
        }
        let to_apply = batch.clone();
        let applied = tokio::task::spawn_blocking(move || masq::apply(&to_apply))
            .await
            .unwrap_or_else(|e| Err(masq::MasqError::Spawn(std::io::Error::other(e))));
        match applied {
            Ok(()) => {
                if changed {
                    info!(table = masq::TABLE, "masquerade rules applied");
                }
                self.applied = Some(batch);
                self.due = false;
                self.warn_about_forward_drop().await;
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot apply the masquerade rules; will retry");
                false
            }
        }
    }

    /// nftables has no cross-table accept: a forward chain elsewhere with policy drop drops pod
    /// traffic whatever weft's table says, and weft does not edit other tables. Say so, naming
    /// each such chain once.
    async fn warn_about_forward_drop(&mut self) {
        let listing = tokio::task::spawn_blocking(masq::list_chains).await;
        if let Ok(Ok(listing)) = listing {
            let chains: BTreeSet<String> =
                masq::forward_drop_chains(&listing).into_iter().collect();
            for chain in chains.difference(&self.warned_chains) {
                warn!(chain = %chain, "this chain drops forwarded packets by policy: pod traffic through this node is dropped there unless it accepts the cluster CIDRs (weft changes no table but its own)");
            }
            self.warned_chains = chains;
        }
    }
}
