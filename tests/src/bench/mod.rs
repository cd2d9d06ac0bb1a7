//! Benchmarks, each beside its reference in one run (not timed tests): `weft-lab bench-cni`,
//! `bench-overlay`, `bench-program`, `bench-memory` and `bench-probe`.
//!
//! They are part of the `weft-lab` binary, not of the lab library: `bench-program` times weftd's
//! own planner and netlink applier, `bench-probe` runs its peer prober, and every use of weftd's
//! internals is in [`weftd_internals`].

pub mod cni;
pub mod memory;
pub mod overlay;
pub mod probe;
pub mod program;
mod weftd_internals;
pub mod wireguard;

use std::time::Duration;

/// Latency percentiles of one operation.
#[derive(Debug, Clone)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

/// Milliseconds with two decimals.
fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = percentiles(&mut samples);
        assert_eq!(
            (p.p50, p.p90, p.p99),
            (
                Duration::from_millis(50),
                Duration::from_millis(90),
                Duration::from_millis(99)
            )
        );
    }
}
