//! A typed iptables rule set: tables, chains, rules with structured matches and targets.
//!
//! Everything kube-netd writes for iptables is built as a [`Ruleset`] first and only then
//! rendered to `iptables-restore` input ([`Ruleset::to_restore`]), so the same value can be
//! walked by the [tracer](crate::trace()), compared in tests and diffed between syncs. Matches
//! stay structured (addresses are [`IpNet`]s, ports are numbers, probabilities are fractions)
//! rather than strings; rendering is byte-deterministic.
//!
//! Arguments are written in the order they are pushed, which lets renderers reproduce
//! kube-proxy's exact argument order (`-m comment --comment … -m tcp -p tcp -d … --dport …`).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use netd_model::Protocol;
use netd_proxy::IpFamily;

use crate::chains::is_service_chain;

/// An iptables table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: accept, drop, reject.
    Filter,
    /// `nat`: DNAT, SNAT, masquerade.
    Nat,
    /// `mangle`: packet marks.
    Mangle,
    /// `raw`: before connection tracking.
    Raw,
}

impl Table {
    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a chain, built-in (`PREROUTING`, `INPUT`…) or user-defined (`KUBE-SVC-…`).
/// Cheap to clone: a rule set refers to each chain from many rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(Arc<str>);

/// The built-in chains of every table.
pub const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

impl ChainName {
    /// Wraps a chain name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(Arc::from(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of the kernel's built-in chains.
    pub fn is_builtin(&self) -> bool {
        BUILTIN_CHAINS.contains(&self.as_str())
    }

    /// The order chains are written in: `KUBE-NODEPORTS`, `KUBE-SERVICES`, other `KUBE-*`
    /// chains, then the rest, alphabetically within each group (the order of kube-proxy's
    /// test dumps, so our output reads like theirs).
    fn write_order(&self) -> (u8, &str) {
        let rank = match self.as_str() {
            "KUBE-NODEPORTS" => 0,
            "KUBE-SERVICES" => 1,
            s if s.starts_with("KUBE-") => 2,
            _ => 3,
        };
        (rank, &self.0)
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ChainName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ChainName {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

/// An address match: one host (written without a prefix, as kube-proxy writes it) or a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Addr {
    /// One address.
    Ip(IpAddr),
    /// A range.
    Net(IpNet),
}

impl Addr {
    /// Whether `ip` is matched.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Addr::Ip(a) => *a == ip,
            Addr::Net(n) => n.contains(&ip),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "{ip}"),
            Addr::Net(n) => write!(f, "{n}"),
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        Addr::Ip(ip)
    }
}

impl From<IpNet> for Addr {
    fn from(net: IpNet) -> Self {
        Addr::Net(net)
    }
}

/// An inclusive port range (`first == last` for one port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// Source or destination, for `addrtype` and `set` matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// The packet's source.
    Src,
    /// The packet's destination.
    Dst,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Src => "src",
            Direction::Dst => "dst",
        }
    }
}

/// A connection-tracking state (`-m conntrack --ctstate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    /// The first packet of a connection.
    New,
    /// A packet of a connection seen in both directions.
    Established,
    /// A packet related to a tracked connection (ICMP errors, FTP data).
    Related,
    /// A packet conntrack could not place.
    Invalid,
    /// The connection's destination was rewritten.
    Dnat,
    /// The connection's source was rewritten.
    Snat,
}

impl CtState {
    fn as_str(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::Established => "ESTABLISHED",
            CtState::Related => "RELATED",
            CtState::Invalid => "INVALID",
            CtState::Dnat => "DNAT",
            CtState::Snat => "SNAT",
        }
    }
}

/// The probability of a `-m statistic --mode random` match, kept as the fraction `1/k` that
/// kube-proxy uses and written as Go's `%0.10f` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probability {
    /// `k` in `1/k`; at least 1.
    pub one_in: u32,
}

impl Probability {
    /// The probability `1/k` (`k` of 0 is taken as 1).
    pub fn one_in(k: u32) -> Self {
        Self { one_in: k.max(1) }
    }

    /// The value as a float.
    pub fn value(self) -> f64 {
        1.0 / f64::from(self.one_in)
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rust rounds the exact binary value half-to-even, as Go's strconv does.
        write!(f, "{:.10}", self.value())
    }
}

/// An `xt_recent` operation (session affinity).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recent {
    /// `--set`: remember the packet's source in list `name`.
    Set {
        /// The list.
        name: String,
    },
    /// `--rcheck --seconds S --reap`: the source was seen in list `name` within `seconds`.
    Check {
        /// The list.
        name: String,
        /// The window.
        seconds: u32,
    },
}

