//! The nftables back end: one table per IP family (`ip kube-netd`, `ip6 kube-netd`) rendered
//! from the same plans as the iptables rules — the service plan in kube-proxy's nftables
//! layout and the NetworkPolicy plan in chains that run before the Services' filter chains —
//! and synced as one transaction per family.
//!
//! Tables are applied over netlink ([`netd_kernel::nftnl`]), one transaction per family and
//! sync, lowered from the typed representation by [`lower`]; no `nft` process runs on the sync
//! path ([`Backend::render`] still prints `nft -f` text for people and for `nft -f`).
//!
//! The first sync, the first after a failure and any sync asked to be full replace the
//! family's table whole: `add table`, `delete table` and the new table in one transaction,
//! so the kernel holds the old table or the new one and never neither. Later syncs send only
//! the difference from what the last successful sync applied
//! ([`netd_render::nft::diff_commands()`]): endpoint changes are element updates in existing
//! maps, changed chains are flushed and refilled; nothing is read back from the kernel. The
//! work of a later sync is in proportion to what changed: the Services whose inputs changed
//! are planned again ([`Replanner`]), their ports alone are rendered, before and after, and
//! the kept table is brought forward by them ([`NodeTable::update`]); the whole table is
//! rendered and diffed only when something every port depends on changed (the Node, the
//! settings, whether endpoints carry comments). After the rules are in, stale UDP/SCTP
//! conntrack entries are deleted as in iptables mode.
//!
//! Nothing outside its own tables is touched: other software's tables, and the iptables
//! rules of other tools, are left alone ([`remove_tables`] takes out only ours).

pub mod lower;

use std::collections::{BTreeMap, BTreeSet};

use netd_kernel::nftnl::Transaction;
use netd_kernel::{KernelError, rules as kernel};
use netd_model::{ClusterState, NodeName, ServiceRef};
use netd_proxy::{IpFamily, ProxyOptions, ServicePlan};
use netd_render::RenderOptions;
use netd_render::nft::{
    Delta, NodeTable, TABLE_NAME, Table, merge_into, render_policy_nft, render_services_nft,
};
use prometheus_client::registry::Registry;

use crate::backend::{Backend, Mode, ProgramConfig};
use crate::error::AgentError;
use crate::programmer::{Replaced, Replanner, families};
use crate::sync::{FamilySync, InNamespace, SyncKind, SyncMetrics, SyncReport, reconcile_families};

/// What one family's table is rendered from and into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyTable {
    /// The service plan of the family.
    pub plan: ServicePlan,
    /// The table.
    pub table: Table,
}

/// The nftables back end of one Node.
#[derive(Debug, Default)]
pub struct Nftables {
    render: RenderOptions,
    program: ProgramConfig,
    /// What was planned last, and from what.
    planner: Replanner,
    /// What the last successful sync of each family applied.
    applied: BTreeMap<IpFamily, NodeTable>,
    /// Set after a failed sync (the kernel may hold anything) or on request.
    full_next: bool,
    /// What each family's next conntrack reconcile looks at (kept after a failed one).
    conntrack_pending: BTreeMap<IpFamily, crate::conntrack::Pending>,
    metrics: SyncMetrics,
}

/// How one family's table is synced, and the table it leaves.
#[derive(Debug)]
struct Planned {
    kind: SyncKind,
    update: Update,
    table: NodeTable,
    /// The Services the sync changes (every one on a full sync).
    services: BTreeSet<ServiceRef>,
}

/// What a sync sends for one family.
#[derive(Debug)]
enum Update {
    /// The whole table, replacing the kernel's.
    Replace,
    /// The difference from the whole previous table.
    Whole(NodeTable),
    /// The difference of the objects that changed.
    Delta(Delta),
}

impl Planned {
    /// The transaction that syncs the family.
    fn transaction(&self) -> Result<Transaction, AgentError> {
        match &self.update {
            Update::Replace => lower::replacement(self.table.table()),
            Update::Whole(previous) => lower::update(previous.table(), self.table.table()),
            Update::Delta(delta) => lower::update(&delta.before, &delta.after),
        }
        .map_err(|source| AgentError::NftLowerFailed {
            family: self.table.table().family,
            source,
        })
    }
}

