//! The kernel's IPVS virtual servers and connection timeouts, programmed through its
//! generic-netlink family `IPVS`.
//!
//! Two layers:
//! - pure encoding and decoding ([`encode`], [`encode_family_request`], [`decode_services`],
//!   [`decode_dests`], [`decode_timeouts`]): byte-exact messages, golden-tested without a
//!   kernel;
//! - [`Ipvs`], a netlink socket opened inside one network namespace (from a thread that entered
//!   it, so the socket belongs to that namespace for its whole life), which resolves the family
//!   through the generic-netlink controller and sends one request at a time, waiting for the
//!   kernel's acknowledgement or the end of a dump.
//!
//! The layout follows `include/uapi/linux/ip_vs.h` and `genetlink.h`: a netlink header, a
//! generic-netlink header, then attributes (type, length, payload padded to four bytes), the
//! service and destination each nested in one attribute. Ports travel in network byte order,
//! everything else in host order. A service's address is sent as the 16 bytes of the kernel's
//! `nf_inet_addr` (an IPv4 address in the first four), as `ipvsadm` sends it.
//!
//! No crate is used for the wire format: the IPVS family has no Rust binding, and the generic
//! netlink crates (MIT) would need the same per-attribute code written against their traits;
//! the socket calls come from `nix`, which this crate already uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use crate::{KernelError, netns};

/// The generic-netlink family name of IPVS.
pub const FAMILY_NAME: &str = "IPVS";
/// The service flag for persistence (session affinity): `IP_VS_SVC_F_PERSISTENT`.
pub const FLAG_PERSISTENT: u32 = 0x0001;
/// The flag the kernel sets on every service it has hashed: `IP_VS_SVC_F_HASHED`.
pub const FLAG_HASHED: u32 = 0x0002;
/// The second scheduler flag (`sh-port` / `mh-port`): hash the source port too.
pub const FLAG_SOURCE_PORT_HASH: u32 = 0x0010;

/// The IPVS genl family version.
const IPVS_VERSION: u8 = 1;
/// The generic-netlink controller.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_VERSION: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
const CMD_SET_CONFIG: u8 = 12;
const CMD_GET_CONFIG: u8 = 13;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// `IP_VS_CONN_F_MASQ`: forward by NAT.
const FWD_MASQ: u32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// The kernel's limit on a scheduler name, its NUL included.
const SCHED_NAME_MAX: usize = 16;
const RECV_BUFFER: usize = 64 * 1024;

/// A virtual server's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpvsProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl IpvsProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            IpvsProtocol::Tcp => 6,
            IpvsProtocol::Udp => 17,
            IpvsProtocol::Sctp => 132,
        }
    }

    fn from_number(n: u16) -> Option<Self> {
        match n {
            6 => Some(IpvsProtocol::Tcp),
            17 => Some(IpvsProtocol::Udp),
            132 => Some(IpvsProtocol::Sctp),
            _ => None,
        }
    }
}

/// A virtual server: its identity (address, port, protocol) and parameters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpvsService {
    /// The virtual address.
    pub addr: IpAddr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: IpvsProtocol,
    /// The scheduler's name (`rr`, `wrr`, `sh`, `mh`, …; at most 15 bytes).
    pub scheduler: String,
    /// Service flags ([`FLAG_PERSISTENT`], [`FLAG_SOURCE_PORT_HASH`]; dumps also show
    /// [`FLAG_HASHED`]).
    pub flags: u32,
    /// The persistence timeout in seconds (with [`FLAG_PERSISTENT`]).
    pub timeout: u32,
}

/// A real server (destination) of a virtual server, forwarded to by NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpvsDest {
    /// The real server's address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its weight; 0 takes no new connections.
    pub weight: u32,
    /// The upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// The lower connection threshold (0: none).
    pub lower_threshold: u32,
}

/// A real server as the kernel lists it, with its connection counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestStatus {
    /// The real server.
    pub dest: IpvsDest,
    /// The forwarding method (`0` is masquerading).
    pub forward_method: u32,
    /// Established connections.
    pub active_connections: u32,
    /// Other connections (closing, or UDP).
    pub inactive_connections: u32,
}

