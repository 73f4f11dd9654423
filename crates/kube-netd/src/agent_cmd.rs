//! `kube-netd agent`: kube-proxy (and NetworkPolicy) for the Node this process runs on, fed
//! by the API server.
//!
//! Flags and the `--config` file use kube-proxy's names. As kube-proxy does, when `--config`
//! is given the file is the whole configuration and the flags it covers are ignored (a
//! warning names each one that was set); only `--hostname-override` still overrides the
//! file. Flags that are not part of `KubeProxyConfiguration` (`--master`, `--cleanup`,
//! `--config`, `--network-policy`) always count.
//!
//! The agent programs the network namespace it runs in ([`netns::CURRENT`]): the host's on a
//! real Node, a scratch one under `ip netns exec` in tests. Nothing is programmed before
//! every watched kind has been listed, nothing is flushed at start or exit, and a failed sync
//! makes the next one full.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use netd_agent::enforcement::Enforcement;
use netd_agent::ipvs::{DEFAULT_DRAIN_TIMEOUT, SCHEDULERS, Timeouts};
use netd_agent::{Backend, BackendConfig, IpvsConfig, Mode, ProgramConfig};
use netd_healthcheck::{
    CurrentNamespace, HealthMetrics, HealthServers, HttpServer, IpFamily, ProxyHealth, SystemClock,
};
use netd_kernel::netns;
use netd_model::{ClusterConfig, ClusterState, Kind, NodeName, Object, ObjectId};
use netd_proxy::{DetectLocal, NodePortAddresses, NodePortIps, ProxySettings};
use netd_source::{ApiOptions, RunnerConfig, SharedStore, Store, SyncRequest};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;

/// `kube-netd agent` flags (kube-proxy's names).
#[derive(Debug, Default, clap::Args)]
pub struct AgentArgs {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1). When given, the
    /// flags it covers are ignored, as in kube-proxy; --hostname-override still applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kubeconfig file with the API server's address and credentials (default: the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL; overrides the kubeconfig's server.
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// The Node's name, instead of this machine's hostname.
    #[arg(long, value_name = "NAME")]
    hostname_override: Option<String>,
    /// iptables (the default), nftables or ipvs.
    #[arg(long, value_name = "MODE")]
    proxy_mode: Option<String>,
    /// The pod ranges (comma-separated, one per family) that tell pod traffic from
    /// off-cluster traffic.
    #[arg(long, value_name = "CIDRS")]
    cluster_cidr: Option<String>,
    #[command(flatten)]
    detect_local: DetectLocalArgs,
    /// The Node's addresses nodePorts answer on: CIDRs (comma-separated; the Node's
    /// addresses inside them), or primary (the Node's primary address of each family).
    /// Default: every local address; primary in nftables mode, as kube-proxy's.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    nodeport_addresses: Option<Vec<String>>,
    /// SNAT every packet sent to a ClusterIP, from pods too.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    masquerade_all: Option<bool>,
    /// The least time between two syncs (Go duration, default 1s).
    #[arg(long, value_name = "DURATION")]
    min_sync_period: Option<String>,
    /// The most time between two syncs, and the retry delay after a failed one (default 30s).
    #[arg(long, value_name = "DURATION")]
    sync_period: Option<String>,
    /// Where /healthz and /livez are served (default 0.0.0.0:10256).
    #[arg(long, value_name = "ADDR:PORT")]
    healthz_bind_address: Option<String>,
    /// Where /metrics is served (default 127.0.0.1:10249).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_bind_address: Option<String>,
    /// IPVS mode's scheduler: rr (the default), wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq
    /// or mh.
    #[arg(long, value_name = "NAME")]
    ipvs_scheduler: Option<String>,
    /// IPVS mode: arp_ignore=1 and arp_announce=2, so the Node answers no ARP request for
    /// the Service addresses on kube-ipvs0.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    ipvs_strict_arp: Option<bool>,
    /// IPVS mode: the idle timeout of established TCP connections (Go duration; 0, the
    /// default, keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_tcp_timeout: Option<String>,
    /// IPVS mode: the timeout of TCP connections after a FIN (0 keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_tcpfin_timeout: Option<String>,
    /// IPVS mode: the timeout of UDP flows (0 keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_udp_timeout: Option<String>,
    /// IPVS mode: ranges (comma-separated) whose virtual servers are left alone when stale
    /// ones are removed.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    ipvs_exclude_cidrs: Option<Vec<String>>,
    /// IPVS mode: --sync-period, as kube-proxy's older flag (wins over --sync-period in IPVS
    /// mode; ignored in the other modes).
    #[arg(long, value_name = "DURATION")]
    ipvs_sync_period: Option<String>,
    /// IPVS mode: --min-sync-period, as kube-proxy's older flag (wins over
    /// --min-sync-period in IPVS mode; ignored in the other modes).
    #[arg(long, value_name = "DURATION")]
    ipvs_min_sync_period: Option<String>,
    /// Remove everything kube-netd owns in this network namespace, in every mode, and exit.
    #[arg(long)]
    cleanup: bool,
    /// Enforce NetworkPolicy; false programs Services only (no policy chains or sets).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
}

/// kube-proxy's flags that say how pod traffic is told from other traffic (for `kube-netd
/// agent` and `render`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DetectLocalArgs {
    /// How pod traffic is told from other traffic: ClusterCIDR (the default: from the
    /// cluster's pod ranges, --cluster-cidr), NodeCIDR (the Node's spec.podCIDRs),
    /// BridgeInterface (arriving on --pod-bridge-interface) or InterfaceNamePrefix
    /// (arriving on an interface named --pod-interface-name-prefix...).
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The pods' bridge, for --detect-local-mode=BridgeInterface.
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,
    /// The prefix of the pods' interface names, for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
}

impl DetectLocalArgs {
    /// The detector these name (none given: ClusterCIDR).
    pub fn parse(&self) -> Result<DetectLocal, netd_proxy::BadSetting> {
        DetectLocal::parse(
            self.detect_local_mode.as_deref().unwrap_or_default(),
            self.pod_bridge_interface.as_deref(),
            self.pod_interface_name_prefix.as_deref(),
        )
    }
}

/// The IPVS scheduler `name` asks for (unset or empty: the default, `rr`), checked against
/// [`SCHEDULERS`]; `what` names the flag (and file field) in the error.
pub fn ipvs_scheduler(name: Option<&str>, what: &str) -> anyhow::Result<String> {
    match name.filter(|s| !s.is_empty()) {
        None => Ok(IpvsConfig::default().scheduler),
        Some(name) if SCHEDULERS.contains(&name) => Ok(name.to_owned()),
        Some(name) => bail!(
            "{what}: unknown scheduler {name:?}: expected one of {}",
            SCHEDULERS.join(", ")
        ),
    }
}

/// What the agent runs with, once flags and file are merged and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where the API server is.
    pub api: ApiOptions,
    /// The Node programmed.
    pub node: String,
    /// The proxy mode.
    pub mode: Mode,
    /// The pod ranges of the ClusterCIDR local-traffic detector.
    pub cluster_cidrs: Vec<IpNet>,
    /// What every back end programs from: masquerade-all, nodePort addresses, the
    /// local-traffic detector, NetworkPolicy on or off.
    pub program: ProgramConfig,
    /// IPVS mode's scheduler, strict ARP, timeouts and excluded ranges.
    pub ipvs: IpvsConfig,
    /// `--min-sync-period` and `--sync-period`.
    pub runner: RunnerConfig,
    /// `/healthz` and `/livez`.
    pub healthz_bind_address: SocketAddr,
    /// `/metrics`.
    pub metrics_bind_address: SocketAddr,
    /// `--cleanup`.
    pub cleanup: bool,
}

