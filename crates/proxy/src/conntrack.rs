//! Stale conntrack entries for connectionless Services, decided from two plans.
//!
//! A UDP (or SCTP) "connection" to a Service lives in conntrack as long as packets keep
//! flowing, pinned to the endpoint chosen by its first packet. Two cases black-hole a
//! client until it changes source port (kube-proxy issues #19029, #48370, #59368):
//!
//! - the port had no usable endpoint, so the first packets were rejected (entries without
//!   DNAT), and now it has one: every entry to its frontends is deleted;
//! - an endpoint stopped serving: every entry to the port's frontends DNATed to it is deleted.
//!
//! TCP entries are never deleted (TCP notices a dead peer by itself). This is upstream's
//! pre-reconciler logic (≤ 1.30), computed from two [`ServicePlan`]s instead of events, with
//! each deletion narrowed to the Service port.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use netd_model::{Protocol, ServicePortName};

use crate::options::IpFamily;
use crate::plan::{ServicePlan, ServicePortPlan};

/// One `conntrack -D` filter: entries matching every field set are deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackFilter {
    /// The family (`-f ipv6` for IPv6).
    pub family: IpFamily,
    /// The protocol (`-p`).
    pub protocol: Protocol,
    /// The original destination address (`--orig-dst`): a frontend IP; unset for nodePorts.
    pub orig_dst: Option<IpAddr>,
    /// The original destination port (`--orig-port-dst`).
    pub orig_port: u16,
    /// The endpoint the entry was DNATed to (`--dst-nat`); unset to delete every entry.
    pub dst_nat: Option<IpAddr>,
}

impl ConntrackFilter {
    /// The arguments after `conntrack -D`.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.family == IpFamily::V6 {
            args.extend(["-f".to_owned(), "ipv6".to_owned()]);
        }
        args.extend(["-p".to_owned(), self.protocol.as_lower_str().to_owned()]);
        if let Some(ip) = self.orig_dst {
            args.extend(["--orig-dst".to_owned(), ip.to_string()]);
        }
        args.extend(["--orig-port-dst".to_owned(), self.orig_port.to_string()]);
        if let Some(ip) = self.dst_nat {
            args.extend(["--dst-nat".to_owned(), ip.to_string()]);
        }
        args
    }
}

impl fmt::Display for ConntrackFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conntrack -D {}", self.args().join(" "))
    }
}

/// The conntrack deletions needed after moving from `previous` to `current` (both of the
/// same Node and family), in a stable order.
pub fn stale_flows(previous: &ServicePlan, current: &ServicePlan) -> Vec<ConntrackFilter> {
    let mut out = BTreeSet::new();
    for (name, now) in &current.ports {
        if !needs_cleanup(name) {
            continue;
        }
        let before = previous.ports.get(name);
        let was_usable = before.is_some_and(ServicePortPlan::has_endpoints);
        if now.has_endpoints() && !was_usable {
            add_filters(&mut out, current.family, now, None);
        }
        let Some(before) = before else { continue };
        let serving_now: BTreeSet<IpAddr> = now.serving_endpoints.iter().map(|a| a.ip()).collect();
        for gone in before
            .serving_endpoints
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !serving_now.contains(ip))
        {
            // The frontends as they were: those are what the stale entries were sent to.
            add_filters(&mut out, current.family, before, Some(gone));
        }
    }
    for (name, before) in &previous.ports {
        if needs_cleanup(name) && !current.ports.contains_key(name) {
            for gone in &before.serving_endpoints {
                add_filters(&mut out, previous.family, before, Some(gone.ip()));
            }
        }
    }
    out.into_iter().collect()
}

fn needs_cleanup(name: &ServicePortName) -> bool {
    matches!(name.protocol, Protocol::Udp | Protocol::Sctp)
}

fn add_filters(
    out: &mut BTreeSet<ConntrackFilter>,
    family: IpFamily,
    port: &ServicePortPlan,
    dst_nat: Option<IpAddr>,
) {
    let protocol = port.protocol();
    let frontends = std::iter::once(port.cluster_ip)
        .chain(port.external_ips.iter().copied())
        .chain(port.load_balancer_ips.iter().copied());
    for ip in frontends {
        out.insert(ConntrackFilter {
            family,
            protocol,
            orig_dst: Some(ip),
            orig_port: port.port,
            dst_nat,
        });
    }
    if let Some(node_port) = port.node_port {
        out.insert(ConntrackFilter {
            family,
            protocol,
            orig_dst: None,
            orig_port: node_port,
            dst_nat,
        });
    }
}

#[cfg(test)]
mod tests {
    use netd_model::NodeName;

    use super::*;
    use crate::{ProxyOptions, plan};

    fn dns(endpoints: &[(&str, bool)]) -> String {
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
        y
    }

    fn planned(yaml: &str) -> ServicePlan {
        plan(
            &netd_testkit::state(yaml),
            &NodeName::new("node-1"),
            IpFamily::V4,
            &ProxyOptions::default(),
        )
    }

    fn shown(filters: &[ConntrackFilter]) -> Vec<String> {
        filters.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn first_endpoint_clears_rejected_flows() {
        let before = planned(&dns(&[]));
        let after = planned(&dns(&[("10.244.1.5", true)]));
        assert_eq!(
            shown(&stale_flows(&before, &after)),
            [
                "conntrack -D -p udp --orig-port-dst 30053",
                "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53",
            ]
        );
        assert!(stale_flows(&after, &after).is_empty());
    }

    #[test]
    fn lost_endpoint_clears_its_flows_only() {
        let before = planned(&dns(&[("10.244.1.5", true), ("10.244.1.6", true)]));
        let after = planned(&dns(&[("10.244.1.5", true), ("10.244.1.6", false)]));
        assert_eq!(
            shown(&stale_flows(&before, &after)),
            [
                "conntrack -D -p udp --orig-port-dst 30053 --dst-nat 10.244.1.6",
                "conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --dst-nat 10.244.1.6",
            ]
        );
        let gone = planned("");
        let removed = shown(&stale_flows(&before, &gone));
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(
            removed.iter().all(|f| f.contains("-p udp")),
            "TCP is never flushed: {removed:?}"
        );
    }

    #[test]
    fn ipv6_filters_name_the_family() {
        let f = ConntrackFilter {
            family: IpFamily::V6,
            protocol: Protocol::Udp,
            orig_dst: Some("fd00::10".parse().expect("ip")),
            orig_port: 53,
            dst_nat: None,
        };
        assert_eq!(f.args()[..2], ["-f", "ipv6"]);
    }
}
