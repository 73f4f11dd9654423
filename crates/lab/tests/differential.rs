//! The lab against the engine, after every step of random sequences of changes: seeded
//! sequences of apply, delete, delete-then-re-create, scale, relabel of Pods and Namespaces,
//! and NetworkPolicy edits, each followed by two checks with real packets —
//!
//! - the lab's matrix (every Pod to every Pod, TCP 80) equals `policy matrix` of the same
//!   objects resolved afresh by the control plane, and
//! - every Service is answered by exactly its usable endpoints: from a source the policies let
//!   reach all of them, probes are served by each ready endpoint and by nothing else; a
//!   Service without endpoints is served by no one.
//!
//! On a failure the sequence is shrunk (runs of steps dropped, each candidate replayed
//! on a fresh lab) and the seed and the shortest failing sequence are printed with the command
//! that replays it.
//!
//! CI runs [`CI_SEEDS`] seeds of [`CI_STEPS`] steps. More: `NETD_DIFF_SEEDS=N` (seeds
//! `1..=N`), `NETD_DIFF_SEED=S` (that seed alone), `NETD_DIFF_STEPS=K` (steps per seed); see
//! also `scripts/lab-differential.sh`. `NETD_DIFF_ONLY=3,7,9` replays only those steps of the
//! seed's sequence (what a failure prints).
//!
//! Needs root. The lab's Nodes are programmed by the real [`netd_agent::NodeProgrammer`]: this test binary
//! is the lab's helper program (`harness = false`); started with `--netd-helper ARGS...` it is
//! an agent or a Pod's echo server, otherwise it runs the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use netd_lab::{Lab, Outcome, Place, ProbeProtocol, ProbeSpec, Resolver, Target};
use netd_model::{ClusterConfig, ClusterState, Kind, Object, ObjectId, PodRef, Protocol};
use netd_policy::{Endpoint, evaluate_via_service};

/// Seeds `1..=CI_SEEDS` run in CI.
const CI_SEEDS: u64 = 5;
/// Steps per seed in CI.
const CI_STEPS: usize = 50;
/// How long a blocked pair of the matrix is waited for (pairs in the lab connect in
/// milliseconds; each step with a blocked pair waits this long).
const MATRIX_TIMEOUT: Duration = Duration::from_millis(300);
/// How long one probe of a Service waits.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Replays the shrinker may spend on one failure.
const SHRINK_BUDGET: usize = 16;

