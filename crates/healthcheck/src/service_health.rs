//! Per-Service health servers on `healthCheckNodePort` (`service_health.go`).
//!
//! A load balancer in front of an `externalTrafficPolicy: Local` Service probes each Node on
//! the Service's `healthCheckNodePort` and sends traffic only to Nodes that answer 200: those
//! with at least one local Ready endpoint while the proxy itself is healthy.
//! [`local_ready_endpoints`] computes what to serve from a snapshot; [`HealthServers::sync`]
//! opens and closes the listeners to match.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use netd_model::view::{AddressType, ServiceType, TrafficPolicy};
use netd_model::{ClusterState, NodeName, ServiceRef};

use crate::error::HealthError;
use crate::http::{self, HttpServer, Listen};
use crate::proxy_health::{IpFamily, ProxyHealth};

/// The health check servers of one Node's Services, kept in step with the Services by
/// [`HealthServers::sync`] (kube-proxy's `ServiceHealthServer`).
pub struct HealthServers {
    addresses: Vec<IpAddr>,
    proxy: ProxyHealth,
    listen: Arc<dyn Listen>,
    services: BTreeMap<ServiceRef, Instance>,
}

/// One Service's servers, one per address.
struct Instance {
    port: u16,
    endpoints: Arc<AtomicUsize>,
    servers: Vec<HttpServer>,
}

impl HealthServers {
    /// Manages health servers that listen on `port` of each of `addresses` (kube-proxy's
    /// `--nodeport-addresses`; by default every address, `0.0.0.0`), with sockets created by
    /// `listen`, reporting `proxy`'s health as `serviceProxyHealthy`.
    pub fn new(addresses: Vec<IpAddr>, proxy: ProxyHealth, listen: Arc<dyn Listen>) -> Self {
        Self {
            addresses,
            proxy,
            listen,
            services: BTreeMap::new(),
        }
    }

    /// Makes `services` (Service → (healthCheckNodePort, local Ready endpoints)) the served
    /// set: closes the servers of Services that are gone or whose port changed, opens servers
    /// for new ones, and updates endpoint counts in place without reopening anything.
    ///
    /// Returns the Services whose servers could not be opened (kube-proxy emits a
    /// `FailedToStartServiceHealthcheck` event for each); they are retried on the next call.
    /// Old servers are closed before new ones open, so a port can move between Services in
    /// one call. Must be called from within a Tokio runtime; `listen` runs on this task.
    pub async fn sync(
        &mut self,
        services: &BTreeMap<ServiceRef, (u16, usize)>,
    ) -> BTreeMap<ServiceRef, HealthError> {
        let stale: Vec<ServiceRef> = self
            .services
            .iter()
            .filter(|(svc, instance)| {
                services
                    .get(*svc)
                    .is_none_or(|&(port, _)| port != instance.port)
            })
            .map(|(svc, _)| svc.clone())
            .collect();
        for svc in stale {
            if let Some(instance) = self.services.remove(&svc) {
                tracing::debug!(service = %svc, port = instance.port, "closing health check");
                close(instance.servers).await;
            }
        }

        let mut failed = BTreeMap::new();
        for (svc, &(port, endpoints)) in services {
            if let Some(instance) = self.services.get(svc) {
                instance.endpoints.store(endpoints, Ordering::Relaxed);
                continue;
            }
            tracing::debug!(service = %svc, port, "opening health check");
            match self.open(svc, port, endpoints).await {
                Ok(instance) => {
                    self.services.insert(svc.clone(), instance);
                }
                Err(error) => {
                    tracing::warn!(service = %svc, port, error = %error, "failed to start health check");
                    failed.insert(svc.clone(), error);
                }
            }
        }
        failed
    }

    /// Moves the servers to `addresses` (when `--nodeport-addresses` resolves to other
    /// addresses than before): if they differ, every server is closed, and the next
    /// [`HealthServers::sync`] opens each Service's on the new addresses.
    pub async fn set_addresses(&mut self, addresses: Vec<IpAddr>) {
        if addresses == self.addresses {
            return;
        }
        for (_, instance) in std::mem::take(&mut self.services) {
            close(instance.servers).await;
        }
        self.addresses = addresses;
    }

    /// The addresses each Service's health check listens on.
    pub fn listening(&self) -> BTreeMap<ServiceRef, Vec<SocketAddr>> {
        self.services
            .iter()
            .map(|(svc, instance)| {
                (
                    svc.clone(),
                    instance
                        .servers
                        .iter()
                        .map(HttpServer::local_addr)
                        .collect(),
                )
            })
            .collect()
    }

    async fn open(
        &self,
        svc: &ServiceRef,
        port: u16,
        endpoints: usize,
    ) -> Result<Instance, HealthError> {
        let endpoints = Arc::new(AtomicUsize::new(endpoints));
        let mut servers = Vec::with_capacity(self.addresses.len());
        for &ip in &self.addresses {
            let addr = SocketAddr::new(ip, port);
            let handler = {
                let (svc, endpoints, proxy) = (svc.clone(), endpoints.clone(), self.proxy.clone());
                Arc::new(move |_: &str| {
                    service_response(&svc, endpoints.load(Ordering::Relaxed), proxy.is_healthy())
                })
            };
            let served = self
                .listen
                .listen(addr)
                .map_err(|source| HealthError::BindFailed { addr, source })
                .and_then(|listener| http::spawn(listener, handler));
            match served {
                Ok(server) => servers.push(server),
                Err(error) => {
                    // Close what was opened, so the port is free for a retry or another owner.
                    close(servers).await;
                    return Err(error);
                }
            }
        }
        Ok(Instance {
            port,
            endpoints,
            servers,
        })
    }
}

