//! `kube-netd agent`: kube-proxy (and NetworkPolicy) for the Node this process runs on, fed
//! by the API server.
//!
//! Flags and the `--config` file use kube-proxy's names. As kube-proxy does, when `--config`
//! is given the file is the whole configuration and the flags it covers are ignored (a
//! warning names each one that was set); only `--hostname-override` still overrides the
//! file. Flags that are not part of `KubeProxyConfiguration` (`--master`, `--cleanup`,
//! `--config`, `--network-policy`) always count.
//!
//! The loop itself, once these are read, is [`netd_daemon::serve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use netd_agent::ipvs::{DEFAULT_DRAIN_TIMEOUT, SCHEDULERS, Timeouts};
use netd_agent::{BackendConfig, IpvsConfig, Mode, ProgramConfig};
use netd_daemon::AgentConfig;
use netd_kernel::netns;
use netd_model::NodeName;
use netd_proxy::{DetectLocal, NodePortAddresses, ProxySettings};
use netd_source::{ApiOptions, RunnerConfig};
use serde::Deserialize;

/// `kube-netd agent` flags (kube-proxy's names).
#[derive(Debug, Default, clap::Args)]
pub struct AgentArgs {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1). When given, the
    /// flags it covers are ignored, as in kube-proxy; --hostname-override still applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kubeconfig file with the API server's address and credentials (default: the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL; overrides the kubeconfig's server.
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// The Node's name, instead of this machine's hostname.
    #[arg(long, value_name = "NAME")]
    hostname_override: Option<String>,
    /// iptables (the default), nftables or ipvs.
    #[arg(long, value_name = "MODE")]
    proxy_mode: Option<String>,
    /// The pod ranges (comma-separated, one per family) that tell pod traffic from
    /// off-cluster traffic.
    #[arg(long, value_name = "CIDRS")]
    cluster_cidr: Option<String>,
    #[command(flatten)]
    detect_local: DetectLocalArgs,
    /// The Node's addresses nodePorts answer on: CIDRs (comma-separated; the Node's
    /// addresses inside them), or primary (the Node's primary address of each family).
    /// Default: every local address; primary in nftables mode, as kube-proxy's.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    nodeport_addresses: Option<Vec<String>>,
    /// SNAT every packet sent to a ClusterIP, from pods too.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    masquerade_all: Option<bool>,
    /// iptables mode: nodePorts also answer on 127.0.0.1 (IPv4; the agent sets
    /// route_localnet=1, and KUBE-FIREWALL drops the martian packets that lets in). Off by
    /// default, unlike kube-proxy's (CVE-2020-8558); the other modes have no localhost
    /// nodePorts.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    iptables_localhost_nodeports: Option<bool>,
    /// The least time between two syncs (Go duration, default 1s).
    #[arg(long, value_name = "DURATION")]
    min_sync_period: Option<String>,
    /// The most time between two syncs, and the retry delay after a failed one (default 30s).
    #[arg(long, value_name = "DURATION")]
    sync_period: Option<String>,
    /// Where /healthz and /livez are served (default 0.0.0.0:10256).
    #[arg(long, value_name = "ADDR:PORT")]
    healthz_bind_address: Option<String>,
    /// Where /metrics is served (default 127.0.0.1:10249).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_bind_address: Option<String>,
    /// IPVS mode's scheduler: rr (the default), wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq
    /// or mh.
    #[arg(long, value_name = "NAME")]
    ipvs_scheduler: Option<String>,
    /// IPVS mode: arp_ignore=1 and arp_announce=2, so the Node answers no ARP request for
    /// the Service addresses on kube-ipvs0.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    ipvs_strict_arp: Option<bool>,
    /// IPVS mode: the idle timeout of established TCP connections (Go duration; 0, the
    /// default, keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_tcp_timeout: Option<String>,
    /// IPVS mode: the timeout of TCP connections after a FIN (0 keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_tcpfin_timeout: Option<String>,
    /// IPVS mode: the timeout of UDP flows (0 keeps the kernel's).
    #[arg(long, value_name = "DURATION")]
    ipvs_udp_timeout: Option<String>,
    /// IPVS mode: ranges (comma-separated) whose virtual servers are left alone when stale
    /// ones are removed.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    ipvs_exclude_cidrs: Option<Vec<String>>,
    /// IPVS mode: --sync-period, as kube-proxy's older flag (wins over --sync-period in IPVS
    /// mode; ignored in the other modes).
    #[arg(long, value_name = "DURATION")]
    ipvs_sync_period: Option<String>,
    /// IPVS mode: --min-sync-period, as kube-proxy's older flag (wins over
    /// --min-sync-period in IPVS mode; ignored in the other modes).
    #[arg(long, value_name = "DURATION")]
    ipvs_min_sync_period: Option<String>,
    /// Remove everything kube-netd owns in this network namespace, in every mode, and exit.
    #[arg(long)]
    cleanup: bool,
    /// Enforce NetworkPolicy; false programs Services only (no policy chains or sets).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
}

/// kube-proxy's flags that say how pod traffic is told from other traffic (for `kube-netd
/// agent` and `render`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DetectLocalArgs {
    /// How pod traffic is told from other traffic: ClusterCIDR (the default: from the
    /// cluster's pod ranges, --cluster-cidr), NodeCIDR (the Node's spec.podCIDRs),
    /// BridgeInterface (arriving on --pod-bridge-interface) or InterfaceNamePrefix
    /// (arriving on an interface named --pod-interface-name-prefix...).
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The pods' bridge, for --detect-local-mode=BridgeInterface.
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,
    /// The prefix of the pods' interface names, for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
}

