//! The flow battery: one table of flows over one two-node, dual-stack cluster, traced through
//! every back end (iptables, nftables and IPVS) node after node. Each back end must meet the
//! expected fate of every flow — the endpoints with their shares, the node where the packet
//! ends, masquerade, reject or drop — and so they agree with each other, except where the
//! nftables README or IPVS mode's upstream behaviour documents a difference (a flow says so
//! with [`Flow::nftables`] or [`Flow::ipvs`]).
//!
//! The kernel leg loads each back end's rules for node-1 through the back-end seam into a
//! namespace this test creates (`nfttr-<pid>-<mode>`, removed on drop, also on failure) and
//! connects from the node itself to Services whose endpoints are addresses of that
//! namespace: the kernel must answer as the tracer predicted. Needs root; IPVS mode's leg
//! needs IPVS too (ignored here, run with `--ignored` in the VM runner by `.ci/run`).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netd_agent::{
    BackendConfig, Fate, Ipvs, IpvsConfig, Mode, Nftables, NodeProgrammer, TraceRules, backend,
    trace_nodes_in,
};
use netd_kernel::netns;
use netd_model::{ClusterConfig, ClusterState, NodeName, Protocol};
use netd_render::{Origin, Packet, Verdict};
use netd_testkit::held::in_netns;
use netd_testkit::scratch::ScratchNetns;

/// node-1 holds `client`, `web-a`, `local-a`, `term-a` and `sticky-a`; node-2 holds `web-b`
/// and `sticky-b`.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:10:244:1::/64']}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: 'fd00:18::2'}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24, podCIDRs: [10.244.2.0/24, 'fd00:10:244:2::/64']}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}, {type: InternalIP, address: 'fd00:18::3'}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {type: NodePort, ipFamilies: [IPv4, IPv6], ipFamilyPolicy: RequireDualStack, clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10, 'fd00:10:96::10'], externalIPs: [192.0.2.50], ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-v4, namespace: app, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-1}
- {addresses: [10.244.2.10], nodeName: node-2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: web-v6, namespace: app, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['fd00:10:244:1::10'], nodeName: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: app}
spec: {type: LoadBalancer, clusterIP: 10.96.0.20, loadBalancerSourceRanges: [203.0.113.0/24], ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30020}]}
status: {loadBalancer: {ingress: [{ip: 192.0.2.20}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: lb-1, namespace: app, labels: {kubernetes.io/service-name: lb}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.10], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: app}
spec: {type: NodePort, externalTrafficPolicy: Local, clusterIP: 10.96.0.30, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30030}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: local-1, namespace: app, labels: {kubernetes.io/service-name: local}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: app}
spec: {clusterIP: 10.96.0.40, sessionAffinity: ClientIP, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: sticky-1, namespace: app, labels: {kubernetes.io/service-name: sticky}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.13], nodeName: node-1}
- {addresses: [10.244.2.13], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: app}
spec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: term, namespace: app}
spec: {clusterIP: 10.96.0.60, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: term-1, namespace: app, labels: {kubernetes.io/service-name: term}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.12], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.2.12], nodeName: node-2, conditions: {ready: false, serving: false, terminating: true}}
"#;

const CLIENT: &str = "10.244.1.5";
const OUTSIDE: &str = "203.0.113.7";

/// One flow and its expected fates.
struct Flow {
    name: &'static str,
    /// The node the packet meets first.
    node: &'static str,
    packet: Packet,
    /// Where each branch ends: (node, verdict, destination, masqueraded, share).
    want: Vec<Want>,
    /// What nftables mode does instead, where its README documents a difference.
    nftables: Option<Vec<Want>>,
    /// What IPVS mode does instead, as kube-proxy's IPVS mode does.
    ipvs: Option<Vec<Want>>,
}

type Want = (&'static str, Verdict, &'static str, bool, f64);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet::tcp(ip(src), ip(dst), dport)
}

fn flow(name: &'static str, node: &'static str, packet: Packet, want: Vec<Want>) -> Flow {
    Flow {
        name,
        node,
        packet,
        want,
        nftables: None,
        ipvs: None,
    }
}

