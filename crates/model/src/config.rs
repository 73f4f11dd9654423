//! The cluster-wide network settings every part agrees on: address ranges and the DNS zone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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
    /// The IPv6 range a second Node InternalIP is allocated from (the lab's IPv6 underlay);
    /// `None` on an IPv4-only cluster.
    pub node_network_v6: Option<IpNet>,
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
            node_network_v6: None,
            load_balancer_pool: IpNet::V4(v4net([172, 18, 255, 0], 24)),
            default_node_count: 2,
            dns_zone: "cluster.local".to_owned(),
            dns_service_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        }
    }
}

/// The IP families of a cluster, as kind's `networking.ipFamily` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamilies {
    /// IPv4 only (the default).
    #[default]
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// Dual-stack, IPv4 first: Services without `ipFamilies` are IPv4 (`SingleStack`).
    Dual,
}

impl IpFamilies {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [IpFamilies; 3] = [IpFamilies::Ipv4, IpFamilies::Ipv6, IpFamilies::Dual];

    /// The spelling on the command line: `ipv4`, `ipv6` or `dual`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamilies::Ipv4 => "ipv4",
            IpFamilies::Ipv6 => "ipv6",
            IpFamilies::Dual => "dual",
        }
    }
}

impl fmt::Display for IpFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP family choice that is none of `ipv4`, `ipv6`, `dual`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not one of ipv4, ipv6, dual")]
pub struct UnknownIpFamilies {
    /// What was given.
    pub given: String,
}

impl FromStr for IpFamilies {
    type Err = UnknownIpFamilies;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IpFamilies::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownIpFamilies {
                given: s.to_owned(),
            })
    }
}

impl ClusterConfig {
    /// The default address plan for `families`, as kind lays it out: IPv6 pods in
    /// fd00:10:244::/56 (a /64 per Node), Services in fd00:10:96::/112 (DNS at
    /// fd00:10:96::a on an IPv6-only cluster), and Node IPv6 addresses in fd00:172:18::/64
    /// next to their IPv4 ones. Dual-stack lists IPv4 first.
    pub fn for_families(families: IpFamilies) -> ClusterConfig {
        let v4 = ClusterConfig::default();
        let pods6 = IpNet::V6(v6net([0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0], 56));
        let services6 = IpNet::V6(v6net([0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0], 112));
        let nodes6 = IpNet::V6(v6net([0xfd00, 0x172, 0x18, 0, 0, 0, 0, 0], 64));
        match families {
            IpFamilies::Ipv4 => v4,
            IpFamilies::Ipv6 => ClusterConfig {
                cluster_cidrs: vec![pods6],
                service_cidrs: vec![services6],
                node_network_v6: Some(nodes6),
                dns_service_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa)),
                ..v4
            },
            IpFamilies::Dual => ClusterConfig {
                cluster_cidrs: vec![v4.cluster_cidrs[0], pods6],
                service_cidrs: vec![v4.service_cidrs[0], services6],
                node_network_v6: Some(nodes6),
                ..v4
            },
        }
    }

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
        // The address after the network address in both families (ipnet's IPv6 `hosts`
        // starts at the network address itself).
        match self.service_cidrs.first()? {
            IpNet::V4(n) => n.hosts().next().map(IpAddr::V4),
            IpNet::V6(n) => {
                let ip = Ipv6Addr::from(u128::from(n.network()).checked_add(1)?);
                n.contains(&ip).then_some(IpAddr::V6(ip))
            }
        }
    }
}

fn v4net(octets: [u8; 4], prefix: u8) -> Ipv4Net {
    // The literals above are valid prefixes; `new` only fails for prefix > 32.
    Ipv4Net::new(Ipv4Addr::from(octets), prefix).unwrap_or_default()
}

fn v6net(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    // As `v4net`: the literals are valid, `new` only fails for prefix > 128.
    Ipv6Net::new(Ipv6Addr::from(segments), prefix).unwrap_or_default()
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

    #[test]
    fn families_lay_out_kind_like_ranges() {
        let v6 = ClusterConfig::for_families(IpFamilies::Ipv6);
        assert_eq!(v6.cluster_cidrs[0].to_string(), "fd00:10:244::/56");
        assert_eq!(v6.service_cidrs.len(), 1);
        assert_eq!(
            v6.kubernetes_service_ip(),
            Some("fd00:10:96::1".parse().expect("ip"))
        );
        assert!(v6.in_service_cidrs(v6.dns_service_ip));
        assert_eq!(
            v6.node_network_v6.map(|n| n.to_string()).as_deref(),
            Some("fd00:172:18::/64")
        );

        let dual = ClusterConfig::for_families(IpFamilies::Dual);
        let families: Vec<bool> = dual
            .service_cidrs
            .iter()
            .map(|c| c.addr().is_ipv4())
            .collect();
        assert_eq!(families, [true, false]);
        assert_eq!(dual.cluster_cidrs.len(), 2);
        assert_eq!(dual.dns_service_ip, ClusterConfig::default().dns_service_ip);
        assert_eq!(
            dual.cluster_cidr_for("fd00:10:244:3::9".parse().expect("ip")),
            Some(dual.cluster_cidrs[1])
        );
        assert_eq!(
            ClusterConfig::for_families(IpFamilies::Ipv4),
            ClusterConfig::default()
        );
    }

    #[test]
    fn families_parse_as_spelled() {
        for f in IpFamilies::ALL {
            assert_eq!(f.as_str().parse::<IpFamilies>(), Ok(f));
        }
        let err = "IPv6".parse::<IpFamilies>().expect_err("case matters");
        assert_eq!(err.to_string(), r#""IPv6" is not one of ipv4, ipv6, dual"#);
    }
}
