//! Cluster DNS in the lab: the DNS server that the Pods of the cluster DNS add-on
//! (`kube-system/kube-dns` and its `coredns` Deployment, see [`netd_controlplane::addons`],
//! which every lab gets unless its manifests bring their own) run instead of the echo server.
//!
//! A Pod runs the DNS server when it carries the label [`WORKLOAD_LABEL`]` = `[`DNS_WORKLOAD`]
//! (the built-in Deployment's Pods do). The server is the one `kube-netd dns` runs on a
//! cluster ([`netd_source::serve_dns`]): it watches the lab's Kubernetes API (the lab's
//! kubeconfig, [`crate::Lab::kubeconfig`]) and follows each change of a Service,
//! EndpointSlice or Namespace as it is written, with no zone rebuild per change.
//!
//! The API listens on this machine's `127.0.0.1`, which a Pod's namespace cannot reach, so
//! the process starts in the namespace the agent runs in and keeps its API client there; only
//! its listeners are opened inside the Pod's namespace, from a thread that enters it
//! ([`netd_dns::DnsServer::bind_with`]): UDP and TCP 53, and `/metrics`, `/health`, `/ready`
//! on TCP 9153. It has no upstream: a name outside the cluster zone gets SERVFAIL at once, so
//! no query leaves the machine. Pods reach it as they reach any Service, through the Service
//! rules for `10.96.0.10`.
//!
//! `lab up` starts the lab's API server before the agents, so a DNS Pod finds the kubeconfig
//! when it starts. In a lab without an API server ([`crate::LabOptions::api_server`] off) a
//! DNS Pod waits for one, answering SERVFAIL for cluster names and `/ready` 503 meanwhile,
//! as `kube-netd dns` does before its first lists are complete.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use netd_dns::{DnsServer, DomainName, ForwardConfig, PodMode, ServeConfig, ZoneConfig};
use netd_kernel::netns;
use netd_model::{ClusterConfig, view};
use netd_source::ApiOptions;

use crate::LabError;
use crate::store::Store;

pub use netd_controlplane::addons::{
    DNS_APP_LABEL, DNS_DEPLOYMENT, DNS_METRICS_PORT as METRICS_PORT, DNS_NAMESPACE, DNS_SERVICE,
    DNS_WORKLOAD, WORKLOAD_LABEL,
};

/// How often the server looks for the lab's kubeconfig (before the API server has written
/// it) and for the lab's state directory (gone: the lab is down, and the server stops).
const POLL: Duration = Duration::from_millis(100);

/// Whether `pod` runs the cluster DNS server rather than the echo server.
pub fn runs_dns(pod: &view::Pod) -> bool {
    pod.labels.get(WORKLOAD_LABEL).map(String::as_str) == Some(DNS_WORKLOAD)
}

/// Runs the cluster DNS server of the Pod `pod` of the lab whose state is in `state_dir`,
/// with its listeners in the network namespace `pod_netns`, until that directory disappears.
/// Writes `ready` to stdout once its sockets are bound, as the echo server does.
pub(crate) fn serve(
    state_dir: &Path,
    pod: &netd_model::PodRef,
    pod_netns: &str,
) -> Result<(), LabError> {
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
        // The lab serves all three paths on its one metrics port.
        health_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
        ready_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
    };
    let pods = serve_config.zone.pods == PodMode::Verified;
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
        let ns = pod_netns.to_owned();
        let server = DnsServer::bind_with(serve_config, move || {
            netns::enter(&ns).map_err(std::io::Error::other)
        })
        .await
        .map_err(failed)?;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ready");
        let _ = stdout.flush();
        let kubeconfig = store.kubeconfig_path();
        tokio::select! {
            () = until(|| kubeconfig.exists()) => {}
            // Down before it had an API server: nothing to serve.
            () = until(|| !store.exists()) => return Ok(()),
        }
        let client = ApiOptions {
            kubeconfig: Some(kubeconfig),
            master: None,
        }
        .client()
        .await
        .map_err(|source| LabError::DnsApiFailed {
            pod: pod.clone(),
            source: Box::new(source),
        })?;
        netd_source::serve_dns(server, client, config, pods, until(|| !store.exists()))
            .await
            .map_err(failed)
    })
}

/// Completes once `done` holds, looking every [`POLL`].
async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(POLL).await;
    }
}

/// Where the DNS pod listens: every IPv4 address, or every address of both families (one
/// dual-stack socket) on a lab with an IPv6 service range.
fn dns_listen_ip(config: &ClusterConfig) -> IpAddr {
    if config.service_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_model::ClusterState;

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