impl DetectLocalArgs {
    /// The detector these name (none given: ClusterCIDR).
    pub fn parse(&self) -> Result<DetectLocal, netd_proxy::BadSetting> {
        DetectLocal::parse(
            self.detect_local_mode.as_deref().unwrap_or_default(),
            self.pod_bridge_interface.as_deref(),
            self.pod_interface_name_prefix.as_deref(),
        )
    }
}

/// The IPVS scheduler `name` asks for (unset or empty: the default, `rr`), checked against
/// [`SCHEDULERS`]; `what` names the flag (and file field) in the error.
pub fn ipvs_scheduler(name: Option<&str>, what: &str) -> anyhow::Result<String> {
    match name.filter(|s| !s.is_empty()) {
        None => Ok(IpvsConfig::default().scheduler),
        Some(name) if SCHEDULERS.contains(&name) => Ok(name.to_owned()),
        Some(name) => bail!(
            "{what}: unknown scheduler {name:?}: expected one of {}",
            SCHEDULERS.join(", ")
        ),
    }
}

/// What the agent runs with, once flags and file are merged and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// What the agent loop runs with.
    pub agent: AgentConfig,
    /// IPVS mode's scheduler, strict ARP, timeouts and excluded ranges.
    pub ipvs: IpvsConfig,
    /// `--cleanup`.
    pub cleanup: bool,
}

