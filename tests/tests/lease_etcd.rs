//! The etcd lease store against a real etcd (Debian's `etcd-server`), started by each test on free
//! loopback ports with a temporary data directory.
//!
//! Run: `cargo test -p weft-lab --test lease_etcd` (needs `etcd` on PATH, or `WEFT_ETCD_BIN`).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use weft_lab::etcd::EtcdServer;
use weft_lab::procs::{bin_path, wait_for, ChildGuard};
use weft_proto::lease::{BackendData, Lease, MacAddr, NodeRecord, PodCidrs, PublicIps};
use weft_proto::names::NodeName;
use weftd::store::etcd::EtcdStore;
use weftd::store::peers::PeerSet;
use weftd::store::{LeaseRequest, LeaseStore, PeerWatcher, StoreError};
use weftd::subnet::SubnetPool;

const PREFIX: &str = "/weft-test";

/// A pool of 64 subnets per family: 10.50.0.0/18 in /24s, fd00:50::/58 in /64s.
fn request(name: &str) -> LeaseRequest {
    LeaseRequest {
        node: NodeName::new(name).unwrap(),
        pool_v4: Some(SubnetPool::new("10.50.0.0/18".parse().unwrap(), 24).unwrap()),
        pool_v6: Some(SubnetPool::new("fd00:50::/58".parse().unwrap(), 64).unwrap()),
        preferred: PodCidrs::default(),
        public_ips: PublicIps {
            v4: Some("192.0.2.1".parse().unwrap()),
            v6: None,
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(MacAddr::stable_local(&format!("{name}/v4"))),
            vtep_mac_v6: Some(MacAddr::stable_local(&format!("{name}/v6"))),
        },
        machine: Some(format!("machine-of-{name}")),
    }
}

