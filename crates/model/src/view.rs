//! Validated, typed views of the objects, built once when a [`crate::ClusterState`] is made.
//!
//! Consumers (policy, proxy, DNS, lab) read these instead of the raw API types: addresses are
//! parsed, defaults are applied, and selectors are validated, so no one re-checks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::keys::{
    EndpointSliceRef, NamespaceName, NodeName, PodRef, PolicyRef, Protocol, ServicePortName,
    ServiceRef,
};
use crate::selector::{LabelSelector, Labels};

/// A Namespace. Its labels include the automatic `kubernetes.io/metadata.name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// The name.
    pub name: NamespaceName,
    /// The labels, with the automatic name label.
    pub labels: Labels,
}

/// A Node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The name.
    pub name: NodeName,
    /// The labels.
    pub labels: Labels,
    /// The node's InternalIP addresses (one per family).
    pub internal_ips: Vec<IpAddr>,
    /// The node's pod ranges (one per family).
    pub pod_cidrs: Vec<IpNet>,
    /// The `topology.kubernetes.io/zone` label, if set.
    pub zone: Option<String>,
    /// Whether it is being deleted (it has a `deletionTimestamp`).
    pub terminating: bool,
    /// The keys of its taints, in the order given.
    pub taints: Vec<String>,
}

/// A container port a Pod declares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ContainerPort {
    /// The port's name, if it has one.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// A Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// Namespace and name.
    pub key: PodRef,
    /// The labels.
    pub labels: Labels,
    /// The Node it runs on, once scheduled.
    pub node: Option<NodeName>,
    /// Its IPs (one per family); a hostNetwork Pod has its Node's.
    pub ips: Vec<IpAddr>,
    /// Whether it shares its Node's network namespace.
    pub host_network: bool,
    /// The ports its containers declare, in declaration order.
    pub ports: Vec<ContainerPort>,
    /// Whether its Ready condition holds (true when the status says nothing).
    pub ready: bool,
    /// Whether it is being deleted (it has a `deletionTimestamp`).
    pub terminating: bool,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
}

impl Pod {
    /// The number of the container port called `name` with this protocol, if any.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }

    /// The Pod's IP of the same family as `like`.
    pub fn ip_of_family(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ServiceType {
    /// `ClusterIP`, the default.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName`.
    ExternalName,
}

impl ServiceType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on the receiving Node.
    Local,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per Pod.
    Name(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// The name; empty only when the Service has a single port.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port on the ClusterIP, external IPs and load-balancer IPs.
    pub port: u16,
    /// Where traffic goes on the endpoint (defaults to `port`).
    pub target_port: TargetPort,
    /// The nodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// The label by which a Service asks to be handled by another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Namespace and name.
    pub key: ServiceRef,
    /// The labels.
    pub labels: Labels,
    /// `spec.selector`; `None` for a Service without a selector (its EndpointSlices are given).
    pub selector: Option<Labels>,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// The ClusterIPs, one per family; empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy` (Cluster unless set to Local on an external Service).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// With `sessionAffinity: ClientIP`, the affinity timeout in seconds.
    pub session_affinity_timeout: Option<u32>,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.externalName`, for ExternalName Services.
    pub external_name: Option<String>,
    /// `spec.publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// The `service.kubernetes.io/service-proxy-name` label: another proxy's Service.
    pub proxy_name: Option<String>,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<String>,
}

impl Service {
    /// kube-proxy's name for one of this Service's ports.
    pub fn port_name(&self, port: &ServicePort) -> ServicePortName {
        ServicePortName {
            service: self.key.clone(),
            port: port.name.clone(),
            protocol: port.protocol,
        }
    }

    /// Whether traffic can reach it from outside the cluster: it has a nodePort, an external
    /// IP or a load-balancer IP.
    pub fn is_externally_accessible(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AddressType {
    /// IPv4 addresses.
    IPv4,
    /// IPv6 addresses.
    IPv6,
    /// Domain names (ignored by the proxy).
    Fqdn,
}

/// A port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EndpointPort {
    /// The name, matching the Service port's name.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port number on the endpoints.
    pub port: u16,
}

/// Endpoint conditions, with upstream's defaults applied: `ready` and `serving` default to
/// true, `terminating` to false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EndpointConditions {
    /// Ready for new traffic.
    pub ready: bool,
    /// Serving, whether or not terminating.
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The addresses (for IP slices, one address).
    pub addresses: Vec<IpAddr>,
    /// The conditions.
    pub conditions: EndpointConditions,
    /// `hostname`, for DNS.
    pub hostname: Option<String>,
    /// The Node it runs on.
    pub node: Option<NodeName>,
    /// Its zone.
    pub zone: Option<String>,
    /// `hints.forZones`, if set.
    pub zone_hints: Option<Vec<String>>,
    /// `hints.forNodes`, if set.
    pub node_hints: Option<Vec<String>>,
    /// The Pod behind it, if any.
    pub pod: Option<PodRef>,
}

/// The annotation the EndpointSlice controller sets to when the change a slice reflects was
/// triggered; kube-proxy measures network programming latency from it.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub key: EndpointSliceRef,
    /// The Service it belongs to (from the `kubernetes.io/service-name` label).
    pub service: Option<ServiceRef>,
    /// The address type.
    pub address_type: AddressType,
    /// The ports.
    pub ports: Vec<EndpointPort>,
    /// The endpoints. IP addresses are parsed; FQDN slices keep none.
    pub endpoints: Vec<Endpoint>,
    /// The [`LAST_CHANGE_TRIGGER_TIME`] annotation as given (RFC 3339 when the controller
    /// set it; it is read, not validated, as kube-proxy ignores one it cannot parse).
    pub trigger_time: Option<String>,
}

/// Which directions a NetworkPolicy isolates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyTypes {
    /// `Ingress` is listed (or implied).
    pub ingress: bool,
    /// `Egress` is listed (or implied by `spec.egress`).
    pub egress: bool,
}

/// A NetworkPolicy port: protocol, optional port or port name, optional end of range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyPort {
    /// The protocol (TCP when unset).
    pub protocol: Protocol,
    /// The port; `None` matches every port of the protocol.
    pub port: Option<PortSpec>,
    /// The last port of a range starting at a numeric `port`.
    pub end_port: Option<u16>,
}

/// A port given by number or by container port name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PortSpec {
    /// A number.
    Number(u16),
    /// A named container port of the destination Pod.
    Name(String),
}

/// A NetworkPolicy peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyPeer {
    /// Pods: with only `pod_selector`, in the policy's namespace; with `namespace_selector`,
    /// in matching namespaces (all pods there when `pod_selector` is `None`).
    Pods {
        /// `namespaceSelector`.
        namespace_selector: Option<LabelSelector>,
        /// `podSelector`.
        pod_selector: Option<LabelSelector>,
    },
    /// `ipBlock`.
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Sub-blocks excluded from it.
        except: Vec<IpNet>,
    },
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRule {
    /// `from` / `to`; empty means every peer.
    pub peers: Vec<PolicyPeer>,
    /// `ports`; empty means every port.
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    /// Namespace and name.
    pub key: PolicyRef,
    /// The Pods it selects, in its namespace.
    pub pod_selector: LabelSelector,
    /// The directions it isolates, defaults applied.
    pub policy_types: PolicyTypes,
    /// Ingress rules.
    pub ingress: Vec<PolicyRule>,
    /// Egress rules.
    pub egress: Vec<PolicyRule>,
}
