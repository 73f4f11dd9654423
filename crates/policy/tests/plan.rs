//! The plan: sets, named ports, excepts, and agreement with the engine on every pair.

mod common;

use std::net::IpAddr;

use common::cluster;
use ipnet::IpNet;
use netd_model::{ClusterState, NodeName, PodRef, Protocol};
use netd_policy::plan::{
    AddressPort, DirectionPlan, PlanMatch, PodPlan, PolicyPlan, PortMatch, PortRange, SetMembers,
};
use netd_policy::{Direction, Endpoint, Flow, compile, evaluate};

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

fn plan(state: &ClusterState, node: &str) -> PolicyPlan {
    compile(state, &NodeName::new(node)).expect("known node")
}

fn pod<'p>(plan: &'p PolicyPlan, key: &str) -> &'p PodPlan {
    let key: PodRef = key.parse().expect("ns/pod");
    plan.pods
        .iter()
        .find(|p| p.pod == key)
        .unwrap_or_else(|| panic!("{key} not in plan"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tcp(first: u16, last: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        ports: Some(PortRange { first, last }),
    }
}

#[test]
fn plan_lists_isolated_pods_of_the_node_only() {
    let state = cluster(
        &(policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ) + &policy(
            "y",
            "deny-a-egress",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]",
        )),
    );
    let p1 = plan(&state, "node-1");
    let keys: Vec<String> = p1.pods.iter().map(|p| p.pod.to_string()).collect();
    assert_eq!(keys, ["x/a", "x/c", "y/a"]);
    assert_eq!(p1.node_ips, vec![ip("172.18.0.2")]);
    let xa = pod(&p1, "x/a");
    assert_eq!(xa.ips, vec![ip("10.244.1.11")]);
    assert_eq!(xa.id.len(), 16);
    let ingress = xa.ingress.as_ref().expect("isolated for ingress");
    assert!(ingress.allow_local_node);
    assert_eq!(ingress.exempt_peers, vec![ip("10.244.1.11")]);
    assert!(ingress.rules.is_empty());
    assert!(
        !xa.egress
            .as_ref()
            .expect("isolated for egress")
            .allow_local_node
    );
    let ya = pod(&p1, "y/a");
    assert!(ya.ingress.is_none());
    assert_eq!(
        ya.direction(Direction::Egress).map(|d| d.isolated_by.len()),
        Some(1)
    );
    // x/h (hostNetwork) on node-2 is never in a plan
    let keys2: Vec<String> = plan(&state, "node-2")
        .pods
        .iter()
        .map(|p| p.pod.to_string())
        .collect();
    assert_eq!(keys2, ["x/b"]);
    assert!(compile(&state, &NodeName::new("node-9")).is_err());
    // deterministic
    assert_eq!(plan(&state, "node-1"), p1);
}

#[test]
fn equal_resolutions_share_one_set() {
    let state = cluster(
        &(policy(
            "x",
            "from-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
        ) + &policy(
            "x",
            "from-b-again",
            "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]",
        ) + &policy(
            "y",
            "from-x-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}]}]",
        ) + &policy(
            "y",
            "from-all-b",
            "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
        )),
    );
    let p = plan(&state, "node-1");
    let set_of = |key: &str| -> Vec<PlanMatch> {
        pod(&p, key)
            .ingress
            .as_ref()
            .expect("ingress")
            .rules
            .iter()
            .flat_map(|r| r.matches.clone())
            .collect()
    };
    let xa = set_of("x/a");
    let xc = set_of("x/c");
    let ya = set_of("y/a");
    let PlanMatch::Peers {
        peers: Some(name),
        ports,
    } = &xa[0]
    else {
        panic!("{xa:?}")
    };
    assert_eq!(ports, &vec![tcp(80, 80)]);
    // three selectors resolve to {x/b}: one set
    assert_eq!(
        xc,
        vec![PlanMatch::Peers {
            peers: Some(name.clone()),
            ports: vec![]
        }]
    );
    assert_eq!(ya, xc);
    assert_eq!(
        p.set(name).expect("set").members,
        SetMembers::Addresses(vec![ip("10.244.2.12")])
    );
    let yc = set_of("y/c");
    let PlanMatch::Peers {
        peers: Some(all_b), ..
    } = &yc[0]
    else {
        panic!("{yc:?}")
    };
    assert_eq!(
        p.set(all_b).expect("set").members,
        SetMembers::Addresses(vec![
            ip("10.244.2.12"),
            ip("10.244.2.22"),
            ip("10.244.2.32")
        ])
    );
    assert_eq!(p.sets.len(), 2);
    for name in p.sets.keys() {
        assert!(
            name.as_str().starts_with("KNP-") && name.as_str().len() <= 31,
            "{name}"
        );
    }
}

