//! [`serve`]: the agent loop, from [`AgentConfig`] to a programmed Node.
//!
//! The agent programs the network namespace it runs in ([`netns::CURRENT`]): the host's on a
//! real Node, a Node's namespace in the lab, a scratch one in tests. Nothing is programmed
//! before every watched kind has been listed, nothing is flushed at start or exit, and a
//! failed sync makes the next one full.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use netd_agent::enforcement::Enforcement;
use netd_agent::{Backend, Mode, ProgramConfig};
use netd_healthcheck::{
    CurrentNamespace, HealthError, HealthMetrics, HealthServers, HttpServer, IpFamily, ProxyHealth,
    SystemClock,
};
use netd_kernel::netns;
use netd_model::{ClusterConfig, ClusterState, Kind, NodeName};
use netd_proxy::{NodePortAddresses, NodePortIps, ProxySettings};
use netd_source::{ApiOptions, RunnerConfig, SharedStore, Store, SyncRequest};
use prometheus_client::registry::Registry;

use crate::error::DaemonError;
use crate::metrics::{AgentMetrics, Changes, ProgrammedVersions};

/// What the agent loop runs with: `kube-netd agent`'s flags, once read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where the API server is.
    pub api: ApiOptions,
    /// The Node programmed.
    pub node: NodeName,
    /// The proxy mode (the back end passed to [`serve`] is of this mode; the rules of the
    /// others are removed at start).
    pub mode: Mode,
    /// The pod ranges of the ClusterCIDR local-traffic detector.
    pub cluster_cidrs: Vec<IpNet>,
    /// What every back end programs from: masquerade-all, nodePort addresses, the
    /// local-traffic detector, NetworkPolicy on or off.
    pub program: ProgramConfig,
    /// `--min-sync-period` and `--sync-period`.
    pub runner: RunnerConfig,
    /// `/healthz` and `/livez`.
    pub healthz_bind_address: SocketAddr,
    /// `/metrics`.
    pub metrics_bind_address: SocketAddr,
}

/// Runs the agent until `shutdown` completes: health and metrics servers, the watches, the
/// sync loop through `backend`. Rules stay in the kernel when it ends.
pub async fn serve(
    config: AgentConfig,
    backend: Box<dyn Backend>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let node = config.node.clone();
    // The kubeconfig (or in-cluster configuration) is read before anything is served or
    // touched: configuration that cannot be used stops the agent with every rule in place.
    // Building the client does not reach the server; an unreachable one is retried by the
    // watches, rules left alone.
    let client = config
        .api
        .client()
        .await
        .map_err(DaemonError::ConnectFailed)?;
    let mut registry = Registry::default();
    let programmed = ProgrammedVersions::register(registry.sub_registry_with_prefix("netd_agent"));
    let kube_proxy = registry.sub_registry_with_prefix("kubeproxy");
    let health_metrics = HealthMetrics::register(kube_proxy);
    backend.register(kube_proxy);
    let sync_metrics = AgentMetrics::register(kube_proxy);
    // kube-proxy's /healthz turns unhealthy when a queued change waits 2 × syncPeriod.
    let health = ProxyHealth::new(
        config.runner.sync_period * 2,
        Arc::new(SystemClock),
        health_metrics,
    );
    let _servers: Vec<HttpServer> = vec![
        health
            .serve(
                netd_healthcheck::bind(config.healthz_bind_address)
                    .map_err(serve_failed("/healthz"))?,
            )
            .map_err(serve_failed("/healthz"))?,
        netd_healthcheck::serve_metrics(
            netd_healthcheck::bind(config.metrics_bind_address)
                .map_err(serve_failed("/metrics"))?,
            Arc::new(registry),
        )
        .map_err(serve_failed("/metrics"))?,
    ];
    let services = Arc::new(tokio::sync::Mutex::new(HealthServers::new(
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        health.clone(),
        Arc::new(CurrentNamespace),
    )));

    let removed = netd_agent::remove_other_modes(netns::CURRENT, config.mode)
        .map_err(DaemonError::RemoveOtherModesFailed)?;
    if removed > 0 {
        tracing::info!(removed, mode = %config.mode, "removed the rules of other proxy modes");
    }
    if routes_localhost_nodeports(&config.program.proxy) {
        // As kube-proxy: nodePorts on 127.0.0.1 need the kernel to route loopback
        // destinations; the rules drop the martian packets this admits (KUBE-FIREWALL).
        netd_kernel::link::sysctl(netns::CURRENT, ROUTE_LOCALNET, "1")
            .map_err(DaemonError::RouteLocalnetFailed)?;
        tracing::info!(sysctl = ROUTE_LOCALNET, "set to 1 for localhost nodePorts");
    }

    let store = SharedStore::new(Store::new(ClusterConfig {
        cluster_cidrs: config.cluster_cidrs.clone(),
        ..ClusterConfig::default()
    }));
    let watches = tokio::spawn(netd_source::watch_cluster(client, store.clone()));
    let queued = tokio::spawn(track_queued(
        store.clone(),
        health.clone(),
        sync_metrics.clone(),
    ));
    let reached = Reached::new(store.clone(), programmed);
    let follow = tokio::spawn(reached.clone().follow());

    let backend = Arc::new(Mutex::new(backend));
    let enforcement = Arc::new(Mutex::new(EnforcementCheck::default()));
    // The last state a sync programmed, which the next sync's changes are counted from.
    let synced: Arc<Mutex<Option<Arc<ClusterState>>>> = Arc::default();
    let started_at = SystemTime::now();
    tracing::info!(node = %node, mode = %config.mode, "agent started");
    netd_source::runner::run(
        store,
        config.runner,
        |request| {
            let backend = backend.clone();
            let node = node.clone();
            let health = health.clone();
            let metrics = sync_metrics.clone();
            let services = services.clone();
            let synced = synced.clone();
            let program = config.program.clone();
            let enforcement = enforcement.clone();
            let reached = reached.clone();
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
                reached.programmed(request.generation, &request.versions);
                tracing::info!(generation = request.generation, reason = %request.reason, "synced");
                Ok::<(), Box<netd_agent::AgentError>>(())
            }
        },
        shutdown,
    )
    .await;
    watches.abort();
    queued.abort();
    follow.abort();
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

