//! Verdicts: the engine's answers, with their reasons.

use std::fmt;

use netd_model::PolicyRef;
use netd_model::view::{PolicyPeer, PolicyPort, PortSpec};
use serde::Serialize;

use crate::flow::FlowProtocol;

/// The direction of a rule, seen from the Pod the policy selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Direction {
    /// Traffic into the selected Pod (checked at the destination).
    Ingress,
    /// Traffic out of the selected Pod (checked at the source).
    Egress,
}

impl Direction {
    /// `ingress` or `egress`, as rule comments spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of one policy: prints as `ns/name ingress[0]`, the comment on its kernel rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyRef,
    /// Its `ingress` or `egress` list.
    pub direction: Direction,
    /// The rule's index in that list.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// Traffic that is allowed whatever the policies say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Exemption {
    /// A Pod reaching its own IP: the packet never leaves the Pod.
    SamePod,
    /// A Node reaching a Pod that runs on it (kubelet's probes).
    NodeToLocalPod,
}

/// The answer for one side of a flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum SideVerdict {
    /// No policy isolates the Pod in this direction: everything passes.
    NotIsolated,
    /// Isolated, and these rules allow the flow (all of them, in policy and rule order).
    Allowed {
        /// The rules that match.
        by: Vec<RuleRef>,
    },
    /// Isolated by these policies, and none of their rules allows the flow.
    Denied {
        /// The policies that select the Pod for this direction.
        isolated_by: Vec<PolicyRef>,
        /// The rules whose peers match the flow but whose ports do not, in policy and rule
        /// order.
        port_misses: Vec<PortMiss>,
    },
    /// This end is not a Pod (a Node, a hostNetwork Pod or an outside address), so no policy
    /// applies to it.
    NotApplicable,
    /// Allowed without looking at policies.
    Exempt(Exemption),
}

impl SideVerdict {
    /// Whether this side lets the flow through.
    pub fn passes(&self) -> bool {
        !matches!(self, SideVerdict::Denied { .. })
    }

    /// The side's reason as a phrase, e.g. `ingress allowed by default/p ingress[0]`.
    pub fn describe(&self, direction: Direction) -> String {
        match self {
            SideVerdict::NotIsolated => format!("{direction} not isolated"),
            SideVerdict::Allowed { by } => format!("{direction} allowed by {}", join(by)),
            SideVerdict::Denied {
                isolated_by,
                port_misses,
            } => {
                let isolated = format!("isolated for {direction} by {}", join(isolated_by));
                let Some(first) = port_misses.first() else {
                    return format!("{isolated}; no {direction} rule allows it");
                };
                let what = match first.protocol {
                    FlowProtocol::Icmp => "ICMP",
                    FlowProtocol::Transport(_) => "this port",
                };
                let misses: Vec<String> = port_misses.iter().map(ToString::to_string).collect();
                format!(
                    "{isolated}; no {direction} rule allows {what}: {}",
                    misses.join("; ")
                )
            }
            SideVerdict::NotApplicable => match direction {
                Direction::Egress => "no egress policy (the source is not a pod)".to_owned(),
                Direction::Ingress => "no ingress policy (the destination is not a pod)".to_owned(),
            },
            SideVerdict::Exempt(Exemption::SamePod) => {
                "a pod reaching its own IP is always allowed".to_owned()
            }
            SideVerdict::Exempt(Exemption::NodeToLocalPod) => {
                format!("{direction} from the pod's own node is always allowed (kubelet probes)")
            }
        }
    }
}

/// A rule that allows a flow's peer, but not on the flow's port or protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortMiss {
    /// The rule.
    pub rule: RuleRef,
    /// The peer of the rule that matches; `None` when the rule lists no peers (any peer).
    pub peer: Option<PolicyPeer>,
    /// The ports the rule allows (never empty: a rule without ports allows every port).
    pub ports: Vec<PolicyPort>,
    /// The flow's protocol.
    pub protocol: FlowProtocol,
    /// The flow's port, if it has one.
    pub port: Option<u16>,
}

