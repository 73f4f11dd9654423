//! Whether a Node's NetworkPolicy rules see the traffic they judge, and making them see it.
//!
//! The policy rules hook netfilter's IP layer (forward and output). Pods of a routed CNI (a
//! veth per Pod, routed by the node) always cross it. Pods that share a Linux bridge (the
//! `bridge` plugin's `cni0`, flannel's, docker's) reach each other by bridging, which crosses
//! the IP layer only with `br_netfilter` loaded and `net.bridge.bridge-nf-call-iptables`
//! (`-ip6tables` for IPv6) at 1. Without them, policy between two Pods of one Node would let
//! everything through, silently. [`ensure`] finds the bridges with veth ports and, where
//! there are some, loads `br_netfilter` and turns those sysctls on, as kubeadm's preflight
//! expects of a node; when it cannot, the caller must say so (the agent logs it and exports
//! `kubeproxy_network_policy_enforced 0`) rather than pretend.

use std::collections::BTreeSet;

use netd_kernel::{KernelError, link, module};
use netd_proxy::IpFamily;

use crate::AgentError;

/// The sysctl that sends bridged packets of `family` through netfilter's IP layer.
pub fn bridge_sysctl(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "net.bridge.bridge-nf-call-iptables",
        IpFamily::V6 => "net.bridge.bridge-nf-call-ip6tables",
    }
}

/// How the Node's Pods reach each other, as far as policy enforcement cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// No bridge has a veth port: every packet between Pods crosses the IP layer.
    Routed,
    /// These bridges have veth ports, and bridged packets now cross the IP layer.
    Bridged {
        /// The bridges, sorted.
        bridges: Vec<String>,
        /// The sysctls [`ensure`] had to turn on (empty when they were on already).
        turned_on: Vec<&'static str>,
    },
}

/// Makes sure NetworkPolicy sees the traffic between the Pods of the Node whose network
/// namespace is `ns`, for each of `families`; see the module's documentation.
pub fn ensure(ns: &str, families: &BTreeSet<IpFamily>) -> Result<Enforcement, AgentError> {
    let ports = link::bridge_veth_ports(ns).map_err(|source| AgentError::PolicyNotEnforced {
        namespace: ns.to_owned(),
        bridges: String::new(),
        source: Box::new(source),
    })?;
    if ports.is_empty() {
        return Ok(Enforcement::Routed);
    }
    let bridges: Vec<String> = ports.into_keys().collect();
    let not_enforced = |source: KernelError| AgentError::PolicyNotEnforced {
        namespace: ns.to_owned(),
        bridges: bridges.join(", "),
        source: Box::new(source),
    };
    module::ensure(&[module::BR_NETFILTER]).map_err(not_enforced)?;
    let mut turned_on = Vec::new();
    for family in families {
        let key = bridge_sysctl(*family);
        match link::read_sysctl(ns, key).map_err(not_enforced)? {
            Some(value) if value == "1" => {}
            Some(_) => {
                link::sysctl(ns, key, "1").map_err(not_enforced)?;
                turned_on.push(key);
            }
            None => {
                return Err(not_enforced(KernelError::SysctlReadFailed {
                    namespace: ns.to_owned(),
                    key: key.to_owned(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                }));
            }
        }
    }
    Ok(Enforcement::Bridged { bridges, turned_on })
}
