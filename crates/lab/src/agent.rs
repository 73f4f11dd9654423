//! A Node's agent: the level-triggered reconcile loop a real node runs (kubelet + CNI +
//! kube-netd), reading the lab's embedded control plane (`cluster.json`) instead of an API
//! server and programming that Node's namespace.
//!
//! Each pass starts from a whole, atomically written snapshot, so nothing is programmed from a
//! partial view. A pass builds the namespaces of new Pods, removes those of deleted or changed
//! ones, restarts echo servers that died, then has the Node's [`Backend`] sync the Node's
//! rules (the back end is built from the lab's record: its mode and options, through the
//! [`MakeBackend`] the helper program passes in). Only then is the generation recorded as
//! converged. A failed pass is retried; after a failed apply the back end's next sync is full.
//!
//! The back end lives as long as the agent process: its first sync is full, later ones
//! rewrite only what changed (kube-proxy's partial sync), and every hour one is full again;
//! at start it removes what the other modes left in the Node's namespace. Nothing is flushed when an agent starts, so restarting it leaves established
//! connections alone. After each sync the agent logs what it did and writes its counters
//! (OpenMetrics text: `kubeproxy_sync_proxy_rules_total{family,scope}`, ...) to
//! `nodes/<node>.metrics` in the lab's state directory ([`metrics_path`]).
//!
//! Inside the Node's namespace the agent also serves what kube-proxy serves
//! (`netd-healthcheck`): `/healthz` and `/livez` on port 10256, `/metrics` on
//! 127.0.0.1:10249 (the sync counters and the probe counters), and for each LoadBalancer
//! Service with `externalTrafficPolicy: Local` a server on its `healthCheckNodePort` that
//! answers 200 while the Node has local Ready endpoints and 503 otherwise. The proxy is marked
//! updated after each successful sync, and the health servers follow the plan just applied.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd_agent::{Backend, BackendConfig, SyncKind};
use netd_healthcheck::{
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_METRICS_BIND_ADDRESS,
    HealthError, HealthMetrics, HealthServers, HttpServer, ProxyHealth, SystemClock,
};
use netd_kernel::{module, netns, process};
use netd_model::{ClusterConfig, ClusterState, NodeName, PodRef, ServiceRef, error_chain};
use prometheus_client::registry::Registry;

use crate::names::Names;
use crate::store::{ClusterWatch, LabRecord, NodeRecord, PodRecord, Store};
use crate::topology::{self, ResolvConf};
use crate::{LabError, dns, objects};

pub use netd_agent::{NodeRules, Programmer};

/// How an agent gets its back end from the lab's configuration: [`netd_agent::backend`] for
/// kube-netd's own modes; tests may bring rules of their own.
pub type MakeBackend = dyn Fn(&BackendConfig) -> Box<dyn Backend> + Sync;

/// How often a converged agent re-checks everything even without a new generation.
const RESYNC: Duration = Duration::from_secs(30);
/// How often a sync is full even when partial would do (kube-proxy's `FullSyncPeriod`).
const FULL_RESYNC: Duration = Duration::from_secs(3600);
/// The longest an agent waits between passes when nothing is published (it wakes at once
/// when `cluster.json` is: [`ClusterWatch`]), to reap echo servers that died.
const POLL: Duration = Duration::from_millis(100);

/// The back end the lab's record asks for.
fn backend_config(lab: &LabRecord) -> Result<BackendConfig, LabError> {
    let mode = lab
        .mode
        .parse()
        .map_err(|source| LabError::UnknownMode { source })?;
    let mut config = BackendConfig {
        mode,
        ..BackendConfig::default()
    };
    config.program.proxy.localhost_nodeports = lab.localhost_nodeports;
    Ok(config)
}

/// Where the agent of `node` writes its counters, in the lab's state directory `state_dir`.
pub fn metrics_path(state_dir: &Path, node: &NodeName) -> std::path::PathBuf {
    state_dir.join("nodes").join(format!("{node}.metrics"))
}

