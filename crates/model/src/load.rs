//! Loading manifests: files, directories and standard input, as `kubectl apply -f` reads them.
//!
//! [`load`] reads every path (a directory recursively, its `.yaml`, `.yml` and `.json` files
//! in sorted order; `-` for standard input), splits each into documents (multi-document YAML,
//! or a stream of JSON objects), unpacks `kind: List`, decodes each object into its
//! k8s-openapi type and checks it with [`Validator`]. Kinds kube-netd does not read are
//! skipped with a [`LoadWarning`]. Any error refuses the whole load: nothing half-loaded.
//!
//! Fields the object's type does not have are refused by default, as the API server refuses
//! them under kubectl's default `--validate=strict`: a misspelt `from` or `matchLabels` would
//! otherwise read as "any peer" or "every pod" and open what the policy meant to close.
//! [`FieldValidation`] relaxes this to a warning, or to nothing, as `--validate` does.
//!
//! Errors name the file, the document and the object, then the field, so that printed with
//! their causes (`{:#}` with anyhow) they read:
//!
//! ```text
//! policy.yaml: document 2 (NetworkPolicy default/web): spec.ingress[0].ports[0].port: "http-" is not a valid port name
//! ```
//!
//! [`load_references`] reads the same inputs the way `kubectl delete -f` does: only what names
//! each object (`apiVersion`, `kind`, `metadata.name`, `metadata.namespace`), so a file that
//! would not validate can still say what to delete.
//!
//! The only I/O is reading the inputs; [`load_str`] and [`load_references_str`] do the rest on
//! text in memory.

// A load fails at most once per run, before anything else happens: flat variants that are
// easy to match on are worth more here than a small `Result`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use crate::config::ClusterConfig;
use crate::field::{FieldError, FieldPath};
use crate::object::{Kind, Object, ObjectId};
use crate::validate::Validator;

/// The path that stands for standard input.
pub const STDIN_PATH: &str = "-";
/// The name standard input is reported under.
pub const STDIN_NAME: &str = "<stdin>";
/// The file extensions read from directories.
pub const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// What a load does with fields an object's type does not have, as kubectl's `--validate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FieldValidation {
    /// Refuse the load, naming every unknown field (kubectl's default).
    #[default]
    Strict,
    /// Load, and report each unknown field as a [`LoadWarning::UnknownField`].
    Warn,
    /// Load, saying nothing (the fields are dropped).
    Ignore,
}

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    /// The file as given (a directory's files under the directory as given), or `<stdin>`.
    pub file: String,
    /// The document within the file, counting from 1.
    pub document: usize,
    /// The index in the `items` of a `kind: List` document, if it came from one.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    /// `file: document N`, or `file: document N, items[I]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// One loaded object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The object, validated; a namespaced object without a namespace is put in `default`,
    /// and a cluster-scoped one loses any namespace, as the API server does.
    pub object: Object,
    /// Where it came from.
    pub source: Source,
}

/// The result of a load: the objects in input order, and what was skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    /// The objects, in the order they were read.
    pub objects: Vec<Loaded>,
    /// What was skipped, in the order it was met.
    pub warnings: Vec<LoadWarning>,
}

impl Manifests {
    /// The objects alone, in the order they were read.
    pub fn into_objects(self) -> Vec<Object> {
        self.objects.into_iter().map(|l| l.object).collect()
    }
}

/// Something skipped while loading; the load goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadWarning {
    /// A document of a kind kube-netd does not read (a ConfigMap, a CustomResource...).
    UnknownKind {
        /// Where it is.
        source: Source,
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
    /// Fields the object's type does not have, dropped under [`FieldValidation::Warn`].
    UnknownField {
        /// Where the object is.
        source: Source,
        /// The object.
        id: ObjectId,
        /// The unknown fields, in the order they were met.
        fields: Vec<FieldPath>,
    },
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadWarning::UnknownKind {
                source,
                api_version,
                kind,
            } => {
                write!(
                    f,
                    "{source}: skipped {kind} ({api_version}), a kind kube-netd does not read"
                )
            }
            LoadWarning::UnknownField { source, id, fields } => {
                write!(f, "{source} ({id}): ignored {}", UnknownFields(fields))
            }
        }
    }
}

