//! Egress masquerade and forwarding in nftables, in the table `inet weft` that weft owns alone.
//!
//! ```text
//! table inet weft {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <own pod CIDR> ip daddr != <cluster CIDR> masquerade      # pods → world: node address
//!     ip6 saddr <own pod CIDR> ip6 daddr != <cluster CIDR> masquerade
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ip saddr <cluster CIDR> accept ; ip daddr <cluster CIDR> accept    # and the same for IPv6
//!   }
//! }
//! ```
//! Pod-to-pod traffic, on this node or across nodes, keeps its source address. The ruleset is built
//! here as nft JSON (pure, unit-tested) and applied in one transaction through `nft -j -f -`: the
//! design note for this module is that libnftables' JSON is the stable, atomic interface to the
//! kernel's nftables and the `nft` binary is its reference client (shipped with the daemon's image).
//! The batch is `add table; delete table; add table {…}`, which replaces weft's table atomically on
//! Debian 12's nft 1.0.6 (no `destroy`). No other table is read or changed.
//!
//! Limit, from nftables' semantics: an `accept` ends only its own base chain. A drop policy in
//! another table's forward chain (for example `iptables -P FORWARD DROP`, which Docker sets) still
//! drops pod traffic, and no rule in weft's own table can override it; such a host needs the pod
//! CIDRs allowed in its own firewall.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::{json, Value};
use weft_proto::lease::PodCidrs;

pub const TABLE: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("run nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

fn table() -> Value {
    json!({"family": "inet", "name": TABLE})
}

fn protocol(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

fn prefix(net: &IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

fn matches(op: &str, field: &str, net: &IpNet) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": protocol(net), "field": field}}, "right": prefix(net)}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

/// The whole of weft's table for a node holding `own` inside `cluster`, as one nft JSON batch.
pub fn ruleset(own: &PodCidrs, cluster: &[IpNet]) -> Value {
    let mut commands = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
        chain("postrouting", "nat", "postrouting", 100),
        chain("forward", "filter", "forward", 0),
    ];
    for pods in own.iter() {
        for net in cluster
            .iter()
            .filter(|c| c.addr().is_ipv4() == pods.addr().is_ipv4())
        {
            commands.push(rule(
                "postrouting",
                vec![
                    matches("==", "saddr", &pods),
                    matches("!=", "daddr", net),
                    json!({"masquerade": null}),
                ],
            ));
        }
    }
    for net in cluster {
        commands.push(rule(
            "forward",
            vec![matches("==", "saddr", net), json!({"accept": null})],
        ));
        commands.push(rule(
            "forward",
            vec![matches("==", "daddr", net), json!({"accept": null})],
        ));
    }
    json!({"nftables": commands})
}

/// Removing weft's table (and nothing else): add it (a no-op if present), then delete it.
pub fn removal() -> Value {
    json!({"nftables": [{"add": {"table": table()}}, {"delete": {"table": table()}}]})
}

/// The base chains of other tables that drop forwarded packets by policy (`family table chain`),
/// read from `nft -j list chains` output. Pod traffic dies there whatever weft's table says.
pub fn forward_drop_chains(listing: &Value) -> Vec<String> {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop" && c["table"] != TABLE)
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or("?").to_string();
            format!("{} {} {}", text("family"), text("table"), text("name"))
        })
        .collect()
}

/// List the chains of every table (read only).
pub fn list_chains() -> Result<Value, MasqError> {
    let output = Command::new("nft")
        .args(["-j", "list", "chains"])
        .stdin(Stdio::null())
        .output()
        .map_err(MasqError::Spawn)?;
    if !output.status.success() {
        return Err(MasqError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| MasqError::Refused(format!("unreadable listing: {e}")))
}

/// Apply a batch in one nft transaction.
pub fn apply(batch: &Value) -> Result<(), MasqError> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqError::Spawn)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(batch.to_string().as_bytes())
        .map_err(MasqError::Spawn)?;
    let output = child.wait_with_output().map_err(MasqError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(MasqError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_stack_ruleset() {
        let own = PodCidrs {
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: Some("fd00:10:244:1::/64".parse().unwrap()),
        };
        let cluster: Vec<IpNet> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ];
        let batch = ruleset(&own, &cluster);
        let commands = batch["nftables"].as_array().unwrap();
        assert_eq!(
            commands[0],
            json!({"add": {"table": {"family": "inet", "name": "weft"}}})
        );
        assert_eq!(
            commands[1],
            json!({"delete": {"table": {"family": "inet", "name": "weft"}}})
        );
        let rules: Vec<&Value> = commands
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .collect();
        assert_eq!(
            rules.len(),
            2 + 4,
            "one masquerade per family, two forward accepts per cluster CIDR"
        );
        let masq_v6 = &rules[1]["expr"];
        assert_eq!(masq_v6[0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(
            masq_v6[0]["match"]["right"]["prefix"],
            json!({"addr": "fd00:10:244:1::", "len": 64})
        );
        assert_eq!(masq_v6[1]["match"]["op"], "!=");
        assert_eq!(
            masq_v6[1]["match"]["right"]["prefix"],
            json!({"addr": "fd00:10:244::", "len": 48})
        );
        assert!(
            commands.iter().all(|c| c.to_string().contains("\"weft\"")),
            "only weft's table is named"
        );
    }

    #[test]
    fn forward_drop_policies_elsewhere_are_found() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "weft", "name": "forward", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "fw", "name": "input", "hook": "input", "prio": 0, "policy": "drop"}},
        ]});
        assert_eq!(forward_drop_chains(&listing), ["ip filter FORWARD"]);
    }

    #[test]
    fn single_stack_has_no_other_family() {
        let own = PodCidrs {
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: None,
        };
        let cluster: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        let text = ruleset(&own, &cluster).to_string();
        assert!(!text.contains("ip6"));
        assert_eq!(removal()["nftables"].as_array().unwrap().len(), 2);
    }
}