fn store(etcd: &EtcdServer, ttl_secs: u64) -> EtcdStore {
    EtcdStore::new(
        vec![etcd.endpoint()],
        PREFIX.into(),
        Duration::from_secs(ttl_secs),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_at_once_get_distinct_subnets_and_the_next_one_is_refused() {
    let etcd = EtcdServer::start().expect("start etcd");
    // 64 slots per family; 14 nodes take theirs first, leaving room for exactly 50.
    let mut fillers = Vec::new();
    for i in 0..14 {
        let mut s = store(&etcd, 60);
        fillers.push(s.acquire(&request(&format!("filler-{i}"))).await.unwrap());
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut s = store(&etcd, 60);
            tokio::spawn(async move { s.acquire(&request(&format!("node-{i}"))).await })
        })
        .collect();
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap().expect("each of the 50 gets a lease"));
    }
    eprintln!("50 concurrent acquisitions took {:?}", started.elapsed());
    let all: Vec<&Lease> = fillers.iter().chain(&leases).collect();
    let v4: BTreeSet<_> = all.iter().map(|l| l.pod_cidrs.v4.unwrap()).collect();
    let v6: BTreeSet<_> = all.iter().map(|l| l.pod_cidrs.v6.unwrap()).collect();
    assert_eq!(v4.len(), 64, "every IPv4 subnet distinct");
    assert_eq!(v6.len(), 64, "every IPv6 subnet distinct");

    let err = store(&etcd, 60)
        .acquire(&request("node-50"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Exhausted(_)), "{err}");
    assert!(
        err.to_string().contains("10.50.0.0/18 is exhausted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_its_old_subnets_back() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut first = store(&etcd, 3);
    first.acquire(&request("a")).await.unwrap();
    let b = first.acquire(&request("b")).await.unwrap();

    // Restarted within the TTL: a new process (a new client) finds its claims by name.
    let again = store(&etcd, 3).acquire(&request("b")).await.unwrap();
    assert_eq!(again.pod_cidrs, b.pod_cidrs);

    // Restarted after its lease expired while a lower subnet became free: the state directory's
    // memory (`preferred`) brings back the same subnets, not the first free ones.
    let mut a_store = store(&etcd, 3);
    let a = a_store.acquire(&request("a")).await.unwrap();
    a_store.release(&a).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // b's lease (TTL 3 s) expires
    let mut after = request("b");
    after.preferred = b.pod_cidrs;
    let back = store(&etcd, 3).acquire(&after).await.unwrap();
    assert_eq!(back.pod_cidrs, b.pod_cidrs);
    let fresh = store(&etcd, 3).acquire(&request("c")).await.unwrap();
    assert_eq!(
        fresh.pod_cidrs, a.pod_cidrs,
        "the freed lower subnet goes to a new node"
    );
}

/// Drive a watcher until `done` holds for the peer set, or `timeout`.
async fn watch_until(
    watcher: &mut impl PeerWatcher,
    peers: &mut PeerSet,
    timeout: Duration,
    done: impl Fn(&PeerSet) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(peers) {
        match tokio::time::timeout_at(deadline, watcher.next()).await {
            Ok(Ok(update)) => {
                peers.apply(update);
            }
            Ok(Err(e)) => panic!("watch failed: {e}"),
            Err(_) => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_disappears_within_ttl_plus_margin() {
    let etcd = EtcdServer::start().expect("start etcd");
    let ttl = Duration::from_secs(3);
    let observer = store(&etcd, 3);
    let mut watcher = observer.watch_peers(&NodeName::new("observer").unwrap());
    let mut peers = PeerSet::default();

    let mut silent = store(&etcd, 3);
    let lease = silent.acquire(&request("silent")).await.unwrap();
    let node = lease.node.clone();
    assert!(
        watch_until(&mut watcher, &mut peers, Duration::from_secs(5), |p| p
            .get(&node)
            .is_some())
        .await
    );

    let stopped = Instant::now(); // no keep-alive from here on
    let gone = watch_until(
        &mut watcher,
        &mut peers,
        ttl + Duration::from_secs(3),
        |p| p.get(&node).is_none(),
    )
    .await;
    let took = stopped.elapsed();
    eprintln!("silent node vanished after {took:?} (TTL {ttl:?})");
    assert!(gone, "still present after {took:?}");
    assert!(took <= ttl + Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_parse_is_skipped_not_fatal() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}/nodes/broken"), "{not json", None)
        .await
        .unwrap();
    let bad_mac = r#"{"name":"evil","podCIDRs":["10.50.9.0/24"],"annotations":{"weft.dev/backend":"vxlan","weft.dev/public-ip":"192.0.2.9","weft.dev/vtep-mac":"zz"}}"#;
    client
        .put(format!("{PREFIX}/nodes/evil"), bad_mac, None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}/subnets/v4/garbage"), "x", None)
        .await
        .unwrap();

    let mut s = store(&etcd, 10);
    let good = s.acquire(&request("good")).await.unwrap();
    let mut watcher = store(&etcd, 10).watch_peers(&NodeName::new("observer").unwrap());
    let mut peers = PeerSet::default();
    assert!(
        watch_until(&mut watcher, &mut peers, Duration::from_secs(5), |p| p
            .get(&good.node)
            .is_some())
        .await
    );
    assert_eq!(peers.len(), 1, "only the good record is a peer");

    // A good peer that turns bad is removed, not kept with stale data.
    let mut record = good.to_record();
    record
        .annotations
        .insert("weft.dev/public-ip".into(), "not-an-ip".into());
    client
        .put(
            format!("{PREFIX}/nodes/good"),
            serde_json::to_string(&record).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert!(
        watch_until(&mut watcher, &mut peers, Duration::from_secs(5), |p| p
            .is_empty())
        .await
    );
}

/// weftd as a process, against etcd that is killed for 10 s and started again.
#[test]
fn weftd_rides_out_an_etcd_outage_and_keeps_its_subnets() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    let work = tempfile::tempdir().unwrap();
    let mut daemons: Vec<ChildGuard> = ["node-a", "node-b"]
        .iter()
        .map(|node| spawn_weftd(&etcd, work.path(), node))
        .collect();
    let before = wait_for(Duration::from_secs(15), || {
        let records = read_records(&etcd);
        (records.len() == 2).then_some(records)
    })
    .expect("both daemons publish their records");

    etcd.stop();
    std::thread::sleep(Duration::from_secs(10));
    for d in &mut daemons {
        assert!(
            d.try_status().is_none(),
            "{} exited while etcd was down",
            d.name
        );
    }
    etcd.restart().expect("restart etcd");

    let after = wait_for(Duration::from_secs(20), || {
        let records = read_records(&etcd);
        (records == before).then_some(records)
    });
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "same records (and subnets) after the outage"
    );
    // Keep-alives work again: the records outlive several TTLs.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(read_records(&etcd), before);
    for d in &mut daemons {
        assert!(d.try_status().is_none(), "{} exited", d.name);
        d.signal(nix::sys::signal::Signal::SIGTERM);
        let status = d
            .wait_timeout(Duration::from_secs(10))
            .expect("exits on SIGTERM");
        assert!(status.success(), "{} exit status {status}", d.name);
    }
    for node in ["node-a", "node-b"] {
        let log = std::fs::read_to_string(work.path().join(format!("{node}.log"))).unwrap();
        assert!(!log.contains("panicked"), "{node} panicked:\n{log}");
    }
}

fn spawn_weftd(etcd: &EtcdServer, work: &std::path::Path, node: &str) -> ChildGuard {
    let log = std::fs::File::create(work.join(format!("{node}.log"))).unwrap();
    let mut command = Command::new(bin_path("weftd"));
    command
        .args([
            "run",
            "--store",
            "etcd",
            "--etcd-prefix",
            PREFIX,
            "--lease-ttl",
            "3",
        ])
        .args([
            "--cluster-cidr",
            "10.60.0.0/16,fd00:60::/48",
            "--public-ip",
            "192.0.2.7",
        ])
        .arg("--etcd-endpoints")
        .arg(etcd.endpoint())
        .arg("--node-name")
        .arg(node)
        .arg("--state-dir")
        .arg(work.join(node))
        .arg("--run-dir")
        .arg(work.join(format!("{node}-run")))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--datapath=none")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn(node, &mut command).expect("spawn weftd")
}

/// Node name → pod CIDRs, as etcd holds them now (empty if etcd does not answer).
fn read_records(etcd: &EtcdServer) -> Vec<(String, Vec<String>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = etcd_client::Client::connect([etcd.endpoint()], None);
        let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
            return Vec::new();
        };
        let get = client.get(
            format!("{PREFIX}/nodes/"),
            Some(GetOptions::new().with_prefix()),
        );
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), get).await else {
            return Vec::new();
        };
        resp.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<NodeRecord>(kv.value()).ok())
            .map(|r| (r.name, r.pod_cidrs))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_comes_back_and_leave_from_another_process_frees_the_claims() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut a_store = store(&etcd, 10);
    let a = a_store.acquire(&request("a")).await.unwrap();

    client
        .delete(format!("{PREFIX}/nodes/a"), None)
        .await
        .unwrap();
    a_store.renew(&a).await.unwrap();
    let back = client.get(format!("{PREFIX}/nodes/a"), None).await.unwrap();
    assert_eq!(back.kvs().len(), 1, "the renewal republished the record");

    // `weftd leave` runs in a new process: it has no etcd lease id, only the node's name.
    store(&etcd, 10).release(&a).await.unwrap();
    let claims = client
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(claims.kvs().is_empty(), "every claim of a is gone");
    let c = store(&etcd, 10).acquire(&request("c")).await.unwrap();
    assert_eq!(
        c.pod_cidrs, a.pod_cidrs,
        "a's subnets are free for the next node"
    );
}

