//! weft on a real Kubernetes API server (`--store kube`): Node objects as the peer directory.
//! Each test starts its own kube-apiserver (upstream v1.25.4 from `../shared/k8s`, or
//! `$KUBE_APISERVER` / `$KUBEBUILDER_ASSETS`) and its own lab, plays kube-controller-manager's
//! node IPAM by creating each lab node's Node with its `spec.podCIDRs`, and removes everything
//! when it ends, even on failure. Without an API server the tests print `SKIP: …` naming what is
//! missing; in CI (`CI=true`) a missing server is a failure.
//!
//! Run (root): `cargo test -p weft-lab --test lab_kube`.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weft_lab::k8s::ApiServer;
use weft_lab::lab::{render_matrix, Lab, LabConfig, StoreKind};
use weft_lab::procs::wait_for;

/// A lab of `nodes` × `pods` on the Kubernetes store, or `None` (SKIP printed) without a server.
fn kube_lab(test: &str, nodes: usize, pods: usize) -> Option<Lab> {
    if let Err(missing) = ApiServer::find() {
        assert!(!ApiServer::required(), "{test}: {missing}");
        eprintln!("SKIP: {test}: {missing}");
        return None;
    }
    let lab = Lab::up(LabConfig {
        nodes,
        pods_per_node: pods,
        store: StoreKind::Kube,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Some(lab)
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    lab.apiserver()
        .kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn node_state(lab: &Lab, node: usize) -> String {
    let exec = |args: &[&str]| {
        lab.nodes[node]
            .netns
            .exec(args)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    exec(&["ip", "route"])
        + &exec(&["ip", "-6", "route"])
        + &exec(&["ip", "neigh", "show", "dev", "weft.vxlan"])
        + &exec(&["bridge", "fdb", "show", "dev", "weft.vxlan"])
}

#[test]
fn three_nodes_dual_stack_on_the_kubernetes_store() {
    let Some(lab) = kube_lab("three_nodes_dual_stack_on_the_kubernetes_store", 3, 2) else {
        return;
    };
    let probes = lab.wait_converged(Duration::from_secs(15));
    let matrix = render_matrix(&probes);
    assert_eq!(probes.iter().filter(|p| p.to != "outside").count(), 60);
    assert!(
        probes.iter().all(|p| p.ok),
        "not everything answered:\n{matrix}"
    );
    eprintln!("{matrix}");

    // Every node published its record and is marked as having a network.
    for node in &lab.nodes {
        let annotations = kubectl(
            &lab,
            &[
                "get",
                "node",
                &node.name,
                "-o",
                "jsonpath={.metadata.annotations}",
            ],
        );
        assert!(
            annotations.contains("weft.dev/vtep-mac")
                && annotations.contains(&node.underlay_v4.to_string()),
            "{}: {annotations}",
            node.name
        );
        let condition = kubectl(
            &lab,
            &[
                "get",
                "node",
                &node.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"NetworkUnavailable\")].status}",
            ],
        );
        assert_eq!(condition.trim(), "False", "{}", node.name);
    }
}

#[test]
fn a_restarted_weftd_writes_nothing_when_nothing_changed() {
    let Some(mut lab) = kube_lab(
        "a_restarted_weftd_writes_nothing_when_nothing_changed",
        2,
        1,
    ) else {
        return;
    };
    lab.wait_converged(Duration::from_secs(15));
    let version = |lab: &Lab| {
        kubectl(
            lab,
            &[
                "get",
                "node",
                "node-1",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
    };
    let before = version(&lab);
    lab.stop_daemon(0, false);
    lab.start_daemon(0).unwrap_or_else(|e| panic!("{e}"));
    lab.wait_converged(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(version(&lab), before, "the restart wrote to node-1's Node");
    assert!(
        !lab.nodes[0]
            .log()
            .split("SIGTERM")
            .last()
            .unwrap()
            .contains("published weft.dev annotations"),
        "{}",
        lab.nodes[0].log()
    );
}

#[test]
fn a_node_deleted_with_kubectl_leaves_no_route_fdb_or_neighbour() {
    let Some(lab) = kube_lab(
        "a_node_deleted_with_kubectl_leaves_no_route_fdb_or_neighbour",
        3,
        1,
    ) else {
        return;
    };
    lab.wait_converged(Duration::from_secs(15));
    let gone_cidr = lab.node_pod_cidr_v4(2);
    let gone_ip = lab.nodes[2].underlay_v4.to_string();
    assert!(node_state(&lab, 0).contains(&gone_cidr));
    kubectl(&lab, &["delete", "node", &lab.nodes[2].name]);
    let gone = wait_for(Duration::from_secs(5), || {
        (0..2)
            .all(|n| {
                let state = node_state(&lab, n);
                !state.contains(&gone_cidr) && !state.contains(&gone_ip)
            })
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "node-3's entries remain:\n{}",
        node_state(&lab, 0)
    );
    let probes = lab.probes();
    let between_the_rest = probes
        .iter()
        .filter(|p| !p.from.starts_with("node-3") && !p.to.starts_with("node-3"));
    assert!(
        between_the_rest.clone().all(|p| p.ok),
        "{}",
        render_matrix(&probes)
    );
}

#[test]
fn traffic_flows_while_the_api_server_is_down_and_a_later_node_is_reached() {
    let test = "traffic_flows_while_the_api_server_is_down_and_a_later_node_is_reached";
    let Some(mut lab) = kube_lab(test, 2, 1) else {
        return;
    };
    lab.wait_converged(Duration::from_secs(15));
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    let target = b.v4.unwrap().to_string();
    // A ping every 0.2 s across the outage: none may be lost.
    let pinger = a
        .netns
        .command("ping")
        .args(["-i", "0.2", "-w", "34", "-q", &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab.apiserver_mut()
        .stop_apiserver_only()
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(30));
    lab.apiserver_mut()
        .start_apiserver_again()
        .unwrap_or_else(|e| panic!("{e}"));
    let output = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "pings lost during the outage:\n{summary}"
    );

    let node = lab.add_node().unwrap_or_else(|e| panic!("{e}"));
    let pod = lab.add_pod(node).unwrap_or_else(|e| panic!("{e}"));
    let new = lab.pods[pod].v4.unwrap().to_string();
    let started = Instant::now();
    let reached = wait_for(Duration::from_secs(20), || {
        lab.pods[0].netns.ping(&new, 1).then_some(())
    });
    assert!(
        reached.is_some(),
        "the node added after the outage is not reached"
    );
    eprintln!(
        "new node reached {:?} after its pod was added",
        started.elapsed()
    );
}

#[test]
fn annotations_claiming_another_nodes_vtep_or_a_node_claiming_its_pod_cidr_are_refused() {
    let test =
        "annotations_claiming_another_nodes_vtep_or_a_node_claiming_its_pod_cidr_are_refused";
    let Some(lab) = kube_lab(test, 3, 1) else {
        return;
    };
    lab.wait_converged(Duration::from_secs(15));
    // node-3 claims node-2's VTEP MAC by hand.
    let mac = kubectl(
        &lab,
        &[
            "get",
            "node",
            "node-2",
            "-o",
            "jsonpath={.metadata.annotations.weft\\.dev/vtep-mac}",
        ],
    );
    kubectl(
        &lab,
        &[
            "annotate",
            "--overwrite",
            "node",
            "node-3",
            &format!("weft.dev/vtep-mac={}", mac.trim()),
        ],
    );
    // A Node nobody runs, holding node-2's pod CIDR (the API server lets it).
    let thief_cidr = lab.node_pod_cidr_v4(1);
    let thief = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"thief","annotations":{{
            "weft.dev/backend":"vxlan","weft.dev/public-ip":"192.0.2.66",
            "weft.dev/vtep-mac":"02:00:00:00:66:66"}}}},"spec":{{"podCIDRs":["{thief_cidr}"]}}}}"#
    );
    lab.apiserver()
        .kubectl_stdin(&["create", "-f", "-"], &thief)
        .unwrap();
    let refused = wait_for(Duration::from_secs(5), || {
        let log = lab.nodes[0].log();
        (log.contains("peer thief refused") && log.contains("peer node-3 refused")).then_some(())
    });
    assert!(refused.is_some(), "{}", lab.nodes[0].log());
    let state = node_state(&lab, 0);
    assert!(!state.contains("192.0.2.66"), "{state}");
    assert!(
        state.contains(&format!("{thief_cidr} via")),
        "node-2 keeps its route:\n{state}"
    );
    let probes = lab.probes();
    let to_node_2 = probes
        .iter()
        .filter(|p| p.to.starts_with("node-2") && !p.from.starts_with("node-3"));
    assert!(
        to_node_2.clone().all(|p| p.ok),
        "{}",
        render_matrix(&probes)
    );
    let _ = IpAddr::V4(lab.nodes[1].underlay_v4);
}
