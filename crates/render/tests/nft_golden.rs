//! Golden files for the nftables service back end: every `tests/golden/<scenario>/input.yaml`
//! that has an `iptables.rules` is also rendered as `nftables.nft`, which must match byte for
//! byte. `UPDATE_GOLDEN=1 cargo test -p netd-render --test nft_golden` rewrites them. The
//! options an input sets are those of `golden.rs`.

mod common;

use std::path::Path;

use netd_proxy::plan;
use netd_render::RenderOptions;
use netd_render::nft::render_services_nft;

use common::{options, scenarios};

fn render(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    let p = plan(&state, &node, family, &opts);
    render_services_nft(&p, &RenderOptions::default()).to_nft()
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dirs: Vec<_> = scenarios()
        .into_iter()
        .filter(|d| d.join("iptables.rules").exists())
        .collect();
    assert!(
        dirs.len() >= 17,
        "expected every scenario, found {}",
        dirs.len()
    );
    let mut failed = Vec::new();
    for dir in dirs {
        let got = render(&dir);
        let file = dir.join("nftables.nft");
        if update {
            std::fs::write(&file, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            eprintln!("=== {} differs", dir.display());
            pretty_assertions::assert_eq!(want, got);
            failed.push(dir);
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}
