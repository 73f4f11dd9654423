//! Exit statuses that say the outcome, through the binary: `policy check` exits 1 when the
//! flow is blocked, as `kubectl auth can-i` does when the answer is no; a lab that cannot be
//! built as asked is refused with status 1 before anything is made.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// Only role=frontend may reach db; `web` selects db, `empty` selects nothing.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {containers: [{name: c, ports: [{containerPort: 6379}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: default, labels: {role: frontend}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: default}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.50, selector: {role: db}, ports: [{port: 6379}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 10.96.0.51, selector: {role: nothing}, ports: [{port: 6379}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
"#;

fn check(file: &std::path::Path, from: &str, to: &str) -> Output {
    Command::new(BIN)
        .args(["policy", "check", from, to, "--port", "6379", "-f"])
        .arg(file)
        .output()
        .expect("run kube-netd")
}

#[test]
fn policy_check_exits_1_when_the_flow_is_blocked_and_0_when_allowed() {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), CLUSTER).expect("write manifest");
    let cases = [
        ("default/frontend", "default/db", Some(0), "allowed"),
        ("default/stranger", "default/db", Some(1), "blocked"),
        ("default/frontend", "10.96.0.50", Some(0), "allowed"),
        ("default/stranger", "10.96.0.50", Some(1), "blocked"),
        (
            "default/frontend",
            "10.96.0.51",
            Some(1),
            "no ready endpoints",
        ),
    ];
    for (from, to, status, says) in cases {
        let out = check(file.path(), from, to);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), status, "{from} -> {to}: {stdout}");
        assert!(stdout.contains(says), "{from} -> {to}: {stdout}");
        assert!(
            out.stderr.is_empty(),
            "a verdict is not an error: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = Command::new(BIN)
        .args(["policy", "check", "--help"])
        .output()
        .expect("run kube-netd");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("1 when it is blocked"),
        "the exit status is documented"
    );
}
