//! [`PolicyError`]: what can go wrong when a question names something the snapshot lacks.

use netd_model::TargetParseError;
use netd_model::{NodeName, PodRef, Protocol, ServiceRef};

/// Why a policy question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A flow or query names a Pod the snapshot does not have.
    #[error("pod {pod} not found")]
    UnknownPod {
        /// The Pod asked for.
        pod: PodRef,
    },
    /// A flow or compilation names a Node the snapshot does not have.
    #[error("node {node} not found")]
    UnknownNode {
        /// The Node asked for.
        node: NodeName,
    },
    /// A flow through a Service names a Service the snapshot does not have.
    #[error("service {service} not found")]
    UnknownService {
        /// The Service asked for.
        service: ServiceRef,
    },
    /// A flow through a Service names a port the Service does not expose.
    #[error("service {service} has no {protocol} port {port}")]
    UnknownServicePort {
        /// The Service.
        service: ServiceRef,
        /// The port asked for.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// A TCP, UDP or SCTP flow was asked about without a port: policies allow ports, so
    /// the answer depends on it.
    #[error(
        "a {protocol} check needs a port (--port); NetworkPolicy rules allow ports, not whole protocols"
    )]
    PortNeeded {
        /// The flow's protocol.
        protocol: Protocol,
    },
    /// A command-line endpoint names nothing (see [`netd_model::target`]).
    #[error("reading an endpoint")]
    ParseEndpoint {
        /// Why, with the text given.
        #[source]
        source: TargetParseError,
    },
    /// A command-line endpoint names something that is not one end of a flow.
    #[error(
        "{input:?} is {what}, not an endpoint of a flow (NS/POD, POD, svc/[NS/]NAME, node/NAME or an IP)"
    )]
    NotAnEndpoint {
        /// The text given.
        input: String,
        /// What it names instead.
        what: &'static str,
    },
    /// A Service named as an endpoint has no ClusterIP to send to (headless or ExternalName).
    #[error("service {service} has no ClusterIP")]
    NoClusterIp {
        /// The Service.
        service: ServiceRef,
    },
    /// A matrix was built from a grid whose shape does not match its list of Pods.
    #[error(
        "building a matrix of {pods} pods from a grid of {rows} rows (every row must have {pods} columns)"
    )]
    BuildMatrix {
        /// The number of Pods.
        pods: usize,
        /// The number of rows given.
        rows: usize,
    },
}
