//! What `deploy/` ships: the conflist parses the way a runtime hands it to the plugin, weftd
//! accepts its settings file, and `kubectl apply -k deploy/` passes a real API server's
//! validation (`--dry-run=server`), applies, and gives the service account exactly what weftd
//! needs.
//!
//! Run: `cargo test -p weft-lab --test deploy`. The API server tests print `SKIP: …` without a
//! kube-apiserver (see `weft_lab::k8s`), unless `WEFT_K8S_REQUIRED=1`.

use std::path::PathBuf;

use serde_json::Value;
use weft_lab::k8s::ApiServer;
use weft_proto::cni::NetConf;
use weftd::config::RawSettings;

const NAMESPACE: &str = "weft-system";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:weft-system:weft";

fn deploy_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

fn deploy_file(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_shipped_conflist_gives_the_weft_plugin_a_valid_netconf() {
    let list: Value = serde_json::from_str(&deploy_file("10-weft.conflist")).unwrap();
    let mut weft = list["plugins"][0].clone();
    // libcni injects the list's name and version into each plugin's configuration.
    weft["name"] = list["name"].clone();
    weft["cniVersion"] = list["cniVersion"].clone();
    let conf = NetConf::from_value(&weft).expect("valid weft netconf");
    assert_eq!(conf.plugin_type, "weft");
    assert_eq!(conf.daemon_socket, "/run/weft/cni.sock");
    assert_eq!(list["plugins"][1]["type"], "portmap");
    // What a runtime and every plugin of the chain accept today (Debian 12's containerd 1.6 and
    // reference plugins stop at 1.0.0); install-cni.sh asks the plugins and may write another.
    assert_eq!(list["cniVersion"], "1.0.0");
}

#[test]
fn weftd_accepts_the_shipped_settings_file() {
    let path = deploy_dir().join("weftd.toml");
    let settings = RawSettings::from_file(&path).expect("weftd.toml parses");
    // The DaemonSet adds `--store kube` (refused until the Kubernetes store exists) and the node
    // name; the file's own settings must validate together.
    let mut settings = settings;
    settings.node_name = Some("node-1".parse().unwrap());
    let config = settings.validate().expect("weftd.toml validates");
    assert_eq!(
        config
            .pool_v4
            .map(|p| (p.cluster.to_string(), p.prefix_len)),
        Some(("10.244.0.0/16".to_string(), 24))
    );
    assert_eq!(
        config
            .pool_v6
            .map(|p| (p.cluster.to_string(), p.prefix_len)),
        Some(("fd00:10:244::/48".to_string(), 64))
    );
    // The CNI socket weftd opens is the one the conflist names.
    let list: Value = serde_json::from_str(&deploy_file("10-weft.conflist")).unwrap();
    assert_eq!(
        config.run_dir.join("cni.sock").to_str(),
        list["plugins"][0]["daemonSocket"].as_str()
    );
}

/// `kubectl apply -k deploy/` (`extra` e.g. `--dry-run=server`); kubectl's output.
fn apply(server: &ApiServer, extra: &[&str]) -> String {
    let dir = deploy_dir();
    let mut args = vec!["apply", "-k", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    server
        .kubectl(&args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

#[test]
fn deploy_passes_server_side_validation_then_applies_as_written() {
    let Some(server) = ApiServer::start_or_skip("deploy") else {
        return;
    };
    let rendered = server
        .kubectl(&["kustomize", deploy_dir().to_str().unwrap()])
        .expect("kubectl kustomize deploy/");
    for part in [
        "kind: ConfigMap",
        "  10-weft.conflist: |",
        "  weftd.toml: |",
        "image: ghcr.io/weft-dev/weft:dev",
    ] {
        assert!(rendered.contains(part), "{part} missing from:\n{rendered}");
    }

    // The validation is strict: an unknown field is refused, not dropped.
    let bad = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x, namespace: default}\n\
               spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, \
               spec: {hostNetwrok: true, containers: [{name: c, image: i}]}}}\n";
    let refused = server
        .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], bad)
        .expect_err("a misspelt field must be refused");
    assert!(refused.to_string().contains("hostNetwrok"), "{refused}");

    // Namespaced objects need their namespace to exist even in a dry run.
    server
        .kubectl(&["create", "namespace", NAMESPACE])
        .expect("namespace");
    let dry = apply(&server, &["--dry-run=server"]);
    for object in [
        "serviceaccount/weft",
        "clusterrole.rbac.authorization.k8s.io/weft",
        "clusterrolebinding.rbac.authorization.k8s.io/weft",
        "configmap/weft-config-",
        "daemonset.apps/weftd",
    ] {
        assert!(dry.contains(object), "{object} missing from:\n{dry}");
    }
    assert!(
        server
            .kubectl(&["-n", NAMESPACE, "get", "daemonset", "weftd"])
            .is_err(),
        "a dry run must create nothing"
    );

    apply(&server, &[]);
    let ds = get_json(&server, &["-n", NAMESPACE, "get", "daemonset", "weftd"]);
    check_daemonset(&ds["spec"]["template"]["spec"]);
    let config_map = config_volume(&ds["spec"]["template"]["spec"]);
    let cm = get_json(&server, &["-n", NAMESPACE, "get", "configmap", &config_map]);
    assert_eq!(
        cm["data"]["10-weft.conflist"],
        deploy_file("10-weft.conflist")
    );
    assert_eq!(cm["data"]["weftd.toml"], deploy_file("weftd.toml"));
}

