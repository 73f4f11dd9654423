//! The resources the server serves: each kind's group, version, plural and scope, as the
//! discovery documents publish them and as request paths name them.

use netd_model::Kind;
use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// The kind kube-netd's model knows it as.
    pub kind: Kind,
    /// The API group; empty for the core group.
    pub group: &'static str,
    /// The version served.
    pub version: &'static str,
    /// The plural name in paths (`pods`).
    pub plural: &'static str,
    /// The singular name (`pod`).
    pub singular: &'static str,
    /// Short names kubectl accepts (`po`).
    pub short_names: &'static [&'static str],
}

/// Every served resource, in discovery order.
pub const RESOURCES: [Resource; 7] = [
    core(Kind::Namespace, "namespaces", "namespace", &["ns"]),
    core(Kind::Node, "nodes", "node", &["no"]),
    core(Kind::Pod, "pods", "pod", &["po"]),
    core(Kind::Service, "services", "service", &["svc"]),
    Resource {
        kind: Kind::Deployment,
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
    },
    Resource {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
    },
    Resource {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        short_names: &["netpol"],
    },
];

/// The verbs every resource supports.
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The API groups other than the core one, in discovery order.
pub const GROUPS: [&str; 3] = ["apps", "discovery.k8s.io", "networking.k8s.io"];

const fn core(
    kind: Kind,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        kind,
        group: "",
        version: "v1",
        plural,
        singular,
        short_names,
    }
}

impl Resource {
    /// The resource of a kind.
    pub fn of(kind: Kind) -> Resource {
        // Every kind has exactly one entry in RESOURCES, so the search cannot fail; the
        // fallback keeps the function total without a panic.
        RESOURCES
            .into_iter()
            .find(|r| r.kind == kind)
            .unwrap_or(RESOURCES[0])
    }

    /// The resource served at `group`/`version` under `plural`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<Resource> {
        RESOURCES
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// `apiVersion` as objects carry it (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether objects of this resource live in a namespace.
    pub fn namespaced(&self) -> bool {
        self.kind.is_namespaced()
    }

    /// The path prefix of the resource's group version (`/api/v1`, `/apis/apps/v1`).
    pub fn group_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

/// `/apis`: every group other than the core one.
pub fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|g| group(g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one served group and its one version.
pub fn group(name: &str) -> Value {
    let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [version.clone()],
        "preferredVersion": version,
    })
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources served there, or `None` if that
/// group version is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced(),
            "kind": r.kind.as_str(),
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": if matches!(r.kind, Kind::Pod | Kind::Service | Kind::Deployment) {
                vec!["all"]
            } else {
                Vec::new()
            },
        }));
        if r.kind == Kind::Deployment {
            resources.push(json!({
                "name": "deployments/scale",
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_resource_at_its_group_version() {
        for kind in Kind::ALL {
            assert_eq!(Resource::of(kind).kind, kind);
        }
        assert_eq!(Resource::of(Kind::Pod).group_path(), "/api/v1");
        assert_eq!(
            Resource::of(Kind::NetworkPolicy).group_path(),
            "/apis/networking.k8s.io/v1"
        );
        assert_eq!(Resource::of(Kind::Deployment).api_version(), "apps/v1");
        assert_eq!(
            Resource::find("apps", "v1", "deployments").map(|r| r.kind),
            Some(Kind::Deployment)
        );
        assert_eq!(Resource::find("", "v1", "deployments"), None);
    }

    #[test]
    fn discovery_lists_each_group_version_once() {
        assert!(resource_list("", "v1").is_some());
        for g in GROUPS {
            assert!(resource_list(g, "v1").is_some(), "{g}");
        }
        assert!(resource_list("batch", "v1").is_none());
    }
}
