//! The lab's state directory: what exists (namespaces, processes) and what is desired, so that
//! `lab down` can remove everything even after a crash, and agents read the cluster from it.
//!
//! Layout of `<root>/<lab>/`:
//! - `lab.json` ([`LabRecord`]): the lab's own namespaces, agent PIDs, node addresses. Written
//!   ahead: a namespace is recorded before it is created.
//! - `cluster.json` ([`ClusterRecord`]): the desired and the resolved objects, with a
//!   generation number; the lab's embedded "API server".
//! - `nodes/<node>.json` ([`NodeRecord`]): written only by that Node's agent: its pods'
//!   namespaces and echo-server PIDs, and the last generation it converged on.
//! - `logs/<node>.log`: the agent's and its echo servers' stderr; `logs/apiserver.log` the
//!   API server's.
//! - `api/`: the API server's store (`netd_apiserver::FileStorage`: the objects as served,
//!   with resourceVersions and uids); `kubeconfig`: written by the API server once it listens
//!   (its `127.0.0.1` address), after `kubeconfig-in-lab` (its address on the underlay, for
//!   clients inside the lab's network).
//!
//! Every file is replaced atomically (write to a temporary file, then rename), so a reader
//! never sees half a file.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netd_model::{ClusterConfig, NodeName, Protocol};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LabError;

/// The name of the cluster record in the state directory.
const CLUSTER_FILE: &str = "cluster.json";

/// The default root of lab state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/kube-netd/labs";

/// The service proxy back end a lab runs unless told otherwise.
pub const DEFAULT_MODE: &str = "iptables";

/// One lab's state directory.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// What the lab built outside the Nodes' agents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LabRecord {
    pub name: String,
    /// The command (program and leading arguments) that runs lab helpers.
    pub program: Vec<String>,
    pub config: ConfigRecord,
    /// Namespaces the lab created (or is about to): underlay, external, Nodes.
    pub namespaces: Vec<String>,
    /// Agent PIDs by Node.
    pub agents: BTreeMap<NodeName, u32>,
    /// The API server's PID, once started (recorded before it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<u32>,
    /// Each Node's underlay IP and podCIDR.
    pub nodes: BTreeMap<NodeName, NodeAddress>,
    /// The external namespace's underlay IP.
    pub external_ip: Option<IpAddr>,
    /// The external namespace's IPv6 underlay IP, on a lab with an IPv6 node network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ip6: Option<IpAddr>,
    /// The API server's address inside the lab's network (on the underlay switch's bridge,
    /// port [`crate::api::IN_LAB_PORT`]), on a lab with an API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ip: Option<IpAddr>,
    /// Its IPv6 address beside it, on a lab with an API server and an IPv6 node network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ip6: Option<IpAddr>,
    /// The service proxy back end the agents run, as `lab up --mode` chose it.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Whether Nodes route `127.0.0.1` to nodePorts (`route_localnet=1`), as
    /// [`crate::LabOptions::localhost_nodeports`] asked.
    #[serde(default)]
    pub localhost_nodeports: bool,
    /// When the lab was built, in seconds since the Unix epoch; `None` in a record written
    /// before this was kept.
    #[serde(default)]
    pub created: Option<u64>,
}

fn default_mode() -> String {
    DEFAULT_MODE.to_owned()
}

/// A Node's addresses in the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeAddress {
    /// The IPv4 underlay address (every lab has one).
    pub ip: IpAddr,
    /// The first podCIDR: of the cluster's first IP family.
    pub pod_cidr: IpNet,
    /// The IPv6 underlay address, on a lab with an IPv6 node network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// The podCIDR of the other family, on a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_pod_cidr: Option<IpNet>,
}

impl NodeAddress {
    /// The podCIDRs, first family first.
    pub fn pod_cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        std::iter::once(self.pod_cidr).chain(self.second_pod_cidr)
    }

    /// The podCIDR of `ip`'s family.
    pub fn pod_cidr_for(&self, ip: IpAddr) -> Option<IpNet> {
        self.pod_cidrs()
            .find(|c| c.addr().is_ipv4() == ip.is_ipv4())
    }

    /// The underlay address of `net`'s family: what other Nodes route `net` via.
    pub fn underlay_for(&self, net: IpNet) -> Option<IpAddr> {
        if net.addr().is_ipv4() {
            Some(self.ip)
        } else {
            self.ip6
        }
    }
}

/// The desired and resolved objects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ClusterRecord {
    pub generation: u64,
    pub desired: Vec<Value>,
    pub resolved: Vec<Value>,
}

