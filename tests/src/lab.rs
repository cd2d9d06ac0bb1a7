//! The single-host lab: "nodes" are network namespaces joined by a bridge (the underlay, in a
//! namespace of its own), each running a real `weftd`; "pods" are namespaces wired through the real
//! `weft-cni` binary, called exactly as a container runtime calls a CNI plugin; an "outside"
//! namespace on the underlay stands for the world beyond the cluster.
//!
//! ```text
//!            [outside 192.0.2.254, 2001:db8::254]
//!                          |
//!   underlay ns: br0 ------+------------------+---- …
//!                |                            |
//!   [node-1 eth0 192.0.2.11]      [node-2 eth0 192.0.2.12]
//!     weftd, pods p1..pM            weftd, pods …
//! ```
//! With [`LabConfig::routed_underlay`], node-3 and later sit on a second subnet, on a bridge of
//! its own, joined to the first by a router namespace: node-1 and node-2 share a link, node-3
//! reaches them through the router (so VXLAN's direct routing has one pair of each kind).
//!
//! ```text
//!   br0: 192.0.2.0/24, 2001:db8::/64 ---- [router .253 | .1] ---- br1: 198.51.100.0/24, 2001:db8:1::/64
//!         node-1 .11, node-2 .12                                   node-3 .13, …
//! ```
//!
//! Everything the lab makes carries a prefix unique to the run, and is removed when the [`Lab`]
//! drops — unless it was detached for `weft-lab up`; then `weft-lab down PREFIX` removes it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::etcd::EtcdServer;
use crate::k8s::ApiServer;
use crate::netns::{ip, unique_prefix, NetnsGuard};
use crate::procs::{locate, wait_for, ChildGuard};
use crate::relay::Relay;

pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";
/// The lab's etcd, on the underlay bridge (`--store etcd`).
pub const ETCD_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x254);
/// The routed underlay ([`LabConfig::routed_underlay`]): the router's addresses on br0 …
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 253);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x253);
/// … the second subnet, on br1, and the router's addresses there.
pub const SECOND_SUBNET_V4: &str = "198.51.100.0/24";
pub const SECOND_SUBNET_V6: &str = "2001:db8:1::/64";
pub const ROUTER_SECOND_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ROUTER_SECOND_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The first node on the second subnet (numbered from 1).
pub const FIRST_ROUTED_NODE: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    File,
    Etcd,
    /// A real kube-apiserver (see [`crate::k8s`]); the lab plays kube-controller-manager's node
    /// IPAM, creating each node's Node with its `spec.podCIDRs`.
    Kube,
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Pod families: IPv4 always unless `ipv6_only`; IPv6 when `ipv6` (dual stack) or `ipv6_only`.
    pub ipv6: bool,
    pub ipv6_only: bool,
    pub store: StoreKind,
    /// Extra `weftd run` arguments for every node.
    pub weftd_args: Vec<String>,
    /// Extra environment variables for every node's weftd (and what it starts, such as `weft-wg`).
    pub weftd_env: Vec<(String, String)>,
    /// Publish only the nodes' IPv6 underlay addresses: tunnels run over IPv6.
    pub ipv6_underlay: bool,
    /// Let weftd find the underlay address itself (`--iface eth0`) instead of `--public-ip`.
    pub detect_underlay: bool,
    pub backend: LabBackend,
    /// Nodes from node-3 on a second subnet behind a router namespace (see the module doc).
    pub routed_underlay: bool,
    /// VXLAN: let weftd route peers on its own subnet directly (its default); otherwise the lab
    /// runs `--direct-routing off`, so every pair of nodes exercises the tunnel.
    pub direct_routing: bool,
}

/// The tunnel backend of every lab node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabBackend {
    #[default]
    Vxlan,
    /// Userspace WireGuard (`weft-wg`); each node's device has its own name
    /// ([`LabNode::wg_device`]), since every node of one host shares `/var/run/wireguard`.
    WireGuard,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 1,
            pods_per_node: 0,
            ipv6: true,
            ipv6_only: false,
            store: StoreKind::File,
            weftd_args: Vec::new(),
            weftd_env: Vec::new(),
            ipv6_underlay: false,
            detect_underlay: false,
            backend: LabBackend::Vxlan,
            routed_underlay: false,
            direct_routing: false,
        }
    }
}

/// The output of one CNI plugin call.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    /// The CNI error code, if the call failed with a CNI error object.
    pub fn code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
}