/// The Namespaces; Pod slot `i` lives in `NAMESPACES[i % 2]`.
const NAMESPACES: [&str; 2] = ["ns-a", "ns-b"];
/// Standalone Pod slots (`p0`…).
const POD_SLOTS: usize = 5;
/// The values of the Pods' `app` label, and of the Namespaces' `team` label.
const APPS: [&str; 2] = ["web", "db"];
const TEAMS: [&str; 2] = ["red", "blue"];
/// Policy specs a policy slot can be set to (all about TCP 80, the Pods' port).
const POLICIES: [&str; 6] = [
    "{podSelector: {}, policyTypes: [Ingress]}",
    "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
    "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 80}]}]}",
    "{podSelector: {matchLabels: {app: db}}, policyTypes: [Egress], egress: [{to: [{podSelector: {}}]}]}",
    "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: red}}}]}]}",
    "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}], ports: [{port: 80, protocol: TCP}]}]}",
];
/// Policy slots per Namespace (`pol0`, `pol1`): applying a slot that exists edits it.
const POLICY_SLOTS: usize = 2;
/// The Deployment `ns-a/dep` (app=web) scales between 0 and this.
const MAX_REPLICAS: u32 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(status) = netd_lab::helper_if_asked(&args, &netd_agent::backend) {
        return status;
    }
    const NAME: &str = "random_changes_match_the_engine";
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    if filter.is_some_and(|f| !NAME.contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(random_changes_match_the_engine));
    let status = if result.is_ok() { "ok" } else { "FAILED" };
    println!(
        "test {NAME} ... {status} ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn random_changes_match_the_engine() {
    let steps = env_number("NETD_DIFF_STEPS").map_or(CI_STEPS, |n| n as usize);
    let seeds: Vec<u64> = match (env_number("NETD_DIFF_SEED"), env_number("NETD_DIFF_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => (1..=CI_SEEDS).collect(),
    };
    // A shrunk sequence, replayed: the positions of its steps in the seed's sequence.
    let only: Option<Vec<usize>> = std::env::var("NETD_DIFF_ONLY").ok().map(|list| {
        list.split(',')
            .map(|i| {
                i.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("NETD_DIFF_ONLY={list:?} is not a list of steps"))
            })
            .collect()
    });
    let mut reports = Vec::new();
    for seed in seeds {
        let all = sequence(seed, steps);
        let steps: Vec<usize> = match &only {
            Some(list) => list.clone(),
            None => (0..steps).collect(),
        };
        let ops = |steps: &[usize]| -> Vec<Op> {
            steps
                .iter()
                .map(|&i| {
                    *all.get(i).unwrap_or_else(|| {
                        panic!("step {i} is beyond NETD_DIFF_STEPS={}", all.len())
                    })
                })
                .collect()
        };
        let started = Instant::now();
        let failure = match run(&format!("s{seed}"), &ops(&steps)) {
            Ok(tally) => {
                println!(
                    "  seed {seed}: {} steps agree ({:.1}s; {} matrix cells, {} Service checks with {} probes)",
                    steps.len(),
                    started.elapsed().as_secs_f64(),
                    tally.cells,
                    tally.services,
                    tally.probes
                );
                continue;
            }
            Err(failure) => failure,
        };
        let (kept, failure) = shrink(seed, &steps[..failure.made], failure, |s| {
            run(&format!("s{seed}-shrink"), &ops(s))
        });
        let listed: Vec<String> = kept
            .iter()
            .map(|&i| format!("    {i}: {}", all[i]))
            .collect();
        let positions: Vec<String> = kept.iter().map(ToString::to_string).collect();
        reports.push(format!(
            "seed {seed} fails; shortest failing sequence found ({} steps after lab up; step: op):\n{}\n  then:\n    {}\n  replay it: NETD_DIFF_SEED={seed} NETD_DIFF_STEPS={} NETD_DIFF_ONLY={} cargo test -p netd-lab --test differential",
            kept.len(),
            listed.join("\n"),
            failure.messages.join("\n    "),
            all.len(),
            positions.join(","),
        ));
    }
    assert!(reports.is_empty(), "{}", reports.join("\n\n"));
}

/// One change to the cluster. Every op is meaningful in every state (deleting what is not
/// there is a "not found"), so dropping ops from a sequence leaves a valid sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Applies Pod slot `pod` with its current labels (created, or unchanged).
    ApplyPod { pod: usize },
    /// Deletes Pod slot `pod`.
    DeletePod { pod: usize },
    /// Deletes Pod slot `pod` and applies it again, as two changes.
    RecreatePod { pod: usize },
    /// Scales `ns-a/dep`.
    Scale { replicas: u32 },
    /// Sets Pod slot `pod`'s `app` label (applied if the Pod exists).
    RelabelPod { pod: usize, app: usize },
    /// Sets Namespace `ns`'s `team` label.
    RelabelNamespace { ns: usize, team: usize },
    /// Creates or edits policy slot `slot` of Namespace `ns`.
    ApplyPolicy { ns: usize, slot: usize, spec: usize },
    /// Deletes policy slot `slot` of Namespace `ns`.
    DeletePolicy { ns: usize, slot: usize },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pod = |i: usize| format!("{}/p{i}", NAMESPACES[i % 2]);
        match *self {
            Op::ApplyPod { pod: p } => write!(f, "apply pod {}", pod(p)),
            Op::DeletePod { pod: p } => write!(f, "delete pod {}", pod(p)),
            Op::RecreatePod { pod: p } => write!(f, "delete and re-create pod {}", pod(p)),
            Op::Scale { replicas } => write!(f, "scale deployment ns-a/dep to {replicas}"),
            Op::RelabelPod { pod: p, app } => {
                write!(f, "label pod {} app={}", pod(p), APPS[app])
            }
            Op::RelabelNamespace { ns, team } => {
                write!(f, "label namespace {} team={}", NAMESPACES[ns], TEAMS[team])
            }
            Op::ApplyPolicy { ns, slot, spec } => write!(
                f,
                "apply networkpolicy {}/pol{slot}: {}",
                NAMESPACES[ns], POLICIES[spec]
            ),
            Op::DeletePolicy { ns, slot } => {
                write!(f, "delete networkpolicy {}/pol{slot}", NAMESPACES[ns])
            }
        }
    }
}