/// The kernel's IPVS connection timeouts, in seconds (`ipvsadm --set TCP TCPFIN UDP`): how
/// long an established TCP connection, a TCP connection after its FIN, and a UDP flow stay
/// in the connection table without a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpvsTimeouts {
    /// Established TCP connections. In a request, 0 leaves the kernel's value.
    pub tcp: u32,
    /// TCP connections after a FIN. In a request, 0 leaves the kernel's value.
    pub tcp_fin: u32,
    /// UDP flows. In a request, 0 leaves the kernel's value.
    pub udp: u32,
}

/// One IPVS request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `IPVS_CMD_NEW_SERVICE`.
    NewService(&'a IpvsService),
    /// `IPVS_CMD_SET_SERVICE`: new parameters for an existing service.
    SetService(&'a IpvsService),
    /// `IPVS_CMD_DEL_SERVICE` (its destinations go with it).
    DelService(&'a IpvsService),
    /// `IPVS_CMD_NEW_DEST`.
    NewDest(&'a IpvsService, &'a IpvsDest),
    /// `IPVS_CMD_SET_DEST`: a new weight or thresholds.
    SetDest(&'a IpvsService, &'a IpvsDest),
    /// `IPVS_CMD_DEL_DEST`.
    DelDest(&'a IpvsService, &'a IpvsDest),
    /// `IPVS_CMD_GET_SERVICE` as a dump of every service.
    GetServices,
    /// `IPVS_CMD_GET_DEST` as a dump of one service's destinations.
    GetDests(&'a IpvsService),
    /// `IPVS_CMD_SET_CONFIG`: new connection timeouts (each 0 left as the kernel has it).
    SetConfig(&'a IpvsTimeouts),
    /// `IPVS_CMD_GET_CONFIG`: the connection timeouts.
    GetConfig,
}

/// The bytes of `request` for the IPVS family `family_id`, sequence number `seq`. Changes ask
/// for an acknowledgement; the two `Get` requests are dumps.
pub fn encode(request: &Request<'_>, family_id: u16, seq: u32) -> Vec<u8> {
    let (cmd, dump) = match request {
        Request::NewService(_) => (CMD_NEW_SERVICE, false),
        Request::SetService(_) => (CMD_SET_SERVICE, false),
        Request::DelService(_) => (CMD_DEL_SERVICE, false),
        Request::NewDest(..) => (CMD_NEW_DEST, false),
        Request::SetDest(..) => (CMD_SET_DEST, false),
        Request::DelDest(..) => (CMD_DEL_DEST, false),
        Request::GetServices => (CMD_GET_SERVICE, true),
        Request::GetDests(_) => (CMD_GET_DEST, true),
        Request::SetConfig(_) => (CMD_SET_CONFIG, false),
        Request::GetConfig => (CMD_GET_CONFIG, false),
    };
    let flags = if dump {
        NLM_F_REQUEST | NLM_F_DUMP
    } else {
        NLM_F_REQUEST | NLM_F_ACK
    };
    let mut m = Message::new(family_id, flags, seq, cmd, IPVS_VERSION);
    match request {
        Request::NewService(s) | Request::SetService(s) => service_attr(&mut m, s, true),
        Request::DelService(s) | Request::GetDests(s) => service_attr(&mut m, s, false),
        Request::NewDest(s, d) | Request::SetDest(s, d) => {
            service_attr(&mut m, s, false);
            dest_attr(&mut m, d, true);
        }
        Request::DelDest(s, d) => {
            service_attr(&mut m, s, false);
            dest_attr(&mut m, d, false);
        }
        Request::SetConfig(t) => {
            m.u32(CMD_ATTR_TIMEOUT_TCP, t.tcp);
            m.u32(CMD_ATTR_TIMEOUT_TCP_FIN, t.tcp_fin);
            m.u32(CMD_ATTR_TIMEOUT_UDP, t.udp);
        }
        Request::GetServices | Request::GetConfig => {}
    }
    m.finish()
}

/// The controller request that resolves [`FAMILY_NAME`] to its family id.
pub fn encode_family_request(seq: u32) -> Vec<u8> {
    let mut m = Message::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
    );
    m.string(CTRL_ATTR_FAMILY_NAME, FAMILY_NAME);
    m.finish()
}

/// The services in the payloads (generic-netlink header onwards) of a service dump.
pub fn decode_services(payloads: &[Vec<u8>]) -> Result<Vec<IpvsService>, KernelError> {
    payloads
        .iter()
        .map(|p| {
            let nested = top_attr(p, CMD_ATTR_SERVICE, "service dump")?;
            parse_service(nested)
        })
        .collect()
}

/// The destinations in the payloads (generic-netlink header onwards) of a dump of
/// `service`'s destinations.
pub fn decode_dests(
    payloads: &[Vec<u8>],
    service: &IpvsService,
) -> Result<Vec<DestStatus>, KernelError> {
    payloads
        .iter()
        .map(|p| {
            let nested = top_attr(p, CMD_ATTR_DEST, "destination dump")?;
            parse_dest(nested, af_of(service.addr))
        })
        .collect()
}

/// The timeouts in the payload (generic-netlink header onwards) of a `GET_CONFIG` reply.
pub fn decode_timeouts(payload: &[u8]) -> Result<IpvsTimeouts, KernelError> {
    let mut out = IpvsTimeouts::default();
    let mut seen = 0;
    for (kind, v) in attrs(payload.get(GENL_HDRLEN..).unwrap_or_default()) {
        let slot = match kind {
            CMD_ATTR_TIMEOUT_TCP => &mut out.tcp,
            CMD_ATTR_TIMEOUT_TCP_FIN => &mut out.tcp_fin,
            CMD_ATTR_TIMEOUT_UDP => &mut out.udp,
            _ => continue,
        };
        *slot = u32_of(v).ok_or_else(|| malformed("decode IPVS timeouts", "short timeout"))?;
        seen += 1;
    }
    if seen == 0 {
        return Err(malformed("decode IPVS timeouts", "reply without timeouts"));
    }
    Ok(out)
}

/// A netlink socket for IPVS inside one network namespace.
#[derive(Debug)]
pub struct Ipvs {
    fd: OwnedFd,
    family_id: u16,
    seq: u32,
    namespace: String,
}

impl Ipvs {
    /// Opens a socket inside the namespace `namespace` and resolves the IPVS family (the
    /// kernel loads `ip_vs` on that request if it can). Fails with
    /// [`KernelError::IpvsUnavailable`] when the kernel has no IPVS.
    pub fn open(namespace: &str) -> Result<Ipvs, KernelError> {
        let ns = namespace.to_owned();
        // The socket is created by a thread of its own that entered the namespace; the socket
        // stays in that namespace after the thread is gone.
        let fd = std::thread::spawn(move || -> Result<OwnedFd, KernelError> {
            netns::enter(&ns)?;
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkGeneric,
            )
            .map_err(|source| netlink_failed("open the netlink socket", source))?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
                .map_err(|source| netlink_failed("bind the netlink socket", source))?;
            Ok(fd)
        })
        .join()
        .map_err(|_| KernelError::NetlinkMalformed {
            operation: "open the netlink socket".to_owned(),
            reason: "the thread that entered the namespace panicked",
        })??;
        let mut ipvs = Ipvs {
            fd,
            family_id: 0,
            seq: 0,
            namespace: namespace.to_owned(),
        };
        let seq = ipvs.next_seq();
        let replies = ipvs
            .exchange(
                &encode_family_request(seq),
                seq,
                false,
                "resolve the IPVS family",
            )
            .map_err(|e| match e {
                KernelError::NetlinkRefused {
                    errno: Errno::ENOENT,
                    ..
                } => KernelError::IpvsUnavailable {
                    namespace: namespace.to_owned(),
                },
                other => other,
            })?;
        ipvs.family_id = replies
            .iter()
            .find_map(|p| attrs(p.get(GENL_HDRLEN..)?).find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID))
            .and_then(|(_, v)| u16_of(v))
            .ok_or_else(|| KernelError::NetlinkMalformed {
                operation: "resolve the IPVS family".to_owned(),
                reason: "the controller's reply has no family id",
            })?;
        Ok(ipvs)
    }

    /// The namespace the socket lives in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The IPVS family's id in this kernel.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// Adds a virtual server.
    pub fn add_service(&mut self, service: &IpvsService) -> Result<(), KernelError> {
        self.change(&Request::NewService(service), "add an IPVS service")
    }

    /// Changes an existing virtual server's scheduler, flags or timeout.
    pub fn update_service(&mut self, service: &IpvsService) -> Result<(), KernelError> {
        self.change(&Request::SetService(service), "update an IPVS service")
    }

    /// Deletes a virtual server and its real servers.
    pub fn delete_service(&mut self, service: &IpvsService) -> Result<(), KernelError> {
        self.change(&Request::DelService(service), "delete an IPVS service")
    }

    /// Adds a real server to a virtual server.
    pub fn add_dest(&mut self, service: &IpvsService, dest: &IpvsDest) -> Result<(), KernelError> {
        self.change(&Request::NewDest(service, dest), "add an IPVS destination")
    }

    /// Changes a real server's weight or thresholds (weight 0 drains it).
    pub fn update_dest(
        &mut self,
        service: &IpvsService,
        dest: &IpvsDest,
    ) -> Result<(), KernelError> {
        self.change(
            &Request::SetDest(service, dest),
            "update an IPVS destination",
        )
    }

    /// Deletes a real server.
    pub fn delete_dest(
        &mut self,
        service: &IpvsService,
        dest: &IpvsDest,
    ) -> Result<(), KernelError> {
        self.change(
            &Request::DelDest(service, dest),
            "delete an IPVS destination",
        )
    }

    /// Every virtual server, sorted.
    pub fn services(&mut self) -> Result<Vec<IpvsService>, KernelError> {
        let seq = self.next_seq();
        let msg = encode(&Request::GetServices, self.family_id, seq);
        let payloads = self.exchange(&msg, seq, true, "list IPVS services")?;
        let mut services = decode_services(&payloads)?;
        services.sort();
        Ok(services)
    }

    /// The real servers of one virtual server, sorted by address and port.
    pub fn dests(&mut self, service: &IpvsService) -> Result<Vec<DestStatus>, KernelError> {
        let seq = self.next_seq();
        let msg = encode(&Request::GetDests(service), self.family_id, seq);
        let payloads = self.exchange(&msg, seq, true, "list IPVS destinations")?;
        let mut dests = decode_dests(&payloads, service)?;
        dests.sort_by_key(|d| (d.dest.addr, d.dest.port));
        Ok(dests)
    }

    /// Sets the connection timeouts (`ipvsadm --set`); a 0 leaves that one as it is.
    pub fn set_timeouts(&mut self, timeouts: &IpvsTimeouts) -> Result<(), KernelError> {
        self.change(&Request::SetConfig(timeouts), "set IPVS timeouts")
    }

    /// The connection timeouts (`ipvsadm -L --timeout`).
    pub fn timeouts(&mut self) -> Result<IpvsTimeouts, KernelError> {
        const OP: &str = "read IPVS timeouts";
        let seq = self.next_seq();
        let msg = encode(&Request::GetConfig, self.family_id, seq);
        let payloads = self.exchange(&msg, seq, false, OP)?;
        let reply = payloads
            .first()
            .ok_or_else(|| malformed(OP, "no reply before the acknowledgement"))?;
        decode_timeouts(reply)
    }

    fn change(&mut self, request: &Request<'_>, operation: &str) -> Result<(), KernelError> {
        let seq = self.next_seq();
        let msg = encode(request, self.family_id, seq);
        self.exchange(&msg, seq, false, operation).map(drop)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` and collects the payloads of the replies to `seq` until the
    /// acknowledgement (or, for a dump, `NLMSG_DONE`).
    fn exchange(
        &mut self,
        msg: &[u8],
        seq: u32,
        dump: bool,
        operation: &str,
    ) -> Result<Vec<Vec<u8>>, KernelError> {
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty())
            .map_err(|source| netlink_failed(operation, source))?;
        let mut payloads = Vec::new();
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|source| netlink_failed(operation, source))?;
            let bytes = buf.get(..n).unwrap_or_default();
            for (kind, reply_seq, payload) in messages(bytes, operation)? {
                if reply_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(payloads),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .ok_or_else(|| malformed(operation, "short error message"))?;
                        if code == 0 {
                            if dump {
                                continue;
                            }
                            return Ok(payloads);
                        }
                        return Err(KernelError::NetlinkRefused {
                            operation: operation.to_owned(),
                            namespace: self.namespace.clone(),
                            errno: Errno::from_raw(code.saturating_neg()),
                        });
                    }
                    _ => payloads.push(payload.to_vec()),
                }
            }
        }
    }
}

fn netlink_failed(operation: &str, source: Errno) -> KernelError {
    KernelError::NetlinkFailed {
        operation: operation.to_owned(),
        source,
    }
}

fn malformed(operation: &str, reason: &'static str) -> KernelError {
    KernelError::NetlinkMalformed {
        operation: operation.to_owned(),
        reason,
    }
}

/// A netlink message being built: headers first, lengths patched in at the end.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Message {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        // Port id 0: the kernel fills in the socket's.
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        // Attribute payloads here are at most a few dozen bytes.
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn u16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn be16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn string(&mut self, kind: u16, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn nest_start(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn nest_end(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn af_of(ip: IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The 16 bytes of `nf_inet_addr`.
fn inet_addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn service_attr(m: &mut Message, s: &IpvsService, full: bool) {
    m.nest_start(CMD_ATTR_SERVICE);
    m.u16(SVC_ATTR_AF, af_of(s.addr));
    m.u16(SVC_ATTR_PROTOCOL, s.protocol.number());
    m.attr(SVC_ATTR_ADDR, &inet_addr(s.addr));
    m.be16(SVC_ATTR_PORT, s.port);
    if full {
        let mut name = s.scheduler.clone();
        name.truncate(SCHED_NAME_MAX - 1);
        m.string(SVC_ATTR_SCHED_NAME, &name);
        let mut flags = s.flags.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        m.attr(SVC_ATTR_FLAGS, &flags);
        m.u32(SVC_ATTR_TIMEOUT, s.timeout);
        // One service per address: a full-length mask (a prefix length for IPv6).
        let netmask = match s.addr {
            IpAddr::V4(_) => u32::MAX,
            IpAddr::V6(_) => 128,
        };
        m.u32(SVC_ATTR_NETMASK, netmask);
    }
    m.nest_end();
}

fn dest_attr(m: &mut Message, d: &IpvsDest, full: bool) {
    m.nest_start(CMD_ATTR_DEST);
    m.attr(DEST_ATTR_ADDR, &inet_addr(d.addr));
    m.be16(DEST_ATTR_PORT, d.port);
    if full {
        m.u32(DEST_ATTR_FWD_METHOD, FWD_MASQ);
        m.u32(DEST_ATTR_WEIGHT, d.weight);
        m.u32(DEST_ATTR_U_THRESH, d.upper_threshold);
        m.u32(DEST_ATTR_L_THRESH, d.lower_threshold);
    }
    m.u16(DEST_ATTR_ADDR_FAMILY, af_of(d.addr));
    m.nest_end();
}

/// One received netlink message: type, sequence number, payload after the netlink header.
type Received<'a> = (u16, u32, &'a [u8]);

/// The messages in one datagram.
fn messages<'a>(mut bytes: &'a [u8], operation: &str) -> Result<Vec<Received<'a>>, KernelError> {
    let mut out = Vec::new();
    while bytes.len() >= NLMSG_HDRLEN {
        let len = u32_of(&bytes[..4]).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return Err(malformed(operation, "netlink message length out of bounds"));
        }
        let kind = u16_of(&bytes[4..6]).unwrap_or(0);
        let seq = u32_of(&bytes[8..12]).unwrap_or(0);
        out.push((kind, seq, &bytes[NLMSG_HDRLEN..len]));
        let next = (len + 3) & !3;
        bytes = bytes.get(next..).unwrap_or_default();
    }
    Ok(out)
}

/// The attributes in `bytes`: (type without flags, payload).
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16_of(&bytes[..2])?);
        let kind = u16_of(&bytes[2..4])? & NLA_TYPE_MASK;
        let payload = bytes.get(4..len)?;
        bytes = bytes.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, payload))
    })
}

fn top_attr<'a>(payload: &'a [u8], kind: u16, operation: &str) -> Result<&'a [u8], KernelError> {
    payload
        .get(GENL_HDRLEN..)
        .and_then(|b| attrs(b).find(|(t, _)| *t == kind).map(|(_, v)| v))
        .ok_or_else(|| malformed(operation, "reply without its nested attribute"))
}

fn u16_of(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn be16_of(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn ip_of(af: u16, b: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => {
            let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        AF_INET6 => {
            let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn parse_service(nested: &[u8]) -> Result<IpvsService, KernelError> {
    const OP: &str = "decode an IPVS service";
    let mut af = None;
    let mut protocol = None;
    let mut addr = None;
    let mut port = None;
    let mut scheduler = String::new();
    let mut flags = 0;
    let mut timeout = 0;
    for (kind, v) in attrs(nested) {
        match kind {
            SVC_ATTR_AF => af = u16_of(v),
            SVC_ATTR_PROTOCOL => protocol = u16_of(v).and_then(IpvsProtocol::from_number),
            SVC_ATTR_ADDR => addr = Some(v),
            SVC_ATTR_PORT => port = be16_of(v),
            SVC_ATTR_SCHED_NAME => {
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                scheduler = String::from_utf8_lossy(&v[..end]).into_owned();
            }
            SVC_ATTR_FLAGS => flags = u32_of(v).unwrap_or(0),
            SVC_ATTR_TIMEOUT => timeout = u32_of(v).unwrap_or(0),
            _ => {}
        }
    }
    let af = af.ok_or_else(|| malformed(OP, "no address family"))?;
    Ok(IpvsService {
        addr: addr
            .and_then(|b| ip_of(af, b))
            .ok_or_else(|| malformed(OP, "no address"))?,
        port: port.ok_or_else(|| malformed(OP, "no port"))?,
        protocol: protocol.ok_or_else(|| malformed(OP, "no known protocol"))?,
        scheduler,
        flags,
        timeout,
    })
}

fn parse_dest(nested: &[u8], service_af: u16) -> Result<DestStatus, KernelError> {
    const OP: &str = "decode an IPVS destination";
    let mut af = None;
    let mut addr = None;
    let mut port = None;
    let mut status = DestStatus {
        dest: IpvsDest {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            weight: 0,
            upper_threshold: 0,
            lower_threshold: 0,
        },
        forward_method: 0,
        active_connections: 0,
        inactive_connections: 0,
    };
    for (kind, v) in attrs(nested) {
        let n = u32_of(v).unwrap_or(0);
        match kind {
            DEST_ATTR_ADDR => addr = Some(v),
            DEST_ATTR_PORT => port = be16_of(v),
            DEST_ATTR_FWD_METHOD => status.forward_method = n,
            DEST_ATTR_WEIGHT => status.dest.weight = n,
            DEST_ATTR_U_THRESH => status.dest.upper_threshold = n,
            DEST_ATTR_L_THRESH => status.dest.lower_threshold = n,
            DEST_ATTR_ACTIVE_CONNS => status.active_connections = n,
            DEST_ATTR_INACT_CONNS => status.inactive_connections = n,
            DEST_ATTR_ADDR_FAMILY => af = u16_of(v),
            _ => {}
        }
    }
    // Kernels before the address-family attribute (4.14) only had destinations of the
    // service's family.
    let af = af.unwrap_or(service_af);
    status.dest.addr = addr
        .and_then(|b| ip_of(af, b))
        .ok_or_else(|| malformed(OP, "no address"))?;
    status.dest.port = port.ok_or_else(|| malformed(OP, "no port"))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|line| {
                line.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn service() -> IpvsService {
        IpvsService {
            addr: "10.96.0.10".parse().expect("ip"),
            port: 53,
            protocol: IpvsProtocol::Udp,
            scheduler: "rr".to_owned(),
            flags: FLAG_PERSISTENT,
            timeout: 10800,
        }
    }

    fn dest() -> IpvsDest {
        IpvsDest {
            addr: "10.244.1.2".parse().expect("ip"),
            port: 5353,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// Golden bytes of every request (x86-64 byte order), family id 0x24, sequence 7:
    /// `UPDATE_GOLDEN=1` rewrites `tests/golden/ipvs-messages.hex`.
    #[test]
    fn messages_match_golden_bytes() {
        let s = service();
        let d = dest();
        let v6 = IpvsService {
            addr: "fd00:96::a".parse().expect("ip"),
            port: 443,
            protocol: IpvsProtocol::Tcp,
            scheduler: "mh".to_owned(),
            flags: FLAG_SOURCE_PORT_HASH,
            timeout: 0,
        };
        let timeouts = IpvsTimeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 0,
        };
        let cases: [(&str, Vec<u8>); 12] = [
            ("ctrl getfamily IPVS", encode_family_request(7)),
            ("new service", encode(&Request::NewService(&s), 0x24, 7)),
            (
                "new service ipv6 mh",
                encode(&Request::NewService(&v6), 0x24, 7),
            ),
            ("set service", encode(&Request::SetService(&s), 0x24, 7)),
            ("del service", encode(&Request::DelService(&s), 0x24, 7)),
            ("new dest", encode(&Request::NewDest(&s, &d), 0x24, 7)),
            ("set dest", encode(&Request::SetDest(&s, &d), 0x24, 7)),
            ("del dest", encode(&Request::DelDest(&s, &d), 0x24, 7)),
            (
                "get services (dump)",
                encode(&Request::GetServices, 0x24, 7),
            ),
            ("get dests (dump)", encode(&Request::GetDests(&s), 0x24, 7)),
            (
                "set config (timeouts)",
                encode(&Request::SetConfig(&timeouts), 0x24, 7),
            ),
            ("get config", encode(&Request::GetConfig, 0x24, 7)),
        ];
        let mut got = String::new();
        for (name, bytes) in &cases {
            got.push_str(&format!("# {name}\n{}\n", hex(bytes)));
        }
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ipvs-messages.hex");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &got).expect("write golden");
            return;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(got, want, "UPDATE_GOLDEN=1 to accept");
    }

    #[test]
    fn header_fields_are_where_the_kernel_reads_them() {
        let m = encode(&Request::NewService(&service()), 0x24, 7);
        assert_eq!(u32_of(&m[0..4]), u32::try_from(m.len()).ok());
        assert_eq!(u16_of(&m[4..6]), Some(0x24));
        assert_eq!(u16_of(&m[6..8]), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_of(&m[8..12]), Some(7));
        assert_eq!(&m[16..18], &[CMD_NEW_SERVICE, IPVS_VERSION]);
        assert!(m.len().is_multiple_of(4));
        let dump = encode(&Request::GetServices, 0x24, 9);
        assert_eq!(dump.len(), NLMSG_HDRLEN + GENL_HDRLEN);
        assert_eq!(u16_of(&dump[6..8]), Some(NLM_F_REQUEST | NLM_F_DUMP));
    }

    /// A dump reply is what a request carries, nested the same way: decoding what we encode
    /// gives the values back.
    #[test]
    fn services_and_dests_decode_from_reply_payloads() {
        let s = service();
        let d = dest();
        let svc_reply = encode(&Request::NewService(&s), 0x24, 1);
        let dest_reply = encode(&Request::NewDest(&s, &d), 0x24, 1);
        let payload = |m: &[u8]| m[NLMSG_HDRLEN..].to_vec();
        let services = decode_services(&[payload(&svc_reply)]).expect("services");
        assert_eq!(services, std::slice::from_ref(&s));
        let dests = decode_dests(&[payload(&dest_reply)], &s).expect("dests");
        assert_eq!(dests.len(), 1);
        assert_eq!(dests[0].dest, d);
        assert_eq!(dests[0].forward_method, FWD_MASQ);
        assert!(matches!(
            decode_services(&[vec![0, 0, 0, 0]]),
            Err(KernelError::NetlinkMalformed { .. })
        ));
    }

    /// A `GET_CONFIG` reply carries the three attributes a `SET_CONFIG` sends.
    #[test]
    fn timeouts_decode_from_a_config_reply() {
        let t = IpvsTimeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300,
        };
        let reply = encode(&Request::SetConfig(&t), 0x24, 1);
        assert_eq!(
            decode_timeouts(&reply[NLMSG_HDRLEN..]).expect("timeouts"),
            t
        );
        let empty = encode(&Request::GetConfig, 0x24, 1);
        assert!(matches!(
            decode_timeouts(&empty[NLMSG_HDRLEN..]),
            Err(KernelError::NetlinkMalformed { .. })
        ));
    }

    #[test]
    fn datagrams_split_into_messages_and_bad_lengths_are_refused() {
        let a = encode(&Request::GetServices, 0x24, 1);
        let b = encode(&Request::DelService(&service()), 0x24, 2);
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let msgs = messages(&both, "test").expect("messages");
        assert_eq!(
            msgs.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(0x24, 1), (0x24, 2)]
        );
        let mut bad = a;
        bad[0] = 200;
        assert!(messages(&bad, "test").is_err());
    }
}
