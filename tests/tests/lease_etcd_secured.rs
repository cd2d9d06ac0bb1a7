//! The etcd store against a real etcd that serves TLS only, requires client certificates
//! (`--client-cert-auth`) and has authentication on (`auth enable`), as production etcd runs.
//! Each test starts its own etcd with a throwaway CA ([`TestPki`]).
//!
//! Run: `cargo test -p weft-lab --test lease_etcd_secured` (needs `etcd` on PATH).

use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Identity, Permission, TlsOptions};
use weft_lab::etcd::EtcdServer;
use weft_lab::pki::{CertFiles, TestPki};
use weft_lab::procs::{bin_path, ChildGuard};
use weft_proto::lease::{BackendData, MacAddr, NodeRecord, PodCidrs, PublicIps};
use weft_proto::names::NodeName;
use weftd::config::{EtcdAccess, EtcdTls, EtcdUser, Password};
use weftd::store::etcd::EtcdStore;
use weftd::store::{LeaseRequest, LeaseStore, StoreError};
use weftd::subnet::SubnetPool;

const PREFIX: &str = "/weft-secured";
/// The password of etcd user `weft`.
const PASSWORD: &str = "correct horse battery staple";

/// A TLS etcd with users `root` and `weft` (read-write under [`PREFIX`] only) and auth on.
struct Secured {
    pki: TestPki,
    etcd: EtcdServer,
}

impl Secured {
    async fn start() -> Secured {
        let pki = TestPki::new("weft test CA").expect("make a CA");
        let etcd = EtcdServer::start_tls(&pki).expect("start etcd with TLS");
        let secured = Secured { pki, etcd };
        let mut root = secured.root_client().await;
        root.user_add("root", "root-password", None).await.unwrap();
        root.user_grant_role("root", "root").await.unwrap();
        root.role_add("weft").await.unwrap();
        let keys = Permission::read_write(format!("{PREFIX}/")).with_prefix();
        root.role_grant_permission("weft", keys).await.unwrap();
        root.user_add("weft", PASSWORD, None).await.unwrap();
        root.user_grant_role("weft", "weft").await.unwrap();
        root.auth_enable().await.unwrap();
        secured
    }

    fn client_cert(&self, common_name: &str) -> CertFiles {
        self.pki
            .client(common_name)
            .expect("sign a client certificate")
    }

    /// A client authenticated by its certificate alone (etcd takes its CN, `root`, as the user).
    async fn root_client(&self) -> Client {
        let root = self.client_cert("root");
        let identity = Identity::from_pem(
            std::fs::read(&root.cert).unwrap(),
            std::fs::read(&root.key).unwrap(),
        );
        let ca = etcd_client::Certificate::from_pem(std::fs::read(self.pki.ca_file()).unwrap());
        let tls = TlsOptions::new().ca_certificate(ca).identity(identity);
        let options = ConnectOptions::new().with_tls(tls);
        Client::connect([self.etcd.endpoint()], Some(options))
            .await
            .expect("root connects with its certificate")
    }

    /// TLS to this etcd: its CA and a client certificate for `common_name`.
    fn tls(&self, common_name: &str) -> EtcdTls {
        let cert = self.client_cert(common_name);
        EtcdTls {
            ca_file: Some(self.pki.ca_file()),
            identity: Some((cert.cert, cert.key)),
        }
    }

    fn store(&self, access: EtcdAccess) -> EtcdStore {
        let endpoints = vec![self.etcd.endpoint()];
        EtcdStore::new(endpoints, PREFIX.into(), Duration::from_secs(30)).with_access(access)
    }

    /// The node records under [`PREFIX`], read as root.
    async fn records(&self) -> Vec<NodeRecord> {
        let mut root = self.root_client().await;
        let options = GetOptions::new().with_prefix();
        let resp = root.get(format!("{PREFIX}/nodes/"), Some(options)).await;
        resp.unwrap()
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect()
    }
}

fn user(password: &str) -> Option<EtcdUser> {
    Some(EtcdUser {
        name: "weft".into(),
        password: Password::Given(password.into()),
    })
}

