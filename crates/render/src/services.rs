//! The iptables service back end: a [`ServicePlan`] rendered into kube-proxy's exact layout.
//!
//! Chains (reference A.1–A.6): nat `KUBE-SERVICES` → `KUBE-SVC-`/`KUBE-SVL-` (ClusterIP),
//! `KUBE-EXT-` (external IPs, nodePorts via `KUBE-NODEPORTS`, load-balancer IPs, through
//! `KUBE-FW-` when source ranges are set) → `KUBE-SEP-` (hairpin mark + DNAT);
//! `KUBE-MARK-MASQ` / `KUBE-POSTROUTING` for SNAT; filter `KUBE-SERVICES` /
//! `KUBE-EXTERNAL-SERVICES` (reject or drop when there are no usable endpoints),
//! `KUBE-NODEPORTS` (health-check ports), `KUBE-FORWARD`, `KUBE-PROXY-FIREWALL`, and
//! `KUBE-FIREWALL` (with localhost nodePorts only).
//! The renderer decides nothing: every choice was made in the plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use netd_model::view::TrafficPolicy;
use netd_model::{Protocol, ServicePortName, ServiceRef};
use netd_proxy::{
    ClusterIpMasquerade, Disposition, LocalDetector, NodePortIps, PlannedEndpoint, ServicePlan,
    ServicePortPlan,
};

use crate::chains::{
    KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES, ServiceChains, endpoint_chain,
    is_service_chain,
};
use crate::iptables::{
    ChainName, CtState, Direction, HookRule, MarkOp, Match, Probability, Recent, RestoreSelection,
    Rule, Ruleset, Shards, Table, Target,
};
use crate::nft::services::endpoint_count;

/// Rendering choices that are not part of the plan (they depend on the host, not the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Drop forwarded packets conntrack marks INVALID (kube-proxy omits the rule when
    /// `nf_conntrack_tcp_be_liberal=1`).
    pub drop_invalid: bool,
    /// `MASQUERADE --random-fully` (when the kernel and iptables support it).
    pub masquerade_random_fully: bool,
    /// Above this many endpoints in total, per-endpoint comments are left out (kube-proxy's
    /// large-cluster mode: the payload shrinks by 40% or more).
    pub large_cluster_endpoints: usize,
}

impl RenderOptions {
    /// Whether `plan`'s rules carry per-endpoint comments (not above
    /// [`large_cluster_endpoints`](Self::large_cluster_endpoints)): the one choice that
    /// makes every Service's chains depend on the others'.
    pub fn endpoint_comments(&self, plan: &ServicePlan) -> bool {
        endpoint_count(plan.ports.values()) <= self.large_cluster_endpoints
    }
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            drop_invalid: true,
            masquerade_random_fully: false,
            large_cluster_endpoints: 1000,
        }
    }
}

/// Which service chains one sync rewrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncScope {
    /// Every chain (the first sync, after a failure, periodically).
    Full,
    /// The top-level chains, the filter table, and the per-service chains of these Services
    /// (those whose Service or EndpointSlices changed); the rest are left as they are.
    Partial(BTreeSet<ServiceRef>),
}

/// The rendered service rules of one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRules {
    /// Every chain and rule of the family's service proxy (nat and filter).
    pub ruleset: Ruleset,
    /// The jumps from the built-in chains into ours, in the order kube-proxy ensures them:
    /// each is inserted at the top of its chain if absent, so in a fresh chain the last one
    /// ends up first (`FORWARD`: `KUBE-PROXY-FIREWALL`, `KUBE-FORWARD`, `KUBE-SERVICES`,
    /// `KUBE-EXTERNAL-SERVICES`).
    pub hooks: Vec<HookRule>,
    owners: Shards<Arc<ServiceRef>>,
    /// Per service port, how many rules it has in each [`Shared`] chain (in that order):
    /// where [`ServiceRules::rerender`] finds a port's rules among the others'.
    frontends: BTreeMap<ServicePortName, [u32; SHARED]>,
    /// The reachable endpoints of the plan these rules were rendered from, in all (what
    /// [`RenderOptions::endpoint_comments`] counts): kept so that
    /// [`ServiceRules::rerender`] counts only the changed ports, not every port.
    endpoints: usize,
}

/// Renders a service plan into kube-proxy's iptables layout.
pub fn render_services(plan: &ServicePlan, opts: &RenderOptions) -> ServiceRules {
    let mut r = Renderer {
        rs: Ruleset::new(plan.family),
        owners: HashMap::new(),
        names: Names::new(),
        mark: plan.masquerade_mark,
        endpoint_comments: opts.endpoint_comments(plan),
        plan,
        counts: [0; SHARED],
    };
    r.top_level(opts);
    let mut frontends = BTreeMap::new();
    for port in plan.ports.values() {
        r.service_port(port);
        frontends.insert(port.name.clone(), std::mem::take(&mut r.counts));
    }
    r.nodeports_last_rule();
    r.localhost_firewall();
    ServiceRules {
        ruleset: r.rs,
        hooks: hooks(plan),
        owners: r.owners.into_iter().collect(),
        frontends,
        endpoints: endpoint_count(plan.ports.values()),
    }
}