#[test]
fn named_ports_are_resolved_per_destination_pod() {
    let state = cluster(&policy(
        "x",
        "named",
        "  podSelector: {}\n  ingress: [{ports: [{port: http}, {port: 443}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: http}]}]",
    ));
    let p = plan(&state, "node-1");
    let ingress = |key: &str| {
        pod(&p, key).ingress.as_ref().expect("ingress").rules[0]
            .matches
            .clone()
    };
    assert_eq!(
        ingress("x/a"),
        vec![PlanMatch::Peers {
            peers: None,
            ports: vec![tcp(80, 80), tcp(443, 443)]
        }]
    );
    assert_eq!(
        ingress("x/c"),
        vec![PlanMatch::Peers {
            peers: None,
            ports: vec![tcp(443, 443), tcp(8080, 8080)]
        }]
    );
    let egress = pod(&p, "x/a").egress.as_ref().expect("egress").rules[0].clone();
    assert_eq!(egress.comment(), "x/named egress[0]");
    let [PlanMatch::PeerPorts { set }] = egress.matches.as_slice() else {
        panic!("{:?}", egress.matches)
    };
    // z/c declares no ports: not in the set
    let entry = |s: &str| AddressPort {
        ip: ip(s),
        protocol: Protocol::Tcp,
        port: 80,
    };
    assert_eq!(
        p.set(set).expect("set").members,
        SetMembers::AddressPorts(vec![entry("10.244.1.31"), entry("10.244.2.32")])
    );
    // a rule whose only (named) port the pod lacks allows nothing there
    let state = cluster(&policy(
        "z",
        "named",
        "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]",
    ));
    let p = plan(&state, "node-1");
    assert!(
        pod(&p, "z/c").ingress.as_ref().expect("ingress").rules[0]
            .matches
            .is_empty()
    );
    assert_eq!(
        pod(&p, "z/a").ingress.as_ref().expect("ingress").rules[0]
            .matches
            .len(),
        1
    );
}

#[test]
fn ip_blocks_have_their_excepts_subtracted() {
    let state = cluster(&policy(
        "x",
        "blocks",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.64.0.0/10, 10.1.2.0/24]}}]\n  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n    ports: [{port: 8000, endPort: 8080, protocol: UDP}]",
    ));
    let p = plan(&state, "node-1");
    let rules = &pod(&p, "x/a").egress.as_ref().expect("egress").rules;
    let members = |m: &PlanMatch| match m {
        PlanMatch::Peers { peers: Some(s), .. } => p.set(s).expect("set").members.clone(),
        other => panic!("{other:?}"),
    };
    let nets = |list: &[&str]| {
        SetMembers::Networks(
            list.iter()
                .map(|s| s.parse::<IpNet>().expect("net"))
                .collect(),
        )
    };
    assert_eq!(
        members(&rules[0].matches[0]),
        nets(&[
            "10.0.0.0/16",
            "10.1.0.0/23",
            "10.1.3.0/24",
            "10.1.4.0/22",
            "10.1.8.0/21",
            "10.1.16.0/20",
            "10.1.32.0/19",
            "10.1.64.0/18",
            "10.1.128.0/17",
            "10.2.0.0/15",
            "10.4.0.0/14",
            "10.8.0.0/13",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.128.0.0/9",
        ])
    );
    assert_eq!(
        members(&rules[1].matches[0]),
        nets(&["0.0.0.0/1", "128.0.0.0/1"])
    );
    let PlanMatch::Peers { ports, .. } = &rules[1].matches[0] else {
        panic!()
    };
    assert_eq!(
        ports,
        &vec![PortMatch {
            protocol: Protocol::Udp,
            ports: Some(PortRange {
                first: 8000,
                last: 8080
            })
        }]
    );
}

