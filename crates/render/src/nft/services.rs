//! The nftables service back end: a [`ServicePlan`] rendered into kube-proxy's nftables
//! layout (see `README.md` next to this file), in one [`Table`] per family.
//!
//! Dispatch is by verdict maps (`service-ips`, `service-nodeports`, `no-endpoint-services`,
//! `no-endpoint-nodeports`, `firewall-ips`), so a packet costs one hashed lookup whatever the
//! number of Services. A *plain* Service port (ClusterIP only, no session affinity) has no
//! chains at all: its frontend is an element of `plain-services`, and its endpoints are
//! ranges of 65,536 random shares in one of [`SHARD_COUNT`] interval data maps
//! (`endpoints-<i>`, chosen by the ClusterIP's low bits through the constant `shards` vmap),
//! so adding, changing or removing it changes elements only and the kernel never
//! re-validates the table. Other ports keep per-Service chains choosing their endpoint
//! through a named map of their own (`numgen random mod N vmap @<chain>/endpoints`). The
//! renderer decides nothing: every choice was made in the plan.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use netd_model::view::TrafficPolicy;
use netd_model::{Protocol, ServicePortName};
use netd_proxy::{
    ClusterIpMasquerade, Disposition, IpFamily, LocalDetector, NodePortIps, PlannedEndpoint,
    ServicePlan, ServicePortPlan,
};

use super::ast::{
    AddrType, BaseChain, Chain, ChainType, CtState, CtStatus, DataType, Field, Hook, IfName,
    KeyType, MapRef, MapValue, Match, Priority, RejectWith, Rule, SHARES, Set, SetFlag,
    StandardPriority, Statement, Table, Value, Verdict,
};
use crate::chains::hash;
use crate::services::RenderOptions;

/// nat: the entry point of service traffic (jumped to from `nat-prerouting`, `nat-output`).
pub const SERVICES: &str = "services";
/// Verdict map: ClusterIP, external IP and load-balancer IP (`addr . proto . port`) to the
/// chain that handles it.
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map: nodePort (`proto . port`) to the Service's external chain.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Set: the addresses nodePorts answer on, when `--nodeport-addresses` narrows them.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// Set: every ClusterIP in the plan.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Verdict map: Service frontends without usable endpoints to `goto reject-chain` or `drop`.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Verdict map: nodePorts without usable endpoints to `goto reject-chain` or `drop`.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Verdict map: load-balancer frontends with source ranges to their firewall chain.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// filter: looks frontends up in [`NO_ENDPOINT_SERVICES`].
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// filter: looks nodePorts up in [`NO_ENDPOINT_NODEPORTS`].
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
/// filter: rejects what reaches a ClusterIP on a port that is not one of its Service's.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// filter: looks load-balancer frontends up in [`FIREWALL_IPS`].
pub const FIREWALL_CHECK: &str = "firewall-check";
/// filter: `reject` (the target of the no-endpoint maps).
pub const REJECT_CHAIN: &str = "reject-chain";
/// nat: sets the masquerade mark.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// nat: masquerades marked packets (jumped to from `nat-postrouting`).
pub const MASQUERADING: &str = "masquerading";
/// Set: the frontends (`addr . proto . port`) of plain Service ports, which have no chains.
pub const PLAIN_SERVICES: &str = "plain-services";
/// Verdict map: the low bits of a plain frontend's address to its `lb-<i>` chain (constant).
pub const SHARDS: &str = "shards";
/// Set: `endpoint . endpoint` pairs of plain Services' endpoints, masqueraded when a Pod
/// reaches itself through its Service (hairpin).
pub const HAIRPIN: &str = "hairpin";
/// How many `lb-<i>` chains and `endpoints-<i>` maps share the plain Services: the kernel's
/// interval maps cost a commit time linear in their size, so each stays small.
pub const SHARD_COUNT: u8 = 64;
/// The address bits that choose a shard (`SHARD_COUNT` is `1 << SHARD_BITS`).
const SHARD_BITS: u8 = 6;

