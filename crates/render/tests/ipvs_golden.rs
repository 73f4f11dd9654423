//! Golden files of IPVS mode: `tests/golden/<scenario>/input.yaml` rendered for one node must
//! equal `ipvs.rules` byte for byte. `UPDATE_GOLDEN=1 cargo test -p netd-render --test
//! ipvs_golden` rewrites them.
//!
//! The options are those of `golden.rs`; nodePorts get virtual servers on
//! [`common::ipvs_node_addresses`].

mod common;

use std::path::Path;

use netd_proxy::plan;
use netd_render::{IpvsOptions, render_ipvs};

use common::{ipvs_node_addresses, options, scenarios};

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    let node_addresses = ipvs_node_addresses(&opts, family);
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
