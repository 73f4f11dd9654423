//! How every command names what it talks to: `policy check`, `trace`, `lab probe` and
//! `lab exec` read their sources and destinations with this one parser, so a name means the
//! same thing everywhere.
//!
//! | written                                  | means                                    |
//! |------------------------------------------|------------------------------------------|
//! | `NS/POD`, `pod/NS/POD`                   | a Pod                                    |
//! | `POD`, `pod/POD`                         | a Pod in the namespace of `-n` (default) |
//! | `svc/NS/NAME`, `svc/NAME`                | a Service (`svc/NAME`: in `-n`'s)        |
//! | `node/NAME`                              | a Node                                   |
//! | `10.244.1.5`, `fd00::5`                  | an address                               |
//! | `external`                               | the lab's client outside the cluster     |
//! | `db.default.svc.cluster.local`           | a DNS name (it has a dot)                |
//!
//! kubectl's resource words work as prefixes: `pod`/`po`/`pods`, `svc`/`service`/`services`,
//! `node`/`no`/`nodes`. Which of these a command accepts is the command's to say.

use std::fmt;
use std::net::IpAddr;

use crate::keys::{NodeName, PodRef, ServiceRef};
use crate::validation::{is_dns1123_label, is_dns1123_subdomain};

/// What a command's FROM or TO names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A Pod.
    Pod(PodRef),
    /// A Service.
    Service(ServiceRef),
    /// A Node.
    Node(NodeName),
    /// An address.
    Ip(IpAddr),
    /// The lab's client outside the cluster.
    External,
    /// A DNS name (one with a dot), resolved where the command runs.
    DnsName(String),
}

/// A FROM or TO that names nothing, with what would have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a target: {reason}")]
pub struct TargetParseError {
    /// The text, as given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

/// Every form, for error messages and `--help`.
pub const FORMS: &str = "NS/POD, POD (in -n's namespace), svc/[NS/]NAME, node/NAME, an IP \
                         address, external, or a DNS name with a dot";

impl Target {
    /// Parses `input`; a bare `POD`, `pod/POD` and `svc/NAME` are in `namespace`.
    pub fn parse(input: &str, namespace: &str) -> Result<Self, TargetParseError> {
        let fail = |reason: &str| TargetParseError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        if input == "external" {
            return Ok(Target::External);
        }
        let namespaced = |rest: &str, what: &str| -> Result<(String, String), TargetParseError> {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [name] if is_dns1123_subdomain(name) => {
                    Ok((namespace.to_owned(), (*name).to_owned()))
                }
                [ns, name] if is_dns1123_label(ns) && is_dns1123_subdomain(name) => {
                    Ok(((*ns).to_owned(), (*name).to_owned()))
                }
                _ => Err(fail(&format!("expected {what}/[NS/]NAME"))),
            }
        };
        if let Some((word, rest)) = input.split_once('/') {
            match word {
                "svc" | "service" | "services" => {
                    let (ns, name) = namespaced(rest, "svc")?;
                    return Ok(Target::Service(ServiceRef::new(ns, name)));
                }
                "pod" | "po" | "pods" => {
                    let (ns, name) = namespaced(rest, "pod")?;
                    return Ok(Target::Pod(PodRef::new(ns, name)));
                }
                "node" | "no" | "nodes" => {
                    return if is_dns1123_subdomain(rest) {
                        Ok(Target::Node(NodeName::new(rest)))
                    } else {
                        Err(fail("expected node/NAME"))
                    };
                }
                _ => {
                    return input
                        .parse::<PodRef>()
                        .ok()
                        .filter(|p| {
                            is_dns1123_label(p.namespace.as_str()) && is_dns1123_subdomain(&p.name)
                        })
                        .map(Target::Pod)
                        .ok_or_else(|| fail(&format!("expected one of {FORMS}")));
                }
            }
        }
        if input.contains('.') {
            let labels_ok = input.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            return if labels_ok {
                Ok(Target::DnsName(input.to_owned()))
            } else {
                Err(fail(&format!("expected one of {FORMS}")))
            };
        }
        if is_dns1123_subdomain(input) {
            return Ok(Target::Pod(PodRef::new(namespace, input)));
        }
        Err(fail(&format!("expected one of {FORMS}")))
    }

    /// What kind of thing this is, for "a service cannot be a source" messages.
    pub fn what(&self) -> &'static str {
        match self {
            Target::Pod(_) => "a pod",
            Target::Service(_) => "a service",
            Target::Node(_) => "a node",
            Target::Ip(_) => "an IP address",
            Target::External => "the external client",
            Target::DnsName(_) => "a DNS name",
        }
    }
}

impl fmt::Display for Target {
    /// The canonical form: `NS/POD`, `svc/NS/NAME`, `node/NAME`, the address, `external`, or
    /// the DNS name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pod(p) => write!(f, "{p}"),
            Target::Service(s) => write!(f, "svc/{s}"),
            Target::Node(n) => write!(f, "node/{n}"),
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::External => f.write_str("external"),
            Target::DnsName(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Target, TargetParseError> {
        Target::parse(s, "shop")
    }

    #[test]
    fn every_form_parses_to_one_meaning() {
        let pod = Ok(Target::Pod(PodRef::new("x", "a")));
        assert_eq!(parse("x/a"), pod);
        assert_eq!(parse("pod/x/a"), pod);
        assert_eq!(parse("po/x/a"), pod);
        assert_eq!(parse("a"), Ok(Target::Pod(PodRef::new("shop", "a"))));
        assert_eq!(parse("pod/a"), Ok(Target::Pod(PodRef::new("shop", "a"))));
        let svc = Ok(Target::Service(ServiceRef::new("x", "web")));
        assert_eq!(parse("svc/x/web"), svc);
        assert_eq!(parse("service/x/web"), svc);
        assert_eq!(
            parse("svc/web"),
            Ok(Target::Service(ServiceRef::new("shop", "web")))
        );
        assert_eq!(
            parse("node/node-1"),
            Ok(Target::Node(NodeName::new("node-1")))
        );
        assert_eq!(
            parse("10.0.0.1"),
            Ok(Target::Ip("10.0.0.1".parse().expect("ip")))
        );
        assert_eq!(
            parse("fd00::1"),
            Ok(Target::Ip("fd00::1".parse().expect("ip")))
        );
        assert_eq!(parse("external"), Ok(Target::External));
        assert_eq!(
            parse("web.x.svc.cluster.local"),
            Ok(Target::DnsName("web.x.svc.cluster.local".into()))
        );
        for t in ["x/a", "svc/x/web", "node/node-1", "10.0.0.1", "external"] {
            assert_eq!(parse(t).expect(t).to_string(), t);
        }
    }

    #[test]
    fn malformed_targets_are_refused() {
        for bad in [
            "",
            "svc/",
            "svc/a/b/c",
            "node/",
            "node/a/b",
            "x/",
            "/a",
            "a/b/c",
            "A",
            "a_b",
            "a..b",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.input, bad);
        }
    }
}
