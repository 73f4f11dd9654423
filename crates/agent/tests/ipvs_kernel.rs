//! Real-kernel tests of the IPVS back end: what one Node's namespace holds after its syncs
//! (virtual servers, `kube-ipvs0` addresses, sets, hooks) and after the clean-up of IPVS mode.
//! This machine's kernel may have no IPVS: run them in the VM runner,
//! `kernel-vm.sh --modules "ip_vs ip_vs_rr" -- target/debug/deps/ipvs_kernel-<hash> --ignored`.
//! Each test creates its own namespace (`nipvs-<pid>-<name>`), removed on drop. Needs root.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use netd_agent::ipvs::Timeouts;
use netd_agent::{Backend, Ipvs, IpvsConfig, Mode, SyncKind, remove_other_modes};
use netd_kernel::ipvs::{Ipvs as IpvsSocket, IpvsProtocol, IpvsService, IpvsTimeouts};
use netd_kernel::{link, rules};
use netd_model::{ClusterState, NodeName};
use netd_testkit::held::{HeldConnection, in_netns};
use netd_testkit::scratch::ScratchNetns;

const NODE: &str = "node-1";
/// The drain deadline of the graceful-termination test.
const DRAIN: Duration = Duration::from_secs(30);

/// `web` (TCP 80 on 10.96.0.10, nodePort 30080) with `endpoints` on node-1, and `dns` (UDP 53
/// on 10.96.0.20) with one endpoint when `dns` is set.
fn cluster(endpoints: &[&str], dns: bool) -> ClusterState {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|ip| format!("{{addresses: [{ip}], nodeName: node-1, conditions: {{ready: true}}}}"))
        .collect();
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 172.18.0.2}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: x}}
spec: {{type: NodePort, clusterIP: 10.96.0.10, ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}
ports: [{{port: 8080, protocol: TCP}}]
endpoints: [{}]
"#,
        eps.join(", ")
    );
    if dns {
        yaml.push_str(
            r#"---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: x}
spec: {clusterIP: 10.96.0.20, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: dns-1, namespace: x, labels: {kubernetes.io/service-name: dns}}
ports: [{port: 53, protocol: UDP}]
endpoints: [{addresses: [10.244.1.9], nodeName: node-1, conditions: {ready: true}}]
"#,
        );
    }
    netd_testkit::state(&yaml)
}

/// The kernel's virtual servers as `ADDR:PORT/PROTO -> [RS:PORT weight]` lines, sorted.
fn virtual_servers(ns: &str) -> BTreeSet<String> {
    let mut socket = IpvsSocket::open(ns).expect("IPVS socket");
    let mut out = BTreeSet::new();
    for svc in socket.services().expect("dump services") {
        let mut reals: Vec<String> = socket
            .dests(&svc)
            .expect("dump dests")
            .iter()
            .map(|d| format!("{}:{} w{}", d.dest.addr, d.dest.port, d.dest.weight))
            .collect();
        reals.sort();
        out.insert(format!(
            "{}:{}/{:?} {} -> {}",
            svc.addr,
            svc.port,
            svc.protocol,
            svc.scheduler,
            reals.join(", ")
        ));
    }
    out
}

fn bound(ns: &str) -> BTreeSet<IpAddr> {
    link::addresses(ns, "kube-ipvs0")
        .expect("kube-ipvs0 addresses")
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().expect("ip")).collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| (*s).to_owned()).collect()
}

