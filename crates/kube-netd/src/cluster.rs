//! Flags shared by every command that reads manifests, and the path from files to a resolved
//! [`ClusterState`]: load and validate, then run the embedded control plane.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use anyhow::Context as _;
use ipnet::IpNet;
use netd_model::{ClusterConfig, ClusterState, FieldValidation, Object};

/// Manifests and the cluster's address plan.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub validate: ValidateArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// kubectl's `--validate`: what to do with fields an object's type does not have.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct ValidateArgs {
    /// Unknown fields: `strict` (or `true`) refuses the manifests, `warn` drops them with a
    /// warning, `ignore` (or `false`) drops them silently. As kubectl's `--validate`.
    #[arg(long = "validate", value_name = "MODE", default_value = "strict", value_parser = parse_validation)]
    pub validation: FieldValidation,
}

impl ValidateArgs {
    /// Loads and validates manifests; warnings (unknown kinds, ignored fields) go to the log.
    pub fn load(&self, files: &[PathBuf], config: &ClusterConfig) -> anyhow::Result<Vec<Object>> {
        let manifests = netd_model::load::load_with(files, config, self.validation)?;
        for warning in &manifests.warnings {
            tracing::warn!("{warning}");
        }
        Ok(manifests.into_objects())
    }
}

/// The cluster's address plan; defaults are kubeadm's.
#[derive(Clone, Debug, clap::Args)]
pub struct NetworkArgs {
    /// Pod address range, cut into one podCIDR per Node. Repeat once per IP family.
    #[arg(
        long = "cluster-cidr",
        value_name = "CIDR",
        default_value = "10.244.0.0/16"
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service (ClusterIP) range. Repeat once per IP family, in the same order.
    #[arg(
        long = "service-cidr",
        value_name = "CIDR",
        default_value = "10.96.0.0/12"
    )]
    pub service_cidrs: Vec<IpNet>,
    /// The range nodePorts are allocated from.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: RangeInclusive<u16>,
    /// The pool LoadBalancer Services get their ingress IPs from (as MetalLB would).
    #[arg(
        long = "lb-pool",
        value_name = "CIDR",
        default_value = "172.18.255.0/24"
    )]
    pub load_balancer_pool: IpNet,
    /// The range Node addresses are allocated from.
    #[arg(long, value_name = "CIDR", default_value = "172.18.0.0/24")]
    pub node_network: IpNet,
    /// Nodes to create (`node-1` … `node-N`) when the manifests declare none.
    #[arg(long = "nodes", value_name = "N", default_value_t = 2)]
    pub node_count: usize,
    /// The cluster DNS zone.
    #[arg(
        long = "cluster-domain",
        value_name = "ZONE",
        default_value = "cluster.local"
    )]
    pub dns_zone: String,
    /// The ClusterIP of the cluster DNS Service, kube-system/kube-dns.
    #[arg(long = "cluster-dns", value_name = "IP", default_value = "10.96.0.10")]
    pub dns_service_ip: IpAddr,
}

impl NetworkArgs {
    /// The settings as a [`ClusterConfig`].
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            cluster_cidrs: self.cluster_cidrs.clone(),
            service_cidrs: self.service_cidrs.clone(),
            node_port_range: self.node_port_range.clone(),
            node_network: self.node_network,
            load_balancer_pool: self.load_balancer_pool,
            default_node_count: self.node_count,
            dns_zone: self.dns_zone.clone(),
            dns_service_ip: self.dns_service_ip,
            ..ClusterConfig::default()
        }
    }
}

impl ClusterArgs {
    /// Loads, validates and resolves the manifests into the state a cluster would have, with
    /// the add-ons every cluster has (the cluster DNS) as `lab up` adds them: so `get`,
    /// `policy`, `render`, `trace` and `dns serve` describe the cluster the lab runs.
    /// Warnings (unknown kinds, ignored fields) go to the log.
    pub fn resolve(&self) -> anyhow::Result<ClusterState> {
        let config = self.network.config();
        let objects = self.validate.load(&self.files, &config)?;
        netd_controlplane::resolve(
            netd_controlplane::with_addons(objects, &config),
            &config,
            None,
        )
        .context("resolving the cluster")
    }
}

fn parse_validation(s: &str) -> Result<FieldValidation, String> {
    match s {
        "strict" | "true" => Ok(FieldValidation::Strict),
        "warn" => Ok(FieldValidation::Warn),
        "ignore" | "false" => Ok(FieldValidation::Ignore),
        _ => Err(format!(
            "{s:?} is not one of strict (or true), warn, ignore (or false)"
        )),
    }
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || b < a {
        return Err(format!("{s:?} is not a range of ports"));
    }
    Ok(a..=b)
}
