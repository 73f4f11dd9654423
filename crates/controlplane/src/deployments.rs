//! The Deployment and ReplicaSet controllers, folded into one: each Deployment becomes
//! `replicas` Pods named `<deployment>-<pod-template-hash>-<suffix>`, owned (as upstream's
//! are) by the ReplicaSet `<deployment>-<pod-template-hash>`, which `views` derives for
//! reading.
//!
//! The hash is upstream's: FNV-32a over the printed template (upstream prints it with spew,
//! we with `Debug`; both are deterministic dumps of the same fields) and the collision count,
//! encoded with the safe alphabet. Upstream draws the suffix at random; ours is derived from
//! the Deployment and the replica's index, so a Pod keeps its name from run to run and when
//! the Deployment is scaled.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use netd_model::{DeploymentRef, FieldError, FieldPath};

use crate::error::ResolveError;
use crate::names;

/// The label the Deployment controller adds to its Pods (and the ReplicaSet's name ends with).
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Upstream's `ComputeHash`: FNV-32a over the template and, if set, the collision count,
/// printed in decimal and safe-encoded.
pub(crate) fn pod_template_hash(
    template: &core::PodTemplateSpec,
    collision_count: Option<i32>,
) -> String {
    let mut data = format!("{template:?}").into_bytes();
    if let Some(c) = collision_count {
        // Upstream writes the count as a little-endian uint32 into an 8-byte buffer.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&c.to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    names::safe_encode(&names::fnv32a(&data).to_string())
}

/// The Pods of one Deployment, in replica order.
pub(crate) fn expand(d: &apps::Deployment) -> Result<Vec<core::Pod>, ResolveError> {
    let namespace = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = d.metadata.name.clone().unwrap_or_default();
    let key = DeploymentRef::new(&namespace, &name);
    let default_spec = apps::DeploymentSpec::default();
    let spec = d.spec.as_ref().unwrap_or(&default_spec);
    let replicas = spec.replicas.unwrap_or(1);
    let replicas = usize::try_from(replicas).map_err(|_| ResolveError::ExpandDeploymentFailed {
        deployment: key.clone(),
        source: Box::new(FieldError::invalid(
            FieldPath::new("spec.replicas"),
            replicas,
            "must be greater than or equal to 0",
        )),
    })?;
    let template = &spec.template;
    let hash = pod_template_hash(template, d.status.as_ref().and_then(|s| s.collision_count));
    let replica_set = format!("{name}-{hash}");
    let base = format!("{replica_set}-");
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.clone().unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash.clone());
    // Upstream's Pods belong to the ReplicaSet the Deployment made (see `views`).
    let owner = OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "ReplicaSet".to_owned(),
        name: replica_set.clone(),
        uid: names::uid("ReplicaSet", &namespace, &replica_set),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut taken = HashSet::new();
    let mut pods = Vec::with_capacity(replicas);
    for index in 0..replicas {
        let index = index.to_string();
        let pod_name = (0u32..)
            .map(|attempt| {
                let attempt = attempt.to_string();
                names::generate_name(
                    &base,
                    &names::suffix(&[&namespace, &name, &index, &attempt]),
                )
            })
            .find(|n| !taken.contains(n))
            .unwrap_or_default();
        taken.insert(pod_name.clone());
        pods.push(core::Pod {
            metadata: ObjectMeta {
                uid: Some(names::uid("Pod", &namespace, &pod_name)),
                name: Some(pod_name),
                namespace: Some(namespace.clone()),
                generate_name: Some(base.clone()),
                labels: Some(labels.clone()),
                annotations: template_meta.annotations.clone(),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(template.spec.clone().unwrap_or_default()),
            status: None,
        });
    }
    Ok(pods)
}

/// Writes the Deployment's status from its Pods' readiness: the counts, and the two
/// conditions the Deployment controller keeps, which `kubectl wait --for=condition=Available`
/// and `kubectl describe` read. `Available` is true while no more Pods are unavailable than
/// the rolling update's `maxUnavailable` allows (25% of the replicas, rounded down, unless
/// set; none for `Recreate`); `Progressing` says the ReplicaSet has progressed once every Pod
/// is available. The conditions carry no timestamps: the same objects resolve to the same
/// bytes. (`observedGeneration` is the API server's to set: it owns the generation.)
pub(crate) fn finish(mut d: apps::Deployment, pods: usize, ready: usize) -> apps::Deployment {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let unavailable = pods.saturating_sub(ready);
    let available = unavailable <= max_unavailable(&d, pods);
    let replica_set = format!(
        "{}-{}",
        d.metadata.name.as_deref().unwrap_or_default(),
        pod_template_hash(
            &d.spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default(),
            d.status.as_ref().and_then(|s| s.collision_count),
        )
    );
    let condition =
        |type_: &str, status: bool, reason: &str, message: String| apps::DeploymentCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            ..apps::DeploymentCondition::default()
        };
    let conditions = vec![
        if available {
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            )
        },
        if unavailable == 0 {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{replica_set}\" has successfully progressed."),
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{replica_set}\" is progressing."),
            )
        },
    ];
    let status = d.status.get_or_insert_with(Default::default);
    status.replicas = Some(count(pods));
    status.updated_replicas = Some(count(pods));
    status.ready_replicas = Some(count(ready));
    status.available_replicas = Some(count(ready));
    status.unavailable_replicas = Some(count(unavailable)).filter(|n| *n > 0);
    status.conditions = Some(conditions);
    d
}

