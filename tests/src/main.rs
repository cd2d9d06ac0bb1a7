//! `weft-lab`: the single-host lab and the benchmarks.

mod bench;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

use weft_lab::lab::{self, Lab, LabBackend, LabConfig, StoreKind};

/// What `weft-lab up` builds.
struct UpOptions<'a> {
    nodes: usize,
    pods: usize,
    backend: &'a str,
    ipv6: bool,
    store: &'a str,
    routed_underlay: bool,
}

fn up(options: UpOptions) -> anyhow::Result<()> {
    let UpOptions { nodes, pods, .. } = options;
    let (backend, store) = (options.backend, options.store);
    let backend = match backend {
        "vxlan" => LabBackend::Vxlan,
        "wireguard" => LabBackend::WireGuard,
        other => bail!("unknown backend {other:?}; expected vxlan or wireguard"),
    };
    let store = match store {
        "file" => StoreKind::File,
        "etcd" => StoreKind::Etcd,
        "kube" => StoreKind::Kube,
        other => bail!("unknown store {other:?}; expected file, etcd or kube"),
    };
    let config = LabConfig {
        nodes,
        pods_per_node: pods,
        ipv6: options.ipv6,
        store,
        backend,
        routed_underlay: options.routed_underlay,
        direct_routing: options.routed_underlay,
        ..Default::default()
    };
    // A Kubernetes lab stays in the foreground: block the signals that end it before any thread
    // starts, so that every thread inherits the mask and only `sigwait` sees them.
    let signals = foreground_signals();
    if store == StoreKind::Kube {
        signals.thread_block()?;
    }
    let lab = Lab::up(config)?;
    let probes = lab.wait_converged(Duration::from_secs(10));
    println!(
        "lab {} is up: {nodes} nodes, {pods} pods each, files in {}",
        lab.prefix,
        lab.dir.display()
    );
    for node in &lab.nodes {
        println!(
            "  {} ({}, {}): ip netns exec {} bash",
            node.name,
            node.underlay_v4,
            node.underlay_v6,
            node.netns.name()
        );
    }
    if let Some(node) = lab.nodes.first() {
        println!(
            "  inspect: ip netns exec {} {} status|peers|graph|doctor --run-dir {}",
            node.netns.name(),
            weft_lab::procs::bin_path("weftd").display(),
            node.run_dir().display()
        );
    }
    println!("\n{}", lab::render_matrix(&probes));
    let all_ok = probes.iter().all(|p| p.ok);
    if store == StoreKind::Kube {
        return stay_in_the_foreground(lab, all_ok, signals);
    }
    let prefix = lab.prefix.clone();
    let record = lab.detach()?;
    println!(
        "\nremove it with: weft-lab down {prefix}   (record: {})",
        record.display()
    );
    if !all_ok {
        bail!("some probes did not answer");
    }
    Ok(())
}

/// `weft-lab down [NAME] [--all]`: remove one lab, or all of them; with neither, list the labs
/// and fail, removing nothing.
fn down(name: Option<&str>, all: bool) -> anyhow::Result<()> {
    let records = lab::record_dir();
    if let Some(name) = name {
        lab::down(&records, name)?;
        println!("removed lab {name}");
        return Ok(());
    }
    if all {
        let removed = lab::down_all(&records)?;
        if removed.is_empty() {
            println!("no lab was running");
        }
        for prefix in removed {
            println!("removed lab {prefix}");
        }
        return Ok(());
    }
    let labs = lab::lab_names(&records)?;
    println!("{}", weft_lab::error::lab_list(&labs));
    println!("remove one with: weft-lab down NAME; every one with: weft-lab down --all");
    bail!("name a lab to remove, or pass --all");
}

/// A Kubernetes lab lives in this process (the API server's relays into the node namespaces are
/// its threads): keep it until Ctrl-C or SIGTERM, then remove it.
fn stay_in_the_foreground(
    lab: Lab,
    all_ok: bool,
    signals: nix::sys::signal::SigSet,
) -> anyhow::Result<()> {
    println!(
        "\nkubectl --kubeconfig {} get nodes -o wide",
        lab.apiserver().kubeconfig().display()
    );
    println!("this lab runs in the foreground: Ctrl-C removes it");
    if !all_ok {
        eprintln!("warning: some probes did not answer");
    }
    let signal = signals.wait()?;
    println!("{signal}: removing the lab");
    drop(lab);
    Ok(())
}

