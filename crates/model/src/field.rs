//! Field-level validation errors, shaped like the API server's `field.Error`: a path into the
//! object (`spec.ingress[0].ports[0].port`), what kind of problem it is, and the bad value.

use std::fmt;

/// A path into an object, printed the way the API server prints it: `spec.ports[1].nodePort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The path to a top-level field.
    pub fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    /// The path to a field of this one.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The path to an element of this list.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path to a map entry of this field.
    pub fn key(&self, k: &str) -> Self {
        Self(format!("{}[{k}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The value is malformed or out of range; `reason` says how.
    Invalid {
        /// The value as the user wrote it.
        value: String,
        /// Why it is rejected, lower-case, e.g. "is not a valid port name".
        reason: String,
    },
    /// A required field is missing.
    Required,
    /// The value is not one of the allowed ones.
    NotSupported {
        /// The value as the user wrote it.
        value: String,
        /// The allowed values.
        allowed: Vec<&'static str>,
    },
    /// The value is already taken (a nodePort used twice, a duplicate port name...).
    Duplicate {
        /// The duplicated value.
        value: String,
    },
    /// The field may not be set in this combination; `reason` says why.
    Forbidden {
        /// Why it is not allowed.
        reason: String,
    },
}

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct FieldError {
    /// Where in the object.
    pub path: FieldPath,
    /// What is wrong.
    pub kind: FieldErrorKind,
}

impl FieldError {
    /// An invalid value.
    pub fn invalid(path: FieldPath, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self {
            path,
            kind: FieldErrorKind::Invalid {
                value: value.to_string(),
                reason: reason.into(),
            },
        }
    }

    /// A missing required field.
    pub fn required(path: FieldPath) -> Self {
        Self {
            path,
            kind: FieldErrorKind::Required,
        }
    }

    /// A value outside an enumeration.
    pub fn not_supported(
        path: FieldPath,
        value: impl fmt::Display,
        allowed: &[&'static str],
    ) -> Self {
        Self {
            path,
            kind: FieldErrorKind::NotSupported {
                value: value.to_string(),
                allowed: allowed.to_vec(),
            },
        }
    }

    /// A duplicated value.
    pub fn duplicate(path: FieldPath, value: impl fmt::Display) -> Self {
        Self {
            path,
            kind: FieldErrorKind::Duplicate {
                value: value.to_string(),
            },
        }
    }

    /// A forbidden combination.
    pub fn forbidden(path: FieldPath, reason: impl Into<String>) -> Self {
        Self {
            path,
            kind: FieldErrorKind::Forbidden {
                reason: reason.into(),
            },
        }
    }
}

impl fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldErrorKind::Invalid { value, reason } => write!(f, "{value:?} {reason}"),
            FieldErrorKind::Required => f.write_str("required value"),
            FieldErrorKind::NotSupported { value, allowed } => {
                write!(f, "unsupported value {value:?}: supported values: ")?;
                let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                f.write_str(&quoted.join(", "))
            }
            FieldErrorKind::Duplicate { value } => write!(f, "duplicate value {value:?}"),
            FieldErrorKind::Forbidden { reason } => write!(f, "forbidden: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_messages_read_like_the_api_server() {
        let p = FieldPath::new("spec")
            .child("ingress")
            .index(0)
            .child("ports")
            .index(0)
            .child("port");
        assert_eq!(p.as_str(), "spec.ingress[0].ports[0].port");
        let e = FieldError::invalid(p, "http-", "is not a valid port name");
        assert_eq!(
            e.to_string(),
            r#"spec.ingress[0].ports[0].port: "http-" is not a valid port name"#
        );
        let e =
            FieldError::not_supported(FieldPath::new("protocol"), "ICMP", &["TCP", "UDP", "SCTP"]);
        assert_eq!(
            e.to_string(),
            r#"protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP""#
        );
    }
}