pub struct LabNode {
    pub index: usize,
    pub name: String,
    pub netns: NetnsGuard,
    pub underlay_v4: Ipv4Addr,
    pub underlay_v6: Ipv6Addr,
    pub dir: PathBuf,
    pub daemon: Option<ChildGuard>,
    /// `--store kube`: the API server's port relayed into the node's namespace.
    pub relay: Option<Relay>,
}

impl LabNode {
    /// The node's weftd run directory (its CNI and control sockets): `--run-dir` of
    /// `weftd status`, `peers`, `graph` and `doctor`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The pid of the `weft-wg` in the node's namespace, if one runs.
    pub fn weft_wg_pid(&self) -> Option<i32> {
        let pids = crate::netns::run(&["ip", "netns", "pids", self.netns.name()]).ok()?;
        pids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "weft-wg")
            })
    }

    /// The node's WireGuard device when the lab runs WireGuard: `wg` + the namespace name less
    /// `-node-` (`wgw1234x0n1`): unique on the host, at most 15 bytes.
    pub fn wg_device(&self) -> String {
        let name = self.netns.name().replace("-node-", "n");
        format!("wg{name}")
    }

    /// The node's weft pod veths (`weft` + 11 hex digits), by name.
    pub fn weft_veths(&self) -> Result<std::collections::BTreeSet<String>> {
        let out = self
            .netns
            .exec(&["ip", "-o", "link", "show", "type", "veth"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("weft") && n.len() == 15)
            .collect())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("cni.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weftd.log")).unwrap_or_default()
    }
}

pub struct LabPod {
    pub node: usize,
    pub name: String,
    pub netns: NetnsGuard,
    pub container_id: String,
    pub ifname: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl LabPod {
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
            .collect()
    }
}

pub struct Lab {
    pub config: LabConfig,
    pub prefix: String,
    pub dir: PathBuf,
    // Field order is drop order: pods and nodes go before the underlay they hang on.
    pub pods: Vec<LabPod>,
    pub nodes: Vec<LabNode>,
    pub outside: NetnsGuard,
    /// The router between the two subnets of a routed underlay.
    pub router: Option<NetnsGuard>,
    pub underlay: NetnsGuard,
    pub etcd: Option<EtcdServer>,
    /// `--store kube`: the API server (dropped after the nodes).
    pub apiserver: Option<ApiServer>,
    /// The `weftd` and `weft-cni` binaries every node and pod uses.
    weftd: PathBuf,
    weft_cni: PathBuf,
    remove_dir: bool,
    /// Pods ever made per node: numbers pod names so a removed pod's name is never reused.
    pods_made: std::collections::BTreeMap<usize, usize>,
}