fn sysctl(ns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = netd_kernel::netns::exec(ns, &["cat", &path]).expect("read sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn syncs_converge_virtual_servers_addresses_and_rules_then_cleanup_removes_them() {
    let ns = ScratchNetns::new("nipvs", "sync");
    let ns = ns.name();
    let node = NodeName::new(NODE);
    let mut backend = Ipvs::new(IpvsConfig::default());

    let report = backend
        .sync(ns, &cluster(&["10.244.1.2", "10.244.1.3"], true), &node)
        .expect("first sync");
    assert_eq!(report.families[0].kind, SyncKind::Full);
    assert_eq!(
        virtual_servers(ns),
        set(&[
            "10.96.0.10:80/Tcp rr -> 10.244.1.2:8080 w1, 10.244.1.3:8080 w1",
            "10.96.0.20:53/Udp rr -> 10.244.1.9:53 w1",
            "172.18.0.2:30080/Tcp rr -> 10.244.1.2:8080 w1, 10.244.1.3:8080 w1",
        ])
    );
    assert_eq!(bound(ns), ips(&["10.96.0.10", "10.96.0.20"]));
    for (key, value) in netd_agent::ipvs::SYSCTLS {
        assert_eq!(sysctl(ns, key), value, "{key}");
    }
    let sets = rules::ipset_list(ns).expect("ipsets");
    assert!(sets.contains(&"KUBE-CLUSTER-IP".to_owned()), "{sets:?}");
    assert!(!sets.iter().any(|s| s.starts_with("KUBE-TMP-")), "{sets:?}");
    let saved = rules::iptables_save(ns).expect("iptables-save");
    assert_eq!(saved.matches("-j KUBE-NETD-INPUT").count(), 1, "{saved}");

    // Partial: an endpoint without connections goes at once, the UDP Service goes, and a
    // second sync of the same state changes nothing and still holds one hook.
    let next = cluster(&["10.244.1.2"], false);
    let report = backend.sync(ns, &next, &node).expect("second sync");
    assert_eq!(report.families[0].kind, SyncKind::Partial);
    backend.sync(ns, &next, &node).expect("third sync");
    assert_eq!(
        virtual_servers(ns),
        set(&[
            "10.96.0.10:80/Tcp rr -> 10.244.1.2:8080 w1",
            "172.18.0.2:30080/Tcp rr -> 10.244.1.2:8080 w1",
        ])
    );
    assert_eq!(bound(ns), ips(&["10.96.0.10"]));
    let saved = rules::iptables_save(ns).expect("iptables-save");
    assert_eq!(
        saved.matches("-j KUBE-NETD-INPUT").count(),
        1,
        "hooks are inserted once: {saved}"
    );

    // A full sync reads the kernel back: a stray address and virtual server go.
    link::change_addresses(
        ns,
        "kube-ipvs0",
        &[("10.96.9.9".parse().expect("ip"), 32)],
        &[],
    )
    .expect("stray address");
    let mut socket = IpvsSocket::open(ns).expect("IPVS socket");
    let mut stray = socket.services().expect("dump")[0].clone();
    stray.port = 81;
    socket.add_service(&stray).expect("stray virtual server");
    backend.request_full_sync();
    let report = backend.sync(ns, &next, &node).expect("full sync");
    assert_eq!(report.families[0].kind, SyncKind::Full);
    assert_eq!(virtual_servers(ns).len(), 2, "{:?}", virtual_servers(ns));
    assert_eq!(bound(ns), ips(&["10.96.0.10"]));

    // Leaving IPVS mode removes its virtual servers and kube-ipvs0; its chains and sets go
    // with iptables mode's clean-up (or, switching to iptables mode, its sync's pruning).
    let removed = remove_other_modes(ns, Mode::Nftables).expect("cleanup");
    assert!(removed >= 3, "{removed}");
    assert_eq!(virtual_servers(ns), BTreeSet::new());
    assert!(
        link::addresses(ns, "kube-ipvs0").is_err(),
        "kube-ipvs0 is gone"
    );
    let sets = rules::ipset_list(ns).expect("ipsets");
    assert!(sets.is_empty(), "{sets:?}");
    let saved = rules::iptables_save(ns).expect("iptables-save");
    assert!(!saved.contains("KUBE-"), "{saved}");
}

/// Serves a greeting line and then echoes, on `addr` in `pod`, one connection at a time, for
/// as long as the test runs.
fn echo_server(pod: &str, addr: &str) {
    let addr = addr.to_owned();
    let listener = in_netns(pod, move || TcpListener::bind(addr).expect("listen"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("clone");
                let _ = out.write_all(b"hello\n");
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = out.write_all(format!("{line}\n").as_bytes());
                }
            });
        }
    });
}

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn a_removed_endpoint_with_a_connection_drains_at_weight_zero_then_goes_at_its_deadline() {
    let node_ns = ScratchNetns::new("nipvs", "gn");
    let pod_ns = ScratchNetns::new("nipvs", "gp");
    let (node, pod) = (node_ns.name(), pod_ns.name());
    link::add_veth(node, "vpod", pod, "eth0").expect("veth");
    link::add_address(node, "vpod", "10.244.1.1".parse().expect("ip"), 24).expect("address");
    link::add_address(pod, "eth0", "10.244.1.2".parse().expect("ip"), 24).expect("address");
    link::set_up(pod, "lo").expect("lo up");
    echo_server(pod, "10.244.1.2:8080");

    let name = NodeName::new(NODE);
    let mut backend = Ipvs::new(IpvsConfig {
        // Long enough for the next sync to come before it under emulation.
        drain_timeout: DRAIN,
        ..IpvsConfig::default()
    });
    backend
        .sync(node, &cluster(&["10.244.1.2"], false), &name)
        .expect("first sync");
    let vip = "10.96.0.10:80".parse().expect("vip");
    let mut held = HeldConnection::open(node, vip, Duration::from_secs(5));
    assert_eq!(held.greeting(), "hello\n");

    // The endpoint goes while a connection is open: weight 0, and the connection still works.
    let moved = cluster(&["10.244.1.3"], false);
    backend.sync(node, &moved, &name).expect("second sync");
    let quiesced = Instant::now();
    let web = "10.96.0.10:80/Tcp rr -> 10.244.1.2:8080 w0, 10.244.1.3:8080 w1";
    assert!(
        virtual_servers(node).contains(web),
        "{:?}",
        virtual_servers(node)
    );
    held.round_trip("still here");
    backend.sync(node, &moved, &name).expect("third sync");
    assert!(
        virtual_servers(node).contains(web),
        "draining until its deadline"
    );

    // Past the deadline it is deleted though the connection is still open.
    std::thread::sleep((quiesced + DRAIN).saturating_duration_since(Instant::now()));
    backend.sync(node, &moved, &name).expect("fourth sync");
    assert!(
        virtual_servers(node).contains("10.96.0.10:80/Tcp rr -> 10.244.1.3:8080 w1"),
        "{:?}",
        virtual_servers(node)
    );
}

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn switching_from_iptables_mode_prunes_its_chains_in_the_first_ipvs_sync() {
    let ns = ScratchNetns::new("nipvs", "switch");
    let ns = ns.name();
    let node = NodeName::new(NODE);
    let state = cluster(&["10.244.1.2"], false);
    let mut iptables = netd_agent::backend(&netd_agent::BackendConfig::default());
    iptables.sync(ns, &state, &node).expect("iptables sync");
    assert!(
        rules::iptables_save(ns)
            .expect("save")
            .contains("KUBE-SVC-")
    );

    remove_other_modes(ns, Mode::Ipvs).expect("remove other modes");
    Ipvs::new(IpvsConfig::default())
        .sync(ns, &state, &node)
        .expect("ipvs sync");
    let saved = rules::iptables_save(ns).expect("save");
    assert!(!saved.contains("KUBE-SVC-"), "{saved}");
    assert!(!saved.contains("KUBE-NODEPORTS"), "{saved}");
    assert!(saved.contains("-j KUBE-IPVS-FILTER"), "{saved}");
    assert_eq!(
        saved.matches("-j KUBE-NETD-PREROUTING").count(),
        1,
        "{saved}"
    );
    assert_eq!(virtual_servers(ns).len(), 2, "{:?}", virtual_servers(ns));
}

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn kube_proxys_ipvs_options_reach_the_kernel_and_excluded_servers_stay() {
    let ns = ScratchNetns::new("nipvs", "opts");
    let ns = ns.name();
    let node = NodeName::new(NODE);
    // Another program's virtual servers: one in an excluded range, one not.
    let mut socket = IpvsSocket::open(ns).expect("IPVS socket");
    let foreign = |addr: &str| IpvsService {
        addr: addr.parse().expect("ip"),
        port: 443,
        protocol: IpvsProtocol::Tcp,
        scheduler: "rr".to_owned(),
        flags: 0,
        timeout: 0,
    };
    socket
        .add_service(&foreign("10.200.0.1"))
        .expect("excluded virtual server");
    socket
        .add_service(&foreign("10.201.0.1"))
        .expect("stray virtual server");

    let mut backend = Ipvs::new(IpvsConfig {
        scheduler: "wlc".to_owned(),
        timeouts: Timeouts {
            tcp: Duration::from_secs(600),
            tcp_fin: Duration::ZERO,
            udp: Duration::from_secs(30),
        },
        exclude_cidrs: vec!["10.200.0.0/16".parse().expect("net")],
        ..IpvsConfig::default()
    });
    backend
        .sync(ns, &cluster(&["10.244.1.2"], false), &node)
        .expect("sync");
    assert_eq!(
        virtual_servers(ns),
        set(&[
            "10.200.0.1:443/Tcp rr -> ",
            "10.96.0.10:80/Tcp wlc -> 10.244.1.2:8080 w1",
            "172.18.0.2:30080/Tcp wlc -> 10.244.1.2:8080 w1",
        ]),
        "the excluded server stays, the stray one goes"
    );
    // A zero timeout keeps the kernel's (TCP FIN: 120 s).
    assert_eq!(
        socket.timeouts().expect("timeouts"),
        IpvsTimeouts {
            tcp: 600,
            tcp_fin: 120,
            udp: 30,
        }
    );
}