/// Why a load was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file (or standard input) could not be read.
    #[error("cannot read {file}")]
    ReadFailed {
        /// The file, as given.
        file: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A directory could not be listed.
    #[error("cannot list directory {dir}")]
    ListFailed {
        /// The directory, as given.
        dir: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A document is not valid YAML; the cause names the line and column.
    #[error("{at}: invalid YAML")]
    InvalidYaml {
        /// Where.
        at: Source,
        /// The parser's error, with its position.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A document is not valid JSON; the cause names the line and column.
    #[error("{at}: invalid JSON")]
    InvalidJson {
        /// Where.
        at: Source,
        /// The parser's error, with its position.
        #[source]
        source: serde_json::Error,
    },
    /// A document is not a mapping, so not an object.
    #[error("{at}: not a Kubernetes object (a mapping with `apiVersion` and `kind`)")]
    NotAnObject {
        /// Where.
        at: Source,
    },
    /// A document lacks `apiVersion` or `kind`, or has one that is not a string.
    #[error("{at}: `{field}` must be set to a string")]
    MissingTypeField {
        /// Where.
        at: Source,
        /// `apiVersion` or `kind`.
        field: &'static str,
    },
    /// A `kind: List` whose `items` is not a list.
    #[error("{at}: `items` of a {kind} must be a list of objects")]
    InvalidList {
        /// Where.
        at: Source,
        /// The list's kind (`List`, `PodList`...).
        kind: String,
    },
    /// A directory given to read holds no `.yaml`, `.yml` or `.json` file: nothing would be
    /// read from it, which is never what was meant.
    #[error("{dir}: no .yaml, .yml or .json files in this directory")]
    NoManifests {
        /// The directory, as given.
        dir: String,
    },
    /// A List inside a List.
    #[error("{at}: a List may not contain another List")]
    NestedList {
        /// Where the inner List is.
        at: Source,
    },
    /// A kind kube-netd does not read, where only known kinds make sense (deleting).
    #[error("{at}: {kind} ({api_version}) is not a kind kube-netd knows")]
    UnknownKind {
        /// Where.
        at: Source,
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
    /// A kind kube-netd reads, at an API version it does not.
    #[error("{at}: {kind} must have apiVersion {}, not {api_version:?}", kind.api_version())]
    UnsupportedApiVersion {
        /// Where.
        at: Source,
        /// The kind.
        kind: Kind,
        /// The `apiVersion` written.
        api_version: String,
    },
    /// A field has the wrong type or shape for its object; the cause names the field.
    #[error("{at} ({})", Shown(id))]
    DecodeFailed {
        /// Where.
        at: Source,
        /// The object, as far as it could be read.
        id: ObjectId,
        /// The field path and what was expected there.
        #[source]
        source: serde_path_to_error::Error<serde_yaml_ng::Error>,
    },
    /// Fields the object's type does not have, under [`FieldValidation::Strict`].
    #[error(
        "{at} ({}): strict decoding error: {}",
        Shown(id),
        UnknownFields(fields)
    )]
    UnknownField {
        /// Where.
        at: Source,
        /// The object.
        id: ObjectId,
        /// The unknown fields, in the order they were met.
        fields: Vec<FieldPath>,
    },
    /// An object the API server would reject; the cause names the field.
    #[error("{at} ({})", Shown(id))]
    InvalidObject {
        /// Where.
        at: Source,
        /// The object.
        id: ObjectId,
        /// What is wrong, and where in the object.
        #[source]
        source: FieldError,
    },
    /// An object in another namespace than the one the command was given, as kubectl refuses
    /// it.
    #[error(
        "{at} ({id}): the object's namespace is not {namespace:?}, the namespace given; give \
         its own namespace, or none"
    )]
    NamespaceMismatch {
        /// Where.
        at: Source,
        /// The object, in its own namespace.
        id: ObjectId,
        /// The namespace given.
        namespace: String,
    },
    /// Two objects with the same kind, namespace and name.
    #[error("{second} ({id}): already defined in {first}")]
    DuplicateObject {
        /// Where it was defined first.
        first: Source,
        /// Where it was defined again.
        second: Source,
        /// The object.
        id: ObjectId,
    },
}

/// Loads manifests from files, directories (recursively: their `.yaml`, `.yml` and `.json`
/// files, in sorted order) and `-` for standard input, in the order given, refusing unknown
/// fields. Any error refuses the whole load.
pub fn load(paths: &[PathBuf], config: &ClusterConfig) -> Result<Manifests, LoadError> {
    load_with(paths, config, FieldValidation::Strict)
}

/// [`load()`], with unknown fields treated as `validation` says.
pub fn load_with(
    paths: &[PathBuf],
    config: &ClusterConfig,
    validation: FieldValidation,
) -> Result<Manifests, LoadError> {
    let mut inputs = Vec::new();
    for path in paths {
        read_path(path, &mut inputs)?;
    }
    let mut loader = Loader::new(config, validation);
    for (file, text) in &inputs {
        loader.add_text(file, text)?;
    }
    Ok(loader.finish())
}

