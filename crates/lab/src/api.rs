//! The lab's Kubernetes API: a [`netd_apiserver`] server over the lab's state directory, run
//! as the lab's `apiserver` helper process. It listens on `127.0.0.1` of this machine, for
//! kubectl (`kubeconfig`), and inside the lab's network on the underlay switch's bridge,
//! `<api_ip>:6443` as a control-plane node's address would be, for clients in the lab's
//! namespaces (`kubeconfig-in-lab`), and on `[<api_ip6>]:6443` beside it in a lab with an IPv6
//! node network. Those sockets are bound from a thread inside the underlay namespace: nothing
//! is added to the host's network but the `127.0.0.1` listener. The `default/kubernetes`
//! Service leads Pods there ([`with_kubernetes_service`]), as on a cluster.
//!
//! `cluster.json` stays the lab's source of truth. The server keeps its own store (`api/`,
//! resourceVersions and uids), and the two meet in [`LabStorage`]'s commit hook:
//!
//! - A write to an object the user owns (anything in the desired set, and anything new)
//!   changes the desired set, which is resolved through the control plane and published as
//!   the next generation before the write is acknowledged. The agents program that generation
//!   as they program `lab apply`'s. If the control plane refuses the result, the write is
//!   refused (422) and nothing changes.
//! - A write to an object the control plane derived (a Deployment's Pods, EndpointSlices,
//!   generated Nodes, the cluster DNS add-on when it was not applied) is stored, and then
//!   undone: the control plane owns these objects, as a ReplicaSet owns its Pods and the
//!   EndpointSlice controller owns its slices. A deleted Pod of a Deployment comes back with
//!   the same name and address (a real ReplicaSet would pick a new name).
//!
//! A syncer thread keeps the served objects equal to the resolved ones: after every
//! generation (published here or by `lab apply`/`lab delete`) and every write, it creates,
//! updates and deletes objects in the registry, so reads see Pods with their nodes and IPs,
//! Services with their ClusterIPs and the EndpointSlices, as on a cluster.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use netd_apiserver::store::{DEFAULT_HISTORY, object_id};
use netd_apiserver::{
    ApiError, ApiServer, Commit, EventType, FileStorage, Registry, ServeError, ServeOptions,
    Storage, StorageError, Stored, WriteOptions, write_kubeconfig,
};
use netd_model::{ClusterConfig, Kind, Object, ObjectId};
use serde_json::Value;

use crate::agent::bind_in;
use crate::lab::{Resolver, publish};
use crate::names::Names;
use crate::store::{ClusterRecord, ClusterWatch, Store};
use crate::{LabError, objects};
use netd_model::error_chain;

/// Metadata the API server owns: left out of the desired objects, and out of comparisons
/// between served and resolved objects.
const SERVER_FIELDS: [&str; 5] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
];

/// The port the API server listens on inside the lab's network (kube-apiserver's
/// `--secure-port` default; the lab's API speaks plain HTTP on it).
pub const IN_LAB_PORT: u16 = 6443;

/// How long the syncer waits for a write or a publication before it looks anyway.
const POLL: Duration = Duration::from_millis(100);

