//! nf_tables over netlink, without `nft`: a typed message encoder and atomic transactions.
//!
//! A [`Transaction`] collects typed operations — tables, chains ([`Chain`]), rules
//! ([`Rule`] of [`Expr`]essions), sets and maps ([`Set`]) and their [`Element`]s — and
//! [`Transaction::commit`] sends them to the kernel inside one network namespace as a single
//! nfnetlink batch. The kernel applies a batch whole or not at all: when it refuses any message,
//! nothing of the batch is applied and [`NftError::Rejected`] names the first refused message
//! (its place in the batch and what it was, such as "add rule to chain ip t services").
//!
//! Every message asks for an acknowledgement and every one is read, so a refusal is always
//! seen. The transport is `netlink-sys` (a socket, MIT licensed); the encoding is this module's
//! own, written from the kernel's uapi headers. Nothing here knows Kubernetes.
//!
//! [`conntrack`] uses the same socket family for connection tracking: entries listed through
//! a kernel-side filter and deleted by tuple, for UDP Services that lose endpoints.

pub mod conntrack;
mod expr;
mod objects;
mod socket;
mod wire;

use std::io;

pub use expr::{
    CmpOp, Data, DynsetOp, Expr, FibAddr, IcmpxCode, MetaKey, NatKind, PayloadBase, Register,
    Reject, Verdict,
};
pub use objects::{
    BaseChain, Chain, ChainType, Element, Family, HookPoint, Key, KeyType, MapData, Policy, Rule,
    Set, SetFlags,
};

use expr::{millis, put_data};
use wire::*;

/// The longest name nf_tables accepts for a table, chain or set (`NFT_NAME_MAXLEN` less
/// its NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Room left for one message's element list under netlink's 64 KiB attribute limit.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 60_000;

