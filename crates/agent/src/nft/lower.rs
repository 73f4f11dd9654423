//! Lowering the typed nftables representation ([`netd_render::nft`]) to netlink
//! ([`netd_kernel::nftnl`]): a whole [`Table`] into one replacing [`Transaction`], or the
//! [`Command`]s of an incremental update into one transaction of exactly those operations.
//!
//! Every rule becomes the expressions `nft` itself compiles it into, so `nft list` shows the
//! same rules after either load — but for the plain Services' endpoint maps and the `lb-<i>`
//! rules that look them up: their key is declared as one field of raw bytes, so that the
//! kernel keeps the intervals in its rbtree (`nft -f` makes a concatenation, the much slower
//! pipapo, and converts the numgen value's byte order). A construct the lowering cannot express is refused with
//! [`LowerError`] naming the chain and what it was, before anything is sent: a rule is never
//! dropped or approximated.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use netd_kernel::nftnl::{
    self, CmpOp, Data, DynsetOp, Expr, FibAddr, Key, MapData, MetaKey, NatKind, PayloadBase,
    Register, SetFlags, Transaction,
};
use netd_model::Protocol;
use netd_proxy::IpFamily;
use netd_render::nft::{
    AddrType, BaseChain, ChainType, Command, CtState, CtStatus, DataType, Element, Field, Hook,
    IcmpReject, KeyType, MapRef, MapValue, Match, Op, RejectWith, Rhs, Rule, SHARES, Set, SetFlag,
    Statement, Table, Value, Verdict, diff_commands, low_bits,
};

/// A part of the representation that has no netlink lowering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    /// A match or statement of a rule cannot be expressed.
    #[error("rule {index} of chain {chain}: cannot lower {what}")]
    UnsupportedRule {
        /// The chain.
        chain: String,
        /// The rule's place in the chain (0 is the first).
        index: usize,
        /// The construct, as nft writes it.
        what: String,
    },
    /// An update adds elements to a set the next table does not have.
    #[error("set {set}: elements added to a set the table does not define")]
    UnknownSet {
        /// The set or map.
        set: String,
    },
    /// An element of a set or map cannot be expressed.
    #[error("set {set}: cannot lower element {what}")]
    UnsupportedElement {
        /// The set or map.
        set: String,
        /// The element, as nft writes it.
        what: String,
    },
}

/// The transaction that replaces the kernel's table of `table`'s family and name by `table`:
/// add it (so that deleting never fails), delete it, then create it anew with its sets and
/// maps, chains, elements and rules, in that order.
pub fn replacement(table: &Table) -> Result<Transaction, LowerError> {
    let mut lower = Lowering::new(table.family, &table.name);
    let family = lower.family;
    lower.tx.add_table(family, &table.name);
    lower.tx.delete_table(family, &table.name);
    lower.tx.add_table(family, &table.name);
    for set in table.sets.values() {
        lower.tx.add_set(family, &table.name, set_of(set));
    }
    for chain in table.chains.values() {
        lower
            .tx
            .add_chain(family, &table.name, chain_of(&chain.name, chain.base));
    }
    for set in table.sets.values() {
        lower.add_elements(set, set.elements.values())?;
    }
    for chain in table.chains.values() {
        for (index, rule) in chain.rules.iter().enumerate() {
            lower.add_rule(&chain.name, index, rule)?;
        }
    }
    Ok(lower.tx)
}

/// The transaction that turns `previous` (as the kernel holds it) into `next`: the commands
/// of [`diff_commands`], in their order. A `next` of another family or name is another table,
/// and gets its [`replacement`] (`previous` is left alone).
pub fn update(previous: &Table, next: &Table) -> Result<Transaction, LowerError> {
    if previous.family != next.family || previous.name != next.name {
        return replacement(next);
    }
    let (family, name) = (next.family, next.name.as_str());
    let commands = diff_commands(previous, next);
    let interval = |set: &str| {
        next.sets
            .get(set)
            .or_else(|| previous.sets.get(set))
            .is_some_and(|s| s.flags.contains(&SetFlag::Interval))
    };
    let mut lower = Lowering::new(family, name);
    let f = lower.family;
    // Rules appended to a chain in this batch are numbered from its first added rule: the
    // diff adds rules only to new or flushed chains.
    let mut added: BTreeMap<&str, usize> = BTreeMap::new();
    for command in &commands {
        match command {
            Command::AddSet(set) => {
                lower.tx.add_set(f, name, set_of(set));
                lower.add_elements(set, set.elements.values())?;
            }
            Command::DeleteSet { name: set, .. } => {
                lower.tx.delete_set(f, name, set);
            }
            Command::AddChain { name: chain, base } => {
                lower.tx.add_chain(f, name, chain_of(chain, *base));
            }
            Command::FlushChain(chain) => {
                lower.tx.flush_chain(f, name, chain);
            }
            Command::DeleteChain(chain) => {
                lower.tx.delete_chain(f, name, chain);
            }
            Command::AddRule { chain, rule } => {
                let index = added.entry(chain.as_str()).or_default();
                lower.add_rule(chain, *index, rule)?;
                *index += 1;
            }
            Command::AddElements { set, elements } => {
                let Some(def) = next.sets.get(set) else {
                    return Err(LowerError::UnknownSet { set: set.clone() });
                };
                lower.add_elements(def, elements.iter())?;
            }
            Command::DeleteElements { set, keys } => {
                let elements = keys
                    .iter()
                    .map(|key| element_key(set, key, interval(set)))
                    .collect::<Result<Vec<_>, _>>()?;
                lower.tx.delete_elements(f, name, set, elements);
            }
        }
    }
    Ok(lower.tx)
}

