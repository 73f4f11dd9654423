//! [`SyncEngine`]: the stateful side of a Node's agent — full and partial syncs as
//! kube-proxy does them (reference A.3, A.10), and the UDP/SCTP conntrack reconciler after
//! each successful sync (A.11).
//!
//! The engine remembers the [`FamilyRules`] it last applied. The first sync after start, and
//! the first after a failure, is **full**: every chain of ours is written. After that a sync is
//! **partial**: the filter table, the top-level and policy chains are written every time, but
//! of the per-service nat chains only those of Services that changed (their plan, or their
//! rendered chains) — and service chains no longer in use are flushed and deleted in the same
//! transaction. Nothing is flushed before the first sync: it rewrites our chains atomically,
//! so an agent restart never leaves a gap, and established connections keep their conntrack
//! entries.
//!
//! Each sync is one `ipset restore`, then one `iptables-restore --noflush` per IP family
//! (`ip6tables-restore` for IPv6), then the removal of stale sets. The engine also remembers
//! the [`IpSets`] it last applied: a full sync writes every set whole (refilled through a
//! scratch set swapped in); a partial one only the change from those — a new or redefined
//! set whole, an existing one's new members added and then its old ones deleted, an
//! unchanged one not at all. All kernel work goes
//! through an [`Applier`], so the decisions can be tested without a kernel; [`InNamespace`]
//! is the real one.

use std::collections::{BTreeMap, BTreeSet};

use netd_kernel::nftnl::conntrack::Flow;
use netd_kernel::{KernelError, netns, nftnl, rules as kernel};
use netd_model::ServiceRef;
use netd_proxy::{IpFamily, ServicePlan};
use netd_render::{ChainName, IpSets, SyncScope};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::apply::{Extras, Saved, declared_chains, hook_lines, with_extras};
use crate::conntrack::{self, Frontend, Selection};
use crate::error::AgentError;
use crate::rules::{FamilyRules, Hook, Lineage, NodeRules};
use crate::{is_owned_chain, is_owned_set};

/// The kernel operations a sync needs, inside one network namespace.
pub trait Applier {
    /// The namespace, for error messages.
    fn namespace(&self) -> &str;
    /// `ipset restore -exist` of `payload`.
    fn restore_sets(&mut self, payload: &str) -> Result<(), KernelError>;
    /// The names of the ipsets.
    fn list_sets(&mut self) -> Result<Vec<String>, KernelError>;
    /// `iptables-save` (`ip6tables-save` for IPv6).
    fn save(&mut self, family: IpFamily) -> Result<String, KernelError>;
    /// `iptables-restore --noflush` (`ip6tables-restore` for IPv6) of `payload`, atomically.
    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError>;
    /// The conntrack entries of one family that `selection` names (filtered in the kernel).
    fn list_conntrack(
        &mut self,
        family: IpFamily,
        selection: Selection,
    ) -> Result<Vec<Flow>, KernelError>;
    /// Deletes these conntrack entries; returns how many the kernel deleted.
    fn delete_conntrack(&mut self, flows: &[Flow]) -> Result<usize, KernelError>;
}

/// The real [`Applier`]: the standard tools, run inside a named network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InNamespace {
    name: String,
}

impl InNamespace {
    /// The namespace `name` (`/run/netns/NAME`).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    fn conntrack_failed(&self, source: nftnl::NftError) -> KernelError {
        KernelError::ConntrackFailed {
            namespace: self.name.clone(),
            source: Box::new(source),
        }
    }
}

impl Applier for InNamespace {
    fn namespace(&self) -> &str {
        &self.name
    }

    fn restore_sets(&mut self, payload: &str) -> Result<(), KernelError> {
        kernel::ipset_restore(&self.name, payload)
    }

    fn list_sets(&mut self) -> Result<Vec<String>, KernelError> {
        kernel::ipset_list(&self.name)
    }

    fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
        match family {
            IpFamily::V4 => kernel::iptables_save(&self.name),
            IpFamily::V6 => {
                let out = netns::exec(&self.name, &["ip6tables-save"])?;
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        }
    }

    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
        match family {
            IpFamily::V4 => kernel::iptables_restore(&self.name, payload),
            IpFamily::V6 => kernel::ip6tables_restore(&self.name, payload),
        }
    }

    fn list_conntrack(
        &mut self,
        family: IpFamily,
        selection: Selection,
    ) -> Result<Vec<Flow>, KernelError> {
        let family = match family {
            IpFamily::V4 => nftnl::Family::Ip,
            IpFamily::V6 => nftnl::Family::Ip6,
        };
        let listed = match selection {
            Selection::Protocol(protocol) => nftnl::conntrack::list_protocol(
                &self.name,
                family,
                conntrack::protocol_number(protocol),
                None,
            ),
            Selection::To(Frontend {
                protocol,
                ip: None,
                port,
            }) => nftnl::conntrack::list_protocol(
                &self.name,
                family,
                conntrack::protocol_number(protocol),
                Some(port),
            ),
            Selection::To(Frontend {
                protocol,
                ip: Some(ip),
                port,
            }) => nftnl::conntrack::list(
                &self.name,
                &nftnl::conntrack::FlowFilter {
                    protocol: conntrack::protocol_number(protocol),
                    orig_dst: std::net::SocketAddr::new(ip, port),
                    reply_src: None,
                },
            ),
        };
        listed.map_err(|e| self.conntrack_failed(e))
    }

    fn delete_conntrack(&mut self, flows: &[Flow]) -> Result<usize, KernelError> {
        nftnl::conntrack::delete(&self.name, flows).map_err(|e| self.conntrack_failed(e))
    }
}

/// Whether a sync wrote every chain or only those that changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncKind {
    /// Every chain of ours.
    Full,
    /// The top-level, filter and policy chains, and the service chains of changed Services.
    Partial,
}

impl SyncKind {
    /// `full` or `partial` (the metrics' label value).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        }
    }
}

/// What one sync did in one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilySync {
    /// The family.
    pub family: IpFamily,
    /// Full or partial.
    pub kind: SyncKind,
    /// The Services whose chains were written (every Service for a full sync).
    pub services: BTreeSet<ServiceRef>,
    /// Unused service chains flushed and deleted.
    pub deleted_chains: usize,
    /// Stale UDP/SCTP conntrack entries deleted after the rules were in place.
    pub conntrack_deleted: usize,
}

/// What one successful sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Per family written, IPv4 first.
    pub families: Vec<FamilySync>,
    /// The health-check node ports of the plan just applied (its primary family's, as a
    /// single-family kube-proxy counts them): Service → (port, local endpoints).
    pub health_checks: BTreeMap<ServiceRef, (u16, usize)>,
}

