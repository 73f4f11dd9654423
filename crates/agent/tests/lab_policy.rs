//! NetworkPolicy with real packets: the lab's Nodes programmed by [`NodeProgrammer`], and the
//! kernel's truth table (`lab matrix`) held against the engine's (`netd_policy::matrix`) on
//! every pair, TCP and UDP. Needs root.
//!
//! The lab runs its helpers (each Node's agent, each Pod's echo server) from a program; this
//! test binary is that program (`harness = false`): started with `--netd-helper ARGS...` it
//! is a helper, otherwise it runs the tests below, one after the other. Run one test with
//! `cargo test -p netd-agent --test lab_policy -- NAME`; replay one generated cluster with
//! `NETD_SEED=N`. Every test runs twice: over IPv4, and as `ipv6/NAME` on an IPv6-only lab
//! whose every address is the IPv4 one embedded in `fd00::/96` ([`ipv6::embed`]), so that
//! ipBlocks, Services and NetworkPolicies mean exactly what they mean over IPv4. Both run
//! again on labs whose agents run the nftables back end (`nftables/NAME`,
//! `nftables/ipv6/NAME`), except the iptables tracer's own test, and the comparisons with the
//! engine and the own-node nodePort test on labs in IPVS mode (`ipvs/NAME`, `ipvs/ipv6/NAME`:
//! IPVS sends a Service's packets on through `OUTPUT`, not `FORWARD`, so policy must be judged
//! there too).
//! The `sctp_` tests need SCTP sockets and the `ipvs/` ones IPVS: where the running kernel
//! lacks them they are reported ignored, and `-- --ignored` runs only them (as `.ci/run` does
//! in `scripts/kernel-vm.sh`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netd_agent::{Mode, NodeProgrammer, trace_nodes};
use netd_lab::{Lab, LabOptions, Outcome, Place, ProbeProtocol, ProbeSpec, Target};
use netd_model::{ClusterState, Kind, NamespaceName, ObjectId, PodRef, Protocol, ServiceRef};
use netd_policy::{Endpoint, evaluate_via_service};
use netd_render::{Packet, Verdict};

/// The seeds CI runs; each builds one lab of six Pods (each behind a Service) on two Nodes.
const SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// Whether the running test's lab is the IPv6 one.
static IPV6: AtomicBool = AtomicBool::new(false);
/// The running test's proxy mode.
static MODE: Mutex<Mode> = Mutex::new(Mode::Iptables);

type Test = (&'static str, fn());

/// What a test needs of the kernel beyond this machine's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Sctp,
    Ipvs,
}

/// One test to run: its variant (the agents' mode, IPv6-only lab or not), its name, and what
/// it needs.
type Run = ((Mode, bool), String, fn(), Needs);

const TESTS: [Test; 5] = [
    (
        "generated_clusters_match_the_engine",
        generated_clusters_match_the_engine,
    ),
    (
        "updates_are_reflected_after_each_step",
        updates_are_reflected_after_each_step,
    ),
    ("seed_deny_egress_stops_ping", seed_deny_egress_stops_ping),
    ("trace_agrees_with_the_kernel", trace_agrees_with_the_kernel),
    (
        "own_node_port_is_judged_by_its_endpoint",
        own_node_port_is_judged_by_its_endpoint,
    ),
];

/// The tests that also run in IPVS mode: those that hold the kernel to the engine, and the
/// own-node nodePort one.
const IPVS_TESTS: [&str; 3] = [
    "generated_clusters_match_the_engine",
    "updates_are_reflected_after_each_step",
    "own_node_port_is_judged_by_its_endpoint",
];

