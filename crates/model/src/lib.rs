//! # netd-model: kube-netd's one picture of the cluster
//!
//! Every other crate reads the cluster through this one. Start with [`ClusterState`], the
//! immutable, indexed snapshot; its typed views live in [`view`], the keys in [`keys`].
//!
//! - [`object`]: the Kubernetes objects we read, as k8s-openapi types ([`Object`], [`Kind`]).
//! - [`keys`]: typed names (`PodRef`, `ServicePortName`, `NodeName`, [`Protocol`]...).
//! - [`selector`]: label selectors with Kubernetes' exact semantics.
//! - [`view`]: validated, typed views of each object (parse once, never re-check).
//! - [`state`]: [`ClusterState`] and its lookups by key, selector, IP and node.
//! - [`target`]: how commands name pods, services, nodes and addresses ([`Target`]).
//! - [`config`]: the cluster's address ranges and DNS zone ([`ClusterConfig`]).
//! - [`field`] and [`validation`]: field paths, field errors and the primitive validators.
//! - [`load`](mod@load): reading manifests (files, directories, stdin; YAML, JSON, `kind: List`) into
//!   validated objects ([`load()`], [`load_str`]), with errors naming file, document and field.
//! - [`validate`]: what the API server would reject, object by object ([`Validator`]).
//! - [`report`]: an error and its causes on one line ([`error_chain`]).

pub mod config;
pub mod family;
pub mod field;
pub mod keys;
pub mod load;
pub mod object;
pub mod report;
pub mod selector;
pub mod state;
pub mod target;
pub mod validate;
pub mod validation;
pub mod view;

pub use config::{ClusterConfig, IpFamilies, UnknownIpFamilies};
pub use family::IpFamily;
pub use field::{FieldError, FieldPath};
pub use keys::{
    DeploymentRef, EndpointSliceRef, NamespaceName, NodeName, PodRef, PolicyRef, Protocol,
    ServicePortName, ServiceRef,
};
pub use load::{
    FieldValidation, LoadError, LoadWarning, Loaded, Manifests, Reference, References, Source,
    load, load_references, load_references_str, load_str, load_str_with, load_with,
};
pub use object::{Kind, Object, ObjectId};
pub use report::error_chain;
pub use selector::{LabelSelector, Labels, SelectorParseError};
pub use state::{ClusterState, StateError};
pub use target::{Target, TargetParseError};
pub use validate::Validator;
