//! [`ClusterState`]: an immutable, indexed snapshot of the cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::ClusterConfig;
use crate::field::{FieldError, FieldPath};
use crate::keys::{
    EndpointSliceRef, NamespaceName, NodeName, PodRef, PolicyRef, Protocol, ServiceRef,
};
use crate::object::{Object, ObjectId};
use crate::selector::{LabelSelector, Labels, NAMESPACE_NAME_LABEL};
use crate::validation::{validate_port_name, validate_port_number};
use crate::view::{
    AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    Namespace, NetworkPolicy, Node, Pod, PolicyPeer, PolicyPort, PolicyRule, PolicyTypes, PortSpec,
    SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Service, ServicePort, ServiceType, TargetPort,
    TrafficPolicy,
};

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An object failed conversion to its typed view.
    #[error("{id}: {source}")]
    InvalidObject {
        /// The object.
        id: ObjectId,
        /// What is wrong with it.
        #[source]
        source: Box<FieldError>,
    },
    /// Two objects share a kind, namespace and name.
    #[error("{id} is defined twice")]
    DuplicateObject {
        /// The object.
        id: ObjectId,
    },
}

/// An immutable snapshot of the cluster: every object, its typed view, and indexes.
///
/// Built once from the resolved objects (after the embedded control plane or an API-server
/// sync); every lookup is a map access. Collections iterate in key order, so everything
/// derived from a snapshot is deterministic.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    config: ClusterConfig,
    objects: BTreeMap<ObjectId, Object>,
    namespaces: BTreeMap<NamespaceName, Namespace>,
    nodes: BTreeMap<NodeName, Node>,
    pods: BTreeMap<PodRef, Pod>,
    services: BTreeMap<ServiceRef, Service>,
    slices: BTreeMap<EndpointSliceRef, EndpointSlice>,
    policies: BTreeMap<PolicyRef, NetworkPolicy>,
    pods_by_ip: HashMap<IpAddr, PodRef>,
    pods_by_node: BTreeMap<NodeName, Vec<PodRef>>,
    slices_by_service: BTreeMap<ServiceRef, Vec<EndpointSliceRef>>,
}

impl ClusterState {
    /// Builds a snapshot from resolved objects. Namespaces that objects live in but that are
    /// not declared are created, as the API server's `default`, `kube-system` and
    /// `kube-public` always exist.
    pub fn new(objects: Vec<Object>, config: ClusterConfig) -> Result<Self, StateError> {
        let mut state = ClusterState {
            config,
            ..Default::default()
        };
        for object in objects {
            let id = object.id();
            if state.objects.insert(id.clone(), object).is_some() {
                return Err(StateError::DuplicateObject { id });
            }
        }
        for (id, object) in &state.objects {
            let err = |source| StateError::InvalidObject {
                id: id.clone(),
                source: Box::new(source),
            };
            match object {
                Object::Namespace(ns) => {
                    let view = namespace_view(id, ns.metadata.labels.as_ref());
                    state.namespaces.insert(view.name.clone(), view);
                }
                Object::Node(n) => {
                    let view = node_view(id, n).map_err(err)?;
                    state.nodes.insert(view.name.clone(), view);
                }
                Object::Pod(p) => {
                    let view = pod_view(id, p).map_err(err)?;
                    state.pods.insert(view.key.clone(), view);
                }
                Object::Service(s) => {
                    let view = service_view(id, s).map_err(err)?;
                    state.services.insert(view.key.clone(), view);
                }
                Object::EndpointSlice(s) => {
                    let view = slice_view(id, s).map_err(err)?;
                    state.slices.insert(view.key.clone(), view);
                }
                Object::NetworkPolicy(p) => {
                    let view = policy_view(id, p).map_err(err)?;
                    state.policies.insert(view.key.clone(), view);
                }
                Object::Deployment(_) => {}
            }
        }
        let implied: Vec<ObjectId> = ["default", "kube-system", "kube-public"]
            .into_iter()
            .map(str::to_owned)
            .chain(state.objects.keys().map(|id| id.namespace.clone()))
            .filter(|ns| !ns.is_empty() && !state.namespaces.contains_key(ns.as_str()))
            .map(|ns| ObjectId {
                kind: crate::object::Kind::Namespace,
                namespace: String::new(),
                name: ns,
            })
            .collect();
        for id in implied {
            let view = namespace_view(&id, None);
            state.namespaces.insert(view.name.clone(), view);
        }
        state.index();
        Ok(state)
    }

