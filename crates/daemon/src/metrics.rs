//! kube-proxy's sync metrics, and the changes between two programmed states they count.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use netd_model::{ClusterState, EndpointSliceRef, Kind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// kube-proxy's sync metrics (names as `pkg/proxy/metrics`), with the prefix `kubeproxy`.
#[derive(Clone, Debug)]
pub(crate) struct AgentMetrics {
    duration: Histogram,
    full: Histogram,
    partial: Histogram,
    last: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_queued: Gauge<f64, std::sync::atomic::AtomicU64>,
    programming: Histogram,
    endpoint_changes: Counter,
    service_changes: Counter,
    pub(crate) policy_enforced: Gauge,
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
pub(crate) struct Changes {
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
    /// The changes from `previous` (nothing before the first sync) to `next`: found by
    /// [`ClusterState::changed_objects`], in time proportional to them when `next` was
    /// changed from `previous`, and read from the views (the agent's states keep no objects).
    pub(crate) fn between(
        previous: Option<&ClusterState>,
        next: &ClusterState,
        since: SystemTime,
    ) -> Self {
        let changed = match previous {
            Some(previous) => next.changed_objects(previous),
            None => [Kind::Service, Kind::EndpointSlice]
                .into_iter()
                .flat_map(|kind| next.ids_of(kind))
                .collect(),
        };
        let mut out = Changes::default();
        for id in changed {
            match id.kind {
                Kind::Service => out.services += 1,
                Kind::EndpointSlice => {
                    out.endpoint_slices += 1;
                    // A removed slice has no time of its own to measure.
                    let trigger = next
                        .endpoint_slice(&EndpointSliceRef::new(&id.namespace, &id.name))
                        .and_then(|s| trigger_time(s.trigger_time.as_deref()?));
                    out.triggers.extend(trigger.filter(|t| *t >= since));
                }
                _ => {}
            }
        }
        out
    }
}

/// An EndpointSlice's `last-change-trigger-time` (RFC 3339), if it is a valid one.
fn trigger_time(text: &str) -> Option<SystemTime> {
    let at: jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(at))
}

impl AgentMetrics {
    pub(crate) fn register(registry: &mut Registry) -> AgentMetrics {
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
    pub(crate) fn programmed(&self, changes: &Changes, now: SystemTime) {
        self.service_changes.inc_by(changes.services);
        self.endpoint_changes.inc_by(changes.endpoint_slices);
        for trigger in &changes.triggers {
            // A trigger time ahead of this clock (skew with the control plane) counts as 0.
            let took = now.duration_since(*trigger).unwrap_or_default();
            self.programming.observe(took.as_secs_f64());
        }
    }

    pub(crate) fn observe(&self, full: bool, took: Duration) {
        let seconds = took.as_secs_f64();
        self.duration.observe(seconds);
        if full {
            self.full.observe(seconds);
        } else {
            self.partial.observe(seconds);
        }
        self.last.set(unix_now());
    }

    pub(crate) fn queued(&self) {
        self.last_queued.set(unix_now());
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The `kind` label of [`ProgrammedVersions`].
type KindLabel = [(&'static str, &'static str); 1];

/// What the agent has programmed of the API's state, so that whoever wrote to the API can
/// tell when a Node has caught up: per watched kind, the highest resourceVersion among the
/// events of the last snapshot applied successfully
/// (`netd_agent_programmed_resource_version{kind="Service"}`). A kind appears once its
/// first snapshot is programmed.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgrammedVersions {
    versions: Family<KindLabel, Gauge>,
}

impl ProgrammedVersions {
    /// Registers the gauge in `registry`, which gives it its prefix (`netd_agent`).
    pub(crate) fn register(registry: &mut Registry) -> ProgrammedVersions {
        let metrics = ProgrammedVersions::default();
        registry.register(
            "programmed_resource_version",
            "Per watched kind, the highest resourceVersion of the API state the rules stand for: the events of the last snapshot programmed successfully, and those since that changed nothing",
            metrics.versions.clone(),
        );
        metrics
    }

    /// Records that the state up to `versions` is programmed.
    pub(crate) fn programmed(&self, versions: &BTreeMap<Kind, u64>) {
        for (kind, version) in versions {
            // resourceVersions are etcd revisions, far below i64::MAX.
            let version = i64::try_from(*version).unwrap_or(i64::MAX);
            self.versions
                .get_or_create(&[("kind", kind.as_str())])
                .set(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // As manifests build states (objects compared), and as the agent's store keeps them
        // (views compared, the second changed from the first as the store changes it).
        let next_yaml = SLICES
            .replace("10.244.1.2]", "10.244.1.2, 10.244.1.4]")
            .replace("10:00:01Z", "10:00:07.5Z")
            .split("---")
            .filter(|doc| !doc.contains("name: db"))
            .collect::<Vec<_>>()
            .join("---");
        let kept = (netd_testkit::state(SLICES), netd_testkit::state(&next_yaml));
        let first = netd_testkit::state_without_objects(SLICES);
        let mut next = first.clone();
        for object in netd_testkit::objects(SLICES) {
            next.remove(&object.id());
        }
        for object in netd_testkit::objects(&next_yaml) {
            next.insert(object).expect("valid");
        }
        for (first, next) in [kept, (first, next)] {
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

    #[test]
    fn programmed_versions_are_exported_per_kind() {
        let mut registry = Registry::with_prefix("netd_agent");
        let programmed = ProgrammedVersions::register(&mut registry);
        programmed.programmed(&BTreeMap::from([(Kind::Service, 7), (Kind::Pod, 12)]));
        programmed.programmed(&BTreeMap::from([(Kind::Service, 9)]));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for want in [
            "netd_agent_programmed_resource_version{kind=\"Service\"} 9",
            "netd_agent_programmed_resource_version{kind=\"Pod\"} 12",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }
}
