//! Flows: what the engine is asked about.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use netd_model::keys::ProtocolParseError;
use netd_model::{NodeName, PodRef, Protocol};
use serde::Serialize;

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Endpoint {
    /// A Pod, by key. A hostNetwork Pod stands for its Node.
    Pod(PodRef),
    /// An address: a Pod's (then it is that Pod), a Node's, or one outside the cluster.
    Ip(IpAddr),
    /// A Node, by name (its own network namespace: kubelet, hostNetwork Pods).
    Node(NodeName),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod(p) => write!(f, "{p}"),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
            Endpoint::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// The protocol of a flow: a transport protocol NetworkPolicy ports can name, or ICMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FlowProtocol {
    /// TCP, UDP or SCTP.
    Transport(Protocol),
    /// ICMP (ping). Only a rule without `ports` can allow it.
    Icmp,
}

impl From<Protocol> for FlowProtocol {
    fn from(p: Protocol) -> Self {
        FlowProtocol::Transport(p)
    }
}

impl fmt::Display for FlowProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowProtocol::Transport(p) => write!(f, "{p}"),
            FlowProtocol::Icmp => f.write_str("ICMP"),
        }
    }
}

impl FromStr for FlowProtocol {
    type Err = ProtocolParseError;

    /// `TCP`, `UDP`, `SCTP`, `ICMP`, in upper or lower case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ICMP" | "icmp" => Ok(FlowProtocol::Icmp),
            _ => Protocol::from_str(s).map(FlowProtocol::Transport),
        }
    }
}

/// A connection, in the direction it is initiated.
///
/// The engine judges the first packet of a connection. Replies of an allowed connection always
/// pass (the kernel accepts `ESTABLISHED,RELATED` before any policy rule), so the reverse
/// direction of an allowed flow is never asked about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Flow {
    /// Who opens the connection.
    pub src: Endpoint,
    /// Whom it is opened to.
    pub dst: Endpoint,
    /// Its protocol.
    pub protocol: FlowProtocol,
    /// The destination port; `None` for ICMP. A transport flow without a port is matched only
    /// by rules that allow every port of its protocol.
    pub port: Option<u16>,
}

impl Flow {
    /// A TCP, UDP or SCTP flow to a port.
    pub fn new(src: Endpoint, dst: Endpoint, protocol: Protocol, port: u16) -> Self {
        Flow {
            src,
            dst,
            protocol: FlowProtocol::Transport(protocol),
            port: Some(port),
        }
    }

    /// An ICMP flow (ping).
    pub fn icmp(src: Endpoint, dst: Endpoint) -> Self {
        Flow {
            src,
            dst,
            protocol: FlowProtocol::Icmp,
            port: None,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.src, self.dst, self.protocol)?;
        if let Some(port) = self.port {
            write!(f, "/{port}")?;
        }
        Ok(())
    }
}
