//! The UDP/SCTP conntrack reconciler (kube-proxy ≥ 1.32, reference A.11), as a pure
//! decision over a [`ServicePlan`] and the entries the kernel lists.
//!
//! A connectionless "connection" to a Service stays pinned to the endpoint its first packet
//! was sent to for as long as packets keep flowing. For every UDP or SCTP Service port with
//! at least one serving endpoint, an entry sent to one of its frontends (ClusterIP, external
//! or load-balancer IP on the Service port, or any address on the nodePort) whose reply does
//! not come from a serving endpoint is stale: the endpoint is gone, or the packets were never
//! DNATed at all (sent while the port had no endpoint). Those entries are deleted so the next
//! datagram is load-balanced again. Ports without endpoints are left alone (their packets are
//! rejected anyway), flows to endpoints still serving survive (so an agent restart deletes
//! nothing that works, unlike upstream bug #122740), and TCP is never looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use netd_kernel::nftnl::conntrack::Flow;
use netd_model::{Protocol, ServicePortName};
use netd_proxy::{PortPlans, ServicePlan, ServicePortPlan};

/// Where clients of a UDP/SCTP Service port send to: an address and the Service port, or a
/// nodePort on any address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The protocol.
    pub protocol: Protocol,
    /// The address; `None` for a nodePort (any local address).
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

/// Which conntrack entries of a family to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selection {
    /// Every entry of the protocol.
    Protocol(Protocol),
    /// The entries sent to the frontend.
    To(Frontend),
}

impl Selection {
    /// Whether `flow` is one this selection names (what the kernel's filters select; the
    /// tests' kernels filter with it).
    #[cfg(test)]
    pub(crate) fn selects(&self, flow: &Flow) -> bool {
        match self {
            Selection::Protocol(p) => flow.protocol == protocol_number(*p),
            Selection::To(f) => {
                flow.protocol == protocol_number(f.protocol)
                    && flow.orig_dst.port() == f.port
                    && f.ip.is_none_or(|ip| flow.orig_dst.ip() == ip)
            }
        }
    }
}

/// Which entries the next reconcile of a family looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pending {
    /// None: nothing connectionless changed since the last reconcile.
    #[default]
    Nothing,
    /// Those sent to these frontends (listed with kernel-side filters).
    Frontends(BTreeSet<Frontend>),
    /// Every UDP/SCTP entry (the first sync, or too many frontends to filter one by one).
    All,
}

/// Above this many frontends one dump of every entry is cheaper than a filtered dump per
/// frontend: the kernel walks its whole table for each dump, filtered or not, and at 100,000
/// entries a filtered dump costs about a tenth of a full one (`cargo bench -p netd-kernel
/// --bench conntrack`).
pub const FILTERED_DUMPS_MAX: usize = 8;

impl Pending {
    /// Adds what a sync from `previous` (none: nothing is known of the kernel) to `current`
    /// leaves to reconcile.
    pub fn add(&mut self, previous: Option<&ServicePlan>, current: &ServicePlan) {
        let changed = match previous {
            Some(previous) if previous.family == current.family => {
                changed_frontends(&previous.ports, &current.ports)
            }
            _ => {
                *self = Pending::All;
                return;
            }
        };
        self.extend(changed);
    }

    /// Adds what a sync leaves to reconcile that replaced the ports `replaced` of some
    /// Services with their ports `current` (every other port unchanged).
    pub fn add_replaced(&mut self, replaced: &PortPlans, current: &PortPlans) {
        self.extend(changed_frontends(replaced, current));
    }

    fn extend(&mut self, changed: BTreeSet<Frontend>) {
        match self {
            Pending::All => {}
            _ if changed.is_empty() => {}
            Pending::Nothing => *self = Pending::Frontends(changed),
            Pending::Frontends(set) => set.extend(changed),
        }
        if matches!(self, Pending::Frontends(set) if set.len() > FILTERED_DUMPS_MAX) {
            *self = Pending::All;
        }
    }

    /// Whether nothing is left to reconcile.
    pub fn is_nothing(&self) -> bool {
        *self == Pending::Nothing
    }
}

/// The frontends of the UDP/SCTP ports that differ between two plans' ports of one family
/// (added, removed, or with other endpoints), both the old and the new ones.
pub fn changed_frontends(previous: &PortPlans, current: &PortPlans) -> BTreeSet<Frontend> {
    let mut out = BTreeSet::new();
    let names: BTreeSet<&ServicePortName> = previous.keys().chain(current.keys()).collect();
    for name in names.into_iter().filter(|n| is_connectionless(n.protocol)) {
        let (old, new) = (previous.get(name), current.get(name));
        if old != new {
            out.extend(old.into_iter().chain(new).flat_map(|p| frontends(p)));
        }
    }
    out
}

