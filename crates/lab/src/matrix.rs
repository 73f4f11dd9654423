//! `lab matrix`: every Pod probed from every Pod, each cell the kernel's answer.
//!
//! [`ProbeMatrix`] keeps each pair's [`Outcome`], so that a reader can tell a connection from
//! a refusal (no listener: the packet got through), from a DNS server's answer (a Pod that is
//! not an echo server) and from silence (dropped: what a NetworkPolicy does).
//! [`ProbeMatrix::allowed`] reduces it to the truth table `policy matrix` computes.
//!
//! A pair is reported dropped only after it timed out twice: once in the burst and once more,
//! alone with the other silent pairs, so a loss under load is not read as policy.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use netd_kernel::netns;
use netd_model::{PodRef, Protocol};
use netd_policy::Matrix;
use serde_json::json;

use crate::LabError;
use crate::probe::{self, Outcome, ProbeProtocol, ProbeSpec};

/// The truth table from real packets: rows are sources, columns destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeMatrix {
    port: Option<u16>,
    protocol: ProbeProtocol,
    pods: Vec<PodRef>,
    outcomes: Vec<Vec<Outcome>>,
    recovered: usize,
}

impl ProbeMatrix {
    /// The Pods, in row (and column) order.
    pub fn pods(&self) -> &[PodRef] {
        &self.pods
    }

    /// `outcomes()[from][to]`: how the probe from `pods()[from]` to `pods()[to]` ended.
    pub fn outcomes(&self) -> &[Vec<Outcome>] {
        &self.outcomes
    }

    /// How many pairs got no answer in the burst but got through when probed again: a sign
    /// of loss under load (zero in a healthy lab), never reported as blocked.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    /// The truth table `policy matrix` computes: a pair is allowed when its packets got
    /// through ([`Outcome::got_through`]). `None` for ICMP, which `policy matrix` has not.
    pub fn allowed(&self) -> Option<Matrix> {
        let (port, protocol) = match (self.port, self.protocol) {
            (Some(port), ProbeProtocol::Tcp) => (port, Protocol::Tcp),
            (Some(port), ProbeProtocol::Udp) => (port, Protocol::Udp),
            (Some(port), ProbeProtocol::Sctp) => (port, Protocol::Sctp),
            _ => return None,
        };
        let grid = self
            .outcomes
            .iter()
            .map(|row| row.iter().map(|o| o.got_through()).collect())
            .collect();
        Matrix::new(port, protocol, self.pods.clone(), grid).ok()
    }

    /// The table for people: a legend, then a header row of destinations numbered by column,
    /// then one row per source, every column aligned. Each line ends in `\n`.
    pub fn to_text(&self) -> String {
        let what = match self.port {
            Some(port) => format!("{port}/{}", self.protocol),
            None => self.protocol.to_string(),
        };
        let mut out = format!(
            "Probes to {what}: rows are sources, columns destinations (numbered as the rows).\n\
             Legend: . connected   A answered, not an echo server (DNS)   \
             R refused (no listener; policy let it through)\n        \
             X dropped (no answer, checked twice)   U unreachable\n\n"
        );
        let names: Vec<String> = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{:>w$} {p}", i + 1, w = digits(self.pods.len())))
            .collect();
        let name_width = names.iter().map(String::len).max().unwrap_or(0);
        let cell = digits(self.pods.len()).max(1);
        let _ = write!(out, "{:name_width$}", "");
        for j in 0..self.pods.len() {
            let _ = write!(out, " {:>cell$}", j + 1);
        }
        out.push('\n');
        for (name, row) in names.iter().zip(&self.outcomes) {
            let _ = write!(out, "{name:name_width$}");
            for o in row {
                let _ = write!(out, " {:>cell$}", symbol(*o));
            }
            out.push('\n');
        }
        if self.recovered > 0 {
            let _ = writeln!(
                out,
                "\nnote: {} pairs got no answer in the burst and got through when probed again",
                self.recovered
            );
        }
        out
    }

    /// One line of JSON: `port` (`null` for ICMP), `protocol`, `pods`, `allowed` (rows of
    /// booleans, as `policy matrix -o json`) and `outcomes` (rows of outcome names).
    pub fn to_json(&self) -> String {
        let pods: Vec<String> = self.pods.iter().map(ToString::to_string).collect();
        let allowed: Vec<Vec<bool>> = self
            .outcomes
            .iter()
            .map(|row| row.iter().map(|o| o.got_through()).collect())
            .collect();
        json!({
            "port": self.port,
            "protocol": self.protocol,
            "pods": pods,
            "allowed": allowed,
            "outcomes": self.outcomes,
            "recovered": self.recovered,
        })
        .to_string()
    }
}

