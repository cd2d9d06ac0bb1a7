//! weftd's namespace handles (`weftd::datapath::netns`: `Netns::open`, `connect` with sysctls,
//! `run`) against the kernel, as root. Each test works on a thread that entered a fresh network
//! namespace of its own (`unshare(CLONE_NEWNET)`, gone with the thread, even on panic) with a
//! current-thread tokio runtime there; the namespace weftd opens is a named one
//! (`/run/netns/<unique>-ns`) whose guard deletes it on drop. `ip netns exec … sysctl` and `ip`
//! check from outside what weftd did inside. Nothing on the host is read or changed.
//!
//! Run: `cargo test -p weft-lab --test datapath_netns`.

use std::io::Write;
use std::path::Path;
use weft_lab::netns::in_fresh_netns_async;

use weft_lab::netns::{unique_prefix, NetnsGuard};
use weftd::datapath::netns::{Netns, NetnsError};
use weftd::datapath::nl;

fn named_netns() -> NetnsGuard {
    NetnsGuard::create(&format!("{}-ns", unique_prefix())).unwrap_or_else(|e| panic!("{e}"))
}

/// `sysctl -n KEY` inside `ns`, trimmed.
fn sysctl(ns: &NetnsGuard, key: &str) -> String {
    let out = ns
        .exec(&["sysctl", "-n", key])
        .unwrap_or_else(|e| panic!("{e}"));
    out.trim().to_string()
}

#[test]
fn connect_writes_sysctls_and_its_socket_lives_in_the_namespace() {
    in_fresh_netns_async(|| async {
        let guard = named_netns();
        let ns = Netns::open(Path::new(&guard.path())).expect("open a named namespace");
        assert_eq!(ns.path(), Path::new(&guard.path()));
        assert_eq!(sysctl(&guard, "net.ipv4.ip_forward"), "0");
        assert_eq!(sysctl(&guard, "net.ipv6.conf.all.forwarding"), "0");

        let handle = ns
            .connect(&[
                ("/proc/sys/net/ipv4/ip_forward", "1"),
                ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
            ])
            .await
            .expect("connect with sysctls");
        assert_eq!(sysctl(&guard, "net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl(&guard, "net.ipv6.conf.all.forwarding"), "1");
        let here = weft_lab::netns::run(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
        assert_eq!(here.trim(), "0", "the test's own namespace is untouched");

        // A link made there by `ip` is seen through the handle, not from the test's namespace.
        guard
            .exec(&[
                "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let there = nl::link_by_name(&handle, "p0").await.unwrap();
        assert_eq!(there.as_ref().and_then(nl::link_name), Some("p0"));
        let here = weftd::datapath::netns::connect_here().unwrap();
        assert!(nl::link_by_name(&here, "p0").await.unwrap().is_none());

        // `run` works in the namespace too, and hands back what the work returned.
        let forwarding = ns
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
            .await
            .expect("run in the namespace");
        assert_eq!(forwarding, "1\n");
    });
}

#[test]
fn a_sysctl_that_cannot_be_written_is_named_in_the_error() {
    in_fresh_netns_async(|| async {
        let guard = named_netns();
        let ns = Netns::open(Path::new(&guard.path())).unwrap();
        let key = "/proc/sys/net/ipv4/conf/no-such-link/forwarding";
        let err = ns.connect(&[(key, "1")]).await.expect_err("no such sysctl");
        assert!(matches!(err, NetnsError::Enter { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&guard.path()) && message.contains(key),
            "the namespace and the key are named: {message}"
        );
    });
}

#[test]
fn opening_what_is_not_a_network_namespace_says_so() {
    in_fresh_netns_async(|| async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-netns");
        std::fs::File::create(&file)
            .and_then(|mut f| f.write_all(b"x"))
            .unwrap();
        let err = Netns::open(&file).err().expect("a plain file is refused");
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} is not a network namespace", file.display())
        );

        let missing = dir.path().join("missing");
        let err = Netns::open(&missing)
            .err()
            .expect("a missing path is refused");
        assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("network namespace {}: ", missing.display()))
                && message.contains("No such file or directory"),
            "{message}"
        );

        // Another kind of namespace is refused by `open`, not later when entered.
        let uts = Path::new("/proc/thread-self/ns/uts");
        let err = Netns::open(uts).err().expect("a UTS namespace is refused");
        assert!(
            matches!(
                err,
                NetnsError::NotANetns {
                    found: Some("uts"),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "/proc/thread-self/ns/uts is not a network namespace but a uts namespace"
        );
    });
}

/// A descriptor someone else opened (the CNI shim): taken when it is a network namespace, under
/// the label it came with; refused, and closed, when it is anything else.
#[test]
fn a_namespace_descriptor_is_checked_and_labelled() {
    use std::os::fd::OwnedFd;
    in_fresh_netns_async(|| async {
        let guard = named_netns();
        let fd = OwnedFd::from(std::fs::File::open(guard.path()).unwrap());
        let ns = Netns::from_fd(fd, "/var/run/netns/as-the-runtime-says").expect("a namespace");
        assert_eq!(ns.path(), Path::new("/var/run/netns/as-the-runtime-says"));
        guard
            .exec(&[
                "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let handle = ns.connect(&[]).await.expect("enter through the descriptor");
        assert!(nl::link_by_name(&handle, "p0").await.unwrap().is_some());

        let dir = tempfile::tempdir().unwrap();
        let plain = std::fs::File::create(dir.path().join("plain")).unwrap();
        let uts = std::fs::File::open("/proc/thread-self/ns/uts").unwrap();
        let mnt = std::fs::File::open("/proc/thread-self/ns/mnt").unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let cases = [
            (OwnedFd::from(plain), None),
            (OwnedFd::from(uts), Some("uts")),
            (OwnedFd::from(mnt), Some("mnt")),
            (reader, None),
        ];
        for (fd, found) in cases {
            let err = Netns::from_fd(fd, "label").err().expect("refused");
            assert!(
                matches!(&err, NetnsError::NotANetns { found: f, .. } if *f == found),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("label is not a network namespace"),
                "{err}"
            );
        }
        // The refused descriptors were closed: the pipe has no reader left.
        let write = nix::unistd::write(&writer, b"x");
        assert_eq!(
            write,
            Err(nix::errno::Errno::EPIPE),
            "the read end was closed"
        );
    });
}
