//! [`Lab`]: one running lab, built from objects, changed with apply and delete, probed with
//! real packets, and removed on [`Lab::down`] or on drop.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netd_agent::Mode;
use netd_kernel::{module, netns, process};
use netd_model::{ClusterConfig, ClusterState, NodeName, Object, ObjectId, PodRef, Protocol};
use netd_policy::Matrix;
use netd_proxy::IpFamily;

use crate::agent::node_records;
use crate::error::BoxError;
use crate::matrix::ProbeMatrix;
use crate::names::Names;
use crate::probe::{self, HoldResult, Place, ProbeProtocol, ProbeResult, ProbeSpec, Target};
use crate::store::{ClusterRecord, DEFAULT_STATE_ROOT, LabRecord, Store};
use crate::{LabError, objects, topology};
use netd_model::error_chain;

/// The embedded control plane, as the lab calls it: desired objects (and the previous
/// resolved state, for stable addresses) in, the resolved cluster out. The binary passes
/// `netd_controlplane::resolve`; tests may pass [`resolved_as_given`].
pub type Resolver = Arc<
    dyn Fn(Vec<Object>, &ClusterConfig, Option<&ClusterState>) -> Result<ClusterState, BoxError>
        + Send
        + Sync,
>;

/// A [`Resolver`] that takes the objects as already resolved (Nodes with addresses and
/// podCIDRs, Pods with IPs and nodes): for tests that write the cluster out by hand.
pub fn resolved_as_given() -> Resolver {
    Arc::new(|objects, config, _| Ok(ClusterState::new(objects, config.clone())?))
}

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The lab's name (default `kube-netd`): prefixes every namespace it creates.
    pub name: String,
    /// The helper command: program and leading arguments that [`crate::helper_main`] parses
    /// the rest of (for the binary: `kube-netd lab internal`).
    pub program: Vec<String>,
    /// Where state directories live (default [`DEFAULT_STATE_ROOT`]).
    pub state_root: PathBuf,
    /// The cluster's address plan (its `default_node_count` is `--nodes`).
    pub config: ClusterConfig,
    /// How long `up`, `apply` and `delete` wait for every Node to converge.
    pub converge_timeout: Duration,
    /// Whether `up` adds the cluster DNS (`kube-system/kube-dns` and its `coredns`
    /// Deployment) where the objects do not define it, as the offline commands do (default:
    /// yes; see [`netd_controlplane::with_addons`] and [`crate::dns`]).
    pub cluster_dns: bool,
    /// The proxy mode the agents run (recorded: each agent builds its back end from the
    /// record through the helper program's [`MakeBackend`](crate::MakeBackend)).
    pub mode: Mode,
    /// Whether the Nodes accept connections to `127.0.0.1:<nodePort>`, as kube-proxy's
    /// `--iptables-localhost-nodeports` does: `route_localnet=1` in every Node's namespace,
    /// and the agents' back ends built with the option; off by default (CVE-2020-8558).
    pub localhost_nodeports: bool,
    /// Whether `up` starts the lab's Kubernetes API server (the `apiserver` helper) on a free
    /// port of `127.0.0.1` and writes its kubeconfig ([`Lab::kubeconfig`]); off by default,
    /// `kube-netd lab up` turns it on. The cluster DNS Pods watch it: without it they answer
    /// SERVFAIL for cluster names (see [`crate::dns`]).
    pub api_server: bool,
}

impl LabOptions {
    /// Options with the defaults, for the lab `name` run by the helper command `program`.
    pub fn new(name: impl Into<String>, program: Vec<String>) -> LabOptions {
        LabOptions {
            name: name.into(),
            program,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            config: ClusterConfig::default(),
            converge_timeout: Duration::from_secs(60),
            cluster_dns: true,
            mode: Mode::default(),
            localhost_nodeports: false,
            api_server: false,
        }
    }
}

/// What `apply` or `delete` did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// It was new.
    Created,
    /// It replaced a different version.
    Configured,
    /// It was already so.
    Unchanged,
    /// It was removed.
    Deleted,
    /// It was to be removed but did not exist.
    NotFound,
}

/// One object's change, printed as kubectl does (`pod/web created`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    /// The object.
    pub id: ObjectId,
    /// What happened.
    pub action: Action,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::NotFound => "not found",
        };
        let kind = self.id.kind.as_str().to_ascii_lowercase();
        if self.id.namespace.is_empty() {
            write!(f, "{kind}/{} {action}", self.id.name)
        } else {
            write!(
                f,
                "{kind}/{} {action} (namespace {})",
                self.id.name, self.id.namespace
            )
        }
    }
}

