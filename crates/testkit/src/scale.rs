//! Clusters at benchmark scale, written as YAML for [`crate::state`]: the same objects for
//! every benchmark that measures a size, so figures from different benches describe the same
//! cluster.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

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

/// `services` ClusterIP Services of `endpoints` endpoints each on three Nodes (`node-0` …
/// `node-2`, endpoints spread round-robin over them): the cluster the proxy benchmarks sync
/// into one Node, in every mode. ClusterIPs are [`ServiceScale::cluster_ip`], port 80 to
/// [`ServiceScale::TARGET_PORT`]; endpoint addresses are numbered inside
/// [`ServiceScale::ENDPOINT_NET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceScale {
    /// How many Services (2 to [`ServiceScale::MAX_SERVICES`]).
    pub services: usize,
    /// Endpoints per Service (at least 1; all endpoints fit [`ServiceScale::ENDPOINT_NET`]).
    pub endpoints: usize,
}

/// What differs from the base cluster of a [`ServiceScale`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleChange {
    /// The base cluster.
    None,
    /// The middle Service's first endpoint has moved to [`ServiceScale::MOVED_ENDPOINT`].
    Endpoint,
    /// The endpoint change and one more Service.
    Service,
}

impl ServiceScale {
    /// Where endpoint addresses are numbered from.
    pub const ENDPOINT_NET: &str = "10.100.0.0/14";
    /// How many endpoint addresses [`ServiceScale::ENDPOINT_NET`] holds.
    pub const ENDPOINT_ADDRESSES: usize = 1 << 18;
    /// The moved endpoint's new address ([`ScaleChange::Endpoint`]).
    pub const MOVED_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
    /// The most Services: ClusterIPs are `10.96.<s / 250>.<s % 250 + 1>`.
    pub const MAX_SERVICES: usize = 250 * 256 - 1;
    /// The endpoints' port.
    pub const TARGET_PORT: u16 = 8080;

    /// The sizes, or what is wrong with them (one more Service must fit too, for
    /// [`ScaleChange::Service`]).
    pub fn new(services: usize, endpoints: usize) -> Result<ServiceScale, String> {
        if !(2..=Self::MAX_SERVICES).contains(&services) {
            return Err(format!("services must be 2 to {}", Self::MAX_SERVICES));
        }
        if endpoints == 0 || (services + 1) * endpoints > Self::ENDPOINT_ADDRESSES {
            return Err(format!(
                "endpoints must be at least 1 and (services + 1) x endpoints at most {}",
                Self::ENDPOINT_ADDRESSES
            ));
        }
        Ok(ServiceScale {
            services,
            endpoints,
        })
    }

    /// The ClusterIP of Service number `s`.
    pub fn cluster_ip(s: usize) -> Ipv4Addr {
        // Both parts fit a byte for `s` up to `MAX_SERVICES`, which `new` enforces.
        Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250 + 1) as u8)
    }

    /// The last Service's ClusterIP.
    pub fn last_cluster_ip(&self) -> Ipv4Addr {
        Self::cluster_ip(self.services - 1)
    }

    /// The cluster, as YAML for [`crate::state`].
    pub fn cluster(&self, change: ScaleChange) -> String {
        let mut y = String::new();
        for n in 0..3 {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\n\
                 spec: {{podCIDR: 10.244.{n}.0/24}}\n\
                 status: {{addresses: [{{type: InternalIP, address: 172.18.0.{}}}]}}\n",
                n + 2
            );
        }
        let services = self.services + usize::from(change == ScaleChange::Service);
        for s in 0..services {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
                 spec: {{clusterIP: {}, ports: [{{name: http, port: 80, targetPort: {}}}]}}\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                 metadata: {{name: svc{s}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
                 ports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n",
                Self::cluster_ip(s),
                Self::TARGET_PORT,
                Self::TARGET_PORT
            );
            for e in 0..self.endpoints {
                let address = if change != ScaleChange::None && s == self.services / 2 && e == 0 {
                    Self::MOVED_ENDPOINT
                } else {
                    Self::endpoint_ip(s * self.endpoints + e)
                };
                let _ = writeln!(y, "- {{addresses: [{address}], nodeName: node-{}}}", e % 3);
            }
        }
        y
    }

    fn endpoint_ip(n: usize) -> Ipv4Addr {
        // `n` < `ENDPOINT_ADDRESSES` (checked by `new`), so the sum fits 32 bits.
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + n as u32)
    }
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

    #[test]
    fn service_scale_moves_one_endpoint_and_adds_one_service() {
        let scale = ServiceScale::new(4, 3).expect("fits");
        let base = crate::state(&scale.cluster(ScaleChange::None));
        let moved = scale.cluster(ScaleChange::Endpoint);
        let added = crate::state(&scale.cluster(ScaleChange::Service));
        assert_eq!(base.services().count(), 4);
        assert_eq!(added.services().count(), 5);
        assert!(!scale.cluster(ScaleChange::None).contains("10.200.0.1"));
        assert_eq!(moved.matches("10.200.0.1").count(), 1);
        assert_eq!(scale.last_cluster_ip(), Ipv4Addr::new(10, 96, 0, 4));
        assert!(ServiceScale::new(1, 3).is_err());
        assert!(ServiceScale::new(10, 0).is_err());
        assert!(ServiceScale::new(ServiceScale::MAX_SERVICES, 5).is_err());
    }
}
