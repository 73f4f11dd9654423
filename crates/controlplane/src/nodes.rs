//! Nodes: the default ones, their InternalIPs, and the node IPAM controller that cuts the
//! cluster CIDRs into per-Node podCIDRs.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netd_model::{ClusterConfig, ClusterState, Kind, NodeName, ObjectId};

use crate::alloc::{CidrBook, Family, IpBook, IpRange, is_block_of, subnet_containing};
use crate::error::{Pool, ResolveError};
use crate::names;

/// The label the kubelet sets to the Node's name.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The label the kubelet sets to the Node's operating system.
const OS_LABEL: &str = "kubernetes.io/os";
/// The label carrying a Node's zone.
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Node being resolved.
#[derive(Debug)]
pub(crate) struct NodeWork {
    pub(crate) obj: core::Node,
    pub(crate) name: NodeName,
    pub(crate) id: ObjectId,
    /// The InternalIPs the input declares.
    declared_ips: Vec<IpAddr>,
    /// The InternalIPs given to a Node that declares none: one per node network (IPv4, then
    /// IPv6 when the cluster has an IPv6 node network).
    allocated_ips: Vec<IpAddr>,
    /// The podCIDRs the input declares.
    declared_cidrs: Vec<IpNet>,
    /// The podCIDRs added for the cluster's families the input did not cover.
    added_cidrs: Vec<IpNet>,
    /// Whether new Pods may be placed here (`spec.unschedulable` is not set).
    pub(crate) schedulable: bool,
}

impl NodeWork {
    /// The Node's InternalIPs once resolved.
    pub(crate) fn internal_ips(&self) -> Vec<IpAddr> {
        if self.declared_ips.is_empty() {
            self.allocated_ips.clone()
        } else {
            self.declared_ips.clone()
        }
    }

    /// The Node's podCIDRs: declared ones first, then allocated ones in cluster-CIDR order.
    pub(crate) fn pod_cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.declared_cidrs.iter().chain(&self.added_cidrs).copied()
    }

    /// The Node's (first) podCIDR of a family.
    pub(crate) fn pod_cidr_of(&self, family: Family) -> Option<IpNet> {
        self.pod_cidrs().find(|c| Family::of_net(c) == family)
    }

    /// The `topology.kubernetes.io/zone` label.
    pub(crate) fn zone(&self) -> Option<&str> {
        self.obj
            .metadata
            .labels
            .as_ref()?
            .get(ZONE_LABEL)
            .map(String::as_str)
    }

    fn has_family(&self, family: Family) -> bool {
        self.pod_cidr_of(family).is_some()
    }

    /// Writes the resolved fields into the object, as the kubelet and the node IPAM
    /// controller would.
    pub(crate) fn finish(mut self) -> core::Node {
        let cidrs: Vec<String> = self.pod_cidrs().map(|c| c.to_string()).collect();
        let name = self.name.to_string();
        let labels = self
            .obj
            .metadata
            .labels
            .get_or_insert_with(Default::default);
        labels
            .entry(HOSTNAME_LABEL.to_owned())
            .or_insert_with(|| name.clone());
        labels
            .entry(OS_LABEL.to_owned())
            .or_insert_with(|| "linux".to_owned());
        let spec = self.obj.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = cidrs.first().cloned();
        spec.pod_cidrs = Some(cidrs).filter(|c| !c.is_empty());
        let status = self.obj.status.get_or_insert_with(Default::default);
        let addresses = status.addresses.get_or_insert_with(Vec::new);
        for (i, ip) in self.allocated_ips.iter().enumerate() {
            addresses.insert(i, address("InternalIP", ip.to_string()));
        }
        if !addresses.iter().any(|a| a.type_ == "Hostname") {
            addresses.push(address("Hostname", name));
        }
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == "Ready") {
            conditions.push(core::NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: Some("KubeletReady".to_owned()),
                message: Some("kubelet is posting ready status".to_owned()),
                ..Default::default()
            });
        }
        self.obj
    }
}

fn address(type_: &str, address: String) -> core::NodeAddress {
    core::NodeAddress {
        type_: type_.to_owned(),
        address,
    }
}

/// The Nodes to resolve, in natural name order: the declared ones, or `node-1`…`node-N`
/// when none is declared.
pub(crate) fn prepare(
    declared: Vec<core::Node>,
    input: &ClusterState,
    config: &ClusterConfig,
) -> Vec<NodeWork> {
    let objs = if declared.is_empty() {
        (1..=config.default_node_count)
            .map(|i| default_node(&format!("node-{i}")))
            .collect()
    } else {
        declared
    };
    let mut nodes: Vec<NodeWork> = objs
        .into_iter()
        .map(|obj| {
            let name = NodeName::new(obj.metadata.name.clone().unwrap_or_default());
            let view = input.node(name.as_str());
            NodeWork {
                id: ObjectId {
                    kind: Kind::Node,
                    namespace: String::new(),
                    name: name.to_string(),
                },
                declared_ips: view.map(|v| v.internal_ips.clone()).unwrap_or_default(),
                allocated_ips: Vec::new(),
                declared_cidrs: view.map(|v| v.pod_cidrs.clone()).unwrap_or_default(),
                added_cidrs: Vec::new(),
                schedulable: !obj
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                name,
                obj,
            }
        })
        .collect();
    nodes.sort_by(|a, b| names::natural_cmp(a.name.as_str(), b.name.as_str()));
    nodes
}

