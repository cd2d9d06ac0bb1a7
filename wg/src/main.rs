//! `weft-wg IFNAME`: a userspace WireGuard device in a process of its own.
//!
//! It creates the TUN device `IFNAME` (left down: weftd sets its MTU and brings it up) and serves
//! the standard control socket `/var/run/wireguard/IFNAME.sock`, through which weftd — and
//! `wg show` / `wg set` — configure it. The device is boringtun's (`defguard_boringtun`, vendored
//! with weft's batching: TCP superpackets from the TUN device, UDP GSO/GRO; see `weft-offload`),
//! with its worker threads polling the TUN queue and the UDP socket.
//!
//! It runs until SIGINT or SIGTERM, or until its socket file is deleted. Because it is not weftd,
//! restarting weftd leaves every tunnel up. A panic aborts the process (instead of leaving a worker
//! dead and the control socket wedged), so weftd sees the socket gone and starts it again.

use clap::Parser;
use defguard_boringtun::device::{DeviceConfig, DeviceHandle};

/// A userspace WireGuard device serving /var/run/wireguard/IFNAME.sock.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TUN device to create (at most 15 bytes).
    ifname: String,
    /// Worker threads. On a 2-core machine one measured faster than two (3.95 against 3.75 Gbit/s,
    /// the README's WireGuard benchmark); more queues help only with spare cores.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Turn off the batching: TUN segmentation offload (TCP superpackets read from the device,
    /// cut and encrypted here) and UDP GSO/GRO (many datagrams per system call). On by default;
    /// the switch exists to measure what it gains.
    #[arg(long, env = "WEFT_WG_NO_OFFLOAD")]
    no_offload: bool,
    /// Receive and send buffer of the UDP sockets, bytes (forced past `net.core.rmem_max`). The
    /// kernel's default, about 208 KiB, overflows when a batch of 64 KiB arrives at once: with it,
    /// iperf3 through weft-wg measured about 240,000 TCP retransmits in 10 s; with 4 MiB, none,
    /// and a quarter more throughput (README, WireGuard benchmark). 0 keeps the kernel's.
    #[arg(long, env = "WEFT_WG_SOCKET_BUFFER", default_value_t = 4 << 20)]
    socket_buffer: usize,
}

fn main() {
    let args = Args::parse();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let config = DeviceConfig {
        n_threads: args.threads.max(1),
        // Off: the crate's connected sockets are opened as SOCK_STREAM and never succeed, so
        // "on" only cost a failing socket() call per received datagram.
        use_connected_socket: false,
        use_multi_queue: args.threads > 1,
        uapi_fd: -1,
        offload: !args.no_offload,
        socket_buffer: args.socket_buffer,
    };
    let mut device = match DeviceHandle::new(&args.ifname, config) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("weft-wg: create {}: {e:?}", args.ifname);
            std::process::exit(1);
        }
    };
    eprintln!(
        "weft-wg: {} up, control socket /var/run/wireguard/{}.sock, {} thread(s)",
        args.ifname, args.ifname, args.threads
    );
    device.wait();
}
