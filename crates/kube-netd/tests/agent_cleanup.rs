//! `kube-netd agent --cleanup`, run inside a scratch network namespace: every mode's rules
//! go, other software's stay.

use std::process::Command;

use netd_agent::{BackendConfig, Mode};
use netd_kernel::{netns, rules};
use netd_model::NodeName;
use netd_testkit::scratch::ScratchNetns;

const CLUSTER: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn ours_in_iptables(ns: &str) -> Vec<String> {
    rules::iptables_save(ns)
        .expect("iptables-save")
        .lines()
        .filter(|l| l.contains("KUBE-") || l.contains("KNP-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn cleanup_removes_every_mode_and_keeps_foreign_rules() {
    let ns = ScratchNetns::new("agt", "cleanup");
    let state = netd_testkit::state(CLUSTER);
    let node = NodeName::new("node-1");
    for mode in [Mode::Iptables, Mode::Nftables] {
        let mut backend = netd_agent::backend(&BackendConfig {
            mode,
            ..BackendConfig::default()
        });
        backend.sync(ns.name(), &state, &node).expect("sync");
    }
    // Another program's rules, which cleanup must leave alone.
    rules::nft_load(
        ns.name(),
        "table inet other {\n chain c {\n  type filter hook input priority 0;\n }\n}\n",
    )
    .expect("foreign nft table");
    netns::exec(ns.name(), &["iptables", "-N", "OTHER-CHAIN"]).expect("foreign chain");

    assert!(
        !ours_in_iptables(ns.name()).is_empty(),
        "iptables rules were programmed"
    );
    let tables = rules::nft_tables(ns.name()).expect("nft tables");
    assert!(
        tables.iter().any(|(_, name)| name == "kube-netd"),
        "{tables:?}"
    );

    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_kube-netd")])
        .args(["agent", "--cleanup", "--hostname-override", "node-1"])
        .output()
        .expect("run kube-netd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("removed: "), "{printed}");

    assert_eq!(ours_in_iptables(ns.name()), Vec::<String>::new());
    assert!(
        rules::ipset_list(ns.name()).expect("ipsets").is_empty(),
        "ipsets left"
    );
    let tables = rules::nft_tables(ns.name()).expect("nft tables");
    assert!(
        !tables.iter().any(|(_, name)| name == "kube-netd"),
        "{tables:?}"
    );
    assert!(tables.iter().any(|(_, name)| name == "other"), "{tables:?}");
    let saved = rules::iptables_save(ns.name()).expect("iptables-save");
    assert!(saved.contains(":OTHER-CHAIN"), "{saved}");
}
