//! # netd-source: where cluster state comes from
//!
//! One seam between "what the cluster is" and everything that reads it (agent, DNS, lab): a
//! [`Store`] fed Kubernetes watch events that produces the same [`netd_model::ClusterState`]
//! the manifest and lab paths build, a [`runner`] that turns its changes into level-triggered
//! syncs, and the API-server [`watch`] that feeds it through kube-rs.
//!
//! Start with [`Store`]: a plain synchronous value (tests feed it scripted
//! [`kube::runtime::watcher::Event`]s), then [`run`](runner::run), then [`watch_cluster`].
//!
//! - [`store`]: [`Store`], [`SharedStore`], [`Watched`] (the six kinds it is fed; the
//!   fewer of [`Store::for_dns`] for cluster DNS).
//! - [`prune`]: what is kept of each object, and what is left out ([`Purpose`]).
//! - [`runner`]: [`run`](runner::run), [`RunnerConfig`], [`SyncRequest`].
//! - [`watch`]: [`watch_cluster`], the kube-rs watchers; [`watch_dns`] for cluster DNS.
//! - [`dns`]: [`serve_dns`], cluster DNS from the API server (`kube-netd dns`, and the lab's
//!   DNS Pods): the watches feeding a [`netd_dns::DnsServer`] one changed object at a time.
//! - [`connect`]: [`ApiOptions`] (`--kubeconfig`, `--master`, in-cluster).
//! - [`error`]: what can fail, [`SourceError`].
//!
//! ```no_run
//! # async fn agent() -> Result<(), netd_source::SourceError> {
//! use netd_source::{ApiOptions, RunnerConfig, SharedStore, Store};
//!
//! let client = ApiOptions::default().client().await?;
//! let store = SharedStore::new(Store::new(netd_model::ClusterConfig::default()));
//! tokio::spawn(netd_source::watch_cluster(client, store.clone()));
//! netd_source::runner::run(
//!     store,
//!     RunnerConfig::default(),
//!     |request| async move {
//!         println!("{} sync of generation {}", request.reason, request.generation);
//!         Ok::<(), std::io::Error>(())
//!     },
//!     std::future::pending(),
//! )
//! .await;
//! # Ok(())
//! # }
//! ```

pub mod connect;
pub mod dns;
pub mod error;
pub mod prune;
pub mod runner;
pub mod store;
pub mod watch;

pub use connect::ApiOptions;
pub use dns::serve_dns;
pub use error::SourceError;
pub use prune::Purpose;
pub use runner::{RunnerConfig, SyncReason, SyncRequest};
pub use store::{SharedStore, Snapshot, Store, WATCHED_KINDS, Watched, dns_kinds};
pub use watch::{watch_cluster, watch_dns};
