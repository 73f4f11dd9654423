//! Real-kernel tests of the nftables NetworkPolicy rules: a Node namespace routes three Pod
//! namespaces (`nftp-<pid>-<case>-…`, each with a /32 or /128 behind a veth, as the lab's
//! Pods); the Node's rendered policy table of the family is loaded with `nft -f`, and real
//! TCP connections and UDP exchanges between the Pods (and to the Node) must meet the fate
//! the policy engine decides, which each case also states. And the policy back end's objects
//! share one table with the Services' and load together with them. Needs root.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netd_kernel::{link, netns};
use netd_model::{ClusterConfig, IpFamilies, NodeName, PodRef, Protocol};
use netd_policy::{Endpoint, Flow};
use netd_proxy::IpFamily;
use netd_render::RenderOptions;
use netd_render::nft::policy::{PRIORITY, is_policy_object, merge_into, render_policy_nft};
use netd_render::nft::{Hook, Table, diff, render_services_nft};
use netd_testkit::held::in_netns;
use netd_testkit::nft::{listed, load, nft};
use netd_testkit::scratch::ScratchNetns;

/// How long a probe waits before it counts its packet as dropped.
const WAIT: Duration = Duration::from_millis(800);
/// The Pods' network on node-1, by family; `::1` / `.1` is the Node's address on every Pod
/// veth (each Pod's gateway), `.2` to `.4` are Pods `a` to `c`.
const NET4: &str = "10.244.1.";
const NET6: &str = "fd00:10:244:1::";
/// Ports every Pod serves: TCP 80 and 81, UDP 53. The Node serves TCP 80.
const TCP_PORTS: [u16; 2] = [80, 81];
const UDP_PORT: u16 = 53;

/// Three Pods on node-1 (`NET` is [`NET4`] or [`NET6`]); `b` names port 81 `http`. The
/// policy under test is appended.
const PODS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: CIDR}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 'NET2'}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 81}]}]}
status: {podIP: 'NET3'}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 'NET4'}
"#;

/// The Pods and the last part of their addresses.
const POD_HOSTS: [(&str, u8); 3] = [("a", 2), ("b", 3), ("c", 4)];

#[test]
fn ingress_from_a_label_allows_only_that_pod_and_its_ports() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}, {port: 53, protocol: UDP}]}]
"#;
    for family in [IpFamily::V4, IpFamily::V6] {
        check(
            "label",
            family,
            policy,
            &[
                ("a", "b", Protocol::Tcp, 80, true),
                ("a", "b", Protocol::Tcp, 81, false),
                ("a", "b", Protocol::Udp, 53, true),
                ("c", "b", Protocol::Tcp, 80, false),
                ("c", "b", Protocol::Udp, 53, false),
                // b's egress is not isolated, and a's ingress not at all.
                ("b", "a", Protocol::Tcp, 80, true),
                ("c", "a", Protocol::Tcp, 81, true),
            ],
        );
    }
}

#[test]
fn ingress_from_an_ip_block_leaves_out_its_except() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.2/32]}}]}]
"#;
    check(
        "ipblock",
        IpFamily::V4,
        policy,
        &[
            ("a", "c", Protocol::Tcp, 80, false),
            ("a", "c", Protocol::Udp, 53, false),
            ("b", "c", Protocol::Tcp, 80, true),
            ("b", "c", Protocol::Tcp, 81, true),
            ("b", "c", Protocol::Udp, 53, true),
        ],
    );
}

