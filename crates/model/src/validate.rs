//! Object validation: what the API server would reject when these objects are created.
//!
//! [`Validator`] checks each object on its own (names, labels, ports, selectors, addresses...)
//! and against the objects it checked before (a ClusterIP or nodePort handed out twice).
//! Most field checks are the typed-view conversions of [`crate::state`], reused here so that
//! whatever passes validation is exactly what a [`crate::ClusterState`] accepts; this module
//! adds the rules a view does not need to hold: name syntax, uniqueness within an object,
//! fields that depend on the Service type, and ranges from the [`ClusterConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::ClusterConfig;
use crate::field::{FieldError, FieldPath};
use crate::keys::{Protocol, ServiceRef};
use crate::object::{Kind, Object, ObjectId};
use crate::selector::{LabelSelector, Labels};
use crate::state::{node_view, pod_view, policy_view, service_view, slice_view};
use crate::validation::{
    is_dns1123_label, validate_dns1123_label, validate_dns1123_subdomain, validate_label_key,
    validate_label_value, validate_port_name, validate_port_number,
};
use crate::view::{AddressType, Service, ServiceType, TrafficPolicy};

/// Most endpoints one EndpointSlice may hold.
const MAX_SLICE_ENDPOINTS: usize = 1000;
/// Most ports one EndpointSlice may hold.
const MAX_SLICE_PORTS: usize = 100;

/// Checks objects one after another, as the API server would accept them on create.
///
/// Besides each object's own fields, it remembers the ClusterIPs and nodePorts of the
/// Services it accepted, so a second Service asking for the same one is rejected. The
/// ClusterIPs of `default/kubernetes` and of the cluster DNS Service (`kube-system/kube-dns`)
/// are reserved from the start, as a real cluster has them allocated. An object that fails
/// leaves the validator as it was.
#[derive(Clone, Debug)]
pub struct Validator<'a> {
    config: &'a ClusterConfig,
    cluster_ips: BTreeMap<IpAddr, ServiceRef>,
    node_ports: BTreeMap<u16, ServiceRef>,
}

impl<'a> Validator<'a> {
    /// A validator for a cluster with these address ranges.
    pub fn new(config: &'a ClusterConfig) -> Self {
        let mut cluster_ips = BTreeMap::new();
        if let Some(ip) = config.kubernetes_service_ip() {
            cluster_ips.insert(ip, ServiceRef::new("default", "kubernetes"));
        }
        cluster_ips.insert(
            config.dns_service_ip,
            ServiceRef::new("kube-system", "kube-dns"),
        );
        Self {
            config,
            cluster_ips,
            node_ports: BTreeMap::new(),
        }
    }

    /// Checks one object, on its own and against the Services accepted before it.
    pub fn check(&mut self, object: &Object) -> Result<(), FieldError> {
        let id = object.id();
        validate_metadata(id.kind, object.meta())?;
        match object {
            Object::Namespace(_) => Ok(()),
            Object::Node(n) => node_view(&id, n).map(|_| ()),
            Object::Pod(p) => {
                validate_pod_spec(p.spec.as_ref(), &FieldPath::new("spec"))?;
                pod_view(&id, p).map(|_| ())
            }
            Object::Deployment(d) => validate_deployment(&id, d),
            Object::Service(s) => {
                let view = validate_service(&id, s, self.config)?;
                self.claim(s.spec.as_ref(), &view)
            }
            Object::EndpointSlice(s) => validate_slice(&id, s),
            Object::NetworkPolicy(p) => policy_view(&id, p).map(|_| ()),
        }
    }