/// Renders a service plan into kube-proxy's nftables layout: the whole `kube-netd` table of
/// the plan's family, as far as Services go (NetworkPolicy adds its own chains and sets to
/// the same table).
///
/// Options the iptables back end has and nftables does not need: `drop_invalid` (kube-proxy's
/// nftables mode has no INVALID-drop rule) and `masquerade_random_fully` (masquerading is
/// always `fully-random`, which every kernel with nftables NAT supports). Localhost nodePorts
/// are not supported, as in kube-proxy's nftables mode: nodePorts never answer on loopback
/// addresses. Per-endpoint comments are left out above `large_cluster_endpoints`.
pub fn render_services_nft(plan: &ServicePlan, options: &RenderOptions) -> Table {
    let total = endpoint_count(plan.ports.values());
    let mut r = Renderer::new(plan, endpoint_comments(total, options));
    r.top_level();
    for port in plan.ports.values() {
        r.service_port(port);
    }
    r.table
}

/// What [`render_services_nft`] renders whatever the ports are: the base chains, the sets
/// and maps the ports share (empty), the shard chains, and the chains they jump to. It
/// depends on the plan's settings and on its first port's masquerade mode only.
pub fn render_top_level_nft(plan: &ServicePlan) -> Table {
    let mut r = Renderer::new(plan, false);
    r.top_level();
    r.table
}

/// What [`render_services_nft`] adds to [`render_top_level_nft`] for one port of `plan` (or
/// of a plan with the same settings): its chains and its own sets, and its elements of the
/// shared sets and maps, which appear here under their names with no definition.
/// `endpoint_comments` is whether the whole plan's endpoints are few enough for comments
/// ([`endpoint_comments`]).
pub fn render_port_nft(
    plan: &ServicePlan,
    port: &ServicePortPlan,
    endpoint_comments: bool,
) -> Table {
    let mut r = Renderer::new(plan, endpoint_comments);
    r.service_port(port);
    r.table
}

/// The number of endpoints [`endpoint_comments`] (and the iptables back end's
/// [`RenderOptions::endpoint_comments`]) counts in `ports`.
pub fn endpoint_count<'a>(ports: impl IntoIterator<Item = &'a Arc<ServicePortPlan>>) -> usize {
    ports
        .into_iter()
        .map(|p| p.endpoints.all_reachable.len())
        .sum()
}

/// Whether endpoints carry comments: only up to `large_cluster_endpoints` of them in all.
pub fn endpoint_comments(endpoints: usize, options: &RenderOptions) -> bool {
    endpoints <= options.large_cluster_endpoints
}

/// The names of one Service port's chains: `service-`, `local-`, `external-` and `firewall-`
/// followed by kube-proxy's `hashAndTruncate("ns/name/proto/port")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    /// Load-balances over the cluster endpoints.
    pub cluster: String,
    /// Load-balances over this node's endpoints.
    pub local: String,
    /// Entry for nodePort, external-IP and load-balancer traffic.
    pub external: String,
    /// Load-balancer source ranges (a filter chain).
    pub firewall: String,
}

impl PortChains {
    /// The chains of `port`.
    pub fn of(port: &ServicePortName) -> Self {
        let base = hash_and_truncate(&port_base(port));
        Self {
            cluster: format!("service-{base}"),
            local: format!("local-{base}"),
            external: format!("external-{base}"),
            firewall: format!("firewall-{base}"),
        }
    }
}

/// The `endpoint-…` chain of one endpoint of `port`.
pub fn endpoint_chain(port: &ServicePortName, endpoint: &SocketAddr) -> String {
    format!(
        "endpoint-{}",
        hash_and_truncate(&endpoint_base(port, endpoint))
    )
}

/// The `affinity-…` set of one endpoint of `port` (session affinity: the clients recently
/// sent to it).
pub fn affinity_set(port: &ServicePortName, endpoint: &SocketAddr) -> String {
    format!(
        "affinity-{}",
        hash_and_truncate(&endpoint_base(port, endpoint))
    )
}

/// The `lb-<i>` chain of shard `i`: DNATs plain frontends to an endpoint of `endpoints-<i>`.
pub fn shard_chain(shard: u8) -> String {
    format!("lb-{shard}")
}

/// The `endpoints-<i>` interval map of shard `i`: `addr . proto . port . share range` to
/// the endpoint the shares go to.
pub fn shard_map(shard: u8) -> String {
    format!("endpoints-{shard}")
}

/// The shard of a plain frontend: its address's low [`SHARD_BITS`] bits.
pub fn shard_of(ip: IpAddr) -> u8 {
    let last = match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    last & (SHARD_COUNT - 1)
}

/// Whether `port` is rendered without chains: a ClusterIP that forwards, with no external
/// entry and no session affinity (which needs per-endpoint sets and rules).
pub fn is_plain(port: &ServicePortPlan) -> bool {
    port.internal.forwards() && port.external.is_none() && port.session_affinity.is_none()
}

