//! `weft-lab bench-program`: programming N simulated VXLAN peers on an empty node namespace (dual
//! stack), counted in netlink requests, then one further peer change.

use std::path::Path;

use anyhow::Context;

use weft_lab::netns::{unique_prefix, NetnsGuard};
use weft_proto::lease::{BackendData, Lease, MacAddr, PodCidrs, PublicIps};

use super::weftd_internals::{program_peers, ProgramCost};

/// One table row per peer count.
pub fn programming_cost(counts: &[usize]) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut table = "Programming N peers from an empty node, dual stack (plan + diff + netlink); \
         then one further peer (change: the incremental planner and netlink, as weftd does it; \
         plan ms: its plan + diff alone; full ms: the full plan + diff, for comparison)\n"
        .to_string();
    table += &format!(
        "{:>6} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}\n",
        "peers", "ms", "requests", "change: ops", "change: req", "change ms", "plan ms", "full ms"
    );
    for &n in counts {
        let netns = NetnsGuard::create(&format!("{}-prog{n}", unique_prefix()))?;
        netns.exec(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        netns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
        netns.exec(&["ip", "link", "set", "eth0", "up"])?;
        let own = simulated_lease(0);
        let peers: Vec<Lease> = (1..=n + 1).map(simulated_lease).collect();
        let path = netns.path();
        let cost = rt
            .block_on(program_peers(Path::new(&path), &own, &peers, n))
            .map_err(anyhow::Error::msg)?;
        table += &row(n, &cost);
    }
    Ok(table)
}

fn row(n: usize, cost: &ProgramCost) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{n:>6} {:>10.1} {:>10} {:>12} {:>12} {:>10.2} {:>10.3} {:>10.2}\n",
        ms(cost.elapsed),
        cost.requests,
        cost.change_ops,
        cost.change_requests,
        ms(cost.change_elapsed),
        ms(cost.change_plan),
        ms(cost.full_plan)
    )
}

/// A plausible dual-stack VXLAN peer number `i` (0 is the node itself).
pub fn simulated_lease(i: usize) -> Lease {
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    let name = format!("sim-{i}");
    Lease {
        node: weft_proto::names::NodeName::new(name.clone()).unwrap(),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.{hi}.{lo}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:0:0:{i:x}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(std::net::Ipv4Addr::new(100, 64 + hi, lo, 1)),
            v6: None,
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(MacAddr::stable_local(&format!("{name}/v4"))),
            vtep_mac_v6: Some(MacAddr::stable_local(&format!("{name}/v6"))),
        },
        expires: None,
        machine: None,
    }
}