/// One match of a rule. Each renders as iptables arguments, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `-m comment --comment TEXT` (quoted when it contains spaces).
    Comment(String),
    /// `-m P -p P`: the protocol, loading its module so port matches work.
    Protocol(Protocol),
    /// `[!] -s ADDR`.
    Source {
        /// The address or range.
        addr: Addr,
        /// `!`.
        negated: bool,
    },
    /// `[!] -d ADDR`.
    Destination {
        /// The address or range.
        addr: Addr,
        /// `!`.
        negated: bool,
    },
    /// `--dport PORT[:LAST]` (needs a [`Match::Protocol`] before it).
    DestinationPort(PortRange),
    /// `--sport PORT[:LAST]` (needs a [`Match::Protocol`] before it).
    SourcePort(PortRange),
    /// `-m addrtype [!] --src-type/--dst-type LOCAL`: the address is one of this host's.
    AddrTypeLocal {
        /// Which address is tested.
        direction: Direction,
        /// `!`.
        negated: bool,
    },
    /// `-m mark [!] --mark VALUE/MASK`.
    Mark {
        /// The value.
        value: u32,
        /// The mask.
        mask: u32,
        /// `!`.
        negated: bool,
    },
    /// `-m conntrack [!] --ctstate S1,S2`.
    Conntrack {
        /// The states, any of which matches.
        states: Vec<CtState>,
        /// `!`.
        negated: bool,
    },
    /// `-m statistic --mode random --probability P`.
    Statistic(Probability),
    /// `-m recent --name N (--set | --rcheck --seconds S --reap)`.
    Recent(Recent),
    /// `-m set [!] --match-set NAME src[,dst…]`: membership in an ipset.
    Set {
        /// The set's name.
        name: String,
        /// Which packet fields form the lookup key, in order.
        directions: Vec<Direction>,
        /// `!`.
        negated: bool,
    },
    /// `[!] -i IFACE` (a trailing `+` is a prefix wildcard).
    InInterface {
        /// The interface name.
        name: String,
        /// `!`.
        negated: bool,
    },
    /// `[!] -o IFACE` (a trailing `+` is a prefix wildcard).
    OutInterface {
        /// The interface name.
        name: String,
        /// `!`.
        negated: bool,
    },
    /// `-p ipv6-icmp -m icmp6 --icmpv6-type TYPE` (ip6tables only).
    Icmpv6Type(u8),
    /// `-p P` alone, without loading the protocol's match module (IPVS mode's nodePort rules
    /// match ports through a set, not `--dport`).
    ProtocolOnly(Protocol),
    /// `-m physdev [!] --physdev-is-in`: the packet came in through a bridge port.
    PhysDevIsIn {
        /// `!`.
        negated: bool,
    },
    /// `-m ipvs --ipvs --vdir ORIGINAL`: a request IPVS has forwarded (seen in `OUTPUT`,
    /// which IPVS sends it through once a real server is chosen).
    IpvsForwarded,
    /// `-m ipvs --vaddr IP --vproto P --vport PORT`: the packet belongs to that IPVS
    /// virtual server.
    IpvsVirtual {
        /// The virtual server's address.
        addr: IpAddr,
        /// Its protocol.
        protocol: Protocol,
        /// Its port.
        port: u16,
    },
}

/// A packet-mark operation (`-j MARK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarkOp {
    /// `--or-mark V`: set bits.
    Or(u32),
    /// `--xor-mark V`: flip bits.
    Xor(u32),
    /// `--set-xmark V/M`: clear the mask, then xor the value.
    SetXMark {
        /// The value.
        value: u32,
        /// The mask.
        mask: u32,
    },
}

