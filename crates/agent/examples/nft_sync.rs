//! Measures the nftables back end over netlink at reference D10's scale — 10,000 Services ×
//! 10 endpoints by default — in fresh network namespaces named `<prefix>-<pid>-<role>`
//! (removed on exit); needs root. Steps, each printed as a row:
//!
//! - the first (full) sync of the Services table into the node's namespace;
//! - one endpoint of one Service changed, then changed back (`--reps` times each way);
//! - one Service added, then removed again (`--reps` times each way);
//! - new-connection latency through the loaded table: a client namespace connects over a
//!   veth to the first and to the last Service's ClusterIP, the node namespace DNATs and
//!   forwards to a server namespace where every endpoint address is local (`connect()` time,
//!   `--connections` per target and round, `--rounds` rounds alternating the order);
//! - NetworkPolicy: 1,000 policies with 1,000 of 10,000 Pods on the node
//!   ([`netd_testkit::scale::policy_cluster`]), the first sync into another fresh namespace.
//!
//! The cluster ([`ServiceScale`]), the options and the latency harness ([`ConnectBench`]) are
//! `netd-testkit`'s, shared with the `proxy_modes` example.
//!
//! Update steps are split into plan + render, lowering to netlink (including the diff) and
//! the kernel commit of the one transaction. After the table, `RESULT <key> <value>` lines
//! repeat the figures for scripts (`scripts/bench-nft.sh` reads them): times in ms, medians
//! for repeated steps.
//!
//! `cargo run --release -p netd-agent --example nft_sync -- [--services N] [--endpoints K]
//! [--reps R] [--connections C] [--rounds R] [--prefix P] [--no-policy]` (a debug build
//! works, slower in the render and lowering columns).

use std::fmt::Write as _;
use std::time::Instant;

use netd_agent::Nftables;
use netd_agent::nft::lower;
use netd_model::{ClusterState, NodeName};
use netd_render::nft::{Table, diff_commands};
use netd_testkit::bench::{ConnectBench, ProxyBenchOptions, median_of, ms};
use netd_testkit::scale::{ScaleChange, ServiceScale};
use netd_testkit::scratch::ScratchNetns;

type BoxError = Box<dyn std::error::Error>;

/// `--help`.
const USAGE: &str = "usage: nft_sync [--services N (10000)] [--endpoints K (10)] [--reps R (5)] \
[--connections C (1000)] [--rounds R (3)] [--prefix P (nftb)] [--no-policy]
  Needs root. Namespaces are named <prefix>-<pid>-<role> and removed on exit.";

/// What the command line asked for.
struct Options {
    common: ProxyBenchOptions,
    policy: bool,
}

impl Options {
    fn parse() -> Result<Options, BoxError> {
        let common = ProxyBenchOptions::parse(std::env::args().skip(1), "nftb")?;
        let mut policy = true;
        for arg in &common.rest {
            match arg.as_str() {
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--no-policy" => policy = false,
                _ => return Err(format!("unknown argument {arg}").into()),
            }
        }
        Ok(Options { common, policy })
    }
}

/// The times of one step: plan + render, lowering (with the diff), kernel commit.
#[derive(Clone, Copy)]
struct Timing {
    render: f64,
    lower: f64,
    commit: f64,
}

/// `state`'s IPv4 table for `node`, and the time it took to plan and render.
fn render(state: &ClusterState, node: &str) -> Result<(Table, f64), BoxError> {
    let t = Instant::now();
    let table = Nftables::new()
        .tables(state, &NodeName::new(node))?
        .into_iter()
        .next()
        .ok_or("no IPv4 table")?
        .table;
    Ok((table, ms(t.elapsed())))
}

/// Lowers `next` (whole, or as the update from `previous`) and commits it into `ns`.
fn apply(ns: &str, previous: Option<&Table>, next: &Table) -> Result<(f64, f64), BoxError> {
    let t = Instant::now();
    let tx = match previous {
        Some(prev) => lower::update(prev, next)?,
        None => lower::replacement(next)?,
    };
    let lowered = ms(t.elapsed());
    let t = Instant::now();
    tx.commit(ns)?;
    Ok((lowered, ms(t.elapsed())))
}

fn row(label: &str, size: &str, t: Timing) {
    println!(
        "| {label:<34} | {size:<28} | {:>10.1} ms | {:>10.1} ms | {:>10.1} ms |",
        t.render, t.lower, t.commit
    );
}

