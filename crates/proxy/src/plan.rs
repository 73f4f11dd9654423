//! [`plan`]: the service plan for one Node and one IP family.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use netd_model::view::{AddressType, Service, ServicePort, ServiceType, TrafficPolicy};
use netd_model::{ClusterState, NodeName, Protocol, ServicePortName, ServiceRef};

use crate::options::{IpFamily, LocalDetector, NodePortIps, ProxyOptions};
use crate::topology::{Categorized, Usage, categorize};

pub use crate::topology::PlannedEndpoint;

/// Everything one Node's proxy programs for one IP family, decided once for every back end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// The Node the plan is for.
    pub node: NodeName,
    /// The plan's IP family; every address in it belongs to this family.
    pub family: IpFamily,
    /// The fwmark that asks for SNAT (`1 << masquerade_bit`, 0x4000 by default).
    pub masquerade_mark: u32,
    /// The local-traffic detector (`--detect-local-mode`), when configured for this family.
    pub local_detector: Option<LocalDetector>,
    /// Where nodePorts answer (`--nodeport-addresses` resolved for this family).
    pub nodeport_addresses: NodePortIps,
    /// Whether nodePorts also answer on `127.0.0.0/8` (`--iptables-localhost-nodeports`, IPv4
    /// plans only).
    pub localhost_nodeports: bool,
    /// Every proxied Service port, in [`ServicePortName`] order.
    pub ports: PortPlans,
}

/// A plan's port plans by name, each behind an `Arc`: the plans a programmer keeps, those it
/// hands the sync engine and those the engine keeps share every port planned once, so a copy
/// or a drop of a plan is a reference count per port, not a copy of every endpoint, and two
/// plans derived from one another compare their shared ports by pointer.
pub type PortPlans = BTreeMap<ServicePortName, Arc<ServicePortPlan>>;

/// Where one kind of traffic to a Service port goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Disposition {
    /// Load-balanced over the cluster endpoints ([`Categorized::cluster`]).
    Cluster,
    /// Load-balanced over this Node's endpoints ([`Categorized::local`]).
    Local,
    /// No usable endpoint anywhere: rejected at once (ICMP port unreachable), so clients get
    /// "connection refused" instead of a hang.
    Reject,
    /// A `Local` policy with endpoints elsewhere but none here: silently dropped, as upstream.
    Drop,
}

impl Disposition {
    /// Whether packets are forwarded to endpoints.
    pub fn forwards(self) -> bool {
        matches!(self, Disposition::Cluster | Disposition::Local)
    }
}

/// Who is SNATed when sending to the ClusterIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterIpMasquerade {
    /// `--masquerade-all`: every sender.
    All,
    /// Senders the plan's [`ServicePlan::local_detector`] does not match (off-cluster
    /// clients routing the service range to a node), so replies come back through this node.
    OffCluster,
    /// Nobody (no local-traffic detector configured).
    Never,
}

/// How traffic to a port's "external" frontends (nodePort, external IPs, load-balancer IPs)
/// is handled. Present only when the port has such a frontend in the plan's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExternalPlan {
    /// `externalTrafficPolicy`.
    pub policy: TrafficPolicy,
    /// What happens to traffic from outside the cluster.
    pub disposition: Disposition,
    /// With `Cluster` policy, every packet is SNATed (it may cross nodes). With `Local`,
    /// only packets from this host itself are; outside clients keep their address.
    pub masquerade_all: bool,
    /// With `Local` policy and a local-traffic detector: packets from pods skip the policy
    /// and go to every cluster endpoint unSNATed (as if out to the load balancer and back).
    pub pods_short_circuit: bool,
    /// With `Local` policy: packets from this host are SNATed and go to every cluster endpoint.
    pub host_short_circuit: bool,
}

