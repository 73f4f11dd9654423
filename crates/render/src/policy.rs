//! The iptables NetworkPolicy back end: a [`PolicyPlan`] rendered into filter-table chains
//! and the ipsets they match against.
//!
//! Layout (filter table; every rule carries a comment):
//!
//! - `KNP-FORWARD`, hooked from `FORWARD` (routed and, with `br_netfilter`, bridged Pod
//!   traffic, after DNAT): for each isolated Pod IP, `-d IP -j KNP-I-<id>` (ingress) and
//!   `-s IP -j KNP-E-<id>` (egress). Traffic between two Pods of this Node passes both.
//! - `KNP-INPUT`, hooked from `INPUT`: `-s IP -j KNP-E-<id>`, for Pods reaching this Node
//!   (its addresses, or a Service DNATed to a hostNetwork endpoint).
//! - `KNP-I-<id>` / `KNP-E-<id>`, one per isolated direction of a Pod, in the plan's order:
//!   replies (`ESTABLISHED,RELATED`) and, in ip6tables, neighbour discovery accepted; this
//!   Node's own addresses (`addrtype LOCAL`, ingress only) and the Pod's own IPs let through;
//!   one rule per allowing match, commented `ns/name ingress[0]`; then `DROP`.
//!
//! A direction that allows a packet `RETURN`s rather than `ACCEPT`s, so a packet between two
//! isolated Pods of this Node is judged by the destination's ingress chain *and* the
//! source's egress chain; whatever passes both continues through `FORWARD` (kube-proxy's
//! `KUBE-FORWARD`, the host's own rules) as it would without policies. Only replies are
//! accepted outright.
//!
//! Peers are ipsets named by content (`KNP-` + 16 characters), so rules do not grow as
//! Pods × peers. Applying is two-phase ([`PolicyRules::ipset_input`] before the
//! `iptables-restore`, [`destroy_sets_input`] for [stale sets](PolicyRules::stale_sets)
//! after it), so no rule ever refers to a set that is missing or half-filled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use netd_model::PodRef;
use netd_policy::plan::{
    AddressSet, DirectionPlan, PlanMatch, PodPlan, PortMatch, SetMembers, SetName,
};
use netd_policy::{Direction as PolicyDirection, PolicyPlan};
use netd_proxy::IpFamily;

use crate::ipset::{IpSet, IpSets, SetDefinition};
use crate::iptables::{
    ChainName, CtState, Direction, HookRule, Match, PortRange, Rule, Ruleset, Table, Target,
};

/// The chain hooked from `FORWARD` that dispatches to the per-Pod chains.
pub const POLICY_FORWARD: &str = "KNP-FORWARD";
/// The chain hooked from `INPUT` that dispatches Pods' packets to this Node to their egress
/// chains.
pub const POLICY_INPUT: &str = "KNP-INPUT";
/// The prefix of every chain and every ipset the policy back end owns.
pub const POLICY_PREFIX: &str = "KNP-";
/// The prefix of a Pod's ingress chain (`KNP-I-<id>`).
pub const INGRESS_CHAIN_PREFIX: &str = "KNP-I-";
/// The prefix of a Pod's egress chain (`KNP-E-<id>`).
pub const EGRESS_CHAIN_PREFIX: &str = "KNP-E-";

/// Suffix of the scratch set a set's new members are loaded into before the swap.
const SCRATCH_SUFFIX: &str = "-N";
/// Limits that never change between syncs: `create -exist` of an existing set succeeds only
/// when its parameters are the same.
const SET_OPTIONS: &str = "hashsize 1024 maxelem 1048576";
/// iptables allows 256 bytes of comment; lists of policies are shortened well below that.
const MAX_LISTED_POLICIES: usize = 3;

/// The ICMPv6 types of neighbour discovery an isolated Pod always sends and receives:
/// solicitation (135) and advertisement (136).
const NEIGHBOUR_DISCOVERY: [(&str, u8); 2] = [("solicitation", 135), ("advertisement", 136)];

