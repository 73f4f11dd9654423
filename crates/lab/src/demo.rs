//! `kube-netd lab demo`: a guided tour of Kubernetes networking, with real packets.
//!
//! [`run`] builds a lab of two Nodes from the examples (compiled into the binary, so the demo
//! runs from any directory) and walks through four steps:
//!
//! 1. a pod that can ping, then cannot once `deny-egress-test` isolates it for egress;
//! 2. `test-network-policy` letting only its allowed peers reach `role=db` on TCP 6379;
//! 3. the three-pod `hostnames` Service answering from all three pods, and its
//!    `KUBE-SVC`/`KUBE-SEP` rules;
//! 4. a NodePort seen from outside the cluster, with `externalTrafficPolicy` Cluster (the
//!    backend sees the node's address: SNAT) and Local (it sees the client's; a node without
//!    a local endpoint does not answer).
//!
//! Every [`Check`] prints what Kubernetes specifies, what the kernel did, and ✔ or ✘; the
//! policy engine says why. [`DemoReport::passed`] is the verdict of the demo as an acceptance
//! test. The demo needs no rule programmer of its own: the Nodes' agents are helper
//! processes, and they program with whatever the helper command was given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use netd_kernel::netns;
use netd_model::load::LoadError;
use netd_model::view::{Pod, TrafficPolicy};
use netd_model::{ClusterConfig, ClusterState, Object, ObjectId, PodRef, ServiceRef};
use netd_policy::{FlowProtocol, PolicyError};

use crate::lab::{Change, Lab, LabOptions, Resolver};
use crate::probe::{Outcome, Place, ProbeProtocol, ProbeResult, ProbeSpec, Target};
use crate::{LabError, topology};
use netd_model::error_chain;

/// How many Nodes the demo's lab has: the NodePort step needs a node without the pod.
pub const NODES: usize = 2;

/// An example manifest, as the repository has it under `examples/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Example {
    /// Its path in the repository.
    pub path: &'static str,
    /// Its text.
    pub text: &'static str,
}

/// The pods of the policy steps, and the namespaces `myproject` and `new-ns`.
pub const PODS: Example = Example {
    path: "examples/networkpolicy/pods.yaml",
    text: include_str!("../../../examples/networkpolicy/pods.yaml"),
};
/// The deny-egress policy (step 1).
pub const DENY_EGRESS: Example = Example {
    path: "examples/networkpolicy/deny-egress.yaml",
    text: include_str!("../../../examples/networkpolicy/deny-egress.yaml"),
};
/// The `test-network-policy` guarding `role=db` (step 2).
pub const TEST_NETWORK_POLICY: Example = Example {
    path: "examples/networkpolicy/test-network-policy.yaml",
    text: include_str!("../../../examples/networkpolicy/test-network-policy.yaml"),
};
/// The `hostnames` Deployment and Service (step 3).
pub const HOSTNAMES: Example = Example {
    path: "examples/hostnames/hostnames.yaml",
    text: include_str!("../../../examples/hostnames/hostnames.yaml"),
};
/// The `web` pod and its NodePort Services (step 4).
pub const NODEPORT: Example = Example {
    path: "examples/nodeport/nodeport.yaml",
    text: include_str!("../../../examples/nodeport/nodeport.yaml"),
};

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The lab to build (its `config.default_node_count` is set to [`NODES`]).
    pub lab: LabOptions,
    /// Leave the lab running afterwards (also after a failure), for `lab probe` and `lab exec`.
    pub keep: bool,
    /// How many connections step 3 opens to the `hostnames` Service.
    pub connections: u32,
    /// How long each probe waits for an answer.
    pub timeout: Duration,
}

impl DemoOptions {
    /// The defaults for `lab`: remove the lab afterwards, 30 connections, 1 s per probe.
    pub fn new(lab: LabOptions) -> DemoOptions {
        DemoOptions {
            lab,
            keep: false,
            connections: 30,
            timeout: Duration::from_secs(1),
        }
    }
}

/// The part of the system a check exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// The flat pod network the lab builds: routes, bridges, echo servers.
    PodNetwork,
    /// NetworkPolicy enforcement, programmed by the Nodes' agents.
    NetworkPolicy,
    /// The service proxy (ClusterIP, NodePort, SNAT), programmed by the Nodes' agents.
    ServiceProxy,
}

impl Layer {
    /// Every layer, in the order the summary lists them.
    pub const ALL: [Layer; 3] = [Layer::PodNetwork, Layer::NetworkPolicy, Layer::ServiceProxy];
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::PodNetwork => "pod network",
            Layer::NetworkPolicy => "NetworkPolicy",
            Layer::ServiceProxy => "service proxy",
        })
    }
}

/// One expectation held against what the kernel did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was tried.
    pub what: String,
    /// What Kubernetes specifies.
    pub expected: String,
    /// What happened.
    pub observed: String,
    /// Whether what happened is what is specified.
    pub passed: bool,
    /// The part of the system it exercises.
    pub layer: Layer,
}