/// The seed's sequence of `steps` ops.
fn sequence(seed: u64, steps: usize) -> Vec<Op> {
    let mut rng = netd_testkit::Rng::new(seed);
    (0..steps)
        .map(|_| match rng.below(10) {
            0 | 1 => Op::ApplyPod {
                pod: rng.below(POD_SLOTS),
            },
            2 => Op::DeletePod {
                pod: rng.below(POD_SLOTS),
            },
            3 => Op::RecreatePod {
                pod: rng.below(POD_SLOTS),
            },
            4 => Op::Scale {
                replicas: rng.below(MAX_REPLICAS as usize + 1) as u32,
            },
            5 => Op::RelabelPod {
                pod: rng.below(POD_SLOTS),
                app: rng.below(APPS.len()),
            },
            6 => Op::RelabelNamespace {
                ns: rng.below(NAMESPACES.len()),
                team: rng.below(TEAMS.len()),
            },
            7 | 8 => Op::ApplyPolicy {
                ns: rng.below(NAMESPACES.len()),
                slot: rng.below(POLICY_SLOTS),
                spec: rng.below(POLICIES.len()),
            },
            _ => Op::DeletePolicy {
                ns: rng.below(NAMESPACES.len()),
                slot: rng.below(POLICY_SLOTS),
            },
        })
        .collect()
}

/// What the lab should hold: the test's own record of the desired objects.
#[derive(Clone, Debug)]
struct Model {
    /// Each Pod slot's `app` label, and whether the Pod exists.
    pods: [(usize, bool); POD_SLOTS],
    teams: [usize; NAMESPACES.len()],
    replicas: u32,
    /// (namespace, slot) -> spec.
    policies: BTreeMap<(usize, usize), usize>,
}

impl Model {
    /// Three Pods, both Namespaces red, one replica, both Services, no policy.
    fn initial() -> Model {
        Model {
            pods: std::array::from_fn(|i| (i % APPS.len(), i < 3)),
            teams: [0; NAMESPACES.len()],
            replicas: 1,
            policies: BTreeMap::new(),
        }
    }

    fn objects(&self) -> Vec<Object> {
        let mut yaml = String::new();
        for (i, ns) in NAMESPACES.iter().enumerate() {
            yaml.push_str(&self.namespace(i));
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-web, namespace: {ns}}}\nspec: {{selector: {{app: web}}, ports: [{{port: 8080, targetPort: 80}}]}}\n"
            ));
        }
        for (pod, &(_, exists)) in self.pods.iter().enumerate() {
            if exists {
                yaml.push_str(&self.pod(pod));
            }
        }
        yaml.push_str(&self.deployment());
        for (&(ns, slot), &spec) in &self.policies {
            yaml.push_str(&policy(ns, slot, spec));
        }
        common::objects(&yaml)
    }

    fn namespace(&self, ns: usize) -> String {
        format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {{team: {}}}}}\n",
            NAMESPACES[ns], TEAMS[self.teams[ns]]
        )
    }

    fn pod(&self, pod: usize) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{pod}, namespace: {}, labels: {{app: {}}}}}\nspec: {{containers: [{{name: c, image: echo, ports: [{{containerPort: 80}}]}}]}}\n",
            NAMESPACES[pod % 2],
            APPS[self.pods[pod].0]
        )
    }

    fn deployment(&self) -> String {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: dep, namespace: ns-a}}\nspec: {{replicas: {}, selector: {{matchLabels: {{app: web}}}}, template: {{metadata: {{labels: {{app: web}}}}, spec: {{containers: [{{name: c, image: echo, ports: [{{containerPort: 80}}]}}]}}}}}}\n",
            self.replicas
        )
    }
}

fn policy(ns: usize, slot: usize, spec: usize) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: pol{slot}, namespace: {}}}\nspec: {}\n",
        NAMESPACES[ns], POLICIES[spec]
    )
}

