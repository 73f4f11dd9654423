//! Incremental updates: a zone changed one object at a time answers exactly as the zone
//! built from the resulting snapshot, and the SOA serial follows [`Zone::set_serial`].

mod common;

use std::collections::BTreeMap;

use netd_dns::{
    Answer, PodMode, Question, RecordData, RecordType, Serial, Zone, ZoneChange, ZoneConfig,
};
use netd_model::{ClusterConfig, ClusterState, Object, ObjectId};
use proptest::prelude::*;

/// Namespaces the objects live in: `a` and `b` declared or not, `c` never declared (its
/// Pods and policies make it exist).
const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// Addresses endpoints, Pods and ClusterIPs are drawn from (duplicates across objects on
/// purpose: two sources of one record).
const POD_IPS: [&str; 4] = ["10.244.0.1", "10.244.0.2", "10.244.0.3", "fd00:10:244::1"];
const CLUSTER_IPS: [&str; 3] = ["10.96.0.1", "10.96.0.2", "fd00:10:96::1"];

/// Every version of every object the sequences pick from: several versions per identity,
/// so that an upsert is an add or a replacement.
fn candidates() -> Vec<Object> {
    let mut y = String::new();
    for ns in ["a", "b"] {
        y += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    }
    for ns in ["a", "b"] {
        for (i, ip) in CLUSTER_IPS.iter().enumerate() {
            y += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\n\
                 spec: {{clusterIP: \"{ip}\", ports: [{{name: http, port: {}}}, {{port: 81}}]}}\n",
                80 + i
            );
        }
        y += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\n\
             spec: {{type: ExternalName, externalName: db.{ns}.svc.cluster.local}}\n"
        );
        y += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: {ns}}}\n\
             spec: {{type: ExternalName, externalName: example.com}}\n"
        );
        for pnr in [false, true] {
            y += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {ns}}}\n\
                 spec: {{clusterIP: None, publishNotReadyAddresses: {pnr}, ports: [{{name: pg, port: 5432}}]}}\n"
            );
        }
        for slice in ["db-1", "db-2"] {
            for (v, service) in ["db", "web", "db"].iter().enumerate() {
                let ip = POD_IPS[v % POD_IPS.len()];
                let other = POD_IPS[(v + 1) % POD_IPS.len()];
                let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
                let other = if other.contains(':') == ip.contains(':') {
                    other
                } else {
                    ip
                };
                y += &format!(
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: {slice}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
                     addressType: {family}\nports: [{{name: pg, port: {}, protocol: TCP}}]\nendpoints:\n\
                     - addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: p1, namespace: {ns}}}\n\
                     - addresses: [\"{other}\"]\n  conditions: {{ready: {}}}\n  hostname: h{v}\n\
                     - addresses: [\"{ip}\"]\n  conditions: {{ready: false}}\n  targetRef: {{kind: Pod, name: p2, namespace: b}}\n",
                    5432 + v,
                    v != 1,
                );
            }
        }
    }
    for ns in NAMESPACES {
        for pod in ["p1", "p2"] {
            for (v, ip) in POD_IPS.iter().enumerate() {
                let named = match v {
                    0 => "hostname: host, subdomain: db, ",
                    1 => "hostname: other, subdomain: db, ",
                    2 => "hostname: host, subdomain: web, ",
                    _ => "",
                };
                y += &format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}}}\n\
                     spec: {{{named}nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
                     status: {{podIP: \"{ip}\"}}\n"
                );
            }
        }
    }
    y += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
          metadata: {name: deny, namespace: c}\nspec: {podSelector: {}}\n";
    y += "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n";
    netd_testkit::objects(&y)
}

/// Every question whose answer could differ between two zones of these objects.
fn questions() -> Vec<Question> {
    let mut names = vec![
        "cluster.local".to_owned(),
        "svc.cluster.local".to_owned(),
        "pod.cluster.local".to_owned(),
        "dns-version.cluster.local".to_owned(),
        "ns.dns.cluster.local".to_owned(),
    ];
    for ns in NAMESPACES.iter().chain(&["default", "kube-system"]) {
        names.push(format!("{ns}.svc.cluster.local"));
        names.push(format!("{ns}.pod.cluster.local"));
        for ip in POD_IPS {
            names.push(format!("{}.{ns}.pod.cluster.local", dashed(ip)));
        }
        for service in ["web", "db", "ext"] {
            let base = format!("{service}.{ns}.svc.cluster.local");
            for srv in ["_http._tcp", "_pg._tcp", "_tcp"] {
                names.push(format!("{srv}.{base}"));
            }
            for host in ["host", "other", "h0", "h1", "h2"] {
                names.push(format!("{host}.{base}"));
            }
            for ip in POD_IPS {
                names.push(format!("{}.{base}", dashed(ip)));
            }
            names.push(base);
        }
    }
    for ip in POD_IPS.iter().chain(&CLUSTER_IPS) {
        names.push(reverse(ip));
    }
    let types = [
        RecordType::Any,
        RecordType::A,
        RecordType::Aaaa,
        RecordType::Srv,
        RecordType::Ptr,
        RecordType::Cname,
    ];
    names
        .iter()
        .flat_map(|n| types.iter().map(move |t| Question::new(n.as_str(), *t)))
        .collect()
}

fn dashed(ip: &str) -> String {
    ip.replace(['.', ':'], "-")
}

fn reverse(ip: &str) -> String {
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s + "ip6.arpa"
        }
    }
}

fn answers(zone: &Zone, questions: &[Question]) -> Vec<Answer> {
    questions.iter().map(|q| zone.answer(q)).collect()
}

