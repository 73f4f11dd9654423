//! The add-ons every cluster has without a manifest declaring them, as kubeadm installs them:
//! the cluster DNS, `kube-system/kube-dns` (the Service) and `kube-system/coredns` (its
//! Deployment). The offline commands and the lab add the same ones through [`with_addons`],
//! so the same manifests resolve to the same Pods, IPs and Nodes in both.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netd_model::{ClusterConfig, Kind, Object};

/// The namespace of the cluster DNS Service and its Pods.
pub const DNS_NAMESPACE: &str = "kube-system";
/// The cluster DNS Service's name.
pub const DNS_SERVICE: &str = "kube-dns";
/// The cluster DNS Deployment's name.
pub const DNS_DEPLOYMENT: &str = "coredns";
/// The label (`k8s-app: kube-dns`, as upstream's) that the DNS Service selects.
pub const DNS_APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// The label that says which program a Pod runs in the lab; Pods without it run the echo
/// server.
pub const WORKLOAD_LABEL: &str = "kube-netd.io/workload";
/// The value of [`WORKLOAD_LABEL`] for Pods that run the cluster DNS server.
pub const DNS_WORKLOAD: &str = "dns";
/// The port of the DNS server's `/metrics`, `/health` and `/ready` (CoreDNS's).
pub const DNS_METRICS_PORT: u16 = 9153;

/// `desired` plus the cluster's add-ons, for what it does not define itself: the Service
/// `kube-system/kube-dns` (ClusterIP `config.dns_service_ip`, `dns` UDP 53 and `dns-tcp`
/// TCP 53, selecting `k8s-app: kube-dns`) unless it is among them, and the one-replica
/// Deployment `kube-system/coredns` (Pods labelled `k8s-app: kube-dns` and
/// [`WORKLOAD_LABEL`]` = `[`DNS_WORKLOAD`]) unless a Pod or Deployment of `kube-system`
/// already carries `k8s-app: kube-dns`. The add-ons come after `desired`, in that order.
///
/// ```
/// let config = netd_model::ClusterConfig::default();
/// let objects = netd_controlplane::with_addons(Vec::new(), &config);
/// assert_eq!(objects.len(), 2);
/// ```
pub fn with_addons(mut desired: Vec<Object>, config: &ClusterConfig) -> Vec<Object> {
    let has_service = desired.iter().any(|o| {
        let id = o.id();
        id.kind == Kind::Service && id.namespace == DNS_NAMESPACE && id.name == DNS_SERVICE
    });
    let has_workload = desired.iter().any(is_dns_app);
    if !has_service {
        desired.push(Object::Service(Box::new(dns_service(config))));
    }
    if !has_workload {
        desired.push(Object::Deployment(Box::new(dns_deployment())));
    }
    desired
}

fn dns_service(config: &ClusterConfig) -> core::Service {
    let port = |name: &str, protocol: &str| core::ServicePort {
        name: Some(name.to_owned()),
        port: 53,
        protocol: Some(protocol.to_owned()),
        target_port: Some(IntOrString::Int(53)),
        ..core::ServicePort::default()
    };
    core::Service {
        metadata: ObjectMeta {
            name: Some(DNS_SERVICE.to_owned()),
            namespace: Some(DNS_NAMESPACE.to_owned()),
            labels: Some(labels(&[DNS_APP_LABEL, ("kubernetes.io/name", "CoreDNS")])),
            ..ObjectMeta::default()
        },
        spec: Some(core::ServiceSpec {
            cluster_ip: Some(config.dns_service_ip.to_string()),
            selector: Some(labels(&[DNS_APP_LABEL])),
            ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
            ..core::ServiceSpec::default()
        }),
        status: None,
    }
}

