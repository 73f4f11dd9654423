//! Objects and their history: [`Registry`], the server's one view of every object, over a
//! durable [`Storage`].
//!
//! The registry hands out resourceVersions (one global counter, as etcd's revision), uids,
//! creation timestamps and generations, validates every write with the loader's validation,
//! keeps a bounded history of events for watches, and makes each write durable through its
//! [`Storage`] before acknowledging it. Writes are serialised: one at a time, each seeing the
//! previous one, so two writers never lose each other's change; a write whose storage commit
//! fails leaves the registry as it was.
//!
//! [`Storage`] is the seam to whoever owns the objects on disk. [`FileStorage`] keeps them in
//! a snapshot and an append-only log; the lab implements the trait over its state directory, where its
//! [`Storage::commit`] is also the hook that re-resolves the cluster (and may refuse the write).

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Service;
use netd_model::{ClusterConfig, FieldValidation, Kind, LoadError, Object, ObjectId, Validator};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{ApiError, Cause, StorageError, Subject};
use crate::resource::Resource;

/// How many events the registry keeps for watches unless told otherwise.
pub const DEFAULT_HISTORY: usize = 1000;

/// What a watch event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// The `type` of a watch event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The resourceVersion the change made.
    pub resource_version: u64,
    /// What happened.
    pub kind: EventType,
    /// The object.
    pub id: ObjectId,
    /// The object after the change (for a delete: as it was last).
    pub object: Value,
    /// The object before a modification, so a filtered watch can tell an object leaving its
    /// selection from one changing within it.
    pub previous: Option<Value>,
}

/// What a [`Storage`] holds: the objects and the last resourceVersion handed out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The last resourceVersion handed out.
    #[serde(rename = "resourceVersion")]
    pub resource_version: u64,
    /// Every object, as the API serves it (with `apiVersion`, `kind` and full metadata).
    pub objects: Vec<Value>,
}

/// One acknowledged write, as handed to [`Storage::commit`].
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    /// The change.
    pub event: &'a Event,
    /// Every object after the change, in key order.
    pub objects: &'a BTreeMap<ObjectId, Value>,
}

impl Commit<'_> {
    /// The state after the change, as [`Storage::load`] returns it.
    pub fn stored(&self) -> Stored {
        Stored {
            resource_version: self.event.resource_version,
            objects: self.objects.values().cloned().collect(),
        }
    }
}

/// Where objects are kept: read once when the registry starts, handed every write.
///
/// `commit` runs with the registry's write lock held, so commits are never concurrent and
/// arrive in resourceVersion order. It must not return before the write is durable: a
/// process killed after the client saw the response must find the write on the next `load`.
/// An error refuses the write; the registry then keeps the state before it.
pub trait Storage: Send + Sync {
    /// Every stored object and the last resourceVersion handed out.
    fn load(&self) -> Result<Stored, StorageError>;

    /// Makes one write durable.
    fn commit(&self, commit: Commit<'_>) -> Result<(), StorageError>;
}

/// A [`Storage`] in a directory: `snapshot.json` (a [`Stored`]) and `log.jsonl`, one line per
/// write since the snapshot.
///
/// A commit appends its event to the log and syncs it (`fdatasync`) before returning, so a
/// write costs one small append whatever the number of objects. Every
/// [`FileStorage::COMPACT_AFTER`] writes (or as [`FileStorage::compact_after`] says) the whole state is written as a new snapshot
/// (temporary file, sync, rename, directory sync) and the log is emptied. Loading reads the
/// snapshot and replays the log entries newer than it; a torn last line (a crash in the middle
/// of an append, before the write was acknowledged) is ignored.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    log: Mutex<Option<fs::File>>,
    entries: std::sync::atomic::AtomicUsize,
    compact_after: usize,
}

/// One line of the log.
#[derive(Serialize, Deserialize)]
struct LogEntry {
    #[serde(rename = "resourceVersion")]
    resource_version: u64,
    #[serde(rename = "type")]
    kind: EventType,
    object: Value,
}

impl FileStorage {
    /// How many writes the log holds before the state is compacted into a new snapshot.
    pub const COMPACT_AFTER: usize = 1000;

