//! What the proxy is told about its own Node and configuration: kube-proxy's flags that change
//! the plan.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
pub use netd_model::IpFamily;
use netd_model::{ClusterState, NodeName};

/// kube-proxy's `--detect-local-mode`: how traffic from this cluster's pods is told from
/// other traffic (off-cluster clients, the host itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum DetectLocal {
    /// `ClusterCIDR` (the default): a source inside [`ProxyOptions::cluster_cidrs`].
    #[default]
    ClusterCidr,
    /// `NodeCIDR`: a source inside this Node's `spec.podCIDRs` ([`ProxyOptions::node_pod_cidrs`]).
    NodeCidr,
    /// `BridgeInterface`: arriving on this bridge (`--pod-bridge-interface`).
    BridgeInterface(InterfaceName),
    /// `InterfaceNamePrefix`: arriving on an interface whose name starts with this
    /// (`--pod-interface-name-prefix`).
    InterfaceNamePrefix(InterfaceName),
}

impl DetectLocal {
    /// kube-proxy's `--detect-local-mode` value `mode` (empty: `ClusterCIDR`) with
    /// `--pod-bridge-interface` (`bridge`) and `--pod-interface-name-prefix` (`prefix`), which
    /// the interface modes need; empty strings count as unset.
    pub fn parse(
        mode: &str,
        bridge: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Self, BadSetting> {
        let given = |value: Option<&str>, flag: &'static str| {
            let value = value
                .filter(|v| !v.is_empty())
                .ok_or(BadSetting::MissingInterface {
                    mode: mode.to_owned(),
                    flag,
                })?;
            value
                .parse::<InterfaceName>()
                .map_err(|source| BadSetting::BadInterface { flag, source })
        };
        Ok(match mode {
            "" | "ClusterCIDR" => DetectLocal::ClusterCidr,
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => {
                DetectLocal::BridgeInterface(given(bridge, "--pod-bridge-interface")?)
            }
            "InterfaceNamePrefix" => {
                DetectLocal::InterfaceNamePrefix(given(prefix, "--pod-interface-name-prefix")?)
            }
            other => return Err(BadSetting::UnknownDetectLocalMode(other.to_owned())),
        })
    }
}

impl NodePortAddresses {
    /// kube-proxy's `--nodeport-addresses` values: none (every local address), `primary`
    /// alone, or CIDRs.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, BadSetting> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.as_ref().trim())
            .filter(|v| !v.is_empty())
            .collect();
        match values.as_slice() {
            [] => return Ok(NodePortAddresses::All),
            ["primary"] => return Ok(NodePortAddresses::Primary),
            _ => {}
        }
        values
            .iter()
            .map(|v| match *v {
                "primary" => Err(BadSetting::PrimaryNotAlone),
                cidr => cidr.parse::<IpNet>().map_err(|source| BadSetting::BadCidr {
                    value: cidr.to_owned(),
                    source,
                }),
            })
            .collect::<Result<_, _>>()
            .map(NodePortAddresses::Cidrs)
    }
}

/// A `--detect-local-mode` or `--nodeport-addresses` setting kube-proxy refuses.
#[derive(Debug, thiserror::Error)]
pub enum BadSetting {
    /// Not one of kube-proxy's four modes.
    #[error(
        "{0:?} is not a mode: expected ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix"
    )]
    UnknownDetectLocalMode(String),
    /// An interface mode without its interface.
    #[error("{mode} needs {flag}")]
    MissingInterface {
        /// The mode.
        mode: String,
        /// The flag that names the interface.
        flag: &'static str,
    },
    /// An interface mode with a name Linux would refuse.
    #[error("{flag}")]
    BadInterface {
        /// The flag that names the interface.
        flag: &'static str,
        /// Why the name is refused.
        #[source]
        source: BadInterfaceName,
    },
    /// A value that is not a CIDR.
    #[error("{value:?} is not a CIDR like 192.168.0.0/16")]
    BadCidr {
        /// The value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// `primary` beside other values.
    #[error("primary cannot be combined with CIDRs")]
    PrimaryNotAlone,
}

/// The local-traffic detector of one plan (one family): what the renderers match as "from a
/// pod of this cluster".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LocalDetector {
    /// The source address is inside the range (iptables `-s`, nft `saddr`).
    Cidr(IpNet),
    /// The packet arrived on this interface (iptables `-i NAME`, nft `iifname "NAME"`).
    Interface(InterfaceName),
    /// The packet arrived on an interface whose name starts with this (iptables `-i PREFIX+`,
    /// nft `iifname "PREFIX*"`).
    InterfacePrefix(InterfaceName),
}

