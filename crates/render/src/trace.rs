//! A packet tracer over our own rule representation (not the kernel).
//!
//! [`trace`] runs the first packet of a new connection through a [`Ruleset`] in netfilter
//! order — nat `PREROUTING` (or `OUTPUT` for packets the host sends), the routing decision,
//! filter `INPUT` / `FORWARD` / `OUTPUT`, nat `POSTROUTING` — and follows every branch: each
//! `-m statistic` rule splits the trace into "matched" and "not matched" with their
//! probabilities, so the result lists every DNAT choice with its share. Session affinity
//! (`-m recent --rcheck`) is evaluated for a client seen for the first time.
//!
//! Set matches (`-m set`) read the sets of an [`ipset restore` payload](Host::load_ipset), the
//! same text `kube-netd render` prints; a verdict reached in a NetworkPolicy chain names the
//! policy rule that decided ([`Outcome::policy`]).
//!
//! [`trace_ipvs`] walks IPVS mode: the same hooks around the kernel's virtual servers, which
//! take a new connection to a virtual address where netfilter's `LOCAL_IN` (after filter
//! `INPUT`) or, for the host's own, `LOCAL_OUT` (after nat `OUTPUT`) meet it; each real server
//! is a branch with its share by scheduler and weight ([`IpvsStep`]), forwarded through filter
//! `OUTPUT` and nat `POSTROUTING` as the kernel sends it on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use netd_model::Protocol;
use netd_policy::plan::AddressPort;

use crate::iptables::{ChainName, CtState, Direction, Match, Recent, Rule, Ruleset, Table, Target};
use crate::ipvs::{VirtualAddr, VirtualServer};

/// Why a trace could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// A rule jumps to a chain the rule set does not have.
    #[error("{table} chain {from} jumps to missing chain {to}")]
    UnknownChain {
        /// The table.
        table: Table,
        /// The chain holding the jump.
        from: ChainName,
        /// The missing chain.
        to: ChainName,
    },
    /// Jumps nest deeper than any sane rule set (a loop).
    #[error("{table} chain {chain} nests jumps deeper than {MAX_DEPTH} (a loop?)")]
    TooDeep {
        /// The table.
        table: Table,
        /// The chain where the limit was hit.
        chain: ChainName,
    },
    /// A set match names a set the trace was not given, or its directions do not fit the
    /// set's type.
    #[error(
        "set match on {name:?} cannot be evaluated (unknown set, or directions that do not fit its type)"
    )]
    UnsupportedSet {
        /// The set's name.
        name: String,
    },
    /// A line of an `ipset restore` payload the tracer does not understand.
    #[error("ipset restore line {line}: cannot interpret {text:?}")]
    InvalidIpsetLine {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Where a traced packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// It arrives on an interface (from a pod or from outside): `PREROUTING` first.
    Network,
    /// The host itself sends it: `OUTPUT` first.
    Host,
}

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Where it comes from.
    pub origin: Origin,
    /// The source address.
    pub src: IpAddr,
    /// The source port.
    pub sport: u16,
    /// The destination address.
    pub dst: IpAddr,
    /// The destination port.
    pub dport: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The interface it arrives on, if known (otherwise none a rule names: `-i X` does not
    /// match, `! -i X` does).
    pub in_interface: Option<String>,
    /// The interface it leaves by, if known (otherwise none a rule names, as for `-i`).
    pub out_interface: Option<String>,
}

impl Packet {
    /// A new TCP connection from `src` to `dst:dport`, arriving from the network.
    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            origin: Origin::Network,
            src,
            sport: 40000,
            dst,
            dport,
            protocol: Protocol::Tcp,
            in_interface: None,
            out_interface: None,
        }
    }
}

/// What the tracer knows about the host the rules are installed on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// The host's own addresses (`-m addrtype LOCAL`); loopback addresses always are.
    pub local_addrs: Vec<IpAddr>,
    /// ipset contents by set name, for `-m set` matches.
    pub sets: BTreeMap<String, IpSet>,
    /// Addresses that exist only in DNAT rules (Service ClusterIPs): no interface owns them,
    /// so a packet still addressed to one after the nat table is served by nobody
    /// ([`Verdict::NoServicePort`]).
    pub service_addrs: Vec<IpAddr>,
    /// Sources whose packets reach the host through a bridge port (`-m physdev
    /// --physdev-is-in`): the range of the host's Pods when they hang off a bridge.
    pub bridge_sources: Vec<IpNet>,
}