fn flows() -> Vec<Flow> {
    use Verdict::{Accept, Drop, NoServicePort, Reject};
    let web = |masq| {
        vec![
            ("node-1", Accept, "10.244.1.10:8080", masq, 0.5),
            ("node-2", Accept, "10.244.2.10:8080", masq, 0.5),
        ]
    };
    vec![
        flow(
            "pod to ClusterIP",
            "node-1",
            tcp(CLIENT, "10.96.0.10", 80),
            web(false),
        ),
        flow(
            "outside to NodePort",
            "node-1",
            tcp(OUTSIDE, "172.18.0.2", 30080),
            web(true),
        ),
        flow(
            "outside to externalIP",
            "node-1",
            tcp(OUTSIDE, "192.0.2.50", 80),
            web(true),
        ),
        flow(
            "admitted source to LB IP",
            "node-1",
            tcp(OUTSIDE, "192.0.2.20", 80),
            vec![("node-2", Accept, "10.244.2.10:8080", true, 1.0)],
        ),
        flow(
            "source outside the LB source ranges",
            "node-1",
            tcp("198.51.100.7", "192.0.2.20", 80),
            vec![("node-1", Drop, "192.0.2.20:80", false, 1.0)],
        ),
        flow(
            "eTP Local NodePort on a node with a local endpoint",
            "node-1",
            tcp(OUTSIDE, "172.18.0.2", 30030),
            vec![("node-1", Accept, "10.244.1.11:8080", false, 1.0)],
        ),
        Flow {
            // kubernetes#97081: the virtual server cannot tell pods from outside clients, so
            // it keeps the cluster endpoints (src/ipvs.rs of netd-render).
            ipvs: Some(vec![("node-1", Accept, "10.244.1.11:8080", false, 1.0)]),
            ..flow(
                "eTP Local NodePort on a node without local endpoints",
                "node-2",
                tcp(OUTSIDE, "172.18.0.3", 30030),
                vec![("node-2", Drop, "172.18.0.3:30030", false, 1.0)],
            )
        },
        flow(
            "eTP Local ClusterIP from a pod of the other node",
            "node-2",
            tcp("10.244.2.5", "10.96.0.30", 80),
            vec![("node-1", Accept, "10.244.1.11:8080", false, 1.0)],
        ),
        flow(
            "session affinity, first packet of a new client",
            "node-1",
            tcp(CLIENT, "10.96.0.40", 80),
            vec![
                ("node-1", Accept, "10.244.1.13:8080", false, 0.5),
                ("node-2", Accept, "10.244.2.13:8080", false, 0.5),
            ],
        ),
        flow(
            "no endpoints",
            "node-1",
            tcp(CLIENT, "10.96.0.50", 80),
            vec![("node-1", Reject, "10.96.0.50:80", false, 1.0)],
        ),
        flow(
            "only terminating endpoints: the serving one",
            "node-1",
            tcp(CLIENT, "10.96.0.60", 80),
            vec![("node-1", Accept, "10.244.1.12:8080", false, 1.0)],
        ),
        flow(
            "hairpin: an endpoint reaching its own Service",
            "node-1",
            tcp("10.244.1.10", "10.96.0.10", 80),
            vec![
                ("node-1", Accept, "10.244.1.10:8080", true, 0.5),
                ("node-2", Accept, "10.244.2.10:8080", false, 0.5),
            ],
        ),
        flow(
            "IPv6 pod to ClusterIP",
            "node-1",
            tcp("fd00:10:244:1::5", "fd00:10:96::10", 80),
            vec![("node-1", Accept, "[fd00:10:244:1::10]:8080", false, 1.0)],
        ),
        flow(
            "the node itself to a NodePort on another node",
            "node-1",
            Packet {
                origin: Origin::Host,
                ..tcp("172.18.0.2", "172.18.0.3", 30080)
            },
            // Routed to node-2, which DNATs it; a branch is never traced back into a node
            // it came through, so the one to node-1's endpoint ends on node-2.
            vec![
                ("node-2", Accept, "10.244.1.10:8080", true, 0.5),
                ("node-2", Accept, "10.244.2.10:8080", true, 0.5),
            ],
        ),
        Flow {
            nftables: Some(vec![("node-1", Reject, "10.96.0.10:81", false, 1.0)]),
            // KUBE-IPVS-FILTER rejects a new connection to a bound address on a port that is
            // no Service's (kubernetes#72236).
            ipvs: Some(vec![("node-1", Reject, "10.96.0.10:81", false, 1.0)]),
            ..flow(
                "a ClusterIP on a port its Service does not have",
                "node-1",
                tcp(CLIENT, "10.96.0.10", 81),
                vec![("node-1", NoServicePort, "10.96.0.10:81", false, 1.0)],
            )
        },
    ]
}

