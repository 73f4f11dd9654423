//! The IPVS back end: kube-proxy's IPVS mode ([`netd_render::ipvs`]) applied to a Node's
//! namespace, with the NetworkPolicy chains of the other modes.
//!
//! Each sync, in this order:
//! 1. on a full sync, the sysctls IPVS mode needs ([`SYSCTLS`], `conn_reuse_mode=0` on kernels
//!    older than 5.9, and with [`IpvsConfig::strict_arp`] `arp_ignore=1`/`arp_announce=2`), the
//!    connection timeouts of [`IpvsConfig::timeouts`] if any is set, and the dummy interface
//!    [`DUMMY_INTERFACE`] (down, ARP off);
//! 2. the ipsets and iptables rules through the [`SyncEngine`]: one `ipset restore` (every
//!    set whole on a full sync, only the members that changed on a partial one), one
//!    `iptables-restore --noflush` with the hooks dispatched through `KUBE-NETD-*` chains as
//!    in iptables mode (so they are inserted once and policy is judged first), stale sets of
//!    ours destroyed;
//! 3. the Service addresses missing from the dummy interface added;
//! 4. the virtual and real servers, as one [`diff`] from what the kernel holds: on a full sync
//!    read from the kernel's dump, on a partial one the last applied servers, with the real
//!    servers of every virtual server that still has some draining read back for their
//!    connection counts. A TCP real server no longer wanted is set to weight 0 and deleted
//!    once the kernel counts no connection for it, or after [`IpvsConfig::drain_timeout`];
//!    UDP and SCTP ones go at once (with `expire_nodest_conn=1` their flows end at the next
//!    packet), as kube-proxy's graceful termination does;
//! 5. the addresses no longer wanted removed from the dummy interface;
//! 6. stale UDP/SCTP conntrack entries deleted, as in the other modes.
//!
//! Steps 2 and 4 are not one transaction: the kernel's IPVS tables take one change per
//! message. A failure leaves whatever was done and makes the next sync full, which reads the
//! kernel back and converges.
//!
//! Each IP family of the cluster is rendered on its own, as in iptables mode: its plan, its
//! virtual servers (IPv6 ones with IPv6 real servers), its `KUBE-6-*` sets for IPv6, its
//! fixed rules through `ip6tables-restore`, and its conntrack reconcile; one netlink socket
//! and one `kube-ipvs0` (with `/128` IPv6 addresses) serve both. kube-proxy sets no
//! `net.ipv6` sysctl in IPVS mode (the `net.ipv4.vs` ones cover IPVS in both families), and
//! neither does this back end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netd_kernel::ipvs::{
    DestStatus, FLAG_PERSISTENT, FLAG_SOURCE_PORT_HASH, Ipvs as IpvsSocket, IpvsDest, IpvsProtocol,
    IpvsService, IpvsTimeouts,
};
use netd_kernel::{KernelError, link};
use netd_model::{ClusterState, NodeName, Protocol};
use netd_proxy::{IpFamily, ProxyOptions, ServicePlan};
use netd_render::ipvs::{
    DEFAULT_SCHEDULER, DUMMY_INTERFACE, IpvsChange, IpvsOptions, IpvsRules, IpvsSet, RealServer,
    VirtualAddr, VirtualServer, diff, render_ipvs,
};
use netd_render::{HookRule, Ruleset, render_policy};
use prometheus_client::registry::Registry;

use crate::backend::{Backend, Mode, ProgramConfig};
use crate::error::AgentError;
use crate::programmer::dispatch;
use crate::rules::NodeRules;
use crate::sync::{FamilySync, InNamespace, SyncEngine, SyncKind, SyncMetrics, SyncReport};

/// The sysctls IPVS mode sets on every full sync, as kube-proxy does: connection tracking of
/// IPVS connections (the masquerade rules need it), and connections to removed or weight-0
/// real servers expired rather than kept.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
];

/// The default [`IpvsConfig::drain_timeout`]: the kernel's IPVS timeout of an established TCP
/// connection (what `--ipvs-tcp-timeout 0` leaves), after which an idle one is gone anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The schedulers `--ipvs-scheduler` accepts: kube-proxy's (`rr`, the default, through `nq`),
/// and `mh`, which its validation lacks but its proxier and the kernel support.
pub const SCHEDULERS: [&str; 11] = [
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh",
];

/// IPVS mode's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsConfig {
    /// `--ipvs-scheduler`: the scheduler of every virtual server (one of [`SCHEDULERS`]).
    pub scheduler: String,
    /// `--ipvs-strict-arp`: `arp_ignore=1` and `arp_announce=2`, so the node does not answer
    /// ARP for the Service addresses on its other interfaces.
    pub strict_arp: bool,
    /// How long a removed TCP real server with connections may drain at weight 0 before it
    /// is deleted anyway.
    pub drain_timeout: Duration,
    /// `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`, `--ipvs-udp-timeout`: the kernel's IPVS
    /// connection timeouts, set on every full sync when one is not zero (a zero one keeps the
    /// kernel's value), as `ipvsadm --set` does. Whole seconds; a fraction is dropped.
    pub timeouts: Timeouts,
    /// `--ipvs-exclude-cidrs`: virtual servers with an address in these ranges are not ours
    /// to remove when a full sync finds them in the kernel (another program's), unless the
    /// plan has them.
    pub exclude_cidrs: Vec<IpNet>,
}

/// IPVS mode's connection timeouts ([`IpvsConfig::timeouts`]); zero keeps the kernel's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle established TCP connections.
    pub tcp: Duration,
    /// TCP connections after a FIN.
    pub tcp_fin: Duration,
    /// UDP flows.
    pub udp: Duration,
}

