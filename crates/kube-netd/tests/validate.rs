//! `--validate`, through the binary: a NetworkPolicy with a misspelt field is refused by every
//! command that reads manifests, unless the user relaxes validation as kubectl allows.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// The policy means "only role=frontend may reach role=db", but `form` is not `from`: read
/// without its peers, the rule would allow every source.
const TYPO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {containers: [{name: c, ports: [{containerPort: 6379}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: default}
spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - form: [{podSelector: {matchLabels: {role: frontend}}}]
"#;

const REFUSAL: &str = r#"document 3 (NetworkPolicy default/db): strict decoding error: unknown field "spec.ingress[0].form""#;

fn run(file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("-f")
        .arg(file)
        .output()
        .expect("run kube-netd")
}

fn manifest() -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), TYPO).expect("write manifest");
    file
}

#[test]
fn every_command_that_reads_manifests_refuses_an_unknown_field() {
    let file = manifest();
    let commands: [&[&str]; 5] = [
        &["get", "all", "-A"],
        &[
            "policy",
            "check",
            "default/stranger",
            "default/db",
            "--port",
            "6379",
        ],
        &["policy", "matrix", "--port", "6379"],
        &["render", "--node", "node-1"],
        &[
            "trace",
            "--node",
            "node-1",
            "default/stranger",
            "default/db:6379",
        ],
    ];
    for args in commands {
        let out = run(file.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(REFUSAL), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    }
}

#[test]
fn validate_warn_and_false_load_without_the_field_as_kubectl_does() {
    let file = manifest();
    let check = [
        "policy",
        "check",
        "default/stranger",
        "default/db",
        "--port",
        "6379",
    ];
    let warn = run(file.path(), &[&check[..], &["--validate=warn"]].concat());
    assert!(warn.status.success(), "{warn:?}");
    let stderr = String::from_utf8_lossy(&warn.stderr);
    assert!(
        stderr.contains(r#"ignored unknown field "spec.ingress[0].form""#),
        "{stderr}"
    );
    let ignore = run(file.path(), &[&check[..], &["--validate=false"]].concat());
    assert!(ignore.status.success(), "{ignore:?}");
    assert!(
        !String::from_utf8_lossy(&ignore.stderr).contains("unknown field"),
        "{ignore:?}"
    );
}
