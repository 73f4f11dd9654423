//! The back-end seam: what a Node's plans are rendered into, and who owns those kernel objects.
//!
//! Every back end (iptables + ipset today; nftables and IPVS behind the same trait) is a
//! renderer from the same plans — the service plan of `netd-proxy` and the NetworkPolicy plan
//! of `netd-policy` — and an applier that owns its kernel objects. Callers (the lab's agents,
//! `kube-netd render`, `kube-netd cleanup`) hold a `Box<dyn Backend>` and never ask which one
//! it is: each [`Backend::sync`] is full the first time, after a failure and when asked, and
//! partial otherwise, as the back end decides.
//!
//! [`backend`] builds the back end a [`BackendConfig`] names; [`remove_other_modes`] takes out
//! what the other modes left in a namespace, as kube-proxy does when a node switches mode.
//! What every mode honours — kube-proxy's settings and NetworkPolicy on or off — is one
//! [`ProgramConfig`], from which each back end takes its service and policy plans.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use netd_model::{ClusterState, NodeName, ServiceRef};
use netd_policy::PolicyPlan;
use netd_proxy::{NodePortAddresses, ProxyOptions, ProxySettings};
use prometheus_client::registry::Registry;

use crate::error::AgentError;
use crate::ipvs::{Ipvs, IpvsConfig};
use crate::nft::Nftables;
use crate::programmer::{IncrementalProgrammer, NodeProgrammer};
use crate::rules::Programmer;
use crate::sync::{InNamespace, SyncEngine, SyncMetrics, SyncReport};

/// A proxy mode: which kernel machinery a Node's rules are programmed into (kube-proxy's
/// `--proxy-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// `iptables-restore` chains in kube-proxy's layout, with ipsets for NetworkPolicy.
    #[default]
    Iptables,
    /// One nftables table per family with verdict maps.
    Nftables,
    /// IPVS virtual servers, with ipsets and a fixed handful of iptables rules.
    Ipvs,
}

impl Mode {
    /// Every mode, in the order they are documented.
    pub const ALL: [Mode; 3] = [Mode::Iptables, Mode::Nftables, Mode::Ipvs];

