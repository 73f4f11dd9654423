//! The back-end-neutral plan: for the Pods on one Node, which peers and ports each isolated
//! direction allows, with peers as named, deduplicated address sets.
//!
//! A renderer only walks the plan. For each [`PodPlan`] it builds one chain per isolated
//! direction, hooked where packets to the Pod (ingress: FORWARD, destination one of
//! [`PodPlan::ips`]) and from it (egress: FORWARD, and INPUT for packets to the Node itself,
//! source one of the Pod's IPs) pass, after DNAT, and in it, in this order:
//!
//! 1. accept replies (`ESTABLISHED,RELATED`) — the engine judges only the initiating direction;
//! 2. for ingress with [`DirectionPlan::allow_local_node`], accept packets whose source is an
//!    address of this Node (kubelet probes; iptables `-m addrtype --src-type LOCAL`, nftables
//!    `fib saddr type local`);
//! 3. accept [`DirectionPlan::exempt_peers`] (the Pod's own IPs: a Pod reaching itself);
//! 4. for each [`PlanRule`] and each of its [`PlanMatch`]es, accept, with the rule's
//!    [`comment`](PlanRule::comment);
//! 5. drop.
//!
//! The *peer address* of a match is the packet's source for ingress and its destination for
//! egress. Sets have one IP family each; a match whose set is of the other family does not
//! apply to that family's table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use data_encoding::BASE32;
use ipnet::IpNet;
pub use netd_model::IpFamily;
use netd_model::view::{Pod, PolicyPeer, PolicyRule, PortSpec};
use netd_model::{ClusterState, NodeName, PodRef, PolicyRef, Protocol};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::{block_contains, resolve_port, rules, selecting};
use crate::error::PolicyError;
use crate::verdict::{Direction, RuleRef};

/// Everything the renderers need to enforce NetworkPolicy for the Pods of one Node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyPlan {
    /// The Node.
    pub node: NodeName,
    /// The Node's InternalIPs.
    pub node_ips: Vec<IpAddr>,
    /// The Pods on the Node that are isolated in at least one direction, by key. Pods not
    /// listed need no rules.
    pub pods: Vec<PodPlan>,
    /// Every set the rules refer to, by name; each is created before the rules using it.
    pub sets: BTreeMap<SetName, AddressSet>,
}

impl PolicyPlan {
    /// A set by name.
    pub fn set(&self, name: &SetName) -> Option<&AddressSet> {
        self.sets.get(name)
    }
}

/// The rules for one Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    /// The Pod.
    pub pod: PodRef,
    /// Its IPs: where its ingress chain is hooked (destination) and its egress chain (source).
    pub ips: Vec<IpAddr>,
    /// A 16-character name derived from the Pod's key (`base32(sha256("ns/name"))[..16]`), for
    /// per-Pod chain names within iptables' 28-character limit.
    pub id: String,
    /// Present when the Pod is isolated for ingress.
    pub ingress: Option<DirectionPlan>,
    /// Present when the Pod is isolated for egress.
    pub egress: Option<DirectionPlan>,
}