/// A failed nf_tables transaction.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A table, chain or set name the kernel would refuse.
    #[error("{what}: {name:?} is not a valid name (1 to 255 bytes, no NUL)")]
    InvalidName {
        /// Which message carried it.
        what: String,
        /// The name.
        name: String,
    },
    /// One attribute of a message is larger than netlink can carry (64 KiB).
    #[error("{what}: an attribute is larger than netlink's 64 KiB limit")]
    TooLarge {
        /// The message.
        what: String,
    },
    /// The transaction could not run inside the namespace.
    #[error("cannot enter the network namespace for an nf_tables transaction")]
    Enter(#[source] crate::KernelError),
    /// The netlink socket could not be opened, configured, written or read.
    #[error("nf_tables netlink socket: {step}")]
    Socket {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a message; it applied nothing of the batch.
    #[error("kernel refused message {index} of the batch ({what}); nothing was applied")]
    Rejected {
        /// The message's place in the batch (0 is the first operation).
        index: usize,
        /// Its netlink sequence number.
        seq: u32,
        /// What it was.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the batch itself (its begin or end marker).
    #[error("kernel refused the batch; nothing was applied")]
    BatchRejected {
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be parsed, or acknowledged something never sent.
    #[error("malformed netlink reply from the kernel ({len} bytes)")]
    MalformedReply {
        /// The length of the datagram.
        len: usize,
    },
    /// The kernel refused a conntrack request (a dump or a deletion).
    #[error("kernel refused to {what}")]
    ConntrackFailed {
        /// The request.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Some messages were never acknowledged although the kernel reported no error.
    #[error("the kernel acknowledged {acked} of {sent} messages")]
    MissingAcks {
        /// How many were acknowledged.
        acked: usize,
        /// How many were sent.
        sent: usize,
    },
}

/// One batch of nf_tables operations, applied atomically by [`Transaction::commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    AddTable(Family, String),
    DeleteTable(Family, String),
    AddChain(Family, String, Chain),
    DeleteChain(Family, String, String),
    FlushChain(Family, String, String),
    AddRule(Family, String, String, Rule),
    AddSet(Family, String, Set),
    DeleteSet(Family, String, String),
    Elements {
        add: bool,
        family: Family,
        table: String,
        set: String,
        elements: Vec<Element>,
    },
}

/// An encoded batch: the bytes, and for every operation message what it was.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    /// Sequence number of the batch-begin marker; operation i has `first_seq + 1 + i`.
    pub(crate) first_seq: u32,
    pub(crate) what: Vec<String>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds the table (nothing happens if it exists).
    pub fn add_table(&mut self, family: Family, name: &str) -> &mut Self {
        self.push(Op::AddTable(family, name.to_owned()))
    }

    /// Deletes the table and everything in it (it must exist; add it first in the same
    /// transaction to delete it whether or not it exists).
    pub fn delete_table(&mut self, family: Family, name: &str) -> &mut Self {
        self.push(Op::DeleteTable(family, name.to_owned()))
    }

    /// Adds the chain (nothing happens if it exists).
    pub fn add_chain(&mut self, family: Family, table: &str, chain: Chain) -> &mut Self {
        self.push(Op::AddChain(family, table.to_owned(), chain))
    }

    /// Deletes the chain (empty and unreferenced by then).
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        self.push(Op::DeleteChain(family, table.to_owned(), chain.to_owned()))
    }

    /// Removes every rule of the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        self.push(Op::FlushChain(family, table.to_owned(), chain.to_owned()))
    }

    /// Appends the rule to the chain.
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, rule: Rule) -> &mut Self {
        self.push(Op::AddRule(
            family,
            table.to_owned(),
            chain.to_owned(),
            rule,
        ))
    }

    /// Adds the set or map (nothing happens if one of the same type exists).
    pub fn add_set(&mut self, family: Family, table: &str, set: Set) -> &mut Self {
        self.push(Op::AddSet(family, table.to_owned(), set))
    }

    /// Deletes the set (unreferenced by then).
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) -> &mut Self {
        self.push(Op::DeleteSet(family, table.to_owned(), set.to_owned()))
    }

    /// Adds elements to the set (an element already there is not an error). Large lists are
    /// split into several messages of the same batch.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: Vec<Element>,
    ) -> &mut Self {
        self.elements(true, family, table, set, elements)
    }

    /// Deletes elements from the set (each must be there); only the key of each is used.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: Vec<Element>,
    ) -> &mut Self {
        self.elements(false, family, table, set, elements)
    }

    /// Sends the transaction to the kernel inside the network namespace `netns` as one
    /// batch. Either all of it is applied or, on [`NftError::Rejected`], none of it.
    pub fn commit(&self, netns: &str) -> Result<(), NftError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let encoded = self.encode(1)?;
        socket::send_batch(netns, &encoded)
    }

    fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    fn elements(
        &mut self,
        add: bool,
        family: Family,
        table: &str,
        set: &str,
        elements: Vec<Element>,
    ) -> &mut Self {
        if elements.is_empty() {
            return self;
        }
        self.push(Op::Elements {
            add,
            family,
            table: table.to_owned(),
            set: set.to_owned(),
            elements,
        })
    }

    /// Encodes the batch with sequence numbers from `first_seq`.
    pub(crate) fn encode(&self, first_seq: u32) -> Result<Encoded, NftError> {
        let mut w = Writer::default();
        let mut what = Vec::new();
        let begin = w.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        w.end(begin);
        for op in &self.ops {
            for (seq_what, body) in messages(op)? {
                let seq = first_seq + 1 + what.len() as u32;
                let (kind, flags, family) = body.header;
                let start = w.begin(
                    (NFNL_SUBSYS_NFTABLES << 8) | kind,
                    NLM_F_REQUEST | NLM_F_ACK | flags,
                    seq,
                    family.nfproto(),
                    0,
                );
                (body.write)(&mut w).map_err(|TooLong| NftError::TooLarge {
                    what: seq_what.clone(),
                })?;
                w.end(start);
                what.push(seq_what);
            }
        }
        let end_seq = first_seq + 1 + what.len() as u32;
        let end = w.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        w.end(end);
        Ok(Encoded {
            bytes: w.into_bytes(),
            first_seq,
            what,
        })
    }
}

type Write<'a> = Box<dyn FnOnce(&mut Writer) -> Result<(), TooLong> + 'a>;

struct Body<'a> {
    header: (u16, u16, Family),
    write: Write<'a>,
}

fn body<'a>(
    kind: u16,
    flags: u16,
    family: Family,
    write: impl FnOnce(&mut Writer) -> Result<(), TooLong> + 'a,
) -> Body<'a> {
    Body {
        header: (kind, flags, family),
        write: Box::new(write),
    }
}

