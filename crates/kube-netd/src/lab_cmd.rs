//! `kube-netd lab ...`: a real multi-node cluster of network namespaces on this machine.
//!
//! Thin: flags are parsed here and everything else is `netd_lab`'s. The hidden
//! `lab internal ...` subcommand is how the lab runs its own helper processes (each Node's
//! agent, each Pod's echo server or cluster DNS server) from this same binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use netd_lab::{
    Action, AgentStop, IpFamily, Lab, LabOptions, Outcome, Place, ProbeProtocol, ProbeSpec,
    Resolver, Target,
};
use netd_model::{ClusterConfig, IpFamilies, Kind, ObjectId};

use crate::cluster::{NetworkArgs, ValidateArgs};
use crate::print::{self, TextOrJson};
use crate::render_cmd::Mode;

/// Run a cluster of network namespaces on this machine and probe it with real packets.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every lab command acts on the lab that --name names, or the \
    KUBE_NETD_LAB environment variable (default kube-netd); `kube-netd lab list` shows the labs \
    on this machine.\n\nExample:\n  KUBE_NETD_LAB=second kube-netd lab get pods -A"
)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build a lab, apply the manifests, and return once every Node has programmed its rules.
    #[command(after_help = "Examples:\n  \
        kube-netd lab up -f examples/\n  \
        kube-netd lab up --nodes 3 --name second -f examples/hostnames/\n  \
        kube-netd lab up --ip-family dual -f examples/hostnames/\n  \
        kube-netd lab up --localhost-nodeports -f examples/nodeport/")]
    Up(UpArgs),
    /// Create or update objects, like kubectl apply; returns once every Node has converged.
    #[command(
        after_help = "Example:\n  kube-netd lab apply -f examples/networkpolicy/deny-egress.yaml"
    )]
    Apply(FileArgs),
    /// Delete objects named by files or on the command line, like kubectl delete; returns once
    /// every Node has converged.
    #[command(
        after_help = "A file needs to name each object only (apiVersion, kind, \
        metadata.name, metadata.namespace); its spec is not read. Each object deleted is printed \
        as `kind/name deleted`; each one that does not exist is reported on stderr, and the exit \
        status is then 1 unless --ignore-not-found is given.\n\nExamples:\n  \
        kube-netd lab delete -f examples/networkpolicy/deny-egress.yaml\n  \
        kube-netd lab delete pod frontend stranger -n default\n  \
        kube-netd lab delete svc/hostnames deploy/hostnames\n  \
        kube-netd lab delete netpol deny-egress-test -n new-ns --ignore-not-found"
    )]
    Delete(DeleteArgs),
    /// Print the lab's resolved cluster, the way kubectl prints it.
    #[command(
        after_help = "Examples:\n  kube-netd lab get pods -A -o wide\n  kube-netd lab get svc -o yaml\n  \
        kube-netd lab get pods/db svc/db -o name\n  kube-netd lab get ns -l team=a"
    )]
    Get(LabGetArgs),
    /// Send real packets from a pod, a node or outside the cluster, and report what happened.
    ///
    /// Exits 0 when every attempt connected (or, on port 53, a DNS server answered), and 1
    /// when any attempt was refused, timed out or was unreachable.
    #[command(after_help = "Examples:\n  \
        kube-netd lab probe default/client default/server --port 80\n  \
        kube-netd lab probe external node/node-1 --port 30080 -o json\n  \
        kube-netd lab probe default/client svc/default/hostnames --port 80 --count 6\n  \
        kube-netd lab probe default/client 10.244.2.3 --protocol icmp\n  \
        kube-netd lab probe -n myproject client svc/web --port 80\n  \
        kube-netd lab probe default/client svc/kube-system/kube-dns --port 53 --protocol udp\n  \
        kube-netd lab probe default/client svc/default/hostnames --port 80 --hold 30 --count 4\n  \
        kube-netd lab probe default/client svc/default/hostnames --port 80 --ip-family ipv6\n\n\
        With --hold, exits 0 only if every held connection survived.\n\
        Exit status: 0 if every attempt connected or was answered, 1 otherwise.")]
    Probe(ProbeArgs),
    /// Probe every pod from every pod in parallel; print what happened to each pair.
    ///
    /// Rows are sources, columns destinations. `.` connected, `A` answered by a server that is
    /// not the lab's echo server (a DNS query on port 53), `R` refused (no listener: policy let
    /// it through), `X` dropped (no answer, probed twice), `U` unreachable. Pairs that got no
    /// answer in the burst are probed once more before they are reported dropped. Exits
    /// non-zero when no pod matches.
    #[command(after_help = "Examples:\n  \
        kube-netd lab matrix --port 80\n  \
        kube-netd lab matrix -n x,y --port 81 -o json\n  \
        kube-netd lab matrix -n kube-system,default --port 53 --protocol udp\n  \
        kube-netd lab matrix --protocol icmp\n  \
        kube-netd lab matrix --port 80 --ip-family ipv6\n  \
        diff <(kube-netd policy matrix -f F --port 80) <(kube-netd lab matrix --port 80 -o tsv)")]
    Matrix(MatrixArgs),
    /// Run a command inside a pod's, a node's or the external namespace.
    #[command(after_help = "Examples:\n  \
        kube-netd lab exec default/client -- cat /etc/resolv.conf\n  \
        kube-netd lab exec node/node-1 -- iptables-save\n  \
        kube-netd lab exec external -- ip route\n  \
        kube-netd lab exec -n myproject client -- ip addr")]
    Exec(ExecArgs),
    /// A guided tour of Kubernetes networking with real packets: a deny-egress policy, a
    /// policy guarding a database, a three-pod Service and NodePorts, each step checked against
    /// what Kubernetes specifies (exits non-zero if any check is not).
    #[command(after_help = "Examples:\n  \
        kube-netd lab demo\n  \
        kube-netd lab demo --keep --name demo")]
    Demo(DemoArgs),
    /// List the labs on this machine: name, nodes, proxy mode, whether their agents run, age.
    #[command(
        after_help = "The CURRENT column marks the lab the other lab commands use: the \
        one --name or KUBE_NETD_LAB names (default kube-netd).\n\nExamples:\n  \
        kube-netd lab list\n  \
        kube-netd lab list -o json"
    )]
    List(ListArgs),
    /// Restart a Node's agent: stop it by PID (SIGTERM, or SIGKILL with --kill), start a new
    /// one, and return once the Node has converged. Established connections keep flowing.
    #[command(after_help = "Examples:\n  \
        kube-netd lab restart node-1\n  \
        kube-netd lab restart node-2 --kill")]
    Restart(RestartArgs),
    /// Print the path of the lab's kubeconfig, for kubectl (`lab up` prints it too).
    #[command(
        after_help = "Examples:\n  export KUBECONFIG=$(kube-netd lab kubeconfig --name kube-netd)\n  \
        kubectl get pods -A -o wide\n  \
        kube-netd lab exec node/node-1 -- kubectl --kubeconfig $(kube-netd lab kubeconfig --in-lab) get nodes"
    )]
    Kubeconfig(KubeconfigArgs),
    /// Remove every namespace, process and file of a lab (idempotent; works after a crash).
    #[command(after_help = "Example:\n  kube-netd lab down --name kube-netd")]
    Down(NameArgs),
    /// The lab's own helper processes (a Node's agent, a Pod's echo or DNS server).
    #[command(hide = true)]
    Internal {
        /// `agent STATE_DIR NODE`, `echo STATE_DIR NS/POD PROTO/PORT...`,
        /// `dns STATE_DIR NS/POD NETNS` or `apiserver STATE_DIR --after-go`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The lab to act on (`lab list` shows those on this machine).
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

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    validate: ValidateArgs,
    /// The proxy mode the nodes' agents run.
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    /// ipv4, ipv6 or dual (IPv4 first) [default: ipv4]. ipv6 and dual use kind's ranges:
    /// pods fd00:10:244::/56 (a /64 per node), Services fd00:10:96::/112, node IPv6
    /// addresses in fd00:172:18::/64; each node's agent programs ip6tables too. To choose
    /// the ranges yourself, repeat --cluster-cidr and --service-cidr instead.
    #[arg(
        long,
        value_name = "FAMILY",
        conflicts_with_all = ["cluster_cidrs", "service_cidrs", "dns_service_ip"]
    )]
    ip_family: Option<IpFamilies>,
    /// Accept connections to 127.0.0.1:<nodePort> on the nodes, as kube-proxy's
    /// --iptables-localhost-nodeports does (route_localnet=1, and KUBE-FIREWALL drops the
    /// martian packets that admits). Off by default: localhost nodePorts let anything on a
    /// node's network reach them as if from the node itself (CVE-2020-8558).
    #[arg(long)]
    localhost_nodeports: bool,
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
struct DeleteArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Manifest files or directories naming the objects (recursive: .yaml, .yml, .json); `-`
    /// reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "objects",
        conflicts_with = "objects"
    )]
    files: Vec<PathBuf>,
    /// KIND NAME... or KIND/NAME...: kinds as kubectl names them (pods, po, services, svc,
    /// deployments, deploy, networkpolicies, netpol, endpointslices, namespaces, ns, nodes, no).
    #[arg(value_name = "KIND NAME")]
    objects: Vec<String>,
    /// The namespace of the objects named (default: `default`); with -f, of those that name
    /// none, and one that names another is refused.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Objects that do not exist are not reported, and do not make the exit status 1.
    #[arg(long)]
    ignore_not_found: bool,
}