impl PodPlan {
    /// The plan for one direction, if the Pod is isolated in it.
    pub fn direction(&self, direction: Direction) -> Option<&DirectionPlan> {
        match direction {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

/// One isolated direction of one Pod: what is allowed; everything else is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionPlan {
    /// The policies that isolate the Pod in this direction (for comments on the drop rule).
    pub isolated_by: Vec<PolicyRef>,
    /// Accept packets from this Node's own addresses (ingress only: kubelet probes).
    pub allow_local_node: bool,
    /// Peer addresses always accepted: the Pod's own IPs.
    pub exempt_peers: Vec<IpAddr>,
    /// The allowing rules, in policy and rule order.
    pub rules: Vec<PlanRule>,
}

/// One policy rule as it applies to one Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanRule {
    /// The policy rule.
    pub rule: RuleRef,
    /// Alternatives: a packet matching any of them is accepted. Empty when the rule allows
    /// nothing here (its peers select no Pods, or its named ports do not exist).
    pub matches: Vec<PlanMatch>,
}

impl PlanRule {
    /// The comment for every kernel rule rendered from this one: `ns/name ingress[0]`.
    pub fn comment(&self) -> String {
        self.rule.to_string()
    }
}

/// One accepting match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PlanMatch {
    /// The peer address is in `peers` (any address when `None`) and the packet matches one of
    /// `ports` (any packet, ICMP included, when empty).
    Peers {
        /// An address set ([`SetMembers::Addresses`] or [`SetMembers::Networks`]).
        peers: Option<SetName>,
        /// Protocols and destination ports.
        ports: Vec<PortMatch>,
    },
    /// (peer address, protocol, destination port) is in the set: the named ports of egress
    /// rules, resolved on each destination Pod ([`SetMembers::AddressPorts`], ipset type
    /// `hash:ip,port`, nftables `ipv4_addr . inet_proto . inet_service`).
    PeerPorts {
        /// The set.
        set: SetName,
    },
}

/// A protocol and, optionally, a destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortMatch {
    /// The protocol.
    pub protocol: Protocol,
    /// The ports; `None` means every port of the protocol.
    pub ports: Option<PortRange>,
}

/// An inclusive range of ports; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

impl fmt::Display for PortRange {
    /// `80` or `8000:8080` (iptables' spelling; nftables renderers print `8000-8080`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// The name of an address set: `KNP-` and 16 characters of `base32(sha256(content))`, 20
/// characters in all (ipset allows 31). Equal content gives equal names, so every rule that
/// resolves to the same addresses shares one set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SetName(String);

impl SetName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of addresses, networks or address–port pairs, all of one family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressSet {
    /// The family.
    pub family: IpFamily,
    /// The members, sorted.
    pub members: SetMembers,
}

/// The members of a set; the variant is the set's type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SetMembers {
    /// Pod IPs (ipset `hash:ip`).
    Addresses(Vec<IpAddr>),
    /// Networks (ipset `hash:net`, nftables interval set): an ipBlock with its `except`s
    /// already subtracted, so no `nomatch` entries are needed, and `/0` split into two `/1`s
    /// (ipset's `hash:net` cannot hold a `/0`).
    Networks(Vec<IpNet>),
    /// Pod IPs with a protocol and port (ipset `hash:ip,port`).
    AddressPorts(Vec<AddressPort>),
}

/// A member of an address–port set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AddressPort {
    /// The Pod IP.
    pub ip: IpAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
}

/// Compiles the plan for the Pods on `node`: ingress is enforced at the destination's Node
/// and egress at the source's, so a flow between Nodes is checked at both ends.
pub fn compile(state: &ClusterState, node: &NodeName) -> Result<PolicyPlan, PolicyError> {
    let n = state
        .node(node.as_str())
        .ok_or_else(|| PolicyError::UnknownNode { node: node.clone() })?;
    let mut c = Compiler {
        state,
        sets: BTreeMap::new(),
        peer_sets: HashMap::new(),
        shared_rules: HashMap::new(),
        named_port_sets: HashMap::new(),
    };
    let mut pods = Vec::new();
    for pod in state
        .pods_on(node.as_str())
        .filter(|p| !p.host_network && !p.ips.is_empty())
    {
        let ingress = c.direction(pod, Direction::Ingress);
        let egress = c.direction(pod, Direction::Egress);
        if ingress.is_none() && egress.is_none() {
            continue;
        }
        pods.push(PodPlan {
            pod: pod.key.clone(),
            ips: pod.ips.clone(),
            id: hash16(pod.key.to_string().as_bytes()),
            ingress,
            egress,
        });
    }
    Ok(PolicyPlan {
        node: node.clone(),
        node_ips: n.internal_ips.clone(),
        pods,
        sets: c.sets,
    })
}

