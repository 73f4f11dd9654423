//! Golden files of IPVS mode: `tests/golden/<scenario>/input.yaml` rendered for one node must
//! equal `ipvs.rules` byte for byte. `UPDATE_GOLDEN=1 cargo test -p netd-render --test
//! ipvs_golden` rewrites them.
//!
//! The options are those of `golden.rs`. NodePorts get virtual servers on the scenario's
//! `node-ip` addresses, or on 172.18.0.2 (IPv4) / fd00:172:18::2 (IPv6) when it names none,
//! so every nodePort scenario shows them.

mod common;

use std::net::IpAddr;
use std::path::Path;

use netd_proxy::{IpFamily, plan};
use netd_render::{IpvsOptions, render_ipvs};

use common::{options, scenarios};

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    let mut node_addresses: Vec<IpAddr> = opts
        .node_ips
        .iter()
        .copied()
        .filter(|ip| family.contains(*ip))
        .collect();
    if node_addresses.is_empty() {
        let fallback = match family {
            IpFamily::V4 => "172.18.0.2",
            IpFamily::V6 => "fd00:172:18::2",
        };
        node_addresses.push(fallback.parse().expect("address"));
    }
    render_ipvs(
        &p,
        &IpvsOptions {
            node_addresses,
            ..IpvsOptions::default()
        },
    )
    .to_text()
}

#[test]
fn ipvs_golden() {
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
        let file = dir.join("ipvs.rules");
        if update {
            std::fs::write(&file, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("=== {name}: ipvs.rules differs");
            for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
                if w != g {
                    eprintln!("first difference at line {}:\n- {w}\n+ {g}", i + 1);
                    break;
                }
            }
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}