/// Runs `kube-netd agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let settings = resolve(args)?;
    if settings.cleanup {
        return cleanup(netns::CURRENT);
    }
    let backend = netd_agent::backend(&BackendConfig {
        mode: settings.mode,
        program: settings.program.clone(),
        ipvs: settings.ipvs.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    runtime.block_on(serve(settings, backend))
}

/// Merges `args` with the `--config` file (if any) as kube-proxy does, and checks the result.
pub fn resolve(args: AgentArgs) -> anyhow::Result<Settings> {
    let from_file = match &args.config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let raw = match from_file {
        Some(file) => {
            warn_ignored(&args);
            file.into_raw(args.hostname_override.clone())
        }
        None => Raw {
            kubeconfig: args.kubeconfig.clone(),
            hostname_override: args.hostname_override.clone(),
            mode: args.proxy_mode.clone(),
            cluster_cidr: args.cluster_cidr.clone(),
            detect_local: args.detect_local.clone(),
            nodeport_addresses: args.nodeport_addresses.clone().unwrap_or_default(),
            masquerade_all: args.masquerade_all.unwrap_or(false),
            periods: SyncPeriods::from_flags(&args),
            healthz_bind_address: args.healthz_bind_address.clone(),
            metrics_bind_address: args.metrics_bind_address.clone(),
            ipvs_scheduler: args.ipvs_scheduler.clone(),
            ipvs_strict_arp: args.ipvs_strict_arp.unwrap_or(false),
            ipvs_tcp_timeout: args.ipvs_tcp_timeout.clone(),
            ipvs_tcpfin_timeout: args.ipvs_tcpfin_timeout.clone(),
            ipvs_udp_timeout: args.ipvs_udp_timeout.clone(),
            ipvs_exclude_cidrs: args.ipvs_exclude_cidrs.clone().unwrap_or_default(),
        },
    };
    raw.check(args.master, args.cleanup, args.network_policy)
}

/// Removes from `ns` what every mode of kube-netd owns there.
fn cleanup(ns: &str) -> anyhow::Result<()> {
    // Keeping iptables here removes nftables and IPVS; iptables' own goes next.
    let others = netd_agent::remove_other_modes(ns, Mode::Iptables)?;
    let own = netd_agent::cleanup(ns)?;
    tracing::info!(
        others,
        hooks = own.hooks,
        chains = own.chains,
        sets = own.sets,
        "cleaned up"
    );
    crate::out::line(format_args!(
        "removed: {} hooks, {} chains, {} ipsets (iptables); {} objects of other modes",
        own.hooks, own.chains, own.sets, others
    ))?;
    Ok(())
}

/// The agent proper: health and metrics servers, the watches, the sync loop, until SIGTERM or
/// Ctrl-C. Rules stay in the kernel when it ends.
async fn serve(settings: Settings, backend: Box<dyn Backend>) -> anyhow::Result<()> {
    let node = NodeName::new(settings.node.clone());
    let mut registry = Registry::with_prefix("kubeproxy");
    let health_metrics = HealthMetrics::register(&mut registry);
    backend.register(&mut registry);
    let sync_metrics = AgentMetrics::register(&mut registry);
    // kube-proxy's /healthz turns unhealthy when a queued change waits 2 × syncPeriod.
    let health = ProxyHealth::new(
        settings.runner.sync_period * 2,
        Arc::new(SystemClock),
        health_metrics,
    );
    let _servers: Vec<HttpServer> = vec![
        health.serve(netd_healthcheck::bind(settings.healthz_bind_address)?)?,
        netd_healthcheck::serve_metrics(
            netd_healthcheck::bind(settings.metrics_bind_address)?,
            Arc::new(registry),
        )?,
    ];
    let services = Arc::new(tokio::sync::Mutex::new(HealthServers::new(
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        health.clone(),
        Arc::new(CurrentNamespace),
    )));

    let removed = netd_agent::remove_other_modes(netns::CURRENT, settings.mode)?;
    if removed > 0 {
        tracing::info!(removed, mode = %settings.mode, "removed the rules of other proxy modes");
    }

    let client = settings.api.client().await?;
    let store = SharedStore::new(Store::new(ClusterConfig {
        cluster_cidrs: settings.cluster_cidrs.clone(),
        ..ClusterConfig::default()
    }));
    let watches = tokio::spawn(netd_source::watch_cluster(client, store.clone()));
    let queued = tokio::spawn(track_queued(
        store.clone(),
        health.clone(),
        sync_metrics.clone(),
    ));

    let backend = Arc::new(Mutex::new(backend));
    let enforcement = Arc::new(Mutex::new(EnforcementCheck::default()));
    // The last state a sync programmed, which the next sync's changes are counted from.
    let synced: Arc<Mutex<Option<Arc<ClusterState>>>> = Arc::default();
    let started_at = SystemTime::now();
    tracing::info!(node = %node, mode = %settings.mode, "agent started");
    netd_source::runner::run(
        store,
        settings.runner,
        |request| {
            let backend = backend.clone();
            let node = node.clone();
            let health = health.clone();
            let metrics = sync_metrics.clone();
            let services = services.clone();
            let synced = synced.clone();
            let program = settings.program.clone();
            let enforcement = enforcement.clone();
            async move {
                let families = families(&request);
                let full = request.full();
                let started = Instant::now();
                if full && program.network_policy {
                    // Poisoned only if a check panicked; it only remembers what was logged.
                    let mut enforcement = enforcement.lock().unwrap_or_else(|p| p.into_inner());
                    tokio::task::block_in_place(|| enforcement.run(&families, &metrics));
                }
                let report = tokio::task::block_in_place(|| {
                    // A poisoned lock means a sync panicked; the back end's own state then
                    // asks for a full sync, which the next request brings.
                    let mut backend = backend.lock().unwrap_or_else(|p| p.into_inner());
                    if full {
                        backend.request_full_sync();
                    }
                    backend
                        .sync(netns::CURRENT, &request.state, &node)
                        .map_err(Box::new)
                });
                let report = report?;
                metrics.observe(full, started.elapsed());
                {
                    // Poisoned only if a panic held it; the value is still a whole state.
                    let mut synced = synced.lock().unwrap_or_else(|p| p.into_inner());
                    let changes = Changes::between(synced.as_deref(), &request.state, started_at);
                    metrics.programmed(&changes, SystemTime::now());
                    *synced = Some(request.state.clone());
                }
                for family in families {
                    health.updated(family);
                }
                health.set_node_eligible(netd_healthcheck::node_eligible(&request.state, &node));
                let mut services = services.lock().await;
                services
                    .set_addresses(health_check_addresses(&program, &request.state, &node))
                    .await;
                for (service, error) in services.sync(&report.health_checks).await {
                    tracing::warn!(%service, %error, "health check server not started; retried next sync");
                }
                tracing::info!(generation = request.generation, reason = %request.reason, "synced");
                Ok::<(), Box<netd_agent::AgentError>>(())
            }
        },
        shutdown(),
    )
    .await;
    watches.abort();
    queued.abort();
    tracing::info!("agent stopped; rules left in place");
    Ok(())
}

/// Where health-check node ports listen, as kube-proxy's: the `--nodeport-addresses` of the
/// cluster's primary family (the unspecified address when that is every local address).
fn health_check_addresses(
    program: &ProgramConfig,
    state: &ClusterState,
    node: &NodeName,
) -> Vec<IpAddr> {
    let ipv6_only = !state.config().service_cidrs.is_empty()
        && state
            .config()
            .service_cidrs
            .iter()
            .all(|c| c.addr().is_ipv6());
    let (family, any) = if ipv6_only {
        (netd_proxy::IpFamily::V6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (netd_proxy::IpFamily::V4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    match program.proxy_options(state, node).nodeport_ips(family) {
        NodePortIps::Local => vec![any],
        NodePortIps::Only(ips) => ips,
    }
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler, Ctrl-C alone ends the agent.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Marks an update queued (for `/healthz`) each time the store changes.
async fn track_queued(store: SharedStore, health: ProxyHealth, metrics: AgentMetrics) {
    let mut changes = store.subscribe();
    while changes.changed().await.is_ok() {
        health.queued_update(IpFamily::V4);
        metrics.queued();
    }
}

/// NetworkPolicy's enforcement on this node, checked on every full sync (a bridge CNI
/// creates its bridge with the node's first Pod): see [`netd_agent::enforcement`]. Logs
/// when the outcome changes and keeps `network_policy_enforced` true to it.
#[derive(Debug, Default)]
struct EnforcementCheck {
    /// The last outcome logged: what was found, or why policy is not enforced.
    last: Option<Result<Enforcement, String>>,
}

impl EnforcementCheck {
    fn run(&mut self, families: &BTreeSet<IpFamily>, metrics: &AgentMetrics) {
        // The whole chain of causes, as the binary prints every error.
        let outcome = netd_agent::enforcement::ensure(netns::CURRENT, families)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        metrics.policy_enforced.set(i64::from(outcome.is_ok()));
        if self.last.as_ref() == Some(&outcome) {
            return;
        }
        match &outcome {
            Ok(Enforcement::Routed) => {
                tracing::info!("NetworkPolicy enforced: no pods share a bridge on this node");
            }
            Ok(Enforcement::Bridged { bridges, turned_on }) => tracing::info!(
                ?bridges,
                ?turned_on,
                "NetworkPolicy enforced: bridged pod traffic goes through netfilter (br_netfilter)"
            ),
            Err(error) => tracing::error!(
                %error,
                "NetworkPolicy is NOT enforced between pods that share a bridge on this node; load br_netfilter and set its sysctls to 1"
            ),
        }
        self.last = Some(outcome);
    }
}

/// The families a sync programs, as `/healthz` reports them.
fn families(request: &SyncRequest) -> BTreeSet<IpFamily> {
    request
        .state
        .config()
        .service_cidrs
        .iter()
        .map(|net| IpFamily::of(net.addr()))
        .chain([IpFamily::V4])
        .collect()
}

/// kube-proxy's sync metrics (names as `pkg/proxy/metrics`), with the prefix `kubeproxy`.
#[derive(Clone, Debug)]
struct AgentMetrics {
    duration: Histogram,
    full: Histogram,
    partial: Histogram,
    last: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_queued: Gauge<f64, std::sync::atomic::AtomicU64>,
    programming: Histogram,
    endpoint_changes: Counter,
    service_changes: Counter,
    policy_enforced: Gauge,
}

/// kube-proxy's buckets of `network_programming_duration_seconds`: 0, 0.25 s and 0.5 s, each
/// second to 59 s, every 5 s to 115 s, every 30 s from 2 to 5 minutes.
fn programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0, 0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    buckets.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    buckets
}

/// What changed between two consecutive synced states: kube-proxy's change counters, and
/// the trigger times network programming latency is measured from.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Services added, changed or removed.
    services: u64,
    /// EndpointSlices added, changed or removed.
    endpoint_slices: u64,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` of each EndpointSlice added or
    /// changed, when it is not before the agent started (as kube-proxy, which measures
    /// nothing from before it ran; a removed slice's time is that of its last update, so
    /// it is not counted either).
    triggers: Vec<SystemTime>,
}

impl Changes {
    /// The changes from `previous` (nothing before the first sync) to `next`.
    fn between(previous: Option<&ClusterState>, next: &ClusterState, since: SystemTime) -> Self {
        fn objects(state: Option<&ClusterState>, kind: Kind) -> BTreeMap<ObjectId, &Object> {
            state
                .into_iter()
                .flat_map(|s| s.objects())
                .filter(|o| o.kind() == kind)
                .map(|o| (o.id(), o))
                .collect()
        }
        let mut out = Changes::default();
        for kind in [Kind::Service, Kind::EndpointSlice] {
            let (before, after) = (objects(previous, kind), objects(Some(next), kind));
            let changed: Vec<&Object> = after
                .iter()
                .filter(|(id, o)| before.get(*id) != Some(*o))
                .map(|(_, o)| *o)
                .collect();
            let removed = before.keys().filter(|id| !after.contains_key(*id)).count();
            let count = (changed.len() + removed) as u64;
            if kind == Kind::Service {
                out.services = count;
                continue;
            }
            out.endpoint_slices = count;
            out.triggers = changed
                .iter()
                .filter_map(|o| trigger_time(o))
                .filter(|t| *t >= since)
                .collect();
        }
        out
    }
}

/// An EndpointSlice's `last-change-trigger-time` (RFC 3339), if it has a valid one.
fn trigger_time(object: &Object) -> Option<SystemTime> {
    let text = object
        .meta()
        .annotations
        .as_ref()?
        .get(netd_source::prune::LAST_CHANGE_TRIGGER_TIME)?;
    let at: jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(at))
}

impl AgentMetrics {
    fn register(registry: &mut Registry) -> AgentMetrics {
        // kube-proxy's buckets: 1 ms doubling 15 times.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let metrics = AgentMetrics {
            duration: buckets(),
            full: buckets(),
            partial: buckets(),
            last: Gauge::default(),
            last_queued: Gauge::default(),
            programming: Histogram::new(programming_buckets()),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            policy_enforced: Gauge::default(),
        };
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            metrics.duration.clone(),
        );
        registry.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            metrics.full.clone(),
        );
        registry.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            metrics.partial.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            metrics.last.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            metrics.last_queued.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            metrics.programming.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            metrics.endpoint_changes.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            metrics.service_changes.clone(),
        );
        registry.register(
            "network_policy_enforced",
            "1 when NetworkPolicy sees the traffic between this node's pods, 0 when it is off or cannot (the log says why)",
            metrics.policy_enforced.clone(),
        );
        metrics
    }

    /// Counts what a successful sync that ended at `now` programmed.
    fn programmed(&self, changes: &Changes, now: SystemTime) {
        self.service_changes.inc_by(changes.services);
        self.endpoint_changes.inc_by(changes.endpoint_slices);
        for trigger in &changes.triggers {
            // A trigger time ahead of this clock (skew with the control plane) counts as 0.
            let took = now.duration_since(*trigger).unwrap_or_default();
            self.programming.observe(took.as_secs_f64());
        }
    }

    fn observe(&self, full: bool, took: Duration) {
        let seconds = took.as_secs_f64();
        self.duration.observe(seconds);
        if full {
            self.full.observe(seconds);
        } else {
            self.partial.observe(seconds);
        }
        self.last.set(unix_now());
    }

    fn queued(&self) {
        self.last_queued.set(unix_now());
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `--sync-period` and `--min-sync-period` as text, and the names an error calls them by.
#[derive(Debug)]
struct SyncPeriods {
    sync_period: Option<String>,
    sync_name: &'static str,
    min_sync_period: Option<String>,
    min_sync_name: &'static str,
}

impl Default for SyncPeriods {
    fn default() -> Self {
        Self {
            sync_period: None,
            sync_name: "--sync-period (syncPeriod)",
            min_sync_period: None,
            min_sync_name: "--min-sync-period (minSyncPeriod)",
        }
    }
}

impl SyncPeriods {
    /// From the flags: in IPVS mode `--ipvs-sync-period` and `--ipvs-min-sync-period` win
    /// over the generic ones, as kube-proxy's older flags do; the other modes ignore them.
    fn from_flags(args: &AgentArgs) -> Self {
        let mut p = Self {
            sync_period: args.sync_period.clone(),
            min_sync_period: args.min_sync_period.clone(),
            ..Self::default()
        };
        if args.proxy_mode.as_deref() != Some("ipvs") {
            return p;
        }
        if let Some(v) = &args.ipvs_sync_period {
            p.sync_period = Some(v.clone());
            p.sync_name = "--ipvs-sync-period";
        }
        if let Some(v) = &args.ipvs_min_sync_period {
            p.min_sync_period = Some(v.clone());
            p.min_sync_name = "--ipvs-min-sync-period";
        }
        p
    }
}

/// The settings as text, from flags or the file, before they are checked.
#[derive(Debug, Default)]
struct Raw {
    kubeconfig: Option<PathBuf>,
    hostname_override: Option<String>,
    mode: Option<String>,
    cluster_cidr: Option<String>,
    detect_local: DetectLocalArgs,
    nodeport_addresses: Vec<String>,
    masquerade_all: bool,
    periods: SyncPeriods,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    ipvs_scheduler: Option<String>,
    ipvs_strict_arp: bool,
    ipvs_tcp_timeout: Option<String>,
    ipvs_tcpfin_timeout: Option<String>,
    ipvs_udp_timeout: Option<String>,
    ipvs_exclude_cidrs: Vec<String>,
}

impl Raw {
    fn check(
        self,
        master: Option<String>,
        cleanup: bool,
        network_policy: bool,
    ) -> anyhow::Result<Settings> {
        let mode = match self.mode.as_deref().filter(|m| !m.is_empty()) {
            None => Mode::Iptables,
            Some(m) => m.parse::<Mode>().context("--proxy-mode (mode)")?,
        };
        let cluster_cidrs = match self.cluster_cidr.as_deref().filter(|c| !c.is_empty()) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<IpNet>()
                        .with_context(|| format!("--cluster-cidr (clusterCIDR): {c:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let detect_local = self.detect_local.parse().context(
            "--detect-local-mode (detectLocalMode, with detectLocal.bridgeInterface or \
             detectLocal.interfaceNamePrefix)",
        )?;
        let nodeport_addresses = mode.nodeport_addresses(
            NodePortAddresses::parse(&self.nodeport_addresses)
                .context("--nodeport-addresses (nodePortAddresses)")?,
        );
        let program = ProgramConfig {
            proxy: ProxySettings {
                masquerade_all: self.masquerade_all,
                nodeport_addresses,
                detect_local,
                localhost_nodeports: false,
            },
            network_policy,
        };
        let p = &self.periods;
        let runner = RunnerConfig {
            min_sync_period: duration(p.min_sync_period.as_deref(), "1s", p.min_sync_name)?,
            sync_period: duration(p.sync_period.as_deref(), "30s", p.sync_name)?,
        };
        if runner.sync_period.is_zero() {
            bail!("{}: must be more than 0", p.sync_name);
        }
        let ipvs = self.ipvs()?;
        let node = match self.hostname_override.filter(|h| !h.is_empty()) {
            Some(name) => name.to_lowercase(),
            None => hostname()?,
        };
        Ok(Settings {
            api: ApiOptions {
                kubeconfig: self.kubeconfig,
                master: master.filter(|m| !m.is_empty()),
            },
            node,
            mode,
            cluster_cidrs,
            program,
            ipvs,
            runner,
            healthz_bind_address: address(
                self.healthz_bind_address.as_deref(),
                "0.0.0.0:10256",
                "--healthz-bind-address (healthzBindAddress)",
            )?,
            metrics_bind_address: address(
                self.metrics_bind_address.as_deref(),
                "127.0.0.1:10249",
                "--metrics-bind-address (metricsBindAddress)",
            )?,
            cleanup,
        })
    }
}

impl Raw {
    /// IPVS mode's options, checked in every mode (a bad value is refused even where it is
    /// not used).
    fn ipvs(&self) -> anyhow::Result<IpvsConfig> {
        let scheduler = ipvs_scheduler(
            self.ipvs_scheduler.as_deref(),
            "--ipvs-scheduler (ipvs.scheduler)",
        )?;
        let timeout = |text: &Option<String>, what: &str| -> anyhow::Result<Duration> {
            let d = duration(text.as_deref(), "0", what)?;
            if d > MAX_IPVS_TIMEOUT {
                bail!(
                    "{what}: {:?} is more than the kernel takes ({}s)",
                    text.as_deref().unwrap_or_default(),
                    MAX_IPVS_TIMEOUT.as_secs()
                );
            }
            Ok(d)
        };
        let timeouts = Timeouts {
            tcp: timeout(
                &self.ipvs_tcp_timeout,
                "--ipvs-tcp-timeout (ipvs.tcpTimeout)",
            )?,
            tcp_fin: timeout(
                &self.ipvs_tcpfin_timeout,
                "--ipvs-tcpfin-timeout (ipvs.tcpFinTimeout)",
            )?,
            udp: timeout(
                &self.ipvs_udp_timeout,
                "--ipvs-udp-timeout (ipvs.udpTimeout)",
            )?,
        };
        let exclude_cidrs = self
            .ipvs_exclude_cidrs
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .with_context(|| format!("--ipvs-exclude-cidrs (ipvs.excludeCIDRs): {c:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(IpvsConfig {
            scheduler,
            strict_arp: self.ipvs_strict_arp,
            // A real server drains until its connections would have expired anyway.
            drain_timeout: if timeouts.tcp.is_zero() {
                DEFAULT_DRAIN_TIMEOUT
            } else {
                timeouts.tcp
            },
            timeouts,
            exclude_cidrs,
        })
    }
}

/// The longest IPVS timeout every kernel takes: `INT_MAX / HZ` seconds with the largest HZ.
const MAX_IPVS_TIMEOUT: Duration = Duration::from_secs(i32::MAX as u64 / 1000);

/// `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1): the fields kube-netd reads,
/// under kube-proxy's names. Any other key is refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubeProxyConfiguration {
    api_version: String,
    kind: String,
    #[serde(default)]
    client_connection: ClientConnection,
    #[serde(default)]
    hostname_override: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default, rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(default)]
    detect_local_mode: Option<String>,
    #[serde(default)]
    detect_local: DetectLocalSection,
    #[serde(default)]
    node_port_addresses: Vec<String>,
    #[serde(default)]
    healthz_bind_address: Option<String>,
    #[serde(default)]
    metrics_bind_address: Option<String>,
    /// kube-proxy ≥ 1.33: one sync period for every mode.
    #[serde(default)]
    sync_period: Option<String>,
    /// kube-proxy ≥ 1.33: one min sync period for every mode.
    #[serde(default)]
    min_sync_period: Option<String>,
    #[serde(default)]
    iptables: ModeSection,
    #[serde(default)]
    nftables: ModeSection,
    #[serde(default)]
    ipvs: IpvsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientConnection {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

/// `detectLocal:`, the interfaces of the interface detectors.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DetectLocalSection {
    #[serde(default)]
    bridge_interface: Option<String>,
    #[serde(default)]
    interface_name_prefix: Option<String>,
}

/// `iptables:` and `nftables:` (the fields kube-netd reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModeSection {
    #[serde(default)]
    masquerade_all: Option<bool>,
    #[serde(default)]
    sync_period: Option<String>,
    #[serde(default)]
    min_sync_period: Option<String>,
}

/// `ipvs:` (the fields kube-netd reads; all of kube-proxy's but none).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpvsSection {
    #[serde(default)]
    sync_period: Option<String>,
    #[serde(default)]
    min_sync_period: Option<String>,
    #[serde(default)]
    scheduler: Option<String>,
    #[serde(default, rename = "excludeCIDRs")]
    exclude_cidrs: Vec<String>,
    #[serde(default, rename = "strictARP")]
    strict_arp: Option<bool>,
    #[serde(default)]
    tcp_timeout: Option<String>,
    #[serde(default)]
    tcp_fin_timeout: Option<String>,
    #[serde(default)]
    udp_timeout: Option<String>,
}