thread_local! {
    /// Set while the syncer writes to the registry on this thread: the generation it is
    /// bringing the registry to. The registry runs the commit hook on the writer's thread.
    static SYNCING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The [`Storage`] of the lab's API server: the server's own [`FileStorage`] for durability,
/// and, for each write a user makes, the lab's control plane (see the module docs).
pub(crate) struct LabStorage {
    store: Store,
    names: Names,
    resolver: Resolver,
    files: FileStorage,
    writes: Arc<Writes>,
}

/// Counts the writes users made and the generations `lab apply` and `lab delete` published,
/// so the syncer wakes up after each.
#[derive(Default)]
struct Writes {
    count: Mutex<u64>,
    changed: Condvar,
}

impl Writes {
    fn bump(&self) {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the count to move past `seen`; returns the count.
    fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, _) = self
            .changed
            .wait_timeout_while(count, timeout, |c| *c == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *count
    }
}

impl std::fmt::Debug for LabStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabStorage")
            .field("state", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl Storage for LabStorage {
    fn load(&self) -> Result<Stored, StorageError> {
        self.files.load()
    }

    fn commit(&self, commit: Commit<'_>) -> Result<(), StorageError> {
        if let Some(generation) = SYNCING.get() {
            // The syncer's write: only if the lab has not moved on since it read the cluster.
            let current = self.store.read_cluster().map_err(refused)?;
            if current.is_none_or(|c| c.generation != generation) {
                return Err(StorageError::Refused {
                    reason: format!("the lab moved on from generation {generation}"),
                });
            }
            return self.files.commit(commit);
        }
        let _lock = self.store.lock_changes().map_err(refused)?;
        let (record, cluster) = match (self.store.read_lab(), self.store.read_cluster()) {
            (Ok(Some(record)), Ok(Some(cluster))) => (record, cluster),
            (Err(e), _) | (_, Err(e)) => return Err(refused(e)),
            _ => {
                return Err(StorageError::Refused {
                    reason: format!("the lab's state in {} is gone", self.store.dir().display()),
                });
            }
        };
        let mut desired: BTreeMap<ObjectId, Object> = objects::decode_all(cluster.desired.clone())
            .map_err(refused)?
            .into_iter()
            .map(|o| (o.id(), o))
            .collect();
        let id = &commit.event.id;
        let derived = !desired.contains_key(id)
            && cluster
                .resolved
                .iter()
                .any(|v| object_id(v).as_ref() == Some(id));
        if derived {
            self.files.commit(commit)?;
            self.writes.bump();
            return Ok(());
        }
        match commit.event.kind {
            EventType::Deleted => {
                desired.remove(id);
            }
            EventType::Added | EventType::Modified => {
                desired.insert(id.clone(), as_desired(&commit.event.object)?);
            }
        }
        let desired: Vec<Object> = desired.into_values().collect();
        // Resolve first (it may refuse), then make the write durable, then publish it.
        publish(
            &self.store,
            &self.names,
            &self.resolver,
            (&record, &cluster),
            desired,
        )
        .map_err(refused)?;
        self.files.commit(commit)?;
        self.writes.bump();
        Ok(())
    }
}

/// Runs the lab's API server for the lab in `dir` until that directory is removed: loads the
/// server's store, brings it in line with the published cluster, listens on the lab's
/// [`IN_LAB_PORT`] in its underlay namespace (if the lab recorded an address for it) and on a
/// free port of `127.0.0.1`, and only then writes the kubeconfigs: the in-lab one
/// ([`Store::in_lab_kubeconfig_path`]) first, then [`Store::kubeconfig_path`], which `lab up`
/// waits for.
pub(crate) fn serve(dir: &Path, resolver: Resolver) -> Result<(), LabError> {
    let store = Store::at(dir.to_owned());
    let record = store.read_lab()?.ok_or_else(|| LabError::NotFound {
        name: dir.display().to_string(),
        dir: dir.to_owned(),
    })?;
    let names = Names::new(&record.name)?;
    let config = ClusterConfig::from(&record.config);
    let start =
        |e: Box<dyn std::error::Error + Send + Sync>| LabError::ApiStartFailed { source: e };
    let writes = Arc::new(Writes::default());
    let storage = LabStorage {
        store: store.clone(),
        names: names.clone(),
        resolver,
        files: FileStorage::new(store.api_dir()).map_err(|e| start(e.into()))?,
        writes: writes.clone(),
    };
    let registry = Arc::new(
        Registry::new(Box::new(storage), config, DEFAULT_HISTORY).map_err(|e| start(e.into()))?,
    );
    let mut synced = sync_until_done(&registry, &store, 0)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| start(e.into()))?;
    let mut in_lab = Vec::new();
    for ip in record.api_ip.into_iter().chain(record.api_ip6) {
        let addr = SocketAddr::new(ip, IN_LAB_PORT);
        let listener = bind_in(&names.underlay_ns(), addr)
            .map_err(|source| start(ServeError::BindFailed { addr, source }.into()))?;
        let server = runtime.block_on(async {
            ApiServer::start_on(registry.clone(), listener, ServeOptions::default())
        });
        in_lab.push(server.map_err(|e| start(e.into()))?);
    }
    if let Some(server) = in_lab.first() {
        write_kubeconfig(&store.in_lab_kubeconfig_path(), &record.name, &server.url())
            .map_err(|e| start(e.into()))?;
    }
    let server = runtime.block_on(async {
        ApiServer::start(registry.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    });
    let server = server.map_err(|e| start(e.into()))?;
    write_kubeconfig(&store.kubeconfig_path(), &record.name, &server.url())
        .map_err(|e| start(e.into()))?;
    // A generation `lab apply` or `lab delete` published wakes the syncer at once, as a
    // write through the API does.
    let published = ClusterWatch::new(&store)?;
    let watcher = {
        let (store, writes) = (store.clone(), writes.clone());
        std::thread::spawn(move || {
            while store.exists() {
                if published.wait(POLL) {
                    writes.bump();
                }
            }
        })
    };
    let mut seen = 0;
    while store.exists() {
        seen = writes.wait_past(seen, POLL);
        let generation = store.read_cluster().ok().flatten().map(|c| c.generation);
        if generation.is_some_and(|g| g != synced.0) || seen != synced.1 {
            match sync_until_done(&registry, &store, seen) {
                Ok(done) => synced = done,
                Err(e) => tracing::warn!(error = %error_chain(&e), "syncing the API server failed"),
            }
        }
    }
    // It ends with the state directory, as this loop did.
    let _ = watcher.join();
    runtime.block_on(async {
        server.shutdown().await;
        for server in in_lab {
            server.shutdown().await;
        }
    });
    Ok(())
}

/// The Service that leads to the API server, as kube-apiserver keeps it in every cluster:
/// `default/kubernetes`, on the address the model reserves for it (the first of the
/// cluster's first service range, [`ClusterConfig::kubernetes_service_ip`]), port 443
/// (`https`, though the lab's API speaks plain HTTP) to [`IN_LAB_PORT`], and its
/// EndpointSlice holding the API server's in-lab address of that family (`api_ip`, or
/// `api_ip6` on a lab whose first family is IPv6). Added to `desired` unless it names a
/// Service `default/kubernetes` already, or the lab has no address of that family.
pub(crate) fn with_kubernetes_service(
    mut desired: Vec<Object>,
    config: &ClusterConfig,
    api_ip: IpAddr,
    api_ip6: Option<IpAddr>,
) -> Result<Vec<Object>, LabError> {
    let taken = desired.iter().any(|o| {
        let id = o.id();
        id.kind == Kind::Service && id.namespace == "default" && id.name == "kubernetes"
    });
    // The address the model reserves for it, which no other Service may take.
    let Some(cluster_ip) = config.kubernetes_service_ip() else {
        return Ok(desired);
    };
    let endpoint = match cluster_ip {
        IpAddr::V4(_) => Some(api_ip),
        IpAddr::V6(_) => api_ip6,
    };
    let (Some(endpoint), false) = (endpoint, taken) else {
        return Ok(desired);
    };
    let family = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ipFamilies": [family],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": IN_LAB_PORT}],
        },
    });
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": family,
        "endpoints": [{"addresses": [endpoint.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": IN_LAB_PORT, "protocol": "TCP"}],
    });
    for (i, value) in [service, slice].into_iter().enumerate() {
        desired.extend(objects::decode(i, value)?);
    }
    Ok(desired)
}

