//! Links, addresses, routes and sysctls inside a namespace.
//!
//! Interface names are limited by the kernel to 15 bytes (`IFNAMSIZ`); callers derive short
//! names, and [`check_ifname`] refuses longer ones before the kernel does, with a clearer error.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

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

/// Creates the dummy interface `name` in `ns` unless it exists, and leaves it down with ARP
/// off: addresses on it are local to the host but never answered for on a wire.
pub fn ensure_dummy(ns: &str, name: &str) -> Result<(), KernelError> {
    check_ifname(name)?;
    if ip(&["-n", ns, "link", "show", "dev", name]).is_err() {
        ip(&["-n", ns, "link", "add", name, "type", "dummy"])?;
    }
    ip(&["-n", ns, "link", "set", "dev", name, "down", "arp", "off"]).map(drop)
}

/// The addresses of the link `dev` with their prefix lengths, sorted.
pub fn addresses(ns: &str, dev: &str) -> Result<Vec<(IpAddr, u8)>, KernelError> {
    let out = ip(&["-n", ns, "-o", "addr", "show", "dev", dev])?;
    let mut found: Vec<(IpAddr, u8)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_address_line)
        .collect();
    found.sort();
    Ok(found)
}

/// Adds and deletes addresses of the link `dev` in one `ip -batch` run.
pub fn change_addresses(
    ns: &str,
    dev: &str,
    add: &[(IpAddr, u8)],
    delete: &[(IpAddr, u8)],
) -> Result<(), KernelError> {
    let line =
        |verb: &str, (ip, prefix): &(IpAddr, u8)| format!("addr {verb} {ip}/{prefix} dev {dev}");
    let lines: Vec<String> = add
        .iter()
        .map(|a| line("add", a))
        .chain(delete.iter().map(|d| line("del", d)))
        .collect();
    netns::ip_batch(ns, &lines)
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

/// Reads a sysctl (dotted) inside `ns`, without its trailing newline; `None` when the
/// kernel has no such sysctl (the module that brings it is not loaded).
pub fn read_sysctl(ns: &str, key: &str) -> Result<Option<String>, KernelError> {
    let ns_owned = ns.to_owned();
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let failed = |source| KernelError::SysctlReadFailed {
        namespace: ns.to_owned(),
        key: key.to_owned(),
        source,
    };
    let read = std::thread::spawn(move || -> Result<std::io::Result<String>, KernelError> {
        netns::enter(&ns_owned)?;
        Ok(std::fs::read_to_string(&path))
    })
    .join()
    .map_err(|_| failed(std::io::Error::other("sysctl thread panicked")))??;
    match read {
        Ok(value) => Ok(Some(value.trim_end().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

/// The Linux bridges of `ns` that have veth ports (the Pods' links of a bridge CNI), each
/// with those ports, sorted.
pub fn bridge_veth_ports(ns: &str) -> Result<BTreeMap<String, Vec<String>>, KernelError> {
    let listed = |kind: &str| -> Result<Vec<(String, Option<String>)>, KernelError> {
        let out = netns::exec(ns, &["ip", "-o", "link", "show", "type", kind])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_link_line)
            .collect())
    };
    let bridges: Vec<String> = listed("bridge")?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (veth, master) in listed("veth")? {
        if let Some(master) = master.filter(|m| bridges.contains(m)) {
            ports.entry(master).or_default().push(veth);
        }
    }
    for veths in ports.values_mut() {
        veths.sort();
    }
    Ok(ports)
}

/// The name and the master (if any) out of one line of `ip -o link show`
/// (`7: veth1@if2: <BROADCAST,...> mtu 1500 qdisc noqueue master cni0 state UP ...`).
fn parse_link_line(line: &str) -> Option<(String, Option<String>)> {
    let mut words = line.split_whitespace();
    words.next()?;
    let name = words.next()?.trim_end_matches(':');
    let name = name.split_once('@').map_or(name, |(name, _)| name);
    let master = words
        .skip_while(|w| *w != "master")
        .nth(1)
        .map(str::to_owned);
    Some((name.to_owned(), master))
}

/// `10.96.0.1/32` out of one line of `ip -o addr show` (`2: dev    inet 10.96.0.1/32 ...`).
fn parse_address_line(line: &str) -> Option<(IpAddr, u8)> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "inet" || *w == "inet6")?;
    let (ip, prefix) = words.next()?.split_once('/')?;
    Some((ip.parse().ok()?, prefix.parse().ok()?))
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
    fn address_lines_of_both_families_parse_and_others_do_not() {
        let v4 =
            "7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       valid_lft forever";
        let v6 = "7: kube-ipvs0    inet6 fd00:10:96::a/128 scope global \\       valid_lft forever";
        assert_eq!(
            parse_address_line(v4),
            Some(("10.96.0.10".parse().expect("ip"), 32))
        );
        assert_eq!(
            parse_address_line(v6),
            Some(("fd00:10:96::a".parse().expect("ip"), 128))
        );
        assert_eq!(
            parse_address_line("7: kube-ipvs0    link/ether 00:11"),
            None
        );
        assert_eq!(parse_address_line("7: x    inet 10.0.0.1 scope host"), None);
    }

    #[test]
    fn link_lines_give_the_name_without_the_peer_and_the_master() {
        let port = "9: vethab12@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue \
                    master cni0 state UP mode DEFAULT group default qlen 1000";
        assert_eq!(
            parse_link_line(port),
            Some(("vethab12".to_owned(), Some("cni0".to_owned())))
        );
        let routed = "4: cali1@if3: <BROADCAST,UP> mtu 1500 qdisc noqueue state UP mode DEFAULT";
        assert_eq!(parse_link_line(routed), Some(("cali1".to_owned(), None)));
        assert_eq!(parse_link_line(""), None);
    }
}