impl ServiceRules {
    /// Brings rules rendered from `previous` (by [`render_services`] with `opts`, or by this
    /// function) to those of `plan`, rendering again only the ports of the Services in
    /// `changed`: `plan` must differ from `previous` in those Services' ports alone. The
    /// other Services' chains are kept, and their rules in the shared top-level chains.
    /// Returns `false`, having changed nothing, when every Service's rules would change:
    /// other plan settings, or the total number of endpoints crossing
    /// [`RenderOptions::large_cluster_endpoints`].
    pub fn rerender(
        &mut self,
        previous: &ServicePlan,
        plan: &ServicePlan,
        changed: &BTreeSet<ServiceRef>,
        opts: &RenderOptions,
    ) -> bool {
        let gone = endpoint_count(previous.ports_of_services(changed).map(|(_, p)| p));
        let new = endpoint_count(plan.ports_of_services(changed).map(|(_, p)| p));
        // `None` only for rules not rendered from `previous`.
        let Some(endpoints) = (self.endpoints + new).checked_sub(gone) else {
            return false;
        };
        let comments = |endpoints| endpoints <= opts.large_cluster_endpoints;
        let endpoint_comments = comments(endpoints);
        if !same_settings(previous, plan) || comments(self.endpoints) != endpoint_comments {
            return false;
        }
        self.endpoints = endpoints;
        for (_, port) in previous.ports_of_services(changed) {
            self.remove_port(port);
        }
        let mut r = Renderer {
            rs: Ruleset::new(plan.family),
            owners: HashMap::new(),
            names: Names::new(),
            mark: plan.masquerade_mark,
            endpoint_comments,
            plan,
            counts: [0; SHARED],
        };
        for (_, port) in plan.ports_of_services(changed) {
            r.service_port(port);
            let counts = std::mem::take(&mut r.counts);
            let at = self.offsets(&port.name);
            for (slot, shared) in Shared::ALL.into_iter().enumerate() {
                let (table, chain) = r.names.shared(shared);
                let Some(rules) = r.rs.remove(table, chain.as_str()) else {
                    continue;
                };
                let chain = self.ruleset.chain_mut(table, chain);
                chain.splice(at[slot]..at[slot], rules);
            }
            self.frontends.insert(port.name.clone(), counts);
        }
        for (chain, owner) in r.owners {
            if let Some(rules) = r.rs.remove(Table::Nat, chain.as_str()) {
                self.ruleset.replace(Table::Nat, &chain, rules);
            }
            self.owners.insert(chain, owner);
        }
        true
    }

    /// Takes out one port's rules: its chains and its rules in the shared chains.
    fn remove_port(&mut self, port: &ServicePortPlan) {
        let Some(counts) = self.frontends.remove(&port.name) else {
            return;
        };
        let at = self.offsets(&port.name);
        let names = Names::new();
        for (slot, shared) in Shared::ALL.into_iter().enumerate() {
            if counts[slot] == 0 {
                continue;
            }
            let (table, chain) = names.shared(shared);
            let rules = self.ruleset.chain_mut(table, chain);
            rules.drain(at[slot]..at[slot] + counts[slot] as usize);
        }
        for chain in port_chains(port) {
            if self
                .owners
                .get(&chain)
                .is_some_and(|o| **o == port.name.service)
            {
                self.owners.remove(&chain);
                self.ruleset.remove(Table::Nat, chain.as_str());
            }
        }
    }

    /// Where the rules of the port `name` start in each shared chain: after those of the
    /// ports before it.
    fn offsets(&self, name: &ServicePortName) -> [usize; SHARED] {
        let mut at = [0; SHARED];
        for counts in self.frontends.range(..name).map(|(_, c)| c) {
            for (a, c) in at.iter_mut().zip(counts) {
                *a += *c as usize;
            }
        }
        at
    }

    /// The per-service nat chains in use and the Service each belongs to, by chain name.
    pub fn service_chains(&self) -> impl Iterator<Item = (&ChainName, &ServiceRef)> {
        let mut chains: Vec<(&ChainName, &ServiceRef)> =
            self.owners.iter().map(|(c, s)| (c, s.as_ref())).collect();
        chains.sort_unstable_by(|a, b| a.0.cmp(b.0));
        chains.into_iter()
    }

    /// [`ServiceRules::service_chains`] in no particular order: for callers that only look
    /// chains up, which at 10,000 Services should not pay for sorting 130,000 names.
    pub fn service_chains_unordered(&self) -> impl Iterator<Item = (&ChainName, &ServiceRef)> {
        self.owners.iter().map(|(c, s)| (c, s.as_ref()))
    }

    /// The Service that owns `chain`, if it is a per-service nat chain in use.
    pub fn owner(&self, chain: &str) -> Option<&ServiceRef> {
        self.owners.get(chain).map(Arc::as_ref)
    }

    /// The per-service nat chains of `services` in use, these rules being rendered from
    /// `plan`: found from those Services' ports alone, without visiting every chain.
    pub fn chains_of(&self, plan: &ServicePlan, services: &BTreeSet<ServiceRef>) -> Vec<ChainName> {
        plan.ports_of_services(services)
            .flat_map(|(name, port)| {
                port_chains(port)
                    .filter(|c| self.owners.get(c).is_some_and(|o| **o == name.service))
            })
            .collect()
    }

    /// Of the nat chains the kernel has (`existing`), those that are ours and no longer used.
    pub fn stale_chains(&self, existing: &BTreeSet<ChainName>) -> BTreeSet<ChainName> {
        existing
            .iter()
            .filter(|c| is_service_chain(c.as_str()) && !self.owners.contains_key(*c))
            .cloned()
            .collect()
    }

