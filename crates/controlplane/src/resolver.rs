//! The order of work: split the input, expand, then allocate in three passes (declared,
//! kept from the previous state, fresh), finish each object, run the EndpointSlice
//! controller, and build the snapshot.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netd_model::selector::NAMESPACE_NAME_LABEL;
use netd_model::{ClusterConfig, ClusterState, DeploymentRef, Kind, Object, ObjectId};

use crate::alloc::{CidrBook, IpBook, PortBook};
use crate::error::ResolveError;
use crate::pods::PodWork;
use crate::services::ServiceWork;
use crate::{deployments, endpointslices, names, nodes, pods, services};

pub(crate) fn run(
    desired: Vec<Object>,
    config: &ClusterConfig,
    previous: Option<&ClusterState>,
) -> Result<ClusterState, ResolveError> {
    // The validated views of the input: what each object declares, parsed once.
    let input = ClusterState::new(desired.clone(), config.clone())
        .map_err(|e| ResolveError::InvalidInput(Box::new(e)))?;

    let mut passthrough = Vec::new();
    let mut node_objs = Vec::new();
    let mut deployment_objs = Vec::new();
    let mut pod_objs = Vec::new();
    let mut service_objs = Vec::new();
    let mut slice_objs = Vec::new();
    for mut object in desired {
        normalize(&mut object);
        match object {
            Object::Node(n) => node_objs.push(*n),
            Object::Deployment(d) => deployment_objs.push(d),
            Object::Pod(p) => pod_objs.push(p),
            Object::Service(s) => service_objs.push(s),
            Object::EndpointSlice(s) => slice_objs.push(s),
            other @ (Object::Namespace(_) | Object::NetworkPolicy(_)) => passthrough.push(other),
        }
    }
    deployment_objs.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    let mut nodes = nodes::prepare(node_objs, &input, config);

    let mut pods: Vec<PodWork> = pod_objs
        .into_iter()
        .map(|obj| {
            let mut work = PodWork::new(obj, Vec::new(), None);
            work.declared_ips = input
                .pod(&work.key)
                .map(|v| v.ips.clone())
                .unwrap_or_default();
            work
        })
        .collect();
    let declared_pods: HashSet<_> = pods.iter().map(|p| p.key.clone()).collect();
    for (i, d) in deployment_objs.iter().enumerate() {
        for pod in deployments::expand(d)? {
            let work = PodWork::new(Box::new(pod), Vec::new(), Some(i));
            if declared_pods.contains(&work.key) {
                let ns = d.metadata.namespace.as_deref().unwrap_or("default");
                return Err(ResolveError::PodNameTaken {
                    pod: work.key,
                    deployment: DeploymentRef::new(
                        ns,
                        d.metadata.name.as_deref().unwrap_or_default(),
                    ),
                });
            }
            pods.push(work);
        }
    }
    pods.sort_by(|a, b| a.key.cmp(&b.key));

    let mut services = Vec::with_capacity(service_objs.len());
    for obj in service_objs {
        let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
        let key = netd_model::ServiceRef::new(ns, obj.metadata.name.as_deref().unwrap_or_default());
        // Every Service of the input has a view: `input` was built from the same objects.
        if let Some(view) = input.service(&key) {
            services.push(ServiceWork::new(obj, view.clone(), config)?);
        }
    }
    services.sort_by(|a, b| a.view.key.cmp(&b.view.key));

    let mut ips = IpBook::default();
    let mut ports = PortBook::new(config.node_port_range.clone());
    let mut cidrs = CidrBook::default();

    // Pass 1: what the input declares.
    nodes::claim_declared(&nodes, &mut ips, &mut cidrs)?;
    services::claim_declared(&services, &mut ips, &mut ports, config)?;
    let mut pod_ips_by_node: HashMap<&str, Vec<IpAddr>> = HashMap::new();
    for (node, node_ips) in pods.iter().filter_map(PodWork::declared_placement) {
        pod_ips_by_node
            .entry(node)
            .or_default()
            .extend_from_slice(node_ips);
    }
    nodes::assign_pod_cidrs(&mut nodes, &mut cidrs, config, previous, &pod_ips_by_node)?;
    drop(pod_ips_by_node);
    pods::schedule(&mut pods, &nodes, previous)?;
    pods::claim_declared(&mut pods, &nodes, &mut ips)?;

    // Pass 2: what the previous state had.
    nodes::keep_previous_ips(&mut nodes, &mut ips, config, previous);
    pods::keep_previous_ips(&mut pods, &mut ips, previous);
    services::keep_previous(&mut services, &mut ips, &mut ports, config, previous);

    // Pass 3: fresh values.
    nodes::allocate_ips(&mut nodes, &mut ips, config)?;
    pods::allocate_ips(&mut pods, &nodes, &mut ips)?;
    services::allocate(&mut services, &mut ips, &mut ports, config)?;

    for pod in &mut pods {
        pod.finish(&nodes);
    }
    for svc in &mut services {
        svc.finish();
    }
    let slices = endpointslices::reconcile(&services, &pods, &nodes, slice_objs);

    let mut replicas = vec![(0usize, 0usize); deployment_objs.len()];
    for pod in &pods {
        if let Some(d) = pod.deployment {
            replicas[d].0 += 1;
            replicas[d].1 += usize::from(pod.ready);
        }
    }

    let mut objects = namespaces(passthrough, &input);
    objects.extend(
        nodes
            .into_iter()
            .map(|n| Object::Node(Box::new(n.finish()))),
    );
    objects.extend(
        deployment_objs
            .into_iter()
            .zip(replicas)
            .map(|(d, (all, ready))| {
                Object::Deployment(Box::new(deployments::finish(*d, all, ready)))
            }),
    );
    objects.extend(pods.into_iter().map(|p| Object::Pod(p.obj)));
    objects.extend(services.into_iter().map(|s| Object::Service(s.obj)));
    objects.extend(slices.into_iter().map(Object::EndpointSlice));
    ClusterState::new(objects, config.clone())
        .map_err(|e| ResolveError::BuildStateFailed(Box::new(e)))
}

