//! Endpoint categorisation: which endpoints "Cluster" and "Local" traffic may use.
//!
//! A line-by-line port of upstream's `pkg/proxy/topology.go` (`CategorizeEndpoints`,
//! `topologyModeFromHints`, `availableForTopology`), shared by every back end.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use netd_model::NodeName;

/// One endpoint of one Service port, as the proxy sees it: an address of the plan's family,
/// the port resolved from the EndpointSlice, and the conditions with upstream's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEndpoint {
    /// Where traffic is DNATed to.
    pub addr: SocketAddr,
    /// Whether it runs on this plan's Node.
    pub local: bool,
    /// `conditions.ready` (unset means true).
    pub ready: bool,
    /// `conditions.serving` (unset means true).
    pub serving: bool,
    /// `conditions.terminating` (unset means false).
    pub terminating: bool,
    /// `hints.forZones`; empty when the endpoint has none.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes`; empty when the endpoint has none.
    pub node_hints: BTreeSet<String>,
}

impl PlannedEndpoint {
    /// The endpoint's IP.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The endpoint's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// kube-proxy's endpoint string, `IP:port` (`[IP]:port` for IPv6): the sort key, the
    /// de-duplication key and part of the endpoint chain's hash.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }

    /// Serving while terminating: usable only when nothing ready is left.
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// How topology hints narrowed the cluster endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopologyMode {
    /// Every ready endpoint has node hints and one names this Node.
    PreferSameNode,
    /// Every ready endpoint has zone hints and one names this Node's zone.
    PreferSameZone,
}

/// What one Service port's traffic policies ask of the categorisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage<'a> {
    /// The port ever sends traffic with "Cluster" policy (iTP Cluster, or externally
    /// accessible: external traffic from pods and the host is short-circuited to it).
    pub uses_cluster: bool,
    /// The port ever sends traffic with "Local" policy (iTP Local, or eTP Local and
    /// externally accessible).
    pub uses_local: bool,
    /// This Node's zone.
    pub zone: Option<&'a str>,
    /// This Node's name.
    pub node: &'a NodeName,
    /// Honour node hints (the `PreferSameTrafficDistribution` gate).
    pub prefer_same_node: bool,
}

/// The result of categorisation. Every list keeps the input's order (sorted by
/// [`PlannedEndpoint::key`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for "Cluster" policy: ready ones allowed by topology; if none, every serving
    /// and terminating endpoint in the cluster.
    pub cluster: Vec<PlannedEndpoint>,
    /// Endpoints for "Local" policy: this Node's ready ones; if none, its serving and
    /// terminating ones.
    pub local: Vec<PlannedEndpoint>,
    /// The union of the two: every endpoint this Node may send traffic to.
    pub all_reachable: Vec<PlannedEndpoint>,
    /// Whether any ready or serving-terminating endpoint exists anywhere.
    pub has_any: bool,
    /// The topology mode applied to the cluster endpoints, if any.
    pub topology: Option<TopologyMode>,
}

/// kube-proxy's `CategorizeEndpoints`. `endpoints` must be sorted by key and de-duplicated.
pub fn categorize(endpoints: &[PlannedEndpoint], usage: &Usage<'_>) -> Categorized {
    let mut out = Categorized::default();
    let mut in_cluster = vec![false; endpoints.len()];
    if usage.uses_cluster {
        out.topology = topology_mode(endpoints, usage);
        for (i, ep) in endpoints.iter().enumerate() {
            in_cluster[i] = ep.ready && available_for_topology(ep, out.topology, usage);
        }
        if !in_cluster.iter().any(|&b| b) {
            // No ready endpoint anywhere (topology is ignored when it would leave none).
            for (i, ep) in endpoints.iter().enumerate() {
                in_cluster[i] = ep.serving_terminating();
            }
        }
        out.has_any = in_cluster.iter().any(|&b| b);
    }
    let mut in_local = vec![false; endpoints.len()];
    if usage.uses_local {
        let (mut local_ready, mut local_serving_terminating) = (false, false);
        for ep in endpoints {
            if ep.ready {
                out.has_any = true;
                local_ready |= ep.local;
            } else if ep.serving_terminating() {
                out.has_any = true;
                local_serving_terminating |= ep.local;
            }
        }
        for (i, ep) in endpoints.iter().enumerate() {
            in_local[i] = ep.local
                && if local_ready {
                    ep.ready
                } else {
                    local_serving_terminating && ep.serving_terminating()
                };
        }
    }
    for (i, ep) in endpoints.iter().enumerate() {
        if in_cluster[i] {
            out.cluster.push(ep.clone());
        }
        if in_local[i] {
            out.local.push(ep.clone());
        }
        if in_cluster[i] || in_local[i] {
            out.all_reachable.push(ep.clone());
        }
    }
    out
}

