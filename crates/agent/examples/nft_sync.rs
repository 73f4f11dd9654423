//! Measures the nftables back end's netlink path at reference D10's scale — 10,000 Services ×
//! 10 endpoints — in a fresh network namespace (`nfta-<pid>-bench`, removed on exit); needs
//! root. Prints one row per step: the first (full) sync, one endpoint of one Service changed,
//! one Service added; each split into plan + render, lowering to netlink (for an update,
//! including the diff), and the kernel commit of the one transaction.
//!
//! `cargo run --release -p netd-agent --example nft_sync` (a debug build works, slower in the
//! render and lowering columns). Each step runs once and is timed with a wall clock.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use netd_agent::Nftables;
use netd_agent::nft::lower;
use netd_model::{ClusterState, NodeName};
use netd_render::nft::{Table, diff_commands};
use netd_testkit::scratch::ScratchNetns;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

type BoxError = Box<dyn std::error::Error>;

/// What differs from the base cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// Service 42's first endpoint has another address.
    Endpoint,
    /// The endpoint change and one more Service.
    Service,
}

/// Three Nodes and `SERVICES` ClusterIP Services of `ENDPOINTS` endpoints each.
fn cluster(change: Change) -> ClusterState {
    let mut y = String::new();
    for n in 0..3 {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\n\
             spec: {{podCIDR: 10.244.{n}.0/24}}\n\
             status: {{addresses: [{{type: InternalIP, address: 172.18.0.{}}}]}}\n",
            n + 2
        );
    }
    let services = SERVICES + usize::from(change == Change::Service);
    for s in 0..services {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
             spec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: svc{s}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            s / 250,
            s % 250 + 1
        );
        for e in 0..ENDPOINTS {
            let n = s * ENDPOINTS + e;
            let address = if change != Change::None && s == 42 && e == 0 {
                "10.200.0.1".to_owned()
            } else {
                format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256)
            };
            let _ = writeln!(y, "- {{addresses: [{address}], nodeName: node-{}}}", e % 3);
        }
    }
    netd_testkit::state(&y)
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

/// Renders `state`'s IPv4 table, lowers it (whole, or as the update from `previous`) and
/// commits it; prints the row.
fn step(
    label: &str,
    ns: &str,
    state: &ClusterState,
    previous: Option<&Table>,
) -> Result<Table, BoxError> {
    let node = NodeName::new("node-0");
    let t = Instant::now();
    let table = Nftables::new()
        .tables(state, &node)?
        .into_iter()
        .next()
        .ok_or("no IPv4 table")?
        .table;
    let rendered = t.elapsed();
    // The size is counted outside the timed part (the diff is computed again inside).
    let what = match previous {
        Some(prev) => format!("{} commands", diff_commands(prev, &table).len()),
        None => format!("{} chains, {} sets", table.chains.len(), table.sets.len()),
    };
    let t = Instant::now();
    let tx = match previous {
        Some(prev) => lower::update(prev, &table)?,
        None => lower::replacement(&table)?,
    };
    let lowered = t.elapsed();
    let t = Instant::now();
    tx.commit(ns)?;
    let committed = t.elapsed();
    println!(
        "| {label:<28} | {what:<26} | {} | {} | {} |",
        ms(rendered),
        ms(lowered),
        ms(committed)
    );
    Ok(table)
}

fn run(ns: &str) -> Result<(), BoxError> {
    let t = Instant::now();
    let states = [
        cluster(Change::None),
        cluster(Change::Endpoint),
        cluster(Change::Service),
    ];
    println!(
        "== {SERVICES} Services x {ENDPOINTS} endpoints, nftables over netlink (snapshots built in {})",
        ms(t.elapsed()).trim()
    );
    println!(
        "| step                         | size                       | plan+render  | lower        | commit       |"
    );
    println!(
        "|------------------------------|----------------------------|--------------|--------------|--------------|"
    );
    let full = step("first sync (full)", ns, &states[0], None)?;
    let endpoint = step("one endpoint changed", ns, &states[1], Some(&full))?;
    step("one Service added", ns, &states[2], Some(&endpoint))?;
    Ok(())
}

fn main() {
    let ns = ScratchNetns::new("nfta", "bench");
    if let Err(e) = run(ns.name()) {
        let mut chain = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let _ = write!(chain, ": {s}");
            source = s.source();
        }
        eprintln!("benchmark failed: {chain}");
        drop(ns);
        std::process::exit(1);
    }
}