#[test]
fn default_deny_egress_stops_new_connections_but_not_replies() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
"#;
    // In IPv6 the Node finds a's address by neighbour discovery, whose answers pass a's
    // egress chain: they must be let through for the replies to reach b.
    for family in [IpFamily::V4, IpFamily::V6] {
        check(
            "deny-egress",
            family,
            policy,
            &[
                ("a", "b", Protocol::Tcp, 80, false),
                ("a", "b", Protocol::Udp, 53, false),
                // To the Node itself: the input hook.
                ("a", "node", Protocol::Tcp, 80, false),
                // Replies to a leave through a's egress chain: accepted as established.
                ("b", "a", Protocol::Tcp, 80, true),
                ("b", "a", Protocol::Udp, 53, true),
                ("b", "node", Protocol::Tcp, 80, true),
            ],
        );
    }
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}], ports: [{port: http}]}]
"#;
    check(
        "named",
        IpFamily::V4,
        policy,
        &[
            ("c", "a", Protocol::Tcp, 80, true),
            ("c", "a", Protocol::Tcp, 81, false),
            ("c", "b", Protocol::Tcp, 81, true),
            ("c", "b", Protocol::Tcp, 80, false),
            ("c", "b", Protocol::Udp, 53, false),
        ],
    );
}

/// For every Service golden scenario, the Services' table and the policy table of the same
/// family (the seed policies, which isolate Pods in both directions) name no object alike,
/// policy runs before the Services' filter chains on every hook they share, and the merged
/// table loads in one transaction.
#[test]
fn policy_and_services_share_one_table() {
    let seed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/policy/seed/input.yaml"),
    )
    .expect("seed input");
    let policy_plan =
        netd_policy::compile(&netd_testkit::state(&seed), &NodeName::new("node-1")).expect("plan");
    let ns = ScratchNetns::new("nftp", "merged");
    let mut loaded = 0;
    for dir in common::scenarios() {
        let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
        let (node, family, opts) = common::options(&yaml);
        let state = netd_testkit::state(&yaml);
        let plan = netd_proxy::plan(&state, &node, family, &opts);
        let mut table = render_services_nft(&plan, &RenderOptions::default());
        let policy = render_policy_nft(&policy_plan, family);
        let what = dir.display();
        for name in table.chains.keys().chain(table.sets.keys()) {
            assert!(!is_policy_object(name), "{what}: services object {name}");
        }
        for chain in table.chains.values() {
            let Some(base) = chain.base else { continue };
            if matches!(base.hook, Hook::Forward | Hook::Input) {
                assert!(
                    PRIORITY.value() < base.priority.value(),
                    "{what}: {} runs before policy",
                    chain.name
                );
            }
        }
        let (services_objects, policy_objects) = (
            table.chains.len() + table.sets.len(),
            policy.chains.len() + policy.sets.len(),
        );
        merge_into(&mut table, policy);
        assert_eq!(
            table.chains.len() + table.sets.len(),
            services_objects + policy_objects,
            "{what}: a name is used by both"
        );
        load(ns.name(), &table.to_nft());
        netd_testkit::nft::nft(
            ns.name(),
            &["delete", "table", table.family_str(), &table.name],
            "",
        )
        .unwrap_or_else(|e| panic!("{what}: delete the table: {e}"));
        loaded += 1;
    }
    assert!(loaded >= 20, "only {loaded} scenarios");
}

/// An incremental update between the policy tables of any two scenarios (and the table of
/// a Node without policies), applied over the first, leaves what loading the second leaves:
/// Pods isolated and released, sets replaced, chains added and deleted.
#[test]
fn policy_updates_end_where_a_fresh_load_does() {
    let mut tables: Vec<(String, Table)> = common::policy_scenarios()
        .iter()
        .map(|(dir, plan)| {
            (
                dir.display().to_string(),
                render_policy_nft(plan, IpFamily::V4),
            )
        })
        .collect();
    let no_policy = netd_testkit::state(
        PODS.replace("CIDR", "10.244.1.0/24")
            .replace("NET", NET4)
            .as_str(),
    );
    let plan = netd_policy::compile(&no_policy, &NodeName::new("node-1")).expect("plan");
    tables.push((
        "no policy".to_owned(),
        render_policy_nft(&plan, IpFamily::V4),
    ));
    let ns = ScratchNetns::new("nftp", "diff");
    let drop_table = |t: &Table| {
        nft(ns.name(), &["delete", "table", t.family_str(), &t.name], "").expect("delete table");
    };
    let wanted: Vec<serde_json::Value> = tables
        .iter()
        .map(|(_, t)| {
            load(ns.name(), &t.to_nft());
            let want = listed(ns.name(), t.family_str(), &t.name);
            drop_table(t);
            want
        })
        .collect();
    let mut pairs = 0;
    for (i, (prev_name, prev)) in tables.iter().enumerate() {
        for (j, ((next_name, next), want)) in tables.iter().zip(&wanted).enumerate() {
            if i == j {
                continue;
            }
            load(ns.name(), &prev.to_nft());
            let update = diff(prev, next);
            if let Err(e) = nft(ns.name(), &["-f", "-"], &update) {
                panic!("{prev_name} -> {next_name}: the update fails: {e}\n{update}");
            }
            let got = listed(ns.name(), next.family_str(), &next.name);
            assert_eq!(want, &got, "{prev_name} -> {next_name}\n{update}");
            drop_table(next);
            pairs += 1;
        }
    }
    assert!(pairs >= 50, "only {pairs} pairs");
}

