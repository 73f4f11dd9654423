//! Shared by the integration tests: the service golden scenarios and their options, and the
//! NetworkPolicy scenarios with their plans.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netd_model::NodeName;
use netd_policy::PolicyPlan;
use netd_proxy::{DetectLocal, IpFamily, NodePortAddresses, ProxyOptions};

/// The service scenarios: every `tests/golden/*/input.yaml`, by directory name.
pub fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

/// The proxy options an input's leading `# key: value` lines set (see `golden.rs`).
pub fn options(yaml: &str) -> (NodeName, IpFamily, ProxyOptions) {
    let mut node = NodeName::new("node-1");
    let mut family = IpFamily::V4;
    let mut opts = ProxyOptions {
        cluster_cidrs: netd_model::ClusterConfig::default().cluster_cidrs,
        ..ProxyOptions::default()
    };
    let mut cidrs = Vec::new();
    let mut nodeport_addresses: Vec<String> = Vec::new();
    let (mut detect_local, mut bridge, mut prefix) = (String::new(), None, None);
    for line in yaml.lines().map_while(|l| l.strip_prefix("# ")) {
        // Other comment lines describe the scenario.
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            continue;
        }
        match key {
            "node" => node = NodeName::new(value),
            "family" => {
                family = if value == "IPv6" {
                    IpFamily::V6
                } else {
                    IpFamily::V4
                }
            }
            "cluster-cidr" => cidrs.push(value.parse().expect("cluster-cidr")),
            "node-ip" => opts.node_ips.push(value.parse().expect("node-ip")),
            "nodeport-address" => nodeport_addresses.push(value.to_owned()),
            "node-pod-cidr" => opts
                .node_pod_cidrs
                .push(value.parse().expect("node-pod-cidr")),
            "detect-local-mode" => detect_local = value.to_owned(),
            "pod-bridge-interface" => bridge = Some(value.to_owned()),
            "pod-interface-name-prefix" => prefix = Some(value.to_owned()),
            "zone" => opts.node_zone = Some(value.to_owned()),
            "masquerade-all" => opts.masquerade_all = value == "true",
            "localhost-nodeports" => opts.localhost_nodeports = value == "true",
            other => panic!("unknown golden option {other:?}"),
        }
    }
    if !cidrs.is_empty() {
        opts.cluster_cidrs = cidrs;
    }
    opts.nodeport_addresses =
        NodePortAddresses::parse(&nodeport_addresses).expect("nodeport-address");
    opts.detect_local = DetectLocal::parse(&detect_local, bridge.as_deref(), prefix.as_deref())
        .expect("detect-local-mode");
    (node, family, opts)
}

/// The addresses IPVS mode puts nodePort virtual servers on in a scenario: its `node-ip`
/// lines of the family, or 172.18.0.2 (IPv4) / fd00:172:18::2 (IPv6) when it names none, so
/// every nodePort scenario shows them.
pub fn ipvs_node_addresses(opts: &ProxyOptions, family: IpFamily) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = opts
        .node_ips
        .iter()
        .copied()
        .filter(|ip| family.contains(*ip))
        .collect();
    if out.is_empty() {
        let fallback = match family {
            IpFamily::V4 => "172.18.0.2",
            IpFamily::V6 => "fd00:172:18::2",
        };
        out.push(fallback.parse().expect("address"));
    }
    out
}

fn node(yaml: &str) -> NodeName {
    yaml.lines()
        .map_while(|l| l.strip_prefix("# "))
        .find_map(|l| l.strip_prefix("node: "))
        .map_or_else(|| NodeName::new("node-1"), NodeName::new)
}

/// The NetworkPolicy scenarios (`tests/golden/policy/*/input.yaml`, an input may start with
/// `# node: NAME`, default `node-1`), each with its plan for its node.
pub fn policy_scenarios() -> Vec<(PathBuf, PolicyPlan)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/policy");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 6,
        "expected every scenario, found {}",
        dirs.len()
    );
    dirs.into_iter()
        .map(|dir| {
            let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
            let state = netd_testkit::state(&yaml);
            let plan = netd_policy::compile(&state, &node(&yaml)).expect("compile");
            (dir, plan)
        })
        .collect()
}

/// Renders every service scenario with `render` and compares it with the scenario's golden
/// file `name` (`UPDATE_GOLDEN=1` rewrites them); fails naming each scenario that differs,
/// with the lines only one side has.
pub fn check_goldens(name: &str, render: impl Fn(&Path) -> String) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dirs = scenarios();
    assert!(
        dirs.len() >= 17,
        "expected every scenario, found {}",
        dirs.len()
    );
    let mut failed = Vec::new();
    for dir in dirs {
        let got = render(&dir);
        let file = dir.join(name);
        if update {
            std::fs::write(&file, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            eprintln!(
                "=== {} {name} differs:\n{}",
                dir.display(),
                line_diff(&want, &got)
            );
            failed.push(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}

/// The lines only `want` has (`- `) and only `got` has (`+ `).
fn line_diff(want: &str, got: &str) -> String {
    let want: Vec<&str> = want.lines().collect();
    let got: Vec<&str> = got.lines().collect();
    let mut out = String::new();
    for l in &want {
        if !got.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &got {
        if !want.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    out
}