impl Nftables {
    /// A back end that has synced nothing yet: its first sync is full.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same back end, programming from `program` instead of the defaults.
    pub fn with_program(self, program: ProgramConfig) -> Self {
        Self { program, ..self }
    }

    /// nftables mode has no localhost nodePorts (as kube-proxy's).
    fn options(&self, state: &ClusterState, node: &NodeName) -> ProxyOptions {
        ProxyOptions {
            localhost_nodeports: false,
            ..self.program.proxy_options(state, node)
        }
    }

    /// The tables of `node`, one per IP family the cluster has, IPv4 first: the Services in
    /// kube-proxy's nftables layout and the NetworkPolicy chains and sets, judged first.
    /// Planned and rendered from scratch (what [`Backend::sync`] keeps equals it).
    pub fn tables(
        &self,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<Vec<FamilyTable>, AgentError> {
        let options = self.options(state, node);
        let policy = self.program.policy_plan(state, node)?;
        Ok(families(state)
            .into_iter()
            .map(|family| {
                let plan = netd_proxy::plan(state, node, family, &options);
                let mut table = render_services_nft(&plan, &self.render);
                if let Some(policy) = &policy {
                    merge_into(&mut table, render_policy_nft(policy, family));
                }
                FamilyTable { plan, table }
            })
            .collect())
    }

    /// The table last applied to `family`, if a sync succeeded since the last failure.
    pub fn applied(&self, family: IpFamily) -> Option<&Table> {
        self.applied.get(&family).map(NodeTable::table)
    }

    /// Plans `state` again where it changed and works out each family's transaction: a
    /// whole replacement on a full sync; otherwise the update of the changed Service ports
    /// alone (and of the policy objects when their plan changed), or, when the plan was made
    /// from scratch or something every port depends on changed, the difference of the whole
    /// tables. Nothing is applied; the tables kept by the back end move on only on success.
    ///
    /// What conntrack must reconcile is added here, before the commit: after a failed sync
    /// the next one (full) is planned from the failed one's state, so the pending entries
    /// must already hold what that sync changed.
    fn prepare(
        &mut self,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<Vec<Planned>, AgentError> {
        let options = self.options(state, node);
        let replan = self.planner.plan(&self.program, state, node, options)?;
        let policy = self.planner.policy();
        let policy_table = |family| policy.map(|p| render_policy_nft(p, family));
        let mut out = Vec::new();
        for (plan, replaced) in self.planner.plans().iter().zip(replan.families) {
            let family = plan.family;
            // The Services whose ports differ from the last plan (`None`: planned afresh),
            // and, when only some Services were planned again, the ports they replaced with
            // the ports those Services have now: what the kept table is updated by.
            let pending = self.conntrack_pending.entry(family).or_default();
            let (rewritten, partial) = match &replaced {
                Some(Replaced {
                    changed: Some(changed),
                    ports,
                }) => {
                    let current: BTreeMap<_, _> = plan
                        .ports_of_services(changed)
                        .map(|(n, p)| (n.clone(), p.clone()))
                        .collect();
                    pending.add_replaced(ports, &current);
                    let rewritten = netd_proxy::differing_services(ports, &current);
                    (Some(rewritten), Some((ports, current)))
                }
                Some(Replaced {
                    changed: None,
                    ports,
                }) => {
                    pending.add_replaced(ports, &plan.ports);
                    (
                        Some(netd_proxy::differing_services(ports, &plan.ports)),
                        None,
                    )
                }
                None => {
                    // Nothing is known of what was planned before.
                    pending.add(None, plan);
                    (None, None)
                }
            };
            let every_service = || plan.ports.keys().map(|n| n.service.clone()).collect();
            let previous = self.applied.remove(&family).filter(|_| !self.full_next);
            let Some(mut table) = previous else {
                out.push(Planned {
                    kind: SyncKind::Full,
                    update: Update::Replace,
                    table: NodeTable::new(plan, policy_table(family), &self.render),
                    services: every_service(),
                });
                continue;
            };
            let delta = partial.and_then(|(ports, current)| {
                let policy = replan
                    .policy_replanned
                    .then(|| policy_table(family).unwrap_or_else(|| Table::new(family)));
                table.update(plan, ports, current.iter(), policy, &self.render)
            });
            let (update, table) = match delta {
                Some(delta) => (Update::Delta(delta), table),
                None => (
                    Update::Whole(table),
                    NodeTable::new(plan, policy_table(family), &self.render),
                ),
            };
            out.push(Planned {
                kind: SyncKind::Partial,
                update,
                table,
                services: rewritten.unwrap_or_else(every_service),
            });
        }
        Ok(out)
    }
}

impl Backend for Nftables {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn render(&self, state: &ClusterState, node: &NodeName) -> Result<String, AgentError> {
        Ok(self
            .tables(state, node)?
            .iter()
            .map(|t| t.table.to_nft())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn sync(
        &mut self,
        netns: &str,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<SyncReport, AgentError> {
        let planned = match self.prepare(state, node) {
            Ok(planned) => planned,
            Err(e) => {
                // The tables kept may be gone: the next sync replaces them whole.
                self.full_next = true;
                return Err(e);
            }
        };
        let mut report = SyncReport {
            health_checks: self
                .planner
                .plans()
                .first()
                .map(ServicePlan::health_checks)
                .unwrap_or_default(),
            ..SyncReport::default()
        };
        let plans = self.planner.plans();
        for (planned, plan) in planned.into_iter().zip(plans) {
            let (family, kind) = (plan.family, planned.kind);
            let committed = planned.transaction().and_then(|tx| {
                tx.commit(netns)
                    .map_err(|source| AgentError::NftApplyFailed {
                        namespace: netns.to_owned(),
                        step: match family {
                            IpFamily::V4 => "load the ip kube-netd table",
                            IpFamily::V6 => "load the ip6 kube-netd table",
                        },
                        source,
                    })
            });
            if let Err(e) = committed {
                self.full_next = true;
                self.metrics.restore_failed(family, kind);
                return Err(e);
            }
            self.metrics.synced(family, kind);
            report.families.push(FamilySync {
                family,
                kind,
                services: planned.services,
                deleted_chains: 0,
                conntrack_deleted: 0,
            });
            self.applied.insert(family, planned.table);
        }
        self.full_next = false;
        self.reconcile_conntrack(netns, &mut report)?;
        Ok(report)
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

impl Nftables {
    /// Deletes the stale UDP/SCTP conntrack entries of every family whose connectionless
    /// Services changed; a failure is returned after the rules are in and retried next time.
    fn reconcile_conntrack(
        &mut self,
        netns: &str,
        report: &mut SyncReport,
    ) -> Result<(), AgentError> {
        reconcile_families(
            &mut InNamespace::new(netns),
            &mut report.families,
            |family| self.planner.plans().iter().find(|p| p.family == family),
            &mut self.conntrack_pending,
            &self.metrics,
        )
    }
}

/// Removes kube-netd's nftables tables from `netns` (both families, in one transaction);
/// returns how many there were.
pub fn remove_tables(netns: &str) -> Result<usize, AgentError> {
    let failed = |step| {
        move |source: KernelError| AgentError::CleanupFailed {
            namespace: netns.to_owned(),
            step,
            source,
        }
    };
    let listed = kernel::nft_tables(netns).map_err(failed("list nftables tables"))?;
    let ours: Vec<&(String, String)> = listed.iter().filter(|(_, n)| n == TABLE_NAME).collect();
    if ours.is_empty() {
        return Ok(0);
    }
    let payload: String = ours
        .iter()
        .map(|(family, name)| format!("delete table {family} {name}\n"))
        .collect();
    kernel::nft_load(netns, &payload).map_err(failed("delete nftables tables"))?;
    Ok(ours.len())
}

#[cfg(test)]
mod tests {
    use netd_render::nft::{Command, diff_commands};
    use proptest::prelude::*;

    use super::*;
    use crate::conntrack::Pending;
    use crate::programmer::tests::CLUSTER;
    use crate::programmer::tests::incremental::object;

    /// The commands one by one (an element each), sorted: two updates that are the same
    /// set of changes compare equal.
    fn atoms(commands: &[Command], family: IpFamily) -> Vec<String> {
        let mut out: Vec<String> = commands
            .iter()
            .flat_map(|c| match c {
                Command::AddElements { set, elements } => elements
                    .iter()
                    .map(|e| format!("add element {set} {}", e.display()))
                    .collect(),
                Command::DeleteElements { set, keys } => keys
                    .iter()
                    .map(|k| format!("delete element {set} {k:?}"))
                    .collect(),
                other => vec![other.to_nft(family, TABLE_NAME)],
            })
            .collect();
        out.sort();
        out
    }

    /// Whether a reconcile of `pending` looks at every entry one of `needed` does.
    fn covers(pending: &Pending, needed: &Pending) -> bool {
        match (pending, needed) {
            (Pending::All, _) | (_, Pending::Nothing) => true,
            (Pending::Frontends(have), Pending::Frontends(need)) => need.is_subset(have),
            _ => false,
        }
    }

    proptest! {
        // Sharing between ports (a Pod behind two Services) is rare in small draws.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// After any sequence of changes, some of whose commits fail, and with endpoint
        /// comments on, off or switched on the way (`comments`: the threshold), the table the
        /// back end keeps is the one rendered from scratch; the update of the changed objects
        /// alone is the same set of commands as the difference of the whole tables; a sync
        /// after a failure replaces the table; the Services reported are those whose plans
        /// differ from the last one committed; and conntrack's pending entries cover what
        /// changed since then.
        #[test]
        fn per_port_updates_equal_whole_tables(
            changes in proptest::collection::vec((object(), any::<bool>(), any::<bool>()), 1..16),
            comments in prop_oneof![Just(RenderOptions::default().large_cluster_endpoints), 0usize..5],
        ) {
            let node = NodeName::new("node-1");
            let mut backend = Nftables::new();
            backend.render.large_cluster_endpoints = comments;
            let mut state = netd_testkit::state(CLUSTER);
            let mut committed: Option<ServicePlan> = None;
            let mut deltas = 0;
            for (object, remove, fails) in changes {
                if remove {
                    state.remove(&object.id());
                } else {
                    state.insert(object).expect("valid object");
                }
                let previous = backend.applied.clone();
                let full = backend.full_next || previous.is_empty();
                // As a sync does, without the kernel: a failed plan or commit makes the next
                // sync full.
                let Ok(planned) = backend.prepare(&state, &node) else {
                    backend.full_next = true;
                    continue;
                };
                let expected = backend.tables(&state, &node).expect("tables");
                let [planned] = <[Planned; 1]>::try_from(planned).expect("IPv4 only");
                let [expected] = <[FamilyTable; 1]>::try_from(expected).expect("IPv4 only");
                prop_assert_eq!(planned.table.table(), &expected.table);
                match &planned.update {
                    Update::Replace => prop_assert!(full),
                    Update::Whole(_) => prop_assert!(!full),
                    Update::Delta(delta) => {
                        prop_assert!(!full);
                        deltas += 1;
                        let previous = previous[&IpFamily::V4].table();
                        prop_assert_eq!(
                            atoms(&diff_commands(&delta.before, &delta.after), IpFamily::V4),
                            atoms(&diff_commands(previous, &expected.table), IpFamily::V4)
                        );
                    }
                }
                if fails {
                    backend.full_next = true;
                    continue;
                }
                let every: BTreeSet<ServiceRef> =
                    expected.plan.ports.keys().map(|n| n.service.clone()).collect();
                match (&committed, planned.kind) {
                    (Some(last), SyncKind::Partial) => {
                        prop_assert_eq!(&planned.services, &expected.plan.changed_services(last));
                    }
                    _ => prop_assert_eq!(&planned.services, &every),
                }
                let mut needed = Pending::default();
                needed.add(committed.as_ref(), &expected.plan);
                let pending = backend.conntrack_pending.remove(&IpFamily::V4).unwrap_or_default();
                prop_assert!(covers(&pending, &needed), "{:?} does not cover {:?}", pending, needed);
                backend.full_next = false;
                backend.applied.insert(IpFamily::V4, planned.table);
                committed = Some(expected.plan);
            }
            // Without a Node every plan fails; otherwise later syncs are updates.
            prop_assume!(deltas > 0);
        }
    }

    /// Service `x/web` (a plain ClusterIP, 10.96.0.10:80) with an endpoint on node-1 at
    /// each of `ips` (10.244.1.<ip>:8080).
    fn web(ips: &[u8]) -> Vec<netd_model::Object> {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [10.244.1.{ip}], nodeName: node-1}}"))
            .collect();
        netd_testkit::objects(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\n\
             spec: {{clusterIP: 10.96.0.10, ports: [{{name: p, port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\n\
             ports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        ))
    }

    /// `state` with `objects` put in.
    fn with(mut state: ClusterState, objects: Vec<netd_model::Object>) -> ClusterState {
        for object in objects {
            state.insert(object).expect("valid object");
        }
        state
    }

    /// How the back end would sync `state` ("replace", "whole" or "delta"), with the Services
    /// it reports; the table it would keep must be the one rendered from scratch, and it is
    /// kept as if committed.
    fn synced(backend: &mut Nftables, state: &ClusterState) -> (&'static str, Vec<String>) {
        let node = NodeName::new("node-1");
        let planned = backend.prepare(state, &node).expect("planned");
        let expected = backend.tables(state, &node).expect("tables");
        let [planned] = <[Planned; 1]>::try_from(planned).expect("IPv4 only");
        assert_eq!(planned.table.table(), &expected[0].table);
        let update = match planned.update {
            Update::Replace => "replace",
            Update::Whole(_) => "whole",
            Update::Delta(_) => "delta",
        };
        let services = planned.services.iter().map(ToString::to_string).collect();
        backend.applied.insert(IpFamily::V4, planned.table);
        backend.full_next = false;
        (update, services)
    }

    #[test]
    fn a_change_of_some_services_is_a_delta_and_what_every_port_depends_on_is_not() {
        let mut backend = Nftables::new();
        let base = with(netd_testkit::state(CLUSTER), web(&[5]));
        assert_eq!(
            synced(&mut backend, &base),
            ("replace", vec!["x/web".into()])
        );
        let two = with(base.clone(), web(&[5, 6]));
        assert_eq!(synced(&mut backend, &two), ("delta", vec!["x/web".into()]));
        // Another Pod the policy admits: the policy is planned again, no Service is.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n\
                   spec: {nodeName: node-1, containers: [{name: c, image: i}]}\n\
                   status: {podIP: 10.244.1.3}\n";
        let relabelled = with(two.clone(), netd_testkit::objects(pod));
        let before = backend.applied(IpFamily::V4).cloned().expect("applied");
        assert_eq!(synced(&mut backend, &relabelled), ("delta", vec![]));
        assert_ne!(
            backend.applied(IpFamily::V4),
            Some(&before),
            "policy unchanged"
        );
        // Asked for, or after a failure: the table is replaced whole.
        backend.request_full_sync();
        assert_eq!(synced(&mut backend, &relabelled).0, "replace");
        // The Node's address: every Service is planned again and the tables are diffed.
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
                    spec: {podCIDR: 10.244.1.0/24}\n\
                    status: {addresses: [{type: InternalIP, address: 172.18.0.9}]}\n";
        let moved = with(relabelled, netd_testkit::objects(node));
        assert_eq!(synced(&mut backend, &moved), ("whole", vec![]));
    }

    #[test]
    fn crossing_the_endpoint_comment_threshold_diffs_the_whole_tables() {
        let mut backend = Nftables::new();
        backend.render.large_cluster_endpoints = 1;
        let one = with(netd_testkit::state(CLUSTER), web(&[5]));
        assert_eq!(synced(&mut backend, &one).0, "replace");
        let other = with(one.clone(), web(&[6]));
        assert_eq!(synced(&mut backend, &other).0, "delta");
        // Two endpoints: no comments on any (the first port's included).
        let two = with(other.clone(), web(&[5, 6]));
        assert_eq!(synced(&mut backend, &two).0, "whole");
        assert_eq!(synced(&mut backend, &one).0, "whole");
    }
}
