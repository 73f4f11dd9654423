//! # netd-healthcheck: kube-proxy's health servers for kube-netd
//!
//! Three kinds of HTTP server, answering exactly as kube-proxy's do
//! (`pkg/proxy/healthcheck`):
//!
//! - [`HealthServers`] (`service_health.go`): for each LoadBalancer Service with
//!   `externalTrafficPolicy: Local`, a server on its `healthCheckNodePort` that answers any
//!   path and method with 200 when the Node has local Ready endpoints and the proxy is
//!   healthy, else 503, and says how many in JSON and in `X-Load-Balancing-Endpoint-Weight`.
//!   Feed it [`local_ready_endpoints`] after every sync.
//! - [`ProxyHealth`] (`proxy_health.go`): the proxy's own health per IP family, served at
//!   `/healthz` (also requires the Node to be eligible, see [`node_eligible`]) and `/livez` on
//!   [`DEFAULT_HEALTHZ_BIND_ADDRESS`]. Time comes from a [`Clock`], so tests control it.
//! - [`serve_metrics`]: `/metrics` for a Prometheus registry the caller owns, into which
//!   [`HealthMetrics`] adds `proxy_healthz_total{code}` and `proxy_livez_total{code}`.
//!
//! Every server takes an already-bound `std::net::TcpListener` (or, for the per-Service
//! servers, a [`Listen`] that makes them), so sockets can be created inside a network
//! namespace and served by Tokio from anywhere. Start where the sync loop starts: build a
//! [`ProxyHealth`], call [`ProxyHealth::queued_update`] / [`ProxyHealth::updated`] around each
//! sync, and [`HealthServers::sync`] after it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use netd_healthcheck::*;
//! use prometheus_client::registry::Registry;
//!
//! # async fn run(state: netd_model::ClusterState, node: netd_model::NodeName) -> Result<(), HealthError> {
//! let mut registry = Registry::with_prefix("kubeproxy");
//! let metrics = HealthMetrics::register(&mut registry);
//! let health = ProxyHealth::new(DEFAULT_HEALTH_TIMEOUT, Arc::new(SystemClock), metrics);
//! let _healthz = health.serve(bind(DEFAULT_HEALTHZ_BIND_ADDRESS)?)?;
//! let _metrics = serve_metrics(bind(DEFAULT_METRICS_BIND_ADDRESS)?, Arc::new(registry))?;
//!
//! let mut servers = HealthServers::new(
//!     vec![std::net::Ipv4Addr::UNSPECIFIED.into()],
//!     health.clone(),
//!     Arc::new(CurrentNamespace),
//! );
//! health.queued_update(IpFamily::V4);
//! // ... program the rules ...
//! health.updated(IpFamily::V4);
//! health.set_node_eligible(node_eligible(&state, &node));
//! for (service, error) in servers.sync(&local_ready_endpoints(&state, &node)).await {
//!     eprintln!("health check for {service} not started: {error}");
//! }
//! # Ok(()) }
//! ```

mod clock;
mod error;
mod http;
mod metrics;
mod proxy_health;
mod service_health;

pub use clock::{Clock, SystemClock};
pub use error::HealthError;
pub use http::{CurrentNamespace, HttpServer, Listen, bind};
pub use metrics::{DEFAULT_METRICS_BIND_ADDRESS, HealthMetrics, serve_metrics};
pub use proxy_health::{
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_SYNC_PERIOD, Health, IpFamily,
    ProxierHealth, ProxyHealth, TO_BE_DELETED_TAINT, node_eligible,
};
pub use service_health::{HealthServers, local_ready_endpoints};
