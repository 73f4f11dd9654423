//! Real-kernel tests of ipsets written as changes: after a partial sync, which writes only
//! the sets that changed, the kernel's sets are those a full render describes; IPVS mode's
//! sets change member by member. Each test creates its own namespace
//! (`nipset-<pid>-<name>`) and removes it on drop. Needs root (ipset, not IPVS).

use std::collections::{BTreeMap, BTreeSet};

use netd_agent::{Applier, InNamespace, NodeProgrammer, NodeRules, SyncEngine, SyncKind};
use netd_kernel::KernelError;
use netd_kernel::nftnl::conntrack::Flow;
use netd_kernel::rules;
use netd_model::NodeName;
use netd_proxy::IpFamily;
use netd_render::{IpSets, IpvsOptions, render_ipvs};
use netd_testkit::scratch::ScratchNetns;

/// db isolated: reachable from the frontend Pod at `frontend` on port 6379, reaching
/// 10.0.0.0/24 on port 5978.
fn cluster(frontend: &str) -> NodeRules {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 172.18.0.2}}]}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: default, labels: {{role: db}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.1.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend, namespace: default, labels: {{role: frontend}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}
status: {{podIP: {frontend}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db, namespace: default}}
spec:
  podSelector: {{matchLabels: {{role: db}}}}
  policyTypes: [Ingress, Egress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: frontend}}}}}}], ports: [{{port: 6379}}]}}]
  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/24}}}}], ports: [{{port: 5978}}]}}]
"#
    );
    NodeProgrammer::default()
        .rules(&netd_testkit::state(&yaml), &NodeName::new("node-1"))
        .expect("rules")
}

/// [`InNamespace`], remembering each `ipset restore` payload it is given.
struct Recording {
    inner: InNamespace,
    set_payloads: Vec<String>,
}

impl Applier for Recording {
    fn namespace(&self) -> &str {
        self.inner.namespace()
    }
    fn restore_sets(&mut self, payload: &str) -> Result<(), KernelError> {
        self.set_payloads.push(payload.to_owned());
        self.inner.restore_sets(payload)
    }
    fn list_sets(&mut self) -> Result<Vec<String>, KernelError> {
        self.inner.list_sets()
    }
    fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
        self.inner.save(family)
    }
    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
        self.inner.restore(family, payload)
    }
    fn list_conntrack(
        &mut self,
        family: IpFamily,
        selection: netd_agent::conntrack::Selection,
    ) -> Result<Vec<Flow>, KernelError> {
        self.inner.list_conntrack(family, selection)
    }
    fn delete_conntrack(&mut self, flows: &[Flow]) -> Result<usize, KernelError> {
        self.inner.delete_conntrack(flows)
    }
}

/// The kernel's sets (`ipset save`), each with its members.
fn kernel_sets(ns: &ScratchNetns) -> BTreeMap<String, BTreeSet<String>> {
    let out = ns.command(&["ipset", "save"]).output().expect("ipset save");
    assert!(out.status.success(), "ipset save: {out:?}");
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["create", name, ..] => {
                sets.entry((*name).to_owned()).or_default();
            }
            ["add", name, member, ..] => {
                sets.entry((*name).to_owned())
                    .or_default()
                    .insert((*member).to_owned());
            }
            _ => {}
        }
    }
    sets
}

/// The sets `rules` describe, each with its members.
fn rendered_sets(rules: &NodeRules) -> BTreeMap<String, BTreeSet<String>> {
    rendered_sets_of(&rules.ipset)
}

/// `sets`, each with its members.
fn rendered_sets_of(sets: &IpSets) -> BTreeMap<String, BTreeSet<String>> {
    sets.iter()
        .map(|s| (s.name.clone(), s.members.iter().cloned().collect()))
        .collect()
}