/// The rendered policy rules of one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRules {
    /// The filter-table chains (`KNP-FORWARD`, `KNP-INPUT`, `KNP-I-*`, `KNP-E-*`).
    pub ruleset: Ruleset,
    /// The jumps into [`POLICY_FORWARD`] and [`POLICY_INPUT`] from the built-in chains. They
    /// must come before anything that accepts forwarded traffic (kube-proxy's `KUBE-FORWARD`).
    pub hooks: Vec<HookRule>,
    /// The sets the rules match against, by name.
    pub sets: BTreeMap<SetName, AddressSet>,
}

/// Renders the plan's rules for `family` (sets and matches of the other family are left out).
pub fn render_policy(plan: &PolicyPlan, family: IpFamily) -> PolicyRules {
    let mut r = Renderer {
        rs: Ruleset::new(family),
        plan,
        family,
        used: BTreeSet::new(),
        forward: ChainName::from(POLICY_FORWARD),
        input: ChainName::from(POLICY_INPUT),
    };
    r.rs.declare(Table::Filter, &r.forward);
    r.rs.declare(Table::Filter, &r.input);
    for pod in &plan.pods {
        r.pod(pod);
    }
    let sets = r
        .used
        .iter()
        .filter_map(|name| Some((name.clone(), plan.set(name)?.clone())))
        .collect();
    PolicyRules {
        ruleset: r.rs,
        hooks: hooks(),
        sets,
    }
}

impl PolicyRules {
    /// The `iptables-restore --noflush` payload of the policy chains: each is declared (so
    /// flushed) and refilled in one transaction.
    pub fn restore_input(&self) -> String {
        self.ruleset.to_restore()
    }

    /// The sets the rules match against, with their definitions and members, by name.
    pub fn ipsets(&self) -> IpSets {
        self.sets
            .iter()
            .map(|(name, set)| IpSet {
                name: name.as_str().to_owned(),
                scratch: format!("{name}{SCRATCH_SUFFIX}"),
                definition: definition(set),
                members: members(&set.members),
            })
            .collect()
    }

    /// The `ipset restore -exist` payload run before the rules: each set is created if
    /// missing, its members are loaded into a scratch set, and the two are swapped, so a set
    /// the kernel already matches against is never seen empty or half-filled
    /// ([`IpSets::full_input`]).
    pub fn ipset_input(&self) -> String {
        self.ipsets().full_input()
    }

    /// The names of the sets in use.
    pub fn set_names(&self) -> BTreeSet<String> {
        self.sets.keys().map(|n| n.as_str().to_owned()).collect()
    }

    /// Of the sets the kernel has (`existing`), those that are ours and no longer used: they
    /// are destroyed after the new rules are in place ([`destroy_sets_input`]).
    pub fn stale_sets<'a>(&self, existing: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let used = self.set_names();
        existing
            .into_iter()
            .filter(|n| is_policy_set(n) && !used.contains(*n))
            .map(str::to_owned)
            .collect()
    }

    /// The rules plus the hook rules in the built-in chains, for the tracer.
    pub fn installed(&self) -> Ruleset {
        let mut rs = self.ruleset.clone();
        for hook in &self.hooks {
            rs.prepend(hook.table, &hook.chain, hook.rule.clone());
        }
        rs
    }
}

/// Whether a chain is one of the policy back end's.
pub fn is_policy_chain(chain: &str) -> bool {
    chain.starts_with(POLICY_PREFIX)
}

/// Whether an ipset is one of the policy back end's.
pub fn is_policy_set(set: &str) -> bool {
    set.starts_with(POLICY_PREFIX)
}

/// The `ipset restore` payload that destroys `sets` (after no rule refers to them).
pub fn destroy_sets_input(sets: &[String]) -> String {
    let mut out = String::new();
    for set in sets {
        let _ = writeln!(out, "destroy {set}");
    }
    out
}

/// The chain of one isolated direction of a Pod: `KNP-I-<id>` or `KNP-E-<id>`.
pub fn pod_chain(pod: &PodPlan, direction: PolicyDirection) -> ChainName {
    let prefix = match direction {
        PolicyDirection::Ingress => INGRESS_CHAIN_PREFIX,
        PolicyDirection::Egress => EGRESS_CHAIN_PREFIX,
    };
    ChainName::new(format!("{prefix}{}", pod.id))
}

