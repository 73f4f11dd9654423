//! Services, as the API server and a MetalLB-style load-balancer controller complete them:
//! IP families, ClusterIPs, nodePorts, healthCheckNodePorts and load-balancer ingress IPs.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netd_model::view::{Service, ServiceType, TrafficPolicy};
use netd_model::{ClusterConfig, ClusterState, FieldError, FieldPath, Kind, ObjectId, ServiceRef};

use crate::alloc::{Family, IpBook, IpRange, PortBook};
use crate::error::{Pool, ResolveError};
use crate::names;

const SINGLE_STACK: &str = "SingleStack";
const PREFER_DUAL_STACK: &str = "PreferDualStack";
const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

/// A Service being resolved.
#[derive(Debug)]
pub(crate) struct ServiceWork {
    pub(crate) obj: Box<core::Service>,
    /// The validated view of the input object.
    pub(crate) view: Service,
    pub(crate) id: ObjectId,
    /// `spec.ipFamilies` once defaulted; empty for ExternalName Services.
    pub(crate) families: Vec<Family>,
    policy: Option<&'static str>,
    /// A ClusterIP per family; empty for headless and ExternalName Services.
    cluster_ips: Vec<(Family, Option<IpAddr>)>,
    /// Whether its ports get nodePorts.
    wants_node_ports: bool,
    /// The nodePort of each port, in port order.
    node_ports: Vec<Option<u16>>,
    /// Whether it gets a healthCheckNodePort.
    wants_health_check: bool,
    health_check_node_port: Option<u16>,
    /// Whether the load-balancer controller gives it an ingress IP.
    wants_load_balancer: bool,
    load_balancer_ip: Option<IpAddr>,
}

/// The well-known Service pinned to the first address of the service range.
fn kubernetes_service() -> ServiceRef {
    ServiceRef::new("default", "kubernetes")
}

/// The cluster DNS Service, pinned to `ClusterConfig::dns_service_ip`.
fn dns_service() -> ServiceRef {
    ServiceRef::new("kube-system", "kube-dns")
}

fn service_id(key: &ServiceRef) -> ObjectId {
    ObjectId {
        kind: Kind::Service,
        namespace: key.namespace.to_string(),
        name: key.name.clone(),
    }
}

impl ServiceWork {
    /// Defaults the IP families and records what the Service declares.
    pub(crate) fn new(
        obj: Box<core::Service>,
        view: Service,
        config: &ClusterConfig,
    ) -> Result<Self, ResolveError> {
        let (families, policy) = ip_families(&obj, &view, config).map_err(|source| {
            ResolveError::IpFamiliesRejected {
                service: view.key.clone(),
                source: Box::new(source),
            }
        })?;
        let has_cluster_ip = !view.headless && view.service_type != ServiceType::ExternalName;
        let pinned = if view.key == kubernetes_service() {
            config.kubernetes_service_ip()
        } else if view.key == dns_service() {
            Some(config.dns_service_ip)
        } else {
            None
        };
        let cluster_ips = if has_cluster_ip {
            families
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let declared = view.cluster_ips.get(i).copied();
                    let pinned = pinned.filter(|ip| i == 0 && Family::of(*ip) == *f);
                    (*f, declared.or(pinned))
                })
                .collect()
        } else {
            Vec::new()
        };
        let spec = obj.spec.as_ref();
        let load_balancer = view.service_type == ServiceType::LoadBalancer;
        let wants_node_ports = view.service_type == ServiceType::NodePort
            || load_balancer
                && spec.and_then(|s| s.allocate_load_balancer_node_ports) != Some(false);
        let has_ingress = obj
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        let wants_load_balancer = load_balancer
            && !has_ingress
            && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none();
        let requested_ip = spec
            .and_then(|s| s.load_balancer_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        Ok(Self {
            id: service_id(&view.key),
            families,
            policy,
            cluster_ips,
            wants_node_ports,
            node_ports: view.ports.iter().map(|p| p.node_port).collect(),
            wants_health_check: load_balancer
                && view.external_traffic_policy == TrafficPolicy::Local,
            health_check_node_port: view.health_check_node_port,
            wants_load_balancer,
            load_balancer_ip: requested_ip.filter(|_| wants_load_balancer),
            obj,
            view,
        })
    }

    /// Writes the resolved fields into the object, with the API server's defaults.
    pub(crate) fn finish(&mut self) {
        let spec = self.obj.spec.get_or_insert_with(Default::default);
        spec.type_.get_or_insert_with(|| "ClusterIP".to_owned());
        if self.view.service_type == ServiceType::ExternalName {
            return;
        }
        spec.session_affinity
            .get_or_insert_with(|| "None".to_owned());
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".to_owned());
        if matches!(
            self.view.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".to_owned());
        }
        if self.view.service_type == ServiceType::LoadBalancer {
            spec.allocate_load_balancer_node_ports.get_or_insert(true);
        }
        spec.ip_families = Some(
            self.families
                .iter()
                .map(|f| f.as_api_str().to_owned())
                .collect(),
        );
        spec.ip_family_policy = self.policy.map(str::to_owned);
        let cluster_ips: Vec<String> = if self.view.headless {
            vec!["None".to_owned()]
        } else {
            self.cluster_ips
                .iter()
                .filter_map(|(_, ip)| ip.map(|ip| ip.to_string()))
                .collect()
        };
        spec.cluster_ip = cluster_ips.first().cloned();
        spec.cluster_ips = Some(cluster_ips);
        for (port, node_port) in spec.ports.iter_mut().flatten().zip(&self.node_ports) {
            port.protocol.get_or_insert_with(|| "TCP".to_owned());
            port.target_port.get_or_insert(IntOrString::Int(port.port));
            if let Some(n) = node_port {
                port.node_port = Some(i32::from(*n));
            }
        }
        if let Some(n) = self
            .health_check_node_port
            .filter(|_| self.wants_health_check)
        {
            spec.health_check_node_port = Some(i32::from(n));
        }
        if let Some(ip) = self.load_balancer_ip {
            let status = self.obj.status.get_or_insert_with(Default::default);
            status.load_balancer = Some(core::LoadBalancerStatus {
                ingress: Some(vec![core::LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some("VIP".to_owned()),
                    ..Default::default()
                }]),
            });
        }
    }

    fn node_port_slots(&mut self) -> impl Iterator<Item = (usize, &mut Option<u16>)> {
        let wanted = self.wants_node_ports;
        self.node_ports
            .iter_mut()
            .enumerate()
            .filter(move |(_, p)| wanted && p.is_none())
    }
}