/// SIGINT and SIGTERM.
fn foreground_signals() -> nix::sys::signal::SigSet {
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals
}

#[derive(Parser)]
#[command(
    name = "weft-lab",
    about = "weft's single-host lab of network namespaces, and its benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab: N node namespaces on a bridge underlay, each running weftd, M pods per node
    /// added through the real weft-cni, and an outside namespace; print the connectivity matrix.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Tunnel backend: vxlan, or wireguard (userspace, `weft-wg`).
        #[arg(long, default_value = "vxlan")]
        backend: String,
        /// Dual-stack pods (IPv4 and IPv6).
        #[arg(long)]
        ipv6: bool,
        /// Lease store: file (default), etcd (starts a local etcd) or kube (starts a real
        /// kube-apiserver and creates each node's Node with its pod CIDRs).
        #[arg(long, default_value = "file")]
        store: String,
        /// Put node-3 and later on a second subnet behind a router namespace, and let weftd
        /// route directly where it can (its default; otherwise the lab runs
        /// `--direct-routing off` so every pair uses the tunnel): node-1 and node-2 route
        /// directly, node-3 goes through VXLAN.
        #[arg(long)]
        routed_underlay: bool,
    },
    /// Remove the lab NAME that `up` left running (the name `up` printed), or every recorded lab
    /// with `--all`; with neither, list the labs. Labs are recorded in /run/weft-lab, or in
    /// $WEFT_LAB_RECORD_DIR when set.
    Down {
        /// The lab to remove: its name (prefix), as `up` printed it.
        #[arg(conflicts_with = "all")]
        name: Option<String>,
        /// Remove every recorded lab, including those other users or test runs started.
        #[arg(long)]
        all: bool,
    },
    /// Pod-to-pod TCP throughput across nodes as a ratio of node-to-node (iperf3, 1 and 4 streams):
    /// VXLAN routed directly, tunnelled on one subnet and tunnelled across a router.
    BenchOverlay {
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// vxlan: overlay against underlay; wireguard: weft-wg (1 and 2 threads) beside Debian's
        /// wireguard-go, VXLAN and the underlay, with retransmits and CPU per Gbit/s.
        #[arg(long, default_value = "vxlan")]
        backend: String,
    },
    /// Time and netlink requests to program N simulated peers, and one further change.
    BenchProgram {
        #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 5000])]
        peers: Vec<usize>,
    },
    /// weftd's resident memory idle and with N peers.
    BenchMemory {
        #[arg(long, default_value_t = 1000)]
        peers: usize,
    },
    /// What weftd's peer health prober costs with N simulated dual-stack peers (CPU share of one
    /// core, probes and replies per second).
    BenchProbe {
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// CNI ADD/DEL latency of weft beside Debian's bridge + host-local plugins.
    BenchCni {
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Then ADD and DEL this many pods at once, in rounds (0: only one at a time).
        #[arg(long, default_value_t = 20)]
        burst: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            nodes,
            pods,
            backend,
            ipv6,
            store,
            routed_underlay,
        } => up(UpOptions {
            nodes,
            pods,
            backend: &backend,
            ipv6,
            store: &store,
            routed_underlay,
        }),
        Command::Down { name, all } => down(name.as_deref(), all),
        Command::BenchOverlay { seconds, backend } => {
            let table = match backend.as_str() {
                "vxlan" => bench::overlay::overlay_throughput(seconds)?,
                "wireguard" => bench::wireguard::wireguard_throughput(seconds)?,
                other => bail!("unknown backend {other:?}; expected vxlan or wireguard"),
            };
            print!("{table}");
            Ok(())
        }
        Command::BenchProgram { peers } => {
            print!("{}", bench::program::programming_cost(&peers)?);
            Ok(())
        }
        Command::BenchMemory { peers } => {
            print!("{}", bench::memory::daemon_memory(peers)?);
            Ok(())
        }
        Command::BenchProbe { peers, seconds } => {
            print!("{}", bench::probe::probe_cost_table(peers, seconds)?);
            Ok(())
        }
        Command::BenchCni { pods, burst } => {
            print!("{}", bench::cni::cni_latency(pods, burst)?);
            Ok(())
        }
    }
}
