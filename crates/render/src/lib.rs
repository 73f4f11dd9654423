//! # netd-render: plans rendered into kernel rule sets
//!
//! Start with [`render_services`]: it turns a [`netd_proxy::ServicePlan`] into
//! [`ServiceRules`] — kube-proxy's iptables layout as a typed [`Ruleset`], plus the hook rules
//! that jump into it from the built-in chains. [`ServiceRules::restore_input`] writes the
//! `iptables-restore --noflush` payload of a full or partial sync (the applier feeds it to
//! `iptables-restore` or, for an IPv6 plan, `ip6tables-restore`).
//!
//! - [`iptables`]: the rule representation ([`Ruleset`], [`Rule`], [`Match`], [`Target`]) and
//!   its byte-deterministic `iptables-restore` rendering. Matches stay structured so the
//!   tracer can evaluate them and other renderers (NetworkPolicy, ipset matches) can reuse them.
//! - [`chains`]: kube-proxy's chain names and hashes.
//! - [`ipset`](mod@ipset): ipsets as data ([`IpSets`]: each set's definition and members),
//!   written as `ipset restore` input in full or as the change from what was applied last.
//! - [`policy`]: the NetworkPolicy renderer ([`render_policy`], [`PolicyRules`]): per-Pod
//!   filter chains and the ipsets they match, with a two-phase apply order.
//! - [`nft`]: the nftables representation ([`nft::Table`]), its `nft -f` text, the
//!   incremental update between two tables ([`nft::diff()`]), and kube-proxy's nftables
//!   layout for Services ([`nft::render_services_nft`]; `src/nft/README.md` describes it),
//!   with NetworkPolicy in the same table ([`nft::render_policy_nft`]).
//! - [`services`]: the service renderer ([`render_services`], [`SyncScope`]).
//! - [`ipvs`]: the IPVS back end ([`render_ipvs`], [`IpvsRules`]): virtual and real servers
//!   with their `ipvsadm-restore` text and a diff between two syncs, the `kube-ipvs0`
//!   addresses, the ipsets and the few iptables rules IPVS mode keeps.
//! - [`trace`](mod@trace): a packet tracer over a [`Ruleset`] ([`trace()`]): chains traversed, every DNAT
//!   choice with its probability, masquerade, reject and drop, the NetworkPolicy rule that
//!   decided, and Service addresses left undnatted; set matches read the `ipset restore`
//!   payload ([`Host::load_ipset`]). [`trace_ipvs`] walks IPVS mode: the fixed chains and
//!   the virtual server a packet meets, each real server a branch with its share.
//!
//! The crate is pure: it never touches the kernel.

pub mod chains;
pub mod ipset;
pub mod iptables;
pub mod ipvs;
pub mod nft;
pub mod policy;
pub mod services;
pub mod trace;

pub use ipset::{IpSet, IpSets, SetDefinition};
pub use iptables::{ChainName, HookRule, Match, Rule, Ruleset, Table, Target};
pub use ipvs::{IpvsOptions, IpvsRules, render_ipvs};
pub use policy::{PolicyRules, render_policy};
pub use services::{RenderOptions, ServiceRules, SyncScope, render_services};
pub use trace::{Host, IpvsStep, Origin, Packet, Trace, TraceError, Verdict, trace, trace_ipvs};