impl Timeouts {
    /// The kernel's form, in whole seconds (saturating); `None` when every one is zero, so
    /// nothing is to be set.
    pub fn to_kernel(self) -> Option<IpvsTimeouts> {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let out = IpvsTimeouts {
            tcp: secs(self.tcp),
            tcp_fin: secs(self.tcp_fin),
            udp: secs(self.udp),
        };
        (out != IpvsTimeouts::default()).then_some(out)
    }
}

impl Default for IpvsConfig {
    fn default() -> Self {
        Self {
            scheduler: DEFAULT_SCHEDULER.to_owned(),
            strict_arp: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            timeouts: Timeouts::default(),
            exclude_cidrs: Vec::new(),
        }
    }
}

/// The IPVS back end of one Node.
#[derive(Debug, Default)]
pub struct Ipvs {
    config: IpvsConfig,
    program: ProgramConfig,
    /// Writes the ipsets and iptables rules (hooks idempotent, stale chains and sets pruned).
    engine: SyncEngine,
    /// The virtual servers (of every family) the last successful sync applied.
    applied: Option<BTreeMap<VirtualAddr, VirtualServer>>,
    /// The plan of each family the last successful sync applied (for the conntrack
    /// reconciler).
    applied_plans: BTreeMap<IpFamily, ServicePlan>,
    /// The addresses the last successful sync left on the dummy interface.
    bound: BTreeSet<IpAddr>,
    /// Real servers no longer wanted that drain at weight 0, since when.
    draining: BTreeMap<(VirtualAddr, SocketAddr), Instant>,
    /// Set after a failed sync (the kernel may hold anything) or on request.
    full_next: bool,
    /// What each family's next conntrack reconcile looks at (kept after a failed one).
    conntrack_pending: BTreeMap<IpFamily, crate::conntrack::Pending>,
    metrics: SyncMetrics,
}

/// What one sync of the IPVS back end applies: per family of the cluster, IPv4 first, its
/// plan and rendering; and the ipsets and iptables rules of them all.
struct Rendered {
    families: Vec<(ServicePlan, IpvsRules)>,
    rules: NodeRules,
    /// Each family's iptables rules as written (IPVS mode's, NetworkPolicy's and the
    /// dispatch chains), without the hooks.
    rulesets: BTreeMap<IpFamily, Ruleset>,
}

/// What the tracer walks of one family: the iptables rules as the kernel holds them (hooks
/// included), the virtual servers and bound addresses, and the `ipset restore` payload of
/// every family.
pub(crate) struct Traced {
    pub(crate) installed: Ruleset,
    pub(crate) rules: IpvsRules,
    pub(crate) ipset: String,
}

impl Rendered {
    /// The virtual servers of every family.
    fn virtual_servers(&self) -> BTreeMap<VirtualAddr, VirtualServer> {
        self.families
            .iter()
            .flat_map(|(_, ipvs)| ipvs.virtual_servers.clone())
            .collect()
    }

    /// The addresses of every family the dummy interface holds.
    fn bound_addresses(&self) -> BTreeSet<IpAddr> {
        self.families
            .iter()
            .flat_map(|(_, ipvs)| ipvs.bound_addresses.iter().copied())
            .collect()
    }
}