impl MarkOp {
    /// The mark after applying the operation to `mark`.
    pub fn apply(self, mark: u32) -> u32 {
        match self {
            MarkOp::Or(v) => mark | v,
            MarkOp::Xor(v) => mark ^ v,
            MarkOp::SetXMark { value, mask } => (mark & !mask) ^ value,
        }
    }
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `-j CHAIN`: run the chain, then continue here unless it decided.
    Jump(ChainName),
    /// `-g CHAIN`: run the chain; its end returns to this chain's caller.
    Goto(ChainName),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT` (ICMP port unreachable).
    Reject,
    /// `-j DNAT --to-destination ADDR:PORT`.
    Dnat(SocketAddr),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        /// `--random-fully`.
        random_fully: bool,
    },
    /// `-j MARK …` (non-terminating).
    Mark(MarkOp),
}

/// One rule: matches (all must hold) and an optional target (a rule without one only counts
/// packets, or, in kube-proxy's use, carries a comment).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The matches, in argument order.
    pub matches: Vec<Match>,
    /// The target.
    pub target: Option<Target>,
}

impl Rule {
    /// An empty rule (matches everything, no target).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a match.
    pub fn with(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }

    /// Adds `-m comment --comment TEXT`.
    pub fn comment(self, text: impl Into<String>) -> Self {
        self.with(Match::Comment(text.into()))
    }

    /// Adds `-m P -p P`.
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.with(Match::Protocol(protocol))
    }

    /// Adds `-s ADDR`.
    pub fn source(self, addr: impl Into<Addr>) -> Self {
        self.with(Match::Source {
            addr: addr.into(),
            negated: false,
        })
    }

    /// Adds `! -s ADDR`.
    pub fn not_source(self, addr: impl Into<Addr>) -> Self {
        self.with(Match::Source {
            addr: addr.into(),
            negated: true,
        })
    }

    /// Adds `-d ADDR`.
    pub fn destination(self, addr: impl Into<Addr>) -> Self {
        self.with(Match::Destination {
            addr: addr.into(),
            negated: false,
        })
    }

    /// Adds `! -d ADDR`.
    pub fn not_destination(self, addr: impl Into<Addr>) -> Self {
        self.with(Match::Destination {
            addr: addr.into(),
            negated: true,
        })
    }

    /// Adds `--dport PORT`.
    pub fn dport(self, port: u16) -> Self {
        self.with(Match::DestinationPort(PortRange::single(port)))
    }

    /// Adds `-m addrtype --src-type LOCAL` / `--dst-type LOCAL`.
    pub fn local(self, direction: Direction) -> Self {
        self.with(Match::AddrTypeLocal {
            direction,
            negated: false,
        })
    }

    /// Adds `-m conntrack --ctstate …`.
    pub fn ctstate(self, states: &[CtState]) -> Self {
        self.with(Match::Conntrack {
            states: states.to_vec(),
            negated: false,
        })
    }

    /// Sets the target.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Sets `-j CHAIN`.
    pub fn jump(self, chain: &ChainName) -> Self {
        self.target(Target::Jump(chain.clone()))
    }

    /// The rule's comment, if it has one.
    pub fn comment_text(&self) -> Option<&str> {
        self.matches.iter().find_map(|m| match m {
            Match::Comment(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// The rule as separate command-line arguments (unquoted), for `iptables -C/-I CHAIN …`.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.write_args(&mut |a: Arg<'_>| out.push(a.to_owned_string()));
        out
    }

    fn write_args(&self, out: &mut dyn FnMut(Arg<'_>)) {
        for m in &self.matches {
            write_match(m, out);
        }
        if let Some(t) = &self.target {
            write_target(t, out);
        }
    }
}

impl fmt::Display for Rule {
    /// The rule's arguments as `iptables-restore` reads them (comments quoted when needed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut result = Ok(());
        self.write_args(&mut |a: Arg<'_>| {
            if result.is_err() {
                return;
            }
            if !first {
                result = f.write_str(" ");
            }
            first = false;
            if result.is_ok() {
                result = a.write_quoted(f);
            }
        });
        result
    }
}

/// A rule in one of the kernel's built-in chains that hooks our chains in. The applier
/// inserts these at the top of `chain` (if absent), as kube-proxy's `EnsureRule(Prepend)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookRule {
    /// The table.
    pub table: Table,
    /// The built-in chain.
    pub chain: ChainName,
    /// The rule.
    pub rule: Rule,
}

/// A whole rule set of one IP family: per table, chains and their rules.
///
/// Chains are kept hashed (building a rule set touches each chain many times) and sorted
/// whenever they are listed or rendered, so every output is deterministic. Each chain's
/// rules are shared between clones and copied only when one of them changes the chain: a
/// clone of a Node's rules (which an incremental programmer keeps while the sync engine
/// keeps those it applied) copies no rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// `iptables` (IPv4) or `ip6tables` (IPv6).
    pub family: IpFamily,
    tables: BTreeMap<Table, Chains>,
}

/// The chains of one table, the per-service ones ([`is_service_chain`]) apart: at 10,000
/// Services they are nearly all of them, and a partial restore names the few it writes
/// ([`RestoreSelection::service_chains`]) instead of visiting every one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Chains {
    service: Shards<Arc<Vec<Rule>>>,
    other: Shards<Arc<Vec<Rule>>>,
}

impl Chains {
    fn of(&self, chain: &str) -> &Shards<Arc<Vec<Rule>>> {
        if is_service_chain(chain) {
            &self.service
        } else {
            &self.other
        }
    }

