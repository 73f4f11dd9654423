//! One family's table kept up to date per changed Service port: [`NodeTable`].
//!
//! A full render ([`render_services_nft`](super::render_services_nft) and the policy merged
//! in) costs time in proportion to the node's Services, and so does diffing it against the
//! previous table. Every Service port's objects, though, are its own: its chains and sets,
//! and its elements of the maps and sets every port shares (`service-ips`, `cluster-ips`,
//! `plain-services`, the `endpoints-<i>` shards, `hairpin`, …). So a change of a few ports
//! renders those ports alone, before and after ([`render_port_nft`]), and the update is the
//! difference of those objects only ([`Delta`]); the policy part, when its plan changed, is
//! rendered and compared whole (it is small). Whatever the whole plan decides — the
//! top-level objects ([`render_top_level_nft`]) and whether endpoints carry comments — is
//! checked, and when it changed [`NodeTable::update`] says so and the caller renders in full.
//!
//! Two ports can give the same element key of a shared set (every port of a Service has its
//! ClusterIP in `cluster-ips`; one Pod backs many Services' `hairpin` pairs). The table keeps,
//! per shared key, the ports that give it, and the element is the last port's, as a full
//! render leaves it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use netd_model::ServicePortName;
use netd_proxy::{PortPlans, ServicePlan, ServicePortPlan};

use super::ast::{Element, Table, Value};
use super::services::{endpoint_comments, endpoint_count, render_port_nft, render_top_level_nft};
use crate::services::RenderOptions;

/// The ports that give each element of each shared set: set name, then key.
type Owners = BTreeMap<String, BTreeMap<Vec<Value>, BTreeSet<ServicePortName>>>;

/// One family's whole table (Services and NetworkPolicy), as a full render gives it, with
/// what it takes to bring it forward per changed Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTable {
    table: Table,
    /// The top-level objects the table was rendered with.
    top: Table,
    /// The policy objects merged in (an empty table without NetworkPolicy).
    policy: Table,
    /// How many endpoints the plan has, and whether they carry comments.
    endpoints: usize,
    comments: bool,
    owners: Owners,
}

/// What an update changes: the objects it touches as they were and as they become. A shared
/// set appears in both with its definition and only the touched elements, so
/// [`diff_commands`](super::diff_commands)`(before, after)` is the update's commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The touched objects before the update.
    pub before: Table,
    /// The touched objects after it.
    pub after: Table,
}

