//! What a Node's rules are, as the applier takes them, and the seam that produces them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use netd_model::{ClusterState, NodeName, ServiceRef};
use netd_proxy::{IpFamily, ServicePlan};
use netd_render::{ChainName, IpSets, Rule, Ruleset, ServiceRules, SyncScope, Table};

/// A boxed error from a pluggable part (a rule programmer).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The rules one Node needs, as payloads for the kernel's atomic loaders.
///
/// Two kinds of content, which may be combined: kube-netd's own rules per IP family
/// ([`families`](Self::families): the service plan and its rendered chains, which allow
/// partial syncs), and an opaque payload per family ([`iptables`](Self::iptables) with its
/// [`hooks`](Self::hooks), [`ip6tables`](Self::ip6tables) with [`hooks6`](Self::hooks6)),
/// written in full on every sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// The ipsets, written first (rules may reference them): whole on a full sync, as the
    /// change from those last applied on a partial one ([`IpSets`]).
    pub ipset: IpSets,
    /// An IPv4 `iptables-restore --noflush` payload: the chains it declares are flushed and
    /// refilled in one transaction (the same one as the IPv4 family's rules).
    pub iptables: Option<String>,
    /// Jumps from built-in chains into the chains of `iptables`: each is inserted at the top
    /// of its chain, in the same transaction, unless the kernel already has it.
    pub hooks: Vec<Hook>,
    /// An IPv6 `ip6tables-restore --noflush` payload, as `iptables` is for IPv4 (in the IPv6
    /// family's transaction).
    pub ip6tables: Option<String>,
    /// Jumps from built-in chains into the chains of `ip6tables`, as `hooks`.
    pub hooks6: Vec<Hook>,
    /// kube-netd's rules of each IP family it programs, IPv4 first.
    pub families: Vec<FamilyRules>,
    /// Remove what is kube-netd's ([`is_owned_chain`](crate::is_owned_chain),
    /// [`is_owned_set`](crate::is_owned_set)) but not in these rules: chains not declared
    /// (in the same transaction; unused service chains are always removed) and sets not in
    /// `sets` (after it).
    pub prune: bool,
    /// The sets the rules refer to (kept when pruning); every set of [`ipset`](Self::ipset)
    /// is among them.
    pub sets: BTreeSet<String>,
    /// Where these rules come from, when an incremental programmer made them: lets a partial
    /// sync take the changed Services from it instead of comparing every plan and chain.
    /// Without it (or when it is not about the rules last applied) the engine compares; the
    /// payload is the same either way.
    pub lineage: Option<Lineage>,
}

/// Which rules a [`NodeRules`] was made from, and what of [`FamilyRules`] changed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// These rules' identity, unique in the process ([`Lineage::next_id`]).
    pub id: u64,
    /// The rules these were made from, and per family the Services whose port plans or
    /// per-service chains differ from theirs (exactly those: every other Service's are
    /// equal). `None`: not known.
    pub since: Option<(u64, BTreeMap<IpFamily, BTreeSet<ServiceRef>>)>,
}

impl Lineage {
    /// A fresh identity.
    pub fn next_id() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// The Services of `family` that changed since the rules `applied` identifies, if known.
    pub fn changed_since(&self, applied: u64, family: IpFamily) -> Option<&BTreeSet<ServiceRef>> {
        let (base, changed) = self.since.as_ref()?;
        changed.get(&family).filter(|_| *base == applied)
    }
}

/// kube-netd's rules of one IP family: the service plan they were rendered from (what a
/// partial sync compares, and what the conntrack reconciler reads), and every chain of the
/// family — service chains, policy chains and dispatch chains — with the hooks into them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRules {
    /// The service plan of the family.
    pub plan: ServicePlan,
    /// Every chain of the family. Only the per-service nat chains are owned by a Service
    /// ([`ServiceRules::service_chains`]); a partial sync rewrites those of changed Services
    /// and every other chain.
    pub rules: ServiceRules,
    /// Jumps from built-in chains into ours (one per built-in chain).
    pub hooks: Vec<Hook>,
}

impl FamilyRules {
    /// The IP family.
    pub fn family(&self) -> IpFamily {
        self.plan.family
    }

    /// Every chain of the family with each hook at the top of its built-in chain: the rule
    /// set a namespace holds after these rules are applied to it, for the
    /// [tracer](netd_render::trace()).
    pub fn installed(&self) -> Ruleset {
        with_hooks(self.rules.ruleset.clone(), &self.hooks)
    }
}

/// `rs` with each of `hooks` at the top of its built-in chain.
pub(crate) fn with_hooks(mut rs: Ruleset, hooks: &[Hook]) -> Ruleset {
    for hook in hooks {
        let rule = Rule::new()
            .comment(hook.comment.as_str())
            .jump(&ChainName::new(hook.target.as_str()));
        rs.prepend(hook.table, &ChainName::new(hook.chain.as_str()), rule);
    }
    rs
}

impl NodeRules {
    /// What would be applied to a namespace that has none of kube-netd's rules yet: the
    /// `ipset restore` payload, then the `iptables-restore --noflush` payload with every hook
    /// inserted, then the same for `ip6tables-restore` if the Node has IPv6 (what
    /// `kube-netd render` prints).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.ipset.is_empty() {
            out.push_str("# ipset restore -exist\n");
            out.push_str(&self.ipset.full_input());
        }
        let none = BTreeSet::new();
        for family in IpFamily::ALL {
            let mut payload = String::new();
            let mut hooks: Vec<&Hook> = Vec::new();
            if let Some(f) = self.family(family) {
                payload.push_str(&f.rules.restore_input(&f.plan, &SyncScope::Full, &none));
                hooks.extend(&f.hooks);
            }
            let (opaque, opaque_hooks) = self.opaque(family);
            payload.push_str(opaque.unwrap_or_default());
            hooks.extend(opaque_hooks);
            let text = crate::apply::with_extras(&payload, &crate::apply::hook_lines(&hooks));
            if !text.is_empty() {
                out.push_str(match family {
                    IpFamily::V4 => "# iptables-restore --noflush\n",
                    IpFamily::V6 => "# ip6tables-restore --noflush\n",
                });
                out.push_str(&text);
            }
        }
        out
    }

    /// The opaque payload of `family` and its hooks ([`iptables`](Self::iptables) and
    /// [`hooks`](Self::hooks) for IPv4, [`ip6tables`](Self::ip6tables) and
    /// [`hooks6`](Self::hooks6) for IPv6).
    pub fn opaque(&self, family: IpFamily) -> (Option<&str>, &[Hook]) {
        match family {
            IpFamily::V4 => (self.iptables.as_deref(), &self.hooks),
            IpFamily::V6 => (self.ip6tables.as_deref(), &self.hooks6),
        }
    }

    /// kube-netd's rules of `family`, if it programs that family.
    pub fn family(&self, family: IpFamily) -> Option<&FamilyRules> {
        self.families.iter().find(|f| f.family() == family)
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