/// Splits the shares among `count` endpoints: contiguous ranges covering them all, sizes
/// differing by at most one.
pub fn share_ranges(count: usize) -> Vec<(u16, u16)> {
    let total = u64::from(SHARES);
    let count = u64::try_from(count.max(1)).unwrap_or(u64::MAX).min(total);
    (0..count)
        .map(|i| {
            let first = i * total / count;
            let last = (i + 1) * total / count - 1;
            // Both are below SHARES = 65,536.
            (
                u16::try_from(first).unwrap_or(u16::MAX),
                u16::try_from(last).unwrap_or(u16::MAX),
            )
        })
        .collect()
}

/// The named map a load-balancing chain chooses its endpoint in: the chain's name with
/// `/endpoints` appended (a port name cannot contain `/`, so it never clashes).
pub fn endpoints_map(chain: &str) -> String {
    format!("{chain}/endpoints")
}

/// kube-proxy's `hashAndTruncate`: the first 8 characters of the name's hash, `-`, the name;
/// cut to 240 characters (ending in `...`) so that a 16-character prefix keeps it within
/// nftables's 256.
pub fn hash_and_truncate(name: &str) -> String {
    const MAX: usize = 240;
    let mut out = hash(name);
    out.truncate(8);
    out.push('-');
    out.push_str(name);
    if out.len() > MAX {
        // Every character is ASCII (namespace, names, protocol, digits, `.`, `/`, `_`).
        out.truncate(MAX - 3);
        out.push_str("...");
    }
    out
}

fn port_base(port: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        port.service.namespace,
        port.service.name,
        port.protocol.as_lower_str(),
        port.port
    )
}

fn endpoint_base(port: &ServicePortName, endpoint: &SocketAddr) -> String {
    let ip = endpoint.ip().to_string().replace(':', ".");
    format!("{}__{ip}/{}", port_base(port), endpoint.port())
}

struct Renderer<'a> {
    table: Table,
    plan: &'a ServicePlan,
    mark: u32,
    endpoint_comments: bool,
}

fn jump(chain: &str) -> Verdict {
    Verdict::Jump(chain.to_owned())
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.to_owned())
}

/// `addr . proto . port`, the key of the service maps.
fn frontend_key(ip: IpAddr, protocol: Protocol, port: u16) -> Vec<Value> {
    vec![Value::Ip(ip), Value::Proto(protocol), Value::Port(port)]
}

/// `ip daddr . meta l4proto . th dport`, looked up in the service maps.
fn frontend_fields() -> Vec<Field> {
    vec![Field::Daddr, Field::L4Proto, Field::ThDport]
}

/// The loopback addresses nodePorts never answer on.
fn loopback(family: IpFamily) -> Value {
    match family {
        IpFamily::V4 => Value::Net(family.loopback()),
        IpFamily::V6 => Value::Ip(family.loopback().addr()),
    }
}

impl<'a> Renderer<'a> {
    fn new(plan: &'a ServicePlan, endpoint_comments: bool) -> Self {
        Self {
            table: Table::new(plan.family),
            plan,
            mark: plan.masquerade_mark,
            endpoint_comments,
        }
    }

    fn family(&self) -> IpFamily {
        self.plan.family
    }

    fn chain(&mut self, name: &str) -> &mut Chain {
        self.table
            .chains
            .entry(name.to_owned())
            .or_insert_with(|| Chain::regular(name))
    }

    fn map_mut(&mut self, name: &str) -> &mut Set {
        self.table
            .sets
            .entry(name.to_owned())
            .or_insert_with(|| Set::new(name, Vec::new()))
    }

