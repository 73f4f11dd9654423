//! The store at the scale: 10,000 Services × 10 endpoints (one EndpointSlice each),
//! 10,000 Pods, 1,000 NetworkPolicies, 64 Nodes. Measures the initial lists, one
//! EndpointSlice change through to the snapshot the planners read, and a status-only Pod
//! update (the common no-op); prints the process's RSS once the store holds the cluster, and
//! where the store's allocation goes (typed views, maps). It allocates with
//! jemalloc, as the `kube-netd` binary does.
//!
//! Then the agent's whole path for one EndpointSlice change in iptables mode, stage by stage
//! (medians of [`RUNS`], wall clock, printed as a table): the watch event into the store, the
//! snapshot, the service plan, the policy plan, the rendering, and the partial sync's
//! `iptables-restore` payload, made by a [`SyncEngine`] whose kernel is a recorder; with the
//! RSS of the process holding the store, the snapshot and the engine's last rules; then what
//! one node's rules, the programmer's kept plans and the engine allocate.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use netd_agent::conntrack::Selection;
use netd_agent::{Applier, IncrementalProgrammer, NodeProgrammer, SyncEngine};
use netd_kernel::KernelError;
use netd_kernel::nftnl::conntrack::Flow;
use netd_model::{ClusterConfig, NodeName};
use netd_proxy::IpFamily;
use netd_source::{Store, Watched};

const APPS: usize = 1_000;
const PODS_PER_APP: usize = 10;
const SERVICES_PER_APP: usize = 10;
const NODES: usize = 64;

fn meta(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        resource_version: Some("1".to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn pod_ip(app: usize, i: usize) -> String {
    let n = app * PODS_PER_APP + i;
    format!("10.{}.{}.{}", 64 + n / 65_536, (n / 256) % 256, n % 256)
}

fn pod(app: usize, i: usize, probe: u32) -> core::Pod {
    let name = format!("app-{app}-{i}");
    let app_label = format!("app-{app}");
    let ip = pod_ip(app, i);
    core::Pod {
        metadata: meta(&name, Some("default"), &[("app", &app_label)]),
        spec: Some(core::PodSpec {
            node_name: Some(format!("node-{}", (app * PODS_PER_APP + i) % NODES)),
            containers: vec![core::Container {
                name: "c".to_owned(),
                image: Some("registry.k8s.io/serve_hostname".to_owned()),
                ports: Some(vec![core::ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: 9376,
                    ..core::ContainerPort::default()
                }]),
                ..core::Container::default()
            }],
            ..core::PodSpec::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![core::PodIP { ip }]),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                message: Some(format!("probe {probe}")),
                ..core::PodCondition::default()
            }]),
            ..core::PodStatus::default()
        }),
    }
}

fn service(app: usize, s: usize) -> core::Service {
    let n = app * SERVICES_PER_APP + s;
    let app_label = format!("app-{app}");
    core::Service {
        metadata: meta(&format!("svc-{n}"), Some("default"), &[]),
        spec: Some(core::ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", n / 256, n % 256)),
            selector: Some([("app".to_owned(), app_label)].into()),
            ports: Some(vec![core::ServicePort {
                port: 80,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..core::ServicePort::default()
            }]),
            ..core::ServiceSpec::default()
        }),
        status: None,
    }
}

fn slice(app: usize, s: usize, ready: bool) -> discovery::EndpointSlice {
    let n = app * SERVICES_PER_APP + s;
    let service = format!("svc-{n}");
    discovery::EndpointSlice {
        metadata: meta(
            &format!("{service}-abcde"),
            Some("default"),
            &[("kubernetes.io/service-name", &service)],
        ),
        address_type: "IPv4".to_owned(),
        ports: Some(vec![discovery::EndpointPort {
            port: Some(9376),
            ..discovery::EndpointPort::default()
        }]),
        endpoints: (0..PODS_PER_APP)
            .map(|i| discovery::Endpoint {
                addresses: vec![pod_ip(app, i)],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(ready || i != 0),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", (app * PODS_PER_APP + i) % NODES)),
                ..discovery::Endpoint::default()
            })
            .collect(),
    }
}