impl NodeTable {
    /// The table of `plan` with `policy` (the policy objects, if any) merged in: equal to
    /// [`render_services_nft`](super::render_services_nft) followed by
    /// [`merge_into`](super::merge_into).
    pub fn new(plan: &ServicePlan, policy: Option<Table>, options: &RenderOptions) -> Self {
        let top = render_top_level_nft(plan);
        let endpoints = endpoint_count(plan.ports.values());
        let comments = endpoint_comments(endpoints, options);
        let mut out = Self {
            table: top.clone(),
            top,
            policy: Table::new(plan.family),
            endpoints,
            comments,
            owners: Owners::new(),
        };
        for (name, port) in &plan.ports {
            let fragment = render_port_nft(plan, port, comments);
            out.add_fragment(name, fragment);
        }
        out.set_policy(policy.unwrap_or_else(|| Table::new(plan.family)));
        out
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Brings the table to `plan`, in which the ports `changed` (the new plan's ports of the
    /// Services planned again) replaced `replaced` (the same Services' ports before), with
    /// `policy` the new policy objects when the policy plan was made again (`None`: the same
    /// as before). Returns what changed, or `None`, with the table left as it was, when
    /// something every port depends on changed: the caller renders the table anew.
    pub fn update<'a>(
        &mut self,
        plan: &ServicePlan,
        replaced: &PortPlans,
        changed: impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortPlan>)> + Clone,
        policy: Option<Table>,
        options: &RenderOptions,
    ) -> Option<Delta> {
        let endpoints = (self.endpoints + endpoint_count(changed.clone().map(|(_, p)| p)))
            .checked_sub(endpoint_count(replaced.values()))?;
        if endpoint_comments(endpoints, options) != self.comments
            || render_top_level_nft(plan) != self.top
        {
            return None;
        }
        let comments = self.comments;
        let old: Vec<(&ServicePortName, Table)> = replaced
            .iter()
            .map(|(name, port)| (name, render_port_nft(plan, port, comments)))
            .collect();
        let new: BTreeMap<&ServicePortName, Table> = changed
            .map(|(name, port)| (name, render_port_nft(plan, port, comments)))
            .collect();

        let mut before = Table::new(plan.family);
        let mut after = Table::new(plan.family);
        // Shared sets: the keys touched; the ports giving them are updated on the way.
        let mut touched: BTreeMap<&str, BTreeSet<Vec<Value>>> = BTreeMap::new();
        for (name, fragment) in &old {
            for chain in fragment.chains.keys() {
                if let Some(c) = self.table.chains.get(chain) {
                    before.add_chain(c.clone());
                }
            }
            for (set_name, set) in &fragment.sets {
                if self.top.sets.contains_key(set_name) {
                    let owners = self.owners.entry(set_name.clone()).or_default();
                    for key in set.elements.keys() {
                        if let Some(o) = owners.get_mut(key) {
                            o.remove(*name);
                            if o.is_empty() {
                                owners.remove(key);
                            }
                        }
                        touched
                            .entry(self.top.sets[set_name].name.as_str())
                            .or_default()
                            .insert(key.clone());
                    }
                } else if let Some(s) = self.table.sets.get(set_name) {
                    before.add_set(s.clone());
                }
            }
        }
        for (name, fragment) in &new {
            for (chain_name, chain) in &fragment.chains {
                if let Some(c) = self.table.chains.get(chain_name) {
                    before.add_chain(c.clone());
                }
                after.add_chain(chain.clone());
            }
            for (set_name, set) in &fragment.sets {
                if let Some(shared) = self.top.sets.get(set_name) {
                    let owners = self.owners.entry(set_name.clone()).or_default();
                    for key in set.elements.keys() {
                        owners
                            .entry(key.clone())
                            .or_default()
                            .insert((*name).clone());
                        touched
                            .entry(shared.name.as_str())
                            .or_default()
                            .insert(key.clone());
                    }
                } else {
                    if let Some(s) = self.table.sets.get(set_name) {
                        before.add_set(s.clone());
                    }
                    after.add_set(set.clone());
                }
            }
        }
        // A shared element is its last port's: a changed port's (rendered above) or, when an
        // unchanged port gives the same key, that port's, rendered from the new plan.
        let mut unchanged: BTreeMap<&ServicePortName, Table> = BTreeMap::new();
        for (set_name, keys) in &touched {
            let Some(current) = self.table.sets.get(*set_name) else {
                continue;
            };
            let mut was = current.without_elements();
            let mut now = current.without_elements();
            let owners = self.owners.get(*set_name);
            for key in keys {
                if let Some(e) = current.elements.get(key) {
                    was.elements.insert(key.clone(), e.clone());
                }
                let Some(last) = owners.and_then(|o| o.get(key)).and_then(|o| o.last()) else {
                    continue;
                };
                let fragment = match new.get(last) {
                    Some(f) => f,
                    None => match plan.ports.get(last) {
                        Some(port) => unchanged
                            .entry(last)
                            .or_insert_with(|| render_port_nft(plan, port, comments)),
                        None => continue,
                    },
                };
                if let Some(e) = element(fragment, set_name, key) {
                    now.elements.insert(key.clone(), e.clone());
                }
            }
            before.add_set(was);
            after.add_set(now);
        }
        if let Some(policy) = policy.filter(|p| *p != self.policy) {
            for set in self.policy.sets.values() {
                before.add_set(set.clone());
            }
            for chain in self.policy.chains.values() {
                before.add_chain(chain.clone());
            }
            for set in policy.sets.values() {
                after.add_set(set.clone());
            }
            for chain in policy.chains.values() {
                after.add_chain(chain.clone());
            }
            self.policy = policy;
        }

        // The table, by the same objects.
        for name in before.chains.keys() {
            self.table.chains.remove(name);
        }
        for chain in after.chains.values() {
            self.table.add_chain(chain.clone());
        }
        for name in before.sets.keys() {
            if !touched.contains_key(name.as_str()) {
                self.table.sets.remove(name);
            }
        }
        for (name, set) in &after.sets {
            match self.table.sets.get_mut(name) {
                Some(current) if touched.contains_key(name.as_str()) => {
                    for key in &touched[name.as_str()] {
                        match set.elements.get(key) {
                            Some(e) => current.elements.insert(key.clone(), e.clone()),
                            None => current.elements.remove(key),
                        };
                    }
                }
                _ => self.table.add_set(set.clone()),
            }
        }
        self.endpoints = endpoints;
        Some(Delta { before, after })
    }

    /// Adds one port's objects; its shared elements replace those of earlier ports.
    fn add_fragment(&mut self, name: &ServicePortName, fragment: Table) {
        for chain in fragment.chains.into_values() {
            self.table.add_chain(chain);
        }
        for (set_name, set) in fragment.sets {
            match self.table.sets.get_mut(&set_name) {
                Some(shared) if self.top.sets.contains_key(&set_name) => {
                    let owners = self.owners.entry(set_name).or_default();
                    for (key, element) in set.elements {
                        owners.entry(key.clone()).or_default().insert(name.clone());
                        shared.elements.insert(key, element);
                    }
                }
                _ => self.table.add_set(set),
            }
        }
    }

