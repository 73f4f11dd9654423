//! Services with real packets: each test builds a lab of two Nodes (resolved by the embedded
//! control plane, so Deployments expand and EndpointSlices are generated) whose agents program
//! their namespaces with [`netd_agent::NodeProgrammer`], and holds what the kernel does against what
//! Kubernetes specifies for Services (kube-proxy's iptables mode). Needs root.
//!
//! The lab runs its helpers (each Node's agent, each Pod's echo server) from a program; this
//! test binary is that program (`harness = false`): started with `--netd-helper ARGS...` it is
//! a helper, otherwise it runs the tests below, `--test-threads N` at a time (default 1). Run
//! one test with `cargo test -p netd-agent --test lab_services -- NAME`. Every lab is removed
//! when its test ends, failed or not, and the run fails if any of its namespaces is left.
//! Every test runs again as `ipv6/NAME` on an IPv6-only lab (`lab up --ip-family ipv6`),
//! reading `ip6tables-save` and IPv6 conntrack entries where it reads the kernel's state, and
//! both again on labs whose agents run the nftables back end (`nftables/NAME`,
//! `nftables/ipv6/NAME`), reading `nft list table` instead of `iptables-save`. The tests that
//! do not read per-Service chains run once more as `ipvs/NAME` and `ipvs/ipv6/NAME` on labs
//! in IPVS mode.
//! Tests that need a kernel feature (SCTP sockets for the `sctp_` tests, IPVS for `ipvs/`)
//! are reported ignored where the running kernel lacks it, and `-- --ignored` runs only them,
//! failing them there (as `.ci/run` does in `scripts/kernel-vm.sh`, on Debian's stock kernel).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use netd_agent::Mode;
use netd_lab::echo::EchoReply;
use netd_lab::{
    Lab, LabOptions, Outcome, Place, ProbeProtocol, ProbeResult, ProbeSpec, Resolver, Target,
};
use netd_model::{ClusterConfig, IpFamilies, Kind, NodeName, ObjectId, PodRef, ServiceRef};
use netd_testkit::held::{HeldConnection, in_netns};

const STATE_ROOT: &str = "/run/kube-netd-tests";
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

type Test = (&'static str, fn());

/// A kernel feature some tests need, which the running kernel may lack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Sctp,
    Ipvs,
}

/// One test to run: its name, the lab's family and proxy mode, the test, and the kernel
/// feature it needs beyond what every lab needs.
struct Case {
    name: String,
    v6: bool,
    mode: Mode,
    test: fn(),
    needs: Option<Needs>,
}

thread_local! {
    /// Whether the test running on this thread builds an IPv6-only lab.
    static IPV6: Cell<bool> = const { Cell::new(false) };
    /// The proxy mode of the test running on this thread.
    static MODE: Cell<Mode> = const { Cell::new(Mode::Iptables) };
}

fn ipv6() -> bool {
    IPV6.with(Cell::get)
}

fn mode() -> Mode {
    MODE.with(Cell::get)
}

const TESTS: [Test; 13] = [
    (
        "round_robin_reaches_every_pod_evenly",
        round_robin_reaches_every_pod_evenly,
    ),
    (
        "port_maps_to_numeric_and_named_target_ports",
        port_maps_to_numeric_and_named_target_ports,
    ),
    (
        "service_without_endpoints_refuses_at_once",
        service_without_endpoints_refuses_at_once,
    ),
    (
        "pod_reaches_itself_through_its_service",
        pod_reaches_itself_through_its_service,
    ),
    (
        "node_reaches_a_service_through_its_cluster_ip",
        node_reaches_a_service_through_its_cluster_ip,
    ),
    (
        "node_port_cluster_snats_to_the_node_address",
        node_port_cluster_snats_to_the_node_address,
    ),
    (
        "node_port_local_keeps_the_client_address",
        node_port_local_keeps_the_client_address,
    ),
    (
        "session_affinity_sticks_to_one_pod",
        session_affinity_sticks_to_one_pod,
    ),
    (
        "udp_service_answers_after_its_serving_pod_is_deleted",
        udp_service_answers_after_its_serving_pod_is_deleted,
    ),
    (
        "udp_service_answers_once_it_gains_an_endpoint",
        udp_service_answers_once_it_gains_an_endpoint,
    ),
    (
        "scaling_a_deployment_changes_the_serving_pods",
        scaling_a_deployment_changes_the_serving_pods,
    ),
    (
        "deleting_a_service_removes_its_rules",
        deleting_a_service_removes_its_rules,
    ),
    (
        "agent_restart_keeps_established_connections",
        agent_restart_keeps_established_connections,
    ),
];

/// The tests that need SCTP sockets: ignored (with the reason) where the running kernel has
/// none; `--ignored` runs only them, and fails them there (`scripts/kernel-vm.sh` runs them so
/// on Debian's stock kernel).
const SCTP_TESTS: [Test; 1] = [(
    "sctp_service_reaches_its_pod_by_cluster_ip_and_node_port",
    sctp_service_reaches_its_pod_by_cluster_ip_and_node_port,
)];

