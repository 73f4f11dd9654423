//! [`Store`]: the cluster as the watches have told it, a plain synchronous value.
//!
//! Feed it each kind's [`watcher::Event`]s with [`Store::apply`]; ask [`Store::ready`]
//! whether every kind has completed its first list, and [`Store::snapshot`] for the
//! [`ClusterState`] every consumer reads. Tests feed it scripted events; the API watch
//! ([`crate::watch`]) feeds it through a [`SharedStore`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use netd_model::{ClusterConfig, ClusterState, Kind, Object, ObjectId, StateError};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::SourceError;
use crate::prune::{self, Purpose};

/// The kinds the store is fed, in the order they are reported.
pub const WATCHED_KINDS: [Kind; 6] = [
    Kind::Namespace,
    Kind::Node,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::NetworkPolicy,
];

/// The kinds cluster DNS reads: Pods only when pod names are verified against them
/// (`pods verified`), since the other modes never look at a Pod.
pub fn dns_kinds(pods: bool) -> Vec<Kind> {
    let mut kinds = vec![Kind::Namespace, Kind::Service, Kind::EndpointSlice];
    if pods {
        kinds.insert(1, Kind::Pod);
    }
    kinds
}

/// A Kubernetes type the store is fed: how to name it and what of it to keep.
pub trait Watched:
    kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static
{
    /// The kind it is stored as.
    const KIND: Kind;

    /// Its metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// What the store keeps of it, or `None` when it is left out (a Service another proxy
    /// owns, a Pod that has finished).
    fn prune(self) -> Option<Object>;

    /// What a store read for `purpose` keeps of it: [`Watched::prune`] unless the purpose
    /// keeps more.
    fn prune_for(self, purpose: Purpose) -> Option<Object> {
        let _ = purpose;
        self.prune()
    }

    /// Its identity in the store.
    fn id(&self) -> ObjectId {
        let m = self.metadata();
        ObjectId {
            kind: Self::KIND,
            namespace: if Self::KIND.is_namespaced() {
                m.namespace.clone().unwrap_or_else(|| "default".to_owned())
            } else {
                String::new()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

/// The snapshot a [`Store`] produced, numbered by the store's generation.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The cluster.
    pub state: ClusterState,
    /// The store's [`Store::generation`] it was taken at.
    pub generation: u64,
    /// Per kind, the highest resourceVersion among the events it includes
    /// ([`Store::versions`]).
    pub versions: BTreeMap<Kind, u64>,
}

/// The cluster state as fed by watch events: the typed view of every object.
///
/// Objects are pruned on arrival to what `netd-model` reads ([`Watched::prune`]) and converted
/// into their views; an object the model refuses (a malformed IP, an unknown protocol) is held
/// out and listed by [`Store::rejected`] instead of failing every snapshot. A change is one
/// that alters a view ([`ClusterState::update`]), so status heartbeats and `managedFields`
/// churn change nothing.
///
/// The store keeps one [`ClusterState`], made [without its
/// objects](ClusterState::without_objects) (a kept Pod is some 30 times its view), and changes
/// it object by object ([`ClusterState::update`], [`ClusterState::remove`]); a snapshot is a
/// clone of it, which shares everything with the store until the store changes, so one change
/// costs work in proportion to itself and not to the cluster. The kept form of an object
/// lives on only in the log [`Store::take_changes`] empties, for a consumer that follows the
/// store one object at a time.
#[derive(Debug)]
pub struct Store {
    purpose: Purpose,
    state: ClusterState,
    kinds: BTreeMap<Kind, KindStore>,
    generation: u64,
    dirty: bool,
    /// The objects that changed (added, altered, removed) since the last
    /// [`Store::take_changes`] or [`Store::take_snapshot`], each with its kept form now
    /// (`None`: gone). Empty until the first [`Store::take_snapshot`], which covers every
    /// change before it.
    changed: BTreeMap<ObjectId, Option<Object>>,
    /// Whether a snapshot has been taken, and so changes are logged.
    followed: bool,
    /// Per kind, the highest resourceVersion among the events applied (a relist's once it
    /// is done), whether or not they changed what is kept.
    versions: BTreeMap<Kind, u64>,
}

#[derive(Debug, Default)]
struct KindStore {
    rejected: BTreeMap<ObjectId, StateError>,
    /// Between `Init` and `InitDone`: the list being received; it replaces `objects` whole.
    relist: Option<Listing>,
    listed: bool,
}

#[derive(Debug, Default)]
struct Listing {
    objects: BTreeMap<ObjectId, Object>,
    rejected: BTreeMap<ObjectId, StateError>,
    /// The highest resourceVersion among the listed objects.
    version: u64,
}

impl Store {
    /// An empty store for a cluster with these settings (snapshots carry them), fed the
    /// [`WATCHED_KINDS`] for the proxy.
    pub fn new(config: ClusterConfig) -> Store {
        Store::with_kinds(config, &WATCHED_KINDS, Purpose::Proxy)
    }

    /// An empty store for cluster DNS: the [`dns_kinds`], nothing left out for belonging
    /// to another proxy ([`Purpose::Dns`]).
    pub fn for_dns(config: ClusterConfig, pods: bool) -> Store {
        Store::with_kinds(config, &dns_kinds(pods), Purpose::Dns)
    }

    /// An empty store fed only `kinds`, keeping what `purpose` reads. It is
    /// [ready](Store::ready) once each of these kinds has been listed; events of other
    /// kinds change nothing.
    pub fn with_kinds(config: ClusterConfig, kinds: &[Kind], purpose: Purpose) -> Store {
        Store {
            // An empty state always builds: it has no object to refuse.
            state: ClusterState::without_objects(config),
            purpose,
            kinds: kinds.iter().map(|k| (*k, KindStore::default())).collect(),
            generation: 0,
            dirty: false,
            changed: BTreeMap::new(),
            followed: false,
            versions: BTreeMap::new(),
        }
    }

    /// Applies one watch event of `K`'s kind. Returns whether the store changed: an object
    /// kept differently, added or removed, or the store becoming [ready](Store::ready).
    ///
    /// `Init` starts a (re)list: until its `InitDone`, snapshots keep showing the previous
    /// objects of the kind; at `InitDone` the listed objects replace them whole, so objects
    /// deleted while the watch was away disappear.
    pub fn apply<K: Watched>(&mut self, event: watcher::Event<K>) -> bool {
        if !self.kinds.contains_key(&K::KIND) {
            return false;
        }
        let was_ready = self.ready();
        let changed = match event {
            watcher::Event::Init => {
                self.kind_mut(K::KIND).relist = Some(Listing::default());
                false
            }
            watcher::Event::InitApply(obj) => {
                let id = obj.id();
                let version = resource_version(obj.metadata());
                let admitted = self.admit(&id, obj);
                let listing = self
                    .kind_mut(K::KIND)
                    .relist
                    .get_or_insert_with(Listing::default);
                listing.version = listing.version.max(version);
                match admitted {
                    Admitted::Keep(o) => {
                        listing.rejected.remove(&id);
                        listing.objects.insert(id, *o);
                    }
                    Admitted::LeftOut => {
                        listing.objects.remove(&id);
                    }
                    Admitted::Rejected(e) => {
                        listing.objects.remove(&id);
                        listing.rejected.insert(id, e);
                    }
                }
                false
            }
            watcher::Event::InitDone => {
                let kind = self.kinds.entry(K::KIND).or_default();
                let mut listing = kind.relist.take().unwrap_or_default();
                kind.listed = true;
                kind.rejected = listing.rejected;
                self.saw(K::KIND, listing.version);
                let gone: Vec<ObjectId> = self
                    .state
                    .ids_of(K::KIND)
                    .into_iter()
                    .filter(|id| !listing.objects.contains_key(id))
                    .collect();
                let mut changed = false;
                for id in gone {
                    changed |= self.take(id);
                }
                for (id, object) in std::mem::take(&mut listing.objects) {
                    changed |= self.put(id, object);
                }
                changed
            }
            watcher::Event::Apply(obj) => {
                self.saw(K::KIND, resource_version(obj.metadata()));
                let id = obj.id();
                let admitted = self.admit(&id, obj);
                let kind = self.kinds.entry(K::KIND).or_default();
                match admitted {
                    Admitted::Keep(o) => {
                        kind.rejected.remove(&id);
                        self.put(id, *o)
                    }
                    Admitted::LeftOut => {
                        kind.rejected.remove(&id);
                        self.take(id)
                    }
                    Admitted::Rejected(e) => {
                        kind.rejected.insert(id.clone(), e);
                        self.take(id)
                    }
                }
            }
            watcher::Event::Delete(obj) => {
                // kube-apiserver gives a delete event the deletion's resourceVersion.
                self.saw(K::KIND, resource_version(obj.metadata()));
                let id = obj.id();
                let kind = self.kinds.entry(K::KIND).or_default();
                kind.rejected.remove(&id);
                self.take(id)
            }
        };
        let changed = changed || (!was_ready && self.ready());
        if changed {
            self.generation += 1;
            self.dirty = true;
        }
        changed
    }

    /// Per kind, the highest resourceVersion among the events applied so far (a relist's
    /// from its end), changes or not: once a snapshot of this store's current
    /// [generation](Store::generation) is programmed, so is the API state up to these.
    /// resourceVersions that are not numbers (kube-apiserver's and the lab's are) count as 0.
    pub fn versions(&self) -> &BTreeMap<Kind, u64> {
        &self.versions
    }

    /// Whether every kind has completed its first list. Until then no snapshot is produced.
    pub fn ready(&self) -> bool {
        self.kinds.values().all(|k| k.listed)
    }

    /// The kinds whose first list has not completed yet.
    pub fn pending(&self) -> Vec<Kind> {
        self.kinds
            .iter()
            .filter(|(_, k)| !k.listed)
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// How many changes the store has taken since it was made.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the store changed since the last [`Store::take_snapshot`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The identities of the objects of one kind the store holds, in canonical order.
    pub fn ids(&self, kind: Kind) -> Vec<ObjectId> {
        self.state.ids_of(kind)
    }

    /// The objects held out because the model refused them, with why.
    pub fn rejected(&self) -> impl Iterator<Item = (&ObjectId, &StateError)> {
        self.kinds.values().flat_map(|k| k.rejected.iter())
    }

    /// The snapshot of everything kept, once every kind is [ready](Store::ready).
    pub fn snapshot(&self) -> Result<Snapshot, SourceError> {
        if !self.ready() {
            return Err(SourceError::NotReady {
                pending: self.pending(),
            });
        }
        Ok(Snapshot {
            state: self.state.clone(),
            generation: self.generation,
            versions: self.versions.clone(),
        })
    }

    /// [`Store::snapshot`], and the store is clean until its next change. On an error the
    /// store stays dirty.
    pub fn take_snapshot(&mut self) -> Result<Snapshot, SourceError> {
        let snapshot = self.snapshot()?;
        self.dirty = false;
        self.followed = true;
        self.changed.clear();
        Ok(snapshot)
    }

    /// The objects that changed since the last call (or the last [`Store::take_snapshot`]),
    /// in key order, each with what is kept of it now (`None`: it is gone): what a consumer
    /// that follows the store one object at a time applies, starting from a snapshot. A
    /// relist reports the objects it added, altered or removed. Before the first
    /// [`Store::take_snapshot`] there is nothing (that snapshot holds every change).
    pub fn take_changes(&mut self) -> Vec<(ObjectId, Option<Object>)> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    fn kind_mut(&mut self, kind: Kind) -> &mut KindStore {
        self.kinds.entry(kind).or_default()
    }

    /// Counts an event of `kind` at resourceVersion `version` into [`Store::versions`].
    fn saw(&mut self, kind: Kind, version: u64) {
        let seen = self.versions.entry(kind).or_default();
        *seen = (*seen).max(version);
    }

    /// Puts `object` (admitted) in as `id`; returns whether that changed the state.
    fn put(&mut self, id: ObjectId, object: Object) -> bool {
        // Admitted objects convert (`admit` checked), so the update cannot be refused; if it
        // were, the state would keep what it had.
        let changed = self.state.update(&object).unwrap_or(false);
        if changed && self.followed {
            self.changed.insert(id, Some(object));
        }
        changed
    }

    /// Drops the object `id`; returns whether the state had it.
    fn take(&mut self, id: ObjectId) -> bool {
        let had = self.state.remove(&id);
        if had && self.followed {
            self.changed.insert(id, None);
        }
        had
    }

    /// Prunes `obj` and checks the model accepts it, alone, as it would in a snapshot.
    fn admit<K: Watched>(&self, id: &ObjectId, obj: K) -> Admitted {
        let Some(object) = obj.prune_for(self.purpose) else {
            return Admitted::LeftOut;
        };
        match ClusterState::check(&object) {
            Ok(()) => Admitted::Keep(Box::new(object)),
            Err(e) => {
                tracing::warn!(object = %id, error = %e, "object refused; left out of the cluster state");
                Admitted::Rejected(e)
            }
        }
    }
}

enum Admitted {
    Keep(Box<Object>),
    LeftOut,
    Rejected(StateError),
}

/// An object's resourceVersion as a number (0 when it is not one).
fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default()
}

/// A [`Store`] shared between the watches that feed it and the runners that read it; each
/// change is announced to every [`SharedStore::subscribe`]r, and each event that moves
/// [`Store::versions`] (a change or not) to every [`SharedStore::subscribe_versions`]r.
#[derive(Clone, Debug)]
pub struct SharedStore {
    store: Arc<Mutex<Store>>,
    changes: Arc<watch::Sender<u64>>,
    versions: Arc<watch::Sender<()>>,
}

impl SharedStore {
    /// Shares `store`.
    pub fn new(store: Store) -> SharedStore {
        let (changes, _) = watch::channel(store.generation());
        let (versions, _) = watch::channel(());
        SharedStore {
            store: Arc::new(Mutex::new(store)),
            changes: Arc::new(changes),
            versions: Arc::new(versions),
        }
    }

    /// [`Store::apply`], announcing the change if there was one, and the versions if they
    /// moved.
    pub fn apply<K: Watched>(&self, event: watcher::Event<K>) -> bool {
        let mut store = self.lock();
        let before = store.versions().get(&K::KIND).copied();
        let changed = store.apply(event);
        if changed {
            self.changes.send_replace(store.generation());
        }
        if store.versions().get(&K::KIND).copied() != before {
            self.versions.send_replace(());
        }
        changed
    }

    /// Runs `f` on the store, holding it for no longer than that.
    pub fn with<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.lock())
    }

    /// A receiver that sees the store's generation each time it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver that is told each time [`Store::versions`] moves, whether or not the
    /// event changed the store: an update nothing reads of (a status-only one) still moves
    /// the versions a programmed generation stands for.
    pub fn subscribe_versions(&self) -> watch::Receiver<()> {
        self.versions.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a kind half-replaced: a relist swaps
        // its objects in one assignment, so the store is still consistent.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Watched for PartialObjectMeta<core::Namespace> {
    const KIND: Kind = Kind::Namespace;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::namespace(self.metadata)
    }
}

impl Watched for core::Node {
    const KIND: Kind = Kind::Node;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::node(self)
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::pod(self)
    }
}

impl Watched for core::Service {
    const KIND: Kind = Kind::Service;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::service(self)
    }
    fn prune_for(self, purpose: Purpose) -> Option<Object> {
        match purpose {
            Purpose::Proxy => prune::service(self),
            Purpose::Dns => prune::service_for_dns(self),
        }
    }
}

impl Watched for discovery::EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::endpoint_slice(self)
    }
    fn prune_for(self, purpose: Purpose) -> Option<Object> {
        match purpose {
            Purpose::Proxy => prune::endpoint_slice(self),
            Purpose::Dns => prune::endpoint_slice_for_dns(self),
        }
    }
}

impl Watched for networking::NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn prune(self) -> Option<Object> {
        prune::network_policy(self)
    }
}
