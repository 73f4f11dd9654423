//! [`watch_cluster`]: kube-rs watches of the six kinds, feeding a [`SharedStore`]; and
//! [`watch_dns`], the fewer kinds cluster DNS reads.
//!
//! Each kind has its own `watcher` stream with kube-rs's default backoff: a failed list or
//! watch is retried, a dropped watch resumes from the last resourceVersion (bookmarks keep it
//! fresh), and a 410 Gone relists, after which objects deleted meanwhile are gone from the
//! store ([`crate::Store::apply`]). Namespaces are watched metadata-only: their labels are
//! all that is read. The Services and EndpointSlices of another proxy
//! (`service.kubernetes.io/service-proxy-name`) and finished Pods are not even sent.

use std::pin::pin;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use netd_model::view::SERVICE_PROXY_NAME_LABEL;

use crate::store::{SharedStore, Watched};

/// Pods that have finished hold no addresses: they are not even sent.
const RUNNING_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// Watches Namespaces, Nodes, Pods, Services, EndpointSlices and NetworkPolicies in every
/// namespace through `client`, applying each event to `store`, until the returned future is
/// dropped (the streams themselves never end: errors are logged and retried).
pub async fn watch_cluster(client: Client, store: SharedStore) {
    let not_proxied_elsewhere = format!("!{SERVICE_PROXY_NAME_LABEL}");
    let plain = watcher::Config::default();
    futures::join!(
        feed(
            watcher(
                Api::<PartialObjectMeta<core::Namespace>>::all(client.clone()),
                plain.clone(),
            ),
            &store,
        ),
        feed(
            watcher(Api::<core::Node>::all(client.clone()), plain.clone()),
            &store,
        ),
        feed(
            watcher(
                Api::<core::Pod>::all(client.clone()),
                plain.clone().fields(RUNNING_PODS),
            ),
            &store,
        ),
        feed(
            watcher(
                Api::<core::Service>::all(client.clone()),
                plain.clone().labels(&not_proxied_elsewhere),
            ),
            &store,
        ),
        feed(
            watcher(
                Api::<discovery::EndpointSlice>::all(client.clone()),
                plain.clone().labels(&not_proxied_elsewhere),
            ),
            &store,
        ),
        feed(
            watcher(Api::<networking::NetworkPolicy>::all(client), plain),
            &store,
        ),
    );
}

/// Watches what cluster DNS reads ([`crate::store::dns_kinds`]): Namespaces (metadata only),
/// Services and EndpointSlices, every one of them (a Service another proxy routes still has
/// its names), and running Pods when `pods` (for `pods verified`), applying each event to
/// `store` (made with [`crate::Store::for_dns`]) until the returned future is dropped.
/// Errors are logged and retried with kube-rs's backoff; the store keeps what it had, so a
/// DNS server fed from it goes on answering from the last zone during an API outage.
pub async fn watch_dns(client: Client, store: SharedStore, pods: bool) {
    let plain = watcher::Config::default();
    let pod_watch = async {
        if pods {
            feed(
                watcher(
                    Api::<core::Pod>::all(client.clone()),
                    plain.clone().fields(RUNNING_PODS),
                ),
                &store,
            )
            .await;
        }
    };
    futures::join!(
        feed(
            watcher(
                Api::<PartialObjectMeta<core::Namespace>>::all(client.clone()),
                plain.clone(),
            ),
            &store,
        ),
        feed(
            watcher(Api::<core::Service>::all(client.clone()), plain.clone()),
            &store,
        ),
        feed(
            watcher(
                Api::<discovery::EndpointSlice>::all(client.clone()),
                plain.clone(),
            ),
            &store,
        ),
        pod_watch,
    );
}

async fn feed<K: Watched>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    store: &SharedStore,
) {
    let mut events = pin!(events.default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                store.apply(event);
            }
            Err(e) => {
                tracing::warn!(kind = %K::KIND, error = %e, "watch failed; retrying after a backoff");
            }
        }
    }
}
