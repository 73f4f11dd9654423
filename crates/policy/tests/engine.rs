//! The engine, one group of table-driven cases per bullet of the NetworkPolicy semantics.

mod common;

use common::{check_table, cluster, verdict};
use netd_model::{PodRef, PolicyRef, Protocol, ServiceRef};
use netd_policy::{
    Direction, Endpoint, Exemption, Isolation, RuleRef, SideVerdict, evaluate_via_service,
    isolation,
};

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

fn pref(s: &str) -> PolicyRef {
    s.parse().expect("ns/name")
}

#[test]
fn pod_selector_selects_pods_of_the_policys_namespace() {
    let state = cluster(
        &(policy("x", "deny-a", "  podSelector: {matchLabels: {pod: a}}")
            + &policy("y", "deny-all", "  podSelector: {}")),
    );
    check_table(
        "podSelector",
        &state,
        &[
            ("x/b", "x/a", "tcp/80", false),
            ("x/a", "x/b", "tcp/80", true),
            ("x/b", "x/c", "tcp/80", true),
            // the same labels in another namespace are not selected
            ("x/b", "z/a", "tcp/80", true),
            // {} selects every pod of its namespace
            ("x/a", "y/a", "tcp/80", false),
            ("x/a", "y/b", "tcp/80", false),
            ("x/a", "y/c", "tcp/80", false),
        ],
    );
    let iso = isolation(&state, &PodRef::new("x", "a")).expect("pod");
    assert_eq!(
        iso,
        Isolation {
            ingress: vec![pref("x/deny-a")],
            egress: vec![]
        }
    );
    assert_eq!(
        isolation(&state, &PodRef::new("x", "b")).expect("pod"),
        Isolation::default()
    );
}

#[test]
fn policy_types_and_their_default() {
    let state = cluster(
        &(policy(
            "x",
            "implied-ingress",
            "  podSelector: {matchLabels: {pod: a}}",
        ) + &policy(
            "x",
            "implied-egress",
            "  podSelector: {matchLabels: {pod: b}}\n  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]",
        ) + &policy(
            "x",
            "egress-only",
            "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]",
        ) + &policy(
            "y",
            "explicit-ingress-with-egress-rules",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]",
        )),
    );
    let iso = |ns: &str, pod: &str| isolation(&state, &PodRef::new(ns, pod)).expect("pod");
    assert_eq!(iso("x", "a").ingress, vec![pref("x/implied-ingress")]);
    assert!(iso("x", "a").egress.is_empty());
    // spec.egress present and policyTypes omitted: Ingress and Egress
    assert_eq!(iso("x", "b").ingress, vec![pref("x/implied-egress")]);
    assert_eq!(iso("x", "b").egress, vec![pref("x/implied-egress")]);
    assert!(iso("x", "c").ingress.is_empty());
    assert_eq!(iso("x", "c").egress, vec![pref("x/egress-only")]);
    // explicit types win over spec.egress
    assert!(iso("y", "a").egress.is_empty());
    check_table(
        "policyTypes",
        &state,
        &[
            ("x/b", "x/c", "tcp/80", true),
            ("x/b", "y/a", "tcp/80", false),
            ("y/b", "x/b", "tcp/80", false),
            ("x/c", "y/b", "tcp/80", false),
            ("y/b", "x/c", "tcp/80", true),
            ("y/a", "z/b", "tcp/80", true),
            ("z/b", "y/a", "tcp/80", false),
        ],
    );
}

#[test]
fn peers_by_pod_namespace_both_and_ip_block() {
    let state = cluster(
        &(policy(
            "x",
            "pod-peer",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ) + &policy(
            "x",
            "ns-peer",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        ) + &policy(
            "x",
            "both-peer",
            "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}, podSelector: {matchLabels: {pod: a}}}]}]",
        ) + &policy(
            "y",
            "ip-block",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.13/32]}}]}]",
        ) + &policy(
            "y",
            "ns-peer-all",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {}}]}]",
        )),
    );
    check_table(
        "peers",
        &state,
        &[
            // podSelector alone: same namespace only
            ("x/b", "x/a", "tcp/80", true),
            ("x/c", "x/a", "tcp/80", false),
            ("y/b", "x/a", "tcp/80", false),
            // namespaceSelector alone: every pod there
            ("y/a", "x/b", "tcp/80", true),
            ("y/c", "x/b", "tcp/80", true),
            ("z/a", "x/b", "tcp/80", false),
            ("x/a", "x/b", "tcp/80", false),
            // both in one peer: AND
            ("y/a", "x/c", "tcp/80", true),
            ("z/a", "x/c", "tcp/80", true),
            ("y/b", "x/c", "tcp/80", false),
            ("x/a", "x/c", "tcp/80", false),
            // ipBlock matches cluster pod IPs too, except the excepted
            ("x/a", "y/a", "tcp/80", true),
            ("z/c", "y/a", "tcp/80", true),
            ("x/c", "y/a", "tcp/80", false),
            ("x/b", "y/a", "tcp/80", false),
            ("10.244.1.200", "y/a", "tcp/80", true),
            ("192.0.2.1", "y/a", "tcp/80", false),
            // namespaceSelector {}: pods of every namespace, but not outside addresses
            ("z/b", "y/b", "tcp/80", true),
            ("192.0.2.1", "y/b", "tcp/80", false),
        ],
    );
}

