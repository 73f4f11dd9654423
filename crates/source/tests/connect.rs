//! `--kubeconfig` and `--master` as kube-proxy reads them, into a kube-rs configuration.

use std::io::Write;

use netd_source::{ApiOptions, SourceError};

fn kubeconfig(server: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    write!(
        file,
        r#"apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {{server: "{server}"}}
users:
- name: admin
  user: {{token: secret-token}}
contexts:
- name: lab
  context: {{cluster: lab, user: admin, namespace: web}}
current-context: lab
"#
    )
    .expect("write kubeconfig");
    file
}

#[tokio::test]
async fn master_alone_is_the_server_with_no_credentials() {
    let options = ApiOptions {
        kubeconfig: None,
        master: Some("http://127.0.0.1:6443".to_owned()),
    };
    let config = options.kube_config().await.expect("config");
    assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:6443/");
    assert!(config.auth_info.token.is_none());
}

#[tokio::test]
async fn a_kubeconfig_gives_its_current_context_and_master_replaces_only_its_server() {
    let file = kubeconfig("https://10.0.0.1:6443");
    let mut options = ApiOptions {
        kubeconfig: Some(file.path().to_owned()),
        master: None,
    };
    let config = options.kube_config().await.expect("config");
    assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
    assert_eq!(config.default_namespace, "web");
    assert!(config.auth_info.token.is_some());

    options.master = Some("https://10.0.0.2:6443".to_owned());
    let config = options.kube_config().await.expect("config");
    assert_eq!(config.cluster_url.to_string(), "https://10.0.0.2:6443/");
    assert!(
        config.auth_info.token.is_some(),
        "the kubeconfig's credentials stay"
    );
}

#[tokio::test]
async fn bad_options_are_refused_naming_what_is_wrong() {
    let bad_master = ApiOptions {
        kubeconfig: None,
        master: Some("http://[::1".to_owned()),
    };
    let err = bad_master.kube_config().await.expect_err("not a URL");
    assert!(matches!(err, SourceError::InvalidMaster { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"--master "http://[::1" is not a valid URL"#
    );

    let missing = ApiOptions {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        master: None,
    };
    let err = missing.kube_config().await.expect_err("no file");
    assert_eq!(
        err.to_string(),
        "cannot read kubeconfig /nonexistent/kubeconfig"
    );
    // The cause is the file system's alone: it does not name the path again.
    let cause = std::error::Error::source(&err).expect("a cause");
    assert_eq!(cause.to_string(), "No such file or directory (os error 2)");
    assert!(cause.source().is_none());
}

#[tokio::test]
async fn neither_option_means_the_in_cluster_configuration() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        // Inside a pod the in-cluster configuration exists; what this test checks is the
        // refusal outside one.
        return;
    }
    let err = ApiOptions::default()
        .kube_config()
        .await
        .expect_err("not in a pod");
    assert!(
        matches!(err, SourceError::InClusterConfigFailed { .. }),
        "{err:?}"
    );
}