/// `web` on both families (10.96.0.10 and fd00:10:96::10, TCP 80 → 8080) with one pod of
/// both families on node-1.
const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:172:18::2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-4, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: web-6, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: ["fd00:10:244:1::2"], nodeName: node-1, conditions: {ready: true}}]
"#;

#[test]
#[ignore = "needs IPVS: run in the VM runner"]
fn a_dual_stack_service_is_reached_through_ipvs_in_both_families() {
    use netd_model::IpFamilies;
    let node_ns = ScratchNetns::new("nipvs", "dn");
    let pod_ns = ScratchNetns::new("nipvs", "dp");
    let (node, pod) = (node_ns.name(), pod_ns.name());
    link::add_veth(node, "vpod", pod, "eth0").expect("veth");
    let address = |ns: &str, dev: &str, cidr: &str| {
        // Without duplicate address detection the address is usable at once.
        netd_kernel::netns::exec(ns, &["ip", "addr", "add", cidr, "dev", dev, "nodad"])
            .expect("address");
    };
    address(node, "vpod", "10.244.1.1/24");
    address(node, "vpod", "fd00:10:244:1::1/64");
    address(pod, "eth0", "10.244.1.2/24");
    address(pod, "eth0", "fd00:10:244:1::2/64");
    link::set_up(pod, "lo").expect("lo up");
    echo_server(pod, "10.244.1.2:8080");
    echo_server(pod, "[fd00:10:244:1::2]:8080");

    let state = state_with_families(IpFamilies::Dual);
    let name = NodeName::new(NODE);
    let mut backend = Ipvs::new(IpvsConfig::default());
    let report = backend.sync(node, &state, &name).expect("first sync");
    let families: Vec<_> = report.families.iter().map(|f| (f.family, f.kind)).collect();
    assert_eq!(
        families,
        [
            (netd_proxy::IpFamily::V4, SyncKind::Full),
            (netd_proxy::IpFamily::V6, SyncKind::Full)
        ]
    );
    assert_eq!(
        virtual_servers(node),
        set(&[
            "10.96.0.10:80/Tcp rr -> 10.244.1.2:8080 w1",
            "fd00:10:96::10:80/Tcp rr -> fd00:10:244:1::2:8080 w1",
        ])
    );
    assert_eq!(bound(node), ips(&["10.96.0.10", "fd00:10:96::10"]));
    let sets = rules::ipset_list(node).expect("ipsets");
    assert!(sets.contains(&"KUBE-6-CLUSTER-IP".to_owned()), "{sets:?}");

    // Real packets: the ClusterIP of each family answers, from the pod.
    for vip in ["10.96.0.10:80", "[fd00:10:96::10]:80"] {
        let mut held =
            HeldConnection::open(node, vip.parse().expect("vip"), Duration::from_secs(5));
        assert_eq!(held.greeting(), "hello\n", "{vip}");
        held.round_trip("through ipvs");
    }

    // A second sync is partial in both families and inserts no second hook.
    let report = backend.sync(node, &state, &name).expect("second sync");
    assert!(report.families.iter().all(|f| f.kind == SyncKind::Partial));
    let saved = String::from_utf8_lossy(
        &netd_kernel::netns::exec(node, &["ip6tables-save"])
            .expect("ip6tables-save")
            .stdout,
    )
    .into_owned();
    assert_eq!(saved.matches("-j KUBE-NETD-INPUT").count(), 1, "{saved}");
    assert!(saved.contains("KUBE-6-CLUSTER-IP"), "{saved}");

    // The cluster loses IPv6: its servers, addresses, chains and hooks go in the next sync.
    let v4_only = state_with_families(IpFamilies::Ipv4);
    backend.sync(node, &v4_only, &name).expect("IPv4-only sync");
    assert_eq!(
        virtual_servers(node),
        set(&["10.96.0.10:80/Tcp rr -> 10.244.1.2:8080 w1"])
    );
    assert_eq!(bound(node), ips(&["10.96.0.10"]));
    let saved = String::from_utf8_lossy(
        &netd_kernel::netns::exec(node, &["ip6tables-save"])
            .expect("ip6tables-save")
            .stdout,
    )
    .into_owned();
    assert!(!saved.contains("KUBE-"), "{saved}");

    // Leaving IPVS mode removes the virtual servers.
    remove_other_modes(node, Mode::Nftables).expect("cleanup");
    assert_eq!(virtual_servers(node), BTreeSet::new());
}

/// [`DUAL_STACK`] in a cluster of `families` (its IPv6 objects dropped for IPv4 only).
fn state_with_families(families: netd_model::IpFamilies) -> ClusterState {
    use netd_model::{ClusterConfig, IpFamilies};
    let yaml = match families {
        IpFamilies::Ipv4 => DUAL_STACK
            .replace(
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
                "",
            )
            .replace(
                "clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]",
                "clusterIPs: [10.96.0.10]",
            )
            .split("---\n")
            .filter(|doc| !doc.contains("addressType: IPv6"))
            .collect::<Vec<_>>()
            .join("---\n"),
        _ => DUAL_STACK.to_owned(),
    };
    netd_testkit::state_with(&yaml, ClusterConfig::for_families(families))
}