    /// The `iptables-restore --noflush` payload of one sync of these rules, rendered from
    /// `plan`: the filter table and the nat top-level chains always; the per-service chains
    /// all (full) or of the changed Services (partial); and the stale chains among
    /// `existing_nat_chains` flushed and deleted.
    pub fn restore_input(
        &self,
        plan: &ServicePlan,
        scope: &SyncScope,
        existing_nat_chains: &BTreeSet<ChainName>,
    ) -> String {
        self.restore_deleting(plan, scope, self.stale_chains(existing_nat_chains))
    }

    /// [`restore_input`](Self::restore_input) for a caller that knows the stale nat chains
    /// (`stale`: flushed and deleted) without listing every chain the kernel has. A partial
    /// one looks at the changed Services' chains alone ([`chains_of`](Self::chains_of)):
    /// every per-service chain of these rules has an owner.
    pub fn restore_deleting(
        &self,
        plan: &ServicePlan,
        scope: &SyncScope,
        stale: BTreeSet<ChainName>,
    ) -> String {
        let delete: BTreeSet<(Table, ChainName)> =
            stale.into_iter().map(|c| (Table::Nat, c)).collect();
        let changed_chains = match scope {
            SyncScope::Full => None,
            SyncScope::Partial(changed) => Some(self.chains_of(plan, changed)),
        };
        let include = |table: Table, chain: &ChainName| match (scope, self.owners.get(chain)) {
            (SyncScope::Full, _) | (_, None) => true,
            (SyncScope::Partial(changed), Some(owner)) => {
                table != Table::Nat || changed.contains(owner.as_ref())
            }
        };
        self.ruleset.restore_selected(&RestoreSelection {
            include: &include,
            delete: &delete,
            service_chains: changed_chains.as_deref(),
        })
    }

    /// The rules plus the hook rules in the built-in chains: what the kernel holds after the
    /// applier has run, for the [tracer](crate::trace()).
    pub fn installed(&self) -> Ruleset {
        let mut rs = self.ruleset.clone();
        for hook in &self.hooks {
            rs.prepend(hook.table, &hook.chain, hook.rule.clone());
        }
        rs
    }
}

/// Every per-service chain `port` may have (its four hashed chains and one per reachable
/// endpoint), used or not.
fn port_chains(port: &ServicePortPlan) -> impl Iterator<Item = ChainName> + '_ {
    let chains = ServiceChains::of(&port.name);
    let seps = port
        .endpoints
        .all_reachable
        .iter()
        .map(|ep| endpoint_chain(&port.name, &ep.addr));
    [
        chains.cluster,
        chains.local,
        chains.external,
        chains.firewall,
    ]
    .into_iter()
    .chain(seps)
}

/// Whether two plans agree in everything but their ports.
fn same_settings(a: &ServicePlan, b: &ServicePlan) -> bool {
    a.node == b.node
        && a.family == b.family
        && a.masquerade_mark == b.masquerade_mark
        && a.local_detector == b.local_detector
        && a.nodeport_addresses == b.nodeport_addresses
        && a.localhost_nodeports == b.localhost_nodeports
}

/// The hook rules of reference A.1, in kube-proxy's order (`KUBE-FIREWALL`'s last, so first in
/// `INPUT` and `OUTPUT`, only with localhost nodePorts).
fn hooks(plan: &ServicePlan) -> Vec<HookRule> {
    let new = [CtState::New];
    let hook = |table, chain: &str, rule: Rule| HookRule {
        table,
        chain: ChainName::from(chain),
        rule,
    };
    let to = |extra: Option<&[CtState]>, comment: &str, chain: &str| {
        let mut rule = Rule::new();
        if let Some(states) = extra {
            rule = rule.ctstate(states);
        }
        rule.comment(comment).jump(&ChainName::from(chain))
    };
    const EXTERNAL: &str = "kubernetes externally-visible service portals";
    const PORTALS: &str = "kubernetes service portals";
    const FIREWALL: &str = "kubernetes load balancer firewall";
    let mut hooks = vec![
        hook(
            Table::Filter,
            "INPUT",
            to(Some(&new), EXTERNAL, KUBE_EXTERNAL_SERVICES),
        ),
        hook(
            Table::Filter,
            "FORWARD",
            to(Some(&new), EXTERNAL, KUBE_EXTERNAL_SERVICES),
        ),
        hook(
            Table::Filter,
            "INPUT",
            to(
                None,
                "kubernetes health check service ports",
                KUBE_NODEPORTS,
            ),
        ),
        hook(
            Table::Filter,
            "FORWARD",
            to(Some(&new), PORTALS, KUBE_SERVICES),
        ),
        hook(
            Table::Filter,
            "OUTPUT",
            to(Some(&new), PORTALS, KUBE_SERVICES),
        ),
        hook(
            Table::Filter,
            "FORWARD",
            to(None, "kubernetes forwarding rules", KUBE_FORWARD),
        ),
        hook(
            Table::Filter,
            "INPUT",
            to(Some(&new), FIREWALL, KUBE_PROXY_FIREWALL),
        ),
        hook(
            Table::Filter,
            "OUTPUT",
            to(Some(&new), FIREWALL, KUBE_PROXY_FIREWALL),
        ),
        hook(
            Table::Filter,
            "FORWARD",
            to(Some(&new), FIREWALL, KUBE_PROXY_FIREWALL),
        ),
        hook(Table::Nat, "OUTPUT", to(None, PORTALS, KUBE_SERVICES)),
        hook(Table::Nat, "PREROUTING", to(None, PORTALS, KUBE_SERVICES)),
        hook(
            Table::Nat,
            "POSTROUTING",
            to(None, "kubernetes postrouting rules", KUBE_POSTROUTING),
        ),
    ];
    if plan.localhost_nodeports {
        for chain in ["INPUT", "OUTPUT"] {
            let rule = Rule::new().jump(&ChainName::from(KUBE_FIREWALL));
            hooks.push(hook(Table::Filter, chain, rule));
        }
    }
    hooks
}

