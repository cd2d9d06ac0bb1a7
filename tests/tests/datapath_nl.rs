//! weftd's rtnetlink helpers (`weftd::datapath::nl`: `link_by_name`, `links`, `link_name`,
//! `link_mac`, `link_mtu`, `delete_link`, `main_routes`, `errno`, `is_errno`) against the kernel,
//! as root, in a network namespace of the test's own: one thread enters a new namespace
//! (`unshare(CLONE_NEWNET)`) and runs a current-thread tokio runtime there; `ip`, run as its child,
//! builds links and routes as an operator would. The namespace with everything in it is gone when
//! the thread ends, whether the test passes or panics. Nothing on the host is read or changed.
//!
//! weft-lab does not depend on rtnetlink or netlink-packet-route, so the handle comes from
//! `weftd::datapath::netns::connect_here` and an address family from its number
//! (`AddressFamily: From<u8>`).
//!
//! Run: `cargo test -p weft-lab --test datapath_nl`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use weft_lab::netns::in_fresh_netns_async;

use nix::errno::Errno;
use weftd::datapath::nl;

/// Run `ip ARGS` as the operator would; its standard output.
fn ip(args: &[&str]) -> String {
    weft_lab::netns::ip(args)
}

/// Run `ip` command lines (split on whitespace), one after the other.
fn ip_lines(lines: &[&str]) {
    for line in lines {
        ip(&line.split_whitespace().collect::<Vec<_>>());
    }
}

/// The names `ip -j link show` lists, sorted.
fn ip_link_names() -> BTreeSet<String> {
    let links: serde_json::Value = serde_json::from_str(&ip(&["-j", "link", "show"])).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// A veth pair `r0`–`r1`, up, `r0` holding 192.0.2.1/24 and 2001:db8::1/64, with a route of
/// each family through a gateway on it and one IPv4 route in table 100.
fn routed_veth() {
    ip_lines(&[
        "link add r0 type veth peer name r1",
        "link set r0 up",
        "link set r1 up",
        "addr add 192.0.2.1/24 dev r0",
        "addr add 2001:db8::1/64 dev r0 nodad",
        "route add 198.51.100.0/24 via 192.0.2.254 dev r0",
        "-6 route add 2001:db8:1::/48 via 2001:db8::fe dev r0",
        "route add 203.0.113.0/24 dev r0 table 100",
    ]);
}

#[test]
fn links_are_found_by_name_read_and_deleted() {
    in_fresh_netns_async(|| async {
        let handle = weftd::datapath::netns::connect_here().expect("a netlink connection");
        assert!(nl::link_by_name(&handle, "nope0").await.unwrap().is_none());
        ip_lines(&["link add n0 address 02:00:00:00:aa:01 mtu 1400 type veth peer name n1"]);

        let n0 = nl::link_by_name(&handle, "n0").await.unwrap().expect("n0");
        assert_eq!(nl::link_name(&n0), Some("n0"));
        assert_eq!(nl::link_mac(&n0), Some([0x02, 0, 0, 0, 0xaa, 0x01]));
        assert_eq!(nl::link_mtu(&n0), Some(1400));
        let lo = nl::link_by_name(&handle, "lo").await.unwrap().expect("lo");
        assert_eq!(
            (nl::link_mtu(&lo), nl::link_mac(&lo)),
            (Some(65536), Some([0; 6]))
        );
        let names: BTreeSet<String> = nl::links(&handle)
            .await
            .unwrap()
            .iter()
            .filter_map(nl::link_name)
            .map(str::to_string)
            .collect();
        assert_eq!(names, ip_link_names());
        assert_eq!(names, ["lo", "n0", "n1"].map(String::from).into());

        nl::delete_link(&handle, "nope0")
            .await
            .expect("deleting a missing link is fine");
        nl::delete_link(&handle, "n0").await.expect("delete n0");
        assert_eq!(
            ip_link_names(),
            ["lo".to_string()].into(),
            "its peer went too"
        );
        assert!(nl::link_by_name(&handle, "n1").await.unwrap().is_none());
        nl::delete_link(&handle, "n0")
            .await
            .expect("deleting it again is fine");
    });
}

#[test]
fn main_routes_lists_the_main_table_of_one_family() {
    in_fresh_netns_async(|| async {
        let handle = weftd::datapath::netns::connect_here().expect("a netlink connection");
        routed_veth();
        let r0 = nl::link_by_name(&handle, "r0").await.unwrap().unwrap();
        let index = Some(r0.header.index);
        let ip_of = |s: &str| Some(s.parse::<IpAddr>().unwrap());

        let v4 = nl::main_routes(&handle, (libc::AF_INET as u8).into())
            .await
            .unwrap();
        let seen: BTreeSet<(String, Option<IpAddr>)> =
            v4.iter().map(|r| (r.dst.to_string(), r.gateway)).collect();
        let expected: BTreeSet<_> = [
            ("192.0.2.0/24".to_string(), None),
            ("198.51.100.0/24".to_string(), ip_of("192.0.2.254")),
        ]
        .into();
        assert_eq!(
            seen, expected,
            "no local-table route, nothing from table 100"
        );
        assert!(v4.iter().all(|r| r.oif == index), "{v4:?}");

        let v6 = nl::main_routes(&handle, (libc::AF_INET6 as u8).into())
            .await
            .unwrap();
        assert!(v6.iter().all(|r| r.dst.addr().is_ipv6()), "{v6:?}");
        let routed: Vec<_> = v6
            .iter()
            .filter(|r| r.dst.to_string() == "2001:db8:1::/48")
            .map(|r| (r.gateway, r.oif))
            .collect();
        assert_eq!(routed, [(ip_of("2001:db8::fe"), index)]);
        assert!(v6.iter().any(|r| r.dst.to_string() == "2001:db8::/64"));

        // An operator deletes the route: the next dump no longer has it.
        ip(&["route", "del", "198.51.100.0/24"]);
        let v4 = nl::main_routes(&handle, (libc::AF_INET as u8).into())
            .await
            .unwrap();
        let dsts: Vec<String> = v4.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["192.0.2.0/24"]);
    });
}

#[test]
fn kernel_refusals_are_told_apart_by_errno() {
    in_fresh_netns_async(|| async {
        let handle = weftd::datapath::netns::connect_here().expect("a netlink connection");
        routed_veth();

        // Deleting a link index that does not exist: ENODEV.
        let err = handle.link().del(0x7fff_0000).execute().await.unwrap_err();
        assert_eq!(nl::errno(&err), Some(Errno::ENODEV), "{err}");
        assert!(nl::is_errno(&err, &[Errno::EEXIST, Errno::ENODEV]));
        assert!(!nl::is_errno(&err, &[Errno::EEXIST, Errno::ENOENT]));

        // Adding a route that is there (the message as dumped): EEXIST; deleting it twice: the
        // second is ESRCH.
        let route = nl::main_routes(&handle, (libc::AF_INET as u8).into())
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.dst.to_string() == "198.51.100.0/24")
            .expect("the route to 198.51.100.0/24");
        let err = handle
            .route()
            .add(route.message.clone())
            .execute()
            .await
            .unwrap_err();
        assert!(nl::is_errno(&err, &[Errno::EEXIST]), "{err}");
        handle
            .route()
            .del(route.message.clone())
            .execute()
            .await
            .unwrap();
        let err = handle
            .route()
            .del(route.message)
            .execute()
            .await
            .unwrap_err();
        assert_eq!(nl::errno(&err), Some(Errno::ESRCH), "{err}");
        assert!(ip(&["route", "show", "198.51.100.0/24"]).trim().is_empty());
    });
}
