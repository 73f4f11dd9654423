//! [`ClusterState`]: an immutable, indexed snapshot of the cluster.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use self::map::SharedMap;
use crate::config::ClusterConfig;
use crate::field::{FieldError, FieldPath};
use crate::keys::{
    EndpointSliceRef, NamespaceName, NodeName, PodRef, PolicyRef, Protocol, ServiceRef,
};
use crate::object::{Object, ObjectId};
use crate::selector::{LabelSelector, Labels, NAMESPACE_NAME_LABEL};
use crate::validation::{validate_port_name, validate_port_number};
use crate::view::{
    AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    LAST_CHANGE_TRIGGER_TIME, Namespace, NetworkPolicy, Node, Pod, PolicyPeer, PolicyPort,
    PolicyRule, PolicyTypes, PortSpec, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Service,
    ServicePort, ServiceType, TargetPort, TrafficPolicy,
};

mod map;

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An object failed conversion to its typed view.
    #[error("{id}: {source}")]
    InvalidObject {
        /// The object.
        id: ObjectId,
        /// What is wrong with it.
        #[source]
        source: Box<FieldError>,
    },
    /// Two objects share a kind, namespace and name.
    #[error("{id} is defined twice")]
    DuplicateObject {
        /// The object.
        id: ObjectId,
    },
}

/// An immutable snapshot of the cluster: the typed view of every object, indexes, and (unless
/// made [without them](ClusterState::without_objects)) the objects themselves.
///
/// Built once from the resolved objects (after the embedded control plane or an API-server
/// sync), or changed one object at a time ([`ClusterState::insert`], [`ClusterState::remove`])
/// as watch events arrive; every lookup is a map access. Collections iterate in key order, so
/// everything derived from a snapshot is deterministic.
///
/// Whether the objects are kept is chosen where a state is made, once: [`ClusterState::new`]
/// keeps them (the manifest path, the lab and the control plane write them back out), and
/// [`ClusterState::without_objects`] keeps only views (the API-server store of the agent and
/// of cluster DNS: a kept Pod is some 30 times its view). Every view, index and
/// [`ClusterState::changed_objects`] answers alike either way; only [`ClusterState::objects`],
/// [`ClusterState::objects_of`] and [`ClusterState::object`] need the objects, and they panic
/// on a state without them rather than answer "none".
///
/// Cloning is cheap and so is a change: each map shares its untouched parts with the
/// snapshots it was cloned from, so a store that keeps one state and hands out clones does
/// work proportional to what changed, and [`ClusterState::changed_objects`] finds what
/// differs between two such snapshots without reading the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterState {
    config: ClusterConfig,
    /// Every object; `None` for a state made [without them](ClusterState::without_objects).
    objects: Option<SharedMap<ObjectId, Object>>,
    /// Every Namespace, declared or implied.
    namespaces: SharedMap<NamespaceName, Namespace>,
    /// The Namespaces a Namespace object declares.
    declared: SharedMap<NamespaceName, Namespace>,
    /// The Deployments (they have no view: only whether they exist is read).
    deployments: SharedMap<ObjectId, ()>,
    nodes: SharedMap<NodeName, Node>,
    pods: SharedMap<PodRef, Pod>,
    services: SharedMap<ServiceRef, Service>,
    slices: SharedMap<EndpointSliceRef, EndpointSlice>,
    policies: SharedMap<PolicyRef, NetworkPolicy>,
    /// The Pods (not hostNetwork) holding each IP; the last in key order owns it.
    pods_by_ip: SharedMap<(IpAddr, PodRef), ()>,
    pods_by_node: SharedMap<(NodeName, PodRef), ()>,
    slices_by_service: SharedMap<(ServiceRef, EndpointSliceRef), ()>,
    /// How many objects live in each namespace: those with none and no Namespace object are
    /// not implied any more.
    namespace_use: SharedMap<String, usize>,
}

impl Default for ClusterState {
    /// An empty state that keeps its objects, as [`ClusterState::new`] of none.
    fn default() -> Self {
        ClusterState {
            config: ClusterConfig::default(),
            objects: Some(SharedMap::default()),
            namespaces: SharedMap::default(),
            declared: SharedMap::default(),
            deployments: SharedMap::default(),
            nodes: SharedMap::default(),
            pods: SharedMap::default(),
            services: SharedMap::default(),
            slices: SharedMap::default(),
            policies: SharedMap::default(),
            pods_by_ip: SharedMap::default(),
            pods_by_node: SharedMap::default(),
            slices_by_service: SharedMap::default(),
            namespace_use: SharedMap::default(),
        }
    }
}

/// The namespaces that always exist, as the API server's do.
const ALWAYS: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The typed view of one object, checked.
enum View {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    Slice(EndpointSlice),
    Policy(NetworkPolicy),
    Deployment,
}

fn view_of(id: &ObjectId, object: &Object) -> Result<View, StateError> {
    let err = |source| StateError::InvalidObject {
        id: id.clone(),
        source: Box::new(source),
    };
    Ok(match object {
        Object::Namespace(ns) => View::Namespace(namespace_view(id, ns.metadata.labels.as_ref())),
        Object::Node(n) => View::Node(node_view(id, n).map_err(err)?),
        Object::Pod(p) => View::Pod(pod_view(id, p).map_err(err)?),
        Object::Service(s) => View::Service(service_view(id, s).map_err(err)?),
        Object::EndpointSlice(s) => View::Slice(slice_view(id, s).map_err(err)?),
        Object::NetworkPolicy(p) => View::Policy(policy_view(id, p).map_err(err)?),
        Object::Deployment(_) => View::Deployment,
    })
}