impl Lab {
    /// Build the underlay and the outside, start `config.nodes` nodes, add the pods.
    pub fn up(config: LabConfig) -> Result<Lab> {
        let (weftd, weft_cni) = (locate("weftd")?, locate("weft-cni")?);
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("weft-lab-{prefix}"));
        std::fs::create_dir_all(&dir).map_err(LabError::io(&dir))?;
        let underlay = NetnsGuard::create(&format!("{prefix}-underlay"))?;
        underlay.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        underlay.exec(&["ip", "link", "set", "br0", "up"])?;
        let outside = NetnsGuard::create(&format!("{prefix}-outside"))?;
        attach(&underlay, &outside, "out", OUTSIDE_V4, OUTSIDE_V6)?;
        let router = match config.routed_underlay {
            true => Some(add_router(&prefix, &underlay, &outside)?),
            false => None,
        };
        let etcd = match config.store {
            StoreKind::Etcd => {
                // etcd lives on the underlay, where every node reaches it.
                underlay.exec(&["ip", "addr", "add", &format!("{ETCD_V4}/24"), "dev", "br0"])?;
                Some(EtcdServer::start_in(underlay.name(), IpAddr::V4(ETCD_V4))?)
            }
            StoreKind::File | StoreKind::Kube => None,
        };
        let apiserver = match config.store {
            StoreKind::Kube => Some(ApiServer::start()?),
            _ => None,
        };
        let mut lab = Lab {
            config: config.clone(),
            prefix,
            dir,
            pods: Vec::new(),
            nodes: Vec::new(),
            outside,
            router,
            underlay,
            etcd,
            apiserver,
            weftd,
            weft_cni,
            remove_dir: true,
            pods_made: Default::default(),
        };
        for _ in 0..config.nodes {
            lab.add_node()?;
        }
        for node in 0..config.nodes {
            for _ in 0..config.pods_per_node {
                lab.add_pod(node)?;
            }
        }
        Ok(lab)
    }

    /// Add a node namespace on the underlay and start its weftd; returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let index = self.nodes.len();
        let number = index + 1;
        let name = format!("node-{number}");
        let netns = NetnsGuard::create(&format!("{}-{name}", self.prefix))?;
        let routed = self.config.routed_underlay && number >= FIRST_ROUTED_NODE;
        let (v4, v6) = node_underlay(number, routed);
        let port = format!("n{number}");
        match routed {
            false => attach(&self.underlay, &netns, &port, v4, v6)?,
            true => attach_to(&self.underlay, "br1", &netns, (&port, "eth0"), v4, v6)?,
        }
        let (gateway_v4, gateway_v6) = match routed {
            false => (OUTSIDE_V4, OUTSIDE_V6),
            true => (ROUTER_SECOND_V4, ROUTER_SECOND_V6),
        };
        for (flag, gateway) in [
            ("-4", gateway_v4.to_string()),
            ("-6", gateway_v6.to_string()),
        ] {
            netns.exec(&["ip", flag, "route", "add", "default", "via", &gateway])?;
        }
        if self.config.routed_underlay && !routed {
            routes_via(&netns, ROUTER_V4, ROUTER_V6)?;
        }
        let dir = self.dir.join(&name);
        std::fs::create_dir_all(&dir).map_err(LabError::io(&dir))?;
        let relay = match &self.apiserver {
            Some(apiserver) => {
                self.create_node_object(apiserver, index, &name)?;
                Some(apiserver.relay_into(netns.path())?)
            }
            None => None,
        };
        self.nodes.push(LabNode {
            index,
            name,
            netns,
            underlay_v4: v4,
            underlay_v6: v6,
            dir,
            daemon: None,
            relay,
        });
        self.start_daemon(index)?;
        Ok(index)
    }

    /// The IPv4 pod CIDR the lab gives node `index` on the Kubernetes store (the file and etcd
    /// stores choose their own): 10.244.INDEX.0/24, as first fit would.
    pub fn node_pod_cidr_v4(&self, index: usize) -> String {
        format!("10.244.{index}.0/24")
    }

    /// The IPv6 one: fd00:10:244:INDEX::/64.
    pub fn node_pod_cidr_v6(&self, index: usize) -> String {
        format!("fd00:10:244:{index:x}::/64")
    }

    /// Create node `index`'s Node object with its pod CIDRs, as kube-controller-manager's node
    /// IPAM would assign them.
    fn create_node_object(&self, apiserver: &ApiServer, index: usize, name: &str) -> Result<()> {
        let mut cidrs = Vec::new();
        if !self.config.ipv6_only {
            cidrs.push(self.node_pod_cidr_v4(index));
        }
        if self.config.ipv6 || self.config.ipv6_only {
            cidrs.push(self.node_pod_cidr_v6(index));
        }
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDRs": cidrs},
        });
        apiserver.kubectl_stdin(&["create", "-f", "-"], &node.to_string())?;
        Ok(())
    }

    /// The API server of a `--store kube` lab.
    pub fn apiserver(&self) -> &ApiServer {
        self.apiserver
            .as_ref()
            .expect("a lab on the Kubernetes store")
    }

    /// The same, to stop and start it.
    pub fn apiserver_mut(&mut self) -> &mut ApiServer {
        self.apiserver
            .as_mut()
            .expect("a lab on the Kubernetes store")
    }

    /// The lab's `--cluster-cidr`.
    pub fn cluster_cidr(&self) -> String {
        match (self.config.ipv6_only, self.config.ipv6) {
            (true, _) => CLUSTER_CIDR_V6.to_string(),
            (false, true) => format!("{CLUSTER_CIDR_V4},{CLUSTER_CIDR_V6}"),
            (false, false) => CLUSTER_CIDR_V4.to_string(),
        }
    }

    /// The `weftd run` command line of a node.
    pub fn weftd_command(&self, index: usize) -> Command {
        let node = &self.nodes[index];
        let public_ips = if self.config.ipv6_underlay {
            node.underlay_v6.to_string()
        } else {
            format!("{},{}", node.underlay_v4, node.underlay_v6)
        };
        let underlay_args = if self.config.detect_underlay {
            ["--iface".to_string(), "eth0".to_string()]
        } else {
            ["--public-ip".to_string(), public_ips]
        };
        let mut command = node.netns.command(self.weftd.to_str().expect("utf-8 path"));
        command
            .arg("run")
            .args(["--node-name", &node.name])
            .args(["--cluster-cidr", &self.cluster_cidr()])
            .args(underlay_args)
            .args(["--lease-ttl", "10"])
            .arg("--state-dir")
            .arg(node.dir.join("state"))
            .arg("--run-dir")
            .arg(node.run_dir());
        match (&self.etcd, &self.apiserver) {
            (Some(etcd), _) => {
                command.args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoint()])
            }
            (None, Some(apiserver)) => command
                .args(["--store", "kube", "--kubeconfig"])
                .arg(apiserver.kubeconfig()),
            (None, None) => command
                .args(["--store", "file", "--store-dir"])
                .arg(self.dir.join("store")),
        };
        if self.config.backend == LabBackend::Vxlan && !self.config.direct_routing {
            command.args(["--direct-routing", "off"]);
        }
        if self.config.backend == LabBackend::WireGuard {
            command.args([
                "--backend",
                "wireguard",
                "--wireguard-device",
                &node.wg_device(),
            ]);
        }
        command.args(&self.config.weftd_args);
        command
    }

    /// Start (or restart) a node's weftd and wait until its CNI socket answers.
    pub fn start_daemon(&mut self, index: usize) -> Result<()> {
        let mut command = self.weftd_command(index);
        let node = &mut self.nodes[index];
        let log_path = node.dir.join("weftd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(LabError::io(&log_path))?;
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        command.envs(self.config.weftd_env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(LabError::io(&log_path))?)
            .stderr(log);
        let _ = std::fs::remove_file(node.socket());
        node.daemon = Some(ChildGuard::spawn(node.name.clone(), &mut command)?);
        let socket = node.socket();
        let after = Duration::from_secs(20);
        let ready = wait_for(after, || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(|_| ())
        });
        ready.ok_or_else(|| LabError::Timeout {
            what: format!("{}'s weftd to open {}", node.name, socket.display()),
            after,
            log: node.log(),
        })
    }

    /// Stop a node's weftd: SIGKILL when `kill`, else SIGTERM and wait.
    pub fn stop_daemon(&mut self, index: usize, kill: bool) {
        if let Some(mut daemon) = self.nodes[index].daemon.take() {
            if !kill {
                daemon.signal(nix::sys::signal::Signal::SIGTERM);
                daemon.wait_timeout(Duration::from_secs(10));
            }
            daemon.kill();
        }
    }

    /// The network configuration a node's runtime passes to the plugin.
    pub fn netconf(&self, index: usize) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "weft",
            "type": "weft",
            "daemonSocket": self.nodes[index].socket(),
        })
    }

    /// Call the real `weft-cni` binary as a runtime does.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        config: &Value,
    ) -> CniOutput {
        call_plugin(&self.weft_cni, command, container_id, netns, ifname, config)
    }

    /// Make a pod namespace on a node and ADD it; returns its index in `pods`.
    pub fn add_pod(&mut self, node: usize) -> Result<usize> {
        let conf = self.netconf(node);
        self.add_pod_with(node, &conf)
    }

    /// Make a pod namespace on a node and ADD it with the network configuration `conf`; returns
    /// its index in `pods`.
    pub fn add_pod_with(&mut self, node: usize, conf: &Value) -> Result<usize> {
        let made = self.pods_made.entry(node).or_default();
        *made += 1;
        let number = *made;
        let name = format!("{}-p{number}", self.nodes[node].name);
        let netns = NetnsGuard::create(&format!("{}-{name}", self.prefix))?;
        let container_id = format!("{}{}", self.prefix, name.replace('-', ""));
        let out = self.cni("ADD", &container_id, Some(&netns.path()), "eth0", conf);
        if !out.success {
            return Err(LabError::Plugin {
                plugin: self.weft_cni.clone(),
                command: "ADD".into(),
                pod: name,
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
        let (v4, v6) = result_addresses(&out.json());
        self.pods.push(LabPod {
            node,
            name,
            netns,
            container_id,
            ifname: "eth0".into(),
            v4,
            v6,
        });
        Ok(self.pods.len() - 1)
    }

    /// DEL a pod and drop its namespace.
    pub fn remove_pod(&mut self, pod: usize) -> CniOutput {
        let p = self.pods.remove(pod);
        self.cni(
            "DEL",
            &p.container_id,
            Some(&p.netns.path()),
            &p.ifname,
            &self.netconf(p.node),
        )
    }

    /// Keep everything running after this value drops (for `weft-lab up`), and record what it is
    /// in [`record_dir`]`/PREFIX.json` for `weft-lab down PREFIX`.
    pub fn detach(self) -> Result<PathBuf> {
        self.detach_to(&record_dir())
    }

    /// [`Lab::detach`], recording the lab in `records` (a record directory of the caller's own).
    ///
    /// The record names exactly what `down` may remove: the prefix of the lab's namespaces, its
    /// directory (and etcd's), and each process with a directory its command line names, so that
    /// a pid reused by another process is left alone.
    pub fn detach_to(mut self, records: &Path) -> Result<PathBuf> {
        let mut processes: Vec<Value> = self
            .nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref().map(|d| (d.pid(), &n.dir)))
            .map(|(pid, dir)| json!({"pid": pid, "names": dir}))
            .collect();
        let mut dirs = vec![self.dir.clone()];
        if let Some(etcd) = &self.etcd {
            processes.push(json!({"pid": etcd.pid(), "names": etcd.data_dir()}));
            dirs.push(etcd.data_dir().to_path_buf());
        }
        let record = json!({"prefix": self.prefix, "dirs": dirs, "processes": processes});
        std::fs::create_dir_all(records).map_err(LabError::io(records))?;
        let path = records.join(format!("{}.json", self.prefix));
        std::fs::write(&path, record.to_string()).map_err(LabError::io(&path))?;
        self.remove_dir = false;
        for pod in &mut self.pods {
            pod.netns.keep();
        }
        for node in &mut self.nodes {
            node.netns.keep();
            if let Some(daemon) = node.daemon.take() {
                daemon.detach();
            }
        }
        self.outside.keep();
        if let Some(router) = &mut self.router {
            router.keep();
        }
        self.underlay.keep();
        if let Some(etcd) = self.etcd.take() {
            etcd.detach();
        }
        Ok(path)
    }
}

/// Where detached labs are recorded unless `WEFT_LAB_RECORD_DIR` says otherwise.
pub const RECORD_DIR: &str = "/run/weft-lab";

/// The directory of lab records: `$WEFT_LAB_RECORD_DIR` when set and not empty, else
/// [`RECORD_DIR`].
pub fn record_dir() -> PathBuf {
    match std::env::var_os("WEFT_LAB_RECORD_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(RECORD_DIR),
    }
}

/// The names (prefixes) of the labs recorded in `records`, sorted; none when it does not exist.
pub fn lab_names(records: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(records) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(records)(e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    names.sort();
    Ok(names)
}

/// Remove the lab `name` recorded in `records`: its processes, namespaces and files, and nothing
/// else. An unknown name is [`LabError::UnknownLab`]. Every step runs; failures are reported
/// together.
pub fn down(records: &Path, name: &str) -> Result<()> {
    let labs = lab_names(records)?;
    if !labs.iter().any(|l| l == name) {
        return Err(LabError::UnknownLab {
            name: name.to_string(),
            labs,
        });
    }
    let failures = down_one(&records.join(format!("{name}.json")), name)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(LabError::Several(failures))
    }
}

/// Remove every lab recorded in `records`. Returns the names removed. Every step runs; failures
/// are reported together.
pub fn down_all(records: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for name in lab_names(records)? {
        match down_one(&records.join(format!("{name}.json")), &name) {
            Ok(errors) => {
                removed.push(name);
                failures.extend(errors);
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(LabError::Several(failures))
    }
}

/// Remove the lab `name` recorded at `path`; the steps that failed on the way.
fn down_one(path: &Path, name: &str) -> Result<Vec<LabError>> {
    let bad = |reason: String| LabError::Record {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(LabError::io(path))?;
    let record: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if record["prefix"].as_str() != Some(name) {
        return Err(bad(format!("its prefix is not {name:?}")));
    }
    let mut failures = stop_processes(&record, path);
    failures.extend(delete_namespaces(name));
    remove_wireguard_sockets(name);
    for dir in record["dirs"].as_array().into_iter().flatten() {
        let dir = Path::new(dir.as_str().unwrap_or_default());
        failures.extend(remove_lab_dir(dir, name, path).err());
    }
    if let Err(e) = std::fs::remove_file(path) {
        failures.push(LabError::io(path)(e));
    }
    Ok(failures)
}

/// SIGKILL each process the record names whose command line still names the record's directory
/// for it (a pid since reused by something else is left alone); the kills that failed.
fn stop_processes(record: &Value, path: &Path) -> Vec<LabError> {
    let mut failures = Vec::new();
    if record.get("processes").is_none() && record.get("pids").is_some() {
        failures.push(LabError::Record {
            path: path.to_path_buf(),
            reason: format!(
                "written by an older weft-lab: its processes {} are not checked, so not stopped",
                record["pids"]
            ),
        });
    }
    for process in record["processes"].as_array().into_iter().flatten() {
        let (Some(pid), Some(names)) = (process["pid"].as_u64(), process["names"].as_str()) else {
            continue;
        };
        if names.is_empty() || !process_names(pid, names) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(errno) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            failures.push(LabError::Io {
                path: PathBuf::from(format!("/proc/{pid}")),
                source: errno.into(),
            });
        }
    }
    failures
}

/// Whether process `pid` is running with `text` among its command-line arguments' contents.
pub fn process_names(pid: u64, text: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(text))
}

/// The lab's network namespaces: those named `PREFIX-…`.
pub fn lab_namespaces(prefix: &str) -> Result<Vec<String>> {
    let list = crate::netns::run(&["ip", "netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.strip_prefix(prefix).is_some_and(|r| r.starts_with('-')))
        .map(str::to_string)
        .collect())
}

/// Delete the lab's network namespaces; the deletions that failed.
fn delete_namespaces(prefix: &str) -> Vec<LabError> {
    let names = match lab_namespaces(prefix) {
        Ok(names) => names,
        Err(e) => return vec![e],
    };
    names
        .iter()
        .filter_map(|n| crate::netns::delete(n).err())
        .collect()
}

/// Remove the control sockets of the lab's WireGuard devices (`wgPREFIXn…`, see
/// [`LabNode::wg_device`]), left behind by the `weft-wg`s its namespaces' deletion killed.
fn remove_wireguard_sockets(prefix: &str) {
    let start = format!("wg{prefix}n");
    let entries = std::fs::read_dir("/var/run/wireguard")
        .into_iter()
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&start) && name.ends_with(".sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Remove a directory the record names, if it is one a lab makes: the lab's own
/// (`weft-lab-PREFIX`) or its etcd's (`weft-etcd-…`). Anything else is refused.
fn remove_lab_dir(dir: &Path, prefix: &str, record: &Path) -> Result<()> {
    let base = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if base != format!("weft-lab-{prefix}") && !base.starts_with("weft-etcd-") {
        return Err(LabError::Record {
            path: record.to_path_buf(),
            reason: format!("{} is not a lab's directory: left in place", dir.display()),
        });
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(dir)(e)),
        _ => Ok(()),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut daemon) = node.daemon.take() {
                daemon.kill();
            }
            if self.remove_dir && self.config.backend == LabBackend::WireGuard {
                // Not detached: weft-wg exits within a second of its control socket going.
                let socket = format!("/var/run/wireguard/{}.sock", node.wg_device());
                let _ = std::fs::remove_file(socket);
            }
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connect `netns` to the underlay bridge: a veth `<port>` on br0, `eth0` in `netns` with the
/// given addresses (no IPv6 DAD: the lab's addresses are unique by construction).
fn attach(
    underlay: &NetnsGuard,
    netns: &NetnsGuard,
    port: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
) -> Result<()> {
    attach_to(underlay, "br0", netns, (port, "eth0"), v4, v6)
}

/// Connect `netns` to `bridge` in the underlay namespace: a veth `ports.0` on the bridge, `ports.1`
/// in `netns` with `v4`/24 and `v6`/64, up.
fn attach_to(
    underlay: &NetnsGuard,
    bridge: &str,
    netns: &NetnsGuard,
    (port, ifname): (&str, &str),
    v4: Ipv4Addr,
    v6: Ipv6Addr,
) -> Result<()> {
    underlay.exec(&[
        "ip",
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        ifname,
        "netns",
        netns.name(),
    ])?;
    underlay.exec(&["ip", "link", "set", port, "master", bridge, "up"])?;
    netns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{ifname}.accept_dad=0"),
    ])?;
    netns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
    let v6 = format!("{v6}/64");
    netns.exec(&["ip", "addr", "add", &v6, "dev", ifname, "nodad"])?;
    netns.exec(&["ip", "link", "set", ifname, "up"])?;
    Ok(())
}

/// The underlay addresses of node `number` (from 1): on br0, or on the second subnet (`routed`).
fn node_underlay(number: usize, routed: bool) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + number as u8;
    match routed {
        false => (
            Ipv4Addr::new(192, 0, 2, host),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + number as u16),
        ),
        true => (
            Ipv4Addr::new(198, 51, 100, host),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + number as u16),
        ),
    }
}

