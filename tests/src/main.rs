//! `weft-lab`: the single-host lab and the benchmarks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_lab::bench;

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
    /// CNI ADD/DEL latency of weft beside Debian's bridge + host-local plugins.
    BenchCni {
        #[arg(long, default_value_t = 200)]
        pods: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BenchCni { pods } => bench::cni_latency(pods).map(|table| print!("{table}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
