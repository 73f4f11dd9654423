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
//! Update steps are split into plan + render, lowering to netlink (including the diff) and
//! the kernel commit of the one transaction. After the table, `RESULT <key> <value>` lines
//! repeat the figures for scripts (`scripts/bench-nft.sh` reads them): times in ms, medians
//! for repeated steps.
//!
//! `cargo run --release -p netd-agent --example nft_sync -- [--services N] [--endpoints K]
//! [--reps R] [--connections C] [--rounds R] [--prefix P] [--no-policy]` (a debug build
//! works, slower in the render and lowering columns).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netd_agent::Nftables;
use netd_agent::nft::lower;
use netd_kernel::{link, netns};
use netd_model::{ClusterState, NodeName};
use netd_render::nft::{Table, diff_commands};
use netd_testkit::held::in_netns;
use netd_testkit::scratch::ScratchNetns;

type BoxError = Box<dyn std::error::Error>;

/// Endpoint addresses are `10.100.0.0/14` plus the endpoint's number.
const ENDPOINT_NET: &str = "10.100.0.0/14";
/// How many endpoint addresses `ENDPOINT_NET` holds.
const ENDPOINT_ADDRESSES: usize = 1 << 18;
/// The changed endpoint's new address.
const MOVED_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// ClusterIPs are `10.96.<s / 250>.<s % 250 + 1>`.
const MAX_SERVICES: usize = 250 * 256 - 1;
/// The endpoints' port.
const TARGET_PORT: u16 = 8080;

/// `--help`.
const USAGE: &str = "usage: nft_sync [--services N (10000)] [--endpoints K (10)] [--reps R (5)] \
[--connections C (1000)] [--rounds R (3)] [--prefix P (nftb)] [--no-policy]
  Needs root. Namespaces are named <prefix>-<pid>-<role> and removed on exit.";

/// What the command line asked for.
struct Options {
    services: usize,
    endpoints: usize,
    reps: usize,
    connections: usize,
    rounds: usize,
    prefix: String,
    policy: bool,
}

impl Options {
    fn parse() -> Result<Options, BoxError> {
        let mut o = Options {
            services: 10_000,
            endpoints: 10,
            reps: 5,
            connections: 1000,
            rounds: 3,
            prefix: "nftb".to_owned(),
            policy: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if arg == "--no-policy" {
                o.policy = false;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|e| format!("{arg} {value}: {e}"))
            };
            match arg.as_str() {
                "--services" => o.services = number()?,
                "--endpoints" => o.endpoints = number()?,
                "--reps" => o.reps = number()?,
                "--connections" => o.connections = number()?,
                "--rounds" => o.rounds = number()?,
                "--prefix" => o.prefix = value,
                _ => return Err(format!("unknown argument {arg}").into()),
            }
        }
        if o.services < 2 || o.services > MAX_SERVICES {
            return Err(format!("--services must be 2 to {MAX_SERVICES}").into());
        }
        if o.endpoints == 0 || (o.services + 1) * o.endpoints > ENDPOINT_ADDRESSES {
            return Err(format!(
                "--endpoints must be at least 1 and (services + 1) x endpoints at most {ENDPOINT_ADDRESSES}"
            )
            .into());
        }
        if o.reps == 0 || o.rounds == 0 || o.connections == 0 {
            return Err("--reps, --rounds and --connections must be at least 1".into());
        }
        Ok(o)
    }
}

/// What differs from the base cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// The middle Service's first endpoint has another address.
    Endpoint,
    /// The endpoint change and one more Service.
    Service,
}

fn cluster_ip(s: usize) -> Ipv4Addr {
    // Both parts fit a byte: `Options::parse` caps the Services at `MAX_SERVICES`.
    Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250 + 1) as u8)
}

fn endpoint_ip(n: usize) -> Ipv4Addr {
    // `n` < `ENDPOINT_ADDRESSES` (checked by `Options::parse`), so the sum fits 32 bits.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + n as u32)
}

