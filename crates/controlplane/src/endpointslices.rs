//! The EndpointSlice controller, as upstream's reconciler behaves.
//!
//! For each Service with a selector, the matching Pods of its namespace that have an IP (and
//! have not finished) become endpoints, one slice family per `ipFamilies` entry. Pods are
//! grouped by the ports their Service ports resolve to (a named `targetPort` is looked up per
//! Pod and protocol, and a Pod without it lacks that port), each group cut into slices of at
//! most [`MAX_ENDPOINTS_PER_SLICE`]. A Service with no endpoints of a family gets an empty
//! placeholder slice, as upstream creates one. Services without a selector keep the slices
//! the input gives; so do slices another controller manages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use netd_model::view::{SERVICE_NAME_LABEL, ServiceType, TargetPort};
use netd_model::{Protocol, ServiceRef};

use crate::alloc::Family;
use crate::names;
use crate::nodes::NodeWork;
use crate::pods::PodWork;
use crate::services::ServiceWork;

/// The label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on the slices this controller makes (upstream's name).
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The label upstream puts on the slices of headless Services.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// One port of a slice: name, protocol, number, appProtocol.
type SlicePort = (String, Protocol, u16, Option<String>);

/// The input's slices to keep, and the controller's slices for every Service with a selector.
pub(crate) fn reconcile(
    services: &[ServiceWork],
    pods: &[PodWork],
    nodes: &[NodeWork],
    input: Vec<discovery::EndpointSlice>,
) -> Vec<discovery::EndpointSlice> {
    let managed: HashSet<&ServiceRef> = services
        .iter()
        .filter(|s| s.view.selector.is_some() && s.view.service_type != ServiceType::ExternalName)
        .map(|s| &s.view.key)
        .collect();
    let mut out: Vec<discovery::EndpointSlice> = input
        .into_iter()
        .filter(|slice| {
            let labels = slice.metadata.labels.as_ref();
            let ours = labels
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|m| m == CONTROLLER_NAME);
            let service = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).map(|name| {
                ServiceRef::new(
                    slice.metadata.namespace.as_deref().unwrap_or("default"),
                    name,
                )
            });
            !(ours && service.is_some_and(|s| managed.contains(&s)))
        })
        .collect();
    let mut taken: HashSet<(String, String)> = out
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let index = LabelIndex::new(pods);
    for svc in services.iter().filter(|s| managed.contains(&s.view.key)) {
        out.extend(slices_for(svc, pods, nodes, &index, &mut taken));
    }
    out
}

/// Pods by namespace and label, so that a selector is matched against the Pods that carry its
/// rarest label rather than against every Pod.
struct LabelIndex<'a> {
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
}

