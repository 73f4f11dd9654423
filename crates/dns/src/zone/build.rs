//! Building the zone from a snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use netd_model::ClusterState;
use netd_model::view::{AddressType, Service, ServiceType};

use super::name::{dashed, within};
use super::{DomainName, PodMode, Record, RecordData, SCHEMA_VERSION, Soa, Srv, Zone, ZoneConfig};

pub(super) fn build(state: &ClusterState, config: &ZoneConfig) -> Zone {
    let origin = &config.origin;
    let mut b = Builder {
        origin: origin.as_str(),
        ttl: config.ttl,
        names: HashMap::new(),
        srv: BTreeMap::new(),
        serial: Fnv::default(),
    };
    // Names derived from a valid origin can only fail by exceeding 253 characters; the
    // origin itself then stands in.
    let ns_host = origin
        .child("dns")
        .and_then(|d| d.child("ns"))
        .unwrap_or_else(|_| origin.clone());
    b.add(
        ns_host.clone(),
        RecordData::address(state.config().dns_service_ip),
    );
    b.add(origin.clone(), RecordData::Ns(ns_host.clone()));
    if let Ok(version) = origin.child("dns-version") {
        b.add(version, RecordData::Txt(SCHEMA_VERSION.to_owned()));
    }
    let svc_root = origin.child("svc");
    let pod_root = origin
        .child("pod")
        .ok()
        .filter(|_| config.pods != PodMode::Disabled);
    let mut namespaces = BTreeSet::new();
    for ns in state.namespaces() {
        namespaces.insert(ns.name.as_str().to_owned());
        for root in svc_root.iter().chain(&pod_root) {
            if let Ok(name) = root.child(ns.name.as_str()) {
                b.add_name(&name);
            }
        }
    }
    if let Ok(svc_root) = &svc_root {
        for service in state.services() {
            b.add_service(state, svc_root, service);
        }
    }
    if config.pods == PodMode::Verified
        && let Some(pod_root) = &pod_root
    {
        for pod in state.pods() {
            let Ok(ns) = pod_root.child(pod.key.namespace.as_str()) else {
                continue;
            };
            for ip in &pod.ips {
                if let Ok(name) = ns.child(&dashed(*ip)) {
                    b.add(name, RecordData::address(*ip));
                }
            }
        }
    }
    b.finish_srv();
    let serial = u32::try_from(b.serial.0 & 0xffff_ffff).unwrap_or_default();
    let rname = origin
        .child("hostmaster")
        .unwrap_or_else(|_| origin.clone());
    let soa_data = RecordData::Soa(Soa {
        mname: ns_host,
        rname,
        serial,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: config.ttl,
    });
    let soa_at = |zone: &DomainName| Record {
        name: zone.clone(),
        ttl: config.ttl,
        data: soa_data.clone(),
    };
    let soa = soa_at(origin);
    b.names
        .entry(origin.as_str().to_owned())
        .or_default()
        .push(soa.clone());
    let mut names = b.names;
    let mut record_count = 0;
    for records in names.values_mut() {
        records.sort();
        records.dedup();
        record_count += records.len();
    }
    let cluster = state.config();
    Zone {
        origin: origin.clone(),
        ttl: config.ttl,
        pods: config.pods,
        names,
        namespaces,
        reverse_ranges: cluster
            .service_cidrs
            .iter()
            .chain(&cluster.cluster_cidrs)
            .copied()
            .collect(),
        soa_in_addr: soa_at(&DomainName::reverse_zone(false)),
        soa_ip6: soa_at(&DomainName::reverse_zone(true)),
        soa,
        record_count,
    }
}

struct Builder<'a> {
    origin: &'a str,
    ttl: u32,
    names: HashMap<String, Vec<Record>>,
    /// SRV name → (port, target), weighted once all targets are known.
    srv: BTreeMap<DomainName, BTreeSet<(u16, DomainName)>>,
    serial: Fnv,
}