    /// Records a Service's ClusterIPs and nodePorts, unless another Service holds one.
    /// Across Services a nodePort is taken whatever its protocol, as the API server has one
    /// allocator for all protocols; the health-check nodePort is taken from the same pool.
    fn claim(
        &mut self,
        spec: Option<&core::ServiceSpec>,
        view: &Service,
    ) -> Result<(), FieldError> {
        for (i, ip) in view.cluster_ips.iter().enumerate() {
            if let Some(owner) = other_owner(self.cluster_ips.get(ip), &view.key) {
                return Err(FieldError::invalid(
                    cluster_ip_path(spec, i),
                    ip,
                    format!("is already allocated to Service {owner}"),
                ));
            }
        }
        let mut own: BTreeMap<u16, BTreeSet<Protocol>> = BTreeMap::new();
        for (i, port) in view.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let path = FieldPath::new("spec.ports").index(i).child("nodePort");
            if !own.entry(node_port).or_default().insert(port.protocol) {
                return Err(FieldError::duplicate(path, node_port));
            }
            if let Some(owner) = other_owner(self.node_ports.get(&node_port), &view.key) {
                return Err(already_allocated(path, node_port, owner));
            }
        }
        if let Some(port) = view.health_check_node_port {
            let path = FieldPath::new("spec.healthCheckNodePort");
            if own.contains_key(&port) {
                return Err(FieldError::invalid(
                    path,
                    port,
                    "is already used as a nodePort of this Service",
                ));
            }
            if let Some(owner) = other_owner(self.node_ports.get(&port), &view.key) {
                return Err(already_allocated(path, port, owner));
            }
            own.insert(port, BTreeSet::new());
        }
        for ip in &view.cluster_ips {
            self.cluster_ips.insert(*ip, view.key.clone());
        }
        for port in own.into_keys() {
            self.node_ports.insert(port, view.key.clone());
        }
        Ok(())
    }
}

/// The owner of an address or port, unless it is `me`.
fn other_owner<'m>(owner: Option<&'m ServiceRef>, me: &ServiceRef) -> Option<&'m ServiceRef> {
    owner.filter(|o| *o != me)
}

fn already_allocated(path: FieldPath, port: u16, owner: &ServiceRef) -> FieldError {
    FieldError::invalid(
        path,
        port,
        format!("is already allocated to Service {owner}"),
    )
}

/// Where the `i`th ClusterIP of a Service was written: `clusterIPs[i]`, or `clusterIP` when
/// only that is set.
fn cluster_ip_path(spec: Option<&core::ServiceSpec>, i: usize) -> FieldPath {
    if spec
        .and_then(|s| s.cluster_ips.as_ref())
        .is_some_and(|l| !l.is_empty())
    {
        FieldPath::new("spec.clusterIPs").index(i)
    } else {
        FieldPath::new("spec.clusterIP")
    }
}

fn validate_metadata(kind: Kind, meta: &ObjectMeta) -> Result<(), FieldError> {
    let path = FieldPath::new("metadata");
    let name_path = path.child("name");
    let name = meta
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::required(name_path.clone()))?;
    match kind {
        Kind::Namespace => validate_dns1123_label(name, &name_path)?,
        Kind::Service => validate_dns1035_label(name, &name_path)?,
        _ => validate_dns1123_subdomain(name, &name_path)?,
    }
    if kind.is_namespaced()
        && let Some(namespace) = &meta.namespace
    {
        validate_dns1123_label(namespace, &path.child("namespace"))?;
    }
    validate_labels(meta.labels.as_ref(), &path.child("labels"))
}

/// Checks a DNS-1035 label, which Service names must be: a DNS-1123 label that starts with a
/// letter, so that it can be a DNS name and an environment variable prefix.
fn validate_dns1035_label(s: &str, path: &FieldPath) -> Result<(), FieldError> {
    if is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            s,
            "is not a valid DNS-1035 label (lower-case alphanumerics and '-', starting with a \
             letter and ending with an alphanumeric, at most 63 characters)",
        ))
    }
}

fn validate_labels(labels: Option<&Labels>, path: &FieldPath) -> Result<(), FieldError> {
    for (key, value) in labels.into_iter().flatten() {
        validate_label_key(key, path)?;
        validate_label_value(value, &path.key(key))?;
    }
    Ok(())
}

