//! What the zone keeps of the cluster's objects: only the fields answers are derived from.
//!
//! Each kept object is converted once from its `netd-model` view; nothing here refers to
//! a `ClusterState` or a Kubernetes object afterwards.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use netd_model::view::{AddressType, EndpointSlice, Pod, Service, ServiceType};
use netd_model::{EndpointSliceRef, ObjectId, Protocol, ServiceRef};

use super::{DomainName, PodMode};

/// Namespaces that exist whether declared or not, as `ClusterState::new` creates them.
const ALWAYS_PRESENT: [&str; 3] = ["default", "kube-system", "kube-public"];

/// A Service, as far as DNS cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ServiceSource {
    /// An ExternalName Service: a CNAME to the target, if the target is a valid name.
    Alias(Option<DomainName>),
    /// A Service with ClusterIPs: A/AAAA and PTR per address, SRV per named port.
    ClusterIp {
        ips: Box<[IpAddr]>,
        ports: Box<[NamedPort]>,
    },
    /// A headless Service: its records come from its EndpointSlices.
    Headless { publish_not_ready: bool },
}

/// A named port of a Service or an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NamedPort {
    pub(super) name: Box<str>,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
}

/// The named ones of `(name, protocol, port)` (SRV records exist only for named ports).
fn named_ports<'a>(ports: impl Iterator<Item = (&'a String, Protocol, u16)>) -> Box<[NamedPort]> {
    ports
        .filter(|(name, ..)| !name.is_empty())
        .map(|(name, protocol, port)| NamedPort {
            name: name.as_str().into(),
            protocol,
            port,
        })
        .collect()
}

/// An EndpointSlice, as far as DNS cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SliceSource {
    pub(super) service: Option<ServiceRef>,
    pub(super) ports: Box<[NamedPort]>,
    /// Empty for FQDN slices, which give no records.
    pub(super) endpoints: Box<[EndpointSource]>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EndpointSource {
    pub(super) addresses: Box<[IpAddr]>,
    pub(super) ready: bool,
    pub(super) hostname: Option<Box<str>>,
    /// The Pod it targets, as a [`pod_key`].
    pub(super) pod: Option<Box<str>>,
}

/// What a Pod contributes: its hostname under a subdomain (for headless Services) and, in
/// verified mode, its addresses. `None` in [`Sources::pods`] for the many Pods with neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PodSource {
    pub(super) namespace: Box<str>,
    /// `(hostname, subdomain)`, when both are set.
    pub(super) named: Option<(Box<str>, Box<str>)>,
    /// Verified mode only.
    pub(super) ips: Box<[IpAddr]>,
}

/// Every kept object, and which namespaces exist.
#[derive(Clone, Debug, Default)]
pub(super) struct Sources {
    pub(super) services: HashMap<ServiceRef, ServiceSource>,
    pub(super) slices: HashMap<EndpointSliceRef, SliceSource>,
    pub(super) slices_by_service: HashMap<ServiceRef, BTreeSet<EndpointSliceRef>>,
    /// Every Pod by [`pod_key`]; the value only for Pods that contribute records.
    pub(super) pods: HashMap<Box<str>, Option<Box<PodSource>>>,
    /// Objects of other namespaced kinds (Deployments, NetworkPolicies): they only make their
    /// namespace exist.
    pub(super) others: HashSet<ObjectId>,
    /// Per namespace: whether a Namespace object declares it, and how many objects live in it.
    pub(super) namespaces: HashMap<Box<str>, NamespaceCount>,
}

/// Why a namespace exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct NamespaceCount {
    pub(super) declared: bool,
    pub(super) objects: u32,
}

impl Sources {
    /// Whether a namespace exists: declared, implied by an object in it, or always there.
    pub(super) fn namespace_exists(&self, name: &str) -> bool {
        ALWAYS_PRESENT.contains(&name)
            || self
                .namespaces
                .get(name)
                .is_some_and(|c| c.declared || c.objects > 0)
    }

    /// Every existing namespace, sorted.
    pub(super) fn existing_namespaces(&self) -> BTreeSet<&str> {
        self.namespaces
            .keys()
            .map(|n| &**n)
            .chain(ALWAYS_PRESENT)
            .filter(|n| self.namespace_exists(n))
            .collect()
    }

    pub(super) fn declare_namespace(&mut self, name: &str, declared: bool) {
        let count = self.namespaces.entry(name.into()).or_default();
        count.declared = declared;
        self.forget_unused(name);
    }

    /// One more (`true`) or one fewer object in `namespace`.
    pub(super) fn count_object(&mut self, namespace: &str, added: bool) {
        let count = self.namespaces.entry(namespace.into()).or_default();
        if added {
            count.objects += 1;
        } else {
            count.objects = count.objects.saturating_sub(1);
        }
        self.forget_unused(namespace);
    }

    fn forget_unused(&mut self, namespace: &str) {
        if self
            .namespaces
            .get(namespace)
            .is_some_and(|c| *c == NamespaceCount::default())
        {
            self.namespaces.remove(namespace);
        }
    }

