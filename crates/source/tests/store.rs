//! The store fed scripted watch streams: what it keeps, when it changes, what it produces.

mod common;

use common::*;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::watcher::Event;
use netd_model::{ClusterConfig, ClusterState, Kind, PodRef, ServiceRef};
use netd_source::{SourceError, Store};
use pretty_assertions::assert_eq;
use serde_json::json;

fn store() -> Store {
    Store::new(ClusterConfig::default())
}

fn pod_ips(state: &ClusterState) -> Vec<String> {
    state
        .pods()
        .map(|p| format!("{} {:?}", p.key, p.ips))
        .collect()
}

fn services(state: &ClusterState) -> Vec<String> {
    state.services().map(|s| s.key.to_string()).collect()
}

#[test]
fn nothing_is_produced_before_every_kind_completed_its_first_list() {
    let mut s = store();
    assert!(matches!(s.snapshot(), Err(SourceError::NotReady { .. })));
    list(&mut s, vec![namespace("web", json!({}))]);
    list(
        &mut s,
        vec![node("node-1", "172.18.0.2", "10.244.1.0/24", 1)],
    );
    list(
        &mut s,
        vec![service("web", "front", "10.96.0.20", "front", json!({}))],
    );
    list::<discovery::EndpointSlice>(&mut s, vec![]);
    list::<networking::NetworkPolicy>(&mut s, vec![]);
    // Pods: a list under way is not a list.
    s.apply(Event::<core::Pod>::Init);
    s.apply(Event::InitApply(pod("web", "a", "10.244.1.2", "front", 1)));
    assert!(!s.ready());
    assert_eq!(s.pending(), vec![Kind::Pod]);
    let err = s.snapshot().expect_err("a partial list gives no snapshot");
    assert_eq!(
        err.to_string(),
        "the cluster state is not synced yet: waiting for the first list of pods"
    );
    assert!(
        s.apply(Event::<core::Pod>::InitDone),
        "becoming ready is a change"
    );
    let snap = s.snapshot().expect("ready");
    assert_eq!(pod_ips(&snap.state), vec!["web/a [10.244.1.2]"]);
    assert_eq!(services(&snap.state), vec!["web/front"]);
    assert_eq!(snap.generation, s.generation());
}

#[test]
fn adds_updates_and_deletes_change_the_snapshot() {
    let mut s = store();
    list_all_empty(&mut s);
    let before = s.generation();
    assert!(s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 1))));
    assert!(s.apply(Event::Apply(pod("web", "b", "10.244.1.3", "front", 1))));
    let mut moved = pod("web", "b", "10.244.1.9", "front", 2);
    moved.metadata.labels = Some([("app".to_owned(), "back".to_owned())].into());
    assert!(s.apply(Event::Apply(moved)));
    assert!(s.apply(Event::Delete(pod("web", "a", "10.244.1.2", "front", 3))));
    assert!(
        !s.apply(Event::Delete(pod("web", "zz", "10.244.1.7", "front", 3))),
        "deleting what is not there changes nothing"
    );
    assert_eq!(s.generation(), before + 4);
    let state = s.snapshot().expect("ready").state;
    assert_eq!(pod_ips(&state), vec!["web/b [10.244.1.9]"]);
    let b = state.pod(&PodRef::new("web", "b")).expect("pod b");
    assert_eq!(b.labels.get("app").map(String::as_str), Some("back"));
    assert_eq!(b.named_port("http", netd_model::Protocol::Tcp), Some(8080));
}

