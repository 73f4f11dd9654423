//! Text for people: `kube-netd policy check` and `kube-netd policy show`.

use std::fmt::Write as _;
use std::net::IpAddr;

use netd_model::view::Service;
use netd_model::view::{Pod, PolicyPeer, PolicyPort, PolicyRule, PortSpec};
use netd_model::{ClusterState, PodRef, Target};

use crate::engine::{
    evaluate, evaluate_via_service, isolation, peer_selects_pod, rules, selecting,
};
use crate::error::PolicyError;
use crate::flow::{Endpoint, Flow, FlowProtocol};
use crate::verdict::Direction;

/// The most Pods listed for one peer by [`show`] before it says how many more match.
const LISTED_PODS: usize = 8;

/// Parses a command-line endpoint as every command names one ([`netd_model::target`]):
/// `NS/POD`, `POD` (in `namespace`), `svc/[NS/]NAME` (its ClusterIP), `node/NAME`, or an IP.
pub fn parse_endpoint(
    state: &ClusterState,
    input: &str,
    namespace: &str,
) -> Result<Endpoint, PolicyError> {
    match Target::parse(input, namespace).map_err(|source| PolicyError::ParseEndpoint { source })? {
        Target::Pod(p) => Ok(Endpoint::Pod(p)),
        Target::Ip(ip) => Ok(Endpoint::Ip(ip)),
        Target::Node(n) => Ok(Endpoint::Node(n)),
        Target::Service(service) => {
            let svc = state
                .service(&service)
                .ok_or_else(|| PolicyError::UnknownService {
                    service: service.clone(),
                })?;
            svc.cluster_ips
                .first()
                .map(|ip| Endpoint::Ip(*ip))
                .ok_or(PolicyError::NoClusterIp { service })
        }
        other @ (Target::External | Target::DnsName(_)) => Err(PolicyError::NotAnEndpoint {
            input: input.to_owned(),
            what: other.what(),
        }),
    }
}

/// What [`check`] found: the explanation, and whether the flow is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// One line per verdict, each ending in `\n`.
    pub text: String,
    /// Whether the connection may be opened: through a Service, only if it has endpoints and
    /// every one of them allows it (which one a connection gets is the proxy's choice).
    pub allowed: bool,
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `kube-netd policy check FROM TO [--port P] [--protocol P]`: whether FROM may connect to
/// TO, and why. FROM and TO are read by [`parse_endpoint`]; a bare `POD` is in `namespace`.
/// A TCP, UDP or SCTP flow needs a port ([`PolicyError::PortNeeded`] otherwise). When TO
/// is a Service's ClusterIP, the flow is judged after DNAT, once per endpoint Pod.
///
/// One line per verdict, each ending in `\n`, e.g.
/// `new-ns/a -> 8.8.8.8 ICMP: blocked: isolated for egress by new-ns/deny-egress-test; no egress rule allows it`.
pub fn check(
    state: &ClusterState,
    from: &str,
    to: &str,
    namespace: &str,
    port: Option<u16>,
    protocol: FlowProtocol,
) -> Result<Checked, PolicyError> {
    let src = parse_endpoint(state, from, namespace)?;
    let dst = parse_endpoint(state, to, namespace)?;
    if let (FlowProtocol::Transport(protocol), None) = (protocol, port) {
        return Err(PolicyError::PortNeeded { protocol });
    }
    let mut out = String::new();
    if let (Endpoint::Ip(ip), FlowProtocol::Transport(proto), Some(port)) = (&dst, protocol, port)
        && let Some(svc) = service_with_cluster_ip(state, *ip)
    {
        let backends = evaluate_via_service(state, &src, &svc.key, port, proto)?;
        let _ = writeln!(out, "{src} -> {dst} {proto}/{port} is service {}", svc.key);
        let allowed = !backends.is_empty() && backends.iter().all(|b| b.verdict.allowed);
        if backends.is_empty() {
            let _ = writeln!(
                out,
                "  no ready endpoints: the connection is rejected by the service proxy"
            );
        }
        for b in backends {
            let _ = writeln!(out, "  via {}:{}: {}", b.endpoint, b.target_port, b.verdict);
        }
        return Ok(Checked { text: out, allowed });
    }
    let flow = Flow {
        src,
        dst,
        protocol,
        port,
    };
    let verdict = evaluate(state, &flow)?;
    let _ = writeln!(out, "{flow}: {verdict}");
    Ok(Checked {
        text: out,
        allowed: verdict.allowed,
    })
}