fn rebuilt(objects: &BTreeMap<ObjectId, Object>, config: &ZoneConfig) -> Zone {
    let state = ClusterState::new(
        objects.values().cloned().collect(),
        ClusterConfig::default(),
    )
    .expect("valid snapshot");
    Zone::build(&state, config)
}

/// [`rebuilt`] from a state made without its objects, as cluster DNS's store keeps one.
fn rebuilt_from_views(objects: &BTreeMap<ObjectId, Object>, config: &ZoneConfig) -> Zone {
    let mut state = ClusterState::without_objects(ClusterConfig::default());
    for object in objects.values() {
        state.insert(object.clone()).expect("valid object");
    }
    Zone::build(&state, config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random upserts and deletes, from an empty or a populated start, in every pod mode; a
    /// zone built from the views alone (no objects kept) answers as one built from objects.
    #[test]
    fn applying_changes_answers_as_a_rebuild(
        start in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        steps in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..40),
        mode in prop_oneof![Just(PodMode::Insecure), Just(PodMode::Verified), Just(PodMode::Disabled)],
    ) {
        let candidates = candidates();
        let questions = questions();
        let config = ZoneConfig { pods: mode, ..ZoneConfig::default() };
        let mut current = BTreeMap::new();
        for i in start {
            let object = i.get(&candidates).clone();
            current.insert(object.id(), object);
        }
        let mut zone = rebuilt(&current, &config);
        for (step, (upsert, i)) in steps.into_iter().enumerate() {
            let object = i.get(&candidates);
            let id = object.id();
            let before = answers(&zone, &questions);
            let changed = if upsert {
                current.insert(id.clone(), object.clone());
                zone.apply(ZoneChange::Upsert(object)).expect("valid object")
            } else {
                current.remove(&id);
                zone.apply(ZoneChange::Delete(&id)).expect("a delete cannot fail")
            };
            let expected = rebuilt(&current, &config);
            let got = answers(&zone, &questions);
            for (q, (g, e)) in questions.iter().zip(got.iter().zip(answers(&expected, &questions))) {
                prop_assert_eq!(g, &e, "step {} ({} {}): {:?} {}", step, if upsert { "upsert" } else { "delete" }, id, q.qtype, q.name);
            }
            prop_assert_eq!(zone.stats(), expected.stats(), "step {}: {}", step, id);
            let from_views = rebuilt_from_views(&current, &config);
            prop_assert_eq!(answers(&from_views, &questions), answers(&expected, &questions), "step {}: {}", step, id);
            prop_assert_eq!(from_views.stats(), expected.stats(), "step {}: {}", step, id);
            prop_assert_eq!(changed, got != before, "step {}: {} reported changed={}", step, id, changed);
        }
    }
}

#[test]
fn an_invalid_object_is_refused_and_changes_nothing() {
    let mut zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let questions = questions();
    let before = answers(&zone, &questions);
    let bad = netd_testkit::objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
         spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
    );
    let err = zone
        .apply(ZoneChange::Upsert(&bad[0]))
        .expect_err("a bad ClusterIP");
    assert_eq!(err.to_string(), "the changed object is not valid");
    assert!(
        std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("Service a/web")),
        "{err:?}"
    );
    assert_eq!(answers(&zone, &questions), before);
}

#[test]
fn one_service_added_is_answered() {
    let mut zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let q = Question::new("new.default.svc.cluster.local", RecordType::A);
    assert!(zone.answer(&q).answers.is_empty());
    let added = netd_testkit::objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: default}\n\
         spec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}\n",
    );
    assert!(zone.apply(ZoneChange::Upsert(&added[0])).expect("valid"));
    let got = zone.answer(&q);
    assert_eq!(got.answers.len(), 1);
    assert_eq!(
        got.answers[0].data,
        RecordData::A("10.96.0.99".parse().expect("ip"))
    );
    // The same object again changes nothing.
    assert!(!zone.apply(ZoneChange::Upsert(&added[0])).expect("valid"));
    assert!(
        zone.apply(ZoneChange::Delete(&added[0].id()))
            .expect("delete")
    );
    assert!(zone.answer(&q).answers.is_empty());
    assert!(
        !zone
            .apply(ZoneChange::Delete(&added[0].id()))
            .expect("delete")
    );
}

#[test]
fn the_serial_is_in_every_soa_and_only_set_explicitly() {
    let mut zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    assert_eq!(zone.serial(), Serial::default());
    let next = zone.serial().next_at(1_764_000_000);
    zone.set_serial(next);
    let serials = |answer: Answer| -> Vec<u32> {
        answer
            .answers
            .iter()
            .chain(&answer.authority)
            .filter_map(|r| match &r.data {
                RecordData::Soa(soa) => Some(soa.serial),
                _ => None,
            })
            .collect()
    };
    let soa = Question::new("cluster.local", RecordType::Soa);
    assert_eq!(serials(zone.answer(&soa)), [1_764_000_000]);
    let missing = Question::new("nope.default.svc.cluster.local", RecordType::A);
    assert_eq!(serials(zone.answer(&missing)), [1_764_000_000]);
    let reverse = Question::new("9.9.96.10.in-addr.arpa", RecordType::Ptr);
    assert_eq!(serials(zone.answer(&reverse)), [1_764_000_000]);
    // Two stamps in the same second: one more.
    zone.set_serial(zone.serial().next_at(1_764_000_000));
    assert_eq!(serials(zone.answer(&soa)), [1_764_000_001]);
    assert_eq!(
        zone.record_count(),
        Zone::build(&common::cluster(), &ZoneConfig::default()).record_count()
    );
}