impl KubeProxyConfiguration {
    fn into_raw(self, hostname_flag: Option<String>) -> Raw {
        let ipvs_mode = self.mode.as_deref() == Some("ipvs");
        // IPVS mode takes masqueradeAll from iptables:, as kube-proxy, and its sync periods
        // from ipvs:.
        let mut section = match self.mode.as_deref() {
            Some("nftables") => self.nftables,
            _ => self.iptables,
        };
        let ipvs = self.ipvs;
        if ipvs_mode {
            section.sync_period = ipvs.sync_period;
            section.min_sync_period = ipvs.min_sync_period;
        }
        Raw {
            kubeconfig: self
                .client_connection
                .kubeconfig
                .filter(|k| !k.as_os_str().is_empty()),
            // As kube-proxy: the flag wins over the file.
            hostname_override: hostname_flag.or(self.hostname_override),
            mode: self.mode,
            cluster_cidr: self.cluster_cidr,
            detect_local: DetectLocalArgs {
                detect_local_mode: self.detect_local_mode,
                pod_bridge_interface: self.detect_local.bridge_interface,
                pod_interface_name_prefix: self.detect_local.interface_name_prefix,
            },
            nodeport_addresses: self.node_port_addresses,
            masquerade_all: section.masquerade_all.unwrap_or(false),
            periods: SyncPeriods {
                min_sync_period: self.min_sync_period.or(section.min_sync_period),
                sync_period: self.sync_period.or(section.sync_period),
                ..SyncPeriods::default()
            },
            healthz_bind_address: self.healthz_bind_address,
            metrics_bind_address: self.metrics_bind_address,
            ipvs_scheduler: ipvs.scheduler,
            ipvs_strict_arp: ipvs.strict_arp.unwrap_or(false),
            ipvs_tcp_timeout: ipvs.tcp_timeout,
            ipvs_tcpfin_timeout: ipvs.tcp_fin_timeout,
            ipvs_udp_timeout: ipvs.udp_timeout,
            ipvs_exclude_cidrs: ipvs.exclude_cidrs,
        }
    }
}