/// How [`Lab::restart_agent_with`] stops the running agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStop {
    /// SIGTERM: asked to stop (`lab restart NODE`).
    Terminate,
    /// SIGKILL: as if it crashed (`lab restart NODE --kill`).
    Kill,
}

/// A running lab. One built by [`Lab::up`] is removed when dropped, unless
/// [`detached`](Lab::detach); one found by [`Lab::open`] is left running.
pub struct Lab {
    names: Names,
    store: Store,
    resolver: Resolver,
    converge_timeout: Duration,
    owned: bool,
    /// The agents this value started, to reap them.
    agents: Mutex<Vec<Child>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.names.lab())
            .field("state", &self.store.dir())
            .finish()
    }
}

impl Lab {
    /// Builds a lab from `objects` (with the cluster DNS added, if `options.cluster_dns`):
    /// loads the kernel modules a Node needs (`br_netfilter`, `nf_conntrack`) unless the
    /// kernel has them, resolves the objects, builds the underlay, the external namespace
    /// and every Node, starts the API server (if `options.api_server`) and then one agent per
    /// Node, and returns once every Node has built its Pods and programmed its rules. On
    /// failure, whatever was built is removed.
    pub fn up(
        options: LabOptions,
        objects: Vec<Object>,
        resolver: Resolver,
    ) -> Result<Lab, LabError> {
        let names = Names::new(&options.name)?;
        let store = Store::new(&options.state_root, &options.name);
        if store.exists() {
            return Err(LabError::AlreadyExists {
                name: options.name,
                dir: store.dir().to_owned(),
            });
        }
        let config = options.config.clone();
        let objects = if options.cluster_dns {
            netd_controlplane::with_addons(objects, &config)
        } else {
            objects
        };
        let state = resolver(objects.clone(), &config, None)
            .map_err(|source| LabError::ResolveFailed { source })?;
        let nodes = topology::node_addresses(&state)?;
        let external_ip = topology::external_ip(config.node_network, &nodes).ok_or(
            LabError::NodeNetworkFull {
                network: config.node_network.to_string(),
            },
        )?;
        let external_ip6 = match config.node_network_v6 {
            Some(network) => Some(topology::external_ip(network, &nodes).ok_or(
                LabError::NodeNetworkFull {
                    network: network.to_string(),
                },
            )?),
            None => None,
        };
        let api_ip = match options.api_server {
            true => Some(
                topology::api_ip(config.node_network, &nodes, external_ip).ok_or(
                    LabError::NodeNetworkFull {
                        network: config.node_network.to_string(),
                    },
                )?,
            ),
            false => None,
        };
        let api_ip6 = match (api_ip, config.node_network_v6, external_ip6) {
            (Some(_), Some(network), Some(external6)) => Some(
                topology::api_ip(network, &nodes, external6).ok_or(LabError::NodeNetworkFull {
                    network: network.to_string(),
                })?,
            ),
            _ => None,
        };
        // With an API server, the `kubernetes` Service leads to it, as on a cluster: the
        // objects are resolved again with it (the addresses it needs came from the first).
        let (objects, state) = match api_ip {
            Some(ip) => {
                let objects = crate::api::with_kubernetes_service(objects, &config, ip, api_ip6)?;
                let state = resolver(objects.clone(), &config, None)
                    .map_err(|source| LabError::ResolveFailed { source })?;
                (objects, state)
            }
            None => (objects, state),
        };
        // A distribution kernel has br_netfilter and nf_conntrack as modules nobody loaded;
        // without them the bridge sysctls do not exist and NAT does not work.
        module::ensure(&module::NODE_MODULES).map_err(LabError::modules("for a lab node"))?;
        store.create()?;
        let lab = Lab {
            names: names.clone(),
            store: store.clone(),
            resolver,
            converge_timeout: options.converge_timeout,
            owned: true,
            agents: Mutex::new(Vec::new()),
        };
        let mut record = LabRecord {
            name: options.name.clone(),
            program: options.program.clone(),
            config: (&config).into(),
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            nodes: nodes.clone(),
            external_ip: Some(external_ip),
            external_ip6,
            api_ip,
            api_ip6,
            apiserver: None,
            mode: options.mode.to_string(),
            localhost_nodeports: options.localhost_nodeports,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
        };
        store.write_lab(&record)?;
        topology::build_infrastructure(&names, &store, &mut record)?;
        let resolved: Vec<Object> = state.objects().cloned().collect();
        store.write_cluster(&ClusterRecord {
            generation: 1,
            desired: objects::encode_all(&objects)?,
            resolved: objects::encode_all(&resolved)?,
        })?;
        // The API first: the cluster DNS Pods the agents start watch it.
        if options.api_server {
            lab.start_api_server(&mut record)?;
        }
        for node in nodes.keys() {
            lab.start_agent(&mut record, node)?;
        }
        topology::sync_external_routes(&names, &state, &nodes)?;
        lab.wait_converged(1)?;
        Ok(lab)
    }

