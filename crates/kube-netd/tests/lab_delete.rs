//! `kube-netd lab delete`, as kubectl deletes: by reference from files, by KIND NAME and
//! KIND/NAME, reporting each object not found and exiting 1 unless `--ignore-not-found`.
//! Needs root: it builds a lab.

mod common;

use common::TestLab;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: echo}}
spec: {nodeName: node-1, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: echo}}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
spec: {selector: {app: echo}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#;

/// Names the Service without a spec, and the policy with one that would not validate.
const REFERENCES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {matchLabel: {typo: here}}, policyTypes: [Sideways]}
"#;

const WITH_UNKNOWN_KIND: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: x}
"#;

fn pods(lab: &TestLab) -> String {
    lab.ok(&["get", "pods", "-n", "x", "-o", "json"])
}

#[test]
fn lab_delete_takes_references_kinds_and_names_and_reports_what_was_not_found() {
    let lab = TestLab::new("delete");
    let cluster = lab.file("cluster.yaml", CLUSTER);
    lab.ok(&["up", "-f", &cluster]);

    let references = lab.file("refs.yaml", REFERENCES);
    let out = lab.ok(&["delete", "-f", &references]);
    assert_eq!(
        out,
        "service/echo deleted (namespace x)\nnetworkpolicy/deny deleted (namespace x)\n"
    );
    let services = lab.ok(&["get", "svc", "-n", "x"]);
    assert!(!services.contains("echo"), "{services}");

    let bad = lab.file("unknown.yaml", WITH_UNKNOWN_KIND);
    let (out, err) = lab.fails(&["delete", "-f", &bad]);
    assert_eq!(out, "");
    assert!(
        err.contains("unknown.yaml: document 2: ConfigMap (v1) is not a kind kube-netd knows"),
        "{err}"
    );
    assert!(pods(&lab).contains("\"c\""), "nothing was deleted");

    let pod_a = lab.file("a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
    let (_, err) = lab.fails(&["delete", "-f", &pod_a]);
    assert!(err.contains("pods \"a\" not found"), "a is in x: {err}");
    let (_, err) = lab.fails(&["delete", "-f", &references, "-n", "y"]);
    assert!(
        err.contains("(Service x/echo): the object's namespace is not \"y\""),
        "{err}"
    );
    let out = lab.ok(&["delete", "-f", &pod_a, "-n", "x"]);
    assert_eq!(out, "pod/a deleted (namespace x)\n");

    let b_ip = lab.ok(&[
        "get",
        "pod",
        "b",
        "-n",
        "x",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let neighbours = || {
        lab.ok(&[
            "exec",
            "node/node-2",
            "--",
            "ip",
            "neigh",
            "show",
            "dev",
            "cni0",
        ])
    };
    assert!(
        neighbours().contains(&format!("{b_ip} ")),
        "b's entry on its node"
    );
    let (out, err) = lab.fails(&["delete", "po", "a", "b", "-n", "x"]);
    assert_eq!(
        out, "pod/b deleted (namespace x)\n",
        "the others are deleted"
    );
    assert!(
        err.contains("Error from server (NotFound): pods \"a\" not found"),
        "{err}"
    );
    assert!(!pods(&lab).contains("\"b\""), "b is gone");
    assert!(
        !neighbours().contains(&format!("{b_ip} ")),
        "and so is its node's neighbour entry for it: {}",
        neighbours()
    );

    let out = lab.ok(&["delete", "po/a", "po/c", "-n", "x", "--ignore-not-found"]);
    assert_eq!(out, "pod/c deleted (namespace x)\n");
    let (_, err) = lab.fails(&["delete", "netpol", "deny", "-n", "x"]);
    assert!(err.contains("networkpolicies \"deny\" not found"), "{err}");
    assert_eq!(
        lab.ok(&["delete", "netpol", "deny", "-n", "x", "--ignore-not-found"]),
        ""
    );

    let (_, err) = lab.fails(&["delete", "pods"]);
    assert!(err.contains("names a kind but no object"), "{err}");
    let (_, err) = lab.fails(&["delete", "configmap", "settings"]);
    assert!(err.contains("resource type \"configmap\""), "{err}");
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
