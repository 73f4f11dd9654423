//! Real-kernel tests: each creates namespaces named `ktest-<pid>-...` and removes them on drop.

use std::net::IpAddr;

use netd_kernel::ipvs::{FLAG_PERSISTENT, Ipvs, IpvsDest, IpvsProtocol, IpvsService, IpvsTimeouts};
use netd_kernel::nftnl::Family;
use netd_kernel::nftnl::conntrack;
use netd_kernel::{KernelError, link, netns, rules};

use netd_testkit::scratch::ScratchNetns;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn veth_between_namespaces_carries_pings() {
    let a = ScratchNetns::new("ktest", "a");
    let b = ScratchNetns::new("ktest", "b");
    link::add_veth(a.name(), "va", b.name(), "vb").expect("veth");
    link::add_address(a.name(), "va", ip("192.0.2.1"), 24).expect("addr a");
    link::add_address(b.name(), "vb", ip("192.0.2.2"), 24).expect("addr b");
    netns::exec(a.name(), &["ping", "-c1", "-W1", "192.0.2.2"]).expect("ping across the veth");
    link::sysctl(a.name(), "net.ipv4.ip_forward", "1").expect("sysctl");
    let fwd = netns::exec(a.name(), &["cat", "/proc/sys/net/ipv4/ip_forward"]).expect("read");
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
}

#[test]
fn iptables_payload_is_applied_atomically_or_not_at_all() {
    let a = ScratchNetns::new("ktest", "ipt");
    rules::iptables_restore(
        a.name(),
        "*filter\n:KTEST - [0:0]\n-A KTEST -j DROP\nCOMMIT\n",
    )
    .expect("restore");
    assert!(
        rules::iptables_save(a.name())
            .expect("save")
            .contains("-A KTEST -j DROP")
    );
    let err = rules::iptables_restore(
        a.name(),
        "*filter\n:KTEST2 - [0:0]\n-A KTEST2 -j NOPE\nCOMMIT\n",
    )
    .expect_err("bad target");
    assert!(
        matches!(&err, KernelError::CommandFailed { command, .. } if command.contains("iptables-restore"))
    );
    assert!(
        !rules::iptables_save(a.name())
            .expect("save")
            .contains("KTEST2"),
        "nothing half-applied"
    );
}

#[test]
fn batches_routes_and_deletion() {
    let a = ScratchNetns::new("ktest", "batch");
    netns::ip_batch(
        a.name(),
        &[
            "link add br0 type bridge".into(),
            "link set br0 up".into(),
            "addr add 198.51.100.1/24 dev br0".into(),
        ],
    )
    .expect("batch");
    link::replace_route(a.name(), "203.0.113.7", ip("198.51.100.2"), 99).expect("route");
    assert_eq!(
        link::routes_with_proto(a.name(), 99).expect("routes"),
        vec!["203.0.113.7"]
    );
    link::delete_route(a.name(), "203.0.113.7").expect("del");
    link::delete_route(a.name(), "203.0.113.7").expect("del again is fine");
    assert!(
        link::routes_with_proto(a.name(), 99)
            .expect("routes")
            .is_empty()
    );
    assert!(matches!(
        link::add_bridge(a.name(), "a-name-longer-than-15"),
        Err(KernelError::InvalidInterfaceName { .. })
    ));
    assert!(matches!(
        netns::exec(a.name(), &[]),
        Err(KernelError::EmptyCommand { .. })
    ));
    let name = a.name().to_owned();
    drop(a);
    assert!(!netns::exists(&name));
    netns::delete(&name).expect("deleting a missing namespace is fine");
}

#[test]
fn conntrack_entries_are_listed_by_family_and_protocol_and_deleted_by_tuple() {
    let a = ScratchNetns::new("ktest", "ct");
    // A conntrack match makes the kernel track this namespace's flows, per family.
    let track = "*filter\n-A OUTPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n";
    rules::iptables_restore(a.name(), track).expect("ipv4 rules");
    rules::ip6tables_restore(a.name(), track).expect("ipv6 rules");
    let name = a.name().to_owned();
    std::thread::spawn(move || {
        netns::enter(&name).expect("enter");
        for (from, to) in [("127.0.0.1:0", "127.0.0.1:9"), ("[::1]:0", "[::1]:9")] {
            let socket = std::net::UdpSocket::bind(from).expect("bind");
            socket.send_to(b"x", to).expect("send");
        }
        // A connection that closes stays tracked (TIME_WAIT).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let _server = listener.accept().expect("accept");
    })
    .join()
    .expect("sender");
    let udp_v4 =
        conntrack::list_protocol(a.name(), Family::Ip, conntrack::UDP, None).expect("list");
    assert_eq!(udp_v4.len(), 1, "{udp_v4:?}");
    assert_eq!(udp_v4[0].orig_dst.to_string(), "127.0.0.1:9");
    let tcp = conntrack::list_protocol(a.name(), Family::Ip, 6, None).expect("list tcp");
    assert!(
        tcp.iter().all(|f| f.protocol == 6) && !tcp.is_empty(),
        "{tcp:?}"
    );
    let udp =
        conntrack::list_protocol(a.name(), Family::Inet, conntrack::UDP, None).expect("list both");
    assert_eq!(udp.len(), 2, "{udp:?}");
    assert_eq!(udp[1].orig_dst.to_string(), "[::1]:9");
    let to_port =
        |port| conntrack::list_protocol(a.name(), Family::Inet, conntrack::UDP, Some(port));
    assert_eq!(to_port(9).expect("to port 9"), udp);
    assert!(to_port(10).expect("to port 10").is_empty());
    assert_eq!(conntrack::delete(a.name(), &udp).expect("delete"), 2);
    assert_eq!(conntrack::delete(a.name(), &udp).expect("gone already"), 0);
    assert!(
        conntrack::list_protocol(a.name(), Family::Inet, conntrack::UDP, None)
            .expect("list again")
            .is_empty()
    );
    assert_eq!(
        conntrack::list_protocol(a.name(), Family::Ip, 6, None).expect("tcp kept"),
        tcp
    );
}

