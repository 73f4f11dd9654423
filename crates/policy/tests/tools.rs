//! The tools: the truth table, `check` and `show`.

mod common;

use std::path::Path;

use common::cluster;
use netd_model::{NamespaceName, PodRef, Protocol};
use netd_policy::{FlowProtocol, Matrix, check, matrix, show};

/// Compares `actual` with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pretty_assertions::assert_eq!(want, actual, "golden file {name}");
}

const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: z}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
";

#[test]
fn matrix_text_is_the_e2e_truth_table() {
    let state = cluster(POLICIES);
    let m = matrix(&state, 80, Protocol::Tcp, &[]);
    golden("matrix/tcp-80.txt", &m.to_text());
    // the exact shape of TruthTable.PrettyPrint: tab-separated, "-" in the corner
    let small = Matrix::new(
        80,
        Protocol::Tcp,
        vec![PodRef::new("x", "a"), PodRef::new("x", "b")],
        vec![vec![true, false], vec![true, true]],
    )
    .expect("square");
    assert_eq!(small.to_text(), "-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n");
    assert_eq!(
        small.to_json(),
        r#"{"port":80,"protocol":"TCP","pods":["x/a","x/b"],"allowed":[[true,false],[true,true]]}"#
    );
}

#[test]
fn matrix_rows_are_sources_and_namespaces_filter() {
    let state = cluster(POLICIES);
    let m = matrix(
        &state,
        80,
        Protocol::Tcp,
        &[NamespaceName::new("x"), NamespaceName::new("z")],
    );
    let pods: Vec<String> = m.pods().iter().map(ToString::to_string).collect();
    assert_eq!(pods, ["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"]);
    let (xa, zb, za) = (
        PodRef::new("x", "a"),
        PodRef::new("z", "b"),
        PodRef::new("z", "a"),
    );
    assert_eq!(m.allowed(&zb, &za), Some(false));
    assert_eq!(m.allowed(&za, &zb), Some(true));
    assert_eq!(m.allowed(&za, &xa), Some(false));
    assert_eq!(m.allowed(&zb, &zb), Some(true));
    let udp = matrix(
        &state,
        80,
        Protocol::Udp,
        &[NamespaceName::new("y"), NamespaceName::new("x")],
    );
    assert_eq!(udp.allowed(&PodRef::new("y", "a"), &xa), Some(false));
    assert_eq!(
        matrix(
            &state,
            80,
            Protocol::Tcp,
            &[NamespaceName::new("y"), NamespaceName::new("x")]
        )
        .allowed(&PodRef::new("y", "a"), &xa),
        Some(true)
    );
}

#[test]
fn matrices_are_built_from_grids_and_compared() {
    let pods = vec![PodRef::new("x", "a"), PodRef::new("x", "b")];
    assert!(Matrix::new(80, Protocol::Tcp, pods.clone(), vec![vec![true, true]]).is_err());
    assert!(
        Matrix::new(
            80,
            Protocol::Tcp,
            pods.clone(),
            vec![vec![true], vec![true]]
        )
        .is_err()
    );
    let a = Matrix::new(
        80,
        Protocol::Tcp,
        pods.clone(),
        vec![vec![true, true], vec![true, true]],
    )
    .expect("a");
    let b = Matrix::new(
        80,
        Protocol::Tcp,
        pods.clone(),
        vec![vec![true, false], vec![true, true]],
    )
    .expect("b");
    let diff = a.mismatches(&b);
    assert_eq!(diff.len(), 1);
    assert_eq!(
        (diff[0].from.to_string(), diff[0].to.to_string()),
        ("x/a".into(), "x/b".into())
    );
    assert!((diff[0].expected, diff[0].actual) == (true, false));
    assert!(a.mismatches(&a).is_empty());
}

#[test]
fn check_explains_pods_ips_and_services() {
    let state = cluster(&format!(
        "{POLICIES}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: x}}
spec: {{clusterIP: 10.96.0.50, selector: {{pod: a}}, ports: [{{port: 8000, targetPort: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 80, protocol: TCP}}]
endpoints: [{{addresses: [10.244.1.11], targetRef: {{kind: Pod, namespace: x, name: a}}}}]
"
    ));
    let tcp = FlowProtocol::Transport(Protocol::Tcp);
    assert_eq!(
        check(&state, "y/b", "x/a", "default", Some(80), tcp).expect("check").text,
        "y/b -> x/a TCP/80: allowed: egress not isolated; ingress allowed by x/allow-from-y ingress[0]\n"
    );
    assert_eq!(
        check(&state, "z/b", "10.244.1.11", "default", Some(80), tcp).expect("check").text,
        "z/b -> 10.244.1.11 TCP/80: blocked: isolated for egress by z/deny-egress; no egress rule allows it; \
         isolated for ingress by x/allow-from-y; no ingress rule allows it\n"
    );
    assert_eq!(
        check(&state, "y/a", "10.96.0.50", "default", Some(8000), tcp).expect("check").text,
        "y/a -> 10.96.0.50 TCP/8000 is service x/web\n  via x/a:80: allowed: egress not isolated; ingress allowed by x/allow-from-y ingress[0]\n"
    );
    assert_eq!(
        check(&state, "b", "pod/x/a", "y", Some(80), tcp).expect("check").text,
        check(&state, "y/b", "x/a", "default", Some(80), tcp).expect("check").text,
        "a bare name is in the namespace given"
    );
    assert_eq!(
        check(&state, "y/a", "svc/x/web", "default", Some(8000), tcp).expect("check").text,
        check(&state, "y/a", "10.96.0.50", "default", Some(8000), tcp).expect("check").text,
        "a Service stands for its ClusterIP"
    );
    let allowed = |from, to, port| {
        check(&state, from, to, "default", Some(port), tcp)
            .expect("check")
            .allowed
    };
    assert_eq!(
        [
            allowed("y/b", "x/a", 80),
            allowed("z/b", "10.244.1.11", 80),
            allowed("y/a", "10.96.0.50", 8000),
        ],
        [true, false, true]
    );
    assert!(check(&state, "y", "x/a", "default", Some(80), tcp).is_err());
    assert!(check(&state, "external", "x/a", "default", Some(80), tcp).is_err());
    assert!(check(&state, "y/nope", "x/a", "default", Some(80), tcp).is_err());
}

#[test]
fn show_summarises_selection_isolation_and_rules() {
    let state = cluster(POLICIES);
    golden(
        "show/x-a.txt",
        &show(&state, &PodRef::new("x", "a")).expect("pod"),
    );
    golden(
        "show/z-b.txt",
        &show(&state, &PodRef::new("z", "b")).expect("pod"),
    );
    golden(
        "show/x-h.txt",
        &show(&state, &PodRef::new("x", "h")).expect("pod"),
    );
    assert!(show(&state, &PodRef::new("x", "nope")).is_err());
}
