//! `kube-netd lab ...`: a real multi-node cluster of network namespaces on this machine.
//!
//! Thin: flags are parsed here and everything else is `netd_lab`'s. The hidden
//! `lab internal ...` subcommand is how the lab runs its own helper processes (each Node's
//! agent, each Pod's echo server or cluster DNS server) from this same binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use netd_lab::{
    AgentStop, Lab, LabOptions, Place, ProbeProtocol, ProbeSpec, Programmer, Resolver, Target,
};
use netd_model::{Object, Protocol};

use crate::cluster::{NetworkArgs, ValidateArgs};
use crate::print::{self, TextOrJson};

/// Run a cluster of network namespaces on this machine and probe it with real packets.
#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build a lab, apply the manifests, and return once every Node has programmed its rules.
    #[command(after_help = "Examples:\n  \
        kube-netd lab up -f examples/\n  \
        kube-netd lab up --nodes 3 --name second -f examples/hostnames/")]
    Up(UpArgs),
    /// Create or update objects, like kubectl apply; returns once every Node has converged.
    #[command(
        after_help = "Example:\n  kube-netd lab apply -f examples/networkpolicy/deny-egress.yaml"
    )]
    Apply(FileArgs),
    /// Delete objects, like kubectl delete -f; returns once every Node has converged.
    #[command(
        after_help = "Example:\n  kube-netd lab delete -f examples/networkpolicy/deny-egress.yaml"
    )]
    Delete(FileArgs),
    /// Print the lab's resolved cluster, the way kubectl prints it.
    #[command(
        after_help = "Examples:\n  kube-netd lab get pods -A -o wide\n  kube-netd lab get svc -o yaml"
    )]
    Get(LabGetArgs),
    /// Send real packets from a pod, a node or outside the cluster, and report what happened.
    #[command(after_help = "Examples:\n  \
        kube-netd lab probe default/client default/server --port 80\n  \
        kube-netd lab probe external node/node-1 --port 30080 -o json\n  \
        kube-netd lab probe default/client svc/default/hostnames --port 80 --count 6\n  \
        kube-netd lab probe default/client 10.244.2.3 --protocol icmp")]
    Probe(ProbeArgs),
    /// Probe every pod from every pod in parallel; print the truth table (`.` allowed, `X` blocked).
    #[command(
        after_help = "Examples:\n  kube-netd lab matrix --port 80\n  kube-netd lab matrix -n x,y --port 81 -o json"
    )]
    Matrix(MatrixArgs),
    /// Run a command inside a pod's, a node's or the external namespace.
    #[command(after_help = "Examples:\n  \
        kube-netd lab exec default/client -- cat /etc/resolv.conf\n  \
        kube-netd lab exec node/node-1 -- iptables-save\n  \
        kube-netd lab exec external -- ip route")]
    Exec(ExecArgs),
    /// The seed's walkthrough with real packets: policies, a Service, NodePorts, each step
    /// checked against what Kubernetes specifies (exits non-zero if any check is not).
    #[command(after_help = "Examples:\n  \
        kube-netd lab demo\n  \
        kube-netd lab demo --keep --name demo")]
    Demo(DemoArgs),
    /// Restart a Node's agent: stop it by PID (SIGTERM, or SIGKILL with --kill), start a new
    /// one, and return once the Node has converged. Established connections keep flowing.
    #[command(after_help = "Examples:\n  \
        kube-netd lab restart node-1\n  \
        kube-netd lab restart node-2 --kill")]
    Restart(RestartArgs),
    /// Remove every namespace, process and file of a lab (idempotent; works after a crash).
    #[command(after_help = "Example:\n  kube-netd lab down --name kube-netd")]
    Down(NameArgs),
    /// The lab's own helper processes (a Node's agent, a Pod's echo or DNS server).
    #[command(hide = true)]
    Internal {
        /// `agent STATE_DIR NODE`, `echo STATE_DIR NS/POD PROTO/PORT...` or
        /// `dns STATE_DIR NS/POD`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The lab.
    #[arg(long, default_value = "kube-netd", env = "KUBE_NETD_LAB")]
    name: String,
    /// Where lab state lives.
    #[arg(long, hide = true, default_value = netd_lab::DEFAULT_STATE_ROOT, env = "KUBE_NETD_LAB_STATE")]
    state_root: PathBuf,
}