    /// The store in `dir` (created if missing; empty if nothing was written yet).
    pub fn new(dir: impl Into<PathBuf>) -> Result<FileStorage, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StorageError::WriteFailed {
            path: dir.clone(),
            source,
        })?;
        Ok(FileStorage {
            dir,
            log: Mutex::new(None),
            entries: std::sync::atomic::AtomicUsize::new(0),
            compact_after: Self::COMPACT_AFTER,
        })
    }

    /// Compacts the log into a new snapshot every `writes` writes instead (at least 1).
    pub fn compact_after(mut self, writes: usize) -> FileStorage {
        self.compact_after = writes.max(1);
        self
    }

    /// The snapshot file.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }

    fn append(&self, line: &[u8]) -> Result<(), StorageError> {
        let path = self.log_path();
        let failed = |source| StorageError::WriteFailed {
            path: path.clone(),
            source,
        };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.is_none() {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(failed)?;
            *log = Some(file);
        }
        let Some(file) = log.as_mut() else {
            return Ok(());
        };
        let before = file.metadata().map_err(failed)?.len();
        let written = file.write_all(line).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Take back whatever part of the line was written, so the log holds only whole
            // lines; if even that fails, loading ignores the torn tail.
            let _ = file.set_len(before);
            *log = None;
            return Err(failed(e));
        }
        Ok(())
    }

    fn compact(&self, stored: &Stored) -> Result<(), StorageError> {
        let text = serde_json::to_vec(stored).map_err(|source| StorageError::Corrupt {
            path: self.snapshot_path(),
            source,
        })?;
        write_durably(&self.snapshot_path(), &text)?;
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        *log = None;
        write_durably(&self.log_path(), b"")
    }
}

