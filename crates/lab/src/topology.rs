//! Building the lab's networks: the underlay switch, the external namespace, the Nodes (bridge,
//! routes, sysctls) and each Pod's namespace and veth.
//!
//! ```text
//!   external (172.18.0.1) ──┐
//!   node-1 eth0 (172.18.0.x)─┼─ br0 in <lab>-underlay (172.18.0.254: the API server's
//!   node-2 eth0 (172.18.0.y)─┘      in-lab listener, port 6443, on a lab with one)
//!   node-N: cni0 (first host of its podCIDR) ── vethXXXX ── eth0 of each Pod
//!           routes: every other podCIDR via that Node's IP (flat, no NAT)
//! ```
//!
//! On a lab with IPv6 (`--ip-family ipv6` or `dual`) the underlay also carries the IPv6 node
//! network: the external namespace and every Node get an address of it, a Node's bridge
//! holds the gateway of its IPv6 podCIDR, and each IPv6 podCIDR is routed via its Node's
//! IPv6 address. Duplicate address detection is off in every namespace of such a lab.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netd_kernel::{link, netns};
use netd_model::{ClusterState, NodeName, PodRef};

use crate::LabError;
use crate::names::{
    self, NODE_BRIDGE, Names, POD_IF, SWITCH_BRIDGE, SWITCH_EXTERNAL_PORT, UNDERLAY_IF,
};
use crate::store::{LabRecord, NodeAddress, Store};

/// Routing protocol number tagging the external namespace's Service routes.
pub(crate) const EXTERNAL_ROUTE_PROTO: u8 = 98;

/// Each Node's addresses, from the resolved cluster: its first IPv4 InternalIP, its first
/// IPv6 one on a lab with an IPv6 node network, and its podCIDRs (one per family).
pub(crate) fn node_addresses(
    state: &ClusterState,
) -> Result<BTreeMap<NodeName, NodeAddress>, LabError> {
    let mut out = BTreeMap::new();
    for node in state.nodes() {
        names::check_node_name(&node.name)?;
        let invalid = |reason| LabError::InvalidNode {
            node: node.name.clone(),
            reason,
        };
        let ip = node
            .internal_ips
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .ok_or_else(|| invalid("no IPv4 InternalIP in status.addresses"))?;
        let pod_cidr = node
            .pod_cidrs
            .first()
            .copied()
            .ok_or_else(|| invalid("no spec.podCIDR"))?;
        let second_pod_cidr = node
            .pod_cidrs
            .iter()
            .copied()
            .find(|c| c.addr().is_ipv4() != pod_cidr.addr().is_ipv4());
        if !state.config().node_network.contains(&ip) {
            return Err(invalid("its InternalIP is outside the lab's node network"));
        }
        let ip6 = match state.config().node_network_v6 {
            Some(network) => Some(
                node.internal_ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv6() && network.contains(ip))
                    .ok_or_else(|| invalid("no IPv6 InternalIP in the lab's IPv6 node network"))?,
            ),
            None => None,
        };
        let addr = NodeAddress {
            ip,
            pod_cidr,
            ip6,
            second_pod_cidr,
        };
        if addr.pod_cidrs().any(|c| addr.underlay_for(c).is_none()) {
            return Err(invalid(
                "an IPv6 spec.podCIDR needs a lab with IPv6 (lab up --ip-family ipv6 or dual)",
            ));
        }
        out.insert(node.name.clone(), addr);
    }
    Ok(out)
}

/// The external client's address: the first host of the node network no Node uses
/// (172.18.0.1 unless a Node has it).
pub(crate) fn external_ip(
    network: IpNet,
    nodes: &BTreeMap<NodeName, NodeAddress>,
) -> Option<IpAddr> {
    // ipnet's IPv6 `hosts` starts at the network address itself.
    network
        .hosts()
        .filter(|ip| *ip != network.network())
        .find(|ip| nodes.values().all(|n| n.ip != *ip && n.ip6 != Some(*ip)))
}