impl ClusterState {
    /// Builds a snapshot from resolved objects. Namespaces that objects live in but that are
    /// not declared are created, as the API server's `default`, `kube-system` and
    /// `kube-public` always exist.
    pub fn new(objects: Vec<Object>, config: ClusterConfig) -> Result<Self, StateError> {
        let mut sorted = BTreeMap::new();
        for object in objects {
            let id = object.id();
            if sorted.insert(id.clone(), object).is_some() {
                return Err(StateError::DuplicateObject { id });
            }
        }
        let mut views = Vec::with_capacity(sorted.len());
        for (id, object) in &sorted {
            views.push(view_of(id, object)?);
        }
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut policies = Vec::new();
        let mut declared = BTreeMap::new();
        let mut deployments = Vec::new();
        let mut namespace_use: BTreeMap<String, usize> = BTreeMap::new();
        for (id, view) in sorted.keys().zip(views) {
            if !id.namespace.is_empty() {
                *namespace_use.entry(id.namespace.clone()).or_default() += 1;
            }
            match view {
                View::Namespace(v) => {
                    declared.insert(v.name.clone(), v);
                }
                View::Node(v) => nodes.push((v.name.clone(), v)),
                View::Pod(v) => pods.push((v.key.clone(), v)),
                View::Service(v) => services.push((v.key.clone(), v)),
                View::Slice(v) => slices.push((v.key.clone(), v)),
                View::Policy(v) => policies.push((v.key.clone(), v)),
                View::Deployment => deployments.push((id.clone(), ())),
            }
        }
        let mut namespaces = declared.clone();
        let implied: Vec<Namespace> = ALWAYS
            .into_iter()
            .chain(namespace_use.keys().map(String::as_str))
            .filter(|ns| !declared.contains_key(*ns))
            .map(|ns| namespace_view(&namespace_id(ns), None))
            .collect();
        for view in implied {
            namespaces.insert(view.name.clone(), view);
        }
        let pods_by_ip = pods
            .iter()
            .filter(|(_, p)| !p.host_network)
            .flat_map(|(k, p)| p.ips.iter().map(move |ip| ((*ip, k.clone()), ())))
            .collect();
        let pods_by_node = pods
            .iter()
            .filter_map(|(k, p)| Some(((p.node.clone()?, k.clone()), ())))
            .collect();
        let slices_by_service = slices
            .iter()
            .filter_map(|(k, s)| Some(((s.service.clone()?, k.clone()), ())))
            .collect();
        Ok(ClusterState {
            config,
            objects: Some(sorted.into_iter().collect()),
            namespaces: namespaces.into_iter().collect(),
            declared: declared.into_iter().collect(),
            deployments: deployments.into_iter().collect(),
            nodes: nodes.into_iter().collect(),
            pods: pods.into_iter().collect(),
            services: services.into_iter().collect(),
            slices: slices.into_iter().collect(),
            policies: policies.into_iter().collect(),
            pods_by_ip,
            pods_by_node,
            slices_by_service,
            namespace_use: namespace_use.into_iter().collect(),
        })
    }

    /// An empty state for a cluster with these settings that keeps only the views of the
    /// objects [inserted](ClusterState::insert) into it, not the objects: what a store fed by
    /// watches hands to consumers that read views (the proxy, NetworkPolicy, `/healthz`,
    /// cluster DNS). [`ClusterState::objects`] and its kin panic on it.
    pub fn without_objects(config: ClusterConfig) -> ClusterState {
        let namespaces = ALWAYS
            .into_iter()
            .map(|ns| {
                let view = namespace_view(&namespace_id(ns), None);
                (view.name.clone(), view)
            })
            .collect();
        ClusterState {
            config,
            objects: None,
            namespaces,
            ..ClusterState::default()
        }
    }

    /// Adds `object`, or replaces the object of its identity: the state is then what
    /// [`ClusterState::new`] builds from the objects it had with this one in place (less the
    /// objects, for a state [without them](ClusterState::without_objects)). An object whose
    /// view fails is refused and nothing changes.
    pub fn insert(&mut self, object: Object) -> Result<(), StateError> {
        self.put(Cow::Owned(object)).map(|_| ())
    }

    /// [`ClusterState::insert`] of `object`, saying whether the state changed: replacing an
    /// object with an equal one (for a state without objects, one of an equal view) changes
    /// nothing and copies nothing. It is borrowed, since a state without objects keeps none of
    /// it: a store can log it as it changed without copying every object that did not.
    pub fn update(&mut self, object: &Object) -> Result<bool, StateError> {
        self.put(Cow::Borrowed(object))
    }

    fn put(&mut self, object: Cow<'_, Object>) -> Result<bool, StateError> {
        let id = object.id();
        let view = view_of(&id, &object)?;
        let unchanged = match &self.objects {
            Some(objects) => objects.get(&id) == Some(&*object),
            None => self.holds_view(&id, &view),
        };
        if unchanged {
            return Ok(false);
        }
        self.remove(&id);
        if !id.namespace.is_empty() {
            let n = self.namespace_use.get(id.namespace.as_str()).copied();
            self.namespace_use
                .insert(id.namespace.clone(), n.unwrap_or(0) + 1);
        }
        match view {
            View::Namespace(v) => {
                self.declared.insert(v.name.clone(), v);
            }
            View::Deployment => {
                self.deployments.insert(id.clone(), ());
            }
            View::Node(v) => {
                self.nodes.insert(v.name.clone(), v);
            }
            View::Pod(v) => {
                if let Some(node) = &v.node {
                    self.pods_by_node.insert((node.clone(), v.key.clone()), ());
                }
                if !v.host_network {
                    for ip in &v.ips {
                        self.pods_by_ip.insert((*ip, v.key.clone()), ());
                    }
                }
                self.pods.insert(v.key.clone(), v);
            }
            View::Service(v) => {
                self.services.insert(v.key.clone(), v);
            }
            View::Slice(v) => {
                if let Some(svc) = &v.service {
                    self.slices_by_service
                        .insert((svc.clone(), v.key.clone()), ());
                }
                self.slices.insert(v.key.clone(), v);
            }
            View::Policy(v) => {
                self.policies.insert(v.key.clone(), v);
            }
        }
        let namespace = match id.kind {
            crate::object::Kind::Namespace => id.name.clone(),
            _ => id.namespace.clone(),
        };
        if let Some(objects) = &mut self.objects {
            objects.insert(id, object.into_owned());
        }
        self.settle_namespace(&namespace);
        Ok(true)
    }

