//! Putting [`NodeRules`] into a network namespace ([`apply`]) and taking everything of
//! kube-netd's out again ([`cleanup`]), leaving other software's chains, rules and sets alone.
//!
//! Hooks are made idempotent by reading the kernel first: `iptables-save` tells which
//! built-in chains already jump to our dispatch chains, and only the missing jumps are
//! inserted, in the same `iptables-restore` transaction that (re)writes the chains they jump
//! to. Re-running a sync any number of times leaves exactly one hook per built-in chain.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use netd_proxy::IpFamily;
use netd_render::ChainName;
use netd_render::chains::{
    KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS, KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL, KUBE_SERVICES, SERVICE_CHAIN_PREFIXES, is_service_chain,
};
use netd_render::ipvs::{
    KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER, KUBE_LOAD_BALANCER, KUBE_NODE_PORT,
    KUBE_SOURCE_RANGES_FIREWALL,
};
use netd_render::policy::{is_policy_chain, is_policy_set};

use crate::error::AgentError;
use crate::programmer::DISPATCH_PREFIX;
use crate::rules::{Hook, NodeRules};
use crate::sync::{Applier, InNamespace, SyncEngine};

/// kube-proxy's fixed chains, which kube-netd writes as the service proxy (IPVS mode's too).
const PROXY_CHAINS: [&str; 12] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_NODEPORTS,
    KUBE_FORWARD,
    KUBE_PROXY_FIREWALL,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// What [`cleanup`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Rules in built-in chains that jumped into ours.
    pub hooks: usize,
    /// Chains, over all tables.
    pub chains: usize,
    /// ipsets.
    pub sets: usize,
}

/// Whether a chain is kube-netd's: its dispatch chains (`KUBE-NETD-*`), the policy chains
/// (`KNP-*`) and the service proxy's (kube-proxy's names). kubelet's `KUBE-FIREWALL`,
/// `KUBE-KUBELET-CANARY` and the like are not.
pub fn is_owned_chain(chain: &str) -> bool {
    chain.starts_with(DISPATCH_PREFIX)
        || is_policy_chain(chain)
        || is_service_chain(chain)
        || PROXY_CHAINS.contains(&chain)
}

/// Whether an ipset is kube-netd's: the policy sets (`KNP-*`) and IPVS mode's
/// ([`crate::ipvs::is_ipvs_set`]).
pub fn is_owned_set(set: &str) -> bool {
    is_policy_set(set) || crate::ipvs::is_ipvs_set(set)
}

/// Applies `rules` inside the namespace `ns` as a full sync, in transactions ordered so
/// that no packet ever meets a rule referring to a missing or half-filled set: `ipset
/// restore`, one `iptables-restore --noflush` per IP family (with the missing hooks and, when
/// pruning, the removal of our stale chains), then the destruction of our stale sets; then
/// stale UDP/SCTP conntrack entries are deleted. A one-shot [`SyncEngine`]: an agent keeps
/// one engine instead, so that later syncs are partial.
pub fn apply(ns: &str, rules: &NodeRules) -> Result<(), AgentError> {
    SyncEngine::new()
        .sync(&mut InNamespace::new(ns), rules.clone())
        .map(drop)
}

/// Removes from `ns` every hook, chain and ipset of kube-netd's, in one `iptables-restore`
/// and one `ip6tables-restore` transaction and then one `ipset restore`; other software's
/// rules and sets are left alone.
pub fn cleanup(ns: &str) -> Result<Cleanup, AgentError> {
    let failed = |step| {
        move |source| AgentError::CleanupFailed {
            namespace: ns.to_owned(),
            step,
            source,
        }
    };
    let mut kernel = InNamespace::new(ns);
    let mut removed = Cleanup::default();
    for (family, read, restore) in [
        (IpFamily::V4, "read iptables", "restore iptables"),
        (IpFamily::V6, "read ip6tables", "restore ip6tables"),
    ] {
        let saved = Saved::parse(&kernel.save(family).map_err(failed(read))?);
        let mut extras = Extras::new();
        let (hooks, chains) =
            saved.remove_chains(&mut extras, true, |_, chain| is_owned_chain(chain));
        let payload = with_extras("", &extras);
        if !payload.is_empty() {
            kernel.restore(family, &payload).map_err(failed(restore))?;
        }
        removed.hooks += hooks;
        removed.chains += chains;
    }
    let sets: Vec<String> = kernel
        .list_sets()
        .map_err(failed("list ipsets"))?
        .into_iter()
        .filter(|s| is_owned_set(s))
        .collect();
    if !sets.is_empty() {
        let destroy = netd_render::policy::destroy_sets_input(&sets);
        kernel
            .restore_sets(&destroy)
            .map_err(failed("destroy ipsets"))?;
    }
    removed.sets = sets.len();
    Ok(removed)
}

