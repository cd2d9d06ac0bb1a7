//! Peer health: every [`PROBE_INTERVAL`], one ICMP echo request to each peer's tunnel address
//! (the network address of each of its pod CIDRs, which weft puts on the peer's tunnel device),
//! routed through the tunnel, so a reply proves the tunnel works both ways. A peer is `up` from
//! its first reply and `down` after [`DOWN_AFTER`] unanswered probes in a row; every change is one
//! log line. 1000 peers cost 500 echo requests and replies per second.
//!
//! [`HealthTable`] is the pure state machine (unit-tested); [`spawn`] runs it on raw ICMP sockets
//! ([`super::icmp`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::icmp::{self, EchoSocket, Reply};
use super::snapshot::{Health, HealthState};
use super::state::Mesh;
use crate::store::unix_now;

/// How often every peer is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes in a row that make a peer `down`.
pub const DOWN_AFTER: u32 = 3;

/// One address to probe and the peer it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub node: String,
    pub addr: IpAddr,
}

/// What is known of one target.
#[derive(Debug, Clone)]
struct TargetState {
    node: String,
    /// Whether the probe of the current round was answered.
    answered: bool,
    sent_at: Option<Instant>,
    misses: u32,
    state: HealthState,
    since: u64,
    last_reply: Option<u64>,
    rtt: Option<Duration>,
    sent: u64,
    received: u64,
}

/// A peer's change of state, to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub addr: IpAddr,
    pub from: HealthState,
    pub to: HealthState,
}

/// Every target's probe state; one sequence number per round.
#[derive(Debug, Default)]
pub struct HealthTable {
    targets: BTreeMap<IpAddr, TargetState>,
    seq: u16,
}

impl HealthTable {
    /// Probe exactly `targets` from now on: new ones start `unknown` at `now` (Unix seconds),
    /// gone ones are forgotten, the others keep their state (a target whose node changed starts
    /// over).
    pub fn set_targets(&mut self, targets: &[Target], now: u64) {
        let mut next = BTreeMap::new();
        for target in targets {
            let kept = self.targets.remove(&target.addr);
            let state = kept
                .filter(|s| s.node == target.node)
                .unwrap_or_else(|| TargetState {
                    node: target.node.clone(),
                    answered: false,
                    sent_at: None,
                    misses: 0,
                    state: HealthState::Unknown,
                    since: now,
                    last_reply: None,
                    rtt: None,
                    sent: 0,
                    received: 0,
                });
            next.insert(target.addr, state);
        }
        self.targets = next;
    }

    /// Start a round (`now` in Unix seconds): count the last round's unanswered probes, and
    /// forget them. Returns the sequence number to send, the addresses, and the peers that went
    /// down. Each probe then sent is recorded with [`HealthTable::sent`]; a target whose probe
    /// could not be sent (no socket, no route) is neither missed nor answered.
    pub fn round(&mut self, now: u64) -> (u16, Vec<IpAddr>, Vec<Transition>) {
        let mut changes = Vec::new();
        for (addr, target) in &mut self.targets {
            if target.sent_at.is_some() && !target.answered {
                target.misses += 1;
                if target.misses >= DOWN_AFTER && target.state != HealthState::Down {
                    changes.push(transition(*addr, target, HealthState::Down, now));
                }
            }
            target.answered = false;
            target.sent_at = None;
        }
        self.seq = self.seq.wrapping_add(1);
        (self.seq, self.targets.keys().copied().collect(), changes)
    }

    /// The probe of this round to `addr` left at `at`.
    pub fn sent(&mut self, addr: IpAddr, at: Instant) {
        if let Some(target) = self.targets.get_mut(&addr) {
            target.sent_at = Some(at);
            target.sent += 1;
        }
    }

    /// A reply from `from` with sequence number `seq`, received at `at`: the peer is up. Replies
    /// to an older round, or from an address not probed, are ignored.
    pub fn reply(&mut self, from: IpAddr, seq: u16, at: Instant, now: u64) -> Option<Transition> {
        let target = self.targets.get_mut(&from)?;
        if seq != self.seq || target.answered || target.sent_at.is_none() {
            return None;
        }
        target.answered = true;
        target.misses = 0;
        target.received += 1;
        target.last_reply = Some(now);
        target.rtt = target
            .sent_at
            .map(|sent| at.saturating_duration_since(sent));
        (target.state != HealthState::Up).then(|| transition(from, target, HealthState::Up, now))
    }

    /// Every probed peer's health, by node name: `down` if any of its addresses is down, `up` if
    /// all are up, else `unknown`; counters summed, the RTT the largest of its addresses'.
    pub fn by_node(&self) -> BTreeMap<String, Health> {
        let mut nodes: BTreeMap<String, Vec<&TargetState>> = BTreeMap::new();
        for target in self.targets.values() {
            nodes.entry(target.node.clone()).or_default().push(target);
        }
        nodes
            .into_iter()
            .map(|(node, targets)| (node, combine(&targets)))
            .collect()
    }
}