fn default_node(name: &str) -> core::Node {
    core::Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(names::uid("Node", "", name)),
            labels: Some(
                [(HOSTNAME_LABEL, name), (OS_LABEL, "linux")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Claims the InternalIPs and podCIDRs the input declares.
pub(crate) fn claim_declared(
    nodes: &[NodeWork],
    ips: &mut IpBook,
    cidrs: &mut CidrBook,
) -> Result<(), ResolveError> {
    for node in nodes {
        for ip in &node.declared_ips {
            ips.claim(*ip, &node.id)
                .map_err(|owner| ResolveError::AddressInUse {
                    address: *ip,
                    object: node.id.clone(),
                    owner: Box::new(owner),
                })?;
        }
        for cidr in &node.declared_cidrs {
            cidrs
                .claim(*cidr, &node.name)
                .map_err(|owner| ResolveError::PodCidrInUse {
                    cidr: *cidr,
                    node: node.name.clone(),
                    owner,
                })?;
        }
    }
    Ok(())
}

/// Gives every Node a podCIDR of each cluster family it lacks, as the node IPAM controller
/// does: the one it had in `previous`, else the block holding the IPs its declared Pods
/// already have, else the first free block. Each pass runs over all Nodes before the next.
pub(crate) fn assign_pod_cidrs(
    nodes: &mut [NodeWork],
    cidrs: &mut CidrBook,
    config: &ClusterConfig,
    previous: Option<&ClusterState>,
    pod_ips_by_node: &HashMap<&str, Vec<IpAddr>>,
) -> Result<(), ResolveError> {
    let families: Vec<(IpNet, u8)> = config
        .cluster_cidrs
        .iter()
        .map(|c| {
            (
                *c,
                if c.addr().is_ipv4() {
                    config.node_cidr_prefix_v4
                } else {
                    config.node_cidr_prefix_v6
                },
            )
        })
        .collect();
    // Kept from the previous state.
    for node in nodes.iter_mut() {
        let Some(prev) = previous.and_then(|p| p.node(node.name.as_str())) else {
            continue;
        };
        for &(cluster, prefix) in &families {
            if node.has_family(Family::of_net(&cluster)) {
                continue;
            }
            let kept = prev.pod_cidrs.iter().copied().find(|c| {
                is_block_of(cluster, prefix, *c) && cidrs.conflict(c, &node.name).is_none()
            });
            if let Some(c) = kept {
                claim_added(node, cidrs, c);
            }
        }
    }
    // Implied by the IPs of the Pods declared on the Node.
    for node in nodes.iter_mut() {
        let Some(pod_ips) = pod_ips_by_node.get(node.name.as_str()) else {
            continue;
        };
        for &(cluster, prefix) in &families {
            if node.has_family(Family::of_net(&cluster)) {
                continue;
            }
            let hinted = pod_ips
                .iter()
                .filter_map(|ip| subnet_containing(cluster, prefix, *ip))
                .find(|c| cidrs.conflict(c, &node.name).is_none());
            if let Some(c) = hinted {
                claim_added(node, cidrs, c);
            }
        }
    }
    // Fresh.
    for node in nodes.iter_mut() {
        for &(cluster, prefix) in &families {
            if node.has_family(Family::of_net(&cluster)) {
                continue;
            }
            let c = cidrs
                .next_free(cluster, prefix, &node.name)
                .ok_or_else(|| ResolveError::PoolExhausted {
                    pool: Pool::ClusterCidr(cluster),
                    what: node.id.clone(),
                })?;
            node.added_cidrs.push(c);
        }
    }
    Ok(())
}

fn claim_added(node: &mut NodeWork, cidrs: &mut CidrBook, c: IpNet) {
    if cidrs.claim(c, &node.name).is_ok() {
        node.added_cidrs.push(c);
    }
}

/// Keeps the InternalIPs each Node without a declared one had in `previous`, one per node
/// network.
pub(crate) fn keep_previous_ips(
    nodes: &mut [NodeWork],
    ips: &mut IpBook,
    config: &ClusterConfig,
    previous: Option<&ClusterState>,
) {
    let ranges = node_ranges(config);
    for node in nodes.iter_mut().filter(|n| n.declared_ips.is_empty()) {
        let Some(prev) = previous.and_then(|p| p.node(node.name.as_str())) else {
            continue;
        };
        for range in &ranges {
            let kept = prev
                .internal_ips
                .iter()
                .copied()
                .find(|ip| range.contains(*ip) && ips.available_to(*ip, &node.id));
            if let Some(ip) = kept.filter(|ip| ips.claim(*ip, &node.id).is_ok()) {
                node.allocated_ips.push(ip);
            }
        }
    }
}

/// Gives each Node without a declared InternalIP the next free address of each node network
/// it has none of yet, from the network's second host on (the first is the lab's external
/// client). IPv4 comes first, as on a dual-stack kubelet.
pub(crate) fn allocate_ips(
    nodes: &mut [NodeWork],
    ips: &mut IpBook,
    config: &ClusterConfig,
) -> Result<(), ResolveError> {
    let ranges = node_ranges(config);
    for node in nodes.iter_mut().filter(|n| n.declared_ips.is_empty()) {
        for range in &ranges {
            if node.allocated_ips.iter().any(|ip| range.contains(*ip)) {
                continue;
            }
            let ip = ips
                .next_free(range, &node.id)
                .ok_or_else(|| ResolveError::PoolExhausted {
                    pool: Pool::NodeNetwork(range.net()),
                    what: node.id.clone(),
                })?;
            node.allocated_ips.push(ip);
        }
        node.allocated_ips.sort_by_key(|ip| ip.is_ipv6());
    }
    Ok(())
}

/// The node networks, IPv4's first.
fn node_ranges(config: &ClusterConfig) -> Vec<IpRange> {
    std::iter::once(config.node_network)
        .chain(config.node_network_v6)
        .map(|net| IpRange::new(net, 2))
        .collect()
}
