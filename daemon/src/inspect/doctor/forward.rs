//! The `forward-policy` check: a forward chain with policy drop in another table (Docker's
//! `iptables -P FORWARD DROP`, a host firewall) drops pod traffic through this node whatever
//! weft's own table accepts, since an nftables `accept` ends only its own base chain. weft
//! changes no table but its own, so the operator must accept the pod CIDRs there.
//!
//! nftables chains come from `nft -j list ruleset` ([`nft::forward_drop_chains`] finds them);
//! the legacy iptables from `iptables-legacy -S FORWARD`. A chain is taken to accept pod traffic
//! when its own rules accept this node's pod CIDRs both as source and as destination (prefixes
//! containing them; an unconditional `accept` counts; rules reached by a jump do not): then the
//! warning clears once the fix is applied.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::gather::{FirewallFacts, GatherError};
use super::{Finding, Verdict};
use crate::firewall::nft;

const CHECK: &str = "forward-policy";

/// Where a forward chain with policy drop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// An nftables base chain (iptables-nft's `FORWARD` is `ip filter FORWARD`).
    Nft {
        family: String,
        table: String,
        chain: String,
    },
    /// The legacy iptables `FORWARD` chain, by program (`iptables-legacy`, `ip6tables-legacy`).
    Legacy { program: String },
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chain::Nft {
                family,
                table,
                chain,
            } => write!(f, "{family} {table} {chain}"),
            Chain::Legacy { program } => write!(f, "{program} FORWARD"),
        }
    }
}

impl Chain {
    /// Whether IPv4 and IPv6 packets pass through it: `ip` and `iptables` see IPv4 only, `ip6`
    /// and `ip6tables` IPv6 only, `inet` and `bridge` both.
    pub fn families(&self) -> (bool, bool) {
        match self {
            Chain::Nft { family, .. } => (family != "ip6", family != "ip"),
            Chain::Legacy { program } => {
                let v6 = program.starts_with("ip6");
                (!v6, v6)
            }
        }
    }

    /// The CIDRs of `cidrs` whose packets pass through it.
    fn of_its_families<'c>(&self, cidrs: &'c [IpNet]) -> Vec<&'c IpNet> {
        let (v4, v6) = self.families();
        cidrs
            .iter()
            .filter(|c| if c.addr().is_ipv4() { v4 } else { v6 })
            .collect()
    }
}

/// A forward chain with policy drop, and whether its rules accept this node's pod traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropChain {
    pub chain: Chain,
    pub accepts_pods: bool,
}

/// The prefixes one accepting rule matches, as source and as destination.
type Accepted = (Vec<IpNet>, Vec<IpNet>);

/// Both families' whole address spaces: what an unconditional `accept` matches.
fn everything() -> Vec<IpNet> {
    vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())]
}

/// Whether the accepting rules of `chain` cover each of `pod_cidrs` of its families both ways:
/// never without pod CIDRs; always when none is of its families (its drop does not touch pods).
fn covers(chain: &Chain, pod_cidrs: &[IpNet], rules: &[Accepted]) -> bool {
    let by = |side: fn(&Accepted) -> &Vec<IpNet>, cidr: &IpNet| {
        rules
            .iter()
            .any(|r| side(r).iter().any(|n| n.contains(cidr)))
    };
    !pod_cidrs.is_empty()
        && chain
            .of_its_families(pod_cidrs)
            .into_iter()
            .all(|c| by(|r| &r.0, c) && by(|r| &r.1, c))
}

/// The forward chains with policy drop of an `nft -j list ruleset` listing, outside weft's table.
///
/// # Errors
/// The text is no nftables JSON document (the parser's message).
pub fn nft_drop_chains(json: &str, pod_cidrs: &[IpNet]) -> Result<Vec<DropChain>, String> {
    let (objects, _) = nft::parse_objects(json.as_bytes()).map_err(|e| e.to_string())?;
    let listing: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let rules: Vec<&Value> = listing["nftables"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o.get("rule")).collect())
        .unwrap_or_default();
    let mut chains = Vec::new();
    for name in nft::forward_drop_chains(&objects) {
        let mut parts = name.splitn(3, ' ').map(str::to_string);
        let (Some(family), Some(table), Some(chain)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let accepted: Vec<Accepted> = rules
            .iter()
            .filter(|r| r["family"] == family.as_str() && r["table"] == table.as_str())
            .filter(|r| r["chain"] == chain.as_str())
            .filter_map(|r| nft_accepted(r["expr"].as_array()?))
            .collect();
        let chain = Chain::Nft {
            family,
            table,
            chain,
        };
        chains.push(DropChain {
            accepts_pods: covers(&chain, pod_cidrs, &accepted),
            chain,
        });
    }
    Ok(chains)
}

