//! Objects as the API server sends them (with the noise the store must ignore) and scripted
//! watch streams, shared by this crate's tests.

#![allow(dead_code)] // each test binary uses its own part of this module

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use netd_source::{Store, Watched};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Decodes an object written as JSON.
pub fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("bad test object: {e}"))
}

/// Metadata as the API server fills it: uid, resourceVersion, managedFields.
pub fn api_meta(namespace: Option<&str>, name: &str, rv: u32, labels: Value) -> Value {
    let mut m = json!({
        "name": name,
        "uid": format!("uid-{name}"),
        "resourceVersion": rv.to_string(),
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": labels,
        "managedFields": [{
            "manager": "kubectl", "operation": "Update", "apiVersion": "v1",
            "time": format!("2026-01-01T00:00:{:02}Z", rv % 60),
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}
        }],
    });
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// A Namespace as a metadata-only watch delivers it.
pub fn namespace(name: &str, labels: Value) -> PartialObjectMeta<core::Namespace> {
    from_json(json!({"metadata": api_meta(None, name, 1, labels)}))
}

/// A Node with its podCIDR, InternalIP and a heartbeat stamped `beat`.
pub fn node(name: &str, ip: &str, cidr: &str, beat: u32) -> core::Node {
    from_json(json!({
        "metadata": api_meta(None, name, beat, json!({"kubernetes.io/hostname": name})),
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True",
                "lastHeartbeatTime": format!("2026-01-01T00:{:02}:00Z", beat % 60),
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "capacity": {"cpu": "2"},
        }
    }))
}

/// A running Pod `ns/name` on `node-1` with `ip`, label `app: <app>`, a named port `http`
/// (8080), and a Ready condition last probed at `probe`.
pub fn pod(ns: &str, name: &str, ip: &str, app: &str, probe: u32) -> core::Pod {
    from_json(json!({
        "metadata": api_meta(Some(ns), name, probe, json!({"app": app})),
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "c", "image": "registry.invalid/echo:1",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True",
                 "lastProbeTime": format!("2026-01-01T00:00:{:02}Z", probe % 60)},
                {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": probe,
                "image": "registry.invalid/echo:1", "imageID": "", "started": true}],
        }
    }))
}

/// A ClusterIP Service `ns/name` on port 80 to the named port `http`, selecting `app`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, app: &str, labels: Value) -> core::Service {
    from_json(json!({
        "metadata": api_meta(Some(ns), name, 1, labels),
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": app},
            "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }))
}

/// The EndpointSlice `<service>-abc` of a Service with one ready endpoint per `(ip, pod)`.
pub fn slice(
    ns: &str,
    service: &str,
    endpoints: &[(&str, &str)],
    labels: Value,
) -> discovery::EndpointSlice {
    let mut all = json!({"kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    let mut meta = api_meta(Some(ns), &format!("{service}-abc"), 1, all);
    meta["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"});
    from_json(json!({
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, pod)| json!({
            "addresses": [ip],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": pod, "uid": format!("uid-{pod}")},
        })).collect::<Vec<_>>(),
    }))
}

/// A NetworkPolicy `ns/name` letting only `app: <from>` reach `app: <to>`.
pub fn policy(ns: &str, name: &str, to: &str, from: &str) -> networking::NetworkPolicy {
    from_json(json!({
        "metadata": api_meta(Some(ns), name, 1, json!({})),
        "spec": {
            "podSelector": {"matchLabels": {"app": to}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}],
            "policyTypes": ["Ingress"],
        }
    }))
}

/// A whole list of one kind: `Init`, an `InitApply` per object, `InitDone`.
pub fn list<K: Watched>(store: &mut Store, objects: Vec<K>) {
    store.apply(Event::<K>::Init);
    for o in objects {
        store.apply(Event::InitApply(o));
    }
    store.apply(Event::<K>::InitDone);
}

/// Lists every kind with nothing in it.
pub fn list_all_empty(store: &mut Store) {
    list::<PartialObjectMeta<core::Namespace>>(store, vec![]);
    list::<core::Node>(store, vec![]);
    list::<core::Pod>(store, vec![]);
    list::<core::Service>(store, vec![]);
    list::<discovery::EndpointSlice>(store, vec![]);
    list::<networking::NetworkPolicy>(store, vec![]);
}
