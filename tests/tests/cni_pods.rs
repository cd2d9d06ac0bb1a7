//! Pods on one node through the real `weft-cni` binary and a real `weftd`, in network namespaces
//! made by each test (root).
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test cni_pods`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use weft_lab::lab::{
    call_plugin, call_plugin_in, call_plugin_with, result_addresses, source_address_seen,
    CniOutput, Lab, LabConfig, OUTSIDE_V4, OUTSIDE_V6,
};
use weft_lab::netns::{NetnsGuard, PrivateNetns};

fn lab(pods: usize, weftd_args: &[&str]) -> Lab {
    let config = LabConfig {
        nodes: 1,
        pods_per_node: pods,
        weftd_args: weftd_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    Lab::up(config).unwrap_or_else(|e| panic!("{e}"))
}

/// The node's weft veths (`weft` + 11 hex digits).
fn weft_veths(lab: &Lab) -> BTreeSet<String> {
    lab.nodes[0].weft_veths().unwrap()
}

/// `CONTAINER_ID/IFNAME` → addresses, from the node's IPAM records.
fn allocations(lab: &Lab) -> Vec<(String, Value)> {
    let dir = lab.nodes[0].dir.join("state").join("ipam");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut records: Vec<(String, Value)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, path)| {
            let record: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            (name.replacen('@', "/", 1), record)
        })
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
}

fn routes(lab: &Lab) -> String {
    let node = &lab.nodes[0].netns;
    node.exec(&["ip", "route"]).unwrap() + &node.exec(&["ip", "-6", "route"]).unwrap()
}

#[test]
fn twenty_pods_get_distinct_dual_stack_addresses_and_reach_everything() {
    let lab = lab(20, &[]);
    let v4: BTreeSet<_> = lab
        .pods
        .iter()
        .map(|p| p.v4.expect("IPv4 address"))
        .collect();
    let v6: BTreeSet<_> = lab
        .pods
        .iter()
        .map(|p| p.v6.expect("IPv6 address"))
        .collect();
    assert_eq!((v4.len(), v6.len()), (20, 20), "distinct addresses");

    let node = &lab.nodes[0];
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = lab
            .pods
            .iter()
            .map(|from| {
                let lab = &lab;
                scope.spawn(move || {
                    let mut targets: Vec<IpAddr> =
                        vec![node.underlay_v4.into(), node.underlay_v6.into()];
                    for to in lab.pods.iter().filter(|p| p.name != from.name) {
                        targets.extend(to.addresses());
                    }
                    targets
                        .into_iter()
                        .filter(|t| !from.netns.ping(&t.to_string(), 2))
                        .map(|t| format!("{} -> {t}", from.name))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "unreachable: {failures:?}");

    // CHECK passes for each pod …
    for pod in &lab.pods {
        let out = lab.cni(
            "CHECK",
            &pod.container_id,
            Some(&pod.netns.path()),
            "eth0",
            &lab.netconf(0),
        );
        assert!(out.success, "CHECK {}: {}", pod.name, out.stdout);
    }
    // … and fails once a route the pod needs is gone.
    let victim = &lab.pods[3];
    victim
        .netns
        .exec(&["ip", "route", "del", "default"])
        .unwrap();
    let out = lab.cni(
        "CHECK",
        &victim.container_id,
        Some(&victim.netns.path()),
        "eth0",
        &lab.netconf(0),
    );
    assert!(!out.success);
    assert_eq!(out.code(), Some(101), "{}", out.stdout);
    assert!(
        out.stdout.contains("default route via 169.254.1.1"),
        "{}",
        out.stdout
    );

    // All twenty deleted at once (as a node drain does): each DEL succeeds, and nothing is left:
    // no veth on the node, no eth0 in any pod, no address held.
    let failed: Vec<String> = std::thread::scope(|scope| {
        let dels: Vec<_> = lab
            .pods
            .iter()
            .map(|pod| {
                let lab = &lab;
                scope.spawn(move || {
                    let out = lab.cni(
                        "DEL",
                        &pod.container_id,
                        Some(&pod.netns.path()),
                        "eth0",
                        &lab.netconf(0),
                    );
                    (!out.success).then(|| format!("{}: {}", pod.name, out.stdout))
                })
            })
            .collect();
        dels.into_iter().filter_map(|d| d.join().unwrap()).collect()
    });
    assert!(failed.is_empty(), "DEL failed: {failed:?}");
    assert!(weft_veths(&lab).is_empty(), "{:?}", weft_veths(&lab));
    assert!(allocations(&lab).is_empty(), "{:?}", allocations(&lab));
    for pod in &lab.pods {
        let links = pod.netns.exec(&["ip", "-o", "link", "show"]).unwrap();
        assert!(!links.contains("eth0"), "{}: {links}", pod.name);
    }
}

#[test]
fn del_removes_every_trace_and_is_idempotent() {
    let mut lab = lab(2, &[]);
    let pod = &lab.pods[0];
    let (cid, v4, v6) = (pod.container_id.clone(), pod.v4.unwrap(), pod.v6.unwrap());
    assert_eq!(weft_veths(&lab).len(), 2);
    assert!(routes(&lab).contains(&v4.to_string()));

    let out = lab.remove_pod(0);
    assert!(out.success, "DEL: {}", out.stdout);
    assert_eq!(weft_veths(&lab).len(), 1, "the pod's veth is gone");
    let routes = routes(&lab);
    assert!(
        !routes.contains(&format!("{v4} ")) && !routes.contains(&format!("{v6} ")),
        "{routes}"
    );
    assert!(
        allocations(&lab).iter().all(|(k, _)| !k.starts_with(&cid)),
        "allocation released"
    );

    // A second DEL, a DEL without a netns, and a DEL of a container never seen all succeed.
    let conf = lab.netconf(0);
    assert!(lab.cni("DEL", &cid, None, "eth0", &conf).success);
    assert!(lab.cni("DEL", "never-seen", None, "eth0", &conf).success);
    // The other pod still works.
    assert!(lab.pods[0]
        .netns
        .ping(&lab.nodes[0].underlay_v4.to_string(), 2));
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    let lab = lab(4, &[]);
    let keep = [&lab.pods[0], &lab.pods[2]];
    let mut conf = lab.netconf(0);
    conf["cni.dev/valid-attachments"] = json!(keep
        .iter()
        .map(|p| json!({"containerID": p.container_id, "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let out = lab.cni("GC", "", None, "", &conf);
    assert!(out.success, "GC: {} {}", out.stdout, out.stderr);
    let left: BTreeSet<String> = allocations(&lab).into_iter().map(|(k, _)| k).collect();
    let expected: BTreeSet<String> = keep
        .iter()
        .map(|p| format!("{}/eth0", p.container_id))
        .collect();
    assert_eq!(left, expected);
    assert_eq!(
        weft_veths(&lab).len(),
        2,
        "the released pods' veths are gone"
    );
    assert!(
        lab.pods[2]
            .netns
            .ping(&lab.pods[0].v6.unwrap().to_string(), 2),
        "kept pods still talk"
    );
}

/// The source addresses the outside sees from `pod`, IPv4 then IPv6.
fn seen_outside(lab: &Lab, pod: usize) -> Result<(IpAddr, IpAddr), String> {
    let (pod, timeout) = (&lab.pods[pod].netns, Duration::from_secs(3));
    Ok((
        source_address_seen(pod, &lab.outside, IpAddr::V4(OUTSIDE_V4), timeout)?,
        source_address_seen(pod, &lab.outside, IpAddr::V6(OUTSIDE_V6), timeout)?,
    ))
}

/// `nft list set inet weft SET` on the node.
fn nomasq_set(lab: &Lab, set: &str) -> String {
    let args = ["nft", "list", "set", "inet", "weft", set];
    lab.nodes[0]
        .netns
        .exec(&args)
        .unwrap_or_else(|e| e.to_string())
}

/// Unmasqueraded replies need a way back: the outside routes `pod`'s addresses via its node, as
/// a routed network with the pod CIDRs in its tables would.
fn route_back_through_the_node(lab: &Lab, pod: usize) {
    let node = &lab.nodes[lab.pods[pod].node];
    for (net, via) in [
        (
            format!("{}/32", lab.pods[pod].v4.unwrap()),
            node.underlay_v4.to_string(),
        ),
        (
            format!("{}/128", lab.pods[pod].v6.unwrap()),
            node.underlay_v6.to_string(),
        ),
    ] {
        lab.outside
            .exec(&["ip", "route", "add", &net, "via", &via])
            .unwrap();
    }
}

#[test]
fn a_pod_of_a_network_with_ip_masq_false_keeps_its_address_beyond_the_cluster() {
    let mut lab = lab(1, &[]); // pod 0: the default configuration, masqueraded
    let mut conf = lab.netconf(0);
    conf["ipMasq"] = json!(false);
    let kept = lab.add_pod_with(0, &conf).unwrap();
    route_back_through_the_node(&lab, kept);
    let node = &lab.nodes[0];
    let node_addresses = (IpAddr::V4(node.underlay_v4), IpAddr::V6(node.underlay_v6));
    let (v4, v6) = (lab.pods[kept].v4.unwrap(), lab.pods[kept].v6.unwrap());
    let own = (IpAddr::V4(v4), IpAddr::V6(v6));
    let converged = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        (seen_outside(&lab, kept).ok()? == own).then_some(())
    });
    assert!(
        converged.is_some(),
        "the ipMasq: false pod is seen as {:?}, not {own:?}; weftd log:\n{}",
        seen_outside(&lab, kept),
        lab.nodes[0].log()
    );
    let masqueraded = seen_outside(&lab, 0).unwrap();
    assert_eq!(
        masqueraded, node_addresses,
        "the default pod is masqueraded"
    );
    let record = allocations(&lab)
        .into_iter()
        .find(|(k, _)| k.starts_with(&lab.pods[kept].container_id))
        .unwrap();
    assert_eq!(record.1["masquerade"], json!(false), "{record:?}");

    // weftd restarts after the table was removed: the set comes back from the IPAM records.
    lab.stop_daemon(0, false);
    let delete = ["nft", "delete", "table", "inet", "weft"];
    lab.nodes[0].netns.exec(&delete).unwrap();
    lab.start_daemon(0).unwrap();
    let restored = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        let sets = nomasq_set(&lab, "nomasq4") + &nomasq_set(&lab, "nomasq6");
        (sets.contains(&v4.to_string()) && sets.contains(&v6.to_string())).then_some(())
    });
    assert!(restored.is_some(), "{}", lab.nodes[0].log());
    assert_eq!(seen_outside(&lab, 0).unwrap(), node_addresses);
    assert_eq!(seen_outside(&lab, kept).unwrap(), own);

    // DEL: the address leaves the set.
    assert!(lab.remove_pod(kept).success);
    let released = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        (!nomasq_set(&lab, "nomasq4").contains(&v4.to_string())).then_some(())
    });
    assert!(released.is_some(), "{}", nomasq_set(&lab, "nomasq4"));
}

#[test]
fn status_reports_ready_and_version_lists_the_spec_versions() {
    let lab = lab(0, &[]);
    let out = lab.cni("STATUS", "", None, "", &lab.netconf(0));
    assert!(out.success, "{}", out.stdout);
    let out = lab.cni("VERSION", "", None, "", &lab.netconf(0));
    assert!(out.json()["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.1.0")));
}

#[test]
fn results_are_valid_for_every_supported_version() {
    let lab = lab(0, &[]);
    let netns = NetnsGuard::create(&format!("{}-versions", lab.prefix)).unwrap();
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let mut conf = lab.netconf(0);
        conf["cniVersion"] = json!(version);
        let cid = format!("{}v{i}", lab.prefix);
        let ifname = format!("eth{i}");
        let out = lab.cni("ADD", &cid, Some(&netns.path()), &ifname, &conf);
        assert!(out.success, "{version}: {}", out.stdout);
        let result = out.json();
        assert_eq!(result["cniVersion"], json!(version));
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        if *version == "0.4.0" {
            assert_eq!(
                ips[0]["version"],
                json!("4"),
                "0.4.0 results carry the IP version"
            );
        } else {
            assert!(ips[0].get("version").is_none());
        }
        assert_eq!(result["interfaces"][1]["sandbox"], json!(netns.path()));
        assert!(
            lab.cni("DEL", &cid, Some(&netns.path()), &ifname, &conf)
                .success
        );
    }
}

/// The filesystem type of `path` as `stat -f` names it (`nsfs` for a namespace), seen from `ns`.
fn fs_type_in(ns: &NetnsGuard, path: &str) -> String {
    let out = ns.exec(&["stat", "-f", "-c", "%T", path]);
    out.unwrap_or_else(|e| e.to_string()).trim().to_string()
}

/// A container runtime in a mount namespace of its own, with one pod namespace made there, that
/// runs the real `weft-cni` in that mount namespace.
struct PrivateRuntime {
    pod: PrivateNetns,
    plugin: std::path::PathBuf,
    container_id: String,
}

impl PrivateRuntime {
    fn new(lab: &Lab) -> PrivateRuntime {
        let pod = PrivateNetns::create(&format!("{}-priv", lab.prefix)).unwrap();
        let path = pod.path();
        let inside = pod.exec(&["stat", "-f", "-c", "%T", &path]).unwrap();
        assert_eq!(
            inside.trim(),
            "nsfs",
            "a namespace in the runtime's mount namespace"
        );
        let seen_by_weftd = fs_type_in(&lab.nodes[0].netns, &path);
        assert_ne!(seen_by_weftd, "nsfs", "and not in weftd's");
        PrivateRuntime {
            pod,
            plugin: weft_lab::procs::bin_path("weft-cni"),
            container_id: format!("{}priv", lab.prefix),
        }
    }

    /// Run the plugin as this runtime does, with `CNI_NETNS` the pod's path.
    fn call(&self, verb: &str, conf: &Value) -> CniOutput {
        let runtime = self.pod.command(self.plugin.to_str().expect("utf-8 path"));
        let (cid, netns) = (&self.container_id, self.pod.path());
        let out = call_plugin_with(runtime, verb, cid, Some(&netns), "eth0", conf);
        assert!(out.success, "{verb}: {} {}", out.stdout, out.stderr);
        out
    }
}

/// A runtime in a mount namespace of its own (containerd in a container, anything under
/// `ip netns exec`) makes the pod's namespace there: `/run/netns/NAME` is an empty file for
/// weftd. The shim opens it where the runtime runs it and passes the descriptor, so ADD, CHECK
/// and DEL work; and DEL still succeeds once the runtime has deleted the namespace.
#[test]
fn a_pod_namespace_in_a_private_mount_namespace_is_wired_through_its_descriptor() {
    let lab = lab(1, &[]);
    let runtime = PrivateRuntime::new(&lab);
    let (pod, conf) = (&runtime.pod, lab.netconf(0));
    let added = runtime.call("ADD", &conf);
    assert_eq!(added.json()["interfaces"][1]["sandbox"], json!(pod.path()));
    let (v4, v6) = result_addresses(&added.json());
    let (v4, v6) = (v4.expect("an IPv4 address"), v6.expect("an IPv6 address"));
    let shown = pod.exec_inside(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    let shown = shown.unwrap();
    assert!(
        shown.contains(&format!("{v4}/32")) && shown.contains(&format!("{v6}/128")),
        "{shown}"
    );
    assert_eq!(weft_veths(&lab).len(), 2);
    let other = &lab.pods[0];
    for target in other.addresses() {
        assert!(pod.ping(&target.to_string(), 2), "the pod reaches {target}");
    }
    assert!(other.netns.ping(&v4.to_string(), 2) && other.netns.ping(&v6.to_string(), 2));

    let mut check = conf.clone();
    check["prevResult"] = added.json();
    runtime.call("CHECK", &check);

    runtime.call("DEL", &conf);
    assert_eq!(weft_veths(&lab).len(), 1, "the pod's veth is gone");
    let cid = &runtime.container_id;
    let held = allocations(&lab);
    assert!(
        held.iter().all(|(k, _)| !k.starts_with(cid)),
        "released: {held:?}"
    );
    let routes = routes(&lab);
    assert!(
        !routes.contains(&format!("{v4} ")) && !routes.contains(&format!("{v6} ")),
        "{routes}"
    );
    // The runtime deletes the namespace, then repeats DEL with the path it had: still success.
    pod.exec(&["ip", "netns", "del", pod.name()]).unwrap();
    runtime.call("DEL", &conf);
}

/// One request as raw bytes on the node's socket, with `fds` attached (as ancillary data on the
/// first bytes): the daemon's reply, decoded. Stands in for shims other than the current one.
fn raw_exchange(lab: &Lab, request: &Value, fds: &[std::os::fd::RawFd]) -> Value {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let mut stream = std::os::unix::net::UnixStream::connect(lab.nodes[0].socket()).unwrap();
    let bytes = request.to_string().into_bytes();
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let iov = [std::io::IoSlice::new(&bytes)];
    let sent = sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None);
    assert_eq!(sent, Ok(bytes.len()));
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// A shim request for `verb` as `weft-cni` encodes it.
fn shim_request(lab: &Lab, verb: &str, container_id: &str, netns: Option<&str>) -> Value {
    json!({
        "api_version": weft_proto::shim::SHIM_API_VERSION,
        "command": verb,
        "container_id": container_id,
        "netns": netns,
        "ifname": "eth0",
        "config": lab.netconf(0),
    })
}

/// A shim older than the descriptor sends none: weftd opens the path, where it can. Descriptors
/// beyond what a verb carries, or one that is no network namespace, are refused with a clear
/// error, and weftd closes every one of them (a pipe whose read end it held reports EPIPE).
#[test]
fn an_older_shim_still_works_and_stray_descriptors_are_refused_and_closed() {
    let lab = lab(0, &[]);
    let netns = NetnsGuard::create(&format!("{}-old", lab.prefix)).unwrap();
    let cid = format!("{}old", lab.prefix);
    let add = shim_request(&lab, "ADD", &cid, Some(&netns.path()));
    let reply = raw_exchange(&lab, &add, &[]);
    assert_eq!(reply["status"], "success", "{reply}");
    assert_eq!(weft_veths(&lab).len(), 1);
    let before = (allocations(&lab), weft_veths(&lab));

    let pipes: Vec<_> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
    let raw: Vec<_> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
    let other = format!("{}stray", lab.prefix);
    let cases = [
        (
            add.clone(),
            &raw[..2],
            6,
            "carried 2 file descriptors; at most 1",
        ),
        (
            shim_request(&lab, "STATUS", "", None),
            &raw[..1],
            6,
            "a STATUS request carries no",
        ),
        (
            shim_request(&lab, "ADD", &other, Some("/x")),
            &raw[2..],
            4,
            "CNI_NETNS=/x: /x is not a network namespace",
        ),
    ];
    for (request, fds, code, words) in cases {
        let reply = raw_exchange(&lab, &request, fds);
        assert_eq!(reply["error"]["code"], json!(code), "{reply}");
        let msg = reply["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{msg}");
    }
    for (reader, writer) in pipes {
        drop(reader);
        // weftd may close its copies a moment after it replied: poll, up to 2 s.
        let closed = weft_lab::procs::wait_for(Duration::from_secs(2), || {
            (nix::unistd::write(&writer, b"x") == Err(nix::errno::Errno::EPIPE)).then_some(())
        });
        assert!(closed.is_some(), "weftd closed its copy");
    }
    assert_eq!(
        (allocations(&lab), weft_veths(&lab)),
        before,
        "nothing allocated or wired"
    );
    let del = shim_request(&lab, "DEL", &cid, Some(&netns.path()));
    assert_eq!(raw_exchange(&lab, &del, &[])["status"], "success");
}

/// Bad input: a clear CNI error with the right code; nothing allocated, nothing left behind.
#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing_behind() {
    let lab = lab(1, &[]);
    let netns = NetnsGuard::create(&format!("{}-bad", lab.prefix)).unwrap();
    let not_a_netns = lab.dir.join("not-a-netns");
    std::fs::write(&not_a_netns, b"").unwrap();
    let base = lab.netconf(0);
    let with = |key: &str, value: Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let good_ns = netns.path();
    let bad_ns = not_a_netns.display().to_string();
    // A namespace, but not a network one.
    let uts_ns = format!("/proc/{}/ns/uts", std::process::id());
    // (name, config, netns, ifname, expected code, words in msg)
    type Case<'a> = (&'a str, Value, Option<&'a str>, &'a str, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown field",
            with("mtuu", json!(1400)),
            Some(&good_ns),
            "eth0",
            7,
            "mtuu",
        ),
        (
            "wrong type",
            with("mtu", json!("big")),
            Some(&good_ns),
            "eth0",
            7,
            "mtu",
        ),
        (
            "bad cniVersion",
            with("cniVersion", json!("9.9.9")),
            Some(&good_ns),
            "eth0",
            1,
            "9.9.9",
        ),
        ("missing netns", base.clone(), None, "eth0", 4, "CNI_NETNS"),
        (
            "not a netns",
            base.clone(),
            Some(&bad_ns),
            "eth0",
            4,
            "not a network namespace",
        ),
        (
            "UTS namespace",
            base.clone(),
            Some(&uts_ns),
            "eth0",
            4,
            "is not a network namespace",
        ),
        (
            "missing netns path",
            base.clone(),
            Some("/run/netns/does-not-exist"),
            "eth0",
            4,
            "CNI_NETNS=/run/netns/does-not-exist: cannot open",
        ),
        (
            "ifname too long",
            base.clone(),
            Some(&good_ns),
            "eth0-much-too-long",
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname taken",
            base.clone(),
            Some(&good_ns),
            "lo",
            4,
            "already exists",
        ),
    ];
    let allocations_before = allocations(&lab);
    let veths_before = weft_veths(&lab);
    for (name, conf, ns, ifname, code, words) in cases {
        let out = lab.cni("ADD", &format!("{}bad", lab.prefix), ns, ifname, &conf);
        assert!(!out.success, "{name}: should fail");
        assert_eq!(out.code(), Some(code), "{name}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap_or_default().to_string()
            + out.json()["details"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{name}: {msg}");
        assert_eq!(
            allocations(&lab),
            allocations_before,
            "{name}: nothing allocated"
        );
        assert_eq!(
            weft_veths(&lab),
            veths_before,
            "{name}: nothing left behind"
        );
    }
    assert!(
        lab.pods[0]
            .netns
            .ping(&lab.nodes[0].underlay_v4.to_string(), 2),
        "the existing pod is unaffected"
    );
}

/// CHECK needs the pod's namespace as ADD does: a clear error when `CNI_NETNS` is none or does not
/// open. DEL is best effort: a namespace that is gone, or is none, does not make it fail.
#[test]
fn check_needs_the_namespace_and_del_does_not() {
    let lab = lab(1, &[]);
    let base = lab.netconf(0);
    let not_a_netns = lab.dir.join("not-a-netns");
    std::fs::write(&not_a_netns, b"").unwrap();
    let uts_ns = format!("/proc/{}/ns/uts", std::process::id());
    let pod = &lab.pods[0];
    for (ns, words) in [
        (uts_ns.as_str(), "is not a network namespace"),
        (
            "/run/netns/does-not-exist",
            "CNI_NETNS=/run/netns/does-not-exist",
        ),
    ] {
        let out = lab.cni("CHECK", &pod.container_id, Some(ns), "eth0", &base);
        assert_eq!(out.code(), Some(4), "CHECK with {ns}: {}", out.stdout);
        assert!(
            out.stdout.contains(words),
            "CHECK with {ns}: {}",
            out.stdout
        );
    }
    let (allocations_before, veths_before) = (allocations(&lab), weft_veths(&lab));
    let bad_ns = not_a_netns.display().to_string();
    for ns in ["/run/netns/does-not-exist", &uts_ns, &bad_ns] {
        let out = lab.cni(
            "DEL",
            &format!("{}bad", lab.prefix),
            Some(ns),
            "eth0",
            &base,
        );
        assert!(out.success, "DEL with {ns}: {}", out.stdout);
    }
    assert_eq!(allocations(&lab), allocations_before);
    assert_eq!(weft_veths(&lab), veths_before);
    let out = lab.cni(
        "CHECK",
        &pod.container_id,
        Some(&pod.netns.path()),
        "eth0",
        &base,
    );
    assert!(out.success, "the pod is unaffected: {}", out.stdout);
}

#[test]
fn an_exhausted_pod_cidr_is_a_clear_error_and_others_keep_their_addresses() {
    // A /29 per node: six usable IPv4 addresses.
    let mut lab = lab(6, &["--node-prefix-v4", "29"]);
    let before = allocations(&lab);
    let err = lab.add_pod(0).unwrap_err().to_string();
    assert!(
        err.contains("\"code\":100")
            && err.contains("no free address in 10.244.0.0/29: 6 of 6 in use"),
        "{err}"
    );
    assert_eq!(allocations(&lab), before);
    let out = lab.cni("STATUS", "", None, "", &lab.netconf(0));
    assert_eq!(
        out.code(),
        Some(50),
        "STATUS says the plugin cannot serve ADD: {}",
        out.stdout
    );
    assert!(lab.pods[5]
        .netns
        .ping(&lab.pods[0].v4.unwrap().to_string(), 2));
    lab.remove_pod(2);
    lab.add_pod(0).expect("an address is free again");
}

#[test]
fn daemon_killed_during_a_hundred_adds_loses_and_duplicates_nothing() {
    let mut lab = lab(0, &[]);
    let netns: Vec<NetnsGuard> = (0..100)
        .map(|i| NetnsGuard::create(&format!("{}-k{i}", lab.prefix)).unwrap())
        .collect();
    let conf = lab.netconf(0);
    let plugin = weft_lab::procs::bin_path("weft-cni");
    let done = Arc::new(AtomicUsize::new(0));
    let succeeded: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (netns, conf, plugin, done, prefix) =
                    (&netns, &conf, &plugin, done.clone(), lab.prefix.clone());
                scope.spawn(move || {
                    let mut ok = Vec::new();
                    for i in (w..100).step_by(4) {
                        let out = call_plugin(
                            plugin,
                            "ADD",
                            &format!("{prefix}k{i}"),
                            Some(&netns[i].path()),
                            "eth0",
                            conf,
                        );
                        if out.success {
                            ok.push(i);
                        } else {
                            assert_eq!(
                                out.code(),
                                Some(11),
                                "a failed ADD says try again later: {}",
                                out.stdout
                            );
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    ok
                })
            })
            .collect();
        // Bounded: a worker that panicked never counts, and join below reports its panic.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) < 40 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        lab.stop_daemon(0, true); // SIGKILL in the middle
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        succeeded.len() >= 40 && succeeded.len() < 100,
        "{} ADDs succeeded",
        succeeded.len()
    );

    lab.start_daemon(0).unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!(succeeded
        .iter()
        .map(|i| json!({"containerID": format!("{}k{i}", lab.prefix), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let out = lab.cni("GC", "", None, "", &gc);
    assert!(out.success, "GC: {}", out.stdout);

    let held = allocations(&lab);
    let keys: BTreeSet<String> = held.iter().map(|(k, _)| k.clone()).collect();
    let expected: BTreeSet<String> = succeeded
        .iter()
        .map(|i| format!("{}k{i}/eth0", lab.prefix))
        .collect();
    assert_eq!(
        keys, expected,
        "exactly the surviving attachments hold addresses"
    );
    let v4: BTreeSet<String> = held.iter().map(|(_, a)| a["v4"].to_string()).collect();
    let v6: BTreeSet<String> = held.iter().map(|(_, a)| a["v6"].to_string()).collect();
    assert_eq!(
        (v4.len(), v6.len()),
        (held.len(), held.len()),
        "no address handed out twice"
    );
    assert_eq!(
        weft_veths(&lab).len(),
        succeeded.len(),
        "no host-side veth left over"
    );
    // The survivors still work, and a new ADD after the restart gets a fresh address.
    let first = &netns[succeeded[0]];
    assert!(first.ping(&lab.nodes[0].underlay_v4.to_string(), 2));
    let fresh = NetnsGuard::create(&format!("{}-fresh", lab.prefix)).unwrap();
    let out = lab.cni(
        "ADD",
        &format!("{}fresh", lab.prefix),
        Some(&fresh.path()),
        "eth0",
        &conf,
    );
    assert!(out.success, "{}", out.stdout);
    let (v4_new, _) = result_addresses(&out.json());
    assert!(
        !v4.contains(&format!("\"{}\"", v4_new.unwrap())),
        "the new address was not in use"
    );
}

#[test]
fn portmap_chained_after_weft_gets_a_correct_prev_result() {
    let lab = lab(0, &[]);
    let netns = NetnsGuard::create(&format!("{}-web", lab.prefix)).unwrap();
    let cid = format!("{}web", lab.prefix);
    let mut weft_conf = lab.netconf(0);
    weft_conf["cniVersion"] = json!("1.0.0"); // the newest version Debian's portmap speaks
    let added = lab.cni("ADD", &cid, Some(&netns.path()), "eth0", &weft_conf);
    assert!(added.success, "{}", added.stdout);

    // What libcni does for the next plugin of a conflist: the previous result as prevResult.
    let portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": added.json(),
    });
    let portmap = std::path::Path::new("/usr/lib/cni/portmap");
    let node_ns = lab.nodes[0].netns.path();
    let out = call_in_node(&lab, portmap, "ADD", &cid, &netns.path(), &portmap_conf);
    assert!(out.success, "portmap ADD: {} {}", out.stdout, out.stderr);
    assert_eq!(
        out.json()["ips"],
        added.json()["ips"],
        "portmap passes weft's result on"
    );

    let pod_v4 = result_addresses(&added.json()).0.unwrap();
    let listener = netns
        .tcp_listen(SocketAddr::new(IpAddr::V4(pod_v4), 80))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        stream.write_all(b"hello from the pod").unwrap();
        peer
    });
    let node_addr = SocketAddr::new(lab.nodes[0].underlay_v4.into(), 8080);
    let mut client = lab
        .outside
        .tcp_connect(node_addr, Duration::from_secs(3))
        .expect("connect to the host port");
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "hello from the pod");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        "192.0.2.254",
        "the pod sees the outside client's address"
    );

    let del = call_in_node(&lab, portmap, "DEL", &cid, &netns.path(), &portmap_conf);
    assert!(del.success, "portmap DEL: {}", del.stderr);
    assert!(
        lab.cni("DEL", &cid, Some(&netns.path()), "eth0", &weft_conf)
            .success
    );
    let _ = node_ns;
}

/// Run a plugin inside the node's namespace (portmap programs the node's iptables).
fn call_in_node(
    lab: &Lab,
    plugin: &std::path::Path,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
) -> weft_lab::lab::CniOutput {
    call_plugin_in(
        &lab.nodes[0].netns,
        plugin,
        command,
        cid,
        Some(netns),
        "eth0",
        conf,
    )
}

/// Issue "Faults and hostile input", case 4: a node that comes back with other pod CIDRs (its old
/// ones taken by another node meanwhile) names every pod it still holds outside them, one error line
/// each, and fails their CHECK, so the runtime recreates them instead of two pods sharing an address.
#[test]
fn a_node_back_with_other_cidrs_reports_its_old_pods_and_fails_their_check() {
    let mut lab = Lab::up(LabConfig {
        nodes: 1,
        pods_per_node: 1,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let pod_v4 = lab.pods[0].v4.unwrap();
    lab.stop_daemon(0, true);
    // Past its TTL another node took the CIDR: node-1's record now belongs to "newcomer".
    let nodes = lab.dir.join("store").join("nodes");
    let record = std::fs::read_to_string(nodes.join("node-1.json")).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&record).unwrap();
    record["name"] = "newcomer".into();
    record["expires"] = 4_000_000_000u64.into();
    std::fs::write(nodes.join("newcomer.json"), record.to_string()).unwrap();
    std::fs::remove_file(nodes.join("node-1.json")).unwrap();
    lab.start_daemon(0).unwrap();

    let log = lab.nodes[0].log();
    let line = log
        .lines()
        .find(|l| l.contains("outside this node's pod CIDRs") && l.contains(&pod_v4.to_string()))
        .unwrap_or_else(|| panic!("the old pod is named:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    let pod = &lab.pods[0];
    let out = lab.cni(
        "CHECK",
        &pod.container_id,
        Some(&pod.netns.path()),
        "eth0",
        &lab.netconf(0),
    );
    assert!(!out.success, "CHECK must fail: {}", out.stdout);
    assert_eq!(out.code(), Some(101), "{}", out.stdout);
    assert!(
        out.stdout.contains("outside this node's pod CIDRs"),
        "{}",
        out.stdout
    );
    // A new pod gets an address of the node's new CIDR.
    let index = lab.add_pod(0).unwrap();
    let fresh = lab.pods[index].v4.unwrap();
    assert_ne!(
        fresh.octets()[2],
        pod_v4.octets()[2],
        "{fresh} is in the new CIDR"
    );
}

/// Issue "Faults and hostile input", case 6: a second weft interface in one pod keeps its routes
/// to itself: ADD of `eth1` leaves `eth0`'s default routes, DEL of `eth1` leaves `eth0` working.
#[test]
fn a_second_interface_in_a_pod_leaves_the_first_ones_routes_alone() {
    let lab = Lab::up(LabConfig {
        nodes: 1,
        pods_per_node: 2,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (pod, other) = (&lab.pods[0], &lab.pods[1]);
    let conf = lab.netconf(0);
    let call = |command: &str, ifname: &str| {
        lab.cni(
            command,
            &pod.container_id,
            Some(&pod.netns.path()),
            ifname,
            &conf,
        )
    };
    let defaults = |family: &str| {
        pod.netns
            .exec(&["ip", family, "route", "show", "default"])
            .unwrap()
    };
    let before = (defaults("-4"), defaults("-6"));
    let added = call("ADD", "eth1");
    assert!(added.success, "ADD eth1: {}", added.stdout);
    assert_eq!(
        (defaults("-4"), defaults("-6")),
        before,
        "eth0 keeps the default routes"
    );
    assert!(
        call("CHECK", "eth0").success,
        "eth0 passes CHECK beside eth1"
    );
    assert!(call("CHECK", "eth1").success, "and so does eth1");
    let deleted = call("DEL", "eth1");
    assert!(deleted.success, "DEL eth1: {}", deleted.stdout);
    assert_eq!(
        (defaults("-4"), defaults("-6")),
        before,
        "DEL eth1 leaves eth0's routes"
    );
    let check = call("CHECK", "eth0");
    assert!(check.success, "CHECK eth0 after DEL eth1: {}", check.stdout);
    let target = other.v4.unwrap().to_string();
    assert!(pod.netns.ping(&target, 2), "eth0 still carries traffic");
}

/// Issue "Faults and hostile input", case 8: attachments are keyed by network too. A second weft
/// network (another conflist, as Multus sets up) gives a pod `eth1`; a GC of that network, listing
/// only its own attachments, releases nothing of the first network, and a DEL of `eth1` leaves
/// `eth0` as it was.
#[test]
fn gc_and_del_of_one_network_leave_another_networks_pods_alone() {
    let lab = lab(2, &[]);
    let first = lab.netconf(0);
    let mut second = first.clone();
    second["name"] = "second".into();
    let pod = &lab.pods[0];
    let netns = pod.netns.path();
    let added = lab.cni("ADD", &pod.container_id, Some(&netns), "eth1", &second);
    assert!(
        added.success,
        "ADD eth1 on the second network: {}",
        added.stdout
    );
    let before: BTreeSet<String> = allocations(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        before.len(),
        3,
        "two pods on the first network, one interface on the second"
    );

    let mut gc = second.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": pod.container_id, "ifname": "eth1"}]);
    let out = lab.cni("GC", "", None, "", &gc);
    assert!(out.success, "GC: {}", out.stdout);
    let after: BTreeSet<String> = allocations(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        after, before,
        "the second network's GC released nothing of the first"
    );
    assert_eq!(weft_veths(&lab).len(), 3, "and removed no veth");

    // A DEL on the second network of an interface it never had touches nothing.
    let stray = lab.cni("DEL", &lab.pods[1].container_id, None, "eth0", &second);
    assert!(stray.success, "{}", stray.stdout);
    let deleted = lab.cni("DEL", &pod.container_id, Some(&netns), "eth1", &second);
    assert!(deleted.success, "{}", deleted.stdout);
    assert_eq!(allocations(&lab).len(), 2, "only eth1 was released");
    for p in &lab.pods {
        let check = lab.cni(
            "CHECK",
            &p.container_id,
            Some(&p.netns.path()),
            "eth0",
            &first,
        );
        assert!(check.success, "CHECK {}: {}", p.name, check.stdout);
    }
}