/// One step of the walkthrough.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// Its number, from 1.
    pub number: usize,
    /// Its title.
    pub title: String,
    /// Its checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl StepReport {
    /// Whether every check of the step passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// What the demo observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemoReport {
    /// The steps, in order.
    pub steps: Vec<StepReport>,
}

impl DemoReport {
    /// Whether every check of every step passed.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(StepReport::passed)
    }

    /// Every check, in order.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.steps.iter().flat_map(|s| s.checks.iter())
    }

    /// How many checks of `layer` passed, and how many there were.
    pub fn tally(&self, layer: Layer) -> (usize, usize) {
        let of_layer: Vec<&Check> = self.checks().filter(|c| c.layer == layer).collect();
        (of_layer.iter().filter(|c| c.passed).count(), of_layer.len())
    }
}

/// A demo that could not run to its end (a check that fails is not an error: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An example compiled into the binary does not load.
    #[error("loading {file}")]
    LoadFailed {
        /// The example's path.
        file: &'static str,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LoadError>,
    },
    /// The lab could not be built.
    #[error("building the demo's lab")]
    UpFailed {
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LabError>,
    },
    /// Applying or deleting an example failed.
    #[error("changing the lab with {file}")]
    ChangeFailed {
        /// The example's path.
        file: &'static str,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LabError>,
    },
    /// Reading the lab's resolved cluster failed.
    #[error("reading the lab's cluster")]
    StateFailed {
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LabError>,
    },
    /// A probe could not be sent (a probe that gets no answer is an outcome, not this).
    #[error("probing {to} from {from}")]
    ProbeFailed {
        /// The source.
        from: String,
        /// The target.
        to: String,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LabError>,
    },
    /// The policy engine could not explain a flow.
    #[error("explaining {from} -> {to}")]
    ExplainFailed {
        /// The source.
        from: String,
        /// The destination.
        to: String,
        /// The cause.
        #[source]
        source: PolicyError,
    },
    /// The examples did not resolve to what the demo walks through.
    #[error("the demo's cluster has no {what}")]
    MissingObject {
        /// What is missing.
        what: String,
    },
    /// Removing the lab at the end failed.
    #[error("removing the demo's lab")]
    DownFailed {
        /// The cause (boxed: it is large).
        #[source]
        source: Box<LabError>,
    },
    /// The output could not be written.
    #[error("writing the demo's output")]
    WriteFailed {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("watching for Ctrl-C")]
    SignalSetupFailed {
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Runs the demo, writing what happens to `out` as it happens. The lab is removed at the end,
/// and on error, unless `options.keep`. Checks that contradict their expectations do not make
/// this fail: they are in the report (see [`DemoReport::passed`]).
pub fn run(
    options: DemoOptions,
    resolver: Resolver,
    out: &mut dyn Write,
) -> Result<DemoReport, DemoError> {
    let mut lab_options = options.lab.clone();
    lab_options.config.default_node_count = NODES;
    let name = lab_options.name.clone();
    let objects = load(&[PODS, HOSTNAMES, NODEPORT], &lab_options.config)?;
    let mut demo = Demo {
        out,
        timeout: options.timeout,
        connections: options.connections,
        steps: Vec::new(),
    };
    demo.intro(&name)?;
    let started = Instant::now();
    let lab = {
        let _cleanup = cleanup_lock();
        Lab::up(lab_options, objects, resolver).map_err(|source| DemoError::UpFailed {
            source: Box::new(source),
        })?
    };
    let walked = demo.walk(&lab, started.elapsed());
    let report = DemoReport { steps: demo.steps };
    let summarised = walked.and_then(|()| summary(demo.out, &report));
    // If an interrupt is removing the lab, this waits for the process to end.
    let _cleanup = cleanup_lock();
    if options.keep {
        // Kept even after a failure: the lab is left for inspection, as asked.
        lab.detach();
        summarised?;
        line(
            demo.out,
            &format!(
                "The lab {name} is still running: try `kube-netd lab probe --name {name} ...`, then `kube-netd lab down --name {name}`."
            ),
        )?;
    } else {
        if let Err(e) = summarised {
            // Dropping the lab removes it; here, under the lock.
            drop(lab);
            return Err(e);
        }
        lab.down().map_err(|source| DemoError::DownFailed {
            source: Box::new(source),
        })?;
        line(demo.out, &format!("The lab {name} is removed."))?;
    }
    Ok(report)
}

/// Removes the lab `name` (state under `state_root`) and ends the process with status
/// 128 + signal when the process gets SIGINT, SIGTERM or SIGHUP, so that a Ctrl-C during
/// [`run`] leaves nothing behind. Call it before the process starts any thread: it blocks
/// those signals in the calling thread, which every later thread inherits, and waits for them
/// on a thread of its own. (Child processes start with an empty signal mask.) While [`run`]
/// builds or removes the lab, the removal waits for it to finish.
pub fn remove_on_interrupt(name: &str, state_root: &Path) -> Result<(), DemoError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|source| DemoError::SignalSetupFailed { source })?;
    let (name, state_root) = (name.to_owned(), state_root.to_owned());
    std::thread::spawn(move || {
        let Ok(signal) = signals.wait() else {
            return;
        };
        eprintln!("{signal}: removing the lab {name}");
        // Held until the process ends, so that `run` does not build or remove concurrently.
        let _cleanup = cleanup_lock();
        if let Err(e) = crate::lab::down(&name, &state_root) {
            eprintln!("error: removing the lab {name}: {}", error_chain(&e));
        }
        std::process::exit(128 + signal as i32);
    });
    Ok(())
}