/// The tests that need SCTP sockets: ignored (with the reason) where the running kernel has
/// none; `--ignored` runs only them (and the IPVS ones), and fails them there
/// (`scripts/kernel-vm.sh` runs them so on Debian's stock kernel).
const SCTP_TESTS: [Test; 1] = [(
    "sctp_policy_opens_sctp_alone_and_still_isolates",
    sctp_policy_opens_sctp_alone_and_still_isolates,
)];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(status) = netd_lab::helper_if_asked(&args, &netd_agent::backend) {
        return status;
    }
    let filter: Option<&String> = args.iter().find(|a| !a.starts_with('-'));
    let listing = args.iter().any(|a| a == "--list");
    let only_needy = args.iter().any(|a| a == "--ignored");
    let mut failed = Vec::new();
    let embedding: Test = (
        "ipv6/embedding_keeps_prefixes_and_doubles_node_addresses",
        ipv6::embedding_keeps_prefixes_and_doubles_node_addresses,
    );
    let mut runs: Vec<Run> = Vec::new();
    for mode in [Mode::Iptables, Mode::Nftables, Mode::Ipvs] {
        for v6 in [false, true] {
            let variant = (mode, v6);
            let prefix = format!(
                "{}{}",
                match mode {
                    Mode::Iptables => "",
                    Mode::Nftables => "nftables/",
                    Mode::Ipvs => "ipvs/",
                },
                if v6 { "ipv6/" } else { "" }
            );
            if variant == (Mode::Iptables, false) {
                runs.push((variant, embedding.0.to_owned(), embedding.1, Needs::Nothing));
            }
            let (tests, needs): (Vec<Test>, Needs) = match mode {
                Mode::Iptables => (TESTS.to_vec(), Needs::Nothing),
                // The iptables tracer's own test has no nftables counterpart yet.
                Mode::Nftables => (
                    TESTS
                        .into_iter()
                        .filter(|(n, _)| *n != "trace_agrees_with_the_kernel")
                        .collect(),
                    Needs::Nothing,
                ),
                Mode::Ipvs => (
                    TESTS
                        .into_iter()
                        .filter(|(n, _)| IPVS_TESTS.contains(n))
                        .collect(),
                    Needs::Ipvs,
                ),
            };
            runs.extend(
                tests
                    .into_iter()
                    .map(|(n, t)| (variant, format!("{prefix}{n}"), t, needs)),
            );
            if mode != Mode::Ipvs {
                runs.extend(
                    SCTP_TESTS
                        .iter()
                        .map(|&(n, t)| (variant, format!("{prefix}{n}"), t, Needs::Sctp)),
                );
            }
        }
    }
    runs.retain(|(_, name, _, needs)| {
        filter.is_none_or(|f| name.contains(f.as_str()))
            && (!only_needy || *needs != Needs::Nothing)
    });
    let missing = |needs: Needs| {
        if listing || !runs.iter().any(|t| t.3 == needs) {
            return None;
        }
        match needs {
            Needs::Nothing => None,
            Needs::Sctp => netd_testkit::sctp_missing(),
            Needs::Ipvs => netd_testkit::ipvs_missing(),
        }
    };
    let (sctp_missing, ipvs_missing) = (missing(Needs::Sctp), missing(Needs::Ipvs));
    for ((mode, ipv6), name, test, needs) in runs {
        if listing {
            let kind = match needs {
                Needs::Nothing => "test",
                Needs::Sctp => "test (needs SCTP)",
                Needs::Ipvs => "test (needs IPVS)",
            };
            println!("{name}: {kind}");
            continue;
        }
        let lacking = match needs {
            Needs::Nothing => None,
            Needs::Sctp => sctp_missing.as_ref(),
            Needs::Ipvs => ipvs_missing.as_ref(),
        };
        if let Some(why) = lacking {
            if only_needy {
                println!("test {name} ... FAILED: {why}");
                failed.push(name);
            } else {
                println!("test {name} ... ignored, {why}");
            }
            continue;
        }
        IPV6.store(ipv6, Ordering::SeqCst);
        *MODE.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(test));
        let status = if result.is_ok() { "ok" } else { "FAILED" };
        println!(
            "test {name} ... {status} ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
        if result.is_err() {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed: {failed:?}");
        ExitCode::FAILURE
    }
}

/// The running test's proxy mode.
fn mode() -> Mode {
    *MODE.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(test: &str) -> LabOptions {
    let exe = std::env::current_exe().expect("test binary");
    let six = if IPV6.load(Ordering::SeqCst) { "6" } else { "" };
    let mode = mode();
    let nft = match mode {
        Mode::Iptables => "",
        Mode::Nftables => "n",
        Mode::Ipvs => "v",
    };
    let name = format!("ag{}{nft}{six}-{test}", std::process::id() % 100_000);
    let mut o = LabOptions::new(
        name,
        vec![
            exe.to_string_lossy().into_owned(),
            netd_lab::HELPER_FLAG.to_owned(),
        ],
    );
    o.state_root = PathBuf::from("/run/kube-netd-tests");
    o.converge_timeout = Duration::from_secs(60);
    o.mode = mode;
    if IPV6.load(Ordering::SeqCst) {
        o.config = ipv6::config();
    }
    o
}

fn up(test: &str, yaml: &str) -> Lab {
    Lab::up(options(test), objects(yaml), netd_lab::resolved_as_given()).expect("lab up")
}

/// The objects of `yaml`, over IPv6 when the running test is the IPv6 one.
fn objects(yaml: &str) -> Vec<netd_model::Object> {
    if IPV6.load(Ordering::SeqCst) {
        netd_testkit::objects(&ipv6::embed(yaml))
    } else {
        netd_testkit::objects(yaml)
    }
}

/// The engine's and the kernel's matrices on TCP 80 and UDP 53 (every Pod serves both);
/// returns the differences, described.
fn compare(lab: &Lab, what: &str) -> Vec<String> {
    let state: ClusterState = lab.state().expect("state");
    let namespaces: Vec<NamespaceName> = Vec::new();
    let mut out = Vec::new();
    for (port, protocol) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
        let want = netd_policy::matrix(&state, port, protocol, &namespaces);
        let blocked = want.grid().iter().flatten().filter(|a| !**a).count();
        println!(
            "  {what}: {port}/{}: {blocked} of {} pairs blocked",
            protocol.as_lower_str(),
            want.pods().len().pow(2)
        );
        let got = lab
            .matrix(port, protocol, &[], PROBE_TIMEOUT, None)
            .expect("lab matrix");
        for m in want.mismatches(&got) {
            out.push(format!(
                "{what}: {} -> {} {port}/{}: engine {}, kernel {}",
                m.from,
                m.to,
                protocol.as_lower_str(),
                verdict(m.expected),
                verdict(m.actual)
            ));
        }
    }
    if !out.is_empty() {
        out.push(kernel_state(lab, &state));
    }
    out
}