/// The routed underlay: br1 for the second subnet, and a router namespace forwarding between it
/// and br0 (its default route: the outside). The outside and the underlay namespace (etcd) learn
/// the way to the second subnet.
fn add_router(prefix: &str, underlay: &NetnsGuard, outside: &NetnsGuard) -> Result<NetnsGuard> {
    underlay.exec(&["ip", "link", "add", "br1", "type", "bridge"])?;
    underlay.exec(&["ip", "link", "set", "br1", "up"])?;
    let router = NetnsGuard::create(&format!("{prefix}-router"))?;
    attach_to(
        underlay,
        "br0",
        &router,
        ("rt0", "eth0"),
        ROUTER_V4,
        ROUTER_V6,
    )?;
    let second = (ROUTER_SECOND_V4, ROUTER_SECOND_V6);
    attach_to(
        underlay,
        "br1",
        &router,
        ("rt1", "eth1"),
        second.0,
        second.1,
    )?;
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    router.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    for (flag, gateway) in [
        ("-4", OUTSIDE_V4.to_string()),
        ("-6", OUTSIDE_V6.to_string()),
    ] {
        router.exec(&["ip", flag, "route", "add", "default", "via", &gateway])?;
    }
    routes_via(outside, ROUTER_V4, ROUTER_V6)?;
    // etcd, on br0 in the underlay namespace, answers nodes on the second subnet too.
    underlay.exec(&["ip", "addr", "add", "192.0.2.252/24", "dev", "br0"])?;
    let via = ROUTER_V4.to_string();
    underlay.exec(&["ip", "route", "add", SECOND_SUBNET_V4, "via", &via])?;
    Ok(router)
}

