//! What of the Vagrant lab (`vagrant/`) can be checked without booting a VM: the Vagrantfile
//! validates (Debian's vagrant) for both backends and refuses a typo, every provisioning script
//! passes shellcheck, kubeadm's configuration agrees with deploy/weftd.toml, and the lab's
//! kustomize overlays pass a real API server's validation and say what the lab needs. A full
//! `vagrant up` is not run here (no VM can boot on this machine); vagrant/README.md says so.
//!
//! Run: `cargo test -p weft-lab --test vagrant`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use weft_lab::k8s::ApiServer;
use weftd::config::RawSettings;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap()
}

/// `vagrant validate` on a copy of vagrant/ (it writes the lab's token beside the Vagrantfile,
/// and checks that every provisioning script it names exists), with `env`; its exit status and
/// output.
fn validate(env: &[(&str, &str)]) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("vagrant");
    std::fs::create_dir_all(copy.join("provision")).unwrap();
    for file in ["Vagrantfile", "check.sh", "kubeadm.yaml"] {
        std::fs::copy(repo().join("vagrant").join(file), copy.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(repo().join("vagrant/provision")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            copy.join("provision").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    // Provider settings need the provider's plugin (VirtualBox or vagrant-libvirt), which this
    // machine cannot run: they are left out of the validation, the rest is checked.
    let output = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(&copy)
        .env("VAGRANT_HOME", work.path().join("vagrant.d"))
        .envs(env.iter().copied())
        .output()
        .expect("run vagrant (Debian's vagrant package; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn the_vagrantfile_validates_for_both_backends_and_refuses_a_typo() {
    for backend in ["vxlan", "wireguard"] {
        let (ok, text) = validate(&[("WEFT_BACKEND", backend), ("WEFT_WORKERS", "3")]);
        assert!(ok, "{backend}: {text}");
        assert!(text.contains("weft-worker-3"), "three workers: {text}");
    }
    let (ok, text) = validate(&[("WEFT_BACKEND", "geneve")]);
    assert!(
        !ok && text.contains("expected vxlan or wireguard"),
        "{text}"
    );
    let (ok, text) = validate(&[("WEFT_WORKERS", "0")]);
    assert!(!ok && text.contains("WEFT_WORKERS"), "{text}");
}

#[test]
fn every_lab_script_passes_shellcheck() {
    let dir = repo().join("vagrant");
    let mut scripts: Vec<PathBuf> = vec![dir.join("check.sh")];
    for entry in std::fs::read_dir(dir.join("provision")).unwrap() {
        scripts.push(entry.unwrap().path());
    }
    assert!(scripts.len() >= 5, "{scripts:?}");
    let output = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .expect("run shellcheck (scripts/deps.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The value of `key: "VALUE"` in kubeadm.yaml.
fn kubeadm_value(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in kubeadm.yaml"));
    line.split_once(':')
        .unwrap()
        .1
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn kubeadm_gives_the_cluster_the_cidrs_weftd_expects() {
    let kubeadm = std::fs::read_to_string(repo().join("vagrant/kubeadm.yaml")).unwrap();
    let mut settings = RawSettings::from_file(&repo().join("deploy/weftd.toml")).unwrap();
    settings.node_name = Some("weft-cp".parse().unwrap());
    let config = settings.validate().unwrap();
    let pools = [config.pool_v4.unwrap(), config.pool_v6.unwrap()];
    let cluster: Vec<String> = pools.iter().map(|p| p.cluster.to_string()).collect();
    assert_eq!(kubeadm_value(&kubeadm, "podSubnet"), cluster.join(","));
    let services: Vec<String> = config.service_cidrs.iter().map(|c| c.to_string()).collect();
    assert_eq!(kubeadm_value(&kubeadm, "serviceSubnet"), services.join(","));
    assert_eq!(kubeadm_value(&kubeadm, "allocate-node-cidrs"), "true");
    let masks = [
        kubeadm_value(&kubeadm, "node-cidr-mask-size-ipv4"),
        kubeadm_value(&kubeadm, "node-cidr-mask-size-ipv6"),
    ];
    assert_eq!(masks, pools.map(|p| p.prefix_len.to_string()));
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// Apply the lab's overlay for `backend` (server-side dry run, then for real) and return the
/// DaemonSet's pod template.
fn applied_overlay(server: &ApiServer, backend: &str) -> Value {
    let dir = repo().join("vagrant/kustomize").join(backend);
    let dir = dir.to_str().unwrap();
    let dry = server
        .kubectl(&["apply", "--dry-run=server", "-k", dir])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(dry.contains("daemonset.apps/weftd"), "{dry}");
    server
        .kubectl(&["apply", "-k", dir])
        .unwrap_or_else(|e| panic!("{e}"));
    let text = server
        .kubectl(&[
            "-n",
            "weft-system",
            "get",
            "daemonset",
            "weftd",
            "-o",
            "json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let ds: Value = serde_json::from_str(&text).unwrap();
    ds["spec"]["template"]["spec"].clone()
}

#[test]
fn the_lab_overlays_pass_a_real_api_server_and_pin_the_underlay() {
    for backend in ["vxlan", "wireguard"] {
        let Some(server) = ApiServer::start_or_skip(&format!("vagrant-{backend}")) else {
            return;
        };
        server
            .kubectl(&["create", "namespace", "weft-system"])
            .expect("namespace");
        let pod = applied_overlay(&server, backend);
        let weftd = named(&pod["containers"], "weftd");
        assert_eq!(
            weftd["image"], "localhost/weft:dev",
            "the image built in the lab"
        );
        assert_eq!(
            named(&pod["initContainers"], "install-cni")["image"],
            "localhost/weft:dev"
        );
        // Never 10.0.2.15: the interface that reaches the control plane's private address.
        assert_eq!(
            named(&weftd["env"], "WEFT_IFACE_CAN_REACH")["value"],
            "192.168.56.10"
        );
        let mut raw = RawSettings::from_file(&repo().join("deploy/weftd.toml")).unwrap();
        raw.node_name = Some("weft-worker-1".parse().unwrap());
        raw.iface_can_reach = Some("192.168.56.10".parse().unwrap());
        raw.validate()
            .expect("weftd accepts the lab's underlay selector");
        let containers = pod["containers"].as_array().unwrap().len();
        match backend {
            "wireguard" => {
                assert_eq!(named(&weftd["env"], "WEFT_BACKEND")["value"], "wireguard");
                assert_eq!(containers, 2, "weft-wg beside weftd");
            }
            _ => assert_eq!(containers, 1),
        }
    }
}

#[test]
fn the_provisioning_names_files_that_exist() {
    let dir = repo().join("vagrant");
    let vagrantfile = std::fs::read_to_string(dir.join("Vagrantfile")).unwrap();
    for script in [
        "provision/common.sh",
        "provision/control-plane.sh",
        "provision/worker.sh",
    ] {
        assert!(vagrantfile.contains(script), "{script}");
        assert!(dir.join(script).exists(), "{script}");
    }
    let control_plane = std::fs::read_to_string(dir.join("provision/control-plane.sh")).unwrap();
    assert!(control_plane.contains("/weft/vagrant/kubeadm.yaml"));
    assert!(control_plane.contains("/weft/vagrant/kustomize/$WEFT_BACKEND"));
    assert!(Path::new(&repo()).join("Containerfile").exists());
}
