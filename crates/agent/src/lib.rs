//! # netd-agent: one Node's rules, applied atomically and idempotently
//!
//! Start with [`NodeProgrammer`]: from a [`ClusterState`](netd_model::ClusterState) and a
//! Node it builds the Node's whole rule set — the service proxy's chains
//! ([`netd_proxy::plan()`] rendered by [`netd_render::render_services`]) and the NetworkPolicy
//! chains and ipsets ([`netd_policy::compile`] rendered by [`netd_render::render_policy`]) —
//! as [`NodeRules`]: the ipsets ([`netd_render::IpSets`]) and, per IP family, the service plan and every
//! chain (filter and nat together), plus the [`Hook`]s that jump into them. Then a
//! [`SyncEngine`] puts them into a network namespace, full or partial, and [`cleanup`] takes
//! everything out again.
//!
//! ## Chains and hooks
//!
//! Each built-in chain kube-netd needs holds exactly one rule of ours, a jump to a dispatch
//! chain it owns: `FORWARD` → `KUBE-NETD-FORWARD`, nat `PREROUTING` → `KUBE-NETD-PREROUTING`,
//! and so on. The dispatch chains are rewritten on every sync and hold, in order, the policy
//! jumps (`KNP-FORWARD`, `KNP-INPUT`) and then kube-proxy's jumps (`KUBE-PROXY-FIREWALL`,
//! `KUBE-FORWARD`, `KUBE-SERVICES`, ...), so NetworkPolicy is always judged before
//! `KUBE-FORWARD` accepts anything, whatever order the hooks were first installed in.
//!
//! ## Syncing ([`SyncEngine`])
//!
//! An agent keeps one [`SyncEngine`] per Node and hands it the [`NodeRules`] of each pass.
//! Each sync is
//!
//! 1. `ipset restore`: on a full sync every set in use is created if missing and refilled
//!    through a swap; on a partial one only the change from the sets last applied (a new or
//!    redefined set as on a full sync, an existing one's new members added, then its old
//!    ones deleted);
//! 2. per IP family, `iptables-save` (`ip6tables-save`), then one `iptables-restore
//!    --noflush` (`ip6tables-restore`): our chains written, our chains that are no longer used
//!    flushed and deleted, and a `-I CHAIN 1` line for each hook the kernel does not already
//!    have (so a hook is never duplicated);
//! 3. `ipset destroy` of our sets that are no longer used (nothing refers to them any more);
//! 4. the conntrack reconciler ([`conntrack`]): stale UDP/SCTP entries of Services whose
//!    endpoints changed are deleted (never TCP) over ctnetlink: after the first sync only the
//!    entries sent to changed frontends are dumped (filtered in the kernel), then deleted by
//!    exact tuple in one datagram.
//!
//! The first sync, and the first after a failed one, is **full**: every chain is written.
//! Later syncs are **partial**, as kube-proxy's (KEP-3453): the filter table, the top-level
//! and policy chains every time, and of the per-service nat chains only those of Services
//! that changed. [`SyncMetrics`] counts both kinds. Nothing is flushed at start-up, so an
//! agent restart leaves the data path, and established connections, alone. [`apply()`] is a
//! one-shot full sync.
//!
//! Nothing else in the namespace is touched: other software's chains, rules and sets survive
//! syncs and [`cleanup`].
//!
//! - [`rules`]: [`NodeRules`], [`FamilyRules`], [`Hook`], and the [`Programmer`] seam (the
//!   lab's agents call it).
//! - [`programmer`](mod@programmer): [`NodeProgrammer`] (IPv4, and IPv6 for dual-stack
//!   clusters) and [`IncrementalProgrammer`], the same rules planned again only where the
//!   cluster changed (what iptables mode runs).
//! - [`sync`](mod@sync): [`SyncEngine`], the [`Applier`] seam and its real [`InNamespace`].
//! - [`ipvs`](mod@ipvs): [`Ipvs`], the IPVS back end (virtual servers, `kube-ipvs0`, IPVS
//!   mode's ipsets and iptables rules; IPv4, and IPv6 for IPv6 and dual-stack clusters) and
//!   its kube-proxy options ([`IpvsConfig`]: scheduler, strict ARP, timeouts, excluded
//!   ranges).
//! - [`conntrack`]: the UDP/SCTP conntrack reconciler's decisions.
//! - [`enforcement`]: whether NetworkPolicy sees the traffic between a Node's Pods (bridged
//!   Pods need `br_netfilter`), and turning that on.
//! - [`apply`](mod@apply): [`apply()`], [`cleanup`], and which chains and sets are kube-netd's.
//! - [`trace`](mod@trace): [`trace_nodes`], a packet walked through these rules node after
//!   node, as `kube-netd trace` prints it; [`trace_nodes_in`] for any back end's rules.

pub mod apply;
pub mod backend;
pub mod conntrack;
pub mod enforcement;
pub mod error;
pub mod ipvs;
pub mod nft;
pub mod programmer;
pub mod rules;
pub mod sync;
pub mod trace;

pub use apply::{Cleanup, apply, cleanup, is_owned_chain, is_owned_set};
pub use backend::{
    Backend, BackendConfig, Iptables, Mode, ProgramConfig, UnknownMode, backend, remove_other_modes,
};
pub use error::AgentError;
pub use ipvs::{Ipvs, IpvsConfig};
pub use nft::Nftables;
pub use programmer::{IncrementalProgrammer, NodeProgrammer};
pub use rules::{BoxError, FamilyRules, Hook, Lineage, NodeRules, Programmer};
pub use sync::{Applier, FamilySync, InNamespace, SyncEngine, SyncKind, SyncMetrics, SyncReport};
pub use trace::{Fate, NodesTrace, TraceRules, trace_nodes, trace_nodes_in};
