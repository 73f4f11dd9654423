//! The cluster-wide network settings every part agrees on: address ranges and the DNS zone.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net};

/// Cluster-wide network settings.
///
/// Defaults follow kubeadm and kind: pods in 10.244.0.0/16 cut into a /24 per Node, Services in
/// 10.96.0.0/12 with 10.96.0.1 for `default/kubernetes` and 10.96.0.10 for DNS, nodePorts in
/// 30000–32767, and a MetalLB-style pool for LoadBalancer addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Pod address ranges, one per IP family (IPv4 first when dual-stack).
    pub cluster_cidrs: Vec<IpNet>,
    /// Prefix length of each Node's podCIDR for IPv4 (default 24).
    pub node_cidr_prefix_v4: u8,
    /// Prefix length of each Node's podCIDR for IPv6 (default 64).
    pub node_cidr_prefix_v6: u8,
    /// Service (ClusterIP) ranges, one per IP family, in the same family order.
    pub service_cidrs: Vec<IpNet>,
    /// The range nodePorts and healthCheckNodePorts are allocated from.
    pub node_port_range: RangeInclusive<u16>,
    /// The range Node InternalIPs are allocated from when a Node declares none.
    pub node_network: IpNet,
    /// The pool LoadBalancer ingress IPs are allocated from (as MetalLB would).
    pub load_balancer_pool: IpNet,
    /// The Nodes created when the manifests declare none.
    pub default_node_count: usize,
    /// The cluster DNS zone.
    pub dns_zone: String,
    /// The ClusterIP of the cluster DNS Service `kube-system/kube-dns`.
    pub dns_service_ip: IpAddr,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            cluster_cidrs: vec![IpNet::V4(v4net([10, 244, 0, 0], 16))],
            node_cidr_prefix_v4: 24,
            node_cidr_prefix_v6: 64,
            service_cidrs: vec![IpNet::V4(v4net([10, 96, 0, 0], 12))],
            node_port_range: 30000..=32767,
            node_network: IpNet::V4(v4net([172, 18, 0, 0], 24)),
            load_balancer_pool: IpNet::V4(v4net([172, 18, 255, 0], 24)),
            default_node_count: 2,
            dns_zone: "cluster.local".to_owned(),
            dns_service_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        }
    }
}

impl ClusterConfig {
    /// Whether `ip` lies in one of the service ranges.
    pub fn in_service_cidrs(&self, ip: IpAddr) -> bool {
        self.service_cidrs.iter().any(|c| c.contains(&ip))
    }

    /// Whether `ip` lies in one of the pod ranges.
    pub fn in_cluster_cidrs(&self, ip: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(&ip))
    }

    /// The pod range for the family of `ip`, if the cluster has that family.
    pub fn cluster_cidr_for(&self, ip: IpAddr) -> Option<IpNet> {
        self.cluster_cidrs
            .iter()
            .copied()
            .find(|c| c.addr().is_ipv4() == ip.is_ipv4())
    }

    /// The first address of the first service range: the ClusterIP of `default/kubernetes`.
    pub fn kubernetes_service_ip(&self) -> Option<IpAddr> {
        self.service_cidrs.first().and_then(|c| c.hosts().next())
    }
}

fn v4net(octets: [u8; 4], prefix: u8) -> Ipv4Net {
    // The literals above are valid prefixes; `new` only fails for prefix > 32.
    Ipv4Net::new(Ipv4Addr::from(octets), prefix).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubeadm_like() {
        let c = ClusterConfig::default();
        assert_eq!(c.cluster_cidrs[0].to_string(), "10.244.0.0/16");
        assert_eq!(c.service_cidrs[0].to_string(), "10.96.0.0/12");
        assert_eq!(
            c.kubernetes_service_ip(),
            Some("10.96.0.1".parse().expect("ip"))
        );
        assert!(c.in_service_cidrs(c.dns_service_ip));
        assert!(c.in_cluster_cidrs("10.244.3.7".parse().expect("ip")));
        assert!(!c.in_cluster_cidrs("10.96.0.1".parse().expect("ip")));
    }
}