struct Compiler<'a> {
    state: &'a ClusterState,
    sets: BTreeMap<SetName, AddressSet>,
    /// Sets of a peer, keyed by the namespace it is resolved in ("" when that does not matter).
    peer_sets: HashMap<(String, PolicyPeer), Vec<SetName>>,
    /// Matches of rules that do not depend on the selected Pod.
    shared_rules: HashMap<RuleRef, Vec<PlanMatch>>,
    /// Address–port sets of egress rules' named ports.
    named_port_sets: HashMap<NamedPortKey, Vec<SetName>>,
}

/// What an egress rule's address–port sets depend on.
#[derive(PartialEq, Eq, Hash)]
struct NamedPortKey {
    namespace: String,
    peers: Vec<PolicyPeer>,
    named: Vec<(String, Protocol)>,
}

impl Compiler<'_> {
    fn direction(&mut self, pod: &Pod, direction: Direction) -> Option<DirectionPlan> {
        let state = self.state;
        let mut isolated_by = Vec::new();
        let mut planned = Vec::new();
        for policy in selecting(state, pod, direction) {
            isolated_by.push(policy.key.clone());
            for (index, rule) in rules(policy, direction).iter().enumerate() {
                let rule_ref = RuleRef {
                    policy: policy.key.clone(),
                    direction,
                    index,
                };
                let per_pod = direction == Direction::Ingress && has_named_port(rule);
                let matches = match self.shared_rules.get(&rule_ref) {
                    Some(m) if !per_pod => m.clone(),
                    _ => {
                        let m = self.rule_matches(&rule_ref, rule, pod);
                        if !per_pod {
                            self.shared_rules.insert(rule_ref.clone(), m.clone());
                        }
                        m
                    }
                };
                planned.push(PlanRule {
                    rule: rule_ref,
                    matches,
                });
            }
        }
        if isolated_by.is_empty() {
            return None;
        }
        Some(DirectionPlan {
            isolated_by,
            allow_local_node: direction == Direction::Ingress,
            exempt_peers: pod.ips.clone(),
            rules: planned,
        })
    }

    /// The matches of one rule for `pod` (the destination for ingress rules, whose named ports
    /// are resolved on it; egress rules' named ports are resolved per destination Pod).
    fn rule_matches(&mut self, rule_ref: &RuleRef, rule: &PolicyRule, pod: &Pod) -> Vec<PlanMatch> {
        let ns = rule_ref.policy.namespace.as_str();
        let mut ports = BTreeSet::new();
        let mut named = Vec::new();
        for pp in &rule.ports {
            match (&pp.port, rule_ref.direction) {
                (Some(PortSpec::Name(name)), Direction::Egress) => {
                    named.push((name.as_str(), pp.protocol))
                }
                _ => {
                    if let Some(range) = resolve_port(pp, Some(pod)) {
                        let ports_of = range.map(|(first, last)| PortRange { first, last });
                        ports.insert(PortMatch {
                            protocol: pp.protocol,
                            ports: ports_of,
                        });
                    }
                }
            }
        }
        let mut matches = Vec::new();
        // A rule that lists ports, none of which resolves to a number, allows no plain match.
        if rule.ports.is_empty() || !ports.is_empty() {
            let ports: Vec<PortMatch> = ports.into_iter().collect();
            if rule.peers.is_empty() {
                matches.push(PlanMatch::Peers {
                    peers: None,
                    ports: ports.clone(),
                });
            }
            for peer in &rule.peers {
                for set in self.peer_sets(ns, peer) {
                    matches.push(PlanMatch::Peers {
                        peers: Some(set),
                        ports: ports.clone(),
                    });
                }
            }
        }
        if !named.is_empty() {
            for set in self.named_port_sets(ns, rule, &named) {
                matches.push(PlanMatch::PeerPorts { set });
            }
        }
        matches.sort();
        matches.dedup();
        matches
    }

    fn peer_sets(&mut self, ns: &str, peer: &PolicyPeer) -> Vec<SetName> {
        let scope = match peer {
            PolicyPeer::Pods {
                namespace_selector: None,
                ..
            } => ns.to_owned(),
            _ => String::new(),
        };
        let key = (scope, peer.clone());
        if let Some(names) = self.peer_sets.get(&key) {
            return names.clone();
        }
        let names = match peer {
            PolicyPeer::IpBlock { cidr, except } => {
                let nets = subtract(
                    cidr.trunc(),
                    &except.iter().map(IpNet::trunc).collect::<Vec<_>>(),
                );
                let family = IpFamily::of(cidr.addr());
                vec![self.intern(AddressSet {
                    family,
                    members: SetMembers::Networks(nets),
                })]
            }
            PolicyPeer::Pods { .. } => {
                let ips: BTreeSet<IpAddr> = peer_pods(self.state, ns, peer)
                    .into_iter()
                    .flat_map(|p| p.ips.iter().copied())
                    .collect();
                let mut names = Vec::new();
                for family in [IpFamily::V4, IpFamily::V6] {
                    let members: Vec<IpAddr> = ips
                        .iter()
                        .copied()
                        .filter(|ip| IpFamily::of(*ip) == family)
                        .collect();
                    if !members.is_empty() {
                        names.push(self.intern(AddressSet {
                            family,
                            members: SetMembers::Addresses(members),
                        }));
                    }
                }
                names
            }
        };
        self.peer_sets.insert(key, names.clone());
        names
    }

    fn named_port_sets(
        &mut self,
        ns: &str,
        rule: &PolicyRule,
        named: &[(&str, Protocol)],
    ) -> Vec<SetName> {
        let key = NamedPortKey {
            namespace: ns.to_owned(),
            peers: rule.peers.clone(),
            named: named.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
        };
        if let Some(names) = self.named_port_sets.get(&key) {
            return names.clone();
        }
        let state = self.state;
        // (pod, its addresses that the peers select)
        let mut candidates: Vec<(&Pod, Vec<IpAddr>)> = Vec::new();
        if rule.peers.is_empty() {
            candidates.extend(
                state
                    .pods()
                    .filter(|p| !p.host_network)
                    .map(|p| (p, p.ips.clone())),
            );
        }
        for peer in &rule.peers {
            match peer {
                PolicyPeer::Pods { .. } => candidates.extend(
                    peer_pods(state, ns, peer)
                        .into_iter()
                        .map(|p| (p, p.ips.clone())),
                ),
                PolicyPeer::IpBlock { cidr, except } => {
                    for pod in state.pods().filter(|p| !p.host_network) {
                        let ips: Vec<IpAddr> = pod
                            .ips
                            .iter()
                            .copied()
                            .filter(|ip| block_contains(cidr, except, *ip))
                            .collect();
                        if !ips.is_empty() {
                            candidates.push((pod, ips));
                        }
                    }
                }
            }
        }
        let mut entries: BTreeSet<AddressPort> = BTreeSet::new();
        for (pod, ips) in candidates {
            for (name, protocol) in named {
                if let Some(port) = pod.named_port(name, *protocol) {
                    entries.extend(ips.iter().map(|ip| AddressPort {
                        ip: *ip,
                        protocol: *protocol,
                        port,
                    }));
                }
            }
        }
        let mut names = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let members: Vec<AddressPort> = entries
                .iter()
                .copied()
                .filter(|e| IpFamily::of(e.ip) == family)
                .collect();
            if !members.is_empty() {
                names.push(self.intern(AddressSet {
                    family,
                    members: SetMembers::AddressPorts(members),
                }));
            }
        }
        self.named_port_sets.insert(key, names.clone());
        names
    }

    /// Adds a set under its content-derived name and returns the name.
    fn intern(&mut self, set: AddressSet) -> SetName {
        let name = SetName(format!("KNP-{}", hash16(set.canonical().as_bytes())));
        self.sets.entry(name.clone()).or_insert(set);
        name
    }
}

