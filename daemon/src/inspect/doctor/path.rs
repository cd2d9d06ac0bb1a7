//! The `mtu` check: is the overlay MTU larger than the underlay path to a peer allows?
//!
//! A tunnel packet is the pod's packet plus the encapsulation: VXLAN 50 bytes over IPv4, 70 over
//! IPv6; WireGuard 60 and 80. So with pod MTU `M` the underlay must carry IP packets of
//! `M + overhead` bytes, unfragmented (VXLAN and WireGuard set no DF bit, but a fragmenting path
//! still costs, and many drop fragments). The probe is an ICMP echo of exactly that size with
//! fragmentation forbidden, whose payload is the size less the IP header (20 or 40) and the echo
//! header (8). When it is lost while a small echo answers, [`measure`] searches for the largest
//! size that passes, and the fix is the pod MTU that would fit: that size less the overhead.
//!
//! Arithmetic and the search are pure here ([`measure`] takes the probe as a function);
//! `super::gather` sends the echoes.

use std::future::Future;
use std::net::IpAddr;

use super::gather::{GatherError, PeerProbe};
use super::{Finding, Verdict};
use crate::backend::{vxlan, wireguard};

const CHECK: &str = "mtu";
/// The smallest `--mtu` weftd accepts (IPv6's minimum link MTU).
pub const MIN_POD_MTU: u32 = 1280;

/// What one sized echo came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Reply,
    /// No reply within the timeout.
    Lost,
    /// The local interface (or route) is smaller: the kernel refused to send (`EMSGSIZE`).
    TooBigLocally,
}

/// The path-MTU probe of one peer: the IP packet size the tunnel needs, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathProbe {
    /// Bytes: pod MTU + encapsulation overhead.
    pub needed: u32,
    pub outcome: PathOutcome,
}

/// Whether packets of the needed size reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOutcome {
    Fits,
    /// Lost on the way; `largest`: the largest IP packet, in bytes, that passed (if found).
    TooBig {
        largest: Option<u32>,
    },
    /// Refused by this node's own interface or route toward the peer (`EMSGSIZE`).
    LocalTooSmall {
        largest: Option<u32>,
    },
    /// The probe could not be sent.
    Failed(GatherError),
}

/// The encapsulation overhead of `backend` (`vxlan`, `wireguard`) toward `endpoint`, in bytes;
/// `None` for a backend without a tunnel.
pub fn overhead(backend: &str, endpoint: &IpAddr) -> Option<u32> {
    let v6 = endpoint.is_ipv6();
    match backend {
        "vxlan" if v6 => Some(vxlan::OVERHEAD_V6_UNDERLAY),
        "vxlan" => Some(vxlan::OVERHEAD_V4_UNDERLAY),
        "wireguard" if v6 => Some(wireguard::OVERHEAD_V6_UNDERLAY),
        "wireguard" => Some(wireguard::OVERHEAD_V4_UNDERLAY),
        _ => None,
    }
}

/// The IP packet size, in bytes, of the tunnel's largest packets to `endpoint`: `pod_mtu` plus
/// the overhead; `None` for a backend without a tunnel.
pub fn tunnel_packet(backend: &str, pod_mtu: u32, endpoint: &IpAddr) -> Option<u32> {
    overhead(backend, endpoint).map(|o| pod_mtu + o)
}

fn ip_header(v6: bool) -> u32 {
    if v6 {
        40
    } else {
        20
    }
}

/// The echo payload, in bytes, that makes an IP packet of `packet` bytes (0 when it cannot).
pub fn echo_payload(packet: u32, v6: bool) -> usize {
    let headers = ip_header(v6) + super::super::icmp::ECHO_HEADER_LEN as u32;
    packet.saturating_sub(headers) as usize
}

/// The IP packet size, in bytes, of an echo with `payload` bytes of payload.
pub fn packet_of_payload(payload: usize, v6: bool) -> u32 {
    payload as u32 + ip_header(v6) + super::super::icmp::ECHO_HEADER_LEN as u32
}

