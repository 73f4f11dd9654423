//! `trace` over a node's whole rule set (NetworkPolicy included) and `policy check`'s
//! explanations, through the binary as a user runs them.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Two nodes; `app/db` (node-1) and `app/far` (node-2) back Service `app/db` and admit only
/// `role=client` on TCP 6379; `app/other` may only send UDP 53.
const CLUSTER: &str = concat!(
    netd_testkit::two_nodes!(),
    r#"apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {role: client}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: app, labels: {role: other}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: app, labels: {role: db}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 6379}]}]}
status: {podIP: 10.244.1.20}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: app, labels: {role: db}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 6379}]}]}
status: {podIP: 10.244.2.20}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: app}
spec: {clusterIP: 10.96.0.50, selector: {role: db}, ports: [{port: 6379}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: app}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 6379}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-egress, namespace: app}
spec:
  podSelector: {matchLabels: {role: other}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 53, protocol: UDP}]}]
"#
);

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run kube-netd")
}

fn stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn manifest() -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), CLUSTER).expect("write manifest");
    file
}

/// `trace` on node-1 of CLUSTER, without the rule-by-rule lines (indented six spaces).
fn trace(file: &tempfile::NamedTempFile, from: &str, to: &str) -> String {
    let path = file.path().to_str().expect("utf-8 path");
    let out = stdout(&["trace", "-f", path, "--node", "node-1", from, to]);
    out.lines()
        .filter(|l| !l.starts_with("      "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Where every branch of a trace ended: the `result:` lines after a hop to another node,
/// else the trace's own outcome lines.
fn fates(out: &str) -> Vec<&str> {
    match out.split_once("result:\n") {
        Some((_, result)) => result.lines().collect(),
        None => out
            .lines()
            .filter(|l| l.starts_with("  ") && l.contains("% "))
            .collect(),
    }
}

#[test]
fn trace_names_the_policy_rule_that_allows_or_drops() {
    let file = manifest();
    assert_eq!(
        trace(&file, "app/client", "app/db:6379"),
        "on node-1:\n\
         TCP 10.244.1.10:40000 -> 10.244.1.20:6379 (Network)\n  \
         100.00% ACCEPT\n    \
         policy: app/db ingress[0]\n"
    );
    for (from, to) in [("app/other", "app/db:6379"), ("app/client", "app/db:6380")] {
        let out = trace(&file, from, to);
        assert!(
            out.contains("  100.00% DROP\n    policy: app/db ingress: isolated by app/db\n"),
            "{from} -> {to}: {out}"
        );
    }
    assert!(
        trace(&file, "app/other", "10.244.2.20:6379").contains(
            "  100.00% DROP\n    policy: app/other egress: isolated by app/other-egress\n"
        )
    );
    // The rules cited are the node's, in its hook order: the dispatch chain, the policy
    // chains, and the pod's ingress chain's final DROP.
    let path = file.path().to_str().expect("utf-8 path");
    let full = stdout(&[
        "trace",
        "-f",
        path,
        "--node",
        "node-1",
        "app/other",
        "app/db:6379",
    ]);
    let cited: Vec<&str> = full
        .lines()
        .filter_map(|l| l.strip_prefix("      "))
        .filter(|l| l.starts_with("filter/"))
        .map(|l| l.split(':').next().unwrap_or(l))
        .collect();
    assert_eq!(
        cited[..3],
        [
            "filter/FORWARD #1",
            "filter/KUBE-NETD-FORWARD #1",
            "filter/KNP-FORWARD #1"
        ],
        "{full}"
    );
    let last = full.lines().last().unwrap_or_default();
    assert!(
        last.contains("filter/KNP-I-") && last.ends_with("-j DROP"),
        "{full}"
    );
}

#[test]
fn trace_follows_a_packet_to_the_node_its_destination_is_on() {
    let file = manifest();
    let out = trace(&file, "app/client", "svc/app/db:6379");
    assert!(
        out.contains(
            "branch 2 (50.00%) is forwarded to node-2, where 10.244.2.20 is:\non node-2:\n"
        ),
        "{out}"
    );
    assert_eq!(
        fates(&out),
        [
            "   50.00% ACCEPT at 10.244.1.20:6379 on node-1 (policy: app/db ingress[0])",
            "   50.00% ACCEPT at 10.244.2.20:6379 on node-2 (policy: app/db ingress[0])",
        ],
        "{out}"
    );
    // Both branches are dropped on node-1: the local endpoint by the first policy chain the
    // packet meets there (the endpoint's ingress), the remote one by the source's egress.
    let out = trace(&file, "app/other", "svc/app/db:6379");
    assert_eq!(
        out,
        "on node-1:\n\
         TCP 10.244.1.11:40000 -> 10.96.0.50:6379 (Network)\n   \
         50.00% DROP DNAT to 10.244.1.20:6379\n    \
         policy: app/db ingress: isolated by app/db\n   \
         50.00% DROP DNAT to 10.244.2.20:6379\n    \
         policy: app/other egress: isolated by app/other-egress\n"
    );
}

#[test]
fn trace_starts_on_the_node_the_source_is_on() {
    let file = manifest();
    let path = file.path().to_str().expect("utf-8 path");
    let given = stdout(&["trace", "-f", path, "app/client", "app/db:6379"]);
    assert!(given.starts_with("on node-1:\n"), "{given}");
    let elsewhere = stdout(&[
        "trace",
        "-f",
        path,
        "--node",
        "node-2",
        "app/client",
        "app/db:6379",
    ]);
    assert_eq!(
        elsewhere,
        format!(
            "note: app/client is on node-1, so its packets meet node-1's rules first, not \
             node-2's\n{given}"
        )
    );
    let outside = run(&["trace", "-f", path, "192.0.2.1", "app/db:6379"]);
    assert!(!outside.status.success());
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("--node is needed: 192.0.2.1"),
        "{outside:?}"
    );
    let entering = stdout(&[
        "trace",
        "-f",
        path,
        "--node",
        "node-1",
        "192.0.2.1",
        "app/db:6379",
    ]);
    assert!(
        entering.contains("  100.00% DROP\n    policy: app/db ingress: isolated by app/db\n"),
        "{entering}"
    );
}

#[test]
fn trace_reports_a_port_the_service_does_not_expose() {
    let file = manifest();
    assert_eq!(
        trace(&file, "app/client", "svc/app/db:6380"),
        "on node-1:\n\
         TCP 10.244.1.10:40000 -> 10.96.0.50:6380 (Network)\n  \
         100.00% NO SERVICE PORT\n  \
         service app/db does not expose TCP/6380 (its ports: TCP/6379); nothing answers at 10.96.0.50\n"
    );
}

#[test]
fn trace_of_the_examples_drops_what_the_policy_drops() {
    let run_trace =
        |from: &str, to: &str| stdout(&["trace", "-f", EXAMPLES, "--node", "node-1", from, to]);
    let out = run_trace("default/stranger", "default/db:6379");
    let ends = fates(&out);
    assert!(
        !ends.is_empty() && ends.iter().all(|f| f.contains("% DROP")),
        "{out}"
    );
    assert!(
        out.contains("    policy: default/db ingress: isolated by default/test-network-policy\n"),
        "{out}"
    );
    let out = run_trace("default/frontend", "default/db:6379");
    let ends = fates(&out);
    assert!(
        !ends.is_empty() && ends.iter().all(|f| f.contains("% ACCEPT")),
        "{out}"
    );
    assert!(
        out.contains("policy: default/test-network-policy ingress[0]"),
        "{out}"
    );
}

#[test]
fn policy_check_without_a_port_says_one_is_needed() {
    for protocol in ["tcp", "udp"] {
        let out = run(&[
            "policy",
            "check",
            "-f",
            EXAMPLES,
            "default/frontend",
            "default/db",
            "--protocol",
            protocol,
        ]);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "a {} check needs a port (--port)",
                protocol.to_uppercase()
            )),
            "{err}"
        );
    }
}

#[test]
fn policy_check_says_when_the_peer_matches_but_the_port_does_not() {
    let check = |port: &str| {
        let out = run(&[
            "policy",
            "check",
            "-f",
            EXAMPLES,
            "default/frontend",
            "default/db",
            "--port",
            port,
        ]);
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(
        check("6380"),
        "default/frontend -> default/db TCP/6380: blocked: isolated for ingress by \
         default/test-network-policy; no ingress rule allows this port: \
         default/test-network-policy ingress[0] allows pods role=frontend on TCP 6379; \
         this flow is TCP 6380\n"
    );
    assert!(check("6379").contains(": allowed: "));
}
