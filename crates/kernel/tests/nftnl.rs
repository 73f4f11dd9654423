//! nf_tables over netlink against the real kernel: each test creates namespaces named
//! `nftnl-<pid>-...`, sends batches there, and reads the result back with `nft list`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use netd_kernel::netns;
use netd_kernel::nftnl::conntrack::{self, FlowFilter};
use netd_kernel::nftnl::{
    BaseChain, Chain, ChainType, CmpOp, DynsetOp, Element, Expr, Family, FibAddr, HookPoint, Key,
    KeyType, MetaKey, NatKind, NftError, Policy, Register, Reject, Rule, Set, SetFlags,
    Transaction, Verdict,
};

use netd_testkit::scratch::ScratchNetns;

const T: &str = "kube-netd";
const IP: Family = Family::Ip;
const TCP: u8 = 6;
const UDP: u8 = 17;
const MASQ_BIT: u32 = 0x4000;
const R0: Register = Register::reg32(0);
const R1: Register = Register::reg32(1);
const R2: Register = Register::reg32(2);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn nft(ns: &str, args: &[&str]) -> String {
    let out = netns::exec(ns, &[&["nft"], args].concat()).expect("nft");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn rule(exprs: Vec<Expr>) -> Rule {
    Rule::new(exprs)
}

fn base(kind: ChainType, hook: HookPoint, priority: i32) -> BaseChain {
    BaseChain {
        kind,
        hook,
        priority,
        policy: Policy::Accept,
    }
}

fn jump(chain: &str) -> Expr {
    Expr::verdict(Verdict::Jump(chain.to_owned()))
}

/// `meta mark set meta mark | bits` (or `^ bits` with `xor`).
fn set_mark_bits(bits: u32, clear: bool) -> Vec<Expr> {
    let (mask, xor) = if clear {
        (u32::MAX, bits)
    } else {
        (!bits, bits)
    };
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: R0,
        },
        Expr::Bitwise {
            sreg: R0,
            dreg: R0,
            mask: mask.to_ne_bytes().to_vec(),
            xor: xor.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: R0,
        },
    ]
}

fn dnat_to(addr: Ipv4Addr, port: u16) -> Vec<Expr> {
    dnat(TCP, addr, port)
}

/// `meta l4proto PROTO dnat to ADDR:PORT`.
fn dnat(proto: u8, addr: Ipv4Addr, port: u16) -> Vec<Expr> {
    vec![
        Expr::l4proto(R0),
        Expr::eq(R0, [proto]),
        Expr::Immediate {
            dreg: R0,
            data: netd_kernel::nftnl::Data::ip(IpAddr::V4(addr)),
        },
        Expr::Immediate {
            dreg: R1,
            data: netd_kernel::nftnl::Data::port(port),
        },
        Expr::Nat {
            kind: NatKind::Dnat,
            family: IP,
            addr: Some(R0),
            port: Some(R1),
        },
    ]
}