/// Whether IP packets of `needed` bytes reach the peer, given that packets of `passing` bytes do
/// (`passing < needed`). `probe(size)` sends one echo of that IP packet size. The needed size
/// is tried twice (one lost echo is no verdict); then the largest passing size is searched by
/// bisection, one echo per step (a loss there errs toward a smaller, still safe, answer).
pub async fn measure<F, Fut>(needed: u32, passing: u32, mut probe: F) -> PathOutcome
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Probe, GatherError>>,
{
    let mut local = false;
    for _ in 0..2 {
        match probe(needed).await {
            Ok(Probe::Reply) => return PathOutcome::Fits,
            Ok(Probe::Lost) => {}
            Ok(Probe::TooBigLocally) => {
                local = true;
                break;
            }
            Err(e) => return PathOutcome::Failed(e),
        }
    }
    let (mut low, mut high) = (passing, needed);
    let mut largest = (passing < needed).then_some(passing);
    while high - low > 1 && largest.is_some() {
        let middle = low + (high - low) / 2;
        match probe(middle).await {
            Ok(Probe::Reply) => low = middle,
            Ok(_) => high = middle,
            Err(_) => largest = None,
        }
    }
    let largest = largest.map(|_| low);
    match local {
        true => PathOutcome::LocalTooSmall { largest },
        false => PathOutcome::TooBig { largest },
    }
}

/// The `mtu` finding from the probes (of the first peers; `total` is how many there are).
/// Failure when the needed size does not reach a peer that answers a small echo, naming it, with
/// the `--mtu` that would fit every path; a warning when probing was impossible.
pub fn mtu(backend: &str, pod_mtu: Option<u32>, probes: &[PeerProbe], total: usize) -> Finding {
    let Some(pod_mtu) = pod_mtu else {
        return Finding::ok(
            CHECK,
            "no pod MTU yet (datapath not programmed): not probed",
        );
    };
    if overhead(backend, &IpAddr::from([0, 0, 0, 0])).is_none() {
        return Finding::ok(CHECK, format!("backend {backend:?} has no tunnel"));
    }
    if probes.is_empty() {
        return Finding::ok(CHECK, format!("pod MTU {pod_mtu}; no peers to probe"));
    }
    let mut faults = Vec::new();
    let mut fits = Vec::new();
    let mut unmeasured = Vec::new();
    let mut errors = Vec::new();
    for p in probes {
        match (&p.underlay, &p.path) {
            (Err(e), _) => errors.push(e.clone()),
            (Ok(_), None) => unmeasured.push(p.node.as_str()),
            (Ok(_), Some(PathProbe { outcome, needed })) => match outcome {
                PathOutcome::Fits => fits.push(p.node.as_str()),
                PathOutcome::Failed(e) => errors.push(e.clone()),
                fault => faults.push(fault_of(backend, p, *needed, pod_mtu, fault)),
            },
        }
    }
    let scope = match probes.len() < total {
        true => format!(" (probed the first {} of {total} peers)", probes.len()),
        false => String::new(),
    };
    let silent = match unmeasured.is_empty() {
        true => String::new(),
        false => format!("; not measured, no echo reply: {}", unmeasured.join(", ")),
    };
    if !faults.is_empty() {
        let details: Vec<String> = faults.iter().map(|f| f.detail.clone()).collect();
        let detail = format!("{}{silent}{scope}", details.join("; "));
        return Finding::new(CHECK, Verdict::Failure, detail, Some(mtu_fix(&faults)));
    }
    if let Some(e) = errors.first() {
        let fix = e
            .needs_root()
            .then_some("run weftd doctor as root (raw ICMP sockets need CAP_NET_RAW)");
        let detail = format!("cannot probe the path MTU: {e}");
        return Finding::new(CHECK, Verdict::Warning, detail, fix);
    }
    if fits.is_empty() {
        // Nothing measured (the underlay filters ICMP, say): no verdict is an honest one.
        let detail =
            format!("pod MTU {pod_mtu}: the path to no peer could be measured{silent}{scope}");
        let fix = "allow ICMP echo between the nodes' underlay addresses, or check the path MTU by hand (ping -M do -s SIZE)";
        return Finding::new(CHECK, Verdict::Warning, detail, Some(fix));
    }
    let detail = format!(
        "pod MTU {pod_mtu}: tunnel packets reach {} peer{}{silent}{scope}",
        fits.len(),
        if fits.len() == 1 { "" } else { "s" }
    );
    Finding::ok(CHECK, detail)
}

/// One peer the tunnel's packets do not reach: what to say, and the pod MTU that would fit.
struct Fault {
    detail: String,
    /// The largest packet that passed, and the pod MTU that makes packets that size.
    fits: Option<(u32, u32)>,
}

