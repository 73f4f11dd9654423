//! Unknown fields are refused, as the API server refuses them under kubectl's default
//! `--validate=strict`: a misspelt field would otherwise be dropped, and a NetworkPolicy with
//! `form:` for `from:` (or `matchLabel:` for `matchLabels:`) would allow every peer.

use netd_model::{ClusterConfig, FieldValidation, LoadError, LoadWarning, load_str, load_str_with};
use pretty_assertions::assert_eq;

/// One typo'd object per case, at several depths, in every kind the loader reads, with the
/// message the load is refused with.
fn cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "NetworkPolicy: `form` for `from` (the peer list would read as any peer)",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - form: [{podSelector: {matchLabels: {role: frontend}}}]\n",
            r#"typo.yaml: document 1 (NetworkPolicy default/db): strict decoding error: unknown field "spec.ingress[0].form""#,
        ),
        (
            "NetworkPolicy: `matchLabel` for `matchLabels` (the selector would select every pod)",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  podSelector: {matchLabel: {role: db}}\n  policyTypes: [Ingress]\n",
            r#"typo.yaml: document 1 (NetworkPolicy default/db): strict decoding error: unknown field "spec.podSelector.matchLabel""#,
        ),
        (
            "NetworkPolicy: a peer's namespace selector, deep",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  podSelector: {}\n  egress:\n  - to:\n    - namespaceSelector: {matchExpresions: [{key: a, operator: Exists}]}\n",
            r#"typo.yaml: document 1 (NetworkPolicy default/db): strict decoding error: unknown field "spec.egress[0].to[0].namespaceSelector.matchExpresions""#,
        ),
        (
            "NetworkPolicy: ipBlock `exept`",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}}]\n",
            r#"typo.yaml: document 1 (NetworkPolicy default/db): strict decoding error: unknown field "spec.ingress[0].from[0].ipBlock.exept""#,
        ),
        (
            "Pod: a container port field",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80, protocl: UDP}]\n",
            r#"typo.yaml: document 1 (Pod default/web): strict decoding error: unknown field "spec.containers[0].ports[0].protocl""#,
        ),
        (
            "Pod: metadata",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, label: {app: web}}\nspec: {containers: [{name: c}]}\n",
            r#"typo.yaml: document 1 (Pod default/web): strict decoding error: unknown field "metadata.label""#,
        ),
        (
            "Service: top level and in a port, both reported",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selectr: {app: web}\n  ports: [{port: 80, targetport: 8080}]\n",
            r#"typo.yaml: document 1 (Service default/web): strict decoding error: unknown field "spec.selectr", unknown field "spec.ports[0].targetport""#,
        ),
        (
            "Deployment: the pod template",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, imag: nginx}]}\n",
            r#"typo.yaml: document 1 (Deployment default/web): strict decoding error: unknown field "spec.template.spec.containers[0].imag""#,
        ),
        (
            "EndpointSlice: an endpoint's conditions",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.2], conditions: {redy: true}}]\n",
            r#"typo.yaml: document 1 (EndpointSlice default/web-1): strict decoding error: unknown field "endpoints[0].conditions.redy""#,
        ),
        (
            "Namespace: a top-level field",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\nspecs: {}\n",
            r#"typo.yaml: document 1 (Namespace prod): strict decoding error: unknown field "specs""#,
        ),
        (
            "Node: its spec",
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRS: [10.244.1.0/24]}\n",
            r#"typo.yaml: document 1 (Node node-1): strict decoding error: unknown field "spec.podCIDRS""#,
        ),
        (
            "an item of a List",
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b, nmae: c}}\n",
            r#"typo.yaml: document 1, items[1] (Namespace b): strict decoding error: unknown field "metadata.nmae""#,
        ),
    ]
}

#[test]
fn every_unknown_field_is_refused_with_file_document_object_and_path() {
    for (case, text, want) in cases() {
        match load_str("typo.yaml", text, &ClusterConfig::default()) {
            Ok(m) => panic!("{case}: loaded {} objects", m.objects.len()),
            Err(e) => assert_eq!(e.to_string(), want, "case: {case}"),
        }
    }
}

#[test]
fn a_refused_load_keeps_nothing_of_the_good_documents_before_it() {
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: fine}}\n---\n{}",
        cases()[0].1
    );
    let err = load_str("typo.yaml", &text, &ClusterConfig::default()).expect_err("refused");
    assert!(
        matches!(&err, LoadError::UnknownField { at, .. } if at.document == 2),
        "{err}"
    );
}

#[test]
fn warn_loads_without_the_fields_and_says_which() {
    let (_, text, _) = cases()[0];
    let m = load_str_with(
        "typo.yaml",
        text,
        &ClusterConfig::default(),
        FieldValidation::Warn,
    )
    .expect("loads under warn");
    assert_eq!(m.objects.len(), 1);
    let [warning] = m.warnings.as_slice() else {
        panic!("one warning expected, got {:?}", m.warnings);
    };
    assert!(matches!(warning, LoadWarning::UnknownField { .. }));
    assert_eq!(
        warning.to_string(),
        r#"typo.yaml: document 1 (NetworkPolicy default/db): ignored unknown field "spec.ingress[0].form""#
    );
}

#[test]
fn ignore_loads_silently() {
    for (case, text, _) in cases() {
        let m = load_str_with(
            "typo.yaml",
            text,
            &ClusterConfig::default(),
            FieldValidation::Ignore,
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(m.warnings.is_empty(), "{case}: {:?}", m.warnings);
    }
}

#[test]
fn free_form_maps_and_status_are_not_unknown_fields() {
    // Labels, annotations, selectors and status are the type's own fields or maps of any key.
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {anything: goes, a.b/c: d}\n  annotations: {x: y}\nspec:\n  selector: {whatever: web}\n  ports: [{port: 80, targetPort: http}]\nstatus: {loadBalancer: {ingress: [{ip: 172.18.255.1}]}}\n";
    let m = load_str("ok.yaml", text, &ClusterConfig::default()).expect("loads");
    assert_eq!(m.objects.len(), 1);
}