    /// Removes the object `id`; returns whether there was one. The state is then what
    /// [`ClusterState::new`] builds from the objects it had without this one.
    pub fn remove(&mut self, id: &ObjectId) -> bool {
        if !self.holds(id) {
            return false;
        }
        if let Some(objects) = &mut self.objects {
            objects.remove(id);
        }
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        match id.kind {
            crate::object::Kind::Namespace => {
                self.declared.remove(name);
            }
            crate::object::Kind::Deployment => {
                self.deployments.remove(id);
            }
            crate::object::Kind::Node => {
                self.nodes.remove(name);
            }
            crate::object::Kind::Pod => {
                if let Some(v) = self.pods.remove(&PodRef::new(ns, name)) {
                    if let Some(node) = v.node {
                        self.pods_by_node.remove(&(node, v.key.clone()));
                    }
                    for ip in &v.ips {
                        self.pods_by_ip.remove(&(*ip, v.key.clone()));
                    }
                }
            }
            crate::object::Kind::Service => {
                self.services.remove(&ServiceRef::new(ns, name));
            }
            crate::object::Kind::EndpointSlice => {
                if let Some(v) = self.slices.remove(&EndpointSliceRef::new(ns, name))
                    && let Some(svc) = v.service
                {
                    self.slices_by_service.remove(&(svc, v.key));
                }
            }
            crate::object::Kind::NetworkPolicy => {
                self.policies.remove(&PolicyRef::new(ns, name));
            }
        }
        if !ns.is_empty() {
            match self.namespace_use.get(ns).copied() {
                Some(n) if n > 1 => {
                    self.namespace_use.insert(ns.to_owned(), n - 1);
                }
                _ => {
                    self.namespace_use.remove(ns);
                }
            }
        }
        let namespace = match id.kind {
            crate::object::Kind::Namespace => name,
            _ => ns,
        };
        self.settle_namespace(namespace);
        true
    }

    /// Whether `object` would be accepted by [`ClusterState::insert`] (its typed view
    /// converts), without a state to insert it into.
    pub fn check(object: &Object) -> Result<(), StateError> {
        view_of(&object.id(), object).map(|_| ())
    }

    /// The objects that differ between `earlier` and this state (added, removed or
    /// changed), in canonical order. Between a state and one it was changed from, the time
    /// taken is proportional to the changes; between states built apart it reads both.
    ///
    /// When both states keep their objects, objects are compared; otherwise their views are
    /// (an object changed only where no view reads, such as a Pod's container names, is then
    /// not named).
    pub fn changed_objects(&self, earlier: &ClusterState) -> Vec<ObjectId> {
        use crate::object::Kind;
        if let (Some(now), Some(then)) = (&self.objects, &earlier.objects) {
            return now.diff(then).into_iter().cloned().collect();
        }
        let mut changed: Vec<ObjectId> = Vec::new();
        let named = |kind, ns: &str, name: &str| object_id(kind, ns, name);
        changed.extend(
            self.declared
                .diff(&earlier.declared)
                .into_iter()
                .map(|n| named(Kind::Namespace, "", n.as_str())),
        );
        changed.extend(
            self.nodes
                .diff(&earlier.nodes)
                .into_iter()
                .map(|n| named(Kind::Node, "", n.as_str())),
        );
        changed.extend(
            self.deployments
                .diff(&earlier.deployments)
                .into_iter()
                .cloned(),
        );
        changed.extend(
            self.pods
                .diff(&earlier.pods)
                .into_iter()
                .map(|k| named(Kind::Pod, k.namespace.as_str(), &k.name)),
        );
        changed.extend(
            self.services
                .diff(&earlier.services)
                .into_iter()
                .map(|k| named(Kind::Service, k.namespace.as_str(), &k.name)),
        );
        changed.extend(
            self.slices
                .diff(&earlier.slices)
                .into_iter()
                .map(|k| named(Kind::EndpointSlice, k.namespace.as_str(), &k.name)),
        );
        changed.extend(
            self.policies
                .diff(&earlier.policies)
                .into_iter()
                .map(|k| named(Kind::NetworkPolicy, k.namespace.as_str(), &k.name)),
        );
        changed.sort();
        changed
    }

    /// The identities of the objects of `kind` in this state, in canonical order, whether or
    /// not it keeps the objects.
    pub fn ids_of(&self, kind: crate::object::Kind) -> Vec<ObjectId> {
        use crate::object::Kind;
        let named = |ns: &str, name: &str| object_id(kind, ns, name);
        match kind {
            Kind::Namespace => self
                .declared
                .values()
                .map(|n| named("", n.name.as_str()))
                .collect(),
            Kind::Node => self
                .nodes
                .values()
                .map(|n| named("", n.name.as_str()))
                .collect(),
            Kind::Deployment => self.deployments.iter().map(|(id, _)| id.clone()).collect(),
            Kind::Pod => self
                .pods
                .values()
                .map(|p| named(p.key.namespace.as_str(), &p.key.name))
                .collect(),
            Kind::Service => self
                .services
                .values()
                .map(|s| named(s.key.namespace.as_str(), &s.key.name))
                .collect(),
            Kind::EndpointSlice => self
                .slices
                .values()
                .map(|s| named(s.key.namespace.as_str(), &s.key.name))
                .collect(),
            Kind::NetworkPolicy => self
                .policies
                .values()
                .map(|p| named(p.key.namespace.as_str(), &p.key.name))
                .collect(),
        }
    }

