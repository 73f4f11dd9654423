//! Rule sets applied atomically into a namespace.

use std::process::Command;

use crate::KernelError;
use crate::cmd::run;
use crate::netns;

/// Applies an `iptables-restore` payload inside `ns` in one transaction. With `--noflush`,
/// tables and chains the payload does not declare are left alone; chains it declares
/// (`:CHAIN - [0:0]`) are flushed and refilled, so a full payload replaces kube-netd's rules
/// atomically and nobody else's.
pub fn iptables_restore(ns: &str, payload: &str) -> Result<(), KernelError> {
    restore(ns, "iptables-restore", &["--noflush"], payload)
}

/// Applies an `ip6tables-restore` payload inside `ns`, like [`iptables_restore`].
pub fn ip6tables_restore(ns: &str, payload: &str) -> Result<(), KernelError> {
    restore(ns, "ip6tables-restore", &["--noflush"], payload)
}

/// Applies an `ipset restore` payload inside `ns` (`-exist`: creating what exists is not an
/// error).
pub fn ipset_restore(ns: &str, payload: &str) -> Result<(), KernelError> {
    restore(ns, "ipset", &["restore", "-exist"], payload)
}

/// `iptables-save` of `ns`, for inspection and tests.
pub fn iptables_save(ns: &str) -> Result<String, KernelError> {
    let out = netns::exec(ns, &["iptables-save"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the ipsets in `ns` (`ipset list -n`), sorted.
pub fn ipset_list(ns: &str) -> Result<Vec<String>, KernelError> {
    let out = netns::exec(ns, &["ipset", "list", "-n"])?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

/// Loads an `nft -f` payload inside `ns` as one transaction: all of it or, when the kernel
/// refuses any part, none of it.
pub fn nft_load(ns: &str, payload: &str) -> Result<(), KernelError> {
    restore(ns, "nft", &["-f", "-"], payload)
}

/// The nftables tables of `ns`, as (family, name): `("ip", "kube-netd")`.
pub fn nft_tables(ns: &str) -> Result<Vec<(String, String)>, KernelError> {
    let out = netns::exec(ns, &["nft", "list", "tables"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name)) => Some((family.into(), name.into())),
                _ => None,
            }
        })
        .collect())
}

fn restore(ns: &str, program: &str, args: &[&str], payload: &str) -> Result<(), KernelError> {
    let mut cmd: Command = netns::command(ns, program)?;
    cmd.args(args);
    run(&mut cmd, Some(payload.as_bytes())).map(drop)
}
