//! `kube-netd render` and `kube-netd trace`: the rules a node would get, as text, and a packet
//! walked through them.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use netd_agent::NodeProgrammer;
use netd_model::{ClusterState, NodeName, PodRef, Protocol, ServiceRef};
use netd_proxy::{IpFamily, ProxyOptions};
use netd_render::{Host, Origin, Packet, RenderOptions};

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
    /// Render as kube-proxy's --iptables-localhost-nodeports: nodePorts also answer on
    /// 127.0.0.1, and KUBE-FIREWALL drops the martian packets route_localnet admits
    /// (CVE-2020-8558). Off by default.
    #[arg(long)]
    localhost_nodeports: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Walk the first packet of a connection through a node's service rules.
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
    let programmer = NodeProgrammer {
        localhost_nodeports: args.localhost_nodeports,
        ..NodeProgrammer::default()
    };
    let rules = programmer.rules(&state, &args.node)?;
    print!("{}", rules.to_text());
    Ok(())
}

/// Prints every branch the packet can take: chains traversed, DNAT choices with their
/// probabilities, masquerade, and the verdict.
pub fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let state = args.cluster.resolve()?;
    let node = require_node(&state, &args.node)?;
    let (origin, src) = source(&state, &args.from)?;
    let (dst, dport) = destination(&state, &args.to)?;
    let family = if dst.is_ipv4() {
        IpFamily::V4
    } else {
        IpFamily::V6
    };
    let plan = netd_proxy::plan(
        &state,
        &args.node,
        family,
        &ProxyOptions::for_node(&state, &args.node),
    );
    let rules = netd_render::render_services(&plan, &RenderOptions::default()).installed();
    let host = Host {
        local_addrs: node.internal_ips.clone(),
        ..Host::default()
    };
    let packet = Packet {
        origin,
        protocol: args.protocol,
        ..Packet::tcp(src, dst, dport)
    };
    let trace = netd_render::trace(&rules, &host, &packet)?;
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