impl std::fmt::Debug for HealthServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServers")
            .field("addresses", &self.addresses)
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

/// For each Service that needs a health check on `node` (a LoadBalancer with
/// `externalTrafficPolicy: Local` and a `healthCheckNodePort`, handled by this proxy), its
/// port and its number of local Ready endpoints: kube-proxy's `LocalReadyEndpoints`.
///
/// Endpoints are counted by distinct IP, so one Pod behind several ports counts once; only
/// Ready ones count (a Node whose endpoints are all terminating is drained); and, as a
/// single-family kube-proxy sees only its family's EndpointSlices, only the Service's primary
/// family (its first ClusterIP's) is counted.
pub fn local_ready_endpoints(
    state: &ClusterState,
    node: &NodeName,
) -> BTreeMap<ServiceRef, (u16, usize)> {
    let mut out = BTreeMap::new();
    for svc in state.services() {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let Some(&primary) = svc.cluster_ips.first() else {
            continue;
        };
        if svc.proxy_name.is_some()
            || svc.headless
            || svc.service_type != ServiceType::LoadBalancer
            || svc.external_traffic_policy != TrafficPolicy::Local
        {
            continue;
        }
        let family = match IpFamily::of(primary) {
            IpFamily::V4 => AddressType::IPv4,
            IpFamily::V6 => AddressType::IPv6,
        };
        let ips: BTreeSet<IpAddr> = state
            .endpoint_slices_for(&svc.key)
            // A slice without ports yields no endpoints in kube-proxy's endpoints map.
            .filter(|slice| slice.address_type == family && !slice.ports.is_empty())
            .flat_map(|slice| &slice.endpoints)
            .filter(|ep| ep.conditions.ready && ep.node.as_ref() == Some(node))
            .filter_map(|ep| ep.addresses.first().copied())
            .collect();
        out.insert(svc.key.clone(), (port, ips.len()));
    }
    out
}

/// `X-Load-Balancing-Endpoint-Weight`, read by load balancers that weigh Nodes.
const X_LOAD_BALANCING_ENDPOINT_WEIGHT: HeaderName =
    HeaderName::from_static("x-load-balancing-endpoint-weight");

/// kube-proxy's answer for one Service: 200 iff it has local endpoints and the proxy is
/// healthy, else 503; the body is upstream's dedented template, byte for byte.
fn service_response(
    svc: &ServiceRef,
    endpoints: usize,
    proxy_healthy: bool,
) -> Response<Full<Bytes>> {
    let status = if endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        go_quote(svc.namespace.as_str()),
        go_quote(&svc.name),
    );
    let mut response = http::json_response(status, body);
    response.headers_mut().insert(
        X_LOAD_BALANCING_ENDPOINT_WEIGHT,
        HeaderValue::from(endpoints),
    );
    response
}

/// Go's `%q` for the strings we print (Kubernetes names: printable ASCII in practice).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                // Infallible: writing to a String.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn close(servers: Vec<HttpServer>) {
    for server in servers {
        server.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30100
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
- {addresses: [10.244.1.3], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.1.4], nodeName: node-1, conditions: {ready: true}}
- {addresses: [10.244.2.2], nodeName: node-2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
- {addresses: [10.244.1.5], nodeName: node-1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["fd00:10:244:1::2"], nodeName: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30101
  clusterIP: 10.96.0.21
  ports: [{port: 80, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: cluster-policy, namespace: ns}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Cluster
  healthCheckNodePort: 30102
  clusterIP: 10.96.0.22
  ports: [{port: 80, nodePort: 30082}]
---
apiVersion: v1
kind: Service
metadata: {name: other-proxy, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30103
  clusterIP: 10.96.0.23
  ports: [{port: 80, nodePort: 30083}]
"#;

    #[test]
    fn counts_distinct_local_ready_ips_of_health_checked_services() {
        let state = netd_testkit::state(CLUSTER);
        let web = ServiceRef::new("ns", "web");
        let empty = ServiceRef::new("ns", "empty");
        // node-1: .2 (two slices, two ports: once), .4, .5; .3 is terminating; IPv6 not counted.
        assert_eq!(
            local_ready_endpoints(&state, &NodeName::new("node-1")),
            BTreeMap::from([(empty.clone(), (30101, 0)), (web.clone(), (30100, 3))])
        );
        assert_eq!(
            local_ready_endpoints(&state, &NodeName::new("node-2")),
            BTreeMap::from([(empty.clone(), (30101, 0)), (web.clone(), (30100, 1))])
        );
        assert_eq!(
            local_ready_endpoints(&state, &NodeName::new("node-3")),
            BTreeMap::from([(empty, (30101, 0)), (web, (30100, 0))])
        );
    }

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("kube-system"), "\"kube-system\"");
        assert_eq!(go_quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\x01\"");
    }
}