    /// Replaces (or with `None`, removes) a Service.
    pub(super) fn set_service(&mut self, key: &ServiceRef, source: Option<ServiceSource>) {
        let existed = match source {
            Some(source) => self.services.insert(key.clone(), source).is_some(),
            None => self.services.remove(key).is_some(),
        };
        self.recount(
            key.namespace.as_str(),
            existed,
            self.services.contains_key(key),
        );
    }

    /// Replaces (or with `None`, removes) an EndpointSlice.
    pub(super) fn set_slice(&mut self, key: &EndpointSliceRef, source: Option<SliceSource>) {
        let old = match source {
            Some(source) => {
                if let Some(service) = &source.service {
                    self.slices_by_service
                        .entry(service.clone())
                        .or_default()
                        .insert(key.clone());
                }
                let new_service = source.service.clone();
                let old = self.slices.insert(key.clone(), source);
                if let Some(old_service) = old.as_ref().and_then(|o| o.service.as_ref())
                    && Some(old_service) != new_service.as_ref()
                {
                    self.unlink_slice(old_service, key);
                }
                old
            }
            None => {
                let old = self.slices.remove(key);
                if let Some(service) = old.as_ref().and_then(|o| o.service.as_ref()) {
                    self.unlink_slice(service, key);
                }
                old
            }
        };
        self.recount(
            key.namespace.as_str(),
            old.is_some(),
            self.slices.contains_key(key),
        );
    }

    fn unlink_slice(&mut self, service: &ServiceRef, key: &EndpointSliceRef) {
        if let Some(set) = self.slices_by_service.get_mut(service) {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
    }

    /// Replaces (or with `None`, removes) a Pod, by namespace and [`pod_key`].
    pub(super) fn set_pod(
        &mut self,
        namespace: &str,
        key: Box<str>,
        source: Option<Option<Box<PodSource>>>,
    ) {
        let (existed, exists) = match source {
            Some(source) => (self.pods.insert(key, source).is_some(), true),
            None => (self.pods.remove(&key).is_some(), false),
        };
        self.recount(namespace, existed, exists);
    }

    /// Adds (`true`) or removes an object of another namespaced kind.
    pub(super) fn set_other(&mut self, id: &ObjectId, present: bool) {
        let (existed, exists) = if present {
            (!self.others.insert(id.clone()), true)
        } else {
            (self.others.remove(id), false)
        };
        self.recount(&id.namespace, existed, exists);
    }

    fn recount(&mut self, namespace: &str, existed: bool, exists: bool) {
        if existed != exists {
            self.count_object(namespace, exists);
        }
    }

    /// The slices of a Service.
    pub(super) fn slices_for<'a>(
        &'a self,
        service: &ServiceRef,
    ) -> impl Iterator<Item = &'a SliceSource> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// The contributing part of a Pod, by [`pod_key`].
    pub(super) fn pod(&self, key: &str) -> Option<&PodSource> {
        self.pods.get(key).and_then(Option::as_deref)
    }
}

/// How the zone keys a Pod: `namespace/name`.
pub(super) fn pod_key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

impl ServiceSource {
    pub(super) fn from_view(service: &Service) -> Self {
        if service.service_type == ServiceType::ExternalName {
            let target = service
                .external_name
                .as_deref()
                .and_then(|n| n.parse().ok());
            return ServiceSource::Alias(target);
        }
        if service.headless {
            return ServiceSource::Headless {
                publish_not_ready: service.publish_not_ready_addresses,
            };
        }
        ServiceSource::ClusterIp {
            ips: service.cluster_ips.clone().into_boxed_slice(),
            ports: named_ports(service.ports.iter().map(|p| (&p.name, p.protocol, p.port))),
        }
    }
}

impl SliceSource {
    pub(super) fn from_view(slice: &EndpointSlice) -> Self {
        let fqdn = slice.address_type == AddressType::Fqdn;
        SliceSource {
            service: slice.service.clone(),
            ports: named_ports(slice.ports.iter().map(|p| (&p.name, p.protocol, p.port))),
            endpoints: slice
                .endpoints
                .iter()
                .filter(|_| !fqdn)
                .map(|e| EndpointSource {
                    addresses: e.addresses.clone().into_boxed_slice(),
                    ready: e.conditions.ready,
                    hostname: e.hostname.as_deref().map(Into::into),
                    pod: e
                        .pod
                        .as_ref()
                        .map(|p| pod_key(p.namespace.as_str(), &p.name)),
                })
                .collect(),
        }
    }
}

impl PodSource {
    /// What a Pod contributes in `mode`; `None` when nothing.
    pub(super) fn from_view(pod: &Pod, mode: PodMode) -> Option<Box<PodSource>> {
        let named = match (&pod.hostname, &pod.subdomain) {
            (Some(h), Some(s)) => Some((h.as_str().into(), s.as_str().into())),
            _ => None,
        };
        let ips: Box<[IpAddr]> = if mode == PodMode::Verified {
            pod.ips.clone().into_boxed_slice()
        } else {
            Box::default()
        };
        if named.is_none() && ips.is_empty() {
            return None;
        }
        Some(Box::new(PodSource {
            namespace: pod.key.namespace.as_str().into(),
            named,
            ips,
        }))
    }
}
