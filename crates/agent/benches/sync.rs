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

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use netd_agent::conntrack::Selection;
use netd_agent::{Applier, InNamespace, NodeProgrammer, SyncEngine, SyncReport};
use netd_kernel::nftnl::conntrack::Flow;
use netd_kernel::{KernelError, netns};
use netd_model::{ClusterState, NodeName};
use netd_proxy::IpFamily;
use netd_testkit::scale::{ScaleChange, ServiceScale};
use netd_testkit::scratch::ScratchNetns;

/// Reference D10's size: 10,000 Services of 10 endpoints each.
const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

type BoxError = Box<dyn std::error::Error>;

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
    let scale = ServiceScale::new(SERVICES, ENDPOINTS)?;
    let t = Instant::now();
    let before = netd_testkit::state(&scale.cluster(ScaleChange::None));
    let after = netd_testkit::state(&scale.cluster(ScaleChange::Endpoint));
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

fn main() {
    // `cargo bench` passes `--bench`; anything else (such as `cargo test --benches`) only
    // checks that the benchmark builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench -p netd-agent --bench sync -- --legacy`: iptables-legacy instead.
    let legacy = std::env::args().any(|a| a == "--legacy");
    let ns = ScratchNetns::new("netd-bench", "sync");
    let result = run(ns.name(), legacy);
    // The namespace goes before the process can exit.
    drop(ns);
    if let Err(e) = result {
        eprintln!("benchmark failed: {}", netd_model::error_chain(&*e));
        std::process::exit(1);
    }
}
