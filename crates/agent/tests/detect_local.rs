//! `--detect-local-mode` with real packets (needs root): a pod namespace sends to a ClusterIP
//! through a node namespace whose rules the back end programmed, to an endpoint in a third
//! namespace, and the endpoint reports the source it saw. Traffic the local-traffic detector
//! matches keeps the pod's address; anything else is masqueraded to the node's. The pod's
//! link on the node is `vethc0`, so `vethc0` (an exact interface name) and the prefix `vethc`
//! match it, and the exact name `vethc` and the prefix `vethx` do not. The pod's address is
//! in the cluster's range (ClusterCIDR, 10.244.0.0/16) but not in the Node's podCIDR
//! (NodeCIDR, 10.244.9.0/24 here). Every namespace is `dloc-<pid>-<mode>-<role>`, removed on
//! drop, also on failure.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netd_agent::{BackendConfig, Mode, ProgramConfig, backend};
use netd_kernel::netns;
use netd_model::NodeName;
use netd_proxy::{DetectLocal, ProxySettings};
use netd_testkit::held::in_netns;
use netd_testkit::scratch::ScratchNetns;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.9.0/24, podCIDRs: [10.244.9.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: app, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-1}
"#;

const POD: &str = "10.244.1.50";
const ENDPOINT: &str = "10.244.1.11";
/// The node's address on both of its pod links: the source of masqueraded packets.
const NODE: &str = "10.244.1.1";

/// The node, the pod and the endpoint's namespaces, wired: pod `eth0` ↔ node `vethc0`,
/// endpoint `eth0` ↔ node `vsrv0`, each pod holding its address as a /32 routed by the node.
struct Topology {
    node: ScratchNetns,
    pod: ScratchNetns,
    endpoint: ScratchNetns,
}

impl Topology {
    fn new(mode: Mode) -> Topology {
        let name = |role: &str| ScratchNetns::new("dloc", &format!("{mode}-{role}"));
        let t = Topology {
            node: name("n"),
            pod: name("p"),
            endpoint: name("e"),
        };
        let lines = |v: &[String]| v.to_vec();
        netns::ip_batch(
            t.node.name(),
            &lines(&[
                "link set lo up".into(),
                format!(
                    "link add vethc0 type veth peer name eth0 netns {}",
                    t.pod.name()
                ),
                format!(
                    "link add vsrv0 type veth peer name eth0 netns {}",
                    t.endpoint.name()
                ),
                "link set vethc0 up".into(),
                "link set vsrv0 up".into(),
                format!("addr add {NODE}/32 dev vethc0"),
                format!("addr add {NODE}/32 dev vsrv0"),
                format!("route add {POD}/32 dev vethc0"),
                format!("route add {ENDPOINT}/32 dev vsrv0"),
            ]),
        )
        .expect("the node's links");
        netns::exec(t.node.name(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("forwarding on the node");
        for (ns, ip) in [(&t.pod, POD), (&t.endpoint, ENDPOINT)] {
            netns::ip_batch(
                ns.name(),
                &lines(&[
                    "link set lo up".into(),
                    "link set eth0 up".into(),
                    format!("addr add {ip}/32 dev eth0"),
                    format!("route add default via {NODE} dev eth0 onlink"),
                ]),
            )
            .expect("a pod's link");
        }
        t
    }

    /// The source address the endpoint sees for a connection from the pod to the ClusterIP.
    fn source_seen(&self, listener: &TcpListener) -> IpAddr {
        let to: SocketAddr = "10.96.0.30:80".parse().expect("address");
        let _stream = in_netns(self.pod.name(), || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
        });
        for _ in 0..100 {
            match listener.accept() {
                Ok((_, peer)) => return peer.ip(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        panic!("the endpoint accepted nothing");
    }
}

#[test]
fn only_traffic_the_detector_matches_keeps_the_pod_address() {
    let state = netd_testkit::state(CLUSTER);
    let node = NodeName::new("node-1");
    let name = |s: &str| s.parse().expect("interface name");
    for mode in [Mode::Iptables, Mode::Nftables] {
        let t = Topology::new(mode);
        let listener = in_netns(t.endpoint.name(), || {
            let l = TcpListener::bind((ENDPOINT, 8080)).expect("listen");
            l.set_nonblocking(true).expect("non-blocking listener");
            l
        });
        for (detect_local, seen) in [
            (DetectLocal::ClusterCidr, POD),
            (DetectLocal::NodeCidr, NODE),
            (DetectLocal::BridgeInterface(name("vethc0")), POD),
            (DetectLocal::InterfaceNamePrefix(name("vethc")), POD),
            (DetectLocal::BridgeInterface(name("vethc")), NODE),
            (DetectLocal::InterfaceNamePrefix(name("vethx")), NODE),
        ] {
            let config = BackendConfig {
                mode,
                program: ProgramConfig {
                    proxy: ProxySettings {
                        detect_local: detect_local.clone(),
                        ..ProxySettings::default()
                    },
                    network_policy: false,
                },
                ..BackendConfig::default()
            };
            backend(&config)
                .sync(t.node.name(), &state, &node)
                .unwrap_or_else(|e| panic!("{mode} {detect_local:?}: sync: {e}"));
            let got = t.source_seen(&listener);
            assert_eq!(got.to_string(), seen, "{mode} {detect_local:?}");
        }
    }
}