/// The engine's counters, to register in a Prometheus [`Registry`] the caller owns
/// ([`SyncEngine::register`]) and to read back.
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    syncs: Family<[(&'static str, &'static str); 2], Counter>,
    restore_failures: Family<[(&'static str, &'static str); 2], Counter>,
    conntrack_deleted: Family<[(&'static str, &'static str); 1], Counter>,
}

impl SyncMetrics {
    /// The counters as OpenMetrics text, named as [`SyncEngine::register`] names them with
    /// the prefix `kubeproxy` (`kubeproxy_sync_proxy_rules_total{family="ipv4",scope="full"}`).
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("kubeproxy");
        self.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sync_proxy_rules",
            "Successful syncs of the node's rules, by IP family and scope (full or partial)",
            self.syncs.clone(),
        );
        registry.register(
            "sync_proxy_rules_restore_failures",
            "Failed iptables-restore runs, by IP family and scope; each forces a full sync",
            self.restore_failures.clone(),
        );
        registry.register(
            "conntrack_reconciler_deleted_entries",
            "Stale UDP/SCTP conntrack entries deleted after syncs",
            self.conntrack_deleted.clone(),
        );
    }

    /// Counts a successful sync of `family`.
    pub(crate) fn synced(&self, family: IpFamily, kind: SyncKind) {
        self.syncs.get_or_create(&sync_labels(family, kind)).inc();
    }

    /// Counts a failed load of `family`'s rules.
    pub(crate) fn restore_failed(&self, family: IpFamily, kind: SyncKind) {
        self.restore_failures
            .get_or_create(&sync_labels(family, kind))
            .inc();
    }

    /// Counts stale conntrack entries deleted in `family`.
    pub(crate) fn conntrack_deleted_add(&self, family: IpFamily, n: usize) {
        self.conntrack_deleted
            .get_or_create(&[("family", family_label(family))])
            .inc_by(n as u64);
    }

    /// Successful syncs of `family` of this kind.
    pub fn syncs(&self, family: IpFamily, kind: SyncKind) -> u64 {
        self.syncs.get_or_create(&sync_labels(family, kind)).get()
    }

    /// Failed rule restores of `family` while attempting a sync of this kind.
    pub fn restore_failures(&self, family: IpFamily, kind: SyncKind) -> u64 {
        self.restore_failures
            .get_or_create(&sync_labels(family, kind))
            .get()
    }

    /// Stale conntrack entries deleted in `family`.
    pub fn conntrack_deleted(&self, family: IpFamily) -> u64 {
        self.conntrack_deleted
            .get_or_create(&[("family", family_label(family))])
            .get()
    }
}

/// Syncs one Node's [`NodeRules`] into its namespace, full or partial as kube-proxy decides,
/// then deletes stale UDP/SCTP conntrack entries.
#[derive(Debug, Default)]
pub struct SyncEngine {
    /// What the last successful sync applied, per family.
    applied: BTreeMap<IpFamily, FamilyRules>,
    /// What of ours the kernel held after the last successful sync, per family
    /// ([`Saved::ours`]): what a partial sync reads instead of the kernel, and updates.
    kernel: BTreeMap<IpFamily, Saved>,
    /// The [`Lineage::id`] of the rules last applied: a partial sync of rules made from
    /// them takes the changed Services from their lineage.
    applied_id: Option<u64>,
    /// The ipsets the last successful sync left: what a partial sync's `ipset restore` is
    /// the change from.
    sets: Option<IpSets>,
    /// Set after a failed sync (the kernel may hold anything) or on request: write everything.
    full_next: bool,
    /// What each family's next conntrack reconcile looks at (kept after a failed one).
    conntrack_pending: BTreeMap<IpFamily, conntrack::Pending>,
    metrics: SyncMetrics,
}