/// The hooks, in insertion order (each goes to the top of its chain).
fn hooks() -> Vec<HookRule> {
    let hook = |chain: &str, to: &str| HookRule {
        table: Table::Filter,
        chain: ChainName::from(chain),
        rule: Rule::new()
            .comment("kube-netd network policy")
            .jump(&ChainName::from(to)),
    };
    vec![hook("INPUT", POLICY_INPUT), hook("FORWARD", POLICY_FORWARD)]
}

struct Renderer<'a> {
    rs: Ruleset,
    plan: &'a PolicyPlan,
    family: IpFamily,
    used: BTreeSet<SetName>,
    forward: ChainName,
    input: ChainName,
}

impl Renderer<'_> {
    fn pod(&mut self, pod: &PodPlan) {
        let ips: Vec<IpAddr> = pod
            .ips
            .iter()
            .copied()
            .filter(|ip| self.family.contains(*ip))
            .collect();
        if ips.is_empty() {
            return;
        }
        for direction in [PolicyDirection::Ingress, PolicyDirection::Egress] {
            let Some(plan) = pod.direction(direction) else {
                continue;
            };
            let chain = pod_chain(pod, direction);
            let comment = format!("{} {direction}", pod.pod);
            for ip in &ips {
                let dispatch = Rule::new().comment(comment.as_str());
                match direction {
                    PolicyDirection::Ingress => {
                        let forward = self.forward.clone();
                        self.rs.append(
                            Table::Filter,
                            &forward,
                            dispatch.destination(*ip).jump(&chain),
                        );
                    }
                    PolicyDirection::Egress => {
                        let rule = dispatch.source(*ip).jump(&chain);
                        let (forward, input) = (self.forward.clone(), self.input.clone());
                        self.rs.append(Table::Filter, &forward, rule.clone());
                        self.rs.append(Table::Filter, &input, rule);
                    }
                }
            }
            self.direction(&pod.pod, direction, plan, &chain);
        }
    }

    fn direction(
        &mut self,
        pod: &PodRef,
        direction: PolicyDirection,
        plan: &DirectionPlan,
        chain: &ChainName,
    ) {
        let what = format!("{pod} {direction}");
        let mut rules = vec![
            Rule::new()
                .comment(format!("{what}: replies"))
                .ctstate(&[CtState::Related, CtState::Established])
                .target(Target::Accept),
        ];
        if self.family == IpFamily::V6 {
            // IPv6 finds neighbours (the gateway, Pods on the same bridge) with ICMPv6
            // solicitations and advertisements, which conntrack does not track: dropping them
            // would cut off even the peers a policy allows, as ARP is never filtered here.
            for (name, icmp_type) in NEIGHBOUR_DISCOVERY {
                rules.push(
                    Rule::new()
                        .comment(format!("{what}: neighbour {name}"))
                        .with(Match::Icmpv6Type(icmp_type))
                        .target(Target::Accept),
                );
            }
        }
        if plan.allow_local_node {
            rules.push(
                Rule::new()
                    .comment(format!("{what}: from this node"))
                    .with(Match::AddrTypeLocal {
                        direction: Direction::Src,
                        negated: false,
                    })
                    .target(Target::Return),
            );
        }
        for ip in plan
            .exempt_peers
            .iter()
            .filter(|ip| self.family.contains(**ip))
        {
            let rule = Rule::new().comment(format!("{what}: itself"));
            let rule = match direction {
                PolicyDirection::Ingress => rule.source(*ip),
                PolicyDirection::Egress => rule.destination(*ip),
            };
            rules.push(rule.target(Target::Return));
        }
        let peer = match direction {
            PolicyDirection::Ingress => Direction::Src,
            PolicyDirection::Egress => Direction::Dst,
        };
        for rule in &plan.rules {
            let comment = rule.comment();
            for m in &rule.matches {
                self.matches(&comment, peer, m, &mut rules);
            }
        }
        rules.push(
            Rule::new()
                .comment(format!("{what}: isolated by {}", policies(plan)))
                .target(Target::Drop),
        );
        self.rs.chain_mut(Table::Filter, chain).extend(rules);
    }

    /// The rules of one accepting match (none when its set is of the other family).
    fn matches(&mut self, comment: &str, peer: Direction, m: &PlanMatch, out: &mut Vec<Rule>) {
        match m {
            PlanMatch::Peers { peers, ports } => {
                let mut base = Rule::new().comment(comment);
                if let Some(set) = peers {
                    if !self.use_set(set) {
                        return;
                    }
                    base = base.with(set_match(set, vec![peer]));
                }
                if ports.is_empty() {
                    out.push(base.target(Target::Return));
                    return;
                }
                for port in ports {
                    out.push(port_rule(base.clone(), port).target(Target::Return));
                }
            }
            PlanMatch::PeerPorts { set } => {
                if !self.use_set(set) {
                    return;
                }
                out.push(
                    Rule::new()
                        .comment(comment)
                        .with(set_match(set, vec![Direction::Dst, Direction::Dst]))
                        .target(Target::Return),
                );
            }
        }
    }

    /// Records that a set is referred to; false when it is of the other family (or unknown).
    fn use_set(&mut self, set: &SetName) -> bool {
        let ok = self.plan.set(set).is_some_and(|s| s.family == self.family);
        if ok {
            self.used.insert(set.clone());
        }
        ok
    }
}