impl Host {
    /// Loads the sets an `ipset restore -exist` payload leaves behind (`create`, `flush`,
    /// `add`, `swap`, `destroy`; types `hash:ip`, `hash:net`, `hash:ip,port`,
    /// `hash:ip,port,ip`, `hash:ip,port,net` and `bitmap:port`), replacing sets of the same
    /// names.
    pub fn load_ipset(&mut self, input: &str) -> Result<(), TraceError> {
        for (n, text) in input.lines().enumerate() {
            let invalid = || TraceError::InvalidIpsetLine {
                line: n + 1,
                text: text.to_owned(),
            };
            let words: Vec<&str> = text.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                [first, ..] if first.starts_with('#') => {}
                ["create", name, kind, ..] => {
                    let set = match *kind {
                        "hash:ip" | "hash:net" => IpSet::Networks(Vec::new()),
                        "hash:ip,port" => IpSet::AddressPorts(Vec::new()),
                        "hash:ip,port,ip" | "hash:ip,port,net" => {
                            IpSet::AddressPortNets(Vec::new())
                        }
                        "bitmap:port" => IpSet::Ports(Vec::new()),
                        _ => return Err(invalid()),
                    };
                    self.sets.entry((*name).to_owned()).or_insert(set);
                }
                ["flush", name] => self.sets.get_mut(*name).ok_or_else(invalid)?.clear(),
                ["add", name, member, ..] => {
                    let set = self.sets.get_mut(*name).ok_or_else(invalid)?;
                    set.add(member).ok_or_else(invalid)?;
                }
                ["swap", a, b] => {
                    let first = self.sets.remove(*a).ok_or_else(invalid)?;
                    let Some(second) = self.sets.insert((*b).to_owned(), first) else {
                        return Err(invalid());
                    };
                    self.sets.insert((*a).to_owned(), second);
                }
                ["destroy", name] => {
                    self.sets.remove(*name).ok_or_else(invalid)?;
                }
                _ => return Err(invalid()),
            }
        }
        Ok(())
    }

    pub(crate) fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local_addrs.contains(&ip)
    }
}

/// The members of one ipset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpSet {
    /// `hash:ip` or `hash:net`: addresses (as host networks) and networks.
    Networks(Vec<IpNet>),
    /// `hash:ip,port`: an address with a protocol and port.
    AddressPorts(Vec<AddressPort>),
    /// `hash:ip,port,ip` and `hash:ip,port,net`: an address with a protocol and port, and a
    /// second address (as a host network) or network.
    AddressPortNets(Vec<(AddressPort, IpNet)>),
    /// `bitmap:port`: ports.
    Ports(Vec<u16>),
}

impl IpSet {
    fn clear(&mut self) {
        match self {
            IpSet::Networks(v) => v.clear(),
            IpSet::AddressPorts(v) => v.clear(),
            IpSet::AddressPortNets(v) => v.clear(),
            IpSet::Ports(v) => v.clear(),
        }
    }

    /// Adds a member as `ipset restore` spells it; `None` when it does not parse.
    fn add(&mut self, member: &str) -> Option<()> {
        match self {
            IpSet::Networks(v) => v.push(network(member)?),
            IpSet::AddressPorts(v) => v.push(address_port(member)?),
            IpSet::AddressPortNets(v) => {
                let (first, net) = member.rsplit_once(',')?;
                v.push((address_port(first)?, network(net)?));
            }
            IpSet::Ports(v) => v.push(member.parse().ok()?),
        }
        Some(())
    }
}

/// `10.0.0.1,tcp:80`.
fn address_port(member: &str) -> Option<AddressPort> {
    let (ip, rest) = member.split_once(',')?;
    let (protocol, port) = rest.split_once(':')?;
    Some(AddressPort {
        ip: ip.parse().ok()?,
        protocol: protocol.parse().ok()?,
        port: port.parse().ok()?,
    })
}

/// `10.0.0.0/24`, or an address as its host network.
fn network(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The final fate of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Delivered: to a local socket or forwarded on.
    Accept,
    /// Silently dropped.
    Drop,
    /// Rejected (ICMP port unreachable / connection refused).
    Reject,
    /// Let through while still addressed to a Service address no rule DNATed it from: the
    /// Service does not expose this port and protocol, and nothing owns the address.
    NoServicePort,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "ACCEPT",
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
            Verdict::NoServicePort => "NO SERVICE PORT",
        })
    }
}

/// One rule that matched and acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The table.
    pub table: Table,
    /// The chain.
    pub chain: ChainName,
    /// The rule's position in the chain (0-based).
    pub index: usize,
    /// The rule.
    pub rule: Rule,
}

/// One branch of a trace: what happens with the given probability.
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
    /// The IPVS virtual server that took the packet, in IPVS mode ([`trace_ipvs`]).
    pub ipvs: Option<IpvsStep>,
}

/// What an IPVS virtual server did with a branch's packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsStep {
    /// How many of the branch's [`Outcome::steps`] came before (the rest ran on the packet
    /// IPVS sent on).
    pub after: usize,
    /// The virtual server's address.
    pub service: VirtualAddr,
    /// Its scheduler.
    pub scheduler: String,
    /// Its persistence timeout (session affinity), seconds.
    pub persistence: Option<u32>,
    /// The real server chosen and its weight; `None` when the virtual server has no real
    /// server in use (the kernel answers ICMP port unreachable).
    pub real_server: Option<(SocketAddr, u32)>,
    /// The real servers in use (weight above 0), and their weights' sum.
    pub in_use: (usize, u32),
}

impl fmt::Display for IpvsStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipvs {} -s {}", self.service, self.scheduler)?;
        if let Some(t) = self.persistence {
            write!(f, " -p {t}")?;
        }
        let (count, total) = self.in_use;
        match self.real_server {
            Some((rs, weight)) => write!(
                f,
                ": real server {rs}, weight {weight} of {total} ({count} in use)"
            )?,
            None => f.write_str(": no real server in use, rejected")?,
        }
        if self.persistence.is_some() && self.real_server.is_some() {
            f.write_str("; the client's next connections within the timeout go there too")?;
        }
        Ok(())
    }
}