    fn top_level(&mut self) {
        let family = self.family();
        let addr = KeyType::addr(family);
        let new = || Rule::new().matching(Match::eq(Field::CtState, Value::CtState(CtState::New)));
        let filter = |hook, offset| BaseChain {
            kind: ChainType::Filter,
            hook,
            priority: Priority::plus(StandardPriority::Dstnat, offset),
        };
        let nat = |hook, priority| BaseChain {
            kind: ChainType::Nat,
            hook,
            priority: Priority::at(priority),
        };
        let bases: [(&str, BaseChain, Vec<Rule>); 8] = [
            (
                "filter-prerouting",
                filter(Hook::Prerouting, -10),
                vec![new().verdict(jump(FIREWALL_CHECK))],
            ),
            (
                "filter-input",
                filter(Hook::Input, -10),
                vec![
                    new().verdict(jump(NODEPORT_ENDPOINTS_CHECK)),
                    new().verdict(jump(SERVICE_ENDPOINTS_CHECK)),
                ],
            ),
            (
                "filter-forward",
                filter(Hook::Forward, -10),
                vec![
                    new().verdict(jump(SERVICE_ENDPOINTS_CHECK)),
                    new().verdict(jump(CLUSTER_IPS_CHECK)),
                ],
            ),
            (
                "filter-output",
                filter(Hook::Output, -10),
                vec![new().verdict(jump(FIREWALL_CHECK))],
            ),
            (
                "filter-output-post-dnat",
                filter(Hook::Output, 10),
                vec![
                    new().verdict(jump(SERVICE_ENDPOINTS_CHECK)),
                    new().verdict(jump(CLUSTER_IPS_CHECK)),
                ],
            ),
            (
                "nat-prerouting",
                nat(Hook::Prerouting, StandardPriority::Dstnat),
                vec![Rule::new().verdict(jump(SERVICES))],
            ),
            (
                "nat-output",
                nat(Hook::Output, StandardPriority::Dstnat),
                vec![Rule::new().verdict(jump(SERVICES))],
            ),
            (
                "nat-postrouting",
                nat(Hook::Postrouting, StandardPriority::Srcnat),
                vec![
                    // Hairpin for plain Services: a DNATed Pod reaching itself.
                    Rule::new()
                        .matching(Match::eq(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)))
                        .matching(Match::in_set(vec![Field::Saddr, Field::Daddr], HAIRPIN))
                        .verdict(jump(MARK_FOR_MASQUERADE)),
                    Rule::new().verdict(jump(MASQUERADING)),
                ],
            ),
        ];
        for (name, base, rules) in bases {
            let mut chain = Chain::base(name, base);
            chain.rules = rules;
            self.table.add_chain(chain);
        }

