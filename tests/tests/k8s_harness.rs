//! The Kubernetes API harness against the real kube-apiserver from `../shared/k8s`: a Node with
//! pod CIDRs round-trips, a lab namespace reaches the server through a relay, and kube-apiserver
//! alone restarts on the same etcd.
//!
//! Run: `cargo test -p weft-lab --test k8s_harness` (as root: the relay test makes a network
//! namespace). Without a kube-apiserver the tests print `SKIP: …` naming what is missing, unless
//! `WEFT_K8S_REQUIRED=1`.

use std::path::PathBuf;
use std::time::Duration;

use weft_lab::k8s::ApiServer;
use weft_lab::netns::{unique_prefix, NetnsGuard};

fn node_yaml(name: &str, v4: &str, v6: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n\
         spec:\n  podCIDRs: [\"{v4}\", \"{v6}\"]\n"
    )
}

#[test]
fn a_node_with_pod_cidrs_round_trips_and_a_relay_reaches_the_server_from_a_namespace() {
    let Some(server) = ApiServer::start_or_skip("k8s_harness") else {
        return;
    };
    let prefix = unique_prefix();
    let node = format!("{prefix}-node-1");
    server
        .kubectl_stdin(
            &["create", "-f", "-"],
            &node_yaml(&node, "10.244.1.0/24", "fd00:10:244:1::/64"),
        )
        .expect("create the node");
    let cidrs = server
        .kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDRs}"])
        .unwrap();
    assert_eq!(cidrs, r#"["10.244.1.0/24","fd00:10:244:1::/64"]"#);
    // The real server fills podCIDR from the first entry.
    let cidr = server
        .kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"])
        .unwrap();
    assert_eq!(cidr, "10.244.1.0/24");

    let ns = NetnsGuard::create(&format!("{prefix}-k8s")).expect("namespace");
    let get_nodes = ["get", "nodes", "-o", "name", "--request-timeout=10s"];
    assert!(
        server.kubectl_in(&ns, &get_nodes).is_err(),
        "the server must not be reachable from the namespace without a relay"
    );
    let relay = server.relay_into(ns.path()).expect("relay");
    let names = server
        .kubectl_in(&ns, &get_nodes)
        .expect("kubectl get nodes through the relay");
    assert_eq!(names.trim(), format!("node/{node}"));
    // Several connections at once (a watch beside requests) each get their own pipe.
    for listed in in_parallel(&server, &ns, &get_nodes, 4) {
        assert_eq!(listed.trim(), format!("node/{node}"));
    }
    drop(relay);
    assert!(
        server.kubectl_in(&ns, &get_nodes).is_err(),
        "a dropped relay must stop listening"
    );
}

/// Run the same kubectl command `n` times at once inside `ns`; their outputs.
fn in_parallel(server: &ApiServer, ns: &NetnsGuard, args: &[&str], n: usize) -> Vec<String> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let mut full = vec!["ip".to_string(), "netns".into(), "exec".into()];
            full.push(ns.name().to_string());
            full.extend(server.kubectl_args(args));
            std::thread::spawn(move || {
                weft_lab::netns::run(&full.iter().map(String::as_str).collect::<Vec<_>>())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap().expect("kubectl through the relay"))
        .collect()
}

#[test]
fn kube_apiserver_alone_restarts_on_the_same_etcd_and_the_guard_leaves_nothing_behind() {
    let Some(mut server) = ApiServer::start_or_skip("k8s_harness") else {
        return;
    };
    let node = format!("{}-node-r", unique_prefix());
    server
        .kubectl_stdin(
            &["create", "-f", "-"],
            &node_yaml(&node, "10.244.7.0/24", "fd00:10:244:7::/64"),
        )
        .expect("create the node");

    server.stop_apiserver_only().expect("stop kube-apiserver");
    assert!(
        server
            .kubectl(&["get", "node", &node, "--request-timeout=3s"])
            .is_err(),
        "kube-apiserver must be down"
    );
    server
        .restart_apiserver_only(Duration::from_millis(500))
        .expect_err("a second stop needs a running server; here it is already down");
    server
        .start_apiserver_again()
        .expect("start kube-apiserver");
    let cidrs = server
        .kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDRs}"])
        .expect("the node survives: same etcd");
    assert_eq!(cidrs, r#"["10.244.7.0/24","fd00:10:244:7::/64"]"#);

    // Once more, through the restarted process (now this process's child).
    server
        .restart_apiserver_only(Duration::from_millis(200))
        .expect("restart kube-apiserver again");
    server.kubectl(&["get", "node", &node]).expect("node again");

    let workdir = server.workdir().to_path_buf();
    let pids = std::fs::read_to_string(workdir.join("pids")).unwrap();
    drop(server);
    assert!(!workdir.exists(), "{} is left behind", workdir.display());
    for pid in pids.lines() {
        let cmdline =
            std::fs::read(PathBuf::from(format!("/proc/{pid}/cmdline"))).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&*workdir.to_string_lossy()),
            "pid {pid} of {} still runs",
            workdir.display()
        );
    }
}
