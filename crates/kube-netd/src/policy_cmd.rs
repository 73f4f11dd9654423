//! `kube-netd policy ...`: what the NetworkPolicy engine decides, explained.

use anyhow::Context as _;
use clap::Subcommand;
use netd_model::{NamespaceName, PodRef, Protocol};
use netd_policy::FlowProtocol;

use crate::cluster::ClusterArgs;
use crate::print::TextOrJson;

/// Ask the NetworkPolicy engine: is a flow allowed, and why?
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Whether FROM may open a connection to TO, naming the policies and rules that decide.
    #[command(
        after_help = "FROM and TO are NS/POD or an IP address; a Service's ClusterIP as TO \
        is judged after DNAT, once per endpoint.\n\nExamples:\n  \
        kube-netd policy check -f examples/ default/frontend default/db --port 6379\n  \
        kube-netd policy check -f examples/ new-ns/deny-egress-test default/db --protocol icmp\n  \
        kube-netd policy check -f examples/ default/stranger 10.108.229.168 --port 80"
    )]
    Check {
        /// The source: NS/POD or an IP.
        from: String,
        /// The destination: NS/POD or an IP.
        to: String,
        /// Destination port (TCP, UDP and SCTP).
        #[arg(long)]
        port: Option<u16>,
        /// tcp, udp, sctp or icmp.
        #[arg(long, default_value = "tcp")]
        protocol: FlowProtocol,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// The truth table of every pod to every pod, as `kube-netd lab matrix` prints it.
    #[command(after_help = "Examples:\n  \
        kube-netd policy matrix -f examples/ --port 6379\n  \
        kube-netd policy matrix -f examples/ -n default,myproject --port 80 -o json\n\n\
        Compare with the kernel's answer: diff <(kube-netd policy matrix -f F --port 80) \
        <(kube-netd lab matrix --port 80 -o tsv)")]
    Matrix {
        /// Destination port.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// tcp, udp or sctp.
        #[arg(long, default_value = "tcp")]
        protocol: Protocol,
        /// Only pods of these namespaces (comma-separated); all when omitted.
        #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
        namespaces: Vec<NamespaceName>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextOrJson,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Which policies select a pod, its isolation, what may reach it and what it may reach.
    #[command(after_help = "Example:\n  kube-netd policy show -f examples/ default/db")]
    Show {
        /// The pod: NS/POD.
        pod: PodRef,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Runs a `policy` subcommand.
pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check {
            from,
            to,
            port,
            protocol,
            cluster,
        } => {
            let state = cluster.resolve()?;
            print!(
                "{}",
                netd_policy::check(&state, &from, &to, port, protocol)?
            );
        }
        PolicyCommand::Matrix {
            port,
            protocol,
            namespaces,
            output,
            cluster,
        } => {
            let state = cluster.resolve()?;
            let m = netd_policy::matrix(&state, port, protocol, &namespaces);
            match output {
                TextOrJson::Text => print!("{}", m.to_text()),
                TextOrJson::Json => println!("{}", m.to_json()),
            }
        }
        PolicyCommand::Show { pod, cluster } => {
            let state = cluster.resolve()?;
            let text = netd_policy::show(&state, &pod).with_context(|| format!("pod {pod}"))?;
            print!("{text}");
        }
    }
    Ok(())
}
