//! `kube-netd dns`: cluster DNS for a real cluster, fed by watches of the API server, with
//! CoreDNS's ports and metric names (the Deployment in `deploy/dns/` runs it); and
//! `kube-netd dns serve`: the zone of a set of manifests, reloaded when the files change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use netd_dns::{
    DnsConfig, DnsServer, DomainName, ForwardConfig, PodMode, ServeConfig, Upstreams, ZoneConfig,
    ZoneUpdate,
};
use netd_model::ClusterConfig;
use netd_source::ApiOptions;
use tokio::sync::mpsc;

use crate::cluster::ClusterArgs;

/// How often the manifest files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Serve cluster DNS: by default for the cluster the API server describes, as CoreDNS does.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        kube-netd dns --kubeconfig ~/.kube/config --listen 127.0.0.1:5353 --health '' \
        --ready 127.0.0.1:8181 --metrics 127.0.0.1:9153\n  \
        kube-netd dns --config /etc/kube-netd/dns.yaml\n  \
        kube-netd dns serve -f examples/ --listen 127.0.0.1:5353"
)]
pub struct DnsArgs {
    #[command(subcommand)]
    command: Option<DnsCommand>,
    // Boxed: the flags of `dns` outweigh every other command's.
    #[command(flatten)]
    watch: Box<WatchArgs>,
}

/// `kube-netd dns` without a subcommand: every flag overrides the configuration file.
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// A configuration file (YAML: zone, ttl, pods, listen, upstreams or resolvConf, cache,
    /// stubDomains); unknown keys are refused.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kubeconfig file with the API server's address and credentials (default: the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL; overrides the kubeconfig's server.
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// Address and port to serve DNS on, UDP and TCP (default 0.0.0.0:53).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The cluster zone (default cluster.local).
    #[arg(long)]
    zone: Option<DomainName>,
    /// Resolvers for names outside the zone, IP or IP:PORT (default: /etc/resolv.conf's).
    #[arg(long = "upstream", value_name = "ADDR", value_parser = netd_dns::config::parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// Pod records: insecure, verified (watches Pods) or disabled (default insecure).
    #[arg(long)]
    pods: Option<PodMode>,
    /// TTL of answers, and of negative answers, in seconds (default 5).
    #[arg(long)]
    ttl: Option<u32>,
    /// Where to serve /health (default 0.0.0.0:8080; '' for nowhere).
    #[arg(long, value_name = "ADDR:PORT", value_parser = http_listen)]
    health: Option<Listen>,
    /// Where to serve /ready (default 0.0.0.0:8181; '' for nowhere).
    #[arg(long, value_name = "ADDR:PORT", value_parser = http_listen)]
    ready: Option<Listen>,
    /// Where to serve /metrics (default 0.0.0.0:9153; '' for nowhere).
    #[arg(long, value_name = "ADDR:PORT", value_parser = http_listen)]
    metrics: Option<Listen>,
}

/// An HTTP listener flag: an address, or nowhere (`''`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listen(Option<SocketAddr>);

