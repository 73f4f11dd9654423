//! Probes with real packets: from a Pod, a Node or the external namespace, to a Pod, a
//! Service, a Node or an address, over TCP, UDP, SCTP or ICMP.
//!
//! A probe runs on a thread that enters the source namespace (`setns(2)` moves only that
//! thread), so probes are cheap enough to run a whole matrix in parallel. The outcome is the
//! kernel's answer: `connected` (for SCTP: the association was set up), `answered` (a DNS server answered the DNS query a probe to
//! port 53 sends), `refused` (RST, SCTP ABORT or ICMP port unreachable), `unreachable` (ICMP host or
//! network unreachable) or `timeout` (nothing came back: a drop). A held TCP connection
//! (`lab probe --hold`) reports a [`HoldResult`]: whether it survived, and its longest stall.

use std::fmt;
use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use netd_kernel::{module, netns};
use netd_model::{NodeName, PodRef, ServiceRef};
use netd_proxy::IpFamily;
use serde::Serialize;

use crate::LabError;
use crate::echo::{EchoReply, read_reply, sctp_socket};

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
    /// An SCTP association (one-to-one style), reading the echo server's reply line. Needs
    /// SCTP sockets in the running kernel (the `sctp` module is loaded if need be).
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
    /// A server that is not the lab's echo server answered a DNS query (a probe to port 53
    /// sends one): the cluster DNS pods. The packet got through.
    Answered,
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
            Outcome::Answered => "answered",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
        })
    }
}

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The destination port (TCP, UDP and SCTP).
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: ProbeProtocol,
    /// How many attempts.
    pub count: u32,
    /// How long each attempt waits.
    pub timeout: Duration,
    /// Which address of a Pod, Service, Node or name to probe; `None`: the cluster's first
    /// family (IPv4 unless the lab is IPv6-only).
    pub family: Option<IpFamily>,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            port: Some(80),
            protocol: ProbeProtocol::Tcp,
            count: 1,
            timeout: Duration::from_secs(1),
            family: None,
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

/// How a held connection ([`Lab::hold`](crate::Lab::hold)) went, as `lab probe --hold -o json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoldResult {
    /// The source, as given.
    pub from: String,
    /// The target, as given.
    pub to: String,
    /// The destination port.
    pub port: u16,
    /// Which of the parallel connections (from 1).
    pub connection: u32,
    /// Whether the connection stayed up and echoed every message for the whole hold.
    pub survived: bool,
    /// How it ended if it did not survive: `refused`, `timeout`, `reset`, `closed` or
    /// `stalled` (a message not echoed within the probe's timeout).
    pub failure: Option<String>,
    /// The Pod whose echo server served the connection, `NS/POD`.
    pub served_by: Option<String>,
    /// The client address the server saw.
    pub client_ip_seen: Option<IpAddr>,
    /// Messages sent and echoed back in full.
    pub messages_echoed: u32,
    /// The longest wait for an echo, in milliseconds.
    pub longest_stall_ms: f64,
    /// How long the connection was held, in milliseconds.
    pub held_ms: f64,
}

impl fmt::Display for HoldResult {
    /// `from -> to port/tcp #1: survived 5.0 s (served by ns/pod), 50 messages, longest stall N ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/tcp #{}: ",
            self.from, self.to, self.port, self.connection
        )?;
        match &self.failure {
            None => write!(f, "survived {:.1} s", self.held_ms / 1000.0)?,
            Some(why) => write!(f, "lost after {:.1} s ({why})", self.held_ms / 1000.0)?,
        }
        if let Some(pod) = &self.served_by {
            write!(f, " (served by {pod})")?;
        }
        write!(
            f,
            ", {} messages echoed, longest stall {:.1} ms",
            self.messages_echoed, self.longest_stall_ms
        )
    }
}

/// How often a held connection sends its message.
pub const HOLD_INTERVAL: Duration = Duration::from_millis(100);