/// What a mismatch is judged against: every Node's rules and connection-tracking entries
/// as the kernel holds them, with the Pods each Node runs.
fn kernel_state(lab: &Lab, state: &ClusterState) -> String {
    let mut out = String::new();
    for node in state.nodes() {
        let ns = lab.names().node_ns(&node.name);
        let pods: Vec<String> = state
            .pods()
            .filter(|p| p.node.as_ref() == Some(&node.name))
            .map(|p| format!("{} {:?}", p.key, p.ips))
            .collect();
        out.push_str(&format!("--- {} ({ns}): pods {pods:?}\n", node.name));
        let listings: &[&[&str]] = match mode() {
            Mode::Nftables => &[&["nft", "list", "ruleset"]],
            _ => &[&["iptables-save"], &["ip6tables-save"], &["ipset", "list"]],
        };
        for command in listings.iter().chain(&[&["conntrack", "-L"][..]]) {
            match netd_kernel::netns::exec(&ns, command) {
                Ok(o) => out.push_str(&String::from_utf8_lossy(&o.stdout)),
                Err(e) => out.push_str(&format!("{command:?}: {e}\n")),
            }
        }
    }
    out
}

/// Every Pod to every Pod's Service (TCP 8080 -> 80, UDP 5353 -> 53), probed in parallel,
/// against the engine's verdict after DNAT; returns the differences, described.
fn compare_services(lab: &Lab, what: &str) -> Vec<String> {
    let state: ClusterState = lab.state().expect("state");
    let pods: Vec<PodRef> = state.pods().map(|p| p.key.clone()).collect();
    let services: Vec<ServiceRef> = state
        .services()
        .map(|s| s.key.clone())
        .filter(|s| s.name.as_str().starts_with("svc-p"))
        .collect();
    let mut cases = Vec::new();
    for src in &pods {
        for svc in &services {
            for (port, protocol, probe) in [
                (8080, Protocol::Tcp, ProbeProtocol::Tcp),
                (5353, Protocol::Udp, ProbeProtocol::Udp),
            ] {
                let backends =
                    evaluate_via_service(&state, &Endpoint::Pod(src.clone()), svc, port, protocol)
                        .expect("evaluate via service");
                let want = backends.iter().all(|b| b.verdict.allowed);
                cases.push((src.clone(), svc.clone(), port, protocol, probe, want));
            }
        }
    }
    let probe = |src: &PodRef, svc: &ServiceRef, port: u16, protocol, timeout| {
        let spec = ProbeSpec {
            port: Some(port),
            protocol,
            count: 1,
            timeout,
            family: None,
        };
        let from = Place::Pod(src.clone());
        let to = Target::Service(svc.clone());
        lab.probe(&from, &to, &spec).expect("probe")[0].outcome
    };
    let burst: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(src, svc, port, _, protocol, _)| {
                scope.spawn(move || probe(src, svc, *port, *protocol, PROBE_TIMEOUT))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    // As `lab matrix` does, a timeout in the burst where the engine allows is only a drop once
    // it times out again, probed alone: on a loaded machine a reply can miss the burst's
    // deadline. (A connection where the engine blocks is conclusive as it is.)
    let outcomes = cases
        .iter()
        .zip(burst)
        .map(|((src, svc, port, _, protocol, want), got)| {
            if *want && got == Outcome::Timeout {
                probe(src, svc, *port, *protocol, PROBE_TIMEOUT * 3)
            } else {
                got
            }
        });
    let blocked = cases.iter().filter(|c| !c.5).count();
    println!(
        "  {what}: via services: {blocked} of {} probes blocked",
        cases.len()
    );
    cases
        .iter()
        .zip(outcomes)
        .filter(|((.., want), got)| *want != (*got == Outcome::Connected))
        .map(|((src, svc, port, protocol, _, want), got)| {
            format!(
                "{what}: {src} -> svc/{svc} {port}/{}: engine {}, kernel {got}",
                protocol.as_lower_str(),
                verdict(*want)
            )
        })
        .collect()
}

/// An ingress policy on SCTP 5000 alone: before it, SCTP 5000 and 5001 and TCP 5000 all
/// reach the Pod; with it, SCTP 5000 still does, TCP on the same port number does not (an
/// SCTP-only policy does not open TCP), nor SCTP to 5001 (the policy on SCTP still isolates).
/// The kernel's SCTP truth table (`lab matrix --protocol sctp`) is the engine's, both times.
fn sctp_policy_opens_sctp_alone_and_still_isolates() {
    let lab = up("sctp", SCTP_PODS);
    let probe = |protocol: ProbeProtocol, port: u16| {
        let spec = ProbeSpec {
            port: Some(port),
            protocol,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let from: Place = "x/client".parse().expect("place");
        let to: Target = "x/server".parse().expect("target");
        lab.probe(&from, &to, &spec).expect("probe")[0].outcome
    };
    let sctp_matrix = |what: &str| {
        let state: ClusterState = lab.state().expect("state");
        let want = netd_policy::matrix(&state, 5000, Protocol::Sctp, &[]);
        let got = lab
            .matrix(5000, Protocol::Sctp, &[], PROBE_TIMEOUT, None)
            .expect("lab matrix over sctp");
        let mismatches: Vec<String> = want
            .mismatches(&got)
            .iter()
            .map(|m| {
                format!(
                    "{what}: {} -> {} 5000/sctp: engine {}, kernel {}",
                    m.from,
                    m.to,
                    verdict(m.expected),
                    verdict(m.actual)
                )
            })
            .collect();
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    };
    assert_eq!(probe(ProbeProtocol::Sctp, 5000), Outcome::Connected);
    assert_eq!(probe(ProbeProtocol::Sctp, 5001), Outcome::Connected);
    assert_eq!(probe(ProbeProtocol::Tcp, 5000), Outcome::Connected);
    sctp_matrix("no policy");
    lab.apply(objects(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sctp-only, namespace: x}\nspec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: SCTP, port: 5000}]}]}\n",
    ))
    .expect("apply");
    assert_eq!(probe(ProbeProtocol::Sctp, 5000), Outcome::Connected);
    assert_eq!(probe(ProbeProtocol::Tcp, 5000), Outcome::Timeout);
    assert_eq!(probe(ProbeProtocol::Sctp, 5001), Outcome::Timeout);
    sctp_matrix("sctp-only policy");
}

