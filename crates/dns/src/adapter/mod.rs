//! The hickory adapter: answers DNS messages from the [`Zone`] and forwards the rest.
//!
//! hickory's types stay in this module. [`Handler`] implements hickory-server's
//! `RequestHandler`: one question per message, class IN, opcode QUERY; names the zone is
//! authoritative for are answered from it (AA set), others go to the upstream resolvers
//! through a TTL cache, and an ExternalName alias leaving the zone is chased upstream as
//! CoreDNS does. Truncation (TC) follows the client's EDNS payload size, or 512 bytes.

mod forward;

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::net::TcpListener;

pub use forward::{CacheConfig, ForwardConfig};

use crate::metrics::{Metrics, RequestSample, rcode_str};
use crate::zone::{self, DomainName, Question, Rcode, RecordData, RecordType, Zone};
pub(crate) use forward::Forwarder;
use forward::{ForwardError, Upstream};

/// The transport a message arrived on: it decides whether responses are truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: responses fit the client's EDNS payload size (512 bytes without EDNS).
    Udp,
    /// TCP: responses up to 65535 bytes.
    Tcp,
}

/// The largest UDP payload we answer with, whatever the client offers.
const MAX_UDP_PAYLOAD: u16 = 4096;

/// The zone being served, shared by the request handler (readers) and whatever updates it
/// (one writer: a change is applied in place, a rebuilt zone replaces the old one).
///
/// Answers are computed under a read lock held for the lookup only, never across an
/// `await`; a change takes the write lock for the microseconds [`Zone::apply`] takes.
#[derive(Clone, Debug)]
pub struct SharedZone(Arc<RwLock<Zone>>);

impl SharedZone {
    /// Shares `zone`.
    pub fn new(zone: Zone) -> Self {
        SharedZone(Arc::new(RwLock::new(zone)))
    }

    /// Runs `f` on the current zone.
    pub fn read<R>(&self, f: impl FnOnce(&Zone) -> R) -> R {
        // A panic while writing leaves a zone that was valid before or after the change
        // (every change is applied whole or not at all), so a poisoned lock is still read.
        let zone = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f(&zone)
    }

    /// Runs `f` on the zone, exclusively.
    pub fn update<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> R {
        let mut zone = self.0.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut zone)
    }

    /// Replaces the zone; the old one is dropped outside the lock.
    pub fn replace(&self, zone: Zone) -> Zone {
        self.update(|current| std::mem::replace(current, zone))
    }
}

/// Answers DNS requests: from the current zone, or forwarded upstream. Clones share the
/// zone, the forwarder's cache and the metrics.
#[derive(Clone)]
pub struct Handler {
    zone: SharedZone,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
    /// False until the zone reflects a complete view of the cluster: cluster names get
    /// SERVFAIL until then.
    synced: Arc<AtomicBool>,
}

