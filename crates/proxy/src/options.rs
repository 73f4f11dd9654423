//! What the proxy is told about its own Node and configuration: kube-proxy's flags that change
//! the plan.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netd_model::{ClusterState, NodeName};

/// An IP family. Each plan (like each kube-proxy proxier) covers exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// Whether `ip` belongs to this family.
    pub fn contains(self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// Whether `net` belongs to this family.
    pub fn contains_net(self, net: &IpNet) -> bool {
        self.contains(net.addr())
    }

    /// The loopback range of the family: `127.0.0.0/8` or `::1/128`.
    pub fn loopback(self) -> IpNet {
        // Both literals are valid prefixes; `new` fails only for a prefix longer than the address.
        match self {
            IpFamily::V4 => {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default())
            }
            IpFamily::V6 => IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).unwrap_or_default()),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The proxy's configuration for one Node: the kube-proxy flags that change what it programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// `--masquerade-all`: SNAT every packet sent to a ClusterIP.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (default 14): the fwmark bit that asks for SNAT.
    pub masquerade_bit: u8,
    /// `--cluster-cidr` with `--detect-local-mode=ClusterCIDR`: the pod ranges (one per family)
    /// that tell pod traffic from off-cluster traffic. Without a range for the plan's family
    /// there is no local-traffic detector (no off-cluster masquerade, no pod short-circuit).
    pub cluster_cidrs: Vec<IpNet>,
    /// This Node's `topology.kubernetes.io/zone` label, for topology hints.
    pub node_zone: Option<String>,
    /// This Node's addresses; a load-balancer source range containing one of them also admits
    /// traffic looped back from the load-balancer IP itself.
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses`: when non-empty, nodePorts answer only on these addresses
    /// instead of on every local address.
    pub nodeport_addresses: Vec<IpAddr>,
    /// The `PreferSameTrafficDistribution` feature gate (on by default since 1.34): honour
    /// node hints (`PreferSameNode`) before zone hints.
    pub prefer_same_node: bool,
    /// `--iptables-localhost-nodeports`: accept nodePort connections to `127.0.0.1` (IPv4
    /// only; needs `route_localnet=1` on the Node and a rule dropping the martian packets that
    /// then become routable, CVE-2020-8558). Off by default here, unlike kube-proxy.
    pub localhost_nodeports: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            masquerade_all: false,
            masquerade_bit: 14,
            cluster_cidrs: Vec::new(),
            node_zone: None,
            node_ips: Vec::new(),
            nodeport_addresses: Vec::new(),
            prefer_same_node: true,
            localhost_nodeports: false,
        }
    }
}

impl ProxyOptions {
    /// The options kube-netd's agent uses on `node`: the cluster's pod ranges as the
    /// local-traffic detector, and the Node's zone and InternalIPs (none if the Node is
    /// unknown).
    pub fn for_node(state: &ClusterState, node: &NodeName) -> Self {
        let view = state.node(node.as_str());
        Self {
            cluster_cidrs: state.config().cluster_cidrs.clone(),
            node_zone: view.and_then(|n| n.zone.clone()),
            node_ips: view.map(|n| n.internal_ips.clone()).unwrap_or_default(),
            ..Self::default()
        }
    }

    /// The masquerade mark: `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32.checked_shl(u32::from(self.masquerade_bit))
            .unwrap_or(0)
    }

    /// The local-traffic detector's range for `family`, if configured.
    pub fn cluster_cidr(&self, family: IpFamily) -> Option<IpNet> {
        self.cluster_cidrs
            .iter()
            .copied()
            .find(|c| family.contains_net(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kube_proxy() {
        let o = ProxyOptions::default();
        assert_eq!(o.masquerade_mark(), 0x4000);
        assert_eq!(IpFamily::V4.loopback().to_string(), "127.0.0.0/8");
        assert_eq!(IpFamily::V6.loopback().to_string(), "::1/128");
    }

    #[test]
    fn for_node_reads_the_node() {
        let state = netd_testkit::state(
            r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
"#,
        );
        let o = ProxyOptions::for_node(&state, &NodeName::new("node-1"));
        assert_eq!(o.node_zone.as_deref(), Some("zone-a"));
        assert_eq!(o.node_ips, ["172.18.0.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!(o.cluster_cidrs, state.config().cluster_cidrs);
        assert!(
            ProxyOptions::for_node(&state, &NodeName::new("nope"))
                .node_ips
                .is_empty()
        );
    }

    #[test]
    fn picks_the_detector_of_the_family() {
        let o = ProxyOptions {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().expect("cidr"),
                "fd00:10:244::/56".parse().expect("cidr"),
            ],
            ..ProxyOptions::default()
        };
        assert_eq!(
            o.cluster_cidr(IpFamily::V4)
                .map(|c| c.to_string())
                .as_deref(),
            Some("10.244.0.0/16")
        );
        assert_eq!(
            o.cluster_cidr(IpFamily::V6)
                .map(|c| c.to_string())
                .as_deref(),
            Some("fd00:10:244::/56")
        );
        assert_eq!(ProxyOptions::default().cluster_cidr(IpFamily::V4), None);
    }
}
