//! What the store keeps of each object: exactly the fields `netd-model`'s views read, so
//! that churn in anything else (status heartbeats, `managedFields`, `resourceVersion`,
//! annotations) compares equal and does not make the store dirty.
//!
//! Each function returns `None` for an object that is left out altogether. What is left out
//! depends on who reads the store ([`Purpose`]): the proxy leaves out what another proxy owns,
//! cluster DNS names every Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netd_model::Object;
use netd_model::view::SERVICE_PROXY_NAME_LABEL;

pub use netd_model::view::LAST_CHANGE_TRIGGER_TIME;

/// Name, namespace, labels and the deletion timestamp; `keep_annotation` names the one
/// annotation worth keeping, if any.
fn meta(m: ObjectMeta, keep_annotation: Option<&str>) -> ObjectMeta {
    let annotations = keep_annotation.and_then(|key| {
        let value = m.annotations?.remove(key)?;
        Some(BTreeMap::from([(key.to_owned(), value)]))
    });
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels.filter(|l| !l.is_empty()),
        deletion_timestamp: m.deletion_timestamp,
        annotations,
        ..ObjectMeta::default()
    }
}

/// Who reads a store, which decides what it leaves out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Purpose {
    /// The service proxy and NetworkPolicy (`kube-netd agent`): Services and EndpointSlices
    /// labelled `service.kubernetes.io/service-proxy-name` belong to another proxy and are
    /// left out, as kube-proxy leaves them.
    #[default]
    Proxy,
    /// Cluster DNS (`kube-netd dns`): every Service gets its names, whichever proxy routes it,
    /// as CoreDNS answers them.
    Dns,
}

fn proxied_elsewhere(m: &ObjectMeta) -> bool {
    m.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
}

/// A Namespace: its name and labels.
pub fn namespace(m: ObjectMeta) -> Option<Object> {
    Some(Object::Namespace(core::Namespace {
        metadata: meta(m, None),
        ..core::Namespace::default()
    }))
}

/// A Node: labels, podCIDRs, taints (`/healthz` reads the cluster autoscaler's) and
/// addresses; conditions, capacity, images and heartbeats go.
pub fn node(n: core::Node) -> Option<Object> {
    let spec = n.spec.map(|s| core::NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        taints: s.taints.filter(|t| !t.is_empty()),
        ..core::NodeSpec::default()
    });
    let status = n.status.map(|s| core::NodeStatus {
        addresses: s.addresses,
        ..core::NodeStatus::default()
    });
    Some(Object::Node(Box::new(core::Node {
        metadata: meta(n.metadata, None),
        spec,
        status,
    })))
}

/// A Pod: node, host network, hostname and subdomain, container ports (named ports resolve
/// through them), IPs and the Ready condition's status. A Pod that has finished
/// (`Succeeded`, `Failed`) is left out: its IPs are free to be reused by another Pod.
pub fn pod(p: core::Pod) -> Option<Object> {
    let status = p.status.unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let spec = p.spec.map(|s| core::PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        hostname: s.hostname,
        subdomain: s.subdomain,
        containers: s
            .containers
            .into_iter()
            .map(|c| core::Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|cp| core::ContainerPort {
                            name: cp.name,
                            container_port: cp.container_port,
                            protocol: cp.protocol,
                            ..core::ContainerPort::default()
                        })
                        .collect()
                }),
                ..core::Container::default()
            })
            .collect(),
        ..core::PodSpec::default()
    });
    let ready = status.conditions.and_then(|cs| {
        cs.into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| core::PodCondition {
                type_: c.type_,
                status: c.status,
                ..core::PodCondition::default()
            })
    });
    let status = core::PodStatus {
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        conditions: ready.map(|c| vec![c]),
        ..core::PodStatus::default()
    };
    Some(Object::Pod(Box::new(core::Pod {
        metadata: meta(p.metadata, None),
        spec,
        status: Some(status),
    })))
}