/// A transaction being built for one table.
struct Lowering<'a> {
    family: nftnl::Family,
    ip: IpFamily,
    table: &'a str,
    tx: Transaction,
}

impl<'a> Lowering<'a> {
    fn new(ip: IpFamily, table: &'a str) -> Self {
        Self {
            family: match ip {
                IpFamily::V4 => nftnl::Family::Ip,
                IpFamily::V6 => nftnl::Family::Ip6,
            },
            ip,
            table,
            tx: Transaction::new(),
        }
    }

    fn add_elements<'e>(
        &mut self,
        set: &Set,
        elements: impl Iterator<Item = &'e Element>,
    ) -> Result<(), LowerError> {
        let interval = set.flags.contains(&SetFlag::Interval);
        let lowered = elements
            .map(|e| element_of(&set.name, e, interval))
            .collect::<Result<Vec<_>, _>>()?;
        if !lowered.is_empty() {
            self.tx
                .add_elements(self.family, self.table, &set.name, lowered);
        }
        Ok(())
    }

    /// Appends `rule` to `chain`; anonymous sets and maps it uses are created just before it,
    /// named after the chain and the rule's place, which no live rule shares (a chain gets
    /// rules only when new or just flushed, and a flush takes its anonymous sets with it).
    fn add_rule(&mut self, chain: &str, index: usize, rule: &Rule) -> Result<(), LowerError> {
        let unsupported = |what: String| LowerError::UnsupportedRule {
            chain: chain.to_owned(),
            index,
            what,
        };
        let mut exprs = Vec::new();
        let mut anon = 0;
        let mut anon_name = || {
            anon += 1;
            format!("__set-{chain}-{index}-{anon}")
        };
        for m in &rule.matches {
            match &m.rhs {
                Rhs::AnonSet(elems) if elems.len() > 1 && !is_ct_state(m) => {
                    let name = anon_name();
                    let key = key_types(self.ip, &m.fields)
                        .ok_or_else(|| unsupported(m.display(self.ip)))?;
                    let interval = elems.iter().flatten().any(is_range);
                    let set = nftnl::Set {
                        flags: SetFlags {
                            anonymous: true,
                            constant: true,
                            interval,
                            ..SetFlags::default()
                        },
                        ..nftnl::Set::new(name.clone(), &key)
                    };
                    let elements = elems
                        .iter()
                        .map(|k| element_key(&name, k, interval))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.tx.add_set(self.family, self.table, set);
                    self.tx
                        .add_elements(self.family, self.table, &name, elements);
                    load_fields(self.ip, &m.fields, &mut exprs)
                        .ok_or_else(|| unsupported(m.display(self.ip)))?;
                    exprs.push(Expr::Lookup {
                        set: name,
                        sreg: REG,
                        dreg: None,
                        invert: m.op == Op::Ne,
                    });
                }
                _ => lower_match(self.ip, m, &mut exprs)
                    .ok_or_else(|| unsupported(m.display(self.ip)))?,
            }
        }
        for s in &rule.statements {
            let anon_map = match s {
                Statement::Vmap {
                    fields,
                    map: MapRef::Anon(entries),
                } => Some((key_types(self.ip, fields), entries)),
                Statement::NumgenVmap {
                    map: MapRef::Anon(entries),
                    ..
                } => Some((Some(vec![nftnl::KeyType::Numgen]), entries)),
                _ => None,
            };
            let map_name = match anon_map {
                Some((key, entries)) => {
                    let name = anon_name();
                    let key = key.ok_or_else(|| unsupported(s.display(self.ip)))?;
                    let interval = entries.iter().flat_map(|(k, _)| k).any(is_range);
                    let map = nftnl::Set {
                        flags: SetFlags {
                            anonymous: true,
                            constant: true,
                            interval,
                            ..SetFlags::default()
                        },
                        ..nftnl::Set::verdict_map(name.clone(), &key)
                    };
                    let elements = entries
                        .iter()
                        .map(|(k, v)| {
                            let mut e = element_key(&name, k, interval)?;
                            e.data = Some(Data::Verdict(verdict(v)));
                            Ok(e)
                        })
                        .collect::<Result<Vec<_>, LowerError>>()?;
                    self.tx.add_set(self.family, self.table, map);
                    self.tx
                        .add_elements(self.family, self.table, &name, elements);
                    Some(name)
                }
                None => None,
            };
            lower_statement(self.ip, s, map_name, &mut exprs)
                .ok_or_else(|| unsupported(s.display(self.ip)))?;
        }
        let mut lowered = nftnl::Rule::new(exprs);
        lowered.comment.clone_from(&rule.comment);
        self.tx.add_rule(self.family, self.table, chain, lowered);
        Ok(())
    }
}

