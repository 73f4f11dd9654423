//! `kube-netd`: Kubernetes node networking in one binary.
//!
//! Each subcommand lives in its own module; `main` parses flags, sets up logging and hands
//! over. See docs/ARCHITECTURE.md for how the crates fit together.

mod agent_cmd;
mod cluster;
mod dns_cmd;
mod jsonpath;
mod lab_cmd;
mod out;
mod policy_cmd;
mod print;
mod render_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cluster::ClusterArgs;

/// jemalloc, not glibc's malloc: `dns serve -f` and the agent load a whole cluster, build
/// what they keep from it and drop it; glibc keeps that heap resident (1.1 GiB at 10,000
/// Services and 50,000 Pods, for a 20 MiB zone), jemalloc gives it back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kubernetes node networking in one binary: service proxy, NetworkPolicy, cluster DNS, and a
/// lab that runs it all on one machine.
#[derive(Debug, Parser)]
#[command(name = "kube-netd", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `netd_lab=debug`.
    #[arg(
        long,
        global = true,
        env = "KUBE_NETD_LOG",
        default_value = "warn,hickory_server=warn"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Program this Node's Services and NetworkPolicy from the API server, as kube-proxy
    /// does, in the network namespace the agent runs in.
    #[command(after_help = "Examples:\n  \
        kube-netd agent --kubeconfig /var/lib/kube-proxy/kubeconfig.conf --proxy-mode nftables\n  \
        kube-netd agent --config /var/lib/kube-proxy/config.conf --hostname-override $(NODE_NAME)\n  \
        kube-netd agent --cleanup")]
    Agent(agent_cmd::AgentArgs),
    /// Print the cluster the manifests resolve to, the way kubectl prints it.
    #[command(after_help = "Examples:\n  \
        kube-netd get all -f examples/\n  \
        kube-netd get pods -A -o wide -f examples/hostnames/\n  \
        kube-netd get svc -n default -o yaml -f examples/nodeport/nodeport.yaml\n  \
        kube-netd get pod db -o json -f examples/\n  \
        kube-netd get svc,po -f examples/\n  \
        kube-netd get pods -l 'app in (hostnames)' -o name -f examples/\n  \
        kube-netd get ns -o wide -f examples/\n  \
        kube-netd get rs,ep -f examples/hostnames/\n  \
        kube-netd get pods -o 'jsonpath={.items[*].status.podIP}' -f examples/")]
    Get(GetCommand),
    /// Run a cluster of network namespaces on this machine and probe it with real packets.
    Lab(lab_cmd::LabArgs),
    /// Ask the NetworkPolicy engine whether flows are allowed, and why.
    Policy(policy_cmd::PolicyArgs),
    /// Serve cluster DNS for the cluster the API server describes, or for a set of manifests.
    Dns(dns_cmd::DnsArgs),
    /// Print exactly what would be applied to a node: ipset and iptables-restore input.
    #[command(after_help = "Examples:\n  \
        kube-netd render -f examples/ --node node-1\n  \
        kube-netd render -f examples/hostnames/ --node node-2 --mode iptables\n  \
        kube-netd render -f examples/ --node node-1 --localhost-nodeports")]
    Render(render_cmd::RenderArgs),
    /// Walk the first packet of a connection through a node's rules, Services and
    /// NetworkPolicy, as `render` prints them (no kernel).
    #[command(
        after_help = "A branch forwarded to a pod or address of another node is traced \
        on through that node's rules; a verdict reached in a policy chain names the policy \
        rule that decided.\n\nExamples:\n  \
        kube-netd trace -f examples/ --node node-1 default/frontend svc/default/hostnames:80\n  \
        kube-netd trace -f examples/ --node node-1 default/stranger default/db:6379\n  \
        kube-netd trace -f examples/ default/frontend default/db:6380
  \
        kube-netd trace -f examples/ --node node-2 172.18.0.1 node/node-2:30081
  \
        kube-netd trace -f examples/ -n default frontend svc/hostnames:80"
    )]
    Trace(render_cmd::TraceArgs),
    /// Remove every chain, hook and ipset kube-netd added to a network namespace; rules of
    /// other software are left alone.
    #[command(after_help = "Example:\n  kube-netd cleanup --netns kube-netd-node-1")]
    Cleanup(CleanupArgs),
}

#[derive(Debug, clap::Args)]
struct CleanupArgs {
    /// The network namespace (as `ip netns list` names it) to clean.
    #[arg(long)]
    netns: String,
}

#[derive(Debug, clap::Args)]
struct GetCommand {
    #[command(flatten)]
    what: print::GetArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(colour(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if out::is_broken_pipe(&e) => ExitCode::from(out::BROKEN_PIPE_STATUS),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether to colour what goes to `stream`: only a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (no-color.org).
fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Get(args) => {
            let state = args.cluster.resolve()?;
            args.what.print(&state)
        }
        Command::Policy(args) => policy_cmd::run(args),
        Command::Dns(args) => dns_cmd::run(args),
        Command::Render(args) => render_cmd::render(args),
        Command::Trace(args) => render_cmd::trace(args),
        Command::Cleanup(args) => {
            let removed = netd_agent::cleanup(&args.netns)?;
            crate::out::line(format_args!(
                "removed from {}: {} hooks, {} chains, {} ipsets",
                args.netns, removed.hooks, removed.chains, removed.sets
            ))?;
            Ok(())
        }
        Command::Lab(args) => lab_cmd::run(args),
        Command::Agent(args) => agent_cmd::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks names, groups, conflicts and defaults of every subcommand.
        Cli::command().debug_assert();
    }
}
