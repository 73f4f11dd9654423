//! Prometheus metrics of the DNS server.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request: the query type and the response code.
type RequestLabels = [(&'static str, &'static str); 2];

/// The server's metrics, registered under the `netd_dns_` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    cache_hits: Counter,
    zone_records: Gauge,
    zone_builds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netd_dns");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "DNS requests answered, by query type and rcode",
            requests.clone(),
        );
        // 50 µs .. ~1.6 s.
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register_with_unit(
            "request_duration",
            "Time from a parsed request to its response",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "forward_cache_hits",
            "Forwarded questions answered from the cache",
            cache_hits.clone(),
        );
        let zone_records = Gauge::default();
        registry.register(
            "zone_records",
            "Records in the current cluster zone",
            zone_records.clone(),
        );
        let zone_builds = Counter::default();
        registry.register(
            "zone_builds",
            "Cluster zones built from a new snapshot",
            zone_builds.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            cache_hits,
            zone_records,
            zone_builds,
        }
    }

    /// Counts one answered request and its latency.
    pub fn observe_request(&self, qtype: &'static str, rcode: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&[("type", qtype), ("rcode", rcode)])
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a forwarded question answered from the cache.
    pub(crate) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// Records that a zone of `records` records was built.
    pub(crate) fn zone_built(&self, records: usize) {
        self.zone_builds.inc();
        self.zone_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_by_type_and_rcode() {
        let m = Metrics::new();
        m.observe_request("A", "NOERROR", Duration::from_micros(80));
        m.observe_request("A", "NOERROR", Duration::from_micros(80));
        m.observe_request("AAAA", "NXDOMAIN", Duration::from_millis(2));
        m.zone_built(42);
        let text = m.encode();
        assert!(
            text.contains(r#"netd_dns_requests_total{type="A",rcode="NOERROR"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"netd_dns_requests_total{type="AAAA",rcode="NXDOMAIN"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("netd_dns_request_duration_seconds_count 3"),
            "{text}"
        );
        assert!(text.contains("netd_dns_zone_records 42"), "{text}");
    }
}