impl DeleteArgs {
    /// The objects to delete: those the files name, or those the arguments name.
    fn ids(&self) -> anyhow::Result<Vec<ObjectId>> {
        if !self.files.is_empty() {
            let refs = netd_model::load_references(&self.files, self.namespace.as_deref())?;
            return Ok(refs.references.into_iter().map(|r| r.id).collect());
        }
        let id = |kind: &str, name: &str| -> anyhow::Result<ObjectId> {
            let kind = Kind::from_resource(kind).with_context(|| {
                format!(
                    "kube-netd has no resource type {kind:?} (expected pods, services, \
                     deployments, networkpolicies, endpointslices, namespaces or nodes)"
                )
            })?;
            let namespace = match (kind.is_namespaced(), &self.namespace) {
                (false, _) => String::new(),
                (true, Some(ns)) => ns.clone(),
                (true, None) => "default".to_owned(),
            };
            Ok(ObjectId {
                kind,
                namespace,
                name: name.to_owned(),
            })
        };
        let Some((first, rest)) = self.objects.split_first() else {
            bail!("nothing to delete: give -f FILE, KIND NAME... or KIND/NAME...");
        };
        if first.contains('/') {
            return self
                .objects
                .iter()
                .map(|arg| match arg.split_once('/') {
                    Some((kind, name)) if !name.is_empty() && !name.contains('/') => id(kind, name),
                    _ => bail!("{arg:?} is not KIND/NAME (once one argument is, all must be)"),
                })
                .collect();
        }
        if rest.is_empty() {
            bail!("{first:?} names a kind but no object: give KIND NAME...");
        }
        rest.iter().map(|name| id(first, name)).collect()
    }
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Output format: a table, or a JSON array with one object per lab.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: TextOrJson,
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
    /// Where to send from: NS/POD, POD (in -n's namespace), node/NAME or external.
    from: String,
    /// Where to: NS/POD, POD, svc/NS/NAME or svc/NAME (its ClusterIP), node/NAME (its IP), an
    /// IP, or a DNS name with a dot (resolved inside FROM).
    to: String,
    /// The namespace of a bare POD or svc/NAME in FROM and TO.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Destination port (TCP and UDP).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// tcp, udp, sctp or icmp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Attempts, one after another (at least 1); with --hold, connections held in parallel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Keep one TCP connection open this many seconds, sending a short message every 100 ms,
    /// and report whether it survived, who served it and its longest stall (each echo is
    /// waited for at most --timeout-ms).
    #[arg(long, value_name = "SECONDS", value_parser = parse_hold)]
    hold: Option<Duration>,
    /// How long each attempt waits, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Which address of a pod, Service, node or DNS name to probe: ipv4 or ipv6
    /// [default: the cluster's first family].
    #[arg(long, value_name = "FAMILY", value_parser = parse_family)]
    ip_family: Option<IpFamily>,
    /// Output format: text, or one JSON object per attempt.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: TextOrJson,
}