/// Brings the registry to the published cluster, again while the lab moves on under it.
/// Returns the generation reached and `writes`.
fn sync_until_done(
    registry: &Registry,
    store: &Store,
    writes: u64,
) -> Result<(u64, u64), LabError> {
    loop {
        let Some(cluster) = store.read_cluster()? else {
            return Ok((0, writes));
        };
        let generation = cluster.generation;
        match sync_once(registry, cluster) {
            Ok(()) => return Ok((generation, writes)),
            // The lab published another generation meanwhile: sync to that one.
            Err(LabError::ApiSyncFailed { source, .. })
                if matches!(
                    *source,
                    ApiError::StorageFailed(StorageError::Refused { .. })
                ) && store
                    .read_cluster()?
                    .is_some_and(|c| c.generation != generation) => {}
            Err(e) => return Err(e),
        }
    }
}

/// One pass: every resolved object created or updated in the registry where it differs, and
/// every other object deleted.
fn sync_once(registry: &Registry, cluster: ClusterRecord) -> Result<(), LabError> {
    struct Syncing;
    impl Drop for Syncing {
        fn drop(&mut self) {
            SYNCING.set(None);
        }
    }
    SYNCING.set(Some(cluster.generation));
    let _syncing = Syncing;
    let failed = |id: &ObjectId| {
        let id = id.to_string();
        move |source| LabError::ApiSyncFailed {
            id,
            source: Box::new(source),
        }
    };
    let mut wanted = BTreeMap::new();
    for value in cluster.resolved {
        if let Some(id) = object_id(&value) {
            wanted.insert(id, value);
        }
    }
    for (id, value) in &wanted {
        let current = match registry.get(id) {
            Ok(current) => Some(current),
            Err(ApiError::NotFound(_)) => None,
            Err(e) => return Err(failed(id)(e)),
        };
        let value = observed(id, value, current.as_ref());
        match current {
            Some(current) if without_server_fields(&current) == without_server_fields(&value) => {}
            Some(_) => {
                registry
                    .update(value, WriteOptions::default())
                    .map_err(failed(id))?;
            }
            None => {
                registry
                    .create(value, WriteOptions::default())
                    .map_err(failed(id))?;
            }
        }
    }
    let served: BTreeSet<ObjectId> = Kind::ALL
        .into_iter()
        .flat_map(|kind| registry.list(kind, None).0)
        .filter_map(|v| object_id(&v))
        .collect();
    for id in served.iter().filter(|id| !wanted.contains_key(*id)) {
        match registry.delete(id, None, WriteOptions::default()) {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(failed(id)(e)),
        }
    }
    Ok(())
}

