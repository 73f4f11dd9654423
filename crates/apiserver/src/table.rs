//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for, with the
//! columns the real API server prints for each kind (wide-only columns at priority 1).

use netd_model::Kind;
use serde_json::{Value, json};

/// One column: its header as the API server names it, its type, and whether only `-o wide`
/// shows it.
struct Column {
    name: &'static str,
    kind: &'static str,
    wide: bool,
}

fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Namespace => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Status",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
        ],
        Kind::Node => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Status",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Roles",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Version",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Internal-IP",
                kind: "string",
                wide: true,
            },
            Column {
                name: "External-IP",
                kind: "string",
                wide: true,
            },
            Column {
                name: "OS-Image",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Kernel-Version",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Container-Runtime",
                kind: "string",
                wide: true,
            },
        ],
        Kind::Pod => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Ready",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Status",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Restarts",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
            Column {
                name: "IP",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Node",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Nominated Node",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Readiness Gates",
                kind: "string",
                wide: true,
            },
        ],
        Kind::Service => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Type",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Cluster-IP",
                kind: "string",
                wide: false,
            },
            Column {
                name: "External-IP",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Port(s)",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Selector",
                kind: "string",
                wide: true,
            },
        ],
        Kind::EndpointSlice => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "AddressType",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Ports",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Endpoints",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
        ],
        Kind::NetworkPolicy => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Pod-Selector",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
        ],
        Kind::Deployment => &[
            Column {
                name: "Name",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Ready",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Up-to-date",
                kind: "integer",
                wide: false,
            },
            Column {
                name: "Available",
                kind: "integer",
                wide: false,
            },
            Column {
                name: "Age",
                kind: "string",
                wide: false,
            },
            Column {
                name: "Containers",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Images",
                kind: "string",
                wide: true,
            },
            Column {
                name: "Selector",
                kind: "string",
                wide: true,
            },
        ],
    }
}

/// A Table of `objects` of `kind`, at `resource_version`, each row carrying its object's
/// metadata (`PartialObjectMetadata`) so kubectl can add NAMESPACE and labels columns.
pub fn table(kind: Kind, objects: &[Value], resource_version: u64, now: jiff::Timestamp) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": u8::from(c.wide),
            })
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(kind, o, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn row(kind: Kind, o: &Value, now: jiff::Timestamp) -> Value {
    let name = text(&o["metadata"]["name"]);
    let age = age(&o["metadata"]["creationTimestamp"], now);
    let cells: Vec<Value> = match kind {
        Kind::Namespace => vec![
            json!(name),
            json!(or(text(&o["status"]["phase"]), "Active")),
            json!(age),
        ],
        Kind::Node => node_cells(o, name, age),
        Kind::Pod => pod_cells(o, name, age),
        Kind::Service => service_cells(o, name, age),
        Kind::EndpointSlice => slice_cells(o, name, age),
        Kind::NetworkPolicy => vec![
            json!(name),
            json!(or(
                pairs(&o["spec"]["podSelector"]["matchLabels"]),
                "<none>"
            )),
            json!(age),
        ],
        Kind::Deployment => deployment_cells(o, name, age),
    };
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"],
        },
    })
}

