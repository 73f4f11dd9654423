//! Golden files of the NetworkPolicy back end: `tests/golden/policy/<scenario>/input.yaml`
//! rendered for one node must equal `ipset.rules`, `iptables.rules` and, for the nftables
//! mode, `nftables-policy.nft` byte for byte.
//! `UPDATE_GOLDEN=1 cargo test -p netd-render --test policy_golden` rewrites them.
//!
//! The scenarios live one level down (`golden/policy/`) so that the service goldens, which
//! take every `golden/*/input.yaml`, do not pick them up. An input may start with a
//! `# node: NAME` line (default `node-1`).

use std::path::Path;

use netd_model::NodeName;
use netd_proxy::IpFamily;
use netd_render::nft::policy::render_policy_nft;
use netd_render::render_policy;

fn node(yaml: &str) -> NodeName {
    yaml.lines()
        .map_while(|l| l.strip_prefix("# "))
        .find_map(|l| l.strip_prefix("node: "))
        .map_or_else(|| NodeName::new("node-1"), NodeName::new)
}

#[test]
fn golden() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/policy");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
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
    let mut failed = Vec::new();
    for dir in dirs {
        let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
        let state = netd_testkit::state(&yaml);
        let plan = netd_policy::compile(&state, &node(&yaml)).expect("compile");
        let rules = render_policy(&plan, IpFamily::V4);
        for (file, got) in [
            ("ipset.rules", rules.ipset_input()),
            ("iptables.rules", rules.restore_input()),
            (
                "nftables-policy.nft",
                render_policy_nft(&plan, IpFamily::V4).to_nft(),
            ),
        ] {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &got).expect("write golden");
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if got != want {
                eprintln!(
                    "=== {} differs:\n--- want\n{want}--- got\n{got}",
                    path.display()
                );
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}
