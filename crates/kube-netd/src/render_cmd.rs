//! `kube-netd render` and `kube-netd trace`: the rules a node would get, as text, and a packet
//! walked through them.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use netd_agent::NodeProgrammer;
use netd_model::{ClusterState, NodeName, PodRef, Protocol, ServiceRef};
use netd_render::{Origin, Packet};

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
    /// The node whose rules the packet meets first. Defaults to the node FROM runs on;
    /// needed when FROM is an address outside the cluster. A packet from a pod or node
    /// always starts on its own node.
    #[arg(long)]
    node: Option<NodeName>,
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
    if let Some(node) = &args.node {
        require_node(&state, node)?;
    }
    let (origin, src, home) = source(&state, &args.from)?;
    let (dst, dport) = destination(&state, &args.to)?;
    let packet = Packet {
        origin,
        protocol: args.protocol,
        ..Packet::tcp(src, dst, dport)
    };
    let start = match (args.node, home) {
        (Some(asked), Some(home)) if asked != home => {
            println!(
                "note: {} is on {home}, so its packets meet {home}'s rules first, not {asked}'s",
                args.from
            );
            home
        }
        (_, Some(home)) => home,
        (Some(asked), None) => asked,
        (None, None) => bail!(
            "--node is needed: {} is outside the cluster, so the node its packets enter is unknown",
            args.from
        ),
    };
    let trace = netd_agent::trace_nodes(&NodeProgrammer::default(), &state, &start, &packet)?;
    print!("{trace}");
    Ok(())
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

/// The source's origin and address, and the node it is on (a pod's node, or the node
/// itself); `None` for an address that is no pod's.
fn source(state: &ClusterState, from: &str) -> anyhow::Result<(Origin, IpAddr, Option<NodeName>)> {
    if let Some(name) = from.strip_prefix("node/") {
        let node = require_node(state, &NodeName::new(name))?;
        let ip = node
            .internal_ips
            .first()
            .copied()
            .with_context(|| format!("node {name} has no address"))?;
        return Ok((Origin::Host, ip, Some(node.name.clone())));
    }
    if let Ok(ip) = from.parse::<IpAddr>() {
        let home = state
            .pod_by_ip(ip)
            .filter(|p| !p.host_network)
            .and_then(|p| p.node.clone());
        return Ok((Origin::Network, ip, home));
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
    let origin = if p.host_network {
        Origin::Host
    } else {
        Origin::Network
    };
    Ok((origin, ip, p.node.clone()))
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