#[test]
fn the_wireguard_variant_adds_weft_wg_beside_weftd_and_applies() {
    let Some(server) = ApiServer::start_or_skip("deploy-wg") else {
        return;
    };
    server
        .kubectl(&["create", "namespace", NAMESPACE])
        .expect("namespace");
    // An operator's overlay beside deploy/ (kustomize takes relative paths only): deploy/ plus
    // the WireGuard component.
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        deploy_dir().canonicalize().unwrap(),
        work.path().join("deploy"),
    )
    .unwrap();
    let overlay = work.path().join("my-weft");
    std::fs::create_dir(&overlay).unwrap();
    let kustomization = "resources: [../deploy]\ncomponents: [../deploy/wireguard]\n";
    std::fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
    let dir = overlay.to_str().unwrap();
    let dry = server
        .kubectl(&["apply", "--dry-run=server", "-k", dir])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(dry.contains("daemonset.apps/weftd"), "{dry}");
    server.kubectl(&["apply", "-k", dir]).expect("apply");
    let ds = get_json(&server, &["-n", NAMESPACE, "get", "daemonset", "weftd"]);
    let pod = &ds["spec"]["template"]["spec"];
    check_daemonset(pod);
    let weftd = named(&pod["containers"], "weftd");
    assert_eq!(named(&weftd["env"], "WEFT_BACKEND")["value"], "wireguard");
    assert_eq!(
        named(&weftd["env"], "WEFT_WIREGUARD_SPAWN")["value"],
        "false"
    );
    let weft_wg = named(&pod["containers"], "weft-wg");
    assert_eq!(weft_wg["command"][0], "/usr/local/bin/weft-wg");
    assert_eq!(weft_wg["command"][1], "weft.wg");
    for container in [weftd, weft_wg] {
        let socket = named(&container["volumeMounts"], "wireguard");
        assert_eq!(socket["mountPath"], "/var/run/wireguard");
    }
    let volume = named(&pod["volumes"], "wireguard");
    assert_eq!(volume["hostPath"]["path"], "/var/run/wireguard");
    // weftd accepts what the variant sets.
    let settings = RawSettings::from_file(&deploy_dir().join("weftd.toml")).unwrap();
    let mut raw = settings;
    raw.backend = Some("wireguard".parse().unwrap());
    raw.wireguard_spawn = Some("false".parse().unwrap());
    let config = raw.validate().expect("valid");
    assert!(!config.wireguard.spawn);
}

