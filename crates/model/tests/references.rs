//! What `delete -f` reads: objects by reference, without validating their specs.

use netd_model::{Kind, LoadError, ObjectId, load_references_str};

fn id(kind: Kind, namespace: &str, name: &str) -> ObjectId {
    ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn a_reference_needs_only_kind_and_name_and_a_spec_is_not_read() {
    let text = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {ports: [{port: not-a-port}], nonsense: true}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a}}
- {apiVersion: v1, kind: Namespace, metadata: {name: x, namespace: ignored}}
- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
";
    let refs = load_references_str("refs.yaml", text, None).expect("references load");
    let ids: Vec<ObjectId> = refs.references.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids,
        [
            id(Kind::Service, "x", "web"),
            id(Kind::Pod, "default", "a"),
            id(Kind::Namespace, "", "x"),
            id(Kind::NetworkPolicy, "x", "p"),
        ],
        "in order, defaulted namespace, cluster-scoped without one, a repeat listed once"
    );
    assert_eq!(
        refs.references[1].source.to_string(),
        "refs.yaml: document 2, items[0]"
    );
}

#[test]
fn a_reference_without_a_name_or_of_an_unknown_kind_is_refused_naming_the_document() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "f.yaml: document 2: ConfigMap (v1) is not a kind kube-netd knows",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n",
            "f.yaml: document 1 (Pod in x without a name): metadata.name: required value",
        ),
        (
            "apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n",
            "f.yaml: document 1: Pod must have apiVersion v1, not \"v2\"",
        ),
        (
            "kind: Pod\nmetadata: {name: a}\n",
            "f.yaml: document 1: `apiVersion` must be set to a string",
        ),
    ];
    for (text, expected) in cases {
        let e: LoadError = load_references_str("f.yaml", text, None).expect_err(expected);
        let mut shown = e.to_string();
        if let Some(cause) = std::error::Error::source(&e) {
            shown = format!("{shown}: {cause}");
        }
        assert_eq!(shown, expected);
    }
}

#[test]
fn a_namespace_given_places_references_without_one_and_refuses_another() {
    let text = "
apiVersion: v1
kind: Pod
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
";
    let refs = load_references_str("f.yaml", text, Some("y")).expect("references load");
    let ids: Vec<ObjectId> = refs.references.into_iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [
            id(Kind::Pod, "y", "a"),
            id(Kind::Pod, "y", "b"),
            id(Kind::Namespace, "", "y"),
        ]
    );
    let e = load_references_str("f.yaml", text, Some("z")).expect_err("b is in y");
    assert_eq!(
        e.to_string(),
        "f.yaml: document 2 (Pod y/b): the object's namespace is not \"z\", the namespace given; \
         give its own namespace, or none"
    );
}