/// One Service port's frontends, endpoints and decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// kube-proxy's name for the port; feeds comments and chain hashes.
    pub name: ServicePortName,
    /// The ClusterIP of the plan's family.
    pub cluster_ip: IpAddr,
    /// The Service port number.
    pub port: u16,
    /// The nodePort, if any.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of the plan's family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of the plan's family.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of the plan's family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// A source range contains one of this node's IPs: traffic looped back from the
    /// load-balancer IP itself (source = that IP) is admitted too.
    pub load_balancer_admits_node: bool,
    /// `spec.healthCheckNodePort`, for LoadBalancer Services with `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
    /// With `sessionAffinity: ClientIP`, the timeout in seconds.
    pub session_affinity: Option<u32>,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// The categorised endpoints.
    pub endpoints: Categorized,
    /// This node's ready endpoints (what the health-check node port reports).
    pub local_ready_endpoints: usize,
    /// Every serving endpoint, whatever the traffic policy or topology: a UDP conntrack
    /// entry to one of the port's frontends whose reply comes from anything else is stale
    /// (upstream's conntrack reconciler). Sorted by `IP:port` string.
    pub serving_endpoints: Vec<SocketAddr>,
    /// What happens to traffic sent to the ClusterIP.
    pub internal: Disposition,
    /// Who is SNATed when sending to the ClusterIP (when [`Self::internal`] forwards).
    pub cluster_ip_masquerade: ClusterIpMasquerade,
    /// Handling of nodePort / external IP / load-balancer traffic, if the port has any.
    pub external: Option<ExternalPlan>,
}

impl ServicePortPlan {
    /// The port's protocol.
    pub fn protocol(&self) -> Protocol {
        self.name.protocol
    }

    /// Whether any usable endpoint exists anywhere (otherwise everything is rejected).
    pub fn has_endpoints(&self) -> bool {
        self.endpoints.has_any
    }

    /// Whether the cluster-policy endpoint set is in use (kube-proxy's `KUBE-SVC-` chain).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.endpoints.cluster.is_empty()
            && (self.internal_traffic_policy == TrafficPolicy::Cluster || self.external.is_some())
    }

    /// Whether the local-policy endpoint set is in use (kube-proxy's `KUBE-SVL-` chain).
    pub fn uses_local_endpoints(&self) -> bool {
        !self.endpoints.local.is_empty()
            && (self.internal_traffic_policy == TrafficPolicy::Local
                || self
                    .external
                    .is_some_and(|e| e.policy == TrafficPolicy::Local))
    }

    /// Whether external traffic has its own entry point (kube-proxy's `KUBE-EXT-` chain):
    /// the port is externally accessible and has endpoints somewhere.
    pub fn uses_external_entry(&self) -> bool {
        self.external.is_some() && self.has_endpoints()
    }

    /// Whether load-balancer traffic is filtered by source range first (`KUBE-FW-`).
    pub fn uses_source_ranges(&self) -> bool {
        self.has_endpoints()
            && !self.load_balancer_ips.is_empty()
            && !self.load_balancer_source_ranges.is_empty()
    }

    /// The endpoints one disposition forwards to (empty for reject and drop).
    pub fn endpoints_for(&self, disposition: Disposition) -> &[PlannedEndpoint] {
        match disposition {
            Disposition::Cluster => &self.endpoints.cluster,
            Disposition::Local => &self.endpoints.local,
            Disposition::Reject | Disposition::Drop => &[],
        }
    }
}