#[test]
fn changes_are_reported_one_object_at_a_time_relists_included() {
    let mut s = store();
    list_all_empty(&mut s);
    s.take_snapshot().expect("ready");
    assert!(s.take_changes().is_empty(), "a snapshot clears the log");
    s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 1)));
    s.apply(Event::Apply(pod("web", "b", "10.244.1.3", "front", 1)));
    s.apply(Event::Apply(pod("web", "b", "10.244.1.3", "front", 2)));
    s.apply(Event::Delete(pod("web", "a", "10.244.1.2", "front", 3)));
    let shown = |changes: Vec<(netd_model::ObjectId, Option<netd_model::Object>)>| {
        changes
            .into_iter()
            .map(|(id, now)| format!("{id} {}", if now.is_some() { "kept" } else { "gone" }))
            .collect::<Vec<_>>()
    };
    // A probe-time change is no change; a or b added, a then deleted: a is gone.
    assert_eq!(
        shown(s.take_changes()),
        ["Pod web/a gone", "Pod web/b kept"]
    );
    assert!(s.take_changes().is_empty(), "taken once");
    // A relist without b and with c: both reported.
    s.apply(Event::<core::Pod>::Init);
    s.apply(Event::InitApply(pod("web", "c", "10.244.1.4", "front", 1)));
    assert!(
        s.take_changes().is_empty(),
        "a list under way changes nothing yet"
    );
    s.apply(Event::<core::Pod>::InitDone);
    assert_eq!(
        shown(s.take_changes()),
        ["Pod web/b gone", "Pod web/c kept"]
    );
}

#[test]
fn status_only_and_managed_fields_only_updates_do_not_make_the_store_dirty() {
    let mut s = store();
    list_all_empty(&mut s);
    s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 1)));
    s.apply(Event::Apply(node(
        "node-1",
        "172.18.0.2",
        "10.244.1.0/24",
        1,
    )));
    s.apply(Event::Apply(service(
        "web",
        "front",
        "10.96.0.20",
        "front",
        json!({}),
    )));
    s.take_snapshot().expect("ready");
    assert!(!s.is_dirty());
    let generation = s.generation();

    // A new probe time, restart count, resourceVersion and managedFields entry.
    assert!(!s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 7))));
    // A node heartbeat.
    assert!(!s.apply(Event::Apply(node(
        "node-1",
        "172.18.0.2",
        "10.244.1.0/24",
        42
    ))));
    // Annotations and status conditions on a Service.
    let mut svc = service("web", "front", "10.96.0.20", "front", json!({}));
    svc.metadata.annotations = Some(
        [(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{}".to_owned(),
        )]
        .into(),
    );
    svc.metadata.resource_version = Some("99".to_owned());
    assert!(!s.apply(Event::Apply(svc)));
    assert!(!s.is_dirty());
    assert_eq!(s.generation(), generation);

    // The Ready condition turning false is a change.
    let mut unready = pod("web", "a", "10.244.1.2", "front", 8);
    if let Some(c) = unready
        .status
        .as_mut()
        .and_then(|st| st.conditions.as_mut())
    {
        c[0].status = "False".to_owned();
    }
    assert!(s.apply(Event::Apply(unready)));
    assert!(s.is_dirty());
    let state = s.take_snapshot().expect("ready").state;
    assert!(!state.pod(&PodRef::new("web", "a")).expect("pod").ready);
}

#[test]
fn a_relist_replaces_the_kind_and_objects_deleted_meanwhile_disappear() {
    let mut s = store();
    list_all_empty(&mut s);
    list(
        &mut s,
        vec![
            pod("web", "a", "10.244.1.2", "front", 1),
            pod("web", "b", "10.244.1.3", "front", 1),
        ],
    );
    s.apply(Event::Apply(pod("web", "c", "10.244.1.4", "front", 1)));
    s.take_snapshot().expect("ready");

    // The watch fell behind (410 Gone): a relist, in which a and c no longer exist and d
    // appeared. Until it is done, snapshots keep showing the previous list.
    s.apply(Event::<core::Pod>::Init);
    s.apply(Event::InitApply(pod("web", "b", "10.244.1.3", "front", 5)));
    s.apply(Event::InitApply(pod("web", "d", "10.244.1.5", "front", 5)));
    assert_eq!(
        pod_ips(&s.snapshot().expect("ready").state),
        vec![
            "web/a [10.244.1.2]",
            "web/b [10.244.1.3]",
            "web/c [10.244.1.4]"
        ]
    );
    assert!(!s.is_dirty(), "a relist under way changes nothing yet");
    assert!(s.apply(Event::<core::Pod>::InitDone));
    assert_eq!(
        pod_ips(&s.take_snapshot().expect("ready").state),
        vec!["web/b [10.244.1.3]", "web/d [10.244.1.5]"]
    );

    // A restarted watch that lists the same objects again changes nothing.
    list(
        &mut s,
        vec![
            pod("web", "d", "10.244.1.5", "front", 9),
            pod("web", "b", "10.244.1.3", "front", 9),
        ],
    );
    assert!(!s.is_dirty());
}

