//! nftables: the typed representation ([`ast`]), its incremental update ([`diff`](mod@diff)),
//! kube-proxy's nftables layout for Services ([`services`]) and NetworkPolicy ([`policy`]),
//! and a packet tracer over a table ([`trace`](mod@trace)).
//!
//! Everything kube-netd writes for nftables is one [`Table`] per family (`ip kube-netd`,
//! `ip6 kube-netd`), built as a value first: [`Table::to_nft`] writes a full load,
//! [`diff()`] the commands of an incremental one. See `README.md` in this directory for the
//! layout.

pub mod ast;
pub mod diff;
pub mod incremental;
pub mod policy;
pub mod services;
pub mod trace;

pub use ast::{
    AddrType, BaseChain, Chain, ChainType, CtState, CtStatus, DataType, Element, Field, Hook,
    IcmpReject, IfName, KeyType, MapRef, MapValue, Match, Op, Priority, RejectWith, Rhs, Rule,
    SHARES, Set, SetFlag, StandardPriority, Statement, TABLE_NAME, Table, Value, Verdict, low_bits,
};
pub use diff::{Command, diff, diff_commands};
pub use incremental::{Delta, NodeTable};
pub use policy::{merge_into, render_policy_nft};
pub use services::{render_port_nft, render_services_nft, render_top_level_nft};
pub use trace::{NftTraceError, trace_nft};