        // Sets and maps.
        let frontend = vec![addr, KeyType::InetProto, KeyType::InetService];
        let port_key = vec![KeyType::InetProto, KeyType::InetService];
        let maps = [
            Set::map(SERVICE_IPS, frontend.clone(), DataType::Verdict)
                .with_comment("ClusterIP, ExternalIP and LoadBalancer IP traffic"),
            Set::map(SERVICE_NODEPORTS, port_key.clone(), DataType::Verdict)
                .with_comment("NodePort traffic"),
            Set::map(NO_ENDPOINT_SERVICES, frontend.clone(), DataType::Verdict)
                .with_comment("vmap to drop or reject packets to services with no endpoints"),
            Set::map(NO_ENDPOINT_NODEPORTS, port_key, DataType::Verdict).with_comment(
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            Set::map(FIREWALL_IPS, frontend.clone(), DataType::Verdict)
                .with_comment("destinations that are subject to LoadBalancerSourceRanges"),
            Set::new(CLUSTER_IPS, vec![addr]).with_comment("Active ClusterIPs"),
            Set::new(PLAIN_SERVICES, frontend.clone())
                .with_comment("ClusterIP traffic of Services without chains"),
            Set::new(HAIRPIN, vec![addr, addr])
                .with_comment("endpoints of plain Services reaching themselves"),
        ];
        for map in maps {
            self.table.add_set(map);
        }
        let mut shards = Set::map(SHARDS, vec![addr], DataType::Verdict)
            .with_flag(SetFlag::Constant)
            .with_comment("plain Service frontends by the low bits of their address");
        for shard in 0..SHARD_COUNT {
            shards.insert_mapping(
                vec![Value::Ip(low_bits_value(family, shard))],
                MapValue::Verdict(goto(&shard_chain(shard))),
                None,
            );
            let map_key = vec![
                addr,
                KeyType::InetProto,
                KeyType::InetService,
                KeyType::NumgenShare,
            ];
            self.table.add_set(
                Set::map(shard_map(shard), map_key, DataType::AddrPort(addr))
                    .with_flag(SetFlag::Interval),
            );
            let mut lb = Chain::regular(shard_chain(shard));
            lb.push(
                Rule::new()
                    .matching(Match::in_anon(
                        Field::L4Proto,
                        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                            .into_iter()
                            .map(Value::Proto)
                            .collect(),
                    ))
                    .then(Statement::DnatShare {
                        map: shard_map(shard),
                    }),
            );
            self.table.add_chain(lb);
        }
        self.table.add_set(shards);

        // Where nodePorts answer: every local address but loopback, or the listed ones.
        let nodeport_dest: Vec<Match> = match &self.plan.nodeport_addresses {
            NodePortIps::Local => vec![Match::ne(Field::Daddr, loopback(family))],
            NodePortIps::Only(ips) => {
                let mut set = Set::new(NODEPORT_IPS, vec![addr])
                    .with_comment("IPs that accept NodePort traffic");
                for ip in ips.iter().filter(|ip| !ip.is_loopback()) {
                    set.insert(vec![Value::Ip(*ip)], None);
                }
                self.table.add_set(set);
                vec![Match::in_set(vec![Field::Daddr], NODEPORT_IPS)]
            }
        };
        let port_fields = vec![Field::L4Proto, Field::ThDport];

        let mut services = Chain::regular(SERVICES);
        services.push(Rule::new().then(Statement::Vmap {
            fields: frontend_fields(),
            map: MapRef::Named(SERVICE_IPS.to_owned()),
        }));
        let plain = || Rule::new().matching(Match::in_set(frontend_fields(), PLAIN_SERVICES));
        // Every port has the same ClusterIP masquerade mode (kube-proxy's flags decide it),
        // so one rule serves every plain port.
        let masquerade = self
            .plan
            .ports
            .values()
            .next()
            .map(|p| p.cluster_ip_masquerade);
        let masq = match (masquerade, &self.plan.local_detector) {
            (Some(ClusterIpMasquerade::All), _) => Some(plain()),
            (Some(ClusterIpMasquerade::OffCluster), Some(detector)) => {
                Some(plain().matching(local_traffic(detector).negated()))
            }
            _ => None,
        };
        if let Some(rule) = masq {
            services.push(rule.verdict(jump(MARK_FOR_MASQUERADE)));
        }
        services.push(plain().then(Statement::Vmap {
            fields: vec![Field::DaddrLowBits(SHARD_BITS)],
            map: MapRef::Named(SHARDS.to_owned()),
        }));
        let mut nodeports = Rule::new();
        if self.plan.nodeport_addresses == NodePortIps::Local {
            nodeports = nodeports.matching(Match::eq(
                Field::FibDaddrType,
                Value::AddrType(AddrType::Local),
            ));
        }
        nodeports.matches.extend(nodeport_dest.iter().cloned());
        services.push(nodeports.then(Statement::Vmap {
            fields: port_fields.clone(),
            map: MapRef::Named(SERVICE_NODEPORTS.to_owned()),
        }));
        self.table.add_chain(services);

        let mut service_check = Chain::regular(SERVICE_ENDPOINTS_CHECK);
        service_check.push(Rule::new().then(Statement::Vmap {
            fields: frontend_fields(),
            map: MapRef::Named(NO_ENDPOINT_SERVICES.to_owned()),
        }));
        self.table.add_chain(service_check);

        let mut nodeport_check = Chain::regular(NODEPORT_ENDPOINTS_CHECK);
        let mut rule = Rule::new();
        rule.matches = nodeport_dest;
        nodeport_check.push(rule.then(Statement::Vmap {
            fields: port_fields,
            map: MapRef::Named(NO_ENDPOINT_NODEPORTS.to_owned()),
        }));
        self.table.add_chain(nodeport_check);

        let mut firewall_check = Chain::regular(FIREWALL_CHECK);
        firewall_check.push(Rule::new().then(Statement::Vmap {
            fields: frontend_fields(),
            map: MapRef::Named(FIREWALL_IPS.to_owned()),
        }));
        self.table.add_chain(firewall_check);

        let mut cluster_ips_check = Chain::regular(CLUSTER_IPS_CHECK);
        cluster_ips_check.push(
            Rule::new()
                .matching(Match::in_set(vec![Field::Daddr], CLUSTER_IPS))
                .then(Statement::Reject(RejectWith::Default))
                .comment("Reject traffic to invalid ports of ClusterIPs"),
        );
        self.table.add_chain(cluster_ips_check);

        let mut reject = Chain::regular(REJECT_CHAIN);
        reject.push(Rule::new().then(Statement::Reject(RejectWith::Default)));
        self.table.add_chain(reject);

        let mark = self.mark;
        let mut mark_masq = Chain::regular(MARK_FOR_MASQUERADE);
        mark_masq.push(Rule::new().then(Statement::MarkOr(mark)));
        self.table.add_chain(mark_masq);

        let mut masquerading = Chain::regular(MASQUERADING);
        masquerading.push(
            Rule::new()
                .matching(Match::eq(Field::MarkMasked(mark), Value::Int(0)))
                .verdict(Verdict::Return),
        );
        masquerading.push(Rule::new().then(Statement::MarkXor(mark)));
        masquerading.push(Rule::new().then(Statement::Masquerade { fully_random: true }));
        self.table.add_chain(masquerading);
    }