impl SyncEngine {
    /// An engine that has synced nothing yet: its first sync is full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the engine's counters in `registry`: `sync_proxy_rules` and
    /// `sync_proxy_rules_restore_failures` (labels `family`, `scope` = `full`|`partial`) and
    /// `conntrack_reconciler_deleted_entries` (label `family`), each a `_total` counter.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &SyncMetrics {
        &self.metrics
    }

    /// Makes the next sync full (kube-proxy does one periodically).
    pub fn request_full_sync(&mut self) {
        self.full_next = true;
    }

    /// What the next sync of `current`'s family writes: everything, or the Services whose
    /// plan or rendered chains differ from those last applied — as `lineage` says when it
    /// is about the rules last applied, else by comparing every plan and chain.
    pub fn scope(&self, current: &FamilyRules, lineage: Option<&Lineage>) -> SyncScope {
        let Some(previous) = self
            .applied
            .get(&current.family())
            .filter(|_| !self.full_next)
        else {
            return SyncScope::Full;
        };
        if let Some(changed) = self.known_changes(lineage, current.family()) {
            return SyncScope::Partial(changed.clone());
        }
        let mut changed = current.plan.changed_services(&previous.plan);
        changed.extend(changed_chains(previous, current));
        SyncScope::Partial(changed)
    }

    /// The Services of `family` that `lineage` says changed since the rules last applied.
    fn known_changes<'l>(
        &self,
        lineage: Option<&'l Lineage>,
        family: IpFamily,
    ) -> Option<&'l BTreeSet<ServiceRef>> {
        lineage?.changed_since(self.applied_id?, family)
    }

    /// Applies `rules` through `applier`. On a failed restore the error is returned and the
    /// next sync is full; the caller retries. A failed conntrack clean-up is returned after the
    /// rules are in place, and is run again after the next sync.
    pub fn sync(
        &mut self,
        applier: &mut dyn Applier,
        rules: NodeRules,
    ) -> Result<SyncReport, AgentError> {
        let kept = std::mem::take(&mut self.kernel);
        let (mut report, kernel) = match self.write(applier, &rules, kept) {
            Ok(done) => done,
            Err(e) => {
                // The kernel may hold anything now: write everything next time.
                self.full_next = true;
                return Err(e);
            }
        };
        self.kernel = kernel;
        let applied_before = self.applied_id;
        self.applied_id = rules.lineage.as_ref().map(|l| l.id);

        // The rules are in: record them, then clean conntrack up against the new plans.
        self.full_next = false;
        for done in &report.families {
            self.metrics.synced(done.family, done.kind);
        }
        self.applied
            .retain(|family, _| rules.family(*family).is_some());
        self.conntrack_pending
            .retain(|family, _| rules.family(*family).is_some());
        self.sets = Some(rules.ipset);
        for family in rules.families {
            let key = family.family();
            let previous = self.applied.get(&key).map(|p| &p.plan);
            let pending = self.conntrack_pending.entry(key).or_default();
            // The lineage says which Services' ports differ: look at theirs alone.
            let known =
                applied_before.and_then(|base| rules.lineage.as_ref()?.changed_since(base, key));
            match (previous, known) {
                (Some(previous), Some(changed)) => {
                    let ports = |plan: &ServicePlan| {
                        plan.ports_of_services(changed)
                            .map(|(n, p)| (n.clone(), p.clone()))
                            .collect()
                    };
                    pending.add_replaced(&ports(previous), &ports(&family.plan));
                }
                _ => pending.add(previous, &family.plan),
            }
            self.applied.insert(key, family);
        }
        reconcile_families(
            applier,
            &mut report.families,
            |family| self.applied.get(&family).map(|applied| &applied.plan),
            &mut self.conntrack_pending,
            &self.metrics,
        )?;
        Ok(report)
    }

    /// The kernel part of a sync: sets, one restore per family, stale sets. Returns what was
    /// done and what of ours each family's tables now hold.
    fn write(
        &self,
        applier: &mut dyn Applier,
        rules: &NodeRules,
        mut kept: BTreeMap<IpFamily, Saved>,
    ) -> Result<(SyncReport, BTreeMap<IpFamily, Saved>), AgentError> {
        let ns = applier.namespace().to_owned();
        let failed = |step: &'static str| {
            let ns = ns.clone();
            move |source| AgentError::ApplyFailed {
                namespace: ns,
                step,
                source,
            }
        };
        let sets = match self.sets.as_ref().filter(|_| !self.full_next) {
            Some(applied) => rules.ipset.delta_input(applied),
            None => rules.ipset.full_input(),
        };
        if !sets.is_empty() {
            applier.restore_sets(&sets).map_err(failed("load ipsets"))?;
        }
        let mut report = SyncReport::default();
        let mut kernel = BTreeMap::new();
        for family in IpFamily::ALL {
            let ours = rules.family(family);
            let (payload, hooks) = rules.opaque(family);
            // Pruning always visits IPv4, whose chains every mode has.
            let opaque =
                payload.is_some() || !hooks.is_empty() || (family == IpFamily::V4 && rules.prune);
            if ours.is_none() && !opaque && !self.applied.contains_key(&family) {
                continue;
            }
            let scope = ours.map_or(SyncScope::Full, |f| self.scope(f, rules.lineage.as_ref()));
            let kind = match scope {
                SyncScope::Full => SyncKind::Full,
                SyncScope::Partial(_) => SyncKind::Partial,
            };
            let known = kept.remove(&family).filter(|_| kind == SyncKind::Partial);
            let (deleted_chains, held) =
                self.write_family(applier, rules, family, &scope, known)?;
            kernel.insert(family, held);
            report.families.push(FamilySync {
                family,
                kind,
                services: match (scope, ours) {
                    (SyncScope::Partial(changed), _) => changed,
                    (SyncScope::Full, Some(f)) => {
                        f.plan.ports.keys().map(|n| n.service.clone()).collect()
                    }
                    (SyncScope::Full, None) => BTreeSet::new(),
                },
                deleted_chains,
                conntrack_deleted: 0,
            });
        }
        if rules.prune {
            let stale: Vec<String> = applier
                .list_sets()
                .map_err(failed("list ipsets"))?
                .into_iter()
                .filter(|s| is_owned_set(s) && !rules.sets.contains(s))
                .collect();
            if !stale.is_empty() {
                let destroy = netd_render::policy::destroy_sets_input(&stale);
                applier
                    .restore_sets(&destroy)
                    .map_err(failed("destroy stale ipsets"))?;
            }
        }
        Ok((report, kernel))
    }

    /// Writes one family's chains in one restore, on top of what of ours the kernel holds
    /// (`known`, for a partial sync; else read); returns how many service chains it deleted
    /// and what of ours the family's tables hold afterwards.
    fn write_family(
        &self,
        applier: &mut dyn Applier,
        rules: &NodeRules,
        family: IpFamily,
        scope: &SyncScope,
        known: Option<Saved>,
    ) -> Result<(usize, Saved), AgentError> {
        let kind = match scope {
            SyncScope::Full => SyncKind::Full,
            SyncScope::Partial(_) => SyncKind::Partial,
        };
        let ns = applier.namespace().to_owned();
        let (read, restore) = match family {
            IpFamily::V4 => ("read iptables", "restore iptables"),
            IpFamily::V6 => ("read ip6tables", "restore ip6tables"),
        };
        let failed = |step| {
            let ns = ns.clone();
            move |source| AgentError::ApplyFailed {
                namespace: ns,
                step,
                source,
            }
        };
        // A full sync reads the kernel; a partial one trusts what the last sync left there
        // (kube-proxy, at scale, likewise reads the tables back only now and then).
        let (saved, mut after) = match known {
            Some(known) => (None, known),
            None => {
                let saved = Saved::parse(&applier.save(family).map_err(failed(read))?);
                let ours = saved.ours();
                (Some(saved), ours)
            }
        };
        let saved = saved.as_ref().unwrap_or(&after);
        let ours = rules.family(family);
        let mut payload = String::new();
        let mut hooks: Vec<&Hook> = Vec::new();
        let mut deleted = 0;
        if let Some(f) = ours {
            let stale = self.stale_chains(f, rules.lineage.as_ref(), saved);
            deleted = stale.len();
            payload.push_str(&f.rules.restore_deleting(&f.plan, scope, stale));
            hooks.extend(&f.hooks);
        }
        let (opaque, opaque_hooks) = rules.opaque(family);
        payload.push_str(opaque.unwrap_or_default());
        hooks.extend(opaque_hooks);
        let mut extras = Extras::new();
        if rules.prune {
            // Our chains nothing declares any more. Unused service chains are deleted by
            // the payload itself; those not written by a partial sync are still in use.
            let declared = declared_chains(&payload);
            let services_handled = ours.is_some();
            saved.remove_chains(&mut extras, !services_handled, |table, chain| {
                is_owned_chain(chain) && !declared.contains(&(table.to_owned(), chain.to_owned()))
            });
        }
        let missing: Vec<&Hook> = hooks
            .into_iter()
            .filter(|h| !saved.has_jump(h.table.as_str(), &h.chain, &h.target))
            .collect();
        for (table, lines) in hook_lines(&missing) {
            extras.entry(table).or_default().extend(lines);
        }
        let merged = with_extras(&payload, &extras);
        if !merged.is_empty() {
            applier.restore(family, &merged).map_err(|source| {
                self.metrics.restore_failed(family, kind);
                failed(restore)(source)
            })?;
        }
        after.apply_ours(&merged);
        Ok((deleted, after))
    }

    /// The service chains of `current` the kernel (`saved`) has and `current` no longer
    /// uses. When `lineage` names the changed Services since the rules last applied, only
    /// their chains in those rules are looked at: after every sync the kernel's service
    /// chains are exactly the applied rules' (a sync writes the chains of the Services it
    /// writes and deletes the unused ones), so the result is the same.
    fn stale_chains(
        &self,
        current: &FamilyRules,
        lineage: Option<&Lineage>,
        saved: &Saved,
    ) -> BTreeSet<ChainName> {
        let family = current.family();
        let known = self
            .known_changes(lineage, family)
            .filter(|_| !self.full_next);
        let (Some(changed), Some(previous)) = (known, self.applied.get(&family)) else {
            return current.rules.stale_chains(&saved.service_chains());
        };
        let chains = previous.rules.chains_of(&previous.plan, changed);
        chains
            .into_iter()
            .filter(|c| current.rules.owner(c.as_str()).is_none())
            .collect()
    }
}

