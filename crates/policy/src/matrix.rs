//! The truth table: for every ordered pair of Pods, whether a connection is allowed.
//!
//! `kube-netd policy matrix` fills it from the engine and `kube-netd lab matrix` from real
//! packets; both print it with [`Matrix::to_text`], so the two can be diffed line by line.

use std::collections::HashMap;

use netd_model::{ClusterState, NamespaceName, PodRef, Protocol};
use serde_json::json;

use crate::engine::evaluate_pods;
use crate::error::PolicyError;

/// A square table of verdicts: rows are sources, columns destinations, in the order of
/// [`Matrix::pods`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    port: u16,
    protocol: Protocol,
    pods: Vec<PodRef>,
    allowed: Vec<Vec<bool>>,
}

/// One pair on which two matrices disagree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mismatch {
    /// The source Pod.
    pub from: PodRef,
    /// The destination Pod.
    pub to: PodRef,
    /// The value in the matrix `mismatches` was called on.
    pub expected: bool,
    /// The value in the other matrix.
    pub actual: bool,
}

impl Matrix {
    /// A matrix from its Pods and grid (`allowed[from][to]`); fails unless the grid has one
    /// row per Pod and one column per Pod in every row.
    pub fn new(
        port: u16,
        protocol: Protocol,
        pods: Vec<PodRef>,
        allowed: Vec<Vec<bool>>,
    ) -> Result<Self, PolicyError> {
        if allowed.len() != pods.len() || allowed.iter().any(|row| row.len() != pods.len()) {
            return Err(PolicyError::BuildMatrix {
                pods: pods.len(),
                rows: allowed.len(),
            });
        }
        Ok(Matrix {
            port,
            protocol,
            pods,
            allowed,
        })
    }

    /// The destination port probed.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The protocol probed.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The Pods, in row (and column) order.
    pub fn pods(&self) -> &[PodRef] {
        &self.pods
    }

    /// The grid: `grid()[from][to]`.
    pub fn grid(&self) -> &[Vec<bool>] {
        &self.allowed
    }

    /// Whether `from` may connect to `to`; `None` if either is not in the matrix.
    pub fn allowed(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        Some(self.allowed[i][j])
    }

    /// The Kubernetes e2e network-policy truth table (`TruthTable.PrettyPrint("")`): a header
    /// `-` followed by the destinations, then one line per source, cells separated by tabs,
    /// `.` for allowed and `X` for blocked. Every line, the last included, ends in `\n`.
    pub fn to_text(&self) -> String {
        let mut out = String::from("-");
        for pod in &self.pods {
            out.push('\t');
            out.push_str(&pod.to_string());
        }
        out.push('\n');
        for (pod, row) in self.pods.iter().zip(&self.allowed) {
            out.push_str(&pod.to_string());
            for &cell in row {
                out.push('\t');
                out.push(if cell { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }

    /// `{"port":80,"protocol":"TCP","pods":["ns/pod",...],"allowed":[[true,...],...]}` on one
    /// line, keys in that order; rows are sources, columns destinations.
    pub fn to_json(&self) -> String {
        let pods: Vec<String> = self.pods.iter().map(ToString::to_string).collect();
        format!(
            r#"{{"port":{},"protocol":{},"pods":{},"allowed":{}}}"#,
            self.port,
            json!(self.protocol.as_api_str()),
            json!(pods),
            json!(self.allowed),
        )
    }

    /// The pairs present in both matrices on which they disagree, in row order.
    pub fn mismatches(&self, other: &Matrix) -> Vec<Mismatch> {
        let index: HashMap<&PodRef, usize> =
            other.pods.iter().enumerate().map(|(i, p)| (p, i)).collect();
        let mut out = Vec::new();
        for (i, from) in self.pods.iter().enumerate() {
            let Some(&oi) = index.get(from) else { continue };
            for (j, to) in self.pods.iter().enumerate() {
                let Some(&oj) = index.get(to) else { continue };
                let (expected, actual) = (self.allowed[i][j], other.allowed[oi][oj]);
                if expected != actual {
                    out.push(Mismatch {
                        from: from.clone(),
                        to: to.clone(),
                        expected,
                        actual,
                    });
                }
            }
        }
        out
    }
}

/// The engine's truth table for `port`/`protocol` between the Pods of `namespaces` (every
/// namespace when empty): Pods with an IP of their own (not hostNetwork), sorted by key.
/// The diagonal (a Pod to itself) is always allowed.
pub fn matrix(
    state: &ClusterState,
    port: u16,
    protocol: Protocol,
    namespaces: &[NamespaceName],
) -> Matrix {
    let pods: Vec<_> = state
        .pods()
        .filter(|p| !p.host_network && !p.ips.is_empty())
        .filter(|p| namespaces.is_empty() || namespaces.contains(&p.key.namespace))
        .collect();
    let allowed = pods
        .iter()
        .map(|src| {
            pods.iter()
                .map(|dst| evaluate_pods(state, src, dst, protocol.into(), Some(port)).allowed)
                .collect()
        })
        .collect();
    Matrix {
        port,
        protocol,
        pods: pods.iter().map(|p| p.key.clone()).collect(),
        allowed,
    }
}