    /// Whether a Namespace object declares `name` (rather than objects in it implying it, or
    /// its being one of those that always exist).
    pub fn namespace_declared(&self, name: &str) -> bool {
        self.declared.contains_key(name)
    }

    /// Whether this state holds the object `id` (its view, at least).
    fn holds(&self, id: &ObjectId) -> bool {
        use crate::object::Kind;
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        match id.kind {
            Kind::Namespace => self.declared.contains_key(name),
            Kind::Node => self.nodes.contains_key(name),
            Kind::Deployment => self.deployments.contains_key(id),
            Kind::Pod => self.pods.contains_key(&PodRef::new(ns, name)),
            Kind::Service => self.services.contains_key(&ServiceRef::new(ns, name)),
            Kind::EndpointSlice => self.slices.contains_key(&EndpointSliceRef::new(ns, name)),
            Kind::NetworkPolicy => self.policies.contains_key(&PolicyRef::new(ns, name)),
        }
    }

    /// Whether this state holds `view` as the view of the object `id`.
    fn holds_view(&self, id: &ObjectId, view: &View) -> bool {
        match view {
            View::Namespace(v) => self.declared.get(id.name.as_str()) == Some(v),
            View::Node(v) => self.nodes.get(&v.name) == Some(v),
            View::Deployment => self.deployments.contains_key(id),
            View::Pod(v) => self.pods.get(&v.key) == Some(v),
            View::Service(v) => self.services.get(&v.key) == Some(v),
            View::Slice(v) => self.slices.get(&v.key) == Some(v),
            View::Policy(v) => self.policies.get(&v.key) == Some(v),
        }
    }

    /// Whether the objects of `kind` are certainly the same in `earlier` and this state (it
    /// was cloned from the other and none of them has been touched since). `false` says
    /// nothing: they may still be equal.
    pub fn shares_kind(&self, earlier: &ClusterState, kind: crate::object::Kind) -> bool {
        use crate::object::Kind;
        match kind {
            Kind::Namespace => self.namespaces.same(&earlier.namespaces),
            Kind::Node => self.nodes.same(&earlier.nodes),
            Kind::Pod => self.pods.same(&earlier.pods),
            Kind::Service => self.services.same(&earlier.services),
            Kind::EndpointSlice => self.slices.same(&earlier.slices),
            Kind::NetworkPolicy => self.policies.same(&earlier.policies),
            Kind::Deployment => false,
        }
    }

    /// Brings the Namespace view of `name` in line with the objects: declared, implied by
    /// objects in it (or always there), or gone.
    fn settle_namespace(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        let view = match self.declared.get(name) {
            Some(declared) => Some(declared.clone()),
            None if ALWAYS.contains(&name) || self.namespace_use.contains_key(name) => {
                Some(namespace_view(&namespace_id(name), None))
            }
            None => None,
        };
        match view {
            Some(view) => {
                if self.namespaces.get(name) != Some(&view) {
                    self.namespaces.insert(view.name.clone(), view);
                }
            }
            None => {
                self.namespaces.remove(name);
            }
        }
    }

    /// The network settings this snapshot was built with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Every object, in canonical order (kind, namespace, name). Namespaces created
    /// implicitly have no object here.
    ///
    /// # Panics
    ///
    /// On a state made [without its objects](ClusterState::without_objects): there is no
    /// answer but a wrong one ("none"), so asking is a bug; read the views.
    #[track_caller]
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.kept().values()
    }

    /// The objects of one kind, in canonical order.
    ///
    /// # Panics
    ///
    /// As [`ClusterState::objects`], on a state without its objects.
    #[track_caller]
    pub fn objects_of(&self, kind: crate::object::Kind) -> impl Iterator<Item = &Object> {
        let start = ObjectId {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.kept()
            .range_from(&start)
            .take_while(move |(id, _)| id.kind == kind)
            .map(|(_, o)| o)
    }

    /// One object by identity.
    ///
    /// # Panics
    ///
    /// As [`ClusterState::objects`], on a state without its objects.
    #[track_caller]
    pub fn object(&self, id: &ObjectId) -> Option<&Object> {
        self.kept().get(id)
    }

    /// The objects, which only a state made [without them](ClusterState::without_objects)
    /// lacks.
    #[track_caller]
    fn kept(&self) -> &SharedMap<ObjectId, Object> {
        match &self.objects {
            Some(objects) => objects,
            None => panic!(
                "this ClusterState was made without its objects (ClusterState::without_objects): read its views"
            ),
        }
    }

    /// A Namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Every Namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// The Namespaces whose labels match `selector`.
    pub fn namespaces_matching<'a>(
        &'a self,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Namespace> + 'a {
        self.namespaces
            .values()
            .filter(move |ns| selector.matches(&ns.labels))
    }

    /// A Node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The Node that owns `ip` as an InternalIP.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.internal_ips.contains(&ip))
    }

    /// A Pod by key.
    pub fn pod(&self, key: &PodRef) -> Option<&Pod> {
        self.pods.get(key)
    }

    /// Every Pod, by key.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The Pods of one namespace, by name.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let start = PodRef::new(namespace, "");
        self.pods
            .range_from(&start)
            .map(|(_, p)| p)
            .take_while(move |p| p.key.namespace.as_str() == namespace)
    }

    /// The Pods scheduled on a Node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        let node = NodeName::new(node);
        self.pods_by_node
            .range_from(&(node.clone(), PodRef::new("", "")))
            .take_while(move |((n, _), _)| *n == node)
            .filter_map(|((_, k), _)| self.pods.get(k))
    }

    /// The Pod (not hostNetwork) that owns `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods_by_ip
            .range_from(&(ip, PodRef::new("", "")))
            .take_while(|((owned, _), _)| *owned == ip)
            .last()
            .and_then(|((_, k), _)| self.pods.get(k))
    }

    /// The Pods of `namespace` whose labels match `selector`.
    pub fn pods_matching<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_in(namespace)
            .filter(move |p| selector.matches(&p.labels))
    }

    /// A Service by key.
    pub fn service(&self, key: &ServiceRef) -> Option<&Service> {
        self.services.get(key)
    }

    /// Every Service, by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// An EndpointSlice by key.
    pub fn endpoint_slice(&self, key: &EndpointSliceRef) -> Option<&EndpointSlice> {
        self.slices.get(key)
    }

    /// Every EndpointSlice, by key.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    /// The EndpointSlices of a Service, by name.
    pub fn endpoint_slices_for<'a>(
        &'a self,
        service: &ServiceRef,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let service = service.clone();
        self.slices_by_service
            .range_from(&(service.clone(), EndpointSliceRef::new("", "")))
            .take_while(move |((s, _), _)| *s == service)
            .filter_map(|((_, k), _)| self.slices.get(k))
    }

    /// A NetworkPolicy by key.
    pub fn policy(&self, key: &PolicyRef) -> Option<&NetworkPolicy> {
        self.policies.get(key)
    }

    /// Every NetworkPolicy, by key.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values()
    }

    /// The NetworkPolicies of one namespace, by name.
    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.policies
            .values()
            .filter(move |p| p.key.namespace.as_str() == namespace)
    }
}