fn transition(addr: IpAddr, target: &mut TargetState, to: HealthState, now: u64) -> Transition {
    let from = std::mem::replace(&mut target.state, to);
    target.since = now;
    Transition {
        node: target.node.clone(),
        addr,
        from,
        to,
    }
}

/// One peer's health from its addresses' (at least one).
fn combine(targets: &[&TargetState]) -> Health {
    let states = || targets.iter().map(|t| t.state);
    let state = if states().any(|s| s == HealthState::Down) {
        HealthState::Down
    } else if states().all(|s| s == HealthState::Up) {
        HealthState::Up
    } else {
        HealthState::Unknown
    };
    let of_state = targets.iter().filter(|t| t.state == state);
    Health {
        state,
        rtt_us: targets
            .iter()
            .filter_map(|t| t.rtt)
            .max()
            .map(|rtt| rtt.as_micros() as u64),
        since: of_state.map(|t| t.since).max(),
        last_reply: targets.iter().filter_map(|t| t.last_reply).max(),
        sent: targets.iter().map(|t| t.sent).sum(),
        received: targets.iter().map(|t| t.received).sum(),
    }
}

/// The health table the prober keeps, for readers.
pub type SharedHealth = Arc<Mutex<HealthTable>>;

/// Start probing the peers of the mesh `targets` holds ([`Mesh::targets`]), every `interval`. Sockets are opened per family
/// when first needed; where one cannot be (no `CAP_NET_RAW`), that family stays `unknown` and
/// one warning says why.
pub fn spawn(targets: watch::Receiver<Mesh>, interval: Duration) -> (SharedHealth, JoinHandle<()>) {
    let table = SharedHealth::default();
    let task = tokio::spawn(run(targets, interval, table.clone()));
    (table, task)
}

/// How long after a failed open a family's socket is tried again.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

/// The sockets of both families, opened on first use; `Err` holds when the last open failed.
struct Sockets {
    v4: Option<Result<EchoSocket, Instant>>,
    v6: Option<Result<EchoSocket, Instant>>,
    ident: u16,
}

impl Sockets {
    fn get(&mut self, v6: bool) -> Option<&EchoSocket> {
        let slot = if v6 { &mut self.v6 } else { &mut self.v4 };
        let retry = matches!(slot, Some(Err(failed)) if failed.elapsed() >= REOPEN_AFTER);
        if slot.is_none() || retry {
            *slot = Some(EchoSocket::open(v6).map_err(|e| {
                let family = if v6 { "IPv6" } else { "IPv4" };
                warn!(error = %e, retry_in = ?REOPEN_AFTER, "cannot probe peers over {family}; their health stays unknown");
                Instant::now()
            }));
        }
        slot.as_ref().and_then(|s| s.as_ref().ok())
    }

    /// The next reply on either open socket; pending forever if none is open.
    async fn recv(&self) -> std::io::Result<Reply> {
        let pending = || std::future::pending::<std::io::Result<Reply>>();
        let v4 = async {
            match &self.v4 {
                Some(Ok(socket)) => socket.recv().await,
                _ => pending().await,
            }
        };
        let v6 = async {
            match &self.v6 {
                Some(Ok(socket)) => socket.recv().await,
                _ => pending().await,
            }
        };
        tokio::select! {
            reply = v4 => reply,
            reply = v6 => reply,
        }
    }
}

async fn run(mut targets: watch::Receiver<Mesh>, interval: Duration, table: SharedHealth) {
    let mut sockets = Sockets {
        v4: None,
        v6: None,
        ident: icmp::ident(0x7765),
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let current = targets.borrow_and_update().targets();
                probe_round(&mut sockets, &current, &table).await;
            }
            reply = sockets.recv() => match reply {
                Ok(reply) if reply.ident == sockets.ident => {
                    let change = lock(&table).reply(reply.from, reply.seq, Instant::now(), unix_now());
                    change.into_iter().for_each(|c| log_transition(&c));
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "probe reply"),
            },
            changed = targets.changed() => if changed.is_err() {
                debug!("the mesh is gone; peer probing stops");
                return;
            },
        }
    }
}

