//! [`LabError`]: what went wrong building, changing, probing or removing a lab.

use std::io;
use std::path::PathBuf;

use netd_kernel::KernelError;
use netd_model::{NodeName, PodRef, StateError};

/// A boxed error from a pluggable part (the control plane, a rule programmer).
pub use netd_agent::BoxError;

/// A lab operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A lab of this name already has a state directory.
    #[error("a lab named {name:?} already exists (state in {}); run `kube-netd lab down --name {name}` first", dir.display())]
    AlreadyExists {
        /// The lab.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// No lab of this name is running.
    #[error("no lab named {name:?} is running (no state in {})", dir.display())]
    NotFound {
        /// The lab.
        name: String,
        /// The state directory looked for.
        dir: PathBuf,
    },
    /// A lab name that cannot prefix namespace names.
    #[error("{name:?} is not a valid lab name (lower-case letters, digits and '-', at most 40)")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The lab's record names a proxy mode this build does not know.
    #[error("the lab's record names an unknown proxy mode")]
    UnknownMode {
        /// The cause.
        #[source]
        source: netd_agent::UnknownMode,
    },
    /// Reading or writing the lab's state directory failed.
    #[error("cannot access lab state {}", path.display())]
    StateIo {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file is not what the lab wrote.
    #[error("lab state {} is corrupt", path.display())]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored object could not be read back.
    #[error("stored object {index} of kind {kind:?} cannot be decoded")]
    ObjectDecode {
        /// Its position in the stored list.
        index: usize,
        /// Its `kind`.
        kind: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An object could not be encoded for storage.
    #[error("object cannot be encoded for storage")]
    ObjectEncode {
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The embedded control plane refused the objects.
    #[error("cannot resolve the cluster")]
    ResolveFailed {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The resolved objects do not make a valid snapshot.
    #[error("the resolved cluster is invalid")]
    InvalidState {
        /// The cause (boxed: it is large).
        #[source]
        source: Box<StateError>,
    },
    /// The node network has no address left for the external namespace.
    #[error("the node network {network} has no free address for the external namespace")]
    NodeNetworkFull {
        /// The node network.
        network: String,
    },
    /// The probed verdicts do not make a matrix.
    #[error("cannot build the matrix")]
    MatrixFailed {
        /// The cause.
        #[source]
        source: netd_policy::PolicyError,
    },
    /// A Node the lab cannot build.
    #[error("node {node}: {reason}")]
    InvalidNode {
        /// The Node.
        node: NodeName,
        /// What is missing.
        reason: &'static str,
    },
    /// The set of Nodes changed after `lab up`.
    #[error(
        "the lab's nodes are fixed when it is built (had {before:?}, asked for {after:?}); run `lab down` and `lab up` to change them"
    )]
    NodesChanged {
        /// The nodes the lab has.
        before: Vec<NodeName>,
        /// The nodes the objects ask for.
        after: Vec<NodeName>,
    },
    /// A kernel operation failed.
    #[error("building {what}")]
    Kernel {
        /// What was being built or removed.
        what: String,
        /// The cause.
        #[source]
        source: KernelError,
    },
    /// A kernel module the lab needs is not in the running kernel and cannot be loaded.
    #[error("cannot load the kernel modules {purpose}")]
    ModulesUnavailable {
        /// What they are for (`for a lab node`, `for sctp probes`...).
        purpose: String,
        /// Which module, and what `modprobe` said.
        #[source]
        source: KernelError,
    },
    /// A Node's agent, sent SIGKILL to be restarted, was still running.
    #[error("the agent of node {node} (pid {pid}) did not stop")]
    AgentNotStopped {
        /// The Node.
        node: NodeName,
        /// The agent's recorded PID.
        pid: u32,
    },
    /// A helper process (agent or echo server) could not be started.
    #[error("cannot start {what}")]
    SpawnFailed {
        /// Which process.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An echo server did not report that it is listening.
    #[error("echo server of {pod} did not start: {detail}")]
    EchoNotReady {
        /// The Pod.
        pod: PodRef,
        /// What it said, or how it ended.
        detail: String,
    },
    /// A socket of an echo server could not be opened.
    #[error("echo server cannot listen on {protocol}/{port}")]
    EchoBindFailed {
        /// `tcp` or `udp`.
        protocol: &'static str,
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The cluster zone of the lab is not a valid domain name.
    #[error("the cluster zone {zone:?} is not a valid domain name")]
    InvalidDnsZone {
        /// The zone.
        zone: String,
        /// Why.
        #[source]
        source: netd_dns::zone::NameError,
    },
    /// A Pod's cluster DNS server could not bind or stopped serving.
    #[error("the DNS server of {pod} failed")]
    DnsServeFailed {
        /// The Pod.
        pod: netd_model::PodRef,
        /// The cause.
        #[source]
        source: netd_dns::DnsError,
    },
    /// A Pod's cluster DNS server could not make a client of the lab's API.
    #[error("the DNS server of {pod} cannot reach the lab's API")]
    DnsApiFailed {
        /// The Pod.
        pod: netd_model::PodRef,
        /// The cause (boxed: it is large and rare).
        #[source]
        source: Box<netd_source::SourceError>,
    },
    /// A node's agent failed to apply its rules.
    #[error("applying rules of node {node}")]
    ApplyFailed {
        /// The Node.
        node: NodeName,
        /// The cause.
        #[source]
        source: Box<netd_agent::AgentError>,
    },
    /// Nodes did not converge in time, or an agent reported an error.
    #[error("nodes did not converge on generation {generation}: {detail}")]
    NotConverged {
        /// The generation waited for.
        generation: u64,
        /// Which nodes, and what their agents said.
        detail: String,
    },
    /// A probe or exec source/target that does not exist in the lab.
    #[error("{what} {name:?} is not in lab {lab:?}")]
    UnknownTarget {
        /// `pod`, `node`, `service`...
        what: &'static str,
        /// What was asked for.
        name: String,
        /// The lab it was looked for in.
        lab: String,
    },
    /// A place or target that does not parse.
    #[error("{input:?} is not a valid {what} (expected {expected})")]
    BadTarget {
        /// What was being parsed.
        what: &'static str,
        /// The input.
        input: String,
        /// The accepted forms.
        expected: &'static str,
    },
    /// A name could not be resolved inside the probing namespace.
    #[error("cannot resolve {name:?} inside {from}")]
    NameNotResolved {
        /// The name.
        name: String,
        /// Where it was resolved.
        from: String,
    },
    /// A protocol the probes cannot speak here: SCTP where the running kernel opens no SCTP
    /// sockets even with the `sctp` module loaded, or a truth table over ICMP.
    #[error("protocol {protocol} is not supported by this kernel")]
    ProtocolUnsupported {
        /// The protocol.
        protocol: String,
    },
    /// A probe needs a port for TCP and UDP.
    #[error("a {protocol} probe needs --port")]
    PortRequired {
        /// The protocol.
        protocol: String,
    },
    /// `lab matrix` found no Pod to probe.
    #[error("no pods to probe in lab {lab:?}{}", if namespaces.is_empty() { String::new() } else { format!(" in namespace(s) {}", namespaces.join(", ")) })]
    NoPodsToProbe {
        /// The lab.
        lab: String,
        /// The namespaces asked for (none: every namespace).
        namespaces: Vec<String>,
    },
    /// A probe asked for no attempts.
    #[error("--count must be at least 1")]
    ZeroCount,
    /// A worker thread panicked.
    #[error("a {what} thread panicked")]
    ThreadPanicked {
        /// Which worker.
        what: &'static str,
    },
    /// The arguments of a lab helper process are malformed.
    #[error("bad helper arguments {args:?}: {expected}")]
    BadHelperArgs {
        /// The arguments.
        args: Vec<String>,
        /// What was expected.
        expected: &'static str,
    },
    /// The lab's API server could not load its objects or start serving.
    #[error("the lab's API server cannot start")]
    ApiStartFailed {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The lab's API server could not bring an object in line with the resolved cluster.
    #[error("cannot publish {id} through the lab's API server")]
    ApiSyncFailed {
        /// The object.
        id: String,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<netd_apiserver::ApiError>,
    },
    /// The lab's API server did not write its kubeconfig in time, or exited first.
    #[error("the lab's API server did not come up: {detail}")]
    ApiNotReady {
        /// What was seen, and where its log is.
        detail: String,
    },
}

impl LabError {
    pub(crate) fn kernel(what: impl Into<String>) -> impl FnOnce(KernelError) -> LabError {
        let what = what.into();
        move |source| LabError::Kernel { what, source }
    }

    pub(crate) fn modules(purpose: impl Into<String>) -> impl FnOnce(KernelError) -> LabError {
        let purpose = purpose.into();
        move |source| LabError::ModulesUnavailable { purpose, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::StateIo { path, source }
    }
}
