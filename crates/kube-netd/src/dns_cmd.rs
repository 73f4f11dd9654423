//! `kube-netd dns serve`: the cluster DNS zone of a set of manifests, served over UDP and TCP,
//! reloaded when the files change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use netd_dns::{
    DnsServer, DomainName, ForwardConfig, PodMode, ServeConfig, ZoneConfig, ZoneUpdate,
};
use tokio::sync::mpsc;

use crate::cluster::ClusterArgs;

/// How often the manifest files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Serve cluster DNS.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    #[command(subcommand)]
    command: DnsCommand,
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

/// Runs a `dns` subcommand.
pub fn run(args: DnsArgs) -> anyhow::Result<()> {
    let DnsCommand::Serve(args) = args.command;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args))
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
        metrics_listen: args.metrics,
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