/// `spec.ipFamilies` and `spec.ipFamilyPolicy` as the API server defaults and checks them.
fn ip_families(
    obj: &core::Service,
    view: &Service,
    config: &ClusterConfig,
) -> Result<(Vec<Family>, Option<&'static str>), FieldError> {
    if view.service_type == ServiceType::ExternalName {
        return Ok((Vec::new(), None));
    }
    let mut cluster: Vec<Family> = Vec::new();
    for c in &config.service_cidrs {
        let f = Family::of_net(c);
        if !cluster.contains(&f) {
            cluster.push(f);
        }
    }
    let default_family = cluster.first().copied().unwrap_or(Family::V4);
    let spec = obj.spec.as_ref();
    let families_path = FieldPath::new("spec.ipFamilies");
    let mut families = Vec::new();
    for (i, s) in spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = Family::parse(s).ok_or_else(|| {
            FieldError::not_supported(families_path.index(i), s, &["IPv4", "IPv6"])
        })?;
        if families.contains(&f) {
            return Err(FieldError::duplicate(families_path.index(i), s));
        }
        families.push(f);
    }
    let policy_path = FieldPath::new("spec.ipFamilyPolicy");
    let policy = match spec.and_then(|s| s.ip_family_policy.as_deref()) {
        None => None,
        Some(SINGLE_STACK) => Some(SINGLE_STACK),
        Some(PREFER_DUAL_STACK) => Some(PREFER_DUAL_STACK),
        Some(REQUIRE_DUAL_STACK) => Some(REQUIRE_DUAL_STACK),
        Some(other) => {
            return Err(FieldError::not_supported(
                policy_path,
                other,
                &[SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK],
            ));
        }
    };
    // Headless Services without a selector get every family, even on a single-stack cluster.
    if view.headless && view.selector.is_none() && view.service_type == ServiceType::ClusterIp {
        let policy = policy.unwrap_or(REQUIRE_DUAL_STACK);
        if families.is_empty() {
            families.push(default_family);
        }
        if families.len() < 2 && policy != SINGLE_STACK {
            families.push(families[0].other());
        }
        return Ok((families, Some(policy)));
    }
    let ips = &view.cluster_ips;
    let multiple = families.len() > 1 || ips.len() > 1;
    let policy = match policy {
        None if multiple => {
            return Err(FieldError::forbidden(
                policy_path,
                "must be RequireDualStack or PreferDualStack when multiple IP families are specified",
            ));
        }
        None => SINGLE_STACK,
        Some(SINGLE_STACK) if multiple => {
            return Err(FieldError::forbidden(
                policy_path,
                "must be RequireDualStack or PreferDualStack when multiple IP families are specified",
            ));
        }
        Some(p) => p,
    };
    for (i, ip) in ips.iter().enumerate() {
        let f = Family::of(*ip);
        match families.get(i) {
            Some(want) if *want != f => {
                return Err(FieldError::invalid(
                    FieldPath::new("spec.clusterIPs").index(i),
                    ip,
                    format!(
                        "must be an {} address, as spec.ipFamilies[{i}] says",
                        want.as_api_str()
                    ),
                ));
            }
            Some(_) => {}
            None if families.contains(&f) => {
                return Err(FieldError::duplicate(
                    FieldPath::new("spec.clusterIPs").index(i),
                    ip,
                ));
            }
            None => families.push(f),
        }
    }
    if families.is_empty() {
        families.push(default_family);
    }
    if policy != SINGLE_STACK && families.len() < 2 {
        let alt = families[0].other();
        if cluster.contains(&alt) {
            families.push(alt);
        } else if policy == REQUIRE_DUAL_STACK {
            return Err(FieldError::invalid(
                policy_path,
                policy,
                "this cluster is not configured for dual-stack services",
            ));
        }
    }
    if policy == PREFER_DUAL_STACK {
        let first = families[0];
        families.retain(|f| *f == first || cluster.contains(f));
    }
    if let Some(i) = families.iter().position(|f| !cluster.contains(f)) {
        return Err(FieldError::invalid(
            families_path.index(i),
            families[i].as_api_str(),
            "is not configured on this cluster",
        ));
    }
    Ok((families, Some(policy)))
}