/// The sysctl that lets IPv4 packets to `127.0.0.0/8` be routed (DNATed) elsewhere.
const ROUTE_LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// Whether nodePorts answer on `127.0.0.1`: localhost nodePorts on, and
/// `--nodeport-addresses` selecting IPv4 loopback (unset; or no IPv4 range, or one holding
/// `127.0.0.1`), as kube-proxy decides whether to set `route_localnet`.
fn routes_localhost_nodeports(proxy: &ProxySettings) -> bool {
    if !proxy.localhost_nodeports {
        return false;
    }
    match &proxy.nodeport_addresses {
        NodePortAddresses::All => true,
        NodePortAddresses::Primary => false,
        NodePortAddresses::Cidrs(cidrs) => {
            let mut v4 = cidrs.iter().filter(|c| c.addr().is_ipv4()).peekable();
            v4.peek().is_none() || v4.any(|c| c.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)))
        }
    }
}

fn serve_failed(what: &'static str) -> impl Fn(HealthError) -> DaemonError {
    move |source| DaemonError::ServeFailed { what, source }
}

/// Marks an update queued (for `/healthz`) each time the store changes.
async fn track_queued(store: SharedStore, health: ProxyHealth, metrics: AgentMetrics) {
    let mut changes = store.subscribe();
    while changes.changed().await.is_ok() {
        health.queued_update(IpFamily::V4);
        metrics.queued();
    }
}

/// The API state the rules stand for, exported as `netd_agent_programmed_resource_version`:
/// a sync's snapshot versions, and then those of every event that changed nothing since (a
/// status-only update): a store still at the generation last programmed is programmed up to
/// its current versions.
#[derive(Clone)]
struct Reached {
    store: SharedStore,
    /// The store generation last programmed; held while the gauge is set, so that the two
    /// writers below set it in the order they read the store.
    generation: Arc<Mutex<Option<u64>>>,
    gauge: ProgrammedVersions,
}

impl Reached {
    fn new(store: SharedStore, gauge: ProgrammedVersions) -> Reached {
        Reached {
            store,
            generation: Arc::default(),
            gauge,
        }
    }

    /// A sync programmed the snapshot of `generation`, taken at `versions`.
    fn programmed(&self, generation: u64, versions: &BTreeMap<Kind, u64>) {
        // Poisoned only if a panic held it; the value is a whole generation.
        let mut last = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(generation);
        self.gauge.programmed(versions);
        self.catch_up(generation);
    }

    /// Moves the gauge with each event that leaves the store at the programmed generation.
    async fn follow(self) {
        let mut moved = self.store.subscribe_versions();
        while moved.changed().await.is_ok() {
            let last = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(generation) = *last {
                self.catch_up(generation);
            }
        }
    }

    fn catch_up(&self, generation: u64) {
        let current = self
            .store
            .with(|s| (s.generation() == generation).then(|| s.versions().clone()));
        if let Some(versions) = current {
            self.gauge.programmed(&versions);
        }
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
            .map_err(|e| netd_model::error_chain(&e));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_localnet_is_set_when_nodeports_answer_on_loopback() {
        let with = |localhost_nodeports, nodeport_addresses| ProxySettings {
            localhost_nodeports,
            nodeport_addresses,
            ..ProxySettings::default()
        };
        let cidrs = |list: &[&str]| {
            NodePortAddresses::Cidrs(list.iter().map(|c| c.parse().expect("cidr")).collect())
        };
        for (settings, want) in [
            (with(false, NodePortAddresses::All), false),
            (with(true, NodePortAddresses::All), true),
            (with(true, NodePortAddresses::Primary), false),
            (with(true, cidrs(&["127.0.0.0/8"])), true),
            (with(true, cidrs(&["0.0.0.0/0"])), true),
            (with(true, cidrs(&["fd00::/64"])), true),
            (with(true, cidrs(&["10.0.0.0/8"])), false),
            (with(true, cidrs(&["10.0.0.0/8", "127.0.0.1/32"])), true),
        ] {
            assert_eq!(routes_localhost_nodeports(&settings), want, "{settings:?}");
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
}
