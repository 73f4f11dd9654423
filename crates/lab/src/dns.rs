//! Cluster DNS in the lab: the `kube-system/kube-dns` Service and the `kube-system/coredns`
//! Deployment every lab gets unless its manifests bring their own, and the DNS server those
//! Pods run instead of the echo server.
//!
//! A Pod runs the DNS server when it carries the label [`WORKLOAD_LABEL`]` = `[`DNS_WORKLOAD`]
//! (the built-in Deployment's Pods do). The server is `netd-dns`, listening on UDP and TCP 53
//! (and `/metrics`, `/health`, `/ready` on TCP 9153) inside the Pod's namespace, serving the
//! zone of the lab's published cluster (`cluster.json`) and rebuilding it whenever the
//! generation changes. It has no upstream: a name outside the cluster zone gets SERVFAIL at
//! once, so no query leaves the machine. Pods reach it as they reach any Service, through the
//! Service rules for `10.96.0.10`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use netd_dns::{DnsServer, DomainName, ForwardConfig, ServeConfig, ZoneConfig};
use netd_model::{ClusterConfig, ClusterState, Kind, Object, PodRef, view};
use serde_json::json;
use tokio::sync::watch;

use crate::store::Store;
use crate::{LabError, objects};

/// The label that picks a lab Pod's workload; Pods without it run the echo server.
pub const WORKLOAD_LABEL: &str = "kube-netd.io/workload";
/// The value of [`WORKLOAD_LABEL`] for Pods that run the cluster DNS server.
pub const DNS_WORKLOAD: &str = "dns";
/// The namespace of the cluster DNS Service and its Pods.
pub const DNS_NAMESPACE: &str = "kube-system";
/// The cluster DNS Service's name.
pub const DNS_SERVICE: &str = "kube-dns";
/// The built-in DNS Deployment's name.
pub const DNS_DEPLOYMENT: &str = "coredns";
/// The label (`k8s-app: kube-dns`, as upstream's) that the DNS Service selects.
pub const DNS_APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// The port of the DNS server's `/metrics`, `/health` and `/ready` (CoreDNS's).
pub const METRICS_PORT: u16 = 9153;

/// How often the DNS server looks for a new generation of the cluster.
const POLL: Duration = Duration::from_millis(100);

/// Whether `pod` runs the cluster DNS server rather than the echo server.
pub fn runs_dns(pod: &view::Pod) -> bool {
    pod.labels.get(WORKLOAD_LABEL).map(String::as_str) == Some(DNS_WORKLOAD)
}

/// `objects` plus the built-in cluster DNS, for what they do not define themselves: the
/// Service `kube-system/kube-dns` (ClusterIP `config.dns_service_ip`, `dns` UDP 53 and
/// `dns-tcp` TCP 53, selecting `k8s-app: kube-dns`) unless it is among them, and the one-replica
/// Deployment `kube-system/coredns` running the DNS server unless a Pod or Deployment of
/// `kube-system` already carries `k8s-app: kube-dns`.
pub fn with_cluster_dns(
    mut manifests: Vec<Object>,
    config: &ClusterConfig,
) -> Result<Vec<Object>, LabError> {
    let has_service = manifests.iter().any(|o| {
        let id = o.id();
        id.kind == Kind::Service && id.namespace == DNS_NAMESPACE && id.name == DNS_SERVICE
    });
    let has_workload = manifests.iter().any(is_dns_app);
    let mut added = Vec::new();
    if !has_service {
        added.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": DNS_SERVICE,
                "namespace": DNS_NAMESPACE,
                "labels": {DNS_APP_LABEL.0: DNS_APP_LABEL.1, "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "clusterIP": config.dns_service_ip.to_string(),
                "selector": {DNS_APP_LABEL.0: DNS_APP_LABEL.1},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        }));
    }
    if !has_workload {
        let labels = json!({DNS_APP_LABEL.0: DNS_APP_LABEL.1, WORKLOAD_LABEL: DNS_WORKLOAD});
        added.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": DNS_DEPLOYMENT,
                "namespace": DNS_NAMESPACE,
                "labels": {DNS_APP_LABEL.0: DNS_APP_LABEL.1},
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {DNS_APP_LABEL.0: DNS_APP_LABEL.1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": "kube-netd-dns",
                        "image": "kube-netd",
                        "args": ["dns"],
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        ],
                    }]},
                },
            },
        }));
    }
    for (index, value) in added.into_iter().enumerate() {
        manifests.extend(objects::decode(index, value)?);
    }
    Ok(manifests)
}

/// Whether the Pod `pod` of the lab whose state is in `state_dir` runs the DNS server, by
/// its labels in the published cluster (false for a Pod no longer there).
pub(crate) fn pod_runs_dns(state_dir: &Path, pod: &PodRef) -> Result<bool, LabError> {
    let store = Store::at(state_dir.to_owned());
    let lab = store.read_lab()?.ok_or_else(|| LabError::NotFound {
        name: state_dir.to_string_lossy().into_owned(),
        dir: state_dir.to_owned(),
    })?;
    let (_, state) = published(&store, &ClusterConfig::from(&lab.config))?;
    Ok(state.pod(pod).is_some_and(runs_dns))
}