    fn index(&mut self) {
        for pod in self.pods.values() {
            if let Some(node) = &pod.node {
                self.pods_by_node
                    .entry(node.clone())
                    .or_default()
                    .push(pod.key.clone());
            }
            if !pod.host_network {
                for ip in &pod.ips {
                    self.pods_by_ip.insert(*ip, pod.key.clone());
                }
            }
        }
        for slice in self.slices.values() {
            if let Some(svc) = &slice.service {
                self.slices_by_service
                    .entry(svc.clone())
                    .or_default()
                    .push(slice.key.clone());
            }
        }
    }

    /// The network settings this snapshot was built with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Every object, in canonical order (kind, namespace, name). Namespaces created
    /// implicitly have no object here.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    /// One object by identity.
    pub fn object(&self, id: &ObjectId) -> Option<&Object> {
        self.objects.get(id)
    }

    /// A Namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Every Namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// The Namespaces whose labels match `selector`.
    pub fn namespaces_matching<'a>(
        &'a self,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Namespace> + 'a {
        self.namespaces
            .values()
            .filter(move |ns| selector.matches(&ns.labels))
    }

    /// A Node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The Node that owns `ip` as an InternalIP.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.internal_ips.contains(&ip))
    }

    /// A Pod by key.
    pub fn pod(&self, key: &PodRef) -> Option<&Pod> {
        self.pods.get(key)
    }

    /// Every Pod, by key.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The Pods of one namespace, by name.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let start = PodRef::new(namespace, "");
        self.pods
            .range(start..)
            .map(|(_, p)| p)
            .take_while(move |p| p.key.namespace.as_str() == namespace)
    }

    /// The Pods scheduled on a Node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// The Pod (not hostNetwork) that owns `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods_by_ip.get(&ip).and_then(|k| self.pods.get(k))
    }

    /// The Pods of `namespace` whose labels match `selector`.
    pub fn pods_matching<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_in(namespace)
            .filter(move |p| selector.matches(&p.labels))
    }

    /// A Service by key.
    pub fn service(&self, key: &ServiceRef) -> Option<&Service> {
        self.services.get(key)
    }

    /// Every Service, by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// An EndpointSlice by key.
    pub fn endpoint_slice(&self, key: &EndpointSliceRef) -> Option<&EndpointSlice> {
        self.slices.get(key)
    }

    /// Every EndpointSlice, by key.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    /// The EndpointSlices of a Service, by name.
    pub fn endpoint_slices_for<'a>(
        &'a self,
        service: &ServiceRef,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// A NetworkPolicy by key.
    pub fn policy(&self, key: &PolicyRef) -> Option<&NetworkPolicy> {
        self.policies.get(key)
    }

    /// Every NetworkPolicy, by key.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values()
    }

    /// The NetworkPolicies of one namespace, by name.
    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.policies
            .values()
            .filter(move |p| p.key.namespace.as_str() == namespace)
    }
}

fn namespace_view(id: &ObjectId, labels: Option<&BTreeMap<String, String>>) -> Namespace {
    let mut labels: Labels = labels.cloned().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), id.name.clone());
    Namespace {
        name: NamespaceName::new(&id.name),
        labels,
    }
}

fn parse_ip(s: &str, path: FieldPath) -> Result<IpAddr, FieldError> {
    IpAddr::from_str(s).map_err(|_| FieldError::invalid(path, s, "must be a valid IP address"))
}

fn parse_cidr(s: &str, path: FieldPath) -> Result<IpNet, FieldError> {
    IpNet::from_str(s).map_err(|_| FieldError::invalid(path, s, "must be a valid CIDR"))
}