/// `value` as the syncer writes it over `current` (`None`: not served yet): a Deployment's
/// status says the control plane has observed the generation the write leaves it at (the
/// server's, one more if the spec changes), since the lab resolved it for that spec, so
/// `kubectl rollout status` sees its rollout done.
fn observed(id: &ObjectId, value: &Value, current: Option<&Value>) -> Value {
    let mut value = value.clone();
    if id.kind == Kind::Deployment {
        let generation = current.map_or(1, |c| {
            let served = c["metadata"]["generation"].as_u64().unwrap_or(1);
            served + u64::from(c.get("spec") != value.get("spec"))
        });
        value["status"]["observedGeneration"] = Value::from(generation);
    }
    value
}

/// The object as the lab keeps it desired: without what the API server stamps on it.
fn as_desired(value: &Value) -> Result<Object, StorageError> {
    objects::decode(0, without_server_fields(value))
        .map_err(refused)?
        .ok_or_else(|| StorageError::Refused {
            reason: format!("the lab does not run {:?} objects", value["kind"]),
        })
}

/// `value` without [`SERVER_FIELDS`] and the namespace-name label the server adds, so that a
/// served object compares equal to the resolved object it was made from.
fn without_server_fields(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_FIELDS {
            meta.remove(field);
        }
        let labels = meta.get_mut("labels").and_then(Value::as_object_mut);
        if let Some(labels) = labels {
            labels.remove("kubernetes.io/metadata.name");
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
    }
    value
}

fn refused(e: LabError) -> StorageError {
    StorageError::Refused {
        reason: error_chain(&e),
    }
}

#[cfg(test)]
mod tests {
    use netd_model::IpFamilies;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The Service and slice added, as `(clusterIP, endpoint)`; `None` when none was added.
    fn added(desired: &str, config: &ClusterConfig) -> Option<(String, String)> {
        let desired = netd_testkit::objects(desired);
        let before = desired.len();
        let out = with_kubernetes_service(
            desired,
            config,
            ip("172.18.0.254"),
            Some(ip("fd00:172:18::fe")),
        )
        .expect("objects");
        if out.len() == before {
            return None;
        }
        let [Object::Service(service), Object::EndpointSlice(slice)] = &out[before..] else {
            panic!("not a Service and its slice: {out:?}");
        };
        let cluster_ip = service.spec.as_ref()?.cluster_ip.clone()?;
        Some((cluster_ip, slice.endpoints[0].addresses[0].clone()))
    }

    #[test]
    fn the_kubernetes_service_leads_to_the_api_of_the_first_family_unless_the_user_has_one() {
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        let v4 = ClusterConfig::default();
        assert_eq!(added("", &v4), pair("10.96.0.1", "172.18.0.254"));
        let v6 = ClusterConfig::for_families(IpFamilies::Ipv6);
        assert_eq!(added("", &v6), pair("fd00:10:96::1", "fd00:172:18::fe"));
        let dual = ClusterConfig::for_families(IpFamilies::Dual);
        assert_eq!(added("", &dual), pair("10.96.0.1", "172.18.0.254"));
        let own = "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n\
                   spec: {ports: [{port: 443}]}\n";
        assert_eq!(added(own, &v4), None);
    }
}
