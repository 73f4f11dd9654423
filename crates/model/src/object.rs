//! The Kubernetes objects kube-netd reads, as the real API types from k8s-openapi.

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// The kinds kube-netd understands, in the order `get all` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// `v1/Namespace`.
    Namespace,
    /// `v1/Node`.
    Node,
    /// `apps/v1/Deployment`.
    Deployment,
    /// `v1/Pod`.
    Pod,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy,
}

impl Kind {
    /// Every kind, in printing order.
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Deployment,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    /// The `kind` field as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// The `apiVersion` the API serves this kind at.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service => "v1",
            Kind::Deployment => "apps/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// The resource name kubectl prints in errors (`pods`, `networkpolicies`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Deployment => "deployments",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// The kind a kubectl resource argument names: the kind, its plural or its short name
    /// (`po`, `svc`, `deploy`, `netpol`, `ns`, `no`), in any case. `None` for anything else.
    pub fn from_resource(name: &str) -> Option<Kind> {
        let kind = match name.to_ascii_lowercase().as_str() {
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "no" | "node" | "nodes" => Kind::Node,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "po" | "pod" | "pods" => Kind::Pod,
            "svc" | "service" | "services" => Kind::Service,
            "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            "netpol" | "networkpolicy" | "networkpolicies" => Kind::NetworkPolicy,
            _ => return None,
        };
        Some(kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Kubernetes object of a kind kube-netd understands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A Node.
    Node(Box<Node>),
    /// A Deployment.
    Deployment(Box<Deployment>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
}

/// Identifies an object among all others: kind, namespace (empty for cluster-scoped kinds),
/// and name. Sorting by it gives kube-netd's canonical order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for Namespaces and Nodes.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ObjectId {
    /// `Kind ns/name`, or `Kind name` for cluster-scoped kinds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Deployment(_) => Kind::Deployment,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// The object's name (empty if unset; validation rejects that).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The object's namespace: `default` when a namespaced object leaves it unset, empty for
    /// cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        if self.kind().is_namespaced() {
            self.meta().namespace.as_deref().unwrap_or("default")
        } else {
            ""
        }
    }

    /// The object's identity.
    pub fn id(&self) -> ObjectId {
        ObjectId {
            kind: self.kind(),
            namespace: self.namespace().to_owned(),
            name: self.name().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn every_kind_is_named_by_its_kind_its_resource_and_a_short_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_resource(kind.as_str()), Some(kind));
            assert_eq!(Kind::from_resource(kind.resource()), Some(kind));
        }
        for (short, kind) in [
            ("po", Kind::Pod),
            ("svc", Kind::Service),
            ("deploy", Kind::Deployment),
            ("netpol", Kind::NetworkPolicy),
            ("ns", Kind::Namespace),
            ("no", Kind::Node),
        ] {
            assert_eq!(Kind::from_resource(short), Some(kind));
        }
        assert_eq!(Kind::from_resource("configmap"), None);
    }
}