impl Handler {
    /// A handler answering from whatever zone `zone` holds at each request.
    pub fn new(zone: SharedZone, forward: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            zone,
            forwarder: Arc::new(Forwarder::new(forward, metrics.clone())),
            metrics,
            synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Answers cluster names only while `synced` holds, SERVFAIL otherwise (forwarding goes
    /// on): for a server whose zone is not built from a complete view yet.
    pub(crate) fn gated(mut self, synced: Arc<AtomicBool>) -> Self {
        self.synced = synced;
        self
    }

    /// The forwarder, for the loop check at start.
    pub(crate) fn forwarder(&self) -> Arc<Forwarder> {
        self.forwarder.clone()
    }

    /// Answers one DNS message given as bytes, exactly as the server would on `transport`:
    /// `None` when the server would not answer (fewer than 12 bytes, or a response),
    /// FORMERR when the message is malformed, else the response. The entry point of the
    /// fuzz target and of tests without sockets.
    pub async fn answer_bytes(&self, message: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let request = match Request::from_bytes(message.to_vec(), src, protocol) {
            Ok(request) => request,
            Err(_) => return formerr(message),
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let capture = Capture {
            transport,
            out: Arc::new(Mutex::new(None)),
        };
        self.handle_request::<_, TokioTime>(&request, capture.clone())
            .await;
        capture.out.lock().ok()?.take()
    }

    async fn reply(&self, request: &Request) -> Reply {
        match self.local_reply(request) {
            Local::Done(reply) => reply,
            Local::Forward(reply) => {
                let [query] = request.queries.queries() else {
                    return reply.error(ResponseCode::FormErr);
                };
                match self.forward(query.original()).await {
                    Ok(upstream) => reply.upstream(upstream),
                    Err(e) => {
                        tracing::debug!(name = %query.name(), error = %e, "forwarding failed");
                        reply.error(ResponseCode::ServFail)
                    }
                }
            }
            Local::Chase(mut reply, target) => {
                if let [query] = request.queries.queries() {
                    self.chase_alias(&target, query.original(), &mut reply)
                        .await;
                }
                reply
            }
        }
    }

    /// What can be answered without waiting: everything from the zone; for the rest, what
    /// is still to be asked upstream.
    fn local_reply(&self, request: &Request) -> Local {
        let mut reply = Reply::new(request);
        if request.metadata.op_code != OpCode::Query {
            return Local::Done(reply.error(ResponseCode::NotImp));
        }
        let [query] = request.queries.queries() else {
            return Local::Done(reply.error(ResponseCode::FormErr));
        };
        reply.qtype = RecordType::from_code(u16::from(query.query_type())).as_str();
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Local::Done(reply.error(ResponseCode::BADVERS));
        }
        if query.query_class() != DNSClass::IN {
            return Local::Done(reply.error(ResponseCode::Refused));
        }
        let qtype = RecordType::from_code(u16::from(query.query_type()));
        let qname = zone_text(query.original().name());
        let question = Question::new(qname, qtype);
        let (answer, alias) = self.zone.read(|zone| {
            let answer = zone.answer(&question);
            let alias = alias_out_of_zone(zone, &answer);
            (answer, alias)
        });
        let qname = question.name;
        reply.authoritative = answer.authoritative;
        if answer.authoritative && !self.synced.load(Ordering::Acquire) {
            return Local::Done(reply.error(ResponseCode::ServFail));
        }
        if !answer.authoritative {
            return Local::Forward(reply);
        }
        reply.metadata.authoritative = true;
        reply.metadata.response_code = match answer.rcode {
            Rcode::NoError => ResponseCode::NoError,
            Rcode::NxDomain => ResponseCode::NXDomain,
            Rcode::Refused => ResponseCode::Refused,
        };
        // Answers for the question's own name keep the client's spelling (0x20 case).
        let owner = query.original().name();
        let asked = qname.as_str();
        let convert = |records: &[zone::Record]| -> Option<Vec<Record>> {
            records
                .iter()
                .map(|r| to_record(r, (r.name.as_str() == asked).then_some(owner)))
                .collect()
        };
        let (Some(answers), Some(authorities), Some(additionals)) = (
            convert(&answer.answers),
            convert(&answer.authority),
            convert(&answer.additional),
        ) else {
            return Local::Done(reply.error(ResponseCode::ServFail));
        };
        reply.answers = answers;
        reply.authorities = authorities;
        reply.additionals = additionals;
        match alias {
            Some(target) => Local::Chase(reply, target),
            None => Local::Done(reply),
        }
    }

    /// Answers a UDP message without waiting when the zone answers it (the fast path of
    /// the UDP workers): `Ready` with the response bytes, `Ignore` for what gets no answer,
    /// `Wait` with the parsed request when it must go upstream.
    fn answer_udp_now(&self, message: &[u8], src: SocketAddr) -> UdpAnswer {
        let started = Instant::now();
        let request = match Request::from_bytes(message.to_vec(), src, Protocol::Udp) {
            Ok(request) => request,
            Err(_) => return formerr(message).map_or(UdpAnswer::Ignore, UdpAnswer::Ready),
        };
        if request.metadata.message_type == MessageType::Response {
            return UdpAnswer::Ignore;
        }
        let reply = match self.local_reply(&request) {
            Local::Done(reply) => reply,
            Local::Forward(_) | Local::Chase(..) => return UdpAnswer::Wait(Box::new(request)),
        };
        match encode(&request, &reply, Transport::Udp) {
            Ok((bytes, code)) => {
                self.metrics.observe_request(&RequestSample {
                    authoritative: reply.authoritative,
                    tcp: false,
                    ipv6: src.is_ipv6(),
                    qtype: reply.qtype,
                    rcode: rcode_str(code),
                    elapsed: started.elapsed(),
                });
                UdpAnswer::Ready(bytes)
            }
            Err(e) => {
                tracing::debug!(error = %e, "encoding a response failed");
                UdpAnswer::Ignore
            }
        }
    }

    /// Answers a UDP request that waits for upstream, as [`Handler::answer_bytes`] would.
    async fn answer_udp_later(&self, request: &Request) -> Option<Vec<u8>> {
        let capture = Capture {
            transport: Transport::Udp,
            out: Arc::new(Mutex::new(None)),
        };
        self.handle_request::<_, TokioTime>(request, capture.clone())
            .await;
        capture.out.lock().ok()?.take()
    }

    /// An answer ending in an alias out of the zone (an ExternalName Service) gets the
    /// target's records from upstream appended, as CoreDNS does.
    async fn chase_alias(&self, target: &DomainName, query: &Query, reply: &mut Reply) {
        let Ok(target) = to_name(target) else { return };
        let chased = Query::query(target, query.query_type());
        match self.forward(&chased).await {
            Ok(upstream) => {
                reply.answers.extend(upstream.answers);
                reply.metadata.response_code = upstream.rcode;
            }
            Err(e) => tracing::debug!(error = %e, "chasing an alias upstream failed"),
        }
    }

    async fn forward(&self, query: &Query) -> Result<Upstream, ForwardError> {
        self.forwarder.resolve(query).await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let reply = self.reply(request).await;
        let qtype = reply.qtype;
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let message = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let info = match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a response failed");
                let mut metadata = reply.metadata;
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics.observe_request(&RequestSample {
            authoritative: reply.authoritative,
            tcp: request.protocol() == Protocol::Tcp,
            ipv6: request.src().is_ipv6(),
            qtype,
            rcode: rcode_str(info.response_code),
            elapsed: started.elapsed(),
        });
        info
    }
}

/// The target of the alias an answer ends in, when the zone does not answer for it.
fn alias_out_of_zone(zone: &Zone, answer: &zone::Answer) -> Option<DomainName> {
    let Some(zone::Record {
        data: RecordData::Cname(target),
        ..
    }) = answer.answers.last()
    else {
        return None;
    };
    (answer.rcode == Rcode::NoError && !zone.is_authoritative(target.as_str()))
        .then(|| target.clone())
}

/// A response being put together.
struct Reply {
    metadata: Metadata,
    qtype: &'static str,
    /// Whether the name is in a zone the server is authoritative for.
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn new(request: &Request) -> Self {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        Self {
            metadata,
            qtype: "other",
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn error(mut self, code: ResponseCode) -> Self {
        self.metadata.response_code = code;
        self.answers.clear();
        self.authorities.clear();
        self.additionals.clear();
        self
    }

    fn upstream(mut self, upstream: Upstream) -> Self {
        self.metadata.response_code = upstream.rcode;
        self.answers = upstream.answers;
        self.authorities = upstream.authorities;
        self.additionals = upstream.additionals;
        self
    }
}

/// Collects the encoded response instead of sending it, for [`Handler::answer_bytes`].
#[derive(Clone)]
struct Capture {
    transport: Transport,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (bytes, info) = emit(response, self.transport)?;
        if let Ok(mut out) = self.out.lock() {
            *out = Some(bytes);
        }
        Ok(info)
    }
}

/// What the UDP fast path does with a message.
enum UdpAnswer {
    /// Send these bytes.
    Ready(Vec<u8>),
    /// Send nothing.
    Ignore,
    /// Answer once upstream has.
    Wait(Box<Request>),
}

/// A reply as far as it can be made without waiting.
enum Local {
    /// Complete.
    Done(Reply),
    /// To be forwarded upstream.
    Forward(Reply),
    /// From the zone, ending in an alias whose target upstream must resolve.
    Chase(Reply, DomainName),
}

/// Encodes a reply to `request` as hickory's server would on `transport` (EDNS echoed,
/// truncated to the client's payload size over UDP).
fn encode(
    request: &Request,
    reply: &Reply,
    transport: Transport,
) -> Result<(Vec<u8>, ResponseCode), NetError> {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let message = builder.build(
        reply.metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        reply.additionals.iter(),
    );
    let (bytes, info) = emit(message, transport)?;
    Ok((bytes, info.response_code))
}

/// The EDNS of a response: the client's payload size, within bounds.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|asked| {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        edns
    })
}