/// The first data register: single fields and concatenations are loaded from here on.
const REG: Register = Register::reg32(0);

fn chain_of(name: &str, base: Option<BaseChain>) -> nftnl::Chain {
    let Some(base) = base else {
        return nftnl::Chain::regular(name);
    };
    nftnl::Chain::base(
        name,
        nftnl::BaseChain {
            kind: match base.kind {
                ChainType::Filter => nftnl::ChainType::Filter,
                ChainType::Nat => nftnl::ChainType::Nat,
            },
            hook: match base.hook {
                Hook::Prerouting => nftnl::HookPoint::Prerouting,
                Hook::Input => nftnl::HookPoint::Input,
                Hook::Forward => nftnl::HookPoint::Forward,
                Hook::Output => nftnl::HookPoint::Output,
                Hook::Postrouting => nftnl::HookPoint::Postrouting,
            },
            priority: base.priority.value(),
            policy: nftnl::Policy::Accept,
        },
    )
}

fn key_type(k: KeyType) -> nftnl::KeyType {
    match k {
        KeyType::Ipv4Addr => nftnl::KeyType::Ipv4Addr,
        KeyType::Ipv6Addr => nftnl::KeyType::Ipv6Addr,
        KeyType::InetProto => nftnl::KeyType::InetProto,
        KeyType::InetService => nftnl::KeyType::InetService,
        KeyType::Mark => nftnl::KeyType::Mark,
        KeyType::Numgen => nftnl::KeyType::Numgen,
        // Only the last field of an endpoint map's key, which `set_of` declares whole.
        KeyType::NumgenShare => nftnl::KeyType::Mark,
    }
}

/// Whether `key` is an endpoint map's (`… . numgen random mod 65536`): declared to the kernel
/// as one field of raw bytes, so its intervals go to the rbtree, compared byte by byte.
fn is_share_key(key: &[KeyType]) -> bool {
    key.last() == Some(&KeyType::NumgenShare)
}

/// The set without its elements.
fn set_of(set: &Set) -> nftnl::Set {
    let mut key: Vec<nftnl::KeyType> = set.key.iter().copied().map(key_type).collect();
    if is_share_key(&set.key) {
        let len = key.iter().map(|k| k.size().next_multiple_of(4)).sum();
        key = vec![nftnl::KeyType::Bytes(len)];
    }
    let has = |flag| set.flags.contains(&flag);
    nftnl::Set {
        data: set.data.map(|d| match d {
            DataType::Verdict => MapData::Verdict,
            DataType::Value(k) => MapData::Value(key_type(k)),
            DataType::AddrPort(k) => MapData::Pair(key_type(k), nftnl::KeyType::InetService),
        }),
        flags: SetFlags {
            interval: has(SetFlag::Interval),
            timeout: has(SetFlag::Timeout),
            dynamic: has(SetFlag::Dynamic),
            constant: has(SetFlag::Constant),
            anonymous: false,
        },
        timeout: set.timeout_secs.map(|s| Duration::from_secs(u64::from(s))),
        comment: set.comment.clone(),
        ..nftnl::Set::new(set.name.clone(), &key)
    }
}

fn element_of(set: &str, element: &Element, interval: bool) -> Result<nftnl::Element, LowerError> {
    let mut lowered = element_key(set, &element.key, interval)?;
    lowered.data = match &element.value {
        None => None,
        Some(MapValue::Verdict(v)) => Some(Data::Verdict(verdict(v))),
        Some(MapValue::Value(v)) => Some(Data::Value(
            value_bytes(v).ok_or_else(|| unsupported_element(set, &element.key))?,
        )),
        Some(MapValue::Endpoint(ep)) => {
            let mut bytes = bytes_of(Data::ip(ep.ip()));
            bytes.extend_from_slice(&ep.port().to_be_bytes());
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            Some(Data::Value(bytes))
        }
    };
    lowered.comment.clone_from(&element.comment);
    Ok(lowered)
}

