//! Typed keys: the names by which every other crate refers to cluster objects.
//!
//! Each key is ordered, hashable and prints the way `kubectl` and kube-proxy print it
//! (`ns/name`, `ns/name:port`), so sorted collections of keys give deterministic output.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of a Namespace (a DNS-1123 label).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NamespaceName(String);

/// The name of a Node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(String);

macro_rules! string_key {
    ($ty:ident) => {
        impl $ty {
            /// Wraps a name. The loader has validated names before they get here.
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $ty {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_key!(NamespaceName);
string_key!(NodeName);

/// Error parsing a `namespace/name` key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not of the form NAMESPACE/NAME")]
pub struct KeyParseError {
    /// The text that failed to parse.
    pub input: String,
}

macro_rules! namespaced_key {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $ty {
            /// The object's namespace.
            pub namespace: NamespaceName,
            /// The object's name within the namespace.
            pub name: String,
        }

        impl $ty {
            /// A key from a namespace and a name.
            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
                Self { namespace: NamespaceName::new(namespace), name: name.into() }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.namespace, self.name)
            }
        }

        impl FromStr for $ty {
            type Err = KeyParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                        Ok(Self::new(ns, name))
                    }
                    _ => Err(KeyParseError { input: s.to_owned() }),
                }
            }
        }
    };
}

namespaced_key!(
    /// A Pod, by namespace and name.
    PodRef
);
namespaced_key!(
    /// A Service, by namespace and name.
    ServiceRef
);
namespaced_key!(
    /// An EndpointSlice, by namespace and name.
    EndpointSliceRef
);
namespaced_key!(
    /// A NetworkPolicy, by namespace and name.
    PolicyRef
);
namespaced_key!(
    /// A Deployment, by namespace and name.
    DeploymentRef
);

/// One port of one Service: kube-proxy's `ServicePortName`.
///
/// Prints as `ns/name` for an unnamed port and `ns/name:port` for a named one; this exact
/// string feeds rule comments and chain-name hashes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortName {
    /// The Service.
    pub service: ServiceRef,
    /// The port's name; empty for the single unnamed port of a Service.
    pub port: String,
    /// The port's protocol (two ports may share a name only across protocols in the
    /// EndpointSlice API, so the protocol is part of the key).
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// A transport protocol, as Kubernetes spells it in the API.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, the API default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols, in a fixed order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_api_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case spelling used by iptables, nftables and kube-proxy's hashes.
    pub fn as_lower_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_api_str())
    }
}

/// Error parsing a protocol name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a supported protocol (TCP, UDP or SCTP)")]
pub struct ProtocolParseError(pub String);

impl FromStr for Protocol {
    type Err = ProtocolParseError;

    /// Accepts the API spelling and, for command lines, the lower-case one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" | "tcp" => Ok(Protocol::Tcp),
            "UDP" | "udp" => Ok(Protocol::Udp),
            "SCTP" | "sctp" => Ok(Protocol::Sctp),
            _ => Err(ProtocolParseError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_port_name_prints_like_kube_proxy() {
        let svc = ServiceRef::new("ns1", "svc1");
        let named = ServicePortName {
            service: svc.clone(),
            port: "p80".into(),
            protocol: Protocol::Tcp,
        };
        let unnamed = ServicePortName {
            service: svc,
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        assert_eq!(named.to_string(), "ns1/svc1:p80");
        assert_eq!(unnamed.to_string(), "ns1/svc1");
    }

    #[test]
    fn namespaced_keys_parse_and_print() {
        let p: PodRef = "default/web-1".parse().expect("valid key");
        assert_eq!(p, PodRef::new("default", "web-1"));
        assert_eq!(p.to_string(), "default/web-1");
        for bad in ["", "default", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<PodRef>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn protocol_round_trips() {
        for p in Protocol::ALL {
            assert_eq!(p.as_api_str().parse::<Protocol>(), Ok(p));
            assert_eq!(p.as_lower_str().parse::<Protocol>(), Ok(p));
        }
        assert!("ICMP".parse::<Protocol>().is_err());
    }
}