/// Emits a response with the size limit hickory's server applies for the transport.
fn emit<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    transport: Transport,
) -> Result<(Vec<u8>, ResponseInfo), NetError> {
    let max = match transport {
        Transport::Udp => response.edns().map_or(512, Edns::max_payload),
        Transport::Tcp => u16::MAX,
    };
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max);
    let info = response.destructive_emit(&mut encoder)?;
    Ok((bytes, info))
}

/// FORMERR for a message whose header parses but whose body does not, as hickory's server
/// answers; nothing for fewer than 12 bytes.
fn formerr(message: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    hickory_proto::serialize::binary::BinEncodable::emit(
        &Header {
            metadata,
            counts: HeaderCounts::default(),
        },
        &mut encoder,
    )
    .ok()?;
    Some(bytes)
}

/// A wire name as the zone spells names: lower-case labels joined by dots. A label with
/// other bytes than letters, digits, `-` and `_` cannot name anything in the zone; hickory's
/// escaped text stands in for the whole name then (it still falls in the right zone).
fn zone_text(name: &Name) -> String {
    let plain = |label: &[u8]| {
        label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    if !name.iter().all(plain) {
        return name.to_string();
    }
    // One allocation: this runs for every query.
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    text
}

/// The wire name of a zone name. Raw labels: hickory's text parser refuses labels starting
/// with `-`, which dashed IPv6 addresses (`--1` for `::1`) have.
fn to_name(name: &zone::DomainName) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_labels(name.as_str().split('.').map(str::as_bytes))?;
    name.set_fqdn(true);
    Ok(name)
}