/// Two Pods on different Nodes: `x/server` serves SCTP 5000 and 5001 and TCP 5000.
const SCTP_PODS: &str = concat!(
    netd_testkit::two_nodes!(),
    r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec: {nodeName: node-2, containers: [{name: s, image: echo, ports: [{containerPort: 5000, protocol: SCTP}, {containerPort: 5001, protocol: SCTP}, {containerPort: 5000}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: c, image: echo}]}
status: {podIP: 10.244.1.2}
"#
);

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "blocked" }
}

fn generated_clusters_match_the_engine() {
    let seeds: Vec<u64> = match std::env::var("NETD_SEED") {
        Ok(s) => vec![s.parse().expect("NETD_SEED is a number")],
        Err(_) => SEEDS.to_vec(),
    };
    let mut failures = Vec::new();
    for seed in seeds {
        let cluster = generate::cluster(seed);
        let lab = up(&format!("gen{seed}"), &cluster);
        let mut found = compare(&lab, &format!("seed {seed}"));
        found.extend(compare_services(&lab, &format!("seed {seed}")));
        drop(lab);
        if !found.is_empty() {
            eprintln!(
                "seed {seed} failed (replay: NETD_SEED={seed} cargo test -p netd-agent --test lab_policy -- generated); cluster:\n{cluster}"
            );
            failures.extend(found);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn updates_are_reflected_after_each_step() {
    let base = generate::base(7);
    let lab = up("upd", &base);
    let mut failures = compare(&lab, "no policies");
    let policy = |name: &str, body: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns-a}}\nspec: {body}\n"
        )
    };
    let apply = |yaml: &str| {
        lab.apply(objects(yaml)).expect("apply");
    };
    let steps: Vec<(&str, String)> = vec![
        (
            "deny ingress to ns-a",
            policy("deny", "{podSelector: {}, policyTypes: [Ingress]}"),
        ),
        (
            "allow app=web from team=blue namespaces",
            policy(
                "web",
                "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
            ),
        ),
        (
            "web policy changed to TCP 80 only, from anywhere",
            policy(
                "web",
                "{podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 80}]}]}",
            ),
        ),
        (
            "egress of ns-a limited to ns-b",
            policy(
                "out",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-b}}}]}]}",
            ),
        ),
    ];
    for (what, yaml) in &steps {
        apply(yaml);
        failures.extend(compare(&lab, what));
    }
    // Labels change: a Pod becomes app=web, a namespace joins team=blue.
    apply(&base.replace("app: db", "app: web"));
    failures.extend(compare(&lab, "pod labels changed"));
    apply(&base.replace("team: red", "team: blue"));
    failures.extend(compare(&lab, "namespace labels changed"));
    for name in ["out", "deny"] {
        lab.delete(&[ObjectId {
            kind: Kind::NetworkPolicy,
            namespace: "ns-a".into(),
            name: name.into(),
        }])
        .expect("delete");
        failures.extend(compare(&lab, &format!("policy {name} deleted")));
    }
    // However many syncs ran, each built-in chain jumps to ours exactly once.
    for node in ["node-1", "node-2"] {
        let ns = lab.names().node_ns(&netd_model::NodeName::new(node));
        let dump = if IPV6.load(Ordering::SeqCst) {
            let out = netd_kernel::netns::exec(&ns, &["ip6tables-save"]).expect("ip6tables-save");
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            netd_kernel::rules::iptables_save(&ns).expect("iptables-save")
        };
        let hooks = dump
            .lines()
            .filter(|l| l.starts_with("-A FORWARD ") && l.ends_with("-j KUBE-NETD-FORWARD"))
            .count();
        // The nftables back end keeps to its own table: no iptables hook at all.
        let expected = usize::from(mode() != Mode::Nftables);
        assert_eq!(hooks, expected, "{node}:\n{dump}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn seed_deny_egress_stops_ping() {
    let lab = up("seed", generate::SEED_PODS);
    let ping = |to: &str| {
        let spec = ProbeSpec {
            port: None,
            protocol: ProbeProtocol::Icmp,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let from: Place = "new-ns/deny-egress-test".parse().expect("place");
        let to: Target = to.parse().expect("target");
        lab.probe(&from, &to, &spec).expect("probe")[0].outcome
    };
    assert_eq!(ping("default/frontend"), Outcome::Connected);
    let deny = include_str!("../../../examples/networkpolicy/deny-egress.yaml");
    lab.apply(objects(deny)).expect("apply");
    assert_eq!(ping("default/frontend"), Outcome::Timeout);
    assert_eq!(ping("default/db"), Outcome::Timeout);
    // The seed's other policy: db accepts 6379 from frontend and myproject, nobody else.
    let db = include_str!("../../../examples/networkpolicy/test-network-policy.yaml");
    lab.apply(objects(db)).expect("apply");
    let tcp = |from: &str| {
        let spec = ProbeSpec {
            port: Some(6379),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let from: Place = from.parse().expect("place");
        let to: Target = "default/db".parse().expect("target");
        lab.probe(&from, &to, &spec).expect("probe")[0].outcome
    };
    assert_eq!(tcp("default/frontend"), Outcome::Connected);
    assert_eq!(tcp("myproject/client"), Outcome::Connected);
    assert_eq!(tcp("default/stranger"), Outcome::Timeout);
    assert_eq!(tcp("new-ns/deny-egress-test"), Outcome::Timeout);
}

/// A Pod whose egress is limited reaches a nodePort of its own Node as it reaches the
/// Service's endpoint: the packet is judged after the Service picked the endpoint, as in
/// iptables mode (DNAT in `PREROUTING`) — also in IPVS mode, where the virtual server is the
/// Node's own address and the real server is chosen after `INPUT`. The Node itself stays
/// subject to the Pod's egress policy.
fn own_node_port_is_judged_by_its_endpoint() {
    let lab = up("nodeport", generate::NODE_PORT);
    let tcp = |node: &str, port: u16| {
        let spec = ProbeSpec {
            port: Some(port),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let from: Place = "ns-a/client".parse().expect("place");
        let to = Target::Node(netd_model::NodeName::new(node));
        lab.probe(&from, &to, &spec).expect("probe")[0].outcome
    };
    let egress = |to: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: out, namespace: ns-a}}\nspec: {{podSelector: {{matchLabels: {{app: client}}}}, policyTypes: [Egress], egress: [{{to: [{to}]}}]}}\n"
        )
    };
    // The kube-proxy health port of the Node (10256, IPv4 only: refused over IPv6).
    let to_node = tcp("node-1", 10256);
    assert_ne!(to_node, Outcome::Timeout, "the Node's own port, no policy");
    assert_eq!(tcp("node-1", 30080), Outcome::Connected, "no policy");

    lab.apply(objects(&egress(
        "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-b}}, podSelector: {matchLabels: {app: web}}}",
    )))
    .expect("apply");
    assert_eq!(
        tcp("node-1", 30080),
        Outcome::Connected,
        "egress to the Service's endpoint allowed"
    );
    assert_eq!(
        tcp("node-1", 10256),
        Outcome::Timeout,
        "egress to the Node itself not allowed"
    );

    lab.apply(objects(&egress(
        "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-c}}}",
    )))
    .expect("apply");
    assert_eq!(
        tcp("node-1", 30080),
        Outcome::Timeout,
        "egress to the Service's endpoint not allowed"
    );
}

