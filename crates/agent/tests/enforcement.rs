//! Real-kernel tests of [`netd_agent::enforcement`] (need root): two Pods on one bridge in a
//! scratch Node namespace, where a rule in FORWARD dropping new connections to one of them
//! stands for a policy. With
//! `bridge-nf-call-iptables` off, their traffic is bridged past it (the fail-open a node can
//! be in); after `ensure`, the same packets meet the rule and are dropped.

use std::collections::BTreeSet;

use netd_agent::enforcement::{Enforcement, bridge_sysctl, ensure};
use netd_kernel::{link, netns};
use netd_proxy::IpFamily;
use netd_testkit::scratch::ScratchNetns;

const SYSCTL: &str = "net.bridge.bridge-nf-call-iptables";

/// Whether `from` gets an answer to a ping of `to` (three tries).
fn answers(from: &str, to: &str) -> bool {
    netns::command(from, "ping")
        .expect("ping command")
        .args(["-c", "3", "-i", "0.2", "-W", "1", to])
        .output()
        .expect("ping is installed (iputils-ping)")
        .status
        .success()
}

#[test]
fn bridged_pods_reach_the_policy_rules_once_ensured() {
    let node = ScratchNetns::new("enf", "node");
    let pods = [
        (ScratchNetns::new("enf", "p1"), "10.0.0.1"),
        (ScratchNetns::new("enf", "p2"), "10.0.0.2"),
    ];
    link::add_bridge(node.name(), "br0").expect("bridge");
    for (i, (pod, ip)) in pods.iter().enumerate() {
        let port = format!("veth{i}");
        link::add_veth(node.name(), &port, pod.name(), "eth0").expect("veth");
        link::set_master(node.name(), &port, "br0").expect("port");
        link::add_address(pod.name(), "eth0", ip.parse().expect("ip"), 24).expect("address");
    }
    netns::exec(
        node.name(),
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-d",
            "10.0.0.2",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            "DROP",
        ],
    )
    .expect("the stand-in policy");
    link::sysctl(node.name(), SYSCTL, "0").expect("bridged traffic past iptables");
    assert!(
        answers(pods[0].0.name(), "10.0.0.2"),
        "bridged past FORWARD"
    );

    let families = BTreeSet::from([IpFamily::V4]);
    assert_eq!(
        ensure(node.name(), &families).expect("ensure"),
        Enforcement::Bridged {
            bridges: vec!["br0".to_owned()],
            turned_on: vec![SYSCTL],
        }
    );
    assert_eq!(
        link::read_sysctl(node.name(), SYSCTL).expect("read"),
        Some("1".to_owned())
    );
    assert!(
        !answers(pods[0].0.name(), "10.0.0.2"),
        "the drop rule now judges bridged packets"
    );
    assert!(
        answers(pods[1].0.name(), "10.0.0.1"),
        "the other way is open"
    );
    // Once on, nothing more to do.
    assert_eq!(
        ensure(node.name(), &families).expect("ensure again"),
        Enforcement::Bridged {
            bridges: vec!["br0".to_owned()],
            turned_on: Vec::new(),
        }
    );
    assert_eq!(
        bridge_sysctl(IpFamily::V6),
        "net.bridge.bridge-nf-call-ip6tables"
    );
}

#[test]
fn routed_pods_and_bridges_without_pods_need_nothing() {
    let node = ScratchNetns::new("enf", "routed");
    let pod = ScratchNetns::new("enf", "rpod");
    link::add_veth(node.name(), "cali1", pod.name(), "eth0").expect("veth");
    // A bridge without veth ports (docker0 on a node whose Pods are routed).
    link::add_bridge(node.name(), "docker0").expect("bridge");
    link::sysctl(node.name(), SYSCTL, "0").expect("off");
    assert_eq!(
        ensure(node.name(), &BTreeSet::from([IpFamily::V4, IpFamily::V6])).expect("ensure"),
        Enforcement::Routed
    );
    assert_eq!(
        link::read_sysctl(node.name(), SYSCTL).expect("read"),
        Some("0".to_owned()),
        "left as it was"
    );
    assert_eq!(
        link::read_sysctl(node.name(), "net.no.such.sysctl").expect("read"),
        None
    );
}