/// In `netns`, routes to the second subnet through the router's br0 addresses.
fn routes_via(netns: &NetnsGuard, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    netns.exec(&[
        "ip",
        "route",
        "add",
        SECOND_SUBNET_V4,
        "via",
        &v4.to_string(),
    ])?;
    netns.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        SECOND_SUBNET_V6,
        "via",
        &v6.to_string(),
    ])?;
    Ok(())
}

/// Run a CNI plugin binary with the CNI environment and `config` on stdin.
pub fn call_plugin(
    plugin: &Path,
    command: &str,
    container_id: &str,
    netns: Option<&str>,
    ifname: &str,
    config: &Value,
) -> CniOutput {
    call_plugin_with(
        Command::new(plugin),
        command,
        container_id,
        netns,
        ifname,
        config,
    )
}

/// Run a CNI plugin inside `inside` (the way a node's runtime runs, say, portmap there).
pub fn call_plugin_in(
    inside: &NetnsGuard,
    plugin: &Path,
    command: &str,
    container_id: &str,
    netns: Option<&str>,
    ifname: &str,
    config: &Value,
) -> CniOutput {
    let program = plugin.to_str().expect("utf-8 plugin path");
    call_plugin_with(
        inside.command(program),
        command,
        container_id,
        netns,
        ifname,
        config,
    )
}