/// The messages of one operation (several for a long element list), each with what it is.
fn messages(op: &Op) -> Result<Vec<(String, Body<'_>)>, NftError> {
    match op {
        Op::AddTable(family, name) => {
            let what = format!("add table {} {name}", family.name());
            check(&what, name)?;
            one(
                what,
                body(NFT_MSG_NEWTABLE, NLM_F_CREATE, *family, move |w| {
                    w.put_str(NFTA_TABLE_NAME, name)
                }),
            )
        }
        Op::DeleteTable(family, name) => {
            let what = format!("delete table {} {name}", family.name());
            check(&what, name)?;
            one(
                what,
                body(NFT_MSG_DELTABLE, 0, *family, move |w| {
                    w.put_str(NFTA_TABLE_NAME, name)
                }),
            )
        }
        Op::AddChain(family, table, chain) => {
            let what = format!("add chain {} {table} {}", family.name(), chain.name);
            check_all(&what, &[table, &chain.name])?;
            one(
                what,
                body(NFT_MSG_NEWCHAIN, NLM_F_CREATE, *family, move |w| {
                    w.put_str(NFTA_CHAIN_TABLE, table)?;
                    w.put_str(NFTA_CHAIN_NAME, &chain.name)?;
                    let Some(base) = &chain.base else {
                        return Ok(());
                    };
                    let (hook, priority, kind, policy) = objects::hook_attrs(base);
                    let nest = w.open(NFTA_CHAIN_HOOK);
                    w.put_u32(NFTA_HOOK_HOOKNUM, hook)?;
                    w.put(NFTA_HOOK_PRIORITY, &priority.to_be_bytes())?;
                    w.close(nest)?;
                    w.put_u32(NFTA_CHAIN_POLICY, policy)?;
                    w.put_str(NFTA_CHAIN_TYPE, kind)
                }),
            )
        }
        Op::DeleteChain(family, table, chain) | Op::FlushChain(family, table, chain) => {
            let delete = matches!(op, Op::DeleteChain(..));
            let verb = if delete {
                "delete chain"
            } else {
                "flush chain"
            };
            let what = format!("{verb} {} {table} {chain}", family.name());
            check_all(&what, &[table, chain])?;
            let kind = if delete {
                NFT_MSG_DELCHAIN
            } else {
                NFT_MSG_DELRULE
            };
            one(
                what,
                body(kind, 0, *family, move |w| {
                    // NFTA_CHAIN_TABLE/NAME and NFTA_RULE_TABLE/CHAIN are 1 and 3 vs 1 and 2.
                    if delete {
                        w.put_str(NFTA_CHAIN_TABLE, table)?;
                        w.put_str(NFTA_CHAIN_NAME, chain)
                    } else {
                        w.put_str(NFTA_RULE_TABLE, table)?;
                        w.put_str(NFTA_RULE_CHAIN, chain)
                    }
                }),
            )
        }
        Op::AddRule(family, table, chain, rule) => {
            let what = format!("add rule to chain {} {table} {chain}", family.name());
            check_all(&what, &[table, chain])?;
            one(
                what,
                body(
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND,
                    *family,
                    move |w| {
                        w.put_str(NFTA_RULE_TABLE, table)?;
                        w.put_str(NFTA_RULE_CHAIN, chain)?;
                        let list = w.open(NFTA_RULE_EXPRESSIONS);
                        for expr in &rule.exprs {
                            expr.encode(w)?;
                        }
                        w.close(list)?;
                        if let Some(comment) = &rule.comment {
                            w.put(NFTA_RULE_USERDATA, &comment_udata(comment)?)?;
                        }
                        Ok(())
                    },
                ),
            )
        }
        Op::AddSet(family, table, set) => {
            let what = format!("add set {} {table} {}", family.name(), set.name);
            check_all(&what, &[table, &set.name])?;
            one(
                what,
                body(NFT_MSG_NEWSET, NLM_F_CREATE, *family, move |w| {
                    encode_set(w, table, set)
                }),
            )
        }
        Op::DeleteSet(family, table, set) => {
            let what = format!("delete set {} {table} {set}", family.name());
            check_all(&what, &[table, set])?;
            one(
                what,
                body(NFT_MSG_DELSET, 0, *family, move |w| {
                    w.put_str(NFTA_SET_TABLE, table)?;
                    w.put_str(NFTA_SET_NAME, set)
                }),
            )
        }
        Op::Elements {
            add,
            family,
            table,
            set,
            elements,
        } => {
            let verb = if *add { "add" } else { "delete" };
            let prep = if *add { "to" } else { "from" };
            let label = format!("{verb} elements {prep} set {} {table} {set}", family.name());
            check_all(&label, &[table, set])?;
            let mut encoded = Vec::new();
            for element in elements {
                for part in element_parts(element) {
                    let mut w = Writer::default();
                    encode_element(&mut w, &part).map_err(|TooLong| NftError::TooLarge {
                        what: label.clone(),
                    })?;
                    encoded.push(w.into_bytes());
                }
            }
            let chunks = chunk(encoded);
            let parts = chunks.len();
            let kind = if *add {
                NFT_MSG_NEWSETELEM
            } else {
                NFT_MSG_DELSETELEM
            };
            let flags = if *add { NLM_F_CREATE } else { 0 };
            Ok(chunks
                .into_iter()
                .enumerate()
                .map(|(i, chunk)| {
                    let what = if parts == 1 {
                        label.clone()
                    } else {
                        format!("{label} (part {} of {parts})", i + 1)
                    };
                    let write = move |w: &mut Writer| {
                        w.put_str(NFTA_SET_ELEM_LIST_TABLE, table)?;
                        w.put_str(NFTA_SET_ELEM_LIST_SET, set)?;
                        let list = w.open(NFTA_SET_ELEM_LIST_ELEMENTS);
                        for bytes in &chunk {
                            w.raw(bytes);
                        }
                        w.close(list)
                    };
                    (what, body(kind, flags, *family, write))
                })
                .collect())
        }
    }
}