fn to_record(record: &zone::Record, owner: Option<&Name>) -> Option<Record> {
    let name = match owner {
        Some(owner) => owner.clone(),
        None => to_name(&record.name).ok()?,
    };
    let data = match &record.data {
        RecordData::A(ip) => RData::A(A(*ip)),
        RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        RecordData::Cname(target) => RData::CNAME(CNAME(to_name(target).ok()?)),
        RecordData::Ns(target) => RData::NS(NS(to_name(target).ok()?)),
        RecordData::Ptr(target) => RData::PTR(PTR(to_name(target).ok()?)),
        RecordData::Srv(srv) => RData::SRV(SRV::new(
            srv.priority,
            srv.weight,
            srv.port,
            to_name(&srv.target).ok()?,
        )),
        RecordData::Txt(text) => RData::TXT(TXT::new(vec![text.clone()])),
        RecordData::Soa(soa) => RData::SOA(SOA::new(
            to_name(&soa.mname).ok()?,
            to_name(&soa.rname).ok()?,
            soa.serial,
            i32::try_from(soa.refresh).ok()?,
            i32::try_from(soa.retry).ok()?,
            i32::try_from(soa.expire).ok()?,
            soa.minimum,
        )),
    };
    Some(Record::from_rdata(name, record.ttl, data))
}