#[test]
fn services_of_another_proxy_and_their_slices_are_left_out() {
    let other = json!({"service.kubernetes.io/service-proxy-name": "other-proxy"});
    let mut s = store();
    list_all_empty(&mut s);
    s.apply(Event::Apply(service(
        "web",
        "front",
        "10.96.0.20",
        "front",
        json!({}),
    )));
    s.apply(Event::Apply(slice(
        "web",
        "front",
        &[("10.244.1.2", "a")],
        json!({}),
    )));
    assert!(!s.apply(Event::Apply(service(
        "web",
        "elsewhere",
        "10.96.0.21",
        "x",
        other.clone()
    ))));
    assert!(!s.apply(Event::Apply(slice(
        "web",
        "elsewhere",
        &[("10.244.1.3", "b")],
        other.clone()
    ))));
    let state = s.snapshot().expect("ready").state;
    assert_eq!(services(&state), vec!["web/front"]);
    assert_eq!(state.endpoint_slices().count(), 1);

    // Labelling a Service for another proxy takes it (and its slices) away.
    assert!(s.apply(Event::Apply(service(
        "web",
        "front",
        "10.96.0.20",
        "front",
        other.clone()
    ))));
    assert!(s.apply(Event::Apply(slice(
        "web",
        "front",
        &[("10.244.1.2", "a")],
        other
    ))));
    let state = s.snapshot().expect("ready").state;
    assert_eq!(services(&state), Vec::<String>::new());
    assert_eq!(state.endpoint_slices().count(), 0);
}

#[test]
fn finished_pods_are_left_out_so_their_ips_can_be_reused() {
    let mut s = store();
    list_all_empty(&mut s);
    s.apply(Event::Apply(pod("jobs", "done", "10.244.1.2", "job", 1)));
    let mut done = pod("jobs", "done", "10.244.1.2", "job", 2);
    done.status.as_mut().expect("status").phase = Some("Succeeded".to_owned());
    assert!(s.apply(Event::Apply(done)));
    s.apply(Event::Apply(pod("web", "new", "10.244.1.2", "front", 1)));
    let state = s.snapshot().expect("ready").state;
    let owner = state
        .pod_by_ip("10.244.1.2".parse().expect("ip"))
        .expect("an owner");
    assert_eq!(owner.key, PodRef::new("web", "new"));
    assert_eq!(state.pods().count(), 1);
}

#[test]
fn an_object_the_model_refuses_is_held_out_and_reported_not_fatal() {
    let mut s = store();
    list_all_empty(&mut s);
    s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 1)));
    assert!(
        s.apply(Event::Apply(pod("web", "a", "10.244.1.256", "front", 2))),
        "the good version goes"
    );
    let state = s.snapshot().expect("the rest still makes a snapshot").state;
    assert_eq!(state.pods().count(), 0);
    let rejected: Vec<String> = s.rejected().map(|(id, e)| format!("{id}: {e}")).collect();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].starts_with("Pod web/a: "), "{rejected:?}");
    assert!(rejected[0].contains("status.podIPs[0].ip"), "{rejected:?}");

    assert!(s.apply(Event::Apply(pod("web", "a", "10.244.1.3", "front", 3))));
    assert_eq!(s.rejected().count(), 0);
    assert_eq!(
        pod_ips(&s.snapshot().expect("ready").state),
        vec!["web/a [10.244.1.3]"]
    );
}