    fn add_element(&mut self, map: &str, key: Vec<Value>, verdict: Verdict, comment: &str) {
        self.map_mut(map)
            .insert_mapping(key, MapValue::Verdict(verdict), Some(comment.to_owned()));
    }

    fn service_port(&mut self, port: &ServicePortPlan) {
        let name = port.name.to_string();
        let chains = PortChains::of(&port.name);
        let proto = port.protocol();
        let policy_chain = |d: Disposition| match d {
            Disposition::Local => chains.local.as_str(),
            _ => chains.cluster.as_str(),
        };
        let no_endpoints = |d: Disposition| match d {
            Disposition::Reject => goto(REJECT_CHAIN),
            _ => Verdict::Drop,
        };
        let external = port.external;
        let ext_forwards = external.is_some_and(|e| e.disposition.forwards());

        self.map_mut(CLUSTER_IPS)
            .insert(vec![Value::Ip(port.cluster_ip)], None);
        if is_plain(port) {
            self.plain_port(port, &name);
            return;
        }

        // ClusterIP.
        let key = frontend_key(port.cluster_ip, proto, port.port);
        if port.internal.forwards() {
            self.add_element(SERVICE_IPS, key, goto(policy_chain(port.internal)), &name);
        } else {
            self.add_element(
                NO_ENDPOINT_SERVICES,
                key,
                no_endpoints(port.internal),
                &name,
            );
        }
        // External IPs and load-balancer IPs.
        let lb_ips = port.load_balancer_ips.iter().copied();
        for ip in port.external_ips.iter().copied().chain(lb_ips) {
            let key = frontend_key(ip, proto, port.port);
            if port.has_endpoints() {
                self.add_element(SERVICE_IPS, key.clone(), goto(&chains.external), &name);
            }
            if let Some(e) = external.filter(|_| !ext_forwards) {
                self.add_element(
                    NO_ENDPOINT_SERVICES,
                    key,
                    no_endpoints(e.disposition),
                    &name,
                );
            }
        }
        if port.uses_source_ranges() {
            for ip in &port.load_balancer_ips {
                let key = frontend_key(*ip, proto, port.port);
                self.add_element(FIREWALL_IPS, key, goto(&chains.firewall), &name);
            }
            self.firewall_chain(port, &chains.firewall);
        }
        // NodePort (not subject to source ranges, as upstream).
        if let Some(node_port) = port.node_port {
            let key = vec![Value::Proto(proto), Value::Port(node_port)];
            if port.has_endpoints() {
                self.add_element(
                    SERVICE_NODEPORTS,
                    key.clone(),
                    goto(&chains.external),
                    &name,
                );
            }
            if let Some(e) = external.filter(|_| !ext_forwards) {
                self.add_element(
                    NO_ENDPOINT_NODEPORTS,
                    key,
                    no_endpoints(e.disposition),
                    &name,
                );
            }
        }

        // The ClusterIP's masquerade rule heads its policy chain.
        if port.internal.forwards() {
            let chain = policy_chain(port.internal);
            let base = Rule::new()
                .matching(Match::eq(Field::Daddr, Value::Ip(port.cluster_ip)))
                .matching(Match::eq(Field::dport(proto), Value::Port(port.port)));
            let masq = match (port.cluster_ip_masquerade, &self.plan.local_detector) {
                (ClusterIpMasquerade::All, _) => Some(base),
                (ClusterIpMasquerade::OffCluster, Some(detector)) => {
                    Some(base.matching(local_traffic(detector).negated()))
                }
                (ClusterIpMasquerade::OffCluster | ClusterIpMasquerade::Never, _) => None,
            };
            if let Some(rule) = masq {
                let rule = rule.verdict(jump(MARK_FOR_MASQUERADE));
                self.chain(chain).push(rule);
            }
        }
        if let Some(e) = external.filter(|_| port.uses_external_entry()) {
            let ext = self.chain(&chains.external);
            if e.masquerade_all {
                ext.push(Rule::new().verdict(jump(MARK_FOR_MASQUERADE)));
            }
            if let (true, Some(detector)) = (e.pods_short_circuit, &self.plan.local_detector) {
                let local = local_traffic(detector);
                let ext = self.chain(&chains.external);
                ext.push(
                    Rule::new()
                        .matching(local)
                        .verdict(goto(&chains.cluster))
                        .comment("short-circuit pod traffic"),
                );
            }
            let ext = self.chain(&chains.external);
            if e.host_short_circuit {
                let local = || {
                    Rule::new().matching(Match::eq(
                        Field::FibSaddrType,
                        Value::AddrType(AddrType::Local),
                    ))
                };
                ext.push(
                    local()
                        .verdict(jump(MARK_FOR_MASQUERADE))
                        .comment("masquerade local traffic"),
                );
                ext.push(
                    local()
                        .verdict(goto(&chains.cluster))
                        .comment("short-circuit local traffic"),
                );
            }
            if e.disposition.forwards() {
                let target = if e.policy == TrafficPolicy::Local {
                    &chains.local
                } else {
                    &chains.cluster
                };
                ext.push(Rule::new().verdict(goto(target)));
            }
        }

        if port.uses_cluster_endpoints() {
            self.load_balance(&chains.cluster, port, &name, &port.endpoints.cluster);
        }
        if port.uses_local_endpoints() {
            self.load_balance(&chains.local, port, &name, &port.endpoints.local);
        }
        for ep in &port.endpoints.all_reachable {
            self.endpoint(port, ep);
        }
    }