/// The API server's address inside the lab: the last host of the node network that neither
/// a Node nor the external namespace uses (172.18.0.254 unless one does), held by the
/// underlay switch's bridge so that every Node and the external namespace reach it on-link.
/// In an IPv6 node network, the last such address up to `::fe` (`fd00:172:18::fe`), as
/// readable as its IPv4 twin.
pub(crate) fn api_ip(
    network: IpNet,
    nodes: &BTreeMap<NodeName, NodeAddress>,
    external: IpAddr,
) -> Option<IpAddr> {
    let free = |ip: &IpAddr| {
        *ip != network.network()
            && *ip != external
            && nodes.values().all(|n| n.ip != *ip && n.ip6 != Some(*ip))
    };
    match network {
        IpNet::V4(_) => network.hosts().rev().find(free),
        IpNet::V6(net) => (1..=0xfe_u128)
            .rev()
            .map(|i| IpAddr::V6((u128::from(net.network()) + i).into()))
            .filter(|ip| network.contains(ip))
            .find(free),
    }
}

/// The gateway of a podCIDR: its first host, held by the Node's bridge (the address after
/// the network address in both families, as the control plane's IPAM leaves it out).
pub(crate) fn gateway(pod_cidr: IpNet) -> Option<IpAddr> {
    pod_cidr.hosts().find(|ip| *ip != pod_cidr.network())
}

