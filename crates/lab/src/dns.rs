//! Cluster DNS in the lab: the DNS server that the Pods of the cluster DNS add-on
//! (`kube-system/kube-dns` and its `coredns` Deployment, see [`netd_controlplane::addons`],
//! which every lab gets unless its manifests bring their own) run instead of the echo server.
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
use netd_model::{ClusterConfig, ClusterState, PodRef, view};
use tokio::sync::watch;

use crate::store::Store;
use crate::{LabError, objects};

pub use netd_controlplane::addons::{
    DNS_APP_LABEL, DNS_DEPLOYMENT, DNS_METRICS_PORT as METRICS_PORT, DNS_NAMESPACE, DNS_SERVICE,
    DNS_WORKLOAD, WORKLOAD_LABEL,
};

/// How often the DNS server looks for a new generation of the cluster.
const POLL: Duration = Duration::from_millis(100);

/// Whether `pod` runs the cluster DNS server rather than the echo server.
pub fn runs_dns(pod: &view::Pod) -> bool {
    pod.labels.get(WORKLOAD_LABEL).map(String::as_str) == Some(DNS_WORKLOAD)
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
        // The lab serves all three paths on its one metrics port.
        health_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
        ready_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT))),
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

/// Where the DNS pod listens: every IPv4 address, or every address of both families (one
/// dual-stack socket) on a lab with an IPv6 service range.
fn dns_listen_ip(config: &ClusterConfig) -> IpAddr {
    if config.service_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
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