/// Walks a direction of a plan the way a renderer's chain would.
fn direction_allows(
    plan: &PolicyPlan,
    d: &DirectionPlan,
    peer: IpAddr,
    from_local_node: bool,
    protocol: Protocol,
    port: u16,
) -> bool {
    if (d.allow_local_node && from_local_node) || d.exempt_peers.contains(&peer) {
        return true;
    }
    d.rules.iter().flat_map(|r| &r.matches).any(|m| match m {
        PlanMatch::Peers { peers, ports } => {
            let peer_ok = peers
                .as_ref()
                .is_none_or(|s| match &plan.set(s).expect("set").members {
                    SetMembers::Addresses(ips) => ips.contains(&peer),
                    SetMembers::Networks(nets) => nets.iter().any(|n| n.contains(&peer)),
                    SetMembers::AddressPorts(_) => panic!("address-port set used as peers"),
                });
            peer_ok
                && (ports.is_empty()
                    || ports.iter().any(|p| {
                        p.protocol == protocol
                            && p.ports.is_none_or(|r| (r.first..=r.last).contains(&port))
                    }))
        }
        PlanMatch::PeerPorts { set } => match &plan.set(set).expect("set").members {
            SetMembers::AddressPorts(entries) => entries.contains(&AddressPort {
                ip: peer,
                protocol,
                port,
            }),
            other => panic!("{other:?} used as address-port set"),
        },
    })
}

/// Addresses that are not Pods: outside, in the pod range but unused, node-1, node-2.
const OTHERS: [&str; 4] = ["192.0.2.1", "10.244.1.200", "172.18.0.2", "172.18.0.3"];

const PROBES: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 8080),
    (Protocol::Udp, 53),
    (Protocol::Sctp, 9000),
    (Protocol::Tcp, 8085),
    (Protocol::Udp, 8000),
];

/// Walks both Nodes' plans for every pair of Pods, and between every Pod and the [`OTHERS`],
/// on every probe, and compares with the engine. Returns the first disagreement.
fn plan_disagreement(state: &ClusterState) -> Option<String> {
    let plans = [plan(state, "node-1"), plan(state, "node-2")];
    let locate = |key: &PodRef| -> (&PolicyPlan, Option<&PodPlan>) {
        let node = state
            .pod(key)
            .and_then(|p| p.node.clone())
            .expect("scheduled");
        let plan = plans.iter().find(|p| p.node == node).expect("plan");
        (plan, plan.pods.iter().find(|p| &p.pod == key))
    };
    let pods: Vec<PodRef> = state
        .pods()
        .filter(|p| !p.host_network)
        .map(|p| p.key.clone())
        .collect();
    let egress_ok = |src: &PodRef, dst: IpAddr, protocol, port| {
        let (plan, pod) = locate(src);
        pod.and_then(|p| p.egress.as_ref())
            .is_none_or(|d| direction_allows(plan, d, dst, false, protocol, port))
    };
    let ingress_ok = |src: IpAddr, dst: &PodRef, protocol, port| {
        let (plan, pod) = locate(dst);
        let local = plan.node_ips.contains(&src);
        pod.and_then(|p| p.ingress.as_ref())
            .is_none_or(|d| direction_allows(plan, d, src, local, protocol, port))
    };
    let ip_of = |key: &PodRef| state.pod(key).expect("pod").ips[0];
    for (protocol, port) in PROBES {
        let engine = |src: Endpoint, dst: Endpoint| {
            evaluate(state, &Flow::new(src, dst, protocol, port))
                .expect("known")
                .allowed
        };
        for src in &pods {
            for dst in &pods {
                let kernel = src == dst
                    || (egress_ok(src, ip_of(dst), protocol, port)
                        && ingress_ok(ip_of(src), dst, protocol, port));
                if kernel != engine(Endpoint::Pod(src.clone()), Endpoint::Pod(dst.clone())) {
                    return Some(format!(
                        "{src} -> {dst} {protocol}/{port}: plan says {kernel}"
                    ));
                }
            }
            for other in OTHERS.map(ip) {
                let out = egress_ok(src, other, protocol, port);
                if out != engine(Endpoint::Pod(src.clone()), Endpoint::Ip(other)) {
                    return Some(format!(
                        "{src} -> {other} {protocol}/{port}: plan says {out}"
                    ));
                }
                let inbound = ingress_ok(other, src, protocol, port);
                if inbound != engine(Endpoint::Ip(other), Endpoint::Pod(src.clone())) {
                    return Some(format!(
                        "{other} -> {src} {protocol}/{port}: plan says {inbound}"
                    ));
                }
            }
        }
    }
    None
}

/// Fixed scenarios: the plans, walked, agree with the engine.
#[test]
fn plans_agree_with_the_engine() {
    let scenarios = [
        policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ),
        policy(
            "x",
            "mixed",
            "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.21/32]}}]\n    ports: [{port: http}, {port: 53, protocol: UDP}]\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: http}, {port: 8000, endPort: 8090}, {protocol: SCTP}]\n  - to: [{ipBlock: {cidr: 10.244.2.0/24}}]\n    ports: [{port: dns, protocol: UDP}]",
        ) + &policy(
            "y",
            "egress-named-any",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: http}]}]",
        ) + &policy(
            "z",
            "ingress-from-all-ns",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}, {port: 8080}]}]",
        ),
        policy(
            "y",
            "nodes-and-outside",
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 172.18.0.0/24, except: [172.18.0.2/32]}}]}]\n  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}}], ports: [{port: http}, {port: 53, protocol: UDP}]}]",
        ),
    ];
    for (s, policies) in scenarios.iter().enumerate() {
        let state = cluster(policies);
        assert_eq!(plan_disagreement(&state), None, "scenario {s}");
    }
}