fn fault_of(backend: &str, p: &PeerProbe, needed: u32, pod_mtu: u32, fault: &PathOutcome) -> Fault {
    let overhead = overhead(backend, &p.endpoint).unwrap_or(0);
    let (node, endpoint) = (&p.node, p.endpoint);
    let tunnel = format!("{needed}-byte packets (pod MTU {pod_mtu} + {overhead})");
    let (largest, detail) = match fault {
        PathOutcome::LocalTooSmall { largest } => (
            *largest,
            format!("this node's own interface toward {node} ({endpoint}) cannot send the tunnel's {tunnel}"),
        ),
        PathOutcome::TooBig { largest } => (
            *largest,
            format!("the path to {node} ({endpoint}) drops the tunnel's {tunnel}"),
        ),
        PathOutcome::Fits | PathOutcome::Failed(_) => (None, String::new()),
    };
    let detail = match largest {
        Some(bytes) => format!("{detail}; {bytes}-byte packets get through"),
        None => detail,
    };
    Fault {
        detail,
        fits: largest.map(|bytes| (bytes, bytes.saturating_sub(overhead))),
    }
}

/// The fix: the smallest of the pod MTUs that fit, as `--mtu N`.
fn mtu_fix(faults: &[Fault]) -> String {
    match faults
        .iter()
        .filter_map(|f| f.fits)
        .min_by_key(|(_, mtu)| *mtu)
    {
        Some((_, mtu)) if mtu >= MIN_POD_MTU => format!(
            "run weftd with --mtu {mtu} (the largest pod MTU every probed path carries), or raise \
             the underlay MTU along the path"
        ),
        Some((bytes, _)) => format!(
            "the underlay carries at most {bytes}-byte packets, too few for weftd's smallest \
             --mtu ({MIN_POD_MTU}): raise the underlay MTU along the path"
        ),
        None => "lower weftd's --mtu until the tunnel's packets fit, or raise the underlay MTU"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn packet_sizes_follow_the_encapsulation_of_each_backend_and_family() {
        let v4: IpAddr = "192.0.2.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(tunnel_packet("vxlan", 1450, &v4), Some(1500));
        assert_eq!(tunnel_packet("vxlan", 1430, &v6), Some(1500));
        assert_eq!(tunnel_packet("wireguard", 1440, &v4), Some(1500));
        assert_eq!(tunnel_packet("wireguard", 1420, &v6), Some(1500));
        assert_eq!(tunnel_packet("none", 1500, &v4), None);
        assert_eq!(echo_payload(1500, false), 1472, "ping -s 1472 -M do");
        assert_eq!(echo_payload(1500, true), 1452);
        assert_eq!(echo_payload(10, true), 0);
        assert_eq!(packet_of_payload(1472, false), 1500);
        assert_eq!(packet_of_payload(56, true), 104);
    }

    /// A probe over a path that carries packets up to `limit` bytes, and an interface that
    /// takes up to `local` bytes; it records the sizes sent.
    fn path(limit: u32, local: u32) -> (RefCell<Vec<u32>>, impl Fn(u32) -> Probe) {
        (RefCell::new(Vec::new()), move |size| match size {
            s if s > local => Probe::TooBigLocally,
            s if s > limit => Probe::Lost,
            _ => Probe::Reply,
        })
    }

    async fn run(needed: u32, limit: u32, local: u32) -> (PathOutcome, Vec<u32>) {
        let (sent, answer) = path(limit, local);
        let outcome = measure(needed, 84, |size| {
            sent.borrow_mut().push(size);
            let result = Ok(answer(size));
            async move { result }
        })
        .await;
        (outcome, sent.into_inner())
    }

    #[tokio::test]
    async fn a_path_that_carries_the_tunnel_packets_fits_in_one_echo() {
        let (outcome, sent) = run(1500, 1500, 1500).await;
        assert_eq!((outcome, sent), (PathOutcome::Fits, vec![1500]));
    }

    #[tokio::test]
    async fn a_smaller_path_is_measured_to_the_byte() {
        let (outcome, sent) = run(1500, 1400, 9000).await;
        assert_eq!(
            outcome,
            PathOutcome::TooBig {
                largest: Some(1400)
            }
        );
        assert_eq!(&sent[..2], [1500, 1500], "the needed size is tried twice");
        assert!(sent.len() < 2 + 12, "bisection, not a scan: {sent:?}");
        let (outcome, _) = run(1500, 1350, 1400).await;
        assert_eq!(
            outcome,
            PathOutcome::LocalTooSmall {
                largest: Some(1350)
            },
            "EMSGSIZE at the needed size: the local interface is smaller"
        );
    }

    #[tokio::test]
    async fn a_probe_that_cannot_be_sent_says_why() {
        let denied = GatherError::NeedsRoot {
            what: "ICMP".into(),
            reason: "EPERM".into(),
        };
        let outcome = measure(1500, 84, |_| {
            let e = denied.clone();
            async move { Err(e) }
        })
        .await;
        assert_eq!(outcome, PathOutcome::Failed(denied));
    }

    fn probe(
        node: &str,
        underlay: Result<bool, GatherError>,
        outcome: Option<PathOutcome>,
    ) -> PeerProbe {
        PeerProbe {
            node: node.into(),
            endpoint: "192.0.2.2".parse().unwrap(),
            underlay,
            path: outcome.map(|outcome| PathProbe {
                needed: 1500,
                outcome,
            }),
        }
    }

    #[test]
    fn a_path_too_small_fails_naming_the_peer_and_the_mtu_that_fits() {
        let small = PathOutcome::TooBig {
            largest: Some(1400),
        };
        let probes = [
            probe("b", Ok(true), Some(PathOutcome::Fits)),
            probe("c", Ok(true), Some(small)),
        ];
        let finding = mtu("vxlan", Some(1450), &probes, 2);
        assert_eq!(finding.verdict, Verdict::Failure);
        assert_eq!(
            finding.detail,
            "the path to c (192.0.2.2) drops the tunnel's 1500-byte packets (pod MTU 1450 + 50); \
             1400-byte packets get through"
        );
        assert!(
            finding.fix.as_deref().unwrap().contains("--mtu 1350"),
            "{finding:?}"
        );
        let local = [probe(
            "b",
            Ok(true),
            Some(PathOutcome::LocalTooSmall {
                largest: Some(1300),
            }),
        )];
        let finding = mtu("wireguard", Some(1440), &local, 1);
        assert!(
            finding.detail.starts_with(
                "this node's own interface toward b (192.0.2.2) cannot send the tunnel's \
                 1500-byte packets (pod MTU 1440 + 60)"
            ),
            "{finding:?}"
        );
        assert!(
            finding
                .fix
                .as_deref()
                .unwrap()
                .contains("raise the underlay MTU"),
            "1300 - 60 < 1280: {finding:?}"
        );
    }

    #[test]
    fn paths_that_carry_the_tunnel_are_ok() {
        let probes = [
            probe("b", Ok(true), Some(PathOutcome::Fits)),
            probe("c", Ok(false), None),
        ];
        let finding = mtu("vxlan", Some(1450), &probes, 40);
        assert_eq!(finding.verdict, Verdict::Ok, "{finding:?}");
        assert!(finding.detail.contains("reach 1 peer"), "{finding:?}");
        assert!(
            finding.detail.contains("not measured, no echo reply: c"),
            "{finding:?}"
        );
        assert!(finding.detail.contains("first 2 of 40"), "{finding:?}");
        assert_eq!(mtu("vxlan", None, &probes, 2).verdict, Verdict::Ok);
        // No peer answers ICMP on the underlay: nothing measured is a warning, not an ok.
        let silent = mtu("vxlan", Some(1450), &probes[1..], 1);
        assert_eq!(silent.verdict, Verdict::Warning, "{silent:?}");
        assert!(
            silent.detail.contains("no peer could be measured"),
            "{silent:?}"
        );
    }

    #[test]
    fn probing_without_root_is_a_warning_saying_so() {
        let denied = GatherError::NeedsRoot {
            what: "ICMP echo".into(),
            reason: "Operation not permitted".into(),
        };
        let finding = mtu("vxlan", Some(1450), &[probe("b", Err(denied), None)], 1);
        assert_eq!(finding.verdict, Verdict::Warning);
        assert!(finding.detail.contains("needs root"), "{finding:?}");
        assert!(finding.fix.unwrap().contains("CAP_NET_RAW"));
    }
}
