//! Benchmarks: compiling one Node's plan in a cluster of 10,000 Pods and 1,000 policies, and
//! the engine's truth table for 100 × 100 Pods. Run with `cargo bench -p netd-policy`.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use netd_model::{ClusterState, NodeName, Protocol};
use netd_policy::{compile, matrix};

const NODES: usize = 10;

/// A cluster of `namespaces` × `pods_per_ns` Pods spread over [`NODES`] Nodes, with
/// `policies_per_ns` policies per namespace drawn from the whole API surface.
fn cluster(namespaces: usize, pods_per_ns: usize, policies_per_ns: usize) -> ClusterState {
    let mut y = String::new();
    for n in 0..NODES {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.0.{}}}]}}\n",
            n + 2
        );
    }
    let mut k = 0usize;
    for ns in 0..namespaces {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{}}}}}\n",
            ns % 5
        );
        for p in 0..pods_per_ns {
            let tier = if p % 2 == 0 { "front" } else { "back" };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{p}, namespace: ns-{ns}, labels: {{app: a{}, tier: {tier}}}}}\nspec: {{nodeName: node-{}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: {}}}]}}]}}\nstatus: {{podIP: 10.244.{}.{}}}\n",
                p % 20,
                k % NODES,
                8000 + p % 3,
                k / 250,
                k % 250 + 1
            );
            k += 1;
        }
        for i in 0..policies_per_ns {
            let _ = write!(
                y,
                "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: np-{i}, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: a{i}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]
    ports: [{{port: 8080}}, {{port: 9000, endPort: 9100}}]
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{tier: front}}}}}}]
    ports: [{{port: http}}]
  egress:
  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}}}]
    ports: [{{port: 443}}]
  - to: [{{podSelector: {{}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]
    ports: [{{port: http}}, {{port: 53, protocol: UDP}}]
",
                (i + 1) % 20,
                i % 5,
                (i + ns) % 5
            );
        }
    }
    netd_testkit::state(&y)
}

fn compile_node(c: &mut Criterion) {
    // 50 namespaces × 200 pods = 10,000 pods; 50 × 20 = 1,000 policies.
    let state = cluster(50, 200, 20);
    let node = NodeName::new("node-0");
    let plan = compile(&state, &node).expect("node exists");
    eprintln!(
        "plan for node-0: {} pods, {} sets",
        plan.pods.len(),
        plan.sets.len()
    );
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("node of 10k pods, 1k policies", |b| {
        b.iter(|| compile(black_box(&state), black_box(&node)))
    });
    g.finish();
}

fn matrix_100(c: &mut Criterion) {
    // 4 namespaces × 25 pods = 100 pods; 4 × 20 = 80 policies.
    let state = cluster(4, 25, 20);
    c.bench_function("matrix 100x100", |b| {
        b.iter(|| matrix(black_box(&state), 80, Protocol::Tcp, &[]))
    });
}

// In a private module, so the macro's undocumented `pub fn` is not exported.
mod group {
    use super::{compile_node, matrix_100};
    criterion::criterion_group!(benches, compile_node, matrix_100);
}
criterion_main!(group::benches);