/// Runs `kube-netd agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let settings = resolve(args)?;
    if settings.cleanup {
        return cleanup(netns::CURRENT);
    }
    let backend = netd_agent::backend(&BackendConfig {
        mode: settings.agent.mode,
        program: settings.agent.program.clone(),
        ipvs: settings.ipvs,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    runtime.block_on(netd_daemon::serve(settings.agent, backend, shutdown()))?;
    Ok(())
}

/// Merges `args` with the `--config` file (if any) as kube-proxy does, and checks the result.
pub fn resolve(args: AgentArgs) -> anyhow::Result<Settings> {
    let from_file = match &args.config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let raw = match from_file {
        Some(file) => {
            warn_ignored(&args);
            file.into_raw(args.hostname_override.clone())
        }
        None => Raw {
            kubeconfig: args.kubeconfig.clone(),
            hostname_override: args.hostname_override.clone(),
            mode: args.proxy_mode.clone(),
            cluster_cidr: args.cluster_cidr.clone(),
            detect_local: args.detect_local.clone(),
            nodeport_addresses: args.nodeport_addresses.clone().unwrap_or_default(),
            masquerade_all: args.masquerade_all.unwrap_or(false),
            localhost_nodeports: args.iptables_localhost_nodeports.unwrap_or(false),
            periods: SyncPeriods::from_flags(&args),
            healthz_bind_address: args.healthz_bind_address.clone(),
            metrics_bind_address: args.metrics_bind_address.clone(),
            ipvs_scheduler: args.ipvs_scheduler.clone(),
            ipvs_strict_arp: args.ipvs_strict_arp.unwrap_or(false),
            ipvs_tcp_timeout: args.ipvs_tcp_timeout.clone(),
            ipvs_tcpfin_timeout: args.ipvs_tcpfin_timeout.clone(),
            ipvs_udp_timeout: args.ipvs_udp_timeout.clone(),
            ipvs_exclude_cidrs: args.ipvs_exclude_cidrs.clone().unwrap_or_default(),
        },
    };
    raw.check(args.master, args.cleanup, args.network_policy)
}

/// Removes from `ns` what every mode of kube-netd owns there.
fn cleanup(ns: &str) -> anyhow::Result<()> {
    // Keeping iptables here removes nftables and IPVS; iptables' own goes next.
    let others = netd_agent::remove_other_modes(ns, Mode::Iptables)?;
    let own = netd_agent::cleanup(ns)?;
    tracing::info!(
        others,
        hooks = own.hooks,
        chains = own.chains,
        sets = own.sets,
        "cleaned up"
    );
    crate::out::line(format_args!(
        "removed: {} hooks, {} chains, {} ipsets (iptables); {} objects of other modes",
        own.hooks, own.chains, own.sets, others
    ))?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler, Ctrl-C alone ends the agent.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `--sync-period` and `--min-sync-period` as text, and the names an error calls them by.
#[derive(Debug)]
struct SyncPeriods {
    sync_period: Option<String>,
    sync_name: &'static str,
    min_sync_period: Option<String>,
    min_sync_name: &'static str,
}

impl Default for SyncPeriods {
    fn default() -> Self {
        Self {
            sync_period: None,
            sync_name: "--sync-period (syncPeriod)",
            min_sync_period: None,
            min_sync_name: "--min-sync-period (minSyncPeriod)",
        }
    }
}

impl SyncPeriods {
    /// From the flags: in IPVS mode `--ipvs-sync-period` and `--ipvs-min-sync-period` win
    /// over the generic ones, as kube-proxy's older flags do; the other modes ignore them.
    fn from_flags(args: &AgentArgs) -> Self {
        let mut p = Self {
            sync_period: args.sync_period.clone(),
            min_sync_period: args.min_sync_period.clone(),
            ..Self::default()
        };
        if args.proxy_mode.as_deref() != Some("ipvs") {
            return p;
        }
        if let Some(v) = &args.ipvs_sync_period {
            p.sync_period = Some(v.clone());
            p.sync_name = "--ipvs-sync-period";
        }
        if let Some(v) = &args.ipvs_min_sync_period {
            p.min_sync_period = Some(v.clone());
            p.min_sync_name = "--ipvs-min-sync-period";
        }
        p
    }
}

/// The settings as text, from flags or the file, before they are checked.
#[derive(Debug, Default)]
struct Raw {
    kubeconfig: Option<PathBuf>,
    hostname_override: Option<String>,
    mode: Option<String>,
    cluster_cidr: Option<String>,
    detect_local: DetectLocalArgs,
    nodeport_addresses: Vec<String>,
    masquerade_all: bool,
    localhost_nodeports: bool,
    periods: SyncPeriods,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    ipvs_scheduler: Option<String>,
    ipvs_strict_arp: bool,
    ipvs_tcp_timeout: Option<String>,
    ipvs_tcpfin_timeout: Option<String>,
    ipvs_udp_timeout: Option<String>,
    ipvs_exclude_cidrs: Vec<String>,
}

impl Raw {
    fn check(
        self,
        master: Option<String>,
        cleanup: bool,
        network_policy: bool,
    ) -> anyhow::Result<Settings> {
        let mode = match self.mode.as_deref().filter(|m| !m.is_empty()) {
            None => Mode::Iptables,
            Some(m) => m.parse::<Mode>().context("--proxy-mode (mode)")?,
        };
        let cluster_cidrs = match self.cluster_cidr.as_deref().filter(|c| !c.is_empty()) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<IpNet>()
                        .with_context(|| format!("--cluster-cidr (clusterCIDR): {c:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let detect_local = self.detect_local.parse().context(
            "--detect-local-mode (detectLocalMode, with detectLocal.bridgeInterface or \
             detectLocal.interfaceNamePrefix)",
        )?;
        let nodeport_addresses = mode.nodeport_addresses(
            NodePortAddresses::parse(&self.nodeport_addresses)
                .context("--nodeport-addresses (nodePortAddresses)")?,
        );
        let program = ProgramConfig {
            proxy: ProxySettings {
                masquerade_all: self.masquerade_all,
                nodeport_addresses,
                detect_local,
                localhost_nodeports: mode == Mode::Iptables && self.localhost_nodeports,
            },
            network_policy,
        };
        let p = &self.periods;
        let runner = RunnerConfig {
            min_sync_period: duration(p.min_sync_period.as_deref(), "1s", p.min_sync_name)?,
            sync_period: duration(p.sync_period.as_deref(), "30s", p.sync_name)?,
        };
        if runner.sync_period.is_zero() {
            bail!("{}: must be more than 0", p.sync_name);
        }
        let ipvs = self.ipvs()?;
        let node = match self.hostname_override.filter(|h| !h.is_empty()) {
            Some(name) => name.to_lowercase(),
            None => hostname()?,
        };
        Ok(Settings {
            agent: AgentConfig {
                api: ApiOptions {
                    kubeconfig: self.kubeconfig,
                    master: master.filter(|m| !m.is_empty()),
                },
                node: NodeName::new(node),
                mode,
                cluster_cidrs,
                program,
                runner,
                healthz_bind_address: address(
                    self.healthz_bind_address.as_deref(),
                    "0.0.0.0:10256",
                    "--healthz-bind-address (healthzBindAddress)",
                )?,
                metrics_bind_address: address(
                    self.metrics_bind_address.as_deref(),
                    "127.0.0.1:10249",
                    "--metrics-bind-address (metricsBindAddress)",
                )?,
            },
            ipvs,
            cleanup,
        })
    }
}

impl Raw {
    /// IPVS mode's options, checked in every mode (a bad value is refused even where it is
    /// not used).
    fn ipvs(&self) -> anyhow::Result<IpvsConfig> {
        let scheduler = ipvs_scheduler(
            self.ipvs_scheduler.as_deref(),
            "--ipvs-scheduler (ipvs.scheduler)",
        )?;
        let timeout = |text: &Option<String>, what: &str| -> anyhow::Result<Duration> {
            let d = duration(text.as_deref(), "0", what)?;
            if d > MAX_IPVS_TIMEOUT {
                bail!(
                    "{what}: {:?} is more than the kernel takes ({}s)",
                    text.as_deref().unwrap_or_default(),
                    MAX_IPVS_TIMEOUT.as_secs()
                );
            }
            Ok(d)
        };
        let timeouts = Timeouts {
            tcp: timeout(
                &self.ipvs_tcp_timeout,
                "--ipvs-tcp-timeout (ipvs.tcpTimeout)",
            )?,
            tcp_fin: timeout(
                &self.ipvs_tcpfin_timeout,
                "--ipvs-tcpfin-timeout (ipvs.tcpFinTimeout)",
            )?,
            udp: timeout(
                &self.ipvs_udp_timeout,
                "--ipvs-udp-timeout (ipvs.udpTimeout)",
            )?,
        };
        let exclude_cidrs = self
            .ipvs_exclude_cidrs
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .with_context(|| format!("--ipvs-exclude-cidrs (ipvs.excludeCIDRs): {c:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(IpvsConfig {
            scheduler,
            strict_arp: self.ipvs_strict_arp,
            // A real server drains until its connections would have expired anyway.
            drain_timeout: if timeouts.tcp.is_zero() {
                DEFAULT_DRAIN_TIMEOUT
            } else {
                timeouts.tcp
            },
            timeouts,
            exclude_cidrs,
        })
    }
}

/// The longest IPVS timeout every kernel takes: `INT_MAX / HZ` seconds with the largest HZ.
const MAX_IPVS_TIMEOUT: Duration = Duration::from_secs(i32::MAX as u64 / 1000);

/// `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1): the fields kube-netd reads,
/// under kube-proxy's names. Any other key is refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubeProxyConfiguration {
    api_version: String,
    kind: String,
    #[serde(default)]
    client_connection: ClientConnection,
    #[serde(default)]
    hostname_override: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default, rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(default)]
    detect_local_mode: Option<String>,
    #[serde(default)]
    detect_local: DetectLocalSection,
    #[serde(default)]
    node_port_addresses: Vec<String>,
    #[serde(default)]
    healthz_bind_address: Option<String>,
    #[serde(default)]
    metrics_bind_address: Option<String>,
    /// kube-proxy ≥ 1.33: one sync period for every mode.
    #[serde(default)]
    sync_period: Option<String>,
    /// kube-proxy ≥ 1.33: one min sync period for every mode.
    #[serde(default)]
    min_sync_period: Option<String>,
    #[serde(default)]
    iptables: IptablesSection,
    #[serde(default)]
    nftables: ModeSection,
    #[serde(default)]
    ipvs: IpvsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientConnection {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

/// `detectLocal:`, the interfaces of the interface detectors.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DetectLocalSection {
    #[serde(default)]
    bridge_interface: Option<String>,
    #[serde(default)]
    interface_name_prefix: Option<String>,
}

/// `iptables:` (the fields kube-netd reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IptablesSection {
    #[serde(default)]
    masquerade_all: Option<bool>,
    #[serde(default)]
    sync_period: Option<String>,
    #[serde(default)]
    min_sync_period: Option<String>,
    #[serde(default)]
    localhost_node_ports: Option<bool>,
}

/// `nftables:`, and what IPVS mode takes from `iptables:` (the fields kube-netd reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModeSection {
    #[serde(default)]
    masquerade_all: Option<bool>,
    #[serde(default)]
    sync_period: Option<String>,
    #[serde(default)]
    min_sync_period: Option<String>,
}