/// Holds one TCP connection from the namespace `ns` to `addr` for `hold`, on a thread of its
/// own: it sends a short message every [`HOLD_INTERVAL`] and waits up to `timeout` for each
/// echo. The result is not yet labelled (`from`, `to` and `connection` are empty).
pub(crate) fn hold(
    ns: &str,
    addr: SocketAddr,
    hold: Duration,
    timeout: Duration,
) -> Result<HoldResult, LabError> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).map_err(LabError::kernel(format!("entering {ns}")))?;
        Ok(hold_here(addr, hold, timeout))
    })
    .join()
    .map_err(|_| LabError::ThreadPanicked { what: "probe" })?
}

fn hold_here(addr: SocketAddr, hold: Duration, timeout: Duration) -> HoldResult {
    let start = Instant::now();
    let mut result = HoldResult {
        from: String::new(),
        to: String::new(),
        port: addr.port(),
        connection: 0,
        survived: false,
        failure: None,
        served_by: None,
        client_ip_seen: None,
        messages_echoed: 0,
        longest_stall_ms: 0.0,
        held_ms: 0.0,
    };
    let failure = hold_stream(addr, hold, timeout, &mut result);
    result.held_ms = start.elapsed().as_secs_f64() * 1000.0;
    result.survived = failure.is_none();
    result.failure = failure.map(str::to_owned);
    result
}

/// Runs the held connection, filling in `result`; returns why it failed, if it did.
fn hold_stream(
    addr: SocketAddr,
    hold: Duration,
    timeout: Duration,
    result: &mut HoldResult,
) -> Option<&'static str> {
    let why = |e: &std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => "reset",
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "stalled",
        _ => "closed",
    };
    let start = Instant::now();
    let stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if classify(&e) == Outcome::Timeout => return Some("timeout"),
        Err(e) => return Some(why(&e)),
    };
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return Some("closed");
    }
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Some("closed"),
        Ok(_) => {}
        Err(e) => return Some(why(&e)),
    }
    let reply = EchoReply::parse(&line);
    result.served_by = reply.as_ref().map(|r| r.pod.clone());
    result.client_ip_seen = reply.map(|r| r.client.ip());
    let mut next = start + HOLD_INTERVAL;
    for n in 1u32.. {
        let now = Instant::now();
        if now >= start + hold {
            return None;
        }
        std::thread::sleep(next.saturating_duration_since(now));
        next += HOLD_INTERVAL;
        let msg = format!("hold {n}\n");
        let sent = Instant::now();
        if let Err(e) = (&stream).write_all(msg.as_bytes()) {
            return Some(why(&e));
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Some("closed"),
            Ok(_) if line == msg => {}
            Ok(_) => return Some("closed"),
            Err(e) => return Some(why(&e)),
        }
        result.messages_echoed = n;
        let stall = sent.elapsed().as_secs_f64() * 1000.0;
        result.longest_stall_ms = result.longest_stall_ms.max(stall);
    }
    None
}

/// One attempt, before it is labelled with its source and target.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Attempt {
    pub outcome: Outcome,
    pub reply: Option<EchoReply>,
    pub latency: Duration,
}

impl Outcome {
    /// Whether the packet reached the destination's own stack: it connected, was answered,
    /// or was refused there (a TCP reset or ICMP port unreachable comes from the destination;
    /// policies drop, they never refuse). Only silence and "unreachable" mean it did not.
    pub fn got_through(self) -> bool {
        matches!(
            self,
            Outcome::Connected | Outcome::Answered | Outcome::Refused
        )
    }
}

/// Sends one probe from the namespace `ns` to `ip` on a thread of its own.
pub(crate) fn attempt(ns: &str, ip: IpAddr, spec: &ProbeSpec) -> Result<Attempt, LabError> {
    if spec.protocol == ProbeProtocol::Icmp {
        return ping(ns, ip, spec.timeout);
    }
    let (ns, spec) = (ns.to_owned(), *spec);
    std::thread::spawn(move || {
        netns::enter(&ns).map_err(LabError::kernel(format!("entering {ns}")))?;
        attempt_here(ip, &spec)
    })
    .join()
    .map_err(|_| LabError::ThreadPanicked { what: "probe" })?
}