#[derive(Debug, clap::Args)]
struct MatrixArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// Destination port (ignored for ICMP).
    #[arg(long, short = 'p', default_value_t = 80)]
    port: u16,
    /// tcp, udp, sctp (where the kernel has SCTP sockets) or icmp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Only pods of these namespaces (comma-separated).
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// How long a blocked pair is waited for, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Probe every pod at its address of this family: ipv4 or ipv6 [default: the cluster's
    /// first family]. Pods without one are left out.
    #[arg(long, value_name = "FAMILY", value_parser = parse_family)]
    ip_family: Option<IpFamily>,
    /// Output format: text (legend, aligned), json, or tsv (the `.`/`X` truth table exactly
    /// as `kube-netd policy matrix` prints it, for diff).
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: MatrixOutput,
}

/// `lab matrix -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MatrixOutput {
    /// For people: a legend and aligned columns, each pair's outcome.
    Text,
    /// For programs: `allowed` as `policy matrix -o json`, and each pair's `outcomes`.
    Json,
    /// The truth table as `policy matrix` prints it (`.` got through, `X` did not).
    Tsv,
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
struct KubeconfigArgs {
    #[command(flatten)]
    lab: NameArgs,
    /// The kubeconfig for clients inside the lab's network (run in a Node's namespace, the
    /// external one or an IPv4 Pod's): the API server at its address on the lab's underlay,
    /// port 6443.
    #[arg(long)]
    in_lab: bool,
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
    /// NS/POD, POD (in -n's namespace), node/NAME or external.
    target: String,
    /// The namespace of a bare POD.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs a `lab` subcommand. Each Node's agent (`lab internal agent ...`) builds its back end
/// ([`netd_agent::backend`]) from the mode and options the lab was built with.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up(a) => up(a),
        LabCommand::Apply(a) => {
            let lab = a.lab.open()?;
            let objects = a.validate.load(&a.files, lab.state()?.config())?;
            for change in lab.apply(objects)? {
                crate::out::line(&change)?;
            }
            Ok(())
        }
        LabCommand::Delete(a) => delete(a),
        LabCommand::Get(a) => {
            let state = a.lab.open()?.state()?;
            a.what.print(&state)
        }
        LabCommand::Probe(a) => probe(a),
        LabCommand::Matrix(a) => {
            let lab = a.lab.open()?;
            let spec = ProbeSpec {
                port: Some(a.port),
                protocol: a.protocol.parse()?,
                count: 1,
                timeout: Duration::from_millis(a.timeout_ms),
                family: a.ip_family,
            };
            let m = lab.probe_matrix(&spec, &a.namespaces)?;
            for ns in &a.namespaces {
                if !m.pods().iter().any(|p| p.namespace.as_str() == ns) {
                    eprintln!("note: no pods in namespace {ns}");
                }
            }
            match a.output {
                MatrixOutput::Text => crate::out::stdout(&m.to_text())?,
                MatrixOutput::Json => crate::out::stdout(&format!("{}\n", m.to_json()))?,
                MatrixOutput::Tsv => match m.allowed() {
                    Some(table) => crate::out::stdout(&table.to_text())?,
                    None => bail!("-o tsv compares with `policy matrix`, which has no ICMP"),
                },
            }
            Ok(())
        }
        LabCommand::Exec(a) => {
            let lab = a.lab.open()?;
            let place = Place::parse(&a.target, &a.namespace)?;
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
        LabCommand::List(a) => list(a),
        LabCommand::Restart(a) => {
            let lab = a.lab.open()?;
            let stop = if a.kill {
                AgentStop::Kill
            } else {
                AgentStop::Terminate
            };
            let started = Instant::now();
            lab.restart_agent_with(&a.node.as_str().into(), stop)?;
            crate::out::line(format_args!(
                "agent of node {} restarted; the node converged in {:.1}s",
                a.node,
                started.elapsed().as_secs_f64()
            ))?;
            Ok(())
        }
        LabCommand::Kubeconfig(a) => {
            let lab = a.lab.open()?;
            let path = if a.in_lab {
                lab.in_lab_kubeconfig()
            } else {
                lab.kubeconfig()
            };
            let path = path.with_context(|| format!("lab {} has no API server", a.lab.name))?;
            Ok(crate::out::line(path.display())?)
        }
        LabCommand::Down(a) => {
            if netd_lab::down(&a.name, &a.state_root)? {
                crate::out::line(format_args!("lab {} removed", a.name))?;
            } else {
                crate::out::line(format_args!("no lab named {} was running", a.name))?;
            }
            Ok(())
        }
        LabCommand::Internal { args } => Ok(netd_lab::helper_main(&args, &netd_agent::backend)?),
    }
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut config = a.network.config();
    if let Some(families) = a.ip_family {
        let ranges = ClusterConfig::for_families(families);
        config.cluster_cidrs = ranges.cluster_cidrs;
        config.service_cidrs = ranges.service_cidrs;
        config.dns_service_ip = ranges.dns_service_ip;
        config.node_network_v6 = ranges.node_network_v6;
    } else if config.cluster_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        // IPv6 pod ranges given by hand: the nodes need IPv6 addresses to route them.
        config.node_network_v6 = ClusterConfig::for_families(IpFamilies::Dual).node_network_v6;
    }
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
    options.localhost_nodeports = a.localhost_nodeports;
    options.mode = a.mode.into();
    options.api_server = true;
    let lab = Lab::up(options, objects, resolver())?;
    let state = lab.state()?;
    crate::out::line(format_args!(
        "lab {} is up: {} nodes, {} pods, {} services in {:.1}s (state in {})",
        lab.name(),
        state.nodes().count(),
        state.pods().count(),
        state.services().count(),
        started.elapsed().as_secs_f64(),
        lab.state_dir().display()
    ))?;
    if let Some(kubeconfig) = lab.kubeconfig() {
        crate::out::line(format_args!("export KUBECONFIG={}", kubeconfig.display()))?;
    }
    lab.detach();
    Ok(())
}

fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let ids = a.ids()?;
    let lab = a.lab.open()?;
    let changes = lab.delete(&ids)?;
    let mut missing = 0;
    for change in &changes {
        if change.action != Action::NotFound {
            crate::out::line(change)?;
        } else if !a.ignore_not_found {
            missing += 1;
            eprintln!(
                "Error from server (NotFound): {} {:?} not found",
                change.id.kind.resource(),
                change.id.name
            );
        }
    }
    if missing > 0 {
        bail!(
            "{missing} of {} objects to delete were not found",
            changes.len()
        );
    }
    Ok(())
}

fn list(a: ListArgs) -> anyhow::Result<()> {
    let labs = netd_lab::list(&a.lab.state_root)?;
    let now = SystemTime::now();
    let age = |lab: &netd_lab::LabSummary| {
        lab.created
            .and_then(|c| now.duration_since(c).ok())
            .map(|d| d.as_secs())
    };
    let status = |lab: &netd_lab::LabSummary| match lab.agents_running {
        n if n == lab.nodes => "Running".to_owned(),
        0 => "Stopped".to_owned(),
        n => format!("Degraded ({n}/{} agents)", lab.nodes),
    };
    if a.output == TextOrJson::Json {
        let labs: Vec<_> = labs
            .iter()
            .map(|lab| {
                serde_json::json!({
                    "name": lab.name,
                    "current": lab.name == a.lab.name,
                    "nodes": lab.nodes,
                    "agentsRunning": lab.agents_running,
                    "mode": lab.mode,
                    "status": status(lab),
                    "ageSeconds": age(lab),
                    "stateDir": lab.state_dir,
                })
            })
            .collect();
        crate::out::line(serde_json::to_string_pretty(&labs)?)?;
        return Ok(());
    }
    if labs.is_empty() {
        crate::out::line(format_args!(
            "No labs found in {}",
            a.lab.state_root.display()
        ))?;
        return Ok(());
    }
    let mut rows = vec![[
        "CURRENT".to_owned(),
        "NAME".to_owned(),
        "NODES".to_owned(),
        "MODE".to_owned(),
        "STATUS".to_owned(),
        "AGE".to_owned(),
    ]];
    for lab in &labs {
        rows.push([
            if lab.name == a.lab.name { "*" } else { "" }.to_owned(),
            lab.name.clone(),
            lab.nodes.to_string(),
            lab.mode.clone(),
            status(lab),
            age(lab).map_or_else(|| "<unknown>".to_owned(), human_age),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        crate::out::line(cells.join("   ").trim_end())?;
    }
    Ok(())
}

/// An age as kubectl prints one: `45s`, `12m`, `5h`, `3d`.
fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
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
    // As `lab up`: the cluster DNS Pod watches the lab's API (a `--keep` lab answers names).
    lab.api_server = true;
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
    let from = Place::parse(&a.from, &a.namespace)?;
    let to = Target::parse(&a.to, &a.namespace)?;
    let lab = a.lab.open()?;
    let protocol: ProbeProtocol = a.protocol.parse()?;
    if a.port.is_none() && matches!(protocol, ProbeProtocol::Tcp | ProbeProtocol::Udp) {
        bail!("a {protocol} probe needs --port");
    }
    let spec = ProbeSpec {
        port: a.port,
        protocol,
        count: a.count,
        timeout: Duration::from_millis(a.timeout_ms),
        family: a.ip_family,
    };
    if let Some(hold) = a.hold {
        return probe_hold(&lab, &a, &from, &to, &spec, hold);
    }
    let results = lab.probe(&from, &to, &spec)?;
    for result in &results {
        match a.output {
            TextOrJson::Text => crate::out::line(result)?,
            TextOrJson::Json => crate::out::line(serde_json::to_string(&result)?)?,
        }
    }
    let failed = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Connected | Outcome::Answered))
        .count();
    if failed > 0 {
        bail!("{failed} of {} attempts did not connect", results.len());
    }
    Ok(())
}

