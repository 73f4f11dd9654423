//! The cluster zone as plain data: built from a [`ClusterState`], asked [`Question`]s.
//!
//! [`Zone::build`] turns a snapshot into every record the Kubernetes DNS-Based Service
//! Discovery specification (schema 1.1.0) asks for; [`Zone::answer`] answers one question
//! with records, a response code and the authority section, as an authoritative server
//! would. Nothing here does I/O or knows about hickory: the adapter converts.
//!
//! The zone is authoritative for the cluster zone (`cluster.local`) and for the reverse
//! names (`in-addr.arpa`, `ip6.arpa`) of single addresses in the service and pod ranges or
//! that have a record; for anything else [`Answer::authoritative`] is false and the server
//! forwards the question upstream.

mod build;
mod name;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use netd_model::ClusterState;

pub use name::{DomainName, NameError};

use name::{IN_ADDR_ARPA, IP6_ARPA, parse_reverse, undash, within};

/// The schema version of the Kubernetes DNS specification this zone implements.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How the zone answers for `a-b-c-d.<ns>.pod.<zone>`, as CoreDNS's `pods` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodMode {
    /// Any well-formed address in an existing namespace resolves to itself.
    #[default]
    Insecure,
    /// Only addresses of Pods in that namespace resolve.
    Verified,
    /// No pod names.
    Disabled,
}

/// A `--pods` value that is not `insecure`, `verified` or `disabled`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a pod mode: expected insecure, verified or disabled")]
pub struct PodModeError {
    /// The rejected value.
    pub value: String,
}

impl FromStr for PodMode {
    type Err = PodModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insecure" => Ok(PodMode::Insecure),
            "verified" => Ok(PodMode::Verified),
            "disabled" => Ok(PodMode::Disabled),
            other => Err(PodModeError {
                value: other.to_owned(),
            }),
        }
    }
}

/// What the zone is built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster zone, `cluster.local` by default.
    pub origin: DomainName,
    /// The TTL of every record, and the negative TTL (the SOA minimum): 5 s by default, as
    /// CoreDNS.
    pub ttl: u32,
    /// How pod names are answered.
    pub pods: PodMode,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            origin: DomainName::cluster_local(),
            ttl: 5,
            pods: PodMode::Insecure,
        }
    }
}

/// A query type, by its registered number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordType {
    /// `A` (1).
    A,
    /// `NS` (2).
    Ns,
    /// `CNAME` (5).
    Cname,
    /// `SOA` (6).
    Soa,
    /// `PTR` (12).
    Ptr,
    /// `TXT` (16).
    Txt,
    /// `AAAA` (28).
    Aaaa,
    /// `SRV` (33).
    Srv,
    /// `ANY` (255): every record at the name.
    Any,
    /// Any other type; the zone holds none.
    Other(u16),
}

impl RecordType {
    /// The type's number.
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Ns => 2,
            RecordType::Cname => 5,
            RecordType::Soa => 6,
            RecordType::Ptr => 12,
            RecordType::Txt => 16,
            RecordType::Aaaa => 28,
            RecordType::Srv => 33,
            RecordType::Any => 255,
            RecordType::Other(code) => code,
        }
    }

    /// The type with this number.
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => RecordType::A,
            2 => RecordType::Ns,
            5 => RecordType::Cname,
            6 => RecordType::Soa,
            12 => RecordType::Ptr,
            16 => RecordType::Txt,
            28 => RecordType::Aaaa,
            33 => RecordType::Srv,
            255 => RecordType::Any,
            other => RecordType::Other(other),
        }
    }

    /// The mnemonic (`A`, `AAAA`...), `other` for types the zone does not hold.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Ns => "NS",
            RecordType::Cname => "CNAME",
            RecordType::Soa => "SOA",
            RecordType::Ptr => "PTR",
            RecordType::Txt => "TXT",
            RecordType::Aaaa => "AAAA",
            RecordType::Srv => "SRV",
            RecordType::Any => "ANY",
            RecordType::Other(_) => "other",
        }
    }
}

/// A question: a name (any case, trailing dot optional) and a type. The class is IN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name asked for.
    pub name: String,
    /// The type asked for.
    pub qtype: RecordType,
}

impl Question {
    /// A question for `name` and `qtype`.
    pub fn new(name: impl Into<String>, qtype: RecordType) -> Self {
        Self {
            name: name.into(),
            qtype,
        }
    }
}

/// An SOA record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Soa {
    /// The primary name server, `ns.dns.<zone>`.
    pub mname: DomainName,
    /// The mailbox, `hostmaster.<zone>`.
    pub rname: DomainName,
    /// A serial derived from the zone's content: equal zones have equal serials.
    pub serial: u32,
    /// Refresh interval (s).
    pub refresh: u32,
    /// Retry interval (s).
    pub retry: u32,
    /// Expiry (s).
    pub expire: u32,
    /// The negative TTL (s).
    pub minimum: u32,
}

/// An SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Srv {
    /// Priority (always 0).
    pub priority: u16,
    /// Weight: the targets of one name share 100.
    pub weight: u16,
    /// The port.
    pub port: u16,
    /// The target host.
    pub target: DomainName,
}

/// A record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias.
    Cname(DomainName),
    /// A name server.
    Ns(DomainName),
    /// A reverse pointer.
    Ptr(DomainName),
    /// The zone's start of authority.
    Soa(Soa),
    /// A service location.
    Srv(Srv),
    /// One text string.
    Txt(String),
}