/// Loads manifests from text already read, refusing unknown fields; `name` is how errors name
/// it (a file name, or [`STDIN_NAME`]).
pub fn load_str(name: &str, text: &str, config: &ClusterConfig) -> Result<Manifests, LoadError> {
    load_str_with(name, text, config, FieldValidation::Strict)
}

/// [`load_str`], with unknown fields treated as `validation` says.
pub fn load_str_with(
    name: &str,
    text: &str,
    config: &ClusterConfig,
    validation: FieldValidation,
) -> Result<Manifests, LoadError> {
    let mut loader = Loader::new(config, validation);
    loader.add_text(name, text)?;
    Ok(loader.finish())
}

/// An object a manifest names, as `kubectl delete -f` reads it: only `apiVersion`, `kind`,
/// `metadata.name` and `metadata.namespace` count; the rest (a spec that would not validate)
/// is not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The object named; a namespaced one without a namespace is in `default`.
    pub id: ObjectId,
    /// Where it is named.
    pub source: Source,
}

/// The result of [`load_references`]: the objects named, each once, in the order first named.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct References {
    /// The references, in input order; one named twice is listed once.
    pub references: Vec<Reference>,
}

/// Reads the objects that files, directories and `-` name, as `kubectl delete -f` does: each
/// document needs `apiVersion`, `kind` (one kube-netd reads; any other is an error, since
/// it cannot be deleted) and `metadata.name`; nothing else is decoded or validated.
///
/// `namespace` is kubectl's `-n`: the namespace of namespaced objects that name none
/// (`default` without it); one that names another namespace is refused.
pub fn load_references(
    paths: &[PathBuf],
    namespace: Option<&str>,
) -> Result<References, LoadError> {
    let mut inputs = Vec::new();
    let mut references = References::default();
    for path in paths {
        read_path(path, &mut inputs)?;
    }
    for (file, text) in &inputs {
        add_references(file, text, namespace, &mut references)?;
    }
    Ok(references)
}

/// [`load_references`] on text already read; `name` is how errors name it.
pub fn load_references_str(
    name: &str,
    text: &str,
    namespace: Option<&str>,
) -> Result<References, LoadError> {
    let mut references = References::default();
    add_references(name, text, namespace, &mut references)?;
    Ok(references)
}

/// Prints unknown fields as the API server lists them: `unknown field "spec.ingress[0].form"`,
/// comma-separated.
struct UnknownFields<'a>(&'a [FieldPath]);

impl fmt::Display for UnknownFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "unknown field \"{field}\"")?;
        }
        Ok(())
    }
}

/// Prints an [`ObjectId`], leaving out a name that is missing.
struct Shown<'a>(&'a ObjectId);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0;
        match (id.namespace.is_empty(), id.name.is_empty()) {
            (_, false) => write!(f, "{id}"),
            (true, true) => write!(f, "{} without a name", id.kind),
            (false, true) => write!(f, "{} in {} without a name", id.kind, id.namespace),
        }
    }
}

fn read_path(path: &Path, inputs: &mut Vec<(String, String)>) -> Result<(), LoadError> {
    let shown = path.display().to_string();
    if path.as_os_str() == STDIN_PATH {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| LoadError::ReadFailed {
                file: STDIN_NAME.to_owned(),
                source,
            })?;
        inputs.push((STDIN_NAME.to_owned(), text));
        return Ok(());
    }
    if !path.is_dir() {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadFailed {
            file: shown.clone(),
            source,
        })?;
        inputs.push((shown, text));
        return Ok(());
    }
    let mut files = Vec::new();
    list_manifests(path, &mut files)?;
    if files.is_empty() {
        return Err(LoadError::NoManifests { dir: shown });
    }
    files.sort();
    for file in files {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::ReadFailed {
            file: shown.clone(),
            source,
        })?;
        inputs.push((shown, text));
    }
    Ok(())
}

