//! The manifests in `deploy/`: each document loads into its Kubernetes type, the RBAC rules
//! grant exactly what the agent's watches need, the DaemonSet is shaped as kube-proxy's, and
//! the ConfigMap's KubeProxyConfiguration is accepted by `kube-netd agent --config`. The same
//! for `deploy/dns/`: list and watch of what `kube-netd dns` watches, a Deployment and the
//! kube-dns Service as CoreDNS's, and a configuration file `kube-netd dns` accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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

/// The (group, resource) pairs the ClusterRole in `file` grants; every rule must grant
/// exactly `verbs`, on no named object or URL.
fn granted(file: &str, verbs: &[&str]) -> BTreeSet<(String, String)> {
    let role: ClusterRole = of_kind(file, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let given: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(given, verbs.iter().copied().collect(), "{file}: {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                assert!(granted.insert((group.clone(), resource)), "granted twice");
            }
        }
    }
    granted
}

#[test]
fn the_cluster_role_grants_only_what_the_watches_read() {
    let granted = granted("rbac.yaml", &["get", "list", "watch"]);
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

/// The kustomization in `dir` (`""` for `deploy/`) lists every other manifest there.
fn assert_kustomization_lists_every_manifest(dir: &str) {
    let k: serde_yaml_ng::Value = one(&format!("{dir}kustomization.yaml"));
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("name").to_owned())
        .collect();
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(deploy(dir)).expect("deploy dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    assert_eq!(listed, present, "{dir}kustomization.yaml");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    assert_kustomization_lists_every_manifest("");
    assert_kustomization_lists_every_manifest("dns/");
}

#[test]
fn every_dns_manifest_loads_into_its_type() {
    let mut kinds = BTreeSet::new();
    for file in [
        "serviceaccount.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "poddisruptionbudget.yaml",
        "service.yaml",
    ] {
        let file = format!("dns/{file}");
        for doc in documents::<serde_yaml_ng::Value>(&file) {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            let decoded = match kind.as_str() {
                "ServiceAccount" => serde_yaml_ng::from_value::<ServiceAccount>(doc).map(drop),
                "ClusterRole" => serde_yaml_ng::from_value::<ClusterRole>(doc).map(drop),
                "ClusterRoleBinding" => {
                    serde_yaml_ng::from_value::<ClusterRoleBinding>(doc).map(drop)
                }
                "ConfigMap" => serde_yaml_ng::from_value::<ConfigMap>(doc).map(drop),
                "Deployment" => serde_yaml_ng::from_value::<Deployment>(doc).map(drop),
                "PodDisruptionBudget" => {
                    serde_yaml_ng::from_value::<PodDisruptionBudget>(doc).map(drop)
                }
                "Service" => serde_yaml_ng::from_value::<Service>(doc).map(drop),
                other => panic!("{file}: unexpected kind {other}"),
            };
            decoded.unwrap_or_else(|e| panic!("{file}: {kind}: {e}"));
            kinds.insert(kind);
        }
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    // The kinds kube-netd itself reads pass its loader: the API server's validation and
    // strict field decoding.
    let paths = [deploy("dns/deployment.yaml"), deploy("dns/service.yaml")];
    let loaded = netd_model::load::load(&paths, &netd_model::ClusterConfig::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(loaded.objects.len(), 2);
}

#[test]
fn the_dns_cluster_role_grants_only_list_and_watch_of_what_the_dns_watch_reads() {
    let granted = granted("dns/rbac.yaml", &["list", "watch"]);
    let needed = BTreeSet::from([
        group_resource::<Namespace>(),
        group_resource::<Pod>(),
        group_resource::<Service>(),
        group_resource::<EndpointSlice>(),
    ]);
    assert_eq!(granted, needed);
    // The kinds the DNS store waits for, Pods included (pods verified).
    let watched: BTreeSet<String> = netd_source::dns_kinds(true)
        .iter()
        .map(|k| k.resource().to_owned())
        .collect();
    let resources: BTreeSet<String> = needed.into_iter().map(|(_, r)| r).collect();
    assert_eq!(watched, resources);

    let account: ServiceAccount = one("dns/serviceaccount.yaml");
    let binding: ClusterRoleBinding = of_kind("dns/rbac.yaml", "ClusterRoleBinding");
    let role: ClusterRole = of_kind("dns/rbac.yaml", "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
}

/// (name, port, protocol) of each port, in order.
fn ports(ports: impl Iterator<Item = (Option<String>, i32, Option<String>)>) -> Vec<String> {
    ports
        .map(|(name, port, protocol)| {
            format!(
                "{} {port}/{}",
                name.unwrap_or_default(),
                protocol.unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn the_dns_deployment_and_service_are_shaped_as_corednss() {
    let deployment: Deployment = one("dns/deployment.yaml");
    let spec = deployment.spec.expect("spec");
    let template_labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        template_labels.get("k8s-app").map(String::as_str),
        Some("kube-dns")
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "upstreams from the node"
    );
    let account: ServiceAccount = one("dns/serviceaccount.yaml");
    assert_eq!(pod.service_account_name, account.metadata.name);
    let container = &pod.containers[0];
    let container_ports = ports(
        container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.container_port, p.protocol.clone())),
    );
    assert_eq!(
        container_ports,
        ["dns 53/UDP", "dns-tcp 53/TCP", "metrics 9153/TCP"]
    );
    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = p.and_then(|p| p.http_get.clone()).expect("httpGet probe");
        (get.path.unwrap_or_default(), get.port)
    };
    let liveness = probe(container.liveness_probe.as_ref());
    let readiness = probe(container.readiness_probe.as_ref());
    assert_eq!(liveness, ("/health".to_owned(), IntOrString::Int(8080)));
    assert_eq!(readiness, ("/ready".to_owned(), IntOrString::Int(8181)));

    // The command reads the ConfigMap's file, which kube-netd dns accepts, and whose
    // listeners are the ports the probes and the container declare.
    let command = container.command.clone().unwrap_or_default();
    assert_eq!(command.get(1).map(String::as_str), Some("dns"));
    let config_path = command
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config_path.starts_with(&m.mount_path))
        .expect("the config file is mounted");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("volume");
    let map: ConfigMap = one("dns/configmap.yaml");
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        map.metadata.name.as_deref()
    );
    let key = Path::new(config_path)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    let text = map
        .data
        .unwrap_or_default()
        .remove(key)
        .expect("the config file");
    let config = netd_dns::DnsConfig::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen.dns.port(), 53);
    assert_eq!(config.listen.health.map(|a| a.port()), Some(8080));
    assert_eq!(config.listen.ready.map(|a| a.port()), Some(8181));
    assert_eq!(config.listen.metrics.map(|a| a.port()), Some(9153));

    // The PodDisruptionBudget covers exactly these pods.
    let pdb: PodDisruptionBudget = one("dns/poddisruptionbudget.yaml");
    let pdb_selector = pdb
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.match_labels);
    assert_eq!(pdb_selector, spec.selector.match_labels);

    // kube-dns as CoreDNS's manifests name it, selecting these pods.
    let service: Service = one("dns/service.yaml");
    assert_eq!(service.metadata.name.as_deref(), Some("kube-dns"));
    assert_eq!(service.metadata.namespace.as_deref(), Some("kube-system"));
    let labels = service.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
    assert_eq!(
        labels.get("kubernetes.io/name").map(String::as_str),
        Some("CoreDNS")
    );
    let service_spec = service.spec.expect("spec");
    assert_eq!(service_spec.cluster_ip, None, "left to the installer");
    let selector = service_spec.selector.unwrap_or_default();
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "{selector:?} does not select {template_labels:?}"
    );
    let service_ports = ports(
        service_spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone())),
    );
    assert_eq!(service_ports, container_ports);
}

#[test]
fn kube_netd_dns_refuses_a_config_with_an_unknown_key_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dns.yaml");
    std::fs::write(
        &path,
        "zone: cluster.local
forwardTo: [192.0.2.1]
",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kube-netd"))
        .arg("dns")
        .arg(format!("--config={}", path.display()))
        .output()
        .expect("run kube-netd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forwardTo") && stderr.contains("dns.yaml"),
        "{stderr}"
    );
}
