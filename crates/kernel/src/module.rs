//! Kernel modules the node needs, and the features they bring.
//!
//! A distribution kernel ships `br_netfilter`, `nf_conntrack`, `sctp` and the IPVS modules as
//! loadable modules that nobody has loaded yet; a custom kernel may have them built in and
//! have no module tree at all. [`ensure`] therefore looks for the feature first (a file the
//! feature creates under `/proc` or `/sys`, the module's `/sys/module` entry, or its line in
//! `modules.builtin`) and runs `modprobe` only when none is there. A module that cannot be
//! loaded is a [`KernelError::ModuleMissing`] naming it.
//!
//! [`sctp_sockets`] answers whether SCTP works by opening an SCTP socket, not from a module
//! list: only the running kernel knows.

use std::path::Path;
use std::process::Command;

use crate::KernelError;
use crate::cmd::run;

/// A kernel module, and the files that exist once its feature is in the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// The module's name, as `modprobe` takes it.
    pub name: &'static str,
    /// Files the feature creates: any one of them existing means it is there, loaded or
    /// built in (built-in modules without parameters have no `/sys/module` entry).
    pub present_when: &'static [&'static str],
}

/// `br_netfilter`: bridged frames through iptables (`net.bridge.bridge-nf-call-iptables`).
pub const BR_NETFILTER: Module = Module {
    name: "br_netfilter",
    present_when: &["/proc/sys/net/bridge/bridge-nf-call-iptables"],
};

/// `nf_conntrack`: connection tracking, which NAT and stateful rules need.
pub const NF_CONNTRACK: Module = Module {
    name: "nf_conntrack",
    present_when: &["/proc/sys/net/netfilter/nf_conntrack_max"],
};

/// `sctp`: SCTP sockets (the echo server and the probes; not needed for rules).
pub const SCTP: Module = Module {
    name: "sctp",
    present_when: &["/proc/net/sctp", "/proc/sys/net/sctp"],
};

/// What a lab Node needs: bridged traffic through iptables, and connection tracking.
pub const NODE_MODULES: [Module; 2] = [BR_NETFILTER, NF_CONNTRACK];

/// What IPVS mode needs: the virtual server and the schedulers kube-proxy offers by default.
pub const IPVS_MODULES: [Module; 4] = [
    Module {
        name: "ip_vs",
        present_when: &["/proc/net/ip_vs"],
    },
    Module {
        name: "ip_vs_rr",
        present_when: &[],
    },
    Module {
        name: "ip_vs_wrr",
        present_when: &[],
    },
    Module {
        name: "ip_vs_sh",
        present_when: &[],
    },
];

impl Module {
    /// Whether the running kernel has this module's feature, loaded or built in.
    pub fn present(&self) -> bool {
        self.present_when.iter().any(|p| Path::new(p).exists())
            || Path::new("/sys/module").join(self.name).exists()
            || built_in(self.name)
    }
}

/// Makes sure every module of `modules` is in the running kernel: skips those whose feature
/// is already there and loads the others with `modprobe`, in order. Stops at the first that
/// cannot be loaded.
pub fn ensure(modules: &[Module]) -> Result<(), KernelError> {
    for module in modules {
        if module.present() {
            continue;
        }
        run(Command::new("modprobe").arg("--").arg(module.name), None).map_err(|source| {
            KernelError::ModuleMissing {
                module: module.name.to_owned(),
                source: Box::new(source),
            }
        })?;
    }
    Ok(())
}

/// Whether the running kernel opens SCTP sockets (one-to-one style, over IPv4), the way the
/// echo server and the probes use them. Loads nothing: call [`ensure`] with [`SCTP`] first.
pub fn sctp_sockets() -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .is_ok()
}

/// Whether `name` is listed in the running kernel's `modules.builtin`.
fn built_in(name: &str) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let path = format!("/lib/modules/{}/modules.builtin", release.trim());
    let Ok(list) = std::fs::read_to_string(path) else {
        return false;
    };
    list.lines().any(|line| {
        // Lines are paths such as `kernel/net/sctp/sctp.ko`; modprobe treats `-` and `_`
        // in names alike.
        let file = line.rsplit('/').next().unwrap_or(line);
        file.strip_suffix(".ko")
            .is_some_and(|m| m.replace('-', "_") == name.replace('-', "_"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_that_cannot_be_loaded_is_named_in_the_error() {
        let missing = Module {
            name: "netd_no_such_module",
            present_when: &["/proc/netd-no-such-feature"],
        };
        assert!(!missing.present());
        let err = ensure(&[missing]).expect_err("no such module");
        assert_eq!(
            err.to_string(),
            "kernel module netd_no_such_module is missing"
        );
        match err {
            KernelError::ModuleMissing { module, source } => {
                assert_eq!(module, "netd_no_such_module");
                // The cause says what modprobe said (or that it could not run at all).
                assert!(
                    matches!(
                        *source,
                        KernelError::CommandFailed { .. } | KernelError::SpawnFailed { .. }
                    ),
                    "{source}"
                );
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_feature_already_there_loads_nothing() {
        // `modprobe` is never run for it: a name it would refuse shows that.
        let present = Module {
            name: "netd_no_such_module",
            present_when: &["/proc/self"],
        };
        assert!(present.present());
        ensure(&[present]).expect("feature present");
    }

    #[test]
    fn the_node_modules_are_there_after_ensure() {
        ensure(&NODE_MODULES).expect("br_netfilter and nf_conntrack");
        assert!(NODE_MODULES.iter().all(Module::present));
    }
}