/// Collects the manifest files under `dir`, recursively.
fn list_manifests(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let failed = |source| LoadError::ListFailed {
        dir: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let path = entry.path();
        // As `kubectl` walks: symbolic links to directories are not followed, so no loops.
        if entry.file_type().map_err(failed)?.is_dir() {
            list_manifests(&path, files)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads documents one after another, validating each object as it comes.
struct Loader<'a> {
    validator: Validator<'a>,
    validation: FieldValidation,
    seen: BTreeMap<ObjectId, Source>,
    manifests: Manifests,
}

impl<'a> Loader<'a> {
    fn new(config: &'a ClusterConfig, validation: FieldValidation) -> Self {
        Self {
            validator: Validator::new(config),
            validation,
            seen: BTreeMap::new(),
            manifests: Manifests {
                objects: Vec::new(),
                warnings: Vec::new(),
            },
        }
    }

    fn finish(self) -> Manifests {
        self.manifests
    }

    fn add_text(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        for_each_object(file, text, &mut |map, type_meta, at| {
            self.add_document(map, type_meta, at)
        })
    }

    fn add_document(
        &mut self,
        map: Mapping,
        TypeMeta { api_version, kind }: TypeMeta,
        at: Source,
    ) -> Result<(), LoadError> {
        let Some(known) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) else {
            self.manifests.warnings.push(LoadWarning::UnknownKind {
                source: at,
                api_version,
                kind,
            });
            return Ok(());
        };
        if known.api_version() != api_version {
            return Err(LoadError::UnsupportedApiVersion {
                at,
                kind: known,
                api_version,
            });
        }
        let id = id_of(known, &map);
        let mut unknown = Vec::new();
        let mut object = decode(known, Value::Mapping(map), &mut unknown).map_err(|source| {
            LoadError::DecodeFailed {
                at: at.clone(),
                id: id.clone(),
                source,
            }
        })?;
        if !unknown.is_empty() {
            match self.validation {
                FieldValidation::Strict => {
                    return Err(LoadError::UnknownField {
                        at,
                        id,
                        fields: unknown,
                    });
                }
                FieldValidation::Warn => self.manifests.warnings.push(LoadWarning::UnknownField {
                    source: at.clone(),
                    id,
                    fields: unknown,
                }),
                FieldValidation::Ignore => {}
            }
        }
        default_namespace(&mut object);
        self.add_object(object, at)
    }

    fn add_object(&mut self, object: Object, at: Source) -> Result<(), LoadError> {
        let id = object.id();
        self.validator
            .check(&object)
            .map_err(|source| LoadError::InvalidObject {
                at: at.clone(),
                id: id.clone(),
                source,
            })?;
        if let Some(first) = self.seen.get(&id) {
            return Err(LoadError::DuplicateObject {
                first: first.clone(),
                second: at,
                id,
            });
        }
        self.seen.insert(id, at.clone());
        self.manifests.objects.push(Loaded { object, source: at });
        Ok(())
    }
}

/// An object's `apiVersion` and `kind`, as written.
struct TypeMeta {
    api_version: String,
    kind: String,
}

/// Splits `text` into documents (a JSON stream if it starts with `{`, as kubectl decides,
/// multi-document YAML otherwise), unpacks `kind: List`, and hands every object to `each`
/// with its `apiVersion`, `kind` and place. Empty documents are skipped.
fn for_each_object(
    file: &str,
    text: &str,
    each: &mut dyn FnMut(Mapping, TypeMeta, Source) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let at = |document| Source {
        file: file.to_owned(),
        document,
        item: None,
    };
    if text.trim_start().starts_with('{') {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, document) in stream.enumerate() {
            let value = document.map_err(|source| LoadError::InvalidJson {
                at: at(i + 1),
                source,
            })?;
            each_object(value, at(i + 1), each)?;
        }
        return Ok(());
    }
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let invalid = |source| LoadError::InvalidYaml {
            at: at(i + 1),
            source,
        };
        let mut value: Value = serde::Deserialize::deserialize(document).map_err(invalid)?;
        value.apply_merge().map_err(invalid)?;
        each_object(value, at(i + 1), each)?;
    }
    Ok(())
}

/// One document (or one item of a List) of [`for_each_object`].
fn each_object(
    value: Value,
    at: Source,
    each: &mut dyn FnMut(Mapping, TypeMeta, Source) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let Value::Mapping(mut map) = value else {
        if value.is_null() {
            // An empty document: `---` twice, or only comments.
            return Ok(());
        }
        return Err(LoadError::NotAnObject { at });
    };
    let api_version = type_field(&map, "apiVersion", &at)?.to_owned();
    let kind = type_field(&map, "kind", &at)?.to_owned();
    if kind != "List" && !(kind.ends_with("List") && map.contains_key("items")) {
        return each(map, TypeMeta { api_version, kind }, at);
    }
    if at.item.is_some() {
        return Err(LoadError::NestedList { at });
    }
    let items = match map.remove("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(_) => return Err(LoadError::InvalidList { at, kind }),
    };
    for (i, item) in items.into_iter().enumerate() {
        let at = Source {
            item: Some(i),
            ..at.clone()
        };
        each_object(item, at, each)?;
    }
    Ok(())
}

