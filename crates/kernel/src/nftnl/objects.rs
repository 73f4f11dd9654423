//! The objects a transaction creates: chains, sets and maps, their elements, and rules.

use std::net::IpAddr;
use std::time::Duration;

use super::expr::{Data, Expr, Verdict, ip_bytes};

/// An nf_tables address family (the family of a table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
    /// `inet`: both.
    Inet,
}

impl Family {
    /// The `NFPROTO_*` number.
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
            Family::Inet => 1,
        }
    }

    /// The name `nft` gives the family.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

/// A netfilter hook a base chain attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// Before routing.
    Prerouting,
    /// Packets for this host.
    Input,
    /// Packets routed through.
    Forward,
    /// Packets this host sends.
    Output,
    /// After routing, on the way out.
    Postrouting,
}

impl HookPoint {
    fn number(self) -> u32 {
        match self {
            HookPoint::Prerouting => 0,
            HookPoint::Input => 1,
            HookPoint::Forward => 2,
            HookPoint::Output => 3,
            HookPoint::Postrouting => 4,
        }
    }
}

/// The kind of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// Filtering.
    Filter,
    /// NAT (only a connection's first packet passes).
    Nat,
    /// Re-routes packets whose mark or addresses changed (output hook).
    Route,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// What a base chain does with a packet no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// Accept it.
    Accept,
    /// Drop it.
    Drop,
}

/// Where and how a base chain is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    /// Filter, nat or route.
    pub kind: ChainType,
    /// The hook.
    pub hook: HookPoint,
    /// Its place among the hook's chains (lower runs first; `dstnat` is -100, `srcnat` 100).
    pub priority: i32,
    /// The default verdict.
    pub policy: Policy,
}

/// A chain: a base chain attached to a hook, or a regular one reached by jumps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chain {
    /// Its name in the table.
    pub name: String,
    /// For base chains, the hook.
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
        }
    }

    /// A base chain.
    pub fn base(name: impl Into<String>, base: BaseChain) -> Chain {
        Chain {
            name: name.into(),
            base: Some(base),
        }
    }
}

pub(crate) fn hook_attrs(base: &BaseChain) -> (u32, i32, &'static str, u32) {
    (
        base.hook.number(),
        base.priority,
        base.kind.name(),
        match base.policy {
            Policy::Drop => 0,
            Policy::Accept => 1,
        },
    )
}

/// A rule: expressions run in order, and an optional comment (`nft` shows it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The expressions.
    pub exprs: Vec<Expr>,
    /// The comment.
    pub comment: Option<String>,
}

impl Rule {
    /// A rule of these expressions, without a comment.
    pub fn new(exprs: Vec<Expr>) -> Rule {
        Rule {
            exprs,
            comment: None,
        }
    }

    /// The same rule with a comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// The type of one field of a set's key (or of a map's value), as `nft` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr`, 4 bytes.
    Ipv4Addr,
    /// `ipv6_addr`, 16 bytes.
    Ipv6Addr,
    /// `inet_proto`, 1 byte.
    InetProto,
    /// `inet_service` (a port), 2 bytes.
    InetService,
    /// `mark`, 4 bytes in host order (also what `numgen` produces).
    Mark,
    /// The output of `numgen random mod N`: an `integer`, 4 bytes in host order, declared
    /// (in the set's user data) as `typeof numgen random mod 1`, as `nft -f` declares it, so
    /// `nft list` prints the declaration `nft -f` reads back (any modulus is the same key).
    Numgen,
    /// An `integer` of this many bytes, compared byte by byte: a key built from several
    /// registers' worth of fields but declared as one, so that an interval set of it is the
    /// kernel's rbtree (a concatenation would be its much slower pipapo).
    Bytes(u32),
}

impl KeyType {
    /// `nft`'s datatype number (its `enum datatypes`), which it reads back to print the type.
    fn datatype(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::InetProto => 12,
            KeyType::InetService => 13,
            KeyType::Mark => 19,
            KeyType::Numgen | KeyType::Bytes(_) => 4,
        }
    }

    /// Whether values are in host byte order (else network order), which `nft` needs to be
    /// told to print them right.
    fn host_order(self) -> bool {
        matches!(self, KeyType::Mark | KeyType::Numgen)
    }

    /// Its length in bytes.
    pub fn size(self) -> u32 {
        match self {
            KeyType::Ipv4Addr | KeyType::Mark | KeyType::Numgen => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::Bytes(len) => len,
        }
    }
}

/// What a map maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapData {
    /// A verdict (a verdict map, `vmap`).
    Verdict,
    /// A value of this type.
    Value(KeyType),
    /// Two values concatenated (`ipv4_addr . inet_service`), each padded to 4 bytes.
    Pair(KeyType, KeyType),
}

