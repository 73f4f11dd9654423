//! kube-proxy's own health: [`ProxyHealth`], served at `/healthz` and `/livez`
//! (`proxy_health.go`).
//!
//! Per IP family, the sync loop calls [`ProxyHealth::queued_update`] when a change is waiting
//! and [`ProxyHealth::updated`] after every successful sync. A family is unhealthy iff an
//! update has waited at least the health timeout (2 × syncPeriod); a family that has never
//! synced is healthy ("starting up"). `/healthz` also requires the Node to be eligible
//! ([`node_eligible`]); `/livez` does not, so a draining Node stays live while load balancers
//! of `externalTrafficPolicy: Cluster` Services stop sending to it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
pub use netd_model::IpFamily;
use netd_model::{ClusterState, NodeName};
use serde::Serialize;

use crate::clock::{Clock, serialize_go_time, serialize_go_time_set};
use crate::error::HealthError;
use crate::http::{self, HttpServer};
use crate::metrics::HealthMetrics;

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 10256));

/// kube-proxy's default `--iptables-sync-period`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);

/// kube-proxy's health timeout for the default sync period: 2 × syncPeriod.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2 * 30);

/// The taint the Cluster Autoscaler puts on a Node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The health of the proxier of one IP family (`ProxierHealth`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxierHealth {
    /// When it last synced successfully.
    #[serde(serialize_with = "serialize_go_time")]
    pub last_updated: Option<SystemTime>,
    /// Whether no update has waited for the health timeout.
    pub healthy: bool,
}

/// kube-proxy's health report (`ProxyHealth`), serialised exactly as upstream's JSON body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The latest successful sync of any family (Go's zero time before the first); the
    /// handlers report "now" instead when healthy, as kube-proxy does for compatibility.
    #[serde(serialize_with = "serialize_go_time")]
    pub last_updated: Option<SystemTime>,
    /// When the report was made.
    #[serde(serialize_with = "serialize_go_time_set")]
    pub current_time: SystemTime,
    /// Whether the Node is eligible; only `/healthz` reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_eligible: Option<bool>,
    /// Whether every family is healthy (node eligibility not included).
    pub healthy: bool,
    /// Per family that has synced at least once.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<IpFamily, ProxierHealth>,
}

/// The proxy's health state, shared (cheaply cloneable) between the sync loop, the
/// `/healthz` server and the per-Service health servers.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: Arc<dyn Clock>,
    health_timeout: Duration,
    metrics: HealthMetrics,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_updated: BTreeMap<IpFamily, SystemTime>,
    oldest_pending: BTreeMap<IpFamily, SystemTime>,
    node_eligible: bool,
}

impl ProxyHealth {
    /// A proxy that has not synced yet (healthy) on an eligible Node, unhealthy once an
    /// update waits `health_timeout` ([`DEFAULT_HEALTH_TIMEOUT`], 2 × syncPeriod).
    pub fn new(health_timeout: Duration, clock: Arc<dyn Clock>, metrics: HealthMetrics) -> Self {
        let state = State {
            last_updated: BTreeMap::new(),
            oldest_pending: BTreeMap::new(),
            // Eligible while starting up, until the Node says otherwise.
            node_eligible: true,
        };
        Self {
            inner: Arc::new(Inner {
                clock,
                health_timeout,
                metrics,
                state: Mutex::new(state),
            }),
        }
    }

    /// A change for `family` is waiting to be synced (`QueuedUpdate`); only the oldest
    /// waiting change counts.
    pub fn queued_update(&self, family: IpFamily) {
        let now = self.inner.clock.now();
        self.state().oldest_pending.entry(family).or_insert(now);
    }

    /// `family` has been synced successfully (`Updated`).
    pub fn updated(&self, family: IpFamily) {
        let now = self.inner.clock.now();
        let mut state = self.state();
        state.oldest_pending.remove(&family);
        state.last_updated.insert(family, now);
    }