/// The checks on a Pod's spec that its view does not make: containers, their names, port
/// names and host ports. `path` is where the spec sits (`spec`, `spec.template.spec`).
fn validate_pod_spec(spec: Option<&core::PodSpec>, path: &FieldPath) -> Result<(), FieldError> {
    let containers_path = path.child("containers");
    let Some(spec) = spec.filter(|s| !s.containers.is_empty()) else {
        return Err(FieldError::required(containers_path));
    };
    let host_network = spec.host_network == Some(true);
    let mut container_names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let c_path = containers_path.index(i);
        let name_path = c_path.child("name");
        if container.name.is_empty() {
            return Err(FieldError::required(name_path));
        }
        validate_dns1123_label(&container.name, &name_path)?;
        if !container_names.insert(container.name.as_str()) {
            return Err(FieldError::duplicate(name_path, &container.name));
        }
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let p_path = c_path.child("ports").index(j);
            if let Some(name) = &port.name {
                let name_path = p_path.child("name");
                validate_port_name(name, &name_path)?;
                if !port_names.insert(name.as_str()) {
                    return Err(FieldError::duplicate(name_path, name));
                }
            }
            let Some(host_port) = port.host_port.filter(|p| *p != 0) else {
                continue;
            };
            let host_path = p_path.child("hostPort");
            validate_port_number(host_port, &host_path)?;
            if host_network && host_port != port.container_port {
                return Err(FieldError::invalid(
                    host_path,
                    host_port,
                    "must match `containerPort` when `hostNetwork` is true",
                ));
            }
        }
    }
    if let Some(node) = &spec.node_name {
        validate_dns1123_subdomain(node, &path.child("nodeName"))?;
    }
    if let Some(hostname) = &spec.hostname {
        validate_dns1123_label(hostname, &path.child("hostname"))?;
    }
    if let Some(subdomain) = &spec.subdomain {
        validate_dns1123_label(subdomain, &path.child("subdomain"))?;
    }
    Ok(())
}

fn validate_deployment(id: &ObjectId, d: &apps::Deployment) -> Result<(), FieldError> {
    let path = FieldPath::new("spec");
    let Some(spec) = &d.spec else {
        return Err(FieldError::required(path.child("selector")));
    };
    if let Some(replicas) = spec.replicas.filter(|r| *r < 0) {
        return Err(FieldError::invalid(
            path.child("replicas"),
            replicas,
            "must be greater than or equal to 0",
        ));
    }
    let selector_path = path.child("selector");
    let selector = LabelSelector::from_api(&spec.selector, &selector_path)?;
    if selector.is_empty() {
        return Err(FieldError::invalid(
            selector_path,
            "{}",
            "empty selector is invalid for deployment",
        ));
    }
    let template_path = path.child("template");
    let template_meta = spec.template.metadata.clone().unwrap_or_default();
    let labels_path = template_path.child("metadata").child("labels");
    validate_labels(template_meta.labels.as_ref(), &labels_path)?;
    let labels = template_meta.labels.clone().unwrap_or_default();
    if !selector.matches(&labels) {
        return Err(FieldError::invalid(
            labels_path,
            LabelSelector::from_labels(labels),
            "`selector` does not match template `labels`",
        ));
    }
    let spec_path = template_path.child("spec");
    validate_pod_spec(spec.template.spec.as_ref(), &spec_path)?;
    // The Pods the Deployment creates must pass the same checks as Pods written out.
    let pod = core::Pod {
        metadata: template_meta,
        spec: spec.template.spec.clone(),
        status: None,
    };
    pod_view(id, &pod)
        .map(|_| ())
        .map_err(|e| under(&template_path, e))
}

/// Re-roots an error found in an embedded object (a Pod template) under its path.
fn under(prefix: &FieldPath, e: FieldError) -> FieldError {
    FieldError {
        path: FieldPath::new(&format!("{prefix}.{}", e.path)),
        kind: e.kind,
    }
}

