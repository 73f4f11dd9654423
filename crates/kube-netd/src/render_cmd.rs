//! `kube-netd render` and `kube-netd trace`: the rules a node would get, as text, and a packet
//! walked through them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use netd_agent::NodeProgrammer;
use netd_model::{ClusterState, NodeName, PodRef, Protocol, ServiceRef};
use netd_proxy::IpFamily;
use netd_render::{Host, Origin, Packet, Verdict};

use crate::cluster::ClusterArgs;

/// The rule back end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// iptables-restore and ipset restore input, laid out as kube-proxy lays it out.
    Iptables,
}

/// Print exactly what would be applied to a node.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The node whose rules to print.
    #[arg(long)]
    node: NodeName,
    /// The rule back end (nftables arrives with its own issue).
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Walk the first packet of a connection through a node's rules: Services and NetworkPolicy.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The node whose rules the packet meets.
    #[arg(long)]
    node: NodeName,
    /// Where the packet comes from: NS/POD, node/NAME (the node itself), or an IP address
    /// (an off-cluster client).
    from: String,
    /// Where it goes, with its port: IP:PORT, svc/NS/NAME:PORT (the ClusterIP),
    /// node/NAME:PORT (a nodePort) or NS/POD:PORT.
    to: String,
    /// tcp, udp or sctp.
    #[arg(long, default_value = "tcp")]
    protocol: Protocol,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Prints the node's `ipset restore` and `iptables-restore` input.
pub fn render(args: RenderArgs) -> anyhow::Result<()> {
    let Mode::Iptables = args.mode;
    let state = args.cluster.resolve()?;
    require_node(&state, &args.node)?;
    let rules = NodeProgrammer::default().rules(&state, &args.node)?;
    print!("{}", rules.to_text());
    Ok(())
}

/// Prints every branch the packet can take through the node's whole rule set as `render`
/// prints it (service and NetworkPolicy chains, in hook order): chains traversed, DNAT
/// choices with their probabilities, masquerade, the policy rule that decided, and the
/// verdict. A branch forwarded to a Pod or address of another node is traced on to that
/// node's rules, as the packet meets them there.
pub fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let state = args.cluster.resolve()?;
    require_node(&state, &args.node)?;
    let (origin, src) = source(&state, &args.from)?;
    let (dst, dport) = destination(&state, &args.to)?;
    let packet = Packet {
        origin,
        protocol: args.protocol,
        ..Packet::tcp(src, dst, dport)
    };
    let mut walk = Walk {
        state: &state,
        out: String::new(),
        fates: Vec::new(),
    };
    walk.node(&args.node, &packet, 1.0, &mut Vec::new())?;
    let Walk { mut out, fates, .. } = walk;
    let hops = fates.iter().any(|f| f.node != args.node);
    if hops {
        out.push_str("result:\n");
        for f in &fates {
            let _ = write!(
                out,
                "  {:>6.2}% {} at {} on {}",
                f.probability * 100.0,
                f.verdict,
                f.at,
                f.node
            );
            if !f.policy.is_empty() {
                let _ = write!(out, " (policy: {})", f.policy);
            }
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

/// Where one branch of a packet ended.
struct Fate {
    node: NodeName,
    probability: f64,
    verdict: Verdict,
    /// The destination the packet had when its fate was decided.
    at: SocketAddr,
    policy: String,
}

/// A packet traced across nodes: each node's trace is written to `out`.
struct Walk<'a> {
    state: &'a ClusterState,
    out: String,
    fates: Vec<Fate>,
}

impl Walk<'_> {
    /// Traces `packet` through `node`'s rules; `probability` is that of the branch that
    /// brought it here, `path` the nodes it went through (a node is never entered twice).
    fn node(
        &mut self,
        node: &NodeName,
        packet: &Packet,
        probability: f64,
        path: &mut Vec<NodeName>,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let n = require_node(state, node)?;
        let family = if packet.dst.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let rules = NodeProgrammer::default().rules(state, node)?;
        let installed = rules
            .family(family)
            .with_context(|| format!("node {node} programs no {family:?} rules"))?
            .installed();
        let mut host = Host {
            local_addrs: n.internal_ips.clone(),
            service_addrs: state
                .services()
                .flat_map(|s| s.cluster_ips.iter().copied())
                .collect(),
            ..Host::default()
        };
        host.load_ipset(rules.ipset.as_deref().unwrap_or_default())
            .with_context(|| format!("the ipset payload rendered for {node}"))?;
        let trace = netd_render::trace(&installed, &host, packet)?;
        let _ = writeln!(self.out, "on {node}:");
        path.push(node.clone());
        let _ = write!(self.out, "{trace}");
        for (branch, o) in trace.outcomes.iter().enumerate() {
            let p = probability * o.probability;
            if o.verdict == Verdict::NoServicePort {
                let _ = writeln!(self.out, "  {}", no_service_port(state, packet));
            }
            let at = o
                .dnat
                .unwrap_or_else(|| SocketAddr::new(packet.dst, packet.dport));
            let dst = at.ip();
            let next = owner(state, dst).filter(|next| !path.contains(next));
            let (Verdict::Accept, Some(next)) = (o.verdict, next) else {
                self.fates.push(Fate {
                    node: node.clone(),
                    probability: p,
                    verdict: o.verdict,
                    at,
                    policy: o.policy().join("; "),
                });
                continue;
            };
            let src = if o.masqueraded {
                n.internal_ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                    .unwrap_or(packet.src)
            } else {
                packet.src
            };
            let hop = Packet {
                origin: Origin::Network,
                src,
                dst,
                dport: at.port(),
                ..packet.clone()
            };
            let _ = writeln!(
                self.out,
                "branch {} ({:.2}%) is forwarded to {next}, where {dst} is:",
                branch + 1,
                o.probability * 100.0
            );
            self.node(&next, &hop, p, path)?;
        }
        path.pop();
        Ok(())
    }
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

fn require_node<'a>(
    state: &'a ClusterState,
    node: &NodeName,
) -> anyhow::Result<&'a netd_model::view::Node> {
    state.node(node.as_str()).with_context(|| {
        let known: Vec<String> = state.nodes().map(|n| n.name.to_string()).collect();
        format!(
            "no node {node} in the cluster (nodes: {})",
            known.join(", ")
        )
    })
}