impl Ipvs {
    /// A back end with `config` that has synced nothing yet: its first sync is full.
    pub fn new(config: IpvsConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The same back end, programming from `program` instead of the defaults.
    pub fn with_program(self, program: ProgramConfig) -> Self {
        Self { program, ..self }
    }

    /// What a sync would leave in the kernel for `family` of `node`, for the tracer; `None`
    /// when the cluster does not have the family.
    pub(crate) fn traced(
        &self,
        state: &ClusterState,
        node: &NodeName,
        family: IpFamily,
    ) -> Result<Option<Traced>, AgentError> {
        let mut next = self.rendered(state, node)?;
        let (Some(ruleset), Some(i)) = (
            next.rulesets.remove(&family),
            next.families.iter().position(|(p, _)| p.family == family),
        ) else {
            return Ok(None);
        };
        let (_, rules) = next.families.swap_remove(i);
        let hooks = match family {
            IpFamily::V4 => &next.rules.hooks,
            IpFamily::V6 => &next.rules.hooks6,
        };
        Ok(Some(Traced {
            installed: crate::rules::with_hooks(ruleset, hooks),
            rules,
            ipset: next.rules.ipset.full_input(),
        }))
    }

    /// One family sync per IP family of the cluster, as iptables mode: each family's plan,
    /// virtual servers, sets and fixed rules (`iptables` or `ip6tables`), and its policy.
    fn rendered(&self, state: &ClusterState, node: &NodeName) -> Result<Rendered, AgentError> {
        // IPVS mode has no localhost nodePorts (as kube-proxy's).
        let options = ProxyOptions {
            localhost_nodeports: false,
            ..self.program.proxy_options(state, node)
        };
        let policy_plan = self.program.policy_plan(state, node)?;
        let mut rules = NodeRules {
            prune: true,
            ..NodeRules::default()
        };
        let mut families = Vec::new();
        let mut rulesets = BTreeMap::new();
        for family in crate::programmer::families(state) {
            let plan = netd_proxy::plan(state, node, family, &options);
            let ipvs = render_ipvs(
                &plan,
                &IpvsOptions {
                    scheduler: self.config.scheduler.clone(),
                    node_addresses: options
                        .node_ips
                        .iter()
                        .copied()
                        .filter(|ip| family.contains(*ip))
                        .collect(),
                    masquerade_random_fully: false,
                },
            );
            let policy = policy_plan.as_ref().map(|p| render_policy(p, family));
            let mut ruleset = ipvs.ruleset.clone();
            rules.ipset.append(ipvs.ipsets());
            let mut policy_hooks: &[HookRule] = &[];
            let ipvs_policy_hooks;
            if let Some(policy) = &policy {
                ruleset.extend(&policy.ruleset);
                rules.ipset.append(policy.ipsets());
                rules.sets.extend(policy.set_names());
                ipvs_policy_hooks = netd_render::ipvs::policy_hooks(&ipvs, &mut ruleset);
                policy_hooks = &ipvs_policy_hooks;
            }
            // As in iptables mode: hooks inserted last end up first, so policy comes first.
            let hooks: Vec<&HookRule> = ipvs.hooks.iter().chain(policy_hooks).collect();
            let hooks = dispatch(&mut ruleset, &hooks);
            rules
                .sets
                .extend(IpvsSet::ALL.iter().map(|s| s.name(family)));
            match family {
                IpFamily::V4 => {
                    rules.iptables = Some(ruleset.to_restore());
                    rules.hooks = hooks;
                }
                IpFamily::V6 => {
                    rules.ip6tables = Some(ruleset.to_restore());
                    rules.hooks6 = hooks;
                }
            }
            rulesets.insert(family, ruleset);
            families.push((plan, ipvs));
        }
        // IPv6 synced before but no longer the cluster's: an empty payload has the engine
        // visit it once more and prune its chains and hooks (IPv4 is always visited).
        if rules.ip6tables.is_none() && self.applied_plans.contains_key(&IpFamily::V6) {
            rules.ip6tables = Some(String::new());
        }
        Ok(Rendered {
            families,
            rules,
            rulesets,
        })
    }

    fn apply(
        &mut self,
        netns: &str,
        next: Rendered,
        kind: SyncKind,
    ) -> Result<Vec<FamilySync>, AgentError> {
        let failed = |step: &'static str| {
            move |source: KernelError| AgentError::ApplyFailed {
                namespace: netns.to_owned(),
                step,
                source,
            }
        };
        let mut socket = IpvsSocket::open(netns).map_err(failed("open the IPVS netlink socket"))?;
        if kind == SyncKind::Full {
            for (key, value) in sysctls(&kernel_release(), self.config.strict_arp) {
                link::sysctl(netns, key, value).map_err(failed("set IPVS sysctls"))?;
            }
            if let Some(timeouts) = self.config.timeouts.to_kernel() {
                socket
                    .set_timeouts(&timeouts)
                    .map_err(failed("set IPVS timeouts"))?;
            }
            link::ensure_dummy(netns, DUMMY_INTERFACE)
                .map_err(failed("create the kube-ipvs0 interface"))?;
            self.bound = link::addresses(netns, DUMMY_INTERFACE)
                .map_err(failed("list kube-ipvs0 addresses"))?
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
        }
        let desired = next.virtual_servers();
        let want = next.bound_addresses();
        if kind == SyncKind::Full {
            // The engine's own last sync may have succeeded where a later step failed: this
            // one writes the sets whole too.
            self.engine.request_full_sync();
        }
        self.engine.sync(&mut InNamespace::new(netns), next.rules)?;

        let add: Vec<(IpAddr, u8)> = want.difference(&self.bound).map(|ip| host(*ip)).collect();
        link::change_addresses(netns, DUMMY_INTERFACE, &add, &[])
            .map_err(failed("add kube-ipvs0 addresses"))?;
        self.bound.extend(&want);

        let current = self
            .current(&mut socket, kind, &desired)
            .map_err(failed("read IPVS virtual servers"))?;
        let now = Instant::now();
        let changes = changes(
            &current,
            &desired,
            &self.draining,
            now,
            self.config.drain_timeout,
        );
        for change in &changes {
            program(&mut socket, &desired, change)
                .map_err(failed("change IPVS virtual servers"))?;
        }
        track_draining(&mut self.draining, &current, &changes, &desired, now);
        self.applied = Some(desired);

        let stale: Vec<(IpAddr, u8)> = self.bound.difference(&want).map(|ip| host(*ip)).collect();
        link::change_addresses(netns, DUMMY_INTERFACE, &[], &stale)
            .map_err(failed("remove kube-ipvs0 addresses"))?;
        self.bound = want;

        let mut done = Vec::new();
        let families: BTreeSet<IpFamily> = next.families.iter().map(|(p, _)| p.family).collect();
        self.applied_plans.retain(|f, _| families.contains(f));
        self.conntrack_pending.retain(|f, _| families.contains(f));
        for (plan, _) in next.families {
            let family = plan.family;
            let previous = self.applied_plans.get(&family);
            let services = match (kind, previous) {
                (SyncKind::Partial, Some(previous)) => plan.changed_services(previous),
                _ => plan.ports.keys().map(|n| n.service.clone()).collect(),
            };
            self.conntrack_pending
                .entry(family)
                .or_default()
                .add(previous, &plan);
            self.applied_plans.insert(family, plan);
            done.push(FamilySync {
                family,
                kind,
                services,
                deleted_chains: 0,
                conntrack_deleted: 0,
            });
        }
        Ok(done)
    }