fn dns_deployment() -> apps::Deployment {
    let port = |name: &str, port: u16, protocol: &str| core::ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        ..core::ContainerPort::default()
    };
    apps::Deployment {
        metadata: ObjectMeta {
            name: Some(DNS_DEPLOYMENT.to_owned()),
            namespace: Some(DNS_NAMESPACE.to_owned()),
            labels: Some(labels(&[DNS_APP_LABEL])),
            ..ObjectMeta::default()
        },
        spec: Some(apps::DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels(&[DNS_APP_LABEL])),
                ..LabelSelector::default()
            },
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&[DNS_APP_LABEL, (WORKLOAD_LABEL, DNS_WORKLOAD)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: "kube-netd-dns".to_owned(),
                        image: Some("kube-netd".to_owned()),
                        args: Some(vec!["dns".to_owned()]),
                        ports: Some(vec![
                            port("dns", 53, "UDP"),
                            port("dns-tcp", 53, "TCP"),
                            port("metrics", DNS_METRICS_PORT, "TCP"),
                        ]),
                        ..core::Container::default()
                    }],
                    ..core::PodSpec::default()
                }),
            },
            ..apps::DeploymentSpec::default()
        }),
        status: None,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Whether `object` is a Pod or Deployment of `kube-system` labelled `k8s-app: kube-dns`.
fn is_dns_app(object: &Object) -> bool {
    let labels = match object {
        Object::Pod(p) if p.metadata.namespace.as_deref() == Some(DNS_NAMESPACE) => {
            p.metadata.labels.as_ref()
        }
        Object::Deployment(d) if d.metadata.namespace.as_deref() == Some(DNS_NAMESPACE) => d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()),
        _ => None,
    };
    labels
        .and_then(|l| l.get(DNS_APP_LABEL.0))
        .is_some_and(|v| v == DNS_APP_LABEL.1)
}

#[cfg(test)]
mod tests {
    use netd_model::{ClusterState, Protocol, ServiceRef};

    use super::*;

    fn ids(objects: &[Object]) -> Vec<String> {
        let mut out: Vec<String> = objects
            .iter()
            .map(|o| {
                let id = o.id();
                format!("{}/{}/{}", id.kind.as_str(), id.namespace, id.name)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn adds_the_dns_service_and_deployment_when_missing() {
        let config = ClusterConfig::default();
        let objects = with_addons(Vec::new(), &config);
        assert_eq!(
            ids(&objects),
            [
                "Deployment/kube-system/coredns",
                "Service/kube-system/kube-dns"
            ]
        );
        let state = ClusterState::new(objects, config.clone()).expect("valid");
        let svc = state
            .service(&ServiceRef::new(DNS_NAMESPACE, DNS_SERVICE))
            .expect("kube-dns");
        assert_eq!(svc.cluster_ips, vec![config.dns_service_ip]);
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol, p.port))
            .collect();
        assert_eq!(
            ports,
            [("dns", Protocol::Udp, 53), ("dns-tcp", Protocol::Tcp, 53)]
        );
    }

    #[test]
    fn the_dns_pods_run_the_dns_server() {
        let config = ClusterConfig::default();
        let state =
            crate::resolve(with_addons(Vec::new(), &config), &config, None).expect("resolves");
        let pods: Vec<_> = state
            .pods()
            .map(|p| {
                (
                    p.key.namespace.as_str().to_owned(),
                    p.labels.get(WORKLOAD_LABEL).cloned(),
                    p.labels.get(DNS_APP_LABEL.0).cloned(),
                )
            })
            .collect();
        assert_eq!(
            pods,
            [(
                DNS_NAMESPACE.to_owned(),
                Some(DNS_WORKLOAD.to_owned()),
                Some(DNS_APP_LABEL.1.to_owned())
            )]
        );
    }

    #[test]
    fn keeps_what_the_manifests_define() {
        let config = ClusterConfig::default();
        let own = netd_testkit::objects(
            r#"
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {selector: {k8s-app: kube-dns}, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: my-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: c, image: i}]}
"#,
        );
        assert_eq!(ids(&with_addons(own.clone(), &config)), ids(&own));

        // The same label elsewhere is not the cluster's DNS.
        let elsewhere = netd_testkit::objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: default, labels: {k8s-app: kube-dns}}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        assert_eq!(with_addons(elsewhere, &config).len(), 3);
    }
}
