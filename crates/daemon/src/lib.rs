//! # netd-daemon: the agent loop a Node runs
//!
//! What `kube-netd agent` does once its flags are read, as a library so that anything that
//! stands for a Node (the binary on a real one, the lab's Node processes) runs the same loop:
//! kube-proxy's health (`/healthz`, `/livez`, `healthCheckNodePort`s) and metrics servers,
//! the API watches into a [`netd_source::Store`], and [`netd_source::runner::run`] calling a
//! [`netd_agent::Backend`] with each snapshot, in the network namespace the process runs in.
//!
//! Start with [`serve`] and its [`AgentConfig`].
//!
//! - [`agent`]: [`serve`], [`AgentConfig`]; the health and enforcement wiring of each sync.
//! - `metrics` (private): kube-proxy's sync metrics and the changes between two programmed
//!   states they count.
//! - [`error`]: what can fail, [`DaemonError`].
//!
//! ```no_run
//! # async fn node(config: netd_daemon::AgentConfig) -> Result<(), netd_daemon::DaemonError> {
//! use netd_agent::{BackendConfig, Mode};
//!
//! let backend = netd_agent::backend(&BackendConfig {
//!     mode: Mode::Iptables,
//!     program: config.program.clone(),
//!     ipvs: Default::default(),
//! });
//! netd_daemon::serve(config, backend, std::future::pending()).await
//! # }
//! ```

pub mod agent;
pub mod error;
mod metrics;

pub use agent::{AgentConfig, serve};
pub use error::DaemonError;