/// Probes every pair of `pods` (each with its namespace and IP) as `spec` says. At most
/// `WORKERS` probes are in flight; pairs that got no answer are probed once more, after the
/// burst, before they are reported dropped.
pub(crate) fn run(
    pods: Vec<(PodRef, String, IpAddr)>,
    spec: &ProbeSpec,
) -> Result<ProbeMatrix, LabError> {
    let n = pods.len();
    let all: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect();
    let mut outcomes = vec![vec![Outcome::Timeout; n]; n];
    for (i, j, o) in probe_pairs(&pods, &all, spec)? {
        outcomes[i][j] = o;
    }
    let silent: Vec<(usize, usize)> = all
        .into_iter()
        .filter(|&(i, j)| !outcomes[i][j].got_through())
        .collect();
    let mut recovered = 0;
    for (i, j, o) in probe_pairs(&pods, &silent, spec)? {
        recovered += usize::from(o.got_through());
        outcomes[i][j] = o;
    }
    Ok(ProbeMatrix {
        port: spec.port,
        protocol: spec.protocol,
        pods: pods.into_iter().map(|(p, _, _)| p).collect(),
        outcomes,
        recovered,
    })
}

/// Probes in flight at once. Each is a thread blocked in `connect`, so this bounds threads,
/// not CPU; ICMP probes run `ping`, a process each, and use fewer.
const WORKERS: usize = 1024;
const ICMP_WORKERS: usize = 32;

fn probe_pairs(
    pods: &[(PodRef, String, IpAddr)],
    pairs: &[(usize, usize)],
    spec: &ProbeSpec,
) -> Result<Vec<(usize, usize, Outcome)>, LabError> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(pairs.len()));
    let workers = match spec.protocol {
        ProbeProtocol::Icmp => ICMP_WORKERS,
        _ => WORKERS,
    }
    .min(pairs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| worker(pods, pairs, spec, &next, &results)))
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| LabError::ThreadPanicked { what: "matrix" })??;
        }
        Ok::<_, LabError>(())
    })?;
    results
        .into_inner()
        .map_err(|_| LabError::ThreadPanicked { what: "matrix" })
}

/// Takes pairs until none are left. A worker is a thread of its own: it enters each source's
/// namespace (`setns` moves only this thread) and probes from there.
fn worker(
    pods: &[(PodRef, String, IpAddr)],
    pairs: &[(usize, usize)],
    spec: &ProbeSpec,
    next: &AtomicUsize,
    results: &Mutex<Vec<(usize, usize, Outcome)>>,
) -> Result<(), LabError> {
    let mut entered: Option<usize> = None;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(&(i, j)) = pairs.get(k) else {
            return Ok(());
        };
        let (src_ns, dst_ip) = (&pods[i].1, pods[j].2);
        let attempt = if spec.protocol == ProbeProtocol::Icmp {
            probe::attempt(src_ns, dst_ip, spec)?
        } else {
            if entered != Some(i) {
                netns::enter(src_ns).map_err(LabError::kernel(format!("entering {src_ns}")))?;
                entered = Some(i);
            }
            probe::attempt_here(dst_ip, spec)?
        };
        results
            .lock()
            .map_err(|_| LabError::ThreadPanicked { what: "matrix" })?
            .push((i, j, attempt.outcome));
    }
}

fn symbol(o: Outcome) -> char {
    match o {
        Outcome::Connected => '.',
        Outcome::Answered => 'A',
        Outcome::Refused => 'R',
        Outcome::Timeout => 'X',
        Outcome::Unreachable => 'U',
    }
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProbeMatrix {
        ProbeMatrix {
            port: Some(80),
            protocol: ProbeProtocol::Tcp,
            pods: vec![PodRef::new("x", "a"), PodRef::new("kube-system", "dns")],
            outcomes: vec![
                vec![Outcome::Connected, Outcome::Answered],
                vec![Outcome::Timeout, Outcome::Refused],
            ],
            recovered: 0,
        }
    }

    #[test]
    fn text_has_a_legend_and_aligned_columns() {
        let text = sample().to_text();
        assert!(text.contains("rows are sources"), "{text}");
        assert!(text.contains("R refused"), "{text}");
        let table: Vec<&str> = text.lines().skip(4).collect();
        assert_eq!(
            table,
            [
                "                  1 2",
                "1 x/a             . A",
                "2 kube-system/dns X R"
            ]
        );
    }

    #[test]
    fn refused_and_answered_got_through_and_silence_did_not() {
        let m = sample().allowed().expect("tcp has a truth table");
        assert_eq!(m.grid(), [vec![true, true], vec![false, true]]);
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).expect("json");
        assert_eq!(v["outcomes"][0][1], "answered");
        assert_eq!(v["allowed"][1][0], false);
        assert_eq!(v["recovered"], 0);
        let lossy = ProbeMatrix {
            recovered: 3,
            ..sample()
        };
        assert!(lossy.to_text().ends_with(
            "note: 3 pairs got no answer in the burst and got through when probed again\n"
        ));
    }
}