fn parse_protocol(p: Option<&String>, path: FieldPath) -> Result<Protocol, FieldError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_str(s)
            .ok()
            .filter(|p| p.as_api_str() == s)
            .ok_or_else(|| FieldError::not_supported(path, s, &["TCP", "UDP", "SCTP"])),
    }
}

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

pub(crate) fn node_view(id: &ObjectId, n: &core::Node) -> Result<Node, FieldError> {
    let labels = labels_of(&n.metadata);
    let mut internal_ips = Vec::new();
    let status = n.status.as_ref();
    for (i, a) in status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if a.type_ == "InternalIP" {
            let path = FieldPath::new("status.addresses").index(i).child("address");
            internal_ips.push(parse_ip(&a.address, path)?);
        }
    }
    let spec = n.spec.as_ref();
    let mut pod_cidrs = Vec::new();
    if let Some(cidrs) = spec.and_then(|s| s.pod_cidrs.as_ref()) {
        for (i, c) in cidrs.iter().enumerate() {
            pod_cidrs.push(parse_cidr(c, FieldPath::new("spec.podCIDRs").index(i))?);
        }
    } else if let Some(c) = spec.and_then(|s| s.pod_cidr.as_ref()) {
        pod_cidrs.push(parse_cidr(c, FieldPath::new("spec.podCIDR"))?);
    }
    let zone = labels.get("topology.kubernetes.io/zone").cloned();
    Ok(Node {
        name: NodeName::new(&id.name),
        labels,
        internal_ips,
        pod_cidrs,
        zone,
    })
}

pub(crate) fn pod_view(id: &ObjectId, p: &core::Pod) -> Result<Pod, FieldError> {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ports = Vec::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let path = FieldPath::new("spec.containers")
                .index(ci)
                .child("ports")
                .index(pi);
            ports.push(ContainerPort {
                name: cp.name.clone(),
                port: validate_port_number(cp.container_port, &path.child("containerPort"))?,
                protocol: parse_protocol(cp.protocol.as_ref(), path.child("protocol"))?,
            });
        }
    }
    let mut ips = Vec::new();
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
        for (i, a) in list.iter().enumerate() {
            ips.push(parse_ip(
                &a.ip,
                FieldPath::new("status.podIPs").index(i).child("ip"),
            )?);
        }
    } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()) {
        ips.push(parse_ip(ip, FieldPath::new("status.podIP"))?);
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    Ok(Pod {
        key: PodRef::new(&id.namespace, &id.name),
        labels: labels_of(&p.metadata),
        node: spec.and_then(|s| s.node_name.as_deref()).map(NodeName::new),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
        hostname: spec.and_then(|s| s.hostname.clone()),
        subdomain: spec.and_then(|s| s.subdomain.clone()),
    })
}

fn traffic_policy(v: Option<&String>, path: FieldPath) -> Result<TrafficPolicy, FieldError> {
    match v.map(String::as_str) {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(FieldError::not_supported(
            path,
            other,
            &["Cluster", "Local"],
        )),
    }
}