    /// A plain port: its frontend in `plain-services`, its endpoints' share ranges in its
    /// shard's map, and their hairpin pairs.
    fn plain_port(&mut self, port: &ServicePortPlan, name: &str) {
        let proto = port.protocol();
        let key = frontend_key(port.cluster_ip, proto, port.port);
        self.map_mut(PLAIN_SERVICES)
            .insert(key.clone(), Some(name.to_owned()));
        let endpoints = match port.internal {
            Disposition::Local => &port.endpoints.local,
            _ => &port.endpoints.cluster,
        };
        let map = shard_map(shard_of(port.cluster_ip));
        for (ep, (first, last)) in endpoints.iter().zip(share_ranges(endpoints.len())) {
            let mut element = key.clone();
            element.push(Value::ShareRange(first, last));
            let comment = self
                .endpoint_comments
                .then(|| format!("{name} -> {}", ep.key()));
            self.map_mut(&map)
                .insert_mapping(element, MapValue::Endpoint(ep.addr), comment);
            self.map_mut(HAIRPIN)
                .insert(vec![Value::Ip(ep.ip()), Value::Ip(ep.ip())], None);
        }
    }

    /// `ip saddr != { ranges… } drop`: load-balancer traffic from outside the source ranges
    /// (the LB IPs themselves count as allowed when a range admits this node, for traffic
    /// looped back by the load balancer with its own IP as the source).
    fn firewall_chain(&mut self, port: &ServicePortPlan, chain: &str) {
        let mut allowed: BTreeSet<Value> = port
            .load_balancer_source_ranges
            .iter()
            .map(|n: &IpNet| Value::Net(*n))
            .collect();
        if port.load_balancer_admits_node {
            allowed.extend(port.load_balancer_ips.iter().map(|ip| Value::Ip(*ip)));
        }
        let rule = Rule::new()
            .matching(Match::in_anon(Field::Saddr, allowed.into_iter().collect()).negated())
            .verdict(Verdict::Drop);
        self.chain(chain).push(rule);
    }

