//! Real-kernel tests of the nftables back end's netlink path (need root). Every golden
//! `nftables.nft` scenario of netd-render is lowered and committed over netlink into a scratch
//! namespace (`nfta-<pid>-<name>`, removed on drop) and must list exactly as the same table
//! loaded with `nft -f`; every incremental update, lowered and committed over a
//! netlink-loaded previous table, must list as a fresh load of the next; and a batch the
//! kernel refuses leaves the previous table as it was. The back end itself syncs through
//! netlink, full then partial, and a sync the kernel refuses makes the next one full.
//!
//! The plain Services' endpoint maps (`endpoints-<i>`) and the `lb-<i>` rules that look them
//! up are the exception: `nft -f` declares such a map as a concatenation (the kernel's
//! pipapo) and converts the numgen value's byte order, where netlink declares one field of
//! raw bytes (the rbtree) and ranges over the bytes as they lie; both split the shares alike,
//! so the listings are compared with those maps reduced to their element counts and without
//! those rules, and the flow battery compares them by packets.

#[path = "../../render/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use netd_agent::nft::lower;
use netd_agent::{AgentError, Backend, Nftables, SyncKind};
use netd_kernel::nftnl::NftError;
use netd_model::NodeName;
use netd_proxy::{IpFamily, plan};
use netd_render::RenderOptions;
use netd_render::nft::services::{SHARD_COUNT, shard_chain, shard_map};
use netd_render::nft::{Rule, Table, Verdict, render_services_nft};
use netd_testkit::nft::{listed, load, nft, without};
use netd_testkit::scratch::ScratchNetns;

/// The golden scenarios of netd-render that have an `nftables.nft`, with their tables.
fn golden_tables() -> Vec<(String, Table)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../render/tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("render's golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("nftables.nft").exists() && p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|dir| {
            let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
            let (node, family, opts) = common::options(&yaml);
            let state = netd_testkit::state(&yaml);
            let table = render_services_nft(
                &plan(&state, &node, family, &opts),
                &RenderOptions::default(),
            );
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, table)
        })
        .collect()
}

fn commit_full(ns: &str, table: &Table) {
    lower::replacement(table)
        .expect("lowers")
        .commit(ns)
        .unwrap_or_else(|e| panic!("netlink load of {}: {e:?}", table.name));
}

fn drop_table(ns: &str, table: &Table) {
    nft(
        ns,
        &["delete", "table", table.family_str(), &table.name],
        "",
    )
    .expect("delete table");
}

fn list(ns: &str, table: &Table) -> serde_json::Value {
    let share_maps: Vec<String> = (0..SHARD_COUNT).map(shard_map).collect();
    let lb_chains: Vec<String> = (0..SHARD_COUNT).map(shard_chain).collect();
    without(
        listed(ns, table.family_str(), &table.name),
        &share_maps,
        &lb_chains,
    )
}