fn policy(app: usize) -> networking::NetworkPolicy {
    let to = format!("app-{app}");
    let from = format!("app-{}", (app + 1) % APPS);
    let selector = |app: &str| LabelSelector {
        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
        ..LabelSelector::default()
    };
    networking::NetworkPolicy {
        metadata: meta(&format!("allow-{app}"), Some("default"), &[]),
        spec: Some(networking::NetworkPolicySpec {
            pod_selector: Some(selector(&to)),
            ingress: Some(vec![networking::NetworkPolicyIngressRule {
                from: Some(vec![networking::NetworkPolicyPeer {
                    pod_selector: Some(selector(&from)),
                    ..networking::NetworkPolicyPeer::default()
                }]),
                ..networking::NetworkPolicyIngressRule::default()
            }]),
            ..networking::NetworkPolicySpec::default()
        }),
    }
}

fn node(n: usize) -> core::Node {
    core::Node {
        metadata: meta(&format!("node-{n}"), None, &[]),
        spec: Some(core::NodeSpec {
            pod_cidr: Some(format!("10.244.{n}.0/24")),
            ..core::NodeSpec::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(vec![core::NodeAddress {
                type_: "InternalIP".to_owned(),
                address: format!("172.18.0.{}", n + 2),
            }]),
            ..core::NodeStatus::default()
        }),
    }
}

fn list<K: Watched>(store: &mut Store, objects: impl Iterator<Item = K>) {
    store.apply(Event::<K>::Init);
    for o in objects {
        store.apply(Event::InitApply(o));
    }
    store.apply(Event::<K>::InitDone);
}

fn full_store() -> Store {
    let mut store = Store::new(ClusterConfig::default());
    list(
        &mut store,
        std::iter::once(PartialObjectMeta::<core::Namespace> {
            metadata: meta("default", None, &[]),
            ..PartialObjectMeta::default()
        }),
    );
    list(&mut store, (0..NODES).map(node));
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..PODS_PER_APP).map(move |i| pod(a, i, 0))),
    );
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..SERVICES_PER_APP).map(move |s| service(a, s))),
    );
    list(
        &mut store,
        (0..APPS).flat_map(|a| (0..SERVICES_PER_APP).map(move |s| slice(a, s, true))),
    );
    list(&mut store, (0..APPS).map(policy));
    store
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// jemalloc, as the `kube-netd` binary allocates: what this bench measures is what the agent
/// would hold.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The process's memory now, in MiB: resident (the kernel's `VmRSS`) and allocated
/// (jemalloc's live bytes).
#[derive(Clone, Copy)]
struct Memory {
    rss: f64,
    allocated: f64,
}

fn memory() -> Memory {
    // jemalloc's statistics are refreshed when the epoch advances.
    let allocated = tikv_jemalloc_ctl::epoch::advance()
        .and_then(|_| tikv_jemalloc_ctl::stats::allocated::read())
        .map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0));
    Memory {
        rss: rss_mib().unwrap_or(f64::NAN),
        allocated,
    }
}

/// The MiB allocated to hold what `make` returns.
fn allocated_by<T>(make: impl FnOnce() -> T) -> f64 {
    let before = memory().allocated;
    let held = make();
    let after = memory().allocated;
    drop(held);
    after - before
}

/// Where the store's `state_mib` go: the typed views of each kind, each deep-cloned alone
/// into a vector of exact size; the rest of the state is its maps (keys, chunks and their
/// spare room) and indexes. The store keeps no Kubernetes object.
fn store_breakdown(store: &Store, state_mib: f64) {
    use netd_model::Kind;
    fn exact<'a, T: Clone + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<T> {
        let items: Vec<&T> = items.collect();
        let mut v = Vec::with_capacity(items.len());
        v.extend(items.into_iter().cloned());
        v
    }
    let snapshot = store.snapshot().expect("ready");
    let state = &snapshot.state;
    let mut counted = 0.0;
    println!("\nthe store's allocation by part (MiB, jemalloc's allocated bytes):");
    println!("| kind | count | typed views |\n|---|---|---|");
    for kind in netd_source::WATCHED_KINDS {
        let views = match kind {
            Kind::Namespace => allocated_by(|| exact(state.namespaces())),
            Kind::Node => allocated_by(|| exact(state.nodes())),
            Kind::Pod => allocated_by(|| exact(state.pods())),
            Kind::Service => allocated_by(|| exact(state.services())),
            Kind::EndpointSlice => allocated_by(|| exact(state.endpoint_slices())),
            _ => allocated_by(|| exact(state.policies())),
        };
        counted += views;
        let n = store.ids(kind).len();
        println!("| {kind} | {n} | {views:.1} |");
    }
    println!(
        "| the maps (keys, chunks, spare room) and indexes | | {:.1} |",
        state_mib - counted
    );
}