/// The running UDP and TCP front end: UDP worker threads of our own (one per socket,
/// answering from the zone in a blocking receive loop, without a task or a reactor wake-up
/// per query), TCP through hickory's server.
pub(crate) struct Frontend {
    server: Server<Handler>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    failed: tokio::sync::mpsc::UnboundedReceiver<std::io::Error>,
}

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The largest UDP message read; longer ones are cut there and answered FORMERR.
const UDP_RECEIVE: usize = 4096;

/// How often a UDP worker waiting for a query checks whether to stop.
const UDP_STOP_CHECK: Duration = Duration::from_millis(100);

impl Frontend {
    /// Starts serving `handler` on bound sockets: one UDP worker thread per socket (handles
    /// of one socket, so that whichever worker is idle reads the next queries). Called
    /// within a tokio runtime, which runs TCP and the questions that go upstream.
    pub(crate) fn start(
        handler: Handler,
        udp: Vec<std::net::UdpSocket>,
        tcp: TcpListener,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let (report, failed) = tokio::sync::mpsc::unbounded_channel();
        let mut workers = Vec::new();
        for (i, socket) in udp.into_iter().enumerate() {
            socket.set_read_timeout(Some(UDP_STOP_CHECK))?;
            let worker = UdpWorker {
                socket: Arc::new(socket),
                handler: handler.clone(),
                runtime: runtime.clone(),
                stop: stop.clone(),
            };
            let report = report.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || {
                        if let Some(e) = worker.run() {
                            let _ = report.send(e);
                        }
                    })?,
            );
        }
        let mut server = Server::new(handler);
        server.register_listener(tcp, TCP_IDLE, 64);
        Ok(Self {
            server,
            workers,
            stop,
            failed,
        })
    }

    /// Runs until the sockets fail; an error says why.
    pub(crate) async fn wait(&mut self) -> std::io::Error {
        tokio::select! {
            done = self.server.block_until_done() => match done {
                Ok(()) => std::io::Error::other("the DNS listeners closed"),
                Err(e) => std::io::Error::other(e),
            },
            Some(e) = self.failed.recv() => e,
        }
    }

    /// Stops accepting requests and waits for the running TCP ones and the UDP workers;
    /// UDP questions waiting for upstream are dropped (clients retry).
    pub(crate) async fn shutdown(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Release);
        let workers = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                // A worker that panicked has nothing left to stop.
                let _ = worker.join();
            }
        });
        let served = self
            .server
            .shutdown_gracefully()
            .await
            .map_err(std::io::Error::other);
        joined.await.map_err(std::io::Error::other)?;
        served
    }
}

/// One UDP worker thread and what it answers with.
struct UdpWorker {
    socket: Arc<std::net::UdpSocket>,
    handler: Handler,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

impl UdpWorker {
    /// Answers from the zone inline, and spawns a task only for questions that go
    /// upstream. Returns when told to stop, or the error the socket failed with.
    ///
    /// Queries are read [`UDP_BATCH`] at a time with `recvmmsg` (waiting for the first
    /// only, so a lone query is answered at once) and the answers to one batch written
    /// with one `sendmmsg`: two system calls per batch instead of two per query.
    fn run(self) -> Option<std::io::Error> {
        use std::io::ErrorKind;
        let mut batch = Batch::new();
        let mut answers = Vec::with_capacity(UDP_BATCH);
        while !self.stop.load(Ordering::Acquire) {
            let received = match batch.receive(&self.socket) {
                Ok(received) => received,
                // The stop check's timeout; an ICMP error for an earlier response, or a
                // signal: the socket is fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock
                            | ErrorKind::TimedOut
                            | ErrorKind::ConnectionRefused
                            | ErrorKind::ConnectionReset
                            | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Some(e),
            };
            for (message, datagram) in batch.buffers.iter().zip(&batch.received[..received]) {
                // No answer can reach port 0, and answering it would be a reflection
                // vector; a datagram without a sender has no one to answer.
                let Some(peer) = datagram.peer.filter(|peer| peer.port() != 0) else {
                    continue;
                };
                let message = &message[..datagram.len];
                // Cut at UDP_RECEIVE: what is left cannot be the message the client sent.
                let answer = if datagram.truncated {
                    formerr(message).map_or(UdpAnswer::Ignore, UdpAnswer::Ready)
                } else {
                    self.handler.answer_udp_now(message, peer)
                };
                match answer {
                    UdpAnswer::Ready(bytes) => answers.push((bytes, SockaddrStorage::from(peer))),
                    UdpAnswer::Ignore => {}
                    UdpAnswer::Wait(request) => self.answer_later(request, peer),
                }
            }
            batch.send(&self.socket, &answers);
            answers.clear();
        }
        None
    }