    /// Records whether the Node is eligible for traffic (see [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state().node_eligible = eligible;
    }

    /// Whether the Node is eligible for traffic, as last set.
    pub fn node_eligible(&self) -> bool {
        self.state().node_eligible
    }

    /// The proxy's health, without node eligibility (`Health()`).
    pub fn health(&self) -> Health {
        let current = self.inner.clock.now();
        let state = self.state();
        let mut health = Health {
            last_updated: state.last_updated.values().max().copied(),
            current_time: current,
            node_eligible: None,
            healthy: true,
            status: BTreeMap::new(),
        };
        // Like upstream, only families that have synced at least once are judged.
        for (&family, &last_updated) in &state.last_updated {
            let late = state.oldest_pending.get(&family).is_some_and(|&queued| {
                // A clock that went backwards has not waited at all.
                current.duration_since(queued).unwrap_or_default() >= self.inner.health_timeout
            });
            health.healthy &= !late;
            health.status.insert(
                family,
                ProxierHealth {
                    last_updated: Some(last_updated),
                    healthy: !late,
                },
            );
        }
        health
    }

    /// Whether every family is healthy (`IsHealthy`): what the per-Service health servers
    /// report as `serviceProxyHealthy`.
    pub fn is_healthy(&self) -> bool {
        self.health().healthy
    }

    /// Serves `/healthz` and `/livez` on `listener` (any method; 404 for other paths), as
    /// kube-proxy does on [`DEFAULT_HEALTHZ_BIND_ADDRESS`]. Must be called from within a Tokio
    /// runtime.
    pub fn serve(&self, listener: std::net::TcpListener) -> Result<HttpServer, HealthError> {
        let this = self.clone();
        http::spawn(
            listener,
            Arc::new(move |path: &str| match path {
                "/healthz" => this.healthz_response(),
                "/livez" => this.livez_response(),
                _ => http::not_found(),
            }),
        )
    }

    fn healthz_response(&self) -> Response<Full<Bytes>> {
        let mut health = self.health();
        let eligible = self.node_eligible();
        let healthy = health.healthy && eligible;
        health.node_eligible = Some(eligible);
        self.inner.metrics.count_healthz(healthy);
        self.respond(health, healthy)
    }

    fn livez_response(&self) -> Response<Full<Bytes>> {
        let health = self.health();
        let healthy = health.healthy;
        self.inner.metrics.count_livez(healthy);
        self.respond(health, healthy)
    }

    fn respond(&self, mut health: Health, healthy: bool) -> Response<Full<Bytes>> {
        let status = if healthy {
            // kube-proxy reports "now" when healthy: older releases reported the last loop
            // run, which was always recent.
            health.last_updated = Some(self.inner.clock.now());
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // Plain structs with string keys always serialise; upstream ignores this error too.
        let body = serde_json::to_vec(&health).unwrap_or_default();
        http::json_response(status, body)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `node` is eligible for traffic, as kube-proxy decides for `/healthz` (KEP-3836):
/// it exists, has no `deletionTimestamp` and no [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(state: &ClusterState, node: &NodeName) -> bool {
    state
        .node(node.as_str())
        .is_some_and(|n| !n.terminating && !n.taints.iter().any(|t| t == TO_BE_DELETED_TAINT))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use prometheus_client::registry::Registry;

    use super::*;

    /// A clock that moves only when told to.
    #[derive(Debug, Default)]
    struct FakeClock(AtomicU64);

    impl FakeClock {
        fn step(&self, d: Duration) {
            self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    fn proxy_health(clock: &Arc<FakeClock>) -> ProxyHealth {
        let metrics = HealthMetrics::register(&mut Registry::default());
        ProxyHealth::new(DEFAULT_HEALTH_TIMEOUT, clock.clone(), metrics)
    }

    #[test]
    fn unhealthy_only_once_a_queued_update_is_late() {
        let clock = Arc::new(FakeClock::default());
        let hs = proxy_health(&clock);
        assert!(hs.is_healthy(), "healthy while starting up");

        hs.queued_update(IpFamily::V4);
        assert!(hs.is_healthy(), "never synced yet: not judged");
        hs.updated(IpFamily::V4);
        assert!(hs.is_healthy());

        hs.queued_update(IpFamily::V4);
        clock.step(Duration::from_secs(59));
        assert!(hs.is_healthy(), "59s < 60s");
        hs.queued_update(IpFamily::V4);
        clock.step(Duration::from_secs(1));
        assert!(!hs.is_healthy(), "the oldest queued update is 60s old");
        hs.updated(IpFamily::V4);
        assert!(hs.is_healthy());

        hs.updated(IpFamily::V6);
        hs.queued_update(IpFamily::V4);
        hs.queued_update(IpFamily::V6);
        clock.step(Duration::from_secs(60));
        hs.updated(IpFamily::V4);
        let health = hs.health();
        assert!(!health.healthy, "IPv6 is still late");
        assert!(health.status[&IpFamily::V4].healthy);
        assert!(!health.status[&IpFamily::V6].healthy);
        hs.updated(IpFamily::V6);
        assert!(hs.is_healthy());
    }

    #[test]
    fn node_eligibility_follows_deletion_and_autoscaler_taint() {
        // As a manifest builds the state, and as the agent's store keeps it (views only).
        let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: ok}
---
apiVersion: v1
kind: Node
metadata: {name: tainted}
spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}
---
apiVersion: v1
kind: Node
metadata: {name: other-taint}
spec: {taints: [{key: node.kubernetes.io/unschedulable, effect: NoSchedule}]}
---
apiVersion: v1
kind: Node
metadata: {name: deleting, deletionTimestamp: "2026-01-01T00:00:00Z"}
"#;
        for state in [
            netd_testkit::state(yaml),
            netd_testkit::state_without_objects(yaml),
        ] {
            let eligible = |n: &str| node_eligible(&state, &NodeName::new(n));
            assert!(eligible("ok"));
            assert!(eligible("other-taint"));
            assert!(!eligible("tainted"));
            assert!(!eligible("deleting"));
            assert!(!eligible("missing"));
        }
    }
}
