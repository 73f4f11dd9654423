//! # netd-dns: cluster DNS
//!
//! The cluster DNS server that users would otherwise get from CoreDNS's `kubernetes`
//! plugin, fed from the same [`netd_model::ClusterState`] as the service proxy, following the
//! Kubernetes DNS-Based Service Discovery specification, schema 1.1.0.
//!
//! Start with [`zone`]: [`Zone::build`] computes every record from a snapshot as plain data
//! and keeps nothing of the snapshot; [`Zone::apply`] applies one object change
//! ([`ZoneChange::Upsert`] / [`ZoneChange::Delete`] of a Service, EndpointSlice, Namespace
//! or Pod) with the same result as a rebuild; [`Zone::answer`] answers a [`Question`]
//! (records, rcode, SOA for negative answers). It does no I/O. Then:
//!
//! - [`adapter`]: [`Handler`], hickory-server's request handler over the [`SharedZone`];
//!   forwards other names upstream (or to a stub domain's resolvers) through a cache of
//!   answers and denials, and checks for a forwarding loop at start; the UDP workers; the only
//!   module that sees hickory's types.
//! - [`mod@serve`]: [`serve()`] / [`DnsServer`]: UDP and TCP listeners, the zone fed by
//!   snapshots or by changes ([`DnsServer::awaiting_sync`] for a first snapshot that only
//!   stands in), and `/health`, `/ready`, `/metrics` over HTTP; [`DnsServer::bind_with`]
//!   opens the sockets from a thread prepared first (one that entered a network namespace).
//!   `netd-source`'s `serve_dns` feeds a server from the API server's watches.
//! - [`config`]: [`DnsConfig`], the `kube-netd dns` configuration file (YAML).
//! - [`upstream`]: upstream resolvers from a resolv.conf.
//! - [`metrics`]: the Prometheus metrics, under CoreDNS's names.
//!
//! ## Feeding a server from a watch
//!
//! [`DnsServer::run_updates`] is the seam for sources of cluster state: give it the first
//! complete snapshot, then send [`ZoneUpdate::Upsert`] / [`ZoneUpdate::Delete`] per watch
//! event (the kept objects `netd-source` produces) and [`ZoneUpdate::Snapshot`] after a
//! relist. Each change is answered from the next query on and advances the SOA serial
//! ([`Serial`]: the time of the change, as CoreDNS). The server holds no snapshot, only the
//! zone. [`DnsServer::run`] takes a `watch` channel of snapshots instead.
//!
//! ```no_run
//! # async fn run(state: netd_model::ClusterState) -> Result<(), netd_dns::DnsError> {
//! use std::sync::Arc;
//! let mut config = netd_dns::ServeConfig::new("127.0.0.1:5353".parse().expect("addr"));
//! config.forward.upstreams = netd_dns::read_resolv_conf("/etc/resolv.conf".as_ref())?;
//! let (updates, rx) = tokio::sync::mpsc::channel(1024);
//! let server = netd_dns::DnsServer::bind(config).await?;
//! tokio::spawn(async move {
//!     // For each watch event: `updates.send(ZoneUpdate::Upsert(Box::new(object))).await`.
//!     # drop(updates);
//! });
//! server
//!     .run_updates(Arc::new(state), rx, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```

pub mod adapter;
pub mod config;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod upstream;
pub mod zone;

pub use adapter::{CacheConfig, ForwardConfig, Handler, SharedZone, Transport};
pub use config::{ConfigError, DnsConfig, Listeners, Upstreams};
pub use error::DnsError;
pub use metrics::{Metrics, RequestSample};
pub use serve::{DnsServer, ServeConfig, ZoneUpdate, serve};
pub use upstream::{parse_resolv_conf, read_resolv_conf};
pub use zone::{
    Answer, DomainName, PodMode, Question, Rcode, Record, RecordData, RecordType, Serial, Zone,
    ZoneChange, ZoneConfig, ZoneError, ZoneStats,
};