/// The Services whose rendered per-service chains differ between two rule sets (a chain
/// added, removed or with other rules): catches what a plan comparison cannot see, such as
/// a change of rendering options.
pub(crate) fn changed_chains(
    previous: &FamilyRules,
    current: &FamilyRules,
) -> BTreeSet<ServiceRef> {
    let nat = netd_render::Table::Nat;
    // Unordered, by hashed lookups: the result is a set, and at 10,000 Services sorting
    // the 130,000 chain names (scattered strings) cost more than comparing the rules.
    let mut changed = BTreeSet::new();
    for (chain, owner) in current.rules.service_chains_unordered() {
        if previous.rules.ruleset.chain(nat, chain.as_str())
            != current.rules.ruleset.chain(nat, chain.as_str())
        {
            changed.insert(owner.clone());
        }
    }
    for (chain, owner) in previous.rules.service_chains_unordered() {
        if current.rules.owner(chain.as_str()).is_none() {
            changed.insert(owner.clone());
        }
    }
    changed
}

/// Deletes the stale UDP/SCTP conntrack entries of each family in `done` that has work in
/// `pending`, against that family's applied plan (`plans`). Every family is tried; one that
/// succeeds has its work cleared, and its count in `conntrack_deleted` and the metrics; the
/// first failure is returned, and that family's work stays pending for the next sync.
pub(crate) fn reconcile_families<'p>(
    applier: &mut dyn Applier,
    done: &mut [FamilySync],
    plans: impl Fn(IpFamily) -> Option<&'p ServicePlan>,
    pending: &mut BTreeMap<IpFamily, conntrack::Pending>,
    metrics: &SyncMetrics,
) -> Result<(), AgentError> {
    let mut failure = None;
    for sync in done {
        let family = sync.family;
        let (Some(plan), Some(work)) = (plans(family), pending.get(&family)) else {
            continue;
        };
        if work.is_nothing() {
            continue;
        }
        match reconcile(applier, family, plan, work) {
            Ok(deleted) => {
                sync.conntrack_deleted = deleted;
                pending.remove(&family);
                metrics.conntrack_deleted_add(family, deleted);
            }
            Err(source) => {
                failure.get_or_insert(AgentError::ConntrackCleanupFailed {
                    namespace: applier.namespace().to_owned(),
                    family,
                    source,
                });
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Deletes the UDP/SCTP conntrack entries of `family` that `plan` makes stale among those
/// `pending` names; returns how many went.
pub(crate) fn reconcile(
    applier: &mut dyn Applier,
    family: IpFamily,
    plan: &ServicePlan,
    pending: &conntrack::Pending,
) -> Result<usize, KernelError> {
    let mut listed = Vec::new();
    match pending {
        conntrack::Pending::Nothing => return Ok(0),
        conntrack::Pending::All => {
            for protocol in conntrack::protocols(plan) {
                listed.extend(applier.list_conntrack(family, Selection::Protocol(protocol))?);
            }
        }
        conntrack::Pending::Frontends(frontends) => {
            for frontend in frontends {
                listed.extend(applier.list_conntrack(family, Selection::To(*frontend))?);
            }
            // A nodePort's listing can hold entries another frontend's holds too.
            listed.sort();
            listed.dedup();
        }
    }
    // One datagram of exact-tuple deletions for every stale entry of the family.
    applier.delete_conntrack(&conntrack::stale_entries(plan, &listed))
}

fn family_label(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

fn sync_labels(family: IpFamily, kind: SyncKind) -> [(&'static str, &'static str); 2] {
    [("family", family_label(family)), ("scope", kind.as_str())]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use netd_model::{ClusterConfig, ClusterState, NodeName, Protocol};
    use pretty_assertions::assert_eq;

    use netd_render::chains::ServiceChains;
    use netd_render::{IpSet, SetDefinition};

    use super::*;
    use crate::NodeProgrammer;

    /// A kernel in memory: iptables tables per family, as `iptables-restore --noflush`
    /// changes them, the `ipset restore` payloads it was given, a conntrack table, and
    /// switches to make the next restore of either kind fail.
    #[derive(Default)]
    struct FakeKernel {
        tables: BTreeMap<(IpFamily, String), BTreeMap<String, Vec<String>>>,
        restores: Vec<(IpFamily, String)>,
        fail_next_restore: bool,
        set_restores: Vec<String>,
        fail_next_set_restore: bool,
        conntrack: Vec<Flow>,
        conntrack_lists: usize,
        selections: Vec<Selection>,
        fail_next_conntrack: bool,
        deleted: Vec<Flow>,
        saves: usize,
    }

    const BUILTIN: [&str; 5] = ["INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"];

    impl FakeKernel {
        fn chains(&self, family: IpFamily, table: &str) -> Vec<String> {
            self.tables
                .get(&(family, table.to_owned()))
                .map(|t| {
                    t.keys()
                        .filter(|c| !BUILTIN.contains(&c.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        }

        fn state(&self) -> &BTreeMap<(IpFamily, String), BTreeMap<String, Vec<String>>> {
            &self.tables
        }
    }

    impl Applier for FakeKernel {
        fn namespace(&self) -> &str {
            "fake"
        }
        fn restore_sets(&mut self, payload: &str) -> Result<(), KernelError> {
            self.set_restores.push(payload.to_owned());
            if std::mem::take(&mut self.fail_next_set_restore) {
                return Err(KernelError::EmptyCommand {
                    namespace: "fake".into(),
                });
            }
            Ok(())
        }
        fn list_sets(&mut self) -> Result<Vec<String>, KernelError> {
            Ok(Vec::new())
        }
        fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
            self.saves += 1;
            let mut out = String::new();
            for ((f, table), chains) in &self.tables {
                if *f != family {
                    continue;
                }
                out.push_str(&format!("*{table}\n"));
                for chain in chains.keys() {
                    let policy = if BUILTIN.contains(&chain.as_str()) {
                        "ACCEPT"
                    } else {
                        "-"
                    };
                    out.push_str(&format!(":{chain} {policy} [0:0]\n"));
                }
                for (chain, rules) in chains {
                    for rule in rules {
                        out.push_str(&format!("-A {chain} {rule}\n"));
                    }
                }
                out.push_str("COMMIT\n");
            }
            Ok(out)
        }
        fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
            self.restores.push((family, payload.to_owned()));
            if std::mem::take(&mut self.fail_next_restore) {
                return Err(KernelError::EmptyCommand {
                    namespace: "fake".into(),
                });
            }
            let mut table = String::new();
            for line in payload.lines() {
                let words: Vec<&str> = line.splitn(3, ' ').collect();
                let t = self.tables.entry((family, table.clone())).or_default();
                for b in BUILTIN {
                    t.entry(b.to_owned()).or_default();
                }
                match words.as_slice() {
                    [w] if w.starts_with('*') => table = w[1..].to_owned(),
                    [decl, ..] if decl.starts_with(':') => {
                        t.insert(decl[1..].to_owned(), Vec::new());
                    }
                    ["-A", chain, rule] => t
                        .entry((*chain).to_owned())
                        .or_default()
                        .push((*rule).to_owned()),
                    ["-I", chain, rest] => {
                        let rule = rest.strip_prefix("1 ").unwrap_or(rest);
                        t.entry((*chain).to_owned())
                            .or_default()
                            .insert(0, rule.to_owned());
                    }
                    ["-D", chain, rule] => t
                        .entry((*chain).to_owned())
                        .or_default()
                        .retain(|r| r != rule),
                    ["-F", chain] => {
                        t.insert((*chain).to_owned(), Vec::new());
                    }
                    ["-X", chain] => {
                        t.remove(*chain);
                    }
                    _ => {}
                }
            }
            self.tables.retain(|(_, t), _| !t.is_empty());
            Ok(())
        }
        fn list_conntrack(
            &mut self,
            _: IpFamily,
            selection: Selection,
        ) -> Result<Vec<Flow>, KernelError> {
            self.selections.push(selection);
            self.conntrack_lists += 1;
            if std::mem::take(&mut self.fail_next_conntrack) {
                return Err(KernelError::EmptyCommand {
                    namespace: "fake".into(),
                });
            }
            Ok(self
                .conntrack
                .iter()
                .filter(|f| selection.selects(f))
                .copied()
                .collect())
        }
        fn delete_conntrack(&mut self, flows: &[Flow]) -> Result<usize, KernelError> {
            self.deleted.extend(flows);
            Ok(flows.len())
        }
    }

    /// Two Services on node-1: `web` (TCP) with the given endpoints and, optionally, `dns`
    /// (UDP) with one endpoint.
    fn cluster(web: &[&str], dns: Option<&str>, config: ClusterConfig) -> ClusterState {
        let mut y = String::from(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n\
             status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\n\
             spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}\n\
             ports: [{port: 80, protocol: TCP}]\n",
        );
        let eps: Vec<String> = web
            .iter()
            .map(|ip| {
                format!("{{addresses: [{ip}], nodeName: node-1, conditions: {{ready: true}}}}")
            })
            .collect();
        y.push_str(&format!("endpoints: [{}]\n", eps.join(", ")));
        if let Some(ep) = dns {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: x}}\n\
                 spec: {{clusterIP: 10.96.0.12, ports: [{{port: 53, protocol: UDP}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                 metadata: {{name: dns-1, namespace: x, labels: {{kubernetes.io/service-name: dns}}}}\n\
                 ports: [{{port: 53, protocol: UDP}}]\n\
                 endpoints: [{{addresses: [{ep}], nodeName: node-1, conditions: {{ready: true}}}}]\n"
            ));
        }
        netd_testkit::state_with(&y, config)
    }

    fn rules(state: &ClusterState) -> NodeRules {
        NodeProgrammer::default()
            .rules(state, &NodeName::new("node-1"))
            .expect("rules")
    }

    fn web(ips: &[&str]) -> NodeRules {
        rules(&cluster(ips, Some("10.244.1.53"), ClusterConfig::default()))
    }

    fn svc(name: &str) -> ServiceRef {
        ServiceRef::new("x", name)
    }

    fn declared(payload: &str, prefix: &str) -> Vec<String> {
        payload
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter(|c| c.starts_with(prefix))
            .map(|c| c.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The kernel state a fresh full sync of `rules` leaves.
    fn fresh(rules: NodeRules) -> FakeKernel {
        let mut k = FakeKernel::default();
        SyncEngine::new()
            .sync(&mut k, rules)
            .expect("fresh full sync");
        k
    }

    proptest::proptest! {
        /// Fed an incremental programmer's rules, an engine that takes the changed Services
        /// from their lineage writes byte for byte what one comparing every plan and chain
        /// writes, leaves the same kernel and reconciles the same conntrack entries — also when some rules are never synced (the
        /// lineage is then about other rules) or a full sync is requested.
        #[test]
        fn the_lineage_changes_no_payload(
            changes in proptest::collection::vec(
                (crate::programmer::tests::incremental::object(), proptest::bool::ANY, 0u8..8),
                1..16,
            ),
            endpoints in proptest::prop_oneof![proptest::strategy::Just(1000usize), 1usize..4],
        ) {
            use crate::programmer::tests::incremental::{programmer, unrelated};
            let node = NodeName::new("node-1");
            let incremental = crate::IncrementalProgrammer::new(programmer(endpoints));
            let mut state = netd_testkit::state(crate::programmer::tests::CLUSTER);
            let (mut hinted, mut compared) = (SyncEngine::new(), SyncEngine::new());
            let (mut hk, mut ck) = (FakeKernel::default(), FakeKernel::default());
            for (object, remove, what) in changes {
                if remove {
                    state.remove(&object.id());
                } else {
                    state.insert(object).expect("valid object");
                }
                let Ok(rules) = incremental.rules(&state, &node) else {
                    continue;
                };
                match what {
                    // Made, never synced.
                    0 => continue,
                    1 => {
                        hinted.request_full_sync();
                        compared.request_full_sync();
                    }
                    _ => {}
                }
                let with = hinted.sync(&mut hk, rules.clone()).expect("sync");
                let without = compared.sync(&mut ck, unrelated(rules)).expect("sync");
                proptest::prop_assert_eq!(with, without);
                proptest::prop_assert_eq!(&hk.restores, &ck.restores);
                proptest::prop_assert_eq!(&hk.set_restores, &ck.set_restores);
                proptest::prop_assert_eq!(hk.state(), ck.state());
                // The same conntrack entries looked at after each sync.
                proptest::prop_assert_eq!(&hk.selections, &ck.selections);
            }
        }
    }

    #[test]
    fn a_lineage_about_the_applied_rules_decides_the_scope_and_another_does_not() {
        let claim = |id, base| Lineage {
            id,
            since: Some((base, [(IpFamily::V4, [svc("web")].into())].into())),
        };
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        let first = NodeRules {
            lineage: Some(claim(10, 9)),
            ..web(&["10.244.1.2"])
        };
        assert_eq!(
            engine.sync(&mut k, first).expect("first").families[0].kind,
            SyncKind::Full
        );
        // Nothing changed, but the lineage says `web` did: it is believed...
        let believed = NodeRules {
            lineage: Some(claim(11, 10)),
            ..web(&["10.244.1.2"])
        };
        let report = engine.sync(&mut k, believed).expect("believed");
        assert_eq!(report.families[0].services, [svc("web")].into());
        // ...unless it is about other rules than those applied.
        let other = NodeRules {
            lineage: Some(claim(12, 10)),
            ..web(&["10.244.1.2"])
        };
        let report = engine.sync(&mut k, other).expect("other");
        assert_eq!(report.families[0].kind, SyncKind::Partial);
        assert!(report.families[0].services.is_empty());
    }

    #[test]
    fn first_sync_is_full_then_partial_with_exactly_the_changed_services() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        let first = engine.sync(&mut k, web(&["10.244.1.2"])).expect("first");
        assert_eq!(first.families.len(), 1);
        assert_eq!(first.families[0].kind, SyncKind::Full);
        assert_eq!(first.families[0].services, [svc("dns"), svc("web")].into());

        let same = engine.sync(&mut k, web(&["10.244.1.2"])).expect("same");
        assert_eq!(same.families[0].kind, SyncKind::Partial);
        assert!(same.families[0].services.is_empty());
        let payload = &k.restores[1].1;
        assert!(declared(payload, "KUBE-SVC-").is_empty(), "{payload}");
        assert!(declared(payload, "KUBE-SEP-").is_empty(), "{payload}");
        assert_eq!(
            declared(payload, "KUBE-SERVICES").len(),
            2,
            "nat and filter: {payload}"
        );

        let scaled = engine
            .sync(&mut k, web(&["10.244.1.2", "10.244.1.3"]))
            .expect("scaled");
        assert_eq!(scaled.families[0].kind, SyncKind::Partial);
        assert_eq!(scaled.families[0].services, [svc("web")].into());
        let payload = &k.restores[2].1;
        let web_chains = ServiceChains::of(&port("web", Protocol::Tcp));
        let dns_chains = ServiceChains::of(&port("dns", Protocol::Udp));
        assert_eq!(
            declared(payload, "KUBE-SVC-"),
            [web_chains.cluster.to_string()]
        );
        assert_eq!(declared(payload, "KUBE-SEP-").len(), 2, "{payload}");
        assert!(!payload.contains(&format!(":{}", dns_chains.cluster)));
        assert_eq!(k.state(), fresh(web(&["10.244.1.2", "10.244.1.3"])).state());

        assert_eq!(engine.metrics().syncs(IpFamily::V4, SyncKind::Full), 1);
        assert_eq!(engine.metrics().syncs(IpFamily::V4, SyncKind::Partial), 2);
    }

    fn port(name: &str, protocol: Protocol) -> netd_model::ServicePortName {
        netd_model::ServicePortName {
            service: svc(name),
            port: String::new(),
            protocol,
        }
    }

    #[test]
    fn chains_rendered_otherwise_from_the_same_plan_rewrite_their_service() {
        let state = cluster(
            &["10.244.1.2"],
            Some("10.244.1.53"),
            ClusterConfig::default(),
        );
        let node = NodeName::new("node-1");
        let with_comments = rules(&state);
        // Past the large-cluster threshold the endpoint chains lose their comments.
        let without = NodeProgrammer {
            render: netd_render::RenderOptions {
                large_cluster_endpoints: 0,
                ..netd_render::RenderOptions::default()
            },
            ..NodeProgrammer::default()
        }
        .rules(&state, &node)
        .expect("rules");
        let (before, after) = (&with_comments.families[0], &without.families[0]);
        assert_eq!(before.plan, after.plan);
        assert_eq!(
            changed_chains(before, after),
            BTreeSet::from([svc("dns"), svc("web")])
        );
        assert_eq!(changed_chains(before, before), BTreeSet::new());
        // A Service whose chains are gone counts as changed too.
        let fewer = rules(&cluster(&["10.244.1.2"], None, ClusterConfig::default()));
        assert_eq!(
            changed_chains(before, &fewer.families[0]),
            BTreeSet::from([svc("dns")])
        );
    }

    #[test]
    fn only_full_syncs_read_the_kernel_back() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        engine.sync(&mut k, web(&["10.244.1.2"])).expect("first");
        assert_eq!(k.saves, 1, "a full sync reads the tables");
        for ips in [&["10.244.1.2", "10.244.1.3"][..], &["10.244.1.3"], &[]] {
            let done = engine.sync(&mut k, web(ips)).expect("partial");
            assert_eq!(done.families[0].kind, SyncKind::Partial);
            assert_eq!(k.state(), fresh(web(ips)).state(), "{ips:?}");
        }
        assert_eq!(k.saves, 1, "partial syncs trust what the last sync left");

        // Someone deletes a hook behind our back: the next full sync reads and repairs it.
        k.tables
            .get_mut(&(IpFamily::V4, "filter".to_owned()))
            .and_then(|t| t.get_mut("FORWARD"))
            .expect("FORWARD")
            .clear();
        engine.request_full_sync();
        let done = engine.sync(&mut k, web(&[])).expect("full");
        assert_eq!(done.families[0].kind, SyncKind::Full);
        assert_eq!(k.saves, 2);
        assert_eq!(k.state(), fresh(web(&[])).state());
    }

    #[test]
    fn partial_sync_deletes_the_chains_of_removed_endpoints_and_services() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        engine
            .sync(&mut k, web(&["10.244.1.2", "10.244.1.3"]))
            .expect("first");
        let seps = |k: &FakeKernel| {
            k.chains(IpFamily::V4, "nat")
                .into_iter()
                .filter(|c| c.starts_with("KUBE-SEP-"))
                .count()
        };
        assert_eq!(seps(&k), 3);

        let fewer = engine.sync(&mut k, web(&["10.244.1.3"])).expect("fewer");
        assert_eq!(fewer.families[0].kind, SyncKind::Partial);
        assert_eq!(fewer.families[0].deleted_chains, 1);
        assert_eq!(seps(&k), 2);
        assert_eq!(k.state(), fresh(web(&["10.244.1.3"])).state());

        let no_dns = rules(&cluster(&["10.244.1.3"], None, ClusterConfig::default()));
        let gone = engine.sync(&mut k, no_dns.clone()).expect("dns deleted");
        assert_eq!(gone.families[0].services, [svc("dns")].into());
        assert_eq!(
            gone.families[0].deleted_chains, 2,
            "KUBE-SVC and KUBE-SEP of dns"
        );
        assert_eq!(k.state(), fresh(no_dns).state());
    }

    #[test]
    fn a_failed_restore_is_returned_counted_and_forces_a_full_sync() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        engine.sync(&mut k, web(&["10.244.1.2"])).expect("first");
        k.fail_next_restore = true;
        let err = engine
            .sync(&mut k, web(&["10.244.1.3"]))
            .expect_err("restore fails");
        assert!(
            matches!(
                err,
                AgentError::ApplyFailed {
                    step: "restore iptables",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            engine
                .metrics()
                .restore_failures(IpFamily::V4, SyncKind::Partial),
            1
        );
        let retry = engine.sync(&mut k, web(&["10.244.1.3"])).expect("retry");
        assert_eq!(retry.families[0].kind, SyncKind::Full);
        assert_eq!(k.state(), fresh(web(&["10.244.1.3"])).state());
        let next = engine
            .sync(&mut k, web(&["10.244.1.3"]))
            .expect("then partial");
        assert_eq!(next.families[0].kind, SyncKind::Partial);
        assert_eq!(engine.metrics().syncs(IpFamily::V4, SyncKind::Full), 2);

        let mut registry = Registry::default();
        engine.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("sync_proxy_rules_total{family=\"ipv4\",scope=\"full\"} 2"),
            "{text}"
        );
    }

    const HASH_IP: SetDefinition = SetDefinition {
        kind: "hash:ip",
        family: Some(IpFamily::V4),
        options: "hashsize 1024 maxelem 1048576",
    };

    /// `web`'s rules with one `hash:ip` set `KNP-A` of `members`, defined as `definition`.
    fn with_set(definition: SetDefinition, members: &[&str]) -> NodeRules {
        let mut rules = web(&["10.244.1.2"]);
        rules.ipset.push(IpSet {
            name: "KNP-A".to_owned(),
            scratch: "KNP-A-N".to_owned(),
            definition,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        });
        rules.sets.insert("KNP-A".to_owned());
        rules
    }

    #[test]
    fn sets_are_written_whole_first_then_only_what_changed() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        let first = with_set(HASH_IP, &["10.244.1.2", "10.244.1.3"]);
        engine.sync(&mut k, first.clone()).expect("first");
        assert_eq!(k.set_restores, [first.ipset.full_input()]);
        assert!(k.set_restores[0].contains(
            "swap KNP-A-N KNP-A
"
        ));

        engine
            .sync(&mut k, with_set(HASH_IP, &["10.244.1.3", "10.244.1.4"]))
            .expect("one member changed");
        assert_eq!(
            k.set_restores[1],
            "add KNP-A 10.244.1.4
del KNP-A 10.244.1.2
"
        );

        engine
            .sync(&mut k, with_set(HASH_IP, &["10.244.1.3", "10.244.1.4"]))
            .expect("unchanged");
        assert_eq!(k.set_restores.len(), 2, "no ipset restore for no change");

        let bigger = SetDefinition {
            options: "hashsize 1024 maxelem 65536",
            ..HASH_IP
        };
        let redefined = with_set(bigger, &["10.244.1.3", "10.244.1.4"]);
        engine.sync(&mut k, redefined.clone()).expect("redefined");
        assert_eq!(k.set_restores[2], redefined.ipset.full_input());

        engine.request_full_sync();
        engine
            .sync(&mut k, redefined.clone())
            .expect("requested full");
        assert_eq!(k.set_restores[3], redefined.ipset.full_input());
    }

    #[test]
    fn a_failed_restore_of_sets_or_rules_has_the_next_sync_write_sets_whole() {
        let mut k = FakeKernel::default();
        let mut engine = SyncEngine::new();
        engine
            .sync(&mut k, with_set(HASH_IP, &["10.244.1.2"]))
            .expect("first");
        k.fail_next_set_restore = true;
        let err = engine
            .sync(&mut k, with_set(HASH_IP, &["10.244.1.3"]))
            .expect_err("ipset restore fails");
        assert!(
            matches!(
                err,
                AgentError::ApplyFailed {
                    step: "load ipsets",
                    ..
                }
            ),
            "{err}"
        );
        let retry = with_set(HASH_IP, &["10.244.1.3"]);
        engine.sync(&mut k, retry.clone()).expect("retry");
        assert_eq!(k.set_restores.last(), Some(&retry.ipset.full_input()));

        k.fail_next_restore = true;
        let after = with_set(HASH_IP, &["10.244.1.4"]);
        engine
            .sync(&mut k, after.clone())
            .expect_err("iptables-restore fails");
        assert_eq!(
            k.set_restores.last().map(String::as_str),
            Some("add KNP-A 10.244.1.4\ndel KNP-A 10.244.1.3\n"),
            "the sets went in before the rules failed"
        );
        engine.sync(&mut k, after.clone()).expect("retry");
        assert_eq!(k.set_restores.last(), Some(&after.ipset.full_input()));
    }

    #[test]
    fn hooks_are_inserted_once_and_foreign_chains_survive() {
        let mut k = FakeKernel::default();
        k.restore(
            IpFamily::V4,
            "*filter\n:FOREIGN - [0:0]\n-A FORWARD -j FOREIGN\nCOMMIT\n",
        )
        .expect("foreign");
        let mut engine = SyncEngine::new();
        for _ in 0..3 {
            engine.sync(&mut k, web(&["10.244.1.2"])).expect("sync");
        }
        let forward = &k.tables[&(IpFamily::V4, "filter".to_owned())]["FORWARD"];
        assert_eq!(
            forward,
            &[
                "-m comment --comment \"kube-netd\" -j KUBE-NETD-FORWARD".to_owned(),
                "-j FOREIGN".to_owned()
            ]
        );
    }

    const DNS_FLOWS: &str = "\
udp 17 29 src=10.244.1.9 dst=10.96.0.12 sport=40001 dport=53 src=10.244.1.53 dst=10.244.1.9 sport=53 dport=40001 mark=0 use=1
udp 17 29 src=10.244.1.9 dst=10.96.0.12 sport=40002 dport=53 src=10.244.1.54 dst=10.244.1.9 sport=53 dport=40002 mark=0 use=1
";

    #[test]
    fn conntrack_is_reconciled_on_start_and_after_udp_changes_only() {
        let mut k = FakeKernel {
            conntrack: conntrack::parse_listing(DNS_FLOWS),
            ..FakeKernel::default()
        };
        let mut engine = SyncEngine::new();
        let dns = |ep: &str| {
            rules(&cluster(
                &["10.244.1.2"],
                Some(ep),
                ClusterConfig::default(),
            ))
        };
        // Restart: the flow to the serving endpoint .53 survives; the one to .54 is stale.
        let first = engine.sync(&mut k, dns("10.244.1.53")).expect("first");
        assert_eq!(k.conntrack_lists, 1);
        assert_eq!(k.deleted, [k.conntrack[1]], "the flow to .54");
        assert_eq!(first.families[0].conntrack_deleted, 1);
        // A TCP change does not list conntrack at all.
        let tcp = rules(&cluster(
            &["10.244.1.3"],
            Some("10.244.1.53"),
            ClusterConfig::default(),
        ));
        engine.sync(&mut k, tcp).expect("tcp change");
        assert_eq!(k.conntrack_lists, 1);
        // The DNS pod moves: flows to .53 are deleted.
        k.deleted.clear();
        engine.sync(&mut k, dns("10.244.1.54")).expect("moved");
        assert_eq!(k.conntrack_lists, 2);
        // The first reconcile reads every UDP entry, the next only those sent to the Service
        // that changed.
        assert_eq!(
            k.selections,
            [
                Selection::Protocol(Protocol::Udp),
                Selection::To(Frontend {
                    protocol: Protocol::Udp,
                    ip: Some("10.96.0.12".parse().expect("ip")),
                    port: 53
                })
            ]
        );
        assert_eq!(k.deleted, [k.conntrack[0]], "the flow to .53");
        assert_eq!(engine.metrics().conntrack_deleted(IpFamily::V4), 2);
    }

    #[test]
    fn a_failed_conntrack_cleanup_keeps_the_rules_and_is_retried_after_the_next_sync() {
        let mut k = FakeKernel {
            conntrack: conntrack::parse_listing(DNS_FLOWS),
            fail_next_conntrack: true,
            ..FakeKernel::default()
        };
        let mut engine = SyncEngine::new();
        let err = engine
            .sync(&mut k, web(&["10.244.1.2"]))
            .expect_err("conntrack fails");
        assert!(
            matches!(
                err,
                AgentError::ConntrackCleanupFailed {
                    family: IpFamily::V4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(engine.metrics().syncs(IpFamily::V4, SyncKind::Full), 1);
        let again = engine.sync(&mut k, web(&["10.244.1.2"])).expect("retry");
        assert_eq!(
            again.families[0].kind,
            SyncKind::Partial,
            "the rules were in"
        );
        assert_eq!(again.families[0].conntrack_deleted, 1, "{:?}", k.deleted);
        assert!(
            engine.metrics().encode().contains(
                "kubeproxy_conntrack_reconciler_deleted_entries_total{family=\"ipv4\"} 1"
            )
        );
    }

    fn dual_stack() -> ClusterConfig {
        ClusterConfig {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().expect("cidr"),
                "fd00:10:244::/56".parse().expect("cidr"),
            ],
            service_cidrs: vec![
                "10.96.0.0/12".parse().expect("cidr"),
                "fd00:10:96::/112".parse().expect("cidr"),
            ],
            ..ClusterConfig::default()
        }
    }

    const DUAL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:172:18::2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: [10.96.0.11, "fd00:10:96::11"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ["fd00:10:244:1::2"], nodeName: node-1, conditions: {ready: true}}]
ports: [{port: 80, protocol: TCP}]
"#;

    #[test]
    fn a_dual_stack_node_gets_each_family_in_its_own_restore() {
        let state = netd_testkit::state_with(DUAL, dual_stack());
        let node_rules = rules(&state);
        let families: Vec<IpFamily> = node_rules.families.iter().map(|f| f.family()).collect();
        assert_eq!(families, [IpFamily::V4, IpFamily::V6]);
        let mut k = FakeKernel::default();
        let report = SyncEngine::new()
            .sync(&mut k, node_rules.clone())
            .expect("sync");
        assert_eq!(report.families.len(), 2);
        let v4: Vec<&String> = k
            .restores
            .iter()
            .filter(|r| r.0 == IpFamily::V4)
            .map(|r| &r.1)
            .collect();
        let v6: Vec<&String> = k
            .restores
            .iter()
            .filter(|r| r.0 == IpFamily::V6)
            .map(|r| &r.1)
            .collect();
        assert_eq!((v4.len(), v6.len()), (1, 1), "one restore per family");
        assert!(
            v4[0].contains("-d 10.96.0.11 ") && !v4[0].contains("fd00:"),
            "{}",
            v4[0]
        );
        assert!(v6[0].contains("-d fd00:10:96::11 "), "{}", v6[0]);
        assert!(
            v6[0].contains("--to-destination [fd00:10:244:1::2]:80"),
            "{}",
            v6[0]
        );
        assert!(!v6[0].contains("10.96.0.11"), "{}", v6[0]);
        assert!(v6[0].contains("-I FORWARD 1 "), "IPv6 hooks too: {}", v6[0]);
        let text = node_rules.to_text();
        assert!(text.contains("# ip6tables-restore --noflush\n"), "{text}");

        let single = rules(&cluster(&["10.244.1.2"], None, ClusterConfig::default()));
        assert_eq!(single.families.len(), 1);

        // The cluster turns IPv4-only: the IPv6 chains go, and IPv6 is left alone after.
        let mut engine = SyncEngine::new();
        let mut k = FakeKernel::default();
        engine.sync(&mut k, node_rules).expect("dual");
        assert!(!k.chains(IpFamily::V6, "nat").is_empty());
        let dropped = engine.sync(&mut k, single.clone()).expect("v4 only");
        assert_eq!(dropped.families.len(), 2, "IPv6 pruned once");
        assert!(k.chains(IpFamily::V6, "nat").is_empty(), "{:?}", k.state());
        let after = engine.sync(&mut k, single).expect("v4 only again");
        assert_eq!(after.families.len(), 1);
    }
}