pub(crate) fn service_view(id: &ObjectId, s: &core::Service) -> Result<Service, FieldError> {
    let default_spec = core::ServiceSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&default_spec);
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(FieldError::not_supported(
                FieldPath::new("spec.type"),
                other,
                &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
            ));
        }
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips = Vec::new();
    if service_type != ServiceType::ExternalName && !headless {
        match &spec.cluster_ips {
            Some(list) if !list.is_empty() => {
                for (i, ip) in list.iter().enumerate() {
                    cluster_ips.push(parse_ip(ip, FieldPath::new("spec.clusterIPs").index(i))?);
                }
            }
            _ => {
                if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
                    cluster_ips.push(parse_ip(ip, FieldPath::new("spec.clusterIP"))?);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.ports").index(i);
        let port = validate_port_number(p.port, &path.child("port"))?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(validate_port_number(*n, &path.child("targetPort"))?)
            }
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => TargetPort::Number(validate_port_number(n, &path.child("targetPort"))?),
                Err(_) => {
                    validate_port_name(name, &path.child("targetPort"))?;
                    TargetPort::Name(name.clone())
                }
            },
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(validate_port_number(n, &path.child("nodePort"))?),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(p.protocol.as_ref(), path.child("protocol"))?,
            port,
            target_port,
            node_port,
        });
    }
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(parse_ip(ip, FieldPath::new("spec.externalIPs").index(i))?);
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            let path = FieldPath::new("status.loadBalancer.ingress")
                .index(i)
                .child("ip");
            load_balancer_ips.push(parse_ip(ip, path)?);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, c) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let path = FieldPath::new("spec.loadBalancerSourceRanges").index(i);
        load_balancer_source_ranges.push(parse_cidr(c.trim(), path)?);
    }
    let external_traffic_policy = if matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !external_ips.is_empty()
    {
        traffic_policy(
            spec.external_traffic_policy.as_ref(),
            FieldPath::new("spec.externalTrafficPolicy"),
        )?
    } else {
        TrafficPolicy::Cluster
    };
    let internal_traffic_policy = traffic_policy(
        spec.internal_traffic_policy.as_ref(),
        FieldPath::new("spec.internalTrafficPolicy"),
    )?;
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Some(
                u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=86400).contains(t))
                    .ok_or_else(|| {
                        FieldError::invalid(
                            FieldPath::new("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                            t,
                            "must be between 1 and 86400, inclusive",
                        )
                    })?,
            )
        }
        Some(other) => {
            return Err(FieldError::not_supported(
                FieldPath::new("spec.sessionAffinity"),
                other,
                &["ClientIP", "None"],
            ));
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) => Some(validate_port_number(
            n,
            &FieldPath::new("spec.healthCheckNodePort"),
        )?),
    };
    let labels = labels_of(&s.metadata);
    Ok(Service {
        key: ServiceRef::new(&id.namespace, &id.name),
        proxy_name: labels.get(SERVICE_PROXY_NAME_LABEL).cloned(),
        labels,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        service_type,
        cluster_ips,
        headless,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        external_traffic_policy,
        internal_traffic_policy,
        session_affinity_timeout,
        health_check_node_port,
        external_name: spec.external_name.clone(),
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        traffic_distribution: spec.traffic_distribution.clone(),
    })
}

pub(crate) fn slice_view(
    id: &ObjectId,
    s: &discovery::EndpointSlice,
) -> Result<EndpointSlice, FieldError> {
    let address_type = match s.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => {
            return Err(FieldError::not_supported(
                FieldPath::new("addressType"),
                other,
                &["IPv4", "IPv6", "FQDN"],
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let path = FieldPath::new("ports").index(i);
        let Some(port) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(p.protocol.as_ref(), path.child("protocol"))?,
            port: validate_port_number(port, &path.child("port"))?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        let path = FieldPath::new("endpoints").index(i);
        let mut addresses = Vec::new();
        if address_type != AddressType::Fqdn {
            for (j, a) in e.addresses.iter().enumerate() {
                addresses.push(parse_ip(a, path.child("addresses").index(j))?);
            }
        }
        let c = e.conditions.clone().unwrap_or_default();
        let hints = e.hints.as_ref();
        endpoints.push(Endpoint {
            addresses,
            conditions: EndpointConditions {
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
            },
            hostname: e.hostname.clone(),
            node: e.node_name.as_deref().map(NodeName::new),
            zone: e.zone.clone(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|zs| zs.iter().map(|z| z.name.clone()).collect()),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|ns| ns.iter().map(|n| n.name.clone()).collect()),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(PodRef::new(
                        r.namespace.as_deref().unwrap_or(&id.namespace),
                        r.name.as_deref()?,
                    ))
                }),
        });
    }
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|name| ServiceRef::new(&id.namespace, name));
    Ok(EndpointSlice {
        key: EndpointSliceRef::new(&id.namespace, &id.name),
        service,
        address_type,
        ports,
        endpoints,
    })
}

