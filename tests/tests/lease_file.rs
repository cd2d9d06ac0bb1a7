//! The single-host file store with real `weftd` processes sharing one store directory.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lease_file`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_lab::procs::{bin_path, wait_for, ChildGuard};
use weft_proto::lease::{Lease, NodeRecord};

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::Builder::new()
                .prefix("weft-file-store-")
                .tempdir()
                .unwrap(),
        }
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `weftd run` for `node` against this store: 64 subnets per family.
    fn command(&self, node: &str) -> Command {
        let log = std::fs::File::create(self.dir.path().join(format!("{node}.log"))).unwrap();
        let mut command = Command::new(bin_path("weftd"));
        command
            .args([
                "run",
                "--store",
                "file",
                "--lease-ttl",
                "30",
                "--datapath",
                "none",
            ])
            .args([
                "--cluster-cidr",
                "10.50.0.0/18,fd00:50::/58",
                "--public-ip",
                "192.0.2.7",
            ])
            .arg("--store-dir")
            .arg(self.store_dir())
            .arg("--state-dir")
            .arg(self.dir.path().join("state").join(node))
            .arg("--run-dir")
            .arg(self.dir.path().join("run").join(node))
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--node-name")
            .arg(node)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    fn spawn(&self, node: &str) -> ChildGuard {
        ChildGuard::spawn(node, &mut self.command(node)).expect("spawn weftd")
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Every record in the store; panics on one that does not parse (the store must never hold one).
    fn records(&self) -> Vec<Lease> {
        let Ok(entries) = std::fs::read_dir(self.store_dir().join("nodes")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                let record: NodeRecord = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{} is damaged: {e}", p.display()));
                Lease::from_record(&record).unwrap()
            })
            .collect()
    }

    fn record(&self, node: &str) -> Option<Lease> {
        self.records().into_iter().find(|l| l.node.as_str() == node)
    }

    fn wait_records(&self, count: usize) -> Vec<Lease> {
        wait_for(Duration::from_secs(30), || {
            let records = self.records();
            (records.len() >= count).then_some(records)
        })
        .unwrap_or_else(|| panic!("expected {count} records, found {}", self.records().len()))
    }
}

fn assert_distinct(records: &[Lease]) {
    let v4: BTreeSet<_> = records.iter().map(|l| l.pod_cidrs.v4.unwrap()).collect();
    let v6: BTreeSet<_> = records.iter().map(|l| l.pod_cidrs.v6.unwrap()).collect();
    assert_eq!(v4.len(), records.len(), "IPv4 subnets are distinct");
    assert_eq!(v6.len(), records.len(), "IPv6 subnets are distinct");
}

#[test]
fn fifty_processes_at_once_get_distinct_subnets_and_the_next_one_is_refused() {
    let store = Store::new();
    let mut daemons = Vec::new();
    // 64 slots per family; 14 nodes take theirs first, leaving room for exactly 50.
    for i in 0..14 {
        daemons.push(store.spawn(&format!("filler-{i}")));
        store.wait_records(i + 1);
    }
    daemons.extend((0..50).map(|i| store.spawn(&format!("node-{i}"))));
    let records = store.wait_records(64);
    assert_eq!(records.len(), 64);
    assert_distinct(&records);

    let mut last = store.spawn("node-50");
    let status = last
        .wait_timeout(Duration::from_secs(15))
        .expect("the 51st exits");
    assert!(!status.success());
    let log = store.log("node-50");
    assert!(
        log.contains("cluster CIDR 10.50.0.0/18 is exhausted"),
        "{log}"
    );
    assert!(store.record("node-50").is_none());
    for d in &mut daemons {
        assert!(d.try_status().is_none(), "{} is still running", d.name);
    }
}

#[test]
fn a_killed_and_restarted_process_gets_its_old_subnets_back() {
    let store = Store::new();
    let _a = store.spawn("a");
    store.wait_records(1);
    let mut b = store.spawn("b");
    store.wait_records(2);
    let before = store.record("b").unwrap();
    b.kill(); // SIGKILL: no goodbye
    let _b = store.spawn("b");
    std::thread::sleep(Duration::from_secs(1));
    let after = wait_for(Duration::from_secs(10), || store.record("b")).unwrap();
    assert_eq!(after.pod_cidrs, before.pod_cidrs);
    assert_distinct(&store.records());
}

