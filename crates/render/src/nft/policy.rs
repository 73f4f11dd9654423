//! The nftables NetworkPolicy back end: a [`PolicyPlan`] rendered into the sets, maps and
//! chains it adds to kube-netd's table of one family, next to the Services' chains.
//!
//! Layout (every rule and every map element carries a comment):
//!
//! - `policy-forward` (`type filter hook forward priority -120`) looks the destination up
//!   in the verdict map `policy-ingress-pods` and the source in `policy-egress-pods`;
//!   `policy-input` (`hook input`, same priority) looks the source up in
//!   `policy-egress-pods`, for Pods reaching this Node (its addresses, or a Service DNATed to
//!   a hostNetwork endpoint). Each map sends an isolated Pod's IP to its chain with `jump`,
//!   so a Pod coming or going is an element update and the dispatch costs one hash lookup
//!   however many Pods the Node has. Traffic between two Pods of this Node passes both maps.
//! - `policy-ingress-<id>` / `policy-egress-<id>`, one per isolated direction of a Pod (`id`
//!   as in [`PodPlan::id`]), in the plan's order: replies (`ct state established,related`)
//!   accepted and, in `ip6`, neighbour discovery; this Node's own addresses (`fib saddr type
//!   local`, ingress only) and the Pod's own IPs let through; one rule per allowing match,
//!   commented `ns/name ingress[0]`; then `drop`.
//! - The plan's address sets under their content-derived names (`KNP-…`, the same names the
//!   iptables mode gives its ipsets): Pod IPs as plain sets, ipBlocks (their `except`s
//!   already subtracted) as interval sets, egress named ports as `addr . inet_proto .
//!   inet_service` sets matched with `daddr . meta l4proto . th dport`.
//!
//! As in the iptables mode, a direction that allows a packet `return`s, so a packet between
//! two isolated Pods of this Node is judged by the destination's ingress chain and the
//! source's egress chain; only replies are accepted outright.
//!
//! ## Why priority -120 on forward and input
//!
//! nftables runs every base chain on a hook in priority order, and an `accept` ends only the
//! base chain it is in: a `drop` in any chain is final. So policy does not need to come before
//! an accept to take effect; it must come before anything that would answer the packet in
//! its stead. kube-proxy's filter chains (`filter-forward`, `filter-input`) run at `dstnat -
//! 10` (-110) and reject new connections to a Service without endpoints; iptables mode judges
//! policy first (`KNP-FORWARD` is the first rule of `FORWARD`), so a Pod whose egress is
//! denied has its packet dropped, not rejected. At -120 policy runs first here too. It runs
//! after connection tracking (-200), so `ct state` is known, and on `forward` and `input`
//! the destination has already been DNATed (`nat-prerouting`, -100, is on the earlier
//! prerouting hook), so ingress sees the endpoint Pod's IP, as in iptables mode. Like
//! iptables mode, the output hook is not used: packets this Node sends to its Pods are
//! always allowed (`fib saddr type local`), and Pods' own packets never pass it.
//!
//! Pods on a bridge: frames a bridge forwards between two of its ports reach the `ip` and
//! `ip6` families' forward hook only with `br_netfilter` loaded and `bridge-nf-call-iptables`
//! (and `-ip6tables`) set, which the lab does; Pods routed through the Node (the lab's /32
//! addresses) pass the forward hook anyway.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netd_model::PodRef;
use netd_policy::plan::{
    AddressSet, DirectionPlan, PlanMatch, PodPlan, PortMatch, SetMembers, SetName,
};
use netd_policy::{Direction, PolicyPlan};
use netd_proxy::IpFamily;

use super::ast::{
    AddrType, BaseChain, Chain, ChainType, CtState, DataType, Field, Hook, KeyType, MapRef,
    MapValue, Match, Op, Priority, Rhs, Rule, Set, SetFlag, StandardPriority, Statement, Table,
    Value, Verdict,
};

/// The base chain on the forward hook.
pub const FORWARD_CHAIN: &str = "policy-forward";
/// The base chain on the input hook.
pub const INPUT_CHAIN: &str = "policy-input";
/// The verdict map from an isolated Pod's IP to its ingress chain.
pub const INGRESS_MAP: &str = "policy-ingress-pods";
/// The verdict map from an isolated Pod's IP to its egress chain.
pub const EGRESS_MAP: &str = "policy-egress-pods";
/// The prefix of every chain and map the policy back end owns.
pub const CHAIN_PREFIX: &str = "policy-";
/// The prefix of a Pod's ingress chain (`policy-ingress-<id>`).
pub const INGRESS_CHAIN_PREFIX: &str = "policy-ingress-";
/// The prefix of a Pod's egress chain (`policy-egress-<id>`).
pub const EGRESS_CHAIN_PREFIX: &str = "policy-egress-";
/// The prefix of the address sets (the plan's [`SetName`]s).
pub const SET_PREFIX: &str = "KNP-";

