//! Benchmark: the [`SyncEngine`] against a real kernel at reference D10's scale — 10,000
//! Services × 10 endpoints — in a fresh network namespace: the programmer (plan + render),
//! the first (full) sync, a partial sync after one endpoint of one Service changed, and a
//! no-op sync, with the `iptables-restore` and `ipset restore` payload sizes of each. Needs
//! root. Run with `cargo bench -p netd-agent --bench sync` (the system's `iptables`, which
//! may be the nf_tables one), or add `-- --legacy` to save and restore with
//! `iptables-legacy-save` / `iptables-legacy-restore`.
//!
//! A kernel sync takes seconds, so each step runs once and is timed with a wall clock
//! (criterion's statistics would need hundreds of runs).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use netd_agent::conntrack::Selection;
use netd_agent::{Applier, InNamespace, NodeProgrammer, SyncEngine, SyncReport};
use netd_kernel::nftnl::conntrack::Flow;
use netd_kernel::{KernelError, netns};
use netd_model::{ClusterState, NodeName};
use netd_proxy::IpFamily;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
/// The Service whose first endpoint moves between the full and the partial sync.
const CHANGED: usize = 42;

type BoxError = Box<dyn std::error::Error>;

/// Three Nodes and 10,000 ClusterIP Services of 10 endpoints each, spread over the Nodes;
/// with `moved`, Service [`CHANGED`]'s first endpoint has another address.
fn cluster(moved: bool) -> ClusterState {
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
    for s in 0..SERVICES {
        let (hi, lo) = (s / 250, s % 250 + 1);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
             spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: svc{s}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for e in 0..ENDPOINTS {
            let n = s * ENDPOINTS + e;
            let address = if moved && s == CHANGED && e == 0 {
                "10.200.0.1".to_owned()
            } else {
                format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256)
            };
            let _ = writeln!(y, "- {{addresses: [{address}], nodeName: node-{}}}", e % 3);
        }
    }
    netd_testkit::state(&y)
}

/// The real applier, with the size and duration of each save and restore recorded.
struct Measured {
    inner: InNamespace,
    /// Whether to save and restore with `iptables-legacy-*` instead of the system's
    /// `iptables-*` (here nf_tables), for comparison.
    legacy: bool,
    restores: Vec<Restore>,
}

/// One `iptables-save`, `iptables-restore` or `ipset restore`.
struct Restore {
    what: &'static str,
    lines: usize,
    bytes: usize,
    took: Duration,
}

impl Measured {
    fn record(&mut self, what: &'static str, payload: &str, start: Instant) {
        self.restores.push(Restore {
            what,
            lines: payload.lines().count(),
            bytes: payload.len(),
            took: start.elapsed(),
        });
    }
}

impl Applier for Measured {
    fn namespace(&self) -> &str {
        self.inner.namespace()
    }

    fn restore_sets(&mut self, payload: &str) -> Result<(), KernelError> {
        let t = Instant::now();
        self.inner.restore_sets(payload)?;
        self.record("ipset restore", payload, t);
        Ok(())
    }

    fn list_sets(&mut self) -> Result<Vec<String>, KernelError> {
        self.inner.list_sets()
    }

    fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
        let t = Instant::now();
        let saved = if self.legacy && family == IpFamily::V4 {
            legacy(self.inner.namespace(), "iptables-legacy-save", &[], None)?
        } else {
            self.inner.save(family)?
        };
        self.record("iptables-save (read)", &saved, t);
        Ok(saved)
    }

    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
        let t = Instant::now();
        if self.legacy && family == IpFamily::V4 {
            legacy(
                self.inner.namespace(),
                "iptables-legacy-restore",
                &["--noflush"],
                Some(payload),
            )?;
        } else {
            self.inner.restore(family, payload)?;
        }
        self.record("iptables-restore", payload, t);
        Ok(())
    }

    fn list_conntrack(
        &mut self,
        family: IpFamily,
        selection: Selection,
    ) -> Result<Vec<Flow>, KernelError> {
        self.inner.list_conntrack(family, selection)
    }

    fn delete_conntrack(&mut self, flows: &[Flow]) -> Result<usize, KernelError> {
        self.inner.delete_conntrack(flows)
    }
}

/// Runs `program args` inside `ns` with `input` on its standard input; returns its output.
fn legacy(
    ns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, KernelError> {
    let mut cmd = netns::command(ns, program)?;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = format!("{program} {}", args.join(" "));
    let spawn_failed = |source| KernelError::SpawnFailed {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_failed)?;
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_failed)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(spawn_failed)?;
    if !out.status.success() {
        return Err(KernelError::CommandFailed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

/// One sync through the engine, printed as a table row with its restores.
fn timed_sync(
    label: &str,
    engine: &mut SyncEngine,
    applier: &mut Measured,
    state: &ClusterState,
    node: &NodeName,
) -> Result<(), BoxError> {
    applier.restores.clear();
    let t = Instant::now();
    let rules = NodeProgrammer::default().rules(state, node)?;
    let programmed = t.elapsed();
    let t = Instant::now();
    let report: SyncReport = engine.sync(applier, rules)?;
    let synced = t.elapsed();
    let (kind, services) = report
        .families
        .first()
        .map_or(("-", 0), |f| (f.kind.as_str(), f.services.len()));
    println!(
        "| {label:<28} | {kind:<7} | {services:>8} | {} | {} |",
        ms(programmed),
        ms(synced)
    );
    for r in &applier.restores {
        println!(
            "|   {:<26} |         |          | {:>7} lines, {:>10} bytes | {} |",
            r.what,
            r.lines,
            r.bytes,
            ms(r.took)
        );
    }
    Ok(())
}

fn run(ns: &str, legacy: bool) -> Result<(), BoxError> {
    let node = NodeName::new("node-0");
    let t = Instant::now();
    let before = cluster(false);
    let after = cluster(true);
    println!(
        "== {SERVICES} Services x {ENDPOINTS} endpoints, {} (two cluster snapshots built in {})",
        if legacy {
            "iptables-legacy"
        } else {
            "system iptables"
        },
        ms(t.elapsed()).trim()
    );
    let mut applier = Measured {
        inner: InNamespace::new(ns),
        legacy,
        restores: Vec::new(),
    };
    let mut engine = SyncEngine::new();
    println!(
        "| step                         | scope   | services | programmer (plan+render) | sync (kernel)  |"
    );
    println!(
        "|------------------------------|---------|----------|--------------------------|----------------|"
    );
    timed_sync("first sync", &mut engine, &mut applier, &before, &node)?;
    timed_sync(
        "one endpoint of one Service",
        &mut engine,
        &mut applier,
        &after,
        &node,
    )?;
    timed_sync("no change", &mut engine, &mut applier, &after, &node)?;
    Ok(())
}

/// The benchmark's namespace, deleted when dropped (also when a step fails or panics).
struct Namespace(String);

impl Namespace {
    fn create() -> Result<Namespace, KernelError> {
        let name = format!("netd-bench-sync-{}", std::process::id());
        netns::add(&name)?;
        Ok(Namespace(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.0) {
            eprintln!("removing namespace {} failed: {e}", self.0);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (such as `cargo test --benches`) only
    // checks that the benchmark builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench -p netd-agent --bench sync -- --legacy`: iptables-legacy instead.
    let legacy = std::env::args().any(|a| a == "--legacy");
    let result = Namespace::create()
        .map_err(BoxError::from)
        .and_then(|ns| run(&ns.0, legacy));
    if let Err(e) = result {
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
