//! Named network namespaces (`/run/netns/NAME`, as `ip netns` manages them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sched::CloneFlags;

use crate::KernelError;
use crate::cmd::{ip, run};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The name that means "the namespace this process runs in" to [`command`], [`exec`],
/// [`ip_batch`] and [`enter`]: what `kube-netd agent` programs (the host's on a real Node, a
/// lab Node's when started by `ip netns exec`). `.` can never name an `ip netns` namespace,
/// so no real name is taken; [`add`], [`delete`] and [`exists`] still refuse it.
pub const CURRENT: &str = ".";

/// Creates the namespace `name` with its loopback up.
pub fn add(name: &str) -> Result<(), KernelError> {
    check_name(name)?;
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes the namespace `name`; deleting one that does not exist is not an error.
pub fn delete(name: &str) -> Result<(), KernelError> {
    check_name(name)?;
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "delete", name]).map(drop)
}

/// Whether the namespace `name` exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && path(name).exists()
}

/// The names of every namespace under [`NETNS_DIR`], sorted.
pub fn list() -> Result<Vec<String>, KernelError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(KernelError::ListFailed { source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KernelError::ListFailed { source })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A [`Command`] that runs `program` inside the namespace `name` (`ip netns exec`, which also
/// bind-mounts `/etc/netns/NAME/*` over `/etc`). `ip` execs the program, so the child's PID is
/// the program's.
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, KernelError> {
    if name == CURRENT {
        return Ok(Command::new(program));
    }
    check_name(name)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name]).arg(program);
    Ok(cmd)
}

/// Runs `argv` inside the namespace `name` to completion; fails unless it exits 0.
pub fn exec(name: &str, argv: &[&str]) -> Result<Output, KernelError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| KernelError::EmptyCommand {
            namespace: name.to_owned(),
        })?;
    run(command(name, program)?.args(args), None)
}

/// Runs many `ip` commands (one per line, without the leading `ip`) inside the namespace `name`
/// in one process (`ip -n NAME -batch -`): the fast way to build a topology.
pub fn ip_batch(name: &str, lines: &[String]) -> Result<(), KernelError> {
    if name != CURRENT {
        check_name(name)?;
    }
    if lines.is_empty() {
        return Ok(());
    }
    let mut script = lines.join("\n");
    script.push('\n');
    let mut cmd = Command::new("ip");
    if name != CURRENT {
        cmd.args(["-n", name]);
    }
    run(cmd.args(["-batch", "-"]), Some(script.as_bytes())).map(drop)
}

/// Moves the calling thread into the namespace `name`. Only the calling thread moves: sockets
/// it opens afterwards live in that namespace. Use a thread of its own for this.
pub fn enter(name: &str) -> Result<(), KernelError> {
    if name == CURRENT {
        // Already there.
        return Ok(());
    }
    check_name(name)?;
    let file = File::open(path(name)).map_err(|source| KernelError::NamespaceOpenFailed {
        name: name.to_owned(),
        source,
    })?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| KernelError::EnterFailed {
        name: name.to_owned(),
        source,
    })
}

/// The file that pins the namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn check_name(name: &str) -> Result<(), KernelError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 200
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(KernelError::InvalidNamespaceName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_runs_without_ip_netns() {
        let cmd = command(CURRENT, "true").expect("current namespace");
        assert_eq!(cmd.get_program(), "true");
        assert_eq!(cmd.get_args().count(), 0);
        let named = command("kube-netd-x", "true").expect("named");
        assert_eq!(named.get_program(), "ip");
        assert!(!exists(CURRENT));
        assert!(matches!(
            add(CURRENT),
            Err(KernelError::InvalidNamespaceName { .. })
        ));
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            assert!(
                matches!(add(bad), Err(KernelError::InvalidNamespaceName { .. })),
                "{bad:?}"
            );
        }
    }
}