#[test]
fn empty_peers_all_ports_and_empty_rules() {
    let state = cluster(
        &(policy(
            "x",
            "any-peer-port-80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}]}]",
        ) + &policy(
            "x",
            "b-any-port",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]",
        ) + &policy(
            "x",
            "allow-all",
            "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{}]",
        ) + &policy(
            "y",
            "no-rules",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress: []",
        )),
    );
    check_table(
        "empty lists",
        &state,
        &[
            ("z/a", "x/a", "tcp/80", true),
            ("192.0.2.1", "x/a", "tcp/80", true),
            ("z/a", "x/a", "tcp/81", false),
            ("x/a", "x/b", "tcp/81", true),
            ("x/a", "x/b", "udp/53", true),
            ("x/a", "x/b", "icmp", true),
            ("x/c", "x/b", "tcp/80", false),
            ("192.0.2.1", "x/c", "sctp/9000", true),
            ("x/a", "x/c", "icmp", true),
            ("x/a", "y/a", "tcp/80", false),
            ("y/a", "x/b", "tcp/80", false),
            ("y/a", "192.0.2.1", "udp/53", false),
        ],
    );
}

#[test]
fn ports_numeric_named_ranges_protocols() {
    let state = cluster(
        &(policy(
            "x",
            "named",
            "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]\n  egress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]",
        ) + &policy(
            "y",
            "range-and-sctp",
            "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8080}, {protocol: SCTP, port: 9000}, {protocol: UDP}]}]",
        )),
    );
    check_table(
        "ports",
        &state,
        &[
            // ingress named port resolved on each destination pod
            ("z/a", "x/a", "tcp/80", true),
            ("z/a", "x/c", "tcp/80", false),
            ("z/a", "x/c", "tcp/8080", true),
            // protocol defaults to TCP: the named port does not match UDP
            ("z/a", "x/a", "udp/80", false),
            // egress named port resolved on the destination pod, not the source
            ("x/a", "z/a", "tcp/80", true),
            ("x/a", "z/a", "udp/53", true),
            ("x/a", "x/c", "tcp/8080", true),
            ("x/a", "x/c", "tcp/80", false),
            // destination without the named port (a pod without ports, an outside address)
            ("x/a", "z/c", "tcp/80", false),
            ("x/a", "192.0.2.1", "tcp/80", false),
            // endPort ranges are inclusive
            ("z/a", "y/a", "tcp/7999", false),
            ("z/a", "y/a", "tcp/8000", true),
            ("z/a", "y/a", "tcp/8080", true),
            ("z/a", "y/a", "tcp/8081", false),
            ("z/a", "y/a", "udp/8000", true),
            // SCTP
            ("z/a", "y/a", "sctp/9000", true),
            ("z/a", "y/a", "sctp/9001", false),
            ("z/a", "y/a", "tcp/9000", false),
            // a protocol with no port: every port of it
            ("z/a", "y/a", "udp/1", true),
            ("z/a", "y/a", "udp", true),
            ("z/a", "y/a", "tcp", false),
        ],
    );
}

