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
//! Update steps are measured twice. The whole-table rows plan and render the whole node from
//! scratch and diff the whole tables (how every sync worked before per-port updates); they
//! are split into plan + render, lowering to netlink (including the diff) and the kernel
//! commit of the one transaction. The back-end rows time `Nftables::sync` end to end (state
//! to committed, on snapshots each changed from the last as a store makes them), and split
//! the same path into its parts: planning again the changed Services (`Replanner`), the
//! per-port render and table update (`NodeTable::update`), lowering the delta, and the
//! commit. After the table, `RESULT <key> <value>` lines
//! repeat the figures for scripts (`scripts/bench-nft.sh` reads them): times in ms, medians
//! for repeated steps.
//!
//! `cargo run --release -p netd-agent --example nft_sync -- [--services N] [--endpoints K]
//! [--reps R] [--connections C] [--rounds R] [--prefix P] [--no-policy]` (a debug build
//! works, slower in the render and lowering columns).

use std::time::Instant;

use netd_agent::nft::lower;
use netd_agent::programmer::Replanner;
use netd_agent::{Backend, Nftables, ProgramConfig};
use netd_model::{ClusterState, NodeName};
use netd_proxy::ProxyOptions;
use netd_render::RenderOptions;
use netd_render::nft::{NodeTable, Table, diff_commands, render_policy_nft};
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

/// `to` as a snapshot changed from `from` (as a store makes them, sharing what did not
/// change): `from` with the objects that differ in `to` put in or taken out.
fn changed_from(from: &ClusterState, to: &ClusterState) -> Result<ClusterState, BoxError> {
    let mut out = from.clone();
    for id in to.changed_objects(from) {
        match to.object(&id) {
            Some(object) => out.insert(object.clone())?,
            None => {
                out.remove(&id);
            }
        }
    }
    Ok(out)
}

/// The back end's times of one step: end to end, and its parts measured apart.
#[derive(Clone, Copy)]
struct Incremental {
    total: f64,
    plan: f64,
    update: f64,
    lower: f64,
    commit: f64,
}

fn incremental_row(label: &str, t: Incremental) {
    println!(
        "| {label:<34} | {:>8.2} ms | {:>8.2} ms | {:>8.2} ms | {:>8.2} ms | {:>8.2} ms |",
        t.total, t.plan, t.update, t.lower, t.commit
    );
}

/// The pause before each timed step of [`incremental`]. An agent's syncs are at least
/// `--min-sync-period` apart (1 s by default); in that time the kernel has finished the
/// deferred clean-up of the last commit (the objects it deleted), which a commit right after
/// it would wait for instead (10-15 ms here).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Syncs `from → to` and back `reps` times through a fresh back end (after a full sync of
/// `from`), then through its parts, each step [`SETTLE`] after the last; the medians of the
/// forward direction.
fn incremental(
    ns: &str,
    from: &ClusterState,
    to: &ClusterState,
    reps: usize,
) -> Result<Incremental, BoxError> {
    let node = NodeName::new("node-0");
    let mut backend = Nftables::new();
    backend.sync(ns, from, &node)?;
    let mut totals = Vec::new();
    for _ in 0..reps {
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        backend.sync(ns, to, &node)?;
        totals.push(ms(t.elapsed()));
        backend.sync(ns, from, &node)?;
    }

    // The same path, part by part (IPv4 only, as the cluster is).
    let program = ProgramConfig::default();
    let render = RenderOptions::default();
    let options = |state: &ClusterState| ProxyOptions {
        localhost_nodeports: false,
        ..program.proxy_options(state, &node)
    };
    let mut planner = Replanner::default();
    planner.plan(&program, from, &node, options(from))?;
    let policy = |p: &Replanner| {
        p.policy()
            .map(|p| render_policy_nft(p, netd_proxy::IpFamily::V4))
    };
    let plan = planner.plans().first().ok_or("no IPv4 plan")?;
    let mut table = NodeTable::new(plan, policy(&planner), &render);
    lower::replacement(table.table())?.commit(ns)?;
    let (mut plans, mut updates, mut lowers, mut commits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, state) in [to, from].into_iter().cycle().take(2 * reps).enumerate() {
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        let replan = planner.plan(&program, state, &node, options(state))?;
        let planned = ms(t.elapsed());
        let t = Instant::now();
        let plan = planner.plans().first().ok_or("no IPv4 plan")?;
        let replaced = replan
            .families
            .into_iter()
            .next()
            .flatten()
            .ok_or("planned afresh")?;
        let changed = replaced.changed.as_ref().ok_or("planned afresh")?;
        let delta = table
            .update(
                plan,
                &replaced.ports,
                plan.ports_of_services(changed),
                None,
                &render,
            )
            .ok_or("rendered in full")?;
        let updated = ms(t.elapsed());
        let t = Instant::now();
        let tx = lower::update(&delta.before, &delta.after)?;
        let lowered = ms(t.elapsed());
        let t = Instant::now();
        tx.commit(ns)?;
        if i % 2 == 0 {
            plans.push(planned);
            updates.push(updated);
            lowers.push(lowered);
            commits.push(ms(t.elapsed()));
        }
    }
    Ok(Incremental {
        total: median_of(totals),
        plan: median_of(plans),
        update: median_of(updates),
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

    // The back end: per-port updates between snapshots changed from one another.
    let derived_endpoint = changed_from(&states[0], &states[1])?;
    let derived_service = changed_from(&derived_endpoint, &states[2])?;
    println!();
    println!(
        "| back end, end to end (median of {})   | sync        | plan        | render+upd. | lower       | commit      |",
        c.reps
    );
    println!(
        "|------------------------------------|-------------|-------------|-------------|-------------|-------------|"
    );
    let endpoint_incr = incremental(ns, &states[0], &derived_endpoint, c.reps)?;
    incremental_row("one endpoint changed", endpoint_incr);
    let service_incr = incremental(ns, &derived_endpoint, &derived_service, c.reps)?;
    incremental_row("one Service added", service_incr);
    // The connection bench below expects the base table.
    apply(ns, None, &base)?;

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
    for (key, t) in [("endpoint", endpoint_incr), ("service", service_incr)] {
        result(&format!("{key}_sync_ms"), t.total);
        result(&format!("{key}_sync_plan_ms"), t.plan);
        result(&format!("{key}_sync_update_ms"), t.update);
        result(&format!("{key}_sync_lower_ms"), t.lower);
        result(&format!("{key}_sync_commit_ms"), t.commit);
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
        eprintln!("benchmark failed: {}", netd_model::error_chain(&*e));
        std::process::exit(1);
    }
}