fn size(previous: &Table, next: &Table) -> String {
    format!("{} commands", diff_commands(previous, next).len())
}

/// Applies `from → to` and back `reps` times; the medians of the forward direction.
fn toggle(
    ns: &str,
    from: &Table,
    to: &Table,
    render: f64,
    reps: usize,
) -> Result<Timing, BoxError> {
    let (mut lowers, mut commits) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (l, c) = apply(ns, Some(from), to)?;
        lowers.push(l);
        commits.push(c);
        apply(ns, Some(to), from)?;
    }
    Ok(Timing {
        render,
        lower: median_of(lowers),
        commit: median_of(commits),
    })
}

fn run(o: &Options) -> Result<(), BoxError> {
    let c = &o.common;
    let node_ns = ScratchNetns::new(&c.prefix, "node");
    let ns = node_ns.name();
    let t = Instant::now();
    let states = [
        ScaleChange::None,
        ScaleChange::Endpoint,
        ScaleChange::Service,
    ]
    .map(|change| netd_testkit::state(&c.scale.cluster(change)));
    let built = ms(t.elapsed());
    println!(
        "== {} Services x {} endpoints, nftables over netlink (snapshots built in {built:.0} ms)",
        c.scale.services, c.scale.endpoints
    );
    println!(
        "| step                               | size                         | plan+render   | lower         | commit        |"
    );
    println!(
        "|------------------------------------|------------------------------|---------------|---------------|---------------|"
    );
    let (base, base_render) = render(&states[0], "node-0")?;
    let (lowered, committed) = apply(ns, None, &base)?;
    let full = Timing {
        render: base_render,
        lower: lowered,
        commit: committed,
    };
    row(
        "first sync (full)",
        &format!("{} chains, {} sets", base.chains.len(), base.sets.len()),
        full,
    );
    let (moved, moved_render) = render(&states[1], "node-0")?;
    let endpoint = toggle(ns, &base, &moved, moved_render, c.reps)?;
    row(
        &format!("one endpoint changed (median of {})", c.reps),
        &size(&base, &moved),
        endpoint,
    );
    apply(ns, Some(&base), &moved)?;
    let (added, added_render) = render(&states[2], "node-0")?;
    let service = toggle(ns, &moved, &added, added_render, c.reps)?;
    row(
        &format!("one Service added (median of {})", c.reps),
        &size(&moved, &added),
        service,
    );

    let bench = ConnectBench::new(&c.prefix, ns)?;
    let [first, last] = bench.first_and_last(&c.scale, c.connections, c.rounds)?;
    println!("{}", first.row("first", ServiceScale::cluster_ip(0)));
    println!("{}", last.row("last", c.scale.last_cluster_ip()));
    println!(
        "(server namespace {}; last/first p50 = {:.3})",
        bench.server(),
        last.p50_us / first.p50_us
    );

    let policy = if o.policy {
        let policy_ns = ScratchNetns::new(&c.prefix, "pol");
        let state = netd_testkit::state(&netd_testkit::scale::policy_cluster(10));
        let (table, rendered) = render(&state, "node-0")?;
        let (lowered, committed) = apply(policy_ns.name(), None, &table)?;
        let t = Timing {
            render: rendered,
            lower: lowered,
            commit: committed,
        };
        row(
            "NetworkPolicy first sync",
            &format!(
                "{} pods on node, 1,000 policies",
                state.pods_on("node-0").count()
            ),
            t,
        );
        Some(t)
    } else {
        None
    };

    let result = |key: &str, value: f64| println!("RESULT {key} {value:.3}");
    result("services", c.scale.services as f64);
    result("endpoints", c.scale.endpoints as f64);
    for (key, t) in [("full", full), ("endpoint", endpoint), ("service", service)]
        .into_iter()
        .chain(policy.map(|t| ("policy", t)))
    {
        result(&format!("{key}_render_ms"), t.render);
        result(&format!("{key}_lower_ms"), t.lower);
        result(&format!("{key}_commit_ms"), t.commit);
    }
    result("connect_first_p50_us", first.p50_us);
    result("connect_last_p50_us", last.p50_us);
    result("connect_first_p99_us", first.p99_us);
    result("connect_last_p99_us", last.p99_us);
    Ok(())
}

fn main() {
    let outcome = Options::parse().and_then(|o| run(&o));
    if let Err(e) = outcome {
        let mut chain = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let _ = write!(chain, ": {s}");
            source = s.source();
        }
        eprintln!("benchmark failed: {chain}");
        std::process::exit(1);
    }
}