/// `kube-netd policy show NS/POD`: the policies that select the Pod, its isolation, and the
/// rules saying what may reach it and what it may reach, with the Pods each peer selects now.
pub fn show(state: &ClusterState, pod: &PodRef) -> Result<String, PolicyError> {
    let iso = isolation(state, pod)?;
    let p = state
        .pod(pod)
        .ok_or_else(|| PolicyError::UnknownPod { pod: pod.clone() })?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "pod {}", p.key);
    let node = p
        .node
        .as_ref()
        .map_or_else(|| "(not scheduled)".to_owned(), ToString::to_string);
    let _ = writeln!(w, "  node: {node}");
    let _ = writeln!(w, "  ips: {}", list_or(&p.ips, "(none)"));
    let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(w, "  labels: {}", list_or(&labels, "(none)"));
    if p.host_network {
        let _ = writeln!(
            w,
            "  hostNetwork: never selected by a NetworkPolicy; as a peer it is its node's IP (matched by ipBlock only)"
        );
        return Ok(out);
    }
    let selected: Vec<String> = state
        .policies_in(p.key.namespace.as_str())
        .filter(|pol| pol.pod_selector.matches(&p.labels))
        .map(|pol| {
            let mut types = Vec::new();
            if pol.policy_types.ingress {
                types.push("Ingress");
            }
            if pol.policy_types.egress {
                types.push("Egress");
            }
            format!("{} ({})", pol.key, types.join(", "))
        })
        .collect();
    let _ = writeln!(w, "selected by: {}", list_or(&selected, "no policy"));
    for direction in [Direction::Ingress, Direction::Egress] {
        let isolating = iso.of(direction);
        if isolating.is_empty() {
            let what = match direction {
                Direction::Ingress => "every peer may connect to it on every port",
                Direction::Egress => "it may connect to every peer on every port",
            };
            let _ = writeln!(w, "{direction}: not isolated; {what}");
            continue;
        }
        let _ = writeln!(w, "{direction}: isolated by {}", list_or(isolating, ""));
        let mut any = false;
        for policy in selecting(state, p, direction) {
            for (index, rule) in rules(policy, direction).iter().enumerate() {
                any = true;
                let _ = writeln!(w, "  {} {direction}[{index}]:", policy.key);
                describe_rule(w, state, policy.key.namespace.as_str(), rule, direction, p);
            }
        }
        if !any {
            let _ = writeln!(
                w,
                "  no {direction} rule: all {direction} is blocked (ICMP included)"
            );
        }
    }
    Ok(out)
}

fn service_with_cluster_ip(state: &ClusterState, ip: IpAddr) -> Option<&Service> {
    state.services().find(|s| s.cluster_ips.contains(&ip))
}

fn describe_rule(
    w: &mut String,
    state: &ClusterState,
    ns: &str,
    rule: &PolicyRule,
    direction: Direction,
    pod: &Pod,
) {
    let word = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    if rule.peers.is_empty() {
        let _ = writeln!(w, "    {word}: any peer");
    }
    for peer in &rule.peers {
        let _ = writeln!(w, "    {word}: {}", describe_peer(state, ns, peer));
    }
    if rule.ports.is_empty() {
        let _ = writeln!(w, "    ports: any (ICMP included)");
    }
    for pp in &rule.ports {
        let _ = writeln!(w, "    port: {}", describe_port(pp, direction, pod));
    }
}

fn describe_peer(state: &ClusterState, ns: &str, peer: &PolicyPeer) -> String {
    let sel = |s: &netd_model::LabelSelector| {
        if s.is_empty() {
            "all".to_owned()
        } else {
            s.to_string()
        }
    };
    match peer {
        PolicyPeer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        PolicyPeer::IpBlock { cidr, except } => {
            format!("ipBlock {cidr} except {}", list_or(except, ""))
        }
        PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let nss = match namespace_selector {
                None => format!("namespace {ns}"),
                Some(s) => format!("namespaces {}", sel(s)),
            };
            let pods = match pod_selector {
                Some(s) if !s.is_empty() => format!("pods {s}"),
                _ => "all pods".to_owned(),
            };
            let matched: Vec<String> = state
                .pods()
                .filter(|p| peer_selects_pod(state, ns, peer, p))
                .map(|p| p.key.to_string())
                .collect();
            let now = match matched.len() {
                0 => "no pods now".to_owned(),
                n if n <= LISTED_PODS => matched.join(", "),
                n => format!(
                    "{} and {} more",
                    matched[..LISTED_PODS].join(", "),
                    n - LISTED_PODS
                ),
            };
            format!("{pods} in {nss} [{now}]")
        }
    }
}

fn describe_port(pp: &PolicyPort, direction: Direction, pod: &Pod) -> String {
    let proto = pp.protocol;
    match (&pp.port, pp.end_port) {
        (None, _) => format!("{proto} any"),
        (Some(PortSpec::Number(n)), None) => format!("{proto} {n}"),
        (Some(PortSpec::Number(n)), Some(end)) => format!("{proto} {n}-{end}"),
        (Some(PortSpec::Name(name)), _) => match direction {
            Direction::Egress => {
                format!("{proto} named {name:?} (resolved on each destination pod)")
            }
            Direction::Ingress => match pod.named_port(name, proto) {
                Some(n) => format!("{proto} named {name:?} = {n} on this pod"),
                None => {
                    format!("{proto} named {name:?}: not declared by this pod, matches nothing")
                }
            },
        },
    }
}

fn list_or<T: ToString>(items: &[T], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