impl Builder<'_> {
    fn add(&mut self, name: DomainName, data: RecordData) {
        let record = Record {
            name,
            ttl: self.ttl,
            data,
        };
        record.hash(&mut self.serial);
        if !self.names.contains_key(record.name.as_str()) {
            self.add_name(&record.name);
        }
        if let Some(records) = self.names.get_mut(record.name.as_str()) {
            records.push(record);
        }
    }

    /// Makes `name` exist, with its ancestors up to the origin as empty non-terminals.
    fn add_name(&mut self, name: &DomainName) {
        if self.names.contains_key(name.as_str()) {
            return;
        }
        self.names.insert(name.as_str().to_owned(), Vec::new());
        if !within(name.as_str(), self.origin) {
            return;
        }
        let mut rest = name.as_str();
        while rest.len() > self.origin.len() {
            let Some((_, parent)) = rest.split_once('.') else {
                break;
            };
            // Every name is inserted with its ancestors, so an existing parent ends the walk.
            if self.names.contains_key(parent) {
                break;
            }
            self.names.insert(parent.to_owned(), Vec::new());
            rest = parent;
        }
    }

    fn add_service(&mut self, state: &ClusterState, svc_root: &DomainName, service: &Service) {
        let Ok(base) = svc_root
            .child(service.key.namespace.as_str())
            .and_then(|ns| ns.child(&service.key.name))
        else {
            return;
        };
        if service.service_type == ServiceType::ExternalName {
            if let Some(target) = service
                .external_name
                .as_deref()
                .and_then(|n| n.parse().ok())
            {
                self.add(base, RecordData::Cname(target));
            }
            return;
        }
        if !service.headless {
            for ip in &service.cluster_ips {
                self.add(base.clone(), RecordData::address(*ip));
                self.add(DomainName::reverse(*ip), RecordData::Ptr(base.clone()));
            }
            if service.cluster_ips.is_empty() {
                return;
            }
            for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
                if let Some(name) = srv_name(&base, &port.name, port.protocol.as_lower_str()) {
                    self.srv
                        .entry(name)
                        .or_default()
                        .insert((port.port, base.clone()));
                }
            }
            return;
        }
        for slice in state.endpoint_slices_for(&service.key) {
            if slice.address_type == AddressType::Fqdn {
                continue;
            }
            let srv_names: Vec<(DomainName, u16)> = slice
                .ports
                .iter()
                .filter(|p| !p.name.is_empty())
                .filter_map(|p| {
                    let name = srv_name(&base, &p.name, p.protocol.as_lower_str())?;
                    Some((name, p.port))
                })
                .collect();
            let published = slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.ready || service.publish_not_ready_addresses);
            for endpoint in published {
                for ip in &endpoint.addresses {
                    let explicit = endpoint.hostname.clone().or_else(|| {
                        let pod = state.pod(endpoint.pod.as_ref()?)?;
                        (pod.subdomain.as_deref() == Some(service.key.name.as_str()))
                            .then(|| pod.hostname.clone())
                            .flatten()
                    });
                    let label = explicit.unwrap_or_else(|| dashed(*ip));
                    let Ok(host) = base.child(&label) else {
                        continue;
                    };
                    self.add(base.clone(), RecordData::address(*ip));
                    self.add(host.clone(), RecordData::address(*ip));
                    self.add(DomainName::reverse(*ip), RecordData::Ptr(host.clone()));
                    for (name, port) in &srv_names {
                        let targets = self.srv.entry(name.clone()).or_default();
                        targets.insert((*port, host.clone()));
                    }
                }
            }
        }
    }

    /// Adds the collected SRV records; the targets of one name share a weight of 100.
    fn finish_srv(&mut self) {
        for (name, targets) in std::mem::take(&mut self.srv) {
            let weight = u16::try_from(100 / targets.len().max(1))
                .unwrap_or(1)
                .max(1);
            for (port, target) in targets {
                let srv = Srv {
                    priority: 0,
                    weight,
                    port,
                    target,
                };
                self.add(name.clone(), RecordData::Srv(srv));
            }
        }
    }
}

/// `_<port>._<proto>.<service>.<ns>.svc.<zone>`.
fn srv_name(base: &DomainName, port: &str, protocol: &str) -> Option<DomainName> {
    let proto = base.child(&format!("_{protocol}")).ok()?;
    proto.child(&format!("_{port}")).ok()
}

/// FNV-1a, 64 bits: a stable hash of the records for the SOA serial (std's hasher is
/// randomly keyed per process).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl RecordData {
    pub(super) fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => RecordData::A(v4),
            IpAddr::V6(v6) => RecordData::Aaaa(v6),
        }
    }
}
