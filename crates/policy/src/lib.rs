//! # netd-policy: NetworkPolicy semantics
//!
//! The engine that decides whether a flow is allowed and why, the back-end-neutral plan the
//! renderers turn into kernel rules, and the tools that show people what was decided. Pure:
//! no I/O, no clock.
//!
//! Start with [`evaluate`]: a [`Flow`] (source, destination, protocol, port) in, a
//! [`Verdict`] out, naming the policies and rules that allowed or blocked it. It is the
//! executable spec of networking.k8s.io/v1 NetworkPolicy; [`compile`] produces the
//! [`PolicyPlan`] for one Node, and kernel tests hold the rendered rules against `evaluate`.
//!
//! ```
//! use netd_policy::{Endpoint, Flow, evaluate};
//! use netd_model::{PodRef, Protocol};
//!
//! let state = netd_testkit::state(r#"
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: db, namespace: default, labels: {role: db}}
//! spec: {nodeName: node-1, containers: [{name: c, image: i}]}
//! status: {podIP: 10.244.1.2}
//! ---
//! apiVersion: networking.k8s.io/v1
//! kind: NetworkPolicy
//! metadata: {name: db, namespace: default}
//! spec: {podSelector: {matchLabels: {role: db}}, ingress: [{ports: [{port: 6379}]}]}
//! "#);
//! let db = Endpoint::Pod(PodRef::new("default", "db"));
//! let outside = Endpoint::Ip("192.0.2.1".parse().unwrap());
//! let verdict = evaluate(&state, &Flow::new(outside, db, Protocol::Tcp, 80)).unwrap();
//! assert_eq!(
//!     verdict.to_string(),
//!     "blocked: isolated for ingress by default/db; no ingress rule allows this port: \
//!      default/db ingress[0] allows any peer on TCP 6379; this flow is TCP 80"
//! );
//! ```
//!
//! - [`flow`]: what is asked ([`Flow`], [`Endpoint`], [`FlowProtocol`]).
//! - [`verdict`]: the answers ([`Verdict`], [`SideVerdict`], [`RuleRef`], [`PortMiss`],
//!   [`Isolation`]).
//! - [`engine`]: [`evaluate`], [`evaluate_via_service`], [`isolation`].
//! - [`plan`]: [`compile`] and the [`PolicyPlan`] (per-Pod rules, named address sets).
//! - [`matrix`]: the truth table ([`Matrix`]) shared with the lab's kernel probes.
//! - [`explain`]: the text of `kube-netd policy check` and `policy show`.
//!
//! ## Semantics decided here
//!
//! - A flow is allowed when the source Pod's egress side and the destination Pod's ingress
//!   side both allow it; a side not selected by any policy for its direction allows all.
//! - The engine judges a connection's initiating direction; replies always pass.
//! - A Pod reaching its own IP, and a Node reaching a Pod on it, are always allowed.
//! - hostNetwork Pods are never selected; as peers they are their Node's IP (ipBlock only).
//! - A rule that lists ports never allows ICMP.
//! - Flows through a Service are judged after DNAT ([`evaluate_via_service`]).

pub mod engine;
pub mod error;
pub mod explain;
pub mod flow;
pub mod matrix;
pub mod plan;
pub mod verdict;

pub use engine::{BackendVerdict, evaluate, evaluate_via_service, isolation};
pub use error::PolicyError;
pub use explain::{Checked, check, parse_endpoint, show};
pub use flow::{Endpoint, Flow, FlowProtocol};
pub use matrix::{Matrix, matrix};
pub use plan::{PolicyPlan, compile};
pub use verdict::{Direction, Exemption, Isolation, PortMiss, RuleRef, SideVerdict, Verdict};
