//! The backend that programs nothing: `--datapath none` keeps the lease and follows peers (store
//! debugging, the lease tests), still judging every peer so refusals are logged.

use ipnet::IpNet;
use rtnetlink::Handle;
use weft_proto::lease::{Backend as BackendKind, Lease};
use weft_proto::names::IfName;

use super::{Backend, Driver, DriverError};
use crate::plan::admission::{Admitted, Identity, IdentityRule};
use crate::plan::{BackendPlan, Family, ModelError, PlanConfig, PlanError};

/// No datapath. Peers are admitted as for `kind` (the backend the node publishes), so the log
/// says which would be refused.
#[derive(Debug, Clone, Copy)]
pub struct NoDatapath {
    pub kind: BackendKind,
}

/// Its only operation never exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoOp {}

impl std::fmt::Display for NoOp {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl IdentityRule for NoDatapath {
    fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Every peer of the right backend claims only its name: nothing is programmed to conflict.
    fn claim(&self, family: Family, peer: &Lease, _own: &Lease) -> Result<Identity, String> {
        Ok(Identity(format!("node {} ({family})", peer.node)))
    }
}

impl BackendPlan for NoDatapath {
    type State = ();
    type Op = NoOp;

    fn desired(&self, _: &Lease, _: &[Admitted<'_>], _: &PlanConfig) -> Result<(), PlanError> {
        Ok(())
    }

    fn diff(&self, _: &(), _: &()) -> Vec<NoOp> {
        Vec::new()
    }

    fn pod_mtu(&self, _: &Lease, config: &PlanConfig) -> u32 {
        config.overlay_mtu(0)
    }

    fn op_device<'o>(&self, op: &'o NoOp) -> Option<&'o IfName> {
        match *op {}
    }

    fn creates_device(&self, op: &NoOp) -> bool {
        match *op {}
    }

    fn model_apply(&self, _: &mut (), op: &NoOp) -> Result<(), ModelError> {
        match *op {}
    }
}

/// Observes nothing, applies nothing.
pub struct NoDriver;

impl Driver<NoDatapath> for NoDriver {
    async fn observe(&mut self) -> Result<(), DriverError> {
        Ok(())
    }

    async fn apply(&mut self, op: &NoOp) -> Result<(), DriverError> {
        match *op {}
    }

    fn requests(&self) -> usize {
        0
    }
}

impl Backend for NoDatapath {
    type Driver = NoDriver;

    fn driver(&self, _: Handle, _: &[IpNet]) -> NoDriver {
        NoDriver
    }

    fn device_names(&self) -> Vec<IfName> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::lease::{BackendData, Lease, MacAddr, PodCidrs, PublicIps};
    use weft_proto::names::NodeName;

    use super::*;
    use crate::plan::model::{run_model, underlay_v4, Change, ModelSubject};

    impl ModelSubject for NoDatapath {
        fn peer(&self, k: u32, ip: u32, _serial: u32) -> Lease {
            let [_, hi, lo, _] = (k << 8).to_be_bytes();
            Lease {
                node: NodeName::new(format!("node-{k}")).unwrap(),
                pod_cidrs: PodCidrs {
                    v4: Some(format!("10.{hi}.{lo}.0/24").parse().unwrap()),
                    v6: Some(format!("fd00:10:0:{k:x}::/64").parse().unwrap()),
                },
                public_ips: PublicIps {
                    v4: Some(underlay_v4(ip)),
                    v6: None,
                },
                backend: BackendData::Vxlan {
                    vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 4])),
                    vtep_mac_v6: Some(MacAddr([2, 0, 0, 0, 0, 6])),
                },
                expires: None,
                machine: None,
            }
        }

        fn new_identity(&self, _lease: &mut Lease, _serial: u32) {}

        /// Nothing is ever programmed.
        fn expected_ops(&self, _change: Change, _families: usize) -> usize {
            0
        }

        fn expected_start_ops(&self) -> usize {
            0
        }
    }

    /// The same admission as any backend (impostors and hostile records refused, honest peers
    /// held), and never an operation.
    #[test]
    fn model_random_peer_changes_program_nothing() {
        run_model(
            &NoDatapath {
                kind: BackendKind::Vxlan,
            },
            300,
        );
    }
}
