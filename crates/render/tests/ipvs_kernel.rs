//! IPVS mode in a real kernel: the rendered `ipset restore`, `iptables-restore` and
//! `ipvsadm-restore` payloads are loaded into network namespaces this test creates, and real
//! TCP connections go through them. This machine's kernel has no IPVS, so the tests are
//! ignored here and run in the VM runner with `ipvsadm` installed:
//! `kernel-vm.sh --modules "ip_vs ip_vs_rr" -- <this test binary> --ignored`.
//!
//! Namespaces are named `ipvsk-<pid>-…` and removed on drop, also when a test fails.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use netd_kernel::{link, netns, rules};
use netd_model::NodeName;
use netd_proxy::{IpFamily, ProxyOptions, plan};
use netd_render::{IpvsOptions, IpvsRules, render_ipvs};

struct Ns(String);

impl Ns {
    fn new(suffix: &str) -> Ns {
        let name = format!("ipvsk-{}-{suffix}", std::process::id());
        netns::add(&name).expect("add namespace");
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Loads every part of `r` into `ns` as an applier would: the dummy interface and its
/// addresses, the ipsets, the iptables rules with their hooks, the virtual servers.
fn load(ns: &str, r: &IpvsRules) {
    netns::exec(ns, &["ip", "link", "add", "kube-ipvs0", "type", "dummy"]).expect("dummy");
    let prefix = match r.family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    for a in &r.bound_addresses {
        link::add_address(ns, "kube-ipvs0", *a, prefix).expect("bind address");
    }
    rules::ipset_restore(ns, &r.ipset_input()).expect("ipset restore");
    let payload = r.installed().to_restore();
    match r.family {
        IpFamily::V4 => rules::iptables_restore(ns, &payload),
        IpFamily::V6 => rules::ip6tables_restore(ns, &payload),
    }
    .expect("iptables-restore");
    let mut child = netns::command(ns, "ipvsadm")
        .expect("command")
        .arg("-R")
        .stdin(Stdio::piped())
        .spawn()
        .expect("ipvsadm (install it: the VM sees this machine's files)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(r.ipvsadm_input().as_bytes())
        .expect("write ipvsadm input");
    assert!(
        child.wait().expect("ipvsadm").success(),
        "ipvsadm -R failed"
    );
    link::sysctl(ns, "net.ipv4.vs.conntrack", "1").expect("vs conntrack");
}

/// Every scenario's payloads are accepted by the kernel and the tools, in both families:
/// external IPs, load balancers with source ranges, `-m physdev`, `-m ipvs`, bitmap and hash
/// sets, SCTP virtual servers.
#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn every_scenario_loads_into_a_kernel() {
    for dir in common::scenarios() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
        let (node, family, opts) = common::options(&yaml);
        let state = netd_testkit::state(&yaml);
        let p = plan(&state, &node, family, &opts);
        let r = render_ipvs(
            &p,
            &IpvsOptions {
                node_addresses: common::ipvs_node_addresses(&opts, family),
                ..IpvsOptions::default()
            },
        );
        let ns = Ns::new(&name);
        load(&ns.0, &r);
        let listed = netns::exec(&ns.0, &["ipvsadm", "-Sn"]).expect("ipvsadm -S");
        let saved = String::from_utf8_lossy(&listed.stdout);
        assert_eq!(
            saved.lines().filter(|l| l.starts_with("-A")).count(),
            r.virtual_servers.len(),
            "{name}: {saved}"
        );
        let reals: usize = r
            .virtual_servers
            .values()
            .map(|v| v.real_servers.len())
            .sum();
        assert_eq!(
            saved.lines().filter(|l| l.starts_with("-a")).count(),
            reals,
            "{name}: {saved}"
        );
        let sets = rules::ipset_list(&ns.0).expect("ipset list");
        assert_eq!(sets.len(), 17, "{name}: {sets:?}");
        if name == "overall" {
            let ipt = rules::iptables_save(&ns.0).expect("iptables-save");
            assert!(
                ipt.contains("-A KUBE-IPVS-OUT-FILTER -s 5.6.7.8/32 -m ipvs"),
                "{ipt}"
            );
        }
        println!(
            "{name}: {} virtual servers, {reals} real servers",
            r.virtual_servers.len()
        );
    }
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {type: NodePort, clusterIP: 10.96.0.5, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
"#;

/// A server in `ns` on `port` that answers every connection with the peer's address.
fn serve_peer_address(ns: &str, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_owned();
    // Detached: it ends with the test process.
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter server namespace");
        let listener = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for mut conn in listener.incoming().flatten() {
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
    rx.recv().expect("server ready");
}

/// Connects from `ns` to `to`: the address the server saw, or the error.
fn ask(ns: &str, to: &str) -> Result<String, std::io::Error> {
    let to: SocketAddr = to.parse().expect("socket address");
    netd_testkit::held::in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Off-cluster client → ClusterIP and nodePort (both masqueraded), a pod reaching itself
/// through its Service (hairpin, `KUBE-LOOP-BACK`), and a host port on the VIP refused by
/// `KUBE-IPVS-FILTER` while it stays open on the node address.
#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn connections_go_through_virtual_servers() {
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let client = Ns::new("client");
    link::add_veth(&node.0, "to-pod", &pod.0, "eth0").expect("veth pod");
    link::add_veth(&node.0, "to-client", &client.0, "eth0").expect("veth client");
    link::add_address(&node.0, "to-pod", ip("10.244.1.1"), 24).expect("addr");
    link::add_address(&pod.0, "eth0", ip("10.244.1.2"), 24).expect("addr");
    link::add_address(&node.0, "to-client", ip("172.18.0.2"), 24).expect("addr");
    link::add_address(&client.0, "eth0", ip("172.18.0.10"), 24).expect("addr");
    netns::exec(
        &pod.0,
        &["ip", "route", "add", "default", "via", "10.244.1.1"],
    )
    .expect("route");
    netns::exec(
        &client.0,
        &["ip", "route", "add", "10.96.0.0/16", "via", "172.18.0.2"],
    )
    .expect("route");
    link::sysctl(&node.0, "net.ipv4.ip_forward", "1").expect("forwarding");

    let state = netd_testkit::state(CLUSTER);
    let opts = ProxyOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        node_ips: vec![ip("172.18.0.2")],
        ..ProxyOptions::default()
    };
    let p = plan(&state, &NodeName::new("node-1"), IpFamily::V4, &opts);
    let r = render_ipvs(
        &p,
        &IpvsOptions {
            node_addresses: vec![ip("172.18.0.2")],
            ..IpvsOptions::default()
        },
    );
    load(&node.0, &r);
    serve_peer_address(&pod.0, "0.0.0.0:8080".parse().expect("addr"));
    serve_peer_address(&node.0, "0.0.0.0:2222".parse().expect("addr"));

    assert_eq!(
        ask(&client.0, "10.96.0.5:80").expect("ClusterIP"),
        "10.244.1.1"
    );
    assert_eq!(
        ask(&client.0, "172.18.0.2:30080").expect("nodePort"),
        "10.244.1.1"
    );
    assert_eq!(ask(&pod.0, "10.96.0.5:80").expect("hairpin"), "10.244.1.1");
    assert_eq!(
        ask(&client.0, "172.18.0.2:2222").expect("host port on the node address"),
        "172.18.0.10"
    );
    let refused = ask(&client.0, "10.96.0.5:2222").expect_err("host port on the VIP");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
}
