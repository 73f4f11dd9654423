//! # netd-testkit: test support shared by kube-netd's crates
//!
//! Tests describe clusters the way users do, as YAML, with [`objects`] and [`state`]:
//!
//! ```
//! let state = netd_testkit::state(r#"
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: a, namespace: x, labels: {pod: a}}
//! spec: {nodeName: node-1, containers: [{name: c, image: i}]}
//! status: {podIP: 10.244.1.2}
//! "#);
//! assert_eq!(state.pods().count(), 1);
//! ```
//!
//! The YAML is parsed straight into k8s-openapi types, without the loader's validation, so a
//! test can build exactly the resolved state it needs (IPs, nodes, conditions set by hand).
//! This is test code: it panics on malformed input, naming the document.
//!
//! [`held::HeldConnection`] keeps a TCP connection to a lab echo server open from inside a
//! network namespace, for tests that check a connection survives a change.

pub mod held;

use netd_model::{ClusterConfig, ClusterState, Object};
use serde::de::DeserializeOwned;

/// Parses multi-document YAML into objects. Panics (naming the document) on anything
/// malformed or of a kind the model does not know.
pub fn objects(yaml: &str) -> Vec<Object> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("document {}: not YAML: {e}", i + 1));
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let object = match kind.as_str() {
            "Namespace" => Object::Namespace(parse(value, i)),
            "Node" => Object::Node(Box::new(parse(value, i))),
            "Deployment" => Object::Deployment(Box::new(parse(value, i))),
            "Pod" => Object::Pod(Box::new(parse(value, i))),
            "Service" => Object::Service(Box::new(parse(value, i))),
            "EndpointSlice" => Object::EndpointSlice(parse(value, i)),
            "NetworkPolicy" => Object::NetworkPolicy(Box::new(parse(value, i))),
            other => panic!("document {}: unsupported kind {other:?}", i + 1),
        };
        out.push(object);
    }
    out
}

/// Builds a [`ClusterState`] from YAML with the default [`ClusterConfig`].
pub fn state(yaml: &str) -> ClusterState {
    state_with(yaml, ClusterConfig::default())
}

/// Builds a [`ClusterState`] from YAML with the given configuration.
pub fn state_with(yaml: &str, config: ClusterConfig) -> ClusterState {
    ClusterState::new(objects(yaml), config).unwrap_or_else(|e| panic!("invalid test cluster: {e}"))
}

fn parse<T: DeserializeOwned>(mut value: serde_json::Value, index: usize) -> T {
    // apiVersion/kind are not fields of the k8s-openapi structs' serde form; drop them.
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("document {}: {e}", index + 1))
}
