//! The typed nftables representation: one [`Table`] of chains, named sets and maps, and
//! rules made of structured [`Match`]es and [`Statement`]s.
//!
//! Nothing here is a string until it is rendered: addresses are [`IpAddr`]s and [`IpNet`]s,
//! ports are numbers, verdicts name chains. So the same value can be walked by a tracer,
//! compared and [diffed](super::diff()) between syncs, and lowered to netlink expressions;
//! [`Table::to_nft`] writes it as byte-deterministic `nft -f` input.
//!
//! A packet field that depends on the family (`ip saddr` or `ip6 saddr`) is written
//! family-neutral ([`Field::Saddr`]) and takes the family of its table when rendered.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use netd_model::Protocol;
use netd_proxy::{InterfaceName, IpFamily};

/// The name of the table kube-netd owns in each family (`ip kube-netd`, `ip6 kube-netd`).
pub const TABLE_NAME: &str = "kube-netd";

/// One nftables table: everything kube-netd programs for one family.
///
/// Chains, sets and maps are kept by name in ordered maps, so rendering is deterministic and
/// a name is defined once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// `ip` for IPv4, `ip6` for IPv6.
    pub family: IpFamily,
    /// The table's name ([`TABLE_NAME`] for kube-netd's own).
    pub name: String,
    /// Named sets and maps, by name (sets and maps share one namespace in nftables).
    pub sets: BTreeMap<String, Set>,
    /// Chains, by name.
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    /// An empty table named [`TABLE_NAME`].
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            name: TABLE_NAME.to_owned(),
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    /// `ip` or `ip6`: the family as nftables spells it.
    pub fn family_str(&self) -> &'static str {
        family_str(self.family)
    }

    /// Adds (or replaces) a chain.
    pub fn add_chain(&mut self, chain: Chain) {
        self.chains.insert(chain.name.clone(), chain);
    }

    /// Adds (or replaces) a set or map.
    pub fn add_set(&mut self, set: Set) {
        self.sets.insert(set.name.clone(), set);
    }

    /// The table as `nft -f` input: one `table … { … }` block declaring every set, map and
    /// chain with its contents. Loading it into a kernel without the table creates the table;
    /// loading it over an existing one adds to it (a full replace is `add table`, `delete
    /// table`, then this, in one transaction).
    pub fn to_nft(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "table {} {} {{", self.family_str(), self.name);
        let mut first = true;
        for set in self.sets.values() {
            if !first {
                out.push('\n');
            }
            first = false;
            set.write_block(&mut out);
        }
        for chain in self.chains.values() {
            if !first {
                out.push('\n');
            }
            first = false;
            chain.write_block(self.family, &mut out);
        }
        out.push_str("}\n");
        out
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nft())
    }
}

/// `ip` or `ip6`.
pub(crate) fn family_str(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// A chain: a base chain attached to a hook, or a regular chain reached by jump and goto.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The chain's name.
    pub name: String,
    /// Type, hook and priority of a base chain; `None` for a regular chain.
    pub base: Option<BaseChain>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// An empty regular chain.
    pub fn regular(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base: None,
            rules: Vec::new(),
        }
    }

    /// An empty base chain.
    pub fn base(name: impl Into<String>, base: BaseChain) -> Self {
        Self {
            name: name.into(),
            base: Some(base),
            rules: Vec::new(),
        }
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The chains this chain's rules jump or go to, directly or through anonymous maps.
    pub fn chain_refs(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flat_map(Rule::chain_refs)
    }

    /// The named sets and maps this chain's rules use.
    pub fn set_refs(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flat_map(Rule::set_refs)
    }

    fn write_block(&self, family: IpFamily, out: &mut String) {
        let _ = writeln!(out, "\tchain {} {{", self.name);
        if let Some(base) = &self.base {
            let _ = writeln!(out, "\t\t{base}");
        }
        for rule in &self.rules {
            let _ = writeln!(out, "\t\t{}", rule.display(family));
        }
        out.push_str("\t}\n");
    }
}

/// What makes a chain a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: ChainType,
    /// The netfilter hook.
    pub hook: Hook,
    /// The priority, relative to a standard one.
    pub priority: Priority,
}

impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {}; policy accept;",
            self.kind.as_str(),
            self.hook.as_str(),
            self.priority.display(self.hook)
        )
    }
}

/// The type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `filter`: accept, drop, reject.
    Filter,
    /// `nat`: DNAT and masquerade (only the first packet of a connection passes).
    Nat,
}

