//! Golden files of the NetworkPolicy back end: `tests/golden/policy/<scenario>/input.yaml`
//! rendered for one node must equal `ipset.rules`, `iptables.rules` and, for the nftables
//! mode, `nftables-policy.nft` byte for byte.
//! `UPDATE_GOLDEN=1 cargo test -p netd-render --test policy_golden` rewrites them.
//!
//! The scenarios live one level down (`golden/policy/`) so that the service goldens, which
//! take every `golden/*/input.yaml`, do not pick them up. An input may start with a
//! `# node: NAME` line (default `node-1`).

mod common;

use std::collections::BTreeMap;

use netd_proxy::IpFamily;
use netd_render::iptables::{self, Direction};
use netd_render::nft::policy::{EGRESS_MAP, INGRESS_MAP, render_policy_nft};
use netd_render::nft::{self, Field, MapValue, Rhs, Statement, Value};
use netd_render::{Table, Target, render_policy};

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for (dir, plan) in common::policy_scenarios() {
        let rules = render_policy(&plan, IpFamily::V4);
        for (file, got) in [
            ("ipset.rules", rules.ipset_input()),
            ("iptables.rules", rules.restore_input()),
            (
                "nftables-policy.nft",
                render_policy_nft(&plan, IpFamily::V4).to_nft(),
            ),
        ] {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &got).expect("write golden");
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if got != want {
                eprintln!(
                    "=== {} differs:\n--- want\n{want}--- got\n{got}",
                    path.display()
                );
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}

/// The nftables rules say what the iptables rules say: for every scenario, each Pod chain
/// has the same rules in the same order (comment, verdict and every match, peers, sets and
/// ports alike), and the same Pod IPs dispatch to the same chains.
#[test]
fn nftables_rules_mirror_the_iptables_rules() {
    let mut compared = 0;
    for (dir, plan) in common::policy_scenarios() {
        let ipt = render_policy(&plan, IpFamily::V4);
        let nft = render_policy_nft(&plan, IpFamily::V4);
        let mut ipt_chains = BTreeMap::new();
        let mut ipt_dispatch = BTreeMap::new();
        for (chain, rules) in ipt.ruleset.chains(Table::Filter) {
            let name = chain.as_str();
            let nft_name = if let Some(id) = name.strip_prefix("KNP-I-") {
                format!("policy-ingress-{id}")
            } else if let Some(id) = name.strip_prefix("KNP-E-") {
                format!("policy-egress-{id}")
            } else {
                for rule in rules {
                    ipt_dispatch.insert((name.to_owned(), dispatch_key(rule)), ());
                }
                continue;
            };
            ipt_chains.insert(
                nft_name,
                rules.iter().map(iptables_rule).collect::<Vec<_>>(),
            );
        }
        let nft_chains: BTreeMap<String, Vec<String>> = nft
            .chains
            .values()
            .filter(|c| c.base.is_none())
            .map(|c| (c.name.clone(), c.rules.iter().map(nft_rule).collect()))
            .collect();
        assert_eq!(nft_chains, ipt_chains, "{}", dir.display());
        let mut nft_dispatch = BTreeMap::new();
        for (map, chains) in [
            (INGRESS_MAP, ["KNP-FORWARD"].as_slice()),
            (EGRESS_MAP, ["KNP-FORWARD", "KNP-INPUT"].as_slice()),
        ] {
            for element in nft.sets[map].elements.values() {
                let Some(MapValue::Verdict(nft::Verdict::Jump(to))) = &element.value else {
                    panic!("{map}: {element:?}");
                };
                let key = format!("{} -> {to}", element.key[0].display());
                for chain in chains {
                    nft_dispatch.insert(((*chain).to_owned(), key.clone()), ());
                }
            }
        }
        assert_eq!(nft_dispatch, ipt_dispatch, "{}", dir.display());
        compared += nft_chains.len();
    }
    assert!(compared >= 10, "only {compared} pod chains compared");
}

/// `IP -> policy-…-<id>` of an iptables dispatch rule (`-d IP -j KNP-I-<id>`).
fn dispatch_key(rule: &iptables::Rule) -> String {
    let ip = rule.matches.iter().find_map(|m| match m {
        iptables::Match::Source { addr, .. } | iptables::Match::Destination { addr, .. } => {
            Some(addr.to_string())
        }
        _ => None,
    });
    let to = match &rule.target {
        Some(Target::Jump(c)) => c
            .as_str()
            .replace("KNP-I-", "policy-ingress-")
            .replace("KNP-E-", "policy-egress-"),
        other => panic!("dispatch rule with {other:?}"),
    };
    format!("{} -> {to}", ip.unwrap_or_default())
}

/// One iptables rule as a neutral description: its matches, verdict and comment.
fn iptables_rule(rule: &iptables::Rule) -> String {
    let mut parts = Vec::new();
    let mut protocol = None;
    for m in &rule.matches {
        match m {
            iptables::Match::Comment(_) => {}
            iptables::Match::Conntrack { states, .. } => {
                let mut s: Vec<String> = states
                    .iter()
                    .map(|s| format!("{s:?}").to_lowercase())
                    .collect();
                s.sort();
                parts.push(format!("ct {}", s.join(",")));
            }
            iptables::Match::AddrTypeLocal { direction, .. } => {
                parts.push(format!("local {direction:?}").to_lowercase())
            }
            iptables::Match::Source { addr, .. } => parts.push(format!("src {addr}")),
            iptables::Match::Destination { addr, .. } => parts.push(format!("dst {addr}")),
            iptables::Match::Set {
                name, directions, ..
            } => {
                let key = match directions.as_slice() {
                    [Direction::Dst, Direction::Dst] => "dst,proto,port",
                    [Direction::Src] => "src",
                    [Direction::Dst] => "dst",
                    other => panic!("set match {other:?}"),
                };
                parts.push(format!("set {name} by {key}"));
            }
            iptables::Match::Protocol(p) => protocol = Some(*p),
            iptables::Match::DestinationPort(r) => {
                let p = protocol.take().expect("port after protocol");
                parts.push(format!("{} {}-{}", p.as_lower_str(), r.first, r.last));
            }
            other => panic!("unexpected policy match {other:?}"),
        }
    }
    if let Some(p) = protocol {
        parts.push(format!("proto {}", p.as_lower_str()));
    }
    let verdict = match &rule.target {
        Some(Target::Accept) => "accept",
        Some(Target::Return) => "return",
        Some(Target::Drop) => "drop",
        other => panic!("unexpected policy target {other:?}"),
    };
    format!(
        "{} => {verdict} ({})",
        parts.join(" "),
        rule.comment_text().unwrap_or_default()
    )
}

/// One nftables rule as the same neutral description as [`iptables_rule`].
fn nft_rule(rule: &nft::Rule) -> String {
    let mut parts = Vec::new();
    for m in &rule.matches {
        let value = |i: usize| match &m.rhs {
            Rhs::Value(vs) => vs[i],
            other => panic!("unexpected {other:?}"),
        };
        match (m.fields.as_slice(), &m.rhs) {
            ([Field::CtState], Rhs::AnyOf(states)) => {
                let mut s: Vec<String> = states.iter().map(|v| v.display()).collect();
                s.sort();
                parts.push(format!("ct {}", s.join(",")));
            }
            ([Field::FibSaddrType], _) => parts.push("local src".to_owned()),
            ([f @ (Field::Saddr | Field::Daddr)], rhs) => {
                let which = if *f == Field::Saddr { "src" } else { "dst" };
                match rhs {
                    Rhs::Set(name) => parts.push(format!("set {name} by {which}")),
                    _ => parts.push(format!("{which} {}", value(0).display())),
                }
            }
            ([Field::Daddr, Field::L4Proto, Field::ThDport], Rhs::Set(name)) => {
                parts.push(format!("set {name} by dst,proto,port"))
            }
            ([Field::L4Proto], Rhs::Value(_)) => {
                parts.push(format!("proto {}", value(0).display()))
            }
            ([f @ (Field::TcpDport | Field::UdpDport | Field::SctpDport)], Rhs::Value(_)) => {
                let p = match f {
                    Field::TcpDport => "tcp",
                    Field::UdpDport => "udp",
                    _ => "sctp",
                };
                let (first, last) = match value(0) {
                    Value::Port(n) => (n, n),
                    Value::PortRange(a, b) => (a, b),
                    other => panic!("port {other:?}"),
                };
                parts.push(format!("{p} {first}-{last}"));
            }
            other => panic!("unexpected policy match {other:?}"),
        }
    }
    let verdict = match rule.statements.as_slice() {
        [Statement::Verdict(nft::Verdict::Accept)] => "accept",
        [Statement::Verdict(nft::Verdict::Return)] => "return",
        [Statement::Verdict(nft::Verdict::Drop)] => "drop",
        other => panic!("unexpected policy statements {other:?}"),
    };
    format!(
        "{} => {verdict} ({})",
        parts.join(" "),
        rule.comment.as_deref().unwrap_or_default()
    )
}
