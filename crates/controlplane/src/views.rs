//! Objects upstream's controllers keep that kube-netd derives on demand, for people reading
//! the cluster (`get rs`, `get ep`): nothing else reads them, so they are not part of
//! [`ClusterState`].
//!
//! - ReplicaSets: the Deployment controller's `<deployment>-<pod-template-hash>`, one per
//!   Deployment (there are no rollouts, so no old ones), with the Deployment's counts.
//! - Endpoints (v1): what upstream's Endpoints controller writes, from the EndpointSlices:
//!   one subset per distinct port list, ready addresses apart from the others.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use netd_model::view::SERVICE_NAME_LABEL;
use netd_model::{ClusterState, Object};

use crate::deployments::{POD_TEMPLATE_HASH_LABEL, pod_template_hash};
use crate::names;

/// The ReplicaSet of every Deployment in `state`, in the state's order.
pub fn replica_sets(state: &ClusterState) -> Vec<apps::ReplicaSet> {
    state
        .objects()
        .filter_map(|o| match o {
            Object::Deployment(d) => Some(replica_set(d)),
            _ => None,
        })
        .collect()
}

/// The v1 Endpoints of every Service in `state` that has EndpointSlices, in the state's order.
pub fn endpoints(state: &ClusterState) -> Vec<core::Endpoints> {
    let mut slices: BTreeMap<(String, String), Vec<&discovery::EndpointSlice>> = BTreeMap::new();
    for object in state.objects() {
        if let Object::EndpointSlice(s) = object
            && let Some(service) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices
                .entry((object.namespace().to_owned(), service.clone()))
                .or_default()
                .push(s);
        }
    }
    state
        .objects()
        .filter_map(|o| match o {
            Object::Service(svc) => {
                let key = (o.namespace().to_owned(), o.name().to_owned());
                slices.get(&key).map(|of| endpoints_of(svc, &key.0, of))
            }
            _ => None,
        })
        .collect()
}

fn replica_set(d: &apps::Deployment) -> apps::ReplicaSet {
    let namespace = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let deployment = d.metadata.name.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let hash = pod_template_hash(&spec.template, status.collision_count);
    let name = format!("{deployment}-{hash}");
    let mut template = spec.template.clone();
    let template_meta = template.metadata.get_or_insert_with(Default::default);
    template_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash.clone());
    let labels = template_meta.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash);
    let replicas = status.replicas.unwrap_or(0);
    apps::ReplicaSet {
        metadata: ObjectMeta {
            uid: Some(names::uid("ReplicaSet", &namespace, &name)),
            name: Some(name),
            namespace: Some(namespace.clone()),
            labels,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: "Deployment".to_owned(),
                uid: d
                    .metadata
                    .uid
                    .clone()
                    .unwrap_or_else(|| names::uid("Deployment", &namespace, &deployment)),
                name: deployment,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(apps::ReplicaSetSpec {
            replicas: Some(spec.replicas.unwrap_or(1)),
            selector,
            template: Some(template),
            ..apps::ReplicaSetSpec::default()
        }),
        status: Some(apps::ReplicaSetStatus {
            replicas,
            fully_labeled_replicas: Some(replicas),
            ready_replicas: status.ready_replicas,
            available_replicas: status.available_replicas,
            ..apps::ReplicaSetStatus::default()
        }),
    }
}

fn endpoints_of(
    svc: &core::Service,
    namespace: &str,
    slices: &[&discovery::EndpointSlice],
) -> core::Endpoints {
    // One subset per distinct port list, in first-seen order.
    let mut subsets: Vec<core::EndpointSubset> = Vec::new();
    for slice in slices {
        let ports: Vec<core::EndpointPort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(core::EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: p.port?,
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let index = match subsets
            .iter()
            .position(|s| s.ports.as_deref() == Some(&ports[..]))
        {
            Some(i) => i,
            None => {
                subsets.push(core::EndpointSubset {
                    ports: Some(ports),
                    ..core::EndpointSubset::default()
                });
                subsets.len() - 1
            }
        };
        let subset = &mut subsets[index];
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let list = if ready {
                subset.addresses.get_or_insert_with(Vec::new)
            } else {
                subset.not_ready_addresses.get_or_insert_with(Vec::new)
            };
            list.extend(e.addresses.iter().map(|ip| core::EndpointAddress {
                ip: ip.clone(),
                hostname: e.hostname.clone(),
                node_name: e.node_name.clone(),
                target_ref: e.target_ref.clone(),
            }));
        }
    }
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    core::Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: Some(namespace.to_owned()),
            labels: svc.metadata.labels.clone(),
            uid: Some(names::uid(
                "Endpoints",
                namespace,
                svc.metadata.name.as_deref().unwrap_or_default(),
            )),
            ..ObjectMeta::default()
        },
        subsets: Some(subsets).filter(|s| !s.is_empty()),
    }
}
