//! Cluster DNS fed by the API server: the watch path `kube-netd dns` runs on a cluster and
//! the lab's DNS Pods run against the lab's API.
//!
//! [`serve_dns`] watches what the zone needs ([`Store::for_dns`], [`watch_dns`]) and feeds a
//! bound [`DnsServer`] from the store ([`feed_changes`]): cluster names get SERVFAIL until
//! every kind's first list is complete; then the zone is built once from a snapshot and
//! follows each changed object as an upsert or a delete, with no rebuild per change. The
//! store keeps its views through API outages, so the last zone keeps answering.

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use netd_dns::{DnsError, DnsServer, ZoneUpdate};
use netd_model::{ClusterConfig, ClusterState};
use tokio::sync::mpsc;

use crate::store::{SharedStore, Store};
use crate::watch::watch_dns;

/// How many zone updates may wait for the server: a burst beyond it waits in the store.
pub const FEED_QUEUE: usize = 1024;

/// Serves cluster DNS from `server` (already bound) for the cluster `client` reaches, until
/// `shutdown` completes: watches Namespaces, Services and EndpointSlices (and Pods when
/// `pods`, for verified pod records) into a store of `config`'s cluster, and feeds the
/// server from it. The server is made [`DnsServer::awaiting_sync`]: until the first lists
/// are complete an empty cluster stands in, cluster names get SERVFAIL and `/ready` 503.
pub async fn serve_dns(
    server: DnsServer,
    client: Client,
    config: ClusterConfig,
    pods: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let store = SharedStore::new(Store::for_dns(config, pods));
    let (tx, rx) = mpsc::channel(FEED_QUEUE);
    let watches = tokio::spawn(watch_dns(client, store.clone(), pods));
    let feed = tokio::spawn(feed_changes(store, tx));
    let stand_in = Arc::new(ClusterState::default());
    let result = server
        .awaiting_sync()
        .run_updates(stand_in, rx, shutdown)
        .await;
    watches.abort();
    feed.abort();
    result
}

/// Feeds a server from `store` until the receiver of `tx` goes away: once every first list
/// is complete, one snapshot (the zone is built from it and cluster names are answered from
/// then on); after that, each object whose kept form changed ([`Store::take_changes`],
/// relists included), as an upsert or a delete the zone applies alone.
pub async fn feed_changes(store: SharedStore, tx: mpsc::Sender<ZoneUpdate>) {
    let mut changed = store.subscribe();
    let mut synced = false;
    loop {
        let updates = store.with(|s| {
            if !s.ready() {
                return Vec::new();
            }
            if !synced {
                // The snapshot covers every change so far (taking it clears the log).
                return match s.take_snapshot() {
                    Ok(snapshot) => vec![ZoneUpdate::Snapshot(Arc::new(snapshot.state))],
                    Err(e) => {
                        tracing::warn!(error = %e, "no snapshot of a ready store");
                        Vec::new()
                    }
                };
            }
            s.take_changes()
                .into_iter()
                .map(|(id, now)| match now {
                    Some(object) => ZoneUpdate::Upsert(Box::new(object)),
                    None => ZoneUpdate::Delete(id),
                })
                .collect()
        });
        for update in updates {
            synced |= matches!(update, ZoneUpdate::Snapshot(_));
            if tx.send(update).await.is_err() {
                return;
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Watched;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use kube::core::PartialObjectMeta;
    use kube::runtime::watcher::Event;
    use netd_dns::ServeConfig;
    use serde_json::json;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("test object")
    }

    fn service(name: &str, ip: &str) -> core::Service {
        object(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]},
        }))
    }

    fn list<K: Watched>(store: &SharedStore, objects: Vec<K>) {
        store.apply(Event::<K>::Init);
        for o in objects {
            store.apply(Event::InitApply(o));
        }
        store.apply(Event::<K>::InitDone);
    }

    /// `dig` at the server: the status and the short answers.
    async fn dig(server: SocketAddr, name: &str) -> (String, Vec<String>) {
        let out = tokio::process::Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .args([
                "-p",
                &server.port().to_string(),
                "+time=2",
                "+tries=1",
                name,
            ])
            .output()
            .await
            .expect("dig is installed (dnsutils)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .to_owned();
        let answers = text
            .lines()
            .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect();
        (status, answers)
    }

    /// Asks until the status is `status` (the zone is rebuilt in the background).
    async fn wait_for(server: SocketAddr, name: &str, status: &str) -> Vec<String> {
        let mut last = (String::new(), Vec::new());
        for _ in 0..200 {
            last = dig(server, name).await;
            if last.0 == status {
                return last.1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name}: {status} never came, last {last:?}");
    }

    #[tokio::test]
    async fn scripted_watch_events_change_the_answers() {
        let store = SharedStore::new(Store::for_dns(ClusterConfig::default(), false));
        let server = DnsServer::bind(ServeConfig::new("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind")
            .awaiting_sync();
        let dns = server.local_addr();
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let feed = tokio::spawn(feed_changes(store.clone(), tx));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving =
            tokio::spawn(
                server.run_updates(Arc::new(ClusterState::default()), rx, async {
                    let _ = stopped.await;
                }),
            );
        let web = "web.default.svc.cluster.local";

        // Lists under way: nothing about the cluster is answered yet.
        list(
            &store,
            vec![object::<PartialObjectMeta<core::Namespace>>(
                json!({"metadata": {"name": "default"}}),
            )],
        );
        list(&store, vec![service("web", "10.96.0.20")]);
        assert_eq!(dig(dns, web).await.0, "SERVFAIL");

        // The last first list completes: answers.
        list::<discovery::EndpointSlice>(&store, vec![]);
        assert_eq!(wait_for(dns, web, "NOERROR").await, ["10.96.0.20"]);

        // An update moves the answer; another Service appears beside it.
        store.apply(Event::Apply(service("web", "10.96.0.21")));
        store.apply(Event::Apply(service("db", "10.96.0.30")));
        let db = "db.default.svc.cluster.local";
        for _ in 0..200 {
            if dig(dns, web).await.1 == ["10.96.0.21"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(dig(dns, web).await.1, ["10.96.0.21"]);
        assert_eq!(wait_for(dns, db, "NOERROR").await, ["10.96.0.30"]);

        // A delete: NXDOMAIN, and nothing else changes.
        store.apply(Event::Delete(service("web", "10.96.0.21")));
        wait_for(dns, web, "NXDOMAIN").await;
        assert_eq!(dig(dns, db).await.1, ["10.96.0.30"]);

        // A relist without db (deleted while the watch was away): gone too.
        list::<core::Service>(&store, vec![]);
        wait_for(dns, db, "NXDOMAIN").await;

        let _ = stop.send(());
        serving.await.expect("join").expect("clean shutdown");
        feed.abort();
    }
}
