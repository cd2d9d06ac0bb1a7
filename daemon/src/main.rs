//! `weftd`: the weft node agent and its commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::info;
use weftd::config::{CliSettings, Config, RawSettings};
use weftd::inspect::snapshot::Snapshot;
use weftd::inspect::{control, doctor, graph, render};
use weftd::store::{self, LeaseStore};
use weftd::{agent, state, underlay};

#[derive(Parser)]
#[command(
    name = "weftd",
    version,
    about = "weft node agent: pod CIDR leases, overlay tunnels, pod wiring"
)]
struct Cli {
    /// Log lines as `text` for people or `json` (one object per line) for log collectors.
    #[arg(
        long,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct Settings {
    /// A TOML file of settings (keys as the long flags); flags and WEFT_* variables win over it.
    #[arg(long, env = "WEFT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    given: CliSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: lease the node's pod CIDRs, publish the node, follow its peers.
    Run(Settings),
    /// Give this node's lease back (for a node leaving the cluster).
    Leave(Settings),
    /// WireGuard: rotate this node's key while it runs. Leaves a new key as the next one in the
    /// state directory; the running weftd publishes it, switches its device and keeps it. Waits
    /// (up to 30 s) until it did.
    RotateKey(Settings),
    /// What the running weftd knows: node, store, backend, lease, underlay, MTUs, peer health,
    /// refused peers, IPAM use.
    Status(Inspect),
    /// The running weftd's peers: pod CIDRs, endpoint, health, round trip, WireGuard handshake;
    /// and the refused ones with the reason.
    Peers(Inspect),
    /// The mesh as Graphviz DOT (pipe it to `dot -Tsvg`): nodes, tunnels coloured by health, pod
    /// CIDRs, refused peers dashed.
    Graph(Inspect),
    /// Check this node for the faults that break pod networks most (MTU, blocked tunnel port,
    /// shared underlay address, forwarding, rp_filter, forward policies, CNI config order, stale
    /// entries, missing podCIDR, IPAM full): ok, warning or FAILURE, each with its fix. Exits 1
    /// when any check fails.
    Doctor(DoctorArgs),
    /// Remove everything weft made on this node: VXLAN and WireGuard devices (stopping a
    /// `weft-wg` it started), routes, neighbour and FDB entries, the nftables table `inet weft`,
    /// pod veths. The WireGuard key in the state directory is kept.
    Cleanup,
}

#[derive(clap::Args)]
struct Inspect {
    /// The running weftd's run directory (where its control socket `weftd.sock` is).
    #[arg(long, env = "WEFT_RUN_DIR", default_value = "/run/weft")]
    run_dir: PathBuf,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::Args)]
struct DoctorArgs {
    #[command(flatten)]
    inspect: Inspect,
    /// The CNI configuration directory the container runtime reads.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn load(settings: Settings) -> anyhow::Result<Config> {
    let file = match &settings.config {
        Some(path) => RawSettings::from_file(path)?,
        None => RawSettings::default(),
    };
    Ok(settings.given.over(file).validate()?)
}

fn main() -> ExitCode {
    unblock_stop_signals();
    one_malloc_arena();
    let cli: Cli = weftd::config::parse_command_line();
    init_logs(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// weftd stops cleanly on SIGTERM and SIGINT (keeping or releasing its lease, stopping the
/// `weft-wg` it started). A blocked signal mask passes through exec, so a parent that blocked
/// them (the foreground Kubernetes lab did, to `sigwait` for Ctrl-C) left a weftd that only
/// SIGKILL stops. Unblocked before the runtime starts its threads, which inherit the mask.
fn unblock_stop_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_unblock() {
        eprintln!("weftd: warning: cannot unblock SIGTERM and SIGINT: {e}");
    }
}

/// glibc's allocator gives each thread that allocates an arena of its own (up to 8 per core), and
/// memory freed in one arena serves no other. weftd's threads allocate little and rarely at the
/// same time, so one arena is enough: with 1000 peers weftd's resident memory was 0.4–0.5 MiB
/// lower (`MALLOC_ARENA_MAX=1 weft-lab bench-memory --peers 1000`). Set before any thread
/// starts; `MALLOC_ARENA_MAX` in the environment still overrides it.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Logs on standard error, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(settings) => weftd::run::run(load(settings)?, shutdown_on_signal()?).await,
        Command::Cleanup => weftd::node::cleanup::cleanup().await,
        Command::Status(inspect) => show(&inspect, render::status).await,
        Command::Doctor(args) => {
            let code = doctor(&args).await?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Peers(inspect) => show(&inspect, render::peers).await,
        Command::Graph(inspect) => {
            let snapshot = control::fetch(&inspect.run_dir).await?;
            print!("{}", graph::dot(&snapshot));
            Ok(())
        }
        Command::Leave(settings) => leave(&load(settings)?).await,
        Command::RotateKey(settings) => rotate_key(&load(settings)?).await,
    }
}