/// A kube-proxy-shaped table: hooks, a service verdict map keyed by
/// `ipv4_addr . inet_proto . inet_service`, a per-service chain choosing an endpoint through a
/// `numgen` map, endpoint chains with DNAT, masquerade by mark, affinity, reject, and the
/// other expressions the back end needs.
fn kube_proxy_like() -> Transaction {
    let mut tx = Transaction::new();
    tx.add_table(IP, T);
    for (name, kind, hook, priority) in [
        (
            "nat-prerouting",
            ChainType::Nat,
            HookPoint::Prerouting,
            -100,
        ),
        ("nat-output", ChainType::Nat, HookPoint::Output, -100),
        (
            "nat-postrouting",
            ChainType::Nat,
            HookPoint::Postrouting,
            100,
        ),
        ("filter-input", ChainType::Filter, HookPoint::Input, 0),
    ] {
        tx.add_chain(IP, T, Chain::base(name, base(kind, hook, priority)));
    }
    for name in [
        "services",
        "masquerading",
        "mark-for-masquerade",
        "service-abc",
        "endpoint-1",
        "endpoint-2",
        "firewall",
        "reject-chain",
    ] {
        tx.add_chain(IP, T, Chain::regular(name));
    }
    tx.add_set(
        IP,
        T,
        Set {
            comment: Some("ClusterIP, ExternalIP and LoadBalancer IP traffic".into()),
            ..Set::verdict_map(
                "service-ips",
                &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            )
        },
    );
    tx.add_set(
        IP,
        T,
        Set::verdict_map("service-abc-endpoints", &[KeyType::Mark]),
    );
    tx.add_set(
        IP,
        T,
        Set {
            flags: SetFlags {
                dynamic: true,
                timeout: true,
                ..SetFlags::default()
            },
            timeout: Some(Duration::from_secs(10800)),
            ..Set::new("affinity-abc", &[KeyType::Ipv4Addr])
        },
    );
    tx.add_set(
        IP,
        T,
        Set {
            flags: SetFlags {
                interval: true,
                ..SetFlags::default()
            },
            ..Set::new("blocked", &[KeyType::Ipv4Addr])
        },
    );
    tx.add_elements(
        IP,
        T,
        "service-ips",
        vec![Element::verdict(
            Key::new().ip(ip("10.96.0.10")).proto(TCP).port(80),
            Verdict::Goto("service-abc".into()),
        )],
    );
    tx.add_elements(
        IP,
        T,
        "service-abc-endpoints",
        vec![
            Element::verdict(Key::new().mark(0), Verdict::Goto("endpoint-1".into())),
            Element::verdict(Key::new().mark(1), Verdict::Goto("endpoint-2".into())),
        ],
    );
    tx.add_elements(
        IP,
        T,
        "blocked",
        vec![
            Element::range(
                Key::new().ip(ip("192.0.2.0")),
                Key::new().ip(ip("192.0.2.255")),
            ),
            Element::range(
                Key::new().ip(ip("198.51.100.7")),
                Key::new().ip(ip("198.51.100.7")),
            ),
        ],
    );

    tx.add_rule(IP, T, "nat-prerouting", rule(vec![jump("services")]));
    tx.add_rule(IP, T, "nat-output", rule(vec![jump("services")]));
    tx.add_rule(IP, T, "nat-postrouting", rule(vec![jump("masquerading")]));
    tx.add_rule(
        IP,
        T,
        "filter-input",
        rule(vec![
            Expr::CtState { dreg: R0 },
            Expr::Bitwise {
                sreg: R0,
                dreg: R0,
                // established | related
                mask: (2u32 | 4).to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Cmp {
                sreg: R0,
                op: CmpOp::Neq,
                data: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::verdict(Verdict::Accept),
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "filter-input",
        rule(vec![
            Expr::FibType {
                addr: FibAddr::Daddr,
                dreg: R0,
            },
            Expr::eq(R0, 2u32.to_ne_bytes()), // local
            jump("firewall"),
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "services",
        rule(vec![
            Expr::daddr(IP, R0),
            Expr::l4proto(R1),
            Expr::th_dport(R2),
            Expr::Lookup {
                set: "service-ips".into(),
                sreg: R0,
                dreg: Some(Register::VERDICT),
                invert: false,
            },
        ])
        .comment("service IPs"),
    );
    tx.add_rule(
        IP,
        T,
        "mark-for-masquerade",
        rule(set_mark_bits(MASQ_BIT, false)),
    );
    tx.add_rule(
        IP,
        T,
        "masquerading",
        rule(vec![
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: R0,
            },
            Expr::Bitwise {
                sreg: R0,
                dreg: R0,
                mask: MASQ_BIT.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::eq(R0, 0u32.to_ne_bytes()),
            Expr::verdict(Verdict::Return),
        ]),
    );
    tx.add_rule(IP, T, "masquerading", rule(set_mark_bits(MASQ_BIT, true)));
    tx.add_rule(
        IP,
        T,
        "masquerading",
        rule(vec![Expr::Masquerade { fully_random: true }]),
    );
    tx.add_rule(
        IP,
        T,
        "service-abc",
        rule(vec![
            Expr::saddr(IP, R0),
            Expr::Bitwise {
                sreg: R0,
                dreg: R0,
                mask: vec![255, 0, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: R0,
                op: CmpOp::Neq,
                data: vec![10, 0, 0, 0],
            },
            jump("mark-for-masquerade"),
        ])
        .comment("default/abc:http cluster IP"),
    );
    tx.add_rule(
        IP,
        T,
        "service-abc",
        rule(vec![
            Expr::saddr(IP, R0),
            Expr::Dynset {
                set: "affinity-abc".into(),
                op: DynsetOp::Update,
                sreg: R0,
                timeout: None,
            },
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "service-abc",
        rule(vec![
            Expr::Numgen {
                dreg: R0,
                modulus: 2,
                offset: 0,
            },
            Expr::Lookup {
                set: "service-abc-endpoints".into(),
                sreg: R0,
                dreg: Some(Register::VERDICT),
                invert: false,
            },
        ]),
    );
    for (chain, addr) in [
        ("endpoint-1", Ipv4Addr::new(10, 1, 0, 1)),
        ("endpoint-2", Ipv4Addr::new(10, 1, 0, 2)),
    ] {
        tx.add_rule(
            IP,
            T,
            chain,
            rule(vec![
                Expr::saddr(IP, R0),
                Expr::eq(R0, addr.octets()),
                jump("mark-for-masquerade"),
            ]),
        );
        tx.add_rule(IP, T, chain, rule(dnat_to(addr, 8080)));
    }
    tx.add_rule(
        IP,
        T,
        "firewall",
        rule(vec![
            Expr::saddr(IP, R0),
            Expr::Lookup {
                set: "blocked".into(),
                sreg: R0,
                dreg: None,
                invert: false,
            },
            Expr::Counter,
            Expr::verdict(Verdict::Drop),
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "firewall",
        rule(vec![
            Expr::saddr(IP, R0),
            Expr::Lookup {
                set: "blocked".into(),
                sreg: R0,
                dreg: None,
                invert: true,
            },
            Expr::th_dport(R1),
            Expr::Range {
                sreg: R1,
                op: CmpOp::Eq,
                from: 30000u16.to_be_bytes().to_vec(),
                to: 32767u16.to_be_bytes().to_vec(),
            },
            jump("reject-chain"),
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "reject-chain",
        rule(vec![
            Expr::l4proto(R0),
            Expr::eq(R0, [TCP]),
            Expr::Reject(Reject::TcpReset),
        ]),
    );
    tx.add_rule(
        IP,
        T,
        "reject-chain",
        rule(vec![Expr::Reject(Reject::Icmp(1))]), // host-unreachable
    );
    tx
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/nftnl")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("read golden (UPDATE_GOLDEN=1 writes it)");
    pretty_assertions::assert_eq!(expected, actual, "{} differs", path.display());
}

#[test]
fn a_kube_proxy_shaped_table_loads_in_one_batch_and_reads_back_as_expected() {
    let ns = ScratchNetns::new("nftnl", "load");
    kube_proxy_like().commit(ns.name()).expect("commit");
    check_golden("kube-proxy-like.nft", &nft(ns.name(), &["list", "ruleset"]));
}

#[test]
fn a_refused_batch_names_the_message_and_changes_nothing() {
    let ns = ScratchNetns::new("nftnl", "bad");
    kube_proxy_like().commit(ns.name()).expect("commit");
    let before = nft(ns.name(), &["list", "ruleset"]);

    let mut tx = Transaction::new();
    tx.add_chain(IP, T, Chain::regular("new-chain"))
        .add_elements(
            IP,
            T,
            "service-ips",
            vec![Element::verdict(
                Key::new().ip(ip("10.96.0.99")).proto(UDP).port(53),
                Verdict::Goto("service-abc".into()),
            )],
        )
        .add_rule(IP, T, "services", rule(vec![jump("no-such-chain")]))
        .flush_chain(IP, T, "service-abc");
    let err = tx
        .commit(ns.name())
        .expect_err("a jump to a missing chain is refused");
    match &err {
        NftError::Rejected {
            index,
            what,
            source,
            ..
        } => {
            assert_eq!(*index, 2);
            assert_eq!(what, "add rule to chain ip kube-netd services");
            assert_eq!(source.raw_os_error(), Some(2), "ENOENT: {source}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        nft(ns.name(), &["list", "ruleset"]),
        before,
        "nothing applied"
    );
}

#[test]
fn elements_are_added_and_deleted_in_an_existing_map() {
    let ns = ScratchNetns::new("nftnl", "elem");
    kube_proxy_like().commit(ns.name()).expect("commit");
    let dns = Key::new().ip(ip("10.96.0.10")).proto(UDP).port(53);
    let web = Key::new().ip(ip("10.96.0.10")).proto(TCP).port(80);

    let mut tx = Transaction::new();
    tx.add_elements(
        IP,
        T,
        "service-ips",
        vec![Element::verdict(
            dns.clone(),
            Verdict::Goto("service-abc".into()),
        )],
    )
    .delete_elements(IP, T, "service-ips", vec![Element::key(web)])
    .add_elements(
        IP,
        T,
        "blocked",
        vec![Element::range(
            Key::new().ip(ip("203.0.113.0")),
            Key::new().ip(ip("203.0.113.127")),
        )],
    );
    tx.commit(ns.name()).expect("element batch");
    check_golden(
        "elements-after-update.nft",
        &[
            nft(ns.name(), &["list", "map", "ip", T, "service-ips"]),
            nft(ns.name(), &["list", "set", "ip", T, "blocked"]),
        ]
        .concat(),
    );

    // Deleting what is no longer there is refused whole: the UDP element stays.
    let mut again = Transaction::new();
    again
        .delete_elements(IP, T, "service-ips", vec![Element::key(dns)])
        .delete_elements(
            IP,
            T,
            "service-ips",
            vec![Element::key(
                Key::new().ip(ip("10.96.0.10")).proto(TCP).port(80),
            )],
        );
    let err = again.commit(ns.name()).expect_err("second element is gone");
    assert!(
        matches!(&err, NftError::Rejected { index: 1, .. }),
        "{err:?}"
    );
    assert!(nft(ns.name(), &["list", "map", "ip", T, "service-ips"]).contains("udp . 53"));
}

/// [`HOST`] on loopback and a route for the service range through it, with [`HOST`] as the
/// source so replies have somewhere to go: the first routing decision succeeds, and DNAT in the
/// output hook then sends the packet to a local endpoint. Nothing can leave: the namespace has
/// no link but lo.
fn service_route(ns: &str) {
    netns::ip_batch(
        ns,
        &[
            format!("address add {HOST}/32 dev lo"),
            format!("route add 10.96.0.0/16 dev lo src {HOST}"),
        ],
    )
    .expect("address and route");
}

/// The address of the packet tests' namespaces, on their loopback.
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Serves connections on [`HOST`]:`port` inside `ns` until `stop` (at most 20 s), answering
/// each with the port number; returns how many it served.
fn serve(
    ns: &str,
    port: u16,
    ready: std::sync::mpsc::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        use std::io::Write;
        netns::enter(&ns).expect("enter");
        let listener = std::net::TcpListener::bind((HOST, port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        ready.send(()).expect("ready");
        let mut served = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline
            && !stop.load(std::sync::atomic::Ordering::SeqCst)
        {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.write_all(port.to_string().as_bytes());
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        served
    })
}

#[test]
fn connections_to_a_service_ip_are_spread_over_endpoints_by_numgen_and_dnat() {
    let ns = ScratchNetns::new("nftnl", "pkt");
    service_route(ns.name());
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut tx = Transaction::new();
    tx.add_table(IP, T)
        .add_chain(
            IP,
            T,
            Chain::base("nat-output", base(ChainType::Nat, HookPoint::Output, -100)),
        )
        .add_chain(IP, T, Chain::regular("service"))
        .add_chain(IP, T, Chain::regular("ep-a"))
        .add_chain(IP, T, Chain::regular("ep-b"))
        .add_set(
            IP,
            T,
            Set::verdict_map(
                "service-ips",
                &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            ),
        )
        .add_set(IP, T, Set::verdict_map("endpoints", &[KeyType::Mark]))
        .add_elements(
            IP,
            T,
            "service-ips",
            vec![Element::verdict(
                Key::new().ip(IpAddr::V4(vip)).proto(TCP).port(80),
                Verdict::Goto("service".into()),
            )],
        )
        .add_elements(
            IP,
            T,
            "endpoints",
            vec![
                Element::verdict(Key::new().mark(0), Verdict::Goto("ep-a".into())),
                Element::verdict(Key::new().mark(1), Verdict::Goto("ep-b".into())),
            ],
        )
        .add_rule(
            IP,
            T,
            "nat-output",
            rule(vec![
                Expr::daddr(IP, R0),
                Expr::l4proto(R1),
                Expr::th_dport(R2),
                Expr::Lookup {
                    set: "service-ips".into(),
                    sreg: R0,
                    dreg: Some(Register::VERDICT),
                    invert: false,
                },
            ]),
        )
        .add_rule(
            IP,
            T,
            "service",
            rule(vec![
                Expr::Numgen {
                    dreg: R0,
                    modulus: 2,
                    offset: 0,
                },
                Expr::Lookup {
                    set: "endpoints".into(),
                    sreg: R0,
                    dreg: Some(Register::VERDICT),
                    invert: false,
                },
            ]),
        )
        .add_rule(IP, T, "ep-a", rule(dnat_to(HOST, 18081)))
        .add_rule(IP, T, "ep-b", rule(dnat_to(HOST, 18082)));
    tx.commit(ns.name()).expect("commit");

    let (ready, wait) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers = [
        serve(ns.name(), 18081, ready.clone(), stop.clone()),
        serve(ns.name(), 18082, ready, stop.clone()),
    ];
    for _ in 0..2 {
        wait.recv().expect("server ready");
    }
    let answers: Vec<String> = {
        let ns = ns.name().to_owned();
        std::thread::spawn(move || {
            use std::io::Read;
            netns::enter(&ns).expect("enter");
            (0..24)
                .map(|_| {
                    let to = std::net::SocketAddr::from((vip, 80));
                    let mut conn =
                        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                            .expect("connect through DNAT");
                    conn.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("read timeout");
                    let mut answer = String::new();
                    conn.read_to_string(&mut answer).expect("read");
                    answer
                })
                .collect()
        })
        .join()
        .expect("client")
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served: Vec<usize> = servers
        .into_iter()
        .map(|s| s.join().expect("server"))
        .collect();
    assert_eq!(served.iter().sum::<usize>(), 24, "{answers:?}");
    // 24 random picks all landing on one endpoint has probability 2^-23.
    assert!(
        served.iter().all(|&n| n > 0),
        "both endpoints chosen: {served:?}"
    );
}

fn udp_entries(ns: &str) -> Vec<String> {
    let out = netns::exec(ns, &["conntrack", "-L", "-p", "udp"]).expect("conntrack -L");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // Keep the tuple, drop the timer that changes from run to run.
            l.split_whitespace()
                .filter(|w| w.contains('='))
                .filter(|w| !w.starts_with("mark=") && !w.starts_with("use="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn udp_conntrack_entries_are_deleted_by_kernel_filter_and_tuple() {
    let ns = ScratchNetns::new("nftnl", "ct");
    service_route(ns.name());
    let mut tx = Transaction::new();
    tx.add_table(IP, T).add_chain(
        IP,
        T,
        Chain::base("nat-output", base(ChainType::Nat, HookPoint::Output, -100)),
    );
    for (vip, endpoint_port) in [([10, 96, 0, 10], 5353), ([10, 96, 0, 11], 5354)] {
        let mut exprs = vec![Expr::daddr(IP, R0), Expr::eq(R0, vip), Expr::th_dport(R0)];
        exprs.push(Expr::eq(R0, 53u16.to_be_bytes()));
        exprs.extend(dnat(UDP, HOST, endpoint_port));
        tx.add_rule(IP, T, "nat-output", rule(exprs));
    }
    tx.commit(ns.name()).expect("commit");
    {
        let ns = ns.name().to_owned();
        std::thread::spawn(move || {
            netns::enter(&ns).expect("enter");
            for (vip, clients) in [("10.96.0.10:53", 3), ("10.96.0.11:53", 2)] {
                for _ in 0..clients {
                    let socket = std::net::UdpSocket::bind((HOST, 0)).expect("bind");
                    socket.send_to(b"q", vip).expect("send");
                }
            }
        })
        .join()
        .expect("clients");
    }
    assert_eq!(
        udp_entries(ns.name()).len(),
        5,
        "{:?}",
        udp_entries(ns.name())
    );

    let vip_a: std::net::SocketAddr = "10.96.0.10:53".parse().expect("addr");
    let vip_b: std::net::SocketAddr = "10.96.0.11:53".parse().expect("addr");
    let other_endpoint = "192.0.2.1:9999".parse().expect("addr");
    let endpoint_a = "192.0.2.1:5353".parse().expect("addr");
    assert_eq!(
        conntrack::delete_udp_flows(ns.name(), vip_b, Some(other_endpoint)).expect("delete"),
        0,
        "the reply source must match too"
    );
    assert_eq!(
        conntrack::delete_udp_flows(ns.name(), vip_a, Some(endpoint_a)).expect("delete"),
        3
    );
    let left = udp_entries(ns.name());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|l| l.contains("dst=10.96.0.11 ")),
        "{left:?}"
    );

    let flows = conntrack::list(
        ns.name(),
        &FlowFilter {
            protocol: conntrack::UDP,
            orig_dst: vip_b,
            reply_src: None,
        },
    )
    .expect("list");
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert!(flows.iter().all(|f| f.orig_dst == vip_b
        && f.reply_src == "192.0.2.1:5354".parse().expect("addr")
        && f.orig_src.ip() == IpAddr::V4(HOST)));
    assert_eq!(conntrack::delete(ns.name(), &flows).expect("delete"), 2);
    assert_eq!(
        conntrack::delete(ns.name(), &flows).expect("gone already"),
        0
    );
    assert!(udp_entries(ns.name()).is_empty());
}

#[test]
fn a_batch_of_many_messages_has_every_acknowledgement_read() {
    let ns = ScratchNetns::new("nftnl", "many");
    let mut tx = Transaction::new();
    tx.add_table(IP, T).add_chain(IP, T, Chain::regular("many"));
    for _ in 0..20_000 {
        tx.add_rule(IP, T, "many", rule(vec![Expr::Counter]));
    }
    tx.commit(ns.name())
        .expect("every ack fits the receive buffer");
    let listed = nft(ns.name(), &["list", "chain", "ip", T, "many"]);
    assert_eq!(listed.matches("counter packets 0 bytes 0").count(), 20_000);
}

fn v6_octets(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("ipv6").octets()
}

#[test]
fn an_ip6_table_reads_back_with_ip6_addresses_and_offsets() {
    let ns = ScratchNetns::new("nftnl", "ip6");
    let ip6 = Family::Ip6;
    // An IPv6 address takes four 32-bit registers; what follows it starts at the fifth.
    let (r4, r5) = (Register::reg32(4), Register::reg32(5));
    let mut tx = Transaction::new();
    tx.add_table(ip6, T)
        .add_chain(
            ip6,
            T,
            Chain::base("nat-output", base(ChainType::Nat, HookPoint::Output, -100)),
        )
        .add_chain(ip6, T, Chain::regular("endpoint"))
        .add_set(
            ip6,
            T,
            Set::verdict_map(
                "service-ips",
                &[KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
            ),
        )
        .add_elements(
            ip6,
            T,
            "service-ips",
            vec![Element::verdict(
                Key::new().ip(ip("fd00:10:96::a")).proto(TCP).port(80),
                Verdict::Goto("endpoint".into()),
            )],
        )
        .add_rule(
            ip6,
            T,
            "nat-output",
            rule(vec![
                Expr::daddr(ip6, R0),
                Expr::l4proto(r4),
                Expr::th_dport(r5),
                Expr::Lookup {
                    set: "service-ips".into(),
                    sreg: R0,
                    dreg: Some(Register::VERDICT),
                    invert: false,
                },
            ]),
        )
        .add_rule(
            ip6,
            T,
            "endpoint",
            rule(vec![
                Expr::saddr(ip6, R0),
                Expr::eq(R0, v6_octets("fd00:10:244::5")),
                Expr::verdict(Verdict::Return),
            ]),
        )
        .add_rule(
            ip6,
            T,
            "endpoint",
            rule(vec![
                Expr::l4proto(R0),
                Expr::eq(R0, [TCP]),
                Expr::Immediate {
                    dreg: R0,
                    data: netd_kernel::nftnl::Data::ip(ip("fd00:10:244::5")),
                },
                Expr::Immediate {
                    dreg: r4,
                    data: netd_kernel::nftnl::Data::port(8080),
                },
                Expr::Nat {
                    kind: NatKind::Dnat,
                    family: ip6,
                    addr: Some(R0),
                    port: Some(r4),
                },
            ]),
        );
    tx.commit(ns.name()).expect("commit");
    check_golden("ip6.nft", &nft(ns.name(), &["list", "ruleset"]));
}

/// Waits until `addr`, just added in `ns`, is a local address the kernel routes to: IPv6
/// installs an address's local route after `ip address add` has returned (addrconf's work
/// queue, even with `nodad`), and until then a packet sent to it finds no route
/// (`Ip6OutNoRoutes`) and its conntrack entry is never confirmed.
fn wait_until_local(ns: &str, addr: std::net::IpAddr) {
    const TRIES: usize = 500;
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let addr = addr.to_string();
    for _ in 0..TRIES {
        let out = netns::exec(
            ns,
            &["ip", family, "route", "show", "table", "local", &addr],
        )
        .expect("ip route show table local");
        if !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{addr} never became a local address of {ns}");
}

#[test]
fn ipv6_udp_conntrack_entries_are_listed_and_deleted() {
    let ns = ScratchNetns::new("nftnl", "ct6");
    let ip6 = Family::Ip6;
    let host = ip("fd00:192::1");
    netns::ip_batch(
        ns.name(),
        &[
            format!("address add {host}/128 dev lo nodad"),
            format!("route add fd00:96::/64 dev lo src {host}"),
        ],
    )
    .expect("address and route");
    wait_until_local(ns.name(), host);
    let mut tx = Transaction::new();
    tx.add_table(ip6, T)
        .add_chain(
            ip6,
            T,
            Chain::base("nat-output", base(ChainType::Nat, HookPoint::Output, -100)),
        )
        .add_rule(
            ip6,
            T,
            "nat-output",
            rule(vec![
                Expr::daddr(ip6, R0),
                Expr::eq(R0, v6_octets("fd00:96::a")),
                Expr::l4proto(R0),
                Expr::eq(R0, [UDP]),
                Expr::Immediate {
                    dreg: R0,
                    data: netd_kernel::nftnl::Data::ip(host),
                },
                Expr::Immediate {
                    dreg: Register::reg32(4),
                    data: netd_kernel::nftnl::Data::port(5353),
                },
                Expr::Nat {
                    kind: NatKind::Dnat,
                    family: ip6,
                    addr: Some(R0),
                    port: Some(Register::reg32(4)),
                },
            ]),
        );
    tx.commit(ns.name()).expect("commit");
    {
        let ns = ns.name().to_owned();
        std::thread::spawn(move || {
            netns::enter(&ns).expect("enter");
            for _ in 0..2 {
                let socket = std::net::UdpSocket::bind((host, 0)).expect("bind");
                socket.send_to(b"q", "[fd00:96::a]:53").expect("send");
            }
        })
        .join()
        .expect("clients");
    }
    let vip: std::net::SocketAddr = "[fd00:96::a]:53".parse().expect("addr");
    let endpoint: std::net::SocketAddr = "[fd00:192::1]:5353".parse().expect("addr");
    let flows = conntrack::list(
        ns.name(),
        &FlowFilter {
            protocol: conntrack::UDP,
            orig_dst: vip,
            reply_src: Some(endpoint),
        },
    )
    .expect("list");
    let listed =
        netns::exec(ns.name(), &["conntrack", "-L", "-f", "ipv6", "-p", "udp"]).expect("-L");
    assert_eq!(
        flows.len(),
        2,
        "{flows:?} vs {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    assert!(
        flows
            .iter()
            .all(|f| f.orig_src.ip() == host && f.reply_src == endpoint)
    );
    assert_eq!(
        conntrack::delete_udp_flows(ns.name(), vip, Some(endpoint)).expect("delete"),
        2
    );
    let out = netns::exec(ns.name(), &["conntrack", "-L", "-f", "ipv6", "-p", "udp"]).expect("-L");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "none left");
}
