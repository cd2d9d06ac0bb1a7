//! The WireGuard plan: identity claims, desired state, diff and the peer-change model.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use weft_proto::lease::{
    Backend as BackendKind, BackendData, Lease, PodCidrs, PublicIps, WgPublicKey,
};
use weft_proto::names::{IfName, NodeName};

use super::keys::{Keyring, PrivateKey};
use super::uapi::{self, add_peer_body, parse_get};
use super::userspace::Launcher;
use super::*;
use crate::plan::admission::Incumbents;
use crate::plan::model::{big_config, converge, run_model, underlay_v4, Change, ModelSubject};
use crate::plan::{plan, BackendPlan};

fn key(serial: u32) -> WgPublicKey {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&serial.to_be_bytes());
    bytes[31] = 1;
    WgPublicKey(bytes)
}

fn backend() -> WireGuard {
    WireGuard {
        device: IfName::new(DEFAULT_DEVICE).unwrap(),
        keepalive: None,
        implementation: Implementation::Userspace,
        keys: Keyring::default(),
        launcher: Launcher {
            program: "weft-wg".into(),
            threads: 1,
            log: "/dev/null".into(),
            spawn: true,
        },
    }
}

fn node(k: u32, ip: u32, serial: u32) -> Lease {
    let [_, hi, lo, _] = (k << 8).to_be_bytes();
    Lease {
        node: NodeName::new(format!("node-{k}")).unwrap(),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.{hi}.{lo}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:10:0:{k:x}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(underlay_v4(ip)),
            v6: None,
        },
        backend: BackendData::WireGuard {
            public_key: key(serial),
            port: DEFAULT_PORT,
        },
        expires: None,
        machine: None,
    }
}

impl ModelSubject for WireGuard {
    fn peer(&self, k: u32, ip: u32, serial: u32) -> Lease {
        node(k, ip, serial)
    }

    fn new_identity(&self, lease: &mut Lease, serial: u32) {
        lease.backend = BackendData::WireGuard {
            public_key: key(serial + 1_000_000),
            port: DEFAULT_PORT,
        };
    }

    /// Join: the peer and a route per pod CIDR; leave: the same removed; a moved endpoint or a
    /// new key: the peer removed and added (boringtun cannot modify a peer in place).
    fn expected_ops(&self, change: Change, families: usize) -> usize {
        if families == 0 {
            return 0;
        }
        match change {
            Change::Join | Change::Leave => 1 + families,
            Change::Move | Change::NewIdentity => 2,
        }
    }

    /// The device and its two addresses.
    fn expected_start_ops(&self) -> usize {
        3
    }
}

#[test]
fn model_random_peer_changes_converge_with_few_operations() {
    run_model(&backend(), 500);
}

#[test]
fn a_peer_is_its_pod_cidrs_at_its_endpoint_with_a_route_each() {
    let own = node(1, 1, 1);
    let peer = node(2, 2, 2);
    let planned = plan(
        &backend(),
        &own,
        [&peer],
        &big_config(),
        &Incumbents::default(),
    )
    .unwrap();
    let state = planned.datapath;
    let device = state.device.as_ref().unwrap();
    assert_eq!(device.mtu, 1500 - 60);
    assert_eq!(device.public_key, Some(key(1)));
    assert_eq!(device.port, 51820);
    let wg_peer = &state.peers[&key(2)];
    assert_eq!(
        wg_peer.endpoint,
        SocketAddr::new(IpAddr::V4(underlay_v4(2)), 51820)
    );
    let cidrs: Vec<_> = peer.pod_cidrs.iter().collect();
    assert_eq!(
        wg_peer.allowed_ips.iter().copied().collect::<Vec<_>>(),
        cidrs
    );
    assert_eq!(state.routes.iter().copied().collect::<Vec<_>>(), cidrs);
    let addresses: Vec<String> = state.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addresses, ["10.0.1.0/32", "fd00:10:0:1::/128"]);
}

#[test]
fn ipv6_endpoints_cost_80_bytes() {
    let mut own = node(1, 1, 1);
    own.public_ips = PublicIps {
        v4: None,
        v6: Some(Ipv6Addr::LOCALHOST),
    };
    assert_eq!(backend().pod_mtu(&own, &big_config()), 1500 - 80);
}

