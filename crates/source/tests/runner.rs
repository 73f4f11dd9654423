//! The sync runner on tokio's paused clock: when syncs happen, why, and from what.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use netd_model::ClusterConfig;
use netd_source::runner::run;
use netd_source::{RunnerConfig, SharedStore, Store, SyncReason};
use pretty_assertions::assert_eq;
use tokio::time::{Instant, sleep};

/// One sync as the callback saw it: when (ms since the test started), why, full or not,
/// and the Pods it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    at_ms: u128,
    reason: SyncReason,
    full: bool,
    pods: usize,
}

fn call(at_ms: u128, reason: SyncReason, pods: usize) -> Call {
    Call {
        at_ms,
        reason,
        full: reason != SyncReason::Changed,
        pods,
    }
}

/// A runner over a fresh store whose syncs are recorded; each sync takes `takes` and the
/// ones whose number (from 0) is in `failing` fail.
struct Harness {
    store: SharedStore,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(config: RunnerConfig, takes: Duration, failing: &'static [usize]) -> Harness {
        let store = SharedStore::new(Store::new(ClusterConfig::default()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let recorded = calls.clone();
        let task = tokio::spawn(run(
            store.clone(),
            config,
            move |request| {
                let recorded = recorded.clone();
                async move {
                    let n = {
                        let mut calls = recorded.lock().expect("calls");
                        calls.push(Call {
                            at_ms: start.elapsed().as_millis(),
                            reason: request.reason,
                            full: request.full(),
                            pods: request.state.pods().count(),
                        });
                        calls.len() - 1
                    };
                    sleep(takes).await;
                    if failing.contains(&n) {
                        return Err(std::io::Error::other("iptables-restore failed"));
                    }
                    Ok(())
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        Harness {
            store,
            calls,
            stop: Some(stop),
            task,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    fn add_pod(&self, n: usize) {
        let ip = format!("10.244.1.{}", n + 2);
        self.store
            .apply(Event::Apply(pod("web", &format!("p{n}"), &ip, "front", 1)));
    }

    fn list_all_but_pods(&self) {
        self.store.with(|s| {
            list::<PartialObjectMeta<core::Namespace>>(s, vec![]);
            list::<core::Node>(s, vec![]);
            list::<core::Service>(s, vec![]);
            list::<discovery::EndpointSlice>(s, vec![]);
            list::<networking::NetworkPolicy>(s, vec![]);
        });
    }

    fn list_pods(&self, n: usize) {
        let pods: Vec<core::Pod> = (0..n)
            .map(|i| {
                pod(
                    "web",
                    &format!("p{i}"),
                    &format!("10.244.1.{}", i + 2),
                    "front",
                    1,
                )
            })
            .collect();
        // Through the shared store, so the runner hears of it.
        self.store.apply(Event::<core::Pod>::Init);
        for p in pods {
            self.store.apply(Event::InitApply(p));
        }
        self.store.apply(Event::<core::Pod>::InitDone);
    }

    async fn stop(mut self) -> Vec<Call> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let calls = self.calls();
        self.task.await.expect("the runner ends when told");
        calls
    }
}

const NOW: Duration = Duration::ZERO;

#[tokio::test(start_paused = true)]
async fn nothing_is_synced_from_a_partial_list_and_the_first_sync_follows_the_last_list() {
    let h = Harness::start(RunnerConfig::default(), NOW, &[]);
    h.list_all_but_pods();
    // The pods' list is under way for ten seconds.
    h.store.apply(Event::<core::Pod>::Init);
    h.store
        .apply(Event::InitApply(pod("web", "a", "10.244.1.2", "front", 1)));
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.calls(), vec![]);
    h.store
        .apply(Event::InitApply(pod("web", "b", "10.244.1.3", "front", 1)));
    h.store.apply(Event::<core::Pod>::InitDone);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stop().await, vec![call(10_000, SyncReason::Initial, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_store_ready_before_the_runner_starts_is_synced_at_once() {
    let store = SharedStore::new(Store::new(ClusterConfig::default()));
    store.with(list_all_empty);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let runner = tokio::spawn(run(
        store,
        RunnerConfig::default(),
        move |request| {
            recorded.lock().expect("calls").push(request.reason);
            async { Ok::<(), std::io::Error>(()) }
        },
        sleep(Duration::from_secs(5)),
    ));
    runner.await.expect("runner");
    assert_eq!(*calls.lock().expect("calls"), vec![SyncReason::Initial]);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_coalesced_into_one_sync_per_min_sync_period() {
    let h = Harness::start(RunnerConfig::default(), NOW, &[]);
    h.list_all_but_pods();
    h.list_pods(0);
    sleep(Duration::from_millis(100)).await;
    for n in 0..10 {
        h.add_pod(n);
        sleep(Duration::from_millis(50)).await;
    }
    // Now at 600 ms; one more change after the coalesced sync.
    sleep(Duration::from_millis(600)).await;
    h.add_pod(10);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.stop().await,
        vec![
            call(0, SyncReason::Initial, 0),
            call(1_000, SyncReason::Changed, 10),
            call(2_000, SyncReason::Changed, 11),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn min_sync_period_counts_from_the_end_of_the_previous_sync() {
    let h = Harness::start(RunnerConfig::default(), Duration::from_millis(400), &[]);
    h.list_all_but_pods();
    h.list_pods(0);
    sleep(Duration::from_millis(100)).await;
    h.add_pod(0); // during the first sync, which ends at 400 ms
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        h.stop().await,
        vec![
            call(0, SyncReason::Initial, 0),
            call(1_400, SyncReason::Changed, 1),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn status_churn_causes_no_sync_and_a_full_resync_runs_every_sync_period() {
    let h = Harness::start(RunnerConfig::default(), NOW, &[]);
    h.list_all_but_pods();
    h.list_pods(1);
    // A Ready probe every second and a node heartbeat: no change the store keeps.
    for beat in 0..65 {
        h.store
            .apply(Event::Apply(pod("web", "p0", "10.244.1.2", "front", beat)));
        h.store.apply(Event::Apply(node(
            "node-1",
            "172.18.0.2",
            "10.244.1.0/24",
            beat,
        )));
        sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        h.stop().await,
        vec![
            // The node's first Apply (before the runner ran) is in the first sync.
            call(0, SyncReason::Initial, 1),
            call(30_000, SyncReason::Periodic, 1),
            call(60_000, SyncReason::Periodic, 1),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_sync_is_retried_in_full_after_sync_period() {
    let h = Harness::start(RunnerConfig::default(), NOW, &[0]);
    h.list_all_but_pods();
    h.list_pods(1);
    sleep(Duration::from_secs(31)).await;
    assert_eq!(
        h.stop().await,
        vec![
            call(0, SyncReason::Initial, 1),
            call(30_000, SyncReason::Retry, 1),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_after_a_failed_sync_brings_the_full_retry_forward() {
    let h = Harness::start(RunnerConfig::default(), NOW, &[1]);
    h.list_all_but_pods();
    h.list_pods(0);
    sleep(Duration::from_millis(500)).await;
    h.add_pod(0); // synced at 1 s, and that sync fails
    sleep(Duration::from_millis(1_500)).await;
    h.add_pod(1); // at 2 s: retried in full at once (1 s after the failure)
    sleep(Duration::from_secs(5)).await;
    h.add_pod(2); // a later change after the successful retry is partial again
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.stop().await,
        vec![
            call(0, SyncReason::Initial, 0),
            call(1_000, SyncReason::Changed, 1),
            call(2_000, SyncReason::Retry, 2),
            call(7_000, SyncReason::Changed, 3),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_periods_are_configurable() {
    let config = RunnerConfig {
        min_sync_period: Duration::from_millis(250),
        sync_period: Duration::from_secs(5),
    };
    let h = Harness::start(config, NOW, &[]);
    h.list_all_but_pods();
    h.list_pods(0);
    sleep(Duration::from_millis(10)).await;
    h.add_pod(0);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.stop().await,
        vec![
            call(0, SyncReason::Initial, 0),
            call(250, SyncReason::Changed, 1),
            call(5_250, SyncReason::Periodic, 1),
        ]
    );
}

#[test]
fn kube_proxys_defaults() {
    let d = RunnerConfig::default();
    assert_eq!(d.min_sync_period, Duration::from_secs(1));
    assert_eq!(d.sync_period, Duration::from_secs(30));
}