/// etcd's claims are the authority: a record copying another node's pod CIDR is no peer, even for a
/// watcher that starts after it was written (where the plan alone could only refuse both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_cidr_is_claimed_by_another_node_is_no_peer() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let b = store(&etcd, 10).acquire(&request("b")).await.unwrap();
    let mut thief = b.clone();
    thief.node = NodeName::new("thief").unwrap();
    let record = serde_json::to_string(&thief.to_record()).unwrap();
    client
        .put(format!("{PREFIX}/nodes/thief"), record, None)
        .await
        .unwrap();

    let mut watcher = store(&etcd, 10).watch_peers(&NodeName::new("observer").unwrap());
    let mut peers = PeerSet::default();
    assert!(
        watch_until(&mut watcher, &mut peers, Duration::from_secs(5), |p| p
            .get(&b.node)
            .is_some())
        .await
    );
    assert!(
        peers.get(&thief.node).is_none(),
        "the impostor is no peer at start"
    );

    // Written while the watch runs, it stays out too; and a node leaving takes its record along.
    client
        .put(
            format!("{PREFIX}/nodes/thief"),
            serde_json::to_string(&thief.to_record()).unwrap(),
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    store(&etcd, 10).release(&b).await.unwrap();
    assert!(
        watch_until(&mut watcher, &mut peers, Duration::from_secs(5), |p| p
            .is_empty())
        .await,
        "{:?}",
        peers.len()
    );
}