#[test]
fn hostile_keys_are_refused_and_the_honest_peer_kept() {
    let own = node(1, 1, 1);
    let honest = node(2, 2, 2);
    let mut own_key = node(3, 3, 1);
    own_key.node = NodeName::new("copies-own-key").unwrap();
    let mut zero = node(4, 4, 4);
    zero.backend = BackendData::WireGuard {
        public_key: WgPublicKey([0; 32]),
        port: DEFAULT_PORT,
    };
    let mut overlap = node(5, 5, 5);
    overlap.pod_cidrs.v4 = honest.pod_cidrs.v4;
    let wg = backend();
    let first = plan(&wg, &own, [&honest], &big_config(), &Incumbents::default()).unwrap();
    let peers = [&honest, &own_key, &zero, &overlap];
    let second = plan(&wg, &own, peers, &big_config(), &first.accepted).unwrap();
    let refused: Vec<(String, String)> = second
        .refused
        .iter()
        .map(|r| (r.node.to_string(), r.reason.clone()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[0].1.contains("this node's own"), "{refused:?}");
    assert!(refused[1].1.contains("all zeros"), "{refused:?}");
    assert!(refused[2].1.contains("10.0.2.0/24"), "{refused:?}");
    assert_eq!(
        second.datapath, first.datapath,
        "the honest peer is unaffected"
    );
}

#[test]
fn two_peers_with_one_key_are_both_refused_at_start() {
    let own = node(1, 1, 1);
    let a = node(2, 2, 7);
    let b = node(3, 3, 7);
    let planned = plan(
        &backend(),
        &own,
        [&a, &b],
        &big_config(),
        &Incumbents::default(),
    )
    .unwrap();
    assert!(planned.datapath.peers.is_empty());
    assert_eq!(planned.refused.len(), 2);
}

#[test]
fn a_vxlan_node_is_refused_and_a_vxlan_own_lease_is_an_error() {
    let own = node(1, 1, 1);
    let mut vxlan = node(2, 2, 2);
    vxlan.backend = BackendData::Vxlan {
        vtep_mac: None,
        vtep_mac_v6: None,
    };
    let wg = backend();
    let planned = plan(&wg, &own, [&vxlan], &big_config(), &Incumbents::default()).unwrap();
    assert_eq!(planned.refused.len(), 1);
    assert!(plan(&wg, &vxlan, [&own], &big_config(), &Incumbents::default()).is_err());
    assert_eq!(wg.backend(), BackendKind::WireGuard);
}

#[test]
fn a_restart_over_a_programmed_device_changes_nothing() {
    let own = node(1, 1, 1);
    let peers: Vec<Lease> = (2..40).map(|k| node(k, k, k)).collect();
    let wg = backend();
    let desired = plan(&wg, &own, &peers, &big_config(), &Incumbents::default())
        .unwrap()
        .datapath;
    let mut kernel = WgState::default();
    converge(&wg, &desired, &mut kernel);
    assert!(wg.diff(&desired, &kernel).is_empty());
}

#[test]
fn a_rotated_key_removes_the_old_peer_before_adding_the_new() {
    let own = node(1, 1, 1);
    let before = node(2, 2, 2);
    let mut after = before.clone();
    wg_set_key(&mut after, 99);
    let wg = backend();
    let old = plan(&wg, &own, [&before], &big_config(), &Incumbents::default()).unwrap();
    let new = plan(&wg, &own, [&after], &big_config(), &old.accepted).unwrap();
    let ops = wg.diff(&new.datapath, &old.datapath);
    let lines: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with("remove"), "{lines:?}");
    assert!(lines[1].contains(&key(99).to_string()), "{lines:?}");
}

fn wg_set_key(lease: &mut Lease, serial: u32) {
    lease.backend = BackendData::WireGuard {
        public_key: key(serial),
        port: DEFAULT_PORT,
    };
}

#[test]
fn a_get_reply_parses_into_key_port_and_peers() {
    let private = PrivateKey::from_bytes([7; 32]);
    let peer = key(2);
    let reply = format!(
        "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\nendpoint=192.0.2.2:51820\n\
         allowed_ip=10.0.2.0/24\nallowed_ip=fd00:10:0:2::/64\npersistent_keepalive_interval=0\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20",
        private.hex(),
        uapi::hex(&peer.0),
        "0".repeat(64)
    );
    let lines: Vec<String> = reply.lines().map(String::from).collect();
    let device = parse_get(&lines).unwrap();
    assert_eq!(device.public_key, Some(private.public_key()));
    assert_eq!(device.listen_port, 51820);
    let p = &device.peers[0];
    assert_eq!(p.public_key, peer);
    assert_eq!(
        p.endpoint,
        Some(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 51820)))
    );
    assert_eq!(p.allowed_ips.len(), 2);
    assert_eq!(p.keepalive, None);
    assert_eq!(p.last_handshake.unwrap().as_secs(), 1_700_000_000);
    assert_eq!((p.rx_bytes, p.tx_bytes), (10, 20));
    let bad = vec!["public_key=xyz".to_string()];
    assert_eq!(parse_get(&bad), Err("public_key=xyz".to_string()));
}