/// An element with only its key; in an interval set a range (a single value is the range
/// of itself, as `nft` stores it).
fn element_key(set: &str, key: &[Value], interval: bool) -> Result<nftnl::Element, LowerError> {
    if let Some(Value::ShareRange(..)) = key.last() {
        return share_element_key(set, key);
    }
    let (mut first, mut last) = (Key::new(), Key::new());
    for value in key {
        let (a, b) = value_range(value).ok_or_else(|| unsupported_element(set, key))?;
        first = first.field(a);
        last = last.field(b);
    }
    Ok(if interval {
        nftnl::Element::range(first, last)
    } else {
        nftnl::Element::key(first)
    })
}

/// An endpoint map's element: the fields as the rule's registers hold them (each padded to
/// 4 bytes) and the share range over the two bytes where the numgen value's low 16 bits lie,
/// as one field of raw bytes. The kernel compares keys byte by byte, so the shares are
/// ordered by those bytes (on a little-endian machine, low byte first); a contiguous range
/// in that order still holds as many of the equally likely values as it is long.
fn share_element_key(set: &str, key: &[Value]) -> Result<nftnl::Element, LowerError> {
    let Some((Value::ShareRange(a, b), fields)) = key.split_last() else {
        return Err(unsupported_element(set, key));
    };
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for value in fields {
        let (from, to) = value_range(value).ok_or_else(|| unsupported_element(set, key))?;
        if from != to {
            return Err(unsupported_element(set, key));
        }
        first.extend_from_slice(&from);
        first.resize(first.len().next_multiple_of(4), 0);
    }
    last.clone_from(&first);
    first.extend_from_slice(&share_bytes(*a));
    last.extend_from_slice(&share_bytes(*b));
    Ok(nftnl::Element::range(
        Key::new().field(first),
        Key::new().field(last),
    ))
}

/// The register bytes of a numgen value whose two low bytes, read in memory order, are the
/// big-endian `share`.
fn share_bytes(share: u16) -> [u8; 4] {
    u32::from(u16::from_be(share)).to_ne_bytes()
}

fn unsupported_element(set: &str, key: &[Value]) -> LowerError {
    LowerError::UnsupportedElement {
        set: set.to_owned(),
        what: key
            .iter()
            .map(Value::display)
            .collect::<Vec<_>>()
            .join(" . "),
    }
}

fn is_range(value: &Value) -> bool {
    matches!(
        value,
        Value::Net(_) | Value::IpRange(..) | Value::PortRange(..)
    )
}

/// The first and last value a key component covers, as the kernel stores keys.
fn value_range(value: &Value) -> Option<(Vec<u8>, Vec<u8>)> {
    let ip = |a: IpAddr| bytes_of(Data::ip(a));
    Some(match value {
        Value::Net(net) => (ip(net.network()), ip(net.broadcast())),
        Value::IpRange(a, b) => (ip(*a), ip(*b)),
        Value::PortRange(a, b) => (a.to_be_bytes().to_vec(), b.to_be_bytes().to_vec()),
        other => {
            let bytes = value_bytes(other)?;
            (bytes.clone(), bytes)
        }
    })
}

/// A single value as the kernel compares it (not a prefix or range).
fn value_bytes(value: &Value) -> Option<Vec<u8>> {
    Some(match value {
        Value::Ip(a) => bytes_of(Data::ip(*a)),
        Value::Proto(p) => vec![proto_number(*p)],
        Value::Port(p) => p.to_be_bytes().to_vec(),
        Value::Int(n) => n.to_ne_bytes().to_vec(),
        Value::CtState(s) => ct_bit(*s).to_ne_bytes().to_vec(),
        Value::AddrType(t) => addr_type(*t).to_ne_bytes().to_vec(),
        // As nft: a whole name is compared NUL-padded to IFNAMSIZ, a prefix by its bytes.
        Value::Ifname(name) if name.is_prefix() => name.name().to_vec(),
        Value::Ifname(name) => {
            let mut bytes = name.name().to_vec();
            bytes.resize(IFNAMSIZ as usize, 0);
            bytes
        }
        Value::CtStatus(CtStatus::Dnat) => IPS_DST_NAT.to_ne_bytes().to_vec(),
        Value::Net(_) | Value::IpRange(..) | Value::PortRange(..) | Value::ShareRange(..) => {
            return None;
        }
    })
}

fn bytes_of(data: Data) -> Vec<u8> {
    match data {
        Data::Value(bytes) => bytes,
        // `Data::ip` always gives a value.
        Data::Verdict(_) => Vec::new(),
    }
}