#[test]
fn the_snapshot_reads_as_the_manifest_path_reads_the_same_objects() {
    let mut s = store();
    list(&mut s, vec![namespace("web", json!({"team": "a"}))]);
    list(
        &mut s,
        vec![node("node-1", "172.18.0.2", "10.244.1.0/24", 3)],
    );
    list(
        &mut s,
        vec![
            pod("web", "a", "10.244.1.2", "front", 4),
            pod("web", "b", "10.244.1.3", "back", 4),
        ],
    );
    list(
        &mut s,
        vec![service("web", "front", "10.96.0.20", "front", json!({}))],
    );
    list(
        &mut s,
        vec![slice("web", "front", &[("10.244.1.2", "a")], json!({}))],
    );
    list(&mut s, vec![policy("web", "only-back", "front", "back")]);
    let watched = s.snapshot().expect("ready").state;

    // The same cluster as manifests, the way every other path builds a ClusterState.
    let manifests = netd_testkit::state(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {team: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: Hostname, address: node-1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: front}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080, protocol: TCP}]}]}
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {app: back}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080, protocol: TCP}]}]}
status: {podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: web}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  selector: {app: front}
  ports: [{name: web, port: 80, targetPort: http, protocol: TCP}]
  sessionAffinity: None
  internalTrafficPolicy: Cluster
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: front-abc
  namespace: web
  labels: {kubernetes.io/service-name: front, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-01-01T00:00:00Z"}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
  targetRef: {kind: Pod, namespace: web, name: a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-back, namespace: web}
spec:
  podSelector: {matchLabels: {app: front}}
  ingress: [{from: [{podSelector: {matchLabels: {app: back}}}]}]
  policyTypes: [Ingress]
"#,
    );
    assert_eq!(
        watched.namespaces().collect::<Vec<_>>(),
        manifests.namespaces().collect::<Vec<_>>()
    );
    assert_eq!(
        watched.nodes().collect::<Vec<_>>(),
        manifests.nodes().collect::<Vec<_>>()
    );
    assert_eq!(
        watched.pods().collect::<Vec<_>>(),
        manifests.pods().collect::<Vec<_>>()
    );
    assert_eq!(
        watched.services().collect::<Vec<_>>(),
        manifests.services().collect::<Vec<_>>()
    );
    assert_eq!(
        watched.endpoint_slices().collect::<Vec<_>>(),
        manifests.endpoint_slices().collect::<Vec<_>>()
    );
    assert_eq!(
        watched.policies().collect::<Vec<_>>(),
        manifests.policies().collect::<Vec<_>>()
    );
    let front = ServiceRef::new("web", "front");
    assert_eq!(watched.endpoint_slices_for(&front).count(), 1);
}

