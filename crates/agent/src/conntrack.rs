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
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use netd_model::{Protocol, ServicePortName};
use netd_proxy::{IpFamily, ServicePlan, ServicePortPlan};

/// One conntrack entry, as `conntrack -L` prints it: the original and the reply direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// The protocol.
    pub protocol: Protocol,
    /// The original direction's source.
    pub orig_src: SocketAddr,
    /// The original direction's destination (what the client sent to).
    pub orig_dst: SocketAddr,
    /// The reply direction's source (the endpoint, after DNAT).
    pub reply_src: SocketAddr,
}

/// A `conntrack -D` filter that deletes the stale entries from one frontend to one former
/// backend (every client of that pair at once).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StaleFlow {
    /// The family (`-f ipv6` for IPv6).
    pub family: IpFamily,
    /// The protocol.
    pub protocol: Protocol,
    /// The frontend the client sent to.
    pub orig_dst: SocketAddr,
    /// Where the replies come from: not a serving endpoint.
    pub reply_src: SocketAddr,
}

impl StaleFlow {
    /// The arguments after `conntrack -D`.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.family == IpFamily::V6 {
            args.extend(["-f".to_owned(), "ipv6".to_owned()]);
        }
        args.extend([
            "-p".to_owned(),
            self.protocol.as_lower_str().to_owned(),
            "--orig-dst".to_owned(),
            self.orig_dst.ip().to_string(),
            "--orig-port-dst".to_owned(),
            self.orig_dst.port().to_string(),
            "--reply-src".to_owned(),
            self.reply_src.ip().to_string(),
            "--reply-port-src".to_owned(),
            self.reply_src.port().to_string(),
        ]);
        args
    }
}

impl fmt::Display for StaleFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conntrack -D {}", self.args().join(" "))
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

/// Whether the UDP/SCTP part of two plans differs (a port added, removed or changed): only
/// then can entries have gone stale.
pub fn connectionless_changed(previous: &ServicePlan, current: &ServicePlan) -> bool {
    fn part(plan: &ServicePlan) -> impl Iterator<Item = (&ServicePortName, &ServicePortPlan)> {
        plan.ports
            .iter()
            .filter(|(n, _)| is_connectionless(n.protocol))
    }
    previous.family != current.family || !part(previous).eq(part(current))
}

/// The stale flows among `entries` for `plan`, one filter per (frontend, former backend), in
/// a stable order.
pub fn stale_flows(plan: &ServicePlan, entries: &[Entry]) -> Vec<StaleFlow> {
    // Frontend (protocol, address or none for nodePorts, port) → serving endpoints.
    let mut frontends: BTreeMap<(Protocol, Option<IpAddr>, u16), BTreeSet<SocketAddr>> =
        BTreeMap::new();
    for port in plan.ports.values() {
        if !is_connectionless(port.protocol()) || port.serving_endpoints.is_empty() {
            continue;
        }
        let serving: BTreeSet<SocketAddr> = port.serving_endpoints.iter().copied().collect();
        for key in frontend_keys(port) {
            frontends.entry(key).or_default().extend(&serving);
        }
    }
    let mut out = BTreeSet::new();
    for e in entries {
        let by_ip = frontends.get(&(e.protocol, Some(e.orig_dst.ip()), e.orig_dst.port()));
        let by_node_port = frontends.get(&(e.protocol, None, e.orig_dst.port()));
        let Some(serving) = by_ip.or(by_node_port) else {
            continue;
        };
        if !serving.contains(&e.reply_src) {
            out.insert(StaleFlow {
                family: plan.family,
                protocol: e.protocol,
                orig_dst: e.orig_dst,
                reply_src: e.reply_src,
            });
        }
    }
    out.into_iter().collect()
}

/// Parses `conntrack -L` output (one entry per line; the first `src=`/`dst=`/`sport=`/`dport=`
/// are the original direction, the second the reply). Lines it cannot read are skipped.
pub fn parse_entries(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let protocol: Protocol = words.next()?.parse().ok()?;
    let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for word in words {
        if let Some((k, v)) = word.split_once('=') {
            fields.entry(k).or_default().push(v);
        }
    }
    let field = |key: &str, n: usize| fields.get(key).and_then(|v| v.get(n)).copied();
    let addr = |ip: &str, port: &str, n: usize| -> Option<SocketAddr> {
        Some(SocketAddr::new(
            field(ip, n)?.parse().ok()?,
            field(port, n)?.parse().ok()?,
        ))
    };
    Some(Entry {
        protocol,
        orig_src: addr("src", "sport", 0)?,
        orig_dst: addr("dst", "dport", 0)?,
        reply_src: addr("src", "sport", 1)?,
    })
}

fn is_connectionless(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Udp | Protocol::Sctp)
}

fn frontend_keys(port: &ServicePortPlan) -> Vec<(Protocol, Option<IpAddr>, u16)> {
    let protocol = port.protocol();
    let mut keys: Vec<_> = std::iter::once(port.cluster_ip)
        .chain(port.external_ips.iter().copied())
        .chain(port.load_balancer_ips.iter().copied())
        .map(|ip| (protocol, Some(ip), port.port))
        .collect();
    if let Some(node_port) = port.node_port {
        keys.push((protocol, None, node_port));
    }
    keys
}

#[cfg(test)]
mod tests {
    use netd_model::NodeName;
    use netd_proxy::ProxyOptions;

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
conntrack v1.4.7 (conntrack-tools): 6 flow entries have been shown.
";

    #[test]
    fn entries_are_read_in_both_directions() {
        let entries = parse_entries(LISTED);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0].protocol, Protocol::Udp);
        assert_eq!(entries[0].orig_src.to_string(), "10.244.1.9:40001");
        assert_eq!(entries[0].orig_dst.to_string(), "10.96.0.10:53");
        assert_eq!(entries[0].reply_src.to_string(), "10.244.1.5:53");
        assert_eq!(entries[5].protocol, Protocol::Tcp);
    }

    #[test]
    fn flows_to_a_gone_endpoint_or_never_dnated_are_stale_and_tcp_is_not_looked_at() {
        let plan = dns(&[("10.244.1.5", true), ("10.244.1.6", false)]);
        let shown: Vec<String> = stale_flows(&plan, &parse_entries(LISTED))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.96.0.10 --reply-port-src 53",
                "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.1.6 --reply-port-src 53",
                "conntrack -D -p udp --orig-dst 172.18.0.2 --orig-port-dst 30053 --reply-src 10.244.1.6 --reply-port-src 53",
            ]
        );
    }

    #[test]
    fn a_port_without_endpoints_and_a_baseline_with_every_endpoint_serving_delete_nothing() {
        let entries = parse_entries(LISTED);
        assert!(stale_flows(&dns(&[]), &entries).is_empty());
        let both = dns(&[("10.244.1.5", true), ("10.244.1.6", true)]);
        let stale = stale_flows(&both, &entries);
        assert_eq!(stale.len(), 1, "only the never-DNATed flow: {stale:?}");
        assert_eq!(protocols(&both), [Protocol::Udp].into());
    }

    #[test]
    fn only_connectionless_changes_call_for_a_reconcile() {
        let a = dns(&[("10.244.1.5", true)]);
        let b = dns(&[("10.244.1.5", true), ("10.244.1.6", true)]);
        assert!(!connectionless_changed(&a, &a));
        assert!(connectionless_changed(&a, &b));
    }
}
