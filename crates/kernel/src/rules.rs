//! Rule sets applied atomically into a namespace, and conntrack clean-up.

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

/// Deletes the conntrack entries in `ns` matching `filter` (arguments of `conntrack -D`, such
/// as `["--orig-dst", "10.96.0.10", "-p", "udp"]`). Returns how many were deleted; none
/// matching is not an error.
pub fn conntrack_delete(ns: &str, filter: &[&str]) -> Result<usize, KernelError> {
    let mut cmd = netns::command(ns, "conntrack")?;
    cmd.arg("-D").args(filter);
    match run(&mut cmd, None) {
        Ok(out) => Ok(deleted_count(&String::from_utf8_lossy(&out.stderr))),
        // conntrack exits 1 when nothing matched, with "0 flow entries have been deleted".
        Err(KernelError::CommandFailed { stderr, .. }) if stderr.contains(" 0 flow entries") => {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the UDP conntrack entries in `ns` whose original destination is `ip`, as kube-proxy
/// does when a UDP Service loses its endpoints (stale entries would blackhole the flow).
pub fn conntrack_delete_udp_to(ns: &str, ip: std::net::IpAddr) -> Result<usize, KernelError> {
    let ip = ip.to_string();
    conntrack_delete(ns, &["--orig-dst", &ip, "-p", "udp"])
}

fn restore(ns: &str, program: &str, args: &[&str], payload: &str) -> Result<(), KernelError> {
    let mut cmd: Command = netns::command(ns, program)?;
    cmd.args(args);
    run(&mut cmd, Some(payload.as_bytes())).map(drop)
}

fn deleted_count(stderr: &str) -> usize {
    stderr
        .lines()
        .find(|l| l.contains("flow entries have been deleted"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_counts_are_read_from_its_summary() {
        let stderr = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n";
        assert_eq!(deleted_count(stderr), 3);
        assert_eq!(deleted_count(""), 0);
    }
}