/// A network interface name (or name prefix) as Linux accepts one: 1 to 15 bytes, not `.`
/// or `..`, without `/`, `:`, whitespace or the wildcards `+` and `*`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(String);

/// A string that is not an [`InterfaceName`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an interface name: 1 to 15 bytes without '/', ':', '+', '*' or spaces")]
pub struct BadInterfaceName(pub String);

impl InterfaceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = BadInterfaceName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=15).contains(&s.len())
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | ':' | '+' | '*'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadInterfaceName(s.to_owned()))
        }
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// kube-proxy's `--nodeport-addresses`: on which of the Node's own addresses nodePorts answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum NodePortAddresses {
    /// Unset: every local address (but loopback, unless localhost nodePorts are on).
    #[default]
    All,
    /// `primary`: the Node's primary address of each family.
    Primary,
    /// A list of ranges: the Node's addresses inside them. A family none of the ranges belongs
    /// to, or one with a `0.0.0.0/0` / `::/0` range, answers on every local address.
    Cidrs(Vec<IpNet>),
}

/// Where nodePorts of one plan (one family) answer, once [`NodePortAddresses`] is resolved
/// against the Node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum NodePortIps {
    /// Every local address (iptables `-m addrtype --dst-type LOCAL`, nft `fib daddr type
    /// local`).
    #[default]
    Local,
    /// Only these (possibly none: nodePorts of this family then answer nowhere).
    Only(Vec<IpAddr>),
}

/// The proxy settings every back end honours, from kube-proxy's flags or its configuration
/// file, before they meet a Node: [`ProxyOptions::for_node`] combines them with the Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProxySettings {
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// `--detect-local-mode` (with `--pod-bridge-interface` / `--pod-interface-name-prefix`).
    pub detect_local: DetectLocal,
    /// `--iptables-localhost-nodeports` (iptables mode only; off by default here).
    pub localhost_nodeports: bool,
}

/// The proxy's configuration for one Node: the kube-proxy flags that change what it programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// `--masquerade-all`: SNAT every packet sent to a ClusterIP.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (default 14): the fwmark bit that asks for SNAT.
    pub masquerade_bit: u8,
    /// `--cluster-cidr`: the pod ranges (one per family) of [`DetectLocal::ClusterCidr`].
    /// Without a range for the plan's family there is no local-traffic detector (no
    /// off-cluster masquerade, no pod short-circuit).
    pub cluster_cidrs: Vec<IpNet>,
    /// This Node's `spec.podCIDRs`, the ranges of [`DetectLocal::NodeCidr`].
    pub node_pod_cidrs: Vec<IpNet>,
    /// `--detect-local-mode`.
    pub detect_local: DetectLocal,
    /// This Node's `topology.kubernetes.io/zone` label, for topology hints.
    pub node_zone: Option<String>,
    /// This Node's addresses; a load-balancer source range containing one of them also admits
    /// traffic looped back from the load-balancer IP itself. With loopback, they are also the
    /// local addresses `--nodeport-addresses` ranges select from.
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
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
            node_pod_cidrs: Vec::new(),
            detect_local: DetectLocal::default(),
            node_zone: None,
            node_ips: Vec::new(),
            nodeport_addresses: NodePortAddresses::default(),
            prefer_same_node: true,
            localhost_nodeports: false,
        }
    }
}

impl ProxyOptions {
    /// The options kube-netd's back ends use on `node` with `settings`: the cluster's pod
    /// ranges, and the Node's zone, InternalIPs and podCIDRs (none if the Node is unknown).
    pub fn for_node(state: &ClusterState, node: &NodeName, settings: &ProxySettings) -> Self {
        let view = state.node(node.as_str());
        Self {
            masquerade_all: settings.masquerade_all,
            cluster_cidrs: state.config().cluster_cidrs.clone(),
            node_pod_cidrs: view.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
            detect_local: settings.detect_local.clone(),
            node_zone: view.and_then(|n| n.zone.clone()),
            node_ips: view.map(|n| n.internal_ips.clone()).unwrap_or_default(),
            nodeport_addresses: settings.nodeport_addresses.clone(),
            localhost_nodeports: settings.localhost_nodeports,
            ..Self::default()
        }
    }

