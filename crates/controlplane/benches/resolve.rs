//! Resolving a large cluster: 1,000 Deployments × 10 replicas behind 10,000 Services
//! (10 Services per Deployment), so 10,000 Services × 10 endpoints, on 64 Nodes.

use std::hint::black_box;

use criterion::Criterion;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netd_model::{ClusterConfig, Object};

const DEPLOYMENTS: usize = 1_000;
const REPLICAS: i32 = 10;
const SERVICES_PER_DEPLOYMENT: usize = 10;

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn cluster() -> Vec<Object> {
    let mut objects = Vec::new();
    for d in 0..DEPLOYMENTS {
        let app = format!("app-{d}");
        let labels = [("app", app.as_str())];
        objects.push(Object::Deployment(Box::new(apps::Deployment {
            metadata: meta(&app, &[]),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(REPLICAS),
                selector: LabelSelector {
                    match_labels: Some(meta("", &labels).labels.unwrap_or_default()),
                    ..Default::default()
                },
                template: core::PodTemplateSpec {
                    metadata: Some(meta("", &labels)),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: "c".to_owned(),
                            image: Some("registry.k8s.io/serve_hostname".to_owned()),
                            ports: Some(vec![core::ContainerPort {
                                name: Some("http".to_owned()),
                                container_port: 9376,
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        })));
        for s in 0..SERVICES_PER_DEPLOYMENT {
            objects.push(Object::Service(Box::new(core::Service {
                metadata: meta(&format!("svc-{d}-{s}"), &[]),
                spec: Some(core::ServiceSpec {
                    selector: Some(
                        labels
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                    ),
                    ports: Some(vec![core::ServicePort {
                        port: 80,
                        target_port: Some(IntOrString::String("http".to_owned())),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            })));
        }
    }
    objects
}

fn bench(c: &mut Criterion) {
    let config = ClusterConfig {
        default_node_count: 64,
        ..ClusterConfig::default()
    };
    let objects = cluster();
    let mut group = c.benchmark_group("resolve");
    group.sample_size(10);
    group.bench_function("10k services x 10 endpoints, fresh", |b| {
        b.iter(|| netd_controlplane::resolve(black_box(objects.clone()), &config, None))
    });
    let previous = netd_controlplane::resolve(objects.clone(), &config, None).ok();
    group.bench_function("10k services x 10 endpoints, with previous", |b| {
        b.iter(|| {
            netd_controlplane::resolve(black_box(objects.clone()), &config, previous.as_ref())
        })
    });
    // For scale: building the snapshot alone, from the already resolved objects.
    if let Some(state) = &previous {
        let resolved: Vec<Object> = state.objects().cloned().collect();
        group.bench_function("snapshot of the resolved objects only", |b| {
            b.iter(|| netd_model::ClusterState::new(black_box(resolved.clone()), config.clone()))
        });
    }
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, without their undocumented public fn.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