/// Serialises building and removing the demo's lab between [`run`] and an interrupt.
static CLEANUP: Mutex<()> = Mutex::new(());

fn cleanup_lock() -> MutexGuard<'static, ()> {
    CLEANUP.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Demo<'a> {
    out: &'a mut dyn Write,
    timeout: Duration,
    connections: u32,
    steps: Vec<StepReport>,
}

impl Demo<'_> {
    fn say(&mut self, text: &str) -> Result<(), DemoError> {
        line(self.out, text)
    }

    fn intro(&mut self, name: &str) -> Result<(), DemoError> {
        self.say("kube-netd lab demo: Kubernetes networking, step by step, with real packets")?;
        self.say("Each check says what Kubernetes specifies and what the kernel did: ✔ when they agree, ✘ when not.")?;
        self.say("")?;
        let files: Vec<&str> = [PODS, HOSTNAMES, NODEPORT].iter().map(|e| e.path).collect();
        self.say(&format!(
            "Building the lab {name}: {NODES} nodes, each a network namespace, from {}.",
            files.join(", ")
        ))
    }

    fn walk(&mut self, lab: &Lab, took: Duration) -> Result<(), DemoError> {
        self.describe_lab(lab, took)?;
        self.deny_egress(lab)?;
        self.test_network_policy(lab)?;
        self.hostnames(lab)?;
        self.node_port(lab)
    }

    fn describe_lab(&mut self, lab: &Lab, took: Duration) -> Result<(), DemoError> {
        let state = state(lab)?;
        self.say(&format!(
            "The lab is up in {:.1}s. Every pod is a network namespace too, serving its containerPorts:",
            took.as_secs_f64()
        ))?;
        for node in state.nodes() {
            let ip = list(&node.internal_ips);
            let cidr = list(&node.pod_cidrs);
            self.say(&format!("  {}  {ip}  pods from {cidr}", node.name))?;
            for pod in state.pods_on(node.name.as_str()) {
                self.say(&format!("      {:<40} {}", pod.key, list(&pod.ips)))?;
            }
        }
        if let Some(ip) = external_ip(&state)? {
            self.say(&format!(
                "  external  {ip}  a client outside the cluster: it reaches the nodes, not the pods"
            ))?;
        }
        Ok(())
    }

    // Step 1: the deny-egress-test pod pings, then cannot.
    fn deny_egress(&mut self, lab: &Lab) -> Result<(), DemoError> {
        let mut step =
            self.step("NetworkPolicy: a pod that can ping, then cannot (deny-egress-test)")?;
        let state = state(lab)?;
        let from = PodRef::new("new-ns", "deny-egress-test");
        let from_node = state.pod(&from).and_then(|p| p.node.clone());
        // Another pod of `default`, on another node if there is one: the flat pod network.
        let to = state
            .pods_in("default")
            .filter(|p| !p.host_network && p.ips.iter().any(IpAddr::is_ipv4))
            .find(|p| p.node.is_some() && p.node != from_node)
            .map_or_else(|| PodRef::new("default", "frontend"), |p| p.key.clone());
        let across = state.pod(&to).is_some_and(|p| p.node != from_node);
        self.say(&format!(
            "  {} pings {}: pods reach each other's IPs directly{}, without NAT.",
            placed(&state, &from)?,
            placed(&state, &to)?,
            if across { ", across nodes" } else { "" }
        ))?;
        let (place, target) = (Place::Pod(from.clone()), Target::Pod(to.clone()));
        let ping = self.probe(lab, &place, &target, ProbeProtocol::Icmp, None, 1)?;
        self.check(
            &mut step,
            Layer::PodNetwork,
            "ping before any policy",
            "a reply",
            &ping,
            |r| r.outcome == Outcome::Connected,
        )?;

        self.apply(lab, DENY_EGRESS)?;
        self.explain(lab, &from, &to, None, FlowProtocol::Icmp)?;
        let ping = self.probe(lab, &place, &target, ProbeProtocol::Icmp, None, 1)?;
        self.check(
            &mut step,
            Layer::NetworkPolicy,
            "ping with deny-egress-test applied",
            "no reply: the policy selects the pod and lists Egress, so the pod is isolated for egress, and no egress rule allows anything",
            &ping,
            |r| r.outcome != Outcome::Connected,
        )?;

        self.delete(lab, DENY_EGRESS)?;
        let ping = self.probe(lab, &place, &target, ProbeProtocol::Icmp, None, 1)?;
        self.check(
            &mut step,
            Layer::NetworkPolicy,
            "ping after deleting the policy",
            "a reply again: no policy selects the pod any more",
            &ping,
            |r| r.outcome == Outcome::Connected,
        )?;
        self.steps.push(step);
        Ok(())
    }

    // Step 2: test-network-policy lets only its allowed peers reach role=db on TCP 6379.
    fn test_network_policy(&mut self, lab: &Lab) -> Result<(), DemoError> {
        const PORT: u16 = 6379;
        let mut step = self.step(
            "NetworkPolicy: test-network-policy lets only its allowed peers reach role=db on TCP 6379",
        )?;
        let db = PodRef::new("default", "db");
        let stranger = PodRef::new("default", "stranger");
        let target = Target::Pod(db.clone());
        let before = self.probe(
            lab,
            &Place::Pod(stranger.clone()),
            &target,
            ProbeProtocol::Tcp,
            Some(PORT),
            1,
        )?;
        self.check(
            &mut step,
            Layer::PodNetwork,
            "default/stranger -> default/db:6379 before any policy",
            "connected: a pod no policy selects accepts every connection",
            &before,
            |r| r.outcome == Outcome::Connected,
        )?;

        self.apply(lab, TEST_NETWORK_POLICY)?;
        let peers = [
            (
                PodRef::new("default", "frontend"),
                true,
                "connected: allowed by the rule's podSelector role=frontend (same namespace)",
            ),
            (
                PodRef::new("myproject", "client"),
                true,
                "connected: allowed by the rule's namespaceSelector project=myproject",
            ),
            (
                stranger,
                false,
                "blocked: default/db is isolated for ingress and no peer of the rule matches default/stranger",
            ),
        ];
        for (from, allowed, expected) in peers {
            self.explain(
                lab,
                &from,
                &db,
                Some(PORT),
                FlowProtocol::Transport(netd_model::Protocol::Tcp),
            )?;
            let results = self.probe(
                lab,
                &Place::Pod(from.clone()),
                &target,
                ProbeProtocol::Tcp,
                Some(PORT),
                1,
            )?;
            self.check(
                &mut step,
                Layer::NetworkPolicy,
                &format!("{from} -> default/db:6379"),
                expected,
                &results,
                |r| (r.outcome == Outcome::Connected) == allowed,
            )?;
        }
        self.steps.push(step);
        Ok(())
    }

    // Step 3: the hostnames Service answers from all three pods.
    fn hostnames(&mut self, lab: &Lab) -> Result<(), DemoError> {
        let mut step = self.step("Service: hostnames, one ClusterIP answered by three pods")?;
        let state = state(lab)?;
        let key = ServiceRef::new("default", "hostnames");
        let svc = state
            .service(&key)
            .ok_or_else(|| missing("Service default/hostnames"))?;
        let cluster_ip = svc
            .cluster_ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .ok_or_else(|| missing("ClusterIP of default/hostnames"))?;
        let port = svc
            .ports
            .first()
            .ok_or_else(|| missing("port of default/hostnames"))?;
        let backends = ready_endpoints(&state, &key);
        let target_port = match &port.target_port {
            netd_model::view::TargetPort::Number(n) => n.to_string(),
            netd_model::view::TargetPort::Name(n) => n.clone(),
        };
        self.say(&format!(
            "  Service default/hostnames: ClusterIP {cluster_ip} port {} -> targetPort {target_port} of {} ready endpoints:",
            port.port,
            backends.len()
        ))?;
        for pod in &backends {
            self.say(&format!("      {}", placed(&state, pod)?))?;
        }

        let client = PodRef::new("default", "frontend");
        let from = Place::Pod(client.clone());
        let mut direct = Vec::new();
        for pod in &backends {
            let port = state.pod(pod).and_then(|p| p.ports.first()).map(|p| p.port);
            direct.extend(self.probe(
                lab,
                &from,
                &Target::Pod(pod.clone()),
                ProbeProtocol::Tcp,
                port,
                1,
            )?);
        }
        self.check(
            &mut step,
            Layer::PodNetwork,
            &format!("{client} -> each endpoint's pod IP, on its containerPort"),
            "every endpoint answers",
            &direct,
            |r| r.outcome == Outcome::Connected,
        )?;

        let n = self.connections;
        self.say(&format!(
            "  {client} opens {n} connections to svc/default/hostnames ({cluster_ip}:{}):",
            port.port
        ))?;
        let results = self.probe(
            lab,
            &from,
            &Target::Service(key.clone()),
            ProbeProtocol::Tcp,
            Some(port.port),
            n,
        )?;
        let connected = results
            .iter()
            .filter(|r| r.outcome == Outcome::Connected)
            .count();
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for r in &results {
            *outcomes.entry(r.outcome.to_string()).or_default() += 1;
        }
        let observed: Vec<String> = outcomes.iter().map(|(o, c)| format!("{c} {o}")).collect();
        self.record(
            &mut step,
            Check {
                layer: Layer::ServiceProxy,
                what: format!("{n} connections to {cluster_ip}:{}", port.port),
                expected: format!(
                    "{n} of {n} connected: the node DNATs the ClusterIP to an endpoint"
                ),
                observed: observed.join(", "),
                passed: connected == results.len() && !results.is_empty(),
            },
        )?;

        let mut served: BTreeMap<String, usize> =
            backends.iter().map(|p| (p.to_string(), 0)).collect();
        for r in &results {
            if let Some(pod) = &r.served_by {
                *served.entry(pod.clone()).or_default() += 1;
            }
        }
        let counts: Vec<String> = served.iter().map(|(p, c)| format!("{p} {c}")).collect();
        let expected: BTreeSet<String> = backends.iter().map(ToString::to_string).collect();
        let answered: BTreeSet<String> = served
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(p, _)| p.clone())
            .collect();
        self.record(
            &mut step,
            Check {
                layer: Layer::ServiceProxy,
                what: "which pods answered".into(),
                expected: format!(
                    "all {} endpoints, each about 1/{} of the time (random choice per connection)",
                    expected.len(),
                    expected.len()
                ),
                observed: counts.join(", "),
                passed: !expected.is_empty() && answered == expected,
            },
        )?;

        let node = state
            .pod(&client)
            .and_then(|p| p.node.clone())
            .ok_or_else(|| missing("node of default/frontend"))?;
        self.nat_rules(lab, &node, &["default/hostnames"])?;
        self.steps.push(step);
        Ok(())
    }

    // Step 4: NodePorts from outside, externalTrafficPolicy Cluster and Local.
    fn node_port(&mut self, lab: &Lab) -> Result<(), DemoError> {
        let mut step = self.step(
            "NodePort from outside the cluster: externalTrafficPolicy Cluster (SNAT) and Local",
        )?;
        let state = state(lab)?;
        let web = PodRef::new("default", "web");
        let pod = state.pod(&web).ok_or_else(|| missing("pod default/web"))?;
        let local = pod
            .node
            .clone()
            .ok_or_else(|| missing("node of default/web"))?;
        let remote = state
            .nodes()
            .map(|n| n.name.clone())
            .find(|n| *n != local)
            .ok_or_else(|| missing("second node"))?;
        let client = external_ip(&state)?.ok_or_else(|| missing("external client address"))?;
        let pod_ip = pod.ips.iter().copied().find(IpAddr::is_ipv4);
        let pod_port = pod.ports.first().map(|p| p.port);
        self.say(&format!(
            "  {web} runs on {local} only; external ({client}) stands outside the cluster."
        ))?;

        if let Some(ip) = pod_ip {
            let results = self.probe(
                lab,
                &Place::External,
                &Target::Ip(ip),
                ProbeProtocol::Tcp,
                pod_port,
                1,
            )?;
            self.check(
                &mut step,
                Layer::PodNetwork,
                &format!("external -> {web}'s pod IP {ip} directly"),
                "no connection: outside the cluster there is no route to pod IPs (hence NodePorts)",
                &results,
                |r| r.outcome != Outcome::Connected,
            )?;
        }

        for (name, policy) in [
            ("web-cluster", TrafficPolicy::Cluster),
            ("web-local", TrafficPolicy::Local),
        ] {
            let key = ServiceRef::new("default", name);
            let svc = state
                .service(&key)
                .ok_or_else(|| missing(&format!("Service {key}")))?;
            if svc.external_traffic_policy != policy {
                return Err(missing(&format!(
                    "Service {key} with externalTrafficPolicy {policy:?}"
                )));
            }
            let node_port = svc
                .ports
                .first()
                .and_then(|p| p.node_port)
                .ok_or_else(|| missing(&format!("nodePort of {key}")))?;
            self.say(&format!(
                "  Service {key}: type NodePort, nodePort {node_port}, externalTrafficPolicy {policy:?}"
            ))?;
            for node in [&local, &remote] {
                let addresses = node_addresses(&state, node)?;
                let node_ip = addresses.first().copied();
                let what = format!(
                    "external -> {node} ({}):{node_port}",
                    node_ip.map_or_else(String::new, |ip| ip.to_string())
                );
                let results = self.probe(
                    lab,
                    &Place::External,
                    &Target::Node(node.clone()),
                    ProbeProtocol::Tcp,
                    Some(node_port),
                    1,
                )?;
                let served_by_web = |r: &ProbeResult| {
                    r.outcome == Outcome::Connected && r.served_by.as_deref() == Some("default/web")
                };
                match (policy, node == &local) {
                    (TrafficPolicy::Cluster, _) => {
                        let expected = format!(
                            "connected, served by {web}, which sees {node}'s address ({}), not the client's: the node SNATs (MASQUERADE) what it forwards, so that the reply comes back through it",
                            list(&addresses)
                        );
                        self.check(
                            &mut step,
                            Layer::ServiceProxy,
                            &what,
                            &expected,
                            &results,
                            |r| {
                                served_by_web(r)
                                    && r.client_ip_seen.is_some_and(|ip| addresses.contains(&ip))
                            },
                        )?;
                    }
                    (TrafficPolicy::Local, true) => {
                        let expected = format!(
                            "connected, served by {web}, which sees the client's own address {client}: no SNAT, the endpoint is on this node"
                        );
                        self.check(
                            &mut step,
                            Layer::ServiceProxy,
                            &what,
                            &expected,
                            &results,
                            |r| served_by_web(r) && r.client_ip_seen == Some(client),
                        )?;
                    }
                    (TrafficPolicy::Local, false) => {
                        let expected = format!(
                            "timeout: {node} has no local endpoint of {key}, so it drops the connection rather than forward it"
                        );
                        self.check(
                            &mut step,
                            Layer::ServiceProxy,
                            &what,
                            &expected,
                            &results,
                            |r| r.outcome == Outcome::Timeout,
                        )?;
                    }
                }
            }
        }
        self.nat_rules(lab, &remote, &["default/web-cluster", "KUBE-POSTROUTING"])?;
        self.steps.push(step);
        Ok(())
    }

    fn step(&mut self, title: &str) -> Result<StepReport, DemoError> {
        let number = self.steps.len() + 1;
        self.say("")?;
        self.say(&format!("Step {number}. {title}"))?;
        Ok(StepReport {
            number,
            title: title.to_owned(),
            checks: Vec::new(),
        })
    }

    fn apply(&mut self, lab: &Lab, example: Example) -> Result<(), DemoError> {
        let state = state(lab)?;
        let objects = load(&[example], state.config())?;
        self.say(&format!("  Applying {}:", example.path))?;
        for text in example.text.lines() {
            self.say(&format!("    | {text}"))?;
        }
        let changes = lab
            .apply(objects)
            .map_err(|source| DemoError::ChangeFailed {
                file: example.path,
                source: Box::new(source),
            })?;
        self.changes(&changes)
    }

    fn delete(&mut self, lab: &Lab, example: Example) -> Result<(), DemoError> {
        let state = state(lab)?;
        let ids: Vec<ObjectId> = load(&[example], state.config())?
            .iter()
            .map(Object::id)
            .collect();
        self.say(&format!("  Deleting {}:", example.path))?;
        let changes = lab.delete(&ids).map_err(|source| DemoError::ChangeFailed {
            file: example.path,
            source: Box::new(source),
        })?;
        self.changes(&changes)
    }

    fn changes(&mut self, changes: &[Change]) -> Result<(), DemoError> {
        for change in changes {
            self.say(&format!("    {change}; every node has converged"))?;
        }
        Ok(())
    }

    /// Prints the policy engine's verdict on a flow: the reason behind an expectation.
    fn explain(
        &mut self,
        lab: &Lab,
        from: &PodRef,
        to: &PodRef,
        port: Option<u16>,
        protocol: FlowProtocol,
    ) -> Result<(), DemoError> {
        let state = state(lab)?;
        let (from, to) = (from.to_string(), to.to_string());
        let checked = netd_policy::check(&state, &from, &to, "default", port, protocol).map_err(
            |source| DemoError::ExplainFailed {
                from: from.clone(),
                to: to.clone(),
                source,
            },
        )?;
        for verdict in checked.text.lines() {
            self.say(&format!("  policy engine: {verdict}"))?;
        }
        Ok(())
    }

    fn probe(
        &self,
        lab: &Lab,
        from: &Place,
        to: &Target,
        protocol: ProbeProtocol,
        port: Option<u16>,
        count: u32,
    ) -> Result<Vec<ProbeResult>, DemoError> {
        let spec = ProbeSpec {
            port,
            protocol,
            count: 1,
            timeout: self.timeout,
            family: None,
        };
        let failed = |source| DemoError::ProbeFailed {
            from: from.to_string(),
            to: to.to_string(),
            source,
        };
        // In parallel, so that blocked attempts wait one timeout together, not one each.
        let attempts: Vec<Result<Vec<ProbeResult>, Box<LabError>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..count.max(1))
                .map(|_| scope.spawn(|| lab.probe(from, to, &spec).map_err(Box::new)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Box::new(LabError::ThreadPanicked { what: "demo probe" }))
                    })
                })
                .collect()
        });
        let mut results = Vec::new();
        for attempt in attempts {
            results.extend(attempt.map_err(failed)?);
        }
        Ok(results)
    }

    /// Holds the probe results against `expect` and records the check.
    fn check(
        &mut self,
        step: &mut StepReport,
        layer: Layer,
        what: &str,
        expected: &str,
        results: &[ProbeResult],
        expect: impl Fn(&ProbeResult) -> bool,
    ) -> Result<(), DemoError> {
        let observed: Vec<String> = results.iter().map(describe).collect();
        self.record(
            step,
            Check {
                what: what.to_owned(),
                expected: expected.to_owned(),
                observed: observed.join("; "),
                passed: !results.is_empty() && results.iter().all(expect),
                layer,
            },
        )
    }

    fn record(&mut self, step: &mut StepReport, check: Check) -> Result<(), DemoError> {
        let mark = if check.passed { '✔' } else { '✘' };
        self.say(&format!("  {mark} {}", check.what))?;
        self.say(&format!("      expected: {}", check.expected))?;
        self.say(&format!("      observed: {}", check.observed))?;
        step.checks.push(check);
        Ok(())
    }

    /// Prints the lines of `node`'s nat table that mention any of `patterns`, as
    /// `iptables-save -t nat` inside the node's namespace shows them.
    fn nat_rules(
        &mut self,
        lab: &Lab,
        node: &netd_model::NodeName,
        patterns: &[&str],
    ) -> Result<(), DemoError> {
        self.say(&format!(
            "  {node}'s nat table (iptables-save -t nat | grep -e {}):",
            patterns.join(" -e ")
        ))?;
        let ns = lab.names().node_ns(node);
        let saved = match netns::exec(&ns, &["iptables-save", "-t", "nat"]) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => return self.say(&format!("      (iptables-save failed: {e})")),
        };
        let rules: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with("-A") && patterns.iter().any(|p| l.contains(p)))
            .collect();
        if rules.is_empty() {
            return self.say("      (none: no service rules are programmed on this node)");
        }
        for rule in rules {
            self.say(&format!("      {rule}"))?;
        }
        Ok(())
    }
}