/// `ipvs:` (the fields kube-netd reads; all of kube-proxy's but none).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpvsSection {
    #[serde(default)]
    sync_period: Option<String>,
    #[serde(default)]
    min_sync_period: Option<String>,
    #[serde(default)]
    scheduler: Option<String>,
    #[serde(default, rename = "excludeCIDRs")]
    exclude_cidrs: Vec<String>,
    #[serde(default, rename = "strictARP")]
    strict_arp: Option<bool>,
    #[serde(default)]
    tcp_timeout: Option<String>,
    #[serde(default)]
    tcp_fin_timeout: Option<String>,
    #[serde(default)]
    udp_timeout: Option<String>,
}

impl KubeProxyConfiguration {
    fn into_raw(self, hostname_flag: Option<String>) -> Raw {
        let ipvs_mode = self.mode.as_deref() == Some("ipvs");
        // IPVS mode takes masqueradeAll from iptables:, as kube-proxy, and its sync periods
        // from ipvs:.
        let localhost_nodeports = self.iptables.localhost_node_ports.unwrap_or(false);
        let mut section = match self.mode.as_deref() {
            Some("nftables") => self.nftables,
            _ => ModeSection {
                masquerade_all: self.iptables.masquerade_all,
                sync_period: self.iptables.sync_period,
                min_sync_period: self.iptables.min_sync_period,
            },
        };
        let ipvs = self.ipvs;
        if ipvs_mode {
            section.sync_period = ipvs.sync_period;
            section.min_sync_period = ipvs.min_sync_period;
        }
        Raw {
            kubeconfig: self
                .client_connection
                .kubeconfig
                .filter(|k| !k.as_os_str().is_empty()),
            // As kube-proxy: the flag wins over the file.
            hostname_override: hostname_flag.or(self.hostname_override),
            mode: self.mode,
            cluster_cidr: self.cluster_cidr,
            detect_local: DetectLocalArgs {
                detect_local_mode: self.detect_local_mode,
                pod_bridge_interface: self.detect_local.bridge_interface,
                pod_interface_name_prefix: self.detect_local.interface_name_prefix,
            },
            nodeport_addresses: self.node_port_addresses,
            masquerade_all: section.masquerade_all.unwrap_or(false),
            localhost_nodeports,
            periods: SyncPeriods {
                min_sync_period: self.min_sync_period.or(section.min_sync_period),
                sync_period: self.sync_period.or(section.sync_period),
                ..SyncPeriods::default()
            },
            healthz_bind_address: self.healthz_bind_address,
            metrics_bind_address: self.metrics_bind_address,
            ipvs_scheduler: ipvs.scheduler,
            ipvs_strict_arp: ipvs.strict_arp.unwrap_or(false),
            ipvs_tcp_timeout: ipvs.tcp_timeout,
            ipvs_tcpfin_timeout: ipvs.tcp_fin_timeout,
            ipvs_udp_timeout: ipvs.udp_timeout,
            ipvs_exclude_cidrs: ipvs.exclude_cidrs,
        }
    }
}

fn read_config(path: &Path) -> anyhow::Result<KubeProxyConfiguration> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: reading {}", path.display()))?;
    let config: KubeProxyConfiguration =
        serde_yaml_ng::from_str(&text).with_context(|| format!("--config {}", path.display()))?;
    if config.api_version != "kubeproxy.config.k8s.io/v1alpha1" {
        bail!(
            "--config {}: apiVersion {:?}: expected kubeproxy.config.k8s.io/v1alpha1",
            path.display(),
            config.api_version
        );
    }
    if config.kind != "KubeProxyConfiguration" {
        bail!(
            "--config {}: kind {:?}: expected KubeProxyConfiguration",
            path.display(),
            config.kind
        );
    }
    Ok(config)
}

