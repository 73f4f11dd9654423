//! Probes with real packets: from a Pod, a Node or the external namespace, to a Pod, a
//! Service, a Node or an address, over TCP, UDP or ICMP.
//!
//! A probe runs on a thread that enters the source namespace (`setns(2)` moves only that
//! thread), so probes are cheap enough to run a whole matrix in parallel. The outcome is the
//! kernel's answer: `connected`, `refused` (RST or ICMP port unreachable), `unreachable`
//! (ICMP host or network unreachable) or `timeout` (nothing came back: a drop).

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use netd_kernel::netns;
use netd_model::{NodeName, PodRef, ServiceRef};
use serde::Serialize;

use crate::LabError;
use crate::echo::{EchoReply, read_reply};

/// Where a probe starts, or where `lab exec` runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// A Pod (`NS/POD`); a hostNetwork Pod probes from its Node.
    Pod(PodRef),
    /// A Node (`node/NAME`).
    Node(NodeName),
    /// The namespace outside the cluster (`external`).
    External,
}

impl Place {
    /// Parses a source as every command names one (see [`netd_model::target`]): `NS/POD`,
    /// `POD` (in `namespace`), `node/NAME` or `external`.
    pub fn parse(input: &str, namespace: &str) -> Result<Self, LabError> {
        let bad = || LabError::BadTarget {
            what: "source",
            input: input.to_owned(),
            expected: "NS/POD, POD (in -n's namespace), node/NAME or external",
        };
        match netd_model::Target::parse(input, namespace).map_err(|_| bad())? {
            netd_model::Target::Pod(p) => Ok(Place::Pod(p)),
            netd_model::Target::Node(n) => Ok(Place::Node(n)),
            netd_model::Target::External => Ok(Place::External),
            _ => Err(bad()),
        }
    }
}

impl FromStr for Place {
    type Err = LabError;

    /// [`Place::parse`] in the `default` namespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Place::parse(s, "default")
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Pod(p) => write!(f, "{p}"),
            Place::Node(n) => write!(f, "node/{n}"),
            Place::External => f.write_str("external"),
        }
    }
}

/// What a probe is aimed at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A Pod's IP (`NS/POD`).
    Pod(PodRef),
    /// A Service's ClusterIP (`svc/NS/NAME`).
    Service(ServiceRef),
    /// A Node's IP, for NodePorts (`node/NAME`).
    Node(NodeName),
    /// An address.
    Ip(IpAddr),
    /// A DNS name, resolved inside the source namespace.
    Name(String),
}

impl Target {
    /// Parses a destination as every command names one (see [`netd_model::target`]):
    /// `NS/POD`, `POD` and `svc/NAME` (in `namespace`), `svc/NS/NAME`, `node/NAME`, an IP
    /// address, or a DNS name with a dot.
    pub fn parse(input: &str, namespace: &str) -> Result<Self, LabError> {
        let bad = || LabError::BadTarget {
            what: "target",
            input: input.to_owned(),
            expected: "NS/POD, POD (in -n's namespace), svc/[NS/]NAME, node/NAME, an IP \
                       address or a DNS name with a dot",
        };
        match netd_model::Target::parse(input, namespace).map_err(|_| bad())? {
            netd_model::Target::Pod(p) => Ok(Target::Pod(p)),
            netd_model::Target::Service(s) => Ok(Target::Service(s)),
            netd_model::Target::Node(n) => Ok(Target::Node(n)),
            netd_model::Target::Ip(ip) => Ok(Target::Ip(ip)),
            netd_model::Target::DnsName(n) => Ok(Target::Name(n)),
            netd_model::Target::External => Err(bad()),
        }
    }
}

impl FromStr for Target {
    type Err = LabError;

    /// [`Target::parse`] in the `default` namespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s, "default")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pod(p) => write!(f, "{p}"),
            Target::Service(s) => write!(f, "svc/{s}"),
            Target::Node(n) => write!(f, "node/{n}"),
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Name(n) => f.write_str(n),
        }
    }
}

/// The protocol a probe speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProtocol {
    /// A TCP connection, reading the echo server's reply line.
    #[default]
    Tcp,
    /// A UDP datagram, waiting for the echo server's answer.
    Udp,
    /// SCTP (refused: this lab's kernels have none).
    Sctp,
    /// An ICMP echo request (`ping`).
    Icmp,
}