/// Lines to add to a table's block of a restore payload, by table name.
pub(crate) type Extras = BTreeMap<String, Vec<String>>;

/// `-I CHAIN 1 ...` for each hook, by table.
pub(crate) fn hook_lines(hooks: &[&Hook]) -> Extras {
    let mut out = Extras::new();
    // Each goes to the top, so inserting in reverse leaves them in the listed order.
    for hook in hooks.iter().rev() {
        out.entry(hook.table.as_str().to_owned())
            .or_default()
            .push(format!("-I {} 1 {hook}", hook.chain));
    }
    out
}

/// `payload` with `extras` added at the end of each table's block (a block is added for a
/// table the payload does not mention).
pub(crate) fn with_extras(payload: &str, extras: &Extras) -> String {
    let mut out = String::with_capacity(payload.len() + 256);
    let mut table: Option<&str> = None;
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for line in payload.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim());
        } else if line.trim() == "COMMIT"
            && let Some(t) = table.take()
            && done.insert(t)
        {
            // A payload may hold several blocks of one table: the extras go into the first.
            for extra in extras.get(t).into_iter().flatten() {
                out.push_str(extra);
                out.push('\n');
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    for (t, lines) in extras {
        if done.contains(t.as_str()) || lines.is_empty() {
            continue;
        }
        out.push('*');
        out.push_str(t);
        out.push('\n');
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `(table, chain)`s a restore payload declares.
pub(crate) fn declared_chains(payload: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut table = "";
    for line in payload.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
        } else if let Some(decl) = line.strip_prefix(':')
            && let Some(chain) = decl.split_whitespace().next()
        {
            out.insert((table.to_owned(), chain.to_owned()));
        }
    }
    out
}

/// What `iptables-save` printed, by table.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    tables: BTreeMap<String, SavedTable>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct SavedTable {
    /// Chain name → whether it is built in (has a policy).
    chains: BTreeMap<String, bool>,
    /// `(chain, rule text after "-A CHAIN ")`, in order.
    rules: Vec<(String, String)>,
}

impl SavedTable {
    /// The chains, without the per-service ones unless `services`. Those are one run of the
    /// sorted names per prefix ([`SERVICE_CHAIN_PREFIXES`]), stepped over rather than
    /// visited: at 10,000 Services they are 130,000 of a partial sync's few thousand others.
    fn candidates(&self, services: bool) -> Box<dyn Iterator<Item = (&String, &bool)> + '_> {
        if services {
            return Box::new(self.chains.iter());
        }
        let mut prefixes = SERVICE_CHAIN_PREFIXES;
        prefixes.sort_unstable();
        // Each prefix ends in '-': the names it starts are those from it up to the prefix
        // with that '-' made '.', the next character.
        let mut from = Bound::Unbounded;
        let mut gaps = Vec::new();
        for prefix in prefixes {
            gaps.push((from, Bound::Excluded(prefix.to_owned())));
            from = Bound::Included(format!("{}.", prefix.trim_end_matches('-')));
        }
        gaps.push((from, Bound::Unbounded));
        Box::new(
            gaps.into_iter()
                .flat_map(|gap| self.chains.range::<String, _>(gap)),
        )
    }

    /// Records `builtin`'s jump to `target` (as [`Saved::ours`] keeps jumps: sorted, once).
    fn add_jump(&mut self, builtin: &str, target: &str) {
        let jump = (builtin.to_owned(), format!("-j {target}"));
        if let Err(at) = self.rules.binary_search(&jump) {
            self.rules.insert(at, jump);
        }
        self.chains.insert(builtin.to_owned(), true);
    }

    /// Forgets `builtin`'s jump to `target`, and `builtin` with its last jump.
    fn remove_jump(&mut self, builtin: &str, target: &str) {
        let jump = (builtin.to_owned(), format!("-j {target}"));
        if let Ok(at) = self.rules.binary_search(&jump) {
            self.rules.remove(at);
        }
        if !self.rules.iter().any(|(c, _)| c == builtin) {
            self.chains.remove(builtin);
        }
    }
}

