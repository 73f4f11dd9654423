//! [`NodeProgrammer`]: the service proxy and the NetworkPolicy enforcer of one Node, as one
//! rule set.

use std::collections::BTreeMap;

use netd_model::{ClusterState, NodeName};
use netd_proxy::IpFamily;
use netd_render::{
    ChainName, HookRule, RenderOptions, Ruleset, Table, render_policy, render_services,
};

use crate::backend::ProgramConfig;
use crate::error::AgentError;
use crate::rules::{BoxError, FamilyRules, Hook, NodeRules, Programmer};

/// The prefix of the dispatch chains: `KUBE-NETD-` + the built-in chain's name.
pub const DISPATCH_PREFIX: &str = "KUBE-NETD-";

/// Builds a Node's whole rule set, per IP family the cluster has (IPv4, and IPv6 when a
/// service range is IPv6): kube-proxy's layout for Services and kube-netd's NetworkPolicy
/// chains, hooked through one dispatch chain per built-in chain (policy first). A pure
/// function of the cluster and the Node; the [`SyncEngine`](crate::SyncEngine) decides
/// what of it a sync rewrites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeProgrammer {
    /// How service rules are rendered.
    pub render: RenderOptions,
    /// What the plans are made from (proxy settings, NetworkPolicy on or off).
    pub program: ProgramConfig,
}

impl NodeProgrammer {
    /// The rules of `node`.
    pub fn rules(&self, state: &ClusterState, node: &NodeName) -> Result<NodeRules, AgentError> {
        let options = self.program.proxy_options(state, node);
        let plan = self.program.policy_plan(state, node)?;
        let mut out = NodeRules {
            prune: true,
            ..NodeRules::default()
        };
        let mut ipset = String::new();
        for family in families(state) {
            let service_plan = netd_proxy::plan(state, node, family, &options);
            let mut rules = render_services(&service_plan, &self.render);
            let policy = plan.as_ref().map(|p| render_policy(p, family));
            let mut policy_hooks: &[HookRule] = &[];
            if let Some(policy) = &policy {
                rules.ruleset.extend(&policy.ruleset);
                ipset.push_str(&policy.ipset_input());
                out.sets.extend(policy.set_names());
                policy_hooks = &policy.hooks;
            }
            // Each hook list is in insertion order (the last ends up first), so the policy
            // hooks, inserted last, come first in every dispatch chain.
            let all: Vec<&HookRule> = rules.hooks.iter().chain(policy_hooks).collect();
            let hooks = dispatch(&mut rules.ruleset, &all);
            out.families.push(FamilyRules {
                plan: service_plan,
                rules,
                hooks,
            });
        }
        out.ipset = Some(ipset);
        Ok(out)
    }
}

/// The IP families a Node programs: those of the cluster's service ranges (IPv4 alone if
/// none is configured), IPv4 first.
pub fn families(state: &ClusterState) -> Vec<IpFamily> {
    let ranges = &state.config().service_cidrs;
    let mut out: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|f| ranges.iter().any(|r| f.contains_net(r)))
        .collect();
    if out.is_empty() {
        out.push(IpFamily::V4);
    }
    out
}

impl Programmer for NodeProgrammer {
    fn program(&self, state: &ClusterState, node: &NodeName) -> Result<NodeRules, BoxError> {
        Ok(self.rules(state, node)?)
    }
}

/// Moves `hooks` into dispatch chains of `ruleset` (in the order the hooks would end up in
/// their built-in chains) and returns the one hook per built-in chain that jumps to each.
pub(crate) fn dispatch(ruleset: &mut Ruleset, hooks: &[&HookRule]) -> Vec<Hook> {
    let mut chains: BTreeMap<(Table, ChainName), ChainName> = BTreeMap::new();
    for hook in hooks.iter().rev() {
        let name = chains
            .entry((hook.table, hook.chain.clone()))
            .or_insert_with(|| ChainName::new(format!("{DISPATCH_PREFIX}{}", hook.chain)))
            .clone();
        ruleset.append(hook.table, &name, hook.rule.clone());
    }
    chains
        .into_iter()
        .map(|((table, chain), target)| Hook {
            table,
            chain: chain.as_str().to_owned(),
            target: target.as_str().to_owned(),
            comment: "kube-netd".to_owned(),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Node `node-1`, Pod `x/a` on it (10.244.1.2, port 80) and a NetworkPolicy `x/p`
    /// selecting every Pod of `x`, allowing ingress from `x`.
    pub(crate) const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}
"#;

    #[test]
    fn policy_is_dispatched_before_kube_forward_and_each_builtin_has_one_hook() {
        let state = netd_testkit::state(CLUSTER);
        let rules = NodeProgrammer::default()
            .rules(&state, &NodeName::new("node-1"))
            .expect("rules");
        let text = rules
            .family(IpFamily::V4)
            .expect("IPv4 rules")
            .rules
            .ruleset
            .to_restore();
        let forward: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NETD-FORWARD "))
            .collect();
        assert!(forward[0].ends_with("-j KNP-FORWARD"), "{forward:?}");
        let kube_forward = forward
            .iter()
            .position(|l| l.ends_with("-j KUBE-FORWARD"))
            .expect("KUBE-FORWARD dispatched");
        assert!(kube_forward > 0);
        let hooked: Vec<(Table, &str)> = rules.families[0]
            .hooks
            .iter()
            .map(|h| (h.table, h.chain.as_str()))
            .collect();
        assert_eq!(
            hooked,
            [
                (Table::Filter, "FORWARD"),
                (Table::Filter, "INPUT"),
                (Table::Filter, "OUTPUT"),
                (Table::Nat, "OUTPUT"),
                (Table::Nat, "POSTROUTING"),
                (Table::Nat, "PREROUTING"),
            ]
        );
        assert!(
            !text.contains(":FORWARD"),
            "built-in chains are never declared: {text}"
        );
        assert!(rules.prune);
        assert_eq!(rules.sets.len(), 1);
        let shown = rules.to_text();
        assert!(
            shown.contains(
                "-I FORWARD 1 -m comment --comment \"kube-netd\" -j KUBE-NETD-FORWARD\nCOMMIT"
            ),
            "{shown}"
        );
    }
}
