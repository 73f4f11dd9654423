//! Shared set-up for the lab's real-kernel tests: a small resolved cluster, unique lab names,
//! a private state root, and checks that nothing is left behind.

#![allow(dead_code)] // each test file uses a different part of this module

use std::path::PathBuf;
use std::time::Duration;

use netd_lab::{Lab, LabOptions};
use netd_model::Object;

/// Two Nodes; x/a and x/c on node-1, x/b on node-2; every Pod serves TCP 80 and UDP 53.
pub const CLUSTER: &str = concat!(
    netd_testkit::two_nodes!(),
    r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.3}
"#
);

/// A lab name unique to this process and test.
pub fn lab_name(test: &str) -> String {
    format!("lt{}-{test}", std::process::id() % 100_000)
}

/// The state root of the tests' labs (their names are unique per process).
pub fn state_root() -> PathBuf {
    PathBuf::from("/run/kube-netd-tests")
}

/// The helper program built with these tests.
pub fn helper() -> String {
    env!("CARGO_BIN_EXE_netd-lab-helper").to_owned()
}

/// Lab options for the tests: the helper, the test state root, a generous timeout, no
/// built-in cluster DNS.
pub fn options(name: &str) -> LabOptions {
    let mut o = LabOptions::new(name, vec![helper()]);
    o.state_root = state_root();
    o.converge_timeout = Duration::from_secs(30);
    // The clusters here are written out already resolved: a built-in DNS Deployment would
    // stay unexpanded, and the tests count the objects they give.
    o.cluster_dns = false;
    o
}

/// Objects from YAML.
pub fn objects(yaml: &str) -> Vec<Object> {
    netd_testkit::objects(yaml)
}

/// Builds the lab `name` from YAML (taken as already resolved).
pub fn up(name: &str, yaml: &str) -> Lab {
    Lab::up(options(name), objects(yaml), netd_lab::resolved_as_given()).expect("lab up")
}

/// Namespaces, `/etc/netns` entries and processes of the lab `name` that still exist.
pub fn leftovers(name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let mut out: Vec<String> = netd_kernel::netns::list()
        .expect("list namespaces")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("namespace {n}"))
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                out.push(format!("/etc/netns/{n}"));
            }
        }
    }
    let marker = state_root().join(name).to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if netd_kernel::process::is_ours(pid, &marker) && netd_kernel::process::is_alive(pid) {
            out.push(format!("process {pid}"));
        }
    }
    if state_root().join(name).exists() {
        out.push(format!("state dir {marker}"));
    }
    out
}