/// Logs each flag that `--config` makes kube-proxy ignore.
fn warn_ignored(args: &AgentArgs) {
    let set = [
        ("--kubeconfig", args.kubeconfig.is_some()),
        ("--proxy-mode", args.proxy_mode.is_some()),
        ("--cluster-cidr", args.cluster_cidr.is_some()),
        (
            "--detect-local-mode",
            args.detect_local.detect_local_mode.is_some(),
        ),
        (
            "--pod-bridge-interface",
            args.detect_local.pod_bridge_interface.is_some(),
        ),
        (
            "--pod-interface-name-prefix",
            args.detect_local.pod_interface_name_prefix.is_some(),
        ),
        ("--nodeport-addresses", args.nodeport_addresses.is_some()),
        ("--masquerade-all", args.masquerade_all.is_some()),
        (
            "--iptables-localhost-nodeports",
            args.iptables_localhost_nodeports.is_some(),
        ),
        ("--min-sync-period", args.min_sync_period.is_some()),
        ("--sync-period", args.sync_period.is_some()),
        (
            "--healthz-bind-address",
            args.healthz_bind_address.is_some(),
        ),
        (
            "--metrics-bind-address",
            args.metrics_bind_address.is_some(),
        ),
        ("--ipvs-scheduler", args.ipvs_scheduler.is_some()),
        ("--ipvs-strict-arp", args.ipvs_strict_arp.is_some()),
        ("--ipvs-tcp-timeout", args.ipvs_tcp_timeout.is_some()),
        ("--ipvs-tcpfin-timeout", args.ipvs_tcpfin_timeout.is_some()),
        ("--ipvs-udp-timeout", args.ipvs_udp_timeout.is_some()),
        ("--ipvs-exclude-cidrs", args.ipvs_exclude_cidrs.is_some()),
        ("--ipvs-sync-period", args.ipvs_sync_period.is_some()),
        (
            "--ipvs-min-sync-period",
            args.ipvs_min_sync_period.is_some(),
        ),
    ];
    for (flag, _) in set.into_iter().filter(|(_, set)| *set) {
        tracing::warn!(
            flag,
            "ignored: --config is given, and the file wins as in kube-proxy"
        );
    }
}

/// A Go duration (`1s`, `500ms`, `1m30s`, `0`) or `default` when absent.
fn duration(text: Option<&str>, default: &str, what: &str) -> anyhow::Result<Duration> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or(default);
    parse_go_duration(text)
        .with_context(|| format!("{what}: {text:?} is not a duration like 1s or 500ms"))
}

fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).ok()?;
    }
    (!text.is_empty()).then_some(total)
}

/// `host:port`, or the default when absent. An address without a port is refused by name.
fn address(text: Option<&str>, default: &str, what: &str) -> anyhow::Result<SocketAddr> {
    let text = text.filter(|t| !t.is_empty()).unwrap_or(default);
    text.parse()
        .with_context(|| format!("{what}: {text:?} is not an address:port"))
}