    fn of_mut(&mut self, chain: &str) -> &mut Shards<Arc<Vec<Rule>>> {
        if is_service_chain(chain) {
            &mut self.service
        } else {
            &mut self.other
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&ChainName, &Arc<Vec<Rule>>)> {
        self.other.iter().chain(self.service.iter())
    }
}

/// A map by chain name split into shards behind `Arc`s: a clone shares every shard and a
/// change copies only the shard it touches, so cloning and dropping a Node's 130,000
/// chains (programmer to engine, once per sync) costs a few hundred reference counts, not
/// a visit of every chain.
#[derive(Clone, Debug)]
pub(crate) struct Shards<V> {
    /// Empty until the first insert (most rule sets are small); else [`SHARDS`] shards, a
    /// name always in the same one ([`shard`]).
    shards: Vec<Arc<HashMap<ChainName, V>>>,
}

/// The number of [`Shards`]: about 500 chains each at 10,000 Services.
const SHARDS: usize = 256;

/// The shard of `name`: a cheap hash of its last bytes (hashed chain names end in base32
/// of a SHA-256; the fixed names are few).
fn shard(name: &str) -> usize {
    let tail = &name.as_bytes()[name.len().saturating_sub(8)..];
    let h = tail.iter().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(*b))
    });
    h % SHARDS
}

/// Equal when they map the same names to equal values, however sharded.
impl<V: Clone + PartialEq> PartialEq for Shards<V> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().count() == other.iter().count()
            && self.iter().all(|(name, v)| other.get(name) == Some(v))
    }
}

impl<V: Clone + Eq> Eq for Shards<V> {}

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Self { shards: Vec::new() }
    }
}

impl<V: Clone> Shards<V> {
    pub(crate) fn get<Q: Borrow<str> + ?Sized>(&self, name: &Q) -> Option<&V> {
        let name: &str = name.borrow();
        self.get_key_value(name).map(|(_, v)| v)
    }

    pub(crate) fn get_key_value<Q: Borrow<str> + ?Sized>(
        &self,
        name: &Q,
    ) -> Option<(&ChainName, &V)> {
        let name: &str = name.borrow();
        self.shards.get(shard(name))?.get_key_value(name)
    }

    pub(crate) fn contains_key<Q: Borrow<str> + ?Sized>(&self, name: &Q) -> bool {
        let name: &str = name.borrow();
        self.get(name).is_some()
    }

