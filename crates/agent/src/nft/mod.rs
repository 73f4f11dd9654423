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
//! maps, changed chains are flushed and refilled; nothing is read back from the kernel. After
//! the rules are in, stale UDP/SCTP conntrack entries are deleted as in iptables mode.
//!
//! Nothing outside its own tables is touched: other software's tables, and the iptables
//! rules of other tools, are left alone ([`remove_tables`] takes out only ours).

pub mod lower;

use std::collections::BTreeMap;

use netd_kernel::nftnl::Transaction;
use netd_kernel::{KernelError, rules as kernel};
use netd_model::{ClusterState, NodeName};
use netd_proxy::{IpFamily, ProxyOptions, ServicePlan};
use netd_render::RenderOptions;
use netd_render::nft::{TABLE_NAME, Table, merge_into, render_policy_nft, render_services_nft};
use prometheus_client::registry::Registry;

use crate::backend::{Backend, Mode, ProgramConfig};
use crate::error::AgentError;
use crate::programmer::families;
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
    /// What the last successful sync of each family applied.
    applied: BTreeMap<IpFamily, FamilyTable>,
    /// Set after a failed sync (the kernel may hold anything) or on request.
    full_next: bool,
    /// What each family's next conntrack reconcile looks at (kept after a failed one).
    conntrack_pending: BTreeMap<IpFamily, crate::conntrack::Pending>,
    metrics: SyncMetrics,
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

    /// The tables of `node`, one per IP family the cluster has, IPv4 first: the Services in
    /// kube-proxy's nftables layout and the NetworkPolicy chains and sets, judged first.
    pub fn tables(
        &self,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<Vec<FamilyTable>, AgentError> {
        // nftables mode has no localhost nodePorts (as kube-proxy's).
        let options = ProxyOptions {
            localhost_nodeports: false,
            ..self.program.proxy_options(state, node)
        };
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

    /// The transaction that syncs `next`: a whole replacement, or only what differs from
    /// what was applied last.
    fn transaction(&self, next: &FamilyTable, kind: SyncKind) -> Result<Transaction, AgentError> {
        let lowered = match (kind, self.applied.get(&next.plan.family)) {
            (SyncKind::Partial, Some(previous)) => lower::update(&previous.table, &next.table),
            _ => lower::replacement(&next.table),
        };
        lowered.map_err(|source| AgentError::NftLowerFailed {
            family: next.plan.family,
            source,
        })
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
        let tables = self.tables(state, node)?;
        let mut report = SyncReport {
            health_checks: tables
                .first()
                .map(|t| t.plan.health_checks())
                .unwrap_or_default(),
            ..SyncReport::default()
        };
        for next in tables {
            let family = next.plan.family;
            let kind = if self.full_next || !self.applied.contains_key(&family) {
                SyncKind::Full
            } else {
                SyncKind::Partial
            };
            let failed = |this: &mut Self| {
                this.full_next = true;
                this.metrics.restore_failed(family, kind);
            };
            let tx = match self.transaction(&next, kind) {
                Ok(tx) => tx,
                Err(e) => {
                    failed(self);
                    return Err(e);
                }
            };
            if let Err(source) = tx.commit(netns) {
                failed(self);
                return Err(AgentError::NftApplyFailed {
                    namespace: netns.to_owned(),
                    step: match family {
                        IpFamily::V4 => "load the ip kube-netd table",
                        IpFamily::V6 => "load the ip6 kube-netd table",
                    },
                    source,
                });
            }
            self.metrics.synced(family, kind);
            let services = match (kind, self.applied.get(&family)) {
                (SyncKind::Partial, Some(previous)) => next.plan.changed_services(&previous.plan),
                _ => next.plan.ports.keys().map(|n| n.service.clone()).collect(),
            };
            self.conntrack_pending
                .entry(family)
                .or_default()
                .add(self.applied.get(&family).map(|p| &p.plan), &next.plan);
            report.families.push(FamilySync {
                family,
                kind,
                services,
                deleted_chains: 0,
                conntrack_deleted: 0,
            });
            self.applied.insert(family, next);
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
            |family| self.applied.get(&family).map(|applied| &applied.plan),
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
