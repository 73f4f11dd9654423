//! The configuration file of `kube-netd dns` (`--config FILE`): [`DnsConfig`].
//!
//! YAML, because it is what a Kubernetes user already writes and what a ConfigMap holds
//! (kube-proxy's and the kubelet's configuration files are YAML too), and because the project
//! already parses YAML strictly. Keys are camelCase; every key is optional; an unknown key is
//! refused by name, and a bad value names its field. Nothing starts on an error.
//!
//! ```yaml
//! zone: cluster.local        # the cluster domain
//! ttl: 5                     # TTL of answers, and of negative answers (the SOA minimum)
//! pods: insecure             # a-b-c-d.<ns>.pod.<zone>: insecure, verified or disabled
//! listen:
//!   dns: 0.0.0.0:53          # UDP and TCP
//!   health: 0.0.0.0:8080     # /health ("" turns a listener off)
//!   ready: 0.0.0.0:8181      # /ready
//!   metrics: 0.0.0.0:9153    # /metrics
//! upstreams: [192.0.2.53]    # port 53 unless given; or:
//! resolvConf: /etc/resolv.conf
//! forwardTimeoutSeconds: 2
//! cache:
//!   size: 10000              # answers kept (0: no cache)
//!   maxTTL: 30               # seconds a positive answer is kept at most
//!   denialTTL: 30            # seconds a denial (NXDOMAIN, NODATA) is kept at most (0: none)
//! stubDomains:               # suffix -> its own resolvers
//!   corp.example: [10.150.0.1, "10.150.0.2:5353"]
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::DnsError;
use crate::adapter::{CacheConfig, ForwardConfig};
use crate::serve::ServeConfig;
use crate::upstream::read_resolv_conf;
use crate::zone::{DomainName, PodMode, ZoneConfig};

/// Where the upstream resolvers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstreams {
    /// These addresses.
    Addresses(Vec<SocketAddr>),
    /// The `nameserver` lines of this resolv.conf, read at start.
    ResolvConf(PathBuf),
}

/// The listeners: DNS, and each HTTP endpoint (`None`: not served).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    /// DNS over UDP and TCP.
    pub dns: SocketAddr,
    /// `/health`.
    pub health: Option<SocketAddr>,
    /// `/ready`.
    pub ready: Option<SocketAddr>,
    /// `/metrics`.
    pub metrics: Option<SocketAddr>,
}

/// Everything `kube-netd dns` is configured with: the file's values over the defaults, which
/// are CoreDNS's conventions (DNS on `:53`, `/health` on `:8080`, `/ready` on `:8181`,
/// metrics on `:9153`, upstreams from `/etc/resolv.conf`, `cache 30`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The zone: origin, TTL and pod mode.
    pub zone: ZoneConfig,
    /// Where to listen.
    pub listen: Listeners,
    /// The resolvers for names outside the zone.
    pub upstreams: Upstreams,
    /// How long to wait for each upstream.
    pub forward_timeout: Duration,
    /// The cache of forwarded answers.
    pub cache: CacheConfig,
    /// Suffixes whose names go to their own resolvers.
    pub stub_domains: BTreeMap<DomainName, Vec<SocketAddr>>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            zone: ZoneConfig::default(),
            listen: Listeners {
                dns: any(53),
                health: Some(any(8080)),
                ready: Some(any(8181)),
                metrics: Some(any(9153)),
            },
            upstreams: Upstreams::ResolvConf(PathBuf::from("/etc/resolv.conf")),
            forward_timeout: ForwardConfig::default().timeout,
            cache: CacheConfig::default(),
            stub_domains: BTreeMap::new(),
        }
    }
}