impl RecordData {
    /// The record's type.
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::Aaaa,
            RecordData::Cname(_) => RecordType::Cname,
            RecordData::Ns(_) => RecordType::Ns,
            RecordData::Ptr(_) => RecordType::Ptr,
            RecordData::Soa(_) => RecordType::Soa,
            RecordData::Srv(_) => RecordType::Srv,
            RecordData::Txt(_) => RecordType::Txt,
        }
    }
}

/// One resource record (class IN).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// The owner name.
    pub name: DomainName,
    /// Time to live (s).
    pub ttl: u32,
    /// The data.
    pub data: RecordData,
}

/// The response code of an [`Answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rcode {
    /// The name exists (answers, or none for another type: NODATA).
    NoError,
    /// The name does not exist.
    NxDomain,
    /// The name is outside the zone; the server forwards it instead.
    Refused,
}

/// The zone's answer to one [`Question`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub rcode: Rcode,
    /// Whether the zone is authoritative for the name; when false, forward the question.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section: the SOA for negative answers.
    pub authority: Vec<Record>,
    /// The additional section: addresses of SRV and NS targets.
    pub additional: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Answer {
            rcode: Rcode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }
}

/// The cluster zone: every name the snapshot gives rise to, with its records.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: DomainName,
    ttl: u32,
    pods: PodMode,
    /// Every name in the cluster zone (empty non-terminals with no records) and every
    /// reverse name with a PTR; records sorted.
    names: HashMap<String, Vec<Record>>,
    namespaces: BTreeSet<String>,
    reverse_ranges: Vec<IpNet>,
    soa: Record,
    soa_in_addr: Record,
    soa_ip6: Record,
    record_count: usize,
}

/// At most this many CNAMEs are followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

impl Zone {
    /// Builds the zone from a snapshot.
    pub fn build(state: &ClusterState, config: &ZoneConfig) -> Zone {
        build::build(state, config)
    }

    /// The cluster zone's name.
    pub fn origin(&self) -> &DomainName {
        &self.origin
    }

    /// The number of records in the zone (pod names synthesised in insecure mode excluded).
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// The zone's SOA record.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether the zone answers for `name` (any case, trailing dot optional); when not,
    /// the server forwards.
    pub fn is_authoritative(&self, name: &str) -> bool {
        self.authority_for(&normalize(name)).is_some()
    }

    /// Answers a question.
    pub fn answer(&self, question: &Question) -> Answer {
        let name = normalize(&question.name);
        let Some(soa) = self.authority_for(&name) else {
            return Answer::refused();
        };
        let mut answer = Answer {
            rcode: Rcode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        };
        let mut current = name;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(records) = self.records_at(&current) else {
                answer.rcode = Rcode::NxDomain;
                answer.authority.push(soa.clone());
                return answer;
            };
            let alias = records.iter().find_map(|r| match &r.data {
                RecordData::Cname(target) => Some((r, target)),
                _ => None,
            });
            if let Some((record, target)) = alias
                && !matches!(question.qtype, RecordType::Cname | RecordType::Any)
            {
                answer.answers.push(record.clone());
                // Only aliases into the cluster zone are followed here; the server resolves
                // others upstream.
                if !target.is_within(&self.origin) {
                    return answer;
                }
                current = target.as_str().to_owned();
                continue;
            }
            let matching: Vec<Record> = records
                .iter()
                .filter(|r| {
                    question.qtype == RecordType::Any || r.data.record_type() == question.qtype
                })
                .cloned()
                .collect();
            if matching.is_empty() {
                answer.authority.push(soa.clone());
            }
            for record in &matching {
                let target = match &record.data {
                    RecordData::Srv(srv) => &srv.target,
                    RecordData::Ns(ns) => ns,
                    _ => continue,
                };
                let Some(addresses) = self.records_at(target.as_str()) else {
                    continue;
                };
                answer.additional.extend(
                    addresses
                        .iter()
                        .filter(|r| matches!(r.data, RecordData::A(_) | RecordData::Aaaa(_)))
                        .cloned(),
                );
            }
            answer.additional.sort();
            answer.additional.dedup();
            answer.answers.extend(matching);
            return answer;
        }
        answer
    }

    /// The SOA to answer with when the zone is authoritative for `name`.
    fn authority_for(&self, name: &str) -> Option<&Record> {
        if within(name, self.origin.as_str()) {
            return Some(&self.soa);
        }
        let soa = if within(name, IN_ADDR_ARPA) {
            &self.soa_in_addr
        } else if within(name, IP6_ARPA) {
            &self.soa_ip6
        } else {
            return None;
        };
        let ip = parse_reverse(name)?;
        let ours =
            self.names.contains_key(name) || self.reverse_ranges.iter().any(|r| r.contains(&ip));
        ours.then_some(soa)
    }

    /// The records at a name: `None` when it does not exist, empty for an empty
    /// non-terminal.
    fn records_at(&self, name: &str) -> Option<Cow<'_, [Record]>> {
        if let Some(records) = self.names.get(name) {
            return Some(Cow::Borrowed(records));
        }
        if self.pods != PodMode::Insecure {
            return None;
        }
        // `<a-b-c-d>.<ns>.pod.<zone>`: any address in an existing namespace.
        let rest = name
            .strip_suffix(self.origin.as_str())?
            .strip_suffix(".pod.")?;
        let (label, namespace) = rest.split_once('.')?;
        if !self.namespaces.contains(namespace) {
            return None;
        }
        let ip = undash(label)?;
        let owner = DomainName::from_str(name).ok()?;
        Some(Cow::Owned(vec![Record {
            name: owner,
            ttl: self.ttl,
            data: RecordData::address(ip),
        }]))
    }
}

/// Lower-case, without the trailing dot.
fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}