/// Claims what the Services declare: ClusterIPs (including the pinned ones of
/// `default/kubernetes` and `kube-system/kube-dns`), nodePorts, healthCheckNodePorts and
/// load-balancer IPs (these may be shared), then reserves the pinned ClusterIPs so that no
/// other Service is given them.
pub(crate) fn claim_declared(
    services: &[ServiceWork],
    ips: &mut IpBook,
    ports: &mut PortBook,
    config: &ClusterConfig,
) -> Result<(), ResolveError> {
    for svc in services {
        for ip in svc.cluster_ips.iter().filter_map(|(_, ip)| *ip) {
            ips.claim(ip, &svc.id)
                .map_err(|owner| ResolveError::AddressInUse {
                    address: ip,
                    object: svc.id.clone(),
                    owner: Box::new(owner),
                })?;
        }
        let declared_ports = svc
            .node_ports
            .iter()
            .flatten()
            .chain(&svc.health_check_node_port);
        for port in declared_ports {
            ports
                .claim(*port, &svc.view.key)
                .map_err(|owner| ResolveError::NodePortInUse {
                    port: *port,
                    service: svc.view.key.clone(),
                    owner,
                })?;
        }
        for ip in svc
            .view
            .load_balancer_ips
            .iter()
            .chain(&svc.load_balancer_ip)
        {
            ips.share(*ip, &svc.id);
        }
    }
    if let Some(ip) = config.kubernetes_service_ip() {
        ips.share(ip, &service_id(&kubernetes_service()));
    }
    ips.share(config.dns_service_ip, &service_id(&dns_service()));
    Ok(())
}

