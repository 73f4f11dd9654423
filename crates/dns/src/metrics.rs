//! Prometheus metrics of the DNS server, under CoreDNS's names where they mean the same, so
//! dashboards and alerts written for CoreDNS keep working:
//!
//! | metric | labels |
//! |---|---|
//! | `coredns_dns_requests_total` | `server`, `zone`, `proto`, `family`, `type` |
//! | `coredns_dns_responses_total` | `server`, `zone`, `rcode` |
//! | `coredns_dns_request_duration_seconds` (histogram) | `server`, `zone`, `type` |
//! | `coredns_cache_entries` (gauge) | `server`, `type` (`success`, `denial`), `zones` |
//! | `coredns_cache_requests_total`, `coredns_cache_misses_total` | `server`, `zones` |
//! | `coredns_cache_hits_total` | `server`, `type`, `zones` |
//! | `coredns_forward_requests_total` | `to` |
//! | `coredns_forward_responses_total` | `to`, `rcode` |
//! | `coredns_build_info` (always 1) | `goversion`, `revision`, `version` |
//!
//! `server` is `dns://` and the listen address; `zone` is the cluster zone (with its trailing
//! dot) for names the server is authoritative for and `.` for the rest; `family` is `1` (IPv4)
//! or `2` (IPv6), `proto` `udp` or `tcp`. CoreDNS's `view` and `plugin` labels are left out:
//! there are no views, and one server answers everything. `coredns_build_info` says what was
//! built: `version` is this crate's version, `revision` the git commit it was built from
//! (`unknown` when that was not known at build time), and `goversion`, which CoreDNS fills
//! with its Go release, holds the Rust compiler's version (`rust` when unknown). What is ours
//! alone is under `netd_dns_`: `netd_dns_zone_records`, `netd_dns_zone_builds_total` (whole
//! zones built: the first, and one per snapshot) and `netd_dns_zone_changes_total` (single
//! object changes applied to the zone that altered it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::zone::DomainName;

/// One answered request, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSample {
    /// Whether the name is one the server is authoritative for (the cluster zone and its
    /// reverse zones), rather than forwarded.
    pub authoritative: bool,
    /// Whether it came over TCP (else UDP).
    pub tcp: bool,
    /// Whether it came from an IPv6 address.
    pub ipv6: bool,
    /// The query type (`A`, `AAAA`, ..., `other`).
    pub qtype: &'static str,
    /// The response code sent (`NOERROR`, `NXDOMAIN`, ...).
    pub rcode: &'static str,
    /// Time from the parsed request to the response.
    pub elapsed: Duration,
}

/// The kinds of cached answers, CoreDNS's `type` label of its cache metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CacheKind {
    /// A positive answer.
    Success,
    /// NXDOMAIN, or no records of the type.
    Denial,
}

