//! The manifests in `deploy/`: each document loads into its Kubernetes type, the RBAC rules
//! grant exactly what the agent's watches need, the DaemonSet is shaped as kube-proxy's, and
//! the ConfigMap's KubeProxyConfiguration is accepted by `kube-netd agent --config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use netd_testkit::scratch::ScratchNetns;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// Every document of `file`, decoded into `T`.
fn documents<T: DeserializeOwned>(file: &str) -> Vec<T> {
    let text = std::fs::read_to_string(deploy(file)).expect("read manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml_ng::Value::deserialize(doc).expect("yaml");
            serde_yaml_ng::from_value(value).unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .collect()
}

/// The document of `kind` in `file`.
fn of_kind<T: DeserializeOwned>(file: &str, kind: &str) -> T {
    let doc = documents::<serde_yaml_ng::Value>(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    serde_yaml_ng::from_value(doc).unwrap_or_else(|e| panic!("{file}: {kind}: {e}"))
}

fn one<T: DeserializeOwned>(file: &str) -> T {
    let mut all = documents::<T>(file);
    assert_eq!(all.len(), 1, "{file}");
    all.remove(0)
}

fn group_resource<K: k8s_openapi::Resource>() -> (String, String) {
    (K::GROUP.to_owned(), K::URL_PATH_SEGMENT.to_owned())
}

#[test]
fn the_cluster_role_grants_only_what_the_watches_read() {
    let role: ClusterRole = of_kind("rbac.yaml", "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                assert!(granted.insert((group.clone(), resource)), "granted twice");
            }
        }
    }
    let needed = BTreeSet::from([
        group_resource::<Namespace>(),
        group_resource::<Node>(),
        group_resource::<Pod>(),
        group_resource::<Service>(),
        group_resource::<EndpointSlice>(),
        group_resource::<NetworkPolicy>(),
    ]);
    assert_eq!(granted, needed);
    // The same six kinds the store waits for.
    let watched: BTreeSet<String> = netd_source::WATCHED_KINDS
        .iter()
        .map(|k| k.resource().to_owned())
        .collect();
    let resources: BTreeSet<String> = needed.into_iter().map(|(_, r)| r).collect();
    assert_eq!(watched, resources);
}

#[test]
fn the_binding_gives_the_role_to_the_daemon_sets_account() {
    let account: ServiceAccount = one("serviceaccount.yaml");
    let binding: ClusterRoleBinding = of_kind("rbac.yaml", "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "kube-netd");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
    let ds: DaemonSet = one("daemonset.yaml");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name, account.metadata.name);
}

#[test]
fn the_daemon_set_is_shaped_as_kube_proxys() {
    let ds: DaemonSet = one("daemonset.yaml");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.privileged, Some(true));
    let probe = container.liveness_probe.as_ref().expect("liveness");
    let get = probe.http_get.as_ref().expect("httpGet");
    assert_eq!(get.path.as_deref(), Some("/livez"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
    );
    let mounts: BTreeSet<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains("/run/xtables.lock"), "{mounts:?}");
    assert!(mounts.contains("/lib/modules"), "{mounts:?}");
    let command = container.command.clone().unwrap_or_default();
    assert_eq!(command.get(1).map(String::as_str), Some("agent"));
}

#[test]
fn the_config_map_is_a_configuration_the_agent_accepts() {
    let map: ConfigMap = one("configmap.yaml");
    let config = map
        .data
        .unwrap_or_default()
        .remove("config.conf")
        .expect("config.conf");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.conf");
    std::fs::write(&path, config).expect("write config");
    // --cleanup parses the whole configuration, then only removes kube-netd's own objects:
    // run in a scratch namespace, so nothing outside it is touched.
    let ns = ScratchNetns::new("agt", "deploy");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_kube-netd")])
        .arg("agent")
        .arg(format!("--config={}", path.display()))
        .args(["--hostname-override=node-1", "--cleanup"])
        .output()
        .expect("run kube-netd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same file with a key kube-netd does not read is refused, by name.
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, format!("{text}conntrack:\n  maxPerCore: 0\n")).expect("write");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_kube-netd")])
        .arg("agent")
        .arg(format!("--config={}", path.display()))
        .args(["--hostname-override=node-1", "--cleanup"])
        .output()
        .expect("run kube-netd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conntrack"), "{stderr}");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k: serde_yaml_ng::Value = one("kustomization.yaml");
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("name").to_owned())
        .collect();
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(deploy("")).expect("deploy/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    assert_eq!(listed, present);
}
