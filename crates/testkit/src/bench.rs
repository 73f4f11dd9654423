//! Timing for the benchmarks that print tables of their own (real kernels and servers, where
//! criterion's many iterations would take minutes).

use std::time::{Duration, Instant};

/// The median wall-clock time of `runs` calls of `step` (at least one).
pub fn median(runs: usize, mut step: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