    /// The virtual servers the kernel holds: all read back on a full sync (but those of
    /// excluded ranges the plan does not have); on a partial one the last applied, with the
    /// real servers (and so the connection counts) read back of each one that loses a real
    /// server now or still has one draining.
    fn current(
        &self,
        socket: &mut IpvsSocket,
        kind: SyncKind,
        desired: &BTreeMap<VirtualAddr, VirtualServer>,
    ) -> Result<BTreeMap<VirtualAddr, VirtualServer>, KernelError> {
        let applied = match (kind, &self.applied) {
            (SyncKind::Partial, Some(applied)) => applied,
            _ => {
                let mut out = BTreeMap::new();
                for service in socket.services()? {
                    let (addr, mut vs) = virtual_server(&service);
                    if !desired.contains_key(&addr) && self.excluded(addr.ip) {
                        continue;
                    }
                    vs.real_servers = real_servers(&socket.dests(&service)?);
                    out.insert(addr, vs);
                }
                return Ok(out);
            }
        };
        let mut out = applied.clone();
        let draining: BTreeSet<VirtualAddr> = self.draining.keys().map(|(a, _)| *a).collect();
        for (addr, vs) in &mut out {
            let losing = desired.get(addr).is_some_and(|want| {
                vs.real_servers
                    .keys()
                    .any(|rs| !want.real_servers.contains_key(rs))
            });
            if losing || draining.contains(addr) {
                vs.real_servers = real_servers(&socket.dests(&service(addr, vs))?);
            }
        }
        Ok(out)
    }

    /// Whether `ip` is in one of [`IpvsConfig::exclude_cidrs`].
    fn excluded(&self, ip: IpAddr) -> bool {
        self.config
            .exclude_cidrs
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Deletes each family's stale UDP/SCTP conntrack entries once its virtual servers are
    /// in place. Every family is tried; the first failure is returned, and that family's
    /// pending work is kept for the next sync.
    fn reconcile_conntrack(
        &mut self,
        netns: &str,
        done: &mut [FamilySync],
    ) -> Result<(), AgentError> {
        crate::sync::reconcile_families(
            &mut InNamespace::new(netns),
            done,
            |family| self.applied_plans.get(&family),
            &mut self.conntrack_pending,
            &self.metrics,
        )
    }
}

impl Backend for Ipvs {
    fn mode(&self) -> Mode {
        Mode::Ipvs
    }

    fn render(&self, state: &ClusterState, node: &NodeName) -> Result<String, AgentError> {
        let next = self.rendered(state, node)?;
        let mut out = format!("# {DUMMY_INTERFACE} addresses\n");
        for ip in &next.bound_addresses() {
            let (ip, prefix) = host(*ip);
            let _ = writeln!(out, "{ip}/{prefix}");
        }
        out.push_str("# ipvsadm-restore\n");
        for (_, ipvs) in &next.families {
            out.push_str(&ipvs.ipvsadm_input());
        }
        out.push_str(&next.rules.to_text());
        Ok(out)
    }