/// How many of `replicas` Pods may be unavailable with the Deployment still available:
/// the rolling update's `maxUnavailable` (a number, or a percentage rounded down; 25% by
/// default), none for `Recreate`.
fn max_unavailable(d: &apps::Deployment, replicas: usize) -> usize {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return 0;
    }
    let value = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or_else(|| IntOrString::String("25%".to_owned()));
    match value {
        IntOrString::Int(n) => usize::try_from(n).unwrap_or(0),
        IntOrString::String(text) => text
            .strip_suffix('%')
            .and_then(|p| p.parse::<usize>().ok())
            .map_or(0, |percent| replicas * percent / 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_says_available_within_max_unavailable_and_progressed_when_all_are() {
        let with = |strategy: &str| {
            deployment(&format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: x}}\n\
                 spec: {{replicas: 8, selector: {{matchLabels: {{app: web}}}}, {strategy}\
                 template: {{metadata: {{labels: {{app: web}}}}, spec: {{containers: [{{name: c, image: i}}]}}}}}}\n"
            ))
        };
        let conditions = |d: apps::Deployment, ready: usize| {
            finish(d, 8, ready)
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let c = |t: &str, s: &str, r: &str| (t.to_owned(), s.to_owned(), r.to_owned());
        // 25% of 8 may be unavailable by default: 2.
        assert_eq!(
            conditions(with(""), 6),
            [
                c("Available", "True", "MinimumReplicasAvailable"),
                c("Progressing", "True", "ReplicaSetUpdated")
            ]
        );
        assert_eq!(
            conditions(with(""), 5)[0],
            c("Available", "False", "MinimumReplicasUnavailable")
        );
        assert_eq!(
            conditions(with(""), 8)[1],
            c("Progressing", "True", "NewReplicaSetAvailable")
        );
        let strict = "strategy: {rollingUpdate: {maxUnavailable: 0}}, ";
        assert_eq!(conditions(with(strict), 7)[0].1, "False");
        assert_eq!(
            conditions(with("strategy: {type: Recreate}, "), 7)[0].1,
            "False"
        );
        let loose = "strategy: {rollingUpdate: {maxUnavailable: 50%}}, ";
        assert_eq!(conditions(with(loose), 4)[0].1, "True");
    }

    fn deployment(yaml: &str) -> apps::Deployment {
        match netd_testkit::objects(yaml).pop() {
            Some(netd_model::Object::Deployment(d)) => *d,
            other => panic!("not a deployment: {other:?}"),
        }
    }

    const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
"#;

    #[test]
    fn pods_are_named_labelled_and_owned_like_upstream() {
        let d = deployment(WEB);
        let pods = expand(&d).expect("expands");
        assert_eq!(pods.len(), 3);
        let hash = pod_template_hash(&d.spec.as_ref().expect("spec").template, None);
        assert!(
            hash.bytes().all(|b| names::SAFE_ALPHABET.contains(&b)),
            "{hash}"
        );
        for pod in &pods {
            let name = pod.metadata.name.as_deref().expect("name");
            let suffix = name.strip_prefix(&format!("web-{hash}-")).expect("prefix");
            assert_eq!(suffix.len(), 5, "{name}");
            let labels = pod.metadata.labels.as_ref().expect("labels");
            assert_eq!(labels.get("app").map(String::as_str), Some("web"));
            assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
            let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("ReplicaSet", format!("web-{hash}").as_str())
            );
            assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
            let ports = pod.spec.as_ref().expect("spec").containers[0]
                .ports
                .as_ref()
                .expect("ports");
            assert_eq!(ports[0].container_port, 8080);
        }
        let names: HashSet<_> = pods.iter().map(|p| p.metadata.name.clone()).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn names_are_stable_and_survive_scaling() {
        let names_of = |d: &apps::Deployment| -> Vec<String> {
            expand(d)
                .expect("expands")
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        };
        let three = names_of(&deployment(WEB));
        assert_eq!(three, names_of(&deployment(WEB)));
        let five = names_of(&deployment(&WEB.replace("replicas: 3", "replicas: 5")));
        assert_eq!(&five[..3], &three[..]);
        let one = names_of(&deployment(&WEB.replace("replicas: 3", "replicas: 1")));
        assert_eq!(&one[..], &three[..1]);
        assert!(names_of(&deployment(&WEB.replace("replicas: 3", "replicas: 0"))).is_empty());
    }

    #[test]
    fn the_hash_follows_the_template_and_the_collision_count() {
        let d = deployment(WEB);
        let t = &d.spec.as_ref().expect("spec").template;
        let changed = deployment(&WEB.replace("image: nginx", "image: nginx:2"));
        assert_ne!(
            pod_template_hash(t, None),
            pod_template_hash(&changed.spec.expect("spec").template, None)
        );
        assert_ne!(pod_template_hash(t, None), pod_template_hash(t, Some(1)));
        assert_eq!(pod_template_hash(t, None), pod_template_hash(t, None));
    }

    #[test]
    fn replicas_default_to_one_and_negative_is_refused() {
        let one = deployment(&WEB.replace("  replicas: 3\n", ""));
        assert_eq!(expand(&one).expect("expands").len(), 1);
        let bad = deployment(&WEB.replace("replicas: 3", "replicas: -1"));
        let err = expand(&bad).expect_err("negative replicas");
        assert!(
            matches!(err, ResolveError::ExpandDeploymentFailed { .. }),
            "{err:?}"
        );
    }
}