fn http_listen(text: &str) -> Result<Listen, String> {
    if text.is_empty() {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address:port (or '' for nowhere)"))
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Serve the zone the manifests resolve to, until stopped; reload when the files change.
    #[command(after_help = "Examples:\n  \
        kube-netd dns serve -f examples/ --listen 127.0.0.1:5353\n  \
        dig @127.0.0.1 -p 5353 hostnames.default.svc.cluster.local\n  \
        dig @127.0.0.1 -p 5353 +tcp -x 10.108.229.168\n  \
        kube-netd dns serve -f examples/ --listen 127.0.0.1:5353 --upstream 127.0.0.1:53 \
        --metrics 127.0.0.1:9153")]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address and port to serve DNS on (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// The cluster zone.
    #[arg(long, default_value = "cluster.local")]
    zone: DomainName,
    /// Resolvers for names outside the zone; from /etc/resolv.conf when none is given.
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    upstreams: Vec<SocketAddr>,
    /// Pod records (`a-b-c-d.<ns>.pod.<zone>`): insecure, verified or disabled.
    #[arg(long, default_value = "insecure")]
    pods: PodMode,
    /// TTL of answers, and of negative answers (the SOA minimum), in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Where to serve /metrics, /health and /ready over HTTP.
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `dns` or one of its subcommands.
pub fn run(args: DnsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match args.command {
        Some(DnsCommand::Serve(serve_args)) => runtime.block_on(serve(serve_args)),
        None => {
            let config = args.watch.config()?;
            runtime.block_on(watch(*args.watch, config))
        }
    }
}

impl WatchArgs {
    /// The configuration file's values (or the defaults), with the flags over them.
    fn config(&self) -> anyhow::Result<DnsConfig> {
        let mut config = match &self.config {
            Some(path) => DnsConfig::read(path)?,
            None => DnsConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen.dns = listen;
        }
        if let Some(zone) = &self.zone {
            config.zone.origin = zone.clone();
        }
        if !self.upstreams.is_empty() {
            config.upstreams = Upstreams::Addresses(self.upstreams.clone());
        }
        if let Some(pods) = self.pods {
            config.zone.pods = pods;
        }
        if let Some(ttl) = self.ttl {
            config.zone.ttl = ttl;
        }
        for (flag, slot) in [
            (self.health, &mut config.listen.health),
            (self.ready, &mut config.listen.ready),
            (self.metrics, &mut config.listen.metrics),
        ] {
            if let Some(Listen(addr)) = flag {
                *slot = addr;
            }
        }
        Ok(config)
    }

    fn api(&self) -> ApiOptions {
        ApiOptions {
            kubeconfig: self.kubeconfig.clone(),
            master: self.master.clone().filter(|m| !m.is_empty()),
        }
    }
}

/// `kube-netd dns`: binds everything, then serves while the watches fill the store
/// ([`netd_source::serve_dns`]: SERVFAIL for cluster names until every first list is
/// complete, then one zone that follows each changed object).
async fn watch(args: WatchArgs, config: DnsConfig) -> anyhow::Result<()> {
    let serve_config = config.serve_config()?;
    let client = args.api().client().await?;
    let pods = config.zone.pods == PodMode::Verified;
    let server = DnsServer::bind(serve_config).await?;
    announce(&server, &config.zone.origin);
    netd_source::serve_dns(
        server,
        client,
        ClusterConfig::default(),
        pods,
        crate::agent_cmd::shutdown(),
    )
    .await?;
    Ok(())
}

fn announce(server: &DnsServer, zone: &DomainName) {
    eprintln!(
        "serving DNS for {zone} on {} (UDP and TCP)",
        server.local_addr()
    );
    for (what, addr) in [
        ("health", server.health_addr()),
        ("ready", server.ready_addr()),
        ("metrics", server.metrics_addr()),
    ] {
        if let Some(addr) = addr {
            eprintln!("{what} on http://{addr}/{what}");
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let upstreams = if args.upstreams.is_empty() {
        netd_dns::read_resolv_conf(Path::new("/etc/resolv.conf")).unwrap_or_else(|e| {
            tracing::warn!("no upstream resolvers: {e}");
            Vec::new()
        })
    } else {
        args.upstreams.clone()
    };
    let config = ServeConfig {
        listen: args.listen,
        zone: ZoneConfig {
            origin: args.zone.clone(),
            ttl: args.ttl,
            pods: args.pods,
        },
        forward: ForwardConfig {
            upstreams,
            ..ForwardConfig::default()
        },
        // `dns serve` keeps one HTTP port for all three paths.
        metrics_listen: args.metrics,
        health_listen: args.metrics,
        ready_listen: args.metrics,
    };
    let state = Arc::new(args.cluster.resolve()?);
    // The server drops each snapshot once its zone is built: nothing here keeps one.
    let (tx, rx) = mpsc::channel(1);
    let server = DnsServer::bind(config).await?;
    eprintln!(
        "serving DNS for {} on {} (UDP and TCP)",
        args.zone,
        server.local_addr()
    );
    if let Some(addr) = server.metrics_addr() {
        eprintln!("metrics, health and readiness on http://{addr}/");
    }
    let reload = tokio::spawn(reload_on_change(args.cluster.clone(), tx));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = server.run_updates(state, rx, shutdown).await;
    reload.abort();
    Ok(result?)
}

/// Re-resolves the manifests whenever a file under them changes; a bad edit is logged and the
/// last good zone keeps answering.
async fn reload_on_change(cluster: ClusterArgs, tx: mpsc::Sender<ZoneUpdate>) {
    let mut seen = fingerprint(&cluster.files);
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let now = fingerprint(&cluster.files);
        if now == seen {
            continue;
        }
        seen = now;
        let args = cluster.clone();
        match tokio::task::spawn_blocking(move || args.resolve()).await {
            Ok(Ok(state)) => {
                tracing::info!("manifests changed: zone reloaded");
                if tx
                    .send(ZoneUpdate::Snapshot(Arc::new(state)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Err(e)) => tracing::error!("manifests changed but cannot be loaded: {e:#}"),
            Err(e) => tracing::error!("reloading the manifests failed: {e}"),
        }
    }
}

/// Paths and modification times of every file under the manifest paths (stdin excluded).
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .cloned()
        .collect();
    while let Some(path) = stack.pop() {
        match std::fs::read_dir(&path) {
            Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
            Err(_) => {
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                out.push((path, modified));
            }
        }
    }
    out.sort();
    out
}