/// Makes sure probes of `protocol` can be sent from this kernel: for SCTP, loads the `sctp`
/// module if need be and checks that SCTP sockets open.
pub(crate) fn check_protocol(protocol: ProbeProtocol) -> Result<(), LabError> {
    if protocol != ProbeProtocol::Sctp {
        return Ok(());
    }
    module::ensure(&[module::SCTP]).map_err(LabError::modules("for sctp probes"))?;
    if !module::sctp_sockets() {
        return Err(LabError::ProtocolUnsupported {
            protocol: protocol.to_string(),
        });
    }
    Ok(())
}

/// Sends one TCP, UDP or SCTP probe from the namespace the calling thread is in.
pub(crate) fn attempt_here(ip: IpAddr, spec: &ProbeSpec) -> Result<Attempt, LabError> {
    let port_required = || LabError::PortRequired {
        protocol: spec.protocol.to_string(),
    };
    match spec.protocol {
        ProbeProtocol::Icmp => Err(LabError::ProtocolUnsupported {
            protocol: spec.protocol.to_string(),
        }),
        ProbeProtocol::Sctp => Ok(sctp(
            SocketAddr::new(ip, spec.port.ok_or_else(port_required)?),
            spec.timeout,
        )),
        ProbeProtocol::Tcp => Ok(tcp(
            SocketAddr::new(ip, spec.port.ok_or_else(port_required)?),
            spec.timeout,
        )),
        ProbeProtocol::Udp => Ok(udp(
            SocketAddr::new(ip, spec.port.ok_or_else(port_required)?),
            spec.timeout,
        )),
    }
}

/// The port on which a probe asks a DNS question instead of waiting for an echo line.
const DNS_PORT: u16 = 53;

/// A DNS query for `. IN NS` with recursion desired and ID 0x6b6e: any DNS server
/// answers it somehow (an answer, NXDOMAIN or REFUSED), and any answer will do.
const DNS_QUERY: [u8; 17] = [
    0x6b, 0x6e, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header: ID, RD, one question
    0, 0, 2, 0, 1, // the root name, type NS, class IN
];

/// Whether `reply` is a DNS response to [`DNS_QUERY`] (same ID, QR set).
fn is_dns_answer(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[..2] == DNS_QUERY[..2] && reply[2] & 0x80 != 0
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut stream) => {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(50));
            let _ = stream.set_read_timeout(Some(left));
            if addr.port() == DNS_PORT {
                // An echo server writes its line first and then echoes the query; a DNS
                // server answers the query (TCP DNS: a two-byte length, then the message).
                let mut msg = (DNS_QUERY.len() as u16).to_be_bytes().to_vec();
                msg.extend_from_slice(&DNS_QUERY);
                let _ = stream.write_all(&msg);
                let mut buf = [0u8; 512];
                let n = stream.read(&mut buf).unwrap_or(0);
                let (outcome, reply) = if n > 2 && is_dns_answer(&buf[2..n]) {
                    (Outcome::Answered, None)
                } else {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    (
                        Outcome::Connected,
                        line.lines().next().and_then(EchoReply::parse),
                    )
                };
                return Attempt {
                    outcome,
                    reply,
                    latency: start.elapsed(),
                };
            }
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

fn sctp(addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let fail = |e: &std::io::Error| Attempt {
        outcome: classify(e),
        reply: None,
        latency: start.elapsed(),
    };
    let association = match sctp_socket(&addr) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // An INIT nobody answers is retransmitted until the timeout: a drop. An ABORT (no
    // listener) is ECONNREFUSED, as a TCP reset is.
    if let Err(e) = association.connect_timeout(&addr.into(), timeout) {
        return fail(&e);
    }
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(50));
    let _ = association.set_read_timeout(Some(left));
    Attempt {
        outcome: Outcome::Connected,
        reply: read_reply(&association),
        latency: start.elapsed(),
    }
}

