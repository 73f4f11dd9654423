//! [`DnsError`]: what can go wrong serving DNS.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A failure of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The DNS listen address could not be bound (UDP or TCP).
    #[error("binding the DNS listener on {addr}")]
    BindFailed {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread that binds the listeners could not be prepared (see
    /// [`crate::DnsServer::bind_with`]).
    #[error("preparing the thread that binds the listeners")]
    BindPrepareFailed {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metrics and health listener could not be bound.
    #[error("binding the metrics listener on {addr}")]
    MetricsBindFailed {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A resolv.conf could not be read.
    #[error("reading {path}")]
    ResolvConfReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Building the zone did not complete (it panicked, or the runtime is shutting down).
    #[error("building the cluster zone")]
    ZoneBuildFailed {
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The server's sockets stopped serving before shutdown was asked for.
    #[error("serving DNS")]
    ServeFailed {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A loop probe sent to an upstream came back to this server: forwarding would loop.
    #[error(
        "forwarding loop detected: the probe {probe:?} sent to upstream {upstream} came back to this server; give upstreams (or a resolv.conf) that do not forward to this server"
    )]
    ForwardingLoop {
        /// The upstream the probe was sent to.
        upstream: SocketAddr,
        /// The probe question.
        probe: String,
    },
    /// A loop probe name could not be made.
    #[error("making a loop probe name")]
    LoopProbeFailed {
        /// The cause.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The configuration file could not be read.
    #[error("reading the configuration file {path}")]
    ConfigReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not a valid configuration.
    #[error("invalid configuration file {path}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field named (boxed: it is large and rare).
        #[source]
        source: Box<crate::config::ConfigError>,
    },
}