/// Run a CNI plugin through `cmd` (a `Command` that execs the plugin, perhaps through `nsenter`
/// or `ip netns exec`), with the CNI environment and `config` on stdin.
pub fn call_plugin_with(
    mut cmd: Command,
    command: &str,
    container_id: &str,
    netns: Option<&str>,
    ifname: &str,
    config: &Value,
) -> CniOutput {
    use std::io::Write;
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = netns {
        cmd.env("CNI_NETNS", path);
    }
    let mut child = cmd.spawn().expect("spawn the CNI plugin");
    // A plugin may answer without reading its input (VERSION does): a closed pipe is not an error.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes());
    let output = child.wait_with_output().expect("plugin output");
    CniOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The pod addresses in a CNI result.
pub fn result_addresses(result: &Value) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match text
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
        {
            Some(IpAddr::V4(a)) => v4 = Some(a),
            Some(IpAddr::V6(a)) => v6 = Some(a),
            None => {}
        }
    }
    (v4, v6)
}

/// The source address a TCP listener in `server` on `target` sees when `client` connects to it
/// (a connection that is not made within `timeout` is the error).
pub fn source_address_seen(
    client: &NetnsGuard,
    server: &NetnsGuard,
    target: IpAddr,
    timeout: Duration,
) -> Result<IpAddr, String> {
    let listener = server
        .tcp_listen(std::net::SocketAddr::new(target, 0))
        .map_err(|e| format!("listen on {target} in {}: {e}", server.name()))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let target = std::net::SocketAddr::new(target, port);
    let stream = client
        .tcp_connect(target, timeout)
        .map_err(|e| format!("connect from {} to {target}: {e}", client.name()))?;
    // The handshake is done: the connection waits in the listener's queue.
    let (_, peer) = listener.accept().map_err(|e| e.to_string())?;
    drop(stream);
    Ok(peer.ip())
}

