//! Errors: what a request or the store can fail with, and the Kubernetes `Status` object
//! each failed request answers with, worded as the real API server words it so kubectl prints
//! the same lines.

use std::io;
use std::path::PathBuf;

use netd_model::field::{FieldError, FieldErrorKind};
use serde_json::{Value, json};

/// Why a durable store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file of the store could not be read.
    #[error("cannot read {path}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file of the store holds something other than what the store writes.
    #[error("{path} is not a store file")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A write could not be made durable; the previous state stays in place.
    #[error("cannot write {path}")]
    WriteFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A hook the store hands each write to refused it (for example: the lab could not
    /// resolve the cluster it would make); the previous state stays in place.
    #[error("the write was refused: {reason}")]
    Refused {
        /// Why, in the hook's words.
        reason: String,
    },
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    BindFailed {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A listening socket handed to the server could not be served.
    #[error("cannot serve on the listening socket given")]
    ListenerUnusable {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kubeconfig file could not be written.
    #[error("cannot write kubeconfig {path}")]
    KubeconfigFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// One field a write was refused for, as `details.causes` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`...
    pub reason: &'static str,
    /// What is wrong, as the API server words it (`Invalid value: "x": ...`).
    pub message: String,
    /// The field path (`spec.ports[0].port`).
    pub field: String,
}

impl From<&FieldError> for Cause {
    fn from(e: &FieldError) -> Self {
        let (reason, message) = match &e.kind {
            FieldErrorKind::Invalid { value, reason } => (
                "FieldValueInvalid",
                format!("Invalid value: {value:?}: {reason}"),
            ),
            FieldErrorKind::Required => ("FieldValueRequired", "Required value".to_owned()),
            FieldErrorKind::NotSupported { value, allowed } => {
                let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                (
                    "FieldValueNotSupported",
                    format!(
                        "Unsupported value: {value:?}: supported values: {}",
                        quoted.join(", ")
                    ),
                )
            }
            FieldErrorKind::Duplicate { value } => {
                ("FieldValueDuplicate", format!("Duplicate value: {value:?}"))
            }
            FieldErrorKind::Forbidden { reason } => {
                ("FieldValueForbidden", format!("Forbidden: {reason}"))
            }
        };
        Cause {
            reason,
            message,
            field: e.path.to_string(),
        }
    }
}

/// What names the object a failure is about in a Status's `details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The resource's group (empty for the core group).
    pub group: String,
    /// The resource's plural (`pods`), or for Invalid the kind (`Pod`).
    pub kind: String,
    /// The object's name.
    pub name: String,
}

impl Subject {
    /// `pods` or `deployments.apps`, as the API server names a resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// A request the server refuses, and the Status it answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: no such object.
    #[error("{} {:?} not found", .0.qualified(), .0.name)]
    NotFound(Subject),
    /// 404: no such path.
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    /// 409: create of an object that exists.
    #[error("{} {:?} already exists", .0.qualified(), .0.name)]
    AlreadyExists(Subject),
    /// 409: a write with a resourceVersion (or uid) that is not the object's current one.
    #[error(
        "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
        .0.qualified(), .0.name
    )]
    Conflict(Subject),
    /// 409: server-side apply would change fields another manager owns.
    #[error(
        "Apply failed with {} conflict{}: {}",
        .conflicts.len(),
        if .conflicts.len() == 1 { "" } else { "s" },
        .conflicts.join("\n")
    )]
    ApplyConflict {
        /// The object.
        subject: Subject,
        /// One line per conflicting field: `conflict with "manager": .spec.replicas`.
        conflicts: Vec<String>,
    },
    /// 422: the object is refused by validation.
    #[error("{} {:?} is invalid: {}", .subject.kind, .subject.name, causes_text(.causes))]
    Invalid {
        /// The object (its kind, not its resource, as the API server names it here).
        subject: Subject,
        /// Every refused field.
        causes: Vec<Cause>,
    },
    /// 400: the body or a parameter cannot be read.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a Pod subresource that needs a running container (`log`, `exec`, `attach`,
    /// `portforward`): kube-netd runs none.
    #[error(
        "pods {pod:?} has no containers for {subresource}: kube-netd runs none (its lab Pods are network namespaces; `kube-netd lab exec {namespace}/{pod} -- COMMAND` runs a command in one)"
    )]
    NoContainers {
        /// The Pod's namespace.
        namespace: String,
        /// The Pod's name.
        pod: String,
        /// The subresource asked for.
        subresource: String,
    },
    /// 405: a verb the path does not take.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415: a body in a media type the server does not read.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(&'static str),
    /// 410: a watch from a resourceVersion older than the event history.
    #[error("too old resource version: {asked} ({oldest})")]
    Expired {
        /// The resourceVersion asked for.
        asked: u64,
        /// The oldest one the history can still serve from.
        oldest: u64,
    },
    /// 500: the store failed; nothing was written (422 when a hook of the store refused
    /// the write).
    #[error("storage failed: {0}")]
    StorageFailed(#[source] StorageError),
}