fn topology_mode(endpoints: &[PlannedEndpoint], usage: &Usage<'_>) -> Option<TopologyMode> {
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(usage.node.as_str()) {
            for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if usage.zone.is_some_and(|z| ep.zone_hints.contains(z)) {
            for_zone = true;
        }
    }
    if usage.prefer_same_node && all_node_hints && for_node {
        return Some(TopologyMode::PreferSameNode);
    }
    (all_zone_hints && for_zone).then_some(TopologyMode::PreferSameZone)
}

fn available_for_topology(
    ep: &PlannedEndpoint,
    mode: Option<TopologyMode>,
    usage: &Usage<'_>,
) -> bool {
    match mode {
        None => true,
        Some(TopologyMode::PreferSameNode) => ep.node_hints.contains(usage.node.as_str()),
        Some(TopologyMode::PreferSameZone) => usage.zone.is_some_and(|z| ep.zone_hints.contains(z)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ep(
        &'static str,
        bool,
        bool,
        bool,
        bool,
        &'static [&'static str],
    );

    /// (ip, local, ready, serving, terminating, zone hints)
    fn eps(list: &[Ep]) -> Vec<PlannedEndpoint> {
        list.iter()
            .map(|e| PlannedEndpoint {
                addr: SocketAddr::new(e.0.parse().expect("ip"), 80),
                local: e.1,
                ready: e.2,
                serving: e.3,
                terminating: e.4,
                zone_hints: e.5.iter().map(|z| z.to_string()).collect(),
                node_hints: BTreeSet::new(),
            })
            .collect()
    }

    fn ips(list: &[PlannedEndpoint]) -> Vec<String> {
        list.iter().map(|e| e.ip().to_string()).collect()
    }

    fn usage<'a>(
        node: &'a NodeName,
        cluster: bool,
        local: bool,
        zone: Option<&'a str>,
    ) -> Usage<'a> {
        Usage {
            uses_cluster: cluster,
            uses_local: local,
            zone,
            node,
            prefer_same_node: true,
        }
    }

    #[test]
    fn table() {
        let node = NodeName::new("n1");
        // (name, endpoints, uses_cluster, uses_local, zone, cluster, local, all, has_any)
        type Case = (
            &'static str,
            Vec<Ep>,
            bool,
            bool,
            Option<&'static str>,
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "ready only",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &[]),
                    Ep("10.0.0.2", true, true, true, false, &[]),
                ],
                true,
                false,
                None,
                &["10.0.0.1", "10.0.0.2"],
                &[],
                &["10.0.0.1", "10.0.0.2"],
                true,
            ),
            (
                "not ready ignored",
                vec![
                    Ep("10.0.0.1", false, false, false, false, &[]),
                    Ep("10.0.0.2", true, true, true, false, &[]),
                ],
                true,
                false,
                None,
                &["10.0.0.2"],
                &[],
                &["10.0.0.2"],
                true,
            ),
            (
                "terminating fallback",
                vec![
                    Ep("10.0.0.1", false, false, true, true, &[]),
                    Ep("10.0.0.2", false, false, false, true, &[]),
                ],
                true,
                false,
                None,
                &["10.0.0.1"],
                &[],
                &["10.0.0.1"],
                true,
            ),
            (
                "terminating ignored while ready exists",
                vec![
                    Ep("10.0.0.1", false, false, true, true, &[]),
                    Ep("10.0.0.2", false, true, true, false, &[]),
                ],
                true,
                false,
                None,
                &["10.0.0.2"],
                &[],
                &["10.0.0.2"],
                true,
            ),
            (
                "nothing usable",
                vec![Ep("10.0.0.1", false, false, false, true, &[])],
                true,
                true,
                None,
                &[],
                &[],
                &[],
                false,
            ),
            (
                "local only (iTP Local)",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &[]),
                    Ep("10.0.0.2", true, true, true, false, &[]),
                ],
                false,
                true,
                None,
                &[],
                &["10.0.0.2"],
                &["10.0.0.2"],
                true,
            ),
            (
                "local none, remote ready",
                vec![Ep("10.0.0.1", false, true, true, false, &[])],
                false,
                true,
                None,
                &[],
                &[],
                &[],
                true,
            ),
            (
                "local terminating fallback",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &[]),
                    Ep("10.0.0.2", true, false, true, true, &[]),
                ],
                true,
                true,
                None,
                &["10.0.0.1"],
                &["10.0.0.2"],
                &["10.0.0.1", "10.0.0.2"],
                true,
            ),
            (
                "zone hints applied",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &["a"]),
                    Ep("10.0.0.2", false, true, true, false, &["b"]),
                ],
                true,
                false,
                Some("a"),
                &["10.0.0.1"],
                &[],
                &["10.0.0.1"],
                true,
            ),
            (
                "zone hints for other zone only",
                vec![Ep("10.0.0.1", false, true, true, false, &["b"])],
                true,
                false,
                Some("a"),
                &["10.0.0.1"],
                &[],
                &["10.0.0.1"],
                true,
            ),
            (
                "a missing hint disables topology",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &["a"]),
                    Ep("10.0.0.2", false, true, true, false, &[]),
                ],
                true,
                false,
                Some("a"),
                &["10.0.0.1", "10.0.0.2"],
                &[],
                &["10.0.0.1", "10.0.0.2"],
                true,
            ),
            (
                "no zone on node",
                vec![
                    Ep("10.0.0.1", false, true, true, false, &["a"]),
                    Ep("10.0.0.2", false, true, true, false, &["b"]),
                ],
                true,
                false,
                None,
                &["10.0.0.1", "10.0.0.2"],
                &[],
                &["10.0.0.1", "10.0.0.2"],
                true,
            ),
        ];
        for (name, list, c, l, zone, want_cluster, want_local, want_all, want_any) in cases {
            let got = categorize(&eps(&list), &usage(&node, c, l, zone));
            assert_eq!(ips(&got.cluster), want_cluster, "{name}: cluster");
            assert_eq!(ips(&got.local), want_local, "{name}: local");
            assert_eq!(ips(&got.all_reachable), want_all, "{name}: all");
            assert_eq!(got.has_any, want_any, "{name}: has_any");
        }
    }

    #[test]
    fn node_hints_win_over_zone_hints() {
        let node = NodeName::new("n1");
        let mut list = eps(&[
            Ep("10.0.0.1", false, true, true, false, &["a"]),
            Ep("10.0.0.2", true, true, true, false, &["a"]),
        ]);
        list[0].node_hints.insert("n2".into());
        list[1].node_hints.insert("n1".into());
        let got = categorize(&list, &usage(&node, true, false, Some("a")));
        assert_eq!(got.topology, Some(TopologyMode::PreferSameNode));
        assert_eq!(ips(&got.cluster), ["10.0.0.2"]);
        let gate_off = Usage {
            prefer_same_node: false,
            ..usage(&node, true, false, Some("a"))
        };
        let got = categorize(&list, &gate_off);
        assert_eq!(got.topology, Some(TopologyMode::PreferSameZone));
        assert_eq!(ips(&got.cluster), ["10.0.0.1", "10.0.0.2"]);
    }
}