impl ChainType {
    /// The type as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// A netfilter hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// Every packet arriving, before routing.
    Prerouting,
    /// Packets for this host.
    Input,
    /// Packets routed through this host.
    Forward,
    /// Packets this host sends.
    Output,
    /// Every packet leaving, after routing.
    Postrouting,
}

impl Hook {
    /// The hook as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A base chain's priority: a standard priority plus an offset (`dstnat - 10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    /// The standard priority it is relative to.
    pub base: StandardPriority,
    /// Added to the standard priority's value.
    pub offset: i32,
}

impl Priority {
    /// Exactly a standard priority.
    pub const fn at(base: StandardPriority) -> Self {
        Self { base, offset: 0 }
    }

    /// A standard priority plus `offset`.
    pub const fn plus(base: StandardPriority, offset: i32) -> Self {
        Self { base, offset }
    }

    /// The priority's number (lower runs first).
    pub fn value(self) -> i32 {
        self.base.value() + self.offset
    }

    /// The priority as `nft` 1.0.6 accepts it on `hook`: by name where nft allows the name
    /// there (`dstnat` only on prerouting, `srcnat` only on postrouting), as a number
    /// elsewhere.
    pub fn display(self, hook: Hook) -> String {
        let named = match self.base {
            StandardPriority::Dstnat => hook == Hook::Prerouting,
            StandardPriority::Srcnat => hook == Hook::Postrouting,
            StandardPriority::Raw | StandardPriority::Mangle | StandardPriority::Filter => true,
        };
        if !named {
            return self.value().to_string();
        }
        match self.offset {
            0 => self.base.as_str().to_owned(),
            o if o < 0 => format!("{} - {}", self.base.as_str(), o.unsigned_abs()),
            o => format!("{} + {o}", self.base.as_str()),
        }
    }
}

/// nftables's standard priorities for the `ip` and `ip6` families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StandardPriority {
    /// -300, before connection tracking.
    Raw,
    /// -150.
    Mangle,
    /// -100, destination NAT.
    Dstnat,
    /// 0.
    Filter,
    /// 100, source NAT.
    Srcnat,
}

impl StandardPriority {
    /// The priority's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StandardPriority::Raw => "raw",
            StandardPriority::Mangle => "mangle",
            StandardPriority::Dstnat => "dstnat",
            StandardPriority::Filter => "filter",
            StandardPriority::Srcnat => "srcnat",
        }
    }

    /// The priority's number.
    pub fn value(self) -> i32 {
        match self {
            StandardPriority::Raw => -300,
            StandardPriority::Mangle => -150,
            StandardPriority::Dstnat => -100,
            StandardPriority::Filter => 0,
            StandardPriority::Srcnat => 100,
        }
    }
}

/// A named set (no [`data`](Set::data)) or map (with one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// The set's name (used as `@name`).
    pub name: String,
    /// The key: one type, or several concatenated (`ipv4_addr . inet_proto . inet_service`).
    pub key: Vec<KeyType>,
    /// What a map maps to; `None` for a set.
    pub data: Option<DataType>,
    /// Flags, written in this order.
    pub flags: Vec<SetFlag>,
    /// The default timeout of elements, in seconds (needs [`SetFlag::Timeout`]).
    pub timeout_secs: Option<u32>,
    /// A comment.
    pub comment: Option<String>,
    /// The elements, by key.
    pub elements: BTreeMap<Vec<Value>, Element>,
}

