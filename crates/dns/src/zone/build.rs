//! Deriving records from the kept objects, and the table of names they are stored in.
//!
//! Every record comes from one source: the zone itself (SOA, NS, the schema TXT), a
//! namespace (its empty `svc` and `pod` names), a Service with its EndpointSlices (and the
//! hostnames of the Pods they target), or a Pod in verified mode. [`Derive`] computes the
//! contributions of one source; a change recomputes the contributions of the sources it
//! touches before and after, and [`Names::replace`] applies the difference. A full build is
//! the same with nothing before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use netd_model::ServiceRef;

use super::name::{dashed, within};
use super::source::{ServiceSource, Sources};
use super::{DomainName, PodMode, RecordData, SCHEMA_VERSION, Srv, ZoneConfig};

/// One piece of the zone: a record at a name, or (`None`) just the name's existence.
pub(super) type Contribution = (DomainName, Option<RecordData>);

/// The names of the zone with their records. A name exists while anything is contributed at
/// it or below it (within the cluster zone, ancestors are empty non-terminals).
#[derive(Clone, Debug)]
pub(super) struct Names {
    origin: DomainName,
    map: HashMap<DomainName, Node>,
    /// Distinct records.
    records: usize,
}

/// A name's records, sorted (duplicates from several sources kept, adjacent), and how many
/// contributions keep it alive.
#[derive(Clone, Debug, Default)]
pub(super) struct Node {
    pub(super) records: Vec<RecordData>,
    refs: u32,
}

impl Names {
    pub(super) fn new(origin: DomainName) -> Self {
        Names {
            origin,
            map: HashMap::new(),
            records: 0,
        }
    }

    /// The name as stored and its node.
    pub(super) fn get(&self, name: &str) -> Option<(&DomainName, &Node)> {
        self.map.get_key_value(name)
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The number of distinct records.
    pub(super) fn record_count(&self) -> usize {
        self.records
    }

    /// The number of names, empty non-terminals included.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Replaces the contributions `before` by `after`; says whether anything changed.
    pub(super) fn replace(
        &mut self,
        mut before: Vec<Contribution>,
        mut after: Vec<Contribution>,
    ) -> bool {
        before.sort_unstable();
        after.sort_unstable();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        let mut before = before.into_iter().peekable();
        let mut after = after.into_iter().peekable();
        loop {
            match (before.peek(), after.peek()) {
                (None, None) => break,
                (Some(b), Some(a)) if b == a => {
                    before.next();
                    after.next();
                }
                (Some(b), Some(a)) if b < a => removed.extend(before.next()),
                (Some(_), None) => removed.extend(before.next()),
                _ => added.extend(after.next()),
            }
        }
        // Additions first: a name that stays keeps its node instead of being dropped and
        // made again. A record or name also contributed by another source changes nothing.
        let mut changed = false;
        for (name, data) in added {
            changed |= self.insert(name, data);
        }
        for (name, data) in removed {
            changed |= self.remove(&name, data.as_ref());
        }
        changed
    }

    /// Adds every contribution (a build from nothing).
    pub(super) fn extend(&mut self, contributions: Vec<Contribution>) {
        for (name, data) in contributions {
            self.insert(name, data);
        }
    }

    /// Adds one contribution; says whether a name or a distinct record appeared.
    fn insert(&mut self, name: DomainName, data: Option<RecordData>) -> bool {
        let mut changed = false;
        for current in self.names_up_from(name.as_str()) {
            match self.map.get_mut(current) {
                Some(node) => node.refs += 1,
                None => {
                    let key = if current.len() == name.as_str().len() {
                        name.clone()
                    } else {
                        DomainName::from_zone_text(current)
                    };
                    self.map.insert(
                        key,
                        Node {
                            records: Vec::new(),
                            refs: 1,
                        },
                    );
                    changed = true;
                }
            }
        }
        let Some(data) = data else { return changed };
        let data = self.intern(data);
        if let Some(node) = self.map.get_mut(name.as_str()) {
            let (Ok(at) | Err(at)) = node.records.binary_search(&data);
            if node.records.get(at) != Some(&data) {
                self.records += 1;
                changed = true;
            }
            node.records.insert(at, data);
        }
        changed
    }

    /// Removes one contribution; says whether a name or a distinct record went away.
    fn remove(&mut self, name: &DomainName, data: Option<&RecordData>) -> bool {
        let mut changed = false;
        if let Some(data) = data
            && let Some(node) = self.map.get_mut(name.as_str())
            && let Ok(at) = node.records.binary_search(data)
        {
            node.records.remove(at);
            let left = at
                .checked_sub(1)
                .and_then(|l| node.records.get(l))
                .is_some_and(|r| r == data);
            if !left && node.records.get(at) != Some(data) {
                self.records -= 1;
                changed = true;
            }
            if node.records.is_empty() {
                node.records = Vec::new();
            }
        }
        for current in self.names_up_from(name.as_str()) {
            if let Some(node) = self.map.get_mut(current) {
                node.refs -= 1;
                if node.refs == 0 {
                    self.map.remove(current);
                    changed = true;
                }
            }
        }
        changed
    }

    /// The names a contribution to `name` counts for: `name` itself and, inside the origin,
    /// each parent up to the origin (empty non-terminals exist while something is below them).
    fn names_up_from<'n>(&self, name: &'n str) -> impl Iterator<Item = &'n str> + use<'n> {
        let origin_len = self.origin.as_str().len();
        let walk_up = within(name, self.origin.as_str());
        std::iter::successors(Some(name), move |current| {
            if !walk_up || current.len() <= origin_len {
                return None;
            }
            current.split_once('.').map(|(_, parent)| parent)
        })
    }