impl<'a> LabelIndex<'a> {
    fn new(pods: &'a [PodWork]) -> Self {
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            for (k, v) in pod.labels().into_iter().flatten() {
                by_label
                    .entry((pod.key.namespace.as_str(), k, v))
                    .or_default()
                    .push(i);
            }
        }
        Self { by_label }
    }

    /// The Pods of `namespace` matching a Service selector (non-empty equalities), in
    /// name order.
    fn matching(
        &self,
        pods: &[PodWork],
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<usize> {
        let lists: Option<Vec<&Vec<usize>>> = selector
            .iter()
            .map(|(k, v)| self.by_label.get(&(namespace, k.as_str(), v.as_str())))
            .collect();
        let Some(shortest) = lists.and_then(|l| l.into_iter().min_by_key(|v| v.len())) else {
            return Vec::new();
        };
        shortest
            .iter()
            .copied()
            .filter(|i| {
                let labels = pods[*i].labels();
                selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect()
    }
}

fn slices_for(
    svc: &ServiceWork,
    pods: &[PodWork],
    nodes: &[NodeWork],
    index: &LabelIndex<'_>,
    taken: &mut HashSet<(String, String)>,
) -> Vec<discovery::EndpointSlice> {
    let view = &svc.view;
    let namespace = view.key.namespace.as_str();
    let selected = view
        .selector
        .as_ref()
        .map(|s| index.matching(pods, namespace, s))
        .unwrap_or_default();
    let app_protocols: Vec<Option<String>> = svc
        .obj
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ps| ps.iter().map(|p| p.app_protocol.clone()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for family in &svc.families {
        let mut groups: BTreeMap<Vec<SlicePort>, Vec<discovery::Endpoint>> = BTreeMap::new();
        for &i in &selected {
            let pod = &pods[i];
            if pod.terminal() {
                continue;
            }
            let Some(ip) = pod
                .ips
                .iter()
                .copied()
                .find(|ip| Family::of(*ip) == *family)
            else {
                continue;
            };
            let container_ports = pod.container_ports();
            let ports: Vec<SlicePort> = view
                .ports
                .iter()
                .enumerate()
                .filter_map(|(pi, p)| {
                    let number = match &p.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => {
                            container_ports
                                .iter()
                                .find(|c| {
                                    c.protocol == p.protocol && c.name.as_deref() == Some(name)
                                })?
                                .port
                        }
                    };
                    Some((
                        p.name.clone(),
                        p.protocol,
                        number,
                        app_protocols.get(pi).cloned().flatten(),
                    ))
                })
                .collect();
            groups
                .entry(ports)
                .or_default()
                .push(endpoint(svc, pod, ip, nodes));
        }
        if groups.is_empty() {
            groups.insert(Vec::new(), Vec::new());
        }
        for (ports, endpoints) in groups {
            let chunks: Vec<Vec<discovery::Endpoint>> = if endpoints.is_empty() {
                vec![Vec::new()]
            } else {
                endpoints
                    .chunks(MAX_ENDPOINTS_PER_SLICE)
                    .map(<[_]>::to_vec)
                    .collect()
            };
            for (chunk_index, chunk) in chunks.into_iter().enumerate() {
                let name = slice_name(&view.key, *family, &ports, chunk_index, taken);
                out.push(slice(svc, name, *family, &ports, chunk));
            }
        }
    }
    out
}

fn endpoint(
    svc: &ServiceWork,
    pod: &PodWork,
    ip: IpAddr,
    nodes: &[NodeWork],
) -> discovery::Endpoint {
    let publish = svc.view.publish_not_ready_addresses;
    let terminating = pod.terminating();
    let serving = pod.ready;
    // Upstream: never ready while terminating, unless not-ready addresses are published.
    let ready = publish || (serving && !terminating);
    let node = pod.node.map(|n| &nodes[n]);
    let zone = node.and_then(NodeWork::zone).map(str::to_owned);
    let (hostname, subdomain) = pod.hostname_and_subdomain();
    let hostname = hostname
        .filter(|_| subdomain == Some(svc.view.key.name.as_str()))
        .map(str::to_owned);
    let hints = match svc.view.traffic_distribution.as_deref() {
        Some("PreferClose" | "PreferSameZone") => zone.clone().map(|z| discovery::EndpointHints {
            for_zones: Some(vec![discovery::ForZone { name: z }]),
            for_nodes: None,
        }),
        Some("PreferSameNode") => node.map(|n| discovery::EndpointHints {
            for_nodes: Some(vec![discovery::ForNode {
                name: n.name.to_string(),
            }]),
            for_zones: zone.clone().map(|z| vec![discovery::ForZone { name: z }]),
        }),
        _ => None,
    };
    discovery::Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(discovery::EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: node.map(|n| n.name.to_string()),
        zone,
        hints,
        target_ref: Some(core::ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: Some(pod.key.namespace.to_string()),
            name: Some(pod.key.name.clone()),
            uid: pod.obj.metadata.uid.clone(),
            ..Default::default()
        }),
        deprecated_topology: None,
    }
}

/// `<service>-<5 chars>`, derived from the slice's place (family, ports, chunk) and unique
/// in the namespace.
fn slice_name(
    service: &ServiceRef,
    family: Family,
    ports: &[SlicePort],
    chunk: usize,
    taken: &mut HashSet<(String, String)>,
) -> String {
    let ports_key: String = ports
        .iter()
        .map(|(n, proto, port, app)| {
            format!("{n}/{proto}/{port}/{}", app.as_deref().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join(",");
    let base = format!("{}-", service.name);
    let chunk = chunk.to_string();
    let ns = service.namespace.to_string();
    for attempt in 0u32.. {
        let attempt = attempt.to_string();
        let seed = [
            ns.as_str(),
            service.name.as_str(),
            family.as_api_str(),
            &ports_key,
            &chunk,
            &attempt,
        ];
        let name = names::generate_name(&base, &names::suffix(&seed));
        if taken.insert((ns.clone(), name.clone())) {
            return name;
        }
    }
    // The loop above returns as soon as a name is free; 27^5 suffixes are never all taken.
    base
}

fn slice(
    svc: &ServiceWork,
    name: String,
    family: Family,
    ports: &[SlicePort],
    endpoints: Vec<discovery::Endpoint>,
) -> discovery::EndpointSlice {
    let key = &svc.view.key;
    let mut labels: BTreeMap<String, String> = svc.view.labels.clone();
    labels.remove(SERVICE_NAME_LABEL);
    labels.remove(MANAGED_BY_LABEL);
    labels.insert(SERVICE_NAME_LABEL.to_owned(), key.name.clone());
    labels.insert(MANAGED_BY_LABEL.to_owned(), CONTROLLER_NAME.to_owned());
    if svc.view.headless {
        labels.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    let namespace = key.namespace.to_string();
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            uid: Some(names::uid("EndpointSlice", &namespace, &name)),
            generate_name: Some(format!("{}-", key.name)),
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: key.name.clone(),
                uid: svc.obj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: family.as_api_str().to_owned(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol, port, app)| discovery::EndpointPort {
                    name: Some(name.clone()),
                    protocol: Some(protocol.as_api_str().to_owned()),
                    port: Some(i32::from(*port)),
                    app_protocol: app.clone(),
                })
                .collect(),
        ),
    }
}