impl Set {
    /// The set's definition alone: the same set with no elements, made without copying them
    /// (a shared map of a large node holds tens of thousands).
    pub fn without_elements(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            data: self.data,
            flags: self.flags.clone(),
            timeout_secs: self.timeout_secs,
            comment: self.comment.clone(),
            elements: BTreeMap::new(),
        }
    }

    /// An empty set with key `key`.
    pub fn new(name: impl Into<String>, key: Vec<KeyType>) -> Self {
        Self {
            name: name.into(),
            key,
            data: None,
            flags: Vec::new(),
            timeout_secs: None,
            comment: None,
            elements: BTreeMap::new(),
        }
    }

    /// An empty map from `key` to `data`.
    pub fn map(name: impl Into<String>, key: Vec<KeyType>, data: DataType) -> Self {
        Self {
            data: Some(data),
            ..Self::new(name, key)
        }
    }

    /// Sets the comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Adds a flag.
    pub fn with_flag(mut self, flag: SetFlag) -> Self {
        self.flags.push(flag);
        self
    }

    /// Sets the default element timeout.
    pub fn with_timeout(mut self, secs: u32) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// Whether this is a map.
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// `set` or `map`, the keyword nft commands use for it.
    pub fn keyword(&self) -> &'static str {
        if self.is_map() { "map" } else { "set" }
    }

    /// Adds (or replaces) an element of a set.
    pub fn insert(&mut self, key: Vec<Value>, comment: Option<String>) {
        self.elements.insert(
            key.clone(),
            Element {
                key,
                value: None,
                comment,
            },
        );
    }

    /// Adds (or replaces) an element of a map.
    pub fn insert_mapping(&mut self, key: Vec<Value>, value: MapValue, comment: Option<String>) {
        self.elements.insert(
            key.clone(),
            Element {
                key,
                value: Some(value),
                comment,
            },
        );
    }

    /// Whether two sets have the same definition (everything but the elements): a set whose
    /// definition changes must be deleted and created again.
    pub fn same_definition(&self, other: &Set) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.data == other.data
            && self.flags == other.flags
            && self.timeout_secs == other.timeout_secs
            && self.comment == other.comment
    }

    /// The chains this map's verdicts jump or go to.
    pub fn chain_refs(&self) -> impl Iterator<Item = &str> {
        self.elements.values().filter_map(|e| match &e.value {
            Some(MapValue::Verdict(v)) => v.chain(),
            _ => None,
        })
    }

    /// The definition without elements, as the body of an `add set`/`add map` command:
    /// `{ type …; flags …; }`.
    pub(crate) fn definition(&self) -> String {
        let mut parts = vec![format!("{} {}", self.type_keyword(), self.type_str())];
        if !self.flags.is_empty() {
            parts.push(format!("flags {}", self.flags_str()));
        }
        if let Some(t) = self.timeout_secs {
            parts.push(format!("timeout {t}s"));
        }
        if let Some(c) = &self.comment {
            parts.push(format!("comment {}", quote(c)));
        }
        format!("{{ {}; }}", parts.join("; "))
    }

    fn type_str(&self) -> String {
        let typeof_ = self.is_typeof();
        let key = self
            .key
            .iter()
            .map(|k| if typeof_ { k.typeof_str() } else { k.as_str() })
            .collect::<Vec<_>>()
            .join(" . ");
        match &self.data {
            None => key,
            Some(d) if typeof_ => format!("{key} : {}", d.typeof_str()),
            Some(d) => format!("{key} : {}", d.as_str()),
        }
    }

    fn is_typeof(&self) -> bool {
        self.key.iter().any(|k| k.is_typeof())
    }

    fn flags_str(&self) -> String {
        self.flags
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn type_keyword(&self) -> &'static str {
        if self.is_typeof() { "typeof" } else { "type" }
    }

    fn write_block(&self, out: &mut String) {
        let _ = writeln!(out, "\t{} {} {{", self.keyword(), self.name);
        let _ = writeln!(out, "\t\t{} {}", self.type_keyword(), self.type_str());
        if !self.flags.is_empty() {
            let _ = writeln!(out, "\t\tflags {}", self.flags_str());
        }
        if let Some(t) = self.timeout_secs {
            let _ = writeln!(out, "\t\ttimeout {t}s");
        }
        if let Some(c) = &self.comment {
            let _ = writeln!(out, "\t\tcomment {}", quote(c));
        }
        if !self.elements.is_empty() {
            let _ = writeln!(
                out,
                "\t\telements = {{ {} }}",
                elements_str(self.elements.values())
            );
        }
        out.push_str("\t}\n");
    }
}

/// Elements separated by `, `, as inside `{ … }`.
pub(crate) fn elements_str<'a>(elements: impl Iterator<Item = &'a Element>) -> String {
    elements
        .map(Element::display)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type of one component of a set's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`: a layer-4 protocol.
    InetProto,
    /// `inet_service`: a port.
    InetService,
    /// `mark`: a packet mark.
    Mark,
    /// The output of `numgen random mod N` (declared with `typeof`, since nftables has no
    /// plain type that matches it): the keys of a map chosen among by a random number.
    Numgen,
    /// The output of `numgen random mod 65536` ([`SHARES`]), last in the key of an endpoint
    /// map ([`Statement::DnatShare`]): which of 65,536 equally likely shares a new
    /// connection falls in. A map with it is declared with `typeof`.
    NumgenShare,
}

/// How many equally likely shares [`Statement::DnatShare`] splits a Service's connections
/// into (each endpoint gets a contiguous range of them).
pub const SHARES: u32 = 65_536;

impl KeyType {
    /// The address type of `family`.
    pub fn addr(family: IpFamily) -> Self {
        match family {
            IpFamily::V4 => KeyType::Ipv4Addr,
            IpFamily::V6 => KeyType::Ipv6Addr,
        }
    }