impl FromStr for ProbeProtocol {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(ProbeProtocol::Tcp),
            "udp" => Ok(ProbeProtocol::Udp),
            "sctp" => Ok(ProbeProtocol::Sctp),
            "icmp" => Ok(ProbeProtocol::Icmp),
            _ => Err(LabError::BadTarget {
                what: "protocol",
                input: s.to_owned(),
                expected: "tcp, udp, sctp or icmp",
            }),
        }
    }
}

impl fmt::Display for ProbeProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeProtocol::Tcp => "tcp",
            ProbeProtocol::Udp => "udp",
            ProbeProtocol::Sctp => "sctp",
            ProbeProtocol::Icmp => "icmp",
        })
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Connected (TCP), answered (UDP) or echoed (ICMP).
    Connected,
    /// Actively refused: a TCP RST or an ICMP port unreachable.
    Refused,
    /// Nothing came back in time: the packet was dropped somewhere.
    Timeout,
    /// An ICMP host or network unreachable, or no route.
    Unreachable,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Connected => "connected",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
        })
    }
}

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The destination port (TCP and UDP).
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: ProbeProtocol,
    /// How many attempts.
    pub count: u32,
    /// How long each attempt waits.
    pub timeout: Duration,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            port: Some(80),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

/// One attempt's result, as `lab probe -o json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeResult {
    /// The source, as given.
    pub from: String,
    /// The target, as given.
    pub to: String,
    /// The destination port (`null` for ICMP).
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: ProbeProtocol,
    /// How it ended.
    pub outcome: Outcome,
    /// The Pod whose echo server answered, `NS/POD`.
    pub served_by: Option<String>,
    /// The client address the server saw (the probe's own, unless it was NATed).
    pub client_ip_seen: Option<IpAddr>,
    /// Round trip, in milliseconds.
    pub latency_ms: f64,
}

impl fmt::Display for ProbeResult {
    /// `from -> to port/proto: outcome (served by ns/pod, client ip) in N ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)?;
        match self.port {
            Some(port) => write!(f, " {port}/{}", self.protocol)?,
            None => write!(f, " {}", self.protocol)?,
        }
        write!(f, ": {}", self.outcome)?;
        if let Some(pod) = &self.served_by {
            write!(f, " (served by {pod}")?;
            if let Some(ip) = self.client_ip_seen {
                write!(f, ", saw client {ip}")?;
            }
            f.write_str(")")?;
        }
        write!(f, " in {:.1} ms", self.latency_ms)
    }
}

/// One attempt, before it is labelled with its source and target.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Attempt {
    pub outcome: Outcome,
    pub reply: Option<EchoReply>,
    pub latency: Duration,
}

/// Sends one probe from the namespace `ns` to `ip` on a thread of its own.
pub(crate) fn attempt(ns: &str, ip: IpAddr, spec: &ProbeSpec) -> Result<Attempt, LabError> {
    let port_required = || LabError::PortRequired {
        protocol: spec.protocol.to_string(),
    };
    match spec.protocol {
        ProbeProtocol::Icmp => ping(ns, ip, spec.timeout),
        ProbeProtocol::Sctp => Err(LabError::ProtocolUnsupported {
            protocol: "sctp".into(),
        }),
        ProbeProtocol::Tcp | ProbeProtocol::Udp => {
            let addr = SocketAddr::new(ip, spec.port.ok_or_else(port_required)?);
            let ns = ns.to_owned();
            let (protocol, timeout) = (spec.protocol, spec.timeout);
            std::thread::spawn(move || {
                netns::enter(&ns).map_err(LabError::kernel(format!("entering {ns}")))?;
                Ok(if protocol == ProbeProtocol::Tcp {
                    tcp(addr, timeout)
                } else {
                    udp(addr, timeout)
                })
            })
            .join()
            .map_err(|_| LabError::ThreadPanicked { what: "probe" })?
        }
    }
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(50));
            let _ = stream.set_read_timeout(Some(left));
            let reply = read_reply(&stream);
            Attempt {
                outcome: Outcome::Connected,
                reply,
                latency: start.elapsed(),
            }
        }
        Err(e) => Attempt {
            outcome: classify(&e),
            reply: None,
            latency: start.elapsed(),
        },
    }
}

