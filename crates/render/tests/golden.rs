//! Golden files: `tests/golden/<scenario>/input.yaml` rendered for one node must equal
//! `iptables.rules` byte for byte. `UPDATE_GOLDEN=1 cargo test -p netd-render` rewrites them.
//!
//! An input may start with `# key: value` lines that set the proxy options:
//! `node` (default `node-1`), `family` (`IPv4`/`IPv6`), `cluster-cidr` (repeatable; default
//! the cluster's pod ranges), `node-ip` (repeatable), `zone`, `masquerade-all` (`true`),
//! `nodeport-address` (repeatable: a CIDR, or `primary`), `localhost-nodeports` (`true`),
//! `detect-local-mode` (kube-proxy's names), `pod-bridge-interface`,
//! `pod-interface-name-prefix`, `node-pod-cidr` (repeatable: the Node's podCIDRs).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use netd_proxy::plan;
use netd_render::{RenderOptions, SyncScope, render_services};

use common::{check_goldens, options};

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    render_services(&p, &RenderOptions::default()).restore_input(
        &p,
        &SyncScope::Full,
        &BTreeSet::new(),
    )
}

#[test]
fn golden() {
    check_goldens("iptables.rules", render);
}