    /// The mode's name, as `--proxy-mode` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Ipvs => "ipvs",
        }
    }

    /// The nodePort addresses this mode programs when `--nodeport-addresses` gave `given`:
    /// as kube-proxy, nftables mode answers on the Node's primary addresses unless told.
    pub fn nodeport_addresses(self, given: NodePortAddresses) -> NodePortAddresses {
        match given {
            NodePortAddresses::All if self == Mode::Nftables => NodePortAddresses::Primary,
            other => other,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of [`Mode::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown proxy mode {0:?}: expected iptables, nftables or ipvs")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// What a back end is built from: the mode, the settings every mode honours, and IPVS mode's
/// own (read in that mode only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendConfig {
    /// The mode.
    pub mode: Mode,
    /// What every mode programs from.
    pub program: ProgramConfig,
    /// `--ipvs-*`: the scheduler, strict ARP, timeouts and excluded ranges of IPVS mode.
    pub ipvs: IpvsConfig,
}

/// The settings every back end honours, whatever its mode: kube-proxy's proxy settings and
/// whether NetworkPolicy is enforced. Each back end's plans come from here, through
/// [`ProgramConfig::proxy_options`] and [`ProgramConfig::policy_plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramConfig {
    /// `--masquerade-all`, `--nodeport-addresses`, `--detect-local-mode`,
    /// `--iptables-localhost-nodeports` (the last in iptables mode only).
    pub proxy: ProxySettings,
    /// `--network-policy` (default true): when false, a back end programs Services only, with
    /// no policy chain, set or hook.
    pub network_policy: bool,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        Self {
            proxy: ProxySettings::default(),
            network_policy: true,
        }
    }
}

impl ProgramConfig {
    /// The service planner's options for `node`: the one place every back end's come from.
    pub fn proxy_options(&self, state: &ClusterState, node: &NodeName) -> ProxyOptions {
        ProxyOptions::for_node(state, node, &self.proxy)
    }

    /// The NetworkPolicy plan of `node`, or `None` when NetworkPolicy is off.
    pub fn policy_plan(
        &self,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<Option<PolicyPlan>, AgentError> {
        if !self.network_policy {
            return Ok(None);
        }
        netd_policy::compile(state, node)
            .map(Some)
            .map_err(|source| AgentError::CompilePolicyFailed {
                node: node.clone(),
                source,
            })
    }
}

/// A Node's rules rendered into one kind of kernel machinery and kept there.
///
/// Implementations render from the plans alone (pure) and apply through `netd-kernel`, inside
/// the network namespace they are given; they touch only kernel objects they own.
pub trait Backend: Send {
    /// Which mode this is.
    fn mode(&self) -> Mode;

    /// The rules of `node` as this back end's loaders take them: what `kube-netd render`
    /// prints.
    fn render(&self, state: &ClusterState, node: &NodeName) -> Result<String, AgentError>;

    /// Brings namespace `netns` to the rules of `node` in `state`. On failure the kernel keeps
    /// what it had before the failed transaction and the next sync is full.
    fn sync(
        &mut self,
        netns: &str,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<SyncReport, AgentError>;

    /// Makes the next sync full (kube-proxy does one periodically).
    fn request_full_sync(&mut self);

    /// Registers the back end's counters in `registry`.
    fn register(&self, registry: &mut Registry);

    /// The back end's counters.
    fn metrics(&self) -> &SyncMetrics;
}

/// The back end `config` names.
pub fn backend(config: &BackendConfig) -> Box<dyn Backend> {
    let program = config.program.clone();
    match config.mode {
        Mode::Iptables => Box::new(Iptables::new(Box::new(IncrementalProgrammer::new(
            NodeProgrammer {
                program,
                ..NodeProgrammer::default()
            },
        )))),
        Mode::Nftables => Box::new(Nftables::new().with_program(program)),
        Mode::Ipvs => Box::new(Ipvs::new(config.ipvs.clone()).with_program(program)),
    }
}

/// Removes from `netns` everything the modes other than `keep` own, as kube-proxy does when a
/// node starts in a new mode. Returns how many kernel objects went.
pub fn remove_other_modes(netns: &str, keep: Mode) -> Result<usize, AgentError> {
    let mut removed = 0;
    for mode in Mode::ALL.into_iter().filter(|m| *m != keep) {
        removed += match mode {
            // IPVS mode shares iptables mode's chain names and hooks: its first sync prunes
            // iptables mode's other chains and sets in its own transaction, so removing them
            // here would only open a gap in the data path on every agent restart.
            Mode::Iptables if keep == Mode::Ipvs => 0,
            Mode::Iptables => {
                let c = crate::apply::cleanup(netns)?;
                c.hooks + c.chains + c.sets
            }
            Mode::Nftables => crate::nft::remove_tables(netns)?,
            // Its ipsets and chains are kube-netd's and went with iptables mode's above
            // unless the mode kept is iptables, whose syncs prune them.
            Mode::Ipvs => crate::ipvs::remove_objects(netns)?,
        };
    }
    Ok(removed)
}

/// The iptables back end: a [`Programmer`]'s [`NodeRules`](crate::NodeRules) synced by a
/// [`SyncEngine`] (`ipset restore`, then one `iptables-restore --noflush` per family).
pub struct Iptables {
    programmer: Box<dyn Programmer>,
    engine: SyncEngine,
}

impl Iptables {
    /// A back end whose rules come from `programmer` ([`NodeProgrammer`] for kube-netd's own;
    /// tests bring rules of their own).
    pub fn new(programmer: Box<dyn Programmer>) -> Self {
        Self {
            programmer,
            engine: SyncEngine::new(),
        }
    }

    fn rules(&self, state: &ClusterState, node: &NodeName) -> Result<crate::NodeRules, AgentError> {
        self.programmer
            .program(state, node)
            .map_err(|source| AgentError::ProgramFailed {
                node: node.clone(),
                source,
            })
    }
}

impl Backend for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn render(&self, state: &ClusterState, node: &NodeName) -> Result<String, AgentError> {
        Ok(self.rules(state, node)?.to_text())
    }

    fn sync(
        &mut self,
        netns: &str,
        state: &ClusterState,
        node: &NodeName,
    ) -> Result<SyncReport, AgentError> {
        let rules = self.rules(state, node)?;
        let checks = health_checks(&rules);
        let mut report = self.engine.sync(&mut InNamespace::new(netns), rules)?;
        report.health_checks = checks;
        Ok(report)
    }

    fn request_full_sync(&mut self) {
        self.engine.request_full_sync();
    }

    fn register(&self, registry: &mut Registry) {
        self.engine.register(registry);
    }

    fn metrics(&self) -> &SyncMetrics {
        self.engine.metrics()
    }
}

/// The health-check node ports of the primary family's plan, as a single-family kube-proxy
/// counts them.
fn health_checks(rules: &crate::NodeRules) -> BTreeMap<ServiceRef, (u16, usize)> {
    rules
        .families
        .first()
        .map(|f| f.plan.health_checks())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_they_print() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>().expect("parses"), mode);
        }
        let err = "userspace".parse::<Mode>().expect_err("not a mode");
        assert!(err.to_string().contains("\"userspace\""), "{err}");
    }

    /// [`crate::programmer::tests::CLUSTER`] and a NodePort Service `x/web` (10.96.0.5:80,
    /// nodePort 30080) with the Pod as its endpoint.
    fn cluster() -> String {
        format!("{}{}", crate::programmer::tests::CLUSTER, SERVICE)
    }

    const SERVICE: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.0.5, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: x, labels: {kubernetes.io/service-name: web}}
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1}
"#;

    fn rendered(mode: Mode, program: ProgramConfig) -> String {
        let state = netd_testkit::state(&cluster());
        backend(&BackendConfig {
            mode,
            program,
            ..BackendConfig::default()
        })
        .render(&state, &NodeName::new("node-1"))
        .expect("renders")
    }

    /// The marks of NetworkPolicy in each mode's rules: `KNP-` chains and sets (iptables,
    /// IPVS), `policy-` chains and maps (nftables).
    fn has_policy(mode: Mode, text: &str) -> bool {
        match mode {
            Mode::Iptables | Mode::Ipvs => text.contains("KNP-"),
            Mode::Nftables => text.contains("policy-"),
        }
    }

    #[test]
    fn network_policy_off_programs_services_only() {
        for mode in Mode::ALL {
            let on = rendered(mode, ProgramConfig::default());
            assert!(has_policy(mode, &on), "{mode}: {on}");
            let off = rendered(
                mode,
                ProgramConfig {
                    network_policy: false,
                    ..ProgramConfig::default()
                },
            );
            assert!(!has_policy(mode, &off), "{mode}: {off}");
            assert!(off.contains("10.96.0.5"), "{mode}: Services stay: {off}");
        }
    }

    #[test]
    fn proxy_settings_reach_every_mode() {
        let with = |proxy: ProxySettings| ProgramConfig {
            proxy,
            ..ProgramConfig::default()
        };
        // The ClusterIP masquerade rule: off-cluster senders only, then every sender.
        for (mode, detector_only, all) in [
            (
                Mode::Iptables,
                "--dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
                "--dport 80 -j KUBE-MARK-MASQ",
            ),
            (
                Mode::Nftables,
                "tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
                "tcp dport 80 jump mark-for-masquerade",
            ),
            (
                Mode::Ipvs,
                "KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
                "KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ",
            ),
        ] {
            let default = rendered(mode, ProgramConfig::default());
            assert!(default.contains(detector_only), "{mode}: {default}");
            assert!(!default.contains(all), "{mode}: {default}");
            let masquerade_all = rendered(
                mode,
                with(ProxySettings {
                    masquerade_all: true,
                    ..ProxySettings::default()
                }),
            );
            assert!(masquerade_all.contains(all), "{mode}: {masquerade_all}");

            let node_cidr = rendered(
                mode,
                with(ProxySettings {
                    detect_local: netd_proxy::DetectLocal::NodeCidr,
                    ..ProxySettings::default()
                }),
            );
            let node_range = detector_only.replace("10.244.0.0/16", "10.244.1.0/24");
            assert!(node_cidr.contains(&node_range), "{mode}: {node_cidr}");
        }
        // nodePorts on the Node's address only, in each mode's own way.
        let primary = with(ProxySettings {
            nodeport_addresses: netd_proxy::NodePortAddresses::Primary,
            ..ProxySettings::default()
        });
        // A range without any of the Node's addresses: nodePorts answer nowhere.
        let nowhere = with(ProxySettings {
            nodeport_addresses: netd_proxy::NodePortAddresses::Cidrs(vec![
                "192.168.0.0/16".parse().expect("cidr"),
            ]),
            ..ProxySettings::default()
        });
        for (mode, primary_has, nowhere_lacks) in [
            (
                Mode::Iptables,
                "this chain\" -d 172.18.0.2 -j KUBE-NODEPORTS",
                "must be the last rule in this chain",
            ),
            (Mode::Ipvs, "-A -t 172.18.0.2:30080", "172.18.0.2:30080"),
        ] {
            let text = rendered(mode, primary.clone());
            assert!(text.contains(primary_has), "{mode}: {text}");
            let text = rendered(mode, nowhere.clone());
            assert!(!text.contains(nowhere_lacks), "{mode}: {text}");
        }
        let nft = rendered(Mode::Nftables, primary);
        assert!(
            nft.contains("ip daddr @nodeport-ips") && nft.contains("elements = { 172.18.0.2 }"),
            "{nft}"
        );
        let nft = rendered(Mode::Nftables, nowhere);
        assert!(
            nft.contains("ip daddr @nodeport-ips") && !nft.contains("elements = { 172.18.0.2 }"),
            "{nft}"
        );
    }

    #[test]
    fn every_mode_has_a_back_end() {
        for mode in Mode::ALL {
            let built = backend(&BackendConfig {
                mode,
                ..BackendConfig::default()
            });
            assert_eq!(built.mode(), mode);
        }
    }
}