    /// The type as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::Mark => "mark",
            // Any modulus declares the same 32-bit integer key.
            KeyType::Numgen => "numgen random mod 1",
            KeyType::NumgenShare => "numgen random mod 65536",
        }
    }

    /// The expression a `typeof` declaration names for this type (the packet fields the
    /// endpoint maps are looked up with).
    pub fn typeof_str(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ip daddr",
            KeyType::Ipv6Addr => "ip6 daddr",
            KeyType::InetProto => "meta l4proto",
            KeyType::InetService => "th dport",
            KeyType::Mark => "meta mark",
            KeyType::Numgen | KeyType::NumgenShare => self.as_str(),
        }
    }

    fn is_typeof(self) -> bool {
        matches!(self, KeyType::Numgen | KeyType::NumgenShare)
    }
}

/// What a map maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// A verdict (`vmap`).
    Verdict,
    /// A value of a key type (used with `dnat to … map`, `mark set … map`).
    Value(KeyType),
    /// An address of this type and a port: where [`Statement::DnatShare`] sends a share.
    AddrPort(KeyType),
}

impl DataType {
    /// The type as nftables spells it.
    pub fn as_str(self) -> String {
        match self {
            DataType::Verdict => "verdict".to_owned(),
            DataType::Value(k) => k.as_str().to_owned(),
            DataType::AddrPort(addr) => format!("{} . inet_service", addr.as_str()),
        }
    }

    /// The type as a `typeof` declaration names it.
    pub fn typeof_str(self) -> String {
        match self {
            DataType::Verdict => "verdict".to_owned(),
            DataType::Value(k) => k.typeof_str().to_owned(),
            DataType::AddrPort(addr) => format!("{} . th dport", addr.typeof_str()),
        }
    }
}

/// A set flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetFlag {
    /// Elements are ranges and prefixes.
    Interval,
    /// Elements expire.
    Timeout,
    /// The packet path adds elements (`update @set`).
    Dynamic,
    /// Elements never change after creation.
    Constant,
}

impl SetFlag {
    /// The flag as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetFlag::Interval => "interval",
            SetFlag::Timeout => "timeout",
            SetFlag::Dynamic => "dynamic",
            SetFlag::Constant => "constant",
        }
    }
}

/// One element of a set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The key, one value per key component.
    pub key: Vec<Value>,
    /// What the key maps to (maps only).
    pub value: Option<MapValue>,
    /// A comment.
    pub comment: Option<String>,
}

impl Element {
    /// The element as nft writes it: `10.0.0.1 . tcp . 80 comment "ns/svc:p" : goto x`.
    pub fn display(&self) -> String {
        let mut s = concat_values(&self.key);
        if let Some(c) = &self.comment {
            let _ = write!(s, " comment {}", quote(c));
        }
        match &self.value {
            None => {}
            Some(MapValue::Verdict(v)) => {
                let _ = write!(s, " : {v}");
            }
            Some(MapValue::Value(v)) => {
                let _ = write!(s, " : {}", v.display());
            }
            Some(MapValue::Endpoint(ep)) => {
                let _ = write!(s, " : {} . {}", ep.ip(), ep.port());
            }
        }
        s
    }
}

/// The value of a map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapValue {
    /// A verdict (in a verdict map).
    Verdict(Verdict),
    /// A plain value.
    Value(Value),
    /// An address and a port (`addr . inet_service`).
    Endpoint(SocketAddr),
}

/// A constant: one component of a set key, or the right-hand side of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An address.
    Ip(IpAddr),
    /// A prefix (interval sets and anonymous sets, or a match on a range).
    Net(IpNet),
    /// An address range, both ends included (interval sets).
    IpRange(IpAddr, IpAddr),
    /// A layer-4 protocol.
    Proto(Protocol),
    /// A port.
    Port(u16),
    /// A port range, both ends included.
    PortRange(u16, u16),
    /// A connection-tracking state.
    CtState(CtState),
    /// A `fib … type` address type.
    AddrType(AddrType),
    /// A number (marks, `numgen` results).
    Int(u32),
    /// A range of [`SHARES`], both ends included (the last key component of an endpoint
    /// map).
    ShareRange(u16, u16),
    /// A connection-tracking status bit.
    CtStatus(CtStatus),
    /// An interface name, or a name prefix (`iifname`).
    Ifname(IfName),
}

/// An interface name as `iifname` compares it: a whole name, or a prefix (`"veth*"`). Held
/// inline, as the kernel does (`IFNAMSIZ`, 16 bytes with the terminating NUL), so a
/// [`Value`] stays `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName {
    bytes: [u8; 15],
    len: u8,
    prefix: bool,
}

