//! Table-driven tests of the zone: every record kind of the specification and every
//! negative answer, without sockets.

mod common;

use netd_dns::{
    Answer, PodMode, Question, Rcode, Record, RecordData, RecordType, Zone, ZoneConfig,
};

fn show(r: &Record) -> String {
    let data = match &r.data {
        RecordData::A(ip) => format!("A {ip}"),
        RecordData::Aaaa(ip) => format!("AAAA {ip}"),
        RecordData::Cname(n) => format!("CNAME {n}"),
        RecordData::Ns(n) => format!("NS {n}"),
        RecordData::Ptr(n) => format!("PTR {n}"),
        RecordData::Txt(t) => format!("TXT {t:?}"),
        RecordData::Srv(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
        RecordData::Soa(s) => format!("SOA {} {} {}", s.mname, s.rname, s.minimum),
    };
    format!("{} {} {data}", r.name, r.ttl)
}

fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Answer {
    zone.answer(&Question::new(name, qtype))
}

const SOA: &str = "cluster.local 5 SOA ns.dns.cluster.local hostmaster.cluster.local 5";
const SOA_IN_ADDR: &str = "in-addr.arpa 5 SOA ns.dns.cluster.local hostmaster.cluster.local 5";

/// Question name, type, expected rcode, answer section, authority section.
type Case = (
    &'static str,
    RecordType,
    Rcode,
    &'static [&'static str],
    &'static [&'static str],
);