/// The tests that run again in IPVS mode: every one but `deleting_a_service_removes_its_rules`,
/// which reads the per-Service chains that IPVS mode does not have (its virtual servers are
/// held by `crates/agent/tests/ipvs_kernel.rs`).
const IPVS_TESTS: [&str; 12] = [
    "round_robin_reaches_every_pod_evenly",
    "port_maps_to_numeric_and_named_target_ports",
    "service_without_endpoints_refuses_at_once",
    "pod_reaches_itself_through_its_service",
    "node_reaches_a_service_through_its_cluster_ip",
    "node_port_cluster_snats_to_the_node_address",
    "node_port_local_keeps_the_client_address",
    "session_affinity_sticks_to_one_pod",
    "udp_service_answers_once_it_gains_an_endpoint",
    "udp_service_answers_after_its_serving_pod_is_deleted",
    "scaling_a_deployment_changes_the_serving_pods",
    "agent_restart_keeps_established_connections",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(status) = netd_lab::helper_if_asked(&args, &netd_agent::backend) {
        return status;
    }
    let mut threads = 1usize;
    let mut filter = None;
    let mut listing = false;
    let only_needing = args.iter().any(|a| a == "--ignored");
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(n) = arg.strip_prefix("--test-threads=") {
            threads = n.parse().expect("--test-threads=N");
        } else if arg == "--test-threads" {
            threads = rest
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--test-threads N");
        } else if arg == "--list" {
            listing = true;
        } else if !arg.starts_with('-') && filter.is_none() {
            filter = Some(arg.clone());
        }
    }
    let variants = [
        (Mode::Iptables, false),
        (Mode::Iptables, true),
        (Mode::Nftables, false),
        (Mode::Nftables, true),
        (Mode::Ipvs, false),
        (Mode::Ipvs, true),
    ];
    let mut selected: Vec<Case> = Vec::new();
    for (mode, v6) in variants {
        let mut prefix = String::new();
        if mode != Mode::Iptables {
            prefix.push_str(&format!("{mode}/"));
        }
        if v6 {
            prefix.push_str("ipv6/");
        }
        let case = |(name, test): Test, needs| Case {
            name: format!("{prefix}{name}"),
            v6,
            mode,
            test,
            needs,
        };
        if mode == Mode::Ipvs {
            selected.extend(
                TESTS
                    .into_iter()
                    .filter(|(name, _)| IPVS_TESTS.contains(name))
                    .map(|t| case(t, Some(Needs::Ipvs))),
            );
        } else {
            selected.extend(TESTS.into_iter().map(|t| case(t, None)));
            selected.extend(SCTP_TESTS.into_iter().map(|t| case(t, Some(Needs::Sctp))));
        }
    }
    selected.retain(|c| {
        filter.as_ref().is_none_or(|f| c.name.contains(f.as_str()))
            && (!only_needing || c.needs.is_some())
    });
    if listing {
        for c in &selected {
            let kind = match c.needs {
                None => "test",
                Some(Needs::Sctp) => "test (needs SCTP)",
                Some(Needs::Ipvs) => "test (needs IPVS)",
            };
            println!("{}: {kind}", c.name);
        }
        return ExitCode::SUCCESS;
    }
    let missing = |needs| {
        selected
            .iter()
            .any(|c| c.needs == Some(needs))
            .then(|| match needs {
                Needs::Sctp => netd_testkit::sctp_missing(),
                Needs::Ipvs => netd_testkit::ipvs_missing(),
            })
            .flatten()
    };
    let (sctp_missing, ipvs_missing) = (missing(Needs::Sctp), missing(Needs::Ipvs));
    let queue = Mutex::new(selected.into_iter());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                    let Some(case) = next else {
                        break;
                    };
                    let why = match case.needs {
                        None => None,
                        Some(Needs::Sctp) => sctp_missing.as_ref(),
                        Some(Needs::Ipvs) => ipvs_missing.as_ref(),
                    };
                    if let Some(why) = why {
                        if !only_needing {
                            println!("test {} ... ignored, {why}", case.name);
                            continue;
                        }
                        println!("test {} ... FAILED: {why}", case.name);
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(case.name);
                        continue;
                    }
                    IPV6.with(|c| c.set(case.v6));
                    MODE.with(|c| c.set(case.mode));
                    let start = Instant::now();
                    let ok = catch_unwind(AssertUnwindSafe(case.test)).is_ok();
                    let status = if ok { "ok" } else { "FAILED" };
                    println!(
                        "test {} ... {status} ({:.1}s)",
                        case.name,
                        start.elapsed().as_secs_f64()
                    );
                    if !ok {
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(case.name);
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
    let left: Vec<String> = netd_kernel::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.starts_with(&lab_prefix()))
        .collect();
    if !left.is_empty() {
        println!("namespaces left behind: {left:?}");
        failed.push("(cleanup)".to_owned());
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed: {failed:?}");
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Three replicas behind one Service: over 300 connections every pod answers, and none gets
/// less than 15% (each rule of the KUBE-SVC chain picks 1/3, 1/2, the rest).
fn round_robin_reaches_every_pod_evenly() {
    let lab = up(
        "rr",
        &format!(
            "{}{}{CLIENT}",
            deployment("hostnames", 3, "[{containerPort: 9376}]"),
            service(
                "hostnames",
                "selector: {app: hostnames}, ports: [{port: 80, targetPort: 9376}]"
            ),
        ),
    );
    let backends = pods_labelled(&lab, "hostnames");
    assert_eq!(backends.len(), 3, "{backends:?}");
    let results = probe(&lab, &client(), &svc("hostnames"), 80, 300);
    let counts = served_counts(&results);
    println!("  round robin over 300 connections: {counts:?}");
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), backends);
    for (pod, n) in &counts {
        assert!(*n >= 45, "{pod} served {n} of 300 connections: {counts:?}");
    }
}