    fn sync(
        &mut self,
        netns: &str,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<SyncReport, AgentError> {
        let next = self.rendered(state, node)?;
        // The primary family's, as a single-family kube-proxy counts them.
        let health_checks = next
            .families
            .first()
            .map(|(plan, _)| plan.health_checks())
            .unwrap_or_default();
        let families: Vec<IpFamily> = next.families.iter().map(|(p, _)| p.family).collect();
        let kind = if self.full_next || self.applied.is_none() {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        let mut done = match self.apply(netns, next, kind) {
            Ok(done) => done,
            Err(e) => {
                self.full_next = true;
                for family in families {
                    self.metrics.restore_failed(family, kind);
                }
                return Err(e);
            }
        };
        self.full_next = false;
        for sync in &done {
            self.metrics.synced(sync.family, kind);
        }
        self.reconcile_conntrack(netns, &mut done)?;
        Ok(SyncReport {
            families: done,
            health_checks,
        })
    }

    fn request_full_sync(&mut self) {
        self.full_next = true;
    }

    fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    fn metrics(&self) -> &SyncMetrics {
        &self.metrics
    }
}

/// Whether an ipset is one of IPVS mode's ([`IpvsSet`], either family, or a scratch set of
/// its `ipset restore` payload).
pub fn is_ipvs_set(set: &str) -> bool {
    set.starts_with("KUBE-TMP-")
        || IpvsSet::ALL
            .iter()
            .any(|s| IpFamily::ALL.iter().any(|f| s.name(*f) == set))
}

/// Removes IPVS mode's own kernel objects from `netns`: every virtual server (a Node's
/// namespace holds only kube-netd's, as kube-proxy's clean-up assumes) and [`DUMMY_INTERFACE`].
/// Its ipsets and iptables chains are kube-netd's ([`crate::is_owned_set`],
/// [`crate::is_owned_chain`]) and go with [`crate::cleanup`]. Returns how many objects went.
pub fn remove_objects(netns: &str) -> Result<usize, AgentError> {
    let failed = |step| {
        move |source: KernelError| AgentError::CleanupFailed {
            namespace: netns.to_owned(),
            step,
            source,
        }
    };
    let mut removed = 0;
    match IpvsSocket::open(netns) {
        // Without IPVS in the kernel there is no virtual server to remove.
        Err(KernelError::IpvsUnavailable { .. }) => {}
        Err(e) => return Err(failed("open the IPVS netlink socket")(e)),
        Ok(mut socket) => {
            let services = socket
                .services()
                .map_err(failed("list IPVS virtual servers"))?;
            for service in &services {
                socket
                    .delete_service(service)
                    .map_err(failed("delete IPVS virtual servers"))?;
            }
            removed += services.len();
        }
    }
    if link::addresses(netns, DUMMY_INTERFACE).is_ok() {
        link::delete_link(netns, DUMMY_INTERFACE)
            .map_err(failed("delete the kube-ipvs0 interface"))?;
        removed += 1;
    }
    Ok(removed)
}

/// The sysctls to set for a kernel of `release` (`uname -r`).
fn sysctls(release: &str, strict_arp: bool) -> Vec<(&'static str, &'static str)> {
    let mut out = SYSCTLS.to_vec();
    // Kernels before 5.9 stall new connections that reuse a port of a closing one unless
    // connection reuse is off (kubernetes#81775); 5.9 fixed it.
    if parse_release(release).is_some_and(|v| v < (5, 9)) {
        out.push(("net.ipv4.vs.conn_reuse_mode", "0"));
    }
    if strict_arp {
        out.push(("net.ipv4.conf.all.arp_ignore", "1"));
        out.push(("net.ipv4.conf.all.arp_announce", "2"));
    }
    out
}

/// The running kernel's release; empty when it cannot be read (then no version-dependent
/// sysctl is set).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// `(major, minor)` of a release such as `6.1.0-28-amd64`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `ip` as a host address (`/32` or `/128`).
fn host(ip: IpAddr) -> (IpAddr, u8) {
    (ip, if ip.is_ipv4() { 32 } else { 128 })
}

/// The changes that bring `current` to `desired`: [`diff`]'s, plus the deletion of every
/// real server that has drained for `timeout` since `draining` recorded it.
fn changes(
    current: &BTreeMap<VirtualAddr, VirtualServer>,
    desired: &BTreeMap<VirtualAddr, VirtualServer>,
    draining: &BTreeMap<(VirtualAddr, SocketAddr), Instant>,
    now: Instant,
    timeout: Duration,
) -> Vec<IpvsChange> {
    let mut out = diff(current, desired);
    let decided: BTreeSet<(VirtualAddr, SocketAddr)> = out
        .iter()
        .filter_map(|c| match c {
            IpvsChange::RemoveReal(a, rs) | IpvsChange::QuiesceReal(a, rs) => Some((*a, *rs)),
            _ => None,
        })
        .collect();
    let expired = draining.iter().filter(|(key, since)| {
        let (addr, rs) = key;
        now.saturating_duration_since(**since) >= timeout
            && !decided.contains(key)
            && desired
                .get(addr)
                .is_some_and(|vs| !vs.real_servers.contains_key(rs))
            && current
                .get(addr)
                .is_some_and(|vs| vs.real_servers.contains_key(rs))
    });
    let forced: Vec<IpvsChange> = expired
        .map(|((addr, rs), _)| IpvsChange::RemoveReal(*addr, *rs))
        .collect();
    // Removals of whole virtual servers come last in diff's order; keep them there.
    let at = out
        .iter()
        .position(|c| matches!(c, IpvsChange::RemoveService(_)))
        .unwrap_or(out.len());
    out.splice(at..at, forced);
    out
}

/// Records which real servers drain after `changes` took `current` towards `desired` at
/// `now`: each of `current` that is not wanted and was not removed, from the first sync that
/// left it (a quiesced one, or one found at weight 0 after a restart); removed ones, and ones
/// wanted again or of virtual servers no longer wanted, no more.
fn track_draining(
    draining: &mut BTreeMap<(VirtualAddr, SocketAddr), Instant>,
    current: &BTreeMap<VirtualAddr, VirtualServer>,
    changes: &[IpvsChange],
    desired: &BTreeMap<VirtualAddr, VirtualServer>,
    now: Instant,
) {
    let removed: BTreeSet<(VirtualAddr, SocketAddr)> = changes
        .iter()
        .filter_map(|c| match c {
            IpvsChange::RemoveReal(a, rs) => Some((*a, *rs)),
            _ => None,
        })
        .collect();
    let left: BTreeSet<(VirtualAddr, SocketAddr)> = current
        .iter()
        .filter_map(|(addr, vs)| desired.get(addr).map(|want| (addr, vs, want)))
        .flat_map(|(addr, vs, want)| {
            vs.real_servers
                .keys()
                .filter(|rs| !want.real_servers.contains_key(*rs))
                .map(|rs| (*addr, *rs))
        })
        .filter(|key| !removed.contains(key))
        .collect();
    draining.retain(|key, _| left.contains(key));
    for key in left {
        draining.entry(key).or_insert(now);
    }
}

/// Sends one change to the kernel.
fn program(
    socket: &mut IpvsSocket,
    desired: &BTreeMap<VirtualAddr, VirtualServer>,
    change: &IpvsChange,
) -> Result<(), KernelError> {
    // Real-server messages name their virtual server by address, port and protocol only.
    let key = |addr: &VirtualAddr| match desired.get(addr) {
        Some(vs) => service(addr, vs),
        None => service(addr, &bare()),
    };
    match change {
        IpvsChange::AddService(addr, vs) => socket.add_service(&service(addr, vs)),
        IpvsChange::EditService(addr, vs) => socket.update_service(&service(addr, vs)),
        IpvsChange::AddReal(addr, rs, real) => socket.add_dest(&key(addr), &dest(rs, real.weight)),
        IpvsChange::EditReal(addr, rs, real) => {
            socket.update_dest(&key(addr), &dest(rs, real.weight))
        }
        IpvsChange::QuiesceReal(addr, rs) => socket.update_dest(&key(addr), &dest(rs, 0)),
        IpvsChange::RemoveReal(addr, rs) => socket.delete_dest(&key(addr), &dest(rs, 0)),
        IpvsChange::RemoveService(addr) => socket.delete_service(&key(addr)),
    }
}

/// A virtual server with no parameters of note, to name one the plan no longer has.
fn bare() -> VirtualServer {
    VirtualServer {
        scheduler: DEFAULT_SCHEDULER.to_owned(),
        persistence: None,
        source_hash: false,
        real_servers: BTreeMap::new(),
    }
}

/// The kernel's form of a rendered virtual server.
fn service(addr: &VirtualAddr, vs: &VirtualServer) -> IpvsService {
    let mut flags = 0;
    if vs.persistence.is_some() {
        flags |= FLAG_PERSISTENT;
    }
    if vs.source_hash {
        flags |= FLAG_SOURCE_PORT_HASH;
    }
    IpvsService {
        addr: addr.ip,
        port: addr.port,
        protocol: match addr.protocol {
            Protocol::Tcp => IpvsProtocol::Tcp,
            Protocol::Udp => IpvsProtocol::Udp,
            Protocol::Sctp => IpvsProtocol::Sctp,
        },
        scheduler: vs.scheduler.clone(),
        flags,
        timeout: vs.persistence.unwrap_or(0),
    }
}

/// The kernel's form of a real server.
fn dest(rs: &SocketAddr, weight: u32) -> IpvsDest {
    IpvsDest {
        addr: rs.ip(),
        port: rs.port(),
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

/// A virtual server as the kernel lists it (without its real servers).
fn virtual_server(service: &IpvsService) -> (VirtualAddr, VirtualServer) {
    let addr = VirtualAddr {
        ip: service.addr,
        port: service.port,
        protocol: match service.protocol {
            IpvsProtocol::Tcp => Protocol::Tcp,
            IpvsProtocol::Udp => Protocol::Udp,
            IpvsProtocol::Sctp => Protocol::Sctp,
        },
    };
    let vs = VirtualServer {
        scheduler: service.scheduler.clone(),
        persistence: (service.flags & FLAG_PERSISTENT != 0).then_some(service.timeout),
        source_hash: service.flags & FLAG_SOURCE_PORT_HASH != 0,
        real_servers: BTreeMap::new(),
    };
    (addr, vs)
}

/// Real servers as the kernel lists them, each with all its connections counted.
fn real_servers(dests: &[DestStatus]) -> BTreeMap<SocketAddr, RealServer> {
    dests
        .iter()
        .map(|d| {
            (
                SocketAddr::new(d.dest.addr, d.dest.port),
                RealServer {
                    weight: d.dest.weight,
                    connections: d.active_connections + d.inactive_connections,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = concat!(
        netd_testkit::node_1!(),
        r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
"#
    );

    fn vaddr(ip: &str, port: u16, protocol: Protocol) -> VirtualAddr {
        VirtualAddr {
            ip: ip.parse().expect("ip"),
            port,
            protocol,
        }
    }

    fn rs(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn vs(reals: &[(&str, u32, u32)]) -> VirtualServer {
        VirtualServer {
            real_servers: reals
                .iter()
                .map(|(a, weight, connections)| {
                    (
                        rs(a),
                        RealServer {
                            weight: *weight,
                            connections: *connections,
                        },
                    )
                })
                .collect(),
            ..bare()
        }
    }

    #[test]
    fn render_prints_addresses_virtual_servers_sets_and_dispatched_hooks() {
        let state = netd_testkit::state(CLUSTER);
        let text = Ipvs::default()
            .render(&state, &NodeName::new("node-1"))
            .expect("render");
        for want in [
            "# kube-ipvs0 addresses\n10.96.0.10/32\n# ipvsadm-restore\n",
            "-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1\n",
            "-A -t 172.18.0.2:30080 -s rr\n",
            "add KUBE-TMP-",
            "create KUBE-CLUSTER-IP hash:ip,port",
            "-A KUBE-NETD-INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER",
            "-I INPUT 1 -m comment --comment \"kube-netd\" -j KUBE-NETD-INPUT",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("-j KUBE-NETD-INPUT").count(),
            1,
            "one hook per built-in chain:\n{text}"
        );
    }

    #[test]
    fn rendered_and_dumped_virtual_servers_convert_both_ways() {
        let addr = vaddr("10.96.0.10", 53, Protocol::Udp);
        let server = VirtualServer {
            scheduler: "mh".to_owned(),
            persistence: Some(10800),
            source_hash: true,
            real_servers: BTreeMap::new(),
        };
        let mut kernel = service(&addr, &server);
        assert_eq!(kernel.protocol, IpvsProtocol::Udp);
        assert_eq!(kernel.flags, FLAG_PERSISTENT | FLAG_SOURCE_PORT_HASH);
        assert_eq!(kernel.timeout, 10800);
        // A dump also carries the hashed flag, which is the kernel's, not a parameter.
        kernel.flags |= netd_kernel::ipvs::FLAG_HASHED;
        assert_eq!(virtual_server(&kernel), (addr, server));
        let plain = service(&addr, &bare());
        assert_eq!((plain.flags, plain.timeout), (0, 0));
        assert_eq!(virtual_server(&plain).1.persistence, None);
    }

    #[test]
    fn dumped_real_servers_count_active_and_inactive_connections() {
        let status = DestStatus {
            dest: dest(&rs("10.244.1.2:8080"), 0),
            forward_method: 0,
            active_connections: 2,
            inactive_connections: 3,
        };
        let reals = real_servers(&[status]);
        assert_eq!(
            reals.get(&rs("10.244.1.2:8080")),
            Some(&RealServer {
                weight: 0,
                connections: 5
            })
        );
    }

    #[test]
    fn a_removed_tcp_real_server_drains_until_empty_or_its_deadline() {
        let web = vaddr("10.96.0.10", 80, Protocol::Tcp);
        let (a, b) = ("10.244.1.2:8080", "10.244.2.2:8080");
        let desired = BTreeMap::from([(web, vs(&[(a, 1, 0)]))]);
        let timeout = Duration::from_secs(900);
        let t0 = Instant::now();
        let mut draining = BTreeMap::new();

        // b leaves with connections: quiesced, and its drain starts now.
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 1, 4)]))]);
        let c = changes(&current, &desired, &draining, t0, timeout);
        assert_eq!(c, [IpvsChange::QuiesceReal(web, rs(b))]);
        track_draining(&mut draining, &current, &c, &desired, t0);
        assert_eq!(draining.get(&(web, rs(b))), Some(&t0));

        // Still busy before the deadline: left alone, and its start is kept.
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 0, 4)]))]);
        let t1 = t0 + Duration::from_secs(60);
        let c = changes(&current, &desired, &draining, t1, timeout);
        assert_eq!(c, []);
        track_draining(&mut draining, &current, &c, &desired, t1);
        assert_eq!(draining.get(&(web, rs(b))), Some(&t0));

        // Busy at the deadline: deleted anyway, and no longer tracked.
        let t2 = t0 + timeout;
        let c = changes(&current, &desired, &draining, t2, timeout);
        assert_eq!(c, [IpvsChange::RemoveReal(web, rs(b))]);
        track_draining(&mut draining, &current, &c, &desired, t2);
        assert!(draining.is_empty(), "{draining:?}");
    }

    #[test]
    fn a_drained_or_wanted_again_real_server_stops_draining() {
        let web = vaddr("10.96.0.10", 80, Protocol::Tcp);
        let (a, b) = ("10.244.1.2:8080", "10.244.2.2:8080");
        let t0 = Instant::now();
        let timeout = Duration::from_secs(900);
        let key = (web, rs(b));

        // Found at weight 0 with connections (say after a restart): tracked from now.
        let desired = BTreeMap::from([(web, vs(&[(a, 1, 0)]))]);
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 0, 1)]))]);
        let mut draining = BTreeMap::new();
        let c = changes(&current, &desired, &draining, t0, timeout);
        track_draining(&mut draining, &current, &c, &desired, t0);
        assert_eq!(draining.get(&key), Some(&t0));

        // Its last connection closes: removed before the deadline.
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 0, 0)]))]);
        let c = changes(&current, &desired, &draining, t0, timeout);
        assert_eq!(c, [IpvsChange::RemoveReal(web, rs(b))]);
        track_draining(&mut draining, &current, &c, &desired, t0);
        assert!(draining.is_empty());

        // Wanted again while draining: weight back to 1, no longer tracked.
        draining.insert(key, t0);
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 0, 1)]))]);
        let desired = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 1, 0)]))]);
        let c = changes(&current, &desired, &draining, t0 + timeout, timeout);
        assert_eq!(
            c,
            [IpvsChange::EditReal(web, rs(b), RealServer::IN_USE)],
            "an expired drain never removes a wanted real server"
        );
        track_draining(&mut draining, &current, &c, &desired, t0);
        assert!(draining.is_empty());
    }

    #[test]
    fn forced_removals_come_before_virtual_server_removals() {
        let web = vaddr("10.96.0.10", 80, Protocol::Tcp);
        let old = vaddr("10.96.0.11", 80, Protocol::Tcp);
        let (a, b) = ("10.244.1.2:8080", "10.244.2.2:8080");
        let desired = BTreeMap::from([(web, vs(&[(a, 1, 0)]))]);
        let current = BTreeMap::from([(web, vs(&[(a, 1, 0), (b, 0, 3)])), (old, vs(&[]))]);
        let t0 = Instant::now();
        let draining = BTreeMap::from([((web, rs(b)), t0)]);
        let c = changes(&current, &desired, &draining, t0, Duration::ZERO);
        assert_eq!(
            c,
            [
                IpvsChange::RemoveReal(web, rs(b)),
                IpvsChange::RemoveService(old)
            ]
        );
    }

    #[test]
    fn sysctls_follow_the_kernel_release_and_strict_arp() {
        let keys = |release, strict| -> Vec<&str> {
            sysctls(release, strict)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert!(keys("5.4.0-150-generic", false).contains(&"net.ipv4.vs.conn_reuse_mode"));
        assert!(!keys("5.9.0", false).contains(&"net.ipv4.vs.conn_reuse_mode"));
        assert!(!keys("6.1.0-28-amd64\n", false).contains(&"net.ipv4.vs.conn_reuse_mode"));
        assert_eq!(
            keys("", false).len(),
            SYSCTLS.len(),
            "an unknown release adds nothing"
        );
        let strict = keys("6.1.0", true);
        assert!(strict.contains(&"net.ipv4.conf.all.arp_ignore"));
        assert!(strict.contains(&"net.ipv4.conf.all.arp_announce"));
        assert_eq!(parse_release("4.19.0-27-amd64"), Some((4, 19)));
        assert_eq!(parse_release("garbage"), None);
    }

    /// A dual-stack Node: a NodePort Service of both families (its IPv6 endpoint on the
    /// Node), a UDP Service of IPv6 only, and a NetworkPolicy.
    const DUAL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:172:18::2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: dns6, namespace: x}