    /// The masquerade mark: `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32.checked_shl(u32::from(self.masquerade_bit))
            .unwrap_or(0)
    }

    /// The local-traffic detector for `family`, if one is configured: a range of the family
    /// (ClusterCIDR, NodeCIDR) or an interface match (the same for both families).
    pub fn local_detector(&self, family: IpFamily) -> Option<LocalDetector> {
        let of_family = |ranges: &[IpNet]| {
            ranges
                .iter()
                .copied()
                .find(|c| family.contains_net(c))
                .map(LocalDetector::Cidr)
        };
        match &self.detect_local {
            DetectLocal::ClusterCidr => of_family(&self.cluster_cidrs),
            DetectLocal::NodeCidr => of_family(&self.node_pod_cidrs),
            DetectLocal::BridgeInterface(name) => Some(LocalDetector::Interface(name.clone())),
            DetectLocal::InterfaceNamePrefix(prefix) => {
                Some(LocalDetector::InterfacePrefix(prefix.clone()))
            }
        }
    }

    /// Where nodePorts of `family` answer, as kube-proxy resolves `--nodeport-addresses`:
    /// the ranges of the family (every local address if there are none, or one is
    /// `0.0.0.0/0` / `::/0`) select from the Node's addresses and the family's loopback
    /// address; `primary` selects the Node's first address of the family.
    pub fn nodeport_ips(&self, family: IpFamily) -> NodePortIps {
        let node_ips = self
            .node_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(*ip));
        let ranges: Vec<IpNet> = match &self.nodeport_addresses {
            NodePortAddresses::All => return NodePortIps::Local,
            NodePortAddresses::Primary => node_ips.clone().take(1).map(IpNet::from).collect(),
            NodePortAddresses::Cidrs(cidrs) => cidrs
                .iter()
                .copied()
                .filter(|c| family.contains_net(c))
                .collect(),
        };
        if ranges.is_empty() || ranges.iter().any(|c| c.prefix_len() == 0) {
            return NodePortIps::Local;
        }
        let loopback = match family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let mut ips: Vec<IpAddr> = node_ips
            .chain([loopback])
            .filter(|ip| ranges.iter().any(|c| c.contains(ip)))
            .collect();
        ips.sort();
        ips.dedup();
        NodePortIps::Only(ips)
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
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
"#,
        );
        let settings = ProxySettings {
            masquerade_all: true,
            ..ProxySettings::default()
        };
        let o = ProxyOptions::for_node(&state, &NodeName::new("node-1"), &settings);
        assert!(o.masquerade_all);
        assert_eq!(o.node_zone.as_deref(), Some("zone-a"));
        assert_eq!(o.node_ips, ["172.18.0.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!(o.cluster_cidrs, state.config().cluster_cidrs);
        assert_eq!(
            o.node_pod_cidrs,
            ["10.244.1.0/24".parse::<IpNet>().expect("cidr")]
        );
        assert!(
            ProxyOptions::for_node(&state, &NodeName::new("nope"), &ProxySettings::default())
                .node_ips
                .is_empty()
        );
    }

    fn cidr(text: &str) -> IpNet {
        text.parse().expect("cidr")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn name(text: &str) -> InterfaceName {
        text.parse().expect("interface name")
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["cni0", "veth", "a", "br-0123456789ab"] {
            assert_eq!(name(good).as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "veth+",
            "veth*",
            "a b",
            "br-0123456789abc",
        ] {
            let err = bad.parse::<InterfaceName>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn settings_parse_as_kube_proxys() {
        for (mode, bridge, prefix, want) in [
            ("", None, None, DetectLocal::ClusterCidr),
            (
                "ClusterCIDR",
                Some("ignored"),
                None,
                DetectLocal::ClusterCidr,
            ),
            ("NodeCIDR", None, None, DetectLocal::NodeCidr),
            (
                "BridgeInterface",
                Some("cni0"),
                None,
                DetectLocal::BridgeInterface(name("cni0")),
            ),
            (
                "InterfaceNamePrefix",
                None,
                Some("veth"),
                DetectLocal::InterfaceNamePrefix(name("veth")),
            ),
        ] {
            assert_eq!(DetectLocal::parse(mode, bridge, prefix).expect(mode), want);
        }
        for (mode, bridge, prefix, want) in [
            ("clustercidr", None, None, "\"clustercidr\" is not a mode"),
            (
                "BridgeInterface",
                None,
                Some("veth"),
                "needs --pod-bridge-interface",
            ),
            (
                "BridgeInterface",
                Some(""),
                None,
                "needs --pod-bridge-interface",
            ),
            (
                "InterfaceNamePrefix",
                Some("cni0"),
                None,
                "needs --pod-interface-name-prefix",
            ),
            (
                "BridgeInterface",
                Some("a/b"),
                None,
                "--pod-bridge-interface",
            ),
        ] {
            let err = DetectLocal::parse(mode, bridge, prefix).expect_err(mode);
            assert!(err.to_string().contains(want), "{mode}: {err}");
        }
        assert_eq!(
            NodePortAddresses::parse::<&str>(&[]).expect("none"),
            NodePortAddresses::All
        );
        assert_eq!(
            NodePortAddresses::parse(&["primary"]).expect("primary"),
            NodePortAddresses::Primary
        );
        assert_eq!(
            NodePortAddresses::parse(&["10.0.0.0/8", " fd00::/64"]).expect("cidrs"),
            NodePortAddresses::Cidrs(vec![cidr("10.0.0.0/8"), cidr("fd00::/64")])
        );
        for (values, want) in [
            (&["10.0.0.0/33"][..], "\"10.0.0.0/33\" is not a CIDR"),
            (&["10.0.0.1"], "\"10.0.0.1\" is not a CIDR"),
            (&["primary", "10.0.0.0/8"], "primary cannot be combined"),
        ] {
            let err = NodePortAddresses::parse(values).expect_err("refused");
            assert!(err.to_string().contains(want), "{values:?}: {err}");
        }
    }

    #[test]
    fn picks_the_detector_of_the_family() {
        let o = ProxyOptions {
            cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
            node_pod_cidrs: vec![cidr("10.244.1.0/24")],
            ..ProxyOptions::default()
        };
        assert_eq!(
            o.local_detector(IpFamily::V4),
            Some(LocalDetector::Cidr(cidr("10.244.0.0/16")))
        );
        assert_eq!(
            o.local_detector(IpFamily::V6),
            Some(LocalDetector::Cidr(cidr("fd00:10:244::/56")))
        );
        assert_eq!(ProxyOptions::default().local_detector(IpFamily::V4), None);
        let node = ProxyOptions {
            detect_local: DetectLocal::NodeCidr,
            ..o.clone()
        };
        assert_eq!(
            node.local_detector(IpFamily::V4),
            Some(LocalDetector::Cidr(cidr("10.244.1.0/24")))
        );
        assert_eq!(node.local_detector(IpFamily::V6), None);
        for (detect, want) in [
            (
                DetectLocal::BridgeInterface(name("cni0")),
                LocalDetector::Interface(name("cni0")),
            ),
            (
                DetectLocal::InterfaceNamePrefix(name("veth")),
                LocalDetector::InterfacePrefix(name("veth")),
            ),
        ] {
            let o = ProxyOptions {
                detect_local: detect,
                ..ProxyOptions::default()
            };
            for family in IpFamily::ALL {
                assert_eq!(o.local_detector(family).as_ref(), Some(&want));
            }
        }
    }

    #[test]
    fn nodeport_addresses_resolve_as_kube_proxys() {
        let with = |addresses: NodePortAddresses| ProxyOptions {
            node_ips: vec![ip("172.18.0.2"), ip("192.168.1.10"), ip("fd00:18::2")],
            nodeport_addresses: addresses,
            ..ProxyOptions::default()
        };
        let only = |ips: &[&str]| NodePortIps::Only(ips.iter().map(|i| ip(i)).collect());
        for (addresses, family, want) in [
            (NodePortAddresses::All, IpFamily::V4, NodePortIps::Local),
            (
                NodePortAddresses::Primary,
                IpFamily::V4,
                only(&["172.18.0.2"]),
            ),
            (
                NodePortAddresses::Primary,
                IpFamily::V6,
                only(&["fd00:18::2"]),
            ),
            (
                NodePortAddresses::Cidrs(vec![cidr("192.168.0.0/16"), cidr("127.0.0.0/8")]),
                IpFamily::V4,
                only(&["127.0.0.1", "192.168.1.10"]),
            ),
            // No range of the family: every local address of it.
            (
                NodePortAddresses::Cidrs(vec![cidr("192.168.0.0/16")]),
                IpFamily::V6,
                NodePortIps::Local,
            ),
            // A range of the family that holds none of the Node's addresses: nowhere.
            (
                NodePortAddresses::Cidrs(vec![cidr("10.0.0.0/8")]),
                IpFamily::V4,
                only(&[]),
            ),
            (
                NodePortAddresses::Cidrs(vec![cidr("10.0.0.0/8"), cidr("0.0.0.0/0")]),
                IpFamily::V4,
                NodePortIps::Local,
            ),
        ] {
            assert_eq!(
                with(addresses.clone()).nodeport_ips(family),
                want,
                "{addresses:?} {family}"
            );
        }
        // `primary` on a Node without an address of the family: every local address.
        assert_eq!(
            ProxyOptions {
                nodeport_addresses: NodePortAddresses::Primary,
                ..ProxyOptions::default()
            }
            .nodeport_ips(IpFamily::V4),
            NodePortIps::Local
        );
    }
}