/// A configuration that is not valid, with the field named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, an unknown key, or a value of the wrong type.
    #[error("{field}: {message}")]
    Syntax {
        /// The path of the field, `.` for the document.
        field: String,
        /// The parser's message (it names an unknown key and the known ones).
        message: String,
    },
    /// A value of the right type that is not allowed.
    #[error("{field}: {value:?} {reason}")]
    InvalidValue {
        /// The path of the field.
        field: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Two fields that exclude each other.
    #[error("{first} and {second} exclude each other: give one")]
    Conflict {
        /// One field.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

impl DnsConfig {
    /// Reads and checks a configuration file.
    pub fn read(path: &Path) -> Result<DnsConfig, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::ConfigReadFailed {
            path: path.to_owned(),
            source,
        })?;
        DnsConfig::parse(&text).map_err(|source| DnsError::ConfigInvalid {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses a configuration: the values given over [`DnsConfig::default`].
    pub fn parse(text: &str) -> Result<DnsConfig, ConfigError> {
        // An empty file (or one of comments only) is the defaults.
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            return Ok(DnsConfig::default());
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            // The YAML parser names nested fields itself; say it once.
            let message = match message.strip_prefix(&format!("{field}: ")) {
                Some(rest) => rest.to_owned(),
                None => message,
            };
            ConfigError::Syntax { field, message }
        })?;
        raw.check()
    }

    /// The server configuration this describes; reads the resolv.conf if one is named.
    pub fn serve_config(&self) -> Result<ServeConfig, DnsError> {
        let upstreams = match &self.upstreams {
            Upstreams::Addresses(addrs) => addrs.clone(),
            Upstreams::ResolvConf(path) => read_resolv_conf(path)?,
        };
        let mut config = ServeConfig::new(self.listen.dns);
        config.zone = self.zone.clone();
        config.forward = ForwardConfig {
            upstreams,
            stub_domains: self.stub_domains.clone(),
            timeout: self.forward_timeout,
            cache: self.cache.clone(),
        };
        config.health_listen = self.listen.health;
        config.ready_listen = self.listen.ready;
        config.metrics_listen = self.listen.metrics;
        Ok(config)
    }
}

/// An upstream address: `IP` (port 53) or `IP:PORT`, `[IPv6]:PORT`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "is not an address (IP or IP:PORT)".to_owned())
}

/// The file as written; [`RawConfig::check`] turns it into a [`DnsConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    zone: Option<String>,
    ttl: Option<u32>,
    pods: Option<String>,
    listen: Option<RawListen>,
    upstreams: Option<Vec<String>>,
    resolv_conf: Option<PathBuf>,
    forward_timeout_seconds: Option<u64>,
    cache: Option<RawCache>,
    stub_domains: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawListen {
    dns: Option<String>,
    health: Option<String>,
    ready: Option<String>,
    metrics: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    size: Option<usize>,
    #[serde(rename = "maxTTL")]
    max_ttl: Option<u64>,
    #[serde(rename = "denialTTL")]
    denial_ttl: Option<u64>,
}

fn invalid(field: impl Into<String>, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        field: field.into(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// An address a listener binds; `""` for an HTTP listener that is off.
fn listener(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(field, text, "is not an address:port"))
}

fn upstreams(field: &str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            parse_upstream(text).map_err(|reason| invalid(format!("{field}[{i}]"), text, reason))
        })
        .collect()
}