fn udp(addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let fail = |e: &std::io::Error| Attempt {
        outcome: classify(e),
        reply: None,
        latency: start.elapsed(),
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(e) = socket
        .connect(addr)
        .and_then(|()| socket.set_read_timeout(Some(timeout)))
    {
        return fail(&e);
    }
    if let Err(e) = socket.send(b"probe\n") {
        return fail(&e);
    }
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) => Attempt {
            outcome: Outcome::Connected,
            reply: EchoReply::parse(&String::from_utf8_lossy(&buf[..n])),
            latency: start.elapsed(),
        },
        Err(e) => fail(&e),
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Outcome::Unreachable,
        _ => Outcome::Timeout,
    }
}

fn ping(ns: &str, ip: IpAddr, timeout: Duration) -> Result<Attempt, LabError> {
    let start = Instant::now();
    let wait = format!("{:.3}", timeout.as_secs_f64().max(0.1));
    let ip = ip.to_string();
    let outcome = match netns::exec(ns, &["ping", "-n", "-c1", "-W", &wait, &ip]) {
        Ok(_) => Outcome::Connected,
        Err(netd_kernel::KernelError::CommandFailed { stderr, .. })
            if stderr.contains("nreachable") =>
        {
            Outcome::Unreachable
        }
        Err(netd_kernel::KernelError::CommandFailed { .. }) => Outcome::Timeout,
        Err(e) => return Err(LabError::kernel(format!("ping from {ns}"))(e)),
    };
    Ok(Attempt {
        outcome,
        reply: None,
        latency: start.elapsed(),
    })
}

/// Resolves `name` inside the namespace `ns`, with its `/etc/netns/NS/resolv.conf`.
pub(crate) fn resolve_name(ns: &str, name: &str) -> Result<IpAddr, LabError> {
    let not_resolved = || LabError::NameNotResolved {
        name: name.to_owned(),
        from: ns.to_owned(),
    };
    let out = netns::exec(ns, &["getent", "ahostsv4", name]).map_err(|_| not_resolved())?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(not_resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_and_targets_parse_as_the_cli_spells_them() {
        assert_eq!("external".parse::<Place>().expect("ok"), Place::External);
        assert_eq!(
            "node/node-1".parse::<Place>().expect("ok"),
            Place::Node("node-1".into())
        );
        assert_eq!(
            "x/a".parse::<Place>().expect("ok"),
            Place::Pod(PodRef::new("x", "a"))
        );
        assert!("node/".parse::<Place>().is_err());
        assert_eq!(
            "svc/x/s".parse::<Target>().expect("ok"),
            Target::Service(ServiceRef::new("x", "s"))
        );
        assert_eq!(
            "10.0.0.1".parse::<Target>().expect("ok"),
            Target::Ip("10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            "s.x.svc.cluster.local".parse::<Target>().expect("ok"),
            Target::Name("s.x.svc.cluster.local".into())
        );
        assert_eq!("x/a".parse::<Target>().expect("ok").to_string(), "x/a");
        assert_eq!(
            Target::parse("svc/s", "x").expect("ok"),
            Target::Service(ServiceRef::new("x", "s"))
        );
        assert_eq!(
            Place::parse("a", "x").expect("ok"),
            Place::Pod(PodRef::new("x", "a"))
        );
        assert!("external".parse::<Target>().is_err());
        assert!("svc/x/s".parse::<Place>().is_err());
        assert!("bad name!".parse::<Target>().is_err());
        assert_eq!(
            "ICMP".parse::<ProbeProtocol>().expect("ok"),
            ProbeProtocol::Icmp
        );
    }

    #[test]
    fn results_print_as_json_objects_with_the_documented_fields() {
        let r = ProbeResult {
            from: "x/a".into(),
            to: "x/b".into(),
            port: Some(80),
            protocol: ProbeProtocol::Tcp,
            outcome: Outcome::Refused,
            served_by: None,
            client_ip_seen: None,
            latency_ms: 0.5,
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["protocol"], "tcp");
        assert!(v["served_by"].is_null());
        assert_eq!(r.to_string(), "x/a -> x/b 80/tcp: refused in 0.5 ms");
    }
}
