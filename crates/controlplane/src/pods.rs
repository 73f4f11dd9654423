//! Pods: the scheduler, Pod IPs from the Node's podCIDR, and the status a kubelet reports.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use netd_model::view::ContainerPort;
use netd_model::{ClusterState, Kind, NodeName, ObjectId, PodRef, Protocol};

use crate::alloc::{Family, IpBook, IpRange};
use crate::error::{Pool, ResolveError};
use crate::nodes::NodeWork;

/// A Pod being resolved.
#[derive(Debug)]
pub(crate) struct PodWork {
    pub(crate) obj: Box<core::Pod>,
    pub(crate) key: PodRef,
    pub(crate) id: ObjectId,
    /// The index of the Deployment that made it, among the input's Deployments.
    pub(crate) deployment: Option<usize>,
    /// The IPs its status declares.
    pub(crate) declared_ips: Vec<IpAddr>,
    host_network: bool,
    /// Its Node, as an index into the resolved Nodes.
    pub(crate) node: Option<usize>,
    /// One slot per podCIDR family of its Node, in the Node's order.
    slots: Vec<(IpNet, Option<IpAddr>)>,
    /// Its IPs once finished (the Node's for a hostNetwork Pod).
    pub(crate) ips: Vec<IpAddr>,
    /// Whether its Ready condition holds once finished.
    pub(crate) ready: bool,
}

impl PodWork {
    /// A Pod from the input (with the IPs its status declares) or made for a Deployment.
    pub(crate) fn new(
        obj: Box<core::Pod>,
        declared_ips: Vec<IpAddr>,
        deployment: Option<usize>,
    ) -> Self {
        let namespace = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = obj.metadata.name.clone().unwrap_or_default();
        Self {
            key: PodRef::new(&namespace, &name),
            id: ObjectId {
                kind: Kind::Pod,
                namespace,
                name,
            },
            host_network: obj
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            obj,
            deployment,
            declared_ips,
            node: None,
            slots: Vec::new(),
            ips: Vec::new(),
            ready: false,
        }
    }

    fn declared_node(&self) -> Option<&str> {
        self.obj
            .spec
            .as_ref()?
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// The Node the input binds it to and the IPs it declares, for the node IPAM hint.
    pub(crate) fn declared_placement(&self) -> Option<(&str, &[IpAddr])> {
        Some((self.declared_node()?, &self.declared_ips))
    }

    /// Whether it is being deleted.
    pub(crate) fn terminating(&self) -> bool {
        self.obj.metadata.deletion_timestamp.is_some()
    }

    /// Whether it has finished for good (phase Succeeded or Failed).
    pub(crate) fn terminal(&self) -> bool {
        let phase = self.obj.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
    }

    /// The labels.
    pub(crate) fn labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.obj.metadata.labels.as_ref()
    }