fn node_cells(o: &Value, name: String, age: String) -> Vec<Value> {
    let ready = items(&o["status"]["conditions"])
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let mut roles: Vec<&str> = o["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    let address = |t: &str| {
        let found: Vec<String> = items(&o["status"]["addresses"])
            .iter()
            .filter(|a| a["type"] == t)
            .map(|a| text(&a["address"]))
            .collect();
        or(found.join(","), "<none>")
    };
    let info = &o["status"]["nodeInfo"];
    vec![
        json!(name),
        json!(if ready { "Ready" } else { "NotReady" }),
        json!(or(roles.join(","), "<none>")),
        json!(age),
        json!(text(&info["kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or(text(&info["osImage"]), "<unknown>")),
        json!(or(text(&info["kernelVersion"]), "<unknown>")),
        json!(or(text(&info["containerRuntimeVersion"]), "<unknown>")),
    ]
}

fn pod_cells(o: &Value, name: String, age: String) -> Vec<Value> {
    let containers = items(&o["spec"]["containers"]).len();
    let statuses = items(&o["status"]["containerStatuses"]);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: u64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_u64())
        .sum();
    let status = if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".to_owned()
    } else {
        or(text(&o["status"]["phase"]), "Pending")
    };
    let gates = items(&o["spec"]["readinessGates"]);
    let gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = items(&o["status"]["conditions"]);
        let met = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        json!(name),
        json!(format!("{ready}/{containers}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age),
        json!(or(text(&o["status"]["podIP"]), "<none>")),
        json!(or(text(&o["spec"]["nodeName"]), "<none>")),
        json!(or(text(&o["status"]["nominatedNodeName"]), "<none>")),
        json!(gates),
    ]
}

fn service_cells(o: &Value, name: String, age: String) -> Vec<Value> {
    let spec = &o["spec"];
    let kind = or(text(&spec["type"]), "ClusterIP");
    let mut external: Vec<String> = items(&o["status"]["loadBalancer"]["ingress"])
        .iter()
        .map(|i| or(text(&i["ip"]), &text(&i["hostname"])))
        .collect();
    external.extend(items(&spec["externalIPs"]).iter().map(text));
    let external = match (external.is_empty(), kind.as_str()) {
        (false, _) => external.join(","),
        (true, "LoadBalancer") => "<pending>".to_owned(),
        (true, "ExternalName") => text(&spec["externalName"]),
        (true, _) => "<none>".to_owned(),
    };
    let ports: Vec<String> = items(&spec["ports"])
        .iter()
        .map(|p| {
            let protocol = or(text(&p["protocol"]), "TCP");
            match p["nodePort"].as_u64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    vec![
        json!(name),
        json!(kind),
        json!(or(text(&spec["clusterIP"]), "<none>")),
        json!(external),
        json!(or(ports.join(","), "<none>")),
        json!(age),
        json!(or(pairs(&spec["selector"]), "<none>")),
    ]
}

fn slice_cells(o: &Value, name: String, age: String) -> Vec<Value> {
    let ports: Vec<String> = items(&o["ports"])
        .iter()
        .filter_map(|p| p["port"].as_u64().map(|n| n.to_string()))
        .collect();
    let addresses: Vec<String> = items(&o["endpoints"])
        .iter()
        .flat_map(|e| items(&e["addresses"]).iter().map(text).collect::<Vec<_>>())
        .collect();
    let endpoints = match addresses.len() {
        0 => "<unset>".to_owned(),
        1..=3 => addresses.join(","),
        n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
    };
    vec![
        json!(name),
        json!(text(&o["addressType"])),
        json!(or(ports.join(","), "<unset>")),
        json!(endpoints),
        json!(age),
    ]
}

fn deployment_cells(o: &Value, name: String, age: String) -> Vec<Value> {
    let status = &o["status"];
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let containers = items(&o["spec"]["template"]["spec"]["containers"]);
    let names: Vec<String> = containers.iter().map(|c| text(&c["name"])).collect();
    let images: Vec<String> = containers.iter().map(|c| text(&c["image"])).collect();
    vec![
        json!(name),
        json!(format!(
            "{}/{}",
            count(&status["readyReplicas"]),
            o["spec"]["replicas"].as_u64().unwrap_or(1)
        )),
        json!(count(&status["updatedReplicas"])),
        json!(count(&status["availableReplicas"])),
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(or(pairs(&o["spec"]["selector"]["matchLabels"]), "<none>")),
    ]
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or(s: String, default: &str) -> String {
    if s.is_empty() { default.to_owned() } else { s }
}

/// `k=v,k2=v2` in key order, as kubectl prints selectors.
fn pairs(map: &Value) -> String {
    let Some(map) = map.as_object() else {
        return String::new();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// How long ago `timestamp` was, as the API server's printers write ages (`5s`, `3m2s`, `7h`,
/// `4d`).
fn age(timestamp: &Value, now: jiff::Timestamp) -> String {
    let Some(then) = timestamp
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".to_owned();
    };
    human_duration(now.duration_since(then).as_secs().max(0).unsigned_abs())
}

/// Go's `duration.HumanDuration` for whole seconds.
fn human_duration(s: u64) -> String {
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        0..120 => format!("{s}s"),
        120..600 if !s.is_multiple_of(60) => format!("{m}m{}s", s % 60),
        120..10800 => format!("{m}m"),
        10800..28800 if !m.is_multiple_of(60) => format!("{h}h{}m", m % 60),
        10800..172800 => format!("{h}h"),
        172800..691200 if !h.is_multiple_of(24) => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ if d < 2920 && !d.is_multiple_of(365) => format!("{}y{}d", d / 365, d % 365),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn ages_read_like_kubectls() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_and_service_rows_have_the_api_servers_cells() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let pod = json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(Kind::Pod, &[pod], 7, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "a", "1/1", "Running", "2", "10m", "10.0.0.5", "n1", "<none>", "<none>"
            ])
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let svc = json!({"metadata": {"name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "selector": {"app": "w"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let t = table(Kind::Service, &[svc], 7, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "NodePort",
                "10.96.0.9",
                "<none>",
                "80:30080/TCP,53/UDP",
                "<unknown>",
                "app=w"
            ])
        );
    }
}