/// A Service's `port` reaches the Pods' `targetPort`: a number, or a name that each Pod
/// resolves to its own container port.
fn port_maps_to_numeric_and_named_target_ports() {
    let lab = up(
        "tp",
        &format!(
            "{}{}{}{}{CLIENT}",
            pod(
                "a",
                "node-1",
                "{app: web, pod: a}",
                "[{name: http, containerPort: 8080}]"
            ),
            pod(
                "b",
                "node-2",
                "{app: web, pod: b}",
                "[{name: http, containerPort: 9090}]"
            ),
            service(
                "named",
                "selector: {app: web}, ports: [{name: web, port: 80, targetPort: http}]"
            ),
            service(
                "numeric",
                "selector: {pod: a}, ports: [{port: 81, targetPort: 8080}]"
            ),
        ),
    );
    let named = probe(&lab, &client(), &svc("named"), 80, 60);
    let counts = served_counts(&named);
    println!("  named targetPort http (a: 8080, b: 9090): {counts:?}");
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default/a", "default/b"]
    );
    let numeric = probe(&lab, &client(), &svc("numeric"), 81, 10);
    assert_eq!(
        served_counts(&numeric),
        BTreeMap::from([("default/a".to_owned(), 10)])
    );
}

/// No endpoints: the ClusterIP rejects (ICMP port unreachable), so a client is refused at
/// once instead of hanging — from a Pod and from a Node.
fn service_without_endpoints_refuses_at_once() {
    let lab = up(
        "noep",
        &format!(
            "{}{CLIENT}",
            service(
                "empty",
                "selector: {app: nothing}, ports: [{port: 80, targetPort: 8080}]"
            )
        ),
    );
    let spec = ProbeSpec {
        port: Some(80),
        protocol: ProbeProtocol::Tcp,
        count: 3,
        timeout: Duration::from_secs(3),
        family: None,
    };
    for from in [client(), Place::Node("node-2".into())] {
        let results = lab.probe(&from, &svc("empty"), &spec).expect("probe");
        for r in &results {
            assert_eq!(r.outcome, Outcome::Refused, "{r}");
        }
    }
}

/// Hairpin: a Pod reaching its own Service is served by itself, masqueraded to its Node's
/// address (KUBE-SEP's `-s <pod IP> -j KUBE-MARK-MASQ`) so that the reply comes back through
/// the bridge and is un-NATed.
fn pod_reaches_itself_through_its_service() {
    let lab = up(
        "hairpin",
        &format!(
            "{}{}",
            pod("web", "node-1", "{app: web}", "[{containerPort: 8080}]"),
            service(
                "web",
                "selector: {app: web}, ports: [{port: 80, targetPort: 8080}]"
            ),
        ),
    );
    let me = Place::Pod(PodRef::new("default", "web"));
    let node = node_addresses(&lab, &Place::Node("node-1".into()));
    for r in probe(&lab, &me, &svc("web"), 80, 5) {
        assert_eq!(r.outcome, Outcome::Connected, "{r}");
        assert_eq!(r.served_by.as_deref(), Some("default/web"), "{r}");
        assert!(
            r.client_ip_seen.is_some_and(|ip| node.contains(&ip)),
            "{r}: hairpin traffic is masqueraded to one of node-1's addresses {node:?}"
        );
    }
}

/// A Node's own processes reach a ClusterIP (nat `OUTPUT` jumps to `KUBE-SERVICES`), on the
/// endpoint's Node and on the other one.
fn node_reaches_a_service_through_its_cluster_ip() {
    let lab = up(
        "hostsvc",
        &format!(
            "{}{}",
            pod("web", "node-2", "{app: web}", "[{containerPort: 8080}]"),
            service(
                "web",
                "selector: {app: web}, ports: [{port: 80, targetPort: 8080}]"
            ),
        ),
    );
    for node in ["node-1", "node-2"] {
        let counts = served_counts(&probe(&lab, &Place::Node(node.into()), &svc("web"), 80, 3));
        assert_eq!(
            counts,
            BTreeMap::from([("default/web".to_owned(), 3)]),
            "from {node}"
        );
    }
}

