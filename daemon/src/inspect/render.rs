//! What `weftd status` and `weftd peers` print: a [`Snapshot`] as plain text, pure (no I/O).
//!
//! [`status`] is a summary in the manner of `kubectl describe` (one `Label:  value` per line);
//! [`peers`] is a table in the manner of `kubectl get` (columns aligned with spaces, one row per
//! peer, then the refused peers). Both take `now` (Unix seconds) and show times relative to it
//! with [`duration`] and [`age`], which [`super::graph`] reuses with the small formatters here
//! ([`rtt`], [`endpoint`], [`cidrs`], [`one_line`]).
//!
//! Everything the snapshot carries from outside (node names, reasons, the store line) goes
//! through [`one_line`] first, so a name with a newline or a terminal escape cannot break a row
//! or reach the terminal.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::snapshot::{HealthState, IpamView, PeerView, PoolUse, RefusedView, Snapshot};

/// A duration of `secs` seconds, short and rounded down to its largest unit: `5s`, `3m`, `2h`,
/// `4d`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// How long before `now` the Unix second `then` was, as a [`duration`]; `0s` when `then` is
/// after `now` (clocks of different machines).
pub fn age(then: u64, now: u64) -> String {
    duration(now.saturating_sub(then))
}

/// A round-trip time of `us` microseconds in milliseconds with two decimals: `0.21 ms`.
pub fn rtt(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// A tunnel endpoint: `ip`, or `ip:port` when the backend has a port per peer (`[ip]:port` for
/// IPv6).
pub fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => SocketAddr::new(ip, port).to_string(),
        None => ip.to_string(),
    }
}