    /// Answers a question that goes upstream from a task on the runtime.
    fn answer_later(&self, request: Box<Request>, peer: SocketAddr) {
        let socket = self.socket.clone();
        let handler = self.handler.clone();
        self.runtime.spawn(async move {
            if let Some(bytes) = handler.answer_udp_later(&request).await {
                // A UDP send does not wait for the peer; it blocks only while the
                // socket's send buffer is full.
                if let Err(e) = socket.send_to(&bytes, peer) {
                    tracing::debug!(%peer, error = %e, "sending a response failed");
                }
            }
        });
    }
}

/// The most UDP messages read, and answers written, per system call.
const UDP_BATCH: usize = 32;

/// A UDP worker's buffers and message headers for `recvmmsg` and `sendmmsg`, allocated once.
struct Batch {
    buffers: Vec<[u8; UDP_RECEIVE]>,
    /// What the last [`Batch::receive`] read into the buffers of the same index.
    received: Vec<Datagram>,
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

/// One message read into a [`Batch`] buffer.
#[derive(Clone, Copy)]
struct Datagram {
    len: usize,
    peer: Option<SocketAddr>,
    /// Longer than [`UDP_RECEIVE`]: the buffer holds its start only.
    truncated: bool,
}

impl Batch {
    fn new() -> Self {
        Self {
            buffers: vec![[0; UDP_RECEIVE]; UDP_BATCH],
            received: Vec::with_capacity(UDP_BATCH),
            receive_headers: MultiHeaders::preallocate(UDP_BATCH, None),
            send_headers: MultiHeaders::preallocate(UDP_BATCH, None),
        }
    }

    /// Waits for a message (as long as the socket's read timeout), then reads it and those
    /// already queued behind it, up to [`UDP_BATCH`]; returns how many were read.
    fn receive(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let messages = recvmmsg(
            socket.as_raw_fd(),
            &mut self.receive_headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        self.received.extend(messages.map(|message| Datagram {
            len: message.bytes,
            peer: message.address.as_ref().and_then(socket_addr),
            truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
        }));
        Ok(self.received.len())
    }

    /// Writes `answers` (at most [`UDP_BATCH`]), each to its peer; one that cannot be sent
    /// is skipped.
    fn send(&mut self, socket: &std::net::UdpSocket, answers: &[(Vec<u8>, SockaddrStorage)]) {
        let mut next = 0;
        while next < answers.len() {
            let rest = &answers[next..];
            let slices: Vec<[IoSlice<'_>; 1]> = rest
                .iter()
                .map(|(bytes, _)| [IoSlice::new(bytes)])
                .collect();
            let peers: Vec<Option<SockaddrStorage>> =
                rest.iter().map(|(_, peer)| Some(*peer)).collect();
            let no_control: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.send_headers,
                &slices,
                &peers,
                no_control,
                MsgFlags::empty(),
            ) {
                // The kernel sends at least one message or fails with the first.
                Ok(sent) => next += sent.count().max(1),
                Err(e) => {
                    tracing::debug!(peer = %rest[0].1, error = %e, "sending a response failed");
                    next += 1;
                }
            }
        }
    }
}

/// The address of an IPv4 or IPv6 peer.
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}
