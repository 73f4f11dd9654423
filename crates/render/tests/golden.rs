//! Golden files: `tests/golden/<scenario>/input.yaml` rendered for one node must equal
//! `iptables.rules` byte for byte. `UPDATE_GOLDEN=1 cargo test -p netd-render` rewrites them.
//!
//! An input may start with `# key: value` lines that set the proxy options:
//! `node` (default `node-1`), `family` (`IPv4`/`IPv6`), `cluster-cidr` (repeatable; default
//! the cluster's pod ranges), `node-ip` (repeatable), `zone`, `masquerade-all` (`true`),
//! `nodeport-address` (repeatable).

use std::collections::BTreeSet;
use std::path::Path;

use netd_model::NodeName;
use netd_proxy::{IpFamily, ProxyOptions, plan};
use netd_render::{RenderOptions, SyncScope, render_services};

fn options(yaml: &str) -> (NodeName, IpFamily, ProxyOptions) {
    let mut node = NodeName::new("node-1");
    let mut family = IpFamily::V4;
    let mut opts = ProxyOptions {
        cluster_cidrs: netd_model::ClusterConfig::default().cluster_cidrs,
        ..ProxyOptions::default()
    };
    let mut cidrs = Vec::new();
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
            "nodeport-address" => opts
                .nodeport_addresses
                .push(value.parse().expect("nodeport-address")),
            "zone" => opts.node_zone = Some(value.to_owned()),
            "masquerade-all" => opts.masquerade_all = value == "true",
            other => panic!("unknown golden option {other:?}"),
        }
    }
    if !cidrs.is_empty() {
        opts.cluster_cidrs = cidrs;
    }
    (node, family, opts)
}

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    render_services(&p, &RenderOptions::default()).restore_input(&SyncScope::Full, &BTreeSet::new())
}

#[test]
fn golden() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 17,
        "expected every scenario, found {}",
        dirs.len()
    );
    let mut failed = Vec::new();
    for dir in dirs {
        let got = render(&dir);
        let file = dir.join("iptables.rules");
        if update {
            std::fs::write(&file, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            eprintln!("=== {} differs:\n{}", dir.display(), diff(&want, &got));
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

fn diff(want: &str, got: &str) -> String {
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