/// Builds the underlay, the external namespace and every Node. Each namespace is recorded in
/// `record` (and written to the store) before it is created.
pub(crate) fn build_infrastructure(
    names: &Names,
    store: &Store,
    record: &mut LabRecord,
) -> Result<(), LabError> {
    let prefix = record
        .config
        .node_network
        .map(|n| n.prefix_len())
        .unwrap_or(24);
    let prefix6 = record.config.node_network_v6.map(|n| n.prefix_len());
    let underlay = names.underlay_ns();
    create_recorded(store, record, &underlay)?;
    let mut switch = vec![
        format!("link add {SWITCH_BRIDGE} type bridge"),
        format!("link set {SWITCH_BRIDGE} up"),
    ];
    if let Some(ip) = record.api_ip {
        // Where the API server listens for the lab's own clients (see `crate::api`).
        switch.push(format!("addr add {ip}/{prefix} dev {SWITCH_BRIDGE}"));
    }
    if let (Some(ip6), Some(prefix6)) = (record.api_ip6, prefix6) {
        without_dad(&underlay)?;
        switch.push(format!(
            "addr add {ip6}/{prefix6} dev {SWITCH_BRIDGE} nodad"
        ));
    }
    let external = names.external_ns();
    create_recorded(store, record, &external)?;
    if prefix6.is_some() {
        without_dad(&external)?;
    }
    switch.extend(attach_to_switch(SWITCH_EXTERNAL_PORT, &external));
    let nodes = record.nodes.clone();
    for node in nodes.keys() {
        let ns = names.node_ns(node);
        create_recorded(store, record, &ns)?;
        if prefix6.is_some() {
            without_dad(&ns)?;
        }
        switch.extend(attach_to_switch(&names::switch_port(node), &ns));
    }
    if record.api_ip.is_some() {
        // Pods reach the API server with their own addresses (nothing masquerades them): its
        // replies go back through the Pod's Node, as the Nodes route each other's podCIDRs.
        for addr in nodes.values() {
            for cidr in addr.pod_cidrs() {
                let via = match (cidr.addr().is_ipv4(), record.api_ip6) {
                    (true, _) => Some(addr.ip),
                    (false, Some(_)) => addr.ip6,
                    (false, None) => None,
                };
                if let Some(via) = via {
                    switch.push(format!("route add {cidr} via {via}"));
                }
            }
        }
    }
    netns::ip_batch(&underlay, &switch).map_err(LabError::kernel("the underlay switch"))?;

    if let Some(ip) = record.external_ip {
        let mut lines = vec![
            format!("link set {UNDERLAY_IF} up"),
            format!("addr add {ip}/{prefix} dev {UNDERLAY_IF}"),
        ];
        if let (Some(ip6), Some(prefix6)) = (record.external_ip6, prefix6) {
            // `nodad`: no duplicate address detection, so the address is usable at once.
            lines.push(format!("addr add {ip6}/{prefix6} dev {UNDERLAY_IF} nodad"));
        }
        netns::ip_batch(&external, &lines).map_err(LabError::kernel("the external namespace"))?;
        // Nodes route unknown destinations here (their default gateway); it must not pass them on.
        link::sysctl(&external, "net.ipv4.ip_forward", "0")
            .map_err(LabError::kernel("the external namespace"))?;
    }
    for (node, addr) in &nodes {
        let ns = names.node_ns(node);
        let what = || format!("node {node}");
        let gw = gateway(addr.pod_cidr).ok_or_else(|| LabError::InvalidNode {
            node: node.clone(),
            reason: "its podCIDR has no host addresses",
        })?;
        let mut lines = vec![
            format!("link set {UNDERLAY_IF} up"),
            format!("addr add {}/{prefix} dev {UNDERLAY_IF}", addr.ip),
            // A fixed address: a bridge otherwise takes its lowest port's, which changes as
            // Pods come and go, and every Pod's entry for its gateway would go stale.
            format!("link add {NODE_BRIDGE} address {} type bridge", mac_for(gw)),
            format!("link set {NODE_BRIDGE} up"),
            format!(
                "addr add {gw}/{} dev {NODE_BRIDGE}{}",
                addr.pod_cidr.prefix_len(),
                addr_flags(gw)
            ),
        ];
        if let (Some(ip6), Some(prefix6)) = (addr.ip6, prefix6) {
            lines.push(format!("addr add {ip6}/{prefix6} dev {UNDERLAY_IF} nodad"));
        }
        if let Some(second) = addr.second_pod_cidr {
            let gw = gateway(second).ok_or_else(|| LabError::InvalidNode {
                node: node.clone(),
                reason: "its podCIDR has no host addresses",
            })?;
            lines.push(format!(
                "addr add {gw}/{} dev {NODE_BRIDGE}{}",
                second.prefix_len(),
                addr_flags(gw)
            ));
        }
        for (other, other_addr) in &nodes {
            if other != node {
                for cidr in other_addr.pod_cidrs() {
                    if let Some(via) = other_addr.underlay_for(cidr) {
                        lines.push(format!("route add {cidr} via {via}"));
                    }
                }
            }
        }
        // A real node has a default gateway, the upstream router. Without one, a packet to a
        // ClusterIP that no rule DNATs (a Service without endpoints) would fail the route
        // lookup before the filter table could REJECT it, and the client would see "no route"
        // instead of "connection refused". The external namespace does not forward, so
        // nothing routed this way goes anywhere.
        if let Some(router) = record.external_ip {
            lines.push(format!("route add default via {router}"));
        }
        if let Some(router6) = record.external_ip6.filter(|_| addr.ip6.is_some()) {
            lines.push(format!("route add ::/0 via {router6}"));
        }
        netns::ip_batch(&ns, &lines).map_err(LabError::kernel(what()))?;
        link::sysctl(&ns, "net.ipv4.ip_forward", "1").map_err(LabError::kernel(what()))?;
        // A Node forwarding an external client's packet back out of eth0 (to a Pod on another
        // Node) would send the client an ICMP redirect. Redirects share the per-destination
        // ICMP rate-limit state with the port-unreachable that rejects a connection to a
        // Service without endpoints, so that reject would be suppressed and the client would
        // see its SYN retransmitted a second later. Pods on this Node also reach each other
        // through the Node (see `build_pod`). The lab's routes are deliberate: no redirects,
        // on every interface present and future (the kernel ORs `all` with each).
        for conf in ["all", "default", UNDERLAY_IF, NODE_BRIDGE] {
            link::sysctl(&ns, &format!("net.ipv4.conf.{conf}.send_redirects"), "0")
                .map_err(LabError::kernel(what()))?;
        }
        link::sysctl(&ns, "net.bridge.bridge-nf-call-iptables", "1")
            .map_err(LabError::kernel(what()))?;
        if record.localhost_nodeports {
            // As kube-proxy sets it for `--iptables-localhost-nodeports`: 127.0.0.1 may then
            // be DNATed to a Pod; the agent's KUBE-FIREWALL rule drops martians it would admit.
            link::sysctl(&ns, "net.ipv4.conf.all.route_localnet", "1")
                .map_err(LabError::kernel(what()))?;
        }
        if addr.ip6.is_some() {
            link::sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")
                .map_err(LabError::kernel(what()))?;
            link::sysctl(&ns, "net.bridge.bridge-nf-call-ip6tables", "1")
                .map_err(LabError::kernel(what()))?;
        }
    }
    Ok(())
}

