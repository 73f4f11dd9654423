//! [`SourceError`]: what failed while reaching the API server or taking a snapshot.

use std::path::PathBuf;

use netd_model::Kind;

/// Reaching the API server or producing a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A snapshot was asked for before every kind had completed its first list.
    #[error("the cluster state is not synced yet: waiting for the first list of {}", kinds(.pending))]
    NotReady {
        /// The kinds whose first list has not completed.
        pending: Vec<Kind>,
    },
    /// Neither `--kubeconfig` nor `--master` was given and the in-cluster configuration
    /// (service account token, `KUBERNETES_SERVICE_HOST`) is not there.
    #[error(
        "cannot load the in-cluster configuration (give --kubeconfig or --master outside a pod)"
    )]
    InClusterConfigFailed {
        /// The cause.
        #[source]
        source: kube::config::InClusterError,
    },
    /// The kubeconfig file could not be opened or read.
    #[error("cannot read kubeconfig {}", .path.display())]
    KubeconfigOpenFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig file could not be parsed.
    #[error("cannot read kubeconfig {}", .path.display())]
    KubeconfigReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig file was read but its current context does not make a configuration.
    #[error("cannot use kubeconfig {}", .path.display())]
    KubeconfigInvalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `--master` is not a URL.
    #[error("--master {master:?} is not a valid URL")]
    InvalidMaster {
        /// What was given.
        master: String,
        /// The cause.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The HTTP client could not be built from the configuration.
    #[error("cannot build the API client")]
    ClientBuildFailed {
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

fn kinds(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.resource())
        .collect::<Vec<_>>()
        .join(", ")
}
