//! Building the lab's networks: the underlay switch, the external namespace, the Nodes (bridge,
//! routes, sysctls) and each Pod's namespace and veth.
//!
//! ```text
//!   external (172.18.0.1) ──┐
//!   node-1 eth0 (172.18.0.x)─┼─ br0 in <lab>-underlay
//!   node-2 eth0 (172.18.0.y)─┘
//!   node-N: cni0 (first host of its podCIDR) ── vethXXXX ── eth0 of each Pod
//!           routes: every other podCIDR via that Node's IP (flat, no NAT)
//! ```

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

/// Each Node's addresses, from the resolved cluster: its first IPv4 InternalIP and podCIDR.
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
            .iter()
            .copied()
            .find(|c| c.addr().is_ipv4())
            .ok_or_else(|| invalid("no IPv4 spec.podCIDR"))?;
        if !state.config().node_network.contains(&ip) {
            return Err(invalid("its InternalIP is outside the lab's node network"));
        }
        out.insert(node.name.clone(), NodeAddress { ip, pod_cidr });
    }
    Ok(out)
}

/// The external client's address: the first host of the node network no Node uses
/// (172.18.0.1 unless a Node has it).
pub(crate) fn external_ip(
    network: IpNet,
    nodes: &BTreeMap<NodeName, NodeAddress>,
) -> Option<IpAddr> {
    network
        .hosts()
        .find(|ip| nodes.values().all(|n| n.ip != *ip))
}

/// The gateway of a podCIDR: its first host, held by the Node's bridge.
pub(crate) fn gateway(pod_cidr: IpNet) -> Option<IpAddr> {
    pod_cidr.hosts().next()
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
    let underlay = names.underlay_ns();
    create_recorded(store, record, &underlay)?;
    let mut switch = vec![
        format!("link add {SWITCH_BRIDGE} type bridge"),
        format!("link set {SWITCH_BRIDGE} up"),
    ];
    let external = names.external_ns();
    create_recorded(store, record, &external)?;
    switch.extend(attach_to_switch(SWITCH_EXTERNAL_PORT, &external));
    let nodes = record.nodes.clone();
    for node in nodes.keys() {
        let ns = names.node_ns(node);
        create_recorded(store, record, &ns)?;
        switch.extend(attach_to_switch(&names::switch_port(node), &ns));
    }
    netns::ip_batch(&underlay, &switch).map_err(LabError::kernel("the underlay switch"))?;

    if let Some(ip) = record.external_ip {
        let lines = vec![
            format!("link set {UNDERLAY_IF} up"),
            format!("addr add {ip}/{prefix} dev {UNDERLAY_IF}"),
        ];
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
            // A bridge without an address of its own takes the lowest MAC of its ports, which
            // changes as Pods come and go and leaves every Pod's neighbour entry for the
            // gateway stale. Give it the MAC derived from its gateway IP instead.
            format!("link add {NODE_BRIDGE}{} type bridge", mac_option(gw)),
            format!("link set {NODE_BRIDGE} up"),
            format!(
                "addr add {gw}/{} dev {NODE_BRIDGE}",
                addr.pod_cidr.prefix_len()
            ),
        ];
        for (other, other_addr) in &nodes {
            if other != node {
                lines.push(format!(
                    "route add {} via {}",
                    other_addr.pod_cidr, other_addr.ip
                ));
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
        netns::ip_batch(&ns, &lines).map_err(LabError::kernel(what()))?;
        link::sysctl(&ns, "net.ipv4.ip_forward", "1").map_err(LabError::kernel(what()))?;
        // A Node forwarding an external client's packet back out of eth0 (to a Pod on another
        // Node) would send the client an ICMP redirect. Redirects share the per-destination
        // ICMP rate-limit state with the port-unreachable that rejects a connection to a
        // Service without endpoints, so that reject would be suppressed and the client would
        // see its SYN retransmitted a second later. The lab's routes are deliberate: no
        // redirects, on every interface present and future (the kernel ORs `all` with each).
        for conf in ["all", "default", UNDERLAY_IF, NODE_BRIDGE] {
            link::sysctl(&ns, &format!("net.ipv4.conf.{conf}.send_redirects"), "0")
                .map_err(LabError::kernel(what()))?;
        }
        link::sysctl(&ns, "net.bridge.bridge-nf-call-iptables", "1")
            .map_err(LabError::kernel(what()))?;
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

/// Builds a Pod's namespace: `eth0` veth into the Node's bridge (hairpin on), its IP, a
/// default route via the bridge, and its resolv.conf. The namespace must already be recorded.
pub(crate) fn build_pod(
    names: &Names,
    node: &NodeName,
    node_addr: &NodeAddress,
    pod: &PodRef,
    ip: IpAddr,
    dns: &ResolvConf,
) -> Result<(), LabError> {
    let pod_ns = names.pod_ns(pod);
    let node_ns = names.node_ns(node);
    let what = || format!("pod {pod}");
    write_resolv_conf(&pod_ns, pod, dns)?;
    netns::add(&pod_ns).map_err(LabError::kernel(what()))?;
    // Announce the Pod's address (gratuitous ARP) when its link comes up, so that peers
    // holding a neighbour entry from an earlier incarnation at this IP update it at once.
    link::sysctl(&pod_ns, "net.ipv4.conf.all.arp_notify", "1").map_err(LabError::kernel(what()))?;
    let veth = names::pod_veth(pod);
    // A namespace is torn down asynchronously after `ip netns delete`: the veth of an earlier
    // incarnation of this Pod may linger in the Node for a moment.
    link::delete_link(&node_ns, &veth).map_err(LabError::kernel(what()))?;
    netns::ip_batch(
        &node_ns,
        &[
            // The Pod's MAC follows its IP (as the bridge CNI plugin does): a Pod re-created
            // at the same address is reachable through every peer's existing neighbour entry.
            format!(
                "link add {veth} type veth peer name {POD_IF}{} netns {pod_ns}",
                mac_option(ip)
            ),
            format!("link set {veth} master {NODE_BRIDGE}"),
            format!("link set dev {veth} type bridge_slave hairpin on"),
            format!("link set {veth} up"),
        ],
    )
    .map_err(LabError::kernel(what()))?;
    let gw = gateway(node_addr.pod_cidr).ok_or_else(|| LabError::InvalidNode {
        node: node.clone(),
        reason: "its podCIDR has no host addresses",
    })?;
    netns::ip_batch(
        &pod_ns,
        &[
            // The address first: the gratuitous ARP goes out when the link comes up, for the
            // addresses it has by then.
            format!(
                "addr add {ip}/{} dev {POD_IF}",
                node_addr.pod_cidr.prefix_len()
            ),
            format!("link set {POD_IF} up"),
            format!("route add default via {gw}"),
        ],
    )
    .map_err(LabError::kernel(what()))
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

/// ` address MAC` for `ip link add` with the MAC derived from `ip` (IPv4), or nothing.
fn mac_option(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!(" address {}", link::mac_for_ipv4(v4)),
        IpAddr::V6(_) => String::new(),
    }
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
