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
mod serial;
mod source;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use netd_model::view::Pod;
use netd_model::{
    ClusterConfig, ClusterState, EndpointSliceRef, Kind, Object, ObjectId, PodRef, ServiceRef,
    StateError,
};

pub use name::{DomainName, NameError};
pub use serial::Serial;

use build::{Contribution, Derive, Names};
use name::{IN_ADDR_ARPA, IP6_ARPA, parse_reverse, undash, within};
use source::{PodSource, ServiceSource, SliceSource, Sources, pod_key};

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
    /// The zone's [`Serial`]: the time of its last change.
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
    /// The zone's start of authority (boxed: the other kinds are much smaller).
    Soa(Box<Soa>),
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

/// One change to the cluster, applied to a zone by [`Zone::apply`]: an object added or
/// replaced, or an object removed. Objects are the kept form `netd-source` produces
/// (Services, EndpointSlices, Namespaces, Pods); other kinds only make their namespace
/// exist, and Nodes change nothing.
#[derive(Clone, Copy, Debug)]
pub enum ZoneChange<'a> {
    /// The object was added or replaced.
    Upsert(&'a Object),
    /// The object with this identity was removed.
    Delete(&'a ObjectId),
}

/// Why a change cannot be applied; the zone is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The changed object fails conversion to its typed view, as a snapshot holding it would.
    #[error("the changed object is not valid")]
    InvalidObject(#[source] StateError),
}

/// What a zone holds, counted: the accounting of its memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// Names, empty non-terminals and reverse names included.
    pub names: usize,
    /// Distinct records.
    pub records: usize,
    /// Services kept.
    pub services: usize,
    /// EndpointSlices kept.
    pub endpoint_slices: usize,
    /// Pods known (by name only, for the namespace they make exist).
    pub pods: usize,
    /// Pods whose fields are kept: those with a hostname and a subdomain, and every Pod
    /// with addresses in verified mode.
    pub pods_kept: usize,
}

/// The cluster zone: every name the cluster gives rise to, with its records, and what is
/// kept of the objects to update it one change at a time.
///
/// A zone holds no snapshot and no Kubernetes object: names are stored once (record targets
/// share the owner names' text), addresses as fixed-size values, and of each object only the
/// fields records are derived from.
#[derive(Clone, Debug)]
pub struct Zone {
    config: ZoneConfig,
    /// The network settings, to convert changed objects as a snapshot would.
    cluster: ClusterConfig,
    sources: Sources,
    names: Names,
    reverse_ranges: Vec<IpNet>,
    serial: Serial,
    soa: Record,
    soa_in_addr: Record,
    soa_ip6: Record,
}

/// At most this many CNAMEs are followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

/// The SOA's timers (s): refresh, retry, expire, as CoreDNS.
const SOA_TIMERS: (u32, u32, u32) = (7200, 1800, 86400);

impl Zone {
    /// Builds the zone from a snapshot, with serial 0 (see [`Zone::set_serial`]). The zone
    /// keeps nothing of the snapshot.
    pub fn build(state: &ClusterState, config: &ZoneConfig) -> Zone {
        let mut zone = Zone::empty(config, state.config());
        let pods = config.pods;
        let sources = &mut zone.sources;
        for ns in state.namespaces() {
            let name = ns.name.as_str();
            sources.declare_namespace(name, state.namespace_declared(name));
        }
        for service in state.services() {
            sources.set_service(&service.key, Some(ServiceSource::from_view(service)));
        }
        for slice in state.endpoint_slices() {
            sources.set_slice(&slice.key, Some(SliceSource::from_view(slice)));
        }
        for pod in state.pods() {
            let key = pod_key(pod.key.namespace.as_str(), &pod.key.name);
            let source = PodSource::from_view(pod, pods);
            sources.set_pod(pod.key.namespace.as_str(), key, Some(source));
        }
        for kind in [Kind::Deployment, Kind::NetworkPolicy] {
            for id in state.ids_of(kind) {
                sources.set_other(&id, true);
            }
        }
        let derive = Derive::new(&zone.config);
        let sources = &zone.sources;
        let mut all = Vec::new();
        for ns in sources.existing_namespaces() {
            derive.namespace(sources, ns, &mut all);
        }
        for key in sources.services.keys() {
            derive.service(sources, key, &mut all);
        }
        for key in sources.pods.keys() {
            derive.pod(sources, key, &mut all);
        }
        zone.names.extend(all);
        zone
    }

