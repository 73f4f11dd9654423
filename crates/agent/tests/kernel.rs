//! Real-kernel tests of the applier: each test creates its own namespace
//! (`nat-<pid>-<name>`), applies rules inside it and removes it on drop. Needs root.

use netd_agent::{NodeProgrammer, apply, cleanup};
use netd_kernel::rules;
use netd_model::NodeName;
use netd_testkit::scratch::ScratchNetns;

/// The seed's pods and two policies, with a Service in front of db.
const CLUSTER: &str = concat!(
    netd_testkit::node_1!(),
    r#"apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: redis, containerPort: 6379}]}]}
status: {podIP: 10.244.1.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: default, labels: {role: frontend}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: 10.96.0.20, selector: {role: db}, ports: [{port: 6379}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
ports: [{port: 6379, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}], ports: [{port: 6379}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}}], ports: [{port: 5978}]}]
"#
);

/// Rules of other software that must survive every sync and the clean-up.
const FOREIGN: &str = "*filter\n:FOREIGN - [0:0]\n:KUBE-FIREWALL - [0:0]\n\
    -A FOREIGN -s 192.0.2.1/32 -j DROP\n-A FORWARD -j FOREIGN\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n\
    *nat\n:FOREIGN-NAT - [0:0]\n-A PREROUTING -j FOREIGN-NAT\nCOMMIT\n";

fn save(ns: &str) -> String {
    rules::iptables_save(ns).expect("iptables-save")
}

/// The rule lines of a dump (no comments, counters or chain declarations).
fn rule_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| l.starts_with("-A ") || l.starts_with('*'))
        .map(str::to_owned)
        .collect()
}

fn count(dump: &str, needle: &str) -> usize {
    dump.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_hundred_syncs_keep_one_hook_per_chain_and_cleanup_spares_other_rules() {
    let ns = ScratchNetns::new("nat", "sync");
    rules::iptables_restore(ns.name(), FOREIGN).expect("foreign rules");
    rules::ipset_restore(
        ns.name(),
        "create foreign hash:ip family inet\nadd foreign 192.0.2.9\n",
    )
    .expect("foreign set");
    let node = NodeName::new("node-1");
    let state = netd_testkit::state(CLUSTER);
    let node_rules = NodeProgrammer::default()
        .rules(&state, &node)
        .expect("rules");

    apply(ns.name(), &node_rules).expect("first sync");
    let first = save(ns.name());
    for _ in 0..99 {
        apply(ns.name(), &node_rules).expect("resync");
    }
    let last = save(ns.name());
    assert_eq!(
        rule_lines(&first),
        rule_lines(&last),
        "a resync changes nothing"
    );
    for (hook, tables) in [
        (
            "-A FORWARD -m comment --comment kube-netd -j KUBE-NETD-FORWARD",
            1,
        ),
        (
            "-A INPUT -m comment --comment kube-netd -j KUBE-NETD-INPUT",
            1,
        ),
        (
            "-A OUTPUT -m comment --comment kube-netd -j KUBE-NETD-OUTPUT",
            2,
        ),
        (
            "-A PREROUTING -m comment --comment kube-netd -j KUBE-NETD-PREROUTING",
            1,
        ),
        (
            "-A POSTROUTING -m comment --comment kube-netd -j KUBE-NETD-POSTROUTING",
            1,
        ),
    ] {
        assert_eq!(
            count(&last, hook),
            tables,
            "{hook} once per table in:\n{last}"
        );
    }
    // Our hook is first in FORWARD, before the foreign jump that was there before us, and
    // policy comes before KUBE-FORWARD in our dispatch chain.
    let forward: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("-A FORWARD "))
        .collect();
    assert!(forward[0].ends_with("-j KUBE-NETD-FORWARD"), "{forward:?}");
    let dispatch: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("-A KUBE-NETD-FORWARD "))
        .collect();
    assert!(dispatch[0].ends_with("-j KNP-FORWARD"), "{dispatch:?}");
    assert!(last.contains("--match-set KNP-"), "{last}");

    // Deleting the policy removes its chains and, after the swap, its sets.
    let sets_before = rules::ipset_list(ns.name()).expect("ipsets");
    assert!(
        sets_before.iter().any(|s| s.starts_with("KNP-")),
        "{sets_before:?}"
    );
    let without = netd_testkit::state(&CLUSTER.replace(
        "kind: NetworkPolicy",
        "kind: Namespace\nmetadata: {name: unused}\n# was",
    ));
    let fewer = NodeProgrammer::default()
        .rules(&without, &node)
        .expect("rules");
    apply(ns.name(), &fewer).expect("sync without the policy");
    let after = save(ns.name());
    assert!(
        !after.contains(":KNP-I-") && !after.contains(":KNP-E-"),
        "{after}"
    );
    assert_eq!(
        rules::ipset_list(ns.name()).expect("ipsets"),
        vec!["foreign".to_owned()]
    );

    // Back again, then clean up: everything of ours goes, everything foreign stays.
    apply(ns.name(), &node_rules).expect("sync with the policy");
    let removed = cleanup(ns.name()).expect("cleanup");
    assert_eq!(removed.hooks, 6, "{removed:?}");
    assert!(removed.chains > 10 && removed.sets > 0, "{removed:?}");
    let clean = save(ns.name());
    for ours in [
        "KUBE-NETD",
        "KNP-",
        "KUBE-SERVICES",
        "KUBE-SVC-",
        "KUBE-SEP-",
        "KUBE-FORWARD",
    ] {
        assert!(!clean.contains(ours), "{ours} left in:\n{clean}");
    }
    for foreign in [
        "-A FOREIGN -s 192.0.2.1/32 -j DROP",
        "-A FORWARD -j FOREIGN",
        "-A INPUT -j KUBE-FIREWALL",
        "-A PREROUTING -j FOREIGN-NAT",
    ] {
        assert_eq!(count(&clean, foreign), 1, "{foreign} kept in:\n{clean}");
    }
    assert_eq!(
        rules::ipset_list(ns.name()).expect("ipsets"),
        vec!["foreign".to_owned()]
    );
    assert_eq!(
        cleanup(ns.name()).expect("second cleanup"),
        Default::default()
    );
}