/// The shared chains service ports add rules to, in [`ServiceRules`]' count order.
#[derive(Clone, Copy)]
enum Shared {
    NatServices,
    NatNodePorts,
    FilterServices,
    FilterExternal,
    FilterFirewall,
    FilterNodePorts,
}

/// How many [`Shared`] chains there are.
const SHARED: usize = 6;

impl Shared {
    const ALL: [Shared; SHARED] = [
        Shared::NatServices,
        Shared::NatNodePorts,
        Shared::FilterServices,
        Shared::FilterExternal,
        Shared::FilterFirewall,
        Shared::FilterNodePorts,
    ];
}

struct Names {
    services: ChainName,
    external_services: ChainName,
    nodeports: ChainName,
    forward: ChainName,
    firewall: ChainName,
    mark_masq: ChainName,
    postrouting: ChainName,
}

impl Names {
    fn shared(&self, shared: Shared) -> (Table, &ChainName) {
        match shared {
            Shared::NatServices => (Table::Nat, &self.services),
            Shared::NatNodePorts => (Table::Nat, &self.nodeports),
            Shared::FilterServices => (Table::Filter, &self.services),
            Shared::FilterExternal => (Table::Filter, &self.external_services),
            Shared::FilterFirewall => (Table::Filter, &self.firewall),
            Shared::FilterNodePorts => (Table::Filter, &self.nodeports),
        }
    }

    fn new() -> Self {
        Self {
            services: ChainName::from(KUBE_SERVICES),
            external_services: ChainName::from(KUBE_EXTERNAL_SERVICES),
            nodeports: ChainName::from(KUBE_NODEPORTS),
            forward: ChainName::from(KUBE_FORWARD),
            firewall: ChainName::from(KUBE_PROXY_FIREWALL),
            mark_masq: ChainName::from(KUBE_MARK_MASQ),
            postrouting: ChainName::from(KUBE_POSTROUTING),
        }
    }
}

/// The names one service port's rules share.
struct PortNames {
    /// kube-proxy's `ServicePortName` string.
    name: String,
    /// The Service, shared by the owner entries of all its chains.
    svc: Arc<ServiceRef>,
    /// The port's four hashed chains.
    chains: ServiceChains,
}

struct Renderer<'a> {
    rs: Ruleset,
    owners: HashMap<ChainName, Arc<ServiceRef>>,
    names: Names,
    mark: u32,
    endpoint_comments: bool,
    plan: &'a ServicePlan,
    /// The current port's rules so far in each [`Shared`] chain.
    counts: [u32; SHARED],
}

/// The start of every rule matching one frontend: `-m P -p P -d IP --dport PORT`.
fn frontend(rule: Rule, protocol: Protocol, ip: IpAddr, port: u16) -> Rule {
    rule.protocol(protocol).destination(ip).dport(port)
}

