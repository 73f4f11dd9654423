//! [`run`]: the level-triggered sync loop between a [`SharedStore`] and whatever programs
//! the node (or serves DNS).
//!
//! Like kube-proxy's bounded-frequency runner: changes wake it, a burst of them is coalesced
//! into one sync, at least `min_sync_period` passes between the end of one sync and the start
//! of the next, and a sync runs every `sync_period` even when nothing changed (kube-proxy's
//! defaults: 1 s and 30 s). After a failed sync the next one, at the latest `sync_period`
//! later, is full. Nothing is synced before every kind has completed its first list.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use netd_model::{ClusterState, Kind};
use tokio::time::{Instant, sleep_until};

use crate::store::SharedStore;

/// How often the runner syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// The least time between the end of one sync and the start of the next
    /// (kube-proxy's `--min-sync-period`, default 1 s).
    pub min_sync_period: Duration,
    /// The most time between two syncs, and the delay before retrying a failed one
    /// (kube-proxy's `--sync-period`, default 30 s).
    pub sync_period: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// Why a sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncReason {
    /// The first sync, once every kind has been listed.
    Initial,
    /// The store changed.
    Changed,
    /// `sync_period` passed without a change.
    Periodic,
    /// The previous sync failed.
    Retry,
}

impl SyncReason {
    /// The spelling in logs: `initial`, `changed`, `periodic`, `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncReason::Initial => "initial",
            SyncReason::Changed => "changed",
            SyncReason::Periodic => "periodic",
            SyncReason::Retry => "retry",
        }
    }
}

impl fmt::Display for SyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call of the sync callback.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    /// The whole cluster, as the store had it when the sync started.
    pub state: Arc<ClusterState>,
    /// The store's generation the snapshot was taken at.
    pub generation: u64,
    /// Per kind, the highest resourceVersion among the events the snapshot includes: what
    /// a successful sync has programmed up to.
    pub versions: BTreeMap<Kind, u64>,
    /// Why it runs.
    pub reason: SyncReason,
}

impl SyncRequest {
    /// Whether everything should be rewritten rather than only what changed: every sync
    /// but one caused by a change after a successful sync.
    pub fn full(&self) -> bool {
        self.reason != SyncReason::Changed
    }
}

/// Runs the sync loop until `shutdown` completes: `sync` is called with each snapshot, as
/// described in the [module documentation](self). A sync's error is logged and makes the
/// next sync a full one; a snapshot the store cannot build counts as a failed sync.
pub async fn run<F, Fut, E>(
    store: SharedStore,
    config: RunnerConfig,
    mut sync: F,
    shutdown: impl Future<Output = ()>,
) where
    F: FnMut(SyncRequest) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    let mut changes = store.subscribe();
    let mut last: Option<Last> = None;
    tokio::pin!(shutdown);
    // The store may have been ready before the loop started: look at it once at once.
    let mut look_now = true;
    loop {
        let deadline = last.map(|l| l.end + config.sync_period);
        let timer_fired = !std::mem::take(&mut look_now)
            && tokio::select! {
                biased;
                () = &mut shutdown => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // Every sender is gone: no change can come any more.
                        return;
                    }
                    false
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => true,
            };
        if let Some(l) = last {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = sleep_until(l.end + config.min_sync_period) => {}
            }
        }
        let taken = store.with(|s| {
            (s.ready() && (timer_fired || s.is_dirty() || last.is_none()))
                .then(|| s.take_snapshot())
        });
        let Some(taken) = taken else { continue };
        let reason = match last {
            None => SyncReason::Initial,
            Some(l) if l.failed => SyncReason::Retry,
            Some(_) if timer_fired => SyncReason::Periodic,
            Some(_) => SyncReason::Changed,
        };
        let failed = match taken {
            Ok(snapshot) => {
                let request = SyncRequest {
                    state: Arc::new(snapshot.state),
                    generation: snapshot.generation,
                    versions: snapshot.versions,
                    reason,
                };
                match sync(request).await {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::warn!(%reason, error = %e, "sync failed; the next sync is full");
                        true
                    }
                }
            }
            Err(e) => {
                tracing::error!(%reason, error = %e, "no snapshot to sync");
                true
            }
        };
        last = Some(Last {
            end: Instant::now(),
            failed,
        });
    }
}

#[derive(Clone, Copy, Debug)]
struct Last {
    end: Instant,
    failed: bool,
}