impl IfName {
    /// The interface `name` exactly.
    pub fn exact(name: &InterfaceName) -> Self {
        Self::new(name, false)
    }

    /// Any interface whose name starts with `prefix`.
    pub fn prefix(prefix: &InterfaceName) -> Self {
        Self::new(prefix, true)
    }

    fn new(name: &InterfaceName, prefix: bool) -> Self {
        let name = name.as_str().as_bytes();
        let mut bytes = [0; 15];
        // An `InterfaceName` has 1 to 15 bytes: both fit.
        let len = name.len().min(bytes.len());
        bytes[..len].copy_from_slice(&name[..len]);
        Self {
            bytes,
            len: u8::try_from(len).unwrap_or(15),
            prefix,
        }
    }

    /// The name (or prefix) without the wildcard.
    pub fn name(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether this is a prefix.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether the interface `actual` (a whole name) matches.
    pub fn matches(&self, actual: &IfName) -> bool {
        if self.prefix {
            actual.name().starts_with(self.name())
        } else {
            actual.name() == self.name()
        }
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = String::from_utf8_lossy(self.name());
        let star = if self.prefix { "*" } else { "" };
        write!(f, "\"{name}{star}\"")
    }
}

impl Value {
    /// The value as nft writes it. Numbers that are marks are written by [`Match`] in hex.
    pub fn display(&self) -> String {
        match self {
            Value::Ip(ip) => ip.to_string(),
            Value::Net(net) => net.to_string(),
            Value::IpRange(a, b) => format!("{a}-{b}"),
            Value::Proto(p) => p.as_lower_str().to_owned(),
            Value::Port(p) => p.to_string(),
            Value::PortRange(a, b) => format!("{a}-{b}"),
            Value::CtState(s) => s.as_str().to_owned(),
            Value::AddrType(t) => t.as_str().to_owned(),
            Value::Int(n) => n.to_string(),
            Value::ShareRange(a, b) => format!("{a}-{b}"),
            Value::CtStatus(s) => s.as_str().to_owned(),
            Value::Ifname(name) => name.to_string(),
        }
    }
}

fn concat_values(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::display)
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A connection-tracking state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    /// The first packet of a connection.
    New,
    /// A packet of a connection that has seen replies.
    Established,
    /// A packet related to a connection (ICMP errors, FTP data).
    Related,
    /// A packet that belongs to no connection.
    Invalid,
}

impl CtState {
    /// The state as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
        }
    }
}

/// A connection-tracking status bit (`ct status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtStatus {
    /// The connection's destination was rewritten (`IPS_DST_NAT`).
    Dnat,
}

impl CtStatus {
    /// The status as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CtStatus::Dnat => "dnat",
        }
    }
}

/// An address type as `fib` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrType {
    /// An address of this host.
    Local,
}

impl AddrType {
    /// The type as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrType::Local => "local",
        }
    }
}

/// A packet field a rule matches on or a map is looked up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// The source address (`ip saddr` / `ip6 saddr` by the table's family).
    Saddr,
    /// The destination address.
    Daddr,
    /// `meta l4proto`: the layer-4 protocol.
    L4Proto,
    /// `th dport`: the destination port of any transport header.
    ThDport,
    /// `tcp dport` (also matches the protocol).
    TcpDport,
    /// `udp dport` (also matches the protocol).
    UdpDport,
    /// `sctp dport` (also matches the protocol).
    SctpDport,
    /// `ct state`.
    CtState,
    /// `ct status`, compared with [`Value::CtStatus`] (a bit test).
    CtStatus,
    /// The destination address's low bits: `ip daddr & 0.0.0.63` for 6 bits (compared with
    /// an address holding only those bits).
    DaddrLowBits(u8),
    /// `fib daddr type`: the type of the destination address.
    FibDaddrType,
    /// `fib saddr type`: the type of the source address.
    FibSaddrType,
    /// `icmpv6 type` (also matches the protocol), compared with a [`Value::Int`].
    Icmpv6Type,
    /// `meta mark & mask`: the packet mark's bits under `mask`.
    MarkMasked(u32),
    /// `iifname`: the name of the interface the packet arrived on, compared with a
    /// [`Value::Ifname`].
    Iifname,
}

