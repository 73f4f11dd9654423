//! [`trace_nodes`]: a packet walked through the rules [`NodeProgrammer`] builds, node after
//! node, as the kernel of each node meets it (what `kube-netd trace` prints);
//! [`trace_nodes_in`] does the same through the rules of the back end [`TraceRules`] names.
//!
//! In iptables mode each node's rules are traced as they are applied: every chain of the
//! family with the hooks at the top of the built-in chains
//! ([`FamilyRules::installed`](crate::FamilyRules::installed)), and the sets the
//! `ipset restore` payload leaves ([`Host::load_ipset`]). In nftables mode the family's table
//! ([`Nftables::tables`]) goes through [`netd_render::nft::trace_nft`]. In IPVS mode the
//! family's fixed chains (with NetworkPolicy's and the hooks), its ipsets and its virtual
//! servers go through [`netd_render::trace_ipvs`], the node's local addresses including those
//! of `kube-ipvs0`. A branch let
//! through towards a Pod or address of another node is traced on through that node's rules,
//! with the source masqueraded if the first node masqueraded it; no node is entered twice.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use netd_model::{ClusterState, NodeName};
use netd_proxy::IpFamily;
use netd_render::{Host, Origin, Packet, Verdict};

use crate::error::AgentError;
use crate::ipvs::Ipvs;
use crate::nft::Nftables;
use crate::programmer::NodeProgrammer;