#[test]
fn policies_add_up_and_both_sides_must_allow() {
    let state = cluster(
        &(policy(
            "x",
            "from-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ) + &policy(
            "x",
            "from-c-80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 80}]}]",
        ) + &policy(
            "x",
            "also-from-b-80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
        ) + &policy(
            "y",
            "egress-to-x-a",
            "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]",
        ) + &policy(
            "x",
            "from-y-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]",
        )),
    );
    check_table(
        "add up",
        &state,
        &[
            ("x/b", "x/a", "tcp/81", true),
            ("x/c", "x/a", "tcp/80", true),
            ("x/c", "x/a", "tcp/81", false),
            ("y/b", "x/a", "tcp/81", true),
            // egress allows y/b -> x/b, but x/b is not isolated; y/b -> x/c egress denied
            ("y/b", "x/b", "tcp/80", false),
            ("y/b", "x/c", "tcp/80", false),
            // ingress at x/a denies y/a although y/a's egress is open
            ("y/a", "x/a", "tcp/80", false),
        ],
    );
    let v = verdict(&state, "x/b", "x/a", "tcp/80");
    let rule = |name: &str| RuleRef {
        policy: pref(name),
        direction: Direction::Ingress,
        index: 0,
    };
    assert_eq!(
        v.ingress,
        SideVerdict::Allowed {
            by: vec![rule("x/also-from-b-80"), rule("x/from-b")]
        }
    );
    assert_eq!(v.egress, SideVerdict::NotIsolated);
    let v = verdict(&state, "y/a", "x/a", "tcp/80");
    assert_eq!(
        v.ingress,
        SideVerdict::Denied {
            isolated_by: vec![
                pref("x/also-from-b-80"),
                pref("x/from-b"),
                pref("x/from-c-80"),
                pref("x/from-y-b")
            ],
            port_misses: vec![]
        }
    );
    // x/c is a peer of x/from-c-80, but only on port 80: the verdict says so.
    let v = verdict(&state, "x/c", "x/a", "tcp/81");
    let SideVerdict::Denied { port_misses, .. } = &v.ingress else {
        panic!("denied: {v}");
    };
    let misses: Vec<String> = port_misses.iter().map(ToString::to_string).collect();
    assert_eq!(
        misses,
        ["x/from-c-80 ingress[0] allows pods pod=c on TCP 80; this flow is TCP 81"]
    );
    assert_eq!(
        v.to_string(),
        "blocked: isolated for ingress by x/also-from-b-80, x/from-b, x/from-c-80, x/from-y-b; \
         no ingress rule allows this port: x/from-c-80 ingress[0] allows pods pod=c on TCP 80; \
         this flow is TCP 81"
    );
}

#[test]
fn self_host_network_and_node_exemptions() {
    let state = cluster(
        &(policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ) + &policy(
            "y",
            "only-from-node-2-ip",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 172.18.0.3/32}}]}]",
        ) + &policy(
            "y",
            "pods-only",
            "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{namespaceSelector: {}}]}]",
        )),
    );
    check_table(
        "exemptions",
        &state,
        &[
            // a pod reaching its own IP
            ("x/a", "x/a", "tcp/80", true),
            ("x/a", "10.244.1.11", "tcp/80", true),
            ("10.244.1.11", "x/a", "icmp", true),
            // hostNetwork pods are not selected by x/deny-all
            ("x/h", "192.0.2.1", "tcp/80", true),
            ("z/a", "x/h", "tcp/80", true),
            // the node reaches its own pods, not another node's
            ("node:node-1", "x/a", "tcp/80", true),
            ("172.18.0.2", "x/c", "tcp/80", true),
            ("node:node-1", "x/b", "tcp/80", false),
            ("node:node-2", "x/b", "tcp/80", true),
            // a hostNetwork pod is its node: it reaches pods on that node
            ("x/h", "x/b", "tcp/80", true),
            // ... and as a peer it is its node's IP, matched by ipBlock only
            ("x/h", "y/a", "tcp/80", true),
            // node-1's own pod y/a is exempt although its ipBlock names only node-2
            ("node:node-1", "y/a", "tcp/80", true),
            ("x/h", "y/c", "tcp/80", false),
            ("z/a", "y/c", "tcp/80", true),
        ],
    );
    let v = verdict(&state, "x/a", "x/a", "tcp/80");
    assert_eq!(v.ingress, SideVerdict::Exempt(Exemption::SamePod));
    assert_eq!(
        v.to_string(),
        "allowed: a pod reaching its own IP is always allowed"
    );
    let v = verdict(&state, "node:node-2", "x/b", "tcp/80");
    assert_eq!(v.egress, SideVerdict::NotApplicable);
    assert_eq!(v.ingress, SideVerdict::Exempt(Exemption::NodeToLocalPod));
}

#[test]
fn services_are_judged_after_dnat() {
    let svc = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.50
  selector: {pod: a}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: named, port: 81, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.11]
  targetRef: {kind: Pod, namespace: x, name: a}
- addresses: [10.244.2.12]
  targetRef: {kind: Pod, namespace: x, name: b}
- addresses: [10.244.1.13]
  conditions: {ready: false}
  targetRef: {kind: Pod, namespace: x, name: c}