fn validate_service(
    id: &ObjectId,
    s: &core::Service,
    config: &ClusterConfig,
) -> Result<Service, FieldError> {
    let view = service_view(id, s)?;
    let default_spec = core::ServiceSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&default_spec);
    let path = FieldPath::new("spec");
    let type_name = view.service_type.as_str();
    let externally_reachable = matches!(
        view.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );

    validate_labels(spec.selector.as_ref(), &path.child("selector"))?;

    let cluster_ip_set = spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        || spec.cluster_ips.as_ref().is_some_and(|l| !l.is_empty());
    if view.service_type == ServiceType::ExternalName {
        let name_path = path.child("externalName");
        let name = spec
            .external_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| FieldError::required(name_path.clone()))?;
        validate_dns1123_subdomain(name.strip_suffix('.').unwrap_or(name), &name_path)?;
        if cluster_ip_set {
            return Err(FieldError::forbidden(
                path.child("clusterIP"),
                "may not be set for ExternalName services",
            ));
        }
    }
    if view.headless && externally_reachable {
        return Err(FieldError::invalid(
            path.child("clusterIP"),
            "None",
            format!("may not be set to 'None' for {type_name} services"),
        ));
    }
    validate_cluster_ips(spec, &view, config)?;

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !view.headless && view.service_type != ServiceType::ExternalName {
        return Err(FieldError::required(path.child("ports")));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, (raw, port)) in ports.iter().zip(&view.ports).enumerate() {
        let port_path = path.child("ports").index(i);
        let name_path = port_path.child("name");
        match raw.name.as_deref().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => return Err(FieldError::required(name_path)),
            None => {}
            Some(name) => {
                validate_dns1123_label(name, &name_path)?;
                if !names.insert(name) {
                    return Err(FieldError::duplicate(name_path, name));
                }
            }
        }
        if !numbers.insert((port.port, port.protocol)) {
            return Err(FieldError::duplicate(
                port_path,
                format!("{}/{}", port.port, port.protocol.as_api_str()),
            ));
        }
        let Some(node_port) = port.node_port else {
            continue;
        };
        let node_port_path = port_path.child("nodePort");
        if !externally_reachable {
            return Err(FieldError::forbidden(
                node_port_path,
                format!("may not be used when `type` is '{type_name}'"),
            ));
        }
        check_node_port_range(node_port, node_port_path, config)?;
    }

    if let Some(port) = view.health_check_node_port {
        let hc_path = path.child("healthCheckNodePort");
        if view.service_type != ServiceType::LoadBalancer
            || view.external_traffic_policy != TrafficPolicy::Local
        {
            return Err(FieldError::invalid(
                hc_path,
                port,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
        check_node_port_range(port, hc_path, config)?;
    }
    let externally_accessible = externally_reachable
        || view.service_type == ServiceType::ClusterIp && !view.external_ips.is_empty();
    if let Some(policy) = spec
        .external_traffic_policy
        .as_ref()
        .filter(|_| !externally_accessible)
    {
        return Err(FieldError::invalid(
            path.child("externalTrafficPolicy"),
            policy,
            "may only be set for externally-accessible services (NodePort, LoadBalancer or \
             with externalIPs)",
        ));
    }
    if view.service_type != ServiceType::LoadBalancer
        && spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
    {
        return Err(FieldError::forbidden(
            path.child("loadBalancerSourceRanges"),
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    Ok(view)
}

/// `clusterIP` and `clusterIPs` agree, hold at most one address per family, and lie in the
/// service CIDRs.
fn validate_cluster_ips(
    spec: &core::ServiceSpec,
    view: &Service,
    config: &ClusterConfig,
) -> Result<(), FieldError> {
    let list_path = FieldPath::new("spec.clusterIPs");
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    if let (Some(single), Some(first)) = (
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        list.first(),
    ) && single != first
    {
        return Err(FieldError::invalid(
            list_path.index(0),
            first,
            "must match `clusterIP`",
        ));
    }
    if let [first, second, ..] = view.cluster_ips.as_slice() {
        if view.cluster_ips.len() > 2 {
            return Err(FieldError::invalid(
                list_path,
                list.join(","),
                "may hold at most two addresses, one per IP family",
            ));
        }
        if first.is_ipv4() == second.is_ipv4() {
            return Err(FieldError::invalid(
                list_path.index(1),
                second,
                "must be of a different IP family than `clusterIPs[0]`",
            ));
        }
    }
    for (i, ip) in view.cluster_ips.iter().enumerate() {
        if !config.in_service_cidrs(*ip) {
            let ranges: Vec<String> = config
                .service_cidrs
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(FieldError::invalid(
                cluster_ip_path(Some(spec), i),
                ip,
                format!("is not within the service CIDR ({})", ranges.join(", ")),
            ));
        }
    }
    Ok(())
}

fn check_node_port_range(
    port: u16,
    path: FieldPath,
    config: &ClusterConfig,
) -> Result<(), FieldError> {
    let range = &config.node_port_range;
    if range.contains(&port) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path,
            port,
            format!(
                "is outside the nodePort range {}-{}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn validate_slice(id: &ObjectId, s: &discovery::EndpointSlice) -> Result<(), FieldError> {
    let view = slice_view(id, s)?;
    let ports = s.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_SLICE_PORTS {
        return Err(FieldError::invalid(
            FieldPath::new("ports"),
            ports.len(),
            format!("must have at most {MAX_SLICE_PORTS} items"),
        ));
    }
    if s.endpoints.len() > MAX_SLICE_ENDPOINTS {
        return Err(FieldError::invalid(
            FieldPath::new("endpoints"),
            s.endpoints.len(),
            format!("must have at most {MAX_SLICE_ENDPOINTS} items"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let path = FieldPath::new("ports").index(i).child("name");
        validate_dns1123_label(name, &path)?;
        if !names.insert(name) {
            return Err(FieldError::duplicate(path, name));
        }
    }
    for (i, (raw, endpoint)) in s.endpoints.iter().zip(&view.endpoints).enumerate() {
        let path = FieldPath::new("endpoints").index(i);
        let addresses_path = path.child("addresses");
        if raw.addresses.is_empty() {
            return Err(FieldError::required(addresses_path));
        }
        for (j, address) in raw.addresses.iter().enumerate() {
            let address_path = addresses_path.index(j);
            let family_ok = match view.address_type {
                AddressType::Fqdn => {
                    validate_dns1123_subdomain(address, &address_path)?;
                    true
                }
                AddressType::IPv4 => endpoint.addresses.get(j).is_some_and(IpAddr::is_ipv4),
                AddressType::IPv6 => endpoint.addresses.get(j).is_some_and(IpAddr::is_ipv6),
            };
            if !family_ok {
                return Err(FieldError::invalid(
                    address_path,
                    address,
                    format!(
                        "must be an {} address, as `addressType` says",
                        s.address_type
                    ),
                ));
            }
        }
        if let Some(node) = &raw.node_name {
            validate_dns1123_subdomain(node, &path.child("nodeName"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, spec: serde_json::Value) -> Object {
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        });
        Object::Service(Box::new(serde_json::from_value(value).expect("a Service")))
    }

    #[test]
    fn a_refused_service_claims_nothing() {
        let config = ClusterConfig::default();
        let mut validator = Validator::new(&config);
        // Refused for its second port; its ClusterIP and first nodePort stay free.
        let refused = service(
            "a",
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.5.5", "ports": [
                {"name": "a", "port": 80, "nodePort": 30080},
                {"name": "b", "port": 81, "nodePort": 30080},
            ]}),
        );
        let err = validator.check(&refused).expect_err("duplicate nodePort");
        assert_eq!(err.path.as_str(), "spec.ports[1].nodePort");
        let taker = service(
            "b",
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.5.5", "ports": [
                {"port": 80, "nodePort": 30080},
            ]}),
        );
        assert_eq!(validator.check(&taker), Ok(()));
        // Now both are taken.
        let late = service(
            "c",
            serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let err = validator.check(&late).expect_err("taken by b");
        assert_eq!(
            err.to_string(),
            r#"spec.ports[0].nodePort: "30080" is already allocated to Service default/b"#
        );
    }
}