#[test]
fn processes_killed_at_any_point_leave_a_usable_store() {
    let store = Store::new();
    let _keeper = store.spawn("keeper");
    store.wait_records(1);
    for round in 0..30u64 {
        let mut victim = store.spawn(&format!("victim-{round}"));
        std::thread::sleep(Duration::from_millis((round * 7) % 40));
        victim.kill();
        store.records(); // panics on a damaged record
    }
    let _late = store.spawn("late");
    let records = wait_for(Duration::from_secs(10), || {
        let r = store.records();
        r.iter().any(|l| l.node.as_str() == "late").then_some(r)
    })
    .expect("a node can still acquire");
    assert_distinct(&records);
    let stray: Vec<PathBuf> = leftovers(&store.store_dir().join("nodes"));
    assert!(
        stray.len() <= 30,
        "at most one temporary file per killed writer: {stray:?}"
    );
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_none_or(|x| x != "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_keeps_the_lease_and_leave_gives_it_back() {
    let store = Store::new();
    let mut a = store.spawn("a");
    store.wait_records(1);
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a
        .wait_timeout(Duration::from_secs(10))
        .expect("exits")
        .success());
    assert!(store.record("a").is_some(), "SIGTERM keeps the lease");

    let leave = store.command("a");
    let args: Vec<_> = leave.get_args().skip(1).map(|a| a.to_owned()).collect();
    let status = Command::new(bin_path("weftd"))
        .arg("leave")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(store.record("a").is_none(), "weftd leave released it");

    let mut b = store.spawn("b");
    store.wait_records(1);
    b.signal(nix::sys::signal::Signal::SIGTERM);
    b.wait_timeout(Duration::from_secs(10)).expect("exits");
    let mut c = store.command("c");
    c.arg("--release-on-exit=true");
    let mut c = ChildGuard::spawn("c", &mut c).unwrap();
    store.wait_records(2);
    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(c
        .wait_timeout(Duration::from_secs(10))
        .expect("exits")
        .success());
    assert!(
        store.record("c").is_none(),
        "--release-on-exit gives it back"
    );
    assert!(store.record("b").is_some());
}

/// A parent that blocked SIGTERM and SIGINT (as a program waiting for them with `sigwait` does)
/// passes the mask on through exec; weftd unblocks them, so SIGTERM still stops it cleanly.
#[test]
fn sigterm_stops_weftd_started_with_the_stop_signals_blocked() {
    use std::os::unix::process::CommandExt;
    let store = Store::new();
    let mut command = store.command("a");
    // SAFETY: only async-signal-safe calls between fork and exec (sigprocmask).
    unsafe {
        command.pre_exec(|| {
            let mut stop = nix::sys::signal::SigSet::empty();
            stop.add(nix::sys::signal::Signal::SIGTERM);
            stop.add(nix::sys::signal::Signal::SIGINT);
            stop.thread_block().map_err(std::io::Error::from)
        });
    }
    let mut a = ChildGuard::spawn("a", &mut command).unwrap();
    store.wait_records(1);
    a.signal(nix::sys::signal::Signal::SIGTERM);
    let status = a.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "weftd started with SIGTERM blocked did not exit cleanly on SIGTERM: {status:?}"
    );
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "cluster-cidr = \"10.244.0.0/16\"\nlease-ttl = 1\n").unwrap();
    /// Flags, environment, the words the error must contain.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--cluster-cidr", "10.244.0.0/33"],
            vec![],
            "invalid setting --cluster-cidr: \"10.244.0.0/33\": not a CIDR",
        ),
        (
            vec!["--cluster-cidr", "10.244.0.0/16"],
            vec![("WEFT_BACKEND", "geneve")],
            "invalid setting --backend: \"geneve\"",
        ),
        (
            vec![],
            vec![("WEFT_CONFIG", config.to_str().unwrap())],
            "invalid setting --lease-ttl: \"1\"",
        ),
    ];
    for (args, env, expected) in cases {
        let output = Command::new(bin_path("weftd"))
            .arg("run")
            .args(&args)
            .args([
                "--node-name",
                "n1",
                "--datapath",
                "none",
                "--public-ip",
                "192.0.2.1",
            ])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(expected), "{expected:?} not in {stderr}");
    }
}