fn one(what: String, body: Body<'_>) -> Result<Vec<(String, Body<'_>)>, NftError> {
    Ok(vec![(what, body)])
}

fn encode_set(w: &mut Writer, table: &str, set: &Set) -> Result<(), TooLong> {
    w.put_str(NFTA_SET_TABLE, table)?;
    w.put_str(NFTA_SET_NAME, &set.name)?;
    let mut flags = 0;
    if set.data.is_some() {
        flags |= NFT_SET_MAP;
    }
    if set.flags.interval {
        flags |= NFT_SET_INTERVAL;
    }
    let concat = set.concat_lengths();
    if concat.is_some() {
        flags |= NFT_SET_CONCAT;
    }
    if set.flags.timeout {
        flags |= NFT_SET_TIMEOUT;
    }
    if set.flags.dynamic {
        flags |= NFT_SET_EVAL;
    }
    if set.flags.constant {
        flags |= NFT_SET_CONSTANT;
    }
    if set.flags.anonymous {
        flags |= NFT_SET_ANONYMOUS;
    }
    w.put_u32(NFTA_SET_FLAGS, flags)?;
    w.put_u32(NFTA_SET_KEY_TYPE, set.key_type())?;
    w.put_u32(NFTA_SET_KEY_LEN, set.key_len())?;
    if let Some((kind, len)) = set.data_type() {
        w.put_u32(NFTA_SET_DATA_TYPE, kind)?;
        w.put_u32(NFTA_SET_DATA_LEN, len)?;
    }
    if let Some(timeout) = set.timeout {
        w.put_u64(NFTA_SET_TIMEOUT, millis(timeout))?;
    }
    // The kernel wants an id for every new set (rules of the same batch may refer to it by
    // id); names are unique in a table, so one id per batch is enough for by-name use.
    w.put_u32(NFTA_SET_ID, 1)?;
    if let Some(userdata) = set.userdata() {
        w.put(NFTA_SET_USERDATA, &userdata)?;
    }
    if let Some(lengths) = concat {
        let desc = w.open(NFTA_SET_DESC);
        let concat = w.open(NFTA_SET_DESC_CONCAT);
        for len in lengths {
            let elem = w.open(NFTA_LIST_ELEM);
            w.put_u32(NFTA_SET_FIELD_LEN, len)?;
            w.close(elem)?;
        }
        w.close(concat)?;
        w.close(desc)?;
    }
    Ok(())
}

/// One element as the kernel stores it.
struct Part<'a> {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    interval_end: bool,
    element: &'a Element,
}

/// A concatenated range is one element with an inclusive end (`NFTA_SET_ELEM_KEY_END`); a
/// single-field range is two: its start, and the value after its end flagged as an interval
/// end (none when the range runs to the top of the type).
fn element_parts(element: &Element) -> Vec<Part<'_>> {
    let key = element.key.bytes();
    let Some(end) = &element.key_end else {
        return vec![Part {
            key,
            key_end: None,
            interval_end: false,
            element,
        }];
    };
    if element.key.is_concat() {
        return vec![Part {
            key,
            key_end: Some(end.bytes()),
            interval_end: false,
            element,
        }];
    }
    let mut parts = vec![Part {
        key,
        key_end: None,
        interval_end: false,
        element,
    }];
    if let Some(after) = successor(&end.bytes()) {
        parts.push(Part {
            key: after,
            key_end: None,
            interval_end: true,
            element,
        });
    }
    parts
}

