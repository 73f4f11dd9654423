//! Flow table: packets traced through the rendered service rules of node-1.

use std::net::{IpAddr, SocketAddr};

use netd_model::{NodeName, Protocol};
use netd_proxy::{IpFamily, ProxyOptions, plan};
use netd_render::trace::{Host, Origin, Packet, Verdict, trace};
use netd_render::{RenderOptions, render_services};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
- {addresses: [10.244.2.2], nodeName: node-2}
- {addresses: [10.244.2.3], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: ns}
spec: {type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32020, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 30020}]}
status: {loadBalancer: {ingress: [{ip: 172.18.255.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: local-a, namespace: ns, labels: {kubernetes.io/service-name: local}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node-1}
- {addresses: [10.244.2.5], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: ns}
spec: {type: NodePort, externalTrafficPolicy: Local, clusterIP: 10.96.0.30, ports: [{port: 80, nodePort: 30030}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: remote-a, namespace: ns, labels: {kubernetes.io/service-name: remote}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.6], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec: {type: NodePort, clusterIP: 10.96.0.40, ports: [{port: 80, nodePort: 30040}]}
---
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: ns}
spec: {internalTrafficPolicy: Local, clusterIP: 10.96.0.50, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: itp-a, namespace: ns, labels: {kubernetes.io/service-name: itp}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.8], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: fw, namespace: ns}
spec: {type: LoadBalancer, clusterIP: 10.96.0.60, loadBalancerSourceRanges: [203.0.113.0/24], ports: [{port: 80, nodePort: 30060}]}
status: {loadBalancer: {ingress: [{ip: 172.18.255.2}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: fw-a, namespace: ns, labels: {kubernetes.io/service-name: fw}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.7], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: ns}
spec: {clusterIP: 10.96.0.70, sessionAffinity: ClientIP, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: sticky-a, namespace: ns, labels: {kubernetes.io/service-name: sticky}}
ports: [{port: 53, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.7], nodeName: node-1}
- {addresses: [10.244.2.9], nodeName: node-2}
"#;

const NODE_IP: &str = "172.18.0.2";
const POD: &str = "10.244.1.9";
const EXTERNAL: &str = "172.18.0.100";

type Expect = &'static [(Verdict, Option<&'static str>, bool, f64)];

struct Flow {
    name: &'static str,
    origin: Origin,
    src: &'static str,
    dst: &'static str,
    dport: u16,
    protocol: Protocol,
    want: Expect,
}

const fn flow(
    name: &'static str,
    origin: Origin,
    src: &'static str,
    dst: &'static str,
    dport: u16,
    want: Expect,
) -> Flow {
    Flow {
        name,
        origin,
        src,
        dst,
        dport,
        protocol: Protocol::Tcp,
        want,
    }
}

const THIRD: f64 = 1.0 / 3.0;
use Origin::{Host as FromHost, Network};
use Verdict::{Accept, Drop, Reject};

const FLOWS: &[Flow] = &[
    flow(
        "pod to ClusterIP: even three-way split, no SNAT",
        Network,
        POD,
        "10.96.0.10",
        80,
        &[
            (Accept, Some("10.244.1.2:8080"), false, THIRD),
            (Accept, Some("10.244.2.2:8080"), false, THIRD),
            (Accept, Some("10.244.2.3:8080"), false, THIRD),
        ],
    ),
    flow(
        "pod to itself through its Service: hairpin SNAT",
        Network,
        "10.244.1.2",
        "10.96.0.10",
        80,
        &[
            (Accept, Some("10.244.1.2:8080"), true, THIRD),
            (Accept, Some("10.244.2.2:8080"), false, THIRD),
            (Accept, Some("10.244.2.3:8080"), false, THIRD),
        ],
    ),
    flow(
        "off-cluster client to ClusterIP: SNAT",
        Network,
        EXTERNAL,
        "10.96.0.10",
        80,
        &[
            (Accept, Some("10.244.1.2:8080"), true, THIRD),
            (Accept, Some("10.244.2.2:8080"), true, THIRD),
            (Accept, Some("10.244.2.3:8080"), true, THIRD),
        ],
    ),
    flow(
        "ClusterIP on a port the Service lacks: untouched",
        Network,
        POD,
        "10.96.0.10",
        81,
        &[(Accept, None, false, 1.0)],
    ),
    flow(
        "external to NodePort, eTP Cluster: SNAT",
        Network,
        EXTERNAL,
        NODE_IP,
        30080,
        &[
            (Accept, Some("10.244.1.2:8080"), true, THIRD),
            (Accept, Some("10.244.2.2:8080"), true, THIRD),
            (Accept, Some("10.244.2.3:8080"), true, THIRD),
        ],
    ),
    flow(
        "external to LB IP, eTP Local: local endpoint, client IP kept",
        Network,
        EXTERNAL,
        "172.18.255.1",
        80,
        &[(Accept, Some("10.244.1.5:80"), false, 1.0)],
    ),
    flow(
        "external to NodePort, eTP Local: local endpoint, client IP kept",
        Network,
        EXTERNAL,
        NODE_IP,
        30020,
        &[(Accept, Some("10.244.1.5:80"), false, 1.0)],
    ),
    flow(
        "pod to LB IP, eTP Local: short-circuit to every endpoint",
        Network,
        POD,
        "172.18.255.1",
        80,
        &[
            (Accept, Some("10.244.1.5:80"), false, 0.5),
            (Accept, Some("10.244.2.5:80"), false, 0.5),
        ],
    ),
    flow(
        "external to NodePort, eTP Local, none here: dropped",
        Network,
        EXTERNAL,
        NODE_IP,
        30030,
        &[(Drop, None, false, 1.0)],
    ),
    flow(
        "pod to NodePort, eTP Local, none here: short-circuit",
        Network,
        POD,
        NODE_IP,
        30030,
        &[(Accept, Some("10.244.2.6:80"), false, 1.0)],
    ),
    flow(
        "host to NodePort, eTP Local, none here: SNAT and forwarded",
        FromHost,
        NODE_IP,
        NODE_IP,
        30030,
        &[(Accept, Some("10.244.2.6:80"), true, 1.0)],
    ),
    flow(
        "pod to ClusterIP without endpoints: rejected",
        Network,
        POD,
        "10.96.0.40",
        80,
        &[(Reject, None, false, 1.0)],
    ),
    flow(
        "host to ClusterIP without endpoints: rejected",
        FromHost,
        NODE_IP,
        "10.96.0.40",
        80,
        &[(Reject, None, false, 1.0)],
    ),
    flow(
        "external to NodePort without endpoints: rejected",
        Network,
        EXTERNAL,
        NODE_IP,
        30040,
        &[(Reject, None, false, 1.0)],
    ),
    flow(
        "iTP Local, none here: dropped",
        Network,
        POD,
        "10.96.0.50",
        80,
        &[(Drop, None, false, 1.0)],
    ),
    flow(
        "LB source range admits",
        Network,
        "203.0.113.5",
        "172.18.255.2",
        80,
        &[(Accept, Some("10.244.2.7:80"), true, 1.0)],
    ),
    flow(
        "LB source range refuses",
        Network,
        "198.51.100.1",
        "172.18.255.2",
        80,
        &[(Drop, None, false, 1.0)],
    ),
    flow(
        "NodePort ignores source ranges",
        Network,
        "198.51.100.1",
        NODE_IP,
        30060,
        &[(Accept, Some("10.244.2.7:80"), true, 1.0)],
    ),
    flow(
        "health-check node port accepted",
        Network,
        EXTERNAL,
        NODE_IP,
        32020,
        &[(Accept, None, false, 1.0)],
    ),
];

#[test]
fn flows() {
    let state = netd_testkit::state(CLUSTER);
    let node = NodeName::new("node-1");
    let opts = ProxyOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        node_ips: vec![NODE_IP.parse().expect("ip")],
        ..ProxyOptions::default()
    };
    let rules = render_services(
        &plan(&state, &node, IpFamily::V4, &opts),
        &RenderOptions::default(),
    )
    .installed();
    let host = Host {
        local_addrs: vec![NODE_IP.parse().expect("ip")],
        ..Host::default()
    };
    let mut failures = Vec::new();
    let all = FLOWS.iter().chain(std::iter::once(&Flow {
        name: "UDP with session affinity, new client: even split",
        origin: Network,
        src: POD,
        dst: "10.96.0.70",
        dport: 53,
        protocol: Protocol::Udp,
        want: &[
            (Accept, Some("10.244.1.7:53"), false, 0.5),
            (Accept, Some("10.244.2.9:53"), false, 0.5),
        ],
    }));
    for f in all {
        let mut packet = Packet::tcp(
            f.src.parse().expect("src"),
            f.dst.parse().expect("dst"),
            f.dport,
        );
        packet.origin = f.origin;
        packet.protocol = f.protocol;
        let t = trace(&rules, &host, &packet).expect("trace");
        let got: Vec<(Verdict, Option<SocketAddr>, bool, f64)> = t
            .summary()
            .into_iter()
            .map(|((v, d, m), p)| (v, d, m, p))
            .collect();
        let want: Vec<(Verdict, Option<SocketAddr>, bool, f64)> = f
            .want
            .iter()
            .map(|(v, d, m, p)| (*v, d.map(|d| d.parse().expect("addr")), *m, *p))
            .collect();
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.0 == w.0 && g.1 == w.1 && g.2 == w.2 && (g.3 - w.3).abs() < 1e-9);
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        if !same || (total - 1.0).abs() > 1e-9 {
            failures.push(format!("{}:\n want {want:?}\n got {got:?}\n{t}", f.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn trace_reports_the_chains_walked() {
    let state = netd_testkit::state(CLUSTER);
    let node = NodeName::new("node-1");
    let opts = ProxyOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        ..ProxyOptions::default()
    };
    let rules = render_services(
        &plan(&state, &node, IpFamily::V4, &opts),
        &RenderOptions::default(),
    )
    .installed();
    let pod: IpAddr = POD.parse().expect("ip");
    let t = trace(
        &rules,
        &Host::default(),
        &Packet::tcp(pod, "10.96.0.20".parse().expect("ip"), 80),
    )
    .expect("trace");
    let chains: Vec<String> = t.outcomes[0]
        .chains()
        .iter()
        .map(|c| c.to_string())
        .collect();
    // nat PREROUTING → service → endpoint (DNAT), filter FORWARD's hooks, nat POSTROUTING
    // (not marked, so KUBE-POSTROUTING returns: no SNAT).
    let want = [
        "PREROUTING",
        "KUBE-SERVICES",
        "KUBE-SVC-",
        "KUBE-SEP-",
        "FORWARD",
        "POSTROUTING",
        "KUBE-POSTROUTING",
    ];
    assert_eq!(chains.len(), want.len(), "{chains:?}");
    for (got, want) in chains.iter().zip(want) {
        assert!(got.starts_with(want), "{chains:?}");
    }
    assert!(!t.outcomes[0].masqueraded);
    assert!(t.to_string().contains("DNAT to 10.244.1.5:80"), "{t}");
}

#[test]
fn ipv6_plans_trace_like_ipv4() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web6, namespace: ns}
spec: {type: NodePort, clusterIPs: [10.96.0.80, "fd00:96::80"], ports: [{port: 80, nodePort: 30081}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: web6-a, namespace: ns, labels: {kubernetes.io/service-name: web6}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: ["fd00:244:1::2"], nodeName: node-1}
- {addresses: ["fd00:244:2::2"], nodeName: node-2}
"#;
    let state = netd_testkit::state(yaml);
    let opts = ProxyOptions {
        cluster_cidrs: vec!["fd00:244::/32".parse().expect("cidr")],
        ..ProxyOptions::default()
    };
    let p = plan(&state, &NodeName::new("node-1"), IpFamily::V6, &opts);
    let rules = render_services(&p, &RenderOptions::default()).installed();
    assert_eq!(rules.family, IpFamily::V6);
    let node_ip: IpAddr = "fd00:18::2".parse().expect("ip");
    let host = Host {
        local_addrs: vec![node_ip],
        ..Host::default()
    };
    let pod = Packet::tcp(
        "fd00:244:1::9".parse().expect("ip"),
        "fd00:96::80".parse().expect("ip"),
        80,
    );
    let t = trace(&rules, &host, &pod).expect("trace");
    let dnat: Vec<String> = t
        .outcomes
        .iter()
        .filter_map(|o| o.dnat)
        .map(|d| d.to_string())
        .collect();
    assert_eq!(dnat, ["[fd00:244:1::2]:80", "[fd00:244:2::2]:80"], "{t}");
    assert!(
        t.outcomes
            .iter()
            .all(|o| !o.masqueraded && (o.probability - 0.5).abs() < 1e-9),
        "{t}"
    );
    let external = Packet::tcp("2001:db8::1".parse().expect("ip"), node_ip, 30081);
    let t = trace(&rules, &host, &external).expect("trace");
    assert!(
        t.outcomes
            .iter()
            .all(|o| o.masqueraded && o.verdict == Verdict::Accept),
        "{t}"
    );
    // The IPv6 plan ignores the IPv4 ClusterIP entirely.
    let v4 = Packet::tcp(pod.src, "10.96.0.80".parse().expect("ip"), 80);
    let t = trace(&rules, &host, &v4).expect("trace");
    assert!(t.outcomes.iter().all(|o| o.dnat.is_none()), "{t}");
}

/// Two pods of node-1: `x/a` admits `x/b` on TCP 80 and UDP 53, and may reach only pods
/// that declare a port named `http` on it (`x/b` declares none, `x/c` does).
const POLICY_CLUSTER: &str = concat!(
    netd_testkit::node_1!(),
    r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.4}
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

#[test]
fn policy_chains_and_their_ipsets_decide_and_are_named() {
    let state = netd_testkit::state(POLICY_CLUSTER);
    let plan = netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan");
    let rules = netd_render::render_policy(&plan, IpFamily::V4);
    let mut host = Host {
        local_addrs: vec!["172.18.0.2".parse().expect("ip")],
        ..Host::default()
    };
    host.load_ipset(&rules.ipset_input())
        .expect("ipset payload");
    let installed = rules.installed();
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let (a, b, c) = (ip("10.244.1.2"), ip("10.244.1.3"), ip("10.244.1.4"));
    let cases: [(&str, Packet, Verdict, &[&str]); 6] = [
        (
            "b -> a tcp/80",
            Packet::tcp(b, a, 80),
            Verdict::Accept,
            &["x/p ingress[0]"],
        ),
        (
            "b -> a tcp/81",
            Packet::tcp(b, a, 81),
            Verdict::Drop,
            &["x/a ingress: isolated by x/p"],
        ),
        (
            "b -> a udp/53",
            Packet {
                protocol: Protocol::Udp,
                ..Packet::tcp(b, a, 53)
            },
            Verdict::Accept,
            &["x/p ingress[0]"],
        ),
        (
            "a -> c tcp/8080 (c's http)",
            Packet::tcp(a, c, 8080),
            Verdict::Accept,
            &["x/p egress[0]"],
        ),
        (
            "a -> b tcp/8080 (b has no http port)",
            Packet::tcp(a, b, 8080),
            Verdict::Drop,
            &["x/a egress: isolated by x/p"],
        ),
        (
            "b -> c: neither isolated",
            Packet::tcp(b, c, 80),
            Verdict::Accept,
            &[],
        ),
    ];
    // The same plan in nftables (policy-forward, per-Pod chains, KNP- sets) decides alike.
    let table = netd_render::nft::policy::render_policy_nft(&plan, IpFamily::V4);
    for (what, packet, verdict, policy) in cases {
        let t = trace(&installed, &host, &packet).expect("trace");
        let [o] = t.outcomes.as_slice() else {
            panic!("{what}: one outcome expected\n{t}");
        };
        assert_eq!(
            (o.verdict, o.policy().as_slice()),
            (verdict, policy),
            "{what}\n{t}"
        );
        let t = netd_render::nft::trace_nft(&table, &host, &packet).expect("nft trace");
        let [o] = t.outcomes.as_slice() else {
            panic!("{what}: one nftables outcome expected\n{t}");
        };
        assert_eq!(
            (o.verdict, o.policy().as_slice()),
            (verdict, policy),
            "nftables: {what}\n{t}"
        );
    }
}
