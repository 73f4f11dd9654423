//! # netd-controlplane: the embedded control plane
//!
//! Without a cluster, kube-netd computes the state a cluster would have from the desired
//! objects, as a pure function: [`resolve`] takes the manifests' objects and returns the
//! [`ClusterState`] the API server and its controllers would converge to. No I/O, no clock,
//! no randomness: the same input gives the same state, and names that upstream draws at
//! random are derived from content.
//!
//! What it does, in order (each a module):
//!
//! - `nodes`: `node-1`…`node-N` when no Node is declared; InternalIPs from the node network
//!   (the first host is the lab's external client); the node IPAM controller cutting the
//!   cluster CIDRs into per-Node podCIDRs.
//! - `deployments`: Deployments expand into Pods named `<deployment>-<pod-template-hash>-<suffix>`.
//! - `pods`: the scheduler (least-loaded Node), Pod IPs from the Node's podCIDR (hostNetwork
//!   Pods get the Node's), and the status a kubelet reports.
//! - `services`: IP families, ClusterIPs, nodePorts, healthCheckNodePorts and load-balancer
//!   ingress IPs, as the API server and a MetalLB-style controller assign them.
//! - `endpointslices`: upstream's EndpointSlice controller.
//! - `alloc`: the books of addresses, podCIDRs and ports, shared by all of the above.
//! - [`addons`]: what every cluster has without a manifest declaring it (the cluster DNS),
//!   added by [`with_addons`] before resolving, by the offline commands and the lab alike.
//! - `views`: what upstream keeps and kube-netd derives only for reading ([`replica_sets`],
//!   [`endpoints`]).
//!
//! Allocations are sticky: given the previously resolved state, every object keeps what it
//! was given (a Pod its Node and IP, a Service its ClusterIP, nodePorts and load-balancer IP,
//! a Node its IP and podCIDR), so applying more objects to a running lab renumbers nothing.
//! Values run in three passes over all objects — declared, kept, fresh — so a fresh value
//! never takes one that is declared or kept, and no address or port is handed out twice.

pub mod addons;
mod alloc;
mod deployments;
mod endpointslices;
mod error;
mod names;
mod nodes;
mod pods;
mod resolver;
mod services;
mod views;

use netd_model::{ClusterConfig, ClusterState, Object};

pub use addons::with_addons;
pub use deployments::POD_TEMPLATE_HASH_LABEL;
pub use endpointslices::{CONTROLLER_NAME, MANAGED_BY_LABEL, MAX_ENDPOINTS_PER_SLICE};
pub use error::{Pool, ResolveError};
pub use views::{endpoints, replica_sets};

/// Computes the state a cluster would reach from the `desired` objects.
///
/// `previous` is the last state this function returned for the same cluster (or `None` the
/// first time); allocations in it are kept where still valid. Declared values (a Pod's
/// `nodeName` and `podIP`, a Service's `clusterIP` and `nodePort`s, a Node's `podCIDRs`)
/// always win.
///
/// ```no_run
/// # fn objects() -> Vec<netd_model::Object> { Vec::new() }
/// let config = netd_model::ClusterConfig::default();
/// let first = netd_controlplane::resolve(objects(), &config, None)?;
/// let again = netd_controlplane::resolve(objects(), &config, Some(&first))?;
/// assert_eq!(first.pods().count(), again.pods().count());
/// # Ok::<(), netd_controlplane::ResolveError>(())
/// ```
pub fn resolve(
    desired: Vec<Object>,
    config: &ClusterConfig,
    previous: Option<&ClusterState>,
) -> Result<ClusterState, ResolveError> {
    resolver::run(desired, config, previous)
}