    /// Affinity checks, then one random choice among `endpoints` through the chain's own
    /// endpoint map.
    fn load_balance(
        &mut self,
        chain: &str,
        port: &ServicePortPlan,
        name: &str,
        endpoints: &[PlannedEndpoint],
    ) {
        let family = self.family();
        let addr = KeyType::addr(family);
        let mut rules = Vec::new();
        if let Some(seconds) = port.session_affinity {
            for ep in endpoints {
                let set = affinity_set(&port.name, &ep.addr);
                self.table.add_set(
                    Set::new(set.clone(), vec![addr])
                        .with_flag(SetFlag::Dynamic)
                        .with_flag(SetFlag::Timeout)
                        .with_timeout(seconds),
                );
                rules.push(
                    Rule::new()
                        .matching(Match::in_set(vec![Field::Saddr], set))
                        .verdict(goto(&endpoint_chain(&port.name, &ep.addr))),
                );
            }
        }
        let map_name = endpoints_map(chain);
        let mut map = Set::map(map_name.clone(), vec![KeyType::Numgen], DataType::Verdict);
        for (i, ep) in endpoints.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let comment = self
                .endpoint_comments
                .then(|| format!("{name} -> {}", ep.key()));
            map.insert_mapping(
                vec![Value::Int(index)],
                MapValue::Verdict(goto(&endpoint_chain(&port.name, &ep.addr))),
                comment,
            );
        }
        self.table.add_set(map);
        let modulus = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        rules.push(Rule::new().then(Statement::NumgenVmap {
            modulus,
            map: MapRef::Named(map_name),
        }));
        self.chain(chain).rules.extend(rules);
    }

    fn endpoint(&mut self, port: &ServicePortPlan, ep: &PlannedEndpoint) {
        let chain = endpoint_chain(&port.name, &ep.addr);
        let mut rules = vec![
            // Hairpin: a pod reaching itself through the Service must be SNATed, or it
            // would answer itself directly and the reply would not be un-DNATed.
            Rule::new()
                .matching(Match::eq(Field::Saddr, Value::Ip(ep.ip())))
                .verdict(jump(MARK_FOR_MASQUERADE)),
        ];
        if port.session_affinity.is_some() {
            rules.push(Rule::new().then(Statement::UpdateSet {
                set: affinity_set(&port.name, &ep.addr),
                fields: vec![Field::Saddr],
            }));
        }
        rules.push(
            Rule::new()
                .matching(Match::eq(Field::L4Proto, Value::Proto(port.protocol())))
                .then(Statement::Dnat {
                    addr: ep.ip(),
                    port: Some(ep.port()),
                }),
        );
        self.chain(&chain).rules.extend(rules);
    }
}

/// Shard `shard` as the address `ip daddr & <low bits>` yields for it.
fn low_bits_value(family: IpFamily, shard: u8) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::new(0, 0, 0, shard)),
        IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(shard))),
    }
}

/// The match of the local-traffic detector: `saddr RANGE`, `iifname "BRIDGE"` or
/// `iifname "PREFIX*"`.
fn local_traffic(detector: &LocalDetector) -> Match {
    match detector {
        LocalDetector::Cidr(cidr) => Match::eq(Field::Saddr, Value::Net(*cidr)),
        LocalDetector::Interface(name) => {
            Match::eq(Field::Iifname, Value::Ifname(IfName::exact(name)))
        }
        LocalDetector::InterfacePrefix(prefix) => {
            Match::eq(Field::Iifname, Value::Ifname(IfName::prefix(prefix)))
        }
    }
}

#[cfg(test)]
mod tests {
    use netd_model::ServiceRef;

    use super::*;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            service: ServiceRef::new(ns, name),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn names_match_kube_proxy() {
        // kube-proxy.md B.1, from upstream's nftables test expectations.
        let port = spn("ns1", "svc1", "p80");
        assert_eq!(
            PortChains::of(&port).cluster,
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        let ep: SocketAddr = "10.180.0.1:80".parse().expect("addr");
        assert_eq!(
            endpoint_chain(&port, &ep),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let v6: SocketAddr = "[fd00:10::1]:80".parse().expect("addr");
        assert!(endpoint_chain(&port, &v6).ends_with("-ns1/svc1/tcp/p80__fd00.10..1/80"));
    }

    #[test]
    fn share_ranges_cover_every_share_evenly() {
        for count in [1, 2, 3, 10, 7_000] {
            let ranges = share_ranges(count);
            assert_eq!(ranges.len(), count);
            assert_eq!(ranges.first().map(|r| r.0), Some(0));
            assert_eq!(ranges.last().map(|r| r.1), Some(u16::MAX));
            for pair in ranges.windows(2) {
                assert_eq!(u32::from(pair[0].1) + 1, u32::from(pair[1].0), "{count}");
            }
            let sizes: BTreeSet<u32> = ranges
                .iter()
                .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
                .collect();
            let (min, max) = (sizes.first().copied(), sizes.last().copied());
            assert!(max.zip(min).is_some_and(|(hi, lo)| hi - lo <= 1), "{count}");
        }
    }

    #[test]
    fn long_names_are_truncated_to_fit_a_prefix() {
        let long = "n".repeat(300);
        let out = hash_and_truncate(&long);
        assert_eq!(out.len(), 240);
        assert!(out.ends_with("..."));
        assert_ne!(
            hash_and_truncate(&format!("{long}a")),
            hash_and_truncate(&format!("{long}b"))
        );
    }
}