fn set_match(set: &SetName, directions: Vec<Direction>) -> Match {
    Match::Set {
        name: set.as_str().to_owned(),
        directions,
        negated: false,
    }
}

fn port_rule(rule: Rule, port: &PortMatch) -> Rule {
    let rule = rule.protocol(port.protocol);
    match port.ports {
        Some(r) => rule.with(Match::DestinationPort(PortRange {
            first: r.first,
            last: r.last,
        })),
        None => rule,
    }
}

/// `ns/a, ns/b` or `ns/a, ns/b, ns/c and 2 more`.
fn policies(plan: &DirectionPlan) -> String {
    let mut out = plan
        .isolated_by
        .iter()
        .take(MAX_LISTED_POLICIES)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if plan.isolated_by.len() > MAX_LISTED_POLICIES {
        let _ = write!(
            out,
            " and {} more",
            plan.isolated_by.len() - MAX_LISTED_POLICIES
        );
    }
    out
}

/// The ipset type and family of a set.
fn definition(set: &AddressSet) -> SetDefinition {
    let kind = match set.members {
        SetMembers::Addresses(_) => "hash:ip",
        SetMembers::Networks(_) => "hash:net",
        SetMembers::AddressPorts(_) => "hash:ip,port",
    };
    SetDefinition {
        kind,
        family: Some(set.family),
        options: SET_OPTIONS,
    }
}

fn members(members: &SetMembers) -> Vec<String> {
    match members {
        SetMembers::Addresses(ips) => ips.iter().map(IpAddr::to_string).collect(),
        SetMembers::Networks(nets) => nets.iter().map(ToString::to_string).collect(),
        SetMembers::AddressPorts(entries) => entries
            .iter()
            .map(|e| format!("{},{}:{}", e.ip, e.protocol.as_lower_str(), e.port))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_model::NodeName;

    const CLUSTER: &str = concat!(
        netd_testkit::node_1!(),
        r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}, {port: 53, protocol: UDP}]}]
  egress: [{to: [{podSelector: {}}], ports: [{port: http}]}]