/// Points the external namespace's routes for every Service externalIP and load-balancer IP
/// at a Node (one with a ready endpoint of the Service if there is one, as a MetalLB speaker
/// would announce), and removes routes no Service needs any more. Nothing else is routed.
pub(crate) fn sync_external_routes(
    names: &Names,
    state: &ClusterState,
    nodes: &BTreeMap<NodeName, NodeAddress>,
) -> Result<(), LabError> {
    let mut desired: BTreeMap<String, IpAddr> = BTreeMap::new();
    for svc in state.services() {
        let with_endpoint = state
            .endpoint_slices_for(&svc.key)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.ready)
            .filter_map(|e| e.node.as_ref())
            .filter_map(|n| nodes.get(n))
            .map(|a| a.ip)
            .min();
        let Some(via) = with_endpoint.or_else(|| nodes.values().map(|a| a.ip).next()) else {
            continue;
        };
        for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            if ip.is_ipv4() {
                desired.insert(ip.to_string(), via);
            }
        }
    }
    let ns = names.external_ns();
    let what = "the external namespace's routes";
    let current =
        link::routes_with_proto(&ns, EXTERNAL_ROUTE_PROTO).map_err(LabError::kernel(what))?;
    for dst in current.iter().filter(|d| !desired.contains_key(d.as_str())) {
        link::delete_route(&ns, dst).map_err(LabError::kernel(what))?;
    }
    for (dst, via) in &desired {
        link::replace_route(&ns, dst, *via, EXTERNAL_ROUTE_PROTO)
            .map_err(LabError::kernel(what))?;
    }
    Ok(())
}

/// Builds a Pod's namespace: `eth0` veth into the Node's bridge (hairpin on), its IP (and
/// its `second_ip` of the other family on a dual-stack lab), a default route per family via
/// the bridge, and its resolv.conf. The namespace must already be recorded.
///
/// No Pod resolves an IPv4 neighbour at run time. The kernel's ARP table is one table for
/// every namespace on the machine (`gc_thresh3`, 1,024 entries by default, counts them all):
/// Pods on one /24 that ARP for each other need one entry per pair, so a matrix of 200 Pods
/// overflowed it and the kernel dropped packets ("neighbor table overflow"), which the matrix
/// read as policy. Instead, as Calico and Cilium do, a Pod holds its IPv4 address as a /32 and
/// sends everything to its gateway; the gateway's and the Pod's MAC addresses are derived from
/// their IPs ([`mac_for`]) and entered as permanent entries, which that limit does not count.
/// IPv6 addresses keep their podCIDR's prefix and neighbour discovery; the MAC derived from
/// the Pod's first IP still means a re-created Pod is never behind a stale entry.
pub(crate) fn build_pod(
    names: &Names,
    node: &NodeName,
    node_addr: &NodeAddress,
    pod: &PodRef,
    ip: IpAddr,
    second_ip: Option<IpAddr>,
    dns: &ResolvConf,
) -> Result<(), LabError> {
    let pod_ns = names.pod_ns(pod);
    let node_ns = names.node_ns(node);
    let what = || format!("pod {pod}");
    write_resolv_conf(&pod_ns, pod, dns)?;
    netns::add(&pod_ns).map_err(LabError::kernel(what()))?;
    // Announce the Pod's addresses when its link comes up (gratuitous ARP, unsolicited
    // neighbour advertisement), so that a peer holding an entry from an earlier incarnation at
    // this IP updates it at once.
    link::sysctl(&pod_ns, "net.ipv4.conf.all.arp_notify", "1").map_err(LabError::kernel(what()))?;
    if ip.is_ipv6() || second_ip.is_some_and(|s| s.is_ipv6()) {
        without_dad(&pod_ns)?;
        link::sysctl(&pod_ns, "net.ipv6.conf.all.ndisc_notify", "1")
            .map_err(LabError::kernel(what()))?;
    }
    let veth = names::pod_veth(pod);
    // A namespace is torn down asynchronously after `ip netns delete`: the veth of an earlier
    // incarnation of this Pod may linger in the Node for a moment.
    link::delete_link(&node_ns, &veth).map_err(LabError::kernel(what()))?;
    let pod_mac = mac_for(ip);
    let mut node_lines = vec![
        format!("link add {veth} type veth peer name {POD_IF} address {pod_mac} netns {pod_ns}"),
        format!("link set {veth} master {NODE_BRIDGE}"),
        format!("link set dev {veth} type bridge_slave hairpin on"),
        format!("link set {veth} up"),
    ];
    for addr in std::iter::once(ip).chain(second_ip) {
        node_lines.push(format!(
            "neigh replace {addr} lladdr {pod_mac} dev {NODE_BRIDGE} nud permanent"
        ));
    }
    netns::ip_batch(&node_ns, &node_lines).map_err(LabError::kernel(what()))?;
    // The bridge's address, as `build_infrastructure` set it from the first podCIDR.
    let bridge_mac =
        gateway(node_addr.pod_cidr)
            .map(mac_for)
            .ok_or_else(|| LabError::InvalidNode {
                node: node.clone(),
                reason: "its podCIDR has no host addresses",
            })?;
    let mut lines = vec![format!("link set {POD_IF} up")];
    for ip in std::iter::once(ip).chain(second_ip) {
        let no_cidr = || LabError::InvalidNode {
            node: node.clone(),
            reason: "it has no podCIDR of its pod's IP family",
        };
        let cidr = node_addr.pod_cidr_for(ip).ok_or_else(no_cidr)?;
        let gw = gateway(cidr).ok_or_else(|| LabError::InvalidNode {
            node: node.clone(),
            reason: "its podCIDR has no host addresses",
        })?;
        if ip.is_ipv4() {
            lines.extend([
                format!("addr add {ip}/32 dev {POD_IF}"),
                format!("route add {gw} dev {POD_IF} scope link"),
                format!("route add default via {gw}"),
                format!("neigh replace {gw} lladdr {bridge_mac} dev {POD_IF} nud permanent"),
            ]);
        } else {
            lines.extend([
                format!(
                    "addr add {ip}/{} dev {POD_IF}{}",
                    cidr.prefix_len(),
                    addr_flags(ip)
                ),
                format!("route add ::/0 via {gw}"),
            ]);
        }
    }
    netns::ip_batch(&pod_ns, &lines).map_err(LabError::kernel(what()))
}