    /// Applies one change, as if the zone were rebuilt from the snapshot with the change
    /// made; says whether any answer changed. Only the records of what the change touches
    /// are recomputed: a Service and its slices, a namespace, a Pod. On error the zone is
    /// unchanged. The serial is the caller's to advance ([`Zone::set_serial`]).
    pub fn apply(&mut self, change: ZoneChange<'_>) -> Result<bool, ZoneError> {
        match change {
            ZoneChange::Upsert(object) => self.upsert(object),
            ZoneChange::Delete(id) => Ok(self.delete(id)),
        }
    }

    /// The cluster zone's name.
    pub fn origin(&self) -> &DomainName {
        &self.config.origin
    }

    /// The number of records in the zone (pod names synthesised in insecure mode excluded).
    pub fn record_count(&self) -> usize {
        self.names.record_count()
    }

    /// What the zone holds, counted.
    pub fn stats(&self) -> ZoneStats {
        let s = &self.sources;
        ZoneStats {
            names: self.names.len(),
            records: self.names.record_count(),
            services: s.services.len(),
            endpoint_slices: s.slices.len(),
            pods: s.pods.len(),
            pods_kept: s.pods.values().filter(|p| p.is_some()).count(),
        }
    }

    /// The zone's SOA record.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// The zone's serial.
    pub fn serial(&self) -> Serial {
        self.serial
    }

