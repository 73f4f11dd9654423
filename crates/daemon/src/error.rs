//! [`DaemonError`]: what stops the agent loop before it runs.

/// Starting the agent failed; once it runs, a failed sync is logged and retried instead.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A health or metrics server could not be started.
    #[error("cannot serve {what}")]
    ServeFailed {
        /// `/healthz` or `/metrics`.
        what: &'static str,
        /// The cause.
        #[source]
        source: netd_healthcheck::HealthError,
    },
    /// The rules other proxy modes left in the namespace could not be removed.
    #[error("cannot remove the rules of other proxy modes")]
    RemoveOtherModesFailed(#[source] netd_agent::AgentError),
    /// `--iptables-localhost-nodeports` is on but `route_localnet` could not be turned on.
    #[error("cannot route 127.0.0.1 to nodePorts (--iptables-localhost-nodeports)")]
    RouteLocalnetFailed(#[source] netd_kernel::KernelError),
    /// No client for the API server (the kubeconfig or in-cluster configuration).
    #[error("cannot make a client for the API server")]
    ConnectFailed(#[source] netd_source::SourceError),
}
