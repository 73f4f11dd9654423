//! The engine: which Pods are isolated, and whether a flow is allowed, with the reason.
//!
//! This is the executable form of the NetworkPolicy v1 semantics; the plan ([`crate::plan`])
//! and every kernel back end are held against it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netd_model::view::{NetworkPolicy, Pod, PolicyPeer, PolicyPort, PolicyRule, PortSpec};
use netd_model::{ClusterState, NodeName, PodRef, Protocol, ServiceRef};
use serde::Serialize;

use crate::error::PolicyError;
use crate::flow::{Endpoint, Flow, FlowProtocol};
use crate::verdict::{Direction, Exemption, Isolation, PortMiss, RuleRef, SideVerdict, Verdict};

/// Judges a flow: the egress side at the source Pod and the ingress side at the destination
/// Pod must both allow it.
///
/// An [`Endpoint::Ip`] is that of a Pod, a Node or an outside address; Service addresses are
/// not translated here (use [`evaluate_via_service`]). Fails only when the flow names a Pod
/// or Node the snapshot does not have.
pub fn evaluate(state: &ClusterState, flow: &Flow) -> Result<Verdict, PolicyError> {
    let src = Party::resolve(state, &flow.src)?;
    let dst = Party::resolve(state, &flow.dst)?;
    // An address given explicitly fixes the flow's family (a dual-stack Pod has two).
    let family = [&flow.src, &flow.dst].into_iter().find_map(|e| match e {
        Endpoint::Ip(ip) => Some(ip.is_ipv4()),
        _ => None,
    });
    Ok(judge(state, &src, &dst, family, flow.protocol, flow.port))
}

/// Judges a flow between two Pods with their own network namespaces (neither hostNetwork).
pub(crate) fn evaluate_pods(
    state: &ClusterState,
    src: &Pod,
    dst: &Pod,
    protocol: FlowProtocol,
    port: Option<u16>,
) -> Verdict {
    judge(
        state,
        &Party::Pod(src),
        &Party::Pod(dst),
        None,
        protocol,
        port,
    )
}

fn judge(
    state: &ClusterState,
    src: &Party<'_>,
    dst: &Party<'_>,
    family_v4: Option<bool>,
    protocol: FlowProtocol,
    port: Option<u16>,
) -> Verdict {
    if let (Party::Pod(a), Party::Pod(b)) = (src, dst)
        && a.key == b.key
    {
        let same = SideVerdict::Exempt(Exemption::SamePod);
        return Verdict::new(same.clone(), same);
    }
    let family_v4 = family_v4.unwrap_or_else(|| flow_family_v4(src, dst));
    let dst_pod = match dst {
        Party::Pod(p) => Some(*p),
        _ => None,
    };
    let traffic = Traffic {
        protocol,
        port,
        dst_pod,
    };
    let egress = match src {
        Party::Pod(p) => side(state, p, Direction::Egress, dst, family_v4, &traffic),
        _ => SideVerdict::NotApplicable,
    };
    let ingress = match dst {
        Party::Pod(p) if src.is_host_of(p) => SideVerdict::Exempt(Exemption::NodeToLocalPod),
        Party::Pod(p) => side(state, p, Direction::Ingress, src, family_v4, &traffic),
        _ => SideVerdict::NotApplicable,
    };
    Verdict::new(egress, ingress)
}

/// The verdict for one endpoint of a Service, after DNAT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendVerdict {
    /// The endpoint Pod.
    pub endpoint: PodRef,
    /// The port on the Pod the Service's port leads to (named target ports resolved).
    pub target_port: u16,
    /// The verdict for the real source to the endpoint Pod at that port.
    pub verdict: Verdict,
}

/// Judges a flow to a Service's port the way the kernel sees it: after DNAT, once per ready
/// endpoint Pod, at the endpoint's target port, from the real source (pod → Service → pod
/// traffic is not masqueraded).
///
/// The target port comes from the Service's EndpointSlices (the port with the Service port's
/// name and protocol), or from `targetPort` resolved on the Pod when the slice has none.
/// Results are sorted by endpoint Pod.
pub fn evaluate_via_service(
    state: &ClusterState,
    src: &Endpoint,
    service: &ServiceRef,
    port: u16,
    protocol: Protocol,
) -> Result<Vec<BackendVerdict>, PolicyError> {
    let svc = state
        .service(service)
        .ok_or_else(|| PolicyError::UnknownService {
            service: service.clone(),
        })?;
    let sp = svc
        .ports
        .iter()
        .find(|p| p.port == port && p.protocol == protocol)
        .ok_or_else(|| PolicyError::UnknownServicePort {
            service: service.clone(),
            port,
            protocol,
        })?;
    let mut backends: BTreeMap<PodRef, u16> = BTreeMap::new();
    for slice in state.endpoint_slices_for(service) {
        let slice_port = slice
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == protocol)
            .map(|p| p.port);
        for ep in slice.endpoints.iter().filter(|e| e.conditions.ready) {
            let pod = ep
                .pod
                .as_ref()
                .and_then(|r| state.pod(r))
                .or_else(|| ep.addresses.iter().find_map(|ip| state.pod_by_ip(*ip)));
            let Some(pod) = pod else { continue };
            let target = slice_port.or(match &sp.target_port {
                netd_model::view::TargetPort::Number(n) => Some(*n),
                netd_model::view::TargetPort::Name(name) => pod.named_port(name, protocol),
            });
            if let Some(target) = target {
                backends.insert(pod.key.clone(), target);
            }
        }
    }
    backends
        .into_iter()
        .map(|(endpoint, target_port)| {
            let flow = Flow::new(
                src.clone(),
                Endpoint::Pod(endpoint.clone()),
                protocol,
                target_port,
            );
            Ok(BackendVerdict {
                endpoint,
                target_port,
                verdict: evaluate(state, &flow)?,
            })
        })
        .collect()
}

