//! # netd-apiserver: the Kubernetes REST API over kube-netd's objects
//!
//! A small API server that kubectl (and any Kubernetes client) talks to as to a real one:
//! discovery, get, list and watch (label and field selectors, resourceVersions, bookmarks,
//! 410 Gone past the history), create, update with optimistic concurrency, delete, JSON merge
//! and strategic merge patches, server-side apply, the Deployment scale subresource, and
//! server-side printing (`Table`) for `kubectl get`. Plain HTTP on a local port, no
//! authentication: it is the lab's control-plane endpoint, not a production server.
//!
//! Start with [`Registry`] (every object, its resourceVersion and history, validated through
//! the loader's validation) over a [`Storage`] ([`FileStorage`], or the lab's state directory),
//! then serve it with [`ApiServer::start`] and point kubectl at it with [`write_kubeconfig`].
//!
//! - [`store`]: [`Registry`], [`Storage`], [`FileStorage`], watch [`Event`]s.
//! - [`server`]: the HTTP server and its routes.
//! - [`patch`]: merge patch, strategic merge patch, server-side apply's field sets.
//! - [`table`]: the `Table` columns of each kind.
//! - [`resource`]: the served resources and the discovery documents.
//! - [`openapi`]: the OpenAPI v3 documents kubectl reads before a write.
//! - [`error`]: [`ApiError`] and the `Status` objects it becomes; [`StorageError`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use netd_apiserver::{ApiServer, FileStorage, Registry, write_kubeconfig};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let storage = FileStorage::new("/tmp/objects")?;
//! let registry = Registry::new(Box::new(storage), Default::default(), 1000)?;
//! let server = ApiServer::start(Arc::new(registry), "127.0.0.1:0".parse()?)?;
//! write_kubeconfig("/tmp/kubeconfig".as_ref(), "lab", &server.url())?;
//! // KUBECONFIG=/tmp/kubeconfig kubectl get pods -A
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod openapi;
pub mod patch;
mod proto;
pub mod resource;
pub mod server;
pub mod store;
pub mod table;

pub use error::{ApiError, ServeError, StorageError};
pub use server::{ApiServer, ServeOptions, write_kubeconfig};
pub use store::{Commit, Event, EventType, FileStorage, Registry, Storage, Stored, WriteOptions};