/// Builds the topology, loads the rules of `PODS` + `policy` and runs every probe `(from,
/// to, protocol, port, allowed)`; `to` may be `node`. Each must agree with the engine and
/// with the expectation, and every disagreement is reported at once.
fn check(case: &str, family: IpFamily, policy: &str, probes: &[(&str, &str, Protocol, u16, bool)]) {
    let (net, cidr, families) = match family {
        IpFamily::V4 => (NET4, "10.244.1.0/24", IpFamilies::Ipv4),
        IpFamily::V6 => (NET6, "fd00:10:244:1::/64", IpFamilies::Ipv6),
    };
    let yaml = format!("{PODS}---{policy}")
        .replace("CIDR", cidr)
        .replace("NET", net);
    let state = netd_testkit::state_with(&yaml, ClusterConfig::for_families(families));
    let plan = netd_policy::compile(&state, &NodeName::new("node-1")).expect("plan");
    let rules = render_policy_nft(&plan, family).to_nft();
    let case = match family {
        IpFamily::V4 => format!("{case}-4"),
        IpFamily::V6 => format!("{case}-6"),
    };
    let topology = Topology::new(&case, net);
    load(topology.node.name(), &rules);
    topology.node_pings_its_pods();
    let mut wrong = Vec::new();
    for &(from, to, protocol, port, want) in probes {
        let (dst, dst_ip) = if to == "node" {
            (Endpoint::Ip(topology.gateway), topology.gateway)
        } else {
            (Endpoint::Pod(PodRef::new("x", to)), topology.ip(to))
        };
        let flow = Flow::new(Endpoint::Pod(PodRef::new("x", from)), dst, protocol, port);
        let engine = netd_policy::evaluate(&state, &flow)
            .expect("evaluate")
            .allowed;
        let kernel = topology.probe(from, SocketAddr::new(dst_ip, port), protocol);
        if engine != want || kernel != want {
            wrong.push(format!(
                "{flow}: expected {want}, engine {engine}, kernel {kernel}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\nrules:\n{rules}", wrong.join("\n"));
}

/// The Node namespace, its Pods and their servers; all removed on drop.
struct Topology {
    node: ScratchNetns,
    /// The Node's address on every Pod veth.
    gateway: IpAddr,
    /// Pod name, its namespace and its IP.
    pods: Vec<(String, ScratchNetns, IpAddr)>,
    /// Kept open: the kernel completes a handshake to a listening socket without `accept`.
    _listeners: Vec<TcpListener>,
    stop: Arc<AtomicBool>,
    echoes: Vec<JoinHandle<()>>,
}

impl Topology {
    /// The Node and its Pods on the network `net` ([`NET4`] or [`NET6`]).
    fn new(case: &str, net: &str) -> Topology {
        let node = ScratchNetns::new("nftp", &format!("{case}-node"));
        let gateway: IpAddr = format!("{net}1").parse().expect("gateway");
        let (forwarding, prefix, nodad) = if gateway.is_ipv4() {
            ("net.ipv4.ip_forward", 32, "")
        } else {
            // No duplicate address detection: the addresses are usable at once.
            ("net.ipv6.conf.all.forwarding", 128, " nodad")
        };
        link::sysctl(node.name(), forwarding, "1").expect("forwarding");
        let mut listeners = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut pods = Vec::new();
        let mut echoes = Vec::new();
        for (name, host) in POD_HOSTS {
            let ip: IpAddr = format!("{net}{host}").parse().expect("pod ip");
            let pod = ScratchNetns::new("nftp", &format!("{case}-{name}"));
            let veth = format!("v-{name}");
            link::add_veth(node.name(), &veth, pod.name(), "eth0").expect("veth");
            netns::ip_batch(
                node.name(),
                &[
                    format!("addr add {gateway}/{prefix} dev {veth}{nodad}"),
                    format!("route add {ip}/{prefix} dev {veth}"),
                ],
            )
            .expect("gateway address and route to the pod");
            netns::ip_batch(
                pod.name(),
                &[
                    format!("addr add {ip}/{prefix} dev eth0{nodad}"),
                    format!("route add {gateway}/{prefix} dev eth0"),
                    format!("route add default via {gateway} dev eth0"),
                ],
            )
            .expect("pod address and routes");
            for port in TCP_PORTS {
                listeners.push(in_netns(pod.name(), || listen(ip, port)));
            }
            let socket = in_netns(pod.name(), || {
                UdpSocket::bind((ip, UDP_PORT)).expect("bind the UDP echo")
            });
            echoes.push(echo(socket, Arc::clone(&stop)));
            pods.push((name.to_owned(), pod, ip));
        }
        listeners.push(in_netns(node.name(), || listen(gateway, 80)));
        Topology {
            node,
            gateway,
            pods,
            _listeners: listeners,
            stop,
            echoes,
        }
    }

    /// The namespace and IP of Pod `pod`.
    fn pod(&self, pod: &str) -> (&str, IpAddr) {
        self.pods
            .iter()
            .find(|(name, ..)| name == pod)
            .map(|(_, ns, ip)| (ns.name(), *ip))
            .unwrap_or_else(|| panic!("no pod {pod}"))
    }

    fn ip(&self, pod: &str) -> IpAddr {
        self.pod(pod).1
    }

    /// Pings every Pod from the Node, which policy always allows (the Node sends, the Pod
    /// replies). In IPv6 this also resolves the neighbours both ways under the loaded rules
    /// (the Pod's advertisement passes its egress chain), so the probes after it do not wait
    /// for neighbour discovery.
    fn node_pings_its_pods(&self) {
        for (name, _, ip) in &self.pods {
            let ip = ip.to_string();
            let out = netns::exec(self.node.name(), &["ping", "-c", "1", "-W", "3", &ip]);
            assert!(
                out.is_ok(),
                "the node cannot ping pod {name} ({ip}): {out:?}"
            );
        }
    }

    /// Whether a connection (TCP) or an exchange (UDP) from Pod `from` to `to` succeeds.
    fn probe(&self, from: &str, to: SocketAddr, protocol: Protocol) -> bool {
        let (ns, ip) = self.pod(from);
        in_netns(ns, || match protocol {
            Protocol::Tcp => match TcpStream::connect_timeout(&to, WAIT) {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
                Err(e) => panic!("connect to {to} from {from}: {e}"),
            },
            Protocol::Udp => {
                let socket = UdpSocket::bind((ip, 0)).expect("bind a UDP client");
                socket.set_read_timeout(Some(WAIT)).expect("read timeout");
                socket.send_to(b"ping", to).expect("send");
                let mut buf = [0u8; 16];
                match socket.recv_from(&mut buf) {
                    Ok((n, peer)) => peer == to && &buf[..n] == b"ping",
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        false
                    }
                    Err(e) => panic!("UDP to {to} from {from}: {e}"),
                }
            }
            Protocol::Sctp => panic!("no SCTP sockets on this kernel"),
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for echo in self.echoes.drain(..) {
            let _ = echo.join();
        }
    }
}

fn listen(ip: IpAddr, port: u16) -> TcpListener {
    TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("listen on {ip}:{port}: {e}"))
}

/// Echoes every datagram until `stop` is set.
fn echo(socket: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    })
}