fn encode_element(w: &mut Writer, part: &Part<'_>) -> Result<(), TooLong> {
    let elem = w.open(NFTA_LIST_ELEM);
    put_data(w, NFTA_SET_ELEM_KEY, &Data::Value(part.key.clone()))?;
    if let Some(end) = &part.key_end {
        put_data(w, NFTA_SET_ELEM_KEY_END, &Data::Value(end.clone()))?;
    }
    if part.interval_end {
        w.put_u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END)?;
    } else {
        if let Some(data) = &part.element.data {
            put_data(w, NFTA_SET_ELEM_DATA, data)?;
        }
        if let Some(timeout) = part.element.timeout {
            w.put_u64(NFTA_SET_ELEM_TIMEOUT, millis(timeout))?;
        }
        if let Some(userdata) = part.element.userdata() {
            w.put(NFTA_SET_ELEM_USERDATA, &userdata)?;
        }
    }
    w.close(elem)
}

/// The big-endian value after `bytes`, or `None` at the top.
fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for byte in out.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            return Some(out);
        }
    }
    None
}

fn chunk(encoded: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut size = 0;
    for bytes in encoded {
        if chunks.is_empty() || size + bytes.len() > ELEMENTS_PER_MESSAGE_BYTES {
            chunks.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        if let Some(last) = chunks.last_mut() {
            last.push(bytes);
        }
    }
    chunks
}

/// A rule comment in libnftnl's user-data layout (type, length, NUL-terminated text), which
/// `nft` reads back.
fn comment_udata(comment: &str) -> Result<Vec<u8>, TooLong> {
    let len = u8::try_from(comment.len() + 1).map_err(|_| TooLong)?;
    let mut out = vec![UDATA_RULE_COMMENT, len];
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Ok(out)
}

fn check(what: &str, name: &str) -> Result<(), NftError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(NftError::InvalidName {
            what: what.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn check_all(what: &str, names: &[&str]) -> Result<(), NftError> {
    names.iter().try_for_each(|name| check(what, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_numbered_and_described_in_order() {
        let mut tx = Transaction::new();
        tx.add_table(Family::Ip, "t")
            .add_chain(Family::Ip, "t", Chain::regular("c"))
            .add_rule(
                Family::Ip,
                "t",
                "c",
                Rule::new(vec![Expr::verdict(Verdict::Accept)]),
            );
        let encoded = tx.encode(10).expect("encodes");
        assert_eq!(
            encoded.what,
            [
                "add table ip t",
                "add chain ip t c",
                "add rule to chain ip t c"
            ]
        );
        let seqs: Vec<u32> = wire::replies(&encoded.bytes)
            .expect("well formed")
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [10, 11, 12, 13, 14]);
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_sent() {
        let mut tx = Transaction::new();
        tx.add_chain(Family::Ip, "t", Chain::regular(""));
        assert!(matches!(
            tx.commit("never-entered"),
            Err(NftError::InvalidName { what, .. }) if what == "add chain ip t "
        ));
    }

    #[test]
    fn long_element_lists_are_split_into_messages() {
        let elements: Vec<Element> = (0..5_000u32)
            .map(|i| Element::key(Key::new().mark(i)))
            .collect();
        let mut tx = Transaction::new();
        tx.add_elements(Family::Ip, "t", "s", elements);
        let what = tx.encode(1).expect("encodes").what;
        assert!(what.len() > 1, "{what:?}");
        assert_eq!(
            what[0],
            format!("add elements to set ip t s (part 1 of {})", what.len())
        );
    }

    #[test]
    fn single_field_ranges_end_after_their_last_value() {
        assert_eq!(successor(&[10, 255, 255, 255]), Some(vec![11, 0, 0, 0]));
        assert_eq!(successor(&[255, 255]), None);
        let range = Element::range(Key::new().port(80), Key::new().port(90));
        let parts = element_parts(&range);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[1].key.clone(), parts[1].interval_end),
            (vec![0, 91], true)
        );
    }
}