    /// The record with its target names shared with the owner names already stored.
    fn intern(&self, data: RecordData) -> RecordData {
        let shared = |name: DomainName| {
            self.map
                .get_key_value(name.as_str())
                .map_or(name, |(k, _)| k.clone())
        };
        match data {
            RecordData::Ptr(target) => RecordData::Ptr(shared(target)),
            RecordData::Cname(target) => RecordData::Cname(shared(target)),
            RecordData::Ns(target) => RecordData::Ns(shared(target)),
            RecordData::Srv(srv) => RecordData::Srv(Srv {
                target: shared(srv.target),
                ..srv
            }),
            other => other,
        }
    }
}

/// Computes contributions from the configuration.
pub(super) struct Derive<'a> {
    pub(super) config: &'a ZoneConfig,
    svc_root: Option<DomainName>,
    pod_root: Option<DomainName>,
}

impl<'a> Derive<'a> {
    pub(super) fn new(config: &'a ZoneConfig) -> Self {
        let origin = &config.origin;
        Derive {
            config,
            svc_root: origin.child("svc").ok(),
            pod_root: origin
                .child("pod")
                .ok()
                .filter(|_| config.pods != PodMode::Disabled),
        }
    }

    /// The name server's host, `ns.dns.<zone>`.
    pub(super) fn ns_host(&self) -> DomainName {
        let origin = &self.config.origin;
        // Names derived from a valid origin can only fail by exceeding 253 characters; the
        // origin itself then stands in.
        origin
            .child("dns")
            .and_then(|d| d.child("ns"))
            .unwrap_or_else(|_| origin.clone())
    }

    /// The zone's own records, but the SOA: the name server and the schema version.
    pub(super) fn fixed(&self, dns_service_ip: IpAddr) -> Vec<Contribution> {
        let origin = &self.config.origin;
        let ns_host = self.ns_host();
        let mut out = vec![
            (ns_host.clone(), Some(RecordData::address(dns_service_ip))),
            (origin.clone(), Some(RecordData::Ns(ns_host))),
        ];
        if let Ok(version) = origin.child("dns-version") {
            out.push((version, Some(RecordData::Txt(SCHEMA_VERSION.to_owned()))));
        }
        out
    }

    /// An existing namespace's names: `<ns>.svc.<zone>` and `<ns>.pod.<zone>`.
    pub(super) fn namespace(&self, sources: &Sources, name: &str, out: &mut Vec<Contribution>) {
        if !sources.namespace_exists(name) {
            return;
        }
        for root in self.svc_root.iter().chain(&self.pod_root) {
            if let Ok(name) = root.child(name) {
                out.push((name, None));
            }
        }
    }