impl Saved {
    pub(crate) fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        let mut table: Option<&mut SavedTable> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = Some(saved.tables.entry(name.trim().to_owned()).or_default());
                continue;
            }
            let Some(t) = table.as_deref_mut() else {
                continue;
            };
            if let Some(decl) = line.strip_prefix(':') {
                let mut words = decl.split_whitespace();
                if let (Some(chain), Some(policy)) = (words.next(), words.next()) {
                    t.chains.insert(chain.to_owned(), policy != "-");
                }
            } else if let Some(rule) = line.strip_prefix("-A ")
                && let Some((chain, rest)) = rule.split_once(' ')
            {
                t.rules.push((chain.to_owned(), rest.to_owned()));
            }
        }
        saved
    }

    /// The per-service nat chains (kube-proxy's `KUBE-SVC-`, `KUBE-SEP-`, ...) present.
    pub(crate) fn service_chains(&self) -> BTreeSet<ChainName> {
        self.tables
            .get("nat")
            .into_iter()
            .flat_map(|t| t.chains.keys())
            .filter(|c| is_service_chain(c))
            .map(|c| ChainName::new(c.as_str()))
            .collect()
    }

    /// What of kube-netd's this dump holds, as [`Saved::apply_ours`] keeps it: our chains,
    /// and the rules of built-in chains that jump into them (as `-j TARGET`, sorted), with
    /// those built-in chains. A partial sync works on this instead of reading the kernel
    /// back, which at 10,000 Services costs seconds (and makes iptables-nft's save crash);
    /// the kernel is read again on every full sync.
    pub(crate) fn ours(&self) -> Saved {
        let mut out = Saved::default();
        for (table, t) in &self.tables {
            let ours = out.tables.entry(table.clone()).or_default();
            ours.chains.extend(
                t.chains
                    .iter()
                    .filter(|(c, builtin)| !**builtin && is_owned_chain(c))
                    .map(|(c, _)| (c.clone(), false)),
            );
            for (chain, rule) in &t.rules {
                if t.chains.get(chain) == Some(&true)
                    && let Some(target) = jump_target(rule).filter(|t| is_owned_chain(t))
                {
                    ours.add_jump(chain, target);
                }
            }
        }
        out
    }

    /// Brings what [`Saved::ours`] returned to what the kernel holds of ours once `payload`
    /// has been restored on top: in time proportional to the payload, not to the tables.
    pub(crate) fn apply_ours(&mut self, payload: &str) {
        let mut table: Option<&mut SavedTable> = None;
        for line in payload.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = Some(self.tables.entry(name.trim().to_owned()).or_default());
                continue;
            }
            let Some(t) = table.as_deref_mut() else {
                continue;
            };
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(c) = decl.split_whitespace().next().filter(|c| is_owned_chain(c))
                    && !t.chains.contains_key(c)
                {
                    t.chains.insert(c.to_owned(), false);
                }
            } else if let Some(c) = line.strip_prefix("-X ") {
                let c = c.trim();
                if t.chains.get(c) == Some(&false) {
                    t.chains.remove(c);
                }
            } else if let Some((op, rest)) = line.split_once(' ')
                && matches!(op, "-A" | "-I" | "-D")
                && let Some(chain) = rest.split_whitespace().next().filter(|c| is_builtin(c))
                && let Some(target) = jump_target(rest).filter(|t| is_owned_chain(t))
            {
                if op == "-D" {
                    t.remove_jump(chain, target);
                } else {
                    t.add_jump(chain, target);
                }
            }
        }
    }

    /// Whether `chain` of `table` has a rule jumping to `target`.
    pub(crate) fn has_jump(&self, table: &str, chain: &str, target: &str) -> bool {
        self.tables.get(table).is_some_and(|t| {
            t.rules
                .iter()
                .any(|(c, rule)| c == chain && jump_target(rule) == Some(target))
        })
    }

    /// Adds to `extras` the lines that remove the chains `remove` selects — of the
    /// per-service chains ([`is_service_chain`]) only with `services` — : the rules of
    /// built-in chains jumping to them deleted, then every one flushed, then deleted.
    /// Returns (rules deleted, chains removed).
    pub(crate) fn remove_chains(
        &self,
        extras: &mut Extras,
        services: bool,
        remove: impl Fn(&str, &str) -> bool,
    ) -> (usize, usize) {
        let (mut hooks, mut chains) = (0, 0);
        for (table, t) in &self.tables {
            let doomed: Vec<&str> = t
                .candidates(services)
                .filter(|(c, builtin)| !**builtin && remove(table, c))
                .map(|(c, _)| c.as_str())
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let lines = extras.entry(table.clone()).or_default();
            for (chain, rule) in &t.rules {
                let builtin = t.chains.get(chain).copied().unwrap_or(false);
                if builtin && jump_target(rule).is_some_and(|j| doomed.contains(&j)) {
                    lines.push(format!("-D {chain} {rule}"));
                    hooks += 1;
                }
            }
            lines.extend(doomed.iter().map(|c| format!("-F {c}")));
            lines.extend(doomed.iter().map(|c| format!("-X {c}")));
            chains += doomed.len();
        }
        (hooks, chains)
    }
}