impl ServicePlan {
    /// The ports of one Service.
    pub fn ports_of<'a>(
        &'a self,
        service: &'a ServiceRef,
    ) -> impl Iterator<Item = &'a ServicePortPlan> + 'a {
        self.ports
            .values()
            .filter(move |p| &p.name.service == service)
            .map(|p| &**p)
    }

    /// The ports of `services`, in order, found without going through the others.
    pub fn ports_of_services<'a>(
        &'a self,
        services: &'a BTreeSet<ServiceRef>,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortPlan>)> + Clone + 'a {
        services.iter().flat_map(|service| {
            self.ports
                .range(first_port(service)..)
                .take_while(move |(name, _)| name.service == *service)
        })
    }

    /// The Services whose port plans differ from `previous` (added, removed or changed in
    /// any way, endpoints included): what a partial sync must rewrite. Comparing snapshots
    /// keeps the sync level-triggered — no event bookkeeping to get wrong.
    pub fn changed_services(&self, previous: &ServicePlan) -> BTreeSet<ServiceRef> {
        differing_services(&previous.ports, &self.ports)
    }

    /// For each Service with a health-check node port: its node port and this node's ready
    /// endpoints summed over its ports (upstream's `LocalReadyEndpoints`).
    pub fn health_checks(&self) -> BTreeMap<ServiceRef, (u16, usize)> {
        let mut out: BTreeMap<ServiceRef, (u16, usize)> = BTreeMap::new();
        for p in self.ports.values() {
            if let Some(hc) = p.health_check_node_port {
                out.entry(p.name.service.clone()).or_insert((hc, 0)).1 += p.local_ready_endpoints;
            }
        }
        out
    }
}

/// The Services with a port in `before` or `after` that is not the same in the other
/// (added, removed or changed in any way, endpoints included).
pub fn differing_services(before: &PortPlans, after: &PortPlans) -> BTreeSet<ServiceRef> {
    let gone = before.iter().filter(|(n, p)| after.get(*n) != Some(*p));
    let new = after.iter().filter(|(n, p)| before.get(*n) != Some(*p));
    gone.chain(new).map(|(n, _)| n.service.clone()).collect()
}

/// Plans every proxied Service port of `state` for `node` and `family`.
///
/// Skipped, as kube-proxy skips them: headless and ExternalName Services, Services labelled
/// `service.kubernetes.io/service-proxy-name` (another proxy's), and Services without a
/// ClusterIP of the family.
pub fn plan(
    state: &ClusterState,
    node: &NodeName,
    family: IpFamily,
    opts: &ProxyOptions,
) -> ServicePlan {
    let local_detector = opts.local_detector(family);
    let node_ips = family_node_ips(opts, family);
    let mut ports = BTreeMap::new();
    for svc in state.services() {
        plan_service(state, svc, node, family, opts, &node_ips, &mut ports);
    }
    ServicePlan {
        node: node.clone(),
        family,
        masquerade_mark: opts.masquerade_mark(),
        local_detector,
        nodeport_addresses: opts.nodeport_ips(family),
        localhost_nodeports: opts.localhost_nodeports && family == IpFamily::V4,
        ports,
    }
}

/// A plan brought forward by [`replan()`], and what of the previous plan it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replanned {
    /// The new plan, equal to [`plan()`] of the new state.
    pub plan: ServicePlan,
    /// The Services planned again; `None` when every Service was (the Node or the cluster's
    /// settings changed).
    pub changed: Option<BTreeSet<ServiceRef>>,
    /// The previous plan's ports of the Services planned again (every port when `changed`
    /// is `None`), as they were.
    pub replaced: PortPlans,
}

/// `previous`, planned by [`plan()`] from `previous_state` for the same Node, family and
/// `opts`, brought to `state`: only the Services whose inputs differ between the two states
/// (the Service itself, or an EndpointSlice naming it before or after) are planned again;
/// every other port plan is kept. The new plan equals `plan(state, ..)`; the result also says
/// which Services were planned again and what their ports were.
///
/// Between states one was changed from ([`ClusterState::changed_objects`]), the work is
/// proportional to the changes. When the Node itself changed, or the cluster's settings,
/// every Service is planned again, since the options come from them.
pub fn replan(
    mut previous: ServicePlan,
    previous_state: &ClusterState,
    state: &ClusterState,
    opts: &ProxyOptions,
) -> Replanned {
    let node = previous.node.clone();
    let family = previous.family;
    if previous_state.config() != state.config()
        || previous_state.node(node.as_str()) != state.node(node.as_str())
    {
        return Replanned {
            plan: plan(state, &node, family, opts),
            changed: None,
            replaced: previous.ports,
        };
    }
    let changed = changed_services(previous_state, state);
    let mut replaced = BTreeMap::new();
    for service in &changed {
        let names: Vec<ServicePortName> = previous
            .ports
            .range(first_port(service)..)
            .take_while(|(name, _)| name.service == *service)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if let Some(port) = previous.ports.remove(&name) {
                replaced.insert(name, port);
            }
        }
    }
    let node_ips = family_node_ips(opts, family);
    for key in &changed {
        if let Some(svc) = state.service(key) {
            plan_service(
                state,
                svc,
                &node,
                family,
                opts,
                &node_ips,
                &mut previous.ports,
            );
        }
    }
    Replanned {
        plan: previous,
        changed: Some(changed),
        replaced,
    }
}

