//! The handler without sockets: wire messages in, wire messages out.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use netd_dns::{ForwardConfig, Handler, Metrics, SharedZone, Transport, Zone, ZoneConfig};
use proptest::prelude::*;
use tokio::net::UdpSocket;

fn handler_for(
    state: &netd_model::ClusterState,
    upstreams: Vec<SocketAddr>,
) -> (Handler, Arc<Metrics>) {
    let zone = Zone::build(state, &ZoneConfig::default());
    let metrics = Arc::new(Metrics::new());
    let forward = ForwardConfig {
        upstreams,
        timeout: Duration::from_secs(2),
        ..ForwardConfig::default()
    };
    (
        Handler::new(SharedZone::new(zone), forward, metrics.clone()),
        metrics,
    )
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

async fn ask(h: &Handler, name: &str, qtype: RecordType) -> Message {
    let bytes = h
        .answer_bytes(&query(name, qtype, Some(1232)), Transport::Udp)
        .await
        .expect("a response");
    Message::from_vec(&bytes).expect("a valid response")
}

fn data(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

#[tokio::test]
async fn answers_from_the_zone_with_the_aa_bit() {
    let (h, metrics) = handler_for(&common::cluster(), vec![]);
    // Question name, type, rcode, answers, number of authority records.
    type Case = (
        &'static str,
        RecordType,
        ResponseCode,
        &'static [&'static str],
        usize,
    );
    let cases: &[Case] = &[
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["web.default.svc.cluster.local. A 10.96.0.20"],
            0,
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
            &[],
            1,
        ),
        (
            "nope.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
            1,
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            ResponseCode::NoError,
            &[
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 33 5432 10-244-2-8.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 33 5432 db-0.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 33 5432 db-1.db.default.svc.cluster.local.",
            ],
            0,
        ),
        (
            "20.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            ResponseCode::NoError,
            &["20.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."],
            0,
        ),
        (
            "ext.default.svc.cluster.local.",
            RecordType::CNAME,
            ResponseCode::NoError,
            &["ext.default.svc.cluster.local. CNAME example.com."],
            0,
        ),
        (
            "dns-version.cluster.local.",
            RecordType::TXT,
            ResponseCode::NoError,
            &["dns-version.cluster.local. TXT 1.1.0"],
            0,
        ),
        (
            "1-2-3-4.default.pod.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["1-2-3-4.default.pod.cluster.local. A 1.2.3.4"],
            0,
        ),
    ];
    for (name, qtype, rcode, answers, authorities) in cases {
        let m = ask(&h, name, *qtype).await;
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative, "{name}");
        assert_eq!(m.metadata.response_code, *rcode, "{name}");
        assert_eq!(data(&m.answers), *answers, "{name}");
        assert_eq!(m.authorities.len(), *authorities, "{name}");
        if *authorities == 1 {
            assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{name}");
            assert_eq!(m.authorities[0].ttl, 5, "{name}");
        }
        assert!(m.edns.is_some(), "EDNS answered with EDNS: {name}");
    }
    let srv = ask(
        &h,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv.additionals.len(), 3, "A records of the SRV targets");
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"coredns_dns_requests_total{server="",zone="cluster.local.",proto="udp",family="1",type="A"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"coredns_dns_responses_total{server="",zone="cluster.local.",rcode="NXDOMAIN"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn keeps_the_question_spelling_in_answers() {
    let (h, _) = handler_for(&common::cluster(), vec![]);
    let m = ask(&h, "WeB.default.SVC.cluster.local.", RecordType::A).await;
    assert_eq!(
        m.answers[0].name.to_string(),
        "WeB.default.SVC.cluster.local."
    );
}

#[tokio::test]
async fn refuses_or_rejects_what_it_does_not_serve() {
    let (h, _) = handler_for(&common::cluster(), vec![]);
    // No upstream: SERVFAIL at once.
    let m = ask(&h, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(!m.metadata.authoritative);
    // Two questions: FORMERR.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.cluster.local.").expect("name"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").expect("name"),
        RecordType::A,
    ));
    let m = reply(&h, &two).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // A NOTIFY: NOTIMP.
    let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(
        Name::from_ascii("cluster.local.").expect("name"),
        RecordType::SOA,
    ));
    assert_eq!(
        reply(&h, &notify).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // Class CH: REFUSED.
    let mut chaos = Message::query();
    let mut q = Query::query(
        Name::from_ascii("version.bind.").expect("name"),
        RecordType::TXT,
    );
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    assert_eq!(
        reply(&h, &chaos).await.metadata.response_code,
        ResponseCode::Refused
    );
    // EDNS version 1: BADVERS.
    let mut v1 = Message::query();
    v1.add_query(Query::query(
        Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    v1.set_edns(e);
    // 16 is BADVERS in a response to an EDNS query (and BADSIG to hickory's parser).
    assert_eq!(u16::from(reply(&h, &v1).await.metadata.response_code), 16);
}

async fn reply(h: &Handler, m: &Message) -> Message {
    let bytes = h
        .answer_bytes(&m.to_vec().expect("encode"), Transport::Udp)
        .await
        .expect("a response");
    Message::from_vec(&bytes).expect("valid")
}

#[tokio::test]
async fn malformed_messages_get_formerr_or_nothing() {
    let (h, _) = handler_for(&common::cluster(), vec![]);
    assert_eq!(h.answer_bytes(b"short", Transport::Udp).await, None);
    // A header announcing one question, then garbage.
    let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 7]);
    let bytes = h
        .answer_bytes(&garbage, Transport::Udp)
        .await
        .expect("FORMERR");
    let m = Message::from_vec(&bytes).expect("valid");
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn truncates_udp_answers_that_do_not_fit() {
    let state = netd_testkit::state(&common::big_headless(120));
    let (h, _) = handler_for(&state, vec![]);
    let q = query("many.big.svc.cluster.local.", RecordType::A, None);
    let udp =
        Message::from_vec(&h.answer_bytes(&q, Transport::Udp).await.expect("udp")).expect("valid");
    assert!(
        udp.metadata.truncation,
        "120 A records do not fit 512 bytes"
    );
    assert!(udp.answers.len() < 120);
    let q = query("many.big.svc.cluster.local.", RecordType::A, Some(4096));
    let big =
        Message::from_vec(&h.answer_bytes(&q, Transport::Udp).await.expect("udp")).expect("valid");
    assert!(!big.metadata.truncation, "120 A records fit 4096 bytes");
    assert_eq!(big.answers.len(), 120);
    let q = query(
        "_http._tcp.many.big.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    );
    let tcp =
        Message::from_vec(&h.answer_bytes(&q, Transport::Tcp).await.expect("tcp")).expect("valid");
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 120);
    assert_eq!(tcp.additionals.len(), 120);
}

#[tokio::test]
async fn forwards_other_names_and_caches_them() {
    let (upstream, count) = common::fake_upstream().await;
    let (h, metrics) = handler_for(&common::cluster(), vec![upstream]);
    for _ in 0..3 {
        let m = ask(&h, "www.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert_eq!(data(&m.answers), ["www.example.org. A 192.0.2.1"]);
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "answered from the cache after the first"
    );
    let text = metrics.encode();
    for want in [
        r#"coredns_cache_hits_total{server="",type="success",zones="."} 2"#,
        r#"coredns_cache_misses_total{server="",zones="."} 1"#,
        r#"coredns_cache_entries{server="",type="success",zones="."} 1"#,
        r#"coredns_forward_requests_total{to="#,
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // An ExternalName alias leaving the zone is chased upstream.
    let m = ask(&h, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        data(&m.answers),
        [
            "ext.default.svc.cluster.local. CNAME example.com.",
            "example.com. A 192.0.2.1"
        ]
    );
    // Reverse names outside the cluster ranges are forwarded too.
    let m = ask(&h, "8.8.8.8.in-addr.arpa.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail() {
    // Bound but never read: the query times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let forward = ForwardConfig {
        upstreams: vec![addr],
        timeout: Duration::from_millis(200),
        ..ForwardConfig::default()
    };
    let h = Handler::new(SharedZone::new(zone), forward, Arc::new(Metrics::new()));
    let m = ask(&h, "www.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn follows_zone_updates() {
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let shared = SharedZone::new(zone);
    let h = Handler::new(
        shared.clone(),
        ForwardConfig::default(),
        Arc::new(Metrics::new()),
    );
    assert_eq!(
        ask(&h, "web.default.svc.cluster.local.", RecordType::A)
            .await
            .answers
            .len(),
        1
    );
    let moved = netd_testkit::state(&common::CLUSTER.replace("name: web,", "name: web2,"));
    shared.replace(Zone::build(&moved, &ZoneConfig::default()));
    let m = ask(&h, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        ask(&h, "web2.default.svc.cluster.local.", RecordType::A)
            .await
            .answers
            .len(),
        1
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The fuzz target's property: any bytes give no answer, or a well-formed response with
    /// the query's ID; nothing panics.
    #[test]
    fn arbitrary_bytes_never_break_the_handler(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (h, _) = handler_for(&common::cluster(), vec![]);
        if let Some(out) = rt.block_on(h.answer_bytes(&bytes, Transport::Udp)) {
            let m = Message::from_vec(&out).expect("a well-formed response");
            prop_assert_eq!(m.metadata.message_type, MessageType::Response);
            prop_assert_eq!(&out[..2], &bytes[..2]);
        }
    }

    /// Well-formed questions for arbitrary names in the zone get an authoritative answer.
    #[test]
    fn arbitrary_names_in_the_zone_are_answered(labels in proptest::collection::vec("[a-z0-9_][a-z0-9_-]{0,11}", 1..5), qtype in 0u16..300) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (h, _) = handler_for(&common::cluster(), vec![]);
        let name = format!("{}.cluster.local.", labels.join("."));
        let q = query(&name, RecordType::from(qtype), Some(1232));
        let out = rt.block_on(h.answer_bytes(&q, Transport::Udp)).expect("a response");
        let m = Message::from_vec(&out).expect("valid");
        if qtype != 0 && RecordType::from(qtype) != RecordType::OPT {
            prop_assert!(m.metadata.authoritative);
            prop_assert!(matches!(m.metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain));
        }
    }
}

#[tokio::test]
async fn dashed_ipv6_pod_names_answer() {
    let (h, _) = handler_for(&common::cluster(), vec![]);
    // `::1` dashed starts with `-`, which hickory's text parser refuses: build from labels.
    let labels: [&[u8]; 5] = [b"--1", b"default", b"pod", b"cluster", b"local"];
    let mut name = Name::from_labels(labels).expect("name");
    name.set_fqdn(true);
    let mut m = Message::query();
    m.add_query(Query::query(name, RecordType::AAAA));
    let r = reply(&h, &m).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    // hickory prints the leading `-` escaped.
    assert_eq!(
        data(&r.answers),
        [r"\--1.default.pod.cluster.local. AAAA ::1"]
    );
}

#[tokio::test]
async fn stub_domains_go_to_their_own_resolvers() {
    let (upstream, upstream_count) = common::fake_upstream().await;
    let (stub, stub_count) = common::fake_upstream().await;
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let forward = ForwardConfig {
        upstreams: vec![upstream],
        stub_domains: [("corp.example".parse().expect("suffix"), vec![stub])].into(),
        ..ForwardConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let h = Handler::new(SharedZone::new(zone), forward, metrics.clone());
    let m = ask(&h, "db.eu.CORP.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(stub_count.load(Ordering::SeqCst), 1);
    assert_eq!(upstream_count.load(Ordering::SeqCst), 0);
    ask(&h, "www.example.org.", RecordType::A).await;
    assert_eq!(upstream_count.load(Ordering::SeqCst), 1);
    assert_eq!(stub_count.load(Ordering::SeqCst), 1);
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            r#"coredns_forward_requests_total{{to="{stub}"}} 1"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"coredns_forward_responses_total{{to="{upstream}",rcode="NOERROR"}} 1"#
        )),
        "{text}"
    );
}

/// An upstream answering NXDOMAIN with an SOA whose minimum is 60 s (so the denial may be
/// cached, RFC 2308), counting the questions it gets.
async fn denying_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.response_code = ResponseCode::NXDomain;
            r.add_queries(q.queries.clone());
            let origin = Name::from_ascii("example.").expect("name");
            r.add_authority(Record::from_rdata(
                origin.clone(),
                60,
                RData::SOA(hickory_proto::rr::rdata::SOA::new(
                    origin.clone(),
                    origin,
                    1,
                    3600,
                    600,
                    86400,
                    60,
                )),
            ));
            let _ = socket.send_to(&r.to_vec().expect("encode"), peer).await;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn denials_are_cached_unless_denial_caching_is_off() {
    for (denial_ttl, asked) in [(Duration::from_secs(30), 1), (Duration::ZERO, 3)] {
        let (upstream, count) = denying_upstream().await;
        let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
        let forward = ForwardConfig {
            upstreams: vec![upstream],
            cache: netd_dns::CacheConfig {
                denial_ttl,
                ..netd_dns::CacheConfig::default()
            },
            ..ForwardConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let h = Handler::new(SharedZone::new(zone), forward, metrics.clone());
        for _ in 0..3 {
            let m = ask(&h, "nope.example.", RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        }
        assert_eq!(count.load(Ordering::SeqCst), asked, "{denial_ttl:?}");
        if asked == 1 {
            let text = metrics.encode();
            assert!(
                text.contains(r#"coredns_cache_hits_total{server="",type="denial",zones="."} 2"#),
                "{text}"
            );
        }
    }
}