fn get_json(server: &ApiServer, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", "json"]);
    let text = server.kubectl(&full).expect("kubectl get");
    serde_json::from_str(&text).expect("JSON")
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The generated ConfigMap's name, from the pod's `config` volume.
fn config_volume(pod: &Value) -> String {
    let name = named(&pod["volumes"], "config")["configMap"]["name"].as_str();
    name.expect("config volume is a ConfigMap").to_string()
}

/// The pod template as the server stored it: what the README and the comments promise.
fn check_daemonset(pod: &Value) {
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "weft");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let weftd = named(&pod["containers"], "weftd");
    assert_eq!(
        weftd["args"],
        serde_json::json!(["run", "--store", "kube", "--config", "/etc/weft/weftd.toml"])
    );
    let node_name = named(&weftd["env"], "WEFT_NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &weftd[probe]["httpGet"];
        assert_eq!(
            (&get["host"], &get["port"], &get["path"]),
            (&"127.0.0.1".into(), &9475.into(), &path.into())
        );
    }
    let caps = &weftd["securityContext"]["capabilities"]["add"];
    for cap in ["NET_ADMIN", "NET_RAW"] {
        assert!(caps.as_array().unwrap().contains(&cap.into()), "{caps}");
    }
    let mounts = &weftd["volumeMounts"];
    assert_eq!(named(mounts, "config")["mountPath"], "/etc/weft");
    assert_eq!(named(mounts, "run")["mountPath"], "/run/weft");
    assert_eq!(named(mounts, "state")["mountPath"], "/var/lib/weft");
    for (volume, host) in [
        ("run", "/run/weft"),
        ("state", "/var/lib/weft"),
        ("cni-bin", "/opt/cni/bin"),
        ("cni-conf", "/etc/cni/net.d"),
    ] {
        assert_eq!(named(&pod["volumes"], volume)["hostPath"]["path"], host);
    }
    let install = named(&pod["initContainers"], "install-cni");
    assert_eq!(install["command"][1], "/opt/weft/install-cni.sh");
    let conflist = named(&install["volumeMounts"], "config");
    assert_eq!(conflist["mountPath"], "/opt/weft/10-weft.conflist");
    assert_eq!(conflist["subPath"], "10-weft.conflist");
}

/// `kubectl auth can-i VERB RESOURCE` as weft's service account.
fn can_i(server: &ApiServer, verb: &str, resource: &str) -> bool {
    let answer = server.kubectl(&["auth", "can-i", verb, resource, "--as", SERVICE_ACCOUNT]);
    // kubectl exits 1 with "no" on stdout when the answer is no.
    matches!(answer, Ok(ref out) if out.trim() == "yes")
}

#[test]
fn the_service_account_may_do_what_weftd_does_and_no_more() {
    let Some(server) = ApiServer::start_or_skip("deploy") else {
        return;
    };
    server
        .kubectl(&["create", "namespace", NAMESPACE])
        .expect("namespace");
    apply(&server, &[]);
    for (verb, resource) in [
        ("get", "nodes"),
        ("list", "nodes"),
        ("watch", "nodes"),
        ("patch", "nodes"),
        ("patch", "nodes/status"),
    ] {
        assert!(
            can_i(&server, verb, resource),
            "weft may not {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("create", "nodes"),
        ("update", "nodes"),
        ("delete", "nodes"),
        ("update", "nodes/status"),
        ("get", "secrets"),
        ("list", "pods"),
        ("get", "configmaps"),
        ("create", "events"),
    ] {
        assert!(
            !can_i(&server, verb, resource),
            "weft may {verb} {resource}"
        );
    }
    acts_as_weftd(&server);
}

/// Do, as the service account, the writes weftd makes to its Node; and one it must not make.
fn acts_as_weftd(server: &ApiServer) {
    let node = format!("{}-node", weft_lab::netns::unique_prefix());
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n\
         spec: {{podCIDRs: [10.244.3.0/24, \"fd00:10:244:3::/64\"]}}\n"
    );
    server
        .kubectl_stdin(&["create", "-f", "-"], &yaml)
        .expect("node");
    let as_weft = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--as", SERVICE_ACCOUNT]);
        server.kubectl(&full)
    };
    as_weft(&["annotate", "node", &node, "weft.dev/backend=vxlan"]).expect("annotate");
    // As kube-rs sends it: one PATCH of the status subresource (`kubectl patch` would GET
    // nodes/status first, which weftd neither does nor may).
    let condition = r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False",
        "reason":"WeftIsUp","message":"weftd programmed the node"}]}}"#;
    server
        .request(
            "PATCH",
            &format!("/api/v1/nodes/{node}/status"),
            Some(("application/strategic-merge-patch+json", condition)),
            Some(SERVICE_ACCOUNT),
        )
        .expect("patch the NetworkUnavailable condition");
    let read = as_weft(&["get", "node", &node, "-o", "json"]).expect("get");
    let read: Value = serde_json::from_str(&read).unwrap();
    assert_eq!(read["metadata"]["annotations"]["weft.dev/backend"], "vxlan");
    let conditions = read["status"]["conditions"].as_array().expect("conditions");
    let network = conditions
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable");
    assert_eq!(network.map(|c| &c["status"]), Some(&Value::from("False")));
    let refused = as_weft(&["delete", "node", &node]).expect_err("weft must not delete nodes");
    assert!(refused.to_string().contains("forbidden"), "{refused}");
}
