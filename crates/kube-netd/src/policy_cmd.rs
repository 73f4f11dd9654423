//! `kube-netd policy ...`: what the NetworkPolicy engine decides, explained.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Subcommand;
use netd_model::{NamespaceName, Protocol, Target};
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
        after_help = "FROM and TO are NS/POD, POD (in -n's namespace), svc/[NS/]NAME, \
        node/NAME or an IP address; a Service (or its ClusterIP) as TO is judged after DNAT, \
        once per endpoint.\n\nExit status, as kubectl auth can-i: 0 when \
        the flow is allowed (through a Service: by every endpoint), 1 when it is blocked or \
        the command fails.\n\nExamples:\n  \
        kube-netd policy check -f examples/ default/frontend default/db --port 6379\n  \
        kube-netd policy check -f examples/ new-ns/deny-egress-test default/db --protocol icmp\n  \
        kube-netd policy check -f examples/ default/stranger 10.108.229.168 --port 80\n  \
        kube-netd policy check -f examples/ -n myproject client svc/default/hostnames --port 80"
    )]
    Check {
        /// The source: NS/POD, POD (in -n's namespace), node/NAME or an IP.
        from: String,
        /// The destination: NS/POD, POD, svc/NS/NAME or svc/NAME (its ClusterIP), node/NAME
        /// or an IP.
        to: String,
        /// The namespace of a bare POD or svc/NAME in FROM and TO.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
                /// Destination port: required for TCP, UDP and SCTP (policies allow ports).
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
        <(kube-netd lab matrix --port 80)")]
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
    #[command(
        after_help = "Examples:\n  kube-netd policy show -f examples/ default/db\n  \
        kube-netd policy show -f examples/ -n myproject client"
    )]
    Show {
        /// The pod: NS/POD, or POD in -n's namespace.
        pod: String,
        /// The namespace of a bare POD.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
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
            namespace,
            port,
            protocol,
            cluster,
        } => {
            let state = cluster.resolve()?;
            let checked = netd_policy::check(&state, &from, &to, &namespace, port, protocol)?;
            print!("{checked}");
            if !checked.allowed {
                // The explanation is the whole answer: no error message, only the status.
                std::io::stdout().flush()?;
                std::process::exit(1);
            }
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
                TextOrJson::Text => crate::out::stdout(&m.to_text())?,
                TextOrJson::Json => crate::out::stdout(&format!("{}\n", m.to_json()))?,
            }
        }
        PolicyCommand::Show {
            pod,
            namespace,
            cluster,
        } => {
            let pod = match Target::parse(&pod, &namespace)? {
                Target::Pod(p) => p,
                other => anyhow::bail!("{pod:?} is {}, not a pod", other.what()),
            };
            let state = cluster.resolve()?;
            let text = netd_policy::show(&state, &pod).with_context(|| format!("pod {pod}"))?;
            crate::out::stdout(&text)?;
        }
    }
    Ok(())
}
