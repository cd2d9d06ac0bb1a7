//! weft under a real container runtime, as a new user on Debian 12 tries it: Debian's containerd
//! 1.6 and runc, `deploy/install-cni.sh` installing `weft-cni` and the conflist next to Debian's
//! reference `portmap`, and `ctr run --cni` (root).
//!
//! containerd is a private one (its own root, state, socket and config in a temporary directory)
//! running in a lab node's network namespace, beside that node's `weftd`; the image is busybox,
//! built here from Debian's `busybox-static`. See `weft_lab::containerd`.
//!
//! Run: `cargo test -p weft-lab --test containerd`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use weft_lab::containerd::Containerd;
use weft_lab::lab::{Lab, LabConfig, LabNode, OUTSIDE_V4, OUTSIDE_V6};
use weft_lab::procs::bin_path;

/// What the container runs: show its addresses, ping the outside on both families, say `ready`
/// and wait for the test's word in `/shared/done`.
fn container_script() -> String {
    format!(
        "set -e
ip -o addr show dev eth0
ping -c 1 -W 5 {OUTSIDE_V4} >/dev/null && echo ping4 ok
ping -6 -c 1 -W 5 {OUTSIDE_V6} >/dev/null && echo ping6 ok
echo ready
while [ ! -e /shared/done ]; do sleep 0.1; done
"
    )
}

fn ok<T>(result: weft_lab::error::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Install weft into the run's CNI directories the way a node's installer does: Debian's
/// `portmap` is there already (as the reference plugins are on a node), then `install-cni.sh`.
fn install(containerd: &Containerd, node: &LabNode) -> Value {
    let bin_dir = containerd.cni_bin_dir();
    std::os::unix::fs::symlink("/usr/lib/cni/portmap", bin_dir.join("portmap")).unwrap();
    let out = Command::new("sh")
        .arg(Path::new(weft_lab::DEPLOY_DIR).join("install-cni.sh"))
        .arg(bin_path("weft-cni"))
        .arg(&bin_dir)
        .arg(containerd.cni_conf_dir())
        .env("WEFT_DAEMON_SOCKET", node.socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install-cni.sh: {text}");
    let conflist = containerd.cni_conf_dir().join("10-weft.conflist");
    serde_json::from_slice(&std::fs::read(conflist).unwrap()).unwrap()
}

/// The node's pod CIDRs, from its weftd's state.
fn pod_cidrs(node: &LabNode) -> Vec<IpNet> {
    let lease = node.dir.join("state").join("lease.json");
    let lease: Value = serde_json::from_slice(&std::fs::read(lease).unwrap()).unwrap();
    let cidrs = lease["podCIDRs"].as_array().expect("podCIDRs");
    cidrs
        .iter()
        .map(|c| c.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The global addresses in `ip -o addr` output.
fn addresses(shown: &str) -> Vec<IpAddr> {
    shown
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
        .collect()
}

/// The node's IPAM records (`CONTAINER_ID@IFNAME` → record).
fn ipam_records(node: &LabNode) -> Vec<(String, Value)> {
    let dir = node.dir.join("state").join("ipam");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, path)| {
            (
                name,
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The container shows one address per family, from the node's pod CIDRs, and the node's IPAM
/// record `key` holds them.
fn assert_attached(node: &LabNode, key: &str, shown: &str) {
    let got = addresses(shown);
    let cidrs = pod_cidrs(node);
    assert_eq!(got.len(), 2, "one address per family: {shown}");
    for address in &got {
        assert!(
            cidrs.iter().any(|c| c.contains(address)),
            "{address} is not in the node's pod CIDRs {cidrs:?}"
        );
    }
    let records = ipam_records(node);
    let record = records.iter().find(|(name, _)| name == key);
    let record = record.unwrap_or_else(|| panic!("no IPAM record {key}: {records:?}"));
    for address in &got {
        let text = record.1.to_string();
        assert!(text.contains(&address.to_string()), "{record:?}");
    }
}

/// The results libcni has cached (it drops one on DEL).
fn cached_results(containerd: &Containerd) -> Vec<String> {
    let dir = containerd.cni_cache_dir().join("results");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn ctr_run_with_the_installed_conflist_gets_both_families_and_reaches_the_outside() {
    let lab = ok(Lab::up(LabConfig::default()));
    let node = &lab.nodes[0];
    let mut containerd = ok(Containerd::start(
        &node.netns,
        &format!("weft-{}", lab.prefix),
    ));
    let conflist = install(&containerd, node);
    assert_eq!(
        conflist["cniVersion"], "1.0.0",
        "the newest version weft, Debian's portmap and containerd 1.6 all take"
    );
    let image = format!("weft.test/busybox:{}", lab.prefix);
    let work = containerd.dir().join("image");
    ok(containerd.import(&ok(weft_lab::oci::busybox_image(&work, &image))));

    let id = format!("{}-c1", lab.prefix);
    let mut run = ok(containerd.run_cni(&image, &id, &container_script()));
    let shown = ok(run.wait_for_line("ready", Duration::from_secs(60)));
    assert!(
        shown.contains("ping4 ok") && shown.contains("ping6 ok"),
        "{shown}"
    );
    // The runtime's attachment (libcni's container ID is NAMESPACE-ID).
    let key = format!("{}-{id}@eth0", containerd.namespace());
    assert_attached(node, &key, &shown);
    assert_eq!(node.weft_veths().unwrap().len(), 1, "one host-side veth");
    assert_eq!(
        cached_results(&containerd).len(),
        1,
        "libcni cached the result"
    );

    std::fs::write(run.shared().join("done"), b"").unwrap();
    let out = ok(run.finish(Duration::from_secs(60)));
    assert!(out.status.success(), "ctr run: {out:?}");
    assert!(
        out.stderr.trim().is_empty(),
        "ctr says nothing more: {}",
        out.stderr
    );
    assert_eq!(
        ok(containerd.containers()),
        Vec::<String>::new(),
        "--rm removed the container"
    );
    assert_eq!(ipam_records(node), Vec::new(), "DEL released the addresses");
    assert_eq!(cached_results(&containerd), Vec::<String>::new());
    assert_eq!(
        node.weft_veths().unwrap(),
        BTreeSet::new(),
        "no veth left on the node"
    );
}