"#
    );

    fn rules() -> PolicyRules {
        let state = netd_testkit::state(CLUSTER);
        let plan = netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan");
        render_policy(&plan, IpFamily::V4)
    }

    #[test]
    fn every_rule_has_a_comment_and_isolated_chains_end_in_drop() {
        let r = rules();
        for (chain, list) in r.ruleset.chains(Table::Filter) {
            for rule in list {
                assert!(
                    matches!(rule.matches.first(), Some(Match::Comment(_))),
                    "{chain}: {rule}"
                );
            }
            if chain.as_str().starts_with("KNP-I-") || chain.as_str().starts_with("KNP-E-") {
                assert_eq!(
                    list.last().and_then(|r| r.target.clone()),
                    Some(Target::Drop)
                );
                assert!(
                    list[0]
                        .to_string()
                        .contains("--ctstate RELATED,ESTABLISHED -j ACCEPT")
                );
            }
        }
    }

    #[test]
    fn isolated_chains_let_ipv6_neighbour_discovery_through_in_ip6tables_only() {
        let cluster = CLUSTER
            .replace("podCIDR: 10.244.1.0/24", "podCIDR: fd00:10:244:1::/64")
            .replace("podIP: 10.244.1.", "podIP: fd00:10:244:1::");
        let config = netd_model::ClusterConfig::for_families(netd_model::IpFamilies::Ipv6);
        let state = netd_testkit::state_with(&cluster, config);
        let plan = netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan");
        let v6 = render_policy(&plan, IpFamily::V6).restore_input();
        for t in [135, 136] {
            let rule = format!("-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT");
            // Ingress and egress chain of x/a, each after the replies rule.
            assert_eq!(v6.matches(&rule).count(), 2, "{v6}");
        }
        assert!(!rules().restore_input().contains("icmp6"));
    }

    #[test]
    fn rules_name_their_policy_rule_and_match_sets_by_direction() {
        let text = rules().restore_input();
        assert!(
            text.contains(r#"-m comment --comment "x/p ingress[0]" -m set --match-set KNP-"#),
            "{text}"
        );
        assert!(
            text.contains(" src -m tcp -p tcp --dport 80 -j RETURN"),
            "{text}"
        );
        assert!(
            text.contains(" src -m udp -p udp --dport 53 -j RETURN"),
            "{text}"
        );
        assert!(text.contains(" dst,dst -j RETURN"), "{text}");
        assert!(
            text.contains("-m addrtype --src-type LOCAL -j RETURN"),
            "{text}"
        );
    }

    #[test]
    fn ipset_payload_swaps_and_stale_sets_are_ours_only() {
        let r = rules();
        let payload = r.ipset_input();
        assert!(payload.contains("hash:ip,port family inet"), "{payload}");
        assert!(payload.contains(",tcp:80\n"), "{payload}");
        let names = r.set_names();
        let first = names.iter().next().expect("a set");
        assert!(
            payload.contains(&format!("swap {first}-N {first}\n")),
            "{payload}"
        );
        let existing = [first.as_str(), "KNP-OLD", "OTHER"];
        assert_eq!(r.stale_sets(existing), vec!["KNP-OLD".to_owned()]);
        assert_eq!(destroy_sets_input(&["KNP-OLD".into()]), "destroy KNP-OLD\n");
    }

    #[test]
    fn each_family_gets_only_its_own_addresses_and_sets() {
        let dual = CLUSTER
            .replace(
                "status: {podIP: 10.244.1.3}",
                "status: {podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}, {ip: 'fd00::3'}]}",
            )
            .replace(
                "status: {podIP: 10.244.1.2}",
                "status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00::2'}]}",
            );
        let state = netd_testkit::state(&dual);
        let plan = netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan");
        for (family, own, other) in [
            (IpFamily::V4, "10.244.1.2", "fd00::2"),
            (IpFamily::V6, "fd00::2", "10.244.1.2"),
        ] {
            let r = render_policy(&plan, family);
            let text = r.restore_input();
            assert!(text.contains(&format!("-d {own} -j KNP-I-")), "{text}");
            assert!(!text.contains(other), "{text}");
            for set in r.ipsets().iter() {
                assert_eq!(set.definition.family, Some(family), "{}", set.name);
            }
            assert!(!r.sets.is_empty());
        }
    }

    #[test]
    fn long_policy_lists_are_shortened() {
        let plan = DirectionPlan {
            isolated_by: (0..5)
                .map(|i| netd_model::PolicyRef::new("x", format!("p{i}").as_str()))
                .collect(),
            allow_local_node: false,
            exempt_peers: Vec::new(),
            rules: Vec::new(),
        };
        assert_eq!(policies(&plan), "x/p0, x/p1, x/p2 and 2 more");
    }
}
