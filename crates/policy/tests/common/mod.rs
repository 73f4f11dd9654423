//! The test address plan shared by the policy tests.
//!
//! Namespaces x, y, z (label `ns: <name>`), each with Pods a, b, c (label `pod: <name>`):
//! a and c on node-1 (172.18.0.2, 10.244.1.0/24), b on node-2 (172.18.0.3, 10.244.2.0/24).
//! Pod IPs: 10.244.<node>.<ns*10+pod>, e.g. x/a 10.244.1.11, y/b 10.244.2.22, z/c 10.244.1.33.
//! Every Pod declares `http` 80/TCP, `dns` 53/UDP and `sctp` 9000/SCTP, except x/c, whose
//! `http` is 8080, and z/c, which declares no ports. x/h is a hostNetwork Pod on node-2.

#![allow(dead_code)]

use std::net::IpAddr;

use netd_model::{ClusterState, PodRef};
use netd_policy::{Endpoint, Flow, FlowProtocol, Verdict, evaluate};

/// The namespaces of the plan.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The Pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// The plan as YAML: Nodes, Namespaces and Pods.
pub fn base_yaml() -> String {
    let mut out = String::from(concat!(
        netd_testkit::two_nodes!(),
        "apiVersion: v1
kind: Pod
metadata: {name: h, namespace: x, labels: {pod: h}}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 172.18.0.3}
",
    ));
    for (n, ns) in NAMESPACES.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
        for (p, pod) in PODS.iter().enumerate() {
            let node = if *pod == "b" { 2 } else { 1 };
            let ip = format!("10.244.{node}.{}", (n + 1) * 10 + p + 1);
            let ports = match (*ns, *pod) {
                ("z", "c") => "[]".to_owned(),
                (ns, pod) => {
                    let http = if (ns, pod) == ("x", "c") { 8080 } else { 80 };
                    format!(
                        "[{{name: http, containerPort: {http}}}, {{name: dns, containerPort: 53, protocol: UDP}}, {{name: sctp, containerPort: 9000, protocol: SCTP}}]"
                    )
                }
            };
            out.push_str(&format!(
                "---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}
spec: {{nodeName: node-{node}, containers: [{{name: c, image: i, ports: {ports}}}]}}
status: {{podIP: {ip}}}
"
            ));
        }
    }
    out
}

/// The base cluster plus extra documents (policies, Services...).
pub fn cluster(extra: &str) -> ClusterState {
    netd_testkit::state(&format!("{}---\n{extra}", base_yaml()))
}

/// Parses `ns/pod`, or an IP address, or `node:NAME`.
pub fn endpoint(s: &str) -> Endpoint {
    if let Some(node) = s.strip_prefix("node:") {
        return Endpoint::Node(node.into());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Endpoint::Ip(ip);
    }
    Endpoint::Pod(s.parse::<PodRef>().expect("ns/pod"))
}

/// `tcp/80`, `udp/53`, `sctp/9000`, `tcp` (no port) or `icmp`.
pub fn proto_port(s: &str) -> (FlowProtocol, Option<u16>) {
    let (proto, port) = match s.split_once('/') {
        Some((p, n)) => (p, Some(n.parse().expect("port"))),
        None => (s, None),
    };
    (proto.parse().expect("protocol"), port)
}

/// The verdict for a flow written as in [`check_table`].
pub fn verdict(state: &ClusterState, from: &str, to: &str, what: &str) -> Verdict {
    let (protocol, port) = proto_port(what);
    let flow = Flow {
        src: endpoint(from),
        dst: endpoint(to),
        protocol,
        port,
    };
    evaluate(state, &flow).expect("known endpoints")
}

/// Runs a table of (from, to, protocol/port, allowed) against a cluster.
pub fn check_table(group: &str, state: &ClusterState, cases: &[(&str, &str, &str, bool)]) {
    for (from, to, what, want) in cases {
        let v = verdict(state, from, to, what);
        assert_eq!(v.allowed, *want, "{group}: {from} -> {to} {what}: got {v}");
    }
}
