//! The crate's error type.

use std::io;
use std::net::SocketAddr;

/// What went wrong starting a health, liveness or metrics server.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Binding a listening socket failed (port in use, address not on this host, ...).
    #[error("binding {addr} failed")]
    BindFailed {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Handing an already-bound socket to Tokio failed (reading its address, making it
    /// non-blocking or registering it with the reactor).
    #[error("preparing a bound listener for serving failed")]
    ListenerSetupFailed {
        /// The cause.
        #[source]
        source: io::Error,
    },
}
