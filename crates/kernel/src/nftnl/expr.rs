//! Rule expressions: what a rule does, one kernel expression at a time, the way `nft` would
//! have compiled it (`nft --debug=netlink` shows the same list).

use std::net::IpAddr;
use std::time::Duration;

use super::Family;
use super::wire::{
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, TooLong, Writer,
};

/// A register of the nf_tables virtual machine. Values are loaded into data registers and
/// compared, looked up or used from there; the verdict register decides the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Register(u32);

impl Register {
    /// The verdict register (a lookup into a verdict map writes here).
    pub const VERDICT: Register = Register(0);

    /// The 32-bit data register `n` (`NFT_REG32_00` + n), 0 to 15. Concatenations take one
    /// such register per 4 bytes of each field, as `nft` lays them out; a 16-byte IPv6
    /// address takes four. The kernel refuses a rule that names a register past 15 (or
    /// reads past its end), and the error names that rule.
    pub const fn reg32(n: u8) -> Register {
        Register(8 + n as u32)
    }

    fn id(self) -> u32 {
        self.0
    }
}

/// What a rule (or a verdict map's element) decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Accept the packet (in this hook).
    Accept,
    /// Drop the packet.
    Drop,
    /// Return to the calling chain.
    Return,
    /// Go on with the next rule (what an unmatched rule does anyway).
    Continue,
    /// Call the chain and come back when it returns.
    Jump(String),
    /// Go to the chain without coming back.
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// A value as nf_tables carries it: raw bytes or a verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    /// Bytes, in the order the packet or register holds them.
    Value(Vec<u8>),
    /// A verdict.
    Verdict(Verdict),
}

impl Data {
    /// An address in network byte order (4 or 16 bytes).
    pub fn ip(ip: IpAddr) -> Data {
        Data::Value(ip_bytes(ip))
    }

    /// A port in network byte order.
    pub fn port(port: u16) -> Data {
        Data::Value(port.to_be_bytes().to_vec())
    }
}

/// Where a payload load reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PayloadBase {
    /// The network header (IPv4 or IPv6).
    Network,
    /// The transport header (TCP, UDP, SCTP: ports at offsets 0 and 2).
    Transport,
}

/// Packet metadata a `meta` expression reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    /// The packet mark (`meta mark`), 4 bytes in host order.
    Mark,
    /// The layer-3 protocol family (`meta nfproto`), 1 byte.
    Nfproto,
    /// The layer-4 protocol (`meta l4proto`), 1 byte.
    L4proto,
    /// The name of the interface the packet arrived on (`meta iifname`), 16 bytes
    /// (`IFNAMSIZ`, NUL-padded).
    Iifname,
}

impl MetaKey {
    fn id(self) -> u32 {
        match self {
            MetaKey::Mark => 3,
            MetaKey::Nfproto => 15,
            MetaKey::L4proto => 16,
            MetaKey::Iifname => 6,
        }
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
}

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// Rewrite the source.
    Snat,
    /// Rewrite the destination.
    Dnat,
}

/// The ICMPx (family-independent) codes `reject with icmpx` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpxCode {
    /// No route to destination.
    NoRoute,
    /// Port unreachable.
    PortUnreachable,
    /// Host unreachable.
    HostUnreachable,
    /// Administratively prohibited.
    AdminProhibited,
}

/// How a `reject` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// An ICMP (IPv4 table) or ICMPv6 (IPv6 table) destination-unreachable with this code.
    Icmp(u8),
    /// A family-independent ICMPx code (required in `inet` tables).
    Icmpx(IcmpxCode),
    /// A TCP reset.
    TcpReset,
}

/// What a `fib` lookup looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FibAddr {
    /// The packet's source address (`fib saddr type`).
    Saddr,
    /// The packet's destination address (`fib daddr type`).
    Daddr,
}

/// A dynamic-set operation from the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynsetOp {
    /// Add the key if absent (`add @set`).
    Add,
    /// Add the key, or refresh its timeout (`update @set`).
    Update,
}