impl NameArgs {
    fn open(&self) -> anyhow::Result<Lab> {
        Ok(Lab::open(&self.name, &self.state_root, resolver())?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// iptables (the default).
    Iptables,
    /// nftables (not yet available).
    Nftables,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    validate: ValidateArgs,
    /// The service proxy back end.
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    #[command(flatten)]
    network: NetworkArgs,
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    validate: ValidateArgs,
}

#[derive(Debug, clap::Args)]
struct LabGetArgs {
    #[command(flatten)]
    lab: NameArgs,
    #[command(flatten)]
    what: print::GetArgs,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Where to send from: NS/POD, node/NAME or external.
    from: String,
    /// Where to: NS/POD, svc/NS/NAME (its ClusterIP), node/NAME (its IP), an IP, or a DNS
    /// name (resolved inside FROM).
    to: String,
    /// Destination port (TCP and UDP).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// tcp, udp, sctp or icmp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Attempts.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// How long each attempt waits, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Output format: text, or one JSON object per attempt.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: TextOrJson,
}

#[derive(Debug, clap::Args)]
struct MatrixArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Destination port.
    #[arg(long, short = 'p', default_value_t = 80)]
    port: u16,
    /// tcp, udp or sctp.
    #[arg(long, default_value = "tcp")]
    protocol: Protocol,
    /// Only pods of these namespaces (comma-separated).
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// How long a blocked pair is waited for, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: TextOrJson,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Leave the lab running afterwards (also after a failure or Ctrl-C).
    #[arg(long)]
    keep: bool,
    /// How many connections the Service step opens.
    #[arg(long, default_value_t = 30)]
    connections: u32,
    /// How long each probe waits for an answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
struct RestartArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// The Node whose agent to restart.
    node: String,
    /// SIGKILL the agent (as a crash would) instead of SIGTERM.
    #[arg(long)]
    kill: bool,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// NS/POD, node/NAME or external.
    target: String,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs a `lab` subcommand. `programmer` gives each Node's agent its rules.
pub fn run(args: LabArgs, programmer: &dyn Programmer) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up(a) => up(a),
        LabCommand::Apply(a) => {
            let lab = a.lab.open()?;
            let objects = a.validate.load(&a.files, lab.state()?.config())?;
            for change in lab.apply(objects)? {
                println!("{change}");
            }
            Ok(())
        }
        LabCommand::Delete(a) => {
            let lab = a.lab.open()?;
            let ids: Vec<_> = a
                .validate
                .load(&a.files, lab.state()?.config())?
                .iter()
                .map(Object::id)
                .collect();
            for change in lab.delete(&ids)? {
                println!("{change}");
            }
            Ok(())
        }
        LabCommand::Get(a) => {
            let state = a.lab.open()?.state()?;
            print!("{}", a.what.render(&state)?);
            Ok(())
        }
        LabCommand::Probe(a) => probe(a),
        LabCommand::Matrix(a) => {
            let lab = a.lab.open()?;
            let m = lab.matrix(
                a.port,
                a.protocol,
                &a.namespaces,
                Duration::from_millis(a.timeout_ms),
            )?;
            match a.output {
                TextOrJson::Text => print!("{}", m.to_text()),
                TextOrJson::Json => println!("{}", m.to_json()),
            }
            Ok(())
        }
        LabCommand::Exec(a) => {
            let lab = a.lab.open()?;
            let place: Place = a.target.parse()?;
            let (program, rest) = a.command.split_first().context("no command given")?;
            let status = lab
                .command(&place, program)?
                .args(rest)
                .status()
                .with_context(|| format!("running {program}"))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::Demo(a) => demo(a),
        LabCommand::Restart(a) => {
            let lab = a.lab.open()?;
            let stop = if a.kill {
                AgentStop::Kill
            } else {
                AgentStop::Terminate
            };
            let started = Instant::now();
            lab.restart_agent_with(&a.node.as_str().into(), stop)?;
            println!(
                "agent of node {} restarted; the node converged in {:.1}s",
                a.node,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        LabCommand::Down(a) => {
            if netd_lab::down(&a.name, &a.state_root)? {
                println!("lab {} removed", a.name);
            } else {
                println!("no lab named {} was running", a.name);
            }
            Ok(())
        }
        LabCommand::Internal { args } => Ok(netd_lab::helper_main(&args, programmer)?),
    }
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    if a.mode == Mode::Nftables {
        return Err(netd_lab::LabError::ModeNotSupported {
            mode: "nftables".into(),
        }
        .into());
    }
    let started = Instant::now();
    let config = a.network.config();
    let objects = if a.files.is_empty() {
        Vec::new()
    } else {
        a.validate.load(&a.files, &config)?
    };
    let exe = std::env::current_exe().context("finding the kube-netd executable")?;
    let program = vec![
        exe.to_string_lossy().into_owned(),
        "lab".into(),
        "internal".into(),
    ];
    let mut options = LabOptions::new(a.lab.name.clone(), program);
    options.state_root = a.lab.state_root.clone();
    options.config = config;
    let lab = Lab::up(options, objects, resolver())?;
    let state = lab.state()?;
    println!(
        "lab {} is up: {} nodes, {} pods, {} services in {:.1}s (state in {})",
        lab.name(),
        state.nodes().count(),
        state.pods().count(),
        state.services().count(),
        started.elapsed().as_secs_f64(),
        lab.state_dir().display()
    );
    lab.detach();
    Ok(())
}

fn demo(a: DemoArgs) -> anyhow::Result<()> {
    use netd_lab::demo::{self, DemoOptions};
    let exe = std::env::current_exe().context("finding the kube-netd executable")?;
    let program = vec![
        exe.to_string_lossy().into_owned(),
        "lab".into(),
        "internal".into(),
    ];
    let mut lab = LabOptions::new(a.lab.name.clone(), program);
    lab.state_root = a.lab.state_root.clone();
    let mut options = DemoOptions::new(lab);
    options.keep = a.keep;
    options.connections = a.connections;
    options.timeout = Duration::from_millis(a.timeout_ms);
    if !a.keep {
        demo::remove_on_interrupt(&a.lab.name, &a.lab.state_root)?;
    }
    let report = demo::run(options, resolver(), &mut std::io::stdout().lock())?;
    let failed = report.checks().filter(|c| !c.passed).count();
    if failed > 0 {
        bail!(
            "{failed} of {} checks observed something other than what Kubernetes specifies",
            report.checks().count()
        );
    }
    Ok(())
}

fn probe(a: ProbeArgs) -> anyhow::Result<()> {
    let lab = a.lab.open()?;
    let from: Place = a.from.parse()?;
    let to: Target = a.to.parse()?;
    let protocol: ProbeProtocol = a.protocol.parse()?;
    if a.port.is_none() && matches!(protocol, ProbeProtocol::Tcp | ProbeProtocol::Udp) {
        bail!("a {protocol} probe needs --port");
    }
    let spec = ProbeSpec {
        port: a.port,
        protocol,
        count: a.count,
        timeout: Duration::from_millis(a.timeout_ms),
    };
    for result in lab.probe(&from, &to, &spec)? {
        match a.output {
            TextOrJson::Text => println!("{result}"),
            TextOrJson::Json => println!("{}", serde_json::to_string(&result)?),
        }
    }
    Ok(())
}

fn resolver() -> Resolver {
    Arc::new(|objects, config, previous| Ok(netd_controlplane::resolve(objects, config, previous)?))
}