/// This machine's hostname, lower-cased as kube-proxy does.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (give --hostname-override)")?;
    Ok(name.trim().to_lowercase())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))?;
        resolve(cli.agent)
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", settings(args).expect_err("refused"))
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write config");
        file
    }

    #[test]
    fn defaults_are_kube_proxys() {
        let s = settings(&["--hostname-override", "Node-1"]).expect("settings");
        assert_eq!(s.agent.node.as_str(), "node-1");
        assert_eq!(s.agent.mode, Mode::Iptables);
        assert_eq!(s.agent.runner, RunnerConfig::default());
        assert_eq!(s.agent.healthz_bind_address.to_string(), "0.0.0.0:10256");
        assert_eq!(s.agent.metrics_bind_address.to_string(), "127.0.0.1:10249");
        assert!(s.agent.cluster_cidrs.is_empty());
        assert_eq!(s.agent.api, ApiOptions::default());
        assert_eq!(s.agent.program, ProgramConfig::default());
        assert!(s.agent.program.network_policy);
        assert_eq!(s.ipvs, IpvsConfig::default());
        assert_eq!(s.ipvs.scheduler, "rr");
        assert_eq!(s.ipvs.timeouts.to_kernel(), None, "0 keeps the kernel's");
        assert!(!s.cleanup);
    }

    #[test]
    fn ipvs_flags_are_kube_proxys() {
        let s = settings(&[
            "--hostname-override=n",
            "--proxy-mode=ipvs",
            "--ipvs-scheduler=wlc",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=10m",
            "--ipvs-tcpfin-timeout=30s",
            "--ipvs-udp-timeout=1.5s",
            "--ipvs-exclude-cidrs=10.200.0.0/16,fd00:200::/64",
        ])
        .expect("settings");
        assert_eq!(
            s.ipvs,
            IpvsConfig {
                scheduler: "wlc".to_owned(),
                strict_arp: true,
                drain_timeout: Duration::from_secs(600),
                timeouts: Timeouts {
                    tcp: Duration::from_secs(600),
                    tcp_fin: Duration::from_secs(30),
                    udp: Duration::from_millis(1500),
                },
                exclude_cidrs: vec![
                    "10.200.0.0/16".parse().expect("net"),
                    "fd00:200::/64".parse().expect("net"),
                ],
            }
        );
        let kernel = s.ipvs.timeouts.to_kernel().expect("timeouts to set");
        assert_eq!((kernel.tcp, kernel.tcp_fin, kernel.udp), (600, 30, 1));
        for scheduler in SCHEDULERS {
            let flag = format!("--ipvs-scheduler={scheduler}");
            let s = settings(&["--hostname-override=n", &flag]).expect(scheduler);
            assert_eq!(s.ipvs.scheduler, scheduler);
        }
        let s = settings(&["--hostname-override=n", "--ipvs-udp-timeout=0"]).expect("settings");
        assert_eq!(s.ipvs.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let timeouts = Timeouts {
            udp: Duration::from_secs(5),
            ..Timeouts::default()
        };
        let kernel = timeouts.to_kernel().expect("one timeout set");
        assert_eq!((kernel.tcp, kernel.tcp_fin, kernel.udp), (0, 0, 5));
    }

    #[test]
    fn bad_ipvs_flags_are_refused_by_name() {
        for (arg, want) in [
            (
                "--ipvs-scheduler=fair",
                "--ipvs-scheduler (ipvs.scheduler): unknown scheduler \"fair\": expected one of rr, wrr",
            ),
            (
                "--ipvs-tcp-timeout=-1s",
                "--ipvs-tcp-timeout (ipvs.tcpTimeout)",
            ),
            (
                "--ipvs-tcpfin-timeout=5",
                "--ipvs-tcpfin-timeout (ipvs.tcpFinTimeout)",
            ),
            (
                "--ipvs-udp-timeout=1000h",
                "more than the kernel takes (2147483s)",
            ),
            (
                "--ipvs-exclude-cidrs=10.0.0.0/8,bogus",
                "--ipvs-exclude-cidrs (ipvs.excludeCIDRs): \"bogus\"",
            ),
            ("--ipvs-strict-arp=maybe", "--ipvs-strict-arp"),
        ] {
            let err = error(&["--hostname-override=n", "--proxy-mode=ipvs", arg]);
            assert!(err.contains(want), "{arg}: {err}");
        }
    }

    #[test]
    fn nftables_mode_defaults_to_the_primary_nodeport_addresses() {
        for (args, want) in [
            (&["--proxy-mode=nftables"][..], NodePortAddresses::Primary),
            (&["--proxy-mode=iptables"], NodePortAddresses::All),
            (&["--proxy-mode=ipvs"], NodePortAddresses::All),
            (
                &["--proxy-mode=nftables", "--nodeport-addresses=0.0.0.0/0"],
                NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().expect("net")]),
            ),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            let s = settings(&all).expect("settings");
            assert_eq!(s.agent.program.proxy.nodeport_addresses, want, "{args:?}");
        }
    }

    #[test]
    fn proxy_flags_reach_the_back_ends_config() {
        let s = settings(&[
            "--hostname-override=n",
            "--masquerade-all",
            "--nodeport-addresses=10.0.0.0/8,fd00::/64",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cni0",
            "--network-policy=false",
        ])
        .expect("settings");
        let want = ProgramConfig {
            proxy: ProxySettings {
                masquerade_all: true,
                nodeport_addresses: NodePortAddresses::Cidrs(vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "fd00::/64".parse().expect("net"),
                ]),
                detect_local: DetectLocal::BridgeInterface("cni0".parse().expect("name")),
                localhost_nodeports: false,
            },
            network_policy: false,
        };
        assert_eq!(s.agent.program, want);
        for (args, want) in [
            (
                &["--detect-local-mode=NodeCIDR"][..],
                ProxySettings {
                    detect_local: DetectLocal::NodeCidr,
                    ..ProxySettings::default()
                },
            ),
            (
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=veth",
                ],
                ProxySettings {
                    detect_local: DetectLocal::InterfaceNamePrefix("veth".parse().expect("name")),
                    ..ProxySettings::default()
                },
            ),
            (
                &["--nodeport-addresses=primary"],
                ProxySettings {
                    nodeport_addresses: NodePortAddresses::Primary,
                    ..ProxySettings::default()
                },
            ),
            (
                &["--masquerade-all=false", "--detect-local-mode=ClusterCIDR"],
                ProxySettings::default(),
            ),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            assert_eq!(
                settings(&all).expect("settings").agent.program.proxy,
                want,
                "{args:?}"
            );
        }
    }

    #[test]
    fn flags_are_read() {
        let s = settings(&[
            "--kubeconfig=/k",
            "--master=http://10.0.0.1:6443",
            "--hostname-override=n2",
            "--proxy-mode=nftables",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--detect-local-mode=ClusterCIDR",
            "--min-sync-period=500ms",
            "--sync-period=1m30s",
            "--healthz-bind-address=127.0.0.1:20256",
            "--metrics-bind-address=[::1]:20249",
            "--network-policy=true",
        ])
        .expect("settings");
        assert_eq!(s.agent.api.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(s.agent.api.master.as_deref(), Some("http://10.0.0.1:6443"));
        assert_eq!(s.agent.mode, Mode::Nftables);
        assert_eq!(
            s.agent.cluster_cidrs,
            vec![
                "10.244.0.0/16".parse::<IpNet>().expect("net"),
                "fd00:10:244::/56".parse::<IpNet>().expect("net"),
            ]
        );
        assert_eq!(s.agent.runner.min_sync_period, Duration::from_millis(500));
        assert_eq!(s.agent.runner.sync_period, Duration::from_secs(90));
        assert_eq!(s.agent.healthz_bind_address.to_string(), "127.0.0.1:20256");
        assert_eq!(s.agent.metrics_bind_address.to_string(), "[::1]:20249");
    }

    #[test]
    fn ipvs_sync_period_flags_set_the_periods_in_ipvs_mode_only() {
        let periods = |args: &[&str]| {
            let mut all = vec!["--hostname-override=node-1"];
            all.extend_from_slice(args);
            let s = settings(&all).expect("settings");
            (s.agent.runner.sync_period, s.agent.runner.min_sync_period)
        };
        let ipvs = [
            "--ipvs-sync-period=45s",
            "--ipvs-min-sync-period=2s",
            "--sync-period=1m",
            "--min-sync-period=500ms",
        ];
        let mut in_ipvs = vec!["--proxy-mode=ipvs"];
        in_ipvs.extend_from_slice(&ipvs);
        assert_eq!(
            periods(&in_ipvs),
            (Duration::from_secs(45), Duration::from_secs(2))
        );
        let mut in_iptables = vec!["--proxy-mode=iptables"];
        in_iptables.extend_from_slice(&ipvs);
        assert_eq!(
            periods(&in_iptables),
            (Duration::from_secs(60), Duration::from_millis(500))
        );
        assert_eq!(
            periods(&["--proxy-mode=ipvs", "--ipvs-sync-period=10s"]),
            (Duration::from_secs(10), Duration::from_secs(1))
        );
        for (args, want) in [
            (
                &["--proxy-mode=ipvs", "--ipvs-sync-period=0"][..],
                "--ipvs-sync-period: must be more than 0",
            ),
            (
                &["--proxy-mode=ipvs", "--ipvs-min-sync-period=soon"],
                "--ipvs-min-sync-period",
            ),
        ] {
            let mut all = vec!["--hostname-override=node-1"];
            all.extend_from_slice(args);
            let err = error(&all);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        for (args, want) in [
            (&["--proxy-mode=userspace"][..], "--proxy-mode"),
            (&["--cluster-cidr=10.244.0.0/33"], "--cluster-cidr"),
            (
                &["--detect-local-mode=BridgeInterface"],
                "--detect-local-mode",
            ),
            (&["--detect-local-mode=LinkLocal"], "--detect-local-mode"),
            (
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=veth+",
                ],
                "--pod-interface-name-prefix",
            ),
            (
                &["--nodeport-addresses=10.0.0.0/33"],
                "--nodeport-addresses",
            ),
            (&["--nodeport-addresses=10.0.0.1"], "--nodeport-addresses"),
            (
                &["--nodeport-addresses=primary,10.0.0.0/8"],
                "--nodeport-addresses",
            ),
            (&["--masquerade-all=maybe"], "--masquerade-all"),
            (&["--sync-period=30"], "--sync-period"),
            (&["--sync-period=0"], "--sync-period"),
            (&["--min-sync-period=1x"], "--min-sync-period"),
            (
                &["--healthz-bind-address=0.0.0.0"],
                "--healthz-bind-address",
            ),
            (
                &["--metrics-bind-address=nowhere:1"],
                "--metrics-bind-address",
            ),
            (&["--network-policy=no"], "--network-policy"),
        ] {
            let mut all = vec!["--hostname-override=n"];
            all.extend_from_slice(args);
            let err = error(&all);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn every_mode_is_taken() {
        for mode in Mode::ALL {
            let flag = format!("--proxy-mode={mode}");
            let s = settings(&["--hostname-override=n", &flag]).expect("settings");
            assert_eq!(s.agent.mode, mode);
        }
    }

    #[test]
    fn cleanup_takes_any_mode() {
        let s = settings(&["--hostname-override=n", "--proxy-mode=ipvs", "--cleanup"])
            .expect("cleanup in ipvs mode");
        assert!(s.cleanup);
        assert_eq!(s.agent.mode, Mode::Ipvs);
    }

    #[test]
    fn go_durations() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("1s", Some(Duration::from_secs(1))),
            ("1m0s", Some(Duration::from_secs(60))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("2h45m", Some(Duration::from_secs(2 * 3600 + 45 * 60))),
            ("250ms", Some(Duration::from_millis(250))),
            ("", None),
            ("s", None),
            ("10", None),
            ("5d", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    const CONFIG: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
hostnameOverride: from-file
mode: nftables
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
nftables:
  masqueradeAll: false
  syncPeriod: 20s
  minSyncPeriod: 2s
iptables:
  syncPeriod: 1h
";

    #[test]
    fn the_config_file_is_read_with_kube_proxys_names() {
        let file = config_file(CONFIG);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path]).expect("settings");
        assert_eq!(
            s.agent.api.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(s.agent.node.as_str(), "from-file");
        assert_eq!(s.agent.mode, Mode::Nftables);
        assert_eq!(
            s.agent.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().expect("net")]
        );
        // The nftables section, as the mode is nftables.
        assert_eq!(s.agent.runner.sync_period, Duration::from_secs(20));
        assert_eq!(s.agent.runner.min_sync_period, Duration::from_secs(2));
    }

    #[test]
    fn with_config_the_file_wins_except_hostname_override_and_master() {
        let file = config_file(CONFIG);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&[
            "--config",
            path,
            "--proxy-mode=iptables",
            "--sync-period=5s",
            "--kubeconfig=/ignored",
            "--hostname-override=from-flag",
            "--master=http://10.1.2.3:6443",
        ])
        .expect("settings");
        assert_eq!(s.agent.mode, Mode::Nftables);
        assert_eq!(s.agent.runner.sync_period, Duration::from_secs(20));
        assert_eq!(
            s.agent.api.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(s.agent.node.as_str(), "from-flag");
        assert_eq!(s.agent.api.master.as_deref(), Some("http://10.1.2.3:6443"));
    }

    #[test]
    fn the_config_file_sets_the_proxy_settings() {
        let file = config_file(&format!(
            "{}detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: veth\n\
             nodePortAddresses: [primary]\n",
            CONFIG
                .replace("detectLocalMode: ClusterCIDR\n", "")
                .replace("  masqueradeAll: false", "  masqueradeAll: true")
        ));
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path, "--network-policy=false"]).expect("settings");
        assert_eq!(
            s.agent.program,
            ProgramConfig {
                proxy: ProxySettings {
                    masquerade_all: true,
                    nodeport_addresses: NodePortAddresses::Primary,
                    detect_local: DetectLocal::InterfaceNamePrefix("veth".parse().expect("name")),
                    localhost_nodeports: false,
                },
                network_policy: false,
            }
        );
        // The mode's section: iptables' masqueradeAll in IPVS mode, as kube-proxy.
        let file = config_file(&format!(
            "{}detectLocal:\n  bridgeInterface: cni0\n",
            CONFIG
                .replace("mode: nftables", "mode: ipvs")
                .replace(
                    "detectLocalMode: ClusterCIDR",
                    "detectLocalMode: BridgeInterface"
                )
                .replace("iptables:\n", "iptables:\n  masqueradeAll: true\n")
        ));
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path]).expect("settings");
        assert!(s.agent.program.proxy.masquerade_all);
        assert_eq!(
            s.agent.program.proxy.detect_local,
            DetectLocal::BridgeInterface("cni0".parse().expect("name"))
        );
    }

    #[test]
    fn localhost_nodeports_are_iptables_modes_and_off_by_default() {
        let localhost = |flags: &[&str]| {
            settings(&[&["--hostname-override=n"], flags].concat())
                .expect("settings")
                .agent
                .program
                .proxy
                .localhost_nodeports
        };
        assert!(!localhost(&[]));
        assert!(localhost(&["--iptables-localhost-nodeports"]));
        assert!(!localhost(&["--iptables-localhost-nodeports=false"]));
        // kube-proxy's other modes have none: the flag is ignored there.
        for mode in ["nftables", "ipvs"] {
            let flag = format!("--proxy-mode={mode}");
            assert!(
                !localhost(&[&flag, "--iptables-localhost-nodeports"]),
                "{mode}"
            );
        }
        let from_file = |mode: &str| {
            let file = config_file(
                &CONFIG
                    .replace("mode: nftables", mode)
                    .replace("iptables:\n", "iptables:\n  localhostNodePorts: true\n"),
            );
            let path = file.path().to_str().expect("utf-8 path").to_owned();
            settings(&["--config", &path])
                .expect("settings")
                .agent
                .program
                .proxy
                .localhost_nodeports
        };
        assert!(from_file("mode: iptables"));
        assert!(!from_file("mode: nftables"));
    }

    #[test]
    fn the_ipvs_section_is_read_with_kube_proxys_names() {
        let text = format!(
            "{}ipvs:\n  scheduler: sh\n  strictARP: true\n  tcpTimeout: 900s\n  \
             tcpFinTimeout: 2m0s\n  udpTimeout: 0s\n  excludeCIDRs: [10.200.0.0/16]\n  \
             syncPeriod: 45s\n  minSyncPeriod: 3s\n",
            CONFIG.replace("mode: nftables", "mode: ipvs")
        );
        let file = config_file(&text);
        let path = file.path().to_str().expect("utf-8 path");
        let s = settings(&["--config", path, "--ipvs-scheduler=rr"]).expect("settings");
        assert_eq!(s.agent.mode, Mode::Ipvs);
        assert_eq!(
            s.ipvs,
            IpvsConfig {
                scheduler: "sh".to_owned(),
                strict_arp: true,
                drain_timeout: Duration::from_secs(900),
                timeouts: Timeouts {
                    tcp: Duration::from_secs(900),
                    tcp_fin: Duration::from_secs(120),
                    udp: Duration::ZERO,
                },
                exclude_cidrs: vec!["10.200.0.0/16".parse().expect("net")],
            },
            "the file wins over --ipvs-scheduler"
        );
        // IPVS mode's sync periods are the ipvs section's.
        assert_eq!(s.agent.runner.sync_period, Duration::from_secs(45));
        assert_eq!(s.agent.runner.min_sync_period, Duration::from_secs(3));

        for (section, want) in [
            ("ipvs:\n  scheduler: fair\n", "ipvs.scheduler"),
            ("ipvs:\n  tcpTimeout: 15\n", "ipvs.tcpTimeout"),
            (
                "ipvs:\n  excludeCIDRs: [10.0.0.0/33]\n",
                "ipvs.excludeCIDRs",
            ),
            ("ipvs:\n  strictArp: true\n", "strictArp"),
        ] {
            let file = config_file(&format!("{CONFIG}{section}"));
            let path = file.path().to_str().expect("utf-8 path");
            let err = error(&["--config", path]);
            assert!(err.contains(want), "{section}: {err}");
        }
    }

    #[test]
    fn bad_proxy_settings_in_the_file_are_refused_by_name() {
        for (extra, want) in [
            (
                "nodePortAddresses: [10.0.0.0/40]\ndetectLocal:\n  bridgeInterface: cni0\n",
                "nodePortAddresses",
            ),
            (
                "detectLocal:\n  bridgeInterface: a very long name\n",
                "detectLocalMode",
            ),
            (
                "detectLocal:\n  bridgeInterfaces: cni0\n",
                "bridgeInterfaces",
            ),
        ] {
            let text = format!(
                "{}{extra}",
                CONFIG.replace(
                    "detectLocalMode: ClusterCIDR",
                    "detectLocalMode: BridgeInterface"
                )
            );
            let file = config_file(&text);
            let path = file.path().to_str().expect("utf-8 path");
            let err = error(&["--config", path]);
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_config_keys_are_refused_by_name() {
        let file = config_file(&format!("{CONFIG}conntrackMaxPerCore: 1\n"));
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("conntrackMaxPerCore"), "{err}");

        let nested = CONFIG.replace("  minSyncPeriod: 2s", "  minSyncPeriodd: 2s");
        let file = config_file(&nested);
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("minSyncPeriodd"), "{err}");
    }

    #[test]
    fn a_config_of_another_kind_is_refused() {
        let file = config_file(
            &CONFIG.replace("kind: KubeProxyConfiguration", "kind: KubeletConfiguration"),
        );
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("KubeletConfiguration"), "{err}");
        let file = config_file("kind: KubeProxyConfiguration\nmode: bogus\n");
        let path = file.path().to_str().expect("utf-8 path");
        let err = error(&["--config", path]);
        assert!(err.contains("apiVersion"), "{err}");
    }
}