/// Keeps the ClusterIPs, nodePorts, healthCheckNodePort and load-balancer IP each Service had
/// in `previous`, where still valid and free.
pub(crate) fn keep_previous(
    services: &mut [ServiceWork],
    ips: &mut IpBook,
    ports: &mut PortBook,
    config: &ClusterConfig,
    previous: Option<&ClusterState>,
) {
    let Some(previous) = previous else { return };
    for svc in services.iter_mut() {
        let Some(prev) = previous.service(&svc.view.key) else {
            continue;
        };
        let id = svc.id.clone();
        for (family, slot) in svc.cluster_ips.iter_mut().filter(|(_, ip)| ip.is_none()) {
            let Some(range) = service_range(config, *family) else {
                continue;
            };
            let kept = prev
                .cluster_ips
                .iter()
                .copied()
                .find(|ip| range.contains(*ip) && ips.available_to(*ip, &id));
            if let Some(ip) = kept.filter(|ip| ips.claim(*ip, &id).is_ok()) {
                *slot = Some(ip);
            }
        }
        let key = svc.view.key.clone();
        let current_ports = svc.view.ports.clone();
        for (i, slot) in svc.node_port_slots() {
            let now = &current_ports[i];
            let before = prev
                .ports
                .iter()
                .find(|p| p.port == now.port && p.protocol == now.protocol)
                .or_else(|| {
                    prev.ports
                        .iter()
                        .find(|p| p.name == now.name && p.protocol == now.protocol)
                });
            let kept = before
                .and_then(|p| p.node_port)
                .filter(|n| ports.available_to(*n, &key));
            if let Some(n) = kept.filter(|n| ports.claim(*n, &key).is_ok()) {
                *slot = Some(n);
            }
        }
        if svc.wants_health_check && svc.health_check_node_port.is_none() {
            let kept = prev
                .health_check_node_port
                .filter(|n| ports.available_to(*n, &key));
            svc.health_check_node_port = kept.filter(|n| ports.claim(*n, &key).is_ok());
        }
        if svc.wants_load_balancer && svc.load_balancer_ip.is_none() {
            let pool = IpRange::new(config.load_balancer_pool, 1);
            let kept = prev
                .load_balancer_ips
                .iter()
                .copied()
                .find(|ip| pool.contains(*ip) && ips.available_to(*ip, &id));
            svc.load_balancer_ip = kept.filter(|ip| ips.claim(*ip, &id).is_ok());
        }
    }
}

/// Allocates what is still missing: ClusterIPs and nodePorts at hash-chosen free values (as
/// upstream picks them at random), load-balancer IPs from the bottom of the pool (as MetalLB
/// does).
pub(crate) fn allocate(
    services: &mut [ServiceWork],
    ips: &mut IpBook,
    ports: &mut PortBook,
    config: &ClusterConfig,
) -> Result<(), ResolveError> {
    let node_ports = Pool::NodePorts(ports.range().clone());
    for svc in services.iter_mut() {
        let id = svc.id.clone();
        let key = svc.view.key.clone();
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        for (family, slot) in svc.cluster_ips.iter_mut().filter(|(_, ip)| ip.is_none()) {
            let Some(range) = service_range(config, *family) else {
                continue;
            };
            let hash = names::hash64(&["clusterIP", ns, name, family.as_api_str()]);
            let ip =
                ips.hashed_free(&range, hash, &id)
                    .ok_or_else(|| ResolveError::PoolExhausted {
                        pool: Pool::ServiceCidr(range.net()),
                        what: id.clone(),
                    })?;
            *slot = Some(ip);
        }
        for i in 0..svc.node_ports.len() {
            if !svc.wants_node_ports || svc.node_ports[i].is_some() {
                continue;
            }
            let p = &svc.view.ports[i];
            // As upstream: a port number served over two protocols gets one nodePort.
            let shared = svc
                .view
                .ports
                .iter()
                .zip(&svc.node_ports)
                .find_map(|(q, n)| n.filter(|_| q.port == p.port && q.protocol != p.protocol));
            let n = match shared {
                Some(n) => n,
                None => {
                    let hash = names::hash64(&[
                        "nodePort",
                        ns,
                        name,
                        &p.name,
                        p.protocol.as_api_str(),
                        &p.port.to_string(),
                    ]);
                    ports
                        .hashed_free(hash, &key)
                        .ok_or_else(|| ResolveError::PoolExhausted {
                            pool: node_ports.clone(),
                            what: id.clone(),
                        })?
                }
            };
            svc.node_ports[i] = Some(n);
        }
        if svc.wants_health_check && svc.health_check_node_port.is_none() {
            let hash = names::hash64(&["healthCheckNodePort", ns, name]);
            let n = ports
                .hashed_free(hash, &key)
                .ok_or_else(|| ResolveError::PoolExhausted {
                    pool: node_ports.clone(),
                    what: id.clone(),
                })?;
            svc.health_check_node_port = Some(n);
        }
        let pool = IpRange::new(config.load_balancer_pool, 1);
        if svc.wants_load_balancer
            && svc.load_balancer_ip.is_none()
            && svc.families.contains(&pool.family())
        {
            let ip = ips
                .next_free(&pool, &id)
                .ok_or_else(|| ResolveError::PoolExhausted {
                    pool: Pool::LoadBalancer(config.load_balancer_pool),
                    what: id.clone(),
                })?;
            svc.load_balancer_ip = Some(ip);
        }
    }
    Ok(())
}

fn service_range(config: &ClusterConfig, family: Family) -> Option<IpRange> {
    config
        .service_cidrs
        .iter()
        .find(|c| Family::of_net(c) == family)
        .map(|c| IpRange::new(*c, 1))
}