/// Print the running daemon's snapshot as `table` renders it, or as JSON.
async fn show(inspect: &Inspect, table: fn(&Snapshot, u64) -> String) -> anyhow::Result<()> {
    let snapshot = control::fetch(&inspect.run_dir).await?;
    match inspect.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&snapshot)?),
        Output::Table => print!("{}", table(&snapshot, weftd::store::unix_now())),
    }
    Ok(())
}

/// Run the doctor's checks with what the running daemon says (if it answers); the exit code.
async fn doctor(args: &DoctorArgs) -> anyhow::Result<u8> {
    let snapshot = control::fetch(&args.inspect.run_dir)
        .await
        .map_err(|e| e.to_string());
    let mut config = doctor::DoctorConfig {
        cni_conf_dir: args.cni_conf_dir.clone(),
        ..Default::default()
    };
    if let Ok(snapshot) = &snapshot {
        config.cluster_cidrs = snapshot.cluster_cidrs.clone();
        for device in &snapshot.tunnel_devices {
            if !config.tunnel_devices.contains(device) {
                config.tunnel_devices.push(device.clone());
            }
        }
    }
    let findings = doctor::examine(snapshot, &config).await;
    match args.inspect.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Output::Table => print!("{}", doctor::render(&findings)),
    }
    Ok(doctor::exit_code(&findings))
}

async fn leave(config: &Config) -> anyhow::Result<()> {
    let mut store = store::open(&config.store, config.lease_ttl);
    let host = weftd::datapath::netns::connect_here().context("open a netlink connection")?;
    let public_ips = underlay::detect(&config.underlay, &host)
        .await
        .unwrap_or_default();
    let mut request = agent::lease_request(config, public_ips)?;
    request.preferred = state::load_previous_cidrs(&config.state_dir);
    let lease = request.lease_with(request.preferred, None);
    store.release(&lease).await.context("release the lease")?;
    info!(node = %config.node_name, pod_cidrs = %lease.pod_cidrs, "left: lease released");
    Ok(())
}

async fn rotate_key(config: &Config) -> anyhow::Result<()> {
    use weftd::backend::wireguard::keys;
    if config.backend != weft_proto::lease::Backend::WireGuard {
        anyhow::bail!(
            "rotate-key is for the WireGuard backend; this node's settings say --backend {}",
            config.backend
        );
    }
    let current = keys::load_or_create(&agent::wireguard_key_path(config))?.public_key();
    let next = keys::write_next(&config.state_dir)?.public_key();
    println!(
        "next key {next} left in {}; waiting for weftd to switch from {current}",
        config.state_dir.display()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = keys::load_or_create(&agent::wireguard_key_path(config))?.public_key();
        if now == next {
            println!("rotated: {current} → {next}");
            return Ok(());
        }
    }
    anyhow::bail!(
        "weftd did not take the next key within 30 s (is it running with --state-dir {}?); it stays waiting in {}",
        config.state_dir.display(),
        keys::NEXT_KEY_FILE
    )
}

/// A channel that turns true on SIGTERM or SIGINT.
fn shutdown_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}
