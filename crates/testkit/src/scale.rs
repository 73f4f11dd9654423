//! Clusters at benchmark scale, written as YAML for [`crate::state`]: the same objects for
//! every benchmark that measures a size, so figures from different benches describe the same
//! cluster.

use std::fmt::Write as _;

/// The shape of a [`policy_cluster_of`]: how many of each object.
#[derive(Debug, Clone, Copy)]
pub struct PolicyScale {
    /// Nodes `node-0` …; Pods are spread over them in turn.
    pub nodes: usize,
    /// Namespaces `ns-0` …, labelled `team: t<n mod 5>`.
    pub namespaces: usize,
    /// Pods per namespace.
    pub pods_per_ns: usize,
    /// NetworkPolicies per namespace.
    pub policies_per_ns: usize,
}

/// 10,000 Pods in 100 namespaces spread over `nodes` Nodes (`node-0` …, so `node-0` runs
/// 10,000 / `nodes` of them) and 1,000 NetworkPolicies: the issues' NetworkPolicy size, as
/// [`policy_cluster_of`] writes it.
pub fn policy_cluster(nodes: usize) -> String {
    policy_cluster_of(PolicyScale {
        nodes,
        namespaces: 100,
        pods_per_ns: 100,
        policies_per_ns: 10,
    })
}

/// Pods with `app`, `tier` labels and a named container port, and NetworkPolicies drawn from
/// the whole API surface: ingress from pod and namespace selectors with numbered, ranged and
/// named ports; egress to an ipBlock with an except and to pods on a named port.
pub fn policy_cluster_of(scale: PolicyScale) -> String {
    let PolicyScale {
        nodes,
        namespaces,
        pods_per_ns,
        policies_per_ns,
    } = scale;
    let mut y = String::new();
    for n in 0..nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.{}.{}}}]}}\n",
            n / 250,
            n % 250 + 2
        );
    }
    let mut k = 0usize;
    for ns in 0..namespaces {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{}}}}}\n",
            ns % 5
        );
        for p in 0..pods_per_ns {
            let tier = if p % 2 == 0 { "front" } else { "back" };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{p}, namespace: ns-{ns}, labels: {{app: a{}, tier: {tier}}}}}\nspec: {{nodeName: node-{}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: {}}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n",
                p % 20,
                k % nodes,
                8000 + p % 3,
                244 + k / 62500,
                k / 250 % 250,
                k % 250 + 1
            );
            k += 1;
        }
        for i in 0..policies_per_ns {
            let _ = write!(
                y,
                "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: np-{i}, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: a{i}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]
    ports: [{{port: 8080}}, {{port: 9000, endPort: 9100}}]
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{tier: front}}}}}}]
    ports: [{{port: http}}]
  egress:
  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}}}]
  - to: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]
    ports: [{{port: http}}]
",
                (i + 1) % 20,
                i % 5,
                (i + 2) % 20
            );
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_cluster_puts_a_tenth_of_the_pods_on_node_0_of_ten() {
        let state = crate::state(&policy_cluster(10));
        assert_eq!(state.pods().count(), 10_000);
        assert_eq!(state.pods_on("node-0").count(), 1_000);
    }
}