/// `externalTrafficPolicy: Cluster`: every Node answers on the nodePort, and the backend sees
/// the address of the Node the request came through (SNAT), not the client's.
fn node_port_cluster_snats_to_the_node_address() {
    let lab = up(
        "npc",
        &format!(
            "{}{}",
            pod(
                "web",
                "node-1",
                "{app: web}",
                "[{name: http, containerPort: 8080}]"
            ),
            service(
                "web",
                "type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: http, nodePort: 30080}]"
            ),
        ),
    );
    for node in ["node-1", "node-2"] {
        let addresses = node_addresses(&lab, &Place::Node(node.into()));
        for r in probe(&lab, &Place::External, &Target::Node(node.into()), 30080, 3) {
            assert_eq!(r.outcome, Outcome::Connected, "{r}");
            assert_eq!(r.served_by.as_deref(), Some("default/web"), "{r}");
            assert!(
                r.client_ip_seen.is_some_and(|ip| addresses.contains(&ip)),
                "{r}: expected one of {node}'s addresses {addresses:?}"
            );
        }
    }
}

/// `externalTrafficPolicy: Local`: the Node with the endpoint answers and the backend sees the
/// external client's own address; the Node without one drops the connection (no answer).
fn node_port_local_keeps_the_client_address() {
    let lab = up(
        "npl",
        &format!(
            "{}{}{}",
            pod(
                "web",
                "node-1",
                "{app: web}",
                "[{name: http, containerPort: 8080}]"
            ),
            service(
                "web",
                "type: NodePort, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: http, nodePort: 30081}]"
            ),
            pod("client2", "node-2", "{role: client}", "[]"),
        ),
    );
    let external = node_addresses(&lab, &Place::External);
    let first_host = if ipv6() {
        "fd00:172:18::1"
    } else {
        "172.18.0.1"
    };
    assert!(
        external.contains(&first_host.parse::<IpAddr>().expect("ip")),
        "{external:?}"
    );
    for r in probe(
        &lab,
        &Place::External,
        &Target::Node("node-1".into()),
        30081,
        3,
    ) {
        assert_eq!(r.outcome, Outcome::Connected, "{r}");
        assert_eq!(r.served_by.as_deref(), Some("default/web"), "{r}");
        assert!(
            r.client_ip_seen.is_some_and(|ip| external.contains(&ip)),
            "{r}: expected the client's own address {external:?}"
        );
    }
    let spec = ProbeSpec {
        port: Some(30081),
        protocol: ProbeProtocol::Tcp,
        count: 3,
        timeout: PROBE_TIMEOUT,
        family: None,
    };
    let node2 = Target::Node("node-2".into());
    for r in lab.probe(&Place::External, &node2, &spec).expect("probe") {
        assert_eq!(
            r.outcome,
            Outcome::Timeout,
            "{r}: node-2 has no local endpoint"
        );
    }
    // Pod traffic short-circuits to every endpoint of the cluster (KUBE-EXT's "pod traffic"
    // rule), so a pod on node-2 still reaches the Service through node-2's nodePort.
    let from = Place::Pod(PodRef::new("default", "client2"));
    let counts = served_counts(&probe(&lab, &from, &node2, 30081, 3));
    assert_eq!(counts, BTreeMap::from([("default/web".to_owned(), 3)]));
}

/// `sessionAffinity: ClientIP`: every connection of a client goes to the same pod.
fn session_affinity_sticks_to_one_pod() {
    let lab = up(
        "aff",
        &format!(
            "{}{}{CLIENT}{}",
            deployment("sticky", 3, "[{containerPort: 8080}]"),
            service(
                "sticky",
                "selector: {app: sticky}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]"
            ),
            pod("client2", "node-2", "{role: client}", "[]"),
        ),
    );
    assert_eq!(pods_labelled(&lab, "sticky").len(), 3);
    for from in [client(), Place::Pod(PodRef::new("default", "client2"))] {
        let counts = served_counts(&probe(&lab, &from, &svc("sticky"), 80, 60));
        println!("  {from}: {counts:?}");
        assert_eq!(counts.len(), 1, "{from} was served by {counts:?}");
    }
}

/// A UDP client keeps one source port (as resolvers do), so its datagrams follow one conntrack
/// entry. When the pod it was DNATed to is deleted, the entry must be deleted too, or every
/// further datagram goes to the dead pod (kube-proxy #19029, #59368).
fn udp_service_answers_after_its_serving_pod_is_deleted() {
    let lab = up(
        "udp",
        &format!(
            "{}{}{}{CLIENT}",
            pod(
                "a",
                "node-1",
                "{app: dns}",
                "[{containerPort: 5353, protocol: UDP}]"
            ),
            pod(
                "b",
                "node-2",
                "{app: dns}",
                "[{containerPort: 5353, protocol: UDP}]"
            ),
            service(
                "dns",
                "selector: {app: dns}, ports: [{port: 53, targetPort: 5353, protocol: UDP}]"
            ),
        ),
    );
    let to = SocketAddr::new(cluster_ip(&lab, "dns"), 53);
    let socket = udp_client(&lab, &client(), to);
    let first = udp_ask(&socket).expect("an answer from the Service");
    for _ in 0..4 {
        assert_eq!(
            udp_ask(&socket).map(|r| r.pod).as_deref(),
            Some(first.pod.as_str()),
            "one source port, one conntrack entry, one backend"
        );
    }
    let (_, name) = first.pod.split_once('/').expect("ns/name");
    println!("  served by {}; deleting it", first.pod);
    lab.delete(&[ObjectId {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: name.to_owned(),
    }])
    .expect("delete the serving pod");
    let other = if name == "a" {
        "default/b"
    } else {
        "default/a"
    };
    let answer = (0..3).find_map(|_| udp_ask(&socket));
    assert_eq!(
        answer.as_ref().map(|r| r.pod.as_str()),
        Some(other),
        "the same client socket must reach the remaining pod once {} is gone: the stale \
         conntrack entry DNATed to it must have been deleted; node-1's UDP entries:\n{}",
        first.pod,
        conntrack_udp(&lab, "node-1")
    );
}

