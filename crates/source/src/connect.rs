//! [`ApiOptions`]: how to reach the API server, with kube-proxy's `--kubeconfig` and
//! `--master` meanings, turned into a kube-rs [`kube::Config`] or [`kube::Client`].

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::SourceError;

/// Where the API server is and how to authenticate to it.
///
/// As kube-proxy: with neither option, the in-cluster configuration (the Pod's service
/// account); with `kubeconfig`, that file's current context (and only that file: no
/// `KUBECONFIG`, no `~/.kube/config`); with `master`, that URL as the server, replacing the
/// kubeconfig's if both are given (without a kubeconfig, no credentials are sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiOptions {
    /// `--kubeconfig`: the kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server's URL.
    pub master: Option<String>,
}

impl ApiOptions {
    /// The kube-rs configuration these options describe.
    pub async fn kube_config(&self) -> Result<kube::Config, SourceError> {
        let master = match &self.master {
            Some(m) => {
                Some(
                    m.parse::<http::Uri>()
                        .map_err(|source| SourceError::InvalidMaster {
                            master: m.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let Some(path) = &self.kubeconfig else {
            if let Some(url) = master {
                return Ok(kube::Config::new(url));
            }
            tracing::info!(
                "neither --kubeconfig nor --master given: using the in-cluster configuration"
            );
            return kube::Config::incluster()
                .map_err(|source| SourceError::InClusterConfigFailed { source });
        };
        let file = Kubeconfig::read_from(path).map_err(|source| match source {
            // kube's message repeats the path and the cause; the cause alone says it.
            kube::config::KubeconfigError::ReadConfig(source, _) => {
                SourceError::KubeconfigOpenFailed {
                    path: path.clone(),
                    source,
                }
            }
            source => SourceError::KubeconfigReadFailed {
                path: path.clone(),
                source,
            },
        })?;
        let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|source| SourceError::KubeconfigInvalid {
                path: path.clone(),
                source,
            })?;
        if let Some(url) = master {
            config.cluster_url = url;
        }
        Ok(config)
    }

    /// A client for [`ApiOptions::kube_config`]. Connecting happens on first use.
    pub async fn client(&self) -> Result<kube::Client, SourceError> {
        let config = self.kube_config().await?;
        kube::Client::try_from(config).map_err(|source| SourceError::ClientBuildFailed { source })
    }
}