    /// The container ports, in declaration order (malformed ones are left for the final
    /// snapshot to reject).
    pub(crate) fn container_ports(&self) -> Vec<ContainerPort> {
        let containers = self
            .obj
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(ContainerPort {
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok().filter(|n| *n != 0)?,
                    protocol: p
                        .protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .parse::<Protocol>()
                        .ok()?,
                })
            })
            .collect()
    }

    /// `spec.hostname` and `spec.subdomain`.
    pub(crate) fn hostname_and_subdomain(&self) -> (Option<&str>, Option<&str>) {
        let spec = self.obj.spec.as_ref();
        (
            spec.and_then(|s| s.hostname.as_deref())
                .filter(|h| !h.is_empty()),
            spec.and_then(|s| s.subdomain.as_deref())
                .filter(|s| !s.is_empty()),
        )
    }

    /// Writes the resolved fields into the object, as the scheduler and the kubelet would.
    pub(crate) fn finish(&mut self, nodes: &[NodeWork]) {
        let node = self.node.map(|i| &nodes[i]);
        let host_ips = node.map(NodeWork::internal_ips).unwrap_or_default();
        self.ips = if self.host_network {
            host_ips.clone()
        } else {
            self.slots.iter().filter_map(|(_, ip)| *ip).collect()
        };
        let spec = self.obj.spec.get_or_insert_with(Default::default);
        if let Some(n) = node {
            spec.node_name = Some(n.name.to_string());
        }
        let containers: Vec<(String, String)> = spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect();
        let status = self.obj.status.get_or_insert_with(Default::default);
        let phase = status
            .phase
            .get_or_insert_with(|| if node.is_some() { "Running" } else { "Pending" }.to_owned())
            .clone();
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let declared_ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone());
        let ready = declared_ready.unwrap_or_else(|| truth(node.is_some() && phase == "Running"));
        let scheduled = truth(node.is_some());
        for (type_, value) in [
            ("PodScheduled", scheduled.clone()),
            ("Initialized", scheduled),
            ("ContainersReady", ready.clone()),
            ("Ready", ready.clone()),
        ] {
            if !conditions.iter().any(|c| c.type_ == type_) {
                let unschedulable = type_ == "PodScheduled" && value == "False";
                conditions.push(core::PodCondition {
                    type_: type_.to_owned(),
                    status: value,
                    reason: unschedulable.then(|| "Unschedulable".to_owned()),
                    ..Default::default()
                });
            }
        }
        self.ready = ready == "True";
        if status.container_statuses.is_none() && node.is_some() {
            let running = phase == "Running";
            status.container_statuses = Some(
                containers
                    .into_iter()
                    .map(|(name, image)| core::ContainerStatus {
                        name,
                        image,
                        ready: self.ready,
                        started: Some(running),
                        state: running.then(|| core::ContainerState {
                            running: Some(core::ContainerStateRunning::default()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        if node.is_some() {
            status.host_ip = host_ips.first().map(ToString::to_string);
            status.host_ips = Some(
                host_ips
                    .iter()
                    .map(|ip| core::HostIP { ip: ip.to_string() })
                    .collect(),
            );
        }
        if !self.ips.is_empty() {
            status.pod_ip = self.ips.first().map(ToString::to_string);
            status.pod_ips = Some(
                self.ips
                    .iter()
                    .map(|ip| core::PodIP { ip: ip.to_string() })
                    .collect(),
            );
        }
    }
}

fn truth(b: bool) -> String {
    if b { "True" } else { "False" }.to_owned()
}

/// Places every Pod, as the scheduler would: a Pod keeps a declared `nodeName` (which must
/// exist), then the Node it had in `previous`, then the Node whose podCIDR holds its declared
/// IP; the rest go, in name order, to the least-loaded schedulable Node (ties broken by
/// Node order). A Pod no Node accepts stays Pending.
pub(crate) fn schedule(
    pods: &mut [PodWork],
    nodes: &[NodeWork],
    previous: Option<&ClusterState>,
) -> Result<(), ResolveError> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut load = vec![0usize; nodes.len()];
    let mut unplaced = Vec::new();
    for (i, pod) in pods.iter_mut().enumerate() {
        if let Some(name) = pod.declared_node() {
            let n = *index.get(name).ok_or_else(|| ResolveError::UnknownNode {
                pod: pod.key.clone(),
                node: NodeName::new(name),
            })?;
            pod.node = Some(n);
            load[n] += 1;
            continue;
        }
        let kept = previous
            .and_then(|p| p.pod(&pod.key))
            .and_then(|p| p.node.as_ref())
            .and_then(|n| index.get(n.as_str()).copied());
        let hinted = || {
            pod.declared_ips.iter().find_map(|ip| {
                nodes
                    .iter()
                    .position(|n| n.schedulable && n.pod_cidrs().any(|c| c.contains(ip)))
            })
        };
        match kept.or_else(hinted) {
            Some(n) => {
                pod.node = Some(n);
                load[n] += 1;
            }
            None => unplaced.push(i),
        }
    }
    for i in unplaced {
        let best = (0..nodes.len())
            .filter(|n| nodes[*n].schedulable)
            .min_by_key(|n| load[*n]);
        if let Some(n) = best {
            pods[i].node = Some(n);
            load[n] += 1;
        }
    }
    Ok(())
}

/// Opens an IP slot per podCIDR family of each placed Pod's Node and claims the declared IPs
/// that are valid there (inside the podCIDR, not its network or gateway address).
pub(crate) fn claim_declared(
    pods: &mut [PodWork],
    nodes: &[NodeWork],
    ips: &mut IpBook,
) -> Result<(), ResolveError> {
    for pod in pods.iter_mut() {
        let Some(n) = pod.node else { continue };
        if pod.host_network {
            continue;
        }
        let mut seen = Vec::new();
        for cidr in nodes[n].pod_cidrs() {
            let family = Family::of_net(&cidr);
            if seen.contains(&family) {
                continue;
            }
            seen.push(family);
            let range = IpRange::new(cidr, 2);
            let declared = pod
                .declared_ips
                .iter()
                .copied()
                .find(|ip| range.contains(*ip));
            if let Some(ip) = declared {
                ips.claim(ip, &pod.id)
                    .map_err(|owner| ResolveError::AddressInUse {
                        address: ip,
                        object: pod.id.clone(),
                        owner: Box::new(owner),
                    })?;
            }
            pod.slots.push((cidr, declared));
        }
    }
    Ok(())
}

/// Keeps the IPs Pods had in `previous`, where still valid and free.
pub(crate) fn keep_previous_ips(
    pods: &mut [PodWork],
    ips: &mut IpBook,
    previous: Option<&ClusterState>,
) {
    let Some(previous) = previous else { return };
    for pod in pods.iter_mut() {
        let Some(prev) = previous.pod(&pod.key) else {
            continue;
        };
        if prev.host_network {
            continue;
        }
        for (cidr, slot) in pod.slots.iter_mut().filter(|(_, s)| s.is_none()) {
            let range = IpRange::new(*cidr, 2);
            let kept = prev
                .ips
                .iter()
                .copied()
                .find(|ip| range.contains(*ip) && ips.available_to(*ip, &pod.id));
            if let Some(ip) = kept.filter(|ip| ips.claim(*ip, &pod.id).is_ok()) {
                *slot = Some(ip);
            }
        }
    }
}

/// Fills the remaining slots with the lowest free address of the Node's podCIDR.
pub(crate) fn allocate_ips(
    pods: &mut [PodWork],
    nodes: &[NodeWork],
    ips: &mut IpBook,
) -> Result<(), ResolveError> {
    for pod in pods.iter_mut() {
        for (cidr, slot) in pod.slots.iter_mut().filter(|(_, s)| s.is_none()) {
            let ip = ips
                .next_free(&IpRange::new(*cidr, 2), &pod.id)
                .ok_or_else(|| {
                    let node = pod
                        .node
                        .map(|n| nodes[n].name.clone())
                        .unwrap_or_else(|| NodeName::new(""));
                    ResolveError::PoolExhausted {
                        pool: Pool::PodCidr { node, cidr: *cidr },
                        what: pod.id.clone(),
                    }
                })?;
            *slot = Some(ip);
        }
    }
    Ok(())
}