impl AddressSet {
    /// The text the set's name is hashed from: family, type and members, one per line.
    fn canonical(&self) -> String {
        let mut out = format!("{:?}\n", self.family);
        match &self.members {
            SetMembers::Addresses(ips) => {
                out.push_str("addresses\n");
                ips.iter().for_each(|ip| out.push_str(&format!("{ip}\n")));
            }
            SetMembers::Networks(nets) => {
                out.push_str("networks\n");
                nets.iter().for_each(|n| out.push_str(&format!("{n}\n")));
            }
            SetMembers::AddressPorts(entries) => {
                out.push_str("address-ports\n");
                entries.iter().for_each(|e| {
                    out.push_str(&format!(
                        "{},{}:{}\n",
                        e.ip,
                        e.protocol.as_lower_str(),
                        e.port
                    ))
                });
            }
        }
        out
    }
}

/// The Pods a Pod peer of a policy in `ns` selects, wherever they run.
fn peer_pods<'s>(state: &'s ClusterState, ns: &'s str, peer: &'s PolicyPeer) -> Vec<&'s Pod> {
    let PolicyPeer::Pods {
        namespace_selector,
        pod_selector,
    } = peer
    else {
        return Vec::new();
    };
    let namespaces: Vec<&str> = match namespace_selector {
        None => vec![ns],
        Some(sel) => state
            .namespaces_matching(sel)
            .map(|n| n.name.as_str())
            .collect(),
    };
    namespaces
        .into_iter()
        .flat_map(|n| state.pods_in(n))
        .filter(|p| !p.host_network && pod_selector.as_ref().is_none_or(|s| s.matches(&p.labels)))
        .collect()
}