/// Set flags beyond those the key and data imply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetFlags {
    /// Elements are ranges (`flags interval`).
    pub interval: bool,
    /// Elements expire (`flags timeout`).
    pub timeout: bool,
    /// The packet path adds elements (`flags dynamic`), as `update @set` needs.
    pub dynamic: bool,
    /// Nothing changes after creation (`flags constant`).
    pub constant: bool,
    /// An anonymous set (`{ a, b }` inline in a rule): bound to the one rule that looks it
    /// up, which it goes away with; `nft` prints it inside that rule.
    pub anonymous: bool,
}

/// A named set, or a map when `data` is given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Set {
    /// Its name in the table.
    pub name: String,
    /// The key's fields (several make a concatenation, `a . b . c`).
    pub key: Vec<KeyType>,
    /// For a map, what elements map to.
    pub data: Option<MapData>,
    /// Flags.
    pub flags: SetFlags,
    /// The default timeout of elements (needs `flags.timeout`).
    pub timeout: Option<Duration>,
    /// A comment (`nft` shows it).
    pub comment: Option<String>,
}

impl Set {
    /// A set keyed by `key`, no flags.
    pub fn new(name: impl Into<String>, key: &[KeyType]) -> Set {
        Set {
            name: name.into(),
            key: key.to_vec(),
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
        }
    }

    /// A verdict map keyed by `key`.
    pub fn verdict_map(name: impl Into<String>, key: &[KeyType]) -> Set {
        Set {
            data: Some(MapData::Verdict),
            ..Set::new(name, key)
        }
    }

    /// The `NFTA_SET_KEY_TYPE` value: for a concatenation, each field's datatype shifted in
    /// by 6 bits, as `nft` composes concatenated types.
    pub(crate) fn key_type(&self) -> u32 {
        self.key
            .iter()
            .fold(0u32, |acc, field| (acc << 6) | field.datatype())
    }

    /// The key's length: a concatenation pads every field to 4 bytes.
    pub(crate) fn key_len(&self) -> u32 {
        match self.key.as_slice() {
            [single] => single.size(),
            fields => fields.iter().map(|f| padded(f.size())).sum(),
        }
    }

    /// Field lengths for `NFTA_SET_DESC_CONCAT`, for concatenated interval sets only: the
    /// kernel then stores them in its per-field range structure (pipapo, `NFT_SET_CONCAT`).
    /// An exact-match concatenation stays a hash keyed by the padded bytes.
    pub(crate) fn concat_lengths(&self) -> Option<Vec<u32>> {
        (self.key.len() > 1 && self.flags.interval)
            .then(|| self.key.iter().map(|f| f.size()).collect())
    }

    /// libnftnl's set user data: key and data byte order for single-field types (so `nft`
    /// prints a mark as 0x00000001, not 0x01000000) and the comment. Each entry is a tag, a
    /// length and the value; byte orders are `nft`'s `enum byteorder` (1 host, 2 network) as
    /// a host-order u32.
    pub(crate) fn userdata(&self) -> Option<Vec<u8>> {
        let order = |kind: KeyType| if kind.host_order() { 1u32 } else { 2 };
        let mut out = Vec::new();
        if let [single] = self.key.as_slice() {
            out.push(0); // NFTNL_UDATA_SET_KEYBYTEORDER
            out.push(4);
            out.extend_from_slice(&order(*single).to_ne_bytes());
        }
        if let Some(MapData::Value(kind)) = self.data {
            out.push(1); // NFTNL_UDATA_SET_DATABYTEORDER
            out.push(4);
            out.extend_from_slice(&order(kind).to_ne_bytes());
        }
        if self.key == [KeyType::Numgen] && !self.flags.anonymous {
            out.extend_from_slice(&NUMGEN_TYPEOF);
            if self.data == Some(MapData::Verdict) {
                out.extend_from_slice(&VERDICT_TYPEOF);
            }
        }
        if let Some(comment) = &self.comment {
            // Longer comments are cut: nft itself refuses more than 128 bytes.
            let text = &comment.as_bytes()[..comment.len().min(254)];
            out.push(7); // NFTNL_UDATA_SET_COMMENT
            out.push(text.len() as u8 + 1);
            out.extend_from_slice(text);
            out.push(0);
        }
        (!out.is_empty()).then_some(out)
    }

    pub(crate) fn data_type(&self) -> Option<(u32, u32)> {
        self.data.map(|data| match data {
            // The kernel sizes verdict data itself; nft sends 0 as the length.
            MapData::Verdict => (super::wire::NFT_DATA_VERDICT, 0),
            MapData::Value(kind) => (kind.datatype(), kind.size()),
            MapData::Pair(a, b) => (
                (a.datatype() << 6) | b.datatype(),
                padded(a.size()) + padded(b.size()),
            ),
        })
    }
}

/// The key of an element: one or more fields, written like the set's key type.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    fields: Vec<Vec<u8>>,
}

impl Key {
    /// An empty key to add fields to.
    pub fn new() -> Key {
        Key::default()
    }

    /// An address field.
    pub fn ip(self, ip: IpAddr) -> Key {
        self.field(ip_bytes(ip))
    }

    /// A protocol field (`inet_proto`: 6 is tcp, 17 udp, 132 sctp).
    pub fn proto(self, proto: u8) -> Key {
        self.field(vec![proto])
    }