fn state() -> ClusterState {
    let config = ClusterConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().expect("cidr"),
            "fd00:10:96::/108".parse().expect("cidr"),
        ],
        ..ClusterConfig::default()
    };
    netd_testkit::state_with(CLUSTER, config)
}

/// The fates as comparable rows, sorted, with shares rounded to 1e-6.
fn rows(fates: &[Fate]) -> Vec<(String, Verdict, SocketAddr, bool, i64)> {
    let mut out: Vec<_> = fates
        .iter()
        .map(|f| {
            let share = (f.probability * 1e6).round() as i64;
            (f.node.to_string(), f.verdict, f.at, f.masqueraded, share)
        })
        .collect();
    out.sort();
    out
}

fn want_rows(want: &[Want]) -> Vec<(String, Verdict, SocketAddr, bool, i64)> {
    let fates: Vec<Fate> = want
        .iter()
        .map(|(node, verdict, at, masqueraded, p)| Fate {
            node: NodeName::new(*node),
            probability: *p,
            verdict: *verdict,
            at: at.parse().expect("socket address"),
            masqueraded: *masqueraded,
            policy: Vec::new(),
        })
        .collect();
    rows(&fates)
}

#[test]
fn every_back_end_meets_the_expected_fate_of_every_flow() {
    let state = state();
    let (programmer, nftables) = (NodeProgrammer::default(), Nftables::new());
    let ipvs = Ipvs::new(IpvsConfig::default());
    let mut failures = Vec::new();
    let flows = flows();
    for f in &flows {
        let node = NodeName::new(f.node);
        let iptables = trace_nodes_in(TraceRules::Iptables(&programmer), &state, &node, &f.packet)
            .expect("iptables trace");
        let nft = trace_nodes_in(TraceRules::Nftables(&nftables), &state, &node, &f.packet)
            .expect("nftables trace");
        let ipvs_trace =
            trace_nodes_in(TraceRules::Ipvs(&ipvs), &state, &node, &f.packet).expect("IPVS trace");
        let want = want_rows(&f.want);
        let instead =
            |other: &Option<Vec<Want>>| other.as_deref().map_or_else(|| want.clone(), want_rows);
        let (want_nft, want_ipvs) = (instead(&f.nftables), instead(&f.ipvs));
        for (mode, trace, want) in [
            ("iptables", &iptables, &want),
            ("nftables", &nft, &want_nft),
            ("ipvs", &ipvs_trace, &want_ipvs),
        ] {
            let got = rows(&trace.fates);
            if &got != want {
                failures.push(format!(
                    "{}: {mode}: want {want:?}\n  got {got:?}\n{trace}",
                    f.name
                ));
            }
        }
        let (a, b) = (rows(&iptables.fates), rows(&nft.fates));
        if f.nftables.is_none() && a != b {
            failures.push(format!("{}: iptables {a:?} != nftables {b:?}", f.name));
        }
    }
    assert!(flows.len() >= 15, "the battery lost flows");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_udp_flow_meets_udp_rules_only() {
    let state = state();
    let (programmer, nftables) = (NodeProgrammer::default(), Nftables::new());
    let ipvs = Ipvs::new(IpvsConfig::default());
    let packet = Packet {
        protocol: Protocol::Udp,
        ..tcp(CLIENT, "10.96.0.10", 80)
    };
    let node = NodeName::new("node-1");
    for rules in [
        TraceRules::Iptables(&programmer),
        TraceRules::Nftables(&nftables),
        TraceRules::Ipvs(&ipvs),
    ] {
        let trace = trace_nodes_in(rules, &state, &node, &packet).expect("trace");
        let verdicts: Vec<Verdict> = trace.fates.iter().map(|f| f.verdict).collect();
        // The Service has only TCP/80: iptables lets the packet through to nobody,
        // nftables rejects it (cluster-ips-check), IPVS mode too (KUBE-IPVS-FILTER); none
        // DNATs it.
        assert!(
            verdicts == [Verdict::NoServicePort] || verdicts == [Verdict::Reject],
            "{rules:?}: {trace}"
        );
        assert!(trace.fates.iter().all(|f| f.at.ip() == packet.dst));
    }
}

/// What a connection from the node itself found in the kernel.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Accepted by the listener on this address.
    At(SocketAddr),
    /// Refused (a reject).
    Refused,
}