fn id(kind: Kind, namespace: &str, name: &str) -> ObjectId {
    ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// Makes `op` in the lab and in `model`.
fn apply(lab: &Lab, model: &mut Model, op: Op) {
    let pod_id = |p: usize| id(Kind::Pod, NAMESPACES[p % 2], &format!("p{p}"));
    let yaml = match op {
        Op::ApplyPod { pod } => {
            model.pods[pod].1 = true;
            model.pod(pod)
        }
        Op::DeletePod { pod } => {
            model.pods[pod].1 = false;
            lab.delete(&[pod_id(pod)]).expect("delete");
            return;
        }
        Op::RecreatePod { pod } => {
            lab.delete(&[pod_id(pod)]).expect("delete");
            model.pods[pod].1 = true;
            model.pod(pod)
        }
        Op::Scale { replicas } => {
            model.replicas = replicas;
            model.deployment()
        }
        Op::RelabelPod { pod, app } => {
            model.pods[pod].0 = app;
            if !model.pods[pod].1 {
                return;
            }
            model.pod(pod)
        }
        Op::RelabelNamespace { ns, team } => {
            model.teams[ns] = team;
            model.namespace(ns)
        }
        Op::ApplyPolicy { ns, slot, spec } => {
            model.policies.insert((ns, slot), spec);
            policy(ns, slot, spec)
        }
        Op::DeletePolicy { ns, slot } => {
            model.policies.remove(&(ns, slot));
            let name = format!("pol{slot}");
            lab.delete(&[id(Kind::NetworkPolicy, NAMESPACES[ns], &name)])
                .expect("delete");
            return;
        }
    };
    lab.apply(common::objects(&yaml)).expect("apply");
}

/// Where a sequence first disagreed (after how many of its ops), and how.
#[derive(Debug)]
struct Failure {
    made: usize,
    messages: Vec<String>,
}

/// Builds a lab from the initial model and checks it, then makes `ops` one at a time and
/// checks after each.
fn run(label: &str, ops: &[Op]) -> Result<Tally, Failure> {
    let mut model = Model::initial();
    let mut options = common::options(&common::lab_name(&format!("diff-{label}")));
    let exe = std::env::current_exe().expect("test binary");
    options.program = vec![
        exe.to_string_lossy().into_owned(),
        netd_lab::HELPER_FLAG.to_owned(),
    ];
    let config = options.config.clone();
    let lab = Lab::up(options, model.objects(), resolver()).expect("lab up");
    let mut tally = Tally::default();
    let mut result = Ok(());
    for made in 0..=ops.len() {
        if made > 0 {
            apply(&lab, &mut model, ops[made - 1]);
        }
        let messages = check(&lab, &model, &config, &mut tally);
        if !messages.is_empty() {
            result = Err(Failure { made, messages });
            break;
        }
    }
    let name = lab.name().to_owned();
    drop(lab);
    assert_eq!(common::leftovers(&name), Vec::<String>::new());
    result.map(|()| tally)
}

/// What a run checked, to show that its checks were not vacuous.
#[derive(Debug, Default)]
struct Tally {
    /// Matrix cells compared.
    cells: usize,
    /// Services probed, and the probes sent to them.
    services: usize,
    probes: usize,
}

/// Shrinks a failing sequence of steps: drops runs of them (halves, then quarters, ... then
/// single steps; never the last, after which it failed), keeping each drop after which
/// `replay` (on a fresh lab) still fails, cut where the replay failed; within
/// [`SHRINK_BUDGET`] replays.
fn shrink(
    seed: u64,
    steps: &[usize],
    mut failure: Failure,
    replay: impl Fn(&[usize]) -> Result<Tally, Failure>,
) -> (Vec<usize>, Failure) {
    let mut steps = steps.to_vec();
    let mut budget = SHRINK_BUDGET;
    let mut size = steps.len() / 2;
    while size > 0 && budget > 0 {
        let mut i = 0;
        while i + size < steps.len() && budget > 0 {
            budget -= 1;
            let mut candidate = steps.clone();
            candidate.drain(i..i + size);
            match replay(&candidate) {
                Err(f) => {
                    candidate.truncate(f.made);
                    steps = candidate;
                    failure = f;
                }
                Ok(_) => i += size,
            }
        }
        size = (size / 2).min(steps.len() / 2);
    }
    println!(
        "  seed {seed}: shrunk to {} steps in {} replays",
        steps.len(),
        SHRINK_BUDGET - budget
    );
    (steps, failure)
}

fn resolver() -> Resolver {
    std::sync::Arc::new(|objects, config, previous| {
        Ok(netd_controlplane::resolve(objects, config, previous)?)
    })
}

/// The lab against the engine on the model's objects, resolved afresh; the differences.
fn check(lab: &Lab, model: &Model, config: &ClusterConfig, tally: &mut Tally) -> Vec<String> {
    let want_state =
        netd_controlplane::resolve(model.objects(), config, None).expect("the model resolves");
    let mut out = Vec::new();
    let want = netd_policy::matrix(&want_state, 80, Protocol::Tcp, &[]);
    let got = lab
        .matrix(80, Protocol::Tcp, &[], MATRIX_TIMEOUT, None)
        .expect("lab matrix");
    if want.pods() != got.pods() {
        out.push(format!(
            "pods: engine {:?}, lab {:?}",
            want.pods(),
            got.pods()
        ));
    }
    for m in want.mismatches(&got) {
        // Probed again alone, the pair tells a burst's loss from a lasting one.
        let spec = ProbeSpec {
            port: Some(80),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        let alone = lab
            .probe(
                &Place::Pod(m.from.clone()),
                &Target::Pod(m.to.clone()),
                &spec,
            )
            .expect("probe")
            .remove(0);
        out.push(format!(
            "{} -> {} TCP 80: engine {}, kernel {} (probed alone just after: {} in {:.1} ms)",
            m.from,
            m.to,
            verdict(m.expected),
            verdict(m.actual),
            alone.outcome,
            alone.latency_ms
        ));
    }
    tally.cells += want.pods().len().pow(2);
    out.extend(check_services(lab, &want_state, tally));
    out
}

/// Every Service, probed from the first Pod the policies let reach all its endpoints (a
/// Service whose endpoints no Pod may all reach is left to the matrix, which has checked
/// those pairs); a Service without endpoints, from the first Pod.
fn check_services(lab: &Lab, state: &ClusterState, tally: &mut Tally) -> Vec<String> {
    let pods: Vec<PodRef> = state.pods().map(|p| p.key.clone()).collect();
    let mut out = Vec::new();
    for svc in state.services() {
        let backends = |src: &PodRef| {
            let from = Endpoint::Pod(src.clone());
            evaluate_via_service(state, &from, &svc.key, 8080, Protocol::Tcp)
                .expect("evaluate via service")
        };
        let Some(first) = pods.first() else {
            continue;
        };
        let usable: BTreeSet<String> = backends(first)
            .iter()
            .map(|b| b.endpoint.to_string())
            .collect();
        let source = if usable.is_empty() {
            Some(first)
        } else {
            pods.iter()
                .find(|src| backends(src).iter().all(|b| b.verdict.allowed))
        };
        let Some(src) = source else {
            continue;
        };
        let from = Place::Pod(src.clone());
        let to = Target::Service(svc.key.clone());
        let spec = ProbeSpec {
            port: Some(8080),
            protocol: ProbeProtocol::Tcp,
            count: if usable.is_empty() { 1 } else { 10 },
            timeout: PROBE_TIMEOUT,
            family: None,
        };
        tally.services += 1;
        let mut seen = BTreeSet::new();
        let mut wrong = Vec::new();
        // Rounds of ten until every endpoint has answered (or something else happened).
        for _ in 0..8 {
            for r in lab.probe(&from, &to, &spec).expect("probe") {
                tally.probes += 1;
                match (r.outcome, r.served_by) {
                    (Outcome::Connected, Some(by)) if usable.contains(&by) => {
                        seen.insert(by);
                    }
                    // A Service without endpoints rejects (or, where egress is isolated, the
                    // policy drops): answered by no one either way.
                    (Outcome::Refused | Outcome::Timeout, _) if usable.is_empty() => {}
                    (outcome, by) => wrong.push(format!("{outcome} (served by {by:?})")),
                }
            }
            if seen == usable || !wrong.is_empty() {
                break;
            }
        }
        if seen != usable || !wrong.is_empty() {
            out.push(format!(
                "{src} -> svc/{} 8080: answered by {seen:?}, usable endpoints {usable:?}; {wrong:?}",
                svc.key
            ));
        }
    }
    out
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "blocked" }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}