/// `kube-netd trace`'s walk through the rendered rules of the nodes, held against real
/// packets for flows the seed's policies allow and drop, to pods on the same node and on the
/// other one, directly and through a Service, and to a port the Service does not expose.
fn trace_agrees_with_the_kernel() {
    let policies = [
        include_str!("../../../examples/networkpolicy/deny-egress.yaml"),
        include_str!("../../../examples/networkpolicy/test-network-policy.yaml"),
    ];
    let service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n\
        spec: {clusterIP: 10.96.0.50, ports: [{port: 6379}]}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}\n\
        addressType: IPv4\n\
        endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}, \
        targetRef: {kind: Pod, namespace: default, name: db}}]\n\
        ports: [{port: 6379, protocol: TCP}]\n";
    let yaml = format!(
        "{}---\n{}---\n{}{service}",
        generate::SEED_PODS,
        policies[0],
        policies[1]
    );
    let lab = up("trace", &yaml);
    let state: ClusterState = lab.state().expect("state");
    let cases = [
        ("default/frontend", "default/db", 6379),
        ("myproject/client", "default/db", 6379),
        ("default/stranger", "default/db", 6379),
        ("new-ns/deny-egress-test", "default/db", 6379),
        ("new-ns/deny-egress-test", "default/frontend", 80),
        ("default/stranger", "default/frontend", 80),
        ("default/frontend", "svc/default/db", 6379),
        ("default/stranger", "svc/default/db", 6379),
        ("default/frontend", "svc/default/db", 6380),
    ];
    let mut failures = Vec::new();
    for (from, to, port) in cases {
        let src = state.pod(&from.parse().expect("pod")).expect("source pod");
        let target: Target = to.parse().expect("target");
        let dst = match &target {
            Target::Pod(p) => state.pod(p).expect("pod").ips[0],
            Target::Service(s) => state.service(s).expect("service").cluster_ips[0],
            other => panic!("unexpected target {other:?}"),
        };
        let node = src.node.clone().expect("scheduled");
        let packet = Packet::tcp(src.ips[0], dst, port);
        let trace = trace_nodes(&NodeProgrammer::default(), &state, &node, &packet).expect("trace");
        let verdicts: Vec<Verdict> = trace.fates.iter().map(|f| f.verdict).collect();
        let want = match verdicts.as_slice() {
            [] => panic!("{from} -> {to}: no fate\n{trace}"),
            [first, rest @ ..] if rest.iter().all(|v| v == first) => *first,
            _ => panic!("{from} -> {to}:{port}: branches differ\n{trace}"),
        };
        let spec = ProbeSpec {
            port: Some(port),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let got = lab
            .probe(&Place::Pod(src.key.clone()), &target, &spec)
            .expect("probe")[0]
            .outcome;
        let agrees = match want {
            Verdict::Accept => got == Outcome::Connected,
            Verdict::Reject => got == Outcome::Refused,
            Verdict::Drop | Verdict::NoServicePort => got != Outcome::Connected,
        };
        println!("  {from} -> {to}:{port}: trace {want}, kernel {got}");
        if !agrees {
            failures.push(format!(
                "{from} -> {to}:{port}: trace {want}, kernel {got}\n{trace}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Generated clusters: two Nodes, three labelled namespaces, six labelled Pods serving
/// TCP 80 and UDP 53 (under varying port names), and random policies drawn from the whole
/// API surface.
mod generate {
    use std::fmt::Write as _;

    /// The seed's pods (examples/networkpolicy/pods.yaml), placed and addressed.
    /// Two Nodes; a client Pod and a web Pod on node-1, in two namespaces; the web Pod
    /// behind a NodePort Service (30080 -> 80).
    pub const NODE_PORT: &str = concat!(
        netd_testkit::two_nodes!(),
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: ns-b}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ns-a, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: c, image: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: ns-b, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns-b}
spec: {type: NodePort, clusterIP: 10.96.1.20, ports: [{port: 8080, targetPort: 80, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns-b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}, targetRef: {kind: Pod, namespace: ns-b, name: web}}]
ports: [{port: 80, protocol: TCP}]
"#
    );

    pub const SEED_PODS: &str = concat!(
        netd_testkit::two_nodes!(),
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: myproject, labels: {project: myproject}}
---
apiVersion: v1
kind: Namespace
metadata: {name: new-ns}
---
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {nodeName: node-1, containers: [{name: redis, image: redis, ports: [{name: redis, containerPort: 6379}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: default, labels: {role: frontend}}
spec: {nodeName: node-2, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: myproject, labels: {app: client}}
spec: {nodeName: node-2, containers: [{name: n, image: n, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.2.3}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: default, labels: {role: stranger}}
spec: {nodeName: node-1, containers: [{name: n, image: n, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: deny-egress-test, namespace: new-ns, labels: {app: deny-egress-test}}
spec: {nodeName: node-1, containers: [{name: n, image: n}]}
status: {podIP: 10.244.1.4}
"#
    );

    use netd_testkit::Rng;

    const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
    const PODS: usize = 6;

    /// Nodes, namespaces and Pods (no policies).
    pub fn base(seed: u64) -> String {
        let mut rng = Rng::new(seed);
        let mut out = String::from(netd_testkit::two_nodes!());
        for (i, ns) in NAMESPACES.iter().enumerate() {
            let team = ["red", "blue", "red"][i];
            let env = if rng.chance(50) { ", env: prod" } else { "" };
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}{env}}}}}\n---\n"
            );
        }
        for i in 0..PODS {
            let ns = NAMESPACES[i % 3];
            let node = i % 2 + 1;
            let app = ["web", "db", "api"][rng.below(3)];
            let tier = if rng.chance(50) { ", tier: fe" } else { "" };
            // Named ports differ between Pods, so named rules resolve per Pod.
            let (http, dns) = if rng.chance(50) {
                ("http", "dns")
            } else {
                ("web", "dns")
            };
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}{tier}}}}}\nspec: {{nodeName: node-{node}, containers: [{{name: c, image: i, ports: [{{name: {http}, containerPort: 80}}, {{name: {dns}, containerPort: 53, protocol: UDP}}, {{name: alt, containerPort: 81}}]}}]}}\nstatus: {{podIP: 10.244.{node}.{}}}\n---\n",
                10 + i
            );
            // A Service in front of each Pod: TCP 8080 -> 80 and UDP 5353 -> 53.
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-p{i}, namespace: {ns}}}\nspec: {{clusterIP: 10.96.1.{}, ports: [{{name: web, port: 8080, targetPort: 80}}, {{name: dns, port: 5353, targetPort: 53, protocol: UDP}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-p{i}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-p{i}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.244.{node}.{}], nodeName: node-{node}, conditions: {{ready: true}}, targetRef: {{kind: Pod, namespace: {ns}, name: p{i}}}}}]\nports: [{{name: web, port: 80, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]\n---\n",
                10 + i,
                10 + i
            );
        }
        out
    }

    /// A whole cluster: [`base`] plus one to three random policies.
    pub fn cluster(seed: u64) -> String {
        let mut out = base(seed);
        let mut rng = Rng::new(seed ^ 0xABCD);
        for p in 0..1 + rng.below(3) {
            out.push_str(&policy(&mut rng, p));
            out.push_str("---\n");
        }
        out
    }

    fn policy(rng: &mut Rng, index: usize) -> String {
        let ns = rng.pick(&NAMESPACES);
        let selector = pod_selector(rng);
        let (ingress, egress) = match rng.below(3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        let mut spec = format!("podSelector: {selector}");
        let types: Vec<&str> = [("Ingress", ingress), ("Egress", egress)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(t, _)| *t)
            .collect();
        // policyTypes left out half the time when it defaults to the same thing.
        if egress || rng.chance(50) {
            let _ = write!(spec, ", policyTypes: [{}]", types.join(", "));
        }
        for (on, key, peer_key) in [(ingress, "ingress", "from"), (egress, "egress", "to")] {
            if !on {
                continue;
            }
            let rules: Vec<String> = (0..rng.below(3)).map(|_| rule(rng, peer_key)).collect();
            if rules.is_empty() && rng.chance(50) {
                continue; // isolated, no rules at all
            }
            let _ = write!(spec, ", {key}: [{}]", rules.join(", "));
        }
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: gen-{index}, namespace: {ns}}}\nspec: {{{spec}}}\n"
        )
    }

    fn pod_selector(rng: &mut Rng) -> String {
        match rng.below(6) {
            0 => "{}".into(),
            1 | 2 => format!(
                "{{matchLabels: {{app: {}}}}}",
                rng.pick(&["web", "db", "api"])
            ),
            3 => format!(
                "{{matchExpressions: [{{key: app, operator: {}, values: [{}]}}]}}",
                rng.pick(&["In", "NotIn"]),
                rng.pick(&["web", "db", "web, api"])
            ),
            4 => format!(
                "{{matchExpressions: [{{key: tier, operator: {}}}]}}",
                rng.pick(&["Exists", "DoesNotExist"])
            ),
            _ => "{matchLabels: {tier: fe}}".into(),
        }
    }

    fn namespace_selector(rng: &mut Rng) -> String {
        match rng.below(4) {
            0 => "{}".into(),
            1 => format!("{{matchLabels: {{team: {}}}}}", rng.pick(&["red", "blue"])),
            2 => "{matchExpressions: [{key: env, operator: Exists}]}".into(),
            _ => format!(
                "{{matchLabels: {{kubernetes.io/metadata.name: {}}}}}",
                rng.pick(&NAMESPACES)
            ),
        }
    }

    fn peer(rng: &mut Rng) -> String {
        match rng.below(5) {
            0 => format!("{{podSelector: {}}}", pod_selector(rng)),
            1 => format!("{{namespaceSelector: {}}}", namespace_selector(rng)),
            2 => format!(
                "{{namespaceSelector: {}, podSelector: {}}}",
                namespace_selector(rng),
                pod_selector(rng)
            ),
            3 => {
                let (cidr, excepts): (&str, &[&str]) = match rng.below(3) {
                    0 => (
                        "10.244.0.0/16",
                        &["10.244.1.10/32", "10.244.2.0/28", "10.244.1.12/31"],
                    ),
                    1 => ("10.244.1.0/24", &["10.244.1.10/32", "10.244.1.12/31"]),
                    _ => ("10.244.2.0/24", &["10.244.2.0/28", "10.244.2.11/32"]),
                };
                format!(
                    "{{ipBlock: {{cidr: {cidr}, except: [{}]}}}}",
                    rng.pick(excepts)
                )
            }
            _ => format!(
                "{{ipBlock: {{cidr: {}}}}}",
                rng.pick(&["10.244.1.0/24", "10.244.2.8/29", "0.0.0.0/0"])
            ),
        }
    }

    fn port(rng: &mut Rng) -> String {
        rng.pick(&[
            "{port: 80}",
            "{port: 53, protocol: UDP}",
            "{port: http}",
            "{port: web}",
            "{port: dns, protocol: UDP}",
            "{port: 70, endPort: 90}",
            "{protocol: UDP}",
            "{port: 81}",
            "{protocol: TCP, port: 50, endPort: 60}",
        ])
        .to_owned()
    }

    fn rule(rng: &mut Rng, peer_key: &str) -> String {
        let mut parts = Vec::new();
        let peers = rng.below(3);
        if peers > 0 {
            let list: Vec<String> = (0..peers).map(|_| peer(rng)).collect();
            parts.push(format!("{peer_key}: [{}]", list.join(", ")));
        }
        let ports = rng.below(3);
        if ports > 0 {
            let list: Vec<String> = (0..ports).map(|_| port(rng)).collect();
            parts.push(format!("ports: [{}]", list.join(", ")));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// The IPv6 twin of a cluster written over IPv4.
mod ipv6 {
    use netd_model::ClusterConfig;

    /// Where the IPv4 address space is embedded (`fd00::a.b.c.d`).
    const PREFIX: &str = "fd00::";

    /// An IPv6-only lab whose ranges are the IPv4 defaults embedded in `fd00::/96`.
    pub fn config() -> ClusterConfig {
        let v4 = ClusterConfig::default();
        let net = |s: &str| s.parse().expect("range");
        ClusterConfig {
            cluster_cidrs: vec![net("fd00::10.244.0.0/112")],
            service_cidrs: vec![net("fd00::10.96.0.0/108")],
            node_network_v6: Some(net("fd00::172.18.0.0/120")),
            dns_service_ip: "fd00::10.96.0.10".parse().expect("ip"),
            ..v4
        }
    }

    /// `yaml` with every IPv4 address `a.b.c.d[/n]` replaced by `fd00::a.b.c.d[/n+96]`,
    /// `addressType: IPv4` by `IPv6`, and each Node's InternalIP doubled by its IPv6 twin
    /// (the lab's underlay keeps IPv4).
    pub fn embed(yaml: &str) -> String {
        let yaml = yaml.replace("addressType: IPv4", "addressType: IPv6");
        let mut out = String::with_capacity(yaml.len() * 2);
        let mut rest = yaml.as_str();
        while let Some((start, len)) = next_quad(rest) {
            out.push_str(&rest[..start]);
            let quad = &rest[start..start + len];
            rest = &rest[start + len..];
            let after_node_ip = out.ends_with("type: InternalIP, address: ");
            if after_node_ip {
                out.push_str(&format!(
                    "{quad}}}, {{type: InternalIP, address: {PREFIX}{quad}"
                ));
                continue;
            }
            out.push_str(PREFIX);
            out.push_str(quad);
            let digits = rest
                .strip_prefix('/')
                .map(|r| r.bytes().take_while(u8::is_ascii_digit).count())
                .unwrap_or(0);
            if digits > 0 {
                let prefix: u8 = rest[1..=digits].parse().expect("prefix length");
                out.push_str(&format!("/{}", prefix + 96));
                rest = &rest[1 + digits..];
            }
        }
        out.push_str(rest);
        out
    }

    /// Where the first dotted quad of `s` starts, and its length.
    fn next_quad(s: &str) -> Option<(usize, usize)> {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts_word =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
            if bytes[i].is_ascii_digit() && starts_word {
                let len = bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit() || **b == b'.')
                    .count();
                if s[i..i + len].parse::<std::net::Ipv4Addr>().is_ok() {
                    return Some((i, len));
                }
                i += len;
            } else {
                i += 1;
            }
        }
        None
    }

    /// [`embed`] on the shapes the generator writes (a test of its own, run first).
    pub fn embedding_keeps_prefixes_and_doubles_node_addresses() {
        let yaml = "status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n\
            ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.10/32]}\naddressType: IPv4\nport: 80";
        assert_eq!(
            embed(yaml),
            "status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: fd00::172.18.0.2}]}\n\
             ipBlock: {cidr: fd00::10.244.0.0/112, except: [fd00::10.244.1.10/128]}\naddressType: IPv6\nport: 80"
        );
    }
}