/// The policies that isolate a Pod for ingress and for egress. A hostNetwork Pod is never
/// selected, so it is never isolated.
pub fn isolation(state: &ClusterState, pod: &PodRef) -> Result<Isolation, PolicyError> {
    let pod = state
        .pod(pod)
        .ok_or_else(|| PolicyError::UnknownPod { pod: pod.clone() })?;
    let of = |direction| {
        selecting(state, pod, direction)
            .map(|p| p.key.clone())
            .collect()
    };
    Ok(Isolation {
        ingress: of(Direction::Ingress),
        egress: of(Direction::Egress),
    })
}

/// The policies that select `pod` and isolate it in `direction`, in key order.
pub(crate) fn selecting<'a>(
    state: &'a ClusterState,
    pod: &'a Pod,
    direction: Direction,
) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
    state
        .policies_in(pod.key.namespace.as_str())
        .filter(move |p| !pod.host_network && p.pod_selector.matches(&pod.labels))
        .filter(move |p| match direction {
            Direction::Ingress => p.policy_types.ingress,
            Direction::Egress => p.policy_types.egress,
        })
}

/// A policy's rules for one direction.
pub(crate) fn rules(policy: &NetworkPolicy, direction: Direction) -> &[PolicyRule] {
    match direction {
        Direction::Ingress => &policy.ingress,
        Direction::Egress => &policy.egress,
    }
}

/// Whether a Pod peer (`podSelector`, `namespaceSelector` or both) of a policy in `policy_ns`
/// selects `pod`. IP blocks never select by label.
pub(crate) fn peer_selects_pod(
    state: &ClusterState,
    policy_ns: &str,
    peer: &PolicyPeer,
    pod: &Pod,
) -> bool {
    let PolicyPeer::Pods {
        namespace_selector,
        pod_selector,
    } = peer
    else {
        return false;
    };
    if pod.host_network {
        return false;
    }
    let ns_ok = match namespace_selector {
        None => pod.key.namespace.as_str() == policy_ns,
        Some(sel) => state
            .namespace(pod.key.namespace.as_str())
            .is_some_and(|ns| sel.matches(&ns.labels)),
    };
    ns_ok
        && pod_selector
            .as_ref()
            .is_none_or(|sel| sel.matches(&pod.labels))
}

/// Whether `ip` lies in an ipBlock: inside `cidr` and outside every `except`.
pub(crate) fn block_contains(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// The port range a policy port allows on `dst`: named ports are looked up in the
/// destination Pod's container ports; `None` when it allows nothing there. `Some(None)`
/// means every port of the protocol.
pub(crate) fn resolve_port(pp: &PolicyPort, dst: Option<&Pod>) -> Option<Option<(u16, u16)>> {
    match &pp.port {
        None => Some(None),
        Some(PortSpec::Number(n)) => Some(Some((*n, pp.end_port.unwrap_or(*n)))),
        Some(PortSpec::Name(name)) => dst
            .and_then(|p| p.named_port(name, pp.protocol))
            .map(|n| Some((n, n))),
    }
}

/// What a rule's `ports` are matched against.
struct Traffic<'a> {
    protocol: FlowProtocol,
    port: Option<u16>,
    dst_pod: Option<&'a Pod>,
}

/// A resolved end of a flow.
enum Party<'a> {
    /// A Pod with its own network namespace.
    Pod(&'a Pod),
    /// A Node's network namespace (the Node itself or a hostNetwork Pod on it).
    Host {
        node: Option<&'a NodeName>,
        ips: Vec<IpAddr>,
    },
    /// An address that is neither a Pod's nor a Node's.
    Outside(IpAddr),
}

