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

use common::{check_goldens, ipvs_node_addresses, options};

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
    check_goldens("ipvs.rules", render);
}