fn udp(addr: SocketAddr, timeout: Duration) -> Attempt {
    let start = Instant::now();
    let fail = |e: &std::io::Error| Attempt {
        outcome: classify(e),
        reply: None,
        latency: start.elapsed(),
    };
    let any: IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = match udp_socket(any) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(e) = socket
        .connect(addr)
        .and_then(|()| socket.set_read_timeout(Some(timeout)))
    {
        return fail(&e);
    }
    // On port 53 a DNS question, which the echo server answers like any datagram and a DNS
    // server answers as DNS.
    let payload: &[u8] = if addr.port() == DNS_PORT {
        &DNS_QUERY
    } else {
        b"probe\n"
    };
    if let Err(e) = socket.send(payload) {
        return fail(&e);
    }
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) if addr.port() == DNS_PORT && is_dns_answer(&buf[..n]) => Attempt {
            outcome: Outcome::Answered,
            reply: None,
            latency: start.elapsed(),
        },
        Ok(n) => Attempt {
            outcome: Outcome::Connected,
            reply: EchoReply::parse(&String::from_utf8_lossy(&buf[..n])),
            latency: start.elapsed(),
        },
        Err(e) => fail(&e),
    }
}

/// The ports UDP probes are sent from: the kernel's default ephemeral range.
const UDP_PROBE_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// A UDP socket for a probe, bound to `local` and the next source port of this process's
/// probes (from a random start, then one after the other). The kernel picks a random free
/// port when asked for any, and so now and then the port an earlier probe between the same
/// two Pods had: conntrack then takes the probe for that earlier flow, and if that one was
/// allowed, the probe passes as a reply would, through a policy that blocks new flows. Taking
/// the ports in turn, no probe repeats an earlier one's addresses and ports until the range
/// wraps around, long after conntrack forgot them (120 s at most for UDP).
fn udp_socket(local: IpAddr) -> std::io::Result<UdpSocket> {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let (low, count) = (
        u32::from(*UDP_PROBE_PORTS.start()),
        u32::from(*UDP_PROBE_PORTS.end() - *UDP_PROBE_PORTS.start()) + 1,
    );
    let next = NEXT.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        // Below `count`, so it fits.
        AtomicU32::new(u32::try_from(random % u64::from(count)).unwrap_or_default())
    });
    let mut last = None;
    // A port this namespace already uses (a workload listening on it) is skipped.
    for _ in 0..16 {
        let offset = next.fetch_add(1, Ordering::Relaxed) % count;
        // Below 65,536: `low + offset` is at most the range's end.
        let port = u16::try_from(low + offset).unwrap_or(*UDP_PROBE_PORTS.end());
        match UdpSocket::bind(SocketAddr::new(local, port)) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => last = Some(e),
            bound => return bound,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(ErrorKind::AddrInUse)))
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

/// Resolves `name` inside the namespace `ns`, with its `/etc/netns/NS/resolv.conf`, to an
/// address of `family` (an A or an AAAA record).
pub(crate) fn resolve_name(ns: &str, name: &str, family: IpFamily) -> Result<IpAddr, LabError> {
    let not_resolved = || LabError::NameNotResolved {
        name: name.to_owned(),
        from: ns.to_owned(),
    };
    let database = match family {
        IpFamily::V4 => "ahostsv4",
        IpFamily::V6 => "ahostsv6",
    };
    let out = netns::exec(ns, &["getent", database, name]).map_err(|_| not_resolved())?;
    // Without an AAAA record `ahostsv6` answers the A record as `::ffff:a.b.c.d`: that is
    // no IPv6 address of the name.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<IpAddr>().ok())
        .find(|ip| family.contains(ip.to_canonical()))
        .ok_or_else(not_resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_probes_take_source_ports_in_turn_and_skip_ports_in_use() {
        let local: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let port = |s: UdpSocket| s.local_addr().expect("local address").port();
        let after = |p: u16| {
            if p == *UDP_PROBE_PORTS.end() {
                *UDP_PROBE_PORTS.start()
            } else {
                p + 1
            }
        };
        let first = port(udp_socket(local).expect("first"));
        assert!(UDP_PROBE_PORTS.contains(&first));
        assert_eq!(port(udp_socket(local).expect("second")), after(first));
        // The port after that is taken: the probe takes the next one.
        let taken = after(after(first));
        let _held = UdpSocket::bind((local, taken)).expect("hold a port");
        assert_eq!(port(udp_socket(local).expect("third")), after(taken));
    }

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