pub(crate) fn policy_view(
    id: &ObjectId,
    p: &networking::NetworkPolicy,
) -> Result<NetworkPolicy, FieldError> {
    let default_spec = networking::NetworkPolicySpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(s) => LabelSelector::from_api(s, &FieldPath::new("spec.podSelector"))?,
        None => LabelSelector::everything(),
    };
    let policy_types = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut t = PolicyTypes::default();
            for (i, ty) in types.iter().enumerate() {
                match ty.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return Err(FieldError::not_supported(
                            FieldPath::new("spec.policyTypes").index(i),
                            other,
                            &["Ingress", "Egress"],
                        ));
                    }
                }
            }
            t
        }
        _ => PolicyTypes {
            ingress: true,
            egress: spec.egress.is_some(),
        },
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.ingress").index(i);
        ingress.push(policy_rule(
            r.from.as_deref(),
            r.ports.as_deref(),
            &path,
            "from",
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.egress").index(i);
        egress.push(policy_rule(
            r.to.as_deref(),
            r.ports.as_deref(),
            &path,
            "to",
        )?);
    }
    Ok(NetworkPolicy {
        key: PolicyRef::new(&id.namespace, &id.name),
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn policy_rule(
    peers: Option<&[networking::NetworkPolicyPeer]>,
    ports: Option<&[networking::NetworkPolicyPort]>,
    path: &FieldPath,
    peers_field: &str,
) -> Result<PolicyRule, FieldError> {
    let mut rule = PolicyRule {
        peers: Vec::new(),
        ports: Vec::new(),
    };
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let path = path.child(peers_field).index(i);
        if let Some(block) = &peer.ip_block {
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                return Err(FieldError::forbidden(
                    path,
                    "may not specify more than 1 peer type (ipBlock with a selector)",
                ));
            }
            let cidr = parse_cidr(&block.cidr, path.child("ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (j, e) in block.except.iter().flatten().enumerate() {
                let epath = path.child("ipBlock.except").index(j);
                let net = parse_cidr(e, epath.clone())?;
                if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() && net != cidr {
                    return Err(FieldError::invalid(
                        epath,
                        e,
                        "must be a strict subset of `cidr`",
                    ));
                }
                except.push(net);
            }
            rule.peers.push(PolicyPeer::IpBlock { cidr, except });
            continue;
        }
        let namespace_selector = peer
            .namespace_selector
            .as_ref()
            .map(|s| LabelSelector::from_api(s, &path.child("namespaceSelector")))
            .transpose()?;
        let pod_selector = peer
            .pod_selector
            .as_ref()
            .map(|s| LabelSelector::from_api(s, &path.child("podSelector")))
            .transpose()?;
        if namespace_selector.is_none() && pod_selector.is_none() {
            return Err(FieldError::required(path).forbid_empty_peer());
        }
        rule.peers.push(PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        });
    }
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let path = path.child("ports").index(i);
        let protocol = parse_protocol(p.protocol.as_ref(), path.child("protocol"))?;
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortSpec::Number(validate_port_number(
                *n,
                &path.child("port"),
            )?)),
            Some(IntOrString::String(s)) => {
                validate_port_name(s, &path.child("port"))?;
                Some(PortSpec::Name(s.clone()))
            }
        };
        let end_port = match p.end_port {
            None => None,
            Some(end) => {
                let epath = path.child("endPort");
                let Some(PortSpec::Number(start)) = port else {
                    return Err(FieldError::forbidden(
                        epath,
                        "may not be specified when `port` is unset or a named port",
                    ));
                };
                let end = validate_port_number(end, &epath)?;
                if end < start {
                    return Err(FieldError::invalid(
                        epath,
                        end,
                        "must be greater than or equal to `port`",
                    ));
                }
                Some(end)
            }
        };
        rule.ports.push(PolicyPort {
            protocol,
            port,
            end_port,
        });
    }
    Ok(rule)
}

impl FieldError {
    fn forbid_empty_peer(self) -> Self {
        FieldError::forbidden(
            self.path,
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        )
    }
}
