//! [`IpFamily`]: IPv4 or IPv6, the one family type every crate uses (a plan, a rule set, a
//! health report and an address set each cover exactly one).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

/// An IP family; serialised and displayed as the API spells it (`IPv4`, `IPv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    /// IPv4 (`iptables`, ipset `family inet`, nftables `ipv4_addr`).
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6 (`ip6tables`, ipset `family inet6`, nftables `ipv6_addr`).
    #[serde(rename = "IPv6")]
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