impl Field {
    /// The destination-port field of `protocol` (`tcp dport`…).
    pub fn dport(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Field::TcpDport,
            Protocol::Udp => Field::UdpDport,
            Protocol::Sctp => Field::SctpDport,
        }
    }

    /// The field as nft writes it in `family`'s table.
    pub fn display(self, family: IpFamily) -> String {
        let ip = family_str(family);
        match self {
            Field::Saddr => format!("{ip} saddr"),
            Field::Daddr => format!("{ip} daddr"),
            Field::L4Proto => "meta l4proto".to_owned(),
            Field::ThDport => "th dport".to_owned(),
            Field::TcpDport => "tcp dport".to_owned(),
            Field::UdpDport => "udp dport".to_owned(),
            Field::SctpDport => "sctp dport".to_owned(),
            Field::CtState => "ct state".to_owned(),
            Field::CtStatus => "ct status".to_owned(),
            Field::DaddrLowBits(bits) => format!("{ip} daddr & {}", low_bits(family, bits)),
            Field::FibDaddrType => "fib daddr type".to_owned(),
            Field::FibSaddrType => "fib saddr type".to_owned(),
            Field::Icmpv6Type => "icmpv6 type".to_owned(),
            Field::MarkMasked(mask) => format!("meta mark & {mask:#010x}"),
            Field::Iifname => "iifname".to_owned(),
        }
    }

    fn is_mark(self) -> bool {
        matches!(self, Field::MarkMasked(_))
    }
}

/// The address of `family` with only its low `bits` bits set (`0.0.0.63`, `::3f`).
pub fn low_bits(family: IpFamily, bits: u8) -> IpAddr {
    let mask = 1u128
        .checked_shl(u32::from(bits))
        .map_or(u128::MAX, |v| v - 1);
    match family {
        IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::try_from(mask & u128::from(u32::MAX)).unwrap_or(u32::MAX),
        )),
        IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::from(mask)),
    }
}

fn concat_fields(fields: &[Field], family: IpFamily) -> String {
    fields
        .iter()
        .map(|f| f.display(family))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Equal, or in the set.
    Eq,
    /// Not equal, or not in the set.
    Ne,
}

/// The right-hand side of a [`Match`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rhs {
    /// One value per field.
    Value(Vec<Value>),
    /// An anonymous set: `{ a, b }`, each element one value per field.
    AnonSet(Vec<Vec<Value>>),
    /// A named set: `@name`.
    Set(String),
    /// Any of these flags (`ct state established,related`): one bit test, where an
    /// anonymous set would cost the kernel a set per rule.
    AnyOf(Vec<Value>),
}

/// A match: fields (one, or several concatenated) compared with a value or a set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Match {
    /// The fields, concatenated when more than one.
    pub fields: Vec<Field>,
    /// `==` or `!=`.
    pub op: Op,
    /// What they are compared with.
    pub rhs: Rhs,
}

impl Match {
    /// `field == value`.
    pub fn eq(field: Field, value: Value) -> Self {
        Self {
            fields: vec![field],
            op: Op::Eq,
            rhs: Rhs::Value(vec![value]),
        }
    }

    /// `field != value`.
    pub fn ne(field: Field, value: Value) -> Self {
        Self {
            op: Op::Ne,
            ..Self::eq(field, value)
        }
    }

    /// `fields` in the named set `set`.
    pub fn in_set(fields: Vec<Field>, set: impl Into<String>) -> Self {
        Self {
            fields,
            op: Op::Eq,
            rhs: Rhs::Set(set.into()),
        }
    }

    /// `field` in the anonymous set of `values`.
    pub fn in_anon(field: Field, values: Vec<Value>) -> Self {
        Self {
            fields: vec![field],
            op: Op::Eq,
            rhs: Rhs::AnonSet(values.into_iter().map(|v| vec![v]).collect()),
        }
    }

    /// The same match, negated.
    pub fn negated(mut self) -> Self {
        self.op = match self.op {
            Op::Eq => Op::Ne,
            Op::Ne => Op::Eq,
        };
        self
    }

