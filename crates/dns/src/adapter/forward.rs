//! Forwarding questions outside the cluster zone to upstream resolvers, with a TTL cache.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How questions outside the zone are forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    /// The upstream resolvers, tried in order; none means SERVFAIL at once.
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for each upstream.
    pub timeout: Duration,
    /// The most answers the cache holds.
    pub cache_capacity: usize,
    /// The longest an answer is cached, whatever its TTL.
    pub max_cache_ttl: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_capacity: 10_000,
            max_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Why a question could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver is configured")]
    NoUpstream,
    /// Every upstream failed; the last failure.
    #[error("every upstream resolver failed")]
    UpstreamsFailed {
        #[source]
        source: io::Error,
    },
}

/// An upstream's answer, with TTLs as seen now.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
}

type CacheKey = (Name, RecordType, DNSClass);

struct Cached {
    stored: Instant,
    ttl: Duration,
    answer: Arc<Upstream>,
}

/// Sends questions upstream and caches the answers.
pub(crate) struct Forwarder {
    config: ForwardConfig,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

/// Largest UDP response we ask upstreams for (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

impl Forwarder {
    pub(crate) fn new(config: ForwardConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The answer to `query`, from the cache when fresh. The bool says whether it was cached.
    pub(crate) async fn resolve(&self, query: &Query) -> Result<(Upstream, bool), ForwardError> {
        let key = (
            query.name().to_lowercase(),
            query.query_type(),
            query.query_class(),
        );
        if let Some(hit) = self.cached(&key) {
            return Ok((hit, true));
        }
        if self.config.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = io::Error::other("no upstream answered");
        for upstream in &self.config.upstreams {
            match self.exchange(*upstream, query).await {
                Ok(message) => {
                    let answer = Upstream {
                        rcode: message.metadata.response_code,
                        answers: message.answers,
                        authorities: message.authorities,
                        additionals: message.additionals,
                    };
                    self.store(key, &answer);
                    return Ok((answer, false));
                }
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        Err(ForwardError::UpstreamsFailed { source: last })
    }

    fn cached(&self, key: &CacheKey) -> Option<Upstream> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl {
            return None;
        }
        let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let age_records = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Some(Upstream {
            rcode: entry.answer.rcode,
            answers: age_records(&entry.answer.answers),
            authorities: age_records(&entry.answer.authorities),
            additionals: age_records(&entry.answer.additionals),
        })
    }

    fn store(&self, key: CacheKey, answer: &Upstream) {
        let Some(ttl) = cache_ttl(answer) else { return };
        let ttl = Duration::from_secs(u64::from(ttl)).min(self.config.max_cache_ttl);
        if ttl.is_zero() || self.config.cache_capacity == 0 {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.config.cache_capacity {
            cache.retain(|_, c| c.stored.elapsed() < c.ttl);
        }
        if cache.len() >= self.config.cache_capacity {
            // Still full of live answers: start over rather than track recency.
            cache.clear();
        }
        cache.insert(
            key,
            Cached {
                stored: Instant::now(),
                ttl,
                answer: Arc::new(answer.clone()),
            },
        );
    }

    async fn exchange(&self, upstream: SocketAddr, query: &Query) -> io::Result<Message> {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        request.set_edns(edns);
        let bytes = request.to_vec().map_err(io::Error::other)?;
        let id = request.metadata.id;
        let wait = self.config.timeout;
        let response = timeout(wait, exchange_udp(upstream, &bytes, id, query))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer over UDP")
            })??;
        if !response.metadata.truncation {
            return Ok(response);
        }
        timeout(wait, exchange_tcp(upstream, &bytes, id, query))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer over TCP")
            })?
    }
}

/// How long an answer may be cached: the smallest TTL of its answers, or for a negative
/// answer the SOA's (RFC 2308). Failures are not cached.
fn cache_ttl(answer: &Upstream) -> Option<u32> {
    match answer.rcode {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    if let Some(min) = answer.answers.iter().map(|r| r.ttl).min() {
        return Some(min);
    }
    answer.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

fn matches(response: &Message, id: u16, query: &Query) -> bool {
    response.metadata.id == id
        && response.queries.len() == 1
        // Name equality is case-insensitive.
        && response.queries[0].name() == query.name()
        && response.queries[0].query_type() == query.query_type()
}

async fn exchange_udp(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
) -> io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Stray or spoofed datagrams are dropped; the caller's timeout bounds the wait.
        if let Ok(response) = Message::from_vec(&buf[..n])
            && matches(&response, id, query)
        {
            return Ok(response);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let response = Message::from_vec(&buf).map_err(io::Error::other)?;
    if matches(&response, id, query) {
        Ok(response)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream answered another question",
        ))
    }
}
