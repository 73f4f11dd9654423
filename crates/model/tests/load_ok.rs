//! Loading what is valid: directories, multi-document YAML, `kind: List`, JSON, and the
//! warnings for what is skipped.

use std::fs;
use std::path::{Path, PathBuf};

use netd_model::load::STDIN_NAME;
use netd_model::{
    ClusterConfig, ClusterState, LoadWarning, Manifests, Object, Source, load, load_str,
};
use pretty_assertions::assert_eq;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Each object as `Kind ns/name @ source`, in load order.
fn listing(m: &Manifests) -> Vec<String> {
    m.objects
        .iter()
        .map(|l| format!("{} @ {}", l.object.id(), l.source))
        .collect()
}

fn warnings(m: &Manifests) -> Vec<String> {
    m.warnings.iter().map(ToString::to_string).collect()
}

#[test]
fn a_directory_is_read_recursively_in_sorted_order() {
    let dir = fixture("tree");
    let m = load(std::slice::from_ref(&dir), &ClusterConfig::default()).expect("loads");
    let d = dir.display();
    assert_eq!(
        listing(&m),
        [
            format!("Namespace shop @ {d}/a/namespace.yaml: document 1"),
            format!("Pod shop/web @ {d}/b/web.yml: document 1"),
            format!("Service shop/web @ {d}/b/web.yml: document 3"),
            format!("NetworkPolicy shop/web-from-shop @ {d}/c-policy.json: document 1"),
        ]
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let state =
        ClusterState::new(m.into_objects(), ClusterConfig::default()).expect("a valid snapshot");
    assert_eq!(state.pods().count(), 1);
}

#[test]
fn paths_load_in_the_order_given_and_an_empty_directory_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::create_dir_all(root.join("z/deeper")).expect("mkdir");
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    let ns = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
    fs::write(root.join("z/deeper/b.yaml"), ns("b")).expect("write");
    fs::write(
        root.join("z/a.json"),
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}"#,
    )
    .expect("write");
    fs::write(root.join("z/notes.txt"), "kind: Namespace").expect("write");
    fs::write(root.join("first.yaml"), ns("first")).expect("write");

    let paths = [root.join("first.yaml"), root.join("z")];
    let m = load(&paths, &ClusterConfig::default()).expect("loads");
    let names: Vec<String> = m
        .objects
        .iter()
        .map(|l| l.object.name().to_owned())
        .collect();
    assert_eq!(names, ["first", "a", "b"]);
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);

    let with_empty = [root.join("first.yaml"), root.join("empty")];
    let err = load(&with_empty, &ClusterConfig::default()).expect_err("an empty directory");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no .yaml, .yml or .json files in this directory",
            root.join("empty").display()
        )
    );
}

#[test]
fn a_list_is_unpacked_and_unknown_kinds_are_skipped_with_a_warning() {
    let text = fs::read_to_string(fixture("list.yaml")).expect("fixture");
    let m = load_str("list.yaml", &text, &ClusterConfig::default()).expect("loads");
    assert_eq!(
        listing(&m),
        [
            "Pod default/api @ list.yaml: document 1, items[0]",
            "Service default/api @ list.yaml: document 1, items[2]"
        ]
    );
    assert_eq!(
        m.warnings,
        [LoadWarning::UnknownKind {
            source: Source {
                file: "list.yaml".to_owned(),
                document: 1,
                item: Some(1)
            },
            api_version: "v1".to_owned(),
            kind: "ConfigMap".to_owned(),
        }]
    );
    assert_eq!(
        warnings(&m),
        ["list.yaml: document 1, items[1]: skipped ConfigMap (v1), a kind kube-netd does not read"]
    );
    // The namespace is filled in, as the API server does.
    assert_eq!(
        m.objects[0].object.meta().namespace.as_deref(),
        Some("default")
    );
}

#[test]
fn a_json_stream_is_read_object_by_object() {
    let text = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "namespace": "ignored"}}
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
 "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}"#;
    let m = load_str("objs.json", text, &ClusterConfig::default()).expect("loads");
    assert_eq!(
        listing(&m),
        [
            "Namespace a @ objs.json: document 1",
            "Pod a/p @ objs.json: document 3"
        ]
    );
    assert_eq!(
        warnings(&m),
        ["objs.json: document 2: skipped ConfigMap (v1), a kind kube-netd does not read"]
    );
    let Object::Namespace(ns) = &m.objects[0].object else {
        panic!("not a Namespace")
    };
    assert_eq!(
        ns.metadata.namespace, None,
        "a cluster-scoped object keeps no namespace"
    );
}

#[test]
fn empty_documents_and_empty_input_load_nothing() {
    for text in ["", "---\n", "# nothing\n---\n---\n", "\n\n"] {
        let m = load_str("empty.yaml", text, &ClusterConfig::default()).expect("loads");
        assert_eq!(m, Manifests::default(), "{text:?}");
    }
}

#[test]
fn yaml_anchors_and_merge_keys_are_resolved() {
    let text = "
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: &labels {app: web, tier: front}
spec:
  selector:
    <<: *labels
    tier: back
  ports: [{port: 80}]
";
    let m = load_str("anchors.yaml", text, &ClusterConfig::default()).expect("loads");
    let Object::Service(svc) = &m.objects[0].object else {
        panic!("not a Service")
    };
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert_eq!(selector.get("app").map(String::as_str), Some("web"));
    assert_eq!(selector.get("tier").map(String::as_str), Some("back"));
}

#[test]
fn stdin_text_is_named_stdin_in_errors() {
    let err = load_str(
        STDIN_NAME,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
        &ClusterConfig::default(),
    )
    .expect_err("a Pod without containers");
    assert_eq!(err.to_string(), "<stdin>: document 1 (Pod default/a)");
}

#[test]
fn a_missing_file_is_named() {
    let path = fixture("does-not-exist.yaml");
    let err = load(std::slice::from_ref(&path), &ClusterConfig::default()).expect_err("missing");
    assert_eq!(err.to_string(), format!("cannot read {}", path.display()));
}

#[test]
fn the_same_cluster_ip_and_node_port_within_rules_load() {
    // default/kubernetes may have its reserved address; TCP and UDP of one port may share a
    // nodePort; a Local LoadBalancer may set a healthCheckNodePort.
    let text = "
apiVersion: v1
kind: Service
metadata: {name: kubernetes}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports:
    - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
    - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}
";
    let m = load_str("svc.yaml", text, &ClusterConfig::default()).expect("loads");
    assert_eq!(m.objects.len(), 2);
}

#[test]
fn the_examples_load() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let m = load(&[examples], &ClusterConfig::default()).expect("the examples are valid");
    assert!(!m.objects.is_empty());
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}