impl Storage for FileStorage {
    fn load(&self) -> Result<Stored, StorageError> {
        let read = |path: PathBuf| match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StorageError::ReadFailed { path, source }),
        };
        let mut stored = match read(self.snapshot_path())? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StorageError::Corrupt {
                    path: self.snapshot_path(),
                    source,
                })?
            }
            None => Stored::default(),
        };
        let Some(log) = read(self.log_path())? else {
            return Ok(stored);
        };
        let mut objects: BTreeMap<ObjectId, Value> = stored
            .objects
            .drain(..)
            .filter_map(|o| object_id(&o).map(|id| (id, o)))
            .collect();
        let mut replayed = 0;
        let mut offset = 0;
        while offset < log.len() {
            let end = log[offset..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(log.len(), |i| offset + i);
            let line = &log[offset..end];
            let torn = end == log.len();
            if line.is_empty() {
                offset = end + 1;
                continue;
            }
            if torn {
                // A last line without its newline was being appended when the process died,
                // so its write was never acknowledged. Cut it off so the next append starts
                // on a line of its own.
                truncate(&self.log_path(), offset)?;
                break;
            }
            let entry: LogEntry =
                serde_json::from_slice(line).map_err(|source| StorageError::Corrupt {
                    path: self.log_path(),
                    source,
                })?;
            offset = end + 1;
            replayed += 1;
            if entry.resource_version <= stored.resource_version {
                continue;
            }
            stored.resource_version = entry.resource_version;
            let Some(id) = object_id(&entry.object) else {
                continue;
            };
            match entry.kind {
                EventType::Deleted => objects.remove(&id),
                EventType::Added | EventType::Modified => objects.insert(id, entry.object),
            };
        }
        self.entries
            .store(replayed, std::sync::atomic::Ordering::Relaxed);
        stored.objects = objects.into_values().collect();
        Ok(stored)
    }

    fn commit(&self, commit: Commit<'_>) -> Result<(), StorageError> {
        let entry = LogEntry {
            resource_version: commit.event.resource_version,
            kind: commit.event.kind,
            object: commit.event.object.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|source| StorageError::Corrupt {
            path: self.log_path(),
            source,
        })?;
        line.push(b'\n');
        self.append(&line)?;
        let entries = self
            .entries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if entries >= self.compact_after {
            // The write is durable in the log already; a failed compaction only leaves a
            // longer log, so it does not fail the write.
            if let Err(error) = self.compact(&commit.stored()) {
                tracing::warn!(%error, "compacting the object store failed");
            } else {
                self.entries.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` so that after a crash it holds either all the old bytes or all
/// the new ones, and once this returns, the new ones.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let failed = |source| StorageError::WriteFailed {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    fs::rename(&tmp, path).map_err(failed)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

/// The server's objects, their history, and the storage under them.
pub struct Registry {
    inner: Mutex<Inner>,
    storage: Box<dyn Storage>,
    config: ClusterConfig,
    history_limit: usize,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

struct Inner {
    resource_version: u64,
    objects: BTreeMap<ObjectId, Value>,
    history: VecDeque<Event>,
    /// The oldest resourceVersion a watch can start from: every event after it is in
    /// `history`.
    oldest: u64,
}

/// How a write is made: what it does with fields the object's type does not have (the
/// `fieldValidation` parameter, the loader's own setting), and whether it is only tried
/// (`dryRun=All`: validated and answered, not stored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Unknown fields: refused, warned about, or dropped silently.
    pub fields: FieldValidation,
    /// Validate and answer, but store nothing and make no event.
    pub dry_run: bool,
}

impl From<FieldValidation> for WriteOptions {
    fn from(fields: FieldValidation) -> Self {
        WriteOptions {
            fields,
            dry_run: false,
        }
    }
}

/// What a successful write returns: the object as stored and warnings for the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The object as stored.
    pub object: Value,
    /// Warnings (unknown fields dropped), sent as `Warning` headers.
    pub warnings: Vec<String>,
}

/// Events after a resourceVersion, or why they cannot be had.
pub type Events = Result<Vec<Event>, ApiError>;

impl Registry {
    /// A registry over `storage`, validating against `config`, keeping `history_limit` events
    /// for watches. Watches can start from the stored resourceVersion onwards.
    pub fn new(
        storage: Box<dyn Storage>,
        config: ClusterConfig,
        history_limit: usize,
    ) -> Result<Registry, StorageError> {
        let stored = storage.load()?;
        let mut objects = BTreeMap::new();
        for object in stored.objects {
            if let Some(id) = object_id(&object) {
                objects.insert(id, object);
            }
        }
        let (changed, _) = watch::channel(stored.resource_version);
        Ok(Registry {
            inner: Mutex::new(Inner {
                resource_version: stored.resource_version,
                objects,
                history: VecDeque::new(),
                oldest: stored.resource_version,
            }),
            storage,
            config,
            history_limit: history_limit.max(1),
            changed,
        })
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// One object.
    pub fn get(&self, id: &ObjectId) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Every object of `kind` (in `namespace`, if given), in key order, and the
    /// resourceVersion the list is consistent at.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(id, _)| id.kind == kind && namespace.is_none_or(|ns| id.namespace == ns))
            .map(|(_, o)| o.clone())
            .collect();
        (items, inner.resource_version)
    }

    /// Creates an object; 409 AlreadyExists if it exists.
    ///
    /// An object with `metadata.generateName` and no name gets that prefix and five
    /// characters, as the API server names it.
    pub fn create(
        &self,
        mut object: Value,
        options: impl Into<WriteOptions>,
    ) -> Result<Written, ApiError> {
        let options = options.into();
        let unnamed = object["metadata"]["name"]
            .as_str()
            .is_none_or(str::is_empty);
        if let Some(prefix) = object["metadata"]["generateName"]
            .as_str()
            .filter(|_| unnamed)
        {
            let name = format!("{prefix}{}", suffix(prefix, self.resource_version()));
            object["metadata"]["name"] = json!(name);
        }
        let (id, mut object, warnings) = self.validate(object, options.fields)?;
        let mut inner = self.lock();
        if inner.objects.contains_key(&id) {
            return Err(ApiError::AlreadyExists(subject(&id)));
        }
        let rv = inner.resource_version + 1;
        stamp_new(&mut object, &id, rv);
        self.commit(
            &mut inner,
            options.dry_run,
            EventType::Added,
            id,
            object,
            None,
        )
        .map(|object| Written { object, warnings })
    }

    /// Replaces an object. A `metadata.resourceVersion` in `object` must be the current one
    /// (409 Conflict otherwise); none means "whatever it is now". 404 if it does not exist.
    pub fn update(
        &self,
        object: Value,
        options: impl Into<WriteOptions>,
    ) -> Result<Written, ApiError> {
        let options = options.into();
        let (id, object, warnings) = self.validate(object, options.fields)?;
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(&id))?;
        let asked = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !asked.is_empty() && asked != current["metadata"]["resourceVersion"] {
            return Err(ApiError::Conflict(subject(&id)));
        }
        self.replace(&mut inner, options.dry_run, id, current, object)
            .map(|object| Written { object, warnings })
    }

    /// Changes an object through `change` (given the current object, it returns the new
    /// one), all under the write lock so no other write comes between reading and writing.
    /// With `create_missing`, `change` is given `None` for an object that does not exist and
    /// its result is created.
    pub fn modify(
        &self,
        id: &ObjectId,
        options: impl Into<WriteOptions>,
        create_missing: bool,
        change: impl FnOnce(Option<&Value>) -> Result<Value, ApiError>,
    ) -> Result<Written, ApiError> {
        let options = options.into();
        let mut inner = self.lock();
        let current = inner.objects.get(id).cloned();
        if current.is_none() && !create_missing {
            return Err(not_found(id));
        }
        let changed = change(current.as_ref())?;
        let (new_id, mut object, warnings) = self.validate(changed, options.fields)?;
        if &new_id != id {
            return Err(ApiError::BadRequest(format!(
                "the patch changes the object's identity to {new_id}"
            )));
        }
        let Some(current) = current else {
            let rv = inner.resource_version + 1;
            stamp_new(&mut object, id, rv);
            return self
                .commit(
                    &mut inner,
                    options.dry_run,
                    EventType::Added,
                    new_id,
                    object,
                    None,
                )
                .map(|object| Written { object, warnings });
        };
        let asked = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !asked.is_empty() && asked != current["metadata"]["resourceVersion"] {
            return Err(ApiError::Conflict(subject(id)));
        }
        self.replace(&mut inner, options.dry_run, new_id, current, object)
            .map(|object| Written { object, warnings })
    }

    /// Deletes an object, returning it as it was last. With `precondition`, the object's
    /// resourceVersion must be that one (409 Conflict otherwise).
    pub fn delete(
        &self,
        id: &ObjectId,
        precondition: Option<&str>,
        options: impl Into<WriteOptions>,
    ) -> Result<Value, ApiError> {
        let options = options.into();
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        if precondition.is_some_and(|rv| rv != current["metadata"]["resourceVersion"]) {
            return Err(ApiError::Conflict(subject(id)));
        }
        let mut object = current;
        let rv = inner.resource_version + 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.commit(
            &mut inner,
            options.dry_run,
            EventType::Deleted,
            id.clone(),
            object,
            None,
        )
    }

    /// The events after `resource_version`, oldest first; 410 Expired if the history no
    /// longer reaches back that far.
    pub fn events_since(&self, resource_version: u64) -> Events {
        let inner = self.lock();
        if resource_version < inner.oldest {
            return Err(ApiError::Expired {
                asked: resource_version,
                oldest: inner.oldest,
            });
        }
        Ok(inner
            .history
            .iter()
            .filter(|e| e.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// A receiver that sees the resourceVersion change after every write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock is held cannot leave `Inner` half-changed: every write
        // changes it only after its commit succeeded, in statements that do not panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `object` with the loader's validation, returning its identity and the object as
    /// decoded (unknown fields dropped, the namespace defaulted).
    fn validate(
        &self,
        object: Value,
        fields: FieldValidation,
    ) -> Result<(ObjectId, Value, Vec<String>), ApiError> {
        let (kind, name) = type_of(&object)?;
        let text = serde_json::to_string(&object)
            .map_err(|e| ApiError::BadRequest(format!("cannot encode the object: {e}")))?;
        let manifests = netd_model::load_str_with("request", &text, &self.config, fields)
            .map_err(|e| load_error(kind, &name, e))?;
        let warnings = manifests
            .warnings
            .iter()
            .filter_map(|w| match w {
                netd_model::LoadWarning::UnknownField { fields, .. } => Some(
                    fields
                        .iter()
                        .map(|f| format!("unknown field {:?}", f.as_str()))
                        .collect::<Vec<_>>(),
                ),
                netd_model::LoadWarning::UnknownKind { .. } => None,
            })
            .flatten()
            .collect();
        let Some(loaded) = manifests.objects.into_iter().next() else {
            return Err(ApiError::BadRequest(format!(
                "{} is not a kind this server serves",
                kind.as_str()
            )));
        };
        let id = loaded.object.id();
        let mut decoded = serde_json::to_value(&loaded.object)
            .map_err(|e| ApiError::BadRequest(format!("cannot encode the object: {e}")))?;
        if id.kind == Kind::Namespace {
            // Every Namespace carries its name as a label, set by the server, so policies
            // can select namespaces by name.
            decoded["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(id.name);
        }
        Ok((id, decoded, warnings))
    }

    /// Replaces `current` by `object`, keeping what the server owns.
    fn replace(
        &self,
        inner: &mut Inner,
        dry_run: bool,
        id: ObjectId,
        current: Value,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        for field in ["uid", "creationTimestamp"] {
            object["metadata"][field] = current["metadata"][field].clone();
        }
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation);
        if object == current {
            // A no-op write changes nothing and makes no event, as the API server does.
            return Ok(current);
        }
        if spec_of(&object) != spec_of(&current) {
            object["metadata"]["generation"] = json!(generation + 1);
        }
        object["metadata"]["resourceVersion"] = json!((inner.resource_version + 1).to_string());
        self.commit(
            inner,
            dry_run,
            EventType::Modified,
            id,
            object,
            Some(current),
        )
    }

    /// Refuses a Service asking for a ClusterIP or nodePort another stored Service holds, as
    /// the API server's allocators do.
    fn check_claims(&self, inner: &Inner, id: &ObjectId, object: &Value) -> Result<(), ApiError> {
        let mut validator = Validator::new(&self.config);
        for (_, other) in inner
            .objects
            .iter()
            .filter(|(k, _)| k.kind == Kind::Service && *k != id)
        {
            if let Ok(service) = serde_json::from_value::<Service>(other.clone()) {
                // Stored Services were valid when written; one that no longer checks simply
                // holds nothing.
                let _ = validator.check(&Object::Service(Box::new(service)));
            }
        }
        let service: Service = serde_json::from_value(object.clone())
            .map_err(|e| ApiError::BadRequest(format!("Service in body: {e}")))?;
        validator
            .check(&Object::Service(Box::new(service)))
            .map_err(|e| ApiError::Invalid {
                subject: Subject {
                    group: String::new(),
                    kind: Kind::Service.as_str().to_owned(),
                    name: id.name.clone(),
                },
                causes: vec![Cause::from(&e)],
            })
    }

    /// Makes one change durable, then visible; a dry run only answers with the object.
    fn commit(
        &self,
        inner: &mut Inner,
        dry_run: bool,
        kind: EventType,
        id: ObjectId,
        object: Value,
        previous: Option<Value>,
    ) -> Result<Value, ApiError> {
        if kind != EventType::Deleted && id.kind == Kind::Service {
            self.check_claims(inner, &id, &object)?;
        }
        if dry_run {
            return Ok(object);
        }
        let rv = inner.resource_version + 1;
        let event = Event {
            resource_version: rv,
            kind,
            id: id.clone(),
            object: object.clone(),
            previous,
        };
        let before = match kind {
            EventType::Deleted => inner.objects.remove(&id),
            EventType::Added | EventType::Modified => inner.objects.insert(id.clone(), object),
        };
        let committed = self.storage.commit(Commit {
            event: &event,
            objects: &inner.objects,
        });
        if let Err(e) = committed {
            match before {
                Some(old) => inner.objects.insert(id, old),
                None => inner.objects.remove(&id),
            };
            return Err(ApiError::StorageFailed(e));
        }
        inner.resource_version = rv;
        inner.history.push_back(event.clone());
        while inner.history.len() > self.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest = dropped.resource_version;
            }
        }
        self.changed.send_replace(rv);
        Ok(event.object)
    }
}

/// Cuts `path` to its first `len` bytes, durably.
fn truncate(path: &Path, len: usize) -> Result<(), StorageError> {
    let failed = |source| StorageError::WriteFailed {
        path: path.to_owned(),
        source,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(failed)?;
    file.set_len(len as u64).map_err(failed)?;
    file.sync_all().map_err(failed)
}

/// The identity of a stored object, if it is of a served kind with a name.
pub fn object_id(object: &Value) -> Option<ObjectId> {
    let (kind, name) = type_of(object).ok()?;
    let namespace = if kind.is_namespaced() {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
    } else {
        ""
    };
    Some(ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name,
    })
}

/// The Status subject of an object: its resource and name.
pub fn subject(id: &ObjectId) -> Subject {
    let r = Resource::of(id.kind);
    Subject {
        group: r.group.to_owned(),
        kind: r.plural.to_owned(),
        name: id.name.clone(),
    }
}

/// 404 for an object.
pub fn not_found(id: &ObjectId) -> ApiError {
    ApiError::NotFound(subject(id))
}

/// The kind (from `apiVersion` and `kind`) and name of an object.
fn type_of(object: &Value) -> Result<(Kind, String), ApiError> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    let known = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind && k.api_version() == api_version)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the object's apiVersion {api_version:?} and kind {kind:?} are not served here"
            ))
        })?;
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    Ok((known, name))
}

/// Sets what the server sets on create.
fn stamp_new(object: &mut Value, id: &ObjectId, rv: u64) {
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = json!(uid(id, rv));
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!(now());
}

/// The current time as the API writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A UUID-shaped uid, unique per object incarnation: derived from the object's identity, the
/// resourceVersion that created it, and the time.
fn uid(id: &ObjectId, rv: u64) -> String {
    let seed = format!("{id}\0{rv}\0{:?}", std::time::SystemTime::now());
    let digest = Sha256::digest(seed.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five characters for a generated name, from the letters and digits the API server uses
/// (no vowels, no look-alikes), derived from the prefix, the resourceVersion and the time.
fn suffix(prefix: &str, rv: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let seed = format!("{prefix}\0{rv}\0{:?}", std::time::SystemTime::now());
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Everything but metadata and status: what a generation counts changes of.
fn spec_of(object: &Value) -> Value {
    let mut spec = object.clone();
    if let Some(map) = spec.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    spec
}

/// A loader error as the API server would answer it.
fn load_error(kind: Kind, name: &str, error: LoadError) -> ApiError {
    match error {
        LoadError::InvalidObject { source, .. } => ApiError::Invalid {
            subject: Subject {
                group: Resource::of(kind).group.to_owned(),
                kind: kind.as_str().to_owned(),
                name: name.to_owned(),
            },
            causes: vec![Cause::from(&source)],
        },
        LoadError::UnknownField { fields, .. } => {
            let fields: Vec<String> = fields
                .iter()
                .map(|f| format!("unknown field {:?}", f.as_str()))
                .collect();
            ApiError::BadRequest(format!("strict decoding error: {}", fields.join(", ")))
        }
        LoadError::DecodeFailed { source, .. } => {
            let path = source.path().to_string();
            let inner = source.into_inner();
            ApiError::BadRequest(format!("{} in body: {path}: {inner}", kind.as_str()))
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &Path, history: usize) -> Registry {
        let storage = FileStorage::new(dir).expect("store");
        Registry::new(Box::new(storage), ClusterConfig::default(), history).expect("registry")
    }

    fn namespace(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    }

    fn ns_id(name: &str) -> ObjectId {
        ObjectId {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.into(),
        }
    }

    #[test]
    fn a_delete_event_carries_the_deletions_resource_version() {
        // As kube-apiserver: a watcher that has seen the delete has seen that
        // resourceVersion, which is how an agent tells it has programmed the deletion.
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 10);
        r.create(namespace("a"), FieldValidation::Strict)
            .expect("a");
        let deleted = r
            .delete(&ns_id("a"), None, FieldValidation::Strict)
            .expect("delete");
        assert_eq!(deleted["metadata"]["resourceVersion"], "2");
        let events = r.events_since(1).expect("events");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventType::Deleted);
        assert_eq!(events[0].resource_version, 2);
        assert_eq!(events[0].object["metadata"]["resourceVersion"], "2");
    }

    #[test]
    fn writes_survive_a_restart_and_resource_versions_keep_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 10);
        let a = r
            .create(namespace("a"), FieldValidation::Strict)
            .expect("a");
        assert_eq!(a.object["metadata"]["resourceVersion"], "1");
        r.create(namespace("b"), FieldValidation::Strict)
            .expect("b");
        r.delete(&ns_id("a"), None, FieldValidation::Strict)
            .expect("delete");
        drop(r);
        let r = registry(dir.path(), 10);
        assert_eq!(r.resource_version(), 3);
        assert!(matches!(r.get(&ns_id("a")), Err(ApiError::NotFound(_))));
        let b = r.get(&ns_id("b")).expect("b survives");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        let c = r
            .create(namespace("c"), FieldValidation::Strict)
            .expect("c");
        assert_eq!(c.object["metadata"]["resourceVersion"], "4");
        // History starts afresh after a restart: older versions are gone.
        assert!(matches!(r.events_since(2), Err(ApiError::Expired { .. })));
        assert_eq!(r.events_since(3).expect("events").len(), 1);
    }

    #[test]
    fn the_log_is_compacted_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::new(dir.path())
            .expect("store")
            .compact_after(3);
        let log = storage.log_path();
        let r = Registry::new(Box::new(storage), ClusterConfig::default(), 10).expect("r");
        for name in ["a", "b", "c", "d"] {
            r.create(namespace(name), FieldValidation::Strict)
                .expect(name);
        }
        drop(r);
        // Three writes went into the snapshot, the fourth is in the log; then a crash in the
        // middle of a fifth append.
        let mut text = fs::read_to_string(&log).expect("log");
        assert_eq!(text.lines().count(), 1, "{text}");
        text.push_str(r#"{"resourceVersion":5,"type":"ADDED","obj"#);
        fs::write(&log, text).expect("torn");
        let r = registry(dir.path(), 10);
        assert_eq!(r.resource_version(), 4);
        assert_eq!(r.list(Kind::Namespace, None).0.len(), 4);
        r.create(namespace("e"), FieldValidation::Strict)
            .expect("e");
        drop(r);
        let r = registry(dir.path(), 10);
        assert_eq!(r.list(Kind::Namespace, None).0.len(), 5);
    }

    #[test]
    fn a_cluster_ip_held_by_another_service_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 10);
        let service = |name: &str, ip: &str| {
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
        };
        r.create(service("a", "10.96.7.7"), FieldValidation::Strict)
            .expect("a");
        let err = r
            .create(service("b", "10.96.7.7"), FieldValidation::Strict)
            .expect_err("taken");
        let status = err.status();
        assert_eq!(status["code"], 422, "{status}");
        assert!(
            status["details"]["causes"][0]["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("spec.clusterIP")),
            "{status}"
        );
        // The holder itself may be written again.
        let mut a = r
            .get(&ObjectId {
                kind: Kind::Service,
                namespace: "default".into(),
                name: "a".into(),
            })
            .expect("a");
        a["metadata"]["labels"] = json!({"x": "1"});
        r.update(a, FieldValidation::Strict).expect("update a");
        r.create(service("b", "10.96.7.8"), FieldValidation::Strict)
            .expect("b");
    }

    #[test]
    fn generated_names_take_the_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 10);
        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "t-"}});
        let a = r.create(ns.clone(), FieldValidation::Strict).expect("a");
        let b = r.create(ns, FieldValidation::Strict).expect("b");
        let (a, b) = (&a.object["metadata"]["name"], &b.object["metadata"]["name"]);
        assert!(
            a.as_str()
                .is_some_and(|n| n.starts_with("t-") && n.len() == 7),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn stale_updates_conflict_and_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 2);
        let a = r
            .create(namespace("a"), FieldValidation::Strict)
            .expect("a");
        let mut labelled = a.object.clone();
        labelled["metadata"]["labels"] = json!({"x": "1"});
        r.update(labelled.clone(), FieldValidation::Strict)
            .expect("first update");
        labelled["metadata"]["labels"] = json!({"x": "2"});
        assert!(matches!(
            r.update(labelled, FieldValidation::Strict),
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            r.create(namespace("a"), FieldValidation::Strict),
            Err(ApiError::AlreadyExists(_))
        ));
        r.create(namespace("b"), FieldValidation::Strict)
            .expect("b");
        assert!(matches!(r.events_since(0), Err(ApiError::Expired { .. })));
        let events = r.events_since(1).expect("events");
        let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventType::Modified, EventType::Added]);
    }

    #[test]
    fn invalid_objects_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path(), 10);
        let err = r
            .create(namespace("Not_A_Name"), FieldValidation::Strict)
            .expect_err("refused");
        let status = err.status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(r.resource_version(), 0);
    }

    struct Refusing;

    impl Storage for Refusing {
        fn load(&self) -> Result<Stored, StorageError> {
            Ok(Stored::default())
        }
        fn commit(&self, _: Commit<'_>) -> Result<(), StorageError> {
            Err(StorageError::Refused {
                reason: "no".into(),
            })
        }
    }

    #[test]
    fn a_refused_commit_leaves_nothing_behind() {
        let r = Registry::new(Box::new(Refusing), ClusterConfig::default(), 10).expect("r");
        assert!(matches!(
            r.create(namespace("a"), FieldValidation::Strict),
            Err(ApiError::StorageFailed(_))
        ));
        assert!(r.get(&ns_id("a")).is_err());
        assert_eq!(r.resource_version(), 0);
        assert_eq!(r.events_since(0).expect("events"), []);
    }
}
