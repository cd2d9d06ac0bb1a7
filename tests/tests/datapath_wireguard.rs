//! weftd's WireGuard driver (`weftd::backend::wireguard::driver::WgDriver`) against a real device,
//! as root, in a network namespace of the test's own (one thread enters it and runs a
//! current-thread tokio runtime there; the namespace is gone when the thread ends):
//!
//! - userspace: `weft-wg` started by the driver, configured over its control socket, which lives
//!   in the host-wide `/var/run/wireguard` under a name unique to the run (the guard removes the
//!   socket, which makes `weft-wg` exit, and kills it);
//! - kernel: a `wireguard` link configured over generic netlink. This needs the kernel module;
//!   without it the test says SKIP with the reason and checks nothing.
//!
//! Each converges a plan from nothing, reads it back equal, lets a fresh driver (a restarted
//! weftd) find nothing to do, and moves a peer and rotates the key with the minimal operations.
//!
//! Run: `cargo test -p weft-lab --test datapath_wireguard`.

use std::net::{IpAddr, Ipv4Addr};

use weft_lab::netns::{in_fresh_netns_async, unique_prefix};
use weft_lab::procs::bin_path;
use weft_proto::lease::{BackendData, Lease, PodCidrs, PublicIps};
use weft_proto::names::{IfName, NodeName};
use weftd::backend::wireguard::driver::WgDriver;
use weftd::backend::wireguard::keys::{Keyring, PrivateKey};
use weftd::backend::wireguard::userspace::Launcher;
use weftd::backend::wireguard::{kernel, Implementation, Op, WgState, WireGuard};
use weftd::backend::{Backend, Driver};
use weftd::plan::admission::Incumbents;
use weftd::plan::{plan, BackendPlan, PlanConfig};

/// Node `i`: pods 10.244.i.0/24 and fd00:10:244:i::/64, underlay 192.0.2.i, its public key.
fn node(i: u8, key: &PrivateKey) -> Lease {
    Lease {
        node: NodeName::new(format!("node-{i}")).unwrap(),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.244.{i}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(Ipv4Addr::new(192, 0, 2, i)),
            v6: None,
        },
        backend: BackendData::WireGuard {
            public_key: key.public_key(),
            port: 51820,
        },
        expires: None,
        machine: None,
    }
}

fn config() -> PlanConfig {
    PlanConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ],
        service_cidrs: Vec::new(),
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: Some(24),
        node_prefix_v6: Some(64),
        direct_routing: None,
    }
}

/// The underlay: a veth pair with 192.0.2.1/24 on `u0`, both ends up.
fn underlay() {
    for line in [
        "ip link add u0 type veth peer name u1",
        "ip addr add 192.0.2.1/24 dev u0",
        "ip link set u0 up",
        "ip link set u1 up",
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        weft_lab::netns::run(&args).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Removes the device's control socket (weft-wg exits within a second of it going) and kills the
/// `weft-wg` still serving it.
struct SocketGuard(String);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &format!("weft-wg {} ", self.0)])
            .status();
    }
}

async fn converge(backend: &WireGuard, driver: &mut WgDriver, desired: &WgState) -> Vec<Op> {
    let observed = driver.observe().await.expect("observe");
    let ops = backend.diff(desired, &observed);
    for op in &ops {
        driver
            .apply(op)
            .await
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    ops
}

/// Converge, read back, restart, move a peer, rotate the key.
async fn scenario(implementation: Implementation, device: &str) {
    underlay();
    let own_key = PrivateKey::generate().unwrap();
    let backend = WireGuard {
        device: IfName::new(device).unwrap(),
        keepalive: None,
        implementation,
        keys: Keyring::with(own_key.clone(), None),
        launcher: Launcher {
            program: bin_path("weft-wg"),
            threads: 1,
            log: std::env::temp_dir().join(format!("{device}.log")),
            spawn: true,
        },
    };
    let own = node(1, &own_key);
    let peer_keys: Vec<PrivateKey> = (0..2).map(|_| PrivateKey::generate().unwrap()).collect();
    let mut peers = vec![node(2, &peer_keys[0]), node(3, &peer_keys[1])];
    let planned = |own: &Lease, peers: &[Lease]| {
        plan(&backend, own, peers, &config(), &Incumbents::default())
            .unwrap()
            .datapath
    };
    let desired = planned(&own, &peers);
    let mut driver = backend.driver(weftd::datapath::netns::connect_here().unwrap(), &[]);
    let ops = converge(&backend, &mut driver, &desired).await;
    assert!(matches!(ops[0], Op::CreateDevice(_)), "{ops:?}");
    assert_eq!(
        driver.observe().await.unwrap(),
        desired,
        "read back as planned"
    );

    let mut restarted = backend.driver(weftd::datapath::netns::connect_here().unwrap(), &[]);
    let again = converge(&backend, &mut restarted, &desired).await;
    assert!(again.is_empty(), "a restart changes nothing: {again:?}");

    peers[0].public_ips.v4 = Some(Ipv4Addr::new(192, 0, 2, 42));
    let moved = converge(&backend, &mut restarted, &planned(&own, &peers)).await;
    let lines: Vec<String> = moved.iter().map(|o| o.to_string()).collect();
    assert_eq!(lines.len(), 2, "remove + add: {lines:?}");
    let observed = restarted.observe().await.unwrap();
    let endpoint = observed.peers[&peer_keys[0].public_key()].endpoint;
    assert_eq!(endpoint.ip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 42)));

    let next = PrivateKey::generate().unwrap();
    backend.keys.insert(next.clone());
    let rotated = node(1, &next);
    let ops = converge(&backend, &mut restarted, &planned(&rotated, &peers)).await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    let device = restarted.observe().await.unwrap().device.unwrap();
    assert_eq!(device.public_key, Some(next.public_key()));
}

#[test]
fn userspace_device_converges_is_adopted_and_changes_per_peer() {
    let device = format!("wgt{}", unique_prefix());
    let _guard = SocketGuard(device.clone());
    in_fresh_netns_async(move || async move {
        scenario(Implementation::Userspace, &device).await;
    });
}

#[test]
fn kernel_device_converges_is_adopted_and_changes_per_peer() {
    in_fresh_netns_async(|| async {
        if let Err(reason) = kernel::supported().await {
            eprintln!("SKIP kernel WireGuard: {reason}");
            return;
        }
        scenario(Implementation::Kernel, "weft.wg").await;
    });
}