fn read_config(path: &Path) -> anyhow::Result<KubeProxyConfiguration> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: reading {}", path.display()))?;
    let config: KubeProxyConfiguration =
        serde_yaml_ng::from_str(&text).with_context(|| format!("--config {}", path.display()))?;
    if config.api_version != "kubeproxy.config.k8s.io/v1alpha1" {
        bail!(
            "--config {}: apiVersion {:?}: expected kubeproxy.config.k8s.io/v1alpha1",
            path.display(),
            config.api_version
        );
    }
    if config.kind != "KubeProxyConfiguration" {
        bail!(
            "--config {}: kind {:?}: expected KubeProxyConfiguration",
            path.display(),
            config.kind
        );
    }
    Ok(config)
}

/// Logs each flag that `--config` makes kube-proxy ignore.
fn warn_ignored(args: &AgentArgs) {
    let set = [
        ("--kubeconfig", args.kubeconfig.is_some()),
        ("--proxy-mode", args.proxy_mode.is_some()),
        ("--cluster-cidr", args.cluster_cidr.is_some()),
        (
            "--detect-local-mode",
            args.detect_local.detect_local_mode.is_some(),
        ),
        (
            "--pod-bridge-interface",
            args.detect_local.pod_bridge_interface.is_some(),
        ),
        (
            "--pod-interface-name-prefix",
            args.detect_local.pod_interface_name_prefix.is_some(),
        ),
        ("--nodeport-addresses", args.nodeport_addresses.is_some()),
        ("--masquerade-all", args.masquerade_all.is_some()),
        ("--min-sync-period", args.min_sync_period.is_some()),
        ("--sync-period", args.sync_period.is_some()),
        (
            "--healthz-bind-address",
            args.healthz_bind_address.is_some(),
        ),
        (
            "--metrics-bind-address",
            args.metrics_bind_address.is_some(),
        ),
        ("--ipvs-scheduler", args.ipvs_scheduler.is_some()),
        ("--ipvs-strict-arp", args.ipvs_strict_arp.is_some()),
        ("--ipvs-tcp-timeout", args.ipvs_tcp_timeout.is_some()),
        ("--ipvs-tcpfin-timeout", args.ipvs_tcpfin_timeout.is_some()),
        ("--ipvs-udp-timeout", args.ipvs_udp_timeout.is_some()),
        ("--ipvs-exclude-cidrs", args.ipvs_exclude_cidrs.is_some()),
        ("--ipvs-sync-period", args.ipvs_sync_period.is_some()),
        (
            "--ipvs-min-sync-period",
            args.ipvs_min_sync_period.is_some(),
        ),
    ];
    for (flag, _) in set.into_iter().filter(|(_, set)| *set) {
        tracing::warn!(
            flag,
            "ignored: --config is given, and the file wins as in kube-proxy"
        );
    }
}