/// Needs a kernel with IPVS (this machine's has none): run it in the VM runner,
/// `kernel-vm.sh --modules "ip_vs ip_vs_rr" -- <this test binary> --ignored --exact
/// ipvs_services_and_dests_round_trip_through_the_kernel`.
#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn ipvs_services_and_dests_round_trip_through_the_kernel() {
    let ns = ScratchNetns::new("ktest", "ipvs");
    let mut ipvs = Ipvs::open(ns.name()).expect("open IPVS in the namespace");
    let svc = IpvsService {
        addr: ip("10.96.0.10"),
        port: 80,
        protocol: IpvsProtocol::Tcp,
        scheduler: "rr".to_owned(),
        flags: FLAG_PERSISTENT,
        timeout: 300,
    };
    let dest = |last: u8| IpvsDest {
        addr: ip(&format!("10.244.1.{last}")),
        port: 8080,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 0,
    };
    ipvs.add_service(&svc).expect("add service");
    ipvs.add_dest(&svc, &dest(2)).expect("add dest 2");
    ipvs.add_dest(&svc, &dest(3)).expect("add dest 3");

    let services = ipvs.services().expect("dump services");
    assert_eq!(services.len(), 1, "{services:?}");
    let got = &services[0];
    assert_eq!(
        (got.addr, got.port, got.protocol),
        (svc.addr, 80, IpvsProtocol::Tcp)
    );
    assert_eq!((got.scheduler.as_str(), got.timeout), ("rr", 300));
    assert_ne!(got.flags & FLAG_PERSISTENT, 0, "flags {:#x}", got.flags);
    let dests: Vec<(IpAddr, u16, u32)> = ipvs
        .dests(&svc)
        .expect("dump dests")
        .iter()
        .map(|d| (d.dest.addr, d.dest.port, d.dest.weight))
        .collect();
    assert_eq!(
        dests,
        [(ip("10.244.1.2"), 8080, 1), (ip("10.244.1.3"), 8080, 1)]
    );

    // ipvsadm, where installed, sees the same table in the same namespace.
    if let Ok(out) = netns::exec(ns.name(), &["ipvsadm", "-Ln"]) {
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert!(
            text.contains("TCP  10.96.0.10:80 rr persistent 300"),
            "{text}"
        );
        assert!(text.contains("-> 10.244.1.2:8080"), "{text}");
        assert!(text.contains("-> 10.244.1.3:8080"), "{text}");
    } else {
        println!("ipvsadm not available: compared with our own dump only");
    }

    // Quiesce one real server, then remove it; then the service.
    ipvs.update_dest(
        &svc,
        &IpvsDest {
            weight: 0,
            ..dest(3)
        },
    )
    .expect("weight 0");
    let weights: Vec<u32> = ipvs
        .dests(&svc)
        .expect("dump")
        .iter()
        .map(|d| d.dest.weight)
        .collect();
    assert_eq!(weights, [1, 0]);
    ipvs.delete_dest(&svc, &dest(3)).expect("delete dest");
    assert_eq!(ipvs.dests(&svc).expect("dump").len(), 1);
    let err = ipvs
        .add_service(&svc)
        .expect_err("a duplicate service is refused");
    assert!(matches!(err, KernelError::NetlinkRefused { .. }), "{err}");
    ipvs.update_service(&IpvsService {
        scheduler: "rr".to_owned(),
        flags: 0,
        timeout: 0,
        ..svc.clone()
    })
    .expect("update service");
    assert_eq!(ipvs.services().expect("dump")[0].flags & FLAG_PERSISTENT, 0);
    ipvs.delete_service(&svc).expect("delete service");
    assert!(ipvs.services().expect("dump").is_empty());
}

/// Needs a kernel with IPVS: run it in the VM runner, as the test above. The timeouts are the
/// namespace's own: a new namespace starts at the kernel's defaults, and a 0 in a request
/// leaves that timeout alone.
#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn ipvs_timeouts_are_set_and_read_back_per_namespace() {
    let ns = ScratchNetns::new("ktest", "ipvs-timeouts");
    let mut ipvs = Ipvs::open(ns.name()).expect("open IPVS in the namespace");
    let defaults = IpvsTimeouts {
        tcp: 900,
        tcp_fin: 120,
        udp: 300,
    };
    assert_eq!(ipvs.timeouts().expect("read timeouts"), defaults);
    ipvs.set_timeouts(&IpvsTimeouts {
        tcp: 600,
        tcp_fin: 0,
        udp: 30,
    })
    .expect("set timeouts");
    let set = IpvsTimeouts {
        tcp: 600,
        tcp_fin: 120,
        udp: 30,
    };
    assert_eq!(ipvs.timeouts().expect("read timeouts"), set);
    if let Ok(out) = netns::exec(ns.name(), &["ipvsadm", "-L", "--timeout"]) {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(tcp tcpfin udp): 600 120 30"), "{text}");
    }
    let other = ScratchNetns::new("ktest", "ipvs-timeouts-other");
    let mut fresh = Ipvs::open(other.name()).expect("open IPVS in the other namespace");
    assert_eq!(fresh.timeouts().expect("read timeouts"), defaults);
}