    /// The match as nft writes it.
    pub fn display(&self, family: IpFamily) -> String {
        let left = concat_fields(&self.fields, family);
        let mark = self.fields.iter().any(|f| f.is_mark());
        let value = |vs: &[Value]| -> String {
            if mark {
                vs.iter()
                    .map(|v| match v {
                        Value::Int(n) => format!("{n:#010x}"),
                        other => other.display(),
                    })
                    .collect::<Vec<_>>()
                    .join(" . ")
            } else {
                concat_values(vs)
            }
        };
        let right = match &self.rhs {
            Rhs::Value(vs) => value(vs),
            Rhs::AnonSet(elems) => format!(
                "{{ {} }}",
                elems
                    .iter()
                    .map(|e| value(e))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Rhs::Set(name) => format!("@{name}"),
            Rhs::AnyOf(vs) => vs.iter().map(Value::display).collect::<Vec<_>>().join(","),
        };
        // nft reads `ct state new` and `fib daddr type local` without an operator, and a
        // mark comparison needs `==` after the mask.
        match (self.op, mark) {
            (Op::Eq, false) => format!("{left} {right}"),
            (Op::Eq, true) => format!("{left} == {right}"),
            (Op::Ne, _) => format!("{left} != {right}"),
        }
    }
}

/// A verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Accept the packet (ends this base chain).
    Accept,
    /// Drop the packet.
    Drop,
    /// Back to the calling chain.
    Return,
    /// Call a chain; come back after it returns.
    Jump(String),
    /// Continue in a chain without coming back.
    Goto(String),
}

impl Verdict {
    /// The chain a jump or goto goes to.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            Verdict::Accept | Verdict::Drop | Verdict::Return => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// How a `reject` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectWith {
    /// The default: ICMP port unreachable (ICMPv6 port unreachable in `ip6`).
    Default,
    /// An ICMP (ICMPv6 in `ip6`) error of this type.
    Icmp(IcmpReject),
    /// A TCP reset (the rule must match TCP).
    TcpReset,
}

/// The ICMP errors a `reject` can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpReject {
    /// Port unreachable.
    PortUnreachable,
    /// Host unreachable (ICMPv6: address unreachable).
    HostUnreachable,
    /// Administratively prohibited (ICMPv6: admin prohibited).
    AdminProhibited,
}

/// Where a map lookup finds its map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapRef {
    /// A named map: `@name`.
    Named(String),
    /// An anonymous verdict map: `{ key : verdict, … }`, one value per key field.
    Anon(Vec<(Vec<Value>, Verdict)>),
}

/// A statement: what a rule does once its matches hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Statement {
    /// Count packets and bytes.
    Counter,
    /// A verdict.
    Verdict(Verdict),
    /// Reject the packet.
    Reject(RejectWith),
    /// `meta mark set meta mark or bits`.
    MarkOr(u32),
    /// `meta mark set meta mark xor bits`.
    MarkXor(u32),
    /// Masquerade (source NAT to the outgoing interface's address).
    Masquerade {
        /// Choose source ports fully at random.
        fully_random: bool,
    },
    /// Destination NAT to an address and optionally a port.
    Dnat {
        /// The new destination address.
        addr: IpAddr,
        /// The new destination port.
        port: Option<u16>,
    },
    /// Look `fields` up in a verdict map and apply the verdict found (nothing if none).
    Vmap {
        /// The lookup key, concatenated.
        fields: Vec<Field>,
        /// The map.
        map: MapRef,
    },
    /// `numgen random mod modulus vmap …`: a random number in `0..modulus` chooses the
    /// verdict.
    NumgenVmap {
        /// How many choices.
        modulus: u32,
        /// The map from choice to verdict.
        map: MapRef,
    },
    /// `dnat to ip daddr . meta l4proto . th dport . numgen random mod 65536 map @map`: the
    /// destination and a random share ([`SHARES`]) looked up in an interval map whose value
    /// is the endpoint (`addr . port`). No element, no DNAT: the rule does nothing.
    DnatShare {
        /// The endpoint map ([`KeyType::NumgenShare`] key, [`DataType::AddrPort`] data).
        map: String,
    },
    /// `update @set { fields }`: add the packet's key to a dynamic set (or refresh its
    /// timeout).
    UpdateSet {
        /// The set.
        set: String,
        /// The key, concatenated.
        fields: Vec<Field>,
    },
}

