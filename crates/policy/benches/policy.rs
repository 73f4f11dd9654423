//! Benchmarks: compiling one Node's plan in a cluster of 10,000 Pods and 1,000 policies, and
//! the engine's truth table for 100 × 100 Pods. Run with `cargo bench -p netd-policy`.

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use netd_model::{NodeName, Protocol};
use netd_policy::{compile, matrix};
use netd_testkit::scale::{self, PolicyScale};

fn compile_node(c: &mut Criterion) {
    // 10,000 pods and 1,000 policies over 10 nodes: the size the agent's apply bench loads.
    let state = netd_testkit::state(&scale::policy_cluster(10));
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
    let state = netd_testkit::state(&scale::policy_cluster_of(PolicyScale {
        nodes: 10,
        namespaces: 4,
        pods_per_ns: 25,
        policies_per_ns: 20,
    }));
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