fn summary(out: &mut dyn Write, report: &DemoReport) -> Result<(), DemoError> {
    let passed = report.checks().filter(|c| c.passed).count();
    let total = report.checks().count();
    line(out, "")?;
    line(
        out,
        &format!("Summary: {passed} of {total} checks as expected"),
    )?;
    for step in &report.steps {
        let ok = step.checks.iter().filter(|c| c.passed).count();
        let mark = if step.passed() { '✔' } else { '✘' };
        line(
            out,
            &format!(
                "  {mark} step {}: {} ({ok} of {})",
                step.number,
                step.title,
                step.checks.len()
            ),
        )?;
    }
    for layer in Layer::ALL {
        let (ok, of) = report.tally(layer);
        line(out, &format!("  {layer}: {ok} of {of} as expected"))?;
    }
    Ok(())
}

fn line(out: &mut dyn Write, text: &str) -> Result<(), DemoError> {
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| DemoError::WriteFailed { source })
}

fn load(examples: &[Example], config: &ClusterConfig) -> Result<Vec<Object>, DemoError> {
    let mut objects = Vec::new();
    for example in examples {
        let manifests =
            netd_model::load::load_str(example.path, example.text, config).map_err(|source| {
                DemoError::LoadFailed {
                    file: example.path,
                    source: Box::new(source),
                }
            })?;
        objects.extend(manifests.into_objects());
    }
    Ok(objects)
}