/// The protocol number conntrack entries of `protocol` carry.
pub fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The protocols of `plan` whose entries the reconciler looks at (UDP, SCTP), in order.
pub fn protocols(plan: &ServicePlan) -> BTreeSet<Protocol> {
    plan.ports
        .keys()
        .map(|n| n.protocol)
        .filter(|p| is_connectionless(*p))
        .collect()
}

/// The stale entries among `entries` (as the kernel lists them) for `plan`, in their order.
pub fn stale_entries(plan: &ServicePlan, entries: &[Flow]) -> Vec<Flow> {
    // Frontend (protocol number, address or none for nodePorts, port) → serving endpoints.
    let mut by_frontend: BTreeMap<(u8, Option<IpAddr>, u16), BTreeSet<SocketAddr>> =
        BTreeMap::new();
    for port in plan.ports.values() {
        if !is_connectionless(port.protocol()) || port.serving_endpoints.is_empty() {
            continue;
        }
        let serving: BTreeSet<SocketAddr> = port.serving_endpoints.iter().copied().collect();
        for f in frontends(port) {
            by_frontend
                .entry((protocol_number(f.protocol), f.ip, f.port))
                .or_default()
                .extend(&serving);
        }
    }
    entries
        .iter()
        .filter(|e| {
            let by_ip = by_frontend.get(&(e.protocol, Some(e.orig_dst.ip()), e.orig_dst.port()));
            let by_node_port = by_frontend.get(&(e.protocol, None, e.orig_dst.port()));
            by_ip
                .or(by_node_port)
                .is_some_and(|serving| !serving.contains(&e.reply_src))
        })
        .copied()
        .collect()
}

fn is_connectionless(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Udp | Protocol::Sctp)
}

fn frontends(port: &ServicePortPlan) -> Vec<Frontend> {
    let protocol = port.protocol();
    let mut out: Vec<_> = std::iter::once(port.cluster_ip)
        .chain(port.external_ips.iter().copied())
        .chain(port.load_balancer_ips.iter().copied())
        .map(|ip| Frontend {
            protocol,
            ip: Some(ip),
            port: port.port,
        })
        .collect();
    if let Some(node_port) = port.node_port {
        out.push(Frontend {
            protocol,
            ip: None,
            port: node_port,
        });
    }
    out
}

