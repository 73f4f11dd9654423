//! Real-kernel tests of the nftables representation (need root): the golden rule sets load
//! with `nft -f` into a fresh namespace (`nftr-<pid>-<name>`, removed on drop), and an
//! incremental update, `diff(previous, next)` applied over `previous`, leaves exactly what
//! loading `next` from scratch leaves.

mod common;

use std::path::Path;

use netd_proxy::plan;
use netd_render::RenderOptions;
use netd_render::nft::{Table, diff, render_services_nft};
use netd_testkit::nft::{listed, load, nft};
use netd_testkit::scratch::ScratchNetns;
use serde_json::Value;

use common::{options, scenarios};

fn render(dir: &Path) -> Table {
    let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let (node, family, opts) = options(&yaml);
    let state = netd_testkit::state(&yaml);
    render_services_nft(
        &plan(&state, &node, family, &opts),
        &RenderOptions::default(),
    )
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn golden_rule_sets_load_and_list() {
    let ns = ScratchNetns::new("nftr", "golden");
    let mut checked = 0;
    for dir in scenarios() {
        let Ok(text) = std::fs::read_to_string(dir.join("nftables.nft")) else {
            continue;
        };
        let family = if text.starts_with("table ip6 ") {
            "ip6"
        } else {
            "ip"
        };
        if let Err(e) = nft(ns.name(), &["-c", "-f", "-"], &text) {
            panic!("{}: nft -c rejects the golden file: {e}", name(&dir));
        }
        load(ns.name(), &text);
        let listing = nft(ns.name(), &["list", "table", family, "kube-netd"], "")
            .unwrap_or_else(|e| panic!("{}: list: {e}", name(&dir)));
        for needle in [
            "chain services {",
            "map service-ips {",
            "chain masquerading {",
        ] {
            assert!(
                listing.contains(needle),
                "{}: the kernel's table lacks {needle:?}:\n{listing}",
                name(&dir)
            );
        }
        nft(ns.name(), &["delete", "table", family, "kube-netd"], "")
            .unwrap_or_else(|e| panic!("{}: delete: {e}", name(&dir)));
        checked += 1;
    }
    assert!(checked >= 17, "only {checked} golden nftables files");
}

/// Every scenario to every other of the same family and to and from an empty table (so
/// services appear, go away, change endpoints, policies, affinity and source ranges): the
/// update must leave what a fresh load of the next table leaves, and an update to an equal
/// table is empty.
#[test]
fn diff_applied_over_previous_equals_next() {
    let ns = ScratchNetns::new("nftr", "diff");
    let mut tables: Vec<(String, Table)> = scenarios()
        .iter()
        .filter(|d| d.join("iptables.rules").exists())
        .map(|d| (name(d), render(d)))
        .collect();
    // An empty table per family: updates that build everything and remove everything, and
    // a partner for the single IPv6 scenario.
    for family in netd_proxy::IpFamily::ALL {
        tables.push((format!("empty {family}"), Table::new(family)));
    }
    let drop_table = |t: &Table| {
        nft(ns.name(), &["delete", "table", t.family_str(), &t.name], "").expect("delete table");
    };
    let wanted: Vec<Value> = tables
        .iter()
        .map(|(_, next)| {
            load(ns.name(), &next.to_nft());
            let want = listed(ns.name(), next.family_str(), &next.name);
            drop_table(next);
            want
        })
        .collect();
    let mut pairs = 0;
    for (prev_name, prev) in &tables {
        assert_eq!(diff(prev, prev), "", "{prev_name}: diff with itself");
        for ((next_name, next), want) in tables.iter().zip(&wanted) {
            if prev_name == next_name || prev.family != next.family {
                continue;
            }
            load(ns.name(), &prev.to_nft());
            let update = diff(prev, next);
            if let Err(e) = nft(ns.name(), &["-f", "-"], &update) {
                panic!("{prev_name} -> {next_name}: the update fails: {e}\n--- update:\n{update}");
            }
            let got = listed(ns.name(), next.family_str(), &next.name);
            pretty_assertions::assert_eq!(want, &got, "{prev_name} -> {next_name}");
            drop_table(next);
            pairs += 1;
        }
    }
    assert!(pairs >= 100, "only {pairs} pairs");
}