    /// Replaces the policy objects.
    fn set_policy(&mut self, policy: Table) {
        for name in self.policy.sets.keys() {
            self.table.sets.remove(name);
        }
        for name in self.policy.chains.keys() {
            self.table.chains.remove(name);
        }
        for set in policy.sets.values() {
            self.table.add_set(set.clone());
        }
        for chain in policy.chains.values() {
            self.table.add_chain(chain.clone());
        }
        self.policy = policy;
    }
}

fn element<'t>(fragment: &'t Table, set: &str, key: &[Value]) -> Option<&'t Element> {
    fragment.sets.get(set).and_then(|s| s.elements.get(key))
}

#[cfg(test)]
mod tests {
    use netd_model::{NodeName, ServiceRef};
    use netd_proxy::{IpFamily, ProxyOptions, plan};

    use super::*;
    use crate::nft::services::{CLUSTER_IPS, HAIRPIN};
    use crate::nft::{Command, diff_commands, render_services_nft};

    /// Node node-1 and, per `(name, endpoints)`, Service `x/<name>` on ClusterIP 10.96.0.10
    /// port 80 (all share it) with endpoints 10.244.1.<ip>:8080.
    fn plan_of(services: &[(&str, &[u8])], opts: &ProxyOptions) -> ServicePlan {
        let mut yaml = String::from("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n");
        for (name, ips) in services {
            let endpoints: Vec<String> = ips
                .iter()
                .map(|ip| format!("{{addresses: [10.244.1.{ip}]}}"))
                .collect();
            yaml += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\n\
                 spec: {{clusterIP: 10.96.0.10, ports: [{{port: 80}}]}}\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                 metadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 ports: [{{port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
                endpoints.join(", ")
            );
        }
        let state = netd_testkit::state(&yaml);
        plan(&state, &NodeName::new("node-1"), IpFamily::V4, opts)
    }

    /// `table` (of `from`) brought to `to` as the back end brings it: by the Services whose
    /// ports differ.
    fn update(
        table: &mut NodeTable,
        from: &ServicePlan,
        to: &ServicePlan,
        options: &RenderOptions,
    ) -> Option<Delta> {
        let changed: BTreeSet<ServiceRef> = to.changed_services(from);
        let replaced = from
            .ports
            .iter()
            .filter(|(n, _)| changed.contains(&n.service))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        table.update(to, &replaced, to.ports_of_services(&changed), None, options)
    }

    #[test]
    fn an_element_two_services_give_stays_while_one_does() {
        let (opts, options) = (ProxyOptions::default(), RenderOptions::default());
        // Both plain on one ClusterIP and port, one endpoint (and hairpin pair) shared.
        let both = plan_of(&[("a", &[5]), ("b", &[5, 6])], &opts);
        let b = plan_of(&[("b", &[5, 6])], &opts);
        let none = plan_of(&[], &opts);
        let mut table = NodeTable::new(&both, None, &options);
        assert_eq!(table.table(), &render_services_nft(&both, &options));

        let delta = update(&mut table, &both, &b, &options).expect("an update");
        assert_eq!(table.table(), &render_services_nft(&b, &options));
        // `a`'s ClusterIP and hairpin pair are b's too: they stay.
        let deletes_shared = |c: &Command| matches!(c, Command::DeleteElements { set, .. } if set == CLUSTER_IPS || set == HAIRPIN);
        let commands = diff_commands(&delta.before, &delta.after);
        assert!(!commands.iter().any(deletes_shared), "{commands:?}");
        update(&mut table, &b, &none, &options).expect("an update");
        assert_eq!(table.table(), &render_services_nft(&none, &options));
        update(&mut table, &none, &both, &options).expect("an update");
        assert_eq!(table.table(), &render_services_nft(&both, &options));
    }

    #[test]
    fn a_change_every_port_depends_on_is_refused_and_leaves_the_table() {
        let comments = RenderOptions {
            large_cluster_endpoints: 1,
            ..RenderOptions::default()
        };
        let opts = ProxyOptions::default();
        let one = plan_of(&[("a", &[5])], &opts);
        let two = plan_of(&[("a", &[5, 6])], &opts);
        let mut table = NodeTable::new(&one, None, &comments);
        assert_eq!(update(&mut table, &one, &two, &comments), None);
        assert_eq!(table, NodeTable::new(&one, None, &comments));

        // With every ClusterIP masqueraded, the first port brings the plain ports' masquerade
        // rule into a top-level chain.
        let all = ProxyOptions {
            masquerade_all: true,
            ..ProxyOptions::default()
        };
        let (options, none, one) = (
            RenderOptions::default(),
            plan_of(&[], &all),
            plan_of(&[("a", &[5])], &all),
        );
        let mut table = NodeTable::new(&none, None, &options);
        assert_eq!(update(&mut table, &none, &one, &options), None);
        assert_eq!(table, NodeTable::new(&none, None, &options));
    }
}