/// What one Node's agent has built.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// Pods by `ns/name`.
    pub pods: BTreeMap<String, PodRecord>,
    /// The last generation fully programmed.
    pub converged: u64,
    /// The last reconcile error, if the last attempt failed.
    pub error: Option<String>,
    /// The generation the last failed attempts were for.
    #[serde(default)]
    pub error_generation: u64,
    /// How many attempts in a row failed on that generation.
    #[serde(default)]
    pub error_count: u32,
}

/// One Pod as its agent built it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodRecord {
    /// Its own namespace; `None` for a hostNetwork Pod (it lives in the Node's).
    pub netns: Option<String>,
    pub ip: Option<IpAddr>,
    /// Its address of the other family, on a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_ip: Option<IpAddr>,
    pub ports: Vec<(Protocol, u16)>,
    /// Whether its namespace was completely built (it is recorded before it is built).
    #[serde(default)]
    pub built: bool,
    /// The echo server's PID, once started.
    pub pid: Option<u32>,
}

/// [`ClusterConfig`] as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ConfigRecord {
    pub cluster_cidrs: Vec<IpNet>,
    pub node_cidr_prefix_v4: u8,
    pub node_cidr_prefix_v6: u8,
    pub service_cidrs: Vec<IpNet>,
    pub node_port_first: u16,
    pub node_port_last: u16,
    pub node_network: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_network_v6: Option<IpNet>,
    pub load_balancer_pool: Option<IpNet>,
    pub default_node_count: usize,
    pub dns_zone: String,
    pub dns_service_ip: Option<IpAddr>,
}

impl From<&ClusterConfig> for ConfigRecord {
    fn from(c: &ClusterConfig) -> Self {
        ConfigRecord {
            cluster_cidrs: c.cluster_cidrs.clone(),
            node_cidr_prefix_v4: c.node_cidr_prefix_v4,
            node_cidr_prefix_v6: c.node_cidr_prefix_v6,
            service_cidrs: c.service_cidrs.clone(),
            node_port_first: *c.node_port_range.start(),
            node_port_last: *c.node_port_range.end(),
            node_network: Some(c.node_network),
            node_network_v6: c.node_network_v6,
            load_balancer_pool: Some(c.load_balancer_pool),
            default_node_count: c.default_node_count,
            dns_zone: c.dns_zone.clone(),
            dns_service_ip: Some(c.dns_service_ip),
        }
    }
}

impl From<&ConfigRecord> for ClusterConfig {
    fn from(r: &ConfigRecord) -> Self {
        let d = ClusterConfig::default();
        ClusterConfig {
            cluster_cidrs: r.cluster_cidrs.clone(),
            node_cidr_prefix_v4: r.node_cidr_prefix_v4,
            node_cidr_prefix_v6: r.node_cidr_prefix_v6,
            service_cidrs: r.service_cidrs.clone(),
            node_port_range: r.node_port_first..=r.node_port_last,
            node_network: r.node_network.unwrap_or(d.node_network),
            node_network_v6: r.node_network_v6,
            load_balancer_pool: r.load_balancer_pool.unwrap_or(d.load_balancer_pool),
            default_node_count: r.default_node_count,
            dns_zone: r.dns_zone.clone(),
            dns_service_ip: r.dns_service_ip.unwrap_or(d.dns_service_ip),
        }
    }
}

impl Store {
    pub fn new(root: &Path, lab: &str) -> Store {
        Store {
            dir: root.join(lab),
        }
    }