    /// Sets the serial the SOA records carry; the server advances it with
    /// [`Serial::next_at`] whenever the zone changes.
    pub fn set_serial(&mut self, serial: Serial) {
        let old = self.soa.data.clone();
        self.serial = serial;
        for soa in [&mut self.soa, &mut self.soa_in_addr, &mut self.soa_ip6] {
            if let RecordData::Soa(data) = &mut soa.data {
                data.serial = serial.value();
            }
        }
        let origin = self.config.origin.clone();
        self.names.replace(
            vec![(origin.clone(), Some(old))],
            vec![(origin, Some(self.soa.data.clone()))],
        );
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
            let Some((owner, records)) = self.records_at(&current) else {
                answer.rcode = Rcode::NxDomain;
                answer.authority.push(soa.clone());
                return answer;
            };
            let alias = records.iter().find_map(|r| match r {
                RecordData::Cname(target) => Some(target),
                _ => None,
            });
            if let Some(target) = alias
                && !matches!(question.qtype, RecordType::Cname | RecordType::Any)
            {
                answer
                    .answers
                    .push(self.record(&owner, RecordData::Cname(target.clone())));
                // Only aliases into the cluster zone are followed here; the server resolves
                // others upstream.
                if !target.is_within(&self.config.origin) {
                    return answer;
                }
                current = Cow::Owned(target.as_str().to_owned());
                continue;
            }
            let mut matching: Vec<Record> = records
                .iter()
                .filter(|r| question.qtype == RecordType::Any || r.record_type() == question.qtype)
                .map(|r| self.record(&owner, r.clone()))
                .collect();
            matching.dedup();
            if matching.is_empty() {
                answer.authority.push(soa.clone());
            }
            for record in &matching {
                let target = match &record.data {
                    RecordData::Srv(srv) => &srv.target,
                    RecordData::Ns(ns) => ns,
                    _ => continue,
                };
                let Some((owner, addresses)) = self.records_at(target.as_str()) else {
                    continue;
                };
                answer.additional.extend(
                    addresses
                        .iter()
                        .filter(|r| matches!(r, RecordData::A(_) | RecordData::Aaaa(_)))
                        .map(|r| self.record(&owner, r.clone())),
                );
            }
            answer.additional.sort();
            answer.additional.dedup();
            answer.answers.extend(matching);
            return answer;
        }
        answer
    }

    /// A zone with only its own records (NS, SOA, the schema TXT) and no namespace.
    fn empty(config: &ZoneConfig, cluster: &ClusterConfig) -> Zone {
        let derive = Derive::new(config);
        let origin = &config.origin;
        let rname = origin
            .child("hostmaster")
            .unwrap_or_else(|_| origin.clone());
        let (refresh, retry, expire) = SOA_TIMERS;
        let soa_data = RecordData::Soa(Box::new(Soa {
            mname: derive.ns_host(),
            rname,
            serial: 0,
            refresh,
            retry,
            expire,
            minimum: config.ttl,
        }));
        let soa_at = |zone: &DomainName| Record {
            name: zone.clone(),
            ttl: config.ttl,
            data: soa_data.clone(),
        };
        let mut names = Names::new(origin.clone());
        let mut fixed = derive.fixed(cluster.dns_service_ip);
        fixed.push((origin.clone(), Some(soa_data.clone())));
        names.extend(fixed);
        Zone {
            config: config.clone(),
            cluster: cluster.clone(),
            sources: Sources::default(),
            names,
            reverse_ranges: cluster
                .service_cidrs
                .iter()
                .chain(&cluster.cluster_cidrs)
                .copied()
                .collect(),
            serial: Serial::default(),
            soa: soa_at(origin),
            soa_in_addr: soa_at(&DomainName::reverse_zone(false)),
            soa_ip6: soa_at(&DomainName::reverse_zone(true)),
        }
    }

    fn upsert(&mut self, object: &Object) -> Result<bool, ZoneError> {
        let kind = object.kind();
        if kind == Kind::Node {
            return Ok(false);
        }
        // The object converted exactly as a snapshot holding it converts it.
        let state = ClusterState::new(vec![object.clone()], self.cluster.clone())
            .map_err(ZoneError::InvalidObject)?;
        let namespace = object.namespace();
        let mut scope = Scope::default();
        match kind {
            Kind::Namespace => {
                let name = object.name();
                scope.namespace = Some(name.into());
                Ok(self.change(scope, |s| s.declare_namespace(name, true)))
            }
            Kind::Service => {
                let Some(view) = state.services().next() else {
                    return Ok(false);
                };
                let source = ServiceSource::from_view(view);
                scope.namespace = Some(namespace.into());
                scope.services.insert(view.key.clone());
                Ok(self.change(scope, |s| s.set_service(&view.key, Some(source))))
            }
            Kind::EndpointSlice => {
                let Some(view) = state.endpoint_slices().next() else {
                    return Ok(false);
                };
                let source = SliceSource::from_view(view);
                scope.namespace = Some(namespace.into());
                scope.services.extend(self.slice_service(&view.key));
                scope.services.extend(source.service.clone());
                Ok(self.change(scope, |s| s.set_slice(&view.key, Some(source))))
            }
            Kind::Pod => {
                let Some(view) = state.pods().next() else {
                    return Ok(false);
                };
                Ok(self.set_pod(view.key.clone(), Some(view)))
            }
            Kind::Deployment | Kind::NetworkPolicy => {
                let id = object.id();
                scope.namespace = Some(namespace.into());
                Ok(self.change(scope, |s| s.set_other(&id, true)))
            }
            Kind::Node => Ok(false),
        }
    }

    fn delete(&mut self, id: &ObjectId) -> bool {
        let mut scope = Scope {
            namespace: Some(id.namespace.as_str().into()),
            ..Scope::default()
        };
        match id.kind {
            Kind::Node => false,
            Kind::Namespace => {
                let declared = self
                    .sources
                    .namespaces
                    .get(id.name.as_str())
                    .is_some_and(|c| c.declared);
                if !declared {
                    return false;
                }
                scope.namespace = Some(id.name.as_str().into());
                self.change(scope, |s| s.declare_namespace(&id.name, false))
            }
            Kind::Service => {
                let key = ServiceRef::new(&id.namespace, &id.name);
                if !self.sources.services.contains_key(&key) {
                    return false;
                }
                scope.services.insert(key.clone());
                self.change(scope, |s| s.set_service(&key, None))
            }
            Kind::EndpointSlice => {
                let key = EndpointSliceRef::new(&id.namespace, &id.name);
                if !self.sources.slices.contains_key(&key) {
                    return false;
                }
                scope.services.extend(self.slice_service(&key));
                self.change(scope, |s| s.set_slice(&key, None))
            }
            Kind::Pod => self.set_pod(PodRef::new(&id.namespace, &id.name), None),
            Kind::Deployment | Kind::NetworkPolicy => {
                if !self.sources.others.contains(id) {
                    return false;
                }
                self.change(scope, |s| s.set_other(id, false))
            }
        }
    }

    /// Adds, replaces or (`None`) removes a Pod. Its hostname under a subdomain names the
    /// endpoints of the headless Services called like the subdomain.
    fn set_pod(&mut self, key: PodRef, view: Option<&Pod>) -> bool {
        let namespace = key.namespace.as_str();
        let stored = pod_key(namespace, &key.name);
        if view.is_none() && !self.sources.pods.contains_key(&stored) {
            return false;
        }
        let source = view.map(|v| PodSource::from_view(v, self.config.pods));
        let mut scope = Scope {
            namespace: Some(namespace.into()),
            ..Scope::default()
        };
        let subdomains = [
            self.sources.pod(&stored).and_then(|p| p.named.as_ref()),
            source.as_ref().and_then(|p| p.as_ref()?.named.as_ref()),
        ];
        // An endpoint may target a Pod of another namespace: every namespace's Service of
        // that name is recomputed.
        for (_, subdomain) in subdomains.into_iter().flatten() {
            for ns in self.sources.existing_namespaces() {
                let service = ServiceRef::new(ns, &**subdomain);
                if self.sources.services.contains_key(&service) {
                    scope.services.insert(service);
                }
            }
        }
        scope.pod = Some(stored.clone());
        self.change(scope, |s| s.set_pod(namespace, stored, source))
    }

    /// The Service an EndpointSlice currently belongs to.
    fn slice_service(&self, key: &EndpointSliceRef) -> Option<ServiceRef> {
        self.sources.slices.get(key)?.service.clone()
    }

    /// Recomputes what `scope` covers around `mutate`, and applies the difference.
    fn change(&mut self, scope: Scope, mutate: impl FnOnce(&mut Sources)) -> bool {
        let before = self.contributions(&scope);
        mutate(&mut self.sources);
        let after = self.contributions(&scope);
        self.names.replace(before, after)
    }

    fn contributions(&self, scope: &Scope) -> Vec<Contribution> {
        let derive = Derive::new(&self.config);
        let mut out = Vec::new();
        if let Some(ns) = &scope.namespace {
            derive.namespace(&self.sources, ns, &mut out);
        }
        for key in &scope.services {
            derive.service(&self.sources, key, &mut out);
        }
        if let Some(pod) = &scope.pod {
            derive.pod(&self.sources, pod, &mut out);
        }
        out
    }

    fn record(&self, owner: &DomainName, data: RecordData) -> Record {
        Record {
            name: owner.clone(),
            ttl: self.config.ttl,
            data,
        }
    }

    /// The SOA to answer with when the zone is authoritative for `name`.
    fn authority_for(&self, name: &str) -> Option<&Record> {
        if within(name, self.config.origin.as_str()) {
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
        let ours = self.names.contains(name) || self.reverse_ranges.iter().any(|r| r.contains(&ip));
        ours.then_some(soa)
    }

    /// The records at a name, with the name as stored: `None` when it does not exist, none
    /// for an empty non-terminal.
    fn records_at(&self, name: &str) -> Option<(DomainName, Cow<'_, [RecordData]>)> {
        if let Some((owner, node)) = self.names.get(name) {
            return Some((owner.clone(), Cow::Borrowed(&node.records)));
        }
        if self.config.pods != PodMode::Insecure {
            return None;
        }
        // `<a-b-c-d>.<ns>.pod.<zone>`: any address in an existing namespace.
        let rest = name
            .strip_suffix(self.config.origin.as_str())?
            .strip_suffix(".pod.")?;
        let (label, namespace) = rest.split_once('.')?;
        if !self.sources.namespace_exists(namespace) {
            return None;
        }
        let ip = undash(label)?;
        let owner = DomainName::from_str(name).ok()?;
        Some((owner, Cow::Owned(vec![RecordData::address(ip)])))
    }
}

/// What a change touches: the records to recompute.
#[derive(Default)]
struct Scope {
    namespace: Option<Box<str>>,
    services: BTreeSet<ServiceRef>,
    pod: Option<Box<str>>,
}

/// Lower-case, without the trailing dot.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}