/// A TCP proxy to etcd that can be cut (every connection closed, new ones dropped at once) and
/// healed: a network partition between one node and etcd, with etcd itself running on.
struct Partition {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn start(etcd: &EtcdServer) -> Partition {
        let target: std::net::SocketAddr = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cutting, list) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cutting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Partition {
            addr,
            cut,
            connections,
            accept,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Renew until the outcome is not transient (at most `tries`, 500 ms apart).
async fn renew_until_settled(
    store: &mut EtcdStore,
    lease: &Lease,
    tries: usize,
) -> Result<Lease, StoreError> {
    let mut last = None;
    for _ in 0..tries {
        match store.renew(lease).await {
            Err(e) if e.is_transient() => last = Some(e),
            other => return other,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.expect("at least one try"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_ttl_is_a_lost_lease_and_the_node_rejoins_with_its_subnets() {
    let etcd = EtcdServer::start().expect("start etcd");
    let partition = Partition::start(&etcd).await;
    let mut node = EtcdStore::new(
        vec![partition.endpoint()],
        PREFIX.into(),
        Duration::from_secs(3),
    );
    let lease = node.acquire(&request("cut-off")).await.unwrap();
    node.renew(&lease).await.expect("renews while connected");

    partition.cut();
    let during = node.renew(&lease).await.expect_err("etcd is out of reach");
    assert!(
        during.is_transient(),
        "a partition is transient at first: {during}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await; // longer than the 3 s TTL
    partition.heal();

    let after = renew_until_settled(&mut node, &lease, 20).await;
    assert!(
        matches!(after, Err(StoreError::LeaseLost { .. })),
        "the expired lease is reported lost, not retried forever: {after:?}"
    );
    let again = LeaseRequest {
        preferred: lease.pod_cidrs,
        ..request("cut-off")
    };
    let back = node.acquire(&again).await.expect("acquires again");
    assert_eq!(
        back.pod_cidrs, lease.pod_cidrs,
        "the same subnets, still free"
    );
    node.renew(&back)
        .await
        .expect("and renews under the new etcd lease");

    // A short partition (within the TTL) is ridden out with the same etcd lease.
    partition.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    partition.heal();
    let renewed = renew_until_settled(&mut node, &back, 10).await;
    assert!(renewed.is_ok(), "{renewed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restored_empty_is_a_lost_lease_and_the_node_claims_again() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    let mut node = store(&etcd, 10);
    let lease = node.acquire(&request("restored")).await.unwrap();
    etcd.stop();
    std::fs::remove_dir_all(etcd.data_dir().join("data")).unwrap();
    etcd.restart().expect("etcd starts again, empty");
    let after = renew_until_settled(&mut node, &lease, 20).await;
    assert!(
        matches!(after, Err(StoreError::LeaseLost { .. })),
        "{after:?}"
    );
    let again = LeaseRequest {
        preferred: lease.pod_cidrs,
        ..request("restored")
    };
    let back = node.acquire(&again).await.expect("claims again");
    assert_eq!(back.pod_cidrs, lease.pod_cidrs);
    node.renew(&back).await.expect("renews");
}

/// Issue "Faults and hostile input", case 3, on etcd: a second machine with the same node name is
/// refused while the first one's record lives; the first keeps renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_with_the_same_node_name_is_refused_on_etcd() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut first = store(&etcd, 10);
    let lease = first.acquire(&request("twin")).await.unwrap();
    let clone = LeaseRequest {
        machine: Some("cloned-vm".into()),
        ..request("twin")
    };
    let refused = store(&etcd, 10).acquire(&clone).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::HeldElsewhere { .. }),
        "{refused}"
    );
    let renewed = first
        .renew(&lease)
        .await
        .expect("the holder keeps its lease");
    assert_eq!(renewed.machine.as_deref(), Some("machine-of-twin"));
}