/// The priority of both base chains: before kube-proxy's filter chains (`dstnat - 10`), see
/// the module documentation.
pub const PRIORITY: Priority = Priority::plus(StandardPriority::Dstnat, -20);

/// nft refuses comments longer than this many bytes.
const MAX_COMMENT: usize = 128;
/// Policies named in a drop rule's comment before `and N more`.
const MAX_LISTED_POLICIES: usize = 3;
/// The ICMPv6 types of neighbour discovery an isolated Pod always sends and receives:
/// solicitation (135) and advertisement (136).
const NEIGHBOUR_DISCOVERY: [(&str, u32); 2] = [("solicitation", 135), ("advertisement", 136)];

/// Renders the plan's rules for `family` into a table holding only the policy back end's
/// sets, maps and chains (sets and matches of the other family are left out). Merge it into
/// the table the Services renderer produces with [`merge_into`]; its names never collide
/// with the Services' (they start with [`CHAIN_PREFIX`] or [`SET_PREFIX`]).
pub fn render_policy_nft(plan: &PolicyPlan, family: IpFamily) -> Table {
    let mut r = Renderer {
        table: Table::new(family),
        plan,
        family,
        used: BTreeSet::new(),
        ingress: Set::map(INGRESS_MAP, vec![KeyType::addr(family)], DataType::Verdict)
            .with_comment("isolated pods' ingress chains, by destination"),
        egress: Set::map(EGRESS_MAP, vec![KeyType::addr(family)], DataType::Verdict)
            .with_comment("isolated pods' egress chains, by source"),
    };
    for pod in &plan.pods {
        r.pod(pod);
    }
    let Renderer {
        mut table,
        used,
        ingress,
        egress,
        ..
    } = r;
    for name in &used {
        if let Some(set) = plan.set(name) {
            table.add_set(address_set(name, set, family));
        }
    }
    table.add_set(ingress);
    table.add_set(egress);
    let dispatch = |field: Field, map: &str, comment: &str| {
        Rule::new()
            .then(Statement::Vmap {
                fields: vec![field],
                map: MapRef::Named(map.to_owned()),
            })
            .comment(comment)
    };
    let mut forward = Chain::base(FORWARD_CHAIN, base(Hook::Forward));
    forward.push(dispatch(
        Field::Daddr,
        INGRESS_MAP,
        "ingress of isolated pods",
    ));
    forward.push(dispatch(
        Field::Saddr,
        EGRESS_MAP,
        "egress of isolated pods",
    ));
    let mut input = Chain::base(INPUT_CHAIN, base(Hook::Input));
    input.push(dispatch(
        Field::Saddr,
        EGRESS_MAP,
        "egress of isolated pods to this node",
    ));
    table.add_chain(forward);
    table.add_chain(input);
    table
}

/// Adds the policy table's sets, maps and chains to `table` (the Services' table of the same
/// family).
pub fn merge_into(table: &mut Table, policy: Table) {
    for set in policy.sets.into_values() {
        table.add_set(set);
    }
    for chain in policy.chains.into_values() {
        table.add_chain(chain);
    }
}

/// Whether a chain, set or map is one of the policy back end's.
pub fn is_policy_object(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX) || name.starts_with(SET_PREFIX)
}

/// The chain of one isolated direction of a Pod: `policy-ingress-<id>` or
/// `policy-egress-<id>`.
pub fn pod_chain(pod: &PodPlan, direction: Direction) -> String {
    let prefix = match direction {
        Direction::Ingress => INGRESS_CHAIN_PREFIX,
        Direction::Egress => EGRESS_CHAIN_PREFIX,
    };
    format!("{prefix}{}", pod.id)
}

fn base(hook: Hook) -> BaseChain {
    BaseChain {
        kind: ChainType::Filter,
        hook,
        priority: PRIORITY,
    }
}