impl CacheKind {
    fn as_str(self) -> &'static str {
        match self {
            CacheKind::Success => "success",
            CacheKind::Denial => "denial",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: Arc<str>,
    zone: Arc<str>,
    proto: &'static str,
    family: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    server: Arc<str>,
    zone: Arc<str>,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    server: Arc<str>,
    zone: Arc<str>,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    server: Arc<str>,
    r#type: &'static str,
    zones: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheZoneLabels {
    server: Arc<str>,
    zones: &'static str,
}

/// CoreDNS's build labels, in the order its exposition prints them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    goversion: &'static str,
    revision: &'static str,
    version: &'static str,
}

/// The git commit this crate was built from, if the build saw one (see `build.rs`).
const REVISION: &str = match option_env!("NETD_DNS_GIT_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// The compiler this crate was built with (see `build.rs`).
const RUSTC_VERSION: &str = match option_env!("NETD_DNS_RUSTC_VERSION") {
    Some(version) => version,
    None => "rust",
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToRcodeLabels {
    to: String,
    rcode: &'static str,
}

/// The cache serves forwarded names only, which CoreDNS's Corefile puts in the `.` block.
const CACHE_ZONES: &str = ".";

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    server: Arc<str>,
    cluster_zone: Arc<str>,
    root_zone: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    duration: Family<DurationLabels, Histogram>,
    cache_entries: Family<CacheLabels, Gauge>,
    cache_hits: Family<CacheLabels, Counter>,
    cache_misses: Family<CacheZoneLabels, Counter>,
    cache_requests: Family<CacheZoneLabels, Counter>,
    forward_requests: Family<ToLabels, Counter>,
    forward_responses: Family<ToRcodeLabels, Counter>,
    zone_records: Gauge,
    zone_builds: Counter,
    zone_changes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics with an empty `server` label and `cluster.local.` as the zone (tests, fuzzing,
    /// benchmarks).
    pub fn new() -> Self {
        Self::for_server("", &DomainName::cluster_local())
    }

    /// The metrics of the server listening on `listen` for the zone `origin`.
    pub fn for_listener(listen: SocketAddr, origin: &DomainName) -> Self {
        Self::for_server(&format!("dns://{listen}"), origin)
    }

    fn for_server(server: &str, origin: &DomainName) -> Self {
        let mut registry = Registry::default();
        let coredns = registry.sub_registry_with_prefix("coredns");
        let requests = Family::<RequestLabels, Counter>::default();
        coredns.register(
            "dns_requests",
            "DNS requests, by zone, protocol, address family and query type",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        coredns.register(
            "dns_responses",
            "DNS responses, by zone and rcode",
            responses.clone(),
        );
        // 50 µs .. ~1.6 s.
        let duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        });
        coredns.register_with_unit(
            "dns_request_duration",
            "Time from a parsed request to its response",
            Unit::Seconds,
            duration.clone(),
        );
        let cache_entries = Family::<CacheLabels, Gauge>::default();
        coredns.register(
            "cache_entries",
            "Forwarded answers in the cache, by kind",
            cache_entries.clone(),
        );
        let cache_hits = Family::<CacheLabels, Counter>::default();
        coredns.register(
            "cache_hits",
            "Forwarded questions answered from the cache, by kind",
            cache_hits.clone(),
        );
        let cache_misses = Family::<CacheZoneLabels, Counter>::default();
        coredns.register(
            "cache_misses",
            "Forwarded questions the cache could not answer",
            cache_misses.clone(),
        );
        let cache_requests = Family::<CacheZoneLabels, Counter>::default();
        coredns.register(
            "cache_requests",
            "Forwarded questions looked up in the cache",
            cache_requests.clone(),
        );
        let forward_requests = Family::<ToLabels, Counter>::default();
        coredns.register(
            "forward_requests",
            "Questions sent to each upstream",
            forward_requests.clone(),
        );
        let forward_responses = Family::<ToRcodeLabels, Counter>::default();
        coredns.register(
            "forward_responses",
            "Responses received from each upstream, by rcode",
            forward_responses.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                goversion: RUSTC_VERSION,
                revision: REVISION,
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        coredns.register(
            "build_info",
            "Always 1, labelled by the version, git revision and compiler it was built from",
            build_info,
        );
        let ours = registry.sub_registry_with_prefix("netd_dns");
        let zone_records = Gauge::default();
        ours.register(
            "zone_records",
            "Records in the current cluster zone",
            zone_records.clone(),
        );
        let zone_builds = Counter::default();
        ours.register(
            "zone_builds",
            "Whole cluster zones built: the first, and one per snapshot",
            zone_builds.clone(),
        );
        let zone_changes = Counter::default();
        ours.register(
            "zone_changes",
            "Single object changes applied to the cluster zone that altered it",
            zone_changes.clone(),
        );
        Self {
            registry,
            server: Arc::from(server),
            cluster_zone: Arc::from(format!("{origin}.")),
            root_zone: Arc::from("."),
            requests,
            responses,
            duration,
            cache_entries,
            cache_hits,
            cache_misses,
            cache_requests,
            forward_requests,
            forward_responses,
            zone_records,
            zone_builds,
            zone_changes,
        }
    }

    /// Counts one answered request, its response code and its latency.
    pub fn observe_request(&self, sample: &RequestSample) {
        let zone = if sample.authoritative {
            &self.cluster_zone
        } else {
            &self.root_zone
        };
        self.requests
            .get_or_create(&RequestLabels {
                server: self.server.clone(),
                zone: zone.clone(),
                proto: if sample.tcp { "tcp" } else { "udp" },
                family: if sample.ipv6 { "2" } else { "1" },
                r#type: sample.qtype,
            })
            .inc();
        self.responses
            .get_or_create(&ResponseLabels {
                server: self.server.clone(),
                zone: zone.clone(),
                rcode: sample.rcode,
            })
            .inc();
        self.duration
            .get_or_create(&DurationLabels {
                server: self.server.clone(),
                zone: zone.clone(),
                r#type: sample.qtype,
            })
            .observe(sample.elapsed.as_secs_f64());
    }

    /// Counts a forwarded question answered from the cache.
    pub(crate) fn cache_hit(&self, kind: CacheKind) {
        self.cache_lookup();
        self.cache_hits
            .get_or_create(&CacheLabels {
                server: self.server.clone(),
                r#type: kind.as_str(),
                zones: CACHE_ZONES,
            })
            .inc();
    }

    /// Counts a forwarded question the cache did not hold.
    pub(crate) fn cache_miss(&self) {
        self.cache_lookup();
        self.cache_misses.get_or_create(&self.cache_zone()).inc();
    }

    /// Sets how many answers of each kind the cache holds.
    pub(crate) fn cache_entries(&self, success: usize, denial: usize) {
        for (kind, n) in [(CacheKind::Success, success), (CacheKind::Denial, denial)] {
            self.cache_entries
                .get_or_create(&CacheLabels {
                    server: self.server.clone(),
                    r#type: kind.as_str(),
                    zones: CACHE_ZONES,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a question sent to `upstream`.
    pub(crate) fn forward_request(&self, upstream: SocketAddr) {
        self.forward_requests
            .get_or_create(&ToLabels {
                to: upstream.to_string(),
            })
            .inc();
    }

    /// Counts a response from `upstream`.
    pub(crate) fn forward_response(&self, upstream: SocketAddr, rcode: ResponseCode) {
        self.forward_responses
            .get_or_create(&ToRcodeLabels {
                to: upstream.to_string(),
                rcode: rcode_str(rcode),
            })
            .inc();
    }

    /// Records that a whole zone of `records` records was built.
    pub(crate) fn zone_built(&self, records: usize) {
        self.zone_builds.inc();
        self.set_zone_records(records);
    }

    /// Records that one object change altered the zone, which now has `records` records.
    pub(crate) fn zone_changed(&self, records: usize) {
        self.zone_changes.inc();
        self.set_zone_records(records);
    }

    fn set_zone_records(&self, records: usize) {
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

    fn cache_lookup(&self) {
        self.cache_requests.get_or_create(&self.cache_zone()).inc();
    }

    fn cache_zone(&self) -> CacheZoneLabels {
        CacheZoneLabels {
            server: self.server.clone(),
            zones: CACHE_ZONES,
        }
    }
}

/// An rcode as CoreDNS's metrics spell it.
pub(crate) fn rcode_str(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(authoritative: bool, qtype: &'static str, rcode: &'static str) -> RequestSample {
        RequestSample {
            authoritative,
            tcp: false,
            ipv6: false,
            qtype,
            rcode,
            elapsed: Duration::from_micros(80),
        }
    }

    #[test]
    fn encodes_coredns_names_and_labels() {
        let origin: DomainName = "cluster.local".parse().expect("origin");
        let m = Metrics::for_listener("10.96.0.10:53".parse().expect("addr"), &origin);
        m.observe_request(&sample(true, "A", "NOERROR"));
        m.observe_request(&sample(true, "A", "NOERROR"));
        m.observe_request(&RequestSample {
            tcp: true,
            ipv6: true,
            ..sample(false, "AAAA", "NXDOMAIN")
        });
        m.cache_miss();
        m.cache_hit(CacheKind::Denial);
        m.forward_request("192.0.2.53:53".parse().expect("addr"));
        m.forward_response(
            "192.0.2.53:53".parse().expect("addr"),
            ResponseCode::NXDomain,
        );
        m.zone_built(40);
        m.zone_changed(41);
        m.zone_changed(42);
        let text = m.encode();
        for want in [
            r#"coredns_dns_requests_total{server="dns://10.96.0.10:53",zone="cluster.local.",proto="udp",family="1",type="A"} 2"#,
            r#"coredns_dns_requests_total{server="dns://10.96.0.10:53",zone=".",proto="tcp",family="2",type="AAAA"} 1"#,
            r#"coredns_dns_responses_total{server="dns://10.96.0.10:53",zone="cluster.local.",rcode="NOERROR"} 2"#,
            r#"coredns_dns_request_duration_seconds_count{server="dns://10.96.0.10:53",zone="cluster.local.",type="A"} 2"#,
            r#"coredns_cache_hits_total{server="dns://10.96.0.10:53",type="denial",zones="."} 1"#,
            r#"coredns_cache_misses_total{server="dns://10.96.0.10:53",zones="."} 1"#,
            r#"coredns_cache_requests_total{server="dns://10.96.0.10:53",zones="."} 2"#,
            r#"coredns_forward_requests_total{to="192.0.2.53:53"} 1"#,
            r#"coredns_forward_responses_total{to="192.0.2.53:53",rcode="NXDOMAIN"} 1"#,
            "netd_dns_zone_records 42",
            "netd_dns_zone_builds_total 1",
            "netd_dns_zone_changes_total 2",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn build_info_names_version_revision_and_compiler() {
        let text = Metrics::new().encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("coredns_build_info{"))
            .unwrap_or_else(|| panic!("no coredns_build_info in:\n{text}"));
        let want = format!(
            r#"coredns_build_info{{goversion="{RUSTC_VERSION}",revision="{REVISION}",version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(line, want);
        assert!(
            RUSTC_VERSION.starts_with("rustc ") || RUSTC_VERSION == "rust",
            "{RUSTC_VERSION}"
        );
        assert!(
            REVISION == "unknown"
                || (REVISION.len() >= 7 && REVISION.bytes().all(|b| b.is_ascii_hexdigit())),
            "{REVISION}"
        );
    }
}
