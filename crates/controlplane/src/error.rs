//! Why the control plane could not resolve a set of desired objects.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use netd_model::{DeploymentRef, FieldError, NodeName, ObjectId, PodRef, ServiceRef, StateError};

/// A range the control plane hands out addresses or ports from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pool {
    /// `ClusterConfig::node_network` or `node_network_v6`: Node InternalIPs.
    NodeNetwork(IpNet),
    /// One of `ClusterConfig::cluster_cidrs`, cut into per-Node podCIDRs.
    ClusterCidr(IpNet),
    /// A Node's podCIDR: its Pods' IPs.
    PodCidr {
        /// The Node.
        node: NodeName,
        /// Its podCIDR.
        cidr: IpNet,
    },
    /// One of `ClusterConfig::service_cidrs`: ClusterIPs.
    ServiceCidr(IpNet),
    /// `ClusterConfig::node_port_range`: nodePorts and healthCheckNodePorts.
    NodePorts(RangeInclusive<u16>),
    /// `ClusterConfig::load_balancer_pool`: load-balancer ingress IPs.
    LoadBalancer(IpNet),
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pool::NodeNetwork(net) => write!(f, "node network {net}"),
            Pool::ClusterCidr(net) => write!(f, "cluster CIDR {net}"),
            Pool::PodCidr { node, cidr } => write!(f, "podCIDR {cidr} of node {node}"),
            Pool::ServiceCidr(net) => write!(f, "service CIDR {net}"),
            Pool::NodePorts(range) => {
                write!(f, "nodePort range {}-{}", range.start(), range.end())
            }
            Pool::LoadBalancer(net) => write!(f, "load-balancer pool {net}"),
        }
    }
}

/// Why [`crate::resolve`] failed. Each variant names what could not be done, and for whom.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The desired objects do not form a valid cluster (a malformed field, a duplicate).
    #[error("reading the desired objects")]
    InvalidInput(#[source] Box<StateError>),
    /// A Deployment could not be expanded into Pods.
    #[error("expanding deployment {deployment}")]
    ExpandDeploymentFailed {
        /// The Deployment.
        deployment: DeploymentRef,
        /// What is wrong with it.
        #[source]
        source: Box<FieldError>,
    },
    /// A Pod generated for a Deployment has the name of a Pod given in the input.
    #[error("pod {pod} of deployment {deployment} has the name of a declared pod")]
    PodNameTaken {
        /// The Pod name both would have.
        pod: PodRef,
        /// The Deployment that generated it.
        deployment: DeploymentRef,
    },
    /// A Pod is bound (`spec.nodeName`) to a Node that does not exist.
    #[error("pod {pod} is bound to node {node}, which does not exist")]
    UnknownNode {
        /// The Pod.
        pod: PodRef,
        /// The missing Node.
        node: NodeName,
    },
    /// A pool has no free address or port left.
    #[error("no free value left in {pool} for {what}")]
    PoolExhausted {
        /// The pool.
        pool: Pool,
        /// The object that needed one.
        what: ObjectId,
    },
    /// An object declares an address another object already holds.
    #[error("{object} declares {address}, which {owner} already holds")]
    AddressInUse {
        /// The address.
        address: IpAddr,
        /// The object declaring it.
        object: ObjectId,
        /// The object holding it.
        owner: Box<ObjectId>,
    },
    /// A Node declares a podCIDR overlapping another Node's.
    #[error("node {node} declares podCIDR {cidr}, which overlaps the podCIDR of node {owner}")]
    PodCidrInUse {
        /// The overlapping range.
        cidr: IpNet,
        /// The Node declaring it.
        node: NodeName,
        /// The Node holding an overlapping range.
        owner: NodeName,
    },
    /// A Service declares a nodePort another Service already holds.
    #[error("service {service} declares nodePort {port}, which service {owner} already holds")]
    NodePortInUse {
        /// The port.
        port: u16,
        /// The Service declaring it.
        service: ServiceRef,
        /// The Service holding it.
        owner: ServiceRef,
    },
    /// A Service's `ipFamilies`, `ipFamilyPolicy` and `clusterIPs` cannot be satisfied, as the
    /// API server would refuse them.
    #[error("assigning IP families to service {service}")]
    IpFamiliesRejected {
        /// The Service.
        service: ServiceRef,
        /// The field at fault.
        #[source]
        source: Box<FieldError>,
    },
    /// The resolved objects did not form a valid snapshot (for example a Deployment template
    /// with an invalid container port).
    #[error("building the resolved cluster state")]
    BuildStateFailed(#[source] Box<StateError>),
}
