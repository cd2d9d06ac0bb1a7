//! Inspection in the lab: `weftd status`, `peers` and `graph` read the running daemon; peer health
//! follows a tunnel that breaks and heals; the status page is checked in a real headless browser
//! (Debian's chromium) and the metrics in a real parser of the format (Debian's
//! python3-prometheus-client); JSON logs parse. Both backends.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lab_inspect`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_lab::lab::{Lab, LabBackend, LabConfig};
use weft_lab::procs::{bin_path, wait_for};

fn lab(backend: LabBackend, weftd_args: &[&str]) -> Lab {
    Lab::up(LabConfig {
        nodes: 3,
        pods_per_node: 1,
        backend,
        weftd_args: weftd_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `weftd ARGS --run-dir <node's>` inside node `index`'s namespace.
fn weftd(lab: &Lab, index: usize, args: &[&str]) -> Output {
    let node = &lab.nodes[index];
    let mut command = node.netns.command(bin_path("weftd").to_str().unwrap());
    command.args(args).arg("--run-dir").arg(node.run_dir());
    command.output().expect("run weftd")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "weftd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Node `index`'s peers, by name → health, from `weftd peers -o json`.
fn health(lab: &Lab, index: usize) -> Vec<(String, String)> {
    let snapshot: Value =
        serde_json::from_str(&stdout(&weftd(lab, index, &["peers", "-o", "json"])))
            .expect("peers -o json is JSON");
    snapshot["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["node"].as_str().unwrap().to_string();
            (name, p["health"]["state"].as_str().unwrap().to_string())
        })
        .collect()
}

fn wait_health(lab: &Lab, index: usize, want: &[(&str, &str)]) -> Vec<(String, String)> {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    let seen = wait_for(Duration::from_secs(25), || {
        let now = health(lab, index);
        (now == want).then_some(now)
    });
    seen.unwrap_or_else(|| health(lab, index))
}

/// Drop the tunnel's UDP port arriving at node `index` (a table of the test's own).
fn block_tunnel(lab: &Lab, index: usize, port: u16) {
    let netns = &lab.nodes[index].netns;
    let hook = "{ type filter hook input priority -10; }";
    let port = port.to_string();
    for args in [
        vec!["nft", "add", "table", "inet", "weft_test_block"],
        vec![
            "nft",
            "add",
            "chain",
            "inet",
            "weft_test_block",
            "input",
            hook,
        ],
        vec![
            "nft",
            "add",
            "rule",
            "inet",
            "weft_test_block",
            "input",
            "udp",
            "dport",
            &port,
            "drop",
        ],
    ] {
        netns.exec(&args).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn unblock_tunnel(lab: &Lab, index: usize) {
    let node = &lab.nodes[index];
    node.netns
        .exec(&["nft", "delete table inet weft_test_block"])
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The status page of node `index` as chromium renders it (the DOM after layout), and a
/// screenshot written to `screenshot`.
fn render_page(lab: &Lab, index: usize, screenshot: &std::path::Path) -> String {
    let chromium = |extra: &[String]| -> Output {
        let mut command: Command = lab.nodes[index].netns.command("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args(extra)
            .arg("http://127.0.0.1:9475/");
        command
            .output()
            .expect("run chromium (Debian's chromium package)")
    };
    let shot = chromium(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,1000".into(),
    ]);
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let dom = chromium(&["--dump-dom".into()]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// The `data-health` of the SVG group of `peer` in a rendered DOM.
fn page_health(dom: &str, peer: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"peer-{peer}\""))?;
    let rest = &dom[at..];
    let key = "data-health=\"";
    let start = rest.find(key)? + key.len();
    Some(rest[start..start + rest[start..].find('"')?].to_string())
}

/// The metrics of node `index` parsed by the OpenMetrics parser of `prometheus_client`: the
/// family names, or the parser's error.
fn parsed_metric_families(lab: &Lab, index: usize) -> Vec<String> {
    let node = &lab.nodes[index];
    let text = node
        .netns
        .exec(&["curl", "-sf", "http://127.0.0.1:9476/metrics"])
        .unwrap_or_else(|e| panic!("{e}"));
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfor family in parse(sys.stdin.read()):\n    print(family.name, len(family.samples))\n";
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run Debian's python3 (python3-prometheus-client)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.ends_with(" 0"))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn check_status_peers_graph(lab: &Lab, backend: &str) {
    let status = stdout(&weftd(lab, 0, &["status"]));
    for line in [
        "Node:        node-1",
        "Programmed:  yes",
        "Peers:       2 (2 up",
    ] {
        assert!(status.contains(line), "{line:?} missing:\n{status}");
    }
    assert!(
        status.contains(&format!("Backend:     {backend}")),
        "{status}"
    );
    let peers = stdout(&weftd(lab, 0, &["peers"]));
    assert!(peers.starts_with("NODE"), "{peers}");
    assert!(
        peers.contains("node-2") && peers.contains("node-3"),
        "{peers}"
    );
    let dot = stdout(&weftd(lab, 0, &["graph"]));
    assert!(
        dot.starts_with("graph weft {") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    assert_eq!(dot.matches(" -- ").count(), 2, "one edge per peer:\n{dot}");
}

#[test]
fn vxlan_status_peers_graph_page_and_metrics_follow_a_broken_tunnel() {
    let lab = lab(LabBackend::Vxlan, &["--log-format", "json"]);
    let all_up = [("node-2", "up"), ("node-3", "up")];
    assert_eq!(
        wait_health(&lab, 0, &all_up),
        all_up.map(|(n, s)| (n.into(), s.into()))
    );
    check_status_peers_graph(&lab, "vxlan");

    let families = parsed_metric_families(&lab, 0);
    for family in [
        "weft_reconcile_runs",
        "weft_datapath_operations",
        "weft_cni_requests",
        "weft_cni_request_duration_seconds",
        "weft_peers",
        "weft_peer_reachable",
        "weft_peer_rtt_seconds",
        "weft_ipam_addresses_in_use",
        "weft_lease_expiry_timestamp_seconds",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "{family} missing: {families:?}"
        );
    }

    // node-3 stops taking VXLAN: node-1 sees it down, node-2 still up; the page says so.
    block_tunnel(&lab, 2, 8472);
    let broken = [("node-2", "up"), ("node-3", "down")];
    assert_eq!(
        wait_health(&lab, 0, &broken),
        broken.map(|(n, s)| (n.into(), s.into()))
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-vxlan.png");
    let dom = render_page(&lab, 0, &shot);
    assert_eq!(page_health(&dom, "node-2").as_deref(), Some("up"), "{dom}");
    assert_eq!(
        page_health(&dom, "node-3").as_deref(),
        Some("down"),
        "{dom}"
    );
    assert!(std::fs::metadata(&shot)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    eprintln!("screenshot: {}", shot.display());
    let status = stdout(&weftd(&lab, 0, &["status"]));
    assert!(status.contains("(1 up, 1 down"), "{status}");

    unblock_tunnel(&lab, 2);
    assert_eq!(
        wait_health(&lab, 0, &all_up),
        all_up.map(|(n, s)| (n.into(), s.into()))
    );

    // Every log line is one JSON object; the unreachable peer was one line naming it.
    let log = lab.nodes[0].log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["peer"] == "node-3" && l["message"] == "peer unreachable through the tunnel"));
}

#[test]
fn wireguard_status_shows_the_implementation_handshakes_and_a_broken_peer() {
    let lab = lab(LabBackend::WireGuard, &[]);
    let all_up = [("node-2", "up"), ("node-3", "up")];
    assert_eq!(
        wait_health(&lab, 0, &all_up),
        all_up.map(|(n, s)| (n.into(), s.into()))
    );
    check_status_peers_graph(&lab, "wireguard (userspace)");
    let peers = stdout(&weftd(&lab, 0, &["peers"]));
    assert!(
        peers.contains("HANDSHAKE") && peers.contains(" ago"),
        "{peers}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&weftd(&lab, 0, &["status", "-o", "json"]))).unwrap();
    assert_eq!(json["backend_impl"], "userspace");
    assert!(
        json["peers"][0]["wireguard"]["latest_handshake"]
            .as_u64()
            .is_some(),
        "{json}"
    );
    let families = parsed_metric_families(&lab, 0);
    assert!(
        families
            .iter()
            .any(|f| f == "weft_wireguard_peer_handshake_age_seconds"),
        "{families:?}"
    );

    block_tunnel(&lab, 2, 51820);
    let broken = [("node-2", "up"), ("node-3", "down")];
    assert_eq!(
        wait_health(&lab, 0, &broken),
        broken.map(|(n, s)| (n.into(), s.into()))
    );
}

#[test]
fn without_a_daemon_the_commands_say_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["status", "peers", "graph"] {
        let output = Command::new(bin_path("weftd"))
            .args([command, "--run-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no weftd is running here"), "{stderr}");
    }
}