    /// The shard `name` belongs in, unshared (copied if a clone shares it).
    fn shard_mut(&mut self, name: &str) -> &mut HashMap<ChainName, V> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.shards[shard(name)])
    }

    pub(crate) fn insert(&mut self, name: ChainName, value: V) -> Option<V> {
        self.shard_mut(name.as_str()).insert(name, value)
    }

    pub(crate) fn entry_or_default(&mut self, name: &ChainName) -> &mut V
    where
        V: Default,
    {
        self.shard_mut(name.as_str())
            .entry(name.clone())
            .or_default()
    }

    pub(crate) fn remove<Q: Borrow<str> + ?Sized>(&mut self, name: &Q) -> Option<V> {
        let name: &str = name.borrow();
        if !self.shards.get(shard(name))?.contains_key(name) {
            return None;
        }
        self.shard_mut(name).remove(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ChainName, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<V: Clone> FromIterator<(ChainName, V)> for Shards<V> {
    fn from_iter<I: IntoIterator<Item = (ChainName, V)>>(iter: I) -> Self {
        let mut out = Self::default();
        for (name, value) in iter {
            out.insert(name, value);
        }
        out
    }
}

/// Which chains of a [`Ruleset`] one `iptables-restore` payload rewrites, and which it
/// deletes.
pub struct RestoreSelection<'a> {
    /// Whether a chain is written (declared, flushed and refilled). Chains left out are not
    /// mentioned, so `--noflush` leaves them as they are.
    pub include: &'a dyn Fn(Table, &ChainName) -> bool,
    /// Chains to flush and delete (`:CHAIN` then `-X CHAIN`).
    pub delete: &'a BTreeSet<(Table, ChainName)>,
    /// When set, the only per-service chains ([`is_service_chain`]) looked at (`include`
    /// still decides): a partial sync writes a few Services' chains of 100,000s and need
    /// not visit the others. `None`: every chain.
    pub service_chains: Option<&'a [ChainName]>,
}

impl Ruleset {
    /// An empty rule set.
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            tables: BTreeMap::new(),
        }
    }

    /// The rules of a chain, creating the (empty) chain if needed.
    pub fn chain_mut(&mut self, table: Table, chain: &ChainName) -> &mut Vec<Rule> {
        let rules = self
            .tables
            .entry(table)
            .or_default()
            .of_mut(chain.as_str())
            .entry_or_default(chain);
        Arc::make_mut(rules)
    }

    /// Declares a chain (empty if new).
    pub fn declare(&mut self, table: Table, chain: &ChainName) {
        self.chain_mut(table, chain);
    }

    /// Sets the rules of a chain, creating the chain if needed (what it shared with clones
    /// is left to them, not copied).
    pub fn replace(&mut self, table: Table, chain: &ChainName, rules: Vec<Rule>) {
        self.tables
            .entry(table)
            .or_default()
            .of_mut(chain.as_str())
            .insert(chain.clone(), Arc::new(rules));
    }

    /// Appends a rule to a chain, creating the chain if needed.
    pub fn append(&mut self, table: Table, chain: &ChainName, rule: Rule) {
        self.chain_mut(table, chain).push(rule);
    }

    /// Removes a chain, returning its rules.
    pub fn remove(&mut self, table: Table, chain: &str) -> Option<Vec<Rule>> {
        self.tables
            .get_mut(&table)?
            .of_mut(chain)
            .remove(chain)
            .map(Arc::unwrap_or_clone)
    }

    /// Inserts a rule at the top of a chain (how hook rules are installed).
    pub fn prepend(&mut self, table: Table, chain: &ChainName, rule: Rule) {
        self.chain_mut(table, chain).insert(0, rule);
    }

    /// The rules of a chain, if it exists.
    pub fn chain(&self, table: Table, chain: &str) -> Option<&[Rule]> {
        self.tables
            .get(&table)?
            .of(chain)
            .get(chain)
            .map(|r| r.as_slice())
    }

    /// The chains of a table, by name.
    pub fn chains(&self, table: Table) -> impl Iterator<Item = (&ChainName, &[Rule])> {
        let mut chains: Vec<(&ChainName, &[Rule])> = self
            .tables
            .get(&table)
            .into_iter()
            .flat_map(Chains::iter)
            .map(|(n, r)| (n, r.as_slice()))
            .collect();
        chains.sort_unstable_by(|a, b| a.0.cmp(b.0));
        chains.into_iter()
    }

    /// The tables that have chains.
    pub fn tables(&self) -> impl Iterator<Item = Table> + '_ {
        self.tables.keys().copied()
    }

    /// The number of rules in a table.
    pub fn rule_count(&self, table: Table) -> usize {
        self.chains(table).map(|(_, r)| r.len()).sum()
    }

    /// Adds every chain and rule of `other` (rules appended after existing ones).
    pub fn extend(&mut self, other: &Ruleset) {
        for table in other.tables() {
            for (name, rules) in other.chains(table) {
                self.chain_mut(table, name).extend(rules.iter().cloned());
            }
        }
    }

    /// The whole rule set as `iptables-restore` input (for `--noflush`): every chain
    /// declared, then its rules, table by table. Built-in chains are declared with policy
    /// `ACCEPT`, as `iptables-save` writes them.
    pub fn to_restore(&self) -> String {
        let none = BTreeSet::new();
        self.restore_selected(&RestoreSelection {
            include: &|_, _| true,
            delete: &none,
            service_chains: None,
        })
    }

    /// `iptables-restore` input for part of the rule set (see [`RestoreSelection`]).
    pub fn restore_selected(&self, selection: &RestoreSelection<'_>) -> String {
        let mut out = String::new();
        let mut tables: BTreeSet<Table> = self.tables.keys().copied().collect();
        tables.extend(selection.delete.iter().map(|(t, _)| *t));
        for table in tables {
            let mut chains: Vec<(&ChainName, &[Rule])> = Vec::new();
            if let Some(all) = self.tables.get(&table) {
                let service: Box<dyn Iterator<Item = _>> = match selection.service_chains {
                    Some(names) => Box::new(
                        names
                            .iter()
                            .filter_map(|n| all.service.get_key_value(n.as_str())),
                    ),
                    None => Box::new(all.service.iter()),
                };
                chains.extend(
                    all.other
                        .iter()
                        .chain(service)
                        .filter(|(name, _)| (selection.include)(table, name))
                        .map(|(n, r)| (n, r.as_slice())),
                );
            }
            let deleted: Vec<&ChainName> = selection
                .delete
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, c)| c)
                .collect();
            if chains.is_empty() && deleted.is_empty() {
                continue;
            }
            chains.sort_unstable_by(|a, b| a.0.write_order().cmp(&b.0.write_order()));
            // A chain named twice in `service_chains` is written once.
            chains.dedup_by(|a, b| a.0 == b.0);
            let mut declared: Vec<(&ChainName, bool)> =
                chains.iter().map(|(n, _)| (*n, n.is_builtin())).collect();
            declared.extend(deleted.iter().map(|n| (*n, false)));
            declared.sort_unstable_by(|a, b| a.0.write_order().cmp(&b.0.write_order()));
            let _ = writeln!(out, "*{table}");
            for (name, builtin) in declared {
                let policy = if builtin { "ACCEPT" } else { "-" };
                let _ = writeln!(out, ":{name} {policy} [0:0]");
            }
            for (name, rules) in &chains {
                for rule in *rules {
                    let _ = writeln!(out, "-A {name} {rule}");
                }
            }
            for name in deleted {
                let _ = writeln!(out, "-X {name}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// One command-line argument: a fixed word, free text (a comment, quoted when needed) or a
/// value written straight into the output (no intermediate strings: rendering hundreds of
/// thousands of rules must not allocate per argument).
enum Arg<'a> {
    Word(&'a str),
    Text(&'a str),
    Show(&'a dyn fmt::Display),
}

impl Arg<'_> {
    fn to_owned_string(&self) -> String {
        match self {
            Arg::Word(w) | Arg::Text(w) => (*w).to_owned(),
            Arg::Show(d) => d.to_string(),
        }
    }

    fn write_quoted(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        match self {
            Arg::Word(w) => f.write_str(w),
            Arg::Show(d) => write!(f, "{d}"),
            Arg::Text(t) => {
                let plain = !t.is_empty()
                    && !t
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'));
                if plain {
                    return f.write_str(t);
                }
                f.write_char('"')?;
                for c in t.chars() {
                    if matches!(c, '"' | '\\') {
                        f.write_char('\\')?;
                    }
                    f.write_char(c)?;
                }
                f.write_char('"')
            }
        }
    }
}

/// A mark as kube-proxy formats it (Go's `%#08x`: eight digits after `0x`), optionally with
/// a mask.
struct MarkHex(u32, Option<u32>);

impl fmt::Display for MarkHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        match self.1 {
            Some(mask) => write!(f, "/{mask:#010x}"),
            None => Ok(()),
        }
    }
}

/// A comma-separated list.
struct Commas<'a, T>(&'a [T], fn(&T) -> &'static str);

impl<T> fmt::Display for Commas<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            f.write_str((self.1)(item))?;
        }
        Ok(())
    }
}