impl Renderer<'_> {
    fn top_level(&mut self, opts: &RenderOptions) {
        let n = &self.names;
        for chain in [
            &n.services,
            &n.external_services,
            &n.forward,
            &n.nodeports,
            &n.firewall,
        ] {
            self.rs.declare(Table::Filter, chain);
        }
        for chain in [&n.services, &n.nodeports, &n.postrouting, &n.mark_masq] {
            self.rs.declare(Table::Nat, chain);
        }
        let mark = self.mark;
        let marked = |negated| Match::Mark {
            value: mark,
            mask: mark,
            negated,
        };
        self.rs.append(
            Table::Nat,
            &n.postrouting,
            Rule::new().with(marked(true)).target(Target::Return),
        );
        self.rs.append(
            Table::Nat,
            &n.postrouting,
            Rule::new().target(Target::Mark(MarkOp::Xor(mark))),
        );
        self.rs.append(
            Table::Nat,
            &n.postrouting,
            Rule::new()
                .comment("kubernetes service traffic requiring SNAT")
                .target(Target::Masquerade {
                    random_fully: opts.masquerade_random_fully,
                }),
        );
        self.rs.append(
            Table::Nat,
            &n.mark_masq,
            Rule::new().target(Target::Mark(MarkOp::Or(mark))),
        );
        if opts.drop_invalid {
            self.rs.append(
                Table::Filter,
                &n.forward,
                Rule::new()
                    .ctstate(&[CtState::Invalid])
                    .target(Target::Drop),
            );
        }
        self.rs.append(
            Table::Filter,
            &n.forward,
            Rule::new()
                .comment("kubernetes forwarding rules")
                .with(marked(false))
                .target(Target::Accept),
        );
        self.rs.append(
            Table::Filter,
            &n.forward,
            Rule::new()
                .comment("kubernetes forwarding conntrack rule")
                .ctstate(&[CtState::Related, CtState::Established])
                .target(Target::Accept),
        );
    }

    fn nodeports_last_rule(&mut self) {
        const COMMENT: &str =
            "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
        let services = self.names.services.clone();
        let localhost = self.plan.localhost_nodeports;
        let NodePortIps::Only(ips) = &self.plan.nodeport_addresses else {
            // Without localhost nodePorts (the default here; kube-proxy's with
            // --iptables-localhost-nodeports=false, and always for IPv6) loopback
            // destinations are left out: they would need route_localnet.
            let mut rule = Rule::new().comment(COMMENT).local(Direction::Dst);
            if !localhost {
                rule = rule.not_destination(self.plan.family.loopback());
            }
            self.rs
                .append(Table::Nat, &services, rule.jump(&self.names.nodeports));
            return;
        };
        for ip in ips.iter().filter(|ip| localhost || !ip.is_loopback()) {
            let rule = Rule::new()
                .comment(COMMENT)
                .destination(*ip)
                .jump(&self.names.nodeports);
            self.rs.append(Table::Nat, &services, rule);
        }
    }

    /// With localhost nodePorts, `route_localnet` makes packets to `127.0.0.0/8` from
    /// elsewhere routable: drop them unless they belong to a connection or were DNATed
    /// (CVE-2020-8558, kubernetes#90259), as kube-proxy's `KUBE-FIREWALL`.
    fn localhost_firewall(&mut self) {
        if !self.plan.localhost_nodeports {
            return;
        }
        let loopback = self.plan.family.loopback();
        let rule = Rule::new()
            .comment("block incoming localnet connections")
            .destination(loopback)
            .not_source(loopback)
            .with(Match::Conntrack {
                states: vec![CtState::Related, CtState::Established, CtState::Dnat],
                negated: true,
            })
            .target(Target::Drop);
        self.rs
            .append(Table::Filter, &ChainName::from(KUBE_FIREWALL), rule);
    }

    /// Appends a rule of the current port to a shared chain.
    fn shared(&mut self, shared: Shared, rule: Rule) {
        let (table, chain) = self.names.shared(shared);
        self.rs.append(table, chain, rule);
        self.counts[shared as usize] += 1;
    }

    /// Declares a per-service chain and returns its rules.
    fn own(&mut self, chain: &ChainName, service: &Arc<ServiceRef>) -> &mut Vec<Rule> {
        self.owners.insert(chain.clone(), Arc::clone(service));
        self.rs.chain_mut(Table::Nat, chain)
    }

    fn service_port(&mut self, port: &ServicePortPlan) {
        let names = PortNames {
            name: port.name.to_string(),
            svc: Arc::new(port.name.service.clone()),
            chains: ServiceChains::of(&port.name),
        };
        self.frontends(port, &names);
        self.per_service_chains(port, &names);
    }

    /// The rules in the shared chains that catch the port's frontends: nat `KUBE-SERVICES` /
    /// `KUBE-NODEPORTS` jumps, filter rejects, drops and accepts.
    fn frontends(&mut self, port: &ServicePortPlan, names: &PortNames) {
        let PortNames { name, chains, .. } = names;
        let proto = port.protocol();
        let policy_chain = |d: Disposition| match d {
            Disposition::Local => &chains.local,
            _ => &chains.cluster,
        };
        let external = port.external;
        let ext_forwards = external.is_some_and(|e| e.disposition.forwards());
        let filter_verdict = |d: Disposition| match d {
            Disposition::Reject => (format!("{name} has no endpoints"), Target::Reject),
            _ => (format!("{name} has no local endpoints"), Target::Drop),
        };
        let lb_chain = if port.uses_source_ranges() {
            &chains.firewall
        } else {
            &chains.external
        };

        // ClusterIP.
        if port.internal.forwards() {
            let rule = frontend(
                Rule::new().comment(format!("{name} cluster IP")),
                proto,
                port.cluster_ip,
                port.port,
            )
            .jump(policy_chain(port.internal));
            self.shared(Shared::NatServices, rule);
        } else {
            let (comment, target) = filter_verdict(port.internal);
            let rule = frontend(
                Rule::new().comment(comment),
                proto,
                port.cluster_ip,
                port.port,
            )
            .target(target);
            self.shared(Shared::FilterServices, rule);
        }
        // External IPs.
        for ip in &port.external_ips {
            if port.has_endpoints() {
                let rule = frontend(
                    Rule::new().comment(format!("{name} external IP")),
                    proto,
                    *ip,
                    port.port,
                )
                .jump(&chains.external);
                self.shared(Shared::NatServices, rule);
            }
            if let Some(e) = external.filter(|_| !ext_forwards) {
                let (comment, target) = filter_verdict(e.disposition);
                let rule =
                    frontend(Rule::new().comment(comment), proto, *ip, port.port).target(target);
                self.shared(Shared::FilterExternal, rule);
            }
        }
        // Load-balancer IPs.
        for ip in &port.load_balancer_ips {
            if port.has_endpoints() {
                let rule = frontend(
                    Rule::new().comment(format!("{name} loadbalancer IP")),
                    proto,
                    *ip,
                    port.port,
                )
                .jump(lb_chain);
                self.shared(Shared::NatServices, rule);
            }
            if port.uses_source_ranges() {
                let comment = format!("{name} traffic not accepted by {}", chains.firewall);
                let rule = frontend(Rule::new().comment(comment), proto, *ip, port.port)
                    .target(Target::Drop);
                self.shared(Shared::FilterFirewall, rule);
            }
        }
        if let Some(e) = external.filter(|_| !ext_forwards) {
            for ip in &port.load_balancer_ips {
                let (comment, target) = filter_verdict(e.disposition);
                let rule =
                    frontend(Rule::new().comment(comment), proto, *ip, port.port).target(target);
                self.shared(Shared::FilterExternal, rule);
            }
        }
        // NodePort (not subject to source ranges, as upstream).
        if let Some(node_port) = port.node_port {
            if port.has_endpoints() {
                let rule = Rule::new()
                    .comment(name.clone())
                    .protocol(proto)
                    .dport(node_port)
                    .jump(&chains.external);
                self.shared(Shared::NatNodePorts, rule);
            }
            if let Some(e) = external.filter(|_| !ext_forwards) {
                let (comment, target) = filter_verdict(e.disposition);
                let rule = Rule::new()
                    .comment(comment)
                    .local(Direction::Dst)
                    .protocol(proto)
                    .dport(node_port)
                    .target(target);
                self.shared(Shared::FilterExternal, rule);
            }
        }
        // Health-check node port: always accepted, even with no local endpoint (it answers 503).
        if let Some(hc) = port.health_check_node_port {
            let rule = Rule::new()
                .comment(format!("{name} health check node port"))
                .protocol(Protocol::Tcp)
                .dport(hc)
                .target(Target::Accept);
            self.shared(Shared::FilterNodePorts, rule);
        }
    }

    /// The per-service nat chains: `KUBE-SVC/SVL/EXT/FW/SEP-*`.
    fn per_service_chains(&mut self, port: &ServicePortPlan, names: &PortNames) {
        let PortNames { name, svc, chains } = names;
        let proto = port.protocol();
        let external = port.external;
        let policy_chain = |d: Disposition| match d {
            Disposition::Local => &chains.local,
            _ => &chains.cluster,
        };
        if port.internal.forwards() {
            let chain = policy_chain(port.internal);
            self.own(chain, svc);
            let base = frontend(
                Rule::new().comment(format!("{name} cluster IP")),
                proto,
                port.cluster_ip,
                port.port,
            );
            let masq = match (port.cluster_ip_masquerade, &self.plan.local_detector) {
                (ClusterIpMasquerade::All, _) => Some(base),
                (ClusterIpMasquerade::OffCluster, Some(detector)) => {
                    Some(base.with(local_traffic(detector, true)))
                }
                (ClusterIpMasquerade::OffCluster | ClusterIpMasquerade::Never, _) => None,
            };
            if let Some(rule) = masq {
                self.rs
                    .append(Table::Nat, chain, rule.jump(&self.names.mark_masq));
            }
        }
        if let Some(e) = external.filter(|_| port.uses_external_entry()) {
            let ext = &chains.external;
            self.own(ext, svc);
            let mark_masq = self.names.mark_masq.clone();
            if e.masquerade_all {
                let rule = Rule::new()
                    .comment(format!(
                        "masquerade traffic for {name} external destinations"
                    ))
                    .jump(&mark_masq);
                self.rs.append(Table::Nat, ext, rule);
            }
            if let (true, Some(detector)) = (e.pods_short_circuit, &self.plan.local_detector) {
                let rule = Rule::new()
                    .comment(format!("pod traffic for {name} external destinations"))
                    .with(local_traffic(detector, false))
                    .jump(&chains.cluster);
                self.rs.append(Table::Nat, ext, rule);
            }
            if e.host_short_circuit {
                let masq = Rule::new()
                    .comment(format!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    ))
                    .local(Direction::Src)
                    .jump(&mark_masq);
                let route = Rule::new()
                    .comment(format!(
                        "route LOCAL traffic for {name} external destinations"
                    ))
                    .local(Direction::Src)
                    .jump(&chains.cluster);
                self.rs.append(Table::Nat, ext, masq);
                self.rs.append(Table::Nat, ext, route);
            }
            if e.disposition.forwards() {
                let target = if e.policy == TrafficPolicy::Local {
                    &chains.local
                } else {
                    &chains.cluster
                };
                self.rs.append(Table::Nat, ext, Rule::new().jump(target));
            }
        }
        if port.uses_source_ranges() {
            let fw = &chains.firewall;
            self.own(fw, svc);
            let comment = format!("{name} loadbalancer IP");
            for cidr in &port.load_balancer_source_ranges {
                let rule = Rule::new()
                    .comment(comment.clone())
                    .source(*cidr)
                    .jump(&chains.external);
                self.rs.append(Table::Nat, fw, rule);
            }
            if port.load_balancer_admits_node {
                for ip in &port.load_balancer_ips {
                    let rule = Rule::new()
                        .comment(comment.clone())
                        .source(*ip)
                        .jump(&chains.external);
                    self.rs.append(Table::Nat, fw, rule);
                }
            }
            let last = Rule::new().comment(format!(
                "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
            ));
            self.rs.append(Table::Nat, fw, last);
        }
        // Every endpoint used by either policy is reachable; hash each name once.
        let seps: HashMap<SocketAddr, ChainName> = port
            .endpoints
            .all_reachable
            .iter()
            .map(|ep| (ep.addr, endpoint_chain(&port.name, &ep.addr)))
            .collect();
        let sep = |ep: &PlannedEndpoint| {
            seps.get(&ep.addr)
                .cloned()
                .unwrap_or_else(|| endpoint_chain(&port.name, &ep.addr))
        };
        if port.uses_cluster_endpoints() {
            self.load_balance(
                &chains.cluster,
                port,
                name,
                &port.endpoints.cluster,
                &sep,
                svc,
            );
        }
        if port.uses_local_endpoints() {
            self.load_balance(&chains.local, port, name, &port.endpoints.local, &sep, svc);
        }
        for ep in &port.endpoints.all_reachable {
            self.endpoint(port, name, ep, sep(ep), svc);
        }
    }

    /// Session-affinity checks, then one statistic rule per endpoint (`1/n`, `1/(n-1)`, …,
    /// the last unconditional) so each endpoint gets an equal share of new connections.
    fn load_balance(
        &mut self,
        chain: &ChainName,
        port: &ServicePortPlan,
        name: &str,
        endpoints: &[PlannedEndpoint],
        sep: &dyn Fn(&PlannedEndpoint) -> ChainName,
        svc: &Arc<ServiceRef>,
    ) {
        let with_comments = self.endpoint_comments;
        let start = |ep: &PlannedEndpoint| {
            if with_comments {
                Rule::new().comment(format!("{name} -> {}", ep.key()))
            } else {
                Rule::new()
            }
        };
        let seps: Vec<ChainName> = endpoints.iter().map(sep).collect();
        let rules = self.own(chain, svc);
        if let Some(seconds) = port.session_affinity {
            for (ep, sep) in endpoints.iter().zip(&seps) {
                let recent = Match::Recent(Recent::Check {
                    name: sep.to_string(),
                    seconds,
                });
                rules.push(start(ep).with(recent).jump(sep));
            }
        }
        let n = endpoints.len();
        for (i, (ep, sep)) in endpoints.iter().zip(&seps).enumerate() {
            let mut rule = start(ep);
            if i + 1 < n {
                let remaining = u32::try_from(n - i).unwrap_or(u32::MAX);
                rule = rule.with(Match::Statistic(Probability::one_in(remaining)));
            }
            rules.push(rule.jump(sep));
        }
    }

    fn endpoint(
        &mut self,
        port: &ServicePortPlan,
        name: &str,
        ep: &PlannedEndpoint,
        sep: ChainName,
        svc: &Arc<ServiceRef>,
    ) {
        let base = if self.endpoint_comments {
            Rule::new().comment(name)
        } else {
            Rule::new()
        };
        // Hairpin: a pod reaching itself through the Service must be SNATed, or it would
        // answer itself directly and the reply would not be un-DNATed.
        let hairpin = base.clone().source(ep.ip()).jump(&self.names.mark_masq);
        let mut dnat = base;
        if port.session_affinity.is_some() {
            dnat = dnat.with(Match::Recent(Recent::Set {
                name: sep.to_string(),
            }));
        }
        let dnat = dnat.protocol(port.protocol()).target(Target::Dnat(ep.addr));
        self.own(&sep, svc).extend([hairpin, dnat]);
    }
}