/// Runs the cluster DNS server of the Pod `pod` of the lab whose state is in `state_dir`, in
/// the current network namespace, until that directory disappears. Writes `ready` to stdout
/// once its sockets are bound, as the echo server does.
pub(crate) fn serve(state_dir: &Path, pod: &PodRef) -> Result<(), LabError> {
    let store = Store::at(state_dir.to_owned());
    let lab = store.read_lab()?.ok_or_else(|| LabError::NotFound {
        name: state_dir.to_string_lossy().into_owned(),
        dir: state_dir.to_owned(),
    })?;
    let config = ClusterConfig::from(&lab.config);
    let origin: DomainName =
        config
            .dns_zone
            .parse()
            .map_err(|source| LabError::InvalidDnsZone {
                zone: config.dns_zone.clone(),
                source,
            })?;
    let serve_config = ServeConfig {
        // Both families: the DNS Service's ClusterIP is IPv6 on an IPv6-only lab.
        listen: SocketAddr::from((dns_listen_ip(&config), 53)),
        zone: ZoneConfig {
            origin,
            ..ZoneConfig::default()
        },
        // No upstream: outside names get SERVFAIL at once and nothing leaves the machine.
        forward: ForwardConfig::default(),
        metrics_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
    };
    let failed = |source| LabError::DnsServeFailed {
        pod: pod.clone(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| LabError::SpawnFailed {
            what: format!("the DNS server of {pod}"),
            source,
        })?;
    runtime.block_on(async {
        let (generation, state) = published(&store, &config)?;
        let server = DnsServer::bind(serve_config).await.map_err(failed)?;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ready");
        let _ = stdout.flush();
        let (tx, rx) = watch::channel(Arc::new(state));
        server
            .run(rx, follow(store, config, generation, tx))
            .await
            .map_err(failed)
    })
}

/// Whether `object` is a Pod or Deployment of `kube-system` labelled `k8s-app: kube-dns`.
/// Where the DNS pod listens: every IPv4 address, or every address of both families (one
/// dual-stack socket) on a lab with an IPv6 service range.
fn dns_listen_ip(config: &ClusterConfig) -> IpAddr {
    if config.service_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

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

/// The published cluster and its generation (generation 0 and an empty cluster before the
/// first is published).
fn published(store: &Store, config: &ClusterConfig) -> Result<(u64, ClusterState), LabError> {
    let (generation, resolved) = match store.read_cluster()? {
        Some(c) => (c.generation, c.resolved),
        None => (0, Vec::new()),
    };
    let state =
        ClusterState::new(objects::decode_all(resolved)?, config.clone()).map_err(|source| {
            LabError::InvalidState {
                source: Box::new(source),
            }
        })?;
    Ok((generation, state))
}

/// Publishes every new generation of the cluster to the server; completes when the lab's
/// state directory is gone (`lab down`), which stops the server.
async fn follow(
    store: Store,
    config: ClusterConfig,
    mut seen: u64,
    tx: watch::Sender<Arc<ClusterState>>,
) {
    let path = store.cluster_path();
    // `cluster.json` is replaced (written aside, then renamed) on every change, so an unchanged
    // modification time means nothing to parse. None: load once to compare generations.
    let mut loaded: Option<SystemTime> = None;
    loop {
        tokio::time::sleep(POLL).await;
        if !store.exists() {
            return;
        }
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if stamp.is_none() || stamp == loaded {
            continue;
        }
        let (store, config) = (store.clone(), config.clone());
        match tokio::task::spawn_blocking(move || published(&store, &config)).await {
            Ok(Ok((generation, state))) => {
                loaded = stamp;
                if generation != seen {
                    seen = generation;
                    tx.send_replace(Arc::new(state));
                }
            }
            // The last good zone keeps being served; the next poll tries again.
            Ok(Err(e)) => tracing::error!(error = %e, "loading the published cluster failed"),
            Err(e) => tracing::error!(error = %e, "loading the published cluster failed"),
        }
    }
}

#[cfg(test)]
mod tests {
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
        let objects = with_cluster_dns(Vec::new(), &config).expect("built-ins");
        assert_eq!(
            ids(&objects),
            [
                "Deployment/kube-system/coredns",
                "Service/kube-system/kube-dns"
            ]
        );
        let state = ClusterState::new(objects, config.clone()).expect("valid");
        let svc = state
            .service(&netd_model::ServiceRef::new(DNS_NAMESPACE, DNS_SERVICE))
            .expect("kube-dns");
        assert_eq!(svc.cluster_ips, vec![config.dns_service_ip]);
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol, p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns", netd_model::Protocol::Udp, 53),
                ("dns-tcp", netd_model::Protocol::Tcp, 53)
            ]
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
        let objects = with_cluster_dns(own.clone(), &config).expect("built-ins");
        assert_eq!(ids(&objects), ids(&own));

        // The same label elsewhere is not the cluster's DNS.
        let elsewhere = netd_testkit::objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: default, labels: {k8s-app: kube-dns}}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        let objects = with_cluster_dns(elsewhere, &config).expect("built-ins");
        assert_eq!(objects.len(), 3);
    }

    #[test]
    fn the_workload_label_picks_the_dns_server() {
        let state = ClusterState::new(
            netd_testkit::objects(
                r#"
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {kube-netd.io/workload: dns}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {kube-netd.io/workload: echo}}
spec: {containers: [{name: c, image: i}]}
"#,
            ),
            ClusterConfig::default(),
        )
        .expect("valid");
        let dns: Vec<String> = state
            .pods()
            .filter(|p| runs_dns(p))
            .map(|p| p.key.to_string())
            .collect();
        assert_eq!(dns, ["kube-system/dns"]);
    }
}