struct Renderer<'a> {
    table: Table,
    plan: &'a PolicyPlan,
    family: IpFamily,
    used: BTreeSet<SetName>,
    ingress: Set,
    egress: Set,
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
        for direction in [Direction::Ingress, Direction::Egress] {
            let Some(plan) = pod.direction(direction) else {
                continue;
            };
            let chain = pod_chain(pod, direction);
            let map = match direction {
                Direction::Ingress => &mut self.ingress,
                Direction::Egress => &mut self.egress,
            };
            for ip in &ips {
                map.insert_mapping(
                    vec![Value::Ip(*ip)],
                    MapValue::Verdict(Verdict::Jump(chain.clone())),
                    Some(comment(format!("{} {direction}", pod.pod))),
                );
            }
            let rules = self.direction(&pod.pod, direction, plan);
            let mut c = Chain::regular(chain);
            rules.into_iter().for_each(|r| c.push(r));
            self.table.add_chain(c);
        }
    }

    fn direction(&mut self, pod: &PodRef, direction: Direction, plan: &DirectionPlan) -> Vec<Rule> {
        let what = format!("{pod} {direction}");
        let mut rules = vec![
            Rule::new()
                .matching(ct_state(&[CtState::Established, CtState::Related]))
                .verdict(Verdict::Accept)
                .comment(comment(format!("{what}: replies"))),
        ];
        if self.family == IpFamily::V6 {
            // Neighbour discovery is not tracked by conntrack; dropping it would cut the Pod
            // off from its gateway and from the peers a policy allows (ARP, its IPv4
            // counterpart, is never filtered here).
            for (name, icmp_type) in NEIGHBOUR_DISCOVERY {
                rules.push(
                    Rule::new()
                        .matching(Match::eq(Field::Icmpv6Type, Value::Int(icmp_type)))
                        .verdict(Verdict::Accept)
                        .comment(comment(format!("{what}: neighbour {name}"))),
                );
            }
        }
        if plan.allow_local_node {
            rules.push(
                Rule::new()
                    .matching(Match::eq(
                        Field::FibSaddrType,
                        Value::AddrType(AddrType::Local),
                    ))
                    .verdict(Verdict::Return)
                    .comment(comment(format!("{what}: from this node"))),
            );
        }
        let peer = match direction {
            Direction::Ingress => Field::Saddr,
            Direction::Egress => Field::Daddr,
        };
        for ip in plan
            .exempt_peers
            .iter()
            .filter(|ip| self.family.contains(**ip))
        {
            rules.push(
                Rule::new()
                    .matching(Match::eq(peer, Value::Ip(*ip)))
                    .verdict(Verdict::Return)
                    .comment(comment(format!("{what}: itself"))),
            );
        }
        for rule in &plan.rules {
            let text = comment(rule.comment());
            for m in &rule.matches {
                self.matches(&text, peer, m, &mut rules);
            }
        }
        rules.push(
            Rule::new()
                .verdict(Verdict::Drop)
                .comment(comment(format!("{what}: isolated by {}", policies(plan)))),
        );
        rules
    }

    /// The rules of one accepting match (none when its set is of the other family).
    fn matches(&mut self, comment: &str, peer: Field, m: &PlanMatch, out: &mut Vec<Rule>) {
        match m {
            PlanMatch::Peers { peers, ports } => {
                let mut base = Rule::new();
                if let Some(set) = peers {
                    if !self.use_set(set) {
                        return;
                    }
                    base = base.matching(Match::in_set(vec![peer], set.as_str()));
                }
                if ports.is_empty() {
                    out.push(base.verdict(Verdict::Return).comment(comment));
                    return;
                }
                for port in ports {
                    out.push(
                        base.clone()
                            .matching(port_match(port))
                            .verdict(Verdict::Return)
                            .comment(comment),
                    );
                }
            }
            PlanMatch::PeerPorts { set } => {
                if !self.use_set(set) {
                    return;
                }
                out.push(
                    Rule::new()
                        .matching(Match::in_set(
                            vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                            set.as_str(),
                        ))
                        .verdict(Verdict::Return)
                        .comment(comment),
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

/// `ct state` in any of `states` (a bit test, no anonymous set).
fn ct_state(states: &[CtState]) -> Match {
    Match {
        fields: vec![Field::CtState],
        op: Op::Eq,
        rhs: Rhs::AnyOf(states.iter().map(|s| Value::CtState(*s)).collect()),
    }
}

/// `tcp dport 80`, `udp dport 8000-8080`, or `meta l4proto sctp` for every port.
fn port_match(port: &PortMatch) -> Match {
    match port.ports {
        Some(r) if r.first == r.last => {
            Match::eq(Field::dport(port.protocol), Value::Port(r.first))
        }
        Some(r) => Match::eq(
            Field::dport(port.protocol),
            Value::PortRange(r.first, r.last),
        ),
        None => Match::eq(Field::L4Proto, Value::Proto(port.protocol)),
    }
}

/// The nftables set of one of the plan's address sets.
fn address_set(name: &SetName, set: &AddressSet, family: IpFamily) -> Set {
    let addr = KeyType::addr(family);
    match &set.members {
        SetMembers::Addresses(ips) => {
            let mut s = Set::new(name.as_str(), vec![addr]).with_comment("pod ips");
            ips.iter()
                .for_each(|ip| s.insert(vec![Value::Ip(*ip)], None));
            s
        }
        SetMembers::Networks(nets) => {
            let mut s = Set::new(name.as_str(), vec![addr])
                .with_flag(SetFlag::Interval)
                .with_comment("ip block");
            nets.iter()
                .for_each(|net| s.insert(vec![Value::Net(*net)], None));
            s
        }
        SetMembers::AddressPorts(entries) => {
            let mut s = Set::new(
                name.as_str(),
                vec![addr, KeyType::InetProto, KeyType::InetService],
            )
            .with_comment("pod ips with named ports");
            entries.iter().for_each(|e| {
                s.insert(
                    vec![
                        Value::Ip(e.ip),
                        Value::Proto(e.protocol),
                        Value::Port(e.port),
                    ],
                    None,
                )
            });
            s
        }
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
        out.push_str(&format!(
            " and {} more",
            plan.isolated_by.len() - MAX_LISTED_POLICIES
        ));
    }
    out
}

/// A comment nft accepts: at most [`MAX_COMMENT`] bytes, cut at a character boundary and
/// ended with `...` when longer (Kubernetes names alone can be 316 bytes).
fn comment(text: impl Into<String>) -> String {
    let mut text = text.into();
    if text.len() <= MAX_COMMENT {
        return text;
    }
    let mut end = MAX_COMMENT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
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

    fn plan(yaml: &str) -> PolicyPlan {
        let state = netd_testkit::state(yaml);
        netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan")
    }

    fn dual_stack() -> String {
        CLUSTER
            .replace(
                "status: {podIP: 10.244.1.3}",
                "status: {podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}, {ip: 'fd00::3'}]}",
            )
            .replace(
                "status: {podIP: 10.244.1.2}",
                "status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00::2'}]}",
            )
    }

    #[test]
    fn every_rule_has_a_comment_and_pod_chains_start_with_replies_and_end_in_drop() {
        let table = render_policy_nft(&plan(CLUSTER), IpFamily::V4);
        let pod_chains: Vec<&Chain> = table.chains.values().filter(|c| c.base.is_none()).collect();
        assert_eq!(pod_chains.len(), 2, "{table}");
        for chain in table.chains.values() {
            assert!(is_policy_object(&chain.name), "{}", chain.name);
            for rule in &chain.rules {
                assert!(rule.comment.is_some(), "{}: {rule:?}", chain.name);
            }
        }
        for chain in pod_chains {
            let first = chain.rules.first().expect("rules").display(IpFamily::V4);
            assert!(
                first.starts_with("ct state established,related accept"),
                "{first}"
            );
            let last = chain.rules.last().expect("rules");
            assert_eq!(last.statements, vec![Statement::Verdict(Verdict::Drop)]);
            assert!(last.matches.is_empty());
        }
        for name in table.sets.keys() {
            assert!(is_policy_object(name), "{name}");
        }
    }

    #[test]
    fn maps_send_each_isolated_ip_to_its_chain_and_allows_return() {
        let plan = plan(CLUSTER);
        let table = render_policy_nft(&plan, IpFamily::V4);
        let pod = &plan.pods[0];
        for (map, direction) in [
            (INGRESS_MAP, Direction::Ingress),
            (EGRESS_MAP, Direction::Egress),
        ] {
            let element = table.sets[map]
                .elements
                .get(&vec![Value::Ip("10.244.1.2".parse().expect("ip"))])
                .unwrap_or_else(|| panic!("{map}: {table}"));
            let chain = pod_chain(pod, direction);
            assert_eq!(
                element.value,
                Some(MapValue::Verdict(Verdict::Jump(chain.clone())))
            );
            assert!(table.chains.contains_key(&chain));
        }
        let text = table.to_nft();
        for want in [
            "tcp dport 80 return comment \"x/p ingress[0]\"",
            "udp dport 53 return comment \"x/p ingress[0]\"",
            "ip daddr . meta l4proto . th dport @KNP-",
            "fib saddr type local return",
            "ip saddr 10.244.1.2 return comment \"x/a ingress: itself\"",
            "ip daddr 10.244.1.2 return comment \"x/a egress: itself\"",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }

    #[test]
    fn base_chains_run_before_kube_proxys_filter_chains_and_after_conntrack() {
        let table = render_policy_nft(&plan(CLUSTER), IpFamily::V4);
        let kube_proxy_filter = Priority::plus(StandardPriority::Dstnat, -10).value();
        let conntrack = -200;
        let mut hooks = Vec::new();
        for chain in table.chains.values() {
            let Some(base) = chain.base else { continue };
            assert!(base.priority.value() < kube_proxy_filter, "{}", chain.name);
            assert!(base.priority.value() > conntrack, "{}", chain.name);
            hooks.push(base.hook);
        }
        hooks.sort();
        assert_eq!(hooks, vec![Hook::Input, Hook::Forward]);
    }

    #[test]
    fn each_family_gets_only_its_own_addresses_and_sets() {
        let plan = plan(&dual_stack());
        for (family, own, other) in [
            (IpFamily::V4, "10.244.1.2", "fd00::2"),
            (IpFamily::V6, "fd00::2", "10.244.1.2"),
        ] {
            let table = render_policy_nft(&plan, family);
            let text = table.to_nft();
            assert!(
                text.contains(&format!("{own} comment \"x/a ingress\"")),
                "{text}"
            );
            assert!(!text.contains(other), "{text}");
            let addr = KeyType::addr(family);
            let address_sets: Vec<&Set> = table
                .sets
                .values()
                .filter(|s| s.name.starts_with(SET_PREFIX))
                .collect();
            assert!(!address_sets.is_empty());
            for set in address_sets {
                assert_eq!(set.key[0], addr, "{}", set.name);
            }
        }
    }

    #[test]
    fn ip6_chains_let_neighbour_discovery_through_after_replies() {
        let table = render_policy_nft(&plan(&dual_stack()), IpFamily::V6);
        let text = table.to_nft();
        for t in [135, 136] {
            // The ingress and the egress chain of x/a.
            assert_eq!(
                text.matches(&format!("icmpv6 type {t} accept")).count(),
                2,
                "{text}"
            );
        }
        let v4 = render_policy_nft(&plan(&dual_stack()), IpFamily::V4).to_nft();
        assert!(!v4.contains("icmpv6"), "{v4}");
    }

    #[test]
    fn ip_blocks_are_interval_sets_without_their_excepts() {
        let yaml = format!(
            "{CLUSTER}---\n{}",
            r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/30, except: [10.0.0.1/32]}}]}]
"#
        );
        let table = render_policy_nft(&plan(&yaml), IpFamily::V4);
        let blocks: Vec<&Set> = table
            .sets
            .values()
            .filter(|s| s.flags.contains(&SetFlag::Interval))
            .collect();
        assert_eq!(blocks.len(), 1, "{table}");
        let members: Vec<String> = blocks[0].elements.keys().map(|k| k[0].display()).collect();
        assert_eq!(members, ["10.0.0.0/32", "10.0.0.2/31"]);
    }

    #[test]
    fn comments_fit_nft_and_long_policy_lists_are_shortened() {
        let long = "n".repeat(300);
        // `é` takes bytes 124 and 125: the cut moves back to before it.
        let cut = comment(format!("{}é{long}", "x".repeat(124)));
        assert_eq!(cut, format!("{}...", "x".repeat(124)));
        assert_eq!(comment("x/a ingress"), "x/a ingress");
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

    #[test]
    fn merging_adds_everything_and_an_empty_plan_keeps_the_dispatch() {
        let mut table = Table::new(IpFamily::V4);
        table.add_chain(Chain::regular("services"));
        let policy = render_policy_nft(&plan(CLUSTER), IpFamily::V4);
        let (sets, chains) = (policy.sets.len(), policy.chains.len());
        merge_into(&mut table, policy);
        assert_eq!(table.sets.len(), sets);
        assert_eq!(table.chains.len(), chains + 1);
        let no_policy = CLUSTER
            .split("---\napiVersion: networking.k8s.io/v1")
            .next()
            .expect("the pods");
        let empty = render_policy_nft(&plan(no_policy), IpFamily::V4);
        let names: Vec<&str> = empty
            .chains
            .keys()
            .chain(empty.sets.keys())
            .map(String::as_str)
            .collect();
        assert_eq!(names, [FORWARD_CHAIN, INPUT_CHAIN, EGRESS_MAP, INGRESS_MAP]);
    }
}