fn request(name: &str) -> LeaseRequest {
    LeaseRequest {
        node: NodeName::new(name).unwrap(),
        pool_v4: Some(SubnetPool::new("10.70.0.0/16".parse().unwrap(), 24).unwrap()),
        pool_v6: None,
        preferred: PodCidrs::default(),
        public_ips: PublicIps {
            v4: Some("192.0.2.9".parse().unwrap()),
            v6: None,
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(MacAddr::stable_local(name)),
            vtep_mac_v6: None,
        },
        machine: Some(format!("machine-of-{name}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_ca_a_client_certificate_and_a_user_takes_a_lease() {
    let secured = Secured::start().await;
    // A user and password over TLS with a client certificate, as flannel's flags give.
    let with_user = EtcdAccess {
        tls: Some(secured.tls("node-a")),
        user: user(PASSWORD),
    };
    let lease = secured.store(with_user).acquire(&request("node-a")).await;
    assert!(lease.expect("a lease").pod_cidrs.v4.is_some());
    // The certificate alone: etcd takes its common name, `weft`, as the user.
    let by_certificate = EtcdAccess {
        tls: Some(secured.tls("weft")),
        user: None,
    };
    let lease = secured
        .store(by_certificate)
        .acquire(&request("node-b"))
        .await;
    assert!(lease
        .expect("a lease by certificate")
        .pod_cidrs
        .v4
        .is_some());
    let names: Vec<String> = secured
        .records()
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_for_good_and_never_shown() {
    let secured = Secured::start().await;
    let wrong = "not-the-password-42";
    let access = EtcdAccess {
        tls: Some(secured.tls("node-a")),
        user: user(wrong),
    };
    let error = secured
        .store(access)
        .acquire(&request("node-a"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    assert!(
        !error.is_transient(),
        "retrying cannot fix a wrong password"
    );
    let text = error.to_string();
    assert!(text.contains("etcd refused this node"), "{text}");
    assert!(!text.contains(wrong), "the password leaked: {text}");
    // A user whose role does not cover the prefix is refused by etcd too, and nothing is written.
    let outsider = EtcdAccess {
        tls: Some(secured.tls("nobody")),
        user: None,
    };
    let error = secured
        .store(outsider)
        .acquire(&request("node-c"))
        .await
        .unwrap_err();
    eprintln!("a user without a role on the prefix: {error}");
    assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    assert!(error.to_string().contains("permission denied"), "{error}");
    assert!(secured.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_or_trusting_another_ca_etcd_is_not_reached() {
    let secured = Secured::start().await;
    let no_certificate = EtcdAccess {
        tls: Some(EtcdTls {
            ca_file: Some(secured.pki.ca_file()),
            identity: None,
        }),
        user: user(PASSWORD),
    };
    let error = secured
        .store(no_certificate)
        .acquire(&request("node-a"))
        .await
        .unwrap_err();
    eprintln!("without a client certificate: {error}");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        error.to_string().contains("--etcd-certfile"),
        "a hint: {error}"
    );

    let rogue = TestPki::new("some other CA").unwrap();
    let mut other_ca = secured.tls("node-a");
    other_ca.ca_file = Some(rogue.ca_file());
    let access = EtcdAccess {
        tls: Some(other_ca),
        user: user(PASSWORD),
    };
    let error = secured
        .store(access)
        .acquire(&request("node-a"))
        .await
        .unwrap_err();
    let text = error.to_string();
    eprintln!("trusting another CA: {text}");
    assert!(
        text.contains("certificate"),
        "names the certificate: {text}"
    );

    let mut missing = secured.tls("node-a");
    missing.ca_file = Some(secured.pki.dir().join("absent.pem"));
    let access = EtcdAccess {
        tls: Some(missing),
        user: None,
    };
    let error = secured.store(access).acquire(&request("node-a")).await;
    let text = error.unwrap_err().to_string();
    assert!(
        text.contains("--etcd-cafile") && text.contains("absent.pem"),
        "{text}"
    );
    assert!(secured.records().await.is_empty());
}

/// weftd itself, configured by flags, the password in `WEFT_ETCD_PASSWORD` for one node and in
/// `--etcd-password-file` for the other: both publish their records, neither logs the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_takes_its_password_from_the_environment_or_a_file_and_never_logs_it() {
    let secured = Secured::start().await;
    let work = tempfile::tempdir().unwrap();
    let password_file = work.path().join("etcd-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut daemons = Vec::new();
    for (node, from_file) in [("node-a", false), ("node-b", true)] {
        let mut command = weftd(&secured, work.path(), node);
        match from_file {
            true => command.arg("--etcd-password-file").arg(&password_file),
            false => command.env("WEFT_ETCD_PASSWORD", PASSWORD),
        };
        daemons.push(ChildGuard::spawn(node, &mut command).expect("spawn weftd"));
    }
    let mut names = Vec::new();
    for _ in 0..60 {
        names = secured
            .records()
            .await
            .into_iter()
            .map(|r| r.name)
            .collect();
        if names.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(names, ["node-a", "node-b"], "both daemons hold leases");
    for daemon in &mut daemons {
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let exited = daemon.wait_timeout(Duration::from_secs(10));
        assert!(
            exited.is_some_and(|s| s.success()),
            "{} exits cleanly",
            daemon.name
        );
    }
    for node in ["node-a", "node-b"] {
        let log = std::fs::read_to_string(work.path().join(format!("{node}.log"))).unwrap();
        assert!(log.contains("lease"), "{node} logged its lease:\n{log}");
        assert!(
            !log.contains(PASSWORD),
            "{node} logged the password:\n{log}"
        );
    }
}

fn weftd(secured: &Secured, work: &std::path::Path, node: &str) -> Command {
    let log = std::fs::File::create(work.join(format!("{node}.log"))).unwrap();
    let cert = secured.client_cert(node);
    let mut command = Command::new(bin_path("weftd"));
    command
        .args(["run", "--store", "etcd", "--etcd-prefix", PREFIX])
        .args(["--cluster-cidr", "10.71.0.0/16", "--public-ip", "192.0.2.7"])
        .arg("--etcd-endpoints")
        .arg(secured.etcd.endpoint())
        .arg("--etcd-cafile")
        .arg(secured.pki.ca_file())
        .arg("--etcd-certfile")
        .arg(&cert.cert)
        .arg("--etcd-keyfile")
        .arg(&cert.key)
        .args(["--etcd-username", "weft", "--node-name", node])
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
        .env("RUST_LOG", "debug")
        .env_remove("WEFT_ETCD_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command
}