impl<'a> Party<'a> {
    fn resolve(state: &'a ClusterState, endpoint: &Endpoint) -> Result<Self, PolicyError> {
        Ok(match endpoint {
            Endpoint::Pod(r) => {
                let pod = state
                    .pod(r)
                    .ok_or_else(|| PolicyError::UnknownPod { pod: r.clone() })?;
                if !pod.host_network {
                    return Ok(Party::Pod(pod));
                }
                let node = pod.node.as_ref().and_then(|n| state.node(n.as_str()));
                let ips = if pod.ips.is_empty() {
                    node.map(|n| n.internal_ips.clone()).unwrap_or_default()
                } else {
                    pod.ips.clone()
                };
                Party::Host {
                    node: pod.node.as_ref(),
                    ips,
                }
            }
            Endpoint::Ip(ip) => {
                if let Some(pod) = state.pod_by_ip(*ip) {
                    Party::Pod(pod)
                } else if let Some(node) = state.node_by_ip(*ip) {
                    Party::Host {
                        node: Some(&node.name),
                        ips: vec![*ip],
                    }
                } else {
                    Party::Outside(*ip)
                }
            }
            Endpoint::Node(name) => {
                let node = state
                    .node(name.as_str())
                    .ok_or_else(|| PolicyError::UnknownNode { node: name.clone() })?;
                Party::Host {
                    node: Some(&node.name),
                    ips: node.internal_ips.clone(),
                }
            }
        })
    }

    fn ips(&self) -> &[IpAddr] {
        match self {
            Party::Pod(p) => &p.ips,
            Party::Host { ips, .. } => ips,
            Party::Outside(ip) => std::slice::from_ref(ip),
        }
    }

    /// The address this end uses in a flow of the given family.
    fn address(&self, v4: bool) -> Option<IpAddr> {
        self.ips().iter().copied().find(|ip| ip.is_ipv4() == v4)
    }

    /// Whether this end is the Node `pod` runs on.
    fn is_host_of(&self, pod: &Pod) -> bool {
        matches!(self, Party::Host { node: Some(n), .. } if pod.node.as_ref() == Some(*n))
    }
}

/// The IP family of a flow given without explicit addresses: that of an outside end, else
/// the source's first address, else the destination's, else IPv4.
fn flow_family_v4(src: &Party<'_>, dst: &Party<'_>) -> bool {
    [src, dst]
        .iter()
        .find_map(|p| match p {
            Party::Outside(ip) => Some(ip.is_ipv4()),
            _ => None,
        })
        .or_else(|| src.ips().first().or(dst.ips().first()).map(IpAddr::is_ipv4))
        .unwrap_or(true)
}

fn side(
    state: &ClusterState,
    pod: &Pod,
    direction: Direction,
    peer: &Party<'_>,
    v4: bool,
    traffic: &Traffic<'_>,
) -> SideVerdict {
    let mut isolated_by = Vec::new();
    let mut by = Vec::new();
    let mut port_misses = Vec::new();
    for policy in selecting(state, pod, direction) {
        isolated_by.push(policy.key.clone());
        for (index, rule) in rules(policy, direction).iter().enumerate() {
            let Some(matched) = matching_peer(state, policy, rule, peer, v4) else {
                continue;
            };
            let rule_ref = RuleRef {
                policy: policy.key.clone(),
                direction,
                index,
            };
            if ports_match(&rule.ports, traffic) {
                by.push(rule_ref);
            } else {
                port_misses.push(PortMiss {
                    rule: rule_ref,
                    peer: matched.cloned(),
                    ports: rule.ports.clone(),
                    protocol: traffic.protocol,
                    port: traffic.port,
                });
            }
        }
    }
    if isolated_by.is_empty() {
        SideVerdict::NotIsolated
    } else if by.is_empty() {
        SideVerdict::Denied {
            isolated_by,
            port_misses,
        }
    } else {
        SideVerdict::Allowed { by }
    }
}

/// The peer of `rule` that selects `peer`: `Some(None)` when the rule has no peers (it
/// allows every peer), `None` when no peer selects it.
fn matching_peer<'r>(
    state: &ClusterState,
    policy: &NetworkPolicy,
    rule: &'r PolicyRule,
    peer: &Party<'_>,
    v4: bool,
) -> Option<Option<&'r PolicyPeer>> {
    if rule.peers.is_empty() {
        return Some(None);
    }
    let ns = policy.key.namespace.as_str();
    rule.peers
        .iter()
        .find(|p| match (p, peer) {
            (PolicyPeer::IpBlock { cidr, except }, _) => peer
                .address(v4)
                .is_some_and(|ip| block_contains(cidr, except, ip)),
            (PolicyPeer::Pods { .. }, Party::Pod(pod)) => peer_selects_pod(state, ns, p, pod),
            (PolicyPeer::Pods { .. }, _) => false,
        })
        .map(Some)
}

fn ports_match(ports: &[PolicyPort], traffic: &Traffic<'_>) -> bool {
    if ports.is_empty() {
        return true;
    }
    // A rule that lists ports allows only those; ICMP has none, so it is never among them.
    let FlowProtocol::Transport(protocol) = traffic.protocol else {
        return false;
    };
    ports.iter().filter(|pp| pp.protocol == protocol).any(|pp| {
        match (resolve_port(pp, traffic.dst_pod), traffic.port) {
            (Some(None), _) => true,
            (Some(Some((first, last))), Some(port)) => (first..=last).contains(&port),
            _ => false,
        }
    })
}