#[test]
fn an_added_peer_replaces_its_allowed_ips() {
    let peer = WgPeer {
        endpoint: "[2001:db8::2]:51820".parse().unwrap(),
        allowed_ips: ["10.0.2.0/24".parse().unwrap()].into(),
        keepalive: Some(25),
    };
    let body = add_peer_body(&key(2), &peer);
    assert!(body.contains("endpoint=[2001:db8::2]:51820\n"), "{body}");
    assert!(
        body.contains("persistent_keepalive_interval=25\n"),
        "{body}"
    );
    assert!(
        body.ends_with("replace_allowed_ips=true\nallowed_ip=10.0.2.0/24\n"),
        "{body}"
    );
}

#[test]
fn the_public_key_matches_wireguard_tools() {
    // `echo <private> | wg pubkey` for the RFC 7748 §6.1 Alice key, base64.
    let private = PrivateKey::from_bytes(
        uapi::unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap(),
    );
    assert_eq!(
        uapi::hex(&private.public_key().0),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
}

#[test]
fn a_key_file_is_made_once_with_mode_0600_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wireguard.key");
    let made = keys::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(keys::load_or_create(&path).unwrap(), made);
    std::fs::write(&path, "not a key\n").unwrap();
    let error = keys::load_or_create(&path).unwrap_err().to_string();
    assert!(error.contains("not a WireGuard private key"), "{error}");
    assert!(
        !format!("{made:?}").contains(&made.hex()),
        "Debug never shows the key"
    );
}

mod kernel_messages {
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;
    use netlink_packet_wireguard::{
        WireguardAttribute, WireguardCmd, WireguardMessage, WireguardPeerAttribute,
        WireguardPeerFlags,
    };

    use super::super::kernel::{device_info, peer_to_add, peer_to_remove, set_message};
    use super::*;

    /// Emitted as the kernel would receive it, then parsed back.
    fn round_trip(message: &WireguardMessage) -> WireguardMessage {
        let mut buffer = vec![0; message.buffer_len()];
        message.emit(&mut buffer);
        let header = GenlHeader {
            cmd: u8::from(message.cmd),
            version: 1,
        };
        WireguardMessage::parse_with_param(&buffer[..], header).unwrap()
    }

    #[test]
    fn an_added_peer_replaces_its_allowed_ips_and_a_removed_one_says_remove_me() {
        let peer = WgPeer {
            endpoint: "192.0.2.2:51820".parse().unwrap(),
            allowed_ips: [
                "10.0.2.0/24".parse().unwrap(),
                "fd00:10:0:2::/64".parse().unwrap(),
            ]
            .into(),
            keepalive: Some(25),
        };
        let add = set_message(
            "weft.wg",
            vec![WireguardAttribute::Peers(vec![peer_to_add(&key(2), &peer)])],
        );
        let parsed = round_trip(&add);
        assert_eq!(parsed.cmd, WireguardCmd::SetDevice);
        assert_eq!(
            parsed.attributes[0],
            WireguardAttribute::IfName("weft.wg".into())
        );
        let WireguardAttribute::Peers(peers) = &parsed.attributes[1] else {
            panic!("{parsed:?}");
        };
        assert!(peers[0].0.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        // The kernel's own reply format: the same attributes read back into the device.
        let reply = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Peers(peers.clone()),
            ],
        };
        let device = device_info(&[round_trip(&reply)]);
        assert_eq!(device.listen_port, 51820);
        let info = &device.peers[0];
        assert_eq!(info.public_key, key(2));
        assert_eq!(info.endpoint, Some(peer.endpoint));
        assert_eq!(
            info.allowed_ips.iter().copied().collect::<BTreeSet<_>>(),
            peer.allowed_ips
        );
        assert_eq!(info.keepalive, Some(25));

        let remove = peer_to_remove(&key(2));
        assert!(remove
            .0
            .contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)));
        assert_eq!(remove.0.len(), 2, "nothing but the key and the flag");
    }

    #[test]
    fn the_kernel_is_chosen_only_where_it_speaks_wireguard() {
        use crate::config::WgImplChoice;
        let missing = || Err("no module".to_string());
        assert_eq!(
            choose(WgImplChoice::Auto, Ok(())).unwrap().0,
            Implementation::Kernel
        );
        let (implementation, reason) = choose(WgImplChoice::Auto, missing()).unwrap();
        assert_eq!(
            (implementation, reason.as_str()),
            (Implementation::Userspace, "no module")
        );
        assert!(choose(WgImplChoice::Kernel, missing())
            .unwrap_err()
            .to_string()
            .contains("no module"));
        assert_eq!(
            choose(WgImplChoice::Userspace, Ok(())).unwrap().0,
            Implementation::Userspace
        );
    }
}
