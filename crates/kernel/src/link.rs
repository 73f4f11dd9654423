//! Links, addresses, routes and sysctls inside a namespace.
//!
//! Interface names are limited by the kernel to 15 bytes (`IFNAMSIZ`); callers derive short
//! names, and [`check_ifname`] refuses longer ones before the kernel does, with a clearer error.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use crate::KernelError;
use crate::cmd::ip;
use crate::netns;

/// The longest interface name the kernel accepts.
pub const IFNAMSIZ_MAX: usize = 15;

/// Creates a veth pair: `name` in namespace `ns`, `peer` in namespace `peer_ns`, both up.
pub fn add_veth(ns: &str, name: &str, peer_ns: &str, peer: &str) -> Result<(), KernelError> {
    check_ifname(name)?;
    check_ifname(peer)?;
    ip(&[
        "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns,
    ])?;
    set_up(ns, name)?;
    set_up(peer_ns, peer)
}

/// Creates the bridge `name` in `ns` and brings it up.
pub fn add_bridge(ns: &str, name: &str) -> Result<(), KernelError> {
    check_ifname(name)?;
    ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
    set_up(ns, name)
}

/// Attaches `port` to the bridge `bridge` (both in `ns`).
pub fn set_master(ns: &str, port: &str, bridge: &str) -> Result<(), KernelError> {
    ip(&["-n", ns, "link", "set", port, "master", bridge]).map(drop)
}

/// Turns hairpin mode on for the bridge port `port`, so a frame may leave by the port it came
/// in on (a pod reaching itself through its Service).
pub fn set_hairpin(ns: &str, port: &str) -> Result<(), KernelError> {
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        port,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])
    .map(drop)
}

/// Brings the link `name` up.
pub fn set_up(ns: &str, name: &str) -> Result<(), KernelError> {
    ip(&["-n", ns, "link", "set", name, "up"]).map(drop)
}

/// Deletes the link `name` (and its veth peer); a missing link is not an error.
pub fn delete_link(ns: &str, name: &str) -> Result<(), KernelError> {
    if !netns::exists(ns) {
        return Ok(());
    }
    match ip(&["-n", ns, "link", "del", name]) {
        Err(KernelError::CommandFailed { stderr, .. }) if stderr.contains("Cannot find device") => {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Adds `address/prefix` to the link `dev`.
pub fn add_address(ns: &str, dev: &str, address: IpAddr, prefix: u8) -> Result<(), KernelError> {
    let cidr = format!("{address}/{prefix}");
    ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]).map(drop)
}

/// Adds (or replaces) a route to `destination` (a CIDR, or `default`) via `gateway`, tagged
/// with the routing protocol number `proto` so that a caller can find its own routes again.
pub fn replace_route(
    ns: &str,
    destination: &str,
    gateway: IpAddr,
    proto: u8,
) -> Result<(), KernelError> {
    let gw = gateway.to_string();
    let proto = proto.to_string();
    ip(&[
        "-n",
        ns,
        "route",
        "replace",
        destination,
        "via",
        &gw,
        "proto",
        &proto,
    ])
    .map(drop)
}

/// Deletes the route to `destination`; a missing route is not an error.
pub fn delete_route(ns: &str, destination: &str) -> Result<(), KernelError> {
    match ip(&["-n", ns, "route", "del", destination]) {
        Err(KernelError::CommandFailed { stderr, .. }) if stderr.contains("No such process") => {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// The destinations of the routes in `ns` tagged with routing protocol `proto`, as `ip`
/// prints them (`10.0.0.1`, `10.244.1.0/24`), sorted.
pub fn routes_with_proto(ns: &str, proto: u8) -> Result<Vec<String>, KernelError> {
    let proto = proto.to_string();
    let out = ip(&["-n", ns, "-o", "route", "show", "proto", &proto])?;
    let mut dsts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    dsts.sort();
    Ok(dsts)
}

/// Writes a sysctl (dotted, `net.ipv4.ip_forward`) inside `ns`. Network sysctls are per
/// namespace; this writes from a thread that has entered `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), KernelError> {
    let ns_owned = ns.to_owned();
    let key_owned = key.to_owned();
    let value_owned = value.to_owned();
    let failed = |source| KernelError::SysctlFailed {
        namespace: ns.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    };
    let handle = std::thread::spawn(move || -> Result<(), KernelError> {
        netns::enter(&ns_owned)?;
        let path = format!("/proc/sys/{}", key_owned.replace('.', "/"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.write_all(value_owned.as_bytes())
        };
        write().map_err(|source| KernelError::SysctlFailed {
            namespace: ns_owned.clone(),
            key: key_owned.clone(),
            value: value_owned.clone(),
            source,
        })
    });
    handle
        .join()
        .map_err(|_| failed(std::io::Error::other("sysctl thread panicked")))?
}

/// The MAC address the bridge CNI plugin gives an interface holding the IPv4 address `ip`:
/// `0a:58:` followed by the address's four bytes (a locally administered unicast address).
/// An interface re-created with the same IP gets the same MAC, so peers' neighbour entries
/// for that IP stay right.
pub fn mac_for_ipv4(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Refuses interface names the kernel would refuse.
pub fn check_ifname(name: &str) -> Result<(), KernelError> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains(['/', ' ', '\0']) {
        return Err(KernelError::InvalidInterfaceName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_follows_the_address_as_the_bridge_plugin_derives_it() {
        assert_eq!(
            mac_for_ipv4(Ipv4Addr::new(10, 244, 1, 20)),
            "0a:58:0a:f4:01:14"
        );
        assert_eq!(
            mac_for_ipv4(Ipv4Addr::new(255, 0, 0, 1)),
            "0a:58:ff:00:00:01"
        );
    }
}