    /// The kubeconfig of the lab's API server, if it has one (see
    /// [`LabOptions::api_server`]).
    pub fn kubeconfig(&self) -> Option<PathBuf> {
        Some(self.store.kubeconfig_path()).filter(|p| p.exists())
    }

    /// The kubeconfig for clients inside the lab's network (a Node's namespace, the external
    /// one, a Pod's with an IPv4 address), if the lab has an API server: it reaches the server
    /// at its address on the underlay switch, as a control-plane node's address would be.
    pub fn in_lab_kubeconfig(&self) -> Option<PathBuf> {
        Some(self.store.in_lab_kubeconfig_path()).filter(|p| p.exists())
    }

    /// Finds the running lab `name` (state under `state_root`). The returned value does not
    /// remove the lab when dropped.
    pub fn open(name: &str, state_root: &Path, resolver: Resolver) -> Result<Lab, LabError> {
        let names = Names::new(name)?;
        let store = Store::new(state_root, name);
        if store.read_lab()?.is_none() {
            return Err(LabError::NotFound {
                name: name.to_owned(),
                dir: store.dir().to_owned(),
            });
        }
        Ok(Lab {
            names,
            store,
            resolver,
            converge_timeout: Duration::from_secs(60),
            owned: false,
            agents: Mutex::new(Vec::new()),
        })
    }

    /// Leaves the lab running after this value is dropped (what `lab up` does).
    pub fn detach(mut self) {
        self.owned = false;
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        self.names.lab()
    }

    /// The names of the lab's namespaces and interfaces.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The lab's state directory.
    pub fn state_dir(&self) -> &Path {
        self.store.dir()
    }

    /// Restarts the agent of `node` as a crashed one would be: [`Lab::restart_agent_with`]
    /// [`AgentStop::Kill`].
    pub fn restart_agent(&self, node: &NodeName) -> Result<(), LabError> {
        self.restart_agent_with(node, AgentStop::Kill)
    }

    /// Restarts the agent of `node`: stops the recorded agent by PID as `stop` says (only if
    /// it is still the lab's) and waits until it is gone, starts a new one as [`Lab::up`]
    /// does, records its PID, and returns once it has programmed the current generation (its
    /// first sync, a full one). The new agent adopts the Node's Pods and their workloads as
    /// they are; established connections keep flowing meanwhile.
    pub fn restart_agent_with(&self, node: &NodeName, stop: AgentStop) -> Result<(), LabError> {
        let _lock = self.store.lock_changes()?;
        let (mut record, cluster) = self.records()?;
        if !record.nodes.contains_key(node) {
            return Err(LabError::UnknownTarget {
                what: "node",
                name: node.to_string(),
                lab: self.name().to_owned(),
            });
        }
        if let Some(pid) = record.agents.get(node).copied() {
            self.stop_agent(node, pid, stop)?;
        }
        // The record's generation was programmed by the agent just stopped: the new one has
        // converged only once it has written it again.
        let mut node_record = self.store.read_node(node)?;
        node_record.converged = 0;
        node_record.error = None;
        node_record.error_generation = 0;
        node_record.error_count = 0;
        self.store.write_node(node, &node_record)?;
        self.start_agent(&mut record, node)?;
        self.wait_converged(cluster.generation)
    }

    /// Creates or updates `objects` (matched by kind, namespace and name), resolves the
    /// cluster again and returns once every Node has converged on it.
    pub fn apply(&self, objects: Vec<Object>) -> Result<Vec<Change>, LabError> {
        let _lock = self.store.lock_changes()?;
        let mut desired = self.desired_map()?;
        let mut changes = Vec::new();
        for object in objects {
            let id = object.id();
            let action = match desired.get(&id) {
                Some(old) if *old == object => Action::Unchanged,
                Some(_) => Action::Configured,
                None => Action::Created,
            };
            desired.insert(id.clone(), object);
            changes.push(Change { id, action });
        }
        self.commit(desired, &changes)?;
        Ok(changes)
    }

    /// Deletes the objects `ids`, resolves the cluster again and returns once every Node has
    /// converged on it.
    pub fn delete(&self, ids: &[ObjectId]) -> Result<Vec<Change>, LabError> {
        let _lock = self.store.lock_changes()?;
        let mut desired = self.desired_map()?;
        let changes: Vec<Change> = ids
            .iter()
            .map(|id| Change {
                id: id.clone(),
                action: if desired.remove(id).is_some() {
                    Action::Deleted
                } else {
                    Action::NotFound
                },
            })
            .collect();
        self.commit(desired, &changes)?;
        Ok(changes)
    }