#[test]
fn a_partial_sync_writes_only_new_sets_and_leaves_the_full_renders_sets() {
    let ns = ScratchNetns::new("nipset", "pod");
    let mut applier = Recording {
        inner: InNamespace::new(ns.name()),
        set_payloads: Vec::new(),
    };
    let mut engine = SyncEngine::new();
    let before = cluster("10.244.1.3");
    let first = engine.sync(&mut applier, before.clone()).expect("full");
    assert_eq!(first.families[0].kind, SyncKind::Full);
    assert_eq!(applier.set_payloads, [before.ipset.full_input()]);
    assert_eq!(kernel_sets(&ns), rendered_sets(&before));

    // The frontend Pod comes back with another address. Policy sets are named by their
    // members: the frontend's set is a new one (written whole, the old one pruned), the
    // ipBlock's is unchanged and not written.
    let after = cluster("10.244.1.4");
    let kept: Vec<&str> = after
        .ipset
        .iter()
        .filter(|s| before.ipset.iter().any(|b| b == *s))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(kept.len(), 1, "the ipBlock's set: {kept:?}");
    let new: IpSets = after
        .ipset
        .iter()
        .filter(|s| !kept.contains(&s.name.as_str()))
        .cloned()
        .collect();
    assert!(!new.is_empty());
    let second = engine.sync(&mut applier, after.clone()).expect("partial");
    assert_eq!(second.families[0].kind, SyncKind::Partial);
    let gone: Vec<String> = before
        .ipset
        .iter()
        .filter(|s| !kept.contains(&s.name.as_str()))
        .map(|s| format!("destroy {}\n", s.name))
        .collect();
    assert_eq!(applier.set_payloads[1..], [new.full_input(), gone.concat()]);
    assert_eq!(kernel_sets(&ns), rendered_sets(&after));

    // Nothing changed: no ipset restore at all.
    engine.sync(&mut applier, after.clone()).expect("no-op");
    assert_eq!(applier.set_payloads.len(), 3);
    assert_eq!(kernel_sets(&ns), rendered_sets(&after));
}

/// IPVS mode's sets (whose names never change) of `web` with a local endpoint at `endpoint`,
/// and of `dns` when `dns` is set.
fn ipvs_sets(endpoint: &str, dns: bool) -> IpSets {
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 172.18.0.2}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: x}}
spec: {{type: NodePort, clusterIP: 10.96.0.11, ports: [{{port: 80, nodePort: 30080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [{endpoint}], nodeName: node-1, conditions: {{ready: true}}}}]
ports: [{{port: 80, protocol: TCP}}]
"#
    );
    if dns {
        yaml.push_str(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: x}\n\
             spec: {clusterIP: 10.96.0.12, ports: [{port: 53, protocol: UDP}]}\n",
        );
    }
    let state = netd_testkit::state(&yaml);
    let plan = netd_proxy::plan(
        &state,
        &NodeName::new("node-1"),
        IpFamily::V4,
        &netd_proxy::ProxyOptions::default(),
    );
    render_ipvs(&plan, &IpvsOptions::default()).ipsets()
}

#[test]
fn ipvs_sets_change_member_by_member_in_the_kernel() {
    let ns = ScratchNetns::new("nipset", "ipvs");
    let before = ipvs_sets("10.244.1.2", false);
    rules::ipset_restore(ns.name(), &before.full_input()).expect("full");
    assert_eq!(kernel_sets(&ns), rendered_sets_of(&before));

    // The endpoint moves and a Service is added: the loop-back set swaps one member for
    // another, the ClusterIP set and the bound addresses' gain one, nothing is swapped in.
    let after = ipvs_sets("10.244.1.3", true);
    let delta = after.delta_input(&before);
    assert!(!delta.contains("swap"), "{delta}");
    assert_eq!(
        delta,
        "add KUBE-LOOP-BACK 10.244.1.3,tcp:80,10.244.1.3\n\
         del KUBE-LOOP-BACK 10.244.1.2,tcp:80,10.244.1.2\n\
         add KUBE-CLUSTER-IP 10.96.0.12,udp:53\n\
         add KUBE-IPVS-IPS 10.96.0.12\n"
    );
    rules::ipset_restore(ns.name(), &delta).expect("delta");
    assert_eq!(kernel_sets(&ns), rendered_sets_of(&after));
}
