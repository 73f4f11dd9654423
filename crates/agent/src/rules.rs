//! What a Node's rules are, as the applier takes them, and the seam that produces them.

use std::collections::BTreeSet;
use std::fmt;

use netd_model::{ClusterState, NodeName};
use netd_render::Table;

/// A boxed error from a pluggable part (a rule programmer).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The rules one Node needs, as payloads for the kernel's atomic loaders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// An `ipset restore -exist` payload, applied first (rules may reference its sets).
    pub ipset: Option<String>,
    /// An `iptables-restore --noflush` payload: the chains it declares are flushed and
    /// refilled in one transaction.
    pub iptables: Option<String>,
    /// Jumps from built-in chains into ours: each is inserted at the top of its chain, in the
    /// same transaction as `iptables`, unless the kernel already has it.
    pub hooks: Vec<Hook>,
    /// Remove what is kube-netd's ([`is_owned_chain`](crate::is_owned_chain),
    /// [`is_owned_set`](crate::is_owned_set)) but not in these rules: chains not declared in
    /// `iptables` (in the same transaction) and sets not in `sets` (after it).
    pub prune: bool,
    /// The sets `iptables` refers to (kept when pruning).
    pub sets: BTreeSet<String>,
}

impl NodeRules {
    /// What would be applied to a namespace that has none of kube-netd's rules yet: the
    /// `ipset restore` payload, then the `iptables-restore --noflush` payload with every hook
    /// inserted (what `kube-netd render` prints).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(ipset) = self.ipset.as_deref().filter(|s| !s.is_empty()) {
            out.push_str("# ipset restore -exist\n");
            out.push_str(ipset);
        }
        let hooks: Vec<&Hook> = self.hooks.iter().collect();
        let iptables = crate::apply::with_extras(
            self.iptables.as_deref().unwrap_or_default(),
            &crate::apply::hook_lines(&hooks),
        );
        if !iptables.is_empty() {
            out.push_str("# iptables-restore --noflush\n");
            out.push_str(&iptables);
        }
        out
    }
}

/// A jump from a built-in chain into a chain of ours.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hook {
    /// The table.
    pub table: Table,
    /// The built-in chain (`FORWARD`, `PREROUTING`, ...).
    pub chain: String,
    /// Our chain it jumps to. A rule of `chain` jumping to `target` counts as this hook.
    pub target: String,
    /// The rule's comment.
    pub comment: String,
}

impl fmt::Display for Hook {
    /// The rule as `-I CHAIN 1` inserts it (without the `-I CHAIN 1`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.target
        )
    }
}

/// Turns the cluster into one Node's rules: the seam where the service proxy and the policy
/// enforcer plug into the lab's agents. Implementations are pure; the caller applies what
/// they return ([`apply`](crate::apply())).
pub trait Programmer: Send + Sync {
    /// The rules `node` needs for `state`.
    fn program(&self, state: &ClusterState, node: &NodeName) -> Result<NodeRules, BoxError>;
}

/// A [`Programmer`] that programs nothing: a flat pod network without Services or policies.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRules;

impl Programmer for NoRules {
    fn program(&self, _: &ClusterState, _: &NodeName) -> Result<NodeRules, BoxError> {
        Ok(NodeRules::default())
    }
}