fn state(lab: &Lab) -> Result<ClusterState, DemoError> {
    lab.state().map_err(|source| DemoError::StateFailed {
        source: Box::new(source),
    })
}

fn missing(what: &str) -> DemoError {
    DemoError::MissingObject {
        what: what.to_owned(),
    }
}

/// `ns/pod (10.244.1.2 on node-1)`.
fn placed(state: &ClusterState, pod: &PodRef) -> Result<String, DemoError> {
    let p: &Pod = state
        .pod(pod)
        .ok_or_else(|| missing(&format!("pod {pod}")))?;
    let node = p
        .node
        .as_ref()
        .map_or_else(|| "unscheduled".to_owned(), |n| format!("on {n}"));
    Ok(format!("{pod} ({} {node})", list(&p.ips)))
}

/// The Pods behind a Service's ready endpoints, sorted.
fn ready_endpoints(state: &ClusterState, service: &ServiceRef) -> Vec<PodRef> {
    let pods: BTreeSet<PodRef> = state
        .endpoint_slices_for(service)
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.ready)
        .filter_map(|e| e.pod.clone())
        .collect();
    pods.into_iter().collect()
}

/// A Node's own addresses: its node IPs, then its bridge (the gateway of its podCIDR). Either
/// may be the source of what it masquerades, depending on the interface the packet leaves by.
fn node_addresses(
    state: &ClusterState,
    node: &netd_model::NodeName,
) -> Result<Vec<IpAddr>, DemoError> {
    let n = state
        .node(node.as_str())
        .ok_or_else(|| missing(&format!("node {node}")))?;
    let mut out: Vec<IpAddr> = n
        .internal_ips
        .iter()
        .copied()
        .filter(IpAddr::is_ipv4)
        .collect();
    out.extend(
        n.pod_cidrs
            .iter()
            .copied()
            .filter(|c| c.addr().is_ipv4())
            .filter_map(topology::gateway),
    );
    Ok(out)
}