fn namespace_id(name: &str) -> ObjectId {
    object_id(crate::object::Kind::Namespace, "", name)
}

fn object_id(kind: crate::object::Kind, namespace: &str, name: &str) -> ObjectId {
    ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn namespace_view(id: &ObjectId, labels: Option<&BTreeMap<String, String>>) -> Namespace {
    let mut labels: Labels = labels.cloned().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), id.name.clone());
    Namespace {
        name: NamespaceName::new(&id.name),
        labels,
    }
}

fn parse_ip(s: &str, path: FieldPath) -> Result<IpAddr, FieldError> {
    IpAddr::from_str(s).map_err(|_| FieldError::invalid(path, s, "must be a valid IP address"))
}

fn parse_cidr(s: &str, path: FieldPath) -> Result<IpNet, FieldError> {
    IpNet::from_str(s).map_err(|_| FieldError::invalid(path, s, "must be a valid CIDR"))
}

fn parse_protocol(p: Option<&String>, path: FieldPath) -> Result<Protocol, FieldError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_str(s)
            .ok()
            .filter(|p| p.as_api_str() == s)
            .ok_or_else(|| FieldError::not_supported(path, s, &["TCP", "UDP", "SCTP"])),
    }
}

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

pub(crate) fn node_view(id: &ObjectId, n: &core::Node) -> Result<Node, FieldError> {
    let labels = labels_of(&n.metadata);
    let mut internal_ips = Vec::new();
    let status = n.status.as_ref();
    for (i, a) in status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if a.type_ == "InternalIP" {
            let path = FieldPath::new("status.addresses").index(i).child("address");
            internal_ips.push(parse_ip(&a.address, path)?);
        }
    }
    let spec = n.spec.as_ref();
    let mut pod_cidrs = Vec::new();
    if let Some(cidrs) = spec.and_then(|s| s.pod_cidrs.as_ref()) {
        for (i, c) in cidrs.iter().enumerate() {
            pod_cidrs.push(parse_cidr(c, FieldPath::new("spec.podCIDRs").index(i))?);
        }
    } else if let Some(c) = spec.and_then(|s| s.pod_cidr.as_ref()) {
        pod_cidrs.push(parse_cidr(c, FieldPath::new("spec.podCIDR"))?);
    }
    let zone = labels.get("topology.kubernetes.io/zone").cloned();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .map(|t| t.key.clone())
        .collect();
    Ok(Node {
        name: NodeName::new(&id.name),
        labels,
        internal_ips,
        pod_cidrs,
        zone,
        terminating: n.metadata.deletion_timestamp.is_some(),
        taints,
    })
}

pub(crate) fn pod_view(id: &ObjectId, p: &core::Pod) -> Result<Pod, FieldError> {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ports = Vec::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let path = FieldPath::new("spec.containers")
                .index(ci)
                .child("ports")
                .index(pi);
            ports.push(ContainerPort {
                name: cp.name.clone(),
                port: validate_port_number(cp.container_port, &path.child("containerPort"))?,
                protocol: parse_protocol(cp.protocol.as_ref(), path.child("protocol"))?,
            });
        }
    }
    let mut ips = Vec::new();
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
        for (i, a) in list.iter().enumerate() {
            ips.push(parse_ip(
                &a.ip,
                FieldPath::new("status.podIPs").index(i).child("ip"),
            )?);
        }
    } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()) {
        ips.push(parse_ip(ip, FieldPath::new("status.podIP"))?);
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    Ok(Pod {
        key: PodRef::new(&id.namespace, &id.name),
        labels: labels_of(&p.metadata),
        node: spec.and_then(|s| s.node_name.as_deref()).map(NodeName::new),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
        hostname: spec.and_then(|s| s.hostname.clone()),
        subdomain: spec.and_then(|s| s.subdomain.clone()),
    })
}