/// Three Nodes and `o.services` ClusterIP Services of `o.endpoints` endpoints each.
fn cluster(o: &Options, change: Change) -> ClusterState {
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
    let services = o.services + usize::from(change == Change::Service);
    for s in 0..services {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
             spec: {{clusterIP: {}, ports: [{{name: http, port: 80, targetPort: {TARGET_PORT}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: svc{s}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
             ports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]\nendpoints:\n",
            cluster_ip(s)
        );
        for e in 0..o.endpoints {
            let address = if change != Change::None && s == o.services / 2 && e == 0 {
                MOVED_ENDPOINT
            } else {
                endpoint_ip(s * o.endpoints + e)
            };
            let _ = writeln!(y, "- {{addresses: [{address}], nodeName: node-{}}}", e % 3);
        }
    }
    netd_testkit::state(&y)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
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
        lower: median(lowers),
        commit: median(commits),
    })
}

/// A client namespace and a server namespace wired to the node's: the client's packets to a
/// ClusterIP are DNATed and forwarded by the node, every endpoint address is local in the
/// server (`ip route add local`), where one thread accepts and closes connections.
struct Topology {
    client: ScratchNetns,
    server: ScratchNetns,
}

impl Topology {
    fn new(prefix: &str, node: &str) -> Result<Topology, BoxError> {
        let client = ScratchNetns::new(prefix, "cli");
        let server = ScratchNetns::new(prefix, "srv");
        let (c, s) = (client.name(), server.name());
        link::add_veth(c, "eth0", node, "to-cli")?;
        link::add_veth(node, "to-srv", s, "eth0")?;
        netns::ip_batch(
            c,
            &[
                "addr add 172.16.0.2/24 dev eth0".into(),
                "link set lo up".into(),
                "route add default via 172.16.0.1".into(),
            ],
        )?;
        netns::ip_batch(
            node,
            &[
                "addr add 172.16.0.1/24 dev to-cli".into(),
                "addr add 172.17.0.1/24 dev to-srv".into(),
                "link set lo up".into(),
                format!("route add {ENDPOINT_NET} via 172.17.0.2"),
                format!("route add {MOVED_ENDPOINT}/32 via 172.17.0.2"),
            ],
        )?;
        netns::ip_batch(
            s,
            &[
                "addr add 172.17.0.2/24 dev eth0".into(),
                "link set lo up".into(),
                format!("route add local {ENDPOINT_NET} dev lo"),
                format!("route add local {MOVED_ENDPOINT}/32 dev lo"),
                "route add 172.16.0.0/24 via 172.17.0.1".into(),
            ],
        )?;
        link::sysctl(node, "net.ipv4.ip_forward", "1")?;
        for ns in [c, node, s] {
            link::sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
            link::sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")?;
        }
        let listener = in_netns(s, || {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, TARGET_PORT)))
        })?;
        // The listener's socket stays in the server namespace; the thread only accepts, and
        // ends with the process.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        Ok(Topology { client, server })
    }

    /// `count` connection times (µs) to `to`, after `count / 10` untimed ones.
    fn connect_times(&self, to: SocketAddrV4, count: usize) -> Result<Vec<f64>, BoxError> {
        let timeout = Duration::from_secs(2);
        let times = in_netns(self.client.name(), || -> std::io::Result<Vec<f64>> {
            let mut times = Vec::with_capacity(count);
            for i in 0..count + count / 10 {
                let t = Instant::now();
                let stream = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)?;
                let took = t.elapsed();
                drop(stream);
                if i >= count / 10 {
                    times.push(took.as_secs_f64() * 1e6);
                }
            }
            Ok(times)
        })
        .map_err(|e| format!("connect to {to} from {}: {e}", self.client.name()))?;
        Ok(times)
    }
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    // `p` is in [0, 1], so the index is within the samples.
    let i = ((xs.len().saturating_sub(1)) as f64 * p).round() as usize;
    xs.get(i).copied().unwrap_or(f64::NAN)
}

fn run(o: &Options) -> Result<(), BoxError> {
    let node_ns = ScratchNetns::new(&o.prefix, "node");
    let ns = node_ns.name();
    let t = Instant::now();
    let states = [
        cluster(o, Change::None),
        cluster(o, Change::Endpoint),
        cluster(o, Change::Service),
    ];
    let built = ms(t.elapsed());
    println!(
        "== {} Services x {} endpoints, nftables over netlink (snapshots built in {built:.0} ms)",
        o.services, o.endpoints
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
    let endpoint = toggle(ns, &base, &moved, moved_render, o.reps)?;
    row(
        &format!("one endpoint changed (median of {})", o.reps),
        &size(&base, &moved),
        endpoint,
    );
    apply(ns, Some(&base), &moved)?;
    let (added, added_render) = render(&states[2], "node-0")?;
    let service = toggle(ns, &moved, &added, added_render, o.reps)?;
    row(
        &format!("one Service added (median of {})", o.reps),
        &size(&moved, &added),
        service,
    );

    let topology = Topology::new(&o.prefix, ns)?;
    let targets = [
        ("first", cluster_ip(0)),
        ("last", cluster_ip(o.services - 1)),
    ];
    let mut samples = [Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        for k in 0..2 {
            // Alternate which target goes first, so drift in the machine's load is shared.
            let i = if round % 2 == 0 { k } else { 1 - k };
            let to = SocketAddrV4::new(targets[i].1, 80);
            samples[i].extend(topology.connect_times(to, o.connections)?);
        }
    }
    let p50: Vec<f64> = samples.iter().map(|s| percentile(s.clone(), 0.5)).collect();
    let p99: Vec<f64> = samples
        .iter()
        .map(|s| percentile(s.clone(), 0.99))
        .collect();
    for (i, (name, ip)) in targets.iter().enumerate() {
        println!(
            "| connect() to the {name} Service      | {ip}:80, {} connections | p50 {:>8.1} µs | p99 {:>8.1} µs |               |",
            samples[i].len(),
            p50[i],
            p99[i]
        );
    }
    println!(
        "(server namespace {}; last/first p50 = {:.3})",
        topology.server.name(),
        p50[1] / p50[0]
    );

    let policy = if o.policy {
        let policy_ns = ScratchNetns::new(&o.prefix, "pol");
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
    result("services", o.services as f64);
    result("endpoints", o.endpoints as f64);
    for (key, t) in [("full", full), ("endpoint", endpoint), ("service", service)]
        .into_iter()
        .chain(policy.map(|t| ("policy", t)))
    {
        result(&format!("{key}_render_ms"), t.render);
        result(&format!("{key}_lower_ms"), t.lower);
        result(&format!("{key}_commit_ms"), t.commit);
    }
    result("connect_first_p50_us", p50[0]);
    result("connect_last_p50_us", p50[1]);
    result("connect_first_p99_us", p99[0]);
    result("connect_last_p99_us", p99[1]);
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