/// One kernel expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of a header into `dreg`.
    Payload {
        /// The header.
        base: PayloadBase,
        /// Byte offset in it.
        offset: u32,
        /// How many bytes.
        len: u32,
        /// Where to.
        dreg: Register,
    },
    /// Loads packet metadata into `dreg`.
    Meta {
        /// What.
        key: MetaKey,
        /// Where to.
        dreg: Register,
    },
    /// Sets packet metadata from `sreg` (`meta mark set ...`).
    MetaSet {
        /// What.
        key: MetaKey,
        /// From where.
        sreg: Register,
    },
    /// Compares `sreg` with `data`; the rule stops here unless it holds.
    Cmp {
        /// The register.
        sreg: Register,
        /// The comparison.
        op: CmpOp,
        /// The value (as many bytes as the register holds).
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`, on `mask.len()` bytes: and, or and xor of marks, prefix
    /// masks of addresses.
    Bitwise {
        /// Input.
        sreg: Register,
        /// Output.
        dreg: Register,
        /// Bytes to keep.
        mask: Vec<u8>,
        /// Bytes to flip afterwards (same length as `mask`).
        xor: Vec<u8>,
    },
    /// Looks the key in `sreg` up in the named set; with `dreg` (a map), writes the element's
    /// data there (the verdict register for a verdict map).
    Lookup {
        /// The set's name, in the rule's table.
        set: String,
        /// The key's first register.
        sreg: Register,
        /// For maps, where the value goes.
        dreg: Option<Register>,
        /// Match when the key is absent instead.
        invert: bool,
    },
    /// Writes a constant into `dreg` (a verdict into [`Register::VERDICT`]).
    Immediate {
        /// Where to.
        dreg: Register,
        /// What.
        data: Data,
    },
    /// A random number `offset + [0, modulus)` into `dreg` (`numgen random mod N`).
    Numgen {
        /// Where to.
        dreg: Register,
        /// How many values.
        modulus: u32,
        /// The first value.
        offset: u32,
    },
    /// Source or destination NAT to the address (and port) held in registers.
    Nat {
        /// Which side is rewritten.
        kind: NatKind,
        /// The address family of the addresses.
        family: Family,
        /// The register holding the new address.
        addr: Option<Register>,
        /// The register holding the new port (network byte order).
        port: Option<Register>,
    },
    /// Source NAT to the outgoing interface's address.
    Masquerade {
        /// Pick source ports fully at random (`masquerade fully-random`).
        fully_random: bool,
    },
    /// Rejects the packet with an answer.
    Reject(Reject),
    /// Loads the connection's state bits (`ct state`) into `dreg`, 4 bytes in host order.
    CtState {
        /// Where to.
        dreg: Register,
    },
    /// Loads the connection's status bits (`ct status`: `IPS_*`) into `dreg`, 4 bytes in host
    /// order.
    CtStatus {
        /// Where to.
        dreg: Register,
    },
    /// Loads the routing type of an address (`fib daddr type`) into `dreg` (4 bytes, host
    /// order: 2 is local).
    FibType {
        /// Which address.
        addr: FibAddr,
        /// Where to.
        dreg: Register,
    },
    /// Adds or refreshes the key in `sreg` in the named set from the packet path.
    Dynset {
        /// The set.
        set: String,
        /// Add or update.
        op: DynsetOp,
        /// The key's first register.
        sreg: Register,
        /// The element's timeout (the set's own when absent).
        timeout: Option<Duration>,
    },
    /// Counts packets and bytes.
    Counter,
    /// Whether `sreg` lies in `[from, to]` (network byte order, compared as big-endian).
    Range {
        /// The register.
        sreg: Register,
        /// Equal (inside) or not equal (outside).
        op: CmpOp,
        /// The first value.
        from: Vec<u8>,
        /// The last value.
        to: Vec<u8>,
    },
}

impl Expr {
    /// `ip saddr` / `ip6 saddr` into `dreg`.
    pub fn saddr(family: Family, dreg: Register) -> Expr {
        match family {
            Family::Ip6 => Expr::network(8, 16, dreg),
            Family::Ip | Family::Inet => Expr::network(12, 4, dreg),
        }
    }

    /// `ip daddr` / `ip6 daddr` into `dreg`.
    pub fn daddr(family: Family, dreg: Register) -> Expr {
        match family {
            Family::Ip6 => Expr::network(24, 16, dreg),
            Family::Ip | Family::Inet => Expr::network(16, 4, dreg),
        }
    }

    /// `th dport` into `dreg`.
    pub fn th_dport(dreg: Register) -> Expr {
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg,
        }
    }

    /// `meta l4proto` into `dreg`.
    pub fn l4proto(dreg: Register) -> Expr {
        Expr::Meta {
            key: MetaKey::L4proto,
            dreg,
        }
    }

    /// `register == data`.
    pub fn eq(sreg: Register, data: impl Into<Vec<u8>>) -> Expr {
        Expr::Cmp {
            sreg,
            op: CmpOp::Eq,
            data: data.into(),
        }
    }

    /// A verdict: the rule's last expression.
    pub fn verdict(verdict: Verdict) -> Expr {
        Expr::Immediate {
            dreg: Register::VERDICT,
            data: Data::Verdict(verdict),
        }
    }

    fn network(offset: u32, len: u32, dreg: Register) -> Expr {
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len,
            dreg,
        }
    }

    /// Writes this expression as one `NFTA_LIST_ELEM` of a rule's expression list.
    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), TooLong> {
        let elem = w.open(NFTA_LIST_ELEM);
        w.put_str(NFTA_EXPR_NAME, self.kernel_name())?;
        let data = w.open(NFTA_EXPR_DATA);
        self.encode_data(w)?;
        w.close(data)?;
        w.close(elem)
    }

    fn kernel_name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Reject(_) => "reject",
            Expr::CtState { .. } | Expr::CtStatus { .. } => "ct",
            Expr::FibType { .. } => "fib",
            Expr::Dynset { .. } => "dynset",
            Expr::Counter => "counter",
            Expr::Range { .. } => "range",
        }
    }

    fn encode_data(&self, w: &mut Writer) -> Result<(), TooLong> {
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(
                    2,
                    match base {
                        PayloadBase::Network => 1,
                        PayloadBase::Transport => 2,
                    },
                )?;
                w.put_u32(3, *offset)?;
                w.put_u32(4, *len)
            }
            Expr::Meta { key, dreg } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(2, key.id())
            }
            Expr::MetaSet { key, sreg } => {
                w.put_u32(2, key.id())?;
                w.put_u32(3, sreg.id())
            }
            Expr::Cmp { sreg, op, data } => {
                w.put_u32(1, sreg.id())?;
                w.put_u32(2, cmp_op(*op))?;
                put_data(w, 3, &Data::Value(data.clone()))
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.put_u32(1, sreg.id())?;
                w.put_u32(2, dreg.id())?;
                w.put_u32(3, mask.len() as u32)?;
                put_data(w, 4, &Data::Value(mask.clone()))?;
                put_data(w, 5, &Data::Value(xor.clone()))
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                w.put_str(1, set)?;
                w.put_u32(2, sreg.id())?;
                if let Some(dreg) = dreg {
                    w.put_u32(3, dreg.id())?;
                }
                if *invert {
                    w.put_u32(5, 1)?;
                }
                Ok(())
            }
            Expr::Immediate { dreg, data } => {
                w.put_u32(1, dreg.id())?;
                put_data(w, 2, data)
            }
            Expr::Numgen {
                dreg,
                modulus,
                offset,
            } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(2, *modulus)?;
                w.put_u32(3, 1)?; // NFT_NG_RANDOM
                w.put_u32(4, *offset)
            }
            Expr::Nat {
                kind,
                family,
                addr,
                port,
            } => {
                w.put_u32(
                    1,
                    match kind {
                        NatKind::Snat => 0,
                        NatKind::Dnat => 1,
                    },
                )?;
                w.put_u32(2, u32::from(family.nfproto()))?;
                // The kernel derives NF_NAT_RANGE_MAP_IPS / PROTO_SPECIFIED from which
                // registers are present.
                if let Some(addr) = addr {
                    w.put_u32(3, addr.id())?;
                }
                if let Some(port) = port {
                    w.put_u32(5, port.id())?;
                }
                Ok(())
            }
            Expr::Masquerade { fully_random } => {
                if *fully_random {
                    w.put_u32(1, 0x10)?; // NF_NAT_RANGE_PROTO_RANDOM_FULLY
                }
                Ok(())
            }
            Expr::Reject(reject) => {
                let (kind, code) = match reject {
                    Reject::Icmp(code) => (0, *code),
                    Reject::TcpReset => (1, 0),
                    Reject::Icmpx(code) => (
                        2,
                        match code {
                            IcmpxCode::NoRoute => 0,
                            IcmpxCode::PortUnreachable => 1,
                            IcmpxCode::HostUnreachable => 2,
                            IcmpxCode::AdminProhibited => 3,
                        },
                    ),
                };
                w.put_u32(1, kind)?;
                w.put(2, &[code])
            }
            Expr::CtState { dreg } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(2, 0) // NFT_CT_STATE
            }
            Expr::CtStatus { dreg } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(2, 2) // NFT_CT_STATUS
            }
            Expr::FibType { addr, dreg } => {
                w.put_u32(1, dreg.id())?;
                w.put_u32(2, 3)?; // NFT_FIB_RESULT_ADDRTYPE
                w.put_u32(
                    3,
                    match addr {
                        FibAddr::Saddr => 1,
                        FibAddr::Daddr => 2,
                    },
                )
            }
            Expr::Dynset {
                set,
                op,
                sreg,
                timeout,
            } => {
                w.put_str(1, set)?;
                w.put_u32(
                    3,
                    match op {
                        DynsetOp::Add => 0,
                        DynsetOp::Update => 1,
                    },
                )?;
                w.put_u32(4, sreg.id())?;
                if let Some(timeout) = timeout {
                    w.put_u64(6, millis(*timeout))?;
                }
                Ok(())
            }
            Expr::Counter => Ok(()),
            Expr::Range { sreg, op, from, to } => {
                w.put_u32(1, sreg.id())?;
                w.put_u32(2, cmp_op(*op))?;
                put_data(w, 3, &Data::Value(from.clone()))?;
                put_data(w, 4, &Data::Value(to.clone()))
            }
        }
    }
}

/// Writes `data` as the nested `NFTA_DATA_*` attribute `kind`.
pub(crate) fn put_data(w: &mut Writer, kind: u16, data: &Data) -> Result<(), TooLong> {
    let outer = w.open(kind);
    match data {
        Data::Value(bytes) => w.put(NFTA_DATA_VALUE, bytes)?,
        Data::Verdict(verdict) => {
            let inner = w.open(NFTA_DATA_VERDICT);
            w.put(NFTA_VERDICT_CODE, &verdict.code().to_be_bytes())?;
            if let Some(chain) = verdict.chain() {
                w.put_str(NFTA_VERDICT_CHAIN, chain)?;
            }
            w.close(inner)?;
        }
    }
    w.close(outer)
}

/// An address's bytes in network order.
pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A duration in the milliseconds nf_tables counts timeouts in.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn cmp_op(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Neq => 1,
    }
}