/// The declarations `nft list table` prints for `table` in `ns` (sets, maps and chains, with
/// their `type`/`typeof`, `flags` and hook lines): what a person reads, and what `nft -f`
/// must read back. Elements are left out: plain `nft list` prints hashed sets in bucket order.
fn declarations(ns: &str, table: &Table) -> Vec<String> {
    let text = nft(ns, &["list", "table", table.family_str(), &table.name], "")
        .unwrap_or_else(|e| panic!("nft list table: {e}"));
    let share_maps: Vec<String> = (0..SHARD_COUNT)
        .map(|i| format!("map {} {{", shard_map(i)))
        .collect();
    let mut in_share_map = false;
    text.lines()
        .map(str::trim)
        .filter(|l| {
            if ["set ", "map ", "chain "].iter().any(|p| l.starts_with(p)) {
                in_share_map = share_maps.iter().any(|m| m == l);
            }
            !in_share_map
                && ["set ", "map ", "chain ", "type ", "typeof ", "flags "]
                    .iter()
                    .any(|p| l.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_golden_table_loaded_over_netlink_lists_as_nft_f_loads_it() {
    let ns = ScratchNetns::new("nfta", "golden");
    let tables = golden_tables();
    for (name, table) in &tables {
        load(ns.name(), &table.to_nft());
        let want = list(ns.name(), table);
        let declared = declarations(ns.name(), table);
        drop_table(ns.name(), table);
        commit_full(ns.name(), table);
        let got = list(ns.name(), table);
        pretty_assertions::assert_eq!(want, got, "{name}");
        pretty_assertions::assert_eq!(declared, declarations(ns.name(), table), "{name}");
        // A second replacement over the loaded table leaves the same table.
        commit_full(ns.name(), table);
        pretty_assertions::assert_eq!(want, list(ns.name(), table), "{name}, replaced");
        drop_table(ns.name(), table);
    }
    assert!(tables.len() >= 20, "only {} golden tables", tables.len());
}

/// Every scenario to every other of its family, and to and from an empty table: the
/// lowered update committed over the netlink-loaded previous table leaves what `nft -f`
/// of the next table leaves.
#[test]
fn every_lowered_update_ends_where_a_fresh_load_does() {
    let ns = ScratchNetns::new("nfta", "diff");
    let mut tables = golden_tables();
    for family in IpFamily::ALL {
        tables.push((format!("empty {family}"), Table::new(family)));
    }
    let wanted: Vec<serde_json::Value> = tables
        .iter()
        .map(|(_, next)| {
            load(ns.name(), &next.to_nft());
            let want = list(ns.name(), next);
            drop_table(ns.name(), next);
            want
        })
        .collect();
    let mut pairs = 0;
    for (prev_name, prev) in &tables {
        for ((next_name, next), want) in tables.iter().zip(&wanted) {
            if prev_name == next_name || prev.family != next.family {
                continue;
            }
            commit_full(ns.name(), prev);
            let update = lower::update(prev, next)
                .unwrap_or_else(|e| panic!("{prev_name} -> {next_name}: {e}"));
            if let Err(e) = update.commit(ns.name()) {
                panic!("{prev_name} -> {next_name}: the update fails: {e:?}");
            }
            pretty_assertions::assert_eq!(
                want,
                &list(ns.name(), next),
                "{prev_name} -> {next_name}"
            );
            drop_table(ns.name(), next);
            pairs += 1;
        }
    }
    assert!(pairs >= 400, "only {pairs} pairs");
}

#[test]
fn a_refused_update_leaves_the_previous_table_in_place() {
    let ns = ScratchNetns::new("nfta", "refused");
    let tables = golden_tables();
    let (_, prev) = tables
        .iter()
        .find(|(name, _)| name == "overall")
        .expect("overall scenario");
    commit_full(ns.name(), prev);
    let before = list(ns.name(), prev);
    // The next table's new rule jumps to a chain that does not exist: the kernel refuses
    // that rule, after the update's other commands were accepted in the batch.
    let mut next = prev.clone();
    let services = next.chains.get_mut("services").expect("services chain");
    services
        .rules
        .push(Rule::new().verdict(Verdict::Jump("no-such-chain".to_owned())));
    let Err(err) = lower::update(prev, &next)
        .expect("lowers")
        .commit(ns.name())
    else {
        panic!("the kernel accepted a jump to a missing chain");
    };
    let NftError::Rejected { what, .. } = &err else {
        panic!("not a refused message: {err:?}");
    };
    assert!(what.contains("services"), "{what}");
    pretty_assertions::assert_eq!(before, list(ns.name(), prev));
    // A refused full replacement leaves it too.
    let Err(_) = lower::replacement(&next).expect("lowers").commit(ns.name()) else {
        panic!("the kernel accepted a jump to a missing chain");
    };
    pretty_assertions::assert_eq!(before, list(ns.name(), prev));
}

/// `web` (TCP 80, ClusterIP 10.96.0.11) with the endpoints `web`, on node-1.
fn web(endpoints: &str) -> netd_model::ClusterState {
    netd_testkit::state(&format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 172.18.0.2}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: x}}
spec: {{clusterIP: 10.96.0.11, ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{endpoints}]
ports: [{{port: 80, protocol: TCP}}]
"#
    ))
}

fn endpoint(ip: &str) -> String {
    format!("{{addresses: [{ip}], nodeName: node-1, conditions: {{ready: true}}}}")
}

/// What the back end's sync left in `ns`, next to what `nft -f` of its own rendering leaves
/// in `reference`.
fn synced_as_rendered(
    backend: &Nftables,
    ns: &str,
    reference: &str,
    state: &netd_model::ClusterState,
) {
    let node = NodeName::new("node-1");
    let tables = backend.tables(state, &node).expect("tables");
    let [t] = tables.as_slice() else {
        panic!("one family expected");
    };
    load(reference, &t.table.to_nft());
    let want = list(reference, &t.table);
    drop_table(reference, &t.table);
    pretty_assertions::assert_eq!(want, list(ns, &t.table));
}

#[test]
fn the_back_end_syncs_over_netlink_and_a_failed_sync_makes_the_next_full() {
    let ns = ScratchNetns::new("nfta", "backend");
    let reference = ScratchNetns::new("nfta", "backend-ref");
    let node = NodeName::new("node-1");
    let mut backend = Nftables::new();
    let kinds = |r: &netd_agent::SyncReport| r.families.iter().map(|f| f.kind).collect::<Vec<_>>();

    let one = web(&endpoint("10.244.1.5"));
    let report = backend.sync(ns.name(), &one, &node).expect("first sync");
    assert_eq!(kinds(&report), [SyncKind::Full]);
    synced_as_rendered(&backend, ns.name(), reference.name(), &one);

    let two = web(&format!(
        "{}, {}",
        endpoint("10.244.1.5"),
        endpoint("10.244.1.6")
    ));
    let report = backend
        .sync(ns.name(), &two, &node)
        .expect("endpoint added");
    assert_eq!(kinds(&report), [SyncKind::Partial]);
    synced_as_rendered(&backend, ns.name(), reference.name(), &two);

    // Someone deletes the table: the partial update's commands name objects that are gone,
    // the kernel refuses the batch, and the next sync replaces the table whole.
    nft(ns.name(), &["delete", "table", "ip", "kube-netd"], "").expect("delete table");
    let Err(err) = backend.sync(ns.name(), &one, &node) else {
        panic!("an update of a missing table succeeded");
    };
    assert!(
        matches!(err, AgentError::NftApplyFailed { .. }),
        "not an apply failure: {err:?}"
    );
    let report = backend.sync(ns.name(), &one, &node).expect("full resync");
    assert_eq!(kinds(&report), [SyncKind::Full]);
    synced_as_rendered(&backend, ns.name(), reference.name(), &one);
}

#[test]
fn partial_syncs_of_services_and_policy_leave_the_table_a_full_render_gives() {
    let ns = ScratchNetns::new("nfta", "steps");
    let reference = ScratchNetns::new("nfta", "steps-ref");
    let node = NodeName::new("node-1");
    let mut backend = Nftables::new();
    let mut state = web(&endpoint("10.244.1.5"));
    backend.sync(ns.name(), &state, &node).expect("first sync");
    // Each step changes the state as a store does and is synced as an update: plain
    // Services sharing an endpoint (its hairpin pair) and a ClusterIP's port, a Service with
    // chains (NodePort, affinity), one removed, endpoints moved, NetworkPolicy and its Pods.
    let api = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n";
    let steps = [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: x}}\n\
             spec: {{clusterIP: 10.96.0.12, ports: [{{port: 80}}, {{name: dns, port: 53, protocol: UDP}}]}}\n\
             {api}metadata: {{name: api-1, namespace: x, labels: {{kubernetes.io/service-name: api}}}}\n\
             ports: [{{port: 80, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]\n\
             endpoints: [{}, {}]\n",
            endpoint("10.244.1.5"),
            endpoint("10.244.1.7")
        ),
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: x}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.13, sessionAffinity: ClientIP, \
         ports: [{port: 80, nodePort: 30080}]}\n"
            .to_owned(),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: sticky-1, namespace: x, labels: {{kubernetes.io/service-name: sticky}}}}\n\
             ports: [{{port: 80, protocol: TCP}}]\nendpoints: [{}]\n",
            endpoint("10.244.1.7")
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\n\
             ports: [{{port: 80, protocol: TCP}}]\nendpoints: [{}, {}]\n",
            endpoint("10.244.1.6"),
            endpoint("10.244.1.7")
        ),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.5}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {}}]}]}\n"
            .to_owned(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.6}\n"
            .to_owned(),
    ];
    let check = |backend: &Nftables, state: &netd_model::ClusterState, step: &str| {
        let tables = backend.tables(state, &node).expect("tables");
        assert_eq!(
            backend.applied(IpFamily::V4),
            Some(&tables[0].table),
            "{step}"
        );
        synced_as_rendered(backend, ns.name(), reference.name(), state);
    };
    for (i, step) in steps.iter().enumerate() {
        for object in netd_testkit::objects(step) {
            state.insert(object).expect("valid object");
        }
        let report = backend.sync(ns.name(), &state, &node).expect("update");
        assert_eq!(report.families[0].kind, SyncKind::Partial, "step {i}");
        check(&backend, &state, &format!("step {i}"));
    }
    // Taken out again one by one, the first ones first.
    for (i, step) in steps.iter().enumerate() {
        for object in netd_testkit::objects(step) {
            state.remove(&object.id());
        }
        let report = backend.sync(ns.name(), &state, &node).expect("update");
        assert_eq!(report.families[0].kind, SyncKind::Partial, "removal {i}");
        check(&backend, &state, &format!("removal {i}"));
    }
}