fn main() {
    let before = memory();
    let mut store = full_store();
    let after = memory();
    let snapshot = store.take_snapshot().expect("ready");
    let with_snapshot = memory();
    eprintln!(
        "RSS: {:.1} MiB at start, {:.1} MiB holding the store, {:.1} MiB with one snapshot too; \
         allocated: {:.1}, {:.1}, {:.1} MiB ({} pods, {} services, {} slices, {} policies)",
        before.rss,
        after.rss,
        with_snapshot.rss,
        before.allocated,
        after.allocated,
        with_snapshot.allocated,
        snapshot.state.pods().count(),
        snapshot.state.services().count(),
        snapshot.state.endpoint_slices().count(),
        snapshot.state.policies().count(),
    );
    drop(snapshot);
    store_breakdown(&store, after.allocated - before.allocated);

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    c.bench_function("initial lists of the whole cluster", |b| {
        b.iter(|| black_box(full_store()))
    });
    // The slice was listed ready; each iteration flips one endpoint.
    let mut ready = true;
    c.bench_function("one EndpointSlice change, then the snapshot", |b| {
        b.iter(|| {
            ready = !ready;
            assert!(store.apply(Event::Apply(slice(7, 3, ready))));
            black_box(store.take_snapshot().expect("ready"))
        })
    });
    // As the agent runs it: the previous snapshot is still held while the store changes.
    let mut held = store.take_snapshot().expect("ready");
    c.bench_function(
        "one EndpointSlice change with the last snapshot held, then the snapshot",
        |b| {
            b.iter(|| {
                ready = !ready;
                assert!(store.apply(Event::Apply(slice(7, 3, ready))));
                held = store.take_snapshot().expect("ready");
            })
        },
    );
    black_box(&held);
    let mut probe = 0;
    c.bench_function("a status-only Pod update (no change)", |b| {
        b.iter(|| {
            probe += 1;
            assert!(!store.apply(Event::Apply(pod(7, 3, probe))));
        })
    });
    c.final_summary();
    // `agent_path` flips the slice from ready, as it was listed; the benches above left it
    // in whichever state their number of iterations ended on.
    store.apply(Event::Apply(slice(7, 3, true)));
    agent_path(&mut store);
    path_breakdown(&store);
}

/// What the agent's path allocates beyond the store, for node-0 in iptables mode: one
/// [`NodeRules`](netd_agent::NodeRules) value (the plans it carries, the rendered chains and
/// payloads), what the [`IncrementalProgrammer`] keeps for the next change (its plans and
/// last rules) beyond the rules it returns, and what a [`SyncEngine`] adds once it has synced
/// (and kept) them.
fn path_breakdown(store: &Store) {
    let state = store.snapshot().expect("ready").state;
    let node = NodeName::new("node-0");
    let rules = allocated_by(|| {
        NodeProgrammer::default()
            .rules(&state, &node)
            .expect("rules")
    });
    let programmer = IncrementalProgrammer::new(NodeProgrammer::default());
    let start = memory().allocated;
    let returned = programmer.rules(&state, &node).expect("rules");
    let planned = memory().allocated;
    let mut engine = SyncEngine::new();
    engine
        .sync(&mut Recorder::default(), returned)
        .expect("full sync");
    let synced = memory();
    println!(
        "\nthe agent's path beyond the store (MiB, jemalloc's allocated bytes): one node's rules \
         {rules:.1}; the incremental programmer's kept plans and last rules {:.1}; the engine, once it has \
         synced (and kept) such rules, {:.1} more; holding the store, the plans and the engine: \
         {:.1} allocated, RSS {:.1}",
        planned - start - rules,
        synced.allocated - planned,
        synced.allocated,
        synced.rss,
    );
}