/// Runs the agent of `node` for the lab whose state is in `state_dir`, until that directory
/// disappears (`lab down`).
pub fn run_agent(
    state_dir: &Path,
    node: &NodeName,
    make_backend: &MakeBackend,
) -> Result<(), LabError> {
    // The rules NAT and match on connection state: conntrack must be in the kernel, as
    // kubeadm's preflight expects of a node. (`lab up` loaded it too; an agent does not rely
    // on that.)
    module::ensure(&[module::NF_CONNTRACK])
        .map_err(LabError::modules(format!("for the agent of node {node}")))?;
    let store = Store::at(state_dir.to_owned());
    let lab = store.read_lab()?.ok_or_else(|| LabError::NotFound {
        name: state_dir.to_string_lossy().into_owned(),
        dir: state_dir.to_owned(),
    })?;
    let backend = make_backend(&backend_config(&lab)?);
    let names = Names::new(&lab.name)?;
    let node_ns = names.node_ns(node);
    netd_agent::remove_other_modes(&node_ns, backend.mode()).map_err(|source| {
        LabError::ApplyFailed {
            node: node.clone(),
            source: Box::new(source),
        }
    })?;
    let health = NodeHealth::start(&node_ns, backend.as_ref())?;
    let mut agent = Agent {
        names,
        store,
        lab,
        node: node.clone(),
        children: BTreeMap::new(),
        backend,
        last_full: None,
        health,
    };
    let published = ClusterWatch::new(&agent.store)?;
    let mut done: Option<(u64, Instant)> = None;
    while agent.store.exists() {
        let echo_died = agent.reap();
        let Some(cluster) = agent.store.read_cluster()? else {
            published.wait(POLL);
            continue;
        };
        let due = match done {
            Some((generation, at)) => {
                generation != cluster.generation || echo_died || at.elapsed() > RESYNC
            }
            None => true,
        };
        if due {
            match agent.reconcile(cluster.generation, cluster.resolved) {
                Ok(()) => done = Some((cluster.generation, Instant::now())),
                Err(e) => {
                    tracing::error!(node = %agent.node, error = %error_chain(&e), "reconcile failed; retrying");
                    agent.record_error(cluster.generation, &e)?;
                    done = None;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        published.wait(POLL);
    }
    Ok(())
}

struct Agent {
    names: Names,
    store: Store,
    lab: LabRecord,
    node: NodeName,
    /// Echo servers this agent started, to reap them.
    children: BTreeMap<String, Child>,
    /// Full and partial syncs of the Node's rules.
    backend: Box<dyn Backend>,
    /// When the last full sync was.
    last_full: Option<Instant>,
    /// kube-proxy's health servers in the Node's namespace.
    health: NodeHealth,
}

impl Agent {
    /// Reaps echo servers that exited; returns whether any did.
    fn reap(&mut self) -> bool {
        let before = self.children.len();
        self.children
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
        before != self.children.len()
    }

    fn record_error(&self, generation: u64, e: &LabError) -> Result<(), LabError> {
        let mut record = self.store.read_node(&self.node)?;
        record.error = Some(error_chain(e));
        if record.error_generation == generation {
            record.error_count += 1;
        } else {
            record.error_generation = generation;
            record.error_count = 1;
        }
        self.store.write_node(&self.node, &record)
    }

    fn reconcile(
        &mut self,
        generation: u64,
        resolved: Vec<serde_json::Value>,
    ) -> Result<(), LabError> {
        let config = ClusterConfig::from(&self.lab.config);
        let state =
            ClusterState::new(objects::decode_all(resolved)?, config).map_err(|source| {
                LabError::InvalidState {
                    source: Box::new(source),
                }
            })?;
        let Some(node_addr) = self.lab.nodes.get(&self.node).cloned() else {
            return Err(LabError::UnknownTarget {
                what: "node",
                name: self.node.to_string(),
                lab: self.lab.name.clone(),
            });
        };
        let desired = self.desired_pods(&state, node_addr.ip);
        let mut record = self.store.read_node(&self.node)?;
        let marker = self.store.marker();

        for (key, have) in record.pods.clone() {
            let same = desired.get(&key).is_some_and(|(_, want)| {
                want.netns == have.netns
                    && want.ip == have.ip
                    && want.second_ip == have.second_ip
                    && want.ports == have.ports
            });
            let alive = have
                .pid
                .is_some_and(|pid| process::is_alive(pid) && process::is_ours(pid, &marker));
            if same && alive {
                continue;
            }
            self.stop_echo(&key, have.pid)?;
            if same {
                if let Some(pod) = record.pods.get_mut(&key) {
                    pod.pid = None;
                }
            } else {
                if let Some(ns) = &have.netns {
                    topology::remove_pod(ns)?;
                    topology::forget_pod_addresses(
                        &self.names,
                        &self.node,
                        have.ip.into_iter().chain(have.second_ip),
                    )?;
                }
                record.pods.remove(&key);
            }
            self.store.write_node(&self.node, &record)?;
        }

        let dns = ResolvConf {
            nameserver: state.config().dns_service_ip,
            zone: state.config().dns_zone.clone(),
        };
        let mut starting = Vec::new();
        for (key, (pod, want)) in &desired {
            if record.pods.get(key).is_some_and(|p| p.pid.is_some()) {
                continue;
            }
            if !record.pods.get(key).is_some_and(|p| p.built) {
                // Recorded before it is built, so that a crash mid-build leaves nothing
                // unrecorded; a half-built namespace is removed and built again.
                record.pods.insert(key.clone(), want.clone());
                self.store.write_node(&self.node, &record)?;
                if let (Some(ns), Some(ip)) = (&want.netns, want.ip) {
                    topology::remove_pod(ns)?;
                    topology::build_pod(
                        &self.names,
                        &self.node,
                        &node_addr,
                        pod,
                        ip,
                        want.second_ip,
                        &dns,
                    )?;
                }
                if let Some(p) = record.pods.get_mut(key) {
                    p.built = true;
                }
                self.store.write_node(&self.node, &record)?;
            }
            let workload = if state.pod(pod).is_some_and(dns::runs_dns) {
                Workload::Dns
            } else {
                Workload::Echo
            };
            let mut child = self.spawn_workload(key, want, workload)?;
            if let Some(p) = record.pods.get_mut(key) {
                p.pid = Some(child.id());
            }
            self.store.write_node(&self.node, &record)?;
            // Recorded: the workload may start (it waits for this byte, see helper.rs).
            if let Some(mut go) = child.stdin.take() {
                go.write_all(b"g").map_err(|source| LabError::SpawnFailed {
                    what: format!("echo server of {key}"),
                    source,
                })?;
            }
            let stdout = child.stdout.take();
            self.children.insert(key.clone(), child);
            starting.push((pod.clone(), stdout));
        }
        for (pod, stdout) in starting {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            if line.trim() != "ready" {
                return Err(LabError::EchoNotReady {
                    pod,
                    detail: format!("see {}", self.store.log_path(&self.node).display()),
                });
            }
        }

        let node_ns = self.names.node_ns(&self.node);
        self.health
            .proxy
            .set_node_eligible(netd_healthcheck::node_eligible(&state, &self.node));
        self.sync(&node_ns, &state)?;
        record.converged = generation;
        record.error = None;
        record.error_count = 0;
        self.store.write_node(&self.node, &record)
    }

    /// Syncs the Node's rules for `state` into its namespace, logs what was done, writes the
    /// counters and brings the health servers in line with the plan just applied.
    fn sync(&mut self, node_ns: &str, state: &ClusterState) -> Result<(), LabError> {
        if self.last_full.is_some_and(|at| at.elapsed() > FULL_RESYNC) {
            self.backend.request_full_sync();
        }
        for family in netd_agent::programmer::families(state) {
            self.health.proxy.queued_update(family);
        }
        let result = self.backend.sync(node_ns, state, &self.node);
        let written = self.write_metrics();
        let report = result.map_err(|source| LabError::ApplyFailed {
            node: self.node.clone(),
            source: Box::new(source),
        })?;
        for done in &report.families {
            self.health.proxy.updated(done.family);
            if done.kind == SyncKind::Full {
                self.last_full = Some(Instant::now());
            }
            tracing::info!(
                node = %self.node,
                family = %done.family,
                scope = done.kind.as_str(),
                services = done.services.len(),
                deleted_chains = done.deleted_chains,
                conntrack_deleted = done.conntrack_deleted,
                "rules synced"
            );
        }
        self.health.sync(&report.health_checks);
        written
    }

    fn write_metrics(&self) -> Result<(), LabError> {
        let text = self.backend.metrics().encode();
        let path = metrics_path(self.store.dir(), &self.node);
        let tmp = path.with_extension("metrics.tmp");
        std::fs::write(&tmp, text).map_err(LabError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(LabError::io(&path))
    }

    /// The Pods this Node should run, keyed as the Node record keys them (`ns/name`).
    fn desired_pods(
        &self,
        state: &ClusterState,
        node_ip: IpAddr,
    ) -> BTreeMap<String, (PodRef, PodRecord)> {
        let mut out = BTreeMap::new();
        for pod in state.pods_on(self.node.as_str()) {
            let ports: Vec<_> = pod.ports.iter().map(|p| (p.protocol, p.port)).collect();
            let (netns, ip, second_ip) = if pod.host_network {
                (None, Some(node_ip), None)
            } else {
                // The first IP is of the cluster's first family; a dual-stack Pod has a second.
                let Some(ip) = pod.ips.first().copied() else {
                    tracing::info!(pod = %pod.key, "pod has no IP address yet; not started");
                    continue;
                };
                let second = pod
                    .ips
                    .iter()
                    .copied()
                    .find(|o| o.is_ipv4() != ip.is_ipv4());
                (Some(self.names.pod_ns(&pod.key)), Some(ip), second)
            };
            let record = PodRecord {
                netns,
                ip,
                second_ip,
                ports,
                built: false,
                pid: None,
            };
            out.insert(pod.key.to_string(), (pod.key.clone(), record));
        }
        out
    }

    /// Starts the workload of the Pod `key`: the echo server inside the Pod's namespace, or
    /// the DNS server in this process's namespace (where the lab's API on `127.0.0.1` is
    /// reachable), opening its listeners in the Pod's (see [`crate::dns`]).
    fn spawn_workload(
        &self,
        key: &str,
        pod: &PodRecord,
        workload: Workload,
    ) -> Result<Child, LabError> {
        let ns = pod
            .netns
            .clone()
            .unwrap_or_else(|| self.names.node_ns(&self.node));
        let (program, leading) =
            self.lab
                .program
                .split_first()
                .ok_or_else(|| LabError::BadHelperArgs {
                    args: self.lab.program.clone(),
                    expected: "a helper program",
                })?;
        let what = || format!("{} of {key}", workload.what());
        let mut cmd = match workload {
            Workload::Echo => {
                netd_kernel::netns::command(&ns, program).map_err(LabError::kernel(what()))?
            }
            Workload::Dns => Command::new(program),
        };
        cmd.args(leading)
            .arg(workload.helper_command())
            .arg(self.store.marker())
            .arg(key);
        match workload {
            Workload::Echo => {
                for (protocol, port) in &pod.ports {
                    cmd.arg(format!("{}/{port}", protocol.as_lower_str()));
                }
            }
            Workload::Dns => {
                cmd.arg(&ns);
            }
        }
        let log_path = self.store.log_path(&self.node);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(LabError::io(&log_path))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
        cmd.spawn().map_err(|source| LabError::SpawnFailed {
            what: what(),
            source,
        })
    }

    fn stop_echo(&mut self, key: &str, pid: Option<u32>) -> Result<(), LabError> {
        if let Some(pid) = pid {
            process::kill_if_ours(pid, &self.store.marker())
                .map_err(LabError::kernel(format!("echo server of {key}")))?;
        }
        if let Some(mut child) = self.children.remove(key) {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }
}

/// What a Pod runs (see [`crate::helper`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// The echo server on the Pod's ports.
    Echo,
    /// The cluster DNS server.
    Dns,
}

impl Workload {
    /// The helper command that runs it.
    fn helper_command(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Dns => "dns",
        }
    }

    /// How errors name it.
    fn what(self) -> &'static str {
        match self {
            Workload::Echo => "echo server",
            Workload::Dns => "DNS server",
        }
    }
}

/// kube-proxy's health servers of one Node, with sockets in the Node's namespace, served by
/// a small Tokio runtime of their own.
struct NodeHealth {
    proxy: ProxyHealth,
    servers: HealthServers,
    /// `/healthz` and `/livez`, and `/metrics`: they run while these are kept.
    _served: Vec<HttpServer>,
    /// Runs every server; declared last so it is dropped after them.
    runtime: tokio::runtime::Runtime,
}

impl NodeHealth {
    /// Starts `/healthz`, `/livez` and `/metrics` in the namespace `ns`. A port that cannot be
    /// bound (say, taken by a hostNetwork Pod) is logged, not fatal: the data path matters more.
    fn start(ns: &str, backend: &dyn Backend) -> Result<NodeHealth, LabError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("health")
            .enable_all()
            .build()
            .map_err(|source| LabError::SpawnFailed {
                what: "the health servers' runtime".to_owned(),
                source,
            })?;
        let mut registry = Registry::with_prefix("kubeproxy");
        let metrics = HealthMetrics::register(&mut registry);
        backend.register(&mut registry);
        let proxy = ProxyHealth::new(DEFAULT_HEALTH_TIMEOUT, Arc::new(SystemClock), metrics);
        let owned = ns.to_owned();
        let servers = HealthServers::new(
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            proxy.clone(),
            Arc::new(move |addr| bind_in(&owned, addr)),
        );
        let registry = Arc::new(registry);
        let mut served = Vec::new();
        {
            // The servers' tasks are spawned on this runtime.
            let _entered = runtime.enter();
            let healthz = bind_in(ns, DEFAULT_HEALTHZ_BIND_ADDRESS)
                .map_err(|source| HealthError::BindFailed {
                    addr: DEFAULT_HEALTHZ_BIND_ADDRESS,
                    source,
                })
                .and_then(|listener| proxy.serve(listener));
            let metrics = bind_in(ns, DEFAULT_METRICS_BIND_ADDRESS)
                .map_err(|source| HealthError::BindFailed {
                    addr: DEFAULT_METRICS_BIND_ADDRESS,
                    source,
                })
                .and_then(|listener| netd_healthcheck::serve_metrics(listener, registry));
            for server in [healthz, metrics] {
                match server {
                    Ok(server) => served.push(server),
                    Err(error) => tracing::warn!(%ns, %error, "health server not started"),
                }
            }
        }
        Ok(NodeHealth {
            proxy,
            servers,
            _served: served,
            runtime,
        })
    }

    /// Opens, closes and updates the healthCheckNodePort servers to match `checks`.
    fn sync(&mut self, checks: &BTreeMap<ServiceRef, (u16, usize)>) {
        let failed = self.runtime.block_on(self.servers.sync(checks));
        for (service, error) in failed {
            tracing::warn!(%service, %error, "health check server not started; retried next sync");
        }
    }
}

/// A listening socket on `addr` in the namespace `ns` (bound from a thread that enters it:
/// the socket stays in that namespace whoever serves it).
pub(crate) fn bind_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).map_err(std::io::Error::other)?;
        TcpListener::bind(addr)
    })
    .join()
    .map_err(|_| std::io::Error::other("the thread binding a health server panicked"))?
}

/// Reads every Node's record, for waiting on convergence.
pub(crate) fn node_records(
    store: &Store,
    nodes: &[NodeName],
) -> Result<Vec<(NodeName, NodeRecord)>, LabError> {
    nodes
        .iter()
        .map(|n| Ok((n.clone(), store.read_node(n)?)))
        .collect()
}