/// Every namespace the cluster has as an object, as the API server keeps them: declared ones
/// get the `kubernetes.io/metadata.name` label it adds, and those that only exist because
/// an object names them (and `default`, `kube-system`, `kube-public`) are created, so `get ns`
/// lists what the policy engine's namespace selectors see. `passthrough` holds the declared
/// Namespaces and the NetworkPolicies.
fn namespaces(mut passthrough: Vec<Object>, input: &ClusterState) -> Vec<Object> {
    for object in &mut passthrough {
        if let Object::Namespace(ns) = object {
            let name = ns.metadata.name.clone().unwrap_or_default();
            ns.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(NAMESPACE_NAME_LABEL.to_owned(), name);
            ns.status.get_or_insert_with(Default::default).phase = Some("Active".to_owned());
        }
    }
    for view in input.namespaces() {
        let id = ObjectId {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: view.name.to_string(),
        };
        if input.object(&id).is_some() {
            continue;
        }
        passthrough.push(Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(id.name.clone()),
                uid: Some(names::uid(Kind::Namespace.as_str(), "", &id.name)),
                labels: Some(view.labels.clone()),
                ..ObjectMeta::default()
            },
            status: Some(NamespaceStatus {
                phase: Some("Active".to_owned()),
                ..NamespaceStatus::default()
            }),
            ..Namespace::default()
        }));
    }
    passthrough
}

/// Fills in what the API server always sets: the namespace of namespaced objects and a UID.
fn normalize(object: &mut Object) {
    let kind = object.kind();
    let namespace = object.namespace().to_owned();
    let name = object.name().to_owned();
    let meta = object.meta_mut();
    if kind.is_namespaced() && meta.namespace.is_none() {
        meta.namespace = Some(namespace.clone());
    }
    if meta.uid.is_none() {
        meta.uid = Some(names::uid(kind.as_str(), &namespace, &name));
    }
}