/// A UDP client that was rejected while its Service had no endpoint reaches the endpoint that
/// appears, from the same source port (kube-proxy #48370).
fn udp_service_answers_once_it_gains_an_endpoint() {
    let lab = up(
        "udpnew",
        &format!(
            "{}{CLIENT}",
            service(
                "dns",
                "selector: {app: dns}, ports: [{port: 53, targetPort: 5353, protocol: UDP}]"
            ),
        ),
    );
    let to = SocketAddr::new(cluster_ip(&lab, "dns"), 53);
    let socket = udp_client(&lab, &client(), to);
    for _ in 0..3 {
        assert!(udp_ask(&socket).is_none(), "no endpoint yet");
    }
    lab.apply(netd_testkit::objects(&pod(
        "a",
        "node-2",
        "{app: dns}",
        "[{containerPort: 5353, protocol: UDP}]",
    )))
    .expect("add an endpoint");
    let answer = (0..3).find_map(|_| udp_ask(&socket));
    assert_eq!(answer.map(|r| r.pod).as_deref(), Some("default/a"));
}

/// Scaling a Deployment up and down changes the set of pods that serve its Service.
fn scaling_a_deployment_changes_the_serving_pods() {
    let service_yaml = service(
        "scale",
        "selector: {app: scale}, ports: [{port: 80, targetPort: 8080}]",
    );
    let lab = up(
        "scale",
        &format!(
            "{}{service_yaml}{CLIENT}",
            deployment("scale", 1, "[{containerPort: 8080}]")
        ),
    );
    for (step, (replicas, probes)) in [(1, 20), (3, 90), (1, 30)].into_iter().enumerate() {
        if step > 0 {
            lab.apply(netd_testkit::objects(&deployment(
                "scale",
                replicas,
                "[{containerPort: 8080}]",
            )))
            .expect("scale");
        }
        let want = pods_labelled(&lab, "scale");
        assert_eq!(want.len(), replicas);
        let counts = served_counts(&probe(&lab, &client(), &svc("scale"), 80, probes));
        println!("  {replicas} replicas: {counts:?}");
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "with {replicas} replicas"
        );
    }
}

/// Deleting a Service removes its chains and rules from every Node, and its ClusterIP stops
/// answering; another Service of the same pods is untouched.
fn deleting_a_service_removes_its_rules() {
    let lab = up(
        "del",
        &format!(
            "{}{}{}{CLIENT}",
            pod("web", "node-2", "{app: web}", "[{containerPort: 8080}]"),
            service(
                "doomed",
                "selector: {app: web}, ports: [{port: 80, targetPort: 8080}]"
            ),
            service(
                "kept",
                "selector: {app: web}, ports: [{port: 80, targetPort: 8080}]"
            ),
        ),
    );
    let doomed_ip = cluster_ip(&lab, "doomed");
    let host_prefix = if doomed_ip.is_ipv4() { 32 } else { 128 };
    let nodes = [NodeName::new("node-1"), NodeName::new("node-2")];
    let mut chains = BTreeMap::new();
    for node in &nodes {
        let rules = kernel_rules(&lab, node);
        let chain = service_chain(&rules, "default/doomed")
            .unwrap_or_else(|| panic!("{node}: no service chain for default/doomed:\n{rules}"));
        chains.insert(node.clone(), chain);
    }
    for name in ["doomed", "kept"] {
        let counts = served_counts(&probe(&lab, &client(), &svc(name), 80, 3));
        assert_eq!(counts.len(), 1, "{name}: {counts:?}");
    }

    lab.delete(&[ObjectId {
        kind: Kind::Service,
        namespace: "default".into(),
        name: "doomed".into(),
    }])
    .expect("delete the service");
    for node in &nodes {
        let all = kernel_rules(&lab, node);
        let chain = &chains[node];
        let stale: Vec<&str> = all
            .lines()
            .filter(|l| {
                l.contains(chain.as_str())
                    || l.contains("\"default/doomed")
                    || l.contains("-default/doomed/")
                    || l.contains(&format!("{doomed_ip}/{host_prefix} "))
                    || l.contains(&format!("{doomed_ip} . "))
            })
            .collect();
        assert!(
            stale.is_empty(),
            "{node} still has rules of default/doomed: {stale:#?}"
        );
        assert!(
            service_chain(&all, "default/kept").is_some(),
            "{node} lost default/kept"
        );
    }
    let spec = ProbeSpec {
        port: Some(80),
        protocol: ProbeProtocol::Tcp,
        count: 2,
        timeout: PROBE_TIMEOUT,
        family: None,
    };
    for r in lab
        .probe(&client(), &Target::Ip(doomed_ip), &spec)
        .expect("probe")
    {
        assert_ne!(
            r.outcome,
            Outcome::Connected,
            "{r}: the deleted ClusterIP still answers"
        );
    }
    assert_eq!(
        served_counts(&probe(&lab, &client(), &svc("kept"), 80, 3)).len(),
        1
    );
}