/// `IPS_DST_NAT`, the conntrack status bit of a DNATed connection.
const IPS_DST_NAT: u32 = 1 << 5;

/// The kernel's interface name size, with the terminating NUL.
const IFNAMSIZ: u32 = 16;

/// `IPPROTO_ICMPV6`, which `icmpv6 type` implies.
const IPPROTO_ICMPV6: u8 = 58;

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The conntrack state bit (`NF_CT_STATE_BIT`), as `ct state` loads it.
fn ct_bit(s: CtState) -> u32 {
    match s {
        CtState::Invalid => 1,
        CtState::Established => 2,
        CtState::Related => 4,
        CtState::New => 8,
    }
}

/// The route type `fib … type` loads (`RTN_LOCAL` is 2).
fn addr_type(t: AddrType) -> u32 {
    match t {
        AddrType::Local => 2,
    }
}

fn verdict(v: &Verdict) -> nftnl::Verdict {
    match v {
        Verdict::Accept => nftnl::Verdict::Accept,
        Verdict::Drop => nftnl::Verdict::Drop,
        Verdict::Return => nftnl::Verdict::Return,
        Verdict::Jump(c) => nftnl::Verdict::Jump(c.clone()),
        Verdict::Goto(c) => nftnl::Verdict::Goto(c.clone()),
    }
}

fn is_ct_state(m: &Match) -> bool {
    m.fields == [Field::CtState]
}

/// The set key types of a concatenation of `fields`, where each has one.
fn key_types(ip: IpFamily, fields: &[Field]) -> Option<Vec<nftnl::KeyType>> {
    fields
        .iter()
        .map(|f| {
            Some(match f {
                Field::Saddr | Field::Daddr | Field::DaddrLowBits(_) => key_type(KeyType::addr(ip)),
                Field::L4Proto => nftnl::KeyType::InetProto,
                Field::ThDport | Field::TcpDport | Field::UdpDport | Field::SctpDport => {
                    nftnl::KeyType::InetService
                }
                Field::MarkMasked(_) => nftnl::KeyType::Mark,
                Field::CtState
                | Field::CtStatus
                | Field::FibDaddrType
                | Field::FibSaddrType
                | Field::Icmpv6Type
                | Field::Iifname => {
                    return None;
                }
            })
        })
        .collect()
}

/// How many bytes a field loads.
fn field_len(ip: IpFamily, field: Field) -> u32 {
    match field {
        Field::Saddr | Field::Daddr | Field::DaddrLowBits(_) => match ip {
            IpFamily::V4 => 4,
            IpFamily::V6 => 16,
        },
        Field::L4Proto | Field::Icmpv6Type => 1,
        Field::ThDport | Field::TcpDport | Field::UdpDport | Field::SctpDport => 2,
        Field::CtState
        | Field::CtStatus
        | Field::FibDaddrType
        | Field::FibSaddrType
        | Field::MarkMasked(_) => 4,
        Field::Iifname => IFNAMSIZ,
    }
}