fn has_named_port(rule: &PolicyRule) -> bool {
    rule.ports
        .iter()
        .any(|p| matches!(p.port, Some(PortSpec::Name(_))))
}

/// `base32(sha256(data))[..16]`, as kube-proxy names its chains.
fn hash16(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = BASE32.encode(&digest);
    s.truncate(16);
    s
}

/// `cidr` without the `except` networks, as a sorted list of disjoint networks, with `/0`
/// split into two `/1`s.
fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    let mut todo = vec![cidr];
    while let Some(net) = todo.pop() {
        if except.iter().any(|e| e.contains(&net)) {
            continue;
        }
        let overlapping = except.iter().any(|e| net.contains(e));
        if !overlapping && net.prefix_len() > 0 {
            out.push(net);
            continue;
        }
        // Split into halves; `subnets` fails only past the maximum prefix, which an
        // overlapping strict subset rules out.
        if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
            todo.extend(halves);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn subtract_table() {
        let cases: [(&str, &[&str], &[&str]); 5] = [
            ("10.0.0.0/24", &[], &["10.0.0.0/24"]),
            ("10.0.0.0/24", &["10.0.0.0/25"], &["10.0.0.128/25"]),
            (
                "10.0.0.0/30",
                &["10.0.0.1/32", "10.0.0.2/32"],
                &["10.0.0.0/32", "10.0.0.3/32"],
            ),
            ("0.0.0.0/0", &[], &["0.0.0.0/1", "128.0.0.0/1"]),
            ("::/0", &["8000::/1"], &["::/1"]),
        ];
        for (cidr, except, want) in cases {
            let got = subtract(cidr.parse().expect("net"), &nets(except));
            assert_eq!(got, nets(want), "{cidr} except {except:?}");
        }
    }

    #[test]
    fn names_are_content_hashes_of_ipset_length() {
        let set = |ips: &[&str]| AddressSet {
            family: IpFamily::V4,
            members: SetMembers::Addresses(ips.iter().map(|s| s.parse().expect("ip")).collect()),
        };
        let mut c = Compiler {
            state: &ClusterState::default(),
            sets: BTreeMap::new(),
            peer_sets: HashMap::new(),
            shared_rules: HashMap::new(),
            named_port_sets: HashMap::new(),
        };
        let a = c.intern(set(&["10.0.0.1"]));
        let b = c.intern(set(&["10.0.0.2"]));
        assert_ne!(a, b);
        assert_eq!(c.intern(set(&["10.0.0.1"])), a);
        assert_eq!(a.as_str().len(), 20);
        assert!(a.as_str().starts_with("KNP-"));
        assert_eq!(c.sets.len(), 2);
    }
}