/// The MAC address of the interface that holds `ip` in a Node's pod network: `0a:58:` and the
/// address's last four bytes, as OVN-Kubernetes derives them. A Pod re-created with the same
/// IP thus has the same MAC, and no cached entry anywhere can be stale.
pub(crate) fn mac_for(ip: IpAddr) -> String {
    let b = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Removes the Node's permanent neighbour entries for the addresses of a Pod that is gone
/// (see [`build_pod`]), so its IPs are unknown on `cni0` again, as with any address no Pod holds.
pub(crate) fn forget_pod_addresses(
    names: &Names,
    node: &NodeName,
    ips: impl IntoIterator<Item = IpAddr>,
) -> Result<(), LabError> {
    let lines: Vec<String> = ips
        .into_iter()
        .map(|ip| format!("neigh flush to {ip} dev {NODE_BRIDGE} nud permanent"))
        .collect();
    netns::ip_batch(&names.node_ns(node), &lines).map_err(LabError::kernel(format!("node {node}")))
}

/// Removes a Pod's namespace (its veth goes with it) and its `/etc/netns` directory.
pub(crate) fn remove_pod(netns_name: &str) -> Result<(), LabError> {
    netns::delete(netns_name).map_err(LabError::kernel(format!("namespace {netns_name}")))?;
    let dir = etc_dir(netns_name);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(dir)(e)),
        _ => Ok(()),
    }
}

/// Where `ip netns exec` finds files to bind over `/etc` for the namespace `netns_name`.
fn etc_dir(netns_name: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns_name)
}

/// What goes in a Pod's `/etc/resolv.conf`.
#[derive(Clone, Debug)]
pub(crate) struct ResolvConf {
    pub nameserver: IpAddr,
    pub zone: String,
}

fn write_resolv_conf(pod_ns: &str, pod: &PodRef, dns: &ResolvConf) -> Result<(), LabError> {
    let dir = etc_dir(pod_ns);
    std::fs::create_dir_all(&dir).map_err(LabError::io(&dir))?;
    let zone = &dns.zone;
    let body = format!(
        "nameserver {}\nsearch {}.svc.{zone} svc.{zone} {zone}\noptions ndots:5\n",
        dns.nameserver, pod.namespace
    );
    let file = dir.join("resolv.conf");
    std::fs::write(&file, body).map_err(LabError::io(&file))
}