/// The match of the local-traffic detector (kube-proxy's `IFLOCAL`, or `IFNOTLOCAL` when
/// `negated`): `-s RANGE`, `-i BRIDGE` or `-i PREFIX+`.
pub(crate) fn local_traffic(detector: &LocalDetector, negated: bool) -> Match {
    match detector {
        LocalDetector::Cidr(cidr) => Match::Source {
            addr: (*cidr).into(),
            negated,
        },
        LocalDetector::Interface(name) => Match::InInterface {
            name: name.to_string(),
            negated,
        },
        LocalDetector::InterfacePrefix(prefix) => Match::InInterface {
            name: format!("{prefix}+"),
            negated,
        },
    }
}

#[cfg(test)]
mod tests {
    use netd_model::NodeName;
    use netd_proxy::{IpFamily, NodePortAddresses, ProxyOptions, plan};

    use super::*;

    const TWO_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: a-x, namespace: ns, labels: {kubernetes.io/service-name: a}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
- {addresses: [10.244.2.2], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: ns}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: b-x, namespace: ns, labels: {kubernetes.io/service-name: b}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.3], nodeName: node-1}
"#;

    fn node_plan(yaml: &str) -> ServicePlan {
        let state = netd_testkit::state(yaml);
        plan(
            &state,
            &NodeName::new("node-1"),
            IpFamily::V4,
            &ProxyOptions::default(),
        )
    }

    fn rules(yaml: &str, opts: &RenderOptions) -> ServiceRules {
        render_services(&node_plan(yaml), opts)
    }

    fn chains_declared(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .collect()
    }

    #[test]
    fn a_partial_restore_names_the_chains_a_walk_of_every_chain_finds() {
        let p = node_plan(TWO_SERVICES);
        let r = render_services(&p, &RenderOptions::default());
        let (a, b) = (ServiceRef::new("ns", "a"), ServiceRef::new("ns", "b"));
        let gone = BTreeSet::from([ChainName::from("KUBE-SEP-GONEGONEGONEGONE")]);
        for changed in [vec![], vec![a.clone()], vec![b.clone()], vec![a, b]] {
            let changed: BTreeSet<ServiceRef> = changed.into_iter().collect();
            let delete = gone.iter().map(|c| (Table::Nat, c.clone())).collect();
            let walked = r.ruleset.restore_selected(&RestoreSelection {
                include: &|table, chain| match r.owner(chain.as_str()) {
                    Some(owner) => table != Table::Nat || changed.contains(owner),
                    None => true,
                },
                delete: &delete,
                service_chains: None,
            });
            let named = r.restore_deleting(&p, &SyncScope::Partial(changed), gone.clone());
            assert_eq!(named, walked);
        }
    }

    #[test]
    fn partial_sync_writes_only_changed_services_and_deletes_stale_chains() {
        let p = node_plan(TWO_SERVICES);
        let r = render_services(&p, &RenderOptions::default());
        let b_chains: Vec<&ChainName> = r
            .service_chains()
            .filter(|(_, s)| s.name == "b")
            .map(|(c, _)| c)
            .collect();
        assert_eq!(b_chains.len(), 2, "KUBE-SVC and one KUBE-SEP: {b_chains:?}");
        let existing: BTreeSet<ChainName> = [
            "KUBE-SEP-GONEGONEGONEGONE",
            "KUBE-SVC-XPGD46QRK7WJZT7O",
            "OTHER-CHAIN",
            "KUBE-SERVICES",
        ]
        .into_iter()
        .map(ChainName::from)
        .chain(r.service_chains().map(|(c, _)| c.clone()))
        .collect();
        let stale: Vec<String> = r
            .stale_chains(&existing)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            stale,
            ["KUBE-SEP-GONEGONEGONEGONE", "KUBE-SVC-XPGD46QRK7WJZT7O"]
        );

        let partial = r.restore_input(
            &p,
            &SyncScope::Partial([ServiceRef::new("ns", "b")].into()),
            &existing,
        );
        let declared = chains_declared(&partial);
        for c in &b_chains {
            assert!(
                declared.contains(&c.as_str()),
                "{c} missing from partial sync:\n{partial}"
            );
        }
        let a_chains = r
            .service_chains()
            .filter(|(_, s)| s.name == "a")
            .map(|(c, _)| c.as_str());
        for c in a_chains {
            let rewritten = declared.contains(&c) || partial.contains(&format!("-A {c} "));
            assert!(!rewritten, "unchanged {c} rewritten:\n{partial}");
        }
        for top in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-FORWARD",
        ] {
            assert!(declared.contains(&top), "{top} missing");
        }
        assert!(
            partial.contains("-X KUBE-SEP-GONEGONEGONEGONE\n"),
            "{partial}"
        );
        assert!(!partial.contains("OTHER-CHAIN"), "{partial}");
        // The cluster IP rule of the unchanged Service is still written (KUBE-SERVICES is
        // rewritten in full every sync).
        assert!(partial.contains("-d 10.96.0.1 --dport 80"), "{partial}");

        let full = r.restore_input(&p, &SyncScope::Full, &BTreeSet::new());
        assert_eq!(full, r.ruleset.to_restore());
        assert!(chains_declared(&full).len() > declared.len());
    }

    #[test]
    fn large_clusters_drop_per_endpoint_comments() {
        let opts = RenderOptions {
            large_cluster_endpoints: 2,
            ..RenderOptions::default()
        };
        let text = rules(TWO_SERVICES, &opts).ruleset.to_restore();
        assert!(!text.contains("--comment ns/a -s"), "{text}");
        assert!(!text.contains("-> 10.244"), "{text}");
        assert!(text.contains("\"ns/a cluster IP\""), "{text}");
        let small = rules(TWO_SERVICES, &RenderOptions::default())
            .ruleset
            .to_restore();
        assert!(
            small.contains("--comment ns/a -s 10.244.1.2 -j KUBE-MARK-MASQ"),
            "{small}"
        );
    }

    #[test]
    fn hooks_install_in_kube_proxy_order() {
        let r = rules(TWO_SERVICES, &RenderOptions::default());
        assert_eq!(r.hooks.len(), 12);
        let installed = r.installed();
        let forward: Vec<String> = installed
            .chain(Table::Filter, "FORWARD")
            .unwrap_or_default()
            .iter()
            .map(|rule| match &rule.target {
                Some(Target::Jump(c)) => c.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            forward,
            [
                KUBE_PROXY_FIREWALL,
                KUBE_FORWARD,
                KUBE_SERVICES,
                KUBE_EXTERNAL_SERVICES
            ]
        );
        let first = &r.hooks[0].rule.to_string();
        assert_eq!(
            first,
            r#"-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES"#
        );
    }

    #[test]
    fn localhost_nodeports_put_kube_firewall_first_in_input_and_output() {
        let state = netd_testkit::state(TWO_SERVICES);
        let node = NodeName::new("node-1");
        let on = ProxyOptions {
            localhost_nodeports: true,
            ..ProxyOptions::default()
        };
        let first = |r: &ServiceRules, chain: &str| {
            r.installed()
                .chain(Table::Filter, chain)
                .and_then(|rules| rules.first().map(|rule| rule.to_string()))
        };
        let r = render_services(
            &plan(&state, &node, IpFamily::V4, &on),
            &RenderOptions::default(),
        );
        assert_eq!(r.hooks.len(), 14);
        for chain in ["INPUT", "OUTPUT"] {
            assert_eq!(
                first(&r, chain).as_deref(),
                Some("-j KUBE-FIREWALL"),
                "{chain}"
            );
        }
        // Off by default, and never for IPv6 (no route_localnet there).
        let off = rules(TWO_SERVICES, &RenderOptions::default());
        assert!(
            off.hooks
                .iter()
                .all(|h| h.rule.to_string() != "-j KUBE-FIREWALL")
        );
        assert!(!plan(&state, &node, IpFamily::V6, &on).localhost_nodeports);
    }

    #[test]
    fn nodeport_addresses_replace_the_local_match() {
        let state = netd_testkit::state(TWO_SERVICES);
        let opts = ProxyOptions {
            node_ips: vec!["172.18.0.2".parse().expect("ip")],
            nodeport_addresses: NodePortAddresses::Cidrs(vec![
                "172.18.0.0/24".parse().expect("cidr"),
                "127.0.0.0/8".parse().expect("cidr"),
            ]),
            ..ProxyOptions::default()
        };
        let p = plan(&state, &NodeName::new("node-1"), IpFamily::V4, &opts);
        let text = render_services(&p, &RenderOptions::default())
            .ruleset
            .to_restore();
        assert!(
            text.contains(
                "this must be the last rule in this chain\" -d 172.18.0.2 -j KUBE-NODEPORTS"
            ),
            "{text}"
        );
        assert!(!text.contains("-d 127.0.0.1 -j KUBE-NODEPORTS"), "{text}");
        assert!(!text.contains("--dst-type LOCAL ! -d"), "{text}");
    }
}