/// Whose rules a trace walks: one of the back ends that has a tracer.
#[derive(Clone, Copy, Debug)]
pub enum TraceRules<'a> {
    /// The iptables rules (and ipsets) this programmer builds.
    Iptables(&'a NodeProgrammer),
    /// The nftables tables this back end renders.
    Nftables(&'a Nftables),
    /// The virtual servers, ipsets and iptables rules this back end renders.
    Ipvs(&'a Ipvs),
}

/// Where one branch of a traced packet ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Fate {
    /// The node whose rules decided.
    pub node: NodeName,
    /// The branch's probability (the fates of a trace add up to 1).
    pub probability: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// The packet's destination when its fate was decided (after DNAT).
    pub at: SocketAddr,
    /// Whether a node on the branch's way masqueraded the packet's source.
    pub masqueraded: bool,
    /// The NetworkPolicy rules that acted on the last node, by their comments
    /// ([`netd_render::trace::Outcome::policy`]).
    pub policy: Vec<String>,
}

/// A packet traced across nodes: each node's trace, and where every branch ended.
#[derive(Clone, Debug, PartialEq)]
pub struct NodesTrace {
    /// Each node's trace as text (`on NODE:` and [`netd_render::Trace`]'s display), with a
    /// line for each branch forwarded to another node.
    pub text: String,
    /// Where each branch ended, in trace order.
    pub fates: Vec<Fate>,
    /// How many times a branch was traced on through another node.
    pub hops: usize,
}

impl fmt::Display for NodesTrace {
    /// The nodes' traces; when a branch went on to another node, a `result:` section with
    /// each branch's end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.hops == 0 {
            return Ok(());
        }
        writeln!(f, "result:")?;
        for fate in &self.fates {
            write!(
                f,
                "  {:>6.2}% {} at {} on {}",
                fate.probability * 100.0,
                fate.verdict,
                fate.at,
                fate.node
            )?;
            if !fate.policy.is_empty() {
                write!(f, " (policy: {})", fate.policy.join("; "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Traces `packet` through the rules `programmer` builds for `node`, then on through the
/// nodes its branches are forwarded to.
pub fn trace_nodes(
    programmer: &NodeProgrammer,
    state: &ClusterState,
    node: &NodeName,
    packet: &Packet,
) -> Result<NodesTrace, AgentError> {
    trace_nodes_in(TraceRules::Iptables(programmer), state, node, packet)
}

/// Traces `packet` through the rules `rules` names for `node`, then on through the nodes its
/// branches are forwarded to (every node runs the same back end).
pub fn trace_nodes_in(
    rules: TraceRules<'_>,
    state: &ClusterState,
    node: &NodeName,
    packet: &Packet,
) -> Result<NodesTrace, AgentError> {
    let mut walk = Walk {
        rules,
        state,
        out: NodesTrace {
            text: String::new(),
            fates: Vec::new(),
            hops: 0,
        },
        path: Vec::new(),
    };
    walk.node(node, packet, 1.0, false)?;
    Ok(walk.out)
}

struct Walk<'a> {
    rules: TraceRules<'a>,
    state: &'a ClusterState,
    out: NodesTrace,
    /// The nodes the current branch went through.
    path: Vec<NodeName>,
}

impl Walk<'_> {
    fn node(
        &mut self,
        node: &NodeName,
        packet: &Packet,
        probability: f64,
        masqueraded: bool,
    ) -> Result<(), AgentError> {
        let state = self.state;
        let n = state
            .node(node.as_str())
            .ok_or_else(|| AgentError::TraceUnknownNode { node: node.clone() })?;
        let family = if packet.dst.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let host = Host {
            local_addrs: n.internal_ips.clone(),
            service_addrs: state
                .services()
                .flat_map(|s| s.cluster_ips.iter().copied())
                .collect(),
            // The node's Pods hang off its bridge.
            bridge_sources: n.pod_cidrs.clone(),
            ..Host::default()
        };
        let (text, branches) = match self.rules {
            TraceRules::Iptables(programmer) => {
                iptables(programmer, state, node, family, host, packet)?
            }
            TraceRules::Nftables(nft) => nftables(nft, state, node, family, &host, packet)?,
            TraceRules::Ipvs(ipvs) => self::ipvs(ipvs, state, node, family, host, packet)?,
        };
        let _ = writeln!(self.out.text, "on {node}:");
        let _ = write!(self.out.text, "{text}");
        self.path.push(node.clone());
        for (branch, o) in branches.into_iter().enumerate() {
            let p = probability * o.probability;
            if o.verdict == Verdict::NoServicePort {
                let _ = writeln!(self.out.text, "  {}", no_service_port(state, packet));
            }
            let at = o
                .dnat
                .unwrap_or_else(|| SocketAddr::new(packet.dst, packet.dport));
            let next = owner(state, at.ip()).filter(|next| !self.path.contains(next));
            let (Verdict::Accept, Some(next)) = (o.verdict, next) else {
                self.out.fates.push(Fate {
                    node: node.clone(),
                    probability: p,
                    verdict: o.verdict,
                    at,
                    masqueraded: masqueraded || o.masqueraded,
                    policy: o.policy,
                });
                continue;
            };
            let masqueraded_to = n
                .internal_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == at.is_ipv4());
            let src = match (o.masqueraded, masqueraded_to) {
                (true, Some(ip)) => ip,
                _ => packet.src,
            };
            let hop = Packet {
                origin: Origin::Network,
                src,
                dst: at.ip(),
                dport: at.port(),
                ..packet.clone()
            };
            let _ = writeln!(
                self.out.text,
                "branch {} ({:.2}%) is forwarded to {next}, where {} is:",
                branch + 1,
                o.probability * 100.0,
                at.ip()
            );
            self.out.hops += 1;
            self.node(&next, &hop, p, masqueraded || o.masqueraded)?;
        }
        self.path.pop();
        Ok(())
    }
}

/// What one node's tracer says of one branch, whichever back end it traced.
struct Branch {
    probability: f64,
    verdict: Verdict,
    dnat: Option<SocketAddr>,
    masqueraded: bool,
    policy: Vec<String>,
}

/// One node's iptables trace: its text and branches.
fn iptables(
    programmer: &NodeProgrammer,
    state: &ClusterState,
    node: &NodeName,
    family: IpFamily,
    mut host: Host,
    packet: &Packet,
) -> Result<(String, Vec<Branch>), AgentError> {
    let rules = programmer.rules(state, node)?;
    let installed = rules
        .family(family)
        .ok_or_else(|| AgentError::TraceNoFamily {
            node: node.clone(),
            family,
        })?
        .installed();
    let failed = |source| AgentError::TraceFailed {
        node: node.clone(),
        source,
    };
    host.load_ipset(&rules.ipset.full_input()).map_err(failed)?;
    let trace = netd_render::trace(&installed, &host, packet).map_err(failed)?;
    Ok((trace.to_string(), branches(&trace)))
}

/// One node's IPVS trace: its text and branches.
fn ipvs(
    ipvs: &Ipvs,
    state: &ClusterState,
    node: &NodeName,
    family: IpFamily,
    mut host: Host,
    packet: &Packet,
) -> Result<(String, Vec<Branch>), AgentError> {
    let traced = ipvs
        .traced(state, node, family)?
        .ok_or_else(|| AgentError::TraceNoFamily {
            node: node.clone(),
            family,
        })?;
    let failed = |source| AgentError::TraceFailed {
        node: node.clone(),
        source,
    };
    host.local_addrs
        .extend(traced.rules.bound_addresses.iter().copied());
    host.load_ipset(&traced.ipset).map_err(failed)?;
    let trace = netd_render::trace_ipvs(
        &traced.installed,
        &traced.rules.virtual_servers,
        &host,
        packet,
    )
    .map_err(failed)?;
    Ok((trace.to_string(), branches(&trace)))
}

/// The branches of an iptables or IPVS trace.
fn branches(trace: &netd_render::Trace) -> Vec<Branch> {
    trace
        .outcomes
        .iter()
        .map(|o| Branch {
            probability: o.probability,
            verdict: o.verdict,
            dnat: o.dnat,
            masqueraded: o.masqueraded,
            policy: o.policy().into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

/// One node's nftables trace: its text and branches.
fn nftables(
    nft: &Nftables,
    state: &ClusterState,
    node: &NodeName,
    family: IpFamily,
    host: &Host,
    packet: &Packet,
) -> Result<(String, Vec<Branch>), AgentError> {
    let table = nft
        .tables(state, node)?
        .into_iter()
        .find(|t| t.plan.family == family)
        .ok_or_else(|| AgentError::TraceNoFamily {
            node: node.clone(),
            family,
        })?
        .table;
    let trace = netd_render::nft::trace_nft(&table, host, packet).map_err(|source| {
        AgentError::NftTraceFailed {
            node: node.clone(),
            source,
        }
    })?;
    let branches = trace
        .outcomes
        .iter()
        .map(|o| Branch {
            probability: o.probability,
            verdict: o.verdict,
            dnat: o.dnat,
            masqueraded: o.masqueraded,
            policy: o.policy().into_iter().map(str::to_owned).collect(),
        })
        .collect();
    Ok((trace.to_string(), branches))
}

/// The node a packet to `ip` is routed to: the one whose pod range or address it is.
fn owner(state: &ClusterState, ip: IpAddr) -> Option<NodeName> {
    state
        .nodes()
        .find(|n| n.internal_ips.contains(&ip) || n.pod_cidrs.iter().any(|c| c.contains(&ip)))
        .map(|n| n.name.clone())
}

/// Why a packet to a Service address was not DNATed: the ports the Service does expose.
fn no_service_port(state: &ClusterState, packet: &Packet) -> String {
    let Some(svc) = state
        .services()
        .find(|s| s.cluster_ips.contains(&packet.dst))
    else {
        return format!("no service has address {}", packet.dst);
    };
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.protocol, p.port))
        .collect();
    format!(
        "service {} does not expose {}/{} (its ports: {}); nothing answers at {}",
        svc.key,
        packet.protocol,
        packet.dport,
        ports.join(", "),
        packet.dst
    )
}
