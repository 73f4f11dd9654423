//! A packet tracer over an nftables [`Table`] (our representation, not the kernel).
//!
//! [`trace_nft`] runs the first packet of a new connection through the table's base chains
//! hook by hook — prerouting (or output for packets the host sends), the routing decision,
//! input / forward, postrouting — and, within a hook, in priority order whatever their type,
//! as netfilter does. Verdict maps and sets are looked up with the packet's fields (single
//! values, concatenations, prefixes and ranges); `numgen random mod N vmap` splits the trace
//! into N branches of probability 1/N each, and a `dnat … numgen random mod 65536 map` into
//! one branch per share range of the packet's destination, of probability range / 65,536. `accept` ends a base chain, `drop` and `reject`
//! the packet; `dnat` and `masquerade` are final in their chain, as in the kernel.
//!
//! It takes the same [`Packet`] and [`Host`] as the iptables tracer and ends in the same
//! [`Verdict`]s, so [`Trace::summary`] compares with [`crate::Trace::summary`] key for key.
//! A set with the `dynamic` flag (session affinity) is empty for the client traced, as the
//! iptables tracer treats `-m recent --rcheck`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use netd_model::Protocol;
use netd_proxy::InterfaceName;

use super::ast::{
    AddrType, Chain, ChainType, CtState, CtStatus, Field, Hook, IfName, MapRef, MapValue, Match,
    Op, Rhs, Rule, SHARES, Set, SetFlag, Statement, Table, Value, Verdict as NftVerdict,
};
use super::policy::{EGRESS_CHAIN_PREFIX, INGRESS_CHAIN_PREFIX};
use crate::trace::{Host, Origin, Packet, Verdict};

/// The deepest jump nesting followed before giving up.
pub const MAX_DEPTH: usize = 64;

/// Why an nftables trace could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftTraceError {
    /// A rule or map element jumps to a chain the table does not have.
    #[error("chain {from} jumps to missing chain {to}")]
    UnknownChain {
        /// The chain holding the jump.
        from: String,
        /// The missing chain.
        to: String,
    },
    /// A rule looks up a set or map the table does not have.
    #[error("chain {chain} looks up missing set {set}")]
    UnknownSet {
        /// The chain holding the lookup.
        chain: String,
        /// The missing set.
        set: String,
    },
    /// Jumps nest deeper than any sane table (a loop).
    #[error("chain {chain} nests jumps deeper than {MAX_DEPTH} (a loop?)")]
    TooDeep {
        /// The chain where the limit was hit.
        chain: String,
    },
}

/// One rule that matched and acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The chain.
    pub chain: String,
    /// The rule's position in the chain (0-based).
    pub index: usize,
    /// The rule.
    pub rule: Rule,
    /// The map element or numgen value the rule's lookup took, as `nft` prints it.
    pub via: Option<String>,
}

/// One branch of an nftables trace: what happens with the given probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The branch's probability (all outcomes of a trace add up to 1).
    pub probability: f64,
    /// The rules that matched and acted, in order.
    pub steps: Vec<Step>,
    /// The destination the packet was DNATed to, if any.
    pub dnat: Option<SocketAddr>,
    /// Whether the source address is masqueraded on the way out.
    pub masqueraded: bool,
    /// The verdict.
    pub verdict: Verdict,
}

impl Outcome {
    /// The comments of the NetworkPolicy rules that acted on this branch (in a per-Pod
    /// `policy-ingress-*` / `policy-egress-*` chain), in order, as
    /// [`crate::trace::Outcome::policy`] gives them for iptables.
    pub fn policy(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| {
                s.chain.starts_with(INGRESS_CHAIN_PREFIX)
                    || s.chain.starts_with(EGRESS_CHAIN_PREFIX)
            })
            .filter_map(|s| s.rule.comment.as_deref())
            .collect()
    }
}

/// Every possible fate of one packet in one table.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The packet traced.
    pub packet: Packet,
    /// The table's family, to print its rules.
    pub table: String,
    /// The branches, in rule order.
    pub outcomes: Vec<Outcome>,
}