    /// The desired objects, as applied.
    pub fn desired(&self) -> Result<Vec<Object>, LabError> {
        Ok(self.desired_map()?.into_values().collect())
    }

    /// The resolved cluster the agents are programming.
    pub fn state(&self) -> Result<ClusterState, LabError> {
        let (record, cluster) = self.records()?;
        let objects = objects::decode_all(cluster.resolved)?;
        ClusterState::new(objects, ClusterConfig::from(&record.config)).map_err(|source| {
            LabError::InvalidState {
                source: Box::new(source),
            }
        })
    }

    /// The namespace a place is: a Pod's own (its Node's for hostNetwork), a Node's, or the
    /// external one.
    pub fn netns_of(&self, place: &Place) -> Result<String, LabError> {
        let state = self.state()?;
        self.place_ns(&state, place)
    }

    /// A command that runs `program` inside `place`'s namespace (for `lab exec`).
    pub fn command(&self, place: &Place, program: &str) -> Result<Command, LabError> {
        let ns = self.netns_of(place)?;
        netns::command(&ns, program).map_err(LabError::kernel(format!("exec in {place}")))
    }

    /// Probes `to` from `from`, `spec.count` times.
    pub fn probe(
        &self,
        from: &Place,
        to: &Target,
        spec: &ProbeSpec,
    ) -> Result<Vec<ProbeResult>, LabError> {
        let state = self.state()?;
        let ns = self.place_ns(&state, from)?;
        let family = spec.family.unwrap_or_else(|| first_family(&state));
        let ip = self.target_ip(&state, &ns, to, family)?;
        let port = match spec.protocol {
            ProbeProtocol::Icmp => None,
            _ => spec.port,
        };
        if spec.count == 0 {
            return Err(LabError::ZeroCount);
        }
        probe::check_protocol(spec.protocol)?;
        (0..spec.count)
            .map(|_| {
                let a = probe::attempt(&ns, ip, spec)?;
                Ok(ProbeResult {
                    from: from.to_string(),
                    to: to.to_string(),
                    port,
                    protocol: spec.protocol,
                    outcome: a.outcome,
                    served_by: a.reply.as_ref().map(|r| r.pod.clone()),
                    client_ip_seen: a.reply.as_ref().map(|r| r.client.ip()),
                    latency_ms: a.latency.as_secs_f64() * 1000.0,
                })
            })
            .collect()
    }