/// Pod CIDRs comma-joined (`10.244.1.0/24, fd00:10:244:1::/64`), `-` when there are none.
pub fn cidrs(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "-".to_string();
    }
    nets.iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` on one line and free of control characters: each one (newline, ESC, ...) is written as
/// its Rust escape (`\n`, `\u{1b}`), everything else is kept.
pub fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `weftd status`: the daemon as `Label:  value` lines (node, version, store, backend, lease or
/// what it waits for, underlay, MTUs, whether the datapath is programmed, IPAM use, peer counts),
/// then the refused peers with their reasons, one per line. Times are relative to `now` (Unix
/// seconds). Ends with a newline.
pub fn status(s: &Snapshot, now: u64) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("Node", one_line(&s.node)),
        ("Version", one_line(&s.version)),
        ("Store", one_line(&s.store)),
        ("Backend", backend(s)),
        ("Lease", lease(s, now)),
        ("Underlay", underlay_addresses(s)),
        ("Interface", underlay_interface(s)),
        ("Pod MTU", optional(s.pod_mtu)),
        (
            "Programmed",
            if s.programmed { "yes" } else { "no" }.to_string(),
        ),
    ];
    rows.extend(ipam(s.ipam.as_ref()));
    rows.push(("Peers", peer_counts(s)));
    for (i, refused) in s.refused.iter().enumerate() {
        let label = if i == 0 { "Refused" } else { "" };
        rows.push((label, refused_line(refused)));
    }
    fields(&rows)
}

/// The backend and, where it has a choice, how it runs: `wireguard (kernel)`.
fn backend(s: &Snapshot) -> String {
    match &s.backend_impl {
        Some(how) => format!("{} ({})", one_line(&s.backend), one_line(how)),
        None => one_line(&s.backend),
    }
}

/// The lease's pod CIDRs and its times, or that there is none and why.
fn lease(s: &Snapshot, now: u64) -> String {
    let Some(lease) = &s.lease else {
        return match &s.waiting {
            Some(why) => format!("none, waiting: {}", one_line(why)),
            None => "none".to_string(),
        };
    };
    let expiry = if lease.expires_at >= now {
        format!("expires in {}", duration(lease.expires_at - now))
    } else {
        format!("expired {} ago", age(lease.expires_at, now))
    };
    format!(
        "{} (renewed {} ago, {expiry})",
        cidrs(&lease.pod_cidrs),
        age(lease.renewed_at, now)
    )
}

/// The published underlay addresses, IPv4 first: `192.168.1.10, fd00::10`, `none`.
fn underlay_addresses(s: &Snapshot) -> String {
    let addrs: Vec<String> = [s.underlay.v4, s.underlay.v6]
        .into_iter()
        .flatten()
        .map(|ip| ip.to_string())
        .collect();
    if addrs.is_empty() {
        return "none".to_string();
    }
    addrs.join(", ")
}

/// The underlay interface and its MTU: `eth0 (MTU 1500)`.
fn underlay_interface(s: &Snapshot) -> String {
    let name = s.underlay.interface.as_deref().map_or("-".into(), one_line);
    match s.underlay.mtu {
        Some(mtu) => format!("{name} (MTU {mtu})"),
        None => name,
    }
}

/// A value, or `-` while it is not known.
fn optional(value: Option<u32>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

/// A pool's size: as it is up to 2^32, then as a power of two (an IPv6 /64 holds 2^64 − 1).
pub fn capacity(usable: u64) -> String {
    match usable {
        0..=0xffff_ffff => usable.to_string(),
        _ => format!("~2^{}", 64 - usable.leading_zeros()),
    }
}

/// One row per address family IPAM serves: `IPAM v4:  3 of 253 in use`.
fn ipam(view: Option<&IpamView>) -> Vec<(&'static str, String)> {
    let Some(view) = view else {
        return vec![("IPAM", "off (no CNI service)".to_string())];
    };
    let pool = |p: &PoolUse| format!("{} of {} in use", p.in_use, capacity(p.capacity));
    let mut rows = Vec::new();
    if let Some(v4) = &view.v4 {
        rows.push(("IPAM v4", pool(v4)));
    }
    if let Some(v6) = &view.v6 {
        rows.push(("IPAM v6", pool(v6)));
    }
    if rows.is_empty() {
        rows.push(("IPAM", "no pools".to_string()));
    }
    rows
}

/// How many peers, by health, and how many refused: `3 (1 up, 1 down, 1 unknown), 1 refused`.
fn peer_counts(s: &Snapshot) -> String {
    let count = |state| s.peers.iter().filter(|p| p.health.state == state).count();
    format!(
        "{} ({} up, {} down, {} unknown), {} refused",
        s.peers.len(),
        count(HealthState::Up),
        count(HealthState::Down),
        count(HealthState::Unknown),
        s.refused.len()
    )
}

/// A refused peer as `node: reason`.
fn refused_line(r: &RefusedView) -> String {
    format!("{}: {}", one_line(&r.node), one_line(&r.reason))
}

/// `Label:  value` lines, the values aligned; an empty label continues the line above.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 3;
    let mut out = String::new();
    for (label, value) in rows {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("{label}:")
        };
        out.push_str(format!("{label:<width$}{value}").trim_end());
        out.push('\n');
    }
    out
}

/// `weftd peers`: one row per peer (NODE, POD CIDRS, ENDPOINT, HEALTH, RTT, SINCE, and
/// HANDSHAKE when any peer is a WireGuard peer), columns aligned with spaces, then one
/// `REFUSED  node  reason` line per refused peer. Times are relative to `now` (Unix seconds). An
/// empty mesh is one line saying so. Ends with a newline.
pub fn peers(s: &Snapshot, now: u64) -> String {
    let mut out = if s.peers.is_empty() {
        "No peers.\n".to_string()
    } else {
        let wireguard = s.peers.iter().any(|p| p.wireguard.is_some());
        let mut header = vec!["NODE", "POD CIDRS", "ENDPOINT", "HEALTH", "RTT", "SINCE"];
        if wireguard {
            header.push("HANDSHAKE");
        }
        let mut rows = vec![header.into_iter().map(String::from).collect()];
        rows.extend(s.peers.iter().map(|p| peer_row(p, now, wireguard)));
        table(&rows)
    };
    if !s.refused.is_empty() {
        let rows: Vec<Vec<String>> = s
            .refused
            .iter()
            .map(|r| vec!["REFUSED".into(), one_line(&r.node), one_line(&r.reason)])
            .collect();
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

/// One peer's cells, in the order of the header of [`peers`].
fn peer_row(p: &PeerView, now: u64, wireguard: bool) -> Vec<String> {
    let mut row = vec![
        one_line(&p.node),
        cidrs(&p.pod_cidrs),
        endpoint(p.endpoint, p.port),
        p.health.state.to_string(),
        p.health.rtt_us.map_or("-".into(), rtt),
        p.health.since.map_or("-".into(), |t| age(t, now)),
    ];
    if wireguard {
        row.push(match &p.wireguard {
            None => "-".to_string(),
            Some(wg) => wg
                .latest_handshake
                .map_or("never".into(), |t| format!("{} ago", age(t, now))),
        });
    }
    row
}

/// Rows of cells as lines, each column as wide as its widest cell (in characters) plus two
/// spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let cells = rows.iter().filter_map(|r| r.get(c));
            cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            let pad = width - cell.chars().count() + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inspect::snapshot::{Health, LeaseView, UnderlayView, WireGuardPeerView};

    /// When [`snapshot`] was taken, in Unix seconds.
    pub(crate) const NOW: u64 = 1_700_000_000;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn peer(node: &str, cidr: &str, endpoint: &str, state: HealthState) -> PeerView {
        PeerView {
            node: node.to_string(),
            pod_cidrs: vec![net(cidr)],
            endpoint: endpoint.parse().unwrap(),
            port: None,
            health: Health {
                state,
                since: Some(NOW - 300),
                ..Health::default()
            },
            wireguard: None,
        }
    }

    /// The peers of [`snapshot`]: up with an RTT and a handshake, down, unknown and never shaken
    /// hands, up over IPv6 with a slow RTT.
    fn mesh() -> Vec<PeerView> {
        let mut up = peer("node-b", "10.244.2.0/24", "192.168.1.11", HealthState::Up);
        up.port = Some(51820);
        up.health.rtt_us = Some(210);
        up.health.last_reply = Some(NOW - 1);
        up.wireguard = Some(WireGuardPeerView {
            public_key: "bbbb".into(),
            latest_handshake: Some(NOW - 42),
            ..WireGuardPeerView::default()
        });
        let mut down = peer("node-c", "10.244.3.0/24", "192.168.1.12", HealthState::Down);
        down.health.since = Some(NOW - 7_200);
        down.health.last_reply = Some(NOW - 7_300);
        let mut unknown = peer(
            "node-d",
            "10.244.4.0/24",
            "192.168.1.13",
            HealthState::Unknown,
        );
        unknown.health.since = None;
        unknown.wireguard = Some(WireGuardPeerView::default());
        let mut v6 = peer("node-e", "10.244.5.0/24", "fd00::15", HealthState::Up);
        v6.pod_cidrs.push(net("fd00:10:244:5::/64"));
        v6.port = Some(51820);
        v6.health.rtt_us = Some(1_234_567);
        vec![up, down, unknown, v6]
    }

    /// A dual-stack WireGuard node with four peers (up with an RTT and a handshake, down,
    /// unknown and never shaken hands, up over IPv6) and one refused with a hostile name and
    /// reason.
    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            node: "node-a".into(),
            version: "0.1.0".into(),
            taken_at: NOW,
            store: "file /var/lib/weft/store".into(),
            backend: "wireguard".into(),
            backend_impl: Some("kernel".into()),
            lease: Some(LeaseView {
                pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
                renewed_at: NOW - 12,
                expires_at: NOW + 48,
            }),
            waiting: None,
            underlay: UnderlayView {
                v4: Some("192.168.1.10".parse().unwrap()),
                v6: Some("fd00::10".parse().unwrap()),
                interface: Some("eth0".into()),
                mtu: Some(1500),
            },
            pod_mtu: Some(1420),
            programmed: true,
            peers: mesh(),
            refused: vec![RefusedView {
                node: "evil\"><script>alert('x')</script>".into(),
                reason: "pod CIDR 10.244.2.0/24 \"overlaps\" node-b's & \\ <b>\nline two".into(),
                endpoint: Some("192.0.2.66".parse().unwrap()),
            }],
            ipam: Some(IpamView {
                v4: Some(PoolUse {
                    in_use: 3,
                    capacity: 253,
                }),
                v6: None,
            }),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            tunnel_devices: vec!["weft.wg".into()],
        }
    }

    #[test]
    fn huge_pools_read_as_powers_of_two() {
        assert_eq!(capacity(253), "253");
        assert_eq!(capacity(u64::MAX), "~2^64");
        assert_eq!(capacity(1 << 40), "~2^41");
    }

    #[test]
    fn durations_round_down_to_their_largest_unit() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(3_599), "59m");
        assert_eq!(duration(7_300), "2h");
        assert_eq!(duration(4 * 86_400 + 5), "4d");
        assert_eq!(age(NOW - 5, NOW), "5s");
        assert_eq!(age(NOW + 5, NOW), "0s", "a time in the future is now");
    }

    #[test]
    fn small_formatters() {
        assert_eq!(rtt(210), "0.21 ms");
        assert_eq!(rtt(1_234_567), "1234.57 ms");
        let v6: IpAddr = "fd00::15".parse().unwrap();
        assert_eq!(endpoint(v6, Some(51820)), "[fd00::15]:51820");
        assert_eq!(endpoint(v6, None), "fd00::15");
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), Some(1)), "10.0.0.1:1");
        assert_eq!(cidrs(&[]), "-");
        assert_eq!(one_line("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn status_summarises_the_daemon() {
        let out = status(&snapshot(), NOW);
        for line in [
            "Node:        node-a",
            "Backend:     wireguard (kernel)",
            "Lease:       10.244.1.0/24, fd00:10:244:1::/64 (renewed 12s ago, expires in 48s)",
            "Underlay:    192.168.1.10, fd00::10",
            "Interface:   eth0 (MTU 1500)",
            "Pod MTU:     1420",
            "Programmed:  yes",
            "IPAM v4:     3 of 253 in use",
            "Peers:       4 (2 up, 1 down, 1 unknown), 1 refused",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        let refused = out.lines().find(|l| l.starts_with("Refused:")).unwrap();
        assert!(refused.contains("evil\"><script>") && refused.ends_with("<b>\\nline two"));
        assert!(
            out.ends_with("line two\n"),
            "the refused peer is one line:\n{out}"
        );
    }

    #[test]
    fn status_without_a_lease_says_why() {
        let mut s = snapshot();
        s.lease = None;
        s.waiting = Some("etcd: connection refused".into());
        s.ipam = None;
        s.refused.clear();
        let out = status(&s, NOW);
        assert!(out.contains("Lease:       none, waiting: etcd: connection refused\n"));
        assert!(out.contains("IPAM:        off (no CNI service)\n"));
        assert!(!out.contains("Refused"));
        s.waiting = None;
        s.lease = Some(LeaseView {
            pod_cidrs: vec![],
            renewed_at: NOW - 4 * 86_400,
            expires_at: NOW - 3,
        });
        assert!(status(&s, NOW).contains("Lease:       - (renewed 4d ago, expired 3s ago)\n"));
    }

    #[test]
    fn peers_is_an_aligned_table() {
        let out = peers(&snapshot(), NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "NODE    POD CIDRS                          ENDPOINT            HEALTH   RTT         SINCE  HANDSHAKE",
                "node-b  10.244.2.0/24                      192.168.1.11:51820  up       0.21 ms     5m     42s ago",
                "node-c  10.244.3.0/24                      192.168.1.12        down     -           2h     -",
                "node-d  10.244.4.0/24                      192.168.1.13        unknown  -           -      never",
                "node-e  10.244.5.0/24, fd00:10:244:5::/64  [fd00::15]:51820    up       1234.57 ms  5m     -",
            ]
        );
        assert_eq!(lines[5], "");
        assert!(lines[6].starts_with("REFUSED  evil\"><script>alert('x')</script>  pod CIDR"));
        assert_eq!(lines.len(), 7, "one line per refused peer:\n{out}");
    }

    #[test]
    fn peers_without_wireguard_has_no_handshake_column() {
        let mut s = snapshot();
        s.peers.iter_mut().for_each(|p| p.wireguard = None);
        let out = peers(&s, NOW);
        assert!(!out.contains("HANDSHAKE"));
        assert!(out.lines().all(|l| l == l.trim_end()), "no trailing spaces");
    }

    #[test]
    fn an_empty_mesh_says_so() {
        let mut s = snapshot();
        s.peers.clear();
        s.refused.clear();
        assert_eq!(peers(&s, NOW), "No peers.\n");
        assert!(status(&s, NOW).contains("Peers:       0 (0 up, 0 down, 0 unknown), 0 refused\n"));
    }
}