/// A Go duration (`1s`, `500ms`, `1m30s`, `0`) or `default` when absent.
fn duration(text: Option<&str>, default: &str, what: &str) -> anyhow::Result<Duration> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or(default);
    parse_go_duration(text)
        .with_context(|| format!("{what}: {text:?} is not a duration like 1s or 500ms"))
}

fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).ok()?;
    }
    (!text.is_empty()).then_some(total)
}

/// `host:port`, or the default when absent. An address without a port is refused by name.
fn address(text: Option<&str>, default: &str, what: &str) -> anyhow::Result<SocketAddr> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or(default);
    text.parse()
        .with_context(|| format!("{what}: {text:?} is not an address:port"))
}

/// This machine's hostname, lower-cased as kube-proxy does.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (give --hostname-override)")?;
    Ok(name.trim().to_lowercase())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))?;
        resolve(cli.agent)
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", settings(args).expect_err("refused"))
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write config");
        file
    }

    #[test]
    fn defaults_are_kube_proxys() {
        let s = settings(&["--hostname-override", "Node-1"]).expect("settings");
        assert_eq!(s.node, "node-1");
        assert_eq!(s.mode, Mode::Iptables);
        assert_eq!(s.runner, RunnerConfig::default());
        assert_eq!(s.healthz_bind_address.to_string(), "0.0.0.0:10256");
        assert_eq!(s.metrics_bind_address.to_string(), "127.0.0.1:10249");
        assert!(s.cluster_cidrs.is_empty());
        assert_eq!(s.api, ApiOptions::default());
        assert_eq!(s.program, ProgramConfig::default());
        assert!(s.program.network_policy);
        assert_eq!(s.ipvs, IpvsConfig::default());
        assert_eq!(s.ipvs.scheduler, "rr");
        assert_eq!(s.ipvs.timeouts.to_kernel(), None, "0 keeps the kernel's");
        assert!(!s.cleanup);
    }

    #[test]
    fn ipvs_flags_are_kube_proxys() {
        let s = settings(&[
            "--hostname-override=n",
            "--proxy-mode=ipvs",
            "--ipvs-scheduler=wlc",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=10m",
            "--ipvs-tcpfin-timeout=30s",
            "--ipvs-udp-timeout=1.5s",
            "--ipvs-exclude-cidrs=10.200.0.0/16,fd00:200::/64",
        ])
        .expect("settings");
        assert_eq!(
            s.ipvs,
            IpvsConfig {
                scheduler: "wlc".to_owned(),
                strict_arp: true,
                drain_timeout: Duration::from_secs(600),
                timeouts: Timeouts {
                    tcp: Duration::from_secs(600),
                    tcp_fin: Duration::from_secs(30),
                    udp: Duration::from_millis(1500),
                },
                exclude_cidrs: vec![
                    "10.200.0.0/16".parse().expect("net"),
                    "fd00:200::/64".parse().expect("net"),
                ],
            }
        );
        let kernel = s.ipvs.timeouts.to_kernel().expect("timeouts to set");
        assert_eq!((kernel.tcp, kernel.tcp_fin, kernel.udp), (600, 30, 1));
        for scheduler in SCHEDULERS {
            let flag = format!("--ipvs-scheduler={scheduler}");
            let s = settings(&["--hostname-override=n", &flag]).expect(scheduler);
            assert_eq!(s.ipvs.scheduler, scheduler);
        }
        let s = settings(&["--hostname-override=n", "--ipvs-udp-timeout=0"]).expect("settings");
        assert_eq!(s.ipvs.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let timeouts = Timeouts {
            udp: Duration::from_secs(5),
            ..Timeouts::default()
        };
        let kernel = timeouts.to_kernel().expect("one timeout set");
        assert_eq!((kernel.tcp, kernel.tcp_fin, kernel.udp), (0, 0, 5));
    }

    #[test]
    fn bad_ipvs_flags_are_refused_by_name() {
        for (arg, want) in [
            (
                "--ipvs-scheduler=fair",
                "--ipvs-scheduler (ipvs.scheduler): unknown scheduler \"fair\": expected one of rr, wrr",
            ),
            (
                "--ipvs-tcp-timeout=-1s",
                "--ipvs-tcp-timeout (ipvs.tcpTimeout)",
            ),
            (
                "--ipvs-tcpfin-timeout=5",
                "--ipvs-tcpfin-timeout (ipvs.tcpFinTimeout)",
            ),
            (
                "--ipvs-udp-timeout=1000h",
                "more than the kernel takes (2147483s)",
            ),
            (
                "--ipvs-exclude-cidrs=10.0.0.0/8,bogus",
                "--ipvs-exclude-cidrs (ipvs.excludeCIDRs): \"bogus\"",
            ),
            ("--ipvs-strict-arp=maybe", "--ipvs-strict-arp"),
        ] {
            let err = error(&["--hostname-override=n", "--proxy-mode=ipvs", arg]);
            assert!(err.contains(want), "{arg}: {err}");
        }
    }

    #[test]
    fn nftables_mode_defaults_to_the_primary_nodeport_addresses() {
        for (args, want) in [
            (&["--proxy-mode=nftables"][..], NodePortAddresses::Primary),
            (&["--proxy-mode=iptables"], NodePortAddresses::All),
            (&["--proxy-mode=ipvs"], NodePortAddresses::All),
            (
                &["--proxy-mode=nftables", "--nodeport-addresses=0.0.0.0/0"],
                NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().expect("net")]),
            ),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            let s = settings(&all).expect("settings");
            assert_eq!(s.program.proxy.nodeport_addresses, want, "{args:?}");
        }
    }

    #[test]
    fn proxy_flags_reach_the_back_ends_config() {
        let s = settings(&[
            "--hostname-override=n",
            "--masquerade-all",
            "--nodeport-addresses=10.0.0.0/8,fd00::/64",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cni0",
            "--network-policy=false",
        ])
        .expect("settings");
        let want = ProgramConfig {
            proxy: ProxySettings {
                masquerade_all: true,
                nodeport_addresses: NodePortAddresses::Cidrs(vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "fd00::/64".parse().expect("net"),
                ]),
                detect_local: DetectLocal::BridgeInterface("cni0".parse().expect("name")),
                localhost_nodeports: false,
            },
            network_policy: false,
        };
        assert_eq!(s.program, want);
        for (args, want) in [
            (
                &["--detect-local-mode=NodeCIDR"][..],
                ProxySettings {
                    detect_local: DetectLocal::NodeCidr,
                    ..ProxySettings::default()
                },
            ),
            (
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=veth",
                ],
                ProxySettings {
                    detect_local: DetectLocal::InterfaceNamePrefix("veth".parse().expect("name")),
                    ..ProxySettings::default()
                },
            ),
            (
                &["--nodeport-addresses=primary"],
                ProxySettings {
                    nodeport_addresses: NodePortAddresses::Primary,
                    ..ProxySettings::default()
                },
            ),
            (
                &["--masquerade-all=false", "--detect-local-mode=ClusterCIDR"],
                ProxySettings::default(),
            ),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            assert_eq!(
                settings(&all).expect("settings").program.proxy,
                want,
                "{args:?}"
            );
        }
    }

    #[test]
    fn flags_are_read() {
        let s = settings(&[
            "--kubeconfig=/k",
            "--master=http://10.0.0.1:6443",
            "--hostname-override=n2",
            "--proxy-mode=nftables",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--detect-local-mode=ClusterCIDR",
            "--min-sync-period=500ms",
            "--sync-period=1m30s",
            "--healthz-bind-address=127.0.0.1:20256",
            "--metrics-bind-address=[::1]:20249",
            "--network-policy=true",
        ])
        .expect("settings");
        assert_eq!(s.api.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(s.api.master.as_deref(), Some("http://10.0.0.1:6443"));
        assert_eq!(s.mode, Mode::Nftables);
        assert_eq!(
            s.cluster_cidrs,
            vec![
                "10.244.0.0/16".parse::<IpNet>().expect("net"),
                "fd00:10:244::/56".parse::<IpNet>().expect("net"),
            ]
        );
        assert_eq!(s.runner.min_sync_period, Duration::from_millis(500));
        assert_eq!(s.runner.sync_period, Duration::from_secs(90));
        assert_eq!(s.healthz_bind_address.to_string(), "127.0.0.1:20256");
        assert_eq!(s.metrics_bind_address.to_string(), "[::1]:20249");
    }

    #[test]
    fn ipvs_sync_period_flags_set_the_periods_in_ipvs_mode_only() {
        let periods = |args: &[&str]| {
            let mut all = vec!["--hostname-override=node-1"];
            all.extend_from_slice(args);
            let s = settings(&all).expect("settings");
            (s.runner.sync_period, s.runner.min_sync_period)
        };
        let ipvs = [
            "--ipvs-sync-period=45s",
            "--ipvs-min-sync-period=2s",
            "--sync-period=1m",
            "--min-sync-period=500ms",
        ];
        let mut in_ipvs = vec!["--proxy-mode=ipvs"];
        in_ipvs.extend_from_slice(&ipvs);
        assert_eq!(
            periods(&in_ipvs),
            (Duration::from_secs(45), Duration::from_secs(2))
        );
        let mut in_iptables = vec!["--proxy-mode=iptables"];
        in_iptables.extend_from_slice(&ipvs);
        assert_eq!(
            periods(&in_iptables),
            (Duration::from_secs(60), Duration::from_millis(500))
        );
        assert_eq!(
            periods(&["--proxy-mode=ipvs", "--ipvs-sync-period=10s"]),
            (Duration::from_secs(10), Duration::from_secs(1))
        );
        for (args, want) in [
            (
                &["--proxy-mode=ipvs", "--ipvs-sync-period=0"][..],
                "--ipvs-sync-period: must be more than 0",
            ),
            (
                &["--proxy-mode=ipvs", "--ipvs-min-sync-period=soon"],
                "--ipvs-min-sync-period",
            ),
        ] {
            let mut all = vec!["--hostname-override=node-1"];
            all.extend_from_slice(args);
            let err = error(&all);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        for (args, want) in [
            (&["--proxy-mode=userspace"][..], "--proxy-mode"),
            (&["--cluster-cidr=10.244.0.0/33"], "--cluster-cidr"),
            (
                &["--detect-local-mode=BridgeInterface"],
                "--detect-local-mode",
            ),
            (&["--detect-local-mode=LinkLocal"], "--detect-local-mode"),
            (
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=veth+",
                ],
                "--pod-interface-name-prefix",
            ),
            (
                &["--nodeport-addresses=10.0.0.0/33"],
                "--nodeport-addresses",
            ),
            (&["--nodeport-addresses=10.0.0.1"], "--nodeport-addresses"),
            (
                &["--nodeport-addresses=primary,10.0.0.0/8"],
                "--nodeport-addresses",
            ),
            (&["--masquerade-all=maybe"], "--masquerade-all"),
            (&["--sync-period=30"], "--sync-period"),
            (&["--sync-period=0"], "--sync-period"),
            (&["--min-sync-period=1x"], "--min-sync-period"),
            (
                &["--healthz-bind-address=0.0.0.0"],
                "--healthz-bind-address",
            ),
            (
                &["--metrics-bind-address=nowhere:1"],
                "--metrics-bind-address",
            ),
            (&["--network-policy=no"], "--network-policy"),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            let err = error(&all);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn every_mode_is_taken() {
        for mode in Mode::ALL {
            let flag = format!("--proxy-mode={mode}");
            let s = settings(&["--hostname-override=n", &flag]).expect("settings");
            assert_eq!(s.mode, mode);
        }
    }

    #[test]
    fn cleanup_takes_any_mode() {
        let s = settings(&["--hostname-override=n", "--proxy-mode=ipvs", "--cleanup"])
            .expect("cleanup in ipvs mode");
        assert!(s.cleanup);
        assert_eq!(s.mode, Mode::Ipvs);
    }

    #[test]
    fn go_durations() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("1s", Some(Duration::from_secs(1))),
            ("1m0s", Some(Duration::from_secs(60))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("2h45m", Some(Duration::from_secs(2 * 3600 + 45 * 60))),
            ("250ms", Some(Duration::from_millis(250))),
            ("", None),
            ("s", None),
            ("10", None),
            ("5d", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    const CONFIG: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
hostnameOverride: from-file
mode: nftables
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
nftables:
  masqueradeAll: false
  syncPeriod: 20s
  minSyncPeriod: 2s
iptables:
  syncPeriod: 1h
";

    #[test]
    fn the_config_file_is_read_with_kube_proxys_names() {
        let file = config_file(CONFIG);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path]).expect("settings");
        assert_eq!(
            s.api.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(s.node, "from-file");
        assert_eq!(s.mode, Mode::Nftables);
        assert_eq!(
            s.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().expect("net")]
        );
        // The nftables section, as the mode is nftables.
        assert_eq!(s.runner.sync_period, Duration::from_secs(20));
        assert_eq!(s.runner.min_sync_period, Duration::from_secs(2));
    }

    #[test]
    fn with_config_the_file_wins_except_hostname_override_and_master() {
        let file = config_file(CONFIG);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&[
            "--config",
            path,
            "--proxy-mode=iptables",
            "--sync-period=5s",
            "--kubeconfig=/ignored",
            "--hostname-override=from-flag",
            "--master=http://10.1.2.3:6443",
        ])
        .expect("settings");
        assert_eq!(s.mode, Mode::Nftables);
        assert_eq!(s.runner.sync_period, Duration::from_secs(20));
        assert_eq!(
            s.api.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(s.node, "from-flag");
        assert_eq!(s.api.master.as_deref(), Some("http://10.1.2.3:6443"));
    }

    #[test]
    fn the_config_file_sets_the_proxy_settings() {
        let file = config_file(&format!(
            "{}detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: veth\n\
             nodePortAddresses: [primary]\n",
            CONFIG
                .replace("detectLocalMode: ClusterCIDR\n", "")
                .replace("  masqueradeAll: false", "  masqueradeAll: true")
        ));
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path, "--network-policy=false"]).expect("settings");
        assert_eq!(
            s.program,
            ProgramConfig {
                proxy: ProxySettings {
                    masquerade_all: true,
                    nodeport_addresses: NodePortAddresses::Primary,
                    detect_local: DetectLocal::InterfaceNamePrefix("veth".parse().expect("name")),
                    localhost_nodeports: false,
                },
                network_policy: false,
            }
        );
        // The mode's section: iptables' masqueradeAll in IPVS mode, as kube-proxy.
        let file = config_file(&format!(
            "{}detectLocal:\n  bridgeInterface: cni0\n",
            CONFIG
                .replace("mode: nftables", "mode: ipvs")
                .replace(
                    "detectLocalMode: ClusterCIDR",
                    "detectLocalMode: BridgeInterface"
                )
                .replace("iptables:\n", "iptables:\n  masqueradeAll: true\n")
        ));
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path]).expect("settings");
        assert!(s.program.proxy.masquerade_all);
        assert_eq!(
            s.program.proxy.detect_local,
            DetectLocal::BridgeInterface("cni0".parse().expect("name"))
        );
    }

    #[test]
    fn the_ipvs_section_is_read_with_kube_proxys_names() {
        let text = format!(
            "{}ipvs:\n  scheduler: sh\n  strictARP: true\n  tcpTimeout: 900s\n  \
             tcpFinTimeout: 2m0s\n  udpTimeout: 0s\n  excludeCIDRs: [10.200.0.0/16]\n  \
             syncPeriod: 45s\n  minSyncPeriod: 3s\n",
            CONFIG.replace("mode: nftables", "mode: ipvs")
        );
        let file = config_file(&text);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path, "--ipvs-scheduler=rr"]).expect("settings");
        assert_eq!(s.mode, Mode::Ipvs);
        assert_eq!(
            s.ipvs,
            IpvsConfig {
                scheduler: "sh".to_owned(),
                strict_arp: true,
                drain_timeout: Duration::from_secs(900),
                timeouts: Timeouts {
                    tcp: Duration::from_secs(900),
                    tcp_fin: Duration::from_secs(120),
                    udp: Duration::ZERO,
                },
                exclude_cidrs: vec!["10.200.0.0/16".parse().expect("net")],
            },
            "the file wins over --ipvs-scheduler"
        );
        // IPVS mode's sync periods are the ipvs section's.
        assert_eq!(s.runner.sync_period, Duration::from_secs(45));
        assert_eq!(s.runner.min_sync_period, Duration::from_secs(3));

        for (section, want) in [
            ("ipvs:\n  scheduler: fair\n", "ipvs.scheduler"),
            ("ipvs:\n  tcpTimeout: 15\n", "ipvs.tcpTimeout"),
            (
                "ipvs:\n  excludeCIDRs: [10.0.0.0/33]\n",
                "ipvs.excludeCIDRs",
            ),
            ("ipvs:\n  strictArp: true\n", "strictArp"),
        ] {
            let file = config_file(&format!("{CONFIG}{section}"));
            let path = file.path().to_str().expect("utf-8 path");
            let err = error(&["--config", path]);
            assert!(err.contains(want), "{section}: {err}");
        }
    }

    #[test]
    fn bad_proxy_settings_in_the_file_are_refused_by_name() {
        for (extra, want) in [
            (
                "nodePortAddresses: [10.0.0.0/40]\ndetectLocal:\n  bridgeInterface: cni0\n",
                "nodePortAddresses",
            ),
            (
                "detectLocal:\n  bridgeInterface: a very long name\n",
                "detectLocalMode",
            ),
            (
                "detectLocal:\n  bridgeInterfaces: cni0\n",
                "bridgeInterfaces",
            ),
        ] {
            let text = format!(
                "{}{extra}",
                CONFIG.replace(
                    "detectLocalMode: ClusterCIDR",
                    "detectLocalMode: BridgeInterface"
                )
            );
            let file = config_file(&text);
            let path = file.path().to_str().expect("utf-8 path");
            let err = error(&["--config", path]);
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_config_keys_are_refused_by_name() {
        let file = config_file(&format!("{CONFIG}conntrackMaxPerCore: 1\n"));
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("conntrackMaxPerCore"), "{err}");

        let nested = CONFIG.replace("  minSyncPeriod: 2s", "  minSyncPeriodd: 2s");
        let file = config_file(&nested);
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("minSyncPeriodd"), "{err}");
    }

    #[test]
    fn a_config_of_another_kind_is_refused() {
        let file = config_file(
            &CONFIG.replace("kind: KubeProxyConfiguration", "kind: KubeletConfiguration"),
        );
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("KubeletConfiguration"), "{err}");
        let file = config_file("kind: KubeProxyConfiguration\nmode: bogus\n");
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("apiVersion"), "{err}");
    }

    const SLICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: x}