/// Reads the references of one text into `references`, skipping one already there.
fn add_references(
    file: &str,
    text: &str,
    namespace: Option<&str>,
    references: &mut References,
) -> Result<(), LoadError> {
    for_each_object(file, text, &mut |map, type_meta, at| {
        let reference = reference(&map, type_meta, at, namespace)?;
        if !references.references.iter().any(|r| r.id == reference.id) {
            references.references.push(reference);
        }
        Ok(())
    })
}

/// The object one document names; see [`load_references`].
fn reference(
    map: &Mapping,
    TypeMeta { api_version, kind }: TypeMeta,
    at: Source,
    namespace: Option<&str>,
) -> Result<Reference, LoadError> {
    let Some(known) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) else {
        return Err(LoadError::UnknownKind {
            at,
            api_version,
            kind,
        });
    };
    if known.api_version() != api_version {
        return Err(LoadError::UnsupportedApiVersion {
            at,
            kind: known,
            api_version,
        });
    }
    let mut id = id_of(known, map);
    if id.name.is_empty() {
        return Err(LoadError::InvalidObject {
            at,
            id,
            source: FieldError::required(FieldPath::new("metadata").child("name")),
        });
    }
    let written = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    if let (true, Some(given)) = (known.is_namespaced(), namespace) {
        match written {
            Some(ns) if ns != given => {
                return Err(LoadError::NamespaceMismatch {
                    at,
                    id,
                    namespace: given.to_owned(),
                });
            }
            _ => id.namespace = given.to_owned(),
        }
    }
    Ok(Reference { id, source: at })
}

fn type_field<'m>(
    map: &'m Mapping,
    field: &'static str,
    at: &Source,
) -> Result<&'m str, LoadError> {
    map.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LoadError::MissingTypeField {
            at: at.clone(),
            field,
        })
}

/// The identity of an object not yet decoded, for error messages: whatever of its name and
/// namespace can be read.
fn id_of(kind: Kind, map: &Mapping) -> ObjectId {
    let meta = map.get("metadata");
    let text = |field: &str| meta.and_then(|m| m.get(field)).and_then(Value::as_str);
    let namespace = match text("namespace").filter(|ns| !ns.is_empty()) {
        _ if !kind.is_namespaced() => "",
        Some(ns) => ns,
        None => "default",
    };
    ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name: text("name").unwrap_or_default().to_owned(),
    }
}

/// Decodes `value` as a `kind`, pushing onto `unknown` the path of every field the type does
/// not have (k8s-openapi's decoders skip them silently).
fn decode(
    kind: Kind,
    value: Value,
    unknown: &mut Vec<FieldPath>,
) -> Result<Object, serde_path_to_error::Error<serde_yaml_ng::Error>> {
    Ok(match kind {
        Kind::Namespace => Object::Namespace(strict(value, unknown)?),
        Kind::Node => Object::Node(Box::new(strict(value, unknown)?)),
        Kind::Deployment => Object::Deployment(Box::new(strict(value, unknown)?)),
        Kind::Pod => Object::Pod(Box::new(strict(value, unknown)?)),
        Kind::Service => Object::Service(Box::new(strict(value, unknown)?)),
        Kind::EndpointSlice => Object::EndpointSlice(strict(value, unknown)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(Box::new(strict(value, unknown)?)),
    })
}

fn strict<T: DeserializeOwned>(
    value: Value,
    unknown: &mut Vec<FieldPath>,
) -> Result<T, serde_path_to_error::Error<serde_yaml_ng::Error>> {
    let mut skipped = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut skipped))
}

/// A path as serde_ignored reports it, written as the API server writes field paths.
fn field_path(path: &serde_ignored::Path<'_>) -> FieldPath {
    use serde_ignored::Path;
    match path {
        Path::Root => FieldPath::default(),
        Path::Seq { parent, index } => field_path(parent).index(*index),
        Path::Map { parent, key } => field_path(parent).child(key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Puts a namespaced object without a namespace in `default` and takes the namespace off a
/// cluster-scoped one, as the API server does on create.
fn default_namespace(object: &mut Object) {
    let namespaced = object.kind().is_namespaced();
    let meta = object.meta_mut();
    if !namespaced {
        meta.namespace = None;
    } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
}
