//! The three proxy modes side by side — iptables, nftables and IPVS, each through its
//! [`Backend`] as the agent drives it — at reference D10's scale, 10,000 Services × 10
//! endpoints by default ([`ServiceScale`](netd_testkit::scale::ServiceScale)), in one run on one kernel. Per mode, in a fresh
//! network namespace named `<prefix>-<pid>-<mode>` (removed before the next mode starts and
//! on exit); needs root, and IPVS in the kernel for IPVS mode (`scripts/bench-ipvs.sh` runs
//! this in `scripts/kernel-vm.sh` where the machine's own kernel lacks it):
//!
//! - the first (full) sync: plan, render and apply, kernel included;
//! - one endpoint of one Service changed, then changed back (`--reps` times each way; the
//!   median of the forward syncs), as the back end's partial sync does it;
//! - new-connection latency to the first and to the last Service's ClusterIP through what
//!   was loaded ([`ConnectBench`], `--connections` per target and round, `--rounds` rounds).
//!
//! NetworkPolicy is off (kube-proxy has none; `nft_sync` measures ours). Prints one markdown
//! table, a column per mode, then `RESULT <mode>_<key> <value>` lines (ms, µs) for scripts.
//!
//! `cargo run --release -p netd-agent --example proxy_modes -- [--services N] [--endpoints K]
//! [--reps R] [--connections C] [--rounds R] [--prefix P] [--modes iptables,nftables,ipvs]`

use std::error::Error;
use std::time::Instant;

use netd_agent::{Backend, BackendConfig, Mode, ProgramConfig};
use netd_model::{ClusterState, NodeName};
use netd_testkit::bench::{ConnectBench, Latency, ProxyBenchOptions, median_of, ms};
use netd_testkit::scale::ScaleChange;
use netd_testkit::scratch::ScratchNetns;

type BoxError = Box<dyn Error>;

/// `--help`.
const USAGE: &str =
    "usage: proxy_modes [--services N (10000)] [--endpoints K (10)] [--reps R (5)] \
[--connections C (1000)] [--rounds R (3)] [--prefix P (pmb)] [--modes LIST (iptables,nftables,ipvs)]
  Needs root. Namespaces are named <prefix>-<pid>-<role> and removed on exit.";

/// What the command line asked for.
struct Options {
    common: ProxyBenchOptions,
    modes: Vec<Mode>,
}

impl Options {
    fn parse() -> Result<Options, BoxError> {
        let common = ProxyBenchOptions::parse(std::env::args().skip(1), "pmb")?;
        let mut modes = Mode::ALL.to_vec();
        let mut rest = common.rest.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--modes" => {
                    let list = rest.next().ok_or("--modes needs a value")?;
                    modes = list
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--modes: {e}"))?;
                }
                _ => return Err(format!("unknown argument {arg}").into()),
            }
        }
        Ok(Options { common, modes })
    }
}

/// One mode's figures.
struct Figures {
    mode: Mode,
    full_ms: f64,
    endpoint_ms: f64,
    first: Latency,
    last: Latency,
}

fn main() {
    if let Err(e) = Options::parse().and_then(|o| run(&o)) {
        eprintln!("benchmark failed: {}", netd_model::error_chain(&*e));
        std::process::exit(1);
    }
}

fn run(o: &Options) -> Result<(), BoxError> {
    let c = &o.common;
    let t = Instant::now();
    let [base, moved] = [ScaleChange::None, ScaleChange::Endpoint]
        .map(|change| netd_testkit::state(&c.scale.cluster(change)));
    eprintln!(
        "== {} Services x {} endpoints (snapshots built in {:.0} ms)",
        c.scale.services,
        c.scale.endpoints,
        ms(t.elapsed())
    );
    let mut figures = Vec::new();
    for &mode in &o.modes {
        let f = measure(c, mode, &base, &moved).map_err(|e| format!("{mode} mode: {e}"))?;
        eprintln!(
            "== {mode}: full {:.1} ms, one endpoint {:.1} ms, connect p50 first {:.1} µs last {:.1} µs",
            f.full_ms, f.endpoint_ms, f.first.p50_us, f.last.p50_us
        );
        figures.push(f);
    }
    print_table(c, &figures);
    Ok(())
}

/// Syncs `base` into a fresh namespace in `mode`, toggles the endpoint change, then times
/// connections through the loaded rules.
fn measure(
    c: &ProxyBenchOptions,
    mode: Mode,
    base: &ClusterState,
    moved: &ClusterState,
) -> Result<Figures, BoxError> {
    let node = NodeName::new("node-0");
    let ns = ScratchNetns::new(&c.prefix, mode.as_str());
    let mut backend: Box<dyn Backend> = netd_agent::backend(&BackendConfig {
        mode,
        program: ProgramConfig {
            network_policy: false,
            ..ProgramConfig::default()
        },
        ..BackendConfig::default()
    });
    let t = Instant::now();
    backend.sync(ns.name(), base, &node)?;
    let full_ms = ms(t.elapsed());
    let mut endpoint = Vec::new();
    for _ in 0..c.reps {
        let t = Instant::now();
        backend.sync(ns.name(), moved, &node)?;
        endpoint.push(ms(t.elapsed()));
        backend.sync(ns.name(), base, &node)?;
    }
    let bench = ConnectBench::new(&c.prefix, ns.name())?;
    let [first, last] = bench.first_and_last(&c.scale, c.connections, c.rounds)?;
    Ok(Figures {
        mode,
        full_ms,
        endpoint_ms: median_of(endpoint),
        first,
        last,
    })
}

fn print_table(c: &ProxyBenchOptions, figures: &[Figures]) {
    let t = |ms: f64| {
        if ms >= 1000.0 {
            format!("{:.2} s", ms / 1000.0)
        } else {
            format!("{ms:.1} ms")
        }
    };
    let header: String = figures
        .iter()
        .map(|f| format!(" {} mode |", f.mode))
        .collect();
    let rule: String = figures.iter().map(|_| "---|").collect();
    println!(
        "| at {} Services × {} endpoints |{header}",
        c.scale.services, c.scale.endpoints
    );
    println!("|---|{rule}");
    let cells = |cell: &dyn Fn(&Figures) -> String| -> String {
        figures.iter().map(|f| format!(" {} |", cell(f))).collect()
    };
    println!(
        "| first full sync, kernel included |{}",
        cells(&|f| t(f.full_ms))
    );
    println!(
        "| one endpoint of one Service changed, applied (median of {}) |{}",
        c.reps,
        cells(&|f| t(f.endpoint_ms))
    );
    println!(
        "| new-connection latency, last Service ÷ first |{}",
        cells(&|f| format!(
            "{:.2} (p50 {:.0} µs last, {:.0} µs first)",
            f.last.p50_us / f.first.p50_us,
            f.last.p50_us,
            f.first.p50_us
        ))
    );
    for f in figures {
        let result = |key: &str, value: f64| println!("RESULT {}_{key} {value:.3}", f.mode);
        result("full_ms", f.full_ms);
        result("endpoint_ms", f.endpoint_ms);
        result("connect_first_p50_us", f.first.p50_us);
        result("connect_last_p50_us", f.last.p50_us);
        result("connect_first_p99_us", f.first.p99_us);
        result("connect_last_p99_us", f.last.p99_us);
    }
}