/// The Node's IPs of `family`.
fn family_node_ips(opts: &ProxyOptions, family: IpFamily) -> Vec<IpAddr> {
    opts.node_ips
        .iter()
        .copied()
        .filter(|ip| family.contains(*ip))
        .collect()
}

/// The smallest port name of `service`: every port of it sorts at or after this one.
fn first_port(service: &ServiceRef) -> ServicePortName {
    ServicePortName {
        service: service.clone(),
        port: String::new(),
        protocol: Protocol::Tcp,
    }
}

/// The Services whose plan inputs differ between two states: changed Services, and the
/// Services changed EndpointSlices name (before and after the change).
pub fn changed_services(previous: &ClusterState, state: &ClusterState) -> BTreeSet<ServiceRef> {
    let mut changed = BTreeSet::new();
    for id in state.changed_objects(previous) {
        match id.kind {
            netd_model::Kind::Service => {
                changed.insert(ServiceRef::new(&id.namespace, &id.name));
            }
            netd_model::Kind::EndpointSlice => {
                let key = netd_model::EndpointSliceRef::new(&id.namespace, &id.name);
                for s in [previous.endpoint_slice(&key), state.endpoint_slice(&key)]
                    .into_iter()
                    .flatten()
                {
                    changed.extend(s.service.clone());
                }
            }
            _ => {}
        }
    }
    changed
}

/// Plans every port of `svc` into `ports`, unless kube-proxy skips the Service (headless,
/// ExternalName, another proxy's, or without a ClusterIP of the family).
fn plan_service(
    state: &ClusterState,
    svc: &Service,
    node: &NodeName,
    family: IpFamily,
    opts: &ProxyOptions,
    node_ips: &[IpAddr],
    ports: &mut PortPlans,
) {
    if svc.headless || svc.service_type == ServiceType::ExternalName || svc.proxy_name.is_some() {
        return;
    }
    let Some(cluster_ip) = svc
        .cluster_ips
        .iter()
        .copied()
        .find(|ip| family.contains(*ip))
    else {
        return;
    };
    let ctx = PortContext {
        state,
        svc,
        node,
        family,
        opts,
        has_local_detector: opts.local_detector(family).is_some(),
        node_ips,
    };
    for sp in &svc.ports {
        let p = ctx.plan_port(sp, cluster_ip);
        ports.insert(p.name.clone(), Arc::new(p));
    }
}

struct PortContext<'a> {
    state: &'a ClusterState,
    svc: &'a Service,
    node: &'a NodeName,
    family: IpFamily,
    opts: &'a ProxyOptions,
    has_local_detector: bool,
    node_ips: &'a [IpAddr],
}

