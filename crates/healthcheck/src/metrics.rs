//! kube-proxy's health counters and the `/metrics` endpoint.
//!
//! The registry belongs to the caller (kube-netd's sync metrics live in it too); this module
//! adds `proxy_healthz_total{code}` and `proxy_livez_total{code}` to it. Create it with
//! `Registry::with_prefix("kubeproxy")` to get kube-proxy's exact names
//! (`kubeproxy_proxy_healthz_total`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::HealthError;
use crate::http::{self, HttpServer};

/// kube-proxy's default `--metrics-bind-address`.
pub const DEFAULT_METRICS_BIND_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249));

/// The `code` label of a probe counter.
type CodeLabel = [(&'static str, &'static str); 1];

/// The probe counters: how many `/healthz` and `/livez` answers were 200 and how many 503.
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
}

impl HealthMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let healthz = Family::<CodeLabel, Counter>::default();
        registry.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            healthz.clone(),
        );
        let livez = Family::<CodeLabel, Counter>::default();
        registry.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            livez.clone(),
        );
        Self { healthz, livez }
    }

    /// Counts one `/healthz` answer: 200 when healthy, else 503.
    pub(crate) fn count_healthz(&self, healthy: bool) {
        self.healthz.get_or_create(&code_label(healthy)).inc();
    }

    /// Counts one `/livez` answer: 200 when healthy, else 503.
    pub(crate) fn count_livez(&self, healthy: bool) {
        self.livez.get_or_create(&code_label(healthy)).inc();
    }
}

/// Serves `registry` in the OpenMetrics text format at `/metrics` on `listener` (404 for any
/// other path). Must be called from within a Tokio runtime.
pub fn serve_metrics(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
) -> Result<HttpServer, HealthError> {
    http::spawn(
        listener,
        Arc::new(move |path: &str| match path {
            "/metrics" => metrics_response(&registry),
            _ => http::not_found(),
        }),
    )
}

fn metrics_response(registry: &Registry) -> Response<Full<Bytes>> {
    let mut text = String::new();
    if let Err(error) = encode(&mut text, registry) {
        tracing::warn!(%error, "encoding metrics failed");
        let mut response =
            Response::new(Full::new(Bytes::from_static(b"encoding metrics failed\n")));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn code_label(healthy: bool) -> CodeLabel {
    [("code", if healthy { "200" } else { "503" })]
}
