//! `kube-netd render` and `kube-netd trace`: the rules a node would get, as text, and a packet
//! walked through them.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use netd_agent::{
    BackendConfig, Ipvs, IpvsConfig, Nftables, NodeProgrammer, ProgramConfig, TraceRules,
};
use netd_model::{ClusterState, NodeName, Protocol, Target};
use netd_proxy::{NodePortAddresses, ProxySettings};
use netd_render::{Origin, Packet};

use crate::agent_cmd::{DetectLocalArgs, ipvs_scheduler};
use crate::cluster::ClusterArgs;

/// The proxy mode: which kernel machinery a node's rules are programmed into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// iptables-restore and ipset restore input, laid out as kube-proxy lays it out.
    Iptables,
    /// One nftables table per family with verdict maps, as kube-proxy's nftables mode.
    Nftables,
    /// IPVS virtual servers with ipsets and a few iptables rules.
    Ipvs,
}

impl From<Mode> for netd_agent::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Iptables => netd_agent::Mode::Iptables,
            Mode::Nftables => netd_agent::Mode::Nftables,
            Mode::Ipvs => netd_agent::Mode::Ipvs,
        }
    }
}

/// Print exactly what would be applied to a node.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The node whose rules to print.
    #[arg(long)]
    node: NodeName,
    /// The proxy mode whose rules to print.
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    /// Render as kube-proxy's --iptables-localhost-nodeports: nodePorts also answer on
    /// 127.0.0.1, and KUBE-FIREWALL drops the martian packets route_localnet admits
    /// (CVE-2020-8558). Off by default.
    #[arg(long)]
    localhost_nodeports: bool,
    #[command(flatten)]
    proxy: ProxyFlags,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The flags of `kube-netd agent` (kube-proxy's) that change a node's rules, so `render`
/// prints what an agent started with them programs.
#[derive(Debug, clap::Args)]
pub struct ProxyFlags {
    /// SNAT every packet sent to a ClusterIP, from pods too.
    #[arg(long)]
    masquerade_all: bool,
    #[command(flatten)]
    detect_local: DetectLocalArgs,
    /// The Node's addresses nodePorts answer on: CIDRs (comma-separated) or primary.
    /// Default: every local address, in every mode, as the lab's nodes have it (`kube-netd
    /// agent` defaults to primary in nftables mode, as kube-proxy: give it here too).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// Render NetworkPolicy; false renders Services only.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
    /// IPVS mode: the scheduler of every virtual server (rr, wrr, lc, wlc, lblc, lblcr, sh,
    /// dh, sed, nq, mh). Default: rr.
    #[arg(long, value_name = "NAME")]
    ipvs_scheduler: Option<String>,
}

impl ProxyFlags {
    /// The back end's configuration for `mode` with these flags.
    fn config(&self, mode: netd_agent::Mode) -> anyhow::Result<BackendConfig> {
        let detect_local = self.detect_local.parse().context("--detect-local-mode")?;
        let nodeport_addresses =
            NodePortAddresses::parse(&self.nodeport_addresses).context("--nodeport-addresses")?;
        Ok(BackendConfig {
            mode,
            program: ProgramConfig {
                proxy: ProxySettings {
                    masquerade_all: self.masquerade_all,
                    nodeport_addresses,
                    detect_local,
                    localhost_nodeports: false,
                },
                network_policy: self.network_policy,
            },
            ipvs: IpvsConfig {
                scheduler: ipvs_scheduler(self.ipvs_scheduler.as_deref(), "--ipvs-scheduler")?,
                ..IpvsConfig::default()
            },
        })
    }
}

/// Walk the first packet of a connection through a node's rules: Services and NetworkPolicy.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The node whose rules the packet meets first. Defaults to the node FROM runs on;
    /// needed when FROM is an address outside the cluster. A packet from a pod or node
    /// always starts on its own node.
    #[arg(long)]
    node: Option<NodeName>,
    /// Where the packet comes from: NS/POD, POD (in -n's namespace), node/NAME (the node
    /// itself), or an IP address (an off-cluster client).
    from: String,
    /// Where it goes, with its port: IP:PORT, svc/NS/NAME:PORT or svc/NAME:PORT (the
    /// ClusterIP), node/NAME:PORT (a nodePort), NS/POD:PORT or POD:PORT.
    to: String,
    /// The namespace of a bare POD or svc/NAME in FROM and TO.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// tcp, udp or sctp.
    #[arg(long, default_value = "tcp")]
    protocol: Protocol,
    /// The proxy mode whose rules to walk.
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    #[command(flatten)]
    proxy: ProxyFlags,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Prints the node's `ipset restore` and `iptables-restore` input.
pub fn render(args: RenderArgs) -> anyhow::Result<()> {
    let mut config = args.proxy.config(args.mode.into())?;
    config.program.proxy.localhost_nodeports = args.localhost_nodeports;
    let backend = netd_agent::backend(&config);
    let state = args.cluster.resolve()?;
    require_node(&state, &args.node)?;
    crate::out::stdout(&backend.render(&state, &args.node)?)?;
    Ok(())
}

/// Prints every branch the packet can take through the node's whole rule set of `--mode` as
/// `render` prints it (service and NetworkPolicy chains, in hook order): chains traversed, DNAT
/// choices with their probabilities, masquerade, the policy rule that decided, and the
/// verdict. A branch forwarded to a Pod or address of another node is traced on to that
/// node's rules, as the packet meets them there.
pub fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let config = args.proxy.config(args.mode.into())?;
    let state = args.cluster.resolve()?;
    if let Some(node) = &args.node {
        require_node(&state, node)?;
    }
    let (origin, src, home) = source(&state, &args.from, &args.namespace)?;
    let (dst, dport) = destination(&state, &args.to, &args.namespace)?;
    let packet = Packet {
        origin,
        protocol: args.protocol,
        ..Packet::tcp(src, dst, dport)
    };
    let start = match (args.node, home) {
        (Some(asked), Some(home)) if asked != home => {
            crate::out::line(format_args!(
                "note: {} is on {home}, so its packets meet {home}'s rules first, not {asked}'s",
                args.from
            ))?;
            home
        }
        (_, Some(home)) => home,
        (Some(asked), None) => asked,
        (None, None) => bail!(
            "--node is needed: {} is outside the cluster, so the node its packets enter is unknown",
            args.from
        ),
    };
    let programmer = NodeProgrammer {
        program: config.program.clone(),
        ..NodeProgrammer::default()
    };
    let nftables = Nftables::new().with_program(config.program.clone());
    let ipvs = Ipvs::new(config.ipvs).with_program(config.program);
    let rules = match args.mode {
        Mode::Iptables => TraceRules::Iptables(&programmer),
        Mode::Nftables => TraceRules::Nftables(&nftables),
        Mode::Ipvs => TraceRules::Ipvs(&ipvs),
    };
    let trace = netd_agent::trace_nodes_in(rules, &state, &start, &packet)?;
    crate::out::stdout(&trace.to_string())?;
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
fn source(
    state: &ClusterState,
    from: &str,
    namespace: &str,
) -> anyhow::Result<(Origin, IpAddr, Option<NodeName>)> {
    match Target::parse(from, namespace)? {
        Target::Node(name) => Ok((Origin::Host, node_ip(state, &name)?, Some(name))),
        Target::Ip(ip) => {
            let home = state
                .pod_by_ip(ip)
                .filter(|p| !p.host_network)
                .and_then(|p| p.node.clone());
            Ok((Origin::Network, ip, home))
        }
        Target::Pod(pod) => {
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
        other => bail!(
            "{from:?} is {}: a trace starts at NS/POD, POD, node/NAME or an IP",
            other.what()
        ),
    }
}

fn destination(state: &ClusterState, to: &str, namespace: &str) -> anyhow::Result<(IpAddr, u16)> {
    let (target, port) = to
        .rsplit_once(':')
        .with_context(|| format!("{to:?} has no :PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{port:?} is not a port"))?;
    let target = target.trim_start_matches('[').trim_end_matches(']');
    match Target::parse(target, namespace)? {
        Target::Ip(ip) => Ok((ip, port)),
        Target::Service(key) => {
            let s = state
                .service(&key)
                .with_context(|| format!("no service {key}"))?;
            let ip = s
                .cluster_ips
                .first()
                .copied()
                .with_context(|| format!("service {key} has no ClusterIP"))?;
            Ok((ip, port))
        }
        Target::Node(name) => Ok((node_ip(state, &name)?, port)),
        Target::Pod(pod) => match state.pod(&pod).and_then(|p| p.ips.first().copied()) {
            Some(ip) => Ok((ip, port)),
            None => bail!("no pod {pod} with an IP"),
        },
        other => bail!(
            "{target:?} is {}: a trace goes to NS/POD, POD, svc/[NS/]NAME, node/NAME or an IP, \
             with :PORT",
            other.what()
        ),
    }
}

fn node_ip(state: &ClusterState, name: &NodeName) -> anyhow::Result<IpAddr> {
    require_node(state, name)?
        .internal_ips
        .first()
        .copied()
        .with_context(|| format!("node {name} has no address"))
}