---
";
    let state = cluster(
        &(svc.to_owned()
            + &policy(
                "x",
                "allow-8080-from-y",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 8080}]}]",
            )),
    );
    let web = ServiceRef::new("x", "web");
    let judge = |from: &str, port: u16| {
        evaluate_via_service(
            &state,
            &Endpoint::Pod(from.parse().expect("pod")),
            &web,
            port,
            Protocol::Tcp,
        )
        .expect("service port")
        .into_iter()
        .map(|b| (b.endpoint.to_string(), b.target_port, b.verdict.allowed))
        .collect::<Vec<_>>()
    };
    // a policy on port 8080 governs the Service's port 80
    assert_eq!(
        judge("y/a", 80),
        vec![("x/a".into(), 8080, true), ("x/b".into(), 8080, true)]
    );
    assert_eq!(
        judge("z/a", 80),
        vec![("x/a".into(), 8080, false), ("x/b".into(), 8080, false)]
    );
    // a named targetPort missing from the slice is resolved on each endpoint Pod
    assert_eq!(
        judge("y/a", 81),
        vec![("x/a".into(), 80, false), ("x/b".into(), 80, false)]
    );
    assert!(
        evaluate_via_service(
            &state,
            &Endpoint::Pod(PodRef::new("y", "a")),
            &web,
            82,
            Protocol::Tcp
        )
        .is_err()
    );
}

#[test]
fn icmp_is_blocked_when_isolated() {
    let state = cluster(
        &(policy(
            "x",
            "egress-dns",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 53, protocol: UDP}]}]",
        ) + &policy(
            "x",
            "egress-anything-to-b",
            "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
        )),
    );
    check_table(
        "icmp",
        &state,
        &[
            ("x/a", "192.0.2.1", "icmp", false),
            ("x/a", "192.0.2.1", "udp/53", true),
            ("x/c", "x/b", "icmp", true),
            ("x/c", "x/a", "icmp", false),
            ("x/b", "192.0.2.1", "icmp", true),
        ],
    );
}

#[test]
fn seed_policies() {
    let state = netd_testkit::state(&format!(
        "{}---
apiVersion: v1
kind: Namespace
metadata: {{name: myproject, labels: {{project: myproject}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: new-ns}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: default, labels: {{role: db}}}}
spec: {{nodeName: node-1, containers: [{{name: redis, image: redis}}]}}
status: {{podIP: 10.244.1.100}}
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend, namespace: default, labels: {{role: frontend}}}}
spec: {{nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.2.100}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: default}}
spec: {{nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.2.101}}
---
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: myproject}}
spec: {{nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.2.102}}
---
apiVersion: v1
kind: Pod
metadata: {{name: deny-egress-test, namespace: new-ns, labels: {{app: deny-egress-test}}}}
spec: {{nodeName: node-1, containers: [{{name: nettools, image: travelping/nettools}}]}}
status: {{podIP: 10.244.1.101}}
---
{}",
        common::base_yaml(),
        include_str!("golden/seed/policies.yaml")
    ));
    check_table(
        "seed",
        &state,
        &[
            ("default/frontend", "default/db", "tcp/6379", true),
            ("default/frontend", "default/db", "tcp/80", false),
            ("default/other", "default/db", "tcp/6379", false),
            ("myproject/p", "default/db", "tcp/6379", true),
            ("172.17.0.5", "default/db", "tcp/6379", true),
            ("172.17.1.5", "default/db", "tcp/6379", false),
            ("default/db", "10.0.0.7", "tcp/5978", true),
            ("default/db", "10.0.0.7", "tcp/5979", false),
            ("default/db", "default/frontend", "tcp/80", false),
            // the seed's ping fails after the deny-egress policy
            ("new-ns/deny-egress-test", "8.8.8.8", "icmp", false),
            ("new-ns/deny-egress-test", "default/other", "tcp/80", false),
            ("default/other", "new-ns/deny-egress-test", "tcp/80", true),
        ],
    );
    assert_eq!(
        verdict(&state, "new-ns/deny-egress-test", "8.8.8.8", "icmp").to_string(),
        "blocked: isolated for egress by new-ns/deny-egress-test; no egress rule allows it"
    );
    assert_eq!(
        verdict(&state, "default/frontend", "default/db", "tcp/6379").to_string(),
        "allowed: egress not isolated; ingress allowed by default/test-network-policy ingress[0]"
    );
    assert_eq!(
        verdict(&state, "default/other", "default/db", "tcp/6379").to_string(),
        "blocked: isolated for ingress by default/test-network-policy; no ingress rule allows it"
    );
    assert_eq!(
        verdict(&state, "8.8.8.8", "default/other", "tcp/80").to_string(),
        "allowed: no egress policy (the source is not a pod); ingress not isolated"
    );
}