fn traffic_policy(v: Option<&String>, path: FieldPath) -> Result<TrafficPolicy, FieldError> {
    match v.map(String::as_str) {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(FieldError::not_supported(
            path,
            other,
            &["Cluster", "Local"],
        )),
    }
}

pub(crate) fn service_view(id: &ObjectId, s: &core::Service) -> Result<Service, FieldError> {
    let default_spec = core::ServiceSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&default_spec);
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(FieldError::not_supported(
                FieldPath::new("spec.type"),
                other,
                &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
            ));
        }
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips = Vec::new();
    if service_type != ServiceType::ExternalName && !headless {
        match &spec.cluster_ips {
            Some(list) if !list.is_empty() => {
                for (i, ip) in list.iter().enumerate() {
                    cluster_ips.push(parse_ip(ip, FieldPath::new("spec.clusterIPs").index(i))?);
                }
            }
            _ => {
                if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
                    cluster_ips.push(parse_ip(ip, FieldPath::new("spec.clusterIP"))?);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.ports").index(i);
        let port = validate_port_number(p.port, &path.child("port"))?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(validate_port_number(*n, &path.child("targetPort"))?)
            }
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => TargetPort::Number(validate_port_number(n, &path.child("targetPort"))?),
                Err(_) => {
                    validate_port_name(name, &path.child("targetPort"))?;
                    TargetPort::Name(name.clone())
                }
            },
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(validate_port_number(n, &path.child("nodePort"))?),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(p.protocol.as_ref(), path.child("protocol"))?,
            port,
            target_port,
            node_port,
        });
    }
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(parse_ip(ip, FieldPath::new("spec.externalIPs").index(i))?);
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            let path = FieldPath::new("status.loadBalancer.ingress")
                .index(i)
                .child("ip");
            load_balancer_ips.push(parse_ip(ip, path)?);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, c) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let path = FieldPath::new("spec.loadBalancerSourceRanges").index(i);
        load_balancer_source_ranges.push(parse_cidr(c.trim(), path)?);
    }
    let external_traffic_policy = if matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !external_ips.is_empty()
    {
        traffic_policy(
            spec.external_traffic_policy.as_ref(),
            FieldPath::new("spec.externalTrafficPolicy"),
        )?
    } else {
        TrafficPolicy::Cluster
    };
    let internal_traffic_policy = traffic_policy(
        spec.internal_traffic_policy.as_ref(),
        FieldPath::new("spec.internalTrafficPolicy"),
    )?;
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Some(
                u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=86400).contains(t))
                    .ok_or_else(|| {
                        FieldError::invalid(
                            FieldPath::new("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                            t,
                            "must be between 1 and 86400, inclusive",
                        )
                    })?,
            )
        }
        Some(other) => {
            return Err(FieldError::not_supported(
                FieldPath::new("spec.sessionAffinity"),
                other,
                &["ClientIP", "None"],
            ));
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) => Some(validate_port_number(
            n,
            &FieldPath::new("spec.healthCheckNodePort"),
        )?),
    };
    let labels = labels_of(&s.metadata);
    Ok(Service {
        key: ServiceRef::new(&id.namespace, &id.name),
        proxy_name: labels.get(SERVICE_PROXY_NAME_LABEL).cloned(),
        labels,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        service_type,
        cluster_ips,
        headless,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        external_traffic_policy,
        internal_traffic_policy,
        session_affinity_timeout,
        health_check_node_port,
        external_name: spec.external_name.clone(),
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        traffic_distribution: spec.traffic_distribution.clone(),
    })
}

pub(crate) fn slice_view(
    id: &ObjectId,
    s: &discovery::EndpointSlice,
) -> Result<EndpointSlice, FieldError> {
    let address_type = match s.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => {
            return Err(FieldError::not_supported(
                FieldPath::new("addressType"),
                other,
                &["IPv4", "IPv6", "FQDN"],
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let path = FieldPath::new("ports").index(i);
        let Some(port) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(p.protocol.as_ref(), path.child("protocol"))?,
            port: validate_port_number(port, &path.child("port"))?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        let path = FieldPath::new("endpoints").index(i);
        let mut addresses = Vec::new();
        if address_type != AddressType::Fqdn {
            for (j, a) in e.addresses.iter().enumerate() {
                addresses.push(parse_ip(a, path.child("addresses").index(j))?);
            }
        }
        let c = e.conditions.clone().unwrap_or_default();
        let hints = e.hints.as_ref();
        endpoints.push(Endpoint {
            addresses,
            conditions: EndpointConditions {
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
            },
            hostname: e.hostname.clone(),
            node: e.node_name.as_deref().map(NodeName::new),
            zone: e.zone.clone(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|zs| zs.iter().map(|z| z.name.clone()).collect()),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|ns| ns.iter().map(|n| n.name.clone()).collect()),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(PodRef::new(
                        r.namespace.as_deref().unwrap_or(&id.namespace),
                        r.name.as_deref()?,
                    ))
                }),
        });
    }
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|name| ServiceRef::new(&id.namespace, name));
    Ok(EndpointSlice {
        key: EndpointSliceRef::new(&id.namespace, &id.name),
        service,
        address_type,
        ports,
        endpoints,
        trigger_time: s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
            .cloned(),
    })
}