/// Killing every Node's agent and starting it again (a fresh process that knows nothing but
/// the cluster and resyncs the Node in full) keeps an established connection through a
/// ClusterIP working: the same TCP connection echoes before, during and after the restart,
/// and the conntrack entry of a live UDP flow is not flushed. The lab still manages the
/// restarted agents: a change applied afterwards converges and is served.
fn agent_restart_keeps_established_connections() {
    let lab = up(
        "restart",
        &format!(
            "{}{}{CLIENT}",
            pod(
                "web",
                "node-2",
                "{app: web}",
                "[{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]"
            ),
            service(
                "web",
                "selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 5353, protocol: UDP}]"
            ),
        ),
    );
    let ip = cluster_ip(&lab, "web");
    let udp = udp_client(&lab, &client(), SocketAddr::new(ip, 53));
    let answer = udp_ask(&udp).expect("a UDP answer");
    assert_eq!(answer.pod, "default/web");
    let udp_flow = format!(
        "sport={} dport=53 ",
        udp.local_addr().expect("local address").port()
    );
    let to = SocketAddr::new(ip, 80);
    let ns = lab.netns_of(&client()).expect("client namespace");
    let mut conn = HeldConnection::open(&ns, to, Duration::from_secs(5));
    let hello = EchoReply::parse(conn.greeting()).expect("an echo reply");
    assert_eq!(hello.pod, "default/web");
    conn.round_trip("before");

    let before = recorded_agents(&lab);
    assert_eq!(before.len(), 2, "{before:?}");
    // The restarts run in the background while the connection keeps echoing.
    let mut ticks = 0;
    std::thread::scope(|scope| {
        let restarts = scope.spawn(|| {
            for node in before.keys() {
                lab.restart_agent(&NodeName::new(node.as_str()))
                    .unwrap_or_else(|e| panic!("restart the agent of {node}: {e}"));
            }
        });
        loop {
            conn.round_trip("during");
            ticks += 1;
            if restarts.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Err(panic) = restarts.join() {
            std::panic::resume_unwind(panic);
        }
    });
    conn.round_trip("after");
    let after = recorded_agents(&lab);
    for (node, pid) in &before {
        assert_ne!(after[node], *pid, "the agent of {node} was not replaced");
        assert!(
            !netd_kernel::process::is_alive(*pid),
            "agent {pid} survived"
        );
        assert!(
            netd_kernel::process::is_alive(after[node]),
            "the new agent of {node} exited"
        );
    }
    // Upstream's old cleanup flushed every UDP flow on restart (kubernetes#122740): a flow to
    // a live endpoint must survive the first full sync of a fresh agent.
    let entries = conntrack_udp(&lab, "node-1");
    assert!(
        entries.lines().any(|l| l.contains(&udp_flow)),
        "the live UDP flow ({udp_flow}) was flushed by the restart:\n{entries}"
    );
    assert_eq!(udp_ask(&udp).map(|r| r.pod).as_deref(), Some("default/web"));
    println!(
        "  agents {:?} replaced by {:?}; the connection echoed {ticks} times during the restarts",
        before.values().collect::<Vec<_>>(),
        after.values().collect::<Vec<_>>(),
    );
    assert_eq!(
        served_counts(&probe(&lab, &client(), &svc("web"), 80, 3)).len(),
        1,
        "new connections after the restart"
    );

    // The lab still manages the new agents: a second replica, on the other Node, is built
    // and served, and the old connection still echoes.
    lab.apply(netd_testkit::objects(&pod(
        "web2",
        "node-1",
        "{app: web}",
        "[{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]",
    )))
    .expect("apply after the restart");
    let counts = served_counts(&probe(&lab, &client(), &svc("web"), 80, 40));
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default/web", "default/web2"],
        "{counts:?}"
    );
    conn.round_trip("after apply");
}