impl Statement {
    /// The statement as nft writes it.
    pub fn display(&self, family: IpFamily) -> String {
        match self {
            Statement::Counter => "counter".to_owned(),
            Statement::Verdict(v) => v.to_string(),
            Statement::Reject(RejectWith::Default) => "reject".to_owned(),
            Statement::Reject(RejectWith::TcpReset) => "reject with tcp reset".to_owned(),
            Statement::Reject(RejectWith::Icmp(kind)) => {
                let (icmp, name) = match (family, kind) {
                    (IpFamily::V4, IcmpReject::PortUnreachable) => ("icmp", "port-unreachable"),
                    (IpFamily::V4, IcmpReject::HostUnreachable) => ("icmp", "host-unreachable"),
                    (IpFamily::V4, IcmpReject::AdminProhibited) => ("icmp", "admin-prohibited"),
                    (IpFamily::V6, IcmpReject::PortUnreachable) => ("icmpv6", "port-unreachable"),
                    (IpFamily::V6, IcmpReject::HostUnreachable) => ("icmpv6", "addr-unreachable"),
                    (IpFamily::V6, IcmpReject::AdminProhibited) => ("icmpv6", "admin-prohibited"),
                };
                format!("reject with {icmp} type {name}")
            }
            Statement::MarkOr(bits) => format!("meta mark set meta mark or {bits:#010x}"),
            Statement::MarkXor(bits) => format!("meta mark set meta mark xor {bits:#010x}"),
            Statement::Masquerade { fully_random } => {
                if *fully_random {
                    "masquerade fully-random".to_owned()
                } else {
                    "masquerade".to_owned()
                }
            }
            Statement::Dnat { addr, port } => match (addr, port) {
                (IpAddr::V4(a), Some(p)) => format!("dnat to {a}:{p}"),
                (IpAddr::V6(a), Some(p)) => format!("dnat to [{a}]:{p}"),
                (a, None) => format!("dnat to {a}"),
            },
            Statement::Vmap { fields, map } => format!(
                "{} vmap {}",
                concat_fields(fields, family),
                map_ref_str(map)
            ),
            Statement::NumgenVmap { modulus, map } => {
                format!("numgen random mod {modulus} vmap {}", map_ref_str(map))
            }
            Statement::DnatShare { map } => {
                let ip = family_str(family);
                format!(
                    "dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod \
                     {SHARES} map @{map}"
                )
            }
            Statement::UpdateSet { set, fields } => {
                format!("update @{set} {{ {} }}", concat_fields(fields, family))
            }
        }
    }

    /// The chains this statement jumps or goes to.
    pub fn chain_refs(&self) -> Vec<&str> {
        match self {
            Statement::Verdict(v) => v.chain().into_iter().collect(),
            Statement::Vmap {
                map: MapRef::Anon(entries),
                ..
            }
            | Statement::NumgenVmap {
                map: MapRef::Anon(entries),
                ..
            } => entries.iter().filter_map(|(_, v)| v.chain()).collect(),
            _ => Vec::new(),
        }
    }

    /// The named set or map this statement uses.
    pub fn set_ref(&self) -> Option<&str> {
        match self {
            Statement::Vmap {
                map: MapRef::Named(n),
                ..
            }
            | Statement::NumgenVmap {
                map: MapRef::Named(n),
                ..
            }
            | Statement::UpdateSet { set: n, .. }
            | Statement::DnatShare { map: n } => Some(n),
            _ => None,
        }
    }
}

fn map_ref_str(map: &MapRef) -> String {
    match map {
        MapRef::Named(n) => format!("@{n}"),
        MapRef::Anon(entries) => format!(
            "{{ {} }}",
            entries
                .iter()
                .map(|(k, v)| format!("{} : {v}", concat_values(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A rule: every match must hold, then the statements run in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The matches, in order.
    pub matches: Vec<Match>,
    /// The statements, in order (a verdict, if any, last).
    pub statements: Vec<Statement>,
    /// A comment.
    pub comment: Option<String>,
}

impl Rule {
    /// A rule with no matches and no statements.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a match.
    pub fn matching(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }

    /// Adds a statement.
    pub fn then(mut self, s: Statement) -> Self {
        self.statements.push(s);
        self
    }

    /// Adds a verdict statement.
    pub fn verdict(self, v: Verdict) -> Self {
        self.then(Statement::Verdict(v))
    }

    /// Sets the comment.
    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = Some(c.into());
        self
    }

    /// The chains this rule jumps or goes to.
    pub fn chain_refs(&self) -> impl Iterator<Item = &str> {
        self.statements.iter().flat_map(Statement::chain_refs)
    }

    /// The named sets and maps this rule uses.
    pub fn set_refs(&self) -> impl Iterator<Item = &str> {
        self.matches
            .iter()
            .filter_map(|m| match &m.rhs {
                Rhs::Set(n) => Some(n.as_str()),
                _ => None,
            })
            .chain(self.statements.iter().filter_map(Statement::set_ref))
    }

    /// The rule as `family`'s nft writes it.
    pub fn display(&self, family: IpFamily) -> String {
        let mut parts: Vec<String> = self.matches.iter().map(|m| m.display(family)).collect();
        parts.extend(self.statements.iter().map(|s| s.display(family)));
        if let Some(c) = &self.comment {
            parts.push(format!("comment {}", quote(c)));
        }
        parts.join(" ")
    }
}

/// A string in double quotes (nft strings cannot contain `"`; they are dropped).
pub(crate) fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}