fn write_match(m: &Match, out: &mut dyn FnMut(Arg<'_>)) {
    use Arg::{Show, Word};
    let neg = |negated: bool, out: &mut dyn FnMut(Arg<'_>)| {
        if negated {
            out(Word("!"));
        }
    };
    match m {
        Match::Comment(text) => {
            out(Word("-m"));
            out(Word("comment"));
            out(Word("--comment"));
            out(Arg::Text(text));
        }
        Match::Protocol(p) => {
            out(Word("-m"));
            out(Word(p.as_lower_str()));
            out(Word("-p"));
            out(Word(p.as_lower_str()));
        }
        Match::Source { addr, negated } => {
            neg(*negated, out);
            out(Word("-s"));
            out(Show(addr));
        }
        Match::Destination { addr, negated } => {
            neg(*negated, out);
            out(Word("-d"));
            out(Show(addr));
        }
        Match::DestinationPort(r) => {
            out(Word("--dport"));
            out(Show(r));
        }
        Match::SourcePort(r) => {
            out(Word("--sport"));
            out(Show(r));
        }
        Match::AddrTypeLocal { direction, negated } => {
            out(Word("-m"));
            out(Word("addrtype"));
            neg(*negated, out);
            out(Word(match direction {
                Direction::Src => "--src-type",
                Direction::Dst => "--dst-type",
            }));
            out(Word("LOCAL"));
        }
        Match::Mark {
            value,
            mask,
            negated,
        } => {
            out(Word("-m"));
            out(Word("mark"));
            neg(*negated, out);
            out(Word("--mark"));
            out(Show(&MarkHex(*value, Some(*mask))));
        }
        Match::Conntrack { states, negated } => {
            out(Word("-m"));
            out(Word("conntrack"));
            neg(*negated, out);
            out(Word("--ctstate"));
            out(Show(&Commas(states, |s| s.as_str())));
        }
        Match::Statistic(p) => {
            out(Word("-m"));
            out(Word("statistic"));
            out(Word("--mode"));
            out(Word("random"));
            out(Word("--probability"));
            out(Show(p));
        }
        Match::Recent(r) => {
            out(Word("-m"));
            out(Word("recent"));
            out(Word("--name"));
            match r {
                Recent::Set { name } => {
                    out(Word(name));
                    out(Word("--set"));
                }
                Recent::Check { name, seconds } => {
                    out(Word(name));
                    out(Word("--rcheck"));
                    out(Word("--seconds"));
                    out(Show(seconds));
                    out(Word("--reap"));
                }
            }
        }
        Match::Set {
            name,
            directions,
            negated,
        } => {
            out(Word("-m"));
            out(Word("set"));
            neg(*negated, out);
            out(Word("--match-set"));
            out(Word(name));
            out(Show(&Commas(directions, |d| d.as_str())));
        }
        Match::InInterface { name, negated } => {
            neg(*negated, out);
            out(Word("-i"));
            out(Word(name));
        }
        Match::OutInterface { name, negated } => {
            neg(*negated, out);
            out(Word("-o"));
            out(Word(name));
        }
        Match::Icmpv6Type(t) => {
            out(Word("-p"));
            out(Word("ipv6-icmp"));
            out(Word("-m"));
            out(Word("icmp6"));
            out(Word("--icmpv6-type"));
            out(Show(t));
        }
        Match::ProtocolOnly(p) => {
            out(Word("-p"));
            out(Word(p.as_lower_str()));
        }
        Match::PhysDevIsIn { negated } => {
            out(Word("-m"));
            out(Word("physdev"));
            neg(*negated, out);
            out(Word("--physdev-is-in"));
        }
        Match::IpvsForwarded => {
            out(Word("-m"));
            out(Word("ipvs"));
            out(Word("--ipvs"));
            out(Word("--vdir"));
            out(Word("ORIGINAL"));
        }
        Match::IpvsVirtual {
            addr,
            protocol,
            port,
        } => {
            out(Word("-m"));
            out(Word("ipvs"));
            out(Word("--vaddr"));
            out(Show(addr));
            out(Word("--vproto"));
            out(Word(protocol.as_lower_str()));
            out(Word("--vport"));
            out(Show(port));
        }
    }
}

fn write_target(t: &Target, out: &mut dyn FnMut(Arg<'_>)) {
    use Arg::{Show, Word};
    match t {
        Target::Jump(c) => {
            out(Word("-j"));
            out(Word(c.as_str()));
        }
        Target::Goto(c) => {
            out(Word("-g"));
            out(Word(c.as_str()));
        }
        Target::Accept => {
            out(Word("-j"));
            out(Word("ACCEPT"));
        }
        Target::Drop => {
            out(Word("-j"));
            out(Word("DROP"));
        }
        Target::Return => {
            out(Word("-j"));
            out(Word("RETURN"));
        }
        Target::Reject => {
            out(Word("-j"));
            out(Word("REJECT"));
        }
        Target::Dnat(addr) => {
            out(Word("-j"));
            out(Word("DNAT"));
            out(Word("--to-destination"));
            out(Show(addr));
        }
        Target::Masquerade { random_fully } => {
            out(Word("-j"));
            out(Word("MASQUERADE"));
            if *random_fully {
                out(Word("--random-fully"));
            }
        }
        Target::Mark(op) => {
            out(Word("-j"));
            out(Word("MARK"));
            match op {
                MarkOp::Or(v) => {
                    out(Word("--or-mark"));
                    out(Show(&MarkHex(*v, None)));
                }
                MarkOp::Xor(v) => {
                    out(Word("--xor-mark"));
                    out(Show(&MarkHex(*v, None)));
                }
                MarkOp::SetXMark { value, mask } => {
                    out(Word("--set-xmark"));
                    out(Show(&MarkHex(*value, Some(*mask))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_match_kube_proxy() {
        // TestComputeProbability's anchors.
        for (k, want) in [
            (1, "1.0000000000"),
            (2, "0.5000000000"),
            (3, "0.3333333333"),
            (10, "0.1000000000"),
            (100001, "0.0000099999"),
        ] {
            assert_eq!(Probability::one_in(k).to_string(), want, "1/{k}");
        }
    }

    #[test]
    fn rules_render_like_kube_proxy() {
        let svc = ChainName::new("KUBE-SVC-XPGD46QRK7WJZT7O");
        let rule = Rule::new()
            .comment("ns1/svc1:p80 cluster IP")
            .protocol(Protocol::Tcp)
            .destination("172.30.0.41".parse::<IpAddr>().expect("ip"))
            .dport(80)
            .jump(&svc);
        assert_eq!(
            rule.to_string(),
            r#"-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O"#
        );
        assert_eq!(rule.args()[3], "ns1/svc1:p80 cluster IP");
        let masq = Rule::new()
            .with(Match::Mark {
                value: 0x4000,
                mask: 0x4000,
                negated: true,
            })
            .target(Target::Return);
        assert_eq!(
            masq.to_string(),
            "-m mark ! --mark 0x00004000/0x00004000 -j RETURN"
        );
        let set = Rule::new()
            .with(Match::Set {
                name: "KUBE-NP-X".into(),
                directions: vec![Direction::Src],
                negated: true,
            })
            .comment("ns1/svc1:p80")
            .target(Target::Drop);
        assert_eq!(
            set.to_string(),
            "-m set ! --match-set KUBE-NP-X src -m comment --comment ns1/svc1:p80 -j DROP"
        );
        let odd = Rule::new().comment(r#"a "quoted" \ word"#);
        assert_eq!(
            odd.to_string(),
            r#"-m comment --comment "a \"quoted\" \\ word""#
        );
    }

    #[test]
    fn restore_orders_chains_like_kube_proxy_dumps() {
        let mut rs = Ruleset::new(IpFamily::V4);
        for name in [
            "KUBE-SVC-B",
            "KUBE-SERVICES",
            "OTHER",
            "KUBE-NODEPORTS",
            "KUBE-EXT-A",
        ] {
            rs.append(
                Table::Nat,
                &ChainName::from(name),
                Rule::new().target(Target::Accept),
            );
        }
        rs.declare(Table::Filter, &ChainName::from("KUBE-FORWARD"));
        let deleted: BTreeSet<(Table, ChainName)> =
            [(Table::Nat, ChainName::from("KUBE-SEP-OLD"))].into();
        let text = rs.restore_selected(&RestoreSelection {
            include: &|_, c| c.as_str() != "OTHER",
            delete: &deleted,
            service_chains: None,
        });
        let want = "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-EXT-A - [0:0]\n:KUBE-SEP-OLD - [0:0]\n:KUBE-SVC-B - [0:0]\n-A KUBE-NODEPORTS -j ACCEPT\n-A KUBE-SERVICES -j ACCEPT\n-A KUBE-EXT-A -j ACCEPT\n-A KUBE-SVC-B -j ACCEPT\n-X KUBE-SEP-OLD\nCOMMIT\n";
        assert_eq!(text, want);

        // Naming the per-service chains: the others are not written, a name given twice is
        // written once, a name the rule set lacks not at all; other chains as before.
        let named = ["KUBE-SVC-B", "KUBE-SEP-NONE", "KUBE-SVC-B"].map(ChainName::from);
        let text = rs.restore_selected(&RestoreSelection {
            include: &|_, c| c.as_str() != "OTHER",
            delete: &deleted,
            service_chains: Some(&named),
        });
        let want = "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-OLD - [0:0]\n:KUBE-SVC-B - [0:0]\n-A KUBE-NODEPORTS -j ACCEPT\n-A KUBE-SERVICES -j ACCEPT\n-A KUBE-SVC-B -j ACCEPT\n-X KUBE-SEP-OLD\nCOMMIT\n";
        assert_eq!(text, want);
    }

    #[test]
    fn shards_compare_by_content_and_clones_change_apart() {
        let mut a: Shards<u32> = Shards::default();
        a.insert(ChainName::from("KUBE-SVC-A"), 1);
        assert_eq!(a.remove("KUBE-SVC-A"), Some(1));
        assert_eq!(a, Shards::default(), "emptied equals never filled");
        a.insert(ChainName::from("KUBE-SVC-A"), 1);
        let mut b = a.clone();
        *b.entry_or_default(&ChainName::from("KUBE-SVC-A")) = 2;
        b.insert(ChainName::from("KUBE-SEP-B"), 3);
        assert_eq!(a.get("KUBE-SVC-A"), Some(&1));
        assert!(!a.contains_key("KUBE-SEP-B"));
        assert_eq!(b.get("KUBE-SVC-A"), Some(&2));
        assert_ne!(a, b);
    }

    #[test]
    fn extend_appends_after_existing_rules() {
        let chain = ChainName::from("KUBE-FORWARD");
        let mut a = Ruleset::new(IpFamily::V4);
        a.append(Table::Filter, &chain, Rule::new().target(Target::Accept));
        let mut b = Ruleset::new(IpFamily::V4);
        b.append(Table::Filter, &chain, Rule::new().target(Target::Drop));
        b.declare(Table::Nat, &ChainName::from("KUBE-X"));
        a.extend(&b);
        assert_eq!(
            a.chain(Table::Filter, "KUBE-FORWARD").map(<[Rule]>::len),
            Some(2)
        );
        assert_eq!(a.rule_count(Table::Filter), 2);
        assert_eq!(a.tables().collect::<Vec<_>>(), [Table::Filter, Table::Nat]);
    }

    #[test]
    fn mark_ops_apply() {
        assert_eq!(MarkOp::Or(0x4000).apply(0x1), 0x4001);
        assert_eq!(MarkOp::Xor(0x4000).apply(0x4001), 0x1);
        assert_eq!(
            MarkOp::SetXMark {
                value: 0x4000,
                mask: 0xc000
            }
            .apply(0x8001),
            0x4001
        );
    }
}