    pub fn at(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The marker every helper process carries in its arguments: the state directory.
    pub fn marker(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    pub fn create(&self) -> Result<(), LabError> {
        for d in [
            self.dir.clone(),
            self.dir.join("nodes"),
            self.dir.join("logs"),
        ] {
            std::fs::create_dir_all(&d).map_err(LabError::io(d))?;
        }
        Ok(())
    }

    pub fn remove(&self) -> Result<(), LabError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(&self.dir)(e)),
            _ => Ok(()),
        }
    }

    /// The labs under `root`: every directory with a `lab.json`, by name. A root that does
    /// not exist holds none.
    pub fn all(root: &Path) -> Result<Vec<(Store, LabRecord)>, LabError> {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LabError::io(root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let store = Store::at(entry.map_err(LabError::io(root))?.path());
            if let Some(record) = store.read_lab()? {
                out.push((store, record));
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    pub fn lab_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    pub fn cluster_path(&self) -> PathBuf {
        self.dir.join(CLUSTER_FILE)
    }

    pub fn node_path(&self, node: &NodeName) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.json"))
    }

    pub fn log_path(&self, node: &NodeName) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.log"))
    }

    /// The API server's stderr.
    pub fn api_log_path(&self) -> PathBuf {
        self.dir.join("logs").join("apiserver.log")
    }

    /// The API server's own store: every object with its resourceVersion and uid.
    pub fn api_dir(&self) -> PathBuf {
        self.dir.join("api")
    }

    /// The kubeconfig the API server writes once it listens.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The kubeconfig for clients inside the lab's network (the API server's address on the
    /// underlay), written by the API server before [`Store::kubeconfig_path`].
    pub fn in_lab_kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig-in-lab")
    }

    pub fn read_lab(&self) -> Result<Option<LabRecord>, LabError> {
        read_json(&self.lab_path())
    }

    pub fn write_lab(&self, record: &LabRecord) -> Result<(), LabError> {
        write_json(&self.lab_path(), record)
    }

    pub fn read_cluster(&self) -> Result<Option<ClusterRecord>, LabError> {
        read_json(&self.cluster_path())
    }

    pub fn write_cluster(&self, record: &ClusterRecord) -> Result<(), LabError> {
        write_json(&self.cluster_path(), record)
    }

    pub fn read_node(&self, node: &NodeName) -> Result<NodeRecord, LabError> {
        Ok(read_json(&self.node_path(node))?.unwrap_or_default())
    }

    pub fn write_node(&self, node: &NodeName, record: &NodeRecord) -> Result<(), LabError> {
        write_json(&self.node_path(node), record)
    }

    /// Every Node record present, including those of Nodes `lab.json` does not name (a crash
    /// between writing one and the other).
    pub fn all_node_records(&self) -> Result<Vec<NodeRecord>, LabError> {
        let dir = self.dir.join("nodes");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LabError::io(dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(LabError::io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.extend(read_json::<NodeRecord>(&path)?);
            }
        }
        Ok(out)
    }
}

/// Held while a change (apply or delete) reads, resolves and publishes a generation, so two
/// changes do not overwrite each other. A lock file naming a process that is gone is stale.
#[derive(Debug)]
pub(crate) struct ChangeLock {
    path: PathBuf,
}

impl Store {
    /// Takes the change lock, waiting for another change to finish.
    pub fn lock_changes(&self) -> Result<ChangeLock, LabError> {
        let path = self.dir.join("change.lock");
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write as _;
                    write!(f, "{}", std::process::id()).map_err(LabError::io(&path))?;
                    return Ok(ChangeLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let alive = holder
                        .trim()
                        .parse()
                        .is_ok_and(netd_kernel::process::is_alive);
                    if !alive && !holder.is_empty() {
                        let _ = std::fs::remove_file(&path);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(LabError::io(path)(e)),
            }
        }
    }
}

impl Drop for ChangeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Wakes a reader of `cluster.json` as soon as a new one is published, rather than at its
/// next poll: an inotify watch on the state directory, where [`write_json`]'s rename into
/// place is an `IN_MOVED_TO` of that name.
pub(crate) struct ClusterWatch {
    inotify: Inotify,
}

impl ClusterWatch {
    pub(crate) fn new(store: &Store) -> Result<ClusterWatch, LabError> {
        let failed = |e: nix::Error| LabError::io(&store.dir)(e.into());
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(failed)?;
        inotify
            .add_watch(&store.dir, AddWatchFlags::IN_MOVED_TO)
            .map_err(failed)?;
        Ok(ClusterWatch { inotify })
    }

    /// Waits until `cluster.json` is replaced or `timeout` has passed, and says which.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let published = self.inotify.read_events().is_ok_and(|events| {
                events
                    .iter()
                    .any(|e| e.name.as_deref() == Some(OsStr::new(CLUSTER_FILE)))
            });
            let left = deadline.saturating_duration_since(Instant::now());
            if published || left.is_zero() {
                return published;
            }
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            let left = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            // Interrupted or failed: the loop reads (nothing) and waits out the rest.
            let _ = poll(&mut fds, left);
        }
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LabError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LabError::io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LabError::StateCorrupt {
            path: path.to_owned(),
            source,
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LabError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| LabError::StateCorrupt {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(LabError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(LabError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_model::IpFamilies;

    #[test]
    fn the_ipv6_node_network_is_stored_and_older_records_read_without_it() {
        let config = ClusterConfig::for_families(IpFamilies::Dual);
        let text = serde_json::to_string(&ConfigRecord::from(&config)).expect("json");
        let back: ConfigRecord = serde_json::from_str(&text).expect("record");
        assert_eq!(ClusterConfig::from(&back), config);

        let v4 = ClusterConfig::default();
        // A record written before IPv6 labs is one without the field.
        let old = serde_json::to_value(ConfigRecord::from(&v4)).expect("json");
        assert!(
            old.get("node_network_v6").is_none(),
            "not written when absent"
        );
        let back: ConfigRecord = serde_json::from_value(old).expect("record");
        assert_eq!(ClusterConfig::from(&back), v4);
    }
}