/// The remaining `ip` helper, re-exported for tests that inspect a namespace.
pub fn ip_in(netns: &NetnsGuard, args: &[&str]) -> String {
    let mut full = vec!["-n", netns.name()];
    full.extend_from_slice(args);
    ip(&full)
}

/// One connectivity check: from a pod to an address.
#[derive(Debug, Clone)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub target: IpAddr,
    pub ok: bool,
}

impl Lab {
    /// Every pod to every other pod on each family it has, and to the outside: ping, in parallel.
    pub fn probes(&self) -> Vec<Probe> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .map(|from| {
                    scope.spawn(move || {
                        let mut targets: Vec<(String, IpAddr)> = Vec::new();
                        for to in self.pods.iter().filter(|p| p.name != from.name) {
                            targets
                                .extend(to.addresses().into_iter().map(|a| (to.name.clone(), a)));
                        }
                        if from.v4.is_some() {
                            targets.push(("outside".into(), IpAddr::V4(OUTSIDE_V4)));
                        }
                        if from.v6.is_some() {
                            targets.push(("outside".into(), IpAddr::V6(OUTSIDE_V6)));
                        }
                        targets
                            .into_iter()
                            .map(|(to, target)| Probe {
                                from: from.name.clone(),
                                to,
                                target,
                                ok: from.netns.ping(&target.to_string(), 1),
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }

    /// Probe until everything answers or `timeout` passes; the last round of probes.
    pub fn wait_converged(&self, timeout: Duration) -> Vec<Probe> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let probes = self.probes();
            if probes.iter().all(|p| p.ok) || std::time::Instant::now() >= deadline {
                return probes;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The connectivity matrix as text: one row per source pod, one column per destination, each cell
/// the families that answered (`4`, `6`, `46`) or `--`.
pub fn render_matrix(probes: &[Probe]) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    for p in probes {
        if !columns.contains(&p.to) {
            columns.push(p.to.clone());
        }
        if !rows.contains(&p.from) {
            rows.push(p.from.clone());
        }
    }
    columns.sort_by_key(|c| (c == "outside", c.clone()));
    rows.sort();
    let width = columns
        .iter()
        .chain(&rows)
        .map(String::len)
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:width$}", "from \\ to");
    for c in &columns {
        out += &format!(" {c:>width$}");
    }
    out.push('\n');
    for r in &rows {
        out += &format!("{r:width$}");
        for c in &columns {
            let cell: String = probes
                .iter()
                .filter(|p| &p.from == r && &p.to == c)
                .map(|p| match (p.target.is_ipv4(), p.ok) {
                    (true, true) => "4",
                    (false, true) => "6",
                    (true, false) => "x4",
                    (false, false) => "x6",
                })
                .collect();
            let cell = if r == c {
                "·".to_string()
            } else if cell.is_empty() {
                "--".to_string()
            } else {
                cell
            };
            out += &format!(" {cell:>width$}");
        }
        out.push('\n');
    }
    let failed = probes.iter().filter(|p| !p.ok).count();
    out += &format!(
        "{} of {} probes answered",
        probes.len() - failed,
        probes.len()
    );
    if failed > 0 {
        out += " (x4/x6: no answer on that family)";
    }
    out
}
