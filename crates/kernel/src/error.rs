//! [`KernelError`]: what failed, with the command line and the tool's own words.

use std::io;
use std::process::ExitStatus;

/// A kernel operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A tool could not be started at all (not installed, not executable).
    #[error("cannot run `{command}`")]
    SpawnFailed {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// A tool ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A command line with no program in it.
    #[error("no command given to run in namespace {namespace:?}")]
    EmptyCommand {
        /// The namespace.
        namespace: String,
    },
    /// A namespace name that cannot be a file name under `/run/netns`.
    #[error("{name:?} is not a valid network namespace name")]
    InvalidNamespaceName {
        /// The name.
        name: String,
    },
    /// An interface name the kernel would refuse (empty, longer than 15 bytes, or with `/`).
    #[error("{name:?} is not a valid interface name")]
    InvalidInterfaceName {
        /// The name.
        name: String,
    },
    /// `/run/netns/NAME` could not be opened.
    #[error("cannot open network namespace {name:?}")]
    NamespaceOpenFailed {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into a namespace failed.
    #[error("cannot enter network namespace {name:?}")]
    EnterFailed {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A sysctl could not be written.
    #[error("cannot set sysctl {key} = {value} in namespace {namespace:?}")]
    SysctlFailed {
        /// The namespace.
        namespace: String,
        /// The sysctl, dotted (`net.ipv4.ip_forward`).
        key: String,
        /// The value.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A sysctl could not be read.
    #[error("cannot read sysctl {key} in namespace {namespace:?}")]
    SysctlReadFailed {
        /// The namespace.
        namespace: String,
        /// The sysctl, dotted (`net.bridge.bridge-nf-call-iptables`).
        key: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A signal could not be delivered to a process.
    #[error("cannot signal process {pid}")]
    KillFailed {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Reading `/run/netns` failed.
    #[error("cannot list network namespaces")]
    ListFailed {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink socket call failed (open, bind, send, receive).
    #[error("cannot {operation} over netlink")]
    NetlinkFailed {
        /// What was being done.
        operation: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("the kernel refused to {operation} in namespace {namespace:?}")]
    NetlinkRefused {
        /// What was being done.
        operation: String,
        /// The namespace the socket lives in.
        namespace: String,
        /// The kernel's error.
        #[source]
        errno: nix::Error,
    },
    /// A netlink reply that cannot be read.
    #[error("cannot {operation}: {reason}")]
    NetlinkMalformed {
        /// What was being done.
        operation: String,
        /// What is wrong with the reply.
        reason: &'static str,
    },
    /// Listing or deleting conntrack entries over ctnetlink failed.
    #[error("conntrack clean-up failed in namespace {namespace:?}")]
    ConntrackFailed {
        /// The namespace.
        namespace: String,
        /// What failed.
        #[source]
        source: Box<crate::nftnl::NftError>,
    },
    /// The kernel has no IPVS (the `ip_vs` module is missing or cannot be loaded).
    #[error("the kernel has no IPVS for namespace {namespace:?} (is the ip_vs module available?)")]
    IpvsUnavailable {
        /// The namespace.
        namespace: String,
    },
    /// A kernel module the work needs is not in the running kernel and `modprobe` could not
    /// load it.
    #[error("kernel module {module} is missing")]
    ModuleMissing {
        /// The module (`br_netfilter`, `sctp`, `ip_vs`...).
        module: String,
        /// What `modprobe` said.
        #[source]
        source: Box<KernelError>,
    },
}