/// Send one round: update the targets, count the last round's misses, send to every target.
async fn probe_round(sockets: &mut Sockets, targets: &[Target], table: &SharedHealth) {
    let (seq, addrs, changes) = {
        let mut table = lock(table);
        table.set_targets(targets, unix_now());
        table.round(unix_now())
    };
    changes.iter().for_each(log_transition);
    let mut failed = 0;
    for addr in addrs {
        let ident = sockets.ident;
        let Some(socket) = sockets.get(addr.is_ipv6()) else {
            continue;
        };
        let at = Instant::now();
        match socket.send(addr, ident, seq, 16).await {
            Ok(()) => lock(table).sent(addr, at),
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        debug!(failed, "probe requests not sent (no route yet?)");
    }
}

fn log_transition(change: &Transition) {
    let (node, addr) = (&change.node, change.addr);
    match change.to {
        HealthState::Down => {
            warn!(peer = %node, %addr, probes = DOWN_AFTER, "peer unreachable through the tunnel")
        }
        HealthState::Up if change.from == HealthState::Down => {
            info!(peer = %node, %addr, "peer reachable through the tunnel again")
        }
        HealthState::Up => debug!(peer = %node, %addr, "peer reachable through the tunnel"),
        HealthState::Unknown => {}
    }
}

fn lock(table: &SharedHealth) -> std::sync::MutexGuard<'_, HealthTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The health table's view, by node name (empty without a prober).
pub fn snapshot(table: Option<&SharedHealth>) -> BTreeMap<String, Health> {
    table.map(|t| lock(t).by_node()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start a round at `at` and send every probe of it.
    fn round(
        table: &mut HealthTable,
        at: Instant,
        now: u64,
    ) -> (u16, Vec<IpAddr>, Vec<Transition>) {
        let (seq, addrs, changes) = table.round(now);
        for addr in &addrs {
            table.sent(*addr, at);
        }
        (seq, addrs, changes)
    }

    fn target(node: &str, addr: &str) -> Target {
        Target {
            node: node.into(),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn a_peer_is_up_from_its_first_reply_and_down_after_three_misses() {
        let mut table = HealthTable::default();
        let a: IpAddr = "10.244.2.0".parse().unwrap();
        table.set_targets(&[target("node-2", "10.244.2.0")], 100);
        let start = Instant::now();
        let (seq, addrs, changes) = round(&mut table, start, 100);
        assert_eq!((addrs, changes), (vec![a], vec![]));
        let up = table.reply(a, seq, start + Duration::from_millis(3), 100);
        assert_eq!(up.map(|t| t.to), Some(HealthState::Up));
        assert_eq!(
            table.reply(a, seq, start, 100),
            None,
            "a duplicate changes nothing"
        );
        let health = &table.by_node()["node-2"];
        assert_eq!((health.state, health.rtt_us), (HealthState::Up, Some(3000)));
        // Rounds 1-3 go unanswered: down when round 4 starts.
        let mut downs = Vec::new();
        for n in 1..=4 {
            let (_, _, changes) = round(&mut table, start, 100 + n);
            downs.extend(changes);
        }
        assert_eq!(downs.len(), 1);
        assert_eq!(
            (downs[0].from, downs[0].to),
            (HealthState::Up, HealthState::Down)
        );
        let health = &table.by_node()["node-2"];
        assert_eq!((health.state, health.since), (HealthState::Down, Some(104)));
        assert_eq!((health.sent, health.received), (5, 1));
    }

    #[test]
    fn late_or_stray_replies_are_ignored_and_targets_follow_the_mesh() {
        let mut table = HealthTable::default();
        let (a, b): (IpAddr, IpAddr) =
            ("10.244.2.0".parse().unwrap(), "fd00::2:0".parse().unwrap());
        table.set_targets(
            &[
                target("node-2", "10.244.2.0"),
                target("node-2", "fd00::2:0"),
            ],
            5,
        );
        let now = Instant::now();
        let (old, _, _) = round(&mut table, now, 5);
        let (seq, _, _) = round(&mut table, now, 6);
        assert_eq!(
            table.reply(a, old, now, 6),
            None,
            "a reply to the last round"
        );
        assert_eq!(table.reply("192.0.2.1".parse().unwrap(), seq, now, 6), None);
        table.reply(a, seq, now, 6);
        // One family up, the other not heard from: unknown until it answers or is down.
        assert_eq!(table.by_node()["node-2"].state, HealthState::Unknown);
        table.reply(b, seq, now, 6);
        assert_eq!(table.by_node()["node-2"].state, HealthState::Up);
        // The peer leaves; another takes the address: it starts over.
        table.set_targets(&[target("node-9", "10.244.2.0")], 7);
        let nodes = table.by_node();
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["node-9"]);
        assert_eq!(nodes["node-9"].state, HealthState::Unknown);
        assert_eq!(nodes["node-9"].since, Some(7));
    }

    #[test]
    fn a_probe_that_could_not_be_sent_is_no_miss() {
        let mut table = HealthTable::default();
        table.set_targets(&[target("node-2", "fd00::2:0")], 1);
        // No socket for the family: rounds start, nothing is sent, and nothing is concluded.
        for n in 0..10 {
            let (seq, _, changes) = table.round(n);
            assert!(changes.is_empty());
            let stray = table.reply("fd00::2:0".parse().unwrap(), seq, Instant::now(), n);
            assert_eq!(stray, None, "a reply to a probe never sent");
        }
        let health = &table.by_node()["node-2"];
        assert_eq!((health.state, health.sent), (HealthState::Unknown, 0));
    }

    #[test]
    fn a_thousand_targets_cost_little_per_round() {
        let mut table = HealthTable::default();
        let targets: Vec<Target> = (0..1000u32)
            .map(|i| Target {
                node: format!("node-{i}"),
                addr: IpAddr::V4((0x0af4_0000 + (i << 8)).into()),
            })
            .collect();
        let started = Instant::now();
        for n in 0..10 {
            table.set_targets(&targets, n);
            let (seq, addrs, _) = round(&mut table, Instant::now(), n);
            for addr in addrs {
                table.reply(addr, seq, Instant::now(), n);
            }
        }
        let _ = table.by_node();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