impl RawConfig {
    fn check(self) -> Result<DnsConfig, ConfigError> {
        let mut config = DnsConfig::default();
        if let Some(zone) = self.zone {
            config.zone.origin = zone
                .parse()
                .map_err(|e: crate::zone::NameError| invalid("zone", &zone, e.to_string()))?;
        }
        if let Some(ttl) = self.ttl {
            config.zone.ttl = ttl;
        }
        if let Some(pods) = self.pods {
            config.zone.pods = pods.parse::<PodMode>().map_err(|_| {
                invalid(
                    "pods",
                    &pods,
                    "is not a pod mode: expected insecure, verified or disabled",
                )
            })?;
        }
        if let Some(listen) = self.listen {
            if let Some(dns) = listen.dns {
                config.listen.dns = listener("listen.dns", &dns)?;
            }
            for (field, text, slot) in [
                ("listen.health", listen.health, &mut config.listen.health),
                ("listen.ready", listen.ready, &mut config.listen.ready),
                ("listen.metrics", listen.metrics, &mut config.listen.metrics),
            ] {
                let Some(text) = text else { continue };
                *slot = match text.as_str() {
                    "" => None,
                    _ => Some(listener(field, &text)?),
                };
            }
        }
        match (self.upstreams, self.resolv_conf) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    first: "upstreams",
                    second: "resolvConf",
                });
            }
            (Some(list), None) => {
                config.upstreams = Upstreams::Addresses(upstreams("upstreams", &list)?);
            }
            (None, Some(path)) => config.upstreams = Upstreams::ResolvConf(path),
            (None, None) => {}
        }
        if let Some(seconds) = self.forward_timeout_seconds {
            if seconds == 0 {
                return Err(invalid(
                    "forwardTimeoutSeconds",
                    "0",
                    "is not a timeout: give at least 1",
                ));
            }
            config.forward_timeout = Duration::from_secs(seconds);
        }
        if let Some(cache) = self.cache {
            if let Some(size) = cache.size {
                config.cache.capacity = size;
            }
            if let Some(ttl) = cache.max_ttl {
                config.cache.max_ttl = Duration::from_secs(ttl);
            }
            if let Some(ttl) = cache.denial_ttl {
                config.cache.denial_ttl = Duration::from_secs(ttl);
            }
        }
        for (suffix, list) in self.stub_domains.unwrap_or_default() {
            let field = format!("stubDomains.{suffix}");
            let name: DomainName = suffix
                .parse()
                .map_err(|e: crate::zone::NameError| invalid(&field, &suffix, e.to_string()))?;
            if name.is_within(&config.zone.origin) {
                return Err(invalid(
                    &field,
                    &suffix,
                    format!(
                        "is inside the cluster zone {}, which this server answers itself",
                        config.zone.origin
                    ),
                ));
            }
            if list.is_empty() {
                return Err(invalid(&field, "[]", "names no resolver"));
            }
            let addrs = upstreams(&field, &list)?;
            if config.stub_domains.insert(name, addrs).is_some() {
                return Err(invalid(
                    &field,
                    &suffix,
                    "is given twice (names are case-insensitive)",
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_sets_every_option() {
        let config = DnsConfig::parse(
            "zone: Example.Internal.\nttl: 30\npods: verified\n\
             listen: {dns: '127.0.0.1:5353', health: '', ready: '127.0.0.1:8181', metrics: '[::1]:9153'}\n\
             upstreams: [192.0.2.53, '192.0.2.54:5353']\nforwardTimeoutSeconds: 1\n\
             cache: {size: 100, maxTTL: 60, denialTTL: 0}\n\
             stubDomains: {corp.example: [10.150.0.1]}\n",
        )
        .expect("valid");
        assert_eq!(config.zone.origin.as_str(), "example.internal");
        assert_eq!(config.zone.ttl, 30);
        assert_eq!(config.zone.pods, PodMode::Verified);
        assert_eq!(config.listen.dns, "127.0.0.1:5353".parse().expect("addr"));
        assert_eq!(config.listen.health, None);
        assert_eq!(
            config.listen.metrics,
            Some("[::1]:9153".parse().expect("addr"))
        );
        assert_eq!(
            config.upstreams,
            Upstreams::Addresses(vec![
                "192.0.2.53:53".parse().expect("addr"),
                "192.0.2.54:5353".parse().expect("addr")
            ])
        );
        assert_eq!(config.forward_timeout, Duration::from_secs(1));
        assert_eq!(
            config.cache,
            CacheConfig {
                capacity: 100,
                max_ttl: Duration::from_secs(60),
                denial_ttl: Duration::ZERO
            }
        );
        let serve = config.serve_config().expect("no resolv.conf to read");
        assert_eq!(
            serve.forward.stub_domains[&"corp.example".parse::<DomainName>().expect("name")],
            vec!["10.150.0.1:53".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(serve.health_listen, None);
        assert_eq!(
            serve.ready_listen,
            Some("127.0.0.1:8181".parse().expect("addr"))
        );
    }

    #[test]
    fn an_empty_file_is_coredns_conventions() {
        let config = DnsConfig::parse("# nothing\n").expect("valid");
        assert_eq!(config, DnsConfig::default());
        assert_eq!(config.listen.health.map(|a| a.port()), Some(8080));
        assert_eq!(config.listen.ready.map(|a| a.port()), Some(8181));
        assert_eq!(config.listen.metrics.map(|a| a.port()), Some(9153));
        assert_eq!(config.listen.dns.port(), 53);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("zone: cluster.local\nzoen: x\n", "zoen"),
            ("cache: {size: 10, maxTtl: 5}\n", "maxTtl"),
            ("cache: {size: lots}\n", "cache.size: invalid type"),
            ("ttl: -1\n", "ttl"),
            ("pods: sometimes\n", "pods: \"sometimes\""),
            ("zone: 'bad zone'\n", "zone: \"bad zone\""),
            ("listen: {dns: '53'}\n", "listen.dns: \"53\""),
            ("upstreams: [192.0.2.1, nope]\n", "upstreams[1]: \"nope\""),
            (
                "upstreams: [192.0.2.1]\nresolvConf: /etc/resolv.conf\n",
                "upstreams and resolvConf",
            ),
            (
                "stubDomains: {svc.cluster.local: [192.0.2.1]}\n",
                "stubDomains.svc.cluster.local",
            ),
            (
                "stubDomains: {corp.example: []}\n",
                "stubDomains.corp.example",
            ),
            (
                "stubDomains: {corp.example: [x]}\n",
                "stubDomains.corp.example[0]",
            ),
            ("forwardTimeoutSeconds: 0\n", "forwardTimeoutSeconds"),
        ];
        for (text, want) in cases {
            let err = DnsConfig::parse(text).expect_err(text).to_string();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} does not name {want:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = DnsConfig::read(Path::new("/nonexistent/dns.yaml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/dns.yaml"), "{err}");
    }
}
