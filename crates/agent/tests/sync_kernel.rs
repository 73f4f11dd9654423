//! Real-kernel tests of the sync engine: full then partial syncs, IPv6 through
//! `ip6tables-restore`, and the conntrack reconciler. Each test creates its own namespace
//! (`nsync-<pid>-<name>`) and removes it on drop. Needs root.

use std::collections::BTreeMap;

use netd_agent::{InNamespace, NodeProgrammer, NodeRules, SyncEngine, SyncKind, apply, cleanup};
use netd_kernel::{netns, rules};
use netd_model::{ClusterConfig, NodeName, ServiceRef};
use netd_proxy::IpFamily;
use netd_testkit::scratch::ScratchNetns;

/// `web` (TCP 80, ClusterIP 10.96.0.11) with the given endpoint and `dns` (UDP 53, ClusterIP
/// 10.96.0.12) with the given endpoint, both on node-1.
fn cluster(web: &str, dns: &str) -> NodeRules {
    let yaml = format!(
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
endpoints: [{{addresses: [{web}], nodeName: node-1, conditions: {{ready: true}}}}]
ports: [{{port: 80, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: x}}
spec: {{clusterIP: 10.96.0.12, ports: [{{port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: x, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
endpoints: [{{addresses: [{dns}], nodeName: node-1, conditions: {{ready: true}}}}]
ports: [{{port: 53, protocol: UDP}}]
"#
    );
    programmed(&netd_testkit::state(&yaml))
}

fn programmed(state: &netd_model::ClusterState) -> NodeRules {
    NodeProgrammer::default()
        .rules(state, &NodeName::new("node-1"))
        .expect("rules")
}

/// The rules of a dump, by chain, in order.
fn by_chain(dump: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut table = "";
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rule) = line.strip_prefix("-A ")
            && let Some((chain, rest)) = rule.split_once(' ')
        {
            out.entry(format!("{table} {chain}"))
                .or_default()
                .push(rest.to_owned());
        }
    }
    out
}

fn save(ns: &str) -> String {
    rules::iptables_save(ns).expect("iptables-save")
}

fn save6(ns: &str) -> String {
    let out = netns::exec(ns, &["ip6tables-save"]).expect("ip6tables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_partial_sync_rewrites_the_changed_service_and_ends_where_a_full_sync_would() {
    let ns = ScratchNetns::new("nsync", "part");
    let mut engine = SyncEngine::new();
    let mut kernel = InNamespace::new(ns.name());
    let first = engine
        .sync(&mut kernel, cluster("10.244.1.2", "10.244.1.53"))
        .expect("full sync");
    assert_eq!(first.families[0].kind, SyncKind::Full);
    let dump = save(ns.name());
    assert!(dump.contains("--to-destination 10.244.1.2:80"), "{dump}");
    assert!(dump.contains("--to-destination 10.244.1.53:53"), "{dump}");

    let second = engine
        .sync(&mut kernel, cluster("10.244.1.3", "10.244.1.53"))
        .expect("partial sync");
    assert_eq!(second.families[0].kind, SyncKind::Partial);
    assert_eq!(
        second.families[0].services,
        [ServiceRef::new("x", "web")].into()
    );
    assert_eq!(second.families[0].deleted_chains, 1, "the old KUBE-SEP");
    let dump = save(ns.name());
    assert!(dump.contains("--to-destination 10.244.1.3:80"), "{dump}");
    assert!(!dump.contains("10.244.1.2:80"), "{dump}");
    assert!(
        dump.contains("--to-destination 10.244.1.53:53"),
        "dns untouched: {dump}"
    );
    assert_eq!(
        dump.lines()
            .filter(|l| l.starts_with("-A FORWARD ") && l.ends_with("-j KUBE-NETD-FORWARD"))
            .count(),
        1
    );

    let fresh = ScratchNetns::new("nsync", "fresh");
    apply(fresh.name(), &cluster("10.244.1.3", "10.244.1.53")).expect("full sync elsewhere");
    assert_eq!(by_chain(&dump), by_chain(&save(fresh.name())));
    assert_eq!(engine.metrics().syncs(IpFamily::V4, SyncKind::Partial), 1);
}

const DUAL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:172:18::2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: [10.96.0.11, "fd00:10:96::11"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ["EP6"], nodeName: node-1, conditions: {ready: true}}]
ports: [{port: 80, protocol: TCP}]
"#;

fn dual_stack(ep6: &str) -> NodeRules {
    let config = ClusterConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().expect("cidr"),
            "fd00:10:96::/112".parse().expect("cidr"),
        ],
        ..ClusterConfig::default()
    };
    programmed(&netd_testkit::state_with(&DUAL.replace("EP6", ep6), config))
}

#[test]
fn ipv6_rules_go_through_ip6tables_restore_and_are_cleaned_up() {
    let ns = ScratchNetns::new("nsync", "v6");
    let mut engine = SyncEngine::new();
    let mut kernel = InNamespace::new(ns.name());
    let first = engine
        .sync(&mut kernel, dual_stack("fd00:10:244:1::2"))
        .expect("dual-stack sync");
    let kinds: Vec<(IpFamily, SyncKind)> =
        first.families.iter().map(|f| (f.family, f.kind)).collect();
    assert_eq!(
        kinds,
        [
            (IpFamily::V4, SyncKind::Full),
            (IpFamily::V6, SyncKind::Full)
        ]
    );
    let v6 = save6(ns.name());
    assert!(v6.contains("-d fd00:10:96::11/128"), "{v6}");
    assert!(
        v6.contains("--to-destination [fd00:10:244:1::2]:80"),
        "{v6}"
    );
    assert!(
        v6.contains("-A FORWARD -m comment --comment kube-netd -j KUBE-NETD-FORWARD"),
        "{v6}"
    );
    let v4 = save(ns.name());
    assert!(
        v4.contains("--to-destination 10.244.1.2:80") && !v4.contains("fd00:"),
        "{v4}"
    );

    let second = engine
        .sync(&mut kernel, dual_stack("fd00:10:244:1::3"))
        .expect("partial");
    let kinds: Vec<(IpFamily, SyncKind, usize)> = second
        .families
        .iter()
        .map(|f| (f.family, f.kind, f.services.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            (IpFamily::V4, SyncKind::Partial, 0),
            (IpFamily::V6, SyncKind::Partial, 1)
        ]
    );
    let v6 = save6(ns.name());
    assert!(
        v6.contains("[fd00:10:244:1::3]:80") && !v6.contains("[fd00:10:244:1::2]:80"),
        "{v6}"
    );

    let removed = cleanup(ns.name()).expect("cleanup");
    assert!(removed.chains > 0);
    assert!(!save6(ns.name()).contains("KUBE-"), "{}", save6(ns.name()));
    assert!(!save(ns.name()).contains("KUBE-"), "{}", save(ns.name()));
}

fn conntrack(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["conntrack"];
    argv.extend(args);
    let out = netns::exec(ns, &argv).expect("conntrack");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Inserts a conntrack entry from 10.244.1.9:`sport` to `dst`:`dport`, answered by
/// `backend`.
fn flow(ns: &str, protocol: &str, sport: u16, dst: &str, dport: u16, backend: &str) {
    let (sport, dport) = (sport.to_string(), dport.to_string());
    let mut args = vec![
        "-I",
        "-p",
        protocol,
        "-s",
        "10.244.1.9",
        "-d",
        dst,
        "--sport",
        &sport,
        "--dport",
        &dport,
        "-r",
        backend,
        "-q",
        "10.244.1.9",
        "--reply-port-src",
        &dport,
        "--reply-port-dst",
        &sport,
        "-t",
        "600",
    ];
    if protocol == "tcp" {
        args.extend(["--state", "ESTABLISHED", "-u", "ASSURED"]);
    }
    conntrack(ns, &args);
}

#[test]
fn udp_flows_to_a_removed_endpoint_are_deleted_tcp_and_live_flows_are_kept() {
    let ns = ScratchNetns::new("nsync", "ct");
    let mut engine = SyncEngine::new();
    let mut kernel = InNamespace::new(ns.name());
    engine
        .sync(&mut kernel, cluster("10.244.1.2", "10.244.1.53"))
        .expect("first sync");
    flow(ns.name(), "udp", 40001, "10.96.0.12", 53, "10.244.1.53");
    flow(ns.name(), "tcp", 40002, "10.96.0.11", 80, "10.244.1.2");

    // Both backends move: the UDP flow to the old one goes, the TCP connection stays.
    let moved = engine
        .sync(&mut kernel, cluster("10.244.1.3", "10.244.1.54"))
        .expect("sync");
    assert_eq!(moved.families[0].conntrack_deleted, 1);
    let udp = conntrack(ns.name(), &["-L", "-p", "udp"]);
    assert!(!udp.contains("sport=40001"), "{udp}");
    let tcp = conntrack(ns.name(), &["-L", "-p", "tcp"]);
    assert!(tcp.contains("sport=40002"), "TCP is never flushed: {tcp}");

    // An agent restart (a new engine) keeps flows to serving endpoints.
    flow(ns.name(), "udp", 40003, "10.96.0.12", 53, "10.244.1.54");
    let restarted = SyncEngine::new()
        .sync(&mut kernel, cluster("10.244.1.3", "10.244.1.54"))
        .expect("sync after restart");
    assert_eq!(restarted.families[0].kind, SyncKind::Full);
    assert_eq!(restarted.families[0].conntrack_deleted, 0);
    let udp = conntrack(ns.name(), &["-L", "-p", "udp"]);
    assert!(udp.contains("sport=40003"), "{udp}");
    assert!(
        conntrack(ns.name(), &["-L", "-p", "tcp"]).contains("sport=40002"),
        "TCP survives the restart"
    );
}