    /// A port field (`inet_service`).
    pub fn port(self, port: u16) -> Key {
        self.field(port.to_be_bytes().to_vec())
    }

    /// A mark (or `numgen` value) field, in host byte order.
    pub fn mark(self, mark: u32) -> Key {
        self.field(mark.to_ne_bytes().to_vec())
    }

    /// A field of raw bytes.
    pub fn field(mut self, bytes: Vec<u8>) -> Key {
        self.fields.push(bytes);
        self
    }

    /// Whether the key has several fields.
    pub(crate) fn is_concat(&self) -> bool {
        self.fields.len() > 1
    }

    /// The key's bytes as the kernel compares them.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        match self.fields.as_slice() {
            [single] => single.clone(),
            fields => {
                let mut out = Vec::new();
                for field in fields {
                    out.extend_from_slice(field);
                    out.resize(padded(out.len() as u32) as usize, 0);
                }
                out
            }
        }
    }
}

/// An element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// The key (the first value of a range).
    pub key: Key,
    /// For an interval set, the last value of the range (inclusive).
    pub key_end: Option<Key>,
    /// For a map, the value.
    pub data: Option<Data>,
    /// The element's own timeout.
    pub timeout: Option<Duration>,
    /// A comment (`nft` shows it).
    pub comment: Option<String>,
}

impl Element {
    /// A set element.
    pub fn key(key: Key) -> Element {
        Element {
            key,
            key_end: None,
            data: None,
            timeout: None,
            comment: None,
        }
    }

    /// A range `[first, last]` of an interval set.
    pub fn range(first: Key, last: Key) -> Element {
        Element {
            key_end: Some(last),
            ..Element::key(first)
        }
    }

    /// A verdict map element.
    pub fn verdict(key: Key, verdict: Verdict) -> Element {
        Element {
            data: Some(Data::Verdict(verdict)),
            ..Element::key(key)
        }
    }

    /// The same element with a comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Element {
        self.comment = Some(comment.into());
        self
    }

    /// libnftnl's element user data: the comment, as tag, length and NUL-terminated text
    /// (cut as for set comments).
    pub(crate) fn userdata(&self) -> Option<Vec<u8>> {
        let comment = self.comment.as_ref()?;
        let text = &comment.as_bytes()[..comment.len().min(254)];
        let mut out = vec![0, text.len() as u8 + 1]; // NFTNL_UDATA_SET_ELEM_COMMENT
        out.extend_from_slice(text);
        out.push(0);
        Some(out)
    }
}

/// `NFTNL_UDATA_SET_KEY_TYPEOF` for `numgen random mod 1`, laid out as `nft` writes it: the
/// expression kind (`EXPR_NUMGEN`, 23) and a nest of its attributes (type `NFT_NG_RANDOM`,
/// modulus 1, offset 0), every number 4 bytes in host order.
const NUMGEN_TYPEOF: [u8; 28] = {
    let one = 1u32.to_ne_bytes();
    let kind = 23u32.to_ne_bytes();
    [
        3, 26, // KEY_TYPEOF, 26 bytes
        0, 4, kind[0], kind[1], kind[2], kind[3], // TYPEOF_EXPR
        1, 18, // TYPEOF_DATA, 18 bytes
        0, 4, one[0], one[1], one[2], one[3], // NUMGEN_TYPE: random
        1, 4, one[0], one[1], one[2], one[3], // NUMGEN_MOD
        2, 4, 0, 0, 0, 0, // NUMGEN_OFFSET
    ]
};

/// `NFTNL_UDATA_SET_DATA_TYPEOF` for verdicts, which `nft` writes beside a `typeof` key and
/// reads the key's declaration only with: the expression kind (`EXPR_VERDICT`, 1) and an
/// empty nest of attributes.
const VERDICT_TYPEOF: [u8; 10] = {
    let kind = 1u32.to_ne_bytes();
    [4, 8, 0, 4, kind[0], kind[1], kind[2], kind[3], 1, 0]
};

fn padded(len: u32) -> u32 {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_keys_pad_each_field_and_compose_the_type() {
        let set = Set::verdict_map(
            "service-ips",
            &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        );
        assert_eq!(set.key_len(), 12);
        assert_eq!(set.key_type(), (7 << 12) | (12 << 6) | 13);
        assert_eq!(set.concat_lengths(), None);
        let ranges = Set {
            flags: SetFlags {
                interval: true,
                ..SetFlags::default()
            },
            ..set
        };
        assert_eq!(ranges.concat_lengths(), Some(vec![4, 1, 2]));
        let key = Key::new()
            .ip("10.96.0.10".parse().expect("ip"))
            .proto(17)
            .port(53);
        assert_eq!(key.bytes(), [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]);
    }

    #[test]
    fn a_single_field_key_is_not_padded() {
        let set = Set::new("ports", &[KeyType::InetService]);
        assert_eq!((set.key_len(), set.concat_lengths()), (2, None));
        assert_eq!(Key::new().port(80).bytes(), [0, 80]);
    }
}
