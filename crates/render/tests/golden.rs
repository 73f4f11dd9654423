//! Golden files: `tests/golden/<scenario>/input.yaml` rendered for one node must equal
//! `iptables.rules` byte for byte. `UPDATE_GOLDEN=1 cargo test -p netd-render` rewrites them.
//!
//! An input may start with `# key: value` lines that set the proxy options:
//! `node` (default `node-1`), `family` (`IPv4`/`IPv6`), `cluster-cidr` (repeatable; default
//! the cluster's pod ranges), `node-ip` (repeatable), `zone`, `masquerade-all` (`true`),
//! `nodeport-address` (repeatable), `localhost-nodeports` (`true`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use netd_proxy::plan;
use netd_render::{RenderOptions, SyncScope, render_services};

use common::{options, scenarios};

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    render_services(&p, &RenderOptions::default()).restore_input(&SyncScope::Full, &BTreeSet::new())
}

#[test]
fn golden() {
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
