//! Lab speed, with real namespaces (needs root): `cargo bench -p netd-lab --bench lab`
//! (`--profile dev` is as good: the time goes to the kernel and to process start-up).
//! Prints a table; nothing is asserted.
//!
//! - `up 2×20`: `Lab::up` of 2 Nodes with 20 Pods each, until every Node has converged.
//! - `matrix 9×9`: every one of 9 Pods to every other on one port, with a third of the Pods
//!   dropping that port (27 blocked pairs, each waited for up to the 1 s probe timeout).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use netd_lab::{Lab, LabOptions};
use netd_model::Protocol;

fn cluster(nodes: usize, pods_per_node: usize) -> String {
    let mut y = String::new();
    for n in 1..=nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nspec: {{podCIDR: 10.244.{n}.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.0.{}}}]}}\n",
            n + 1
        );
        for p in 0..pods_per_node {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}-{p}, namespace: bench}}\nspec: {{nodeName: node-{n}, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{podIP: 10.244.{n}.{}}}\n",
                p + 10
            );
        }
    }
    y
}

fn options(name: &str) -> LabOptions {
    let mut o = LabOptions::new(name, vec![env!("CARGO_BIN_EXE_netd-lab-helper").to_owned()]);
    o.state_root = "/run/kube-netd-bench".into();
    o
}

fn objects(yaml: &str) -> Vec<netd_model::Object> {
    let values: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    netd_lab::objects::decode_all(values).unwrap_or_else(|e| panic!("bench cluster: {e}"))
}

fn main() {
    let mut rows = Vec::new();

    let name = format!("bench{}-up", std::process::id() % 10_000);
    let start = Instant::now();
    let lab = Lab::up(
        options(&name),
        objects(&cluster(2, 20)),
        netd_lab::resolved_as_given(),
    )
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    rows.push(("lab up, 2 nodes × 20 pods", start.elapsed()));
    let start = Instant::now();
    lab.down().unwrap_or_else(|e| panic!("lab down: {e}"));
    rows.push(("lab down, 2 nodes × 20 pods", start.elapsed()));

    let name = format!("bench{}-mx", std::process::id() % 10_000);
    let lab = Lab::up(
        options(&name),
        objects(&cluster(3, 3)),
        netd_lab::resolved_as_given(),
    )
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let state = lab.state().unwrap_or_else(|e| panic!("state: {e}"));
    for pod in state.pods().step_by(3) {
        let ns = lab
            .netns_of(&netd_lab::Place::Pod(pod.key.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        netd_kernel::rules::iptables_restore(
            &ns,
            "*filter\n-A INPUT -p tcp --dport 80 -j DROP\nCOMMIT\n",
        )
        .unwrap_or_else(|e| panic!("drop rule: {e}"));
    }
    let start = Instant::now();
    let m = lab
        .matrix(80, Protocol::Tcp, &[], Duration::from_secs(1), None)
        .unwrap_or_else(|e| panic!("matrix: {e}"));
    rows.push((
        "lab matrix, 9 × 9 pods, 27 blocked (1 s timeout)",
        start.elapsed(),
    ));
    let blocked = m.grid().iter().flatten().filter(|a| !**a).count();
    drop(lab);

    println!("{:<52} {:>10}", "benchmark", "seconds");
    for (what, took) in rows {
        println!("{what:<52} {:>10.2}", took.as_secs_f64());
    }
    println!("(matrix blocked pairs seen: {blocked})");
}