#[test]
fn the_kernel_answers_as_both_tracers_predict() {
    let (programmer, nftables) = (NodeProgrammer::default(), Nftables::new());
    the_kernel_answers_as_traced(Mode::Iptables, TraceRules::Iptables(&programmer));
    the_kernel_answers_as_traced(Mode::Nftables, TraceRules::Nftables(&nftables));
}

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn the_kernel_answers_in_ipvs_mode_as_its_tracer_predicts() {
    if let Some(missing) = netd_testkit::ipvs_missing() {
        panic!("{missing}");
    }
    let ipvs = Ipvs::new(IpvsConfig::default());
    the_kernel_answers_as_traced(Mode::Ipvs, TraceRules::Ipvs(&ipvs));
}

/// Loads `mode`'s rules for node-1 into a namespace of this test and connects from the node
/// itself to Services whose endpoints are addresses of that namespace: each must be answered
/// where `rules`' tracer says (the endpoint that accepts, or a refusal).
fn the_kernel_answers_as_traced(mode: Mode, rules: TraceRules<'_>) {
    let state = state();
    let node = NodeName::new("node-1");
    // Services whose endpoints all live on node-1, so one namespace holds them.
    let targets: [(&str, u16); 3] = [("10.96.0.30", 80), ("10.96.0.50", 80), ("10.96.0.60", 80)];
    let endpoints = ["10.244.1.11", "10.244.1.12"];
    {
        let ns = ScratchNetns::new("nfttr", mode.as_str());
        let mut lines = vec![
            "link set lo up".to_owned(),
            "link add n0 type veth peer name n1".to_owned(),
            "link set n1 up".to_owned(),
            "link set n0 up".to_owned(),
            "addr add 172.18.0.2/24 dev n0".to_owned(),
            "route add default via 172.18.0.1 dev n0 onlink".to_owned(),
        ];
        lines.extend(
            endpoints
                .iter()
                .map(|ip| format!("addr add {ip}/32 dev n0")),
        );
        netns::ip_batch(ns.name(), &lines).expect("set up the node namespace");
        let mut b = backend(&BackendConfig {
            mode,
            ..BackendConfig::default()
        });
        b.sync(ns.name(), &state, &node).expect("sync");
        let listeners: Vec<TcpListener> = endpoints
            .iter()
            .map(|ip| {
                in_netns(ns.name(), || {
                    let l = TcpListener::bind((self::ip(ip), 8080)).expect("listen");
                    l.set_nonblocking(true).expect("non-blocking listener");
                    l
                })
            })
            .collect();
        for (dst, port) in targets {
            let packet = Packet {
                origin: Origin::Host,
                ..tcp("172.18.0.2", dst, port)
            };
            let traced = trace_nodes_in(rules, &state, &node, &packet).expect("trace");
            let [fate] = traced.fates.as_slice() else {
                panic!("{mode} {dst}: one branch expected\n{traced}");
            };
            let predicted = match fate.verdict {
                Verdict::Accept => Answer::At(fate.at),
                Verdict::Reject => Answer::Refused,
                other => panic!("{mode} {dst}: unexpected {other}\n{traced}"),
            };
            let to = SocketAddr::new(ip(dst), port);
            let got = in_netns(ns.name(), || {
                match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                    // The listener owns the DNATed address: the kernel delivered it there.
                    Ok(_stream) => Answer::At(
                        accepted_by(&listeners)
                            .unwrap_or_else(|| panic!("{mode}: {to} connected, nobody accepted")),
                    ),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => Answer::Refused,
                    Err(e) => panic!("{mode}: connect to {to}: {e}"),
                }
            });
            assert_eq!(got, predicted, "{mode} {to}\n{traced}");
        }
    }
}

/// The listener that holds a connection waiting to be accepted: where the kernel delivered
/// it (the client's own socket sees only the Service address, NAT being transparent).
fn accepted_by(listeners: &[TcpListener]) -> Option<SocketAddr> {
    for _ in 0..50 {
        for l in listeners {
            if l.accept().is_ok() {
                return l.local_addr().ok();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