spec:
  ipFamilies: [IPv6]
  clusterIP: "fd00:10:96::20"
  clusterIPs: ["fd00:10:96::20"]
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-4, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: web-6, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: ["fd00:10:244:1::2"], nodeName: node-1, conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv6
metadata: {name: dns6-1, namespace: x, labels: {kubernetes.io/service-name: dns6}}
ports: [{port: 53, protocol: UDP}]
endpoints: [{addresses: ["fd00:10:244:1::9"], nodeName: node-1, conditions: {ready: true}}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: web, image: echo}]}
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: "fd00:10:244:1::2"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-x, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]
"#;

    /// `kube-netd render --mode ipvs` of an IPv6-only and a dual-stack cluster:
    /// `tests/golden/ipvs/<cluster>.rules`, rewritten by `UPDATE_GOLDEN=1`.
    #[test]
    fn ipv6_and_dual_stack_renders_match_their_goldens() {
        use netd_model::{ClusterConfig, IpFamilies};
        let node = NodeName::new("node-1");
        let v6_only = DUAL
            .replace(
                "podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, ",
                "podCIDRs: [",
            )
            .replace("{type: InternalIP, address: 172.18.0.2}, ", "")
            .replace(
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
                "  ipFamilies: [IPv6]\n",
            )
            .replace(
                "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]",
                "  clusterIP: \"fd00:10:96::10\"\n  clusterIPs: [\"fd00:10:96::10\"]",
            )
            .replace(
                "status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, ",
                "status: {podIP: \"fd00:10:244:1::2\", podIPs: [",
            );
        let v6_only: String = v6_only
            .split("---\n")
            .filter(|doc| !doc.contains("addressType: IPv4"))
            .collect::<Vec<_>>()
            .join("---\n");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ipvs");
        for (name, yaml, families) in [
            ("ipv6", v6_only.as_str(), IpFamilies::Ipv6),
            ("dual", DUAL, IpFamilies::Dual),
        ] {
            let state = netd_testkit::state_with(yaml, ClusterConfig::for_families(families));
            let got = Ipvs::default().render(&state, &node).expect("render");
            let file = dir.join(format!("{name}.rules"));
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(&dir).expect("golden dir");
                std::fs::write(&file, &got).expect("write golden");
                continue;
            }
            let want = std::fs::read_to_string(&file).unwrap_or_default();
            assert_eq!(got, want, "{name}: UPDATE_GOLDEN=1 to accept");
        }
    }

    #[test]
    fn every_family_of_the_cluster_gets_its_servers_sets_and_rules() {
        use netd_model::{ClusterConfig, IpFamilies};
        let state = netd_testkit::state_with(DUAL, ClusterConfig::for_families(IpFamilies::Dual));
        let next = Ipvs::default()
            .rendered(&state, &NodeName::new("node-1"))
            .expect("render");
        let families: Vec<IpFamily> = next.families.iter().map(|(p, _)| p.family).collect();
        assert_eq!(families, [IpFamily::V4, IpFamily::V6]);
        let servers: Vec<String> = next
            .virtual_servers()
            .iter()
            .map(|(addr, vs)| {
                let reals: Vec<String> = vs.real_servers.keys().map(|r| r.to_string()).collect();
                format!("{addr} -> {}", reals.join(","))
            })
            .collect();
        assert_eq!(
            servers,
            [
                "-t 10.96.0.10:80 -> 10.244.1.2:8080",
                "-t 172.18.0.2:30080 -> 10.244.1.2:8080",
                "-t [fd00:10:96::10]:80 -> [fd00:10:244:1::2]:8080",
                "-u [fd00:10:96::20]:53 -> [fd00:10:244:1::9]:53",
                "-t [fd00:172:18::2]:30080 -> [fd00:10:244:1::2]:8080",
            ]
        );
        let bound: Vec<String> = next
            .bound_addresses()
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(bound, ["10.96.0.10", "fd00:10:96::10", "fd00:10:96::20"]);
        assert!(next.rules.sets.contains("KUBE-CLUSTER-IP"));
        assert!(next.rules.sets.contains("KUBE-6-CLUSTER-IP"));
        let v6 = next.rules.ip6tables.as_deref().expect("ip6tables payload");
        assert!(v6.contains("KUBE-6-CLUSTER-IP"), "{v6}");
        assert!(v6.contains("KNP-"), "the IPv6 policy chains: {v6}");
        assert!(!v6.contains("10.96.0.10"), "{v6}");
        assert_eq!(next.rules.hooks6.len(), next.rules.hooks.len());
        let text = next.rules.to_text();
        assert!(text.contains("# ip6tables-restore --noflush\n"), "{text}");
        assert_eq!(
            text.matches("-I INPUT 1 -m comment --comment \"kube-netd\" -j KUBE-NETD-INPUT")
                .count(),
            2,
            "one INPUT hook per family:\n{text}"
        );
    }

    #[test]
    fn a_family_the_cluster_no_longer_has_is_pruned_once() {
        use netd_model::{ClusterConfig, IpFamilies};
        let node = NodeName::new("node-1");
        let dual = netd_testkit::state_with(DUAL, ClusterConfig::for_families(IpFamilies::Dual));
        let v4 = netd_testkit::state(CLUSTER);
        let mut backend = Ipvs::default();
        assert_eq!(
            backend
                .rendered(&v4, &node)
                .expect("render")
                .rules
                .ip6tables,
            None
        );
        let synced = backend.rendered(&dual, &node).expect("render");
        for (plan, _) in synced.families {
            backend.applied_plans.insert(plan.family, plan);
        }
        let next = backend.rendered(&v4, &node).expect("render");
        assert_eq!(next.rules.ip6tables.as_deref(), Some(""));
        assert!(next.rules.hooks6.is_empty());
        assert_eq!(next.families.len(), 1);
    }

    #[test]
    fn ipvs_sets_are_owned_and_others_are_not() {
        assert!(is_ipvs_set("KUBE-CLUSTER-IP"));
        assert!(is_ipvs_set("KUBE-6-CLUSTER-IP"));
        assert!(is_ipvs_set("KUBE-TMP-ABCDEFGHIJKLMNOP"));
        assert!(!is_ipvs_set("KUBE-CLUSTER-IPX"));
        assert!(!is_ipvs_set("cilium-set"));
        assert!(crate::is_owned_set("KUBE-NODE-PORT-TCP"));
        assert!(crate::is_owned_chain("KUBE-IPVS-FILTER"));
    }
}
