//! The store at the scale: 10,000 Services × 10 endpoints (one EndpointSlice each),
//! 10,000 Pods, 1,000 NetworkPolicies, 64 Nodes. Measures the initial lists, one
//! EndpointSlice change through to the snapshot the planners read, and a status-only Pod
//! update (the common no-op); prints the process's RSS once the store holds the cluster.

use std::hint::black_box;

use criterion::Criterion;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use netd_model::ClusterConfig;
use netd_source::{Store, Watched};

const APPS: usize = 1_000;
const PODS_PER_APP: usize = 10;
const SERVICES_PER_APP: usize = 10;
const NODES: usize = 64;

fn meta(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        resource_version: Some("1".to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn pod_ip(app: usize, i: usize) -> String {
    let n = app * PODS_PER_APP + i;
    format!("10.{}.{}.{}", 64 + n / 65_536, (n / 256) % 256, n % 256)
}

fn pod(app: usize, i: usize, probe: u32) -> core::Pod {
    let name = format!("app-{app}-{i}");
    let app_label = format!("app-{app}");
    let ip = pod_ip(app, i);
    core::Pod {
        metadata: meta(&name, Some("default"), &[("app", &app_label)]),
        spec: Some(core::PodSpec {
            node_name: Some(format!("node-{}", (app * PODS_PER_APP + i) % NODES)),
            containers: vec![core::Container {
                name: "c".to_owned(),
                image: Some("registry.k8s.io/serve_hostname".to_owned()),
                ports: Some(vec![core::ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: 9376,
                    ..core::ContainerPort::default()
                }]),
                ..core::Container::default()
            }],
            ..core::PodSpec::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![core::PodIP { ip }]),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                message: Some(format!("probe {probe}")),
                ..core::PodCondition::default()
            }]),
            ..core::PodStatus::default()
        }),
    }
}

fn service(app: usize, s: usize) -> core::Service {
    let n = app * SERVICES_PER_APP + s;
    let app_label = format!("app-{app}");
    core::Service {
        metadata: meta(&format!("svc-{n}"), Some("default"), &[]),
        spec: Some(core::ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", n / 256, n % 256)),
            selector: Some([("app".to_owned(), app_label)].into()),
            ports: Some(vec![core::ServicePort {
                port: 80,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..core::ServicePort::default()
            }]),
            ..core::ServiceSpec::default()
        }),
        status: None,
    }
}

fn slice(app: usize, s: usize, ready: bool) -> discovery::EndpointSlice {
    let n = app * SERVICES_PER_APP + s;
    let service = format!("svc-{n}");
    discovery::EndpointSlice {
        metadata: meta(
            &format!("{service}-abcde"),
            Some("default"),
            &[("kubernetes.io/service-name", &service)],
        ),
        address_type: "IPv4".to_owned(),
        ports: Some(vec![discovery::EndpointPort {
            port: Some(9376),
            ..discovery::EndpointPort::default()
        }]),
        endpoints: (0..PODS_PER_APP)
            .map(|i| discovery::Endpoint {
                addresses: vec![pod_ip(app, i)],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(ready || i != 0),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", (app * PODS_PER_APP + i) % NODES)),
                ..discovery::Endpoint::default()
            })
            .collect(),
    }
}

fn policy(app: usize) -> networking::NetworkPolicy {
    let to = format!("app-{app}");
    let from = format!("app-{}", (app + 1) % APPS);
    let selector = |app: &str| LabelSelector {
        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
        ..LabelSelector::default()
    };
    networking::NetworkPolicy {
        metadata: meta(&format!("allow-{app}"), Some("default"), &[]),
        spec: Some(networking::NetworkPolicySpec {
            pod_selector: Some(selector(&to)),
            ingress: Some(vec![networking::NetworkPolicyIngressRule {
                from: Some(vec![networking::NetworkPolicyPeer {
                    pod_selector: Some(selector(&from)),
                    ..networking::NetworkPolicyPeer::default()
                }]),
                ..networking::NetworkPolicyIngressRule::default()
            }]),
            ..networking::NetworkPolicySpec::default()
        }),
    }
}

fn node(n: usize) -> core::Node {
    core::Node {
        metadata: meta(&format!("node-{n}"), None, &[]),
        spec: Some(core::NodeSpec {
            pod_cidr: Some(format!("10.244.{n}.0/24")),
            ..core::NodeSpec::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(vec![core::NodeAddress {
                type_: "InternalIP".to_owned(),
                address: format!("172.18.0.{}", n + 2),
            }]),
            ..core::NodeStatus::default()
        }),
    }
}

fn list<K: Watched>(store: &mut Store, objects: impl Iterator<Item = K>) {
    store.apply(Event::<K>::Init);
    for o in objects {
        store.apply(Event::InitApply(o));
    }
    store.apply(Event::<K>::InitDone);
}

fn full_store() -> Store {
    let mut store = Store::new(ClusterConfig::default());
    list(
        &mut store,
        std::iter::once(PartialObjectMeta::<core::Namespace> {
            metadata: meta("default", None, &[]),
            ..PartialObjectMeta::default()
        }),
    );
    list(&mut store, (0..NODES).map(node));
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..PODS_PER_APP).map(move |i| pod(a, i, 0))),
    );
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..SERVICES_PER_APP).map(move |s| service(a, s))),
    );
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..SERVICES_PER_APP).map(move |s| slice(a, s, true))),
    );
    list(&mut store, (0..APPS).map(policy));
    store
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let before = rss_mib();
    let mut store = full_store();
    let after = rss_mib();
    let snapshot = store.take_snapshot().expect("ready");
    let with_snapshot = rss_mib();
    eprintln!(
        "RSS: {:.1} MiB at start, {:.1} MiB holding the store, {:.1} MiB with one snapshot too \
         ({} pods, {} services, {} slices, {} policies)",
        before.unwrap_or(f64::NAN),
        after.unwrap_or(f64::NAN),
        with_snapshot.unwrap_or(f64::NAN),
        snapshot.state.pods().count(),
        snapshot.state.services().count(),
        snapshot.state.endpoint_slices().count(),
        snapshot.state.policies().count(),
    );
    drop(snapshot);

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function("initial lists of the whole cluster", |b| {
        b.iter(|| black_box(full_store()))
    });
    // The slice was listed ready; each iteration flips one endpoint.
    let mut ready = true;
    c.bench_function("one EndpointSlice change, then the snapshot", |b| {
        b.iter(|| {
            ready = !ready;
            assert!(store.apply(Event::Apply(slice(7, 3, ready))));
            black_box(store.take_snapshot().expect("ready"))
        })
    });
    let mut probe = 0;
    c.bench_function("a status-only Pod update (no change)", |b| {
        b.iter(|| {
            probe += 1;
            assert!(!store.apply(Event::Apply(pod(7, 3, probe))));
        })
    });
    c.final_summary();
}
