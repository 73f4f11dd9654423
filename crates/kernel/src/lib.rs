//! # netd-kernel: the only code that touches the kernel
//!
//! Everything kube-netd does to a Linux kernel goes through this crate, and all of it happens
//! inside named network namespaces (`/run/netns/NAME`) that the caller created: nothing here
//! touches the host's own namespace.
//!
//! Start with [`netns`] (create, delete, enter and run commands in a namespace), then
//! [`link`] (veth pairs, bridges, addresses, routes, sysctls), [`rules`] (atomic
//! `iptables-restore` / `ipset restore`) and [`process`] (ending processes
//! by PID); [`module`] loads the kernel modules a node needs (`br_netfilter`, `nf_conntrack`,
//! `sctp`, IPVS) unless the running kernel already has them, and detects SCTP sockets. Every
//! failure is a [`KernelError`] naming the command and carrying its stderr. [`nftnl`] speaks
//! nf_tables over netlink directly: typed tables, chains, rules, sets and elements sent as one
//! atomic batch, with [`nftnl::NftError`] naming a refused message; [`nftnl::conntrack`]
//! lists conntrack entries filtered in the kernel and deletes them by exact tuple.
//!
//! The work is done with the standard tools (`ip`, `iptables-restore`, `ipset`)
//! so that what kube-netd does can be replayed by hand; entering a namespace from a thread
//! ([`netns::enter`]) uses `setns(2)` directly, [`nftnl`] a netlink socket opened from such a
//! thread, and [`ipvs`] programs the kernel's IPVS virtual servers over generic netlink the
//! same way (`ipvsadm` is not on every node, and one message per change is the unit the
//! kernel applies anyway).

pub mod error;
pub mod ipvs;
pub mod link;
pub mod module;
pub mod netns;
pub mod nftnl;
pub mod process;
pub mod rules;

mod cmd;

pub use error::KernelError;
