//! [`NodeProgrammer`]: the service proxy and the NetworkPolicy enforcer of one Node, as one
//! rule set; [`IncrementalProgrammer`], the same rules planned again only where the cluster
//! changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use netd_model::{ClusterState, Kind, NodeName, ServicePortName, ServiceRef};
use netd_policy::PolicyPlan;
use netd_proxy::{IpFamily, PortPlans, ProxyOptions, ServicePlan};
use netd_render::{
    ChainName, HookRule, RenderOptions, Ruleset, Table, render_policy, render_services,
};

use crate::backend::ProgramConfig;
use crate::error::AgentError;
use crate::rules::{BoxError, FamilyRules, Hook, Lineage, NodeRules, Programmer};

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
        let policy = self.program.policy_plan(state, node)?;
        let plans = families(state)
            .into_iter()
            .map(|family| netd_proxy::plan(state, node, family, &options))
            .collect();
        Ok(self.render_plans(plans, policy.as_ref()))
    }

    /// The rules of a Node's service plans (one per family, IPv4 first) and policy plan.
    fn render_plans(&self, plans: Vec<ServicePlan>, plan: Option<&PolicyPlan>) -> NodeRules {
        let mut out = NodeRules {
            prune: true,
            ..NodeRules::default()
        };
        for service_plan in plans {
            let family = service_plan.family;
            let mut rules = render_services(&service_plan, &self.render);
            let policy = plan.as_ref().map(|p| render_policy(p, family));
            let mut policy_hooks: &[HookRule] = &[];
            if let Some(policy) = &policy {
                rules.ruleset.extend(&policy.ruleset);
                out.ipset.append(policy.ipsets());
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
        out
    }
}

/// A [`NodeProgrammer`] that keeps what it planned and rendered last and, for the next
/// state, plans again only what changed ([`Replanner`]) and renders again only the Services
/// planned again ([`ServiceRules::rerender`](netd_render::ServiceRules::rerender); everything when the policy plan was made
/// again). Its rules are the [`NodeProgrammer`]'s for the same state, with a [`Lineage`]
/// naming the Services that changed since its last rules, which spares the
/// [`SyncEngine`](crate::SyncEngine) comparing every plan and chain. The saving is in time,
/// between states one was changed from, as a store's successive snapshots are
/// ([`ClusterState::changed_objects`] finds their differences without reading the rest).
#[derive(Debug)]
pub struct IncrementalProgrammer {
    programmer: NodeProgrammer,
    last: Mutex<Last>,
}

/// What an [`IncrementalProgrammer`] planned and returned last.
#[derive(Debug, Default)]
struct Last {
    replanner: Replanner,
    /// The rules returned last; `None` after an error.
    rules: Option<NodeRules>,
}

impl IncrementalProgrammer {
    /// Programs as `programmer` does, remembering its last plans.
    pub fn new(programmer: NodeProgrammer) -> Self {
        Self {
            programmer,
            last: Mutex::new(Last::default()),
        }
    }

    /// The rules of `node`, equal to [`NodeProgrammer::rules`] but for their
    /// [`lineage`](NodeRules::lineage).
    pub fn rules(&self, state: &ClusterState, node: &NodeName) -> Result<NodeRules, AgentError> {
        // Plans and rules are only ever replaced whole (the rules are taken out while being
        // changed), so a panic elsewhere cannot leave half of one.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let Last { replanner, rules } = &mut *last;
        let previous = rules.take();
        let program = &self.programmer.program;
        let replan = replanner.plan(program, state, node, program.proxy_options(state, node))?;
        let next = match previous.and_then(|p| self.rerender(p, &replan, replanner.plans())) {
            Some(next) => next,
            None => {
                let mut next = self
                    .programmer
                    .render_plans(replanner.plans().to_vec(), replanner.policy());
                next.lineage = Some(Lineage {
                    id: Lineage::next_id(),
                    since: None,
                });
                next
            }
        };
        *rules = Some(next.clone());
        Ok(next)
    }

    /// `previous` brought to `plans` by rendering again the Services `replan` planned
    /// again; `None` when everything must be rendered (the policy plan was made again, a
    /// family planned from scratch, or [`ServiceRules::rerender`](netd_render::ServiceRules::rerender) declined).
    fn rerender(
        &self,
        previous: NodeRules,
        replan: &Replan,
        plans: &[ServicePlan],
    ) -> Option<NodeRules> {
        if replan.policy_replanned || previous.families.len() != plans.len() {
            return None;
        }
        let base = previous.lineage.as_ref()?.id;
        let mut next = previous;
        let mut changed = BTreeMap::new();
        for ((rules, plan), replaced) in next.families.iter_mut().zip(plans).zip(&replan.families) {
            let Some(Replaced {
                changed: Some(replanned),
                ..
            }) = replaced
            else {
                return None;
            };
            if rules.family() != plan.family
                || !rules
                    .rules
                    .rerender(&rules.plan, plan, replanned, &self.programmer.render)
            {
                return None;
            }
            // Planned again is not changed: an update may leave a Service's plan as it was.
            let differ = replanned
                .iter()
                .filter(|s| {
                    let one = BTreeSet::from([(*s).clone()]);
                    rules
                        .plan
                        .ports_of_services(&one)
                        .ne(plan.ports_of_services(&one))
                })
                .cloned()
                .collect();
            changed.insert(plan.family, differ);
            // The plans differ in the replanned Services' ports alone (and `rerender` found
            // their settings equal): bring those over rather than copying every port.
            let before: Vec<ServicePortName> = rules
                .plan
                .ports_of_services(replanned)
                .map(|(name, _)| name.clone())
                .collect();
            for name in &before {
                rules.plan.ports.remove(name);
            }
            rules.plan.ports.extend(
                plan.ports_of_services(replanned)
                    .map(|(name, port)| (name.clone(), port.clone())),
            );
        }
        next.lineage = Some(Lineage {
            id: Lineage::next_id(),
            since: Some((base, changed)),
        });
        Some(next)
    }
}

/// What was planned last and from what, so that the next state is planned again only where
/// it changed: the Services whose Service or EndpointSlices differ ([`netd_proxy::replan`]),
/// and the NetworkPolicy plan only when Namespaces, Nodes, Pods or NetworkPolicies changed.
/// Everything is planned afresh for another Node, other proxy options or other cluster
/// settings. Used by [`IncrementalProgrammer`] and the nftables back end.
#[derive(Debug, Default)]
pub struct Replanner {
    last: Option<Planned>,
}

/// What a [`Replanner`] planned last, and from what.
#[derive(Debug)]
struct Planned {
    node: NodeName,
    state: ClusterState,
    options: ProxyOptions,
    policy: Option<PolicyPlan>,
    plans: Vec<ServicePlan>,
}

/// What one [`Replanner::plan`] changed.
#[derive(Debug)]
pub struct Replan {
    /// Per family, in the order of [`Replanner::plans`]: what the new plan replaced (every
    /// port, when the family was planned from scratch for another Node, other options or
    /// settings), or `None` when nothing was planned for the family before.
    pub families: Vec<Option<Replaced>>,
    /// Whether the policy plan was made again (it may still equal the last one).
    pub policy_replanned: bool,
}

/// What a family's new plan replaced: [`netd_proxy::Replanned`] without the plan.
#[derive(Debug)]
pub struct Replaced {
    /// The Services planned again; `None` when all were.
    pub changed: Option<BTreeSet<ServiceRef>>,
    /// Their ports in the previous plan.
    pub ports: PortPlans,
}

impl Replanner {
    /// Plans `node` in `state` with `options`, again only where `state` differs from the last
    /// state planned. On an error nothing is remembered, so the next call plans afresh.
    pub fn plan(
        &mut self,
        program: &ProgramConfig,
        state: &ClusterState,
        node: &NodeName,
        options: ProxyOptions,
    ) -> Result<Replan, AgentError> {
        let last = self.last.take();
        let (policy, plans, replan) = match last {
            Some(l)
                if l.node == *node
                    && l.options == options
                    && l.state.config() == state.config() =>
            {
                let policy_inputs = [Kind::Namespace, Kind::Node, Kind::Pod, Kind::NetworkPolicy];
                let (policy, policy_replanned) = if policy_inputs
                    .iter()
                    .all(|k| state.shares_kind(&l.state, *k))
                {
                    (l.policy, false)
                } else {
                    (program.policy_plan(state, node)?, true)
                };
                let mut families = Vec::new();
                let plans = l
                    .plans
                    .into_iter()
                    .map(|p| {
                        let r = netd_proxy::replan(p, &l.state, state, &options);
                        families.push(Some(Replaced {
                            changed: r.changed,
                            ports: r.replaced,
                        }));
                        r.plan
                    })
                    .collect();
                let replan = Replan {
                    families,
                    policy_replanned,
                };
                (policy, plans, replan)
            }
            last => {
                let policy = program.policy_plan(state, node)?;
                let plans: Vec<ServicePlan> = families(state)
                    .into_iter()
                    .map(|family| netd_proxy::plan(state, node, family, &options))
                    .collect();
                let mut before: BTreeMap<IpFamily, _> = last
                    .into_iter()
                    .flat_map(|l| l.plans)
                    .map(|p| (p.family, p.ports))
                    .collect();
                let replan = Replan {
                    families: plans
                        .iter()
                        .map(|p| {
                            let ports = before.remove(&p.family)?;
                            Some(Replaced {
                                changed: None,
                                ports,
                            })
                        })
                        .collect(),
                    policy_replanned: true,
                };
                (policy, plans, replan)
            }
        };
        self.last = Some(Planned {
            node: node.clone(),
            state: state.clone(),
            options,
            policy,
            plans,
        });
        Ok(replan)
    }

    /// The service plans of the last [`plan`](Self::plan), one per family, IPv4 first.
    pub fn plans(&self) -> &[ServicePlan] {
        self.last.as_ref().map_or(&[], |l| &l.plans)
    }

    /// The policy plan of the last [`plan`](Self::plan) (`None`: NetworkPolicy is off).
    pub fn policy(&self) -> Option<&PolicyPlan> {
        self.last.as_ref().and_then(|l| l.policy.as_ref())
    }
}

impl Programmer for IncrementalProgrammer {
    fn program(&self, state: &ClusterState, node: &NodeName) -> Result<NodeRules, BoxError> {
        Ok(self.rules(state, node)?)
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
    pub(crate) const CLUSTER: &str = concat!(
        netd_testkit::node_1!(),
        r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}
"#
    );

    pub(crate) mod incremental {
        use netd_model::Object;
        use proptest::prelude::*;

        use super::*;

        /// One object of a small pool: Services (ClusterIP, NodePort, with external IPs,
        /// with ClientIP affinity, with a UDP port) and their slices (moved between Services,
        /// endpoints here or elsewhere, ready or terminating), Pods (labels, node, IP), a
        /// NetworkPolicy selecting by label, a Namespace's labels, and the Node itself.
        pub(crate) fn object() -> impl Strategy<Value = Object> {
            let name = || prop_oneof![Just("a"), Just("b"), Just("c")];
            prop_oneof![
                (name(), 1u16..4, 0u8..5).prop_map(|(name, port, kind)| {
                    let spec = match kind {
                        0 => format!("{{type: NodePort, clusterIP: 10.96.1.{port}, ports: [{{name: p, port: 80, nodePort: 3000{port}}}]}}"),
                        1 => format!("{{clusterIP: 10.96.2.{port}, externalIPs: [192.168.9.{port}], ports: [{{name: p, port: 80}}]}}"),
                        2 => format!("{{clusterIP: 10.96.3.{port}, sessionAffinity: ClientIP, ports: [{{name: p, port: 80}}]}}"),
                        3 => format!("{{clusterIP: 10.96.4.{port}, ports: [{{name: p, port: 53}}, {{name: u, port: 53, protocol: UDP}}]}}"),
                        _ => format!("{{clusterIP: 10.96.0.{port}, ports: [{{name: p, port: {port}}}]}}"),
                    };
                    one(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n"))
                }),
                (name(), name(), any::<bool>(), 1u8..4, any::<bool>()).prop_map(|(slice, svc, here, ip, terminating)| {
                    let node = if here { "node-1" } else { "node-2" };
                    let conditions = if terminating {
                        "{ready: false, serving: true, terminating: true}"
                    } else {
                        "{ready: true}"
                    };
                    one(&format!(
                        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                         metadata: {{name: s-{slice}, namespace: x, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
                         ports: [{{name: p, port: 8080, protocol: TCP}}, {{name: u, port: 5353, protocol: UDP}}]\n\
                         endpoints: [{{addresses: [10.244.1.{ip}], nodeName: {node}, conditions: {conditions}}}]\n"
                    ))
                }),
                (name(), name(), any::<bool>(), 1u8..4).prop_map(|(name, app, here, ip)| {
                    let node = if here { "node-1" } else { "node-2" };
                    one(&format!(
                        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\n\
                         spec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\n\
                         status: {{podIP: 10.244.1.{ip}}}\n"
                    ))
                }),
                (name(), name()).prop_map(|(name, app)| one(&format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
                     spec: {{podSelector: {{matchLabels: {{app: {app}}}}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t}}}}}}]}}]}}\n"
                ))),
                any::<bool>().prop_map(|team| one(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{team: {}}}}}\n",
                    if team { "t" } else { "u" }
                ))),
                (1u8..3).prop_map(|ip| one(&format!(
                    "apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nspec: {{podCIDR: 10.244.1.0/24}}\n\
                     status: {{addresses: [{{type: InternalIP, address: 172.18.0.{ip}}}]}}\n"
                ))),
            ]
        }

        pub(crate) fn one(yaml: &str) -> Object {
            netd_testkit::objects(yaml).remove(0)
        }

        /// Rendering options with endpoint comments dropped from `endpoints` endpoints on,
        /// so that a sequence of changes crosses the threshold both ways.
        pub(crate) fn programmer(endpoints: usize) -> NodeProgrammer {
            NodeProgrammer {
                render: RenderOptions {
                    large_cluster_endpoints: endpoints,
                    ..RenderOptions::default()
                },
                ..NodeProgrammer::default()
            }
        }

        /// `rules` without their lineage, as the whole programmer makes them.
        pub(crate) fn unrelated(rules: NodeRules) -> NodeRules {
            NodeRules {
                lineage: None,
                ..rules
            }
        }

        proptest! {
            /// After any sequence of changes the incremental programmer's rules (plans and
            /// rendered chains) are the whole programmer's for the same state, and each
            /// names as changed exactly the Services a comparison with the previous finds.
            #[test]
            fn equals_programming_from_scratch(
                changes in proptest::collection::vec((object(), any::<bool>()), 1..16),
                endpoints in prop_oneof![Just(1000usize), 1usize..4],
            ) {
                let node = NodeName::new("node-1");
                let whole = programmer(endpoints);
                let incremental = IncrementalProgrammer::new(programmer(endpoints));
                let mut state = netd_testkit::state(CLUSTER);
                let mut previous: Option<NodeRules> = None;
                for (object, remove) in changes {
                    if remove {
                        state.remove(&object.id());
                    } else {
                        state.insert(object).expect("valid object");
                    }
                    // Without its Node the policy plan fails in both.
                    let expected = whole.rules(&state, &node).ok();
                    let rules = incremental.rules(&state, &node).ok();
                    let lineage = rules.as_ref().and_then(|r| r.lineage.clone());
                    prop_assert_eq!(rules.clone().map(unrelated), expected);
                    let since = lineage.as_ref().and_then(|l| l.since.as_ref());
                    if let (Some((base, changed)), Some(before), Some(now)) =
                        (since, &previous, &rules)
                    {
                        prop_assert_eq!(Some(*base), before.lineage.as_ref().map(|l| l.id));
                        for (b, n) in before.families.iter().zip(&now.families) {
                            let mut compared = n.plan.changed_services(&b.plan);
                            compared.extend(crate::sync::changed_chains(b, n));
                            prop_assert_eq!(changed.get(&n.family()), Some(&compared));
                        }
                    }
                    previous = rules;
                }
            }
        }
    }

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