/// What an nft rule (its `expr` statements) accepts: `None` unless it ends in `accept` and
/// matches on addresses, or on nothing at all.
fn nft_accepted(statements: &[Value]) -> Option<Accepted> {
    statements.iter().find(|s| s.get("accept").is_some())?;
    let (mut source, mut destination, mut other) = (Vec::new(), Vec::new(), false);
    for m in statements.iter().filter_map(|s| s.get("match")) {
        let op = m["op"].as_str().unwrap_or("==");
        let nets = nft_nets(&m["right"]);
        match m["left"]["payload"]["field"].as_str() {
            Some("saddr") if op == "==" || op == "in" => source.extend(nets),
            Some("daddr") if op == "==" || op == "in" => destination.extend(nets),
            _ => other = true,
        }
    }
    match (source.is_empty() && destination.is_empty(), other) {
        (true, true) => None,
        (true, false) => Some((everything(), everything())),
        (false, _) => Some((source, destination)),
    }
}

/// The prefixes of a match's right side: an address, a `prefix`, or an anonymous `set` of them.
fn nft_nets(right: &Value) -> Vec<IpNet> {
    if let Some(items) = right["set"].as_array() {
        return items.iter().flat_map(nft_nets).collect();
    }
    if let Some(text) = right.as_str() {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .into_iter()
            .collect();
    }
    let prefix = &right["prefix"];
    let addr = prefix["addr"]
        .as_str()
        .and_then(|a| a.parse::<IpAddr>().ok());
    let len = prefix["len"].as_u64().and_then(|l| u8::try_from(l).ok());
    match (addr, len) {
        (Some(addr), Some(len)) => IpNet::new(addr, len).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The legacy `FORWARD` chain from `PROGRAM -S FORWARD`'s output, when its policy is `DROP`.
pub fn legacy_drop_chain(program: &str, rules: &str, pod_cidrs: &[IpNet]) -> Option<DropChain> {
    let mut lines = rules.lines().map(str::split_whitespace);
    if !lines.any(|mut l| l.next() == Some("-P") && l.nth(1) == Some("DROP")) {
        return None;
    }
    let accepted: Vec<Accepted> = rules.lines().filter_map(legacy_accepted).collect();
    let chain = Chain::Legacy {
        program: program.to_string(),
    };
    Some(DropChain {
        accepts_pods: covers(&chain, pod_cidrs, &accepted),
        chain,
    })
}

/// What one `-A FORWARD …` line accepts: `None` unless it jumps to `ACCEPT` and matches on
/// addresses (`-s`, `-d`; negated ones do not count), or on nothing at all.
fn legacy_accepted(line: &str) -> Option<Accepted> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    if tokens.first() != Some(&"-A") || !tokens.windows(2).any(|w| w == ["-j", "ACCEPT"]) {
        return None;
    }
    let (mut source, mut destination) = (Vec::new(), Vec::new());
    for (i, pair) in tokens.windows(2).enumerate() {
        let negated = i > 0 && tokens[i - 1] == "!";
        let net = pair[1].parse::<IpNet>().ok().filter(|_| !negated);
        match (pair[0], net) {
            ("-s", Some(net)) => source.push(net),
            ("-d", Some(net)) => destination.push(net),
            _ => {}
        }
    }
    match (source.is_empty() && destination.is_empty(), tokens.len()) {
        (true, 4) => Some((everything(), everything())), // -A FORWARD -j ACCEPT
        (true, _) => None,
        (false, _) => Some((source, destination)),
    }
}

/// `forward-policy`: warning naming each forward chain with policy drop whose rules do not accept
/// this node's pod traffic; the fix adds the accepting rules for `cluster_cidrs` (or the node's
/// `pod_cidrs` when those are unknown). A listing that cannot be read is a warning saying why.
pub fn forward_policy(facts: &FirewallFacts, pod_cidrs: &[IpNet], cluster: &[IpNet]) -> Finding {
    let mut chains = Vec::new();
    let mut problems: Vec<GatherError> = Vec::new();
    match &facts.nft {
        Ok(json) => match nft_drop_chains(json, pod_cidrs) {
            Ok(found) => chains.extend(found),
            Err(reason) => problems.push(GatherError::Failed {
                what: "read nft -j list ruleset".into(),
                reason,
            }),
        },
        Err(e) => problems.push(e.clone()),
    }
    for (program, output) in &facts.legacy {
        match output {
            Ok(rules) => chains.extend(legacy_drop_chain(program, rules, pod_cidrs)),
            Err(e) => problems.push(e.clone()),
        }
    }
    let dropping: Vec<&DropChain> = chains.iter().filter(|c| !c.accepts_pods).collect();
    if let Some(first) = dropping.first() {
        let names: Vec<String> = dropping.iter().map(|c| c.chain.to_string()).collect();
        let detail = format!(
            "{} drop{} forwarded packets by policy: pod traffic through this node dies there \
             (weft changes no table but its own)",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" }
        );
        let cidrs = if cluster.is_empty() {
            pod_cidrs
        } else {
            cluster
        };
        return Finding::new(
            CHECK,
            Verdict::Warning,
            detail,
            Some(fix(&first.chain, cidrs)),
        );
    }
    if let Some(problem) = problems.first() {
        let fix = problem.needs_root().then_some("run weftd doctor as root");
        let detail = format!("cannot read the host firewall: {problem}");
        return Finding::new(CHECK, Verdict::Warning, detail, fix);
    }
    let detail = match chains.is_empty() {
        true => "no forward chain drops by policy".to_string(),
        false => format!(
            "{} drop by policy but accept this node's pod CIDRs",
            names(&chains)
        ),
    };
    Finding::ok(CHECK, detail)
}

fn names(chains: &[DropChain]) -> String {
    let names: Vec<String> = chains.iter().map(|c| c.chain.to_string()).collect();
    names.join(", ")
}

/// The commands accepting `cidrs` both ways in `chain` (for the first CIDR of the chain's
/// families; the rest named), or a placeholder when none is known.
fn fix(chain: &Chain, cidrs: &[IpNet]) -> String {
    let fitting: Vec<String> = chain
        .of_its_families(cidrs)
        .into_iter()
        .map(ToString::to_string)
        .collect();
    let cidr = fitting
        .first()
        .cloned()
        .unwrap_or("<cluster CIDR>".to_string());
    let commands = match chain {
        Chain::Nft {
            family,
            table,
            chain,
        } => {
            let ip = if cidr.contains(':') { "ip6" } else { "ip" };
            let rule = |dir: &str| {
                format!("nft insert rule {family} {table} {chain} {ip} {dir} {cidr} accept")
            };
            format!("{}; {}", rule("saddr"), rule("daddr"))
        }
        Chain::Legacy { program } => {
            let rule = |dir: &str| format!("{program} -I FORWARD {dir} {cidr} -j ACCEPT");
            format!("{}; {}", rule("-s"), rule("-d"))
        }
    };
    match fitting.get(1..).filter(|rest| !rest.is_empty()) {
        Some(rest) => format!(
            "accept the pod CIDRs there: {commands} (and the same for {})",
            rest.join(", ")
        ),
        None => format!("accept the pod CIDRs there: {commands}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    const DOCKER: &str = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "filter", "handle": 1}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "weft", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}}, {"accept": null}]}}
        RULES
    ]}"#;

    fn ruleset(rules: &str) -> String {
        DOCKER.replace("RULES", rules)
    }

    #[test]
    fn a_drop_policy_elsewhere_is_a_warning_naming_the_chain_and_the_rules_to_add() {
        let facts = FirewallFacts {
            nft: Ok(ruleset("")),
            legacy: vec![],
        };
        let finding = forward_policy(
            &facts,
            &cidrs(&["10.244.1.0/24"]),
            &cidrs(&["10.244.0.0/16"]),
        );
        assert_eq!(finding.verdict, Verdict::Warning);
        assert!(
            finding
                .detail
                .starts_with("ip filter FORWARD drops forwarded packets"),
            "{finding:?}"
        );
        let fix = finding.fix.unwrap();
        assert!(
            fix.contains("nft insert rule ip filter FORWARD ip saddr 10.244.0.0/16 accept"),
            "{fix}"
        );
        assert!(fix.contains("ip daddr 10.244.0.0/16 accept"), "{fix}");
    }

    #[test]
    fn a_drop_policy_that_accepts_the_pod_cidrs_both_ways_is_ok() {
        let saddr = r#",{"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}"#;
        let daddr = saddr
            .replace("saddr", "daddr")
            .replace("\"handle\": 5", "\"handle\": 6");
        let pods = cidrs(&["10.244.1.0/24"]);
        let half = nft_drop_chains(&ruleset(saddr), &pods).unwrap();
        assert!(!half[0].accepts_pods, "source only is not enough");
        let both = format!("{saddr}{daddr}");
        let facts = FirewallFacts {
            nft: Ok(ruleset(&both)),
            legacy: vec![],
        };
        let dual_stack = cidrs(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let finding = forward_policy(&facts, &dual_stack, &[]);
        assert_eq!(
            finding.verdict,
            Verdict::Ok,
            "IPv6 pods never pass an ip-family chain: {finding:?}"
        );
        assert!(finding.detail.contains("ip filter FORWARD"), "{finding:?}");
        let no_drop = FirewallFacts {
            nft: Ok(r#"{"nftables": []}"#.into()),
            legacy: vec![],
        };
        assert_eq!(forward_policy(&no_drop, &pods, &[]).verdict, Verdict::Ok);
    }

    #[test]
    fn legacy_iptables_drop_policies_are_read_from_their_rules() {
        let pods = cidrs(&["10.244.1.0/24"]);
        let rules = "-P FORWARD DROP\n-A FORWARD -o docker0 -j ACCEPT\n";
        let chain = legacy_drop_chain("iptables-legacy", rules, &pods).unwrap();
        assert!(!chain.accepts_pods);
        let fixed = format!(
            "{rules}-A FORWARD -s 10.244.0.0/16 -j ACCEPT\n-A FORWARD -d 10.244.0.0/16 -j ACCEPT\n"
        );
        assert!(
            legacy_drop_chain("iptables-legacy", &fixed, &pods)
                .unwrap()
                .accepts_pods
        );
        let negated = format!("{rules}-A FORWARD ! -s 10.244.0.0/16 -j ACCEPT\n-A FORWARD -d 10.244.0.0/16 -j ACCEPT\n");
        assert!(
            !legacy_drop_chain("iptables-legacy", &negated, &pods)
                .unwrap()
                .accepts_pods
        );
        assert_eq!(
            legacy_drop_chain("iptables-legacy", "-P FORWARD ACCEPT\n", &pods),
            None
        );
        let facts = FirewallFacts {
            nft: Ok(r#"{"nftables": []}"#.into()),
            legacy: vec![("ip6tables-legacy".into(), Ok("-P FORWARD DROP\n".into()))],
        };
        let finding = forward_policy(&facts, &cidrs(&["fd00:10:244:1::/64"]), &[]);
        assert_eq!(finding.verdict, Verdict::Warning);
        assert!(
            finding.detail.starts_with("ip6tables-legacy FORWARD drops"),
            "{finding:?}"
        );
        assert!(finding
            .fix
            .unwrap()
            .contains("ip6tables-legacy -I FORWARD -s fd00:10:244:1::/64 -j ACCEPT"));
    }

    #[test]
    fn a_firewall_that_cannot_be_read_is_a_warning_saying_why() {
        let facts = FirewallFacts {
            nft: Err(GatherError::NeedsRoot {
                what: "nft -j list ruleset".into(),
                reason: "Operation not permitted".into(),
            }),
            legacy: vec![],
        };
        let finding = forward_policy(&facts, &[], &[]);
        assert_eq!(finding.verdict, Verdict::Warning);
        assert!(finding.detail.contains("needs root"), "{finding:?}");
        assert_eq!(finding.fix.as_deref(), Some("run weftd doctor as root"));
    }
}
