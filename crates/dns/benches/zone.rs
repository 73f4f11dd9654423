//! Zone build, lookup and one-object changes at scale: 10,000 Services (9,000 ClusterIP,
//! 1,000 headless with 5 endpoints each) and 50,000 Pods in 100 namespaces.
//!
//! `cargo bench -p netd-dns --bench zone`

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{Criterion, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType as WireType};
use netd_dns::{
    ForwardConfig, Handler, Metrics, Question, RecordType, SharedZone, Transport, Zone, ZoneChange,
    ZoneConfig,
};
use netd_model::ClusterState;

const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const HEADLESS_EVERY: usize = 10;
const PODS: usize = 50_000;

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + u32::try_from(i).expect("small"))
}

fn cluster() -> ClusterState {
    let mut y = String::new();
    for p in 0..PODS {
        let ns = p % NAMESPACES;
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{p}, namespace: ns-{ns}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {}}}",
            pod_ip(p)
        )
        .expect("write");
    }
    for s in 0..SERVICES {
        let ns = s % NAMESPACES;
        if s % HEADLESS_EVERY == 0 {
            writeln!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\n\
                 spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: svc-{s}-1, namespace: ns-{ns}, labels: {{kubernetes.io/service-name: svc-{s}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:"
            )
            .expect("write");
            for e in 0..5 {
                // Pods of the same namespace: pod index ≡ ns (mod NAMESPACES).
                let p = (s / NAMESPACES * 5 + e) * NAMESPACES + ns;
                writeln!(y, "- addresses: [{}]\n  targetRef: {{kind: Pod, name: pod-{p}, namespace: ns-{ns}}}", pod_ip(p % PODS))
                    .expect("write");
            }
        } else {
            let ip = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 96, 1, 0)) + u32::try_from(s).expect("small"),
            );
            writeln!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\n\
                 spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}, {{name: grpc, port: 9090}}]}}"
            )
            .expect("write");
        }
    }
    netd_testkit::state(&y)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn wire_query(name: &str, qtype: WireType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().expect("encode")
}

fn bench(c: &mut Criterion) {
    let state = cluster();
    let config = ZoneConfig::default();
    let before = rss_kib();
    let zone = Zone::build(&state, &config);
    eprintln!(
        "zone: {} records, {} Services, {} Pods; resident memory +{} KiB for the zone",
        zone.record_count(),
        state.services().count(),
        state.pods().count(),
        rss_kib().saturating_sub(before)
    );
    let mut group = c.benchmark_group("zone");
    group.sample_size(10);
    group.bench_function("build 10k services 50k pods", |b| {
        b.iter(|| Zone::build(black_box(&state), &config))
    });
    group.finish();

    // One Service added and answered, then removed again so every iteration starts from
    // the same zone: the cost of an event, to its answer, at this size.
    let added = netd_testkit::objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: added, namespace: ns-7}\n\
         spec: {clusterIP: 10.96.200.1, ports: [{name: http, port: 80}]}\n",
    )
    .remove(0);
    let added_id = added.id();
    let asked = Question::new("added.ns-7.svc.cluster.local.", RecordType::A);
    let mut changing = zone.clone();
    let mut group = c.benchmark_group("change");
    group.bench_function("service added, answered, deleted", |b| {
        b.iter(|| {
            changing
                .apply(ZoneChange::Upsert(black_box(&added)))
                .expect("valid");
            assert_eq!(changing.answer(&asked).answers.len(), 1);
            changing
                .apply(ZoneChange::Delete(&added_id))
                .expect("delete")
        })
    });
    group.finish();

    let questions = [
        (
            "A clusterip",
            Question::new("svc-4321.ns-21.svc.cluster.local.", RecordType::A),
        ),
        (
            "A headless",
            Question::new("svc-4320.ns-20.svc.cluster.local.", RecordType::A),
        ),
        (
            "SRV headless",
            Question::new(
                "_http._tcp.svc-4320.ns-20.svc.cluster.local.",
                RecordType::Srv,
            ),
        ),
        (
            "PTR clusterip",
            Question::new("226.17.96.10.in-addr.arpa.", RecordType::Ptr),
        ),
        (
            "A pod insecure",
            Question::new("10-244-1-7.ns-3.pod.cluster.local.", RecordType::A),
        ),
        (
            "NXDOMAIN",
            Question::new("nope.ns-20.svc.cluster.local.", RecordType::A),
        ),
        (
            "NODATA",
            Question::new("svc-4321.ns-21.svc.cluster.local.", RecordType::Aaaa),
        ),
    ];
    let mut group = c.benchmark_group("answer");
    for (label, q) in &questions {
        group.bench_function(*label, |b| b.iter(|| zone.answer(black_box(q))));
    }
    group.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared = SharedZone::new(zone);
    let handler = Handler::new(
        shared.clone(),
        ForwardConfig::default(),
        Arc::new(Metrics::new()),
    );
    let mut group = c.benchmark_group("wire");
    for (label, name, qtype) in [
        (
            "A clusterip",
            "svc-4321.ns-21.svc.cluster.local.",
            WireType::A,
        ),
        (
            "SRV headless",
            "_http._tcp.svc-4320.ns-20.svc.cluster.local.",
            WireType::SRV,
        ),
        ("NXDOMAIN", "nope.ns-20.svc.cluster.local.", WireType::A),
    ] {
        let bytes = wire_query(name, qtype);
        group.bench_function(label, |b| {
            b.iter(|| rt.block_on(handler.answer_bytes(black_box(&bytes), Transport::Udp)))
        });
    }
    // As the server does it: the change under the zone's write lock, then a wire query.
    let bytes = wire_query("added.ns-7.svc.cluster.local.", WireType::A);
    group.bench_function("service added, to answered over the handler", |b| {
        b.iter(|| {
            shared.update(|z| z.apply(ZoneChange::Upsert(&added)).expect("valid"));
            let answer = rt.block_on(handler.answer_bytes(black_box(&bytes), Transport::Udp));
            shared.update(|z| z.apply(ZoneChange::Delete(&added_id)).expect("delete"));
            answer
        })
    });
    group.finish();
}

// In a private module, so the macro's undocumented `pub fn` is not exported.
mod group {
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
criterion_main!(group::benches);
