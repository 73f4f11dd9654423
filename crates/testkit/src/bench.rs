//! Timing for the benchmarks that print tables of their own (real kernels and servers, where
//! criterion's many iterations would take minutes).

use std::time::{Duration, Instant};

/// The median wall-clock time of `runs` calls of `step` (at least one).
pub fn median(runs: usize, mut step: impl FnMut()) -> Duration {
    median_of(
        (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                step();
                start.elapsed()
            })
            .collect(),
    )
}

/// The median of `times` timed by the caller (a benchmark timing several steps of one run);
/// zero for none.
pub fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}