/// An SCTP Service (iptables mode): from a Pod on the other Node its ClusterIP reaches the
/// Pod's SCTP echo server, which sees the client's own address; from outside, the nodePort of
/// either Node does, SNATed to that Node. The Pod's TCP port of the same number is not part of
/// the Service: TCP to the ClusterIP gets nowhere.
fn sctp_service_reaches_its_pod_by_cluster_ip_and_node_port() {
    let lab = up(
        "sctp",
        &format!(
            "{}{}{CLIENT}",
            pod(
                "web",
                "node-2",
                "{app: web}",
                "[{containerPort: 9376, protocol: SCTP}, {containerPort: 9376}]"
            ),
            service(
                "web",
                "type: NodePort, selector: {app: web}, ports: [{protocol: SCTP, port: 80, targetPort: 9376, nodePort: 30090}]"
            ),
        ),
    );
    let client_ips = node_addresses(&lab, &client());
    for r in probe_over(&lab, &client(), &svc("web"), ProbeProtocol::Sctp, 80, 5) {
        assert_eq!(r.served_by.as_deref(), Some("default/web"), "{r}");
        assert!(
            r.client_ip_seen.is_some_and(|ip| client_ips.contains(&ip)),
            "{r}: expected the client's own address {client_ips:?}"
        );
    }
    for node in ["node-1", "node-2"] {
        let addresses = node_addresses(&lab, &Place::Node(node.into()));
        let to = Target::Node(node.into());
        for r in probe_over(&lab, &Place::External, &to, ProbeProtocol::Sctp, 30090, 3) {
            assert_eq!(r.served_by.as_deref(), Some("default/web"), "{r}");
            assert!(
                r.client_ip_seen.is_some_and(|ip| addresses.contains(&ip)),
                "{r}: expected one of {node}'s addresses {addresses:?}"
            );
        }
    }
    let tcp = ProbeSpec {
        port: Some(80),
        protocol: ProbeProtocol::Tcp,
        count: 1,
        timeout: PROBE_TIMEOUT,
        family: None,
    };
    let r = &lab.probe(&client(), &svc("web"), &tcp).expect("probe")[0];
    assert_ne!(r.outcome, Outcome::Connected, "{r}");
}

// ---------------------------------------------------------------------------------------------
// Clusters.

/// A client Pod on node-1 that serves nothing and matches no Service.
const CLIENT: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {role: client}}\nspec: {nodeName: node-1, containers: [{name: c, image: echo}]}\n---\n";

fn client() -> Place {
    Place::Pod(PodRef::new("default", "client"))
}

fn svc(name: &str) -> Target {
    Target::Service(ServiceRef::new("default", name))
}

fn pod(name: &str, node: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {labels}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: echo, ports: {ports}}}]}}\n---\n"
    )
}

fn deployment(name: &str, replicas: usize, ports: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\nspec: {{replicas: {replicas}, selector: {{matchLabels: {{app: {name}}}}}, template: {{metadata: {{labels: {{app: {name}}}}}, spec: {{containers: [{{name: c, image: echo, ports: {ports}}}]}}}}}}\n---\n"
    )
}

fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{{spec}}}\n---\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Labs and probes.

/// The prefix of this process's labs: unique per process, so runs never collide.
fn lab_prefix() -> String {
    format!("sv{}-", std::process::id() % 100_000)
}

fn resolver() -> Resolver {
    Arc::new(|objects, config, previous| Ok(netd_controlplane::resolve(objects, config, previous)?))
}

/// Builds the lab `<prefix><test>` of two Nodes from YAML; dropping it removes it.
fn up(test: &str, yaml: &str) -> Lab {
    let exe = std::env::current_exe().expect("test binary");
    let six = if ipv6() { "6" } else { "" };
    let m = match mode() {
        Mode::Iptables => "",
        Mode::Nftables => "n",
        Mode::Ipvs => "v",
    };
    let mut options = LabOptions::new(
        format!("{}{m}{six}{test}", lab_prefix()),
        vec![
            exe.to_string_lossy().into_owned(),
            netd_lab::HELPER_FLAG.to_owned(),
        ],
    );
    options.state_root = PathBuf::from(STATE_ROOT);
    options.mode = mode();
    if ipv6() {
        options.config = ClusterConfig::for_families(IpFamilies::Ipv6);
    }
    options.converge_timeout = Duration::from_secs(60);
    options.cluster_dns = false;
    Lab::up(options, netd_testkit::objects(yaml), resolver()).expect("lab up")
}

/// `count` TCP probes from `from` to `to`, each of which must connect.
fn probe(lab: &Lab, from: &Place, to: &Target, port: u16, count: u32) -> Vec<ProbeResult> {
    probe_over(lab, from, to, ProbeProtocol::Tcp, port, count)
}

/// `count` probes of `protocol` from `from` to `to`, each of which must connect.
fn probe_over(
    lab: &Lab,
    from: &Place,
    to: &Target,
    protocol: ProbeProtocol,
    port: u16,
    count: u32,
) -> Vec<ProbeResult> {
    let spec = ProbeSpec {
        port: Some(port),
        protocol,
        count,
        timeout: PROBE_TIMEOUT,
        family: None,
    };
    let results = lab.probe(from, to, &spec).expect("probe");
    for r in &results {
        assert_eq!(r.outcome, Outcome::Connected, "{r}");
    }
    results
}

/// How many connections each pod served.
fn served_counts(results: &[ProbeResult]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in results {
        let pod = r
            .served_by
            .clone()
            .unwrap_or_else(|| panic!("{r}: no reply"));
        *out.entry(pod).or_insert(0) += 1;
    }
    out
}

/// The pods labelled `app=<app>`, as `ns/name`.
fn pods_labelled(lab: &Lab, app: &str) -> BTreeSet<String> {
    lab.state()
        .expect("state")
        .pods()
        .filter(|p| p.labels.get("app").map(String::as_str) == Some(app))
        .map(|p| p.key.to_string())
        .collect()
}