/// `lab probe --hold`: `a.count` connections held in parallel.
fn probe_hold(
    lab: &Lab,
    a: &ProbeArgs,
    from: &Place,
    to: &Target,
    spec: &ProbeSpec,
    hold: Duration,
) -> anyhow::Result<()> {
    if spec.protocol != ProbeProtocol::Tcp {
        bail!(
            "--hold keeps a TCP connection open; it cannot be used with --protocol {}",
            spec.protocol
        );
    }
    let port = spec.port.context("a tcp probe needs --port")?;
    let results = lab.hold(from, to, port, spec, hold)?;
    for result in &results {
        match a.output {
            TextOrJson::Text => crate::out::line(result)?,
            TextOrJson::Json => crate::out::line(serde_json::to_string(&result)?)?,
        }
    }
    let lost = results.iter().filter(|r| !r.survived).count();
    if lost > 0 {
        bail!(
            "{lost} of {} held connections did not survive",
            results.len()
        );
    }
    Ok(())
}

/// `--hold SECONDS`: a positive number of seconds, fractions allowed.
fn parse_hold(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--ip-family` of a probe: one family.
fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s {
        "ipv4" => Ok(IpFamily::V4),
        "ipv6" => Ok(IpFamily::V6),
        _ => Err(format!("{s:?} is not one of ipv4, ipv6")),
    }
}

fn resolver() -> Resolver {
    Arc::new(|objects, config, previous| Ok(netd_controlplane::resolve(objects, config, previous)?))
}

#[cfg(test)]
mod tests {
    use super::human_age;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let ages: Vec<String> = [0, 119, 120, 10_799, 10_800, 172_799, 172_800]
            .into_iter()
            .map(human_age)
            .collect();
        assert_eq!(ages, ["0s", "119s", "2m", "179m", "3h", "47h", "2d"]);
    }
}