/// Loads `fields` into consecutive registers from [`REG`] (each field padded to 4 bytes), after
/// the protocol checks that `tcp dport` and friends imply, as `nft` orders them.
fn load_fields(ip: IpFamily, fields: &[Field], exprs: &mut Vec<Expr>) -> Option<()> {
    let family = match ip {
        IpFamily::V4 => nftnl::Family::Ip,
        IpFamily::V6 => nftnl::Family::Ip6,
    };
    for field in fields {
        let proto = match field {
            Field::TcpDport => proto_number(Protocol::Tcp),
            Field::UdpDport => proto_number(Protocol::Udp),
            Field::SctpDport => proto_number(Protocol::Sctp),
            Field::Icmpv6Type => IPPROTO_ICMPV6,
            _ => continue,
        };
        exprs.push(Expr::l4proto(REG));
        exprs.push(Expr::eq(REG, [proto]));
    }
    let mut slot: u8 = 0;
    for field in fields {
        let dreg = Register::reg32(slot);
        let load = match field {
            Field::Saddr => Expr::saddr(family, dreg),
            Field::Daddr | Field::DaddrLowBits(_) => Expr::daddr(family, dreg),
            Field::L4Proto => Expr::l4proto(dreg),
            Field::ThDport | Field::TcpDport | Field::UdpDport | Field::SctpDport => {
                Expr::th_dport(dreg)
            }
            Field::Icmpv6Type => Expr::Payload {
                base: PayloadBase::Transport,
                offset: 0,
                len: 1,
                dreg,
            },
            Field::CtState => Expr::CtState { dreg },
            Field::CtStatus => Expr::CtStatus { dreg },
            Field::FibDaddrType => Expr::FibType {
                addr: FibAddr::Daddr,
                dreg,
            },
            Field::FibSaddrType => Expr::FibType {
                addr: FibAddr::Saddr,
                dreg,
            },
            Field::MarkMasked(_) => Expr::Meta {
                key: MetaKey::Mark,
                dreg,
            },
            Field::Iifname => Expr::Meta {
                key: MetaKey::Iifname,
                dreg,
            },
        };
        exprs.push(load);
        if let Field::DaddrLowBits(bits) = field {
            exprs.push(Expr::Bitwise {
                sreg: dreg,
                dreg,
                mask: bytes_of(Data::ip(low_bits(ip, *bits))),
                xor: vec![0; field_len(ip, *field) as usize],
            });
        }
        if let Field::MarkMasked(mask) = field {
            if fields.len() > 1 {
                // A masked mark inside a concatenation has no single load.
                return None;
            }
            exprs.push(Expr::Bitwise {
                sreg: dreg,
                dreg,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
        }
        let regs = field_len(ip, *field).div_ceil(4);
        slot = slot.checked_add(u8::try_from(regs).ok()?)?;
        if slot > 16 {
            return None;
        }
    }
    Some(())
}

fn cmp_op(op: Op) -> CmpOp {
    match op {
        Op::Eq => CmpOp::Eq,
        Op::Ne => CmpOp::Neq,
    }
}

/// A match against a value, a one-element anonymous set (which `nft` also compiles to a
/// plain comparison), a named set, or a `ct state` set of states.
/// Tests the 32-bit word in the register for any of `bits` (`Op::Eq`) or none of them
/// (`Op::Ne`): a mask, then a compare with zero, as nft lowers `ct state` and `ct status`.
fn bits_set(bits: u32, op: Op, exprs: &mut Vec<Expr>) {
    exprs.push(Expr::Bitwise {
        sreg: REG,
        dreg: REG,
        mask: bits.to_ne_bytes().to_vec(),
        xor: vec![0; 4],
    });
    exprs.push(Expr::Cmp {
        sreg: REG,
        op: match op {
            Op::Eq => CmpOp::Neq,
            Op::Ne => CmpOp::Eq,
        },
        data: vec![0; 4],
    });
}

fn lower_match(ip: IpFamily, m: &Match, exprs: &mut Vec<Expr>) -> Option<()> {
    if is_ct_state(m) {
        let states: Vec<&Value> = match &m.rhs {
            Rhs::Value(v) => v.iter().collect(),
            Rhs::AnonSet(elems) => elems.iter().flatten().collect(),
            Rhs::AnyOf(states) => states.iter().collect(),
            Rhs::Set(_) => return None,
        };
        let mut bits = 0u32;
        for state in states {
            let Value::CtState(s) = state else {
                return None;
            };
            bits |= ct_bit(*s);
        }
        exprs.push(Expr::CtState { dreg: REG });
        // `ct state new` holds when the bit is set; `!=` when it is not.
        bits_set(bits, m.op, exprs);
        return Some(());
    }
    if m.fields == [Field::CtStatus] {
        // `ct status dnat`: the bit is set (`!=`: it is not).
        let Rhs::Value(v) = &m.rhs else { return None };
        let [Value::CtStatus(CtStatus::Dnat)] = v.as_slice() else {
            return None;
        };
        exprs.push(Expr::CtStatus { dreg: REG });
        bits_set(IPS_DST_NAT, m.op, exprs);
        return Some(());
    }
    let values: &[Value] = match &m.rhs {
        Rhs::Set(name) => {
            load_fields(ip, &m.fields, exprs)?;
            exprs.push(Expr::Lookup {
                set: name.clone(),
                sreg: REG,
                dreg: None,
                invert: m.op == Op::Ne,
            });
            return Some(());
        }
        Rhs::Value(v) => v,
        Rhs::AnonSet(elems) => match elems.as_slice() {
            [one] => one,
            _ => return None,
        },
        // Only `ct state` takes a set of flags.
        Rhs::AnyOf(_) => return None,
    };
    let ([field], [value]) = (m.fields.as_slice(), values) else {
        // A concatenation compared with one value is not something nft writes.
        return None;
    };
    load_fields(ip, &[*field], exprs)?;
    match value {
        Value::Net(net) => {
            if !matches!(field, Field::Saddr | Field::Daddr)
                || net.addr().is_ipv4() != (ip == IpFamily::V4)
            {
                return None;
            }
            // A prefix: keep the prefix's bits, then compare with the network.
            exprs.push(Expr::Bitwise {
                sreg: REG,
                dreg: REG,
                mask: bytes_of(Data::ip(net.netmask())),
                xor: vec![0; field_len(ip, *field) as usize],
            });
            exprs.push(Expr::Cmp {
                sreg: REG,
                op: cmp_op(m.op),
                data: bytes_of(Data::ip(net.network())),
            });
        }
        Value::IpRange(..) | Value::PortRange(..) => {
            let (from, to) = value_range(value)?;
            exprs.push(Expr::Range {
                sreg: REG,
                op: cmp_op(m.op),
                from,
                to,
            });
        }
        // The ICMPv6 type is one byte.
        Value::Int(n) if *field == Field::Icmpv6Type => exprs.push(Expr::Cmp {
            sreg: REG,
            op: cmp_op(m.op),
            data: vec![u8::try_from(*n).ok()?],
        }),
        other => exprs.push(Expr::Cmp {
            sreg: REG,
            op: cmp_op(m.op),
            data: value_bytes(other)?,
        }),
    }
    Some(())
}

/// A statement; `anon` names the anonymous map created for an inline `vmap { … }`.
fn lower_statement(
    ip: IpFamily,
    s: &Statement,
    anon: Option<String>,
    exprs: &mut Vec<Expr>,
) -> Option<()> {
    let family = match ip {
        IpFamily::V4 => nftnl::Family::Ip,
        IpFamily::V6 => nftnl::Family::Ip6,
    };
    let map_name = |map: &MapRef| match map {
        MapRef::Named(n) => Some(n.clone()),
        MapRef::Anon(_) => anon.clone(),
    };
    match s {
        Statement::Counter => exprs.push(Expr::Counter),
        Statement::Verdict(v) => exprs.push(Expr::verdict(verdict(v))),
        Statement::Reject(with) => exprs.push(Expr::Reject(match (with, ip) {
            (RejectWith::TcpReset, _) => nftnl::Reject::TcpReset,
            (RejectWith::Default | RejectWith::Icmp(IcmpReject::PortUnreachable), IpFamily::V4) => {
                nftnl::Reject::Icmp(3)
            }
            (RejectWith::Default | RejectWith::Icmp(IcmpReject::PortUnreachable), IpFamily::V6) => {
                nftnl::Reject::Icmp(4)
            }
            (RejectWith::Icmp(IcmpReject::HostUnreachable), IpFamily::V4) => nftnl::Reject::Icmp(1),
            (RejectWith::Icmp(IcmpReject::HostUnreachable), IpFamily::V6) => nftnl::Reject::Icmp(3),
            (RejectWith::Icmp(IcmpReject::AdminProhibited), IpFamily::V4) => {
                nftnl::Reject::Icmp(13)
            }
            (RejectWith::Icmp(IcmpReject::AdminProhibited), IpFamily::V6) => nftnl::Reject::Icmp(1),
        })),
        Statement::MarkOr(bits) | Statement::MarkXor(bits) => {
            // or: clear the bits, then set them; xor: keep every bit, then flip them.
            let mask = match s {
                Statement::MarkOr(_) => !bits,
                _ => u32::MAX,
            };
            exprs.push(Expr::Meta {
                key: MetaKey::Mark,
                dreg: REG,
            });
            exprs.push(Expr::Bitwise {
                sreg: REG,
                dreg: REG,
                mask: mask.to_ne_bytes().to_vec(),
                xor: bits.to_ne_bytes().to_vec(),
            });
            exprs.push(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: REG,
            });
        }
        Statement::Masquerade { fully_random } => exprs.push(Expr::Masquerade {
            fully_random: *fully_random,
        }),
        Statement::Dnat { addr, port } => {
            if addr.is_ipv4() != (ip == IpFamily::V4) {
                return None;
            }
            // The port goes in the second 16-byte register, after any address.
            let port_reg = Register::reg32(4);
            exprs.push(Expr::Immediate {
                dreg: REG,
                data: Data::ip(*addr),
            });
            if let Some(p) = port {
                exprs.push(Expr::Immediate {
                    dreg: port_reg,
                    data: Data::port(*p),
                });
            }
            exprs.push(Expr::Nat {
                kind: NatKind::Dnat,
                family,
                addr: Some(REG),
                port: port.map(|_| port_reg),
            });
        }
        Statement::Vmap { fields, map } => {
            load_fields(ip, fields, exprs)?;
            exprs.push(Expr::Lookup {
                set: map_name(map)?,
                sreg: REG,
                dreg: Some(Register::VERDICT),
                invert: false,
            });
        }
        Statement::NumgenVmap { modulus, map } => {
            exprs.push(Expr::Numgen {
                dreg: REG,
                modulus: *modulus,
                offset: 0,
            });
            exprs.push(Expr::Lookup {
                set: map_name(map)?,
                sreg: REG,
                dreg: Some(Register::VERDICT),
                invert: false,
            });
        }
        Statement::DnatShare { map } => {
            // The key: address . proto . port . numgen, each from its own register.
            load_fields(ip, &[Field::Daddr, Field::L4Proto, Field::ThDport], exprs)?;
            let numgen = match ip {
                IpFamily::V4 => Register::reg32(3),
                IpFamily::V6 => Register::reg32(6),
            };
            exprs.push(Expr::Numgen {
                dreg: numgen,
                modulus: SHARES,
                offset: 0,
            });
            // The value: the address, then the port in the register after it.
            exprs.push(Expr::Lookup {
                set: map.clone(),
                sreg: REG,
                dreg: Some(REG),
                invert: false,
            });
            let port = match ip {
                IpFamily::V4 => Register::reg32(1),
                IpFamily::V6 => Register::reg32(4),
            };
            exprs.push(Expr::Nat {
                kind: NatKind::Dnat,
                family,
                addr: Some(REG),
                port: Some(port),
            });
        }
        Statement::UpdateSet { set, fields } => {
            load_fields(ip, fields, exprs)?;
            exprs.push(Expr::Dynset {
                set: set.clone(),
                op: DynsetOp::Update,
                sreg: REG,
                timeout: None,
            });
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use netd_render::nft::Chain;

    use super::*;

    fn table_with(rule: Rule) -> Table {
        let mut table = Table::new(IpFamily::V4);
        let mut chain = Chain::regular("c");
        chain.push(Rule::new().verdict(Verdict::Accept));
        chain.push(rule);
        table.add_chain(chain);
        table
    }

    #[test]
    fn what_cannot_be_lowered_is_refused_naming_chain_rule_and_construct() {
        let cases = [
            Rule::new().then(Statement::Vmap {
                fields: vec![Field::MarkMasked(0x4000), Field::Daddr],
                map: MapRef::Named("m".to_owned()),
            }),
            Rule::new().matching(Match::in_anon(
                Field::FibDaddrType,
                vec![Value::AddrType(AddrType::Local), Value::Int(1)],
            )),
            Rule::new().matching(Match::eq(
                Field::ThDport,
                Value::Net("10.0.0.0/8".parse().expect("net")),
            )),
            Rule::new().then(Statement::Dnat {
                addr: "fd00::1".parse().expect("ip"),
                port: None,
            }),
        ];
        for rule in cases {
            let shown = rule.display(IpFamily::V4);
            let err = replacement(&table_with(rule)).expect_err(&shown);
            let LowerError::UnsupportedRule { chain, index, what } = &err else {
                panic!("{shown}: {err:?}");
            };
            assert_eq!((chain.as_str(), *index), ("c", 1), "{shown}");
            assert!(shown.contains(what.as_str()), "{shown}: {what}");
        }
    }

    #[test]
    fn share_ranges_are_one_field_ordered_by_the_register_bytes() {
        // Every share is a value numgen can produce, and byte order is share order.
        let shares = [0u16, 1, 255, 256, 0x0102, 0x8000, u16::MAX];
        for pair in shares.windows(2) {
            assert!(share_bytes(pair[0]) < share_bytes(pair[1]), "{pair:?}");
        }
        for share in shares {
            assert!(u32::from_ne_bytes(share_bytes(share)) < SHARES, "{share}");
        }
        let key = [
            Value::Ip("10.96.0.10".parse().expect("ip")),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
            Value::ShareRange(0x0102, 0x0304),
        ];
        let head = [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        let with = |share| [&head[..], &share_bytes(share)[..]].concat();
        assert_eq!(
            element_key("m", &key, true).expect("lowers"),
            nftnl::Element::range(
                Key::new().field(with(0x0102)),
                Key::new().field(with(0x0304))
            )
        );
    }

    #[test]
    fn a_one_element_anonymous_set_is_a_plain_comparison() {
        let net = Value::Net("10.0.0.0/8".parse().expect("net"));
        let anon = Rule::new()
            .matching(Match::in_anon(Field::Saddr, vec![net]).negated())
            .verdict(Verdict::Drop);
        let plain = Rule::new()
            .matching(Match::ne(Field::Saddr, net))
            .verdict(Verdict::Drop);
        assert_eq!(
            replacement(&table_with(anon)).expect("lowers"),
            replacement(&table_with(plain)).expect("lowers")
        );
    }

    #[test]
    fn an_update_to_another_table_is_its_replacement() {
        let v4 = table_with(Rule::new().verdict(Verdict::Drop));
        let mut v6 = Table::new(IpFamily::V6);
        v6.add_chain(Chain::regular("c"));
        assert_eq!(
            update(&v4, &v6).expect("lowers"),
            replacement(&v6).expect("lowers")
        );
        assert!(update(&v4, &v4).expect("lowers").is_empty());
    }
}