impl Outcome {
    /// The user-defined chains the packet entered, in order, without repeats in a row.
    pub fn chains(&self) -> Vec<&ChainName> {
        let mut out: Vec<&ChainName> = Vec::new();
        for s in &self.steps {
            if out.last() != Some(&&s.chain) {
                out.push(&s.chain);
            }
        }
        out
    }

    /// The comments of the NetworkPolicy rules that acted on this branch (in a per-Pod
    /// `KNP-I-*` / `KNP-E-*` chain), in order: the allowing rule (`ns/name ingress[0]`) or
    /// the isolating drop (`ns/pod ingress: isolated by ns/name`) of each direction judged.
    pub fn policy(&self) -> Vec<&str> {
        let per_pod = |c: &ChainName| {
            let c = c.as_str();
            c.starts_with(crate::policy::INGRESS_CHAIN_PREFIX)
                || c.starts_with(crate::policy::EGRESS_CHAIN_PREFIX)
        };
        self.steps
            .iter()
            .filter(|s| per_pod(&s.chain))
            .filter_map(|s| s.rule.comment_text())
            .collect()
    }
}

/// Every possible fate of one packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The packet traced.
    pub packet: Packet,
    /// The branches, in rule order.
    pub outcomes: Vec<Outcome>,
}

impl Trace {
    /// The probability of each verdict / DNAT destination / masquerade combination.
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
            let before = o
                .ipvs
                .as_ref()
                .map_or(o.steps.len(), |i| i.after.min(o.steps.len()));
            let (pre, post) = o.steps.split_at(before);
            let step = |f: &mut fmt::Formatter<'_>, s: &Step| {
                writeln!(
                    f,
                    "      {}/{} #{}: {}",
                    s.table,
                    s.chain,
                    s.index + 1,
                    s.rule
                )
            };
            for s in pre {
                step(f, s)?;
            }
            if let Some(ipvs) = &o.ipvs {
                writeln!(f, "      {ipvs}")?;
            }
            for s in post {
                step(f, s)?;
            }
        }
        Ok(())
    }
}

/// The deepest jump nesting followed before giving up.
pub const MAX_DEPTH: usize = 64;

/// Traces the first packet of a new connection through `ruleset` on `host`.
pub fn trace(ruleset: &Ruleset, host: &Host, packet: &Packet) -> Result<Trace, TraceError> {
    trace_with(ruleset, None, host, packet)
}

/// Traces the first packet of a new connection through IPVS mode on `host`: `ruleset` (the
/// fixed chains, with their hooks) and the kernel's `virtual_servers`. The host's local
/// addresses must include those bound to the dummy interface, as the kernel's do.
pub fn trace_ipvs(
    ruleset: &Ruleset,
    virtual_servers: &BTreeMap<VirtualAddr, VirtualServer>,
    host: &Host,
    packet: &Packet,
) -> Result<Trace, TraceError> {
    trace_with(ruleset, Some(virtual_servers), host, packet)
}