fn source(state: &ClusterState, from: &str) -> anyhow::Result<(Origin, IpAddr)> {
    if let Some(name) = from.strip_prefix("node/") {
        let node = require_node(state, &NodeName::new(name))?;
        let ip = node
            .internal_ips
            .first()
            .copied()
            .with_context(|| format!("node {name} has no address"))?;
        return Ok((Origin::Host, ip));
    }
    if let Ok(ip) = from.parse::<IpAddr>() {
        return Ok((Origin::Network, ip));
    }
    let pod: PodRef = from
        .parse()
        .with_context(|| format!("{from:?} is not NS/POD, node/NAME or an IP"))?;
    let p = state.pod(&pod).with_context(|| format!("no pod {pod}"))?;
    let ip = p
        .ips
        .first()
        .copied()
        .with_context(|| format!("pod {pod} has no IP"))?;
    Ok((
        if p.host_network {
            Origin::Host
        } else {
            Origin::Network
        },
        ip,
    ))
}

fn destination(state: &ClusterState, to: &str) -> anyhow::Result<(IpAddr, u16)> {
    let (target, port) = to
        .rsplit_once(':')
        .with_context(|| format!("{to:?} has no :PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{port:?} is not a port"))?;
    let target = target.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok((ip, port));
    }
    if let Some(svc) = target.strip_prefix("svc/") {
        let key: ServiceRef = svc
            .parse()
            .with_context(|| format!("{svc:?} is not NS/NAME"))?;
        let s = state
            .service(&key)
            .with_context(|| format!("no service {key}"))?;
        let ip = s
            .cluster_ips
            .first()
            .copied()
            .with_context(|| format!("service {key} has no ClusterIP"))?;
        return Ok((ip, port));
    }
    if let Some(name) = target.strip_prefix("node/") {
        let node = require_node(state, &NodeName::new(name))?;
        let ip = node
            .internal_ips
            .first()
            .copied()
            .with_context(|| format!("node {name} has no address"))?;
        return Ok((ip, port));
    }
    let pod: PodRef = target
        .parse()
        .with_context(|| format!("{target:?} is not a destination"))?;
    match state.pod(&pod).and_then(|p| p.ips.first().copied()) {
        Some(ip) => Ok((ip, port)),
        None => bail!("no pod {pod} with an IP"),
    }
}