mod random {
    //! Random policies over the test plan, drawn from the whole API surface.

    use proptest::prelude::*;

    use super::{cluster, plan_disagreement, policy};

    fn selector() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_owned()),
            prop::sample::select(vec!["a", "b", "c"])
                .prop_map(|p| format!("{{matchLabels: {{pod: {p}}}}}")),
            prop::sample::select(vec!["a", "b"]).prop_map(|p| format!(
                "{{matchExpressions: [{{key: pod, operator: NotIn, values: [{p}]}}]}}"
            )),
        ]
    }

    fn ns_selector() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_owned()),
            prop::sample::select(vec!["x", "y", "z"])
                .prop_map(|n| format!("{{matchLabels: {{ns: {n}}}}}")),
        ]
    }

    fn peer() -> impl Strategy<Value = String> {
        let cidrs = vec![
            "{cidr: 10.244.1.0/24, except: [10.244.1.21/32]}",
            "{cidr: 10.244.0.0/16}",
            "{cidr: 0.0.0.0/0, except: [10.244.2.0/24, 172.18.0.2/32]}",
            "{cidr: 172.18.0.0/24}",
            "{cidr: 192.0.2.0/24}",
        ];
        prop_oneof![
            selector().prop_map(|s| format!("{{podSelector: {s}}}")),
            ns_selector().prop_map(|s| format!("{{namespaceSelector: {s}}}")),
            (ns_selector(), selector())
                .prop_map(|(n, p)| format!("{{namespaceSelector: {n}, podSelector: {p}}}")),
            prop::sample::select(cidrs).prop_map(|c| format!("{{ipBlock: {c}}}")),
        ]
    }

    fn port() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "{port: 80}",
            "{port: http}",
            "{port: dns, protocol: UDP}",
            "{port: 8000, endPort: 8090}",
            "{port: 8000, endPort: 8090, protocol: UDP}",
            "{protocol: SCTP}",
            "{protocol: UDP, port: 53}",
            "{port: sctp, protocol: SCTP}",
        ])
        .prop_map(str::to_owned)
    }

    fn rules() -> impl Strategy<Value = String> {
        let rule = (
            prop::collection::vec(peer(), 0..3),
            prop::collection::vec(port(), 0..3),
        )
            .prop_map(|(peers, ports)| {
                format!(
                    "{{peers: [{}], ports: [{}]}}",
                    peers.join(", "),
                    ports.join(", ")
                )
            });
        prop::collection::vec(rule, 0..3).prop_map(|r| format!("[{}]", r.join(", ")))
    }

    fn one_policy(index: usize) -> impl Strategy<Value = String> {
        let types = prop::sample::select(vec!["", "[Ingress]", "[Egress]", "[Ingress, Egress]"]);
        (
            prop::sample::select(vec!["x", "y", "z"]),
            selector(),
            types,
            prop::option::of(rules()),
            prop::option::of(rules()),
        )
            .prop_map(move |(ns, sel, types, ingress, egress)| {
                let mut spec = format!("  podSelector: {sel}");
                if !types.is_empty() {
                    spec.push_str(&format!("\n  policyTypes: {types}"));
                }
                if let Some(r) = ingress {
                    spec.push_str(&format!("\n  ingress: {}", r.replace("peers", "from")));
                }
                if let Some(r) = egress {
                    spec.push_str(&format!("\n  egress: {}", r.replace("peers", "to")));
                }
                policy(ns, &format!("p{index}"), &spec)
            })
    }

    fn policies() -> impl Strategy<Value = String> {
        (1..4usize).prop_flat_map(|n| {
            (0..n)
                .map(one_policy)
                .collect::<Vec<_>>()
                .prop_map(|ps| ps.concat())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random clusters: the plans, walked, agree with the engine on every flow probed.
        #[test]
        fn plans_agree_with_the_engine_on_random_policies(policies in policies()) {
            let state = cluster(&policies);
            prop_assert_eq!(plan_disagreement(&state), None, "policies:\n{}", policies);
        }
    }
}