/// Turns IPv6 duplicate address detection off for the interfaces created in `ns` from now on.
/// Every lab address is handed out once, and an interface whose link-local address is still
/// "tentative" sends no neighbour solicitation for traffic it forwards: a Node would hold the
/// first packets to a Pod for a second or more.
fn without_dad(ns: &str) -> Result<(), LabError> {
    for key in [
        "net.ipv6.conf.all.accept_dad",
        "net.ipv6.conf.default.accept_dad",
    ] {
        link::sysctl(ns, key, "0").map_err(LabError::kernel(format!("namespace {ns}")))?;
    }
    Ok(())
}

/// `nodad` for an IPv6 address: without duplicate address detection it is usable at once,
/// not "tentative" for a second or two (the lab hands out every address exactly once).
fn addr_flags(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { " nodad" } else { "" }
}

fn attach_to_switch(port: &str, peer_ns: &str) -> Vec<String> {
    vec![
        format!("link add {port} type veth peer name {UNDERLAY_IF} netns {peer_ns}"),
        format!("link set {port} master {SWITCH_BRIDGE}"),
        format!("link set {port} up"),
    ]
}

fn create_recorded(store: &Store, record: &mut LabRecord, ns: &str) -> Result<(), LabError> {
    record.namespaces.push(ns.to_owned());
    store.write_lab(record)?;
    netns::add(ns).map_err(LabError::kernel(format!("namespace {ns}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn gateways_and_the_external_address_skip_the_network_address_in_both_families() {
        assert_eq!(gateway(net("10.244.1.0/24")), Some(ip("10.244.1.1")));
        assert_eq!(
            gateway(net("fd00:10:244:1::/64")),
            Some(ip("fd00:10:244:1::1"))
        );
        let nodes = BTreeMap::from([(
            NodeName::new("node-1"),
            NodeAddress {
                ip: ip("172.18.0.1"),
                pod_cidr: net("10.244.0.0/24"),
                ip6: Some(ip("fd00:172:18::1")),
                second_pod_cidr: Some(net("fd00:10:244::/64")),
            },
        )]);
        assert_eq!(
            external_ip(net("172.18.0.0/24"), &nodes),
            Some(ip("172.18.0.2"))
        );
        assert_eq!(
            external_ip(net("fd00:172:18::/64"), &nodes),
            Some(ip("fd00:172:18::2"))
        );
        let node = &nodes[&NodeName::new("node-1")];
        assert_eq!(
            node.pod_cidr_for(ip("fd00:10:244::5")),
            Some(net("fd00:10:244::/64"))
        );
        assert_eq!(
            node.underlay_for(net("fd00:10:244::/64")),
            Some(ip("fd00:172:18::1"))
        );
        assert_eq!(
            node.underlay_for(net("10.244.0.0/24")),
            Some(ip("172.18.0.1"))
        );
    }

    #[test]
    fn the_api_address_is_the_last_free_host_and_readable_in_ipv6() {
        let node = |v4: &str, v6: &str| NodeAddress {
            ip: ip(v4),
            pod_cidr: net("10.244.0.0/24"),
            ip6: Some(ip(v6)),
            second_pod_cidr: None,
        };
        let mut nodes = BTreeMap::from([(
            NodeName::new("node-1"),
            node("172.18.0.2", "fd00:172:18::2"),
        )]);
        let api = |nodes: &BTreeMap<NodeName, NodeAddress>| {
            (
                api_ip(net("172.18.0.0/24"), nodes, ip("172.18.0.1")),
                api_ip(net("fd00:172:18::/64"), nodes, ip("fd00:172:18::1")),
            )
        };
        assert_eq!(
            api(&nodes),
            (Some(ip("172.18.0.254")), Some(ip("fd00:172:18::fe")))
        );
        // A Node on that address pushes it down, in both families.
        nodes.insert(
            NodeName::new("node-2"),
            node("172.18.0.254", "fd00:172:18::fe"),
        );
        assert_eq!(
            api(&nodes),
            (Some(ip("172.18.0.253")), Some(ip("fd00:172:18::fd")))
        );
    }
}