fn external_ip(state: &ClusterState) -> Result<Option<IpAddr>, DemoError> {
    let nodes = topology::node_addresses(state).map_err(|source| DemoError::StateFailed {
        source: Box::new(source),
    })?;
    Ok(topology::external_ip(state.config().node_network, &nodes))
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One probe's result in words.
fn describe(r: &ProbeResult) -> String {
    match (r.outcome, r.protocol) {
        (Outcome::Connected, ProbeProtocol::Icmp) => format!("a reply in {:.1} ms", r.latency_ms),
        (Outcome::Connected, _) => {
            let mut s = "connected".to_owned();
            if let Some(pod) = &r.served_by {
                s.push_str(&format!(", served by {pod}"));
                if let Some(ip) = r.client_ip_seen {
                    s.push_str(&format!(", which saw the client as {ip}"));
                }
            }
            s
        }
        (Outcome::Answered, _) => "answered by a DNS server (not an echo server)".to_owned(),
        (Outcome::Timeout, _) => format!("no answer in {:.0} ms (timeout: dropped)", r.latency_ms),
        (Outcome::Refused, _) => "refused (a TCP reset or ICMP port unreachable)".to_owned(),
        (Outcome::Unreachable, _) => "unreachable (no route, or ICMP unreachable)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use netd_model::Kind;

    use super::*;

    #[test]
    fn the_examples_load_and_hold_what_the_steps_walk_through() {
        let config = ClusterConfig::default();
        let base = load(&[PODS, HOSTNAMES, NODEPORT], &config).expect("examples load");
        let ids: BTreeSet<(Kind, String, String)> = base
            .iter()
            .map(Object::id)
            .map(|id| (id.kind, id.namespace, id.name))
            .collect();
        let wanted = [
            (Kind::Namespace, "", "myproject"),
            (Kind::Pod, "new-ns", "deny-egress-test"),
            (Kind::Pod, "default", "db"),
            (Kind::Pod, "default", "frontend"),
            (Kind::Pod, "default", "stranger"),
            (Kind::Pod, "myproject", "client"),
            (Kind::Pod, "default", "web"),
            (Kind::Deployment, "default", "hostnames"),
            (Kind::Service, "default", "hostnames"),
            (Kind::Service, "default", "web-cluster"),
            (Kind::Service, "default", "web-local"),
        ];
        for (kind, namespace, name) in wanted {
            let id = (kind, namespace.to_owned(), name.to_owned());
            assert!(ids.contains(&id), "{id:?} in {ids:?}");
        }
        for (example, name) in [
            (DENY_EGRESS, "deny-egress-test"),
            (TEST_NETWORK_POLICY, "test-network-policy"),
        ] {
            let policy = load(&[example], &config).expect("policy loads");
            let ids: Vec<ObjectId> = policy.iter().map(Object::id).collect();
            assert_eq!(ids.len(), 1, "{}", example.path);
            assert_eq!(
                (ids[0].kind, ids[0].name.as_str()),
                (Kind::NetworkPolicy, name)
            );
        }
    }

    fn check(layer: Layer, passed: bool) -> Check {
        Check {
            what: "w".into(),
            expected: "e".into(),
            observed: "o".into(),
            passed,
            layer,
        }
    }

    #[test]
    fn a_report_passes_only_when_every_check_does_and_tallies_by_layer() {
        let mut report = DemoReport {
            steps: vec![
                StepReport {
                    number: 1,
                    title: "one".into(),
                    checks: vec![
                        check(Layer::PodNetwork, true),
                        check(Layer::NetworkPolicy, true),
                    ],
                },
                StepReport {
                    number: 2,
                    title: "two".into(),
                    checks: vec![check(Layer::ServiceProxy, true)],
                },
            ],
        };
        assert!(report.passed());
        report.steps[1]
            .checks
            .push(check(Layer::NetworkPolicy, false));
        assert!(!report.passed());
        assert!(report.steps[0].passed() && !report.steps[1].passed());
        assert_eq!(report.tally(Layer::PodNetwork), (1, 1));
        assert_eq!(report.tally(Layer::NetworkPolicy), (1, 2));
        assert_eq!(report.tally(Layer::ServiceProxy), (1, 1));

        let mut out = Vec::new();
        summary(&mut out, &report).expect("summary");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "\nSummary: 3 of 4 checks as expected\n  ✔ step 1: one (2 of 2)\n  ✘ step 2: two (1 of 2)\n  pod network: 1 of 1 as expected\n  NetworkPolicy: 1 of 2 as expected\n  service proxy: 1 of 1 as expected\n"
        );
    }

    #[test]
    fn probe_results_read_as_what_the_kernel_did() {
        let result = |protocol, outcome, served_by: Option<&str>| ProbeResult {
            from: "x/a".into(),
            to: "x/b".into(),
            port: None,
            protocol,
            outcome,
            served_by: served_by.map(str::to_owned),
            client_ip_seen: served_by.map(|_| "172.18.0.3".parse().expect("ip")),
            latency_ms: 1000.2,
        };
        let cases = [
            (
                ProbeProtocol::Icmp,
                Outcome::Connected,
                None,
                "a reply in 1000.2 ms",
            ),
            (
                ProbeProtocol::Tcp,
                Outcome::Connected,
                Some("default/web"),
                "connected, served by default/web, which saw the client as 172.18.0.3",
            ),
            (
                ProbeProtocol::Tcp,
                Outcome::Timeout,
                None,
                "no answer in 1000 ms (timeout: dropped)",
            ),
            (
                ProbeProtocol::Tcp,
                Outcome::Refused,
                None,
                "refused (a TCP reset or ICMP port unreachable)",
            ),
            (
                ProbeProtocol::Icmp,
                Outcome::Unreachable,
                None,
                "unreachable (no route, or ICMP unreachable)",
            ),
        ];
        for (protocol, outcome, served_by, text) in cases {
            assert_eq!(describe(&result(protocol, outcome, served_by)), text);
        }
    }
}