impl fmt::Display for PortMiss {
    /// `default/p ingress[0] allows pods role=frontend on TCP 6379; this flow is TCP 6380`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = match &self.peer {
            None => "any peer".to_owned(),
            Some(PolicyPeer::IpBlock { cidr, except }) if except.is_empty() => {
                format!("ipBlock {cidr}")
            }
            Some(PolicyPeer::IpBlock { cidr, except }) => {
                format!("ipBlock {cidr} except {}", join(except))
            }
            Some(PolicyPeer::Pods {
                namespace_selector,
                pod_selector,
            }) => {
                let pods = match pod_selector {
                    Some(s) if !s.is_empty() => format!("pods {s}"),
                    _ => "all pods".to_owned(),
                };
                match namespace_selector {
                    None => pods,
                    Some(s) if s.is_empty() => format!("{pods} in all namespaces"),
                    Some(s) => format!("{pods} in namespaces {s}"),
                }
            }
        };
        let ports: Vec<String> = self.ports.iter().map(port_phrase).collect();
        write!(
            f,
            "{} allows {peer} on {}; this flow is {}",
            self.rule,
            ports.join(", "),
            self.protocol
        )?;
        if let Some(port) = self.port {
            write!(f, " {port}")?;
        }
        Ok(())
    }
}

/// `TCP 6379`, `TCP 8000-8080`, `UDP any` or `TCP "http"` (a named port).
fn port_phrase(pp: &PolicyPort) -> String {
    let proto = pp.protocol;
    match (&pp.port, pp.end_port) {
        (None, _) => format!("{proto} any"),
        (Some(PortSpec::Number(n)), None) => format!("{proto} {n}"),
        (Some(PortSpec::Number(n)), Some(end)) => format!("{proto} {n}-{end}"),
        (Some(PortSpec::Name(name)), _) => format!("{proto} {name:?}"),
    }
}

/// The answer for a flow: allowed only when both sides pass.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Verdict {
    /// Whether the connection may be opened.
    pub allowed: bool,
    /// The source Pod's egress side.
    pub egress: SideVerdict,
    /// The destination Pod's ingress side.
    pub ingress: SideVerdict,
}

impl Verdict {
    pub(crate) fn new(egress: SideVerdict, ingress: SideVerdict) -> Self {
        Verdict {
            allowed: egress.passes() && ingress.passes(),
            egress,
            ingress,
        }
    }
}

impl fmt::Display for Verdict {
    /// `allowed: egress not isolated; ingress allowed by default/p ingress[0]`, or
    /// `blocked: isolated for egress by ns/p; no egress rule allows it` (a blocked verdict
    /// names only the sides that block).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let same_pod = SideVerdict::Exempt(Exemption::SamePod);
        if self.egress == same_pod && self.ingress == same_pod {
            return write!(f, "allowed: {}", same_pod.describe(Direction::Egress));
        }
        let sides = [
            (Direction::Egress, &self.egress),
            (Direction::Ingress, &self.ingress),
        ];
        let phrases: Vec<String> = sides
            .iter()
            .filter(|(_, side)| self.allowed || !side.passes())
            .map(|(direction, side)| side.describe(*direction))
            .collect();
        write!(
            f,
            "{}: {}",
            if self.allowed { "allowed" } else { "blocked" },
            phrases.join("; ")
        )
    }
}

/// The policies that isolate a Pod, per direction (empty: not isolated).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Isolation {
    /// Policies selecting the Pod with `Ingress` in their types.
    pub ingress: Vec<PolicyRef>,
    /// Policies selecting the Pod with `Egress` in their types.
    pub egress: Vec<PolicyRef>,
}

impl Isolation {
    /// The isolating policies for one direction.
    pub fn of(&self, direction: Direction) -> &[PolicyRef] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