#[test]
fn kept_objects_carry_no_managed_fields_resource_version_or_status_noise() {
    let mut s = store();
    list_all_empty(&mut s);
    s.take_snapshot().expect("ready");
    s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 1)));
    s.apply(Event::Apply(slice(
        "web",
        "front",
        &[("10.244.1.2", "a")],
        json!({}),
    )));
    s.apply(Event::Apply(namespace("web", json!({"team": "a"}))));
    // The store keeps views; the kept form is what it logs for a consumer that follows it.
    let changes = s.take_changes();
    let kept = |kind: Kind| {
        let objects: Vec<_> = changes
            .iter()
            .filter(|(id, _)| id.kind == kind)
            .filter_map(|(_, o)| o.as_ref())
            .collect();
        serde_json::to_value(objects).expect("json")
    };
    let kept_pods = kept(Kind::Pod);
    assert_eq!(
        kept_pods,
        json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "web", "labels": {"app": "front"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}],
                "conditions": [{"type": "Ready", "status": "True"}]},
        }])
    );
    let slices = kept(Kind::EndpointSlice);
    assert_eq!(
        slices[0]["metadata"]["annotations"],
        json!({"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"})
    );
    assert_eq!(
        slices[0]["endpoints"][0]["targetRef"],
        json!({"kind": "Pod", "namespace": "web", "name": "a"})
    );
    assert_eq!(
        kept(Kind::Namespace),
        json!([{"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "web", "labels": {"team": "a"}}}])
    );
}

/// The agent's `/healthz` reads the Node's deletion timestamp and taints from the snapshot:
/// the store keeps both, so a Node the cluster autoscaler is draining stops being eligible.
#[test]
fn a_node_being_drained_or_deleted_is_not_eligible_in_the_snapshot() {
    let mut s = store();
    list_all_empty(&mut s);
    let name = netd_model::NodeName::new("node-1");
    let eligible =
        |s: &Store| netd_healthcheck::node_eligible(&s.snapshot().expect("ready").state, &name);
    s.apply(Event::Apply(node(
        "node-1",
        "172.18.0.2",
        "10.244.1.0/24",
        1,
    )));
    assert!(eligible(&s));
    let mut tainted = node("node-1", "172.18.0.2", "10.244.1.0/24", 2);
    tainted.spec.get_or_insert_default().taints = Some(vec![core::Taint {
        key: netd_healthcheck::TO_BE_DELETED_TAINT.to_owned(),
        effect: "NoSchedule".to_owned(),
        ..core::Taint::default()
    }]);
    assert!(s.apply(Event::Apply(tainted)), "a taint is a change");
    assert!(!eligible(&s), "tainted for deletion");
    let mut deleted = node("node-1", "172.18.0.2", "10.244.1.0/24", 3);
    deleted.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:01:00Z")).expect("a time"));
    s.apply(Event::Apply(deleted));
    assert!(!eligible(&s), "being deleted");
}

#[test]
fn a_dns_store_waits_for_its_own_kinds_and_keeps_every_service() {
    let mut s = Store::for_dns(ClusterConfig::default(), false);
    assert_eq!(
        s.pending(),
        vec![Kind::Namespace, Kind::Service, Kind::EndpointSlice]
    );
    list(&mut s, vec![namespace("default", json!({}))]);
    let other_proxy = json!({"service.kubernetes.io/service-proxy-name": "other-proxy"});
    list(
        &mut s,
        vec![
            service("default", "web", "10.96.0.20", "web", json!({})),
            service(
                "default",
                "elsewhere",
                "10.96.0.30",
                "x",
                other_proxy.clone(),
            ),
        ],
    );
    assert!(!s.ready());
    list(
        &mut s,
        vec![slice(
            "default",
            "elsewhere",
            &[("10.244.1.9", "x-1")],
            other_proxy,
        )],
    );
    assert!(
        s.ready(),
        "no Nodes, Pods or NetworkPolicies are waited for"
    );
    // Events of kinds it is not fed change nothing.
    assert!(!s.apply(Event::Apply(pod("default", "a", "10.244.1.2", "web", 1))));
    assert!(!s.apply(Event::Apply(node(
        "node-1",
        "172.18.0.2",
        "10.244.1.0/24",
        1
    ))));
    let snap = s.snapshot().expect("ready");
    assert_eq!(
        services(&snap.state),
        vec!["default/elsewhere", "default/web"]
    );
    assert_eq!(snap.state.pods().count(), 0);
    assert_eq!(
        snap.state.endpoint_slices().count(),
        1,
        "the slices of another proxy's Service are kept too"
    );

    // With verified pod names it waits for Pods as well.
    let s = Store::for_dns(ClusterConfig::default(), true);
    assert_eq!(
        s.pending(),
        vec![
            Kind::Namespace,
            Kind::Pod,
            Kind::Service,
            Kind::EndpointSlice
        ]
    );
}

#[test]
fn versions_are_each_kinds_highest_resource_version_applied() {
    let mut s = store();
    list_all_empty(&mut s);
    assert_eq!(
        s.versions().get(&Kind::Service),
        Some(&0),
        "listed, nothing in it"
    );
    list(
        &mut s,
        vec![
            pod("web", "a", "10.244.1.2", "front", 4),
            pod("web", "b", "10.244.1.3", "front", 2),
        ],
    );
    assert_eq!(s.versions().get(&Kind::Pod), Some(&4));
    // An update that changes nothing kept still counts: the store holds that state.
    assert!(!s.apply(Event::Apply(pod("web", "a", "10.244.1.2", "front", 6))));
    assert_eq!(s.versions().get(&Kind::Pod), Some(&6));
    // A delete's resourceVersion is the deletion's.
    assert!(s.apply(Event::Delete(pod("web", "b", "10.244.1.3", "front", 8))));
    let snapshot = s.take_snapshot().expect("ready");
    assert_eq!(snapshot.versions.get(&Kind::Pod), Some(&8));
    // A relist counts once it is done, when its objects are in the snapshot.
    s.apply(Event::<core::Pod>::Init);
    s.apply(Event::InitApply(pod("web", "a", "10.244.1.2", "front", 12)));
    assert_eq!(s.versions().get(&Kind::Pod), Some(&8));
    s.apply(Event::<core::Pod>::InitDone);
    assert_eq!(s.versions().get(&Kind::Pod), Some(&12));
}