pub(crate) fn policy_view(
    id: &ObjectId,
    p: &networking::NetworkPolicy,
) -> Result<NetworkPolicy, FieldError> {
    let default_spec = networking::NetworkPolicySpec::default();
    let spec = p.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(s) => LabelSelector::from_api(s, &FieldPath::new("spec.podSelector"))?,
        None => LabelSelector::everything(),
    };
    let policy_types = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut t = PolicyTypes::default();
            for (i, ty) in types.iter().enumerate() {
                match ty.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return Err(FieldError::not_supported(
                            FieldPath::new("spec.policyTypes").index(i),
                            other,
                            &["Ingress", "Egress"],
                        ));
                    }
                }
            }
            t
        }
        _ => PolicyTypes {
            ingress: true,
            egress: spec.egress.is_some(),
        },
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.ingress").index(i);
        ingress.push(policy_rule(
            r.from.as_deref(),
            r.ports.as_deref(),
            &path,
            "from",
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let path = FieldPath::new("spec.egress").index(i);
        egress.push(policy_rule(
            r.to.as_deref(),
            r.ports.as_deref(),
            &path,
            "to",
        )?);
    }
    Ok(NetworkPolicy {
        key: PolicyRef::new(&id.namespace, &id.name),
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn policy_rule(
    peers: Option<&[networking::NetworkPolicyPeer]>,
    ports: Option<&[networking::NetworkPolicyPort]>,
    path: &FieldPath,
    peers_field: &str,
) -> Result<PolicyRule, FieldError> {
    let mut rule = PolicyRule {
        peers: Vec::new(),
        ports: Vec::new(),
    };
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let path = path.child(peers_field).index(i);
        if let Some(block) = &peer.ip_block {
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                return Err(FieldError::forbidden(
                    path,
                    "may not specify more than 1 peer type (ipBlock with a selector)",
                ));
            }
            let cidr = parse_cidr(&block.cidr, path.child("ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (j, e) in block.except.iter().flatten().enumerate() {
                let epath = path.child("ipBlock.except").index(j);
                let net = parse_cidr(e, epath.clone())?;
                if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() && net != cidr {
                    return Err(FieldError::invalid(
                        epath,
                        e,
                        "must be a strict subset of `cidr`",
                    ));
                }
                except.push(net);
            }
            rule.peers.push(PolicyPeer::IpBlock { cidr, except });
            continue;
        }
        let namespace_selector = peer
            .namespace_selector
            .as_ref()
            .map(|s| LabelSelector::from_api(s, &path.child("namespaceSelector")))
            .transpose()?;
        let pod_selector = peer
            .pod_selector
            .as_ref()
            .map(|s| LabelSelector::from_api(s, &path.child("podSelector")))
            .transpose()?;
        if namespace_selector.is_none() && pod_selector.is_none() {
            return Err(FieldError::required(path).forbid_empty_peer());
        }
        rule.peers.push(PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        });
    }
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let path = path.child("ports").index(i);
        let protocol = parse_protocol(p.protocol.as_ref(), path.child("protocol"))?;
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortSpec::Number(validate_port_number(
                *n,
                &path.child("port"),
            )?)),
            Some(IntOrString::String(s)) => {
                validate_port_name(s, &path.child("port"))?;
                Some(PortSpec::Name(s.clone()))
            }
        };
        let end_port = match p.end_port {
            None => None,
            Some(end) => {
                let epath = path.child("endPort");
                let Some(PortSpec::Number(start)) = port else {
                    return Err(FieldError::forbidden(
                        epath,
                        "may not be specified when `port` is unset or a named port",
                    ));
                };
                let end = validate_port_number(end, &epath)?;
                if end < start {
                    return Err(FieldError::invalid(
                        epath,
                        end,
                        "must be greater than or equal to `port`",
                    ));
                }
                Some(end)
            }
        };
        rule.ports.push(PolicyPort {
            protocol,
            port,
            end_port,
        });
    }
    Ok(rule)
}

