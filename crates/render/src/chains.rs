//! kube-proxy's chain names: fixed top-level chains and hashed per-service chains.
//!
//! `hash(s) = base32(sha256(s))[..16]` (RFC 4648 alphabet, upper case). Service-port chains
//! hash `svcPortName + protocol` (`ns1/svc1:p80tcp`), endpoint chains add the endpoint
//! (`ns1/svc1:p80tcp10.180.0.1:80`, `[addr]:port` for IPv6); the four service chains of one
//! port share one suffix.

use std::net::SocketAddr;

use data_encoding::BASE32;
use netd_model::ServicePortName;
use sha2::{Digest, Sha256};

use crate::iptables::ChainName;

/// nat and filter: entry point for service traffic (ClusterIPs, external and LB IPs; in
/// filter, rejects for services without endpoints).
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// filter: rejects and drops for external frontends.
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// nat: nodePorts; filter: health-check node ports.
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// filter: accepts forwarded service traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter: drops load-balancer traffic not admitted by its source ranges.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: drops martian packets to `127.0.0.0/8` that `route_localnet` makes routable (only
/// with localhost nodePorts; kubelet keeps a chain of the same name and rule).
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// nat: sets the masquerade mark.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: masquerades marked packets.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";

/// Prefixes of the per-service chains: a nat chain with one of them that is no longer in
/// use is ours to delete.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The four chains of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceChains {
    /// `KUBE-SVC-…`: load-balances over the cluster endpoints.
    pub cluster: ChainName,
    /// `KUBE-SVL-…`: load-balances over this node's endpoints.
    pub local: ChainName,
    /// `KUBE-EXT-…`: entry for nodePort, external-IP and load-balancer traffic.
    pub external: ChainName,
    /// `KUBE-FW-…`: load-balancer source ranges.
    pub firewall: ChainName,
}

impl ServiceChains {
    /// The chains of `port`.
    pub fn of(port: &ServicePortName) -> Self {
        let suffix = hash(&format!("{port}{}", port.protocol.as_lower_str()));
        Self {
            cluster: ChainName::new(format!("KUBE-SVC-{suffix}")),
            local: ChainName::new(format!("KUBE-SVL-{suffix}")),
            external: ChainName::new(format!("KUBE-EXT-{suffix}")),
            firewall: ChainName::new(format!("KUBE-FW-{suffix}")),
        }
    }
}

/// The `KUBE-SEP-…` chain of one endpoint of `port`.
pub fn endpoint_chain(port: &ServicePortName, endpoint: &SocketAddr) -> ChainName {
    ChainName::new(format!(
        "KUBE-SEP-{}",
        hash(&format!("{port}{}{endpoint}", port.protocol.as_lower_str()))
    ))
}

/// Whether `chain` is a per-service chain (see [`SERVICE_CHAIN_PREFIXES`]).
pub fn is_service_chain(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

pub(crate) fn hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

#[cfg(test)]
mod tests {
    use netd_model::{Protocol, ServiceRef};

    use super::*;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            service: ServiceRef::new(ns, name),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn hashes_match_the_reference_table() {
        // kube-proxy.md A.2, verified against upstream test expectations.
        assert_eq!(
            ServiceChains::of(&spn("ns1", "svc1", "p80"))
                .cluster
                .as_str(),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        let ep: SocketAddr = "10.180.0.1:80".parse().expect("addr");
        assert_eq!(
            endpoint_chain(&spn("ns1", "svc1", "p80"), &ep).as_str(),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let svc2 = ServiceChains::of(&spn("ns2", "svc2", "p80"));
        assert_eq!(svc2.cluster.as_str(), "KUBE-SVC-GNZBNJ2PO5MGZ6GT");
        assert_eq!(svc2.external.as_str(), "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        let svc5 = ServiceChains::of(&spn("ns5", "svc5", "p80"));
        assert_eq!(svc5.firewall.as_str(), "KUBE-FW-NUKIZ6OKUXPJNT4C");
        assert_eq!(svc5.local.as_str(), "KUBE-SVL-NUKIZ6OKUXPJNT4C");
    }

    #[test]
    fn reproduces_the_seed_chain_name() {
        // The seed's rules come from a kube-proxy older than v1.10, which printed an unnamed
        // port's ServicePortName as `default/hostnames:`; hashing that string with the protocol
        // gives the seed's KUBE-SVC chain exactly. Today's name is `default/hostnames`.
        assert_eq!(hash("default/hostnames:tcp"), "NWV5X2332I4OT4T3");
        assert_eq!(
            ServiceChains::of(&spn("default", "hostnames", ""))
                .cluster
                .as_str(),
            "KUBE-SVC-YN5D6RYVEVZOH44Q"
        );
    }

    #[test]
    fn recognises_service_chains() {
        assert!(is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ"));
        assert!(is_service_chain("KUBE-FW-NUKIZ6OKUXPJNT4C"));
        assert!(!is_service_chain(KUBE_SERVICES));
        assert!(!is_service_chain("KUBE-MARK-MASQ"));
    }
}
