//! Real-kernel tests: each creates namespaces named `ktest-<pid>-...` and removes them on drop.

use std::net::IpAddr;

use netd_kernel::{KernelError, link, netns, rules};

mod common;

use common::Ns;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn veth_between_namespaces_carries_pings() {
    let a = Ns::new("ktest", "a");
    let b = Ns::new("ktest", "b");
    link::add_veth(&a.0, "va", &b.0, "vb").expect("veth");
    link::add_address(&a.0, "va", ip("192.0.2.1"), 24).expect("addr a");
    link::add_address(&b.0, "vb", ip("192.0.2.2"), 24).expect("addr b");
    netns::exec(&a.0, &["ping", "-c1", "-W1", "192.0.2.2"]).expect("ping across the veth");
    link::sysctl(&a.0, "net.ipv4.ip_forward", "1").expect("sysctl");
    let fwd = netns::exec(&a.0, &["cat", "/proc/sys/net/ipv4/ip_forward"]).expect("read");
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
}

#[test]
fn iptables_payload_is_applied_atomically_or_not_at_all() {
    let a = Ns::new("ktest", "ipt");
    rules::iptables_restore(&a.0, "*filter\n:KTEST - [0:0]\n-A KTEST -j DROP\nCOMMIT\n")
        .expect("restore");
    assert!(
        rules::iptables_save(&a.0)
            .expect("save")
            .contains("-A KTEST -j DROP")
    );
    let err = rules::iptables_restore(
        &a.0,
        "*filter\n:KTEST2 - [0:0]\n-A KTEST2 -j NOPE\nCOMMIT\n",
    )
    .expect_err("bad target");
    assert!(
        matches!(&err, KernelError::CommandFailed { command, .. } if command.contains("iptables-restore"))
    );
    assert!(
        !rules::iptables_save(&a.0).expect("save").contains("KTEST2"),
        "nothing half-applied"
    );
}

#[test]
fn batches_routes_and_deletion() {
    let a = Ns::new("ktest", "batch");
    netns::ip_batch(
        &a.0,
        &[
            "link add br0 type bridge".into(),
            "link set br0 up".into(),
            "addr add 198.51.100.1/24 dev br0".into(),
        ],
    )
    .expect("batch");
    link::replace_route(&a.0, "203.0.113.7", ip("198.51.100.2"), 99).expect("route");
    assert_eq!(
        link::routes_with_proto(&a.0, 99).expect("routes"),
        vec!["203.0.113.7"]
    );
    link::delete_route(&a.0, "203.0.113.7").expect("del");
    link::delete_route(&a.0, "203.0.113.7").expect("del again is fine");
    assert!(
        link::routes_with_proto(&a.0, 99)
            .expect("routes")
            .is_empty()
    );
    assert!(matches!(
        link::add_bridge(&a.0, "a-name-longer-than-15"),
        Err(KernelError::InvalidInterfaceName { .. })
    ));
    assert!(matches!(
        netns::exec(&a.0, &[]),
        Err(KernelError::EmptyCommand { .. })
    ));
    let name = a.0.clone();
    drop(a);
    assert!(!netns::exists(&name));
    netns::delete(&name).expect("deleting a missing namespace is fine");
}

#[test]
fn conntrack_entries_are_deleted_by_destination() {
    let a = Ns::new("ktest", "ct-a");
    let b = Ns::new("ktest", "ct-b");
    link::add_veth(&a.0, "va", &b.0, "vb").expect("veth");
    link::add_address(&a.0, "va", ip("192.0.2.1"), 24).expect("addr a");
    link::add_address(&b.0, "vb", ip("192.0.2.2"), 24).expect("addr b");
    // A conntrack match makes the kernel track this namespace's flows.
    rules::iptables_restore(
        &a.0,
        "*filter\n-A OUTPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n",
    )
    .expect("rules");
    let a_name = a.0.clone();
    std::thread::spawn(move || {
        netns::enter(&a_name).expect("enter");
        let socket = std::net::UdpSocket::bind("192.0.2.1:0").expect("bind");
        socket.send_to(b"x", "192.0.2.2:9").expect("send");
    })
    .join()
    .expect("sender");
    assert!(rules::conntrack_delete_udp_to(&a.0, ip("192.0.2.2")).expect("delete") >= 1);
    assert_eq!(
        rules::conntrack_delete_udp_to(&a.0, ip("192.0.2.2")).expect("none left"),
        0
    );
}