/// Reads `conntrack -L` output (the first `src=`/`dst=`/`sport=`/`dport=` are the original
/// direction, the second the reply), so tests can write tables as the tool prints them.
#[cfg(test)]
pub(crate) fn parse_listing(text: &str) -> Vec<Flow> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let protocol: Protocol = words.next()?.parse().ok()?;
            let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for word in words {
                if let Some((k, v)) = word.split_once('=') {
                    fields.entry(k).or_default().push(v);
                }
            }
            let addr = |ip: &str, port: &str, n: usize| -> Option<SocketAddr> {
                let field = |key: &str| fields.get(key).and_then(|v| v.get(n)).copied();
                Some(SocketAddr::new(
                    field(ip)?.parse().ok()?,
                    field(port)?.parse().ok()?,
                ))
            };
            Some(Flow {
                protocol: protocol_number(protocol),
                orig_src: addr("src", "sport", 0)?,
                orig_dst: addr("dst", "dport", 0)?,
                reply_src: addr("src", "sport", 1)?,
                reply_dst: addr("dst", "dport", 1)?,
                zone: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use netd_model::NodeName;
    use netd_proxy::{IpFamily, ProxyOptions};

    use super::*;

    fn dns(endpoints: &[(&str, bool)]) -> ServicePlan {
        let mut y = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: kube-system}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}, {name: tcp, port: 53, protocol: TCP}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {name: dns-a, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}\n\
             ports: [{name: dns, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]\n",
        );
        let list: Vec<String> = endpoints
            .iter()
            .map(|(ip, serving)| format!("{{addresses: [{ip}], nodeName: node-1, conditions: {{ready: {serving}, serving: {serving}}}}}"))
            .collect();
        y.push_str(&format!("endpoints: [{}]\n", list.join(", ")));
        netd_proxy::plan(
            &netd_testkit::state(&y),
            &NodeName::new("node-1"),
            IpFamily::V4,
            &ProxyOptions::default(),
        )
    }

    const LISTED: &str = "\
udp      17 29 src=10.244.1.9 dst=10.96.0.10 sport=40001 dport=53 src=10.244.1.5 dst=10.244.1.9 sport=53 dport=40001 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.9 dst=10.96.0.10 sport=40002 dport=53 src=10.244.1.6 dst=10.244.1.9 sport=53 dport=40002 mark=0 use=1
udp      17 29 src=10.244.1.9 dst=10.96.0.10 sport=40003 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.1.9 sport=53 dport=40003 mark=0 use=1
udp      17 29 src=172.18.0.9 dst=172.18.0.2 sport=40004 dport=30053 src=10.244.1.6 dst=172.18.0.2 sport=53 dport=40004 mark=0 use=1
udp      17 29 src=10.244.1.9 dst=10.96.0.99 sport=40005 dport=53 src=10.244.1.6 dst=10.244.1.9 sport=53 dport=40005 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.1.9 dst=10.96.0.10 sport=40006 dport=53 src=10.244.1.6 dst=10.244.1.9 sport=53 dport=40006 [ASSURED] mark=0 use=1
";

    #[test]
    fn listings_are_read_in_both_directions() {
        let entries = parse_listing(LISTED);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0].protocol, 17);
        assert_eq!(entries[0].orig_src.to_string(), "10.244.1.9:40001");
        assert_eq!(entries[0].orig_dst.to_string(), "10.96.0.10:53");
        assert_eq!(entries[0].reply_src.to_string(), "10.244.1.5:53");
        assert_eq!(entries[0].reply_dst.to_string(), "10.244.1.9:40001");
        assert_eq!(entries[5].protocol, 6);
    }

    #[test]
    fn flows_to_a_gone_endpoint_or_never_dnated_are_stale_and_tcp_is_not_looked_at() {
        let plan = dns(&[("10.244.1.5", true), ("10.244.1.6", false)]);
        let entries = parse_listing(LISTED);
        assert_eq!(
            stale_entries(&plan, &entries),
            [entries[1], entries[2], entries[3]]
        );
    }

    #[test]
    fn a_port_without_endpoints_and_a_baseline_with_every_endpoint_serving_delete_nothing() {
        let entries = parse_listing(LISTED);
        assert!(stale_entries(&dns(&[]), &entries).is_empty());
        let both = dns(&[("10.244.1.5", true), ("10.244.1.6", true)]);
        assert_eq!(
            stale_entries(&both, &entries),
            [entries[2]],
            "only the never-DNATed flow"
        );
        assert_eq!(protocols(&both), [Protocol::Udp].into());
    }

    #[test]
    fn a_reconcile_looks_at_the_frontends_of_changed_connectionless_ports_only() {
        let a = dns(&[("10.244.1.5", true)]);
        let b = dns(&[("10.244.1.5", true), ("10.244.1.6", true)]);
        assert!(changed_frontends(&a.ports, &a.ports).is_empty());
        let frontend = |ip: Option<&str>, port| Frontend {
            protocol: Protocol::Udp,
            ip: ip.map(|ip| ip.parse().expect("ip")),
            port,
        };
        // The UDP port's ClusterIP and nodePort; the TCP port (same endpoints) is not looked at.
        let changed = BTreeSet::from([frontend(Some("10.96.0.10"), 53), frontend(None, 30053)]);
        assert_eq!(changed_frontends(&a.ports, &b.ports), changed);

        let mut pending = Pending::default();
        pending.add(Some(&a), &a);
        assert!(pending.is_nothing());
        pending.add(Some(&a), &b);
        assert_eq!(pending, Pending::Frontends(changed.clone()));
        // A failed reconcile keeps what it had and adds the next change.
        pending.add(Some(&b), &a);
        assert_eq!(pending, Pending::Frontends(changed));
        pending.add(None, &a);
        assert_eq!(pending, Pending::All, "nothing known of the kernel");
        pending.add(Some(&a), &a);
        assert_eq!(pending, Pending::All);
    }

    #[test]
    fn many_changed_frontends_make_one_full_listing() {
        let mut pending = Pending::Frontends(
            (0..FILTERED_DUMPS_MAX as u16)
                .map(|port| Frontend {
                    protocol: Protocol::Udp,
                    ip: None,
                    port: 31000 + port,
                })
                .collect(),
        );
        pending.add(
            Some(&dns(&[("10.244.1.5", true)])),
            &dns(&[("10.244.1.6", true)]),
        );
        assert_eq!(pending, Pending::All);
    }
}