/// A Service: the spec fields the proxy, policy and DNS read, and the load-balancer ingress
/// IPs. A Service labelled `service.kubernetes.io/service-proxy-name` belongs to another
/// proxy and is left out, as kube-proxy leaves it.
pub fn service(s: core::Service) -> Option<Object> {
    if proxied_elsewhere(&s.metadata) {
        return None;
    }
    Some(kept_service(s))
}

/// A Service as [`service`] keeps it, whichever proxy owns it (for [`Purpose::Dns`]).
pub fn service_for_dns(s: core::Service) -> Option<Object> {
    Some(kept_service(s))
}

fn kept_service(s: core::Service) -> Object {
    let spec = s.spec.map(|s| core::ServiceSpec {
        type_: s.type_,
        cluster_ip: s.cluster_ip,
        cluster_ips: s.cluster_ips,
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| core::ServicePort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    target_port: p.target_port,
                    node_port: p.node_port,
                    ..core::ServicePort::default()
                })
                .collect()
        }),
        selector: s.selector,
        external_ips: s.external_ips,
        load_balancer_source_ranges: s.load_balancer_source_ranges,
        external_traffic_policy: s.external_traffic_policy,
        internal_traffic_policy: s.internal_traffic_policy,
        session_affinity: s.session_affinity,
        session_affinity_config: s.session_affinity_config,
        health_check_node_port: s.health_check_node_port,
        external_name: s.external_name,
        publish_not_ready_addresses: s.publish_not_ready_addresses,
        traffic_distribution: s.traffic_distribution,
        ..core::ServiceSpec::default()
    });
    let ingress: Option<Vec<core::LoadBalancerIngress>> = s
        .status
        .and_then(|st| st.load_balancer)
        .and_then(|lb| lb.ingress)
        .map(|ingress| {
            ingress
                .into_iter()
                .filter(|i| i.ip.is_some())
                .map(|i| core::LoadBalancerIngress {
                    ip: i.ip,
                    ..core::LoadBalancerIngress::default()
                })
                .collect()
        });
    let status = ingress
        .filter(|i| !i.is_empty())
        .map(|ingress| core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..core::ServiceStatus::default()
        });
    Object::Service(Box::new(core::Service {
        metadata: meta(s.metadata, None),
        spec,
        status,
    }))
}

/// An EndpointSlice: address type, ports and endpoints (addresses, conditions, node, zone,
/// hints, the Pod it points at), and the last-change-trigger-time annotation. Slices of a
/// Service another proxy owns are left out with it.
pub fn endpoint_slice(s: discovery::EndpointSlice) -> Option<Object> {
    if proxied_elsewhere(&s.metadata) {
        return None;
    }
    Some(kept_endpoint_slice(s))
}

/// An EndpointSlice as [`endpoint_slice`] keeps it, whichever proxy owns its Service (for
/// [`Purpose::Dns`]).
pub fn endpoint_slice_for_dns(s: discovery::EndpointSlice) -> Option<Object> {
    Some(kept_endpoint_slice(s))
}

fn kept_endpoint_slice(s: discovery::EndpointSlice) -> Object {
    let endpoints = s
        .endpoints
        .into_iter()
        .map(|e| discovery::Endpoint {
            addresses: e.addresses,
            conditions: e.conditions,
            hints: e.hints,
            hostname: e.hostname,
            node_name: e.node_name,
            zone: e.zone,
            target_ref: e.target_ref.map(|r| core::ObjectReference {
                kind: r.kind,
                namespace: r.namespace,
                name: r.name,
                ..core::ObjectReference::default()
            }),
            ..discovery::Endpoint::default()
        })
        .collect();
    Object::EndpointSlice(discovery::EndpointSlice {
        metadata: meta(s.metadata, Some(LAST_CHANGE_TRIGGER_TIME)),
        address_type: s.address_type,
        endpoints,
        ports: s.ports,
    })
}

/// A NetworkPolicy: its whole spec (all of it is semantics).
pub fn network_policy(p: networking::NetworkPolicy) -> Option<Object> {
    Some(Object::NetworkPolicy(Box::new(networking::NetworkPolicy {
        metadata: meta(p.metadata, None),
        spec: p.spec,
    })))
}