impl FieldError {
    fn forbid_empty_peer(self) -> Self {
        FieldError::forbidden(
            self.path,
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// One of a few objects of every kind the state indexes, drawn from small name and
    /// address pools so that changes collide: the same Pod moved to another node or IP, a
    /// slice relabelled to another Service, an implied namespace declared, one bad object.
    fn object() -> impl Strategy<Value = Object> {
        let ns = || prop_oneof![Just("a"), Just("b"), Just("default")];
        let name = || prop_oneof![Just("x"), Just("y"), Just("z")];
        prop_oneof![
            (name(), any::<bool>()).prop_map(|(name, label)| {
                let labels = if label { json!({"team": "t"}) } else { json!({}) };
                let ns = ["a", "b", "c"][name.len() % 3 + usize::from(label)];
                parse(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": labels}}))
            }),
            (name(), 1u8..3).prop_map(|(name, ip)| parse(json!({"apiVersion": "v1",
                "kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": format!("172.18.0.{ip}")}]}}))),
            (ns(), name(), name(), 1u8..4, any::<bool>(), any::<bool>()).prop_map(
                |(ns, name, node, ip, host, bad)| {
                    let ip = if bad { "not-an-ip".to_owned() } else { format!("10.0.0.{ip}") };
                    parse(json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": ns, "labels": {"app": node}},
                        "spec": {"nodeName": node, "hostNetwork": host, "containers": []},
                        "status": {"podIP": ip}}))
                }
            ),
            (ns(), name(), 1u8..9).prop_map(|(ns, name, port)| parse(json!({"apiVersion": "v1",
                "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": port}]}}))),
            (ns(), name(), name(), any::<bool>()).prop_map(|(ns, name, svc, ready)| parse(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": ns,
                    "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]}))),
            (ns(), name(), name()).prop_map(|(ns, name, app)| parse(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": app}}}}))),
        ]
    }

    fn parse(value: serde_json::Value) -> Object {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value(value).map(Object::Namespace),
            "Node" => serde_json::from_value(value).map(|o| Object::Node(Box::new(o))),
            "Pod" => serde_json::from_value(value).map(|o| Object::Pod(Box::new(o))),
            "Service" => serde_json::from_value(value).map(|o| Object::Service(Box::new(o))),
            "EndpointSlice" => serde_json::from_value(value).map(Object::EndpointSlice),
            _ => serde_json::from_value(value).map(|o| Object::NetworkPolicy(Box::new(o))),
        };
        parsed.expect("a valid object")
    }

    #[derive(Clone, Debug)]
    enum Change {
        Insert(Object),
        Remove(Object),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            3 => object().prop_map(Change::Insert),
            1 => object().prop_map(Change::Remove),
        ]
    }

    /// `state` as made [without its objects](ClusterState::without_objects).
    fn bare(state: &ClusterState) -> ClusterState {
        ClusterState {
            objects: None,
            ..state.clone()
        }
    }

    /// What `state` holds of `id` as its consumers read it: the view, through the public
    /// lookups.
    fn seen(state: &ClusterState, id: &ObjectId) -> Option<String> {
        use crate::object::Kind;
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        match id.kind {
            Kind::Namespace => state
                .namespace_declared(name)
                .then(|| format!("{:?}", state.namespace(name))),
            Kind::Node => state.node(name).map(|v| format!("{v:?}")),
            Kind::Deployment => state
                .ids_of(Kind::Deployment)
                .contains(id)
                .then(String::new),
            Kind::Pod => state.pod(&PodRef::new(ns, name)).map(|v| format!("{v:?}")),
            Kind::Service => state
                .service(&ServiceRef::new(ns, name))
                .map(|v| format!("{v:?}")),
            Kind::EndpointSlice => state
                .endpoint_slice(&EndpointSliceRef::new(ns, name))
                .map(|v| format!("{v:?}")),
            Kind::NetworkPolicy => state
                .policy(&PolicyRef::new(ns, name))
                .map(|v| format!("{v:?}")),
        }
    }

    proptest! {
        /// A state changed one object at a time is the state built from scratch of the
        /// objects it ends with, every lookup included; a refused object changes nothing,
        /// and the snapshot taken before the changes is untouched. A state made without its
        /// objects and given the same changes is that state without its objects, and says
        /// alike whether each change changed it.
        #[test]
        fn changes_equal_a_rebuild(
            start in proptest::collection::vec(object(), 0..12),
            changes in proptest::collection::vec(change(), 1..20),
        ) {
            let config = ClusterConfig::default();
            let mut objects: BTreeMap<ObjectId, Object> = BTreeMap::new();
            let mut state = ClusterState::new(Vec::new(), config.clone()).expect("empty");
            let mut views = ClusterState::without_objects(config.clone());
            for o in start {
                if state.insert(o.clone()).is_ok() {
                    views.insert(o.clone()).expect("accepted by both");
                    objects.insert(o.id(), o);
                }
            }
            let first = ClusterState::new(objects.values().cloned().collect(), config.clone())
                .expect("admitted objects build");
            prop_assert_eq!(&state, &first);
            prop_assert_eq!(&views, &bare(&first));
            let before = state.clone();
            let views_before = views.clone();
            for c in changes {
                match c {
                    Change::Insert(o) => {
                        let refused = ClusterState::new(vec![o.clone()], config.clone()).is_err();
                        let (kept, kept_views) = (state.clone(), views.clone());
                        match (state.update(&o), views.update(&o)) {
                            (Err(_), Err(_)) => {
                                prop_assert!(refused);
                                prop_assert_eq!(&state, &kept);
                                prop_assert_eq!(&views, &kept_views);
                            }
                            (Ok(changed), Ok(views_changed)) => {
                                prop_assert!(!refused);
                                prop_assert_eq!(changed, state != kept);
                                prop_assert_eq!(views_changed, views != kept_views);
                                objects.insert(o.id(), o);
                            }
                            _ => prop_assert!(false, "one state refused what the other took"),
                        }
                    }
                    Change::Remove(o) => {
                        let had = objects.remove(&o.id()).is_some();
                        prop_assert_eq!(state.remove(&o.id()), had);
                        prop_assert_eq!(views.remove(&o.id()), had);
                    }
                }
                let rebuilt =
                    ClusterState::new(objects.values().cloned().collect(), config.clone())
                        .expect("admitted objects build");
                prop_assert_eq!(&state, &rebuilt);
                prop_assert_eq!(&views, &bare(&rebuilt));
                for ip in 1..4 {
                    let ip: IpAddr = format!("10.0.0.{ip}").parse().expect("ip");
                    prop_assert_eq!(
                        state.pod_by_ip(ip).map(|p| &p.key),
                        rebuilt.pod_by_ip(ip).map(|p| &p.key)
                    );
                }
            }
            prop_assert_eq!(&before, &first);
            let mut changed = state.changed_objects(&before);
            changed.sort();
            let expected: Vec<ObjectId> = before
                .objects()
                .chain(state.objects())
                .map(Object::id)
                .filter(|id| before.object(id) != state.object(id))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            prop_assert_eq!(changed, expected);
            // Without objects, the changes are those of the views, found as fast.
            let ids: std::collections::BTreeSet<ObjectId> = crate::object::Kind::ALL
                .iter()
                .flat_map(|k| views_before.ids_of(*k).into_iter().chain(views.ids_of(*k)))
                .collect();
            let expected: Vec<ObjectId> = ids
                .into_iter()
                .filter(|id| seen(&views_before, id) != seen(&views, id))
                .collect();
            prop_assert_eq!(views.changed_objects(&views_before), expected.clone());
            prop_assert_eq!(views.changed_objects(&before), expected);
        }
    }

    #[test]
    #[should_panic(expected = "made without its objects")]
    fn a_state_without_objects_refuses_to_list_them() {
        let mut state = ClusterState::without_objects(ClusterConfig::default());
        state
            .insert(parse(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "a"}})))
            .expect("valid");
        let _ = state.objects().count();
    }
}