#[test]
fn answers_every_record_kind_and_negative_answer() {
    use RecordType::*;
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    // (question, type, rcode, answers, authority)
    let cases: &[Case] = &[
        // ClusterIP Service: A, case-insensitive, with or without the trailing dot.
        (
            "web.default.svc.cluster.local.",
            A,
            Rcode::NoError,
            &["web.default.svc.cluster.local 5 A 10.96.0.20"],
            &[],
        ),
        (
            "WEB.Default.SVC.cluster.local",
            A,
            Rcode::NoError,
            &["web.default.svc.cluster.local 5 A 10.96.0.20"],
            &[],
        ),
        // NODATA: the name exists, not the type.
        (
            "web.default.svc.cluster.local",
            Aaaa,
            Rcode::NoError,
            &[],
            &[SOA],
        ),
        (
            "web.default.svc.cluster.local",
            Other(15),
            Rcode::NoError,
            &[],
            &[SOA],
        ),
        (
            "web.default.svc.cluster.local",
            Any,
            Rcode::NoError,
            &["web.default.svc.cluster.local 5 A 10.96.0.20"],
            &[],
        ),
        // Dual-stack: AAAA.
        (
            "dual.default.svc.cluster.local",
            Aaaa,
            Rcode::NoError,
            &["dual.default.svc.cluster.local 5 AAAA fd00:10:96::30"],
            &[],
        ),
        (
            "dual.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["dual.default.svc.cluster.local 5 A 10.96.0.30"],
            &[],
        ),
        // A Service for another proxy is still in DNS.
        (
            "proxied.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["proxied.default.svc.cluster.local 5 A 10.96.0.40"],
            &[],
        ),
        // SRV for named ports of a ClusterIP Service.
        (
            "_http._tcp.web.default.svc.cluster.local",
            Srv,
            Rcode::NoError,
            &[
                "_http._tcp.web.default.svc.cluster.local 5 SRV 0 100 80 web.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            "_dns._udp.web.default.svc.cluster.local",
            Srv,
            Rcode::NoError,
            &[
                "_dns._udp.web.default.svc.cluster.local 5 SRV 0 100 53 web.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            "_http._udp.web.default.svc.cluster.local",
            Srv,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        (
            "_tcp.web.default.svc.cluster.local",
            Srv,
            Rcode::NoError,
            &[],
            &[SOA],
        ),
        (
            "_http._tcp.dual.default.svc.cluster.local",
            Srv,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        // Headless: ready endpoint addresses only.
        (
            "db.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &[
                "db.default.svc.cluster.local 5 A 10.244.1.5",
                "db.default.svc.cluster.local 5 A 10.244.2.6",
                "db.default.svc.cluster.local 5 A 10.244.2.8",
            ],
            &[],
        ),
        (
            "db-0.db.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["db-0.db.default.svc.cluster.local 5 A 10.244.1.5"],
            &[],
        ),
        // The Pod's hostname and subdomain name the endpoint.
        (
            "db-1.db.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["db-1.db.default.svc.cluster.local 5 A 10.244.2.6"],
            &[],
        ),
        // Without a hostname: the dashed address.
        (
            "10-244-2-8.db.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["10-244-2-8.db.default.svc.cluster.local 5 A 10.244.2.8"],
            &[],
        ),
        (
            "10-244-1-7.db.default.svc.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local",
            Srv,
            Rcode::NoError,
            &[
                "_pg._tcp.db.default.svc.cluster.local 5 SRV 0 33 5432 10-244-2-8.db.default.svc.cluster.local",
                "_pg._tcp.db.default.svc.cluster.local 5 SRV 0 33 5432 db-0.db.default.svc.cluster.local",
                "_pg._tcp.db.default.svc.cluster.local 5 SRV 0 33 5432 db-1.db.default.svc.cluster.local",
            ],
            &[],
        ),
        // A headless Service without ready endpoints does not exist (the specification's NXDOMAIN).
        (
            "empty.default.svc.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        // publishNotReadyAddresses publishes not-ready endpoints.
        (
            "pnr.other.svc.cluster.local",
            A,
            Rcode::NoError,
            &["pnr.other.svc.cluster.local 5 A 10.244.1.9"],
            &[],
        ),
        // ExternalName: a CNAME; in-zone targets are followed.
        (
            "ext.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &["ext.default.svc.cluster.local 5 CNAME example.com"],
            &[],
        ),
        (
            "ext.default.svc.cluster.local",
            Cname,
            Rcode::NoError,
            &["ext.default.svc.cluster.local 5 CNAME example.com"],
            &[],
        ),
        (
            "alias.default.svc.cluster.local",
            A,
            Rcode::NoError,
            &[
                "alias.default.svc.cluster.local 5 CNAME web.default.svc.cluster.local",
                "web.default.svc.cluster.local 5 A 10.96.0.20",
            ],
            &[],
        ),
        (
            "alias.default.svc.cluster.local",
            Aaaa,
            Rcode::NoError,
            &["alias.default.svc.cluster.local 5 CNAME web.default.svc.cluster.local"],
            &[SOA],
        ),
        // PTR for ClusterIPs (IPv4 and IPv6) and headless endpoints.
        (
            "20.0.96.10.in-addr.arpa",
            Ptr,
            Rcode::NoError,
            &["20.0.96.10.in-addr.arpa 5 PTR web.default.svc.cluster.local"],
            &[],
        ),
        (
            "5.1.244.10.in-addr.arpa",
            Ptr,
            Rcode::NoError,
            &["5.1.244.10.in-addr.arpa 5 PTR db-0.db.default.svc.cluster.local"],
            &[],
        ),
        (
            "8.2.244.10.in-addr.arpa",
            Ptr,
            Rcode::NoError,
            &["8.2.244.10.in-addr.arpa 5 PTR 10-244-2-8.db.default.svc.cluster.local"],
            &[],
        ),
        (
            "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
            Ptr,
            Rcode::NoError,
            &[
                "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa 5 PTR dual.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            "99.0.96.10.in-addr.arpa",
            Ptr,
            Rcode::NxDomain,
            &[],
            &[SOA_IN_ADDR],
        ),
        (
            "20.0.96.10.in-addr.arpa",
            A,
            Rcode::NoError,
            &[],
            &[SOA_IN_ADDR],
        ),
        // Pods, insecure mode: any address in an existing namespace.
        (
            "10-244-1-3.default.pod.cluster.local",
            A,
            Rcode::NoError,
            &["10-244-1-3.default.pod.cluster.local 5 A 10.244.1.3"],
            &[],
        ),
        (
            "1-2-3-4.other.pod.cluster.local",
            A,
            Rcode::NoError,
            &["1-2-3-4.other.pod.cluster.local 5 A 1.2.3.4"],
            &[],
        ),
        (
            "fd00--1.default.pod.cluster.local",
            Aaaa,
            Rcode::NoError,
            &["fd00--1.default.pod.cluster.local 5 AAAA fd00::1"],
            &[],
        ),
        (
            "1-2-3-4.default.pod.cluster.local",
            Aaaa,
            Rcode::NoError,
            &[],
            &[SOA],
        ),
        (
            "1-2-3-4.nope.pod.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        (
            "web.default.pod.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        ("default.pod.cluster.local", A, Rcode::NoError, &[], &[SOA]),
        // The schema version, the apex and empty non-terminals.
        (
            "dns-version.cluster.local",
            Txt,
            Rcode::NoError,
            &["dns-version.cluster.local 5 TXT \"1.1.0\""],
            &[],
        ),
        ("cluster.local", Soa, Rcode::NoError, &[SOA], &[]),
        (
            "cluster.local",
            Ns,
            Rcode::NoError,
            &["cluster.local 5 NS ns.dns.cluster.local"],
            &[],
        ),
        (
            "ns.dns.cluster.local",
            A,
            Rcode::NoError,
            &["ns.dns.cluster.local 5 A 10.96.0.10"],
            &[],
        ),
        ("svc.cluster.local", A, Rcode::NoError, &[], &[SOA]),
        ("default.svc.cluster.local", A, Rcode::NoError, &[], &[SOA]),
        ("other.svc.cluster.local", A, Rcode::NoError, &[], &[SOA]),
        (
            "kube-public.svc.cluster.local",
            A,
            Rcode::NoError,
            &[],
            &[SOA],
        ),
        // NXDOMAIN.
        (
            "nope.default.svc.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        (
            "web.nope.svc.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        (
            "a.b.web.default.svc.cluster.local",
            A,
            Rcode::NxDomain,
            &[],
            &[SOA],
        ),
        ("nope.cluster.local", A, Rcode::NxDomain, &[], &[SOA]),
    ];
    for (name, qtype, rcode, answers, authority) in cases {
        let got = ask(&zone, name, *qtype);
        let context = format!("{name} {qtype:?}");
        assert!(got.authoritative, "{context}");
        assert!(zone.is_authoritative(name), "{context}");
        assert_eq!(got.rcode, *rcode, "{context}");
        assert_eq!(
            got.answers.iter().map(show).collect::<Vec<_>>(),
            *answers,
            "{context}"
        );
        assert_eq!(
            got.authority.iter().map(show).collect::<Vec<_>>(),
            *authority,
            "{context}"
        );
    }
}

#[test]
fn srv_answers_carry_target_addresses() {
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    let got = ask(
        &zone,
        "_pg._tcp.db.default.svc.cluster.local",
        RecordType::Srv,
    );
    let additional: Vec<String> = got.additional.iter().map(show).collect();
    assert_eq!(
        additional,
        [
            "10-244-2-8.db.default.svc.cluster.local 5 A 10.244.2.8",
            "db-0.db.default.svc.cluster.local 5 A 10.244.1.5",
            "db-1.db.default.svc.cluster.local 5 A 10.244.2.6",
        ]
    );
    let got = ask(
        &zone,
        "_http._tcp.web.default.svc.cluster.local",
        RecordType::Srv,
    );
    assert_eq!(
        got.additional.iter().map(show).collect::<Vec<_>>(),
        ["web.default.svc.cluster.local 5 A 10.96.0.20"]
    );
    let got = ask(&zone, "cluster.local", RecordType::Ns);
    assert_eq!(
        got.additional.iter().map(show).collect::<Vec<_>>(),
        ["ns.dns.cluster.local 5 A 10.96.0.10"]
    );
}

#[test]
fn names_outside_the_zone_are_not_authoritative() {
    let zone = Zone::build(&common::cluster(), &ZoneConfig::default());
    for name in [
        "example.com",
        "8.8.8.8.in-addr.arpa",
        "96.10.in-addr.arpa",
        "local",
        "xcluster.local",
    ] {
        let got = ask(&zone, name, RecordType::A);
        assert!(!got.authoritative, "{name}");
        assert!(!zone.is_authoritative(name), "{name}");
        assert_eq!(got.rcode, Rcode::Refused, "{name}");
        assert!(got.answers.is_empty() && got.authority.is_empty(), "{name}");
    }
}

#[test]
fn pod_modes() {
    let state = common::cluster();
    let verified = Zone::build(
        &state,
        &ZoneConfig {
            pods: PodMode::Verified,
            ..ZoneConfig::default()
        },
    );
    assert_eq!(
        ask(
            &verified,
            "10-244-1-3.default.pod.cluster.local",
            RecordType::A
        )
        .answers
        .len(),
        1
    );
    assert_eq!(
        ask(
            &verified,
            "1-2-3-4.default.pod.cluster.local",
            RecordType::A
        )
        .rcode,
        Rcode::NxDomain
    );
    // The Pod's own namespace only.
    assert_eq!(
        ask(
            &verified,
            "10-244-1-3.other.pod.cluster.local",
            RecordType::A
        )
        .rcode,
        Rcode::NxDomain
    );
    let disabled = Zone::build(
        &state,
        &ZoneConfig {
            pods: PodMode::Disabled,
            ..ZoneConfig::default()
        },
    );
    assert_eq!(
        ask(
            &disabled,
            "10-244-1-3.default.pod.cluster.local",
            RecordType::A
        )
        .rcode,
        Rcode::NxDomain
    );
    assert_eq!(
        ask(&disabled, "pod.cluster.local", RecordType::A).rcode,
        Rcode::NxDomain
    );
    assert_eq!("verified".parse::<PodMode>(), Ok(PodMode::Verified));
    assert!("sometimes".parse::<PodMode>().is_err());
}

#[test]
fn ttl_and_negative_ttl_follow_the_configuration() {
    let config = ZoneConfig {
        ttl: 30,
        origin: "k8s.example".parse().expect("zone"),
        ..ZoneConfig::default()
    };
    let zone = Zone::build(&common::cluster(), &config);
    let got = ask(&zone, "web.default.svc.k8s.example", RecordType::A);
    assert_eq!(
        got.answers.iter().map(show).collect::<Vec<_>>(),
        ["web.default.svc.k8s.example 30 A 10.96.0.20"]
    );
    let got = ask(&zone, "nope.default.svc.k8s.example", RecordType::A);
    assert_eq!(
        got.authority.iter().map(show).collect::<Vec<_>>(),
        ["k8s.example 30 SOA ns.dns.k8s.example hostmaster.k8s.example 30"]
    );
    assert!(!ask(&zone, "web.default.svc.cluster.local", RecordType::A).authoritative);
}

#[test]
fn builds_are_deterministic_and_keep_only_what_answers_need() {
    let state = common::cluster();
    let a = Zone::build(&state, &ZoneConfig::default());
    let b = Zone::build(&state, &ZoneConfig::default());
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.serial(), b.serial());
    let q = Question::new("_pg._tcp.db.default.svc.cluster.local", RecordType::Srv);
    assert_eq!(a.answer(&q), b.answer(&q));
    // The accounting of what a zone holds: every Service and slice, but of the Pods only
    // their names, and the fields of the one with a hostname under a subdomain.
    let stats = a.stats();
    assert_eq!(stats.services, state.services().count());
    assert_eq!(stats.endpoint_slices, 2);
    assert_eq!((stats.pods, stats.pods_kept), (2, 1));
    assert_eq!(stats.records, a.record_count());
    let verified = ZoneConfig {
        pods: PodMode::Verified,
        ..ZoneConfig::default()
    };
    assert_eq!(Zone::build(&state, &verified).stats().pods_kept, 2);
}

#[test]
fn ipv6_headless_endpoints_get_aaaa_and_ip6_arpa_ptr() {
    let state = netd_testkit::state(
        r#"
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: default}
spec: {clusterIP: None, ipFamilies: [IPv6], ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6-1, namespace: default, labels: {kubernetes.io/service-name: v6}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["fd00:10:244::5"]
  hostname: h0
- addresses: ["fd00:10:244::6"]
"#,
    );
    let zone = Zone::build(&state, &ZoneConfig::default());
    let shown = |name: &str, qtype| {
        ask(&zone, name, qtype)
            .answers
            .iter()
            .map(show)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shown("v6.default.svc.cluster.local", RecordType::Aaaa),
        [
            "v6.default.svc.cluster.local 5 AAAA fd00:10:244::5",
            "v6.default.svc.cluster.local 5 AAAA fd00:10:244::6",
        ]
    );
    assert_eq!(
        shown(
            "fd00-10-244--6.v6.default.svc.cluster.local",
            RecordType::Aaaa
        ),
        ["fd00-10-244--6.v6.default.svc.cluster.local 5 AAAA fd00:10:244::6"]
    );
    let reverse = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(
        shown(reverse, RecordType::Ptr),
        [format!("{reverse} 5 PTR h0.v6.default.svc.cluster.local")]
    );
    assert_eq!(
        shown("_http._tcp.v6.default.svc.cluster.local", RecordType::Srv),
        [
            "_http._tcp.v6.default.svc.cluster.local 5 SRV 0 50 8080 fd00-10-244--6.v6.default.svc.cluster.local",
            "_http._tcp.v6.default.svc.cluster.local 5 SRV 0 50 8080 h0.v6.default.svc.cluster.local",
        ]
    );
}