fn causes_text(causes: &[Cause]) -> String {
    let lines: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    match lines.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", lines.join(", ")),
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) | ApiError::NoSuchPath => 404,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) | ApiError::ApplyConflict { .. } => {
                409
            }
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) | ApiError::NoContainers { .. } => 400,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Expired { .. } => 410,
            // A hook that refuses a write (the lab's control plane) judged the object.
            ApiError::StorageFailed(StorageError::Refused { .. }) => 422,
            ApiError::StorageFailed(_) => 500,
        }
    }

    /// The Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::NoSuchPath => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) | ApiError::NoContainers { .. } => "BadRequest",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Expired { .. } => "Expired",
            ApiError::StorageFailed(StorageError::Refused { .. }) => "Invalid",
            ApiError::StorageFailed(_) => "InternalError",
        }
    }

    /// The `Status` object the server answers with.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound(s) | ApiError::AlreadyExists(s) | ApiError::Conflict(s) => {
                Some(subject_details(s))
            }
            ApiError::ApplyConflict { subject, conflicts } => {
                let mut d = subject_details(subject);
                d["causes"] = conflicts
                    .iter()
                    .map(|c| json!({"reason": "FieldManagerConflict", "message": c}))
                    .collect();
                Some(d)
            }
            ApiError::Invalid { subject, causes } => {
                let mut d = subject_details(subject);
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                Some(d)
            }
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

fn subject_details(s: &Subject) -> Value {
    let mut d = json!({"name": s.name, "kind": s.kind});
    if !s.group.is_empty() {
        d["group"] = json!(s.group);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_model::FieldPath;
    use pretty_assertions::assert_eq;

    #[test]
    fn statuses_read_like_the_api_servers() {
        let pods = Subject {
            group: String::new(),
            kind: "pods".into(),
            name: "web".into(),
        };
        let e = ApiError::NotFound(pods.clone());
        assert_eq!(e.to_string(), r#"pods "web" not found"#);
        assert_eq!(e.status()["code"], 404);
        let deploy = Subject {
            group: "apps".into(),
            kind: "deployments".into(),
            name: "web".into(),
        };
        assert_eq!(
            ApiError::Conflict(deploy).to_string(),
            r#"Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply your changes to the latest version and try again"#
        );
        let invalid = ApiError::Invalid {
            subject: Subject {
                group: String::new(),
                kind: "Service".into(),
                name: "web".into(),
            },
            causes: vec![Cause::from(&FieldError::invalid(
                FieldPath::new("spec.ports").index(0).child("port"),
                70000,
                "must be between 1 and 65535, inclusive",
            ))],
        };
        assert_eq!(
            invalid.to_string(),
            r#"Service "web" is invalid: spec.ports[0].port: Invalid value: "70000": must be between 1 and 65535, inclusive"#
        );
        let status = invalid.status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["details"]["causes"][0]["field"],
            "spec.ports[0].port"
        );
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
    }
}
