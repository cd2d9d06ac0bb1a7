//! Keeping weft's nftables table in step with the lease and the pods not to masquerade, through
//! the same observe → diff → apply path as the tunnels (`crate::firewall` plans it, its `nft`
//! module reads and writes it); and warning about other tables that drop forwarded traffic.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{info, warn};
use weft_proto::lease::Lease;

use crate::firewall::{self, nft};

/// The firewall side of the reconcile loop.
pub struct FirewallKeeper {
    /// The addresses of the pods not to masquerade (`"ipMasq": false`), from the CNI service.
    unmasqueraded: watch::Receiver<BTreeSet<IpAddr>>,
    /// weft's table as the kernel holds it, as far as weft knows; `None`: read it again.
    observed: Option<firewall::Observed>,
    /// Forward chains of other tables already warned about.
    warned_chains: BTreeSet<String>,
}

impl FirewallKeeper {
    /// A keeper that reads the kernel at the first pass.
    pub fn new(unmasqueraded: watch::Receiver<BTreeSet<IpAddr>>) -> FirewallKeeper {
        FirewallKeeper {
            unmasqueraded,
            observed: None,
            warned_chains: BTreeSet::new(),
        }
    }

    /// Read the kernel again at the next pass (the periodic resync, repairing drift).
    pub fn resync(&mut self) {
        self.observed = None;
    }

    /// Resolves when the set of pods not to masquerade changed (never, once its sender is gone).
    pub async fn changed(&mut self) {
        if self.unmasqueraded.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Bring weft's table to the desired one: read it from the kernel when unknown (at start, at
    /// every resync, after a failure), diff, and apply the difference if there is one. `false`
    /// when that failed (retry soon).
    pub async fn converge(
        &mut self,
        own: &Lease,
        cluster_cidrs: &[IpNet],
        tunnel: Option<firewall::TunnelGuard>,
    ) -> bool {
        let unmasqueraded = self.unmasqueraded.borrow_and_update().clone();
        let desired = firewall::desired(&own.pod_cidrs, cluster_cidrs, &unmasqueraded, tunnel);
        let observed = match self.observed.take() {
            Some(observed) => observed,
            None => {
                self.warn_about_forward_drop().await;
                match nft::blocking(nft::observe).await {
                    Ok(observed) => observed,
                    Err(e) => {
                        warn!(error = %e, "cannot read the nftables table; will retry");
                        return false;
                    }
                }
            }
        };
        let Some(op) = firewall::diff(&desired, &observed) else {
            self.observed = Some(observed);
            return true;
        };
        info!(op = %op, "firewall");
        let to_apply = op.clone();
        match nft::blocking(move || nft::apply(&to_apply)).await {
            Ok(()) => {
                self.observed = Some(firewall::Observed::Table(desired.summary()));
                true
            }
            Err(e) => {
                warn!(op = %op, error = %e, "cannot apply the firewall; will retry");
                false
            }
        }
    }

    /// nftables has no cross-table accept: a forward chain elsewhere with policy drop drops pod
    /// traffic whatever weft's table says, and weft does not edit other tables. Say so, naming
    /// each such chain once.
    async fn warn_about_forward_drop(&mut self) {
        if let Ok(listing) = nft::blocking(nft::list_chains).await {
            let chains: BTreeSet<String> = nft::forward_drop_chains(&listing).into_iter().collect();
            for chain in chains.difference(&self.warned_chains) {
                warn!(chain = %chain, "this chain drops forwarded packets by policy: pod traffic through this node is dropped there unless it accepts the cluster CIDRs (weft changes no table but its own)");
            }
            self.warned_chains = chains;
        }
    }
}