/// The chain a saved rule jumps or goes to (its last `-j`/`-g`).
fn is_builtin(chain: &str) -> bool {
    matches!(
        chain,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

fn jump_target(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_render::Table;

    const SAVE: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:KNP-OLD - [0:0]\n:KUBE-NETD-FORWARD - [0:0]\n-A FORWARD -m comment --comment kube-netd -j KUBE-NETD-FORWARD\n-A FORWARD -j DOCKER\n-A KUBE-NETD-FORWARD -j KNP-OLD\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";

    fn hook(table: Table, chain: &str, target: &str) -> Hook {
        Hook {
            table,
            chain: chain.into(),
            target: target.into(),
            comment: "kube-netd".into(),
        }
    }

    #[test]
    fn stepping_over_the_service_chains_leaves_every_other_chain() {
        let names = [
            "A",
            "KNP-X",
            "KUBE-EXT-A",
            "KUBE-EXT.",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-FW-A",
            "KUBE-MARK-MASQ",
            "KUBE-SEP-A",
            "KUBE-SERVICES",
            "KUBE-SVC",
            "KUBE-SVC-A",
            "KUBE-SVCX",
            "KUBE-SVL-A",
            "ZZZ",
        ];
        let t = SavedTable {
            chains: names.iter().map(|n| (n.to_string(), false)).collect(),
            rules: Vec::new(),
        };
        let all: Vec<&str> = t.candidates(true).map(|(c, _)| c.as_str()).collect();
        assert_eq!(all, names);
        let others: Vec<&str> = t.candidates(false).map(|(c, _)| c.as_str()).collect();
        let want: Vec<&str> = names.into_iter().filter(|c| !is_service_chain(c)).collect();
        assert_eq!(others, want);
        assert_eq!(others.len(), 10);
    }

    #[test]
    fn present_hooks_are_found_by_their_jump() {
        let saved = Saved::parse(SAVE);
        assert!(saved.has_jump("filter", "FORWARD", "KUBE-NETD-FORWARD"));
        assert!(!saved.has_jump("filter", "INPUT", "KUBE-NETD-INPUT"));
        assert!(!saved.has_jump("nat", "FORWARD", "KUBE-NETD-FORWARD"));
    }

    #[test]
    fn cleanup_lines_remove_only_our_chains_and_hooks() {
        let saved = Saved::parse(SAVE);
        let mut extras = Extras::new();
        let counts = saved.remove_chains(&mut extras, true, |_, c| is_owned_chain(c));
        assert_eq!(counts, (1, 3));
        assert_eq!(
            with_extras("", &extras),
            "*filter\n-D FORWARD -m comment --comment kube-netd -j KUBE-NETD-FORWARD\n-F KNP-OLD\n-F KUBE-NETD-FORWARD\n-X KNP-OLD\n-X KUBE-NETD-FORWARD\nCOMMIT\n*nat\n-F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n"
        );
    }

    #[test]
    fn missing_hooks_go_into_their_tables_block_before_commit() {
        let hooks = [
            hook(Table::Filter, "FORWARD", "KUBE-NETD-FORWARD"),
            hook(Table::Nat, "PREROUTING", "KUBE-NETD-PREROUTING"),
        ];
        let refs: Vec<&Hook> = hooks.iter().collect();
        let payload = "*filter\n:KUBE-NETD-FORWARD - [0:0]\nCOMMIT\n";
        assert_eq!(
            with_extras(payload, &hook_lines(&refs)),
            "*filter\n:KUBE-NETD-FORWARD - [0:0]\n-I FORWARD 1 -m comment --comment \"kube-netd\" -j KUBE-NETD-FORWARD\nCOMMIT\n*nat\n-I PREROUTING 1 -m comment --comment \"kube-netd\" -j KUBE-NETD-PREROUTING\nCOMMIT\n"
        );
        assert_eq!(
            declared_chains(payload),
            [("filter".to_owned(), "KUBE-NETD-FORWARD".to_owned())].into()
        );
    }

    #[test]
    fn ownership() {
        for c in [
            "KNP-I-X",
            "KUBE-NETD-FORWARD",
            "KUBE-SVC-X",
            "KUBE-SERVICES",
            "KUBE-MARK-MASQ",
        ] {
            assert!(is_owned_chain(c), "{c}");
        }
        for c in ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "DOCKER", "FORWARD"] {
            assert!(!is_owned_chain(c), "{c}");
        }
        assert!(is_owned_set("KNP-ABC") && !is_owned_set("docker-set"));
        assert_eq!(
            jump_target("-m comment --comment \"a -j B\" -j C"),
            Some("C")
        );
    }
}
