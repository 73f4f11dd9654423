//! # netd-dns: cluster DNS
//!
//! The cluster DNS server that users would otherwise get from CoreDNS's `kubernetes`
//! plugin, fed from the same [`netd_model::ClusterState`] as the service proxy, following the
//! Kubernetes DNS-Based Service Discovery specification, schema 1.1.0.
//!
//! Start with [`zone`]: [`Zone::build`] computes every record from a snapshot as plain data,
//! and [`Zone::answer`] answers a [`Question`] (records, rcode, SOA for negative answers).
//! It does no I/O. Then:
//!
//! - [`adapter`]: [`Handler`], hickory-server's request handler over the zone; forwards other
//!   names upstream through a TTL cache; the only module that sees hickory's types.
//! - [`mod@serve`]: [`serve()`] / [`DnsServer`]: UDP and TCP listeners, the zone rebuilt on each
//!   new snapshot from a `watch` channel, and `/metrics`, `/health`, `/ready` over HTTP.
//! - [`upstream`]: upstream resolvers from a resolv.conf.
//! - [`metrics`]: the Prometheus metrics.
//!
//! ```no_run
//! # async fn run(state: netd_model::ClusterState) -> Result<(), netd_dns::DnsError> {
//! use std::sync::Arc;
//! let mut config = netd_dns::ServeConfig::new("127.0.0.1:5353".parse().expect("addr"));
//! config.forward.upstreams = netd_dns::read_resolv_conf("/etc/resolv.conf".as_ref())?;
//! let (_tx, rx) = tokio::sync::watch::channel(Arc::new(state));
//! netd_dns::serve(config, rx, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod adapter;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod upstream;
pub mod zone;

pub use adapter::{ForwardConfig, Handler, SharedZone, Transport};
pub use error::DnsError;
pub use metrics::Metrics;
pub use serve::{DnsServer, ServeConfig, ZoneUpdate, serve};
pub use upstream::{parse_resolv_conf, read_resolv_conf};
pub use zone::{
    Answer, DomainName, PodMode, Question, Rcode, Record, RecordData, RecordType, Serial, Zone,
    ZoneChange, ZoneConfig, ZoneError, ZoneStats,
};