/// The runs each stage of [`agent_path`] is timed over.
const RUNS: usize = 9;

/// A kernel that takes every payload and keeps the last `iptables-restore` one.
#[derive(Default)]
struct Recorder {
    restored: String,
}

impl Applier for Recorder {
    fn namespace(&self) -> &str {
        "bench"
    }
    fn restore_sets(&mut self, _: &str) -> Result<(), KernelError> {
        Ok(())
    }
    fn list_sets(&mut self) -> Result<Vec<String>, KernelError> {
        Ok(Vec::new())
    }
    fn save(&mut self, _: IpFamily) -> Result<String, KernelError> {
        Ok(String::new())
    }
    fn restore(&mut self, _: IpFamily, payload: &str) -> Result<(), KernelError> {
        payload.clone_into(&mut self.restored);
        Ok(())
    }
    fn list_conntrack(&mut self, _: IpFamily, _: Selection) -> Result<Vec<Flow>, KernelError> {
        Ok(Vec::new())
    }
    fn delete_conntrack(&mut self, _: &[Flow]) -> Result<usize, KernelError> {
        Ok(0)
    }
}

/// One EndpointSlice change through the agent's iptables path, stage by stage.
fn agent_path(store: &mut Store) {
    let node = NodeName::new("node-0");
    let whole = NodeProgrammer::default();
    let programmer = IncrementalProgrammer::new(NodeProgrammer::default());
    let mut engine = SyncEngine::new();
    let mut kernel = Recorder::default();
    let first = store.take_snapshot().expect("ready").state;
    let rules = programmer.rules(&first, &node).expect("rules");
    engine.sync(&mut kernel, rules).expect("full sync");

    let mut ready = true;
    let mut stage: Vec<(&str, Vec<Duration>)> = [
        "watch event into the store",
        "snapshot",
        "programmer: changed Services planned and rendered again, policy plan kept",
        "partial sync: scope + iptables-restore payload",
        "of which: the scope (which Services' chains to write)",
        "total: change → payload",
        "(before: the whole programmer, every Service planned and the policy compiled)",
    ]
    .into_iter()
    .map(|s| (s, Vec::new()))
    .collect();
    let mut payload = (0, 0);
    for _ in 0..RUNS {
        ready = !ready;
        let event = slice(7, 3, ready);
        let t0 = Instant::now();
        assert!(store.apply(Event::Apply(event)));
        let t1 = Instant::now();
        let state = store.take_snapshot().expect("ready").state;
        let t2 = Instant::now();
        let rules = programmer.rules(&state, &node).expect("rules");
        let t3 = Instant::now();
        black_box(engine.scope(&rules.families[0], rules.lineage.as_ref()));
        let scoped = t3.elapsed();
        let t3 = Instant::now();
        let report = engine.sync(&mut kernel, rules).expect("partial sync");
        let t4 = Instant::now();
        black_box(whole.rules(&state, &node).expect("rules"));
        let t5 = Instant::now();
        assert_eq!(
            report.families[0].services.len(),
            1,
            "one Service rewritten"
        );
        payload = (kernel.restored.lines().count(), kernel.restored.len());
        // The sync computes its scope itself; the one timed alone is left out of the total.
        for (i, d) in [
            t1 - t0,
            t2 - t1,
            t3 - t2 - scoped,
            t4 - t3,
            scoped,
            t4 - t0 - scoped,
            t5 - t4,
        ]
        .into_iter()
        .enumerate()
        {
            stage[i].1.push(d);
        }
    }
    println!(
        "\none EndpointSlice change through the agent (iptables mode, node-0, medians of {RUNS}):"
    );
    println!("| stage | time |\n|---|---|");
    for (what, mut times) in stage {
        times.sort();
        let median = times[times.len() / 2];
        println!("| {what} | {:.1} ms |", median.as_secs_f64() * 1000.0);
    }
    println!(
        "partial payload: {} lines, {:.2} MB; RSS holding the store, a snapshot, the programmer's \
         plans and the engine's rules: {:.1} MiB",
        payload.0,
        payload.1 as f64 / 1e6,
        rss_mib().unwrap_or(f64::NAN)
    );
}