fn trace_with(
    ruleset: &Ruleset,
    ipvs: Option<&BTreeMap<VirtualAddr, VirtualServer>>,
    host: &Host,
    packet: &Packet,
) -> Result<Trace, TraceError> {
    let start = State {
        dst: packet.dst,
        dport: packet.dport,
        mark: 0,
        dnat: None,
        masqueraded: false,
        probability: 1.0,
        steps: Vec::new(),
        ipvs: None,
    };
    let tracer = Tracer {
        rs: ruleset,
        host,
        packet,
        ipvs,
    };
    let first = match packet.origin {
        Origin::Network => "PREROUTING",
        Origin::Host => "OUTPUT",
    };
    let mut outcomes = Vec::new();
    for (st, verdict) in tracer.hook(Table::Nat, first, start)? {
        if verdict != Verdict::Accept {
            outcomes.push(st.finish(verdict));
            continue;
        }
        // IPVS meets the host's own packets in LOCAL_OUT, right after nat OUTPUT.
        if packet.origin == Origin::Host
            && let Some(scheduled) = tracer.virtual_server(&st)
        {
            for st in scheduled {
                tracer.sent_on(st, &mut outcomes)?;
            }
            continue;
        }
        let local = host.is_local(st.dst);
        let filter = match (packet.origin, local) {
            (Origin::Host, _) => "OUTPUT",
            (Origin::Network, true) => "INPUT",
            (Origin::Network, false) => "FORWARD",
        };
        for (st, verdict) in tracer.hook(Table::Filter, filter, st)? {
            if verdict != Verdict::Accept {
                outcomes.push(st.finish(verdict));
                continue;
            }
            if local && packet.origin == Origin::Network {
                // IPVS meets packets for the host in LOCAL_IN, after filter INPUT.
                match tracer.virtual_server(&st) {
                    Some(scheduled) => {
                        for st in scheduled {
                            tracer.sent_on(st, &mut outcomes)?;
                        }
                    }
                    None => outcomes.push(st.finish(verdict)),
                }
                continue;
            }
            tracer.postrouting(st, &mut outcomes)?;
        }
    }
    Ok(Trace {
        packet: packet.clone(),
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
    /// The IPVS virtual server that took the packet.
    ipvs: Option<IpvsStep>,
}

impl State {
    fn finish(self, verdict: Verdict) -> Outcome {
        Outcome {
            probability: self.probability,
            steps: self.steps,
            dnat: self.dnat,
            masqueraded: self.masqueraded,
            verdict,
            ipvs: self.ipvs,
        }
    }
}

/// The schedulers that weigh their real servers (the others only skip weight 0).
const WEIGHTED_SCHEDULERS: [&str; 7] = ["wrr", "wlc", "sed", "sh", "mh", "lblc", "lblcr"];

/// How a chain was left.
enum Flow {
    /// A terminating target decided.
    Verdict(Verdict),
    /// The chain ended or returned: the caller continues.
    Continue,
}

/// How a rule's matches evaluate.
enum Eval {
    Yes,
    No,
    /// Matches with this probability (`-m statistic`).
    Maybe(f64),
}

struct Tracer<'a> {
    rs: &'a Ruleset,
    host: &'a Host,
    packet: &'a Packet,
    ipvs: Option<&'a BTreeMap<VirtualAddr, VirtualServer>>,
}

impl Tracer<'_> {
    /// The branches IPVS makes of `st` when its destination is a virtual server's: one per
    /// real server in use, with its share of new connections (by weight for the weighted
    /// schedulers, else equal), DNATed to it; or one rejected branch when none is in use.
    /// `None` when no virtual server has the address (or there is no IPVS).
    fn virtual_server(&self, st: &State) -> Option<Vec<State>> {
        let service = VirtualAddr {
            ip: st.dst,
            port: st.dport,
            protocol: self.packet.protocol,
        };
        let vs = self.ipvs?.get(&service)?;
        let in_use: Vec<(SocketAddr, u32)> = vs
            .real_servers
            .iter()
            .filter(|(_, r)| r.weight > 0)
            .map(|(a, r)| (*a, r.weight))
            .collect();
        let total: u32 = in_use.iter().map(|(_, w)| w).sum();
        let step = |real_server| IpvsStep {
            after: st.steps.len(),
            service,
            scheduler: vs.scheduler.clone(),
            persistence: vs.persistence,
            real_server,
            in_use: (in_use.len(), total),
        };
        if in_use.is_empty() {
            let mut rejected = st.clone();
            rejected.ipvs = Some(step(None));
            return Some(vec![rejected]);
        }
        let weighted = WEIGHTED_SCHEDULERS.contains(&vs.scheduler.as_str());
        Some(
            in_use
                .iter()
                .map(|&(to, weight)| {
                    let share = if weighted {
                        f64::from(weight) / f64::from(total)
                    } else {
                        1.0 / in_use.len() as f64
                    };
                    let mut next = st.clone();
                    next.probability *= share;
                    next.dst = to.ip();
                    next.dport = to.port();
                    next.dnat = Some(to);
                    next.ipvs = Some(step(Some((to, weight))));
                    next
                })
                .collect(),
        )
    }

    /// A packet IPVS forwards (or rejects): filter `OUTPUT`, then nat `POSTROUTING`.
    fn sent_on(&self, st: State, outcomes: &mut Vec<Outcome>) -> Result<(), TraceError> {
        if st.dnat.is_none() {
            outcomes.push(st.finish(Verdict::Reject));
            return Ok(());
        }
        for (st, verdict) in self.hook(Table::Filter, "OUTPUT", st)? {
            if verdict != Verdict::Accept {
                outcomes.push(st.finish(verdict));
                continue;
            }
            self.postrouting(st, outcomes)?;
        }
        Ok(())
    }

    /// nat `POSTROUTING`, the last hook of a packet that leaves the host.
    fn postrouting(&self, st: State, outcomes: &mut Vec<Outcome>) -> Result<(), TraceError> {
        for (st, verdict) in self.hook(Table::Nat, "POSTROUTING", st)? {
            let unserved = verdict == Verdict::Accept
                && st.dnat.is_none()
                && self.host.service_addrs.contains(&st.dst);
            outcomes.push(st.finish(if unserved {
                Verdict::NoServicePort
            } else {
                verdict
            }));
        }
        Ok(())
    }

    /// Runs a built-in chain; falling off its end applies its policy (ACCEPT).
    fn hook(
        &self,
        table: Table,
        chain: &str,
        st: State,
    ) -> Result<Vec<(State, Verdict)>, TraceError> {
        let name = ChainName::from(chain);
        if self.rs.chain(table, chain).is_none() {
            return Ok(vec![(st, Verdict::Accept)]);
        }
        Ok(self
            .run(table, &name, 0, st, 0)?
            .into_iter()
            .map(|(st, flow)| match flow {
                Flow::Verdict(v) => (st, v),
                Flow::Continue => (st, Verdict::Accept),
            })
            .collect())
    }

    fn run(
        &self,
        table: Table,
        chain: &ChainName,
        from: usize,
        mut st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
        if depth > MAX_DEPTH {
            return Err(TraceError::TooDeep {
                table,
                chain: chain.clone(),
            });
        }
        let rules = self.rs.chain(table, chain.as_str()).unwrap_or_default();
        let mut out = Vec::new();
        for (index, rule) in rules.iter().enumerate().skip(from) {
            let p = match self.eval(rule, &st)? {
                Eval::No => continue,
                Eval::Yes => 1.0,
                Eval::Maybe(p) => p,
            };
            let mut matched = st.clone();
            matched.probability *= p;
            st.probability *= 1.0 - p;
            matched.steps.push(Step {
                table,
                chain: chain.clone(),
                index,
                rule: rule.clone(),
            });
            out.extend(self.act(table, chain, index, rule, matched, depth)?);
            if p >= 1.0 {
                return Ok(out);
            }
        }
        out.push((st, Flow::Continue));
        Ok(out)
    }

    /// Applies a matched rule's target, then continues the chain where the target lets it.
    fn act(
        &self,
        table: Table,
        chain: &ChainName,
        index: usize,
        rule: &Rule,
        mut st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
        let verdict = |st: State, v: Verdict| Ok(vec![(st, Flow::Verdict(v))]);
        match &rule.target {
            None => self.run(table, chain, index + 1, st, depth),
            Some(Target::Mark(op)) => {
                st.mark = op.apply(st.mark);
                self.run(table, chain, index + 1, st, depth)
            }
            Some(Target::Accept) => verdict(st, Verdict::Accept),
            Some(Target::Drop) => verdict(st, Verdict::Drop),
            Some(Target::Reject) => verdict(st, Verdict::Reject),
            Some(Target::Return) => Ok(vec![(st, Flow::Continue)]),
            Some(Target::Dnat(to)) => {
                st.dst = to.ip();
                st.dport = to.port();
                st.dnat = Some(*to);
                verdict(st, Verdict::Accept)
            }
            Some(Target::Masquerade { .. }) => {
                st.masqueraded = true;
                verdict(st, Verdict::Accept)
            }
            Some(Target::Jump(to)) | Some(Target::Goto(to)) => {
                if self.rs.chain(table, to.as_str()).is_none() {
                    return Err(TraceError::UnknownChain {
                        table,
                        from: chain.clone(),
                        to: to.clone(),
                    });
                }
                let is_goto = matches!(rule.target, Some(Target::Goto(_)));
                let mut out = Vec::new();
                for (st, flow) in self.run(table, to, 0, st, depth + 1)? {
                    match flow {
                        Flow::Verdict(v) => out.push((st, Flow::Verdict(v))),
                        Flow::Continue if is_goto => out.push((st, Flow::Continue)),
                        Flow::Continue => {
                            out.extend(self.run(table, chain, index + 1, st, depth)?)
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    fn eval(&self, rule: &Rule, st: &State) -> Result<Eval, TraceError> {
        let pkt = self.packet;
        let mut probability = None;
        for m in &rule.matches {
            let ok = match m {
                Match::Comment(_) => true,
                Match::Protocol(p) => pkt.protocol == *p,
                Match::Source { addr, negated } => addr.contains(pkt.src) != *negated,
                Match::Destination { addr, negated } => addr.contains(st.dst) != *negated,
                Match::DestinationPort(r) => r.contains(st.dport),
                Match::SourcePort(r) => r.contains(pkt.sport),
                Match::AddrTypeLocal { direction, negated } => {
                    let ip = match direction {
                        Direction::Src => pkt.src,
                        Direction::Dst => st.dst,
                    };
                    self.host.is_local(ip) != *negated
                }
                Match::Mark {
                    value,
                    mask,
                    negated,
                } => (st.mark & mask == *value) != *negated,
                Match::Conntrack { states, negated } => {
                    let any = states.iter().any(|s| match s {
                        CtState::New => true,
                        CtState::Dnat => st.dnat.is_some(),
                        CtState::Established
                        | CtState::Related
                        | CtState::Invalid
                        | CtState::Snat => false,
                    });
                    any != *negated
                }
                Match::Statistic(p) => {
                    probability = Some(p.value());
                    true
                }
                // A first-time client is in no affinity list; `--set` always matches.
                Match::Recent(Recent::Check { .. }) => false,
                Match::Recent(Recent::Set { .. }) => true,
                Match::Set {
                    name,
                    directions,
                    negated,
                } => {
                    let ip = |d: &Direction| match d {
                        Direction::Src => pkt.src,
                        Direction::Dst => st.dst,
                    };
                    let port = |d: &Direction| match d {
                        Direction::Src => pkt.sport,
                        Direction::Dst => st.dport,
                    };
                    let hit = match (self.host.sets.get(name), directions.as_slice()) {
                        (Some(IpSet::Networks(nets)), [d]) => {
                            nets.iter().any(|n| n.contains(&ip(d)))
                        }
                        (Some(IpSet::AddressPorts(entries)), [d_ip, d_port]) => {
                            entries.iter().any(|e| {
                                e.ip == ip(d_ip)
                                    && e.protocol == pkt.protocol
                                    && e.port == port(d_port)
                            })
                        }
                        (Some(IpSet::AddressPortNets(entries)), [d_ip, d_port, d_net]) => {
                            entries.iter().any(|(e, net)| {
                                e.ip == ip(d_ip)
                                    && e.protocol == pkt.protocol
                                    && e.port == port(d_port)
                                    && net.contains(&ip(d_net))
                            })
                        }
                        (Some(IpSet::Ports(ports)), [d]) => ports.contains(&port(d)),
                        _ => return Err(TraceError::UnsupportedSet { name: name.clone() }),
                    };
                    hit != *negated
                }
                Match::InInterface { name, negated } => {
                    iface_matches(pkt.in_interface.as_deref(), name, *negated)
                }
                Match::OutInterface { name, negated } => {
                    iface_matches(pkt.out_interface.as_deref(), name, *negated)
                }
                // A traced packet is TCP, UDP or SCTP, never ICMPv6.
                Match::Icmpv6Type(_) => false,
                Match::ProtocolOnly(p) => pkt.protocol == *p,
                Match::PhysDevIsIn { negated } => {
                    let bridged = pkt.origin == Origin::Network
                        && self
                            .host
                            .bridge_sources
                            .iter()
                            .any(|n| n.contains(&pkt.src));
                    bridged != *negated
                }
                Match::IpvsForwarded => st.ipvs.is_some(),
                Match::IpvsVirtual {
                    addr,
                    protocol,
                    port,
                } => st.ipvs.as_ref().is_some_and(|i| {
                    i.service
                        == VirtualAddr {
                            ip: *addr,
                            protocol: *protocol,
                            port: *port,
                        }
                }),
            };
            if !ok {
                return Ok(Eval::No);
            }
        }
        Ok(match probability {
            Some(p) if p < 1.0 => Eval::Maybe(p),
            _ => Eval::Yes,
        })
    }
}

/// `[!] -i/-o PATTERN` against the packet's interface. An unknown interface is no interface
/// the rules name (as the kernel sees a locally sent packet's empty input interface): `-i X`
/// does not match it, `! -i X` does.
fn iface_matches(actual: Option<&str>, pattern: &str, negated: bool) -> bool {
    let actual = actual.unwrap_or_default();
    let hit = match pattern.strip_suffix('+') {
        Some(prefix) => actual.starts_with(prefix),
        None => actual == pattern,
    };
    hit != negated
}

#[cfg(test)]
mod tests {
    use netd_proxy::IpFamily;

    use super::*;
    use crate::iptables::Probability;

    fn packet() -> Packet {
        Packet::tcp(
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
            80,
        )
    }

    #[test]
    fn missing_chains_and_loops_are_errors() {
        let mut rs = Ruleset::new(IpFamily::V4);
        rs.append(
            Table::Filter,
            &ChainName::from("FORWARD"),
            Rule::new().jump(&ChainName::from("NOPE")),
        );
        let err = trace(&rs, &Host::default(), &packet()).expect_err("missing chain");
        assert!(matches!(err, TraceError::UnknownChain { .. }), "{err}");

        let mut rs = Ruleset::new(IpFamily::V4);
        let a = ChainName::from("A");
        rs.append(
            Table::Nat,
            &ChainName::from("PREROUTING"),
            Rule::new().jump(&a),
        );
        rs.append(Table::Nat, &a, Rule::new().jump(&a));
        let err = trace(&rs, &Host::default(), &packet()).expect_err("loop");
        assert!(matches!(err, TraceError::TooDeep { .. }), "{err}");
    }

    #[test]
    fn statistic_rules_split_goto_returns_to_the_caller_and_sets_match() {
        let mut rs = Ruleset::new(IpFamily::V4);
        let (pre, lb, sub) = (
            ChainName::from("PREROUTING"),
            ChainName::from("LB"),
            ChainName::from("SUB"),
        );
        rs.append(
            Table::Nat,
            &pre,
            Rule::new().target(Target::Goto(lb.clone())),
        );
        rs.append(Table::Nat, &pre, Rule::new().target(Target::Drop));
        rs.append(
            Table::Nat,
            &lb,
            Rule::new()
                .with(Match::Statistic(Probability::one_in(4)))
                .target(Target::Dnat("10.1.0.1:80".parse().expect("addr"))),
        );
        rs.append(Table::Nat, &lb, Rule::new().jump(&sub));
        rs.append(Table::Nat, &sub, Rule::new().target(Target::Return));
        let filter = ChainName::from("FORWARD");
        let set = Match::Set {
            name: "blocked".into(),
            directions: vec![Direction::Src],
            negated: false,
        };
        rs.append(
            Table::Filter,
            &filter,
            Rule::new().with(set).target(Target::Reject),
        );
        let mut host = Host::default();
        host.load_ipset(
            "create blocked hash:net family inet\ncreate blocked-N hash:net family inet\n\
             add blocked-N 10.0.0.0/24\nswap blocked-N blocked\ndestroy blocked-N\n",
        )
        .expect("ipset payload");
        let t = trace(&rs, &host, &packet()).expect("trace");
        let summary: Vec<(Verdict, Option<String>, f64)> = t
            .summary()
            .into_iter()
            .map(|((v, d, _), p)| (v, d.map(|d| d.to_string()), p))
            .collect();
        // 1/4 DNATed (then rejected by the set in FORWARD); 3/4 fall off LB, which was
        // entered by goto, so PREROUTING's DROP is skipped and the policy accepts — then the
        // set rejects those too.
        assert_eq!(
            summary,
            [
                (Verdict::Reject, None, 0.75),
                (Verdict::Reject, Some("10.1.0.1:80".into()), 0.25)
            ]
        );
        let unknown = Host::default();
        assert!(matches!(
            trace(&rs, &unknown, &packet()),
            Err(TraceError::UnsupportedSet { .. })
        ));
    }

    #[test]
    fn address_port_sets_match_address_protocol_and_port() {
        let mut rs = Ruleset::new(IpFamily::V4);
        let set = Match::Set {
            name: "peers".into(),
            directions: vec![Direction::Dst, Direction::Dst],
            negated: false,
        };
        let forward = ChainName::from("FORWARD");
        rs.append(
            Table::Filter,
            &forward,
            Rule::new().with(set).target(Target::Accept),
        );
        rs.append(Table::Filter, &forward, Rule::new().target(Target::Drop));
        let mut host = Host::default();
        host.load_ipset("create peers hash:ip,port family inet\nadd peers 10.0.0.2,tcp:80\n")
            .expect("ipset payload");
        let verdict = |p: &Packet| {
            let t = trace(&rs, &host, p).expect("trace");
            t.outcomes.iter().map(|o| o.verdict).collect::<Vec<_>>()
        };
        assert_eq!(verdict(&packet()), [Verdict::Accept]);
        let other_port = Packet {
            dport: 81,
            ..packet()
        };
        assert_eq!(verdict(&other_port), [Verdict::Drop]);
        let udp = Packet {
            protocol: Protocol::Udp,
            ..packet()
        };
        assert_eq!(verdict(&udp), [Verdict::Drop]);
    }

    #[test]
    fn ipset_lines_it_cannot_interpret_are_errors_naming_the_line() {
        for bad in [
            "create s hash:mac\n",
            "add missing 10.0.0.1\n",
            "create s hash:ip\nadd s not-an-ip\n",
            "create s hash:ip\nswap s t\n",
            "frobnicate s\n",
        ] {
            let err = Host::default().load_ipset(bad).expect_err(bad);
            let lines = bad.lines().count();
            assert_eq!(
                err,
                TraceError::InvalidIpsetLine {
                    line: lines,
                    text: bad.lines().last().unwrap_or_default().to_owned()
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn a_service_address_left_undnatted_is_reported_as_no_service_port() {
        let mut rs = Ruleset::new(IpFamily::V4);
        let pre = ChainName::from("PREROUTING");
        rs.append(
            Table::Nat,
            &pre,
            Rule::new()
                .destination(packet().dst)
                .dport(80)
                .target(Target::Dnat("10.1.0.1:8080".parse().expect("addr"))),
        );
        let host = Host {
            service_addrs: vec![packet().dst],
            ..Host::default()
        };
        let served = trace(&rs, &host, &packet()).expect("trace");
        assert_eq!(served.outcomes[0].verdict, Verdict::Accept);
        let other = Packet {
            dport: 81,
            ..packet()
        };
        let unserved = trace(&rs, &host, &other).expect("trace");
        assert_eq!(unserved.outcomes[0].verdict, Verdict::NoServicePort);
        assert!(
            unserved.to_string().contains("NO SERVICE PORT"),
            "{unserved}"
        );
    }

    fn virtual_servers(
        scheduler: &str,
        persistence: Option<u32>,
        weights: &[u32],
    ) -> BTreeMap<VirtualAddr, VirtualServer> {
        use crate::ipvs::RealServer;
        let real_servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr: SocketAddr = format!("10.1.0.{}:8080", i + 1).parse().expect("addr");
                let real = RealServer {
                    weight: *w,
                    connections: 0,
                };
                (addr, real)
            })
            .collect();
        BTreeMap::from([(
            VirtualAddr {
                ip: packet().dst,
                port: 80,
                protocol: Protocol::Tcp,
            },
            VirtualServer {
                scheduler: scheduler.to_owned(),
                persistence,
                source_hash: false,
                real_servers,
            },
        )])
    }

    fn ipvs_summary(t: &Trace) -> Vec<(Verdict, Option<String>, f64)> {
        t.summary()
            .into_iter()
            .map(|((v, d, _), p)| (v, d.map(|d| d.to_string()), p))
            .collect()
    }

    #[test]
    fn ipvs_splits_by_scheduler_and_weight_and_rejects_without_real_servers() {
        let rs = Ruleset::new(IpFamily::V4);
        let host = Host {
            local_addrs: vec![packet().dst],
            ..Host::default()
        };
        // rr: every real server in use alike; a draining one (weight 0) gets none.
        let rr = trace_ipvs(
            &rs,
            &virtual_servers("rr", None, &[1, 1, 0]),
            &host,
            &packet(),
        )
        .expect("trace");
        assert_eq!(
            ipvs_summary(&rr),
            [
                (Verdict::Accept, Some("10.1.0.1:8080".into()), 0.5),
                (Verdict::Accept, Some("10.1.0.2:8080".into()), 0.5),
            ]
        );
        // wrr: by weight; rr ignores weights but 0.
        let weights = [3, 1];
        let wrr = trace_ipvs(
            &rs,
            &virtual_servers("wrr", Some(300), &weights),
            &host,
            &packet(),
        )
        .expect("trace");
        assert_eq!(
            ipvs_summary(&wrr),
            [
                (Verdict::Accept, Some("10.1.0.1:8080".into()), 0.75),
                (Verdict::Accept, Some("10.1.0.2:8080".into()), 0.25),
            ]
        );
        let text = wrr.to_string();
        assert!(
            text.contains(
                "ipvs -t 10.0.0.2:80 -s wrr -p 300: real server 10.1.0.1:8080, weight 3 of 4 (2 in use); \
                 the client's next connections within the timeout go there too"
            ),
            "{text}"
        );
        let rr_weighted = trace_ipvs(
            &rs,
            &virtual_servers("rr", None, &weights),
            &host,
            &packet(),
        )
        .expect("trace");
        assert!(ipvs_summary(&rr_weighted).iter().all(|(_, _, p)| *p == 0.5));

        let empty =
            trace_ipvs(&rs, &virtual_servers("rr", None, &[0]), &host, &packet()).expect("trace");
        assert_eq!(ipvs_summary(&empty), [(Verdict::Reject, None, 1.0)]);
        assert!(
            empty
                .to_string()
                .contains("no real server in use, rejected"),
            "{empty}"
        );
        // Not a local address: routed on, IPVS never sees it.
        let routed = trace_ipvs(
            &rs,
            &virtual_servers("rr", None, &[1]),
            &Host::default(),
            &packet(),
        )
        .expect("trace");
        assert_eq!(ipvs_summary(&routed), [(Verdict::Accept, None, 1.0)]);
    }

    #[test]
    fn the_hosts_own_packets_meet_ipvs_before_filter_output() {
        let mut rs = Ruleset::new(IpFamily::V4);
        let vip = packet().dst;
        rs.append(
            Table::Filter,
            &ChainName::from("OUTPUT"),
            Rule::new()
                .with(Match::IpvsVirtual {
                    addr: vip,
                    protocol: Protocol::Tcp,
                    port: 80,
                })
                .target(Target::Drop),
        );
        let from_host = Packet {
            origin: Origin::Host,
            ..packet()
        };
        let vs = virtual_servers("rr", None, &[1]);
        let t = trace_ipvs(&rs, &vs, &Host::default(), &from_host).expect("trace");
        assert_eq!(
            ipvs_summary(&t),
            [(Verdict::Drop, Some("10.1.0.1:8080".into()), 1.0)]
        );
        let other = Packet {
            dport: 81,
            ..from_host
        };
        let t = trace_ipvs(&rs, &vs, &Host::default(), &other).expect("trace");
        assert_eq!(ipvs_summary(&t), [(Verdict::Accept, None, 1.0)]);
    }

    #[test]
    fn ipvs_modes_sets_and_bridge_ports_match() {
        let mut rs = Ruleset::new(IpFamily::V4);
        let forward = ChainName::from("FORWARD");
        let set = |name: &str, directions: Vec<Direction>| Match::Set {
            name: name.into(),
            directions,
            negated: false,
        };
        use Direction::{Dst, Src};
        for m in [
            set("ports", vec![Dst]),
            set("loop", vec![Dst, Dst, Src]),
            set("ranges", vec![Dst, Dst, Src]),
            Match::PhysDevIsIn { negated: false },
        ] {
            rs.append(
                Table::Filter,
                &forward,
                Rule::new().with(m).target(Target::Accept),
            );
        }
        rs.append(Table::Filter, &forward, Rule::new().target(Target::Drop));
        let mut host = Host {
            bridge_sources: vec!["10.9.0.0/24".parse().expect("cidr")],
            ..Host::default()
        };
        host.load_ipset(
            "create ports bitmap:port range 0-65535
add ports 30080
             create loop hash:ip,port,ip family inet
add loop 10.0.0.2,tcp:80,10.0.0.1
             create ranges hash:ip,port,net family inet
add ranges 10.0.0.3,tcp:80,10.8.0.0/16
",
        )
        .expect("ipset payload");
        let verdict = |src: &str, dst: &str, dport: u16| {
            let p = Packet::tcp(src.parse().expect("ip"), dst.parse().expect("ip"), dport);
            let t = trace(&rs, &host, &p).expect("trace");
            t.outcomes.iter().map(|o| o.verdict).collect::<Vec<_>>()
        };
        assert_eq!(verdict("10.7.0.1", "10.0.0.9", 30080), [Verdict::Accept]);
        assert_eq!(verdict("10.0.0.1", "10.0.0.2", 80), [Verdict::Accept]);
        assert_eq!(verdict("10.0.0.5", "10.0.0.2", 80), [Verdict::Drop]);
        assert_eq!(verdict("10.8.1.1", "10.0.0.3", 80), [Verdict::Accept]);
        assert_eq!(verdict("10.7.1.1", "10.0.0.3", 80), [Verdict::Drop]);
        assert_eq!(verdict("10.9.0.7", "10.0.0.3", 81), [Verdict::Accept]);
    }
}