spec: {clusterIP: 10.96.0.6, ports: [{port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata:
  name: web-a
  namespace: x
  labels: {kubernetes.io/service-name: web}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-12-03T10:00:01Z"}
ports: [{port: 80, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: db-a, namespace: x, labels: {kubernetes.io/service-name: db}}
ports: [{port: 5432, protocol: TCP}]
endpoints: [{addresses: [10.244.1.3]}]
"#;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(text.parse::<jiff::Timestamp>().expect("timestamp"))
    }

    #[test]
    fn changes_count_services_and_slices_between_synced_states() {
        let first = netd_testkit::state(SLICES);
        let since = at("2026-12-03T10:00:00Z");
        // The first sync: everything is new; the annotated slice brings its trigger time.
        assert_eq!(
            Changes::between(None, &first, since),
            Changes {
                services: 2,
                endpoint_slices: 2,
                triggers: vec![at("2026-12-03T10:00:01Z")],
            }
        );
        // Nothing changed: nothing counted, and the old trigger time is not measured again.
        assert_eq!(
            Changes::between(Some(&first), &first, since),
            Changes::default()
        );
        // web-a gets a new endpoint and trigger time, db goes with its slice.
        let next = netd_testkit::state(
            &SLICES
                .replace("10.244.1.2]", "10.244.1.2, 10.244.1.4]")
                .replace("10:00:01Z", "10:00:07.5Z")
                .split("---")
                .filter(|doc| !doc.contains("name: db"))
                .collect::<Vec<_>>()
                .join("---"),
        );
        assert_eq!(
            Changes::between(Some(&first), &next, since),
            Changes {
                services: 1,
                endpoint_slices: 2,
                triggers: vec![at("2026-12-03T10:00:07.5Z")],
            }
        );
        // Trigger times from before the agent started are not measured.
        assert!(
            Changes::between(None, &first, at("2026-12-03T10:00:02Z"))
                .triggers
                .is_empty()
        );
    }

    #[test]
    fn programmed_changes_are_exported_with_kube_proxys_names() {
        let mut registry = Registry::with_prefix("kubeproxy");
        let metrics = AgentMetrics::register(&mut registry);
        let changes = Changes {
            services: 2,
            endpoint_slices: 3,
            triggers: vec![at("2026-12-03T10:00:00Z"), at("2026-12-03T10:00:10Z")],
        };
        metrics.programmed(&changes, at("2026-12-03T10:00:01.2Z"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for want in [
            "kubeproxy_sync_proxy_rules_service_changes_total 2",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 3",
            "kubeproxy_network_programming_duration_seconds_count 2",
            // 1.2 s after the first trigger; the second, ahead of the clock, counts as 0.
            "kubeproxy_network_programming_duration_seconds_sum 1.2",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.0\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1.0\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"2.0\"} 2",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"300.0\"} 2",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }

    #[test]
    fn health_checks_listen_on_the_nodeport_addresses() {
        let state = netd_testkit::state(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
             status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n",
        );
        let node = NodeName::new("node-1");
        let with = |nodeport_addresses| ProgramConfig {
            proxy: ProxySettings {
                nodeport_addresses,
                ..ProxySettings::default()
            },
            ..ProgramConfig::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        for (addresses, want) in [
            (NodePortAddresses::All, vec![ip("0.0.0.0")]),
            (NodePortAddresses::Primary, vec![ip("172.18.0.2")]),
            (
                NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().expect("cidr")]),
                vec![],
            ),
        ] {
            assert_eq!(
                health_check_addresses(&with(addresses.clone()), &state, &node),
                want,
                "{addresses:?}"
            );
        }
    }

    #[test]
    fn programming_buckets_are_kube_proxys() {
        let buckets = programming_buckets();
        assert_eq!(buckets.len(), 81);
        assert_eq!(&buckets[..5], &[0.0, 0.25, 0.5, 1.0, 2.0]);
        assert_eq!(&buckets[61..64], &[59.0, 60.0, 65.0]);
        assert_eq!(
            &buckets[73..],
            &[115.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]
        );
    }
}
