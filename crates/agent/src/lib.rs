//! # netd-agent: one Node's rules, applied atomically and idempotently
//!
//! Start with [`NodeProgrammer`]: from a [`ClusterState`](netd_model::ClusterState) and a
//! Node it builds the Node's whole rule set — the service proxy's chains
//! ([`netd_proxy::plan()`] rendered by [`netd_render::render_services`]) and the NetworkPolicy
//! chains and ipsets ([`netd_policy::compile`] rendered by [`netd_render::render_policy`]) —
//! as [`NodeRules`]: one `ipset restore` payload and one `iptables-restore --noflush` payload
//! (filter and nat together), plus the [`Hook`]s that jump into them. Then [`apply()`] puts them
//! into a network namespace and [`cleanup`] takes everything out again.
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
//! ## Applying ([`apply()`])
//!
//! 1. `ipset restore`: every set in use is created if missing and refilled through a swap;
//! 2. `iptables-save`, then one `iptables-restore --noflush`: our chains flushed and refilled,
//!    our chains that are no longer used flushed and deleted, and a `-I CHAIN 1` line for each
//!    hook the kernel does not already have (so a hook is never duplicated);
//! 3. `ipset destroy` of our sets that are no longer used (nothing refers to them any more).
//!
//! Nothing else in the namespace is touched: other software's chains, rules and sets survive
//! syncs and [`cleanup`].
//!
//! - [`rules`]: [`NodeRules`], [`Hook`], and the [`Programmer`] seam (the lab's agents call it).
//! - [`programmer`](mod@programmer): [`NodeProgrammer`].
//! - [`apply`](mod@apply): [`apply()`], [`cleanup`], and which chains and sets are kube-netd's.

pub mod apply;
pub mod error;
pub mod programmer;
pub mod rules;

pub use apply::{Cleanup, apply, cleanup, is_owned_chain, is_owned_set};
pub use error::AgentError;
pub use programmer::NodeProgrammer;
pub use rules::{BoxError, Hook, NoRules, NodeRules, Programmer};