impl Trace {
    /// The probability of each verdict / DNAT destination / masquerade combination, keyed as
    /// [`crate::Trace::summary`] is.
    pub fn summary(&self) -> BTreeMap<(Verdict, Option<SocketAddr>, bool), f64> {
        let mut out = BTreeMap::new();
        for o in &self.outcomes {
            *out.entry((o.verdict, o.dnat, o.masqueraded)).or_insert(0.0) += o.probability;
        }
        out
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.packet;
        writeln!(
            f,
            "{} {}:{} -> {}:{} ({:?})",
            p.protocol, p.src, p.sport, p.dst, p.dport, p.origin
        )?;
        let family = if p.dst.is_ipv4() {
            netd_proxy::IpFamily::V4
        } else {
            netd_proxy::IpFamily::V6
        };
        for o in &self.outcomes {
            write!(f, "  {:>6.2}% {}", o.probability * 100.0, o.verdict)?;
            if let Some(d) = o.dnat {
                write!(f, " DNAT to {d}")?;
            }
            if o.masqueraded {
                write!(f, ", masqueraded")?;
            }
            writeln!(f)?;
            let policy = o.policy();
            if !policy.is_empty() {
                writeln!(f, "    policy: {}", policy.join("; "))?;
            }
            for s in &o.steps {
                write!(
                    f,
                    "      {}/{} #{}: {}",
                    self.table,
                    s.chain,
                    s.index + 1,
                    s.rule.display(family)
                )?;
                if let Some(via) = &s.via {
                    write!(f, " [{via}]")?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// Traces the first packet of a new connection through `table` on `host`.
pub fn trace_nft(table: &Table, host: &Host, packet: &Packet) -> Result<Trace, NftTraceError> {
    let tracer = Tracer {
        table,
        host,
        packet,
    };
    let start = State {
        dst: packet.dst,
        dport: packet.dport,
        mark: 0,
        dnat: None,
        masqueraded: false,
        probability: 1.0,
        steps: Vec::new(),
    };
    let first = match packet.origin {
        Origin::Network => Hook::Prerouting,
        Origin::Host => Hook::Output,
    };
    let mut outcomes = Vec::new();
    for (st, verdict) in tracer.hook(first, start)? {
        if verdict != Verdict::Accept {
            outcomes.push(st.finish(verdict));
            continue;
        }
        let local = host.is_local(st.dst);
        let second = match (packet.origin, local) {
            (Origin::Host, _) => None,
            (Origin::Network, true) => Some(Hook::Input),
            (Origin::Network, false) => Some(Hook::Forward),
        };
        let after_second = match second {
            Some(hook) => tracer.hook(hook, st)?,
            None => vec![(st, Verdict::Accept)],
        };
        for (st, verdict) in after_second {
            if verdict != Verdict::Accept || (local && packet.origin == Origin::Network) {
                outcomes.push(st.finish(verdict));
                continue;
            }
            for (st, verdict) in tracer.hook(Hook::Postrouting, st)? {
                let unserved = verdict == Verdict::Accept
                    && st.dnat.is_none()
                    && host.service_addrs.contains(&st.dst);
                outcomes.push(st.finish(if unserved {
                    Verdict::NoServicePort
                } else {
                    verdict
                }));
            }
        }
    }
    Ok(Trace {
        packet: packet.clone(),
        table: format!("{} {}", table.family_str(), table.name),
        outcomes,
    })
}

#[derive(Clone, Debug)]
struct State {
    dst: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masqueraded: bool,
    probability: f64,
    steps: Vec<Step>,
}

impl State {
    fn finish(self, verdict: Verdict) -> Outcome {
        Outcome {
            probability: self.probability,
            steps: self.steps,
            dnat: self.dnat,
            masqueraded: self.masqueraded,
            verdict,
        }
    }
}

/// How a chain was left.
enum Flow {
    /// The base chain's evaluation ends with this verdict (`accept` lets the next base chain
    /// run; `drop` and `reject` end the packet).
    Verdict(Verdict),
    /// The chain ended or returned: the caller continues.
    Continue,
}

struct Tracer<'a> {
    table: &'a Table,
    host: &'a Host,
    packet: &'a Packet,
}

impl Tracer<'_> {
    /// Runs every base chain of `hook` in priority order (a stable sort keeps name order for
    /// equal priorities); a branch leaves the hook when a chain drops or rejects it.
    fn hook(&self, hook: Hook, st: State) -> Result<Vec<(State, Verdict)>, NftTraceError> {
        let mut bases: Vec<&Chain> = self
            .table
            .chains
            .values()
            .filter(|c| c.base.is_some_and(|b| b.hook == hook))
            .collect();
        bases.sort_by_key(|c| c.base.map(|b| b.priority.value()));
        let mut live = vec![(st, Verdict::Accept)];
        for base in bases {
            let is_nat = base.base.is_some_and(|b| b.kind == ChainType::Nat);
            let mut next = Vec::new();
            for (st, verdict) in live {
                // A nat chain sees only packets of connections not yet NATed; a packet DNATed
                // in output is not offered to another nat chain of the same hook either.
                if verdict != Verdict::Accept
                    || (is_nat && st.dnat.is_some() && hook != Hook::Postrouting)
                {
                    next.push((st, verdict));
                    continue;
                }
                for (st, flow) in self.run(&base.name, 0, st, 0)? {
                    next.push(match flow {
                        Flow::Verdict(v) => (st, v),
                        Flow::Continue => (st, Verdict::Accept),
                    });
                }
            }
            live = next;
        }
        Ok(live)
    }

    fn chain(&self, from: &str, to: &str) -> Result<&Chain, NftTraceError> {
        self.table
            .chains
            .get(to)
            .ok_or_else(|| NftTraceError::UnknownChain {
                from: from.to_owned(),
                to: to.to_owned(),
            })
    }

    fn set(&self, chain: &str, name: &str) -> Result<&Set, NftTraceError> {
        self.table
            .sets
            .get(name)
            .ok_or_else(|| NftTraceError::UnknownSet {
                chain: chain.to_owned(),
                set: name.to_owned(),
            })
    }

    fn run(
        &self,
        chain: &str,
        from: usize,
        st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, NftTraceError> {
        if depth > MAX_DEPTH {
            return Err(NftTraceError::TooDeep {
                chain: chain.to_owned(),
            });
        }
        let rules = &self.chain(chain, chain)?.rules;
        for (index, rule) in rules.iter().enumerate().skip(from) {
            if !self.matches(chain, rule, &st)? {
                continue;
            }
            let mut st = st;
            st.steps.push(Step {
                chain: chain.to_owned(),
                index,
                rule: rule.clone(),
                via: None,
            });
            return self.statements(chain, index, 0, st, depth);
        }
        Ok(vec![(st, Flow::Continue)])
    }

    /// Runs the statements of a matched rule from `from` on, then the rest of the chain if
    /// none of them decided.
    fn statements(
        &self,
        chain: &str,
        index: usize,
        from: usize,
        mut st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, NftTraceError> {
        let rule = &self.chain(chain, chain)?.rules[index];
        let Some(statement) = rule.statements.get(from) else {
            return self.run(chain, index + 1, st, depth);
        };
        let done = |st: State, v: Verdict| Ok(vec![(st, Flow::Verdict(v))]);
        match statement {
            Statement::Counter | Statement::UpdateSet { .. } => {
                self.statements(chain, index, from + 1, st, depth)
            }
            Statement::MarkOr(bits) => {
                st.mark |= bits;
                self.statements(chain, index, from + 1, st, depth)
            }
            Statement::MarkXor(bits) => {
                st.mark ^= bits;
                self.statements(chain, index, from + 1, st, depth)
            }
            Statement::Reject(_) => done(st, Verdict::Reject),
            Statement::Masquerade { .. } => {
                st.masqueraded = true;
                done(st, Verdict::Accept)
            }
            Statement::Dnat { addr, port } => {
                let port = port.unwrap_or(st.dport);
                st.dst = *addr;
                st.dport = port;
                st.dnat = Some(SocketAddr::new(*addr, port));
                done(st, Verdict::Accept)
            }
            Statement::Verdict(v) => self.verdict(chain, index, v, st, depth),
            Statement::DnatShare { map } => {
                let set = self.set(chain, map)?;
                let key = self.key(&[Field::Daddr, Field::L4Proto, Field::ThDport], &st);
                let mut out = Vec::new();
                for e in set.elements.values() {
                    let (Some(MapValue::Endpoint(to)), Some((Value::ShareRange(a, b), head))) =
                        (&e.value, e.key.split_last())
                    else {
                        continue;
                    };
                    if !key_matches(&key, head) {
                        continue;
                    }
                    let mut branch = st.clone();
                    branch.probability *=
                        f64::from(u32::from(*b) - u32::from(*a) + 1) / f64::from(SHARES);
                    if let Some(step) = branch.steps.last_mut() {
                        step.via = Some(e.display());
                    }
                    branch.dst = to.ip();
                    branch.dport = to.port();
                    branch.dnat = Some(*to);
                    out.push((branch, Flow::Verdict(Verdict::Accept)));
                }
                if out.is_empty() {
                    // No element: no DNAT, the rule did nothing.
                    if from == 0 {
                        st.steps.pop();
                    }
                    return self.run(chain, index + 1, st, depth);
                }
                Ok(out)
            }
            Statement::Vmap { fields, map } => {
                let key = self.key(fields, &st);
                let hit = match map {
                    MapRef::Named(name) => {
                        let set = self.set(chain, name)?;
                        set.elements
                            .values()
                            .filter(|_| !is_dynamic(set))
                            .find_map(|e| match &e.value {
                                Some(MapValue::Verdict(v)) if key_matches(&key, &e.key) => {
                                    Some((v.clone(), e.display()))
                                }
                                _ => None,
                            })
                    }
                    MapRef::Anon(entries) => entries
                        .iter()
                        .find(|(k, _)| key_matches(&key, k))
                        .map(|(k, v)| {
                            let k: Vec<String> = k.iter().map(Value::display).collect();
                            (v.clone(), format!("{} : {v}", k.join(" . ")))
                        }),
                };
                let Some((verdict, via)) = hit else {
                    // A lookup without an element: the rule did nothing, so it is no step.
                    if from == 0 {
                        st.steps.pop();
                    }
                    return self.run(chain, index + 1, st, depth);
                };
                if let Some(step) = st.steps.last_mut() {
                    step.via = Some(via);
                }
                self.verdict(chain, index, &verdict, st, depth)
            }
            Statement::NumgenVmap { modulus, map } => {
                let modulus = (*modulus).max(1);
                let share = 1.0 / f64::from(modulus);
                let mut out = Vec::new();
                for n in 0..modulus {
                    let key = [Some(Value::Int(n))];
                    let hit = match map {
                        MapRef::Named(name) => {
                            self.set(chain, name)?
                                .elements
                                .values()
                                .find_map(|e| match &e.value {
                                    Some(MapValue::Verdict(v)) if key_matches(&key, &e.key) => {
                                        Some(v.clone())
                                    }
                                    _ => None,
                                })
                        }
                        MapRef::Anon(entries) => entries
                            .iter()
                            .find(|(k, _)| key_matches(&key, k))
                            .map(|(_, v)| v.clone()),
                    };
                    let mut branch = st.clone();
                    branch.probability *= share;
                    if let Some(step) = branch.steps.last_mut() {
                        step.via = Some(format!("numgen {n}"));
                    }
                    match hit {
                        Some(v) => out.extend(self.verdict(chain, index, &v, branch, depth)?),
                        None => out.extend(self.run(chain, index + 1, branch, depth)?),
                    }
                }
                Ok(out)
            }
        }
    }

    fn verdict(
        &self,
        chain: &str,
        index: usize,
        verdict: &NftVerdict,
        st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, NftTraceError> {
        match verdict {
            NftVerdict::Accept => Ok(vec![(st, Flow::Verdict(Verdict::Accept))]),
            NftVerdict::Drop => Ok(vec![(st, Flow::Verdict(Verdict::Drop))]),
            NftVerdict::Return => Ok(vec![(st, Flow::Continue)]),
            NftVerdict::Goto(to) => {
                self.chain(chain, to)?;
                self.run(to, 0, st, depth + 1)
            }
            NftVerdict::Jump(to) => {
                self.chain(chain, to)?;
                let mut out = Vec::new();
                for (st, flow) in self.run(to, 0, st, depth + 1)? {
                    match flow {
                        Flow::Verdict(v) => out.push((st, Flow::Verdict(v))),
                        Flow::Continue => out.extend(self.run(chain, index + 1, st, depth)?),
                    }
                }
                Ok(out)
            }
        }
    }

    fn matches(&self, chain: &str, rule: &Rule, st: &State) -> Result<bool, NftTraceError> {
        for m in &rule.matches {
            if !self.match_one(chain, m, st)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn match_one(&self, chain: &str, m: &Match, st: &State) -> Result<bool, NftTraceError> {
        // An ICMPv6 match implies the protocol; the traced packet is TCP, UDP or SCTP.
        if m.fields.contains(&Field::Icmpv6Type) {
            return Ok(false);
        }
        let key = self.key(&m.fields, st);
        let hit = match &m.rhs {
            Rhs::Value(vs) => key_matches(&key, vs),
            Rhs::AnonSet(elems) => elems.iter().any(|e| key_matches(&key, e)),
            Rhs::Set(name) => {
                let set = self.set(chain, name)?;
                !is_dynamic(set) && set.elements.keys().any(|k| key_matches(&key, k))
            }
            Rhs::AnyOf(vs) => key.len() == 1 && vs.iter().any(|v| value_matches(key[0], v)),
        };
        Ok(match m.op {
            Op::Eq => hit,
            Op::Ne => !hit,
        })
    }

    /// The packet's values of `fields`; `None` for a field the packet has no value of (a
    /// port of another protocol, a non-local address type).
    fn key(&self, fields: &[Field], st: &State) -> Vec<Option<Value>> {
        let pkt = self.packet;
        let dport = |p: Protocol| (pkt.protocol == p).then_some(Value::Port(st.dport));
        let local = |ip: IpAddr| {
            self.host
                .is_local(ip)
                .then_some(Value::AddrType(AddrType::Local))
        };
        fields
            .iter()
            .map(|f| match f {
                Field::Saddr => Some(Value::Ip(pkt.src)),
                Field::Daddr => Some(Value::Ip(st.dst)),
                Field::L4Proto => Some(Value::Proto(pkt.protocol)),
                Field::ThDport => Some(Value::Port(st.dport)),
                Field::TcpDport => dport(Protocol::Tcp),
                Field::UdpDport => dport(Protocol::Udp),
                Field::SctpDport => dport(Protocol::Sctp),
                // Only the first packet of a connection is traced.
                Field::CtState => Some(Value::CtState(CtState::New)),
                Field::CtStatus => st.dnat.map(|_| Value::CtStatus(CtStatus::Dnat)),
                Field::DaddrLowBits(bits) => Some(Value::Ip(masked(st.dst, *bits))),
                Field::FibDaddrType => local(st.dst),
                Field::FibSaddrType => local(pkt.src),
                Field::Icmpv6Type => None,
                Field::MarkMasked(mask) => Some(Value::Int(st.mark & mask)),
                Field::Iifname => pkt
                    .in_interface
                    .as_deref()
                    .and_then(|name| name.parse::<InterfaceName>().ok())
                    .map(|name| Value::Ifname(IfName::exact(&name))),
            })
            .collect()
    }
}

/// `ip` keeps only the low `bits` bits of its address.
fn masked(ip: IpAddr, bits: u8) -> IpAddr {
    let mask = 1u128
        .checked_shl(u32::from(bits))
        .map_or(u128::MAX, |v| v - 1);
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4) & u32::try_from(mask & u128::from(u32::MAX)).unwrap_or(u32::MAX),
        )),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask)),
    }
}

/// An affinity set (`flags dynamic,timeout`): filled by the kernel, so empty for a client
/// seen for the first time whatever the table lists.
fn is_dynamic(set: &Set) -> bool {
    set.flags.contains(&SetFlag::Dynamic)
}

fn key_matches(key: &[Option<Value>], pattern: &[Value]) -> bool {
    key.len() == pattern.len() && key.iter().zip(pattern).all(|(k, p)| value_matches(*k, p))
}

fn value_matches(actual: Option<Value>, pattern: &Value) -> bool {
    let Some(actual) = actual else { return false };
    match (actual, pattern) {
        (Value::Ip(a), Value::Net(net)) => net.contains(&a),
        (Value::Ip(a), Value::IpRange(lo, hi)) => {
            a.is_ipv4() == lo.is_ipv4() && *lo <= a && a <= *hi
        }
        (Value::Port(p), Value::PortRange(lo, hi)) => (*lo..=*hi).contains(&p),
        (Value::Ifname(name), Value::Ifname(pattern)) => pattern.matches(&name),
        (a, p) => a == *p,
    }
}

#[cfg(test)]
mod tests {
    use netd_proxy::IpFamily;

    use super::*;
    use crate::nft::ast::{BaseChain, DataType, KeyType, Priority, RejectWith, StandardPriority};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn packet() -> Packet {
        Packet::tcp(ip("10.0.0.1"), ip("10.96.0.10"), 80)
    }

    fn base(name: &str, kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain::base(
            name,
            BaseChain {
                kind,
                hook,
                priority: Priority::plus(StandardPriority::Filter, priority),
            },
        )
    }

    fn outcomes(table: &Table, host: &Host, p: &Packet) -> Vec<(Verdict, Option<String>, f64)> {
        trace_nft(table, host, p)
            .expect("trace")
            .summary()
            .into_iter()
            .map(|((v, d, _), p)| (v, d.map(|d| d.to_string()), p))
            .collect()
    }

    /// A vmap on a concatenation sends the ClusterIP to a chain whose numgen map picks one
    /// of two endpoints (a third value has no element and falls through to a drop).
    fn service_table() -> Table {
        let mut t = Table::new(IpFamily::V4);
        let mut nat = base("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100);
        nat.push(Rule::new().verdict(NftVerdict::Jump("services".into())));
        t.add_chain(nat);
        let mut ips = Set::map(
            "service-ips",
            vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            DataType::Verdict,
        );
        ips.insert_mapping(
            vec![
                Value::Ip(ip("10.96.0.10")),
                Value::Proto(Protocol::Tcp),
                Value::Port(80),
            ],
            MapValue::Verdict(NftVerdict::Goto("svc".into())),
            None,
        );
        t.add_set(ips);
        let mut services = Chain::regular("services");
        services.push(Rule::new().then(Statement::Vmap {
            fields: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
            map: MapRef::Named("service-ips".into()),
        }));
        t.add_chain(services);
        let mut eps = Set::map("svc/endpoints", vec![KeyType::Numgen], DataType::Verdict);
        for (n, ep) in ["10.1.0.1", "10.1.0.2"].into_iter().enumerate() {
            let chain = format!("ep-{n}");
            let mut c = Chain::regular(&chain);
            c.push(Rule::new().then(Statement::Dnat {
                addr: ip(ep),
                port: Some(8080),
            }));
            t.add_chain(c);
            let n = u32::try_from(n).expect("small");
            eps.insert_mapping(
                vec![Value::Int(n)],
                MapValue::Verdict(NftVerdict::Goto(chain)),
                None,
            );
        }
        t.add_set(eps);
        let mut svc = Chain::regular("svc");
        svc.push(Rule::new().then(Statement::NumgenVmap {
            modulus: 3,
            map: MapRef::Named("svc/endpoints".into()),
        }));
        svc.push(Rule::new().verdict(NftVerdict::Drop));
        t.add_chain(svc);
        t
    }

    #[test]
    fn numgen_splits_evenly_and_a_missing_element_falls_through() {
        let t = service_table();
        let third = 1.0 / 3.0;
        assert_eq!(
            outcomes(&t, &Host::default(), &packet()),
            [
                (Verdict::Accept, Some("10.1.0.1:8080".into()), third),
                (Verdict::Accept, Some("10.1.0.2:8080".into()), third),
                (Verdict::Drop, None, third),
            ]
        );
        // Another port is in no map element: the services chain ends, the packet goes on.
        let other = Packet {
            dport: 81,
            ..packet()
        };
        assert_eq!(
            outcomes(&t, &Host::default(), &other),
            [(Verdict::Accept, None, 1.0)]
        );
        let udp = Packet {
            protocol: Protocol::Udp,
            ..packet()
        };
        assert_eq!(
            outcomes(&t, &Host::default(), &udp),
            [(Verdict::Accept, None, 1.0)]
        );
    }

    #[test]
    fn a_share_map_branches_once_per_range_of_the_destination() {
        let mut t = Table::new(IpFamily::V4);
        let mut nat = base("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100);
        nat.push(Rule::new().then(Statement::DnatShare { map: "eps".into() }));
        nat.push(Rule::new().verdict(NftVerdict::Drop));
        t.add_chain(nat);
        let mut eps = Set::map(
            "eps",
            vec![
                KeyType::Ipv4Addr,
                KeyType::InetProto,
                KeyType::InetService,
                KeyType::NumgenShare,
            ],
            DataType::AddrPort(KeyType::Ipv4Addr),
        )
        .with_flag(SetFlag::Interval);
        let frontend = |addr: &str| {
            vec![
                Value::Ip(ip(addr)),
                Value::Proto(Protocol::Tcp),
                Value::Port(80),
            ]
        };
        for (addr, (a, b), ep) in [
            ("10.96.0.10", (0, 16_383), "10.1.0.1:8080"),
            ("10.96.0.10", (16_384, 65_535), "10.1.0.2:8080"),
            ("10.96.0.11", (0, 65_535), "10.1.0.3:8080"),
        ] {
            let mut key = frontend(addr);
            key.push(Value::ShareRange(a, b));
            eps.insert_mapping(key, MapValue::Endpoint(ep.parse().expect("ep")), None);
        }
        t.add_set(eps);
        assert_eq!(
            outcomes(&t, &Host::default(), &packet()),
            [
                (Verdict::Accept, Some("10.1.0.1:8080".into()), 0.25),
                (Verdict::Accept, Some("10.1.0.2:8080".into()), 0.75),
            ]
        );
        // A destination without elements is not DNATed: the next rule drops it.
        let other = Packet {
            dport: 81,
            ..packet()
        };
        assert_eq!(
            outcomes(&t, &Host::default(), &other),
            [(Verdict::Drop, None, 1.0)]
        );
    }

    #[test]
    fn base_chains_run_by_priority_and_see_the_dnated_destination() {
        let mut t = service_table();
        // Forward, after DNAT: an interval set of endpoints rejects; a chain at a lower
        // priority accepts 10.1.0.2 first, which ends only its own chain.
        let mut blocked = Set::new("blocked", vec![KeyType::Ipv4Addr]).with_flag(SetFlag::Interval);
        blocked.insert(vec![Value::Net("10.1.0.0/24".parse().expect("net"))], None);
        t.add_set(blocked);
        let mut late = base("a-late", ChainType::Filter, Hook::Forward, 10);
        late.push(
            Rule::new()
                .matching(Match::in_set(vec![Field::Daddr], "blocked"))
                .then(Statement::Reject(RejectWith::Default)),
        );
        t.add_chain(late);
        let mut early = base("z-early", ChainType::Filter, Hook::Forward, -10);
        early.push(
            Rule::new()
                .matching(Match::eq(Field::Daddr, Value::Ip(ip("10.1.0.2"))))
                .verdict(NftVerdict::Accept),
        );
        early.push(Rule::new().verdict(NftVerdict::Jump("sub".into())));
        t.add_chain(early);
        let mut sub = Chain::regular("sub");
        sub.push(
            Rule::new()
                .matching(Match::eq(
                    Field::Daddr,
                    Value::IpRange(ip("10.1.0.1"), ip("10.1.0.1")),
                ))
                .verdict(NftVerdict::Return),
        );
        sub.push(Rule::new().verdict(NftVerdict::Drop));
        t.add_chain(sub);
        let third = 1.0 / 3.0;
        assert_eq!(
            outcomes(&t, &Host::default(), &packet()),
            [
                (Verdict::Drop, None, third),
                (Verdict::Reject, Some("10.1.0.1:8080".into()), third),
                (Verdict::Reject, Some("10.1.0.2:8080".into()), third),
            ]
        );
        // Delivered locally: input, not forward, so nothing rejects.
        let host = Host {
            local_addrs: vec![ip("10.1.0.1"), ip("10.1.0.2")],
            ..Host::default()
        };
        let verdicts: Vec<Verdict> = outcomes(&t, &host, &packet())
            .into_iter()
            .map(|(v, _, _)| v)
            .collect();
        assert_eq!(verdicts, [Verdict::Accept, Verdict::Accept, Verdict::Drop]);
    }

    #[test]
    fn marks_masquerade_in_postrouting() {
        let mut t = Table::new(IpFamily::V4);
        let mut out = base("out", ChainType::Nat, Hook::Output, -100);
        out.push(
            Rule::new()
                .matching(Match::eq(
                    Field::FibSaddrType,
                    Value::AddrType(AddrType::Local),
                ))
                .then(Statement::MarkOr(0x4000)),
        );
        t.add_chain(out);
        let mut post = base("post", ChainType::Nat, Hook::Postrouting, 100);
        post.push(
            Rule::new()
                .matching(Match::eq(Field::MarkMasked(0x4000), Value::Int(0)))
                .verdict(NftVerdict::Return),
        );
        post.push(Rule::new().then(Statement::MarkXor(0x4000)));
        post.push(Rule::new().then(Statement::Masquerade { fully_random: true }));
        t.add_chain(post);
        let host = Host {
            local_addrs: vec![ip("10.0.0.1")],
            ..Host::default()
        };
        let masqueraded = |origin| {
            let p = Packet { origin, ..packet() };
            let trace = trace_nft(&t, &host, &p).expect("trace");
            trace
                .outcomes
                .iter()
                .map(|o| o.masqueraded)
                .collect::<Vec<_>>()
        };
        assert_eq!(masqueraded(Origin::Host), [true]);
        assert_eq!(masqueraded(Origin::Network), [false]);
    }

    #[test]
    fn missing_chains_sets_and_loops_are_errors() {
        let mut t = Table::new(IpFamily::V4);
        let mut fwd = base("fwd", ChainType::Filter, Hook::Forward, 0);
        fwd.push(Rule::new().verdict(NftVerdict::Jump("nope".into())));
        t.add_chain(fwd);
        let err = trace_nft(&t, &Host::default(), &packet()).expect_err("missing chain");
        assert!(matches!(err, NftTraceError::UnknownChain { .. }), "{err}");

        let mut t = Table::new(IpFamily::V4);
        let mut fwd = base("fwd", ChainType::Filter, Hook::Forward, 0);
        fwd.push(Rule::new().matching(Match::in_set(vec![Field::Saddr], "nope")));
        t.add_chain(fwd);
        let err = trace_nft(&t, &Host::default(), &packet()).expect_err("missing set");
        assert!(matches!(err, NftTraceError::UnknownSet { .. }), "{err}");

        let mut t = Table::new(IpFamily::V4);
        let mut fwd = base("fwd", ChainType::Filter, Hook::Forward, 0);
        fwd.push(Rule::new().verdict(NftVerdict::Jump("a".into())));
        t.add_chain(fwd);
        let mut a = Chain::regular("a");
        a.push(Rule::new().verdict(NftVerdict::Jump("a".into())));
        t.add_chain(a);
        let err = trace_nft(&t, &Host::default(), &packet()).expect_err("loop");
        assert!(matches!(err, NftTraceError::TooDeep { .. }), "{err}");
    }
}