fn cluster_ip(lab: &Lab, name: &str) -> IpAddr {
    let state = lab.state().expect("state");
    let key = ServiceRef::new("default", name);
    state
        .service(&key)
        .and_then(|s| {
            s.cluster_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv6() == ipv6())
        })
        .unwrap_or_else(|| panic!("{key} has no ClusterIP"))
}

/// The addresses of a place's namespace, of the running test's family (global scope).
fn node_addresses(lab: &Lab, place: &Place) -> BTreeSet<IpAddr> {
    let (family, inet) = if ipv6() {
        ("-6", "inet6")
    } else {
        ("-4", "inet")
    };
    let out = lab
        .command(place, "ip")
        .expect("command")
        .args([family, "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    assert!(out.status.success(), "ip addr in {place}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == inet)?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .filter(|ip: &IpAddr| !ip.is_loopback())
        .collect()
}

/// What the test's back end holds in a Node: the nat and filter tables of `iptables-save`
/// (`ip6tables-save` in an IPv6 test), or kube-netd's nftables table of the family.
fn kernel_rules(lab: &Lab, node: &NodeName) -> String {
    if mode() == Mode::Iptables {
        return iptables_save(lab, node, "nat") + &iptables_save(lab, node, "filter");
    }
    let family = if ipv6() { "ip6" } else { "ip" };
    let out = lab
        .command(&Place::Node(node.clone()), "nft")
        .expect("command")
        .args(["list", "table", family, "kube-netd"])
        .output()
        .expect("nft list table");
    assert!(
        out.status.success(),
        "nft list table {family} kube-netd on {node}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iptables-save -t TABLE` of a Node (`ip6tables-save` in an IPv6 test).
fn iptables_save(lab: &Lab, node: &NodeName, table: &str) -> String {
    let program = if ipv6() {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    let out = lab
        .command(&Place::Node(node.clone()), program)
        .expect("command")
        .args(["-t", table])
        .output()
        .expect("iptables-save");
    assert!(out.status.success(), "{program} -t {table} on {node}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chain a Service's ClusterIP traffic is balanced in: the KUBE-SVC chain that nat
/// `KUBE-SERVICES` sends `<service> cluster IP` traffic to, or the nftables `service-` chain;
/// for a plain nftables Service (ClusterIP only, no affinity), which has no chain, the
/// comment of its `plain-services` element.
fn service_chain(rules: &str, service: &str) -> Option<String> {
    if mode() == Mode::Nftables {
        let chain = rules.lines().find_map(|l| {
            let name = l
                .trim()
                .strip_prefix("chain service-")?
                .strip_suffix(" {")?;
            name.contains(&format!("-{service}/"))
                .then(|| format!("service-{name}"))
        });
        // `ns/name` for an unnamed port, `ns/name:port` for a named one.
        let comment = format!("comment \"{service}");
        let commented = [format!("{comment}\""), format!("{comment}:")];
        return chain.or_else(|| {
            commented
                .iter()
                .any(|c| rules.contains(c.as_str()))
                .then_some(comment)
        });
    }
    rules
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES "))
        .filter(|l| {
            l.contains(&format!("\"{service} cluster IP\"")) || l.contains(&format!("\"{service}:"))
        })
        .find_map(|l| {
            let (_, target) = l.rsplit_once(" -j ")?;
            target
                .starts_with("KUBE-SVC-")
                .then(|| target.trim().to_owned())
        })
}

/// The UDP conntrack entries of a Node (of the test's family), as `conntrack -L` lists them.
fn conntrack_udp(lab: &Lab, node: &str) -> String {
    let family = if ipv6() { "ipv6" } else { "ipv4" };
    let out = lab
        .command(&Place::Node(node.into()), "conntrack")
        .expect("command")
        .args(["-L", "-f", family, "-p", "udp"])
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP socket in `from`'s namespace, bound to one source port and connected to `to`.
fn udp_client(lab: &Lab, from: &Place, to: SocketAddr) -> UdpSocket {
    let ns = lab.netns_of(from).expect("namespace");
    let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let socket = in_netns(&ns, || UdpSocket::bind(any).expect("bind"));
    socket.connect(to).expect("connect");
    socket
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .expect("read timeout");
    socket
}

/// One datagram and its answer (`None`: no answer, or an ICMP error).
fn udp_ask(socket: &UdpSocket) -> Option<EchoReply> {
    socket.send(b"probe\n").ok()?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).ok()?;
    EchoReply::parse(&String::from_utf8_lossy(&buf[..n]))
}

/// One TCP connection to an echo server.
/// The agents' PIDs recorded in the lab's state, by Node.
fn recorded_agents(lab: &Lab) -> BTreeMap<String, u32> {
    let lab_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("lab.json")).expect("lab.json"))
            .expect("lab.json is JSON");
    lab_json["agents"]
        .as_object()
        .expect("agents by node")
        .iter()
        .map(|(node, pid)| {
            let pid = pid
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .expect("pid");
            (node.clone(), pid)
        })
        .collect()
}