    /// Opens `spec.count` TCP connections from `from` to `to` on `port` in parallel and holds
    /// each for `hold`, exchanging a message every [`probe::HOLD_INTERVAL`] and waiting up to
    /// `spec.timeout` for each echo, at `to`'s address of `spec.family` (`None`: the cluster's
    /// first): whether each survived, who served it, its longest stall. `spec.protocol` is
    /// not read: a held connection is TCP.
    pub fn hold(
        &self,
        from: &Place,
        to: &Target,
        port: u16,
        spec: &ProbeSpec,
        hold: Duration,
    ) -> Result<Vec<HoldResult>, LabError> {
        if spec.count == 0 {
            return Err(LabError::ZeroCount);
        }
        let (count, timeout) = (spec.count, spec.timeout);
        let state = self.state()?;
        let ns = self.place_ns(&state, from)?;
        let family = spec.family.unwrap_or_else(|| first_family(&state));
        let addr = std::net::SocketAddr::new(self.target_ip(&state, &ns, to, family)?, port);
        let handles: Vec<_> = (1..=count)
            .map(|connection| {
                let ns = ns.clone();
                std::thread::spawn(move || {
                    probe::hold(&ns, addr, hold, timeout).map(|mut r| {
                        r.connection = connection;
                        r
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let mut r = h
                    .join()
                    .map_err(|_| LabError::ThreadPanicked { what: "probe" })??;
                r.from = from.to_string();
                r.to = to.to_string();
                Ok(r)
            })
            .collect()
    }

    /// Every Pod (not hostNetwork; only the `namespaces` given, or all, the cluster DNS's
    /// included) to every Pod on `port`/`protocol`, each probe waiting at most `timeout`: the
    /// truth table of what the kernel lets through, as [`ProbeMatrix::allowed`] reduces
    /// [`Lab::probe_matrix`]. Pods are probed at their address of `family` (`None`: the
    /// cluster's first); Pods without one are left out.
    pub fn matrix(
        &self,
        port: u16,
        protocol: Protocol,
        namespaces: &[String],
        timeout: Duration,
        family: Option<IpFamily>,
    ) -> Result<Matrix, LabError> {
        let probe_protocol = match protocol {
            Protocol::Tcp => ProbeProtocol::Tcp,
            Protocol::Udp => ProbeProtocol::Udp,
            Protocol::Sctp => ProbeProtocol::Sctp,
        };
        let spec = ProbeSpec {
            port: Some(port),
            protocol: probe_protocol,
            count: 1,
            timeout,
            family,
        };
        self.probe_matrix(&spec, namespaces)?
            .allowed()
            .ok_or_else(|| LabError::ProtocolUnsupported {
                protocol: protocol.to_string(),
            })
    }

    /// Every Pod (not hostNetwork; only the `namespaces` given, or all, the cluster DNS's
    /// included) to every Pod, in parallel, as `spec` says (its `count` is ignored), at their
    /// addresses of `spec.family` (`None`: the cluster's first): each pair's outcome. A pair that got no answer is probed again after the burst before it is
    /// reported dropped. Fails when no Pod matches.
    pub fn probe_matrix(
        &self,
        spec: &ProbeSpec,
        namespaces: &[String],
    ) -> Result<ProbeMatrix, LabError> {
        probe::check_protocol(spec.protocol)?;
        let state = self.state()?;
        let family = spec.family.unwrap_or_else(|| first_family(&state));
        let pods: Vec<(PodRef, String, IpAddr)> = state
            .pods()
            .filter(|p| !p.host_network && p.node.is_some())
            // The cluster DNS Pods are in: `policy matrix -f` resolves the same add-ons, so the
            // two diff cleanly.
            .filter(|p| {
                namespaces.is_empty() || namespaces.iter().any(|n| n == p.key.namespace.as_str())
            })
            .filter_map(|p| {
                let ip = p.ips.iter().copied().find(|ip| family.contains(*ip))?;
                Some((p.key.clone(), self.names.pod_ns(&p.key), ip))
            })
            .collect();
        if pods.is_empty() {
            return Err(LabError::NoPodsToProbe {
                lab: self.names.lab().to_owned(),
                namespaces: namespaces.to_vec(),
            });
        }
        let spec = ProbeSpec {
            port: match spec.protocol {
                ProbeProtocol::Icmp => None,
                _ => spec.port,
            },
            ..*spec
        };
        crate::matrix::run(pods, &spec)
    }

    /// Removes every namespace, process and file of the lab.
    pub fn down(mut self) -> Result<(), LabError> {
        self.owned = false;
        let result = down_store(&self.store);
        reap(&self.agents);
        result
    }

    fn records(&self) -> Result<(LabRecord, ClusterRecord), LabError> {
        let not_found = || LabError::NotFound {
            name: self.names.lab().to_owned(),
            dir: self.store.dir().to_owned(),
        };
        let lab = self.store.read_lab()?.ok_or_else(not_found)?;
        let cluster = self.store.read_cluster()?.ok_or_else(not_found)?;
        Ok((lab, cluster))
    }

    fn desired_map(&self) -> Result<BTreeMap<ObjectId, Object>, LabError> {
        let (_, cluster) = self.records()?;
        Ok(objects::decode_all(cluster.desired)?
            .into_iter()
            .map(|o| (o.id(), o))
            .collect())
    }

    /// Resolves and publishes a new generation, then waits for every Node.
    fn commit(
        &self,
        desired: BTreeMap<ObjectId, Object>,
        changes: &[Change],
    ) -> Result<(), LabError> {
        let (record, cluster) = self.records()?;
        if changes
            .iter()
            .all(|c| matches!(c.action, Action::Unchanged | Action::NotFound))
        {
            return Ok(());
        }
        let desired: Vec<Object> = desired.into_values().collect();
        let generation = publish(
            &self.store,
            &self.names,
            &self.resolver,
            (&record, &cluster),
            desired,
        )?;
        self.wait_converged(generation)
    }

    /// Starts the agent of `node`, records its PID in `record` (written to the state), and
    /// only then lets it run.
    fn start_agent(&self, record: &mut LabRecord, node: &NodeName) -> Result<(), LabError> {
        let mut child = self.spawn_agent(&record.program, node)?;
        record.agents.insert(node.clone(), child.id());
        let go = child.stdin.take();
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        self.store.write_lab(record)?;
        // Only now that its PID is recorded may the agent start (see helper::AFTER_GO).
        if let Some(mut go) = go {
            go.write_all(b"g").map_err(|source| LabError::SpawnFailed {
                what: format!("the agent of node {node}"),
                source,
            })?;
        }
        Ok(())
    }

    /// Starts the API server, records its PID, lets it run, and waits until it has written
    /// its kubeconfig (it does once it listens, in the host's namespace and in the lab's
    /// network).
    fn start_api_server(&self, record: &mut LabRecord) -> Result<(), LabError> {
        let log = self.store.api_log_path();
        let mut child =
            self.spawn_helper(&record.program, &["apiserver"], &log, "the API server")?;
        let pid = child.id();
        record.apiserver = Some(pid);
        let go = child.stdin.take();
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        self.store.write_lab(record)?;
        if let Some(mut go) = go {
            go.write_all(b"g").map_err(|source| LabError::SpawnFailed {
                what: "the API server".into(),
                source,
            })?;
        }
        let deadline = Instant::now() + self.converge_timeout;
        let kubeconfig = self.store.kubeconfig_path();
        while !kubeconfig.exists() {
            let why = if !process::is_alive(pid) {
                "it exited"
            } else if Instant::now() > deadline {
                "no kubeconfig in time"
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            return Err(LabError::ApiNotReady {
                detail: format!("{why} (log: {})", log.display()),
            });
        }
        Ok(())
    }

    /// Stops the agent `pid` of `node` as `stop` says if it is still the lab's, and waits
    /// until it is gone (reaping it if this value started it).
    fn stop_agent(&self, node: &NodeName, pid: u32, stop: AgentStop) -> Result<(), LabError> {
        let marker = self.store.marker();
        let signal = match stop {
            AgentStop::Terminate => process::Signal::SIGTERM,
            AgentStop::Kill => process::Signal::SIGKILL,
        };
        process::signal_if_ours(pid, &marker, signal).map_err(LabError::kernel(format!(
            "stopping the agent of node {node}"
        )))?;
        // A recorded PID that is gone, or now another process's, is no agent of ours.
        let running = || process::is_alive(pid) && process::is_ours(pid, &marker);
        let deadline = Instant::now() + Duration::from_secs(5);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if running() {
            return Err(LabError::AgentNotStopped {
                node: node.clone(),
                pid,
            });
        }
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = agents.iter().position(|c| c.id() == pid) {
            let mut child = agents.swap_remove(i);
            // Already dead: this only collects its exit status.
            let _ = child.wait();
        }
        Ok(())
    }

    fn spawn_agent(&self, program: &[String], node: &NodeName) -> Result<Child, LabError> {
        let log = self.store.log_path(node);
        let what = format!("the agent of node {node}");
        self.spawn_helper(program, &["agent", node.as_str()], &log, &what)
    }

    /// Runs the helper `program` with `args` (the state directory goes after the first, and
    /// the go-ahead flag last), its stderr appended to `log`.
    fn spawn_helper(
        &self,
        program: &[String],
        args: &[&str],
        log_path: &Path,
        what: &str,
    ) -> Result<Child, LabError> {
        let (exe, leading) = program
            .split_first()
            .ok_or_else(|| LabError::BadHelperArgs {
                args: program.to_vec(),
                expected: "a helper program",
            })?;
        let (cmd, rest) = args.split_first().ok_or_else(|| LabError::BadHelperArgs {
            args: Vec::new(),
            expected: "a helper command",
        })?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(LabError::io(log_path))?;
        Command::new(exe)
            .args(leading)
            .arg(cmd)
            .arg(self.store.marker())
            .args(rest)
            .arg(crate::helper::AFTER_GO)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for `lab up` does not stop the helpers.
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::SpawnFailed {
                what: what.to_owned(),
                source,
            })
    }

    /// Whether every Node's agent has programmed the cluster's latest published generation
    /// (what `apply` and `delete` wait for; a write through the lab's API publishes its
    /// generation before it is acknowledged).
    pub fn converged(&self) -> Result<bool, LabError> {
        let (record, cluster) = self.records()?;
        let nodes: Vec<NodeName> = record.nodes.keys().cloned().collect();
        Ok(node_records(&self.store, &nodes)?
            .iter()
            .all(|(_, r)| r.converged >= cluster.generation))
    }

    /// Waits until every Node's agent has converged on `generation`.
    fn wait_converged(&self, generation: u64) -> Result<(), LabError> {
        let (record, _) = self.records()?;
        let nodes: Vec<NodeName> = record.nodes.keys().cloned().collect();
        let deadline = Instant::now() + self.converge_timeout;
        loop {
            let records = node_records(&self.store, &nodes)?;
            let pending: Vec<_> = records
                .iter()
                .filter(|(_, r)| r.converged < generation)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let dead: Vec<&NodeName> = pending
                .iter()
                .map(|(n, _)| n)
                .filter(|n| {
                    record
                        .agents
                        .get(*n)
                        .is_none_or(|pid| !process::is_alive(*pid))
                })
                .collect();
            // An agent retries a failed pass every second; three failures in a row on this
            // generation are not a transient (a namespace still being torn down) but a fault.
            let failing = pending
                .iter()
                .any(|(_, r)| r.error_generation >= generation && r.error_count >= 3);
            if !dead.is_empty() || failing || Instant::now() > deadline {
                let detail = pending
                    .iter()
                    .map(|(n, r)| {
                        let why = if dead.contains(&n) {
                            "agent exited".to_owned()
                        } else {
                            r.error.clone().unwrap_or_else(|| "still working".into())
                        };
                        format!("{n}: {why} (log: {})", self.store.log_path(n).display())
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(LabError::NotConverged { generation, detail });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn place_ns(&self, state: &ClusterState, place: &Place) -> Result<String, LabError> {
        match place {
            Place::External => Ok(self.names.external_ns()),
            Place::Node(node) => {
                state
                    .node(node.as_str())
                    .ok_or_else(|| LabError::UnknownTarget {
                        what: "node",
                        name: node.to_string(),
                        lab: self.name().to_owned(),
                    })?;
                Ok(self.names.node_ns(node))
            }
            Place::Pod(key) => {
                let pod = state.pod(key).ok_or_else(|| LabError::UnknownTarget {
                    what: "pod",
                    name: key.to_string(),
                    lab: self.name().to_owned(),
                })?;
                match (&pod.node, pod.host_network) {
                    (Some(node), true) => Ok(self.names.node_ns(node)),
                    (Some(_), false) => Ok(self.names.pod_ns(key)),
                    (None, _) => Err(LabError::UnknownTarget {
                        what: "scheduled pod",
                        name: key.to_string(),
                        lab: self.name().to_owned(),
                    }),
                }
            }
        }
    }

    fn target_ip(
        &self,
        state: &ClusterState,
        from_ns: &str,
        target: &Target,
        family: IpFamily,
    ) -> Result<IpAddr, LabError> {
        let unknown = |what, name: String| LabError::UnknownTarget {
            what,
            name,
            lab: self.name().to_owned(),
        };
        let v6 = family == IpFamily::V6;
        let of_family = |ips: &[IpAddr]| ips.iter().copied().find(|ip| family.contains(*ip));
        let what = |v4: &'static str, v6_what: &'static str| if v6 { v6_what } else { v4 };
        match target {
            Target::Ip(ip) => Ok(*ip),
            Target::Name(name) => probe::resolve_name(from_ns, name, family),
            Target::Pod(key) => state
                .pod(key)
                .and_then(|p| of_family(&p.ips))
                .ok_or_else(|| {
                    unknown(
                        what("pod with an IPv4 address", "pod with an IPv6 address"),
                        key.to_string(),
                    )
                }),
            Target::Service(key) => state
                .service(key)
                .and_then(|s| of_family(&s.cluster_ips))
                .ok_or_else(|| {
                    unknown(
                        what(
                            "service with an IPv4 ClusterIP",
                            "service with an IPv6 ClusterIP",
                        ),
                        key.to_string(),
                    )
                }),
            Target::Node(node) => state
                .node(node.as_str())
                .and_then(|n| of_family(&n.internal_ips))
                .ok_or_else(|| {
                    unknown(what("node", "node with an IPv6 address"), node.to_string())
                }),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = down_store(&self.store) {
                tracing::error!(lab = self.names.lab(), error = %error_chain(&e), "removing the lab failed");
            }
            reap(&self.agents);
        }
    }
}

/// Resolves `desired` (with the published cluster as the previous state, for stable
/// addresses) and publishes the result as the next generation, without waiting for the Nodes;
/// returns that generation. The caller holds the change lock. Refused, with nothing written,
/// if the control plane refuses the objects or they would change the Nodes.
pub(crate) fn publish(
    store: &Store,
    names: &Names,
    resolver: &Resolver,
    (record, cluster): (&LabRecord, &ClusterRecord),
    desired: Vec<Object>,
) -> Result<u64, LabError> {
    let config = ClusterConfig::from(&record.config);
    let previous = ClusterState::new(
        objects::decode_all(cluster.resolved.clone())?,
        config.clone(),
    )
    .map_err(|source| LabError::InvalidState {
        source: Box::new(source),
    })?;
    let state = resolver(desired.clone(), &config, Some(&previous))
        .map_err(|source| LabError::ResolveFailed { source })?;
    let nodes = topology::node_addresses(&state)?;
    if nodes != record.nodes {
        return Err(LabError::NodesChanged {
            before: record.nodes.keys().cloned().collect(),
            after: nodes.keys().cloned().collect(),
        });
    }
    let generation = cluster.generation + 1;
    let resolved: Vec<Object> = state.objects().cloned().collect();
    store.write_cluster(&ClusterRecord {
        generation,
        desired: objects::encode_all(&desired)?,
        resolved: objects::encode_all(&resolved)?,
    })?;
    topology::sync_external_routes(names, &state, &nodes)?;
    Ok(generation)
}

/// One lab on this machine, as [`list`] finds it in its state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSummary {
    /// The lab's name.
    pub name: String,
    /// How many Nodes it has.
    pub nodes: usize,
    /// How many of their agents are running.
    pub agents_running: usize,
    /// The service proxy back end its agents run.
    pub mode: String,
    /// When it was built; `None` if its record does not say.
    pub created: Option<SystemTime>,
    /// Its state directory.
    pub state_dir: PathBuf,
}

/// The labs whose state is under `state_root`, by name; none if the directory does not exist.
pub fn list(state_root: &Path) -> Result<Vec<LabSummary>, LabError> {
    Ok(Store::all(state_root)?
        .into_iter()
        .map(|(store, record)| {
            let marker = store.marker();
            LabSummary {
                nodes: record.nodes.len(),
                agents_running: record
                    .agents
                    .values()
                    .filter(|pid| process::is_alive(**pid) && process::is_ours(**pid, &marker))
                    .count(),
                mode: record.mode,
                created: record
                    .created
                    .map(|secs| UNIX_EPOCH + Duration::from_secs(secs)),
                state_dir: store.dir().to_owned(),
                name: record.name,
            }
        })
        .collect())
}

/// The family of the cluster's first service range: what a Service without `ipFamilies` gets.
fn first_family(state: &ClusterState) -> IpFamily {
    state
        .config()
        .service_cidrs
        .first()
        .map_or(IpFamily::V4, |c| IpFamily::of(c.addr()))
}

/// Removes the lab `name` (state under `state_root`): kills its agents and echo servers by
/// recorded PID, deletes every namespace it recorded and its files. Works from the state
/// directory alone, so it also cleans up after a crash. Returns whether there was a lab.
pub fn down(name: &str, state_root: &Path) -> Result<bool, LabError> {
    Names::new(name)?;
    let store = Store::new(state_root, name);
    if !store.exists() {
        return Ok(false);
    }
    down_store(&store)?;
    Ok(true)
}

fn down_store(store: &Store) -> Result<(), LabError> {
    let marker = store.marker();
    let lab = store.read_lab()?.unwrap_or_default();
    // The API server and the agents first, so that nothing changes while we tear down.
    if let Some(pid) = lab.apiserver {
        process::kill_if_ours(pid, &marker).map_err(LabError::kernel("stopping the API server"))?;
    }
    for pid in lab.agents.values() {
        process::kill_if_ours(*pid, &marker).map_err(LabError::kernel("stopping an agent"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .agents
        .values()
        .chain(&lab.apiserver)
        .any(|pid| process::is_alive(*pid) && process::is_ours(*pid, &marker))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut recorded = Vec::new();
    for node in store.all_node_records()? {
        for pod in node.pods.values() {
            if let Some(pid) = pod.pid {
                process::kill_if_ours(pid, &marker)
                    .map_err(LabError::kernel("stopping an echo server"))?;
            }
            if let Some(ns) = &pod.netns {
                topology::remove_pod(ns)?;
                recorded.push(ns.clone());
            }
        }
    }
    for ns in lab.namespaces.iter().rev() {
        netns::delete(ns).map_err(LabError::kernel(format!("removing namespace {ns}")))?;
    }
    recorded.extend(lab.namespaces.iter().cloned());
    remove_stragglers(&recorded)?;
    store.remove()
}

/// A process killed while its `ip netns add` child was running leaves that child behind, and
/// it may create its (recorded) namespace after we deleted the recorded ones. Watch them for a
/// short while and delete any that appear, until they have stayed absent for a few checks.
fn remove_stragglers(recorded: &[String]) -> Result<(), LabError> {
    const CHECK: Duration = Duration::from_millis(25);
    const QUIET_CHECKS: u32 = 8;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut quiet = 0;
    while quiet < QUIET_CHECKS && Instant::now() < deadline {
        std::thread::sleep(CHECK);
        quiet += 1;
        for ns in recorded.iter().filter(|ns| netns::exists(ns)) {
            quiet = 0;
            netns::delete(ns).map_err(LabError::kernel(format!("removing namespace {ns}")))?;
        }
    }
    Ok(())
}

fn reap(children: &Mutex<Vec<Child>>) {
    let mut children = children.lock().unwrap_or_else(PoisonError::into_inner);
    for mut child in children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
}