    /// A verified-mode Pod's names, `a-b-c-d.<ns>.pod.<zone>`.
    pub(super) fn pod(&self, sources: &Sources, key: &str, out: &mut Vec<Contribution>) {
        if self.config.pods != PodMode::Verified {
            return;
        }
        let (Some(pod), Some(root)) = (sources.pod(key), &self.pod_root) else {
            return;
        };
        let Ok(ns) = root.child(&pod.namespace) else {
            return;
        };
        for ip in &pod.ips {
            if let Ok(name) = ns.child(&dashed(*ip)) {
                out.push((name, Some(RecordData::address(*ip))));
            }
        }
    }

    /// A Service's records, from its EndpointSlices when headless.
    pub(super) fn service(&self, sources: &Sources, key: &ServiceRef, out: &mut Vec<Contribution>) {
        let Some(service) = sources.services.get(key) else {
            return;
        };
        let Some(Ok(base)) = self.svc_root.as_ref().map(|root| {
            root.child(key.namespace.as_str())
                .and_then(|ns| ns.child(&key.name))
        }) else {
            return;
        };
        // SRV name → (port, target), weighted once all targets are known.
        let mut srv: BTreeMap<DomainName, BTreeSet<(u16, DomainName)>> = BTreeMap::new();
        match service {
            ServiceSource::Alias(target) => {
                if let Some(target) = target {
                    out.push((base, Some(RecordData::Cname(target.clone()))));
                }
                return;
            }
            ServiceSource::ClusterIp { ips, ports } => {
                for ip in ips {
                    out.push((base.clone(), Some(RecordData::address(*ip))));
                    out.push((
                        DomainName::reverse(*ip),
                        Some(RecordData::Ptr(base.clone())),
                    ));
                }
                if ips.is_empty() {
                    return;
                }
                for port in ports {
                    if let Some(name) = srv_name(&base, &port.name, port.protocol.as_lower_str()) {
                        srv.entry(name)
                            .or_default()
                            .insert((port.port, base.clone()));
                    }
                }
            }
            ServiceSource::Headless { publish_not_ready } => {
                for slice in sources.slices_for(key) {
                    let srv_names: Vec<(DomainName, u16)> = slice
                        .ports
                        .iter()
                        .filter_map(|p| {
                            let name = srv_name(&base, &p.name, p.protocol.as_lower_str())?;
                            Some((name, p.port))
                        })
                        .collect();
                    let published = slice
                        .endpoints
                        .iter()
                        .filter(|e| e.ready || *publish_not_ready);
                    for endpoint in published {
                        let explicit = endpoint.hostname.as_deref().or_else(|| {
                            let pod = sources.pod(endpoint.pod.as_deref()?)?;
                            let (hostname, subdomain) = pod.named.as_ref()?;
                            (**subdomain == *key.name).then_some(&**hostname)
                        });
                        for ip in &endpoint.addresses {
                            let label = explicit.map_or_else(|| dashed(*ip), str::to_owned);
                            let Ok(host) = base.child(&label) else {
                                continue;
                            };
                            out.push((base.clone(), Some(RecordData::address(*ip))));
                            out.push((host.clone(), Some(RecordData::address(*ip))));
                            out.push((
                                DomainName::reverse(*ip),
                                Some(RecordData::Ptr(host.clone())),
                            ));
                            for (name, port) in &srv_names {
                                srv.entry(name.clone())
                                    .or_default()
                                    .insert((*port, host.clone()));
                            }
                        }
                    }
                }
            }
        }
        // The targets of one SRV name share a weight of 100.
        for (name, targets) in srv {
            let weight = u16::try_from(100 / targets.len().max(1))
                .unwrap_or(1)
                .max(1);
            for (port, target) in targets {
                let data = RecordData::Srv(Srv {
                    priority: 0,
                    weight,
                    port,
                    target,
                });
                out.push((name.clone(), Some(data)));
            }
        }
    }
}

/// `_<port>._<proto>.<service>.<ns>.svc.<zone>`.
fn srv_name(base: &DomainName, port: &str, protocol: &str) -> Option<DomainName> {
    let proto = base.child(&format!("_{protocol}")).ok()?;
    proto.child(&format!("_{port}")).ok()
}

impl RecordData {
    pub(super) fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => RecordData::A(v4),
            IpAddr::V6(v6) => RecordData::Aaaa(v6),
        }
    }
}
