//! [`AgentError`]: what failed while building or applying a Node's rules.

use netd_kernel::KernelError;
use netd_model::NodeName;
use netd_policy::PolicyError;
use netd_proxy::IpFamily;
use netd_render::TraceError;
use netd_render::nft::NftTraceError;

/// Building or applying a Node's rules failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Node's rules could not be built.
    #[error("cannot build the rules of node {node}")]
    ProgramFailed {
        /// The Node.
        node: NodeName,
        /// The cause.
        #[source]
        source: crate::BoxError,
    },
    /// The NetworkPolicy plan of the Node could not be compiled.
    #[error("cannot compile the network policy plan of node {node}")]
    CompilePolicyFailed {
        /// The Node.
        node: NodeName,
        /// The cause.
        #[source]
        source: PolicyError,
    },
    /// A step of applying the rules into a namespace failed; the kernel keeps what it had
    /// before that step (each step is one transaction).
    #[error("cannot {step} in namespace {namespace}")]
    ApplyFailed {
        /// The namespace.
        namespace: String,
        /// The step: `load ipsets`, `read iptables`, `restore iptables` (`ip6tables` for
        /// IPv6), `list ipsets`, `destroy stale ipsets`.
        step: &'static str,
        /// The cause.
        #[source]
        source: KernelError,
    },
    /// An nftables table (or update) could not be lowered to netlink; nothing was sent.
    #[error("cannot lower the {family:?} nftables rules to netlink")]
    NftLowerFailed {
        /// The IP family of the table.
        family: IpFamily,
        /// The cause.
        #[source]
        source: crate::nft::lower::LowerError,
    },
    /// The kernel refused (or could not be sent) one nftables transaction; it applied
    /// nothing of it, so the previous table is in place.
    #[error("cannot {step} in namespace {namespace}")]
    NftApplyFailed {
        /// The namespace.
        namespace: String,
        /// The step: `load the ip kube-netd table` (`ip6` for IPv6).
        step: &'static str,
        /// The cause.
        #[source]
        source: netd_kernel::nftnl::NftError,
    },
    /// The rules are in place, but deleting stale UDP/SCTP conntrack entries failed; it is
    /// tried again after the next sync.
    #[error("cannot delete stale {family} conntrack entries in namespace {namespace}")]
    ConntrackCleanupFailed {
        /// The namespace.
        namespace: String,
        /// The IP family.
        family: IpFamily,
        /// The cause.
        #[source]
        source: KernelError,
    },
    /// Removing kube-netd's rules from a namespace failed.
    #[error("cannot {step} while cleaning up namespace {namespace}")]
    CleanupFailed {
        /// The namespace.
        namespace: String,
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: KernelError,
    },
    /// Pods on this Node share a bridge whose traffic NetworkPolicy cannot see
    /// (`br_netfilter` missing, or its sysctls cannot be turned on): policy between them is
    /// not enforced.
    #[error(
        "NetworkPolicy is not enforced between the pods on bridge(s) {bridges} in namespace {namespace}: bridged traffic does not reach the policy rules"
    )]
    PolicyNotEnforced {
        /// The namespace.
        namespace: String,
        /// The bridges with pod ports, comma-separated (empty if they could not be listed).
        bridges: String,
        /// The cause.
        #[source]
        source: Box<KernelError>,
    },
    /// A packet was traced to a Node the cluster does not have.
    #[error("cannot trace through node {node}: no such node")]
    TraceUnknownNode {
        /// The Node.
        node: NodeName,
    },
    /// A packet of an IP family the Node does not program was traced.
    #[error("cannot trace an {family:?} packet through node {node}: it has no {family:?} rules")]
    TraceNoFamily {
        /// The Node.
        node: NodeName,
        /// The packet's family.
        family: IpFamily,
    },
    /// The tracer could not walk the Node's rules.
    #[error("cannot trace through the rules of node {node}")]
    TraceFailed {
        /// The Node.
        node: NodeName,
        /// The cause.
        #[source]
        source: TraceError,
    },
    /// The tracer could not walk the Node's nftables table.
    #[error("cannot trace through the nftables table of node {node}")]
    NftTraceFailed {
        /// The Node.
        node: NodeName,
        /// The cause.
        #[source]
        source: NftTraceError,
    },
}