impl PortContext<'_> {
    fn plan_port(&self, sp: &ServicePort, cluster_ip: IpAddr) -> ServicePortPlan {
        let svc = self.svc;
        let family = self.family;
        let external_ips: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(*ip))
            .collect();
        let load_balancer_ips: Vec<IpAddr> = svc
            .load_balancer_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(*ip))
            .collect();
        let load_balancer_source_ranges: Vec<IpNet> = svc
            .load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|c| family.contains_net(c))
            .collect();
        let externally_accessible =
            sp.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
        let itp = svc.internal_traffic_policy;
        let etp = svc.external_traffic_policy;
        let endpoints = self.endpoints(sp);
        let usage = Usage {
            uses_cluster: itp == TrafficPolicy::Cluster || externally_accessible,
            uses_local: itp == TrafficPolicy::Local
                || (externally_accessible && etp == TrafficPolicy::Local),
            zone: self.opts.node_zone.as_deref(),
            node: self.node,
            prefer_same_node: self.opts.prefer_same_node,
        };
        let categorized = categorize(&endpoints, &usage);
        let local_ready_endpoints = endpoints.iter().filter(|e| e.local && e.ready).count();
        let serving_endpoints = endpoints
            .iter()
            .filter(|e| e.serving)
            .map(|e| e.addr)
            .collect();
        let has_any = categorized.has_any;
        let policy_disposition = |policy: TrafficPolicy| match (has_any, policy) {
            (false, _) => Disposition::Reject,
            (true, TrafficPolicy::Cluster) => Disposition::Cluster,
            (true, TrafficPolicy::Local) if categorized.local.is_empty() => Disposition::Drop,
            (true, TrafficPolicy::Local) => Disposition::Local,
        };
        let internal = policy_disposition(itp);
        let external = externally_accessible.then(|| ExternalPlan {
            policy: etp,
            disposition: policy_disposition(etp),
            masquerade_all: etp == TrafficPolicy::Cluster,
            pods_short_circuit: etp == TrafficPolicy::Local && self.has_local_detector,
            host_short_circuit: etp == TrafficPolicy::Local,
        });
        let cluster_ip_masquerade = match (self.opts.masquerade_all, self.has_local_detector) {
            (true, _) => ClusterIpMasquerade::All,
            (false, true) => ClusterIpMasquerade::OffCluster,
            (false, false) => ClusterIpMasquerade::Never,
        };
        let load_balancer_admits_node = load_balancer_source_ranges
            .iter()
            .any(|c| self.node_ips.iter().any(|ip| c.contains(ip)));
        ServicePortPlan {
            name: svc.port_name(sp),
            cluster_ip,
            port: sp.port,
            node_port: sp.node_port,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            load_balancer_admits_node,
            // Upstream's NeedsHealthCheck: only LoadBalancer Services with eTP Local.
            health_check_node_port: svc.health_check_node_port.filter(|_| {
                svc.service_type == ServiceType::LoadBalancer && etp == TrafficPolicy::Local
            }),
            session_affinity: svc.session_affinity_timeout,
            internal_traffic_policy: itp,
            endpoints: categorized,
            local_ready_endpoints,
            serving_endpoints,
            internal,
            cluster_ip_masquerade,
            external,
        }
    }

    /// The port's endpoints of the plan's family: EndpointSlice ports matched by name and
    /// protocol, de-duplicated by `IP:port` (a local copy wins) and sorted by that string.
    fn endpoints(&self, sp: &ServicePort) -> Vec<PlannedEndpoint> {
        let address_type = match self.family {
            IpFamily::V4 => AddressType::IPv4,
            IpFamily::V6 => AddressType::IPv6,
        };
        let mut by_key: BTreeMap<String, PlannedEndpoint> = BTreeMap::new();
        for slice in self.state.endpoint_slices_for(&self.svc.key) {
            if slice.address_type != address_type {
                continue;
            }
            let Some(port) = slice
                .ports
                .iter()
                .find(|p| p.name == sp.name && p.protocol == sp.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(&ip) = ep.addresses.first() else {
                    continue;
                };
                if !self.family.contains(ip) {
                    continue;
                }
                let local = ep.node.as_ref() == Some(self.node);
                let planned = PlannedEndpoint {
                    addr: SocketAddr::new(ip, port.port),
                    local,
                    ready: ep.conditions.ready,
                    serving: ep.conditions.serving,
                    terminating: ep.conditions.terminating,
                    zone_hints: ep.zone_hints.iter().flatten().cloned().collect(),
                    node_hints: ep.node_hints.iter().flatten().cloned().collect(),
                };
                let key = planned.key();
                if local || !by_key.contains_key(&key) {
                    by_key.insert(key, planned);
                }
            }
        }
        by_key.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod incremental {
        use netd_model::Object;
        use proptest::prelude::*;

        use super::*;

        /// One object of a small pool: Services `a`–`c` (ClusterIP, NodePort with eTP Local,
        /// headless), their slices (moved between Services, endpoints on this node or not,
        /// ready or not), the Node itself (another address) and a Pod the plan ignores.
        fn object() -> impl Strategy<Value = Object> {
            let name = || prop_oneof![Just("a"), Just("b"), Just("c")];
            prop_oneof![
                (name(), 0u8..3, 1u16..4).prop_map(|(name, kind, port)| {
                    let spec = match kind {
                        0 => format!("{{clusterIP: 10.96.0.{port}, ports: [{{name: p, port: {port}}}]}}"),
                        1 => format!("{{type: NodePort, externalTrafficPolicy: Local, clusterIP: 10.96.1.{port}, ports: [{{name: p, port: 80, nodePort: 3000{port}}}]}}"),
                        _ => "{clusterIP: None, ports: [{name: p, port: 80}]}".to_owned(),
                    };
                    one(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"))
                }),
                (name(), name(), any::<bool>(), any::<bool>(), 1u8..4).prop_map(
                    |(slice, svc, ready, here, ip)| {
                        let node = if here { "node-1" } else { "node-2" };
                        one(&format!(
                            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                             metadata: {{name: s-{slice}, namespace: ns, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
                             ports: [{{name: p, port: 8080, protocol: TCP}}]\n\
                             endpoints: [{{addresses: [10.244.1.{ip}], nodeName: {node}, conditions: {{ready: {ready}}}}}]\n"
                        ))
                    }
                ),
                (1u8..3).prop_map(|ip| one(&format!(
                    "apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\n\
                     status: {{addresses: [{{type: InternalIP, address: 172.18.0.{ip}}}]}}\n"
                ))),
                name().prop_map(|name| one(&format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns}}\n\
                     spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.244.1.9}}\n"
                ))),
            ]
        }

        fn one(yaml: &str) -> Object {
            netd_testkit::objects(yaml).remove(0)
        }

        proptest! {
            /// After any sequence of changes, each plan brought forward by `replan` equals
            /// the plan made from scratch of the same state.
            #[test]
            fn replan_equals_a_fresh_plan(
                changes in proptest::collection::vec((object(), any::<bool>()), 1..16),
            ) {
                let node = NodeName::new("node-1");
                let mut state = netd_testkit::state("");
                let opts = ProxyOptions::for_node(&state, &node, &Default::default());
                let mut current = plan(&state, &node, IpFamily::V4, &opts);
                for (object, remove) in changes {
                    let before = state.clone();
                    if remove {
                        state.remove(&object.id());
                    } else {
                        state.insert(object).expect("valid object");
                    }
                    let opts = ProxyOptions::for_node(&state, &node, &Default::default());
                    let previous_opts = ProxyOptions::for_node(&before, &node, &Default::default());
                    if opts != previous_opts {
                        // The caller plans afresh when the options change.
                        current = plan(&state, &node, IpFamily::V4, &opts);
                        continue;
                    }
                    let kept = current.clone();
                    let replanned = replan(current, &before, &state, &opts);
                    current = replanned.plan.clone();
                    prop_assert_eq!(&current, &plan(&state, &node, IpFamily::V4, &opts));
                    // What was replaced and what is new are the changed Services' ports
                    // (every port when all were planned again).
                    let changed = |n: &ServicePortName| {
                        replanned.changed.as_ref().is_none_or(|c| c.contains(&n.service))
                    };
                    let was: BTreeMap<_, _> =
                        kept.ports.into_iter().filter(|(n, _)| changed(n)).collect();
                    prop_assert_eq!(&replanned.replaced, &was);
                    let now: Vec<_> = match &replanned.changed {
                        Some(c) => current.ports_of_services(c).map(|(n, _)| n.clone()).collect(),
                        None => current.ports.keys().cloned().collect(),
                    };
                    let expected: Vec<_> =
                        current.ports.keys().filter(|n| changed(n)).cloned().collect();
                    prop_assert_eq!(now, expected);
                }
            }
        }
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIPs: [10.96.0.5, "fd00:96::5"]
  externalIPs: [192.168.99.5, "fd00:99::5"]
  loadBalancerSourceRanges: [172.18.0.0/24, "fd00:18::/64"]
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, nodePort: 30053}]
status: {loadBalancer: {ingress: [{ip: 172.18.255.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-2}
- {addresses: [10.244.1.10], nodeName: node-1}
- {addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-b, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: web-v6, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:244:2::9"], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: someone-else}}
spec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: ns}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec: {internalTrafficPolicy: Local, clusterIP: 10.96.0.7, ports: [{port: 80}]}
"#;

    fn opts() -> ProxyOptions {
        ProxyOptions {
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            node_ips: vec!["172.18.0.2".parse().expect("ip")],
            ..ProxyOptions::default()
        }
    }

    fn keys(eps: &[PlannedEndpoint]) -> Vec<String> {
        eps.iter().map(PlannedEndpoint::key).collect()
    }

    #[test]
    fn plans_frontends_endpoints_and_decisions() {
        let state = netd_testkit::state(CLUSTER);
        let node = NodeName::new("node-1");
        let p = plan(&state, &node, IpFamily::V4, &opts());
        let names: Vec<String> = p
            .ports
            .keys()
            .map(|k| format!("{k} {}", k.protocol))
            .collect();
        assert_eq!(names, ["ns/empty TCP", "ns/web:dns UDP", "ns/web:http TCP"]);
        let http = p
            .ports
            .values()
            .find(|x| x.name.port == "http")
            .expect("http");
        assert_eq!(http.cluster_ip.to_string(), "10.96.0.5");
        assert_eq!(
            http.external_ips,
            ["192.168.99.5".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(http.load_balancer_source_ranges.len(), 1);
        assert!(http.load_balancer_admits_node);
        // Sorted by the "IP:port" string, de-duplicated across slices.
        assert_eq!(
            keys(&http.endpoints.cluster),
            ["10.244.1.10:8080", "10.244.2.9:8080"]
        );
        assert_eq!(keys(&http.endpoints.local), ["10.244.1.10:8080"]);
        assert_eq!(http.local_ready_endpoints, 1);
        let serving: Vec<String> = http
            .serving_endpoints
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            serving,
            ["10.244.1.10:8080", "10.244.1.2:8080", "10.244.2.9:8080"]
        );
        assert_eq!(http.internal, Disposition::Cluster);
        let ext = http.external.expect("externally accessible");
        assert_eq!(ext.disposition, Disposition::Local);
        assert!(!ext.masquerade_all && ext.pods_short_circuit && ext.host_short_circuit);
        assert_eq!(http.cluster_ip_masquerade, ClusterIpMasquerade::OffCluster);
        assert!(
            http.uses_cluster_endpoints()
                && http.uses_local_endpoints()
                && http.uses_source_ranges()
        );
        let dns = p
            .ports
            .values()
            .find(|x| x.name.port == "dns")
            .expect("dns");
        assert_eq!(
            keys(&dns.endpoints.cluster),
            ["10.244.1.10:5353", "10.244.2.9:5353"]
        );
        let empty = p
            .ports
            .values()
            .find(|x| x.name.service.name == "empty")
            .expect("empty");
        assert_eq!(empty.internal, Disposition::Reject);
        assert!(empty.external.is_none());
        assert_eq!(
            p.health_checks().get(&ServiceRef::new("ns", "web")),
            Some(&(32000, 2))
        );
        assert_eq!(p.ports_of(&ServiceRef::new("ns", "web")).count(), 2);
        assert_eq!(
            keys(http.endpoints_for(Disposition::Local)),
            ["10.244.1.10:8080"]
        );
        assert!(http.endpoints_for(Disposition::Drop).is_empty());
    }

    #[test]
    fn other_nodes_and_families() {
        let state = netd_testkit::state(CLUSTER);
        let node3 = NodeName::new("node-3");
        let p = plan(&state, &node3, IpFamily::V4, &opts());
        let http = p
            .ports
            .values()
            .find(|x| x.name.port == "http")
            .expect("http");
        assert!(http.endpoints.local.is_empty());
        assert_eq!(
            http.external.map(|e| e.disposition),
            Some(Disposition::Drop)
        );
        let v6 = plan(&state, &node3, IpFamily::V6, &opts());
        let http6 = v6
            .ports
            .values()
            .find(|x| x.name.port == "http")
            .expect("http v6");
        assert_eq!(http6.cluster_ip.to_string(), "fd00:96::5");
        assert_eq!(keys(&http6.endpoints.cluster), ["[fd00:244:2::9]:8080"]);
        // No IPv6 detector configured: nobody is masqueraded for the ClusterIP, pods are not
        // short-circuited.
        assert_eq!(http6.cluster_ip_masquerade, ClusterIpMasquerade::Never);
        assert!(!http6.external.expect("external").pods_short_circuit);
        // The IPv4-only Service has no IPv6 plan; the UDP port has no IPv6 endpoints.
        assert!(v6.ports.values().all(|x| x.name.service.name == "web"));
        let dns6 = v6
            .ports
            .values()
            .find(|x| x.name.port == "dns")
            .expect("dns v6");
        assert_eq!(dns6.internal, Disposition::Reject);
    }

    #[test]
    fn changed_services_compares_snapshots() {
        let before = netd_testkit::state(CLUSTER);
        let after_yaml = CLUSTER
            .replace(
                "10.244.2.9], nodeName: node-2}\n- {addresses: [10.244.1.10]",
                "10.244.2.19], nodeName: node-2}\n- {addresses: [10.244.1.10]",
            )
            .replace("name: empty, namespace: ns", "name: empty2, namespace: ns");
        assert_ne!(after_yaml, CLUSTER);
        let after = netd_testkit::state(&after_yaml);
        let node = NodeName::new("node-1");
        let p0 = plan(&before, &node, IpFamily::V4, &opts());
        let p1 = plan(&after, &node, IpFamily::V4, &opts());
        let changed: Vec<String> = p1
            .changed_services(&p0)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(changed, ["ns/empty", "ns/empty2", "ns/web"]);
        assert!(p1.changed_services(&p1).is_empty());
    }

    #[test]
    fn itp_local_without_local_endpoints_drops() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns}
spec: {internalTrafficPolicy: Local, clusterIP: 10.96.0.8, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: s-a, namespace: ns, labels: {kubernetes.io/service-name: s}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-2}
"#;
        let state = netd_testkit::state(yaml);
        let on = |n: &str| {
            plan(
                &state,
                &NodeName::new(n),
                IpFamily::V4,
                &ProxyOptions {
                    masquerade_all: true,
                    ..opts()
                },
            )
        };
        let p1 = on("node-1");
        let s1 = p1.ports.values().next().expect("port");
        assert_eq!(s1.internal, Disposition::Drop);
        assert!(!s1.uses_cluster_endpoints() && !s1.uses_local_endpoints());
        let p2 = on("node-2");
        let s2 = p2.ports.values().next().expect("port");
        assert_eq!(s2.internal, Disposition::Local);
        assert_eq!(s2.cluster_ip_masquerade, ClusterIpMasquerade::All);
        assert!(s2.uses_local_endpoints() && !s2.uses_cluster_endpoints());
    }
}
