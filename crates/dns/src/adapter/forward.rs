//! Forwarding questions outside the cluster zone: to the upstream resolvers, or to a stub
//! domain's own resolvers; answers and denials cached with their own TTL caps; and loop
//! detection, CoreDNS's `loop` plugin done at start.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::DnsError;
use crate::metrics::{CacheKind, Metrics};
use crate::zone::DomainName;

/// How questions outside the zone are forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    /// The upstream resolvers, tried in order; none means SERVFAIL at once.
    pub upstreams: Vec<SocketAddr>,
    /// Stub domains: names at or below a suffix go to that suffix's resolvers instead (the
    /// longest matching suffix wins), as kube-dns's `stubDomains` and CoreDNS's per-zone
    /// `forward` blocks do.
    pub stub_domains: BTreeMap<DomainName, Vec<SocketAddr>>,
    /// How long to wait for each upstream.
    pub timeout: Duration,
    /// The cache of upstream answers.
    pub cache: CacheConfig,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            stub_domains: BTreeMap::new(),
            timeout: Duration::from_secs(2),
            cache: CacheConfig::default(),
        }
    }
}

/// The cache of forwarded answers.
///
/// The defaults are those of the Corefile kubeadm installs (`cache 30`): answers and denials
/// (NXDOMAIN, or no records of the type) are each kept for their TTL, at most 30 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most answers the cache holds (0: no cache).
    pub capacity: usize,
    /// The longest a positive answer is kept, whatever its TTL.
    pub max_ttl: Duration,
    /// The longest a denial is kept, whatever its SOA says (0: denials are not cached).
    pub denial_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_ttl: Duration::from_secs(30),
            denial_ttl: Duration::from_secs(30),
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

impl Upstream {
    fn empty(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    /// A denial: NXDOMAIN, or no record of the asked type (NODATA).
    fn is_denial(&self) -> bool {
        self.rcode == ResponseCode::NXDomain || self.answers.is_empty()
    }
}

type CacheKey = (Name, RecordType, DNSClass);

struct Cached {
    stored: Instant,
    ttl: Duration,
    kind: CacheKind,
    answer: Arc<Upstream>,
}

/// The cached answers and how many of each kind, for `coredns_cache_entries`.
#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, Cached>,
    success: usize,
    denial: usize,
}

impl Cache {
    fn count(&mut self, kind: CacheKind, add: bool) {
        let n = match kind {
            CacheKind::Success => &mut self.success,
            CacheKind::Denial => &mut self.denial,
        };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.count(old.kind, false);
        }
    }

    fn recount(&mut self) {
        self.success = self
            .entries
            .values()
            .filter(|c| c.kind == CacheKind::Success)
            .count();
        self.denial = self.entries.len() - self.success;
    }
}

/// Sends questions upstream, caches the answers, and recognises its own loop probes.
pub(crate) struct Forwarder {
    config: ForwardConfig,
    cache: Mutex<Cache>,
    metrics: Arc<Metrics>,
    /// Loop probes sent at start, and how many times each came back to this server.
    probes: Mutex<HashMap<Name, u32>>,
}

/// Largest UDP response we ask upstreams for (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

/// The domain loop probes are asked under: `.invalid` is reserved (RFC 6761), so a working
/// resolver answers NXDOMAIN without asking anyone.
const PROBE_DOMAIN: &str = "loop-probe.invalid.";

impl Forwarder {
    pub(crate) fn new(config: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            cache: Mutex::new(Cache::default()),
            metrics,
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// The answer to `query`, from the cache when fresh.
    pub(crate) async fn resolve(&self, query: &Query) -> Result<Upstream, ForwardError> {
        let name = query.name().to_lowercase();
        if self.seen_probe(&name) {
            // Our own probe came back: answer it here, never forward it again.
            return Ok(Upstream::empty(ResponseCode::NXDomain));
        }
        let key = (name, query.query_type(), query.query_class());
        if let Some((hit, kind)) = self.cached(&key) {
            self.metrics.cache_hit(kind);
            return Ok(hit);
        }
        self.metrics.cache_miss();
        let upstreams = self.upstreams_for(&key.0);
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = io::Error::other("no upstream answered");
        for upstream in upstreams {
            self.metrics.forward_request(*upstream);
            match self.exchange(*upstream, query).await {
                Ok(message) => {
                    self.metrics
                        .forward_response(*upstream, message.metadata.response_code);
                    let answer = Upstream {
                        rcode: message.metadata.response_code,
                        answers: message.answers,
                        authorities: message.authorities,
                        additionals: message.additionals,
                    };
                    self.store(key, &answer);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        Err(ForwardError::UpstreamsFailed { source: last })
    }

    /// CoreDNS's `loop` check: asks every upstream (stub domains' too) for a random name of
    /// its own; if one of those questions reaches this server, forwarding loops through that
    /// upstream. CoreDNS sends its probe to itself and counts more than two arrivals; this
    /// server sends it to the upstream directly, so a single arrival is the loop.
    ///
    /// Upstreams that do not answer are not a loop (they may come up later); the check waits
    /// at most the forwarding timeout for each, all at once.
    pub(crate) async fn detect_loop(self: &Arc<Self>) -> Result<(), DnsError> {
        let mut upstreams: Vec<SocketAddr> = self.config.upstreams.clone();
        upstreams.extend(self.config.stub_domains.values().flatten());
        upstreams.sort();
        upstreams.dedup();
        let mut probes = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
            let name = probe_name().map_err(|source| DnsError::LoopProbeFailed { source })?;
            self.lock_probes().insert(name.clone(), 0);
            probes.push((upstream, Query::query(name, RecordType::HINFO)));
        }
        let mut asked = tokio::task::JoinSet::new();
        for (upstream, query) in &probes {
            let (this, upstream, query) = (Arc::clone(self), *upstream, query.clone());
            // The answer does not matter, only whether the question came back to us.
            asked.spawn(async move { drop(this.exchange(upstream, &query).await) });
        }
        while asked.join_next().await.is_some() {}
        let seen = self.lock_probes();
        for (upstream, query) in &probes {
            if seen.get(query.name()).is_some_and(|n| *n > 0) {
                return Err(DnsError::ForwardingLoop {
                    upstream: *upstream,
                    probe: format!("HINFO {}", query.name()),
                });
            }
        }
        Ok(())
    }

    /// Whether `name` is one of our loop probes; counts its arrival.
    fn seen_probe(&self, name: &Name) -> bool {
        let mut probes = self.lock_probes();
        if probes.is_empty() {
            return false;
        }
        match probes.get_mut(name) {
            Some(seen) => {
                *seen += 1;
                tracing::warn!(probe = %name, "a loop probe came back to this server");
                true
            }
            None => false,
        }
    }

    fn lock_probes(&self) -> std::sync::MutexGuard<'_, HashMap<Name, u32>> {
        // Counters only: a panic elsewhere cannot leave them inconsistent.
        self.probes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Each change keeps the map and its counts together before any call that can panic.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The resolvers for `name`: the longest stub domain it falls in, or the upstreams.
    fn upstreams_for(&self, name: &Name) -> &[SocketAddr] {
        if self.config.stub_domains.is_empty() {
            return &self.config.upstreams;
        }
        let text = name.to_ascii();
        let text = text.strip_suffix('.').unwrap_or(&text);
        self.config
            .stub_domains
            .iter()
            .filter(|(suffix, _)| within(text, suffix.as_str()))
            .max_by_key(|(suffix, _)| suffix.as_str().len())
            .map_or(&self.config.upstreams, |(_, upstreams)| upstreams)
    }

    fn cached(&self, key: &CacheKey) -> Option<(Upstream, CacheKind)> {
        let mut cache = self.lock_cache();
        let entry = cache.entries.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl {
            cache.remove(key);
            self.metrics.cache_entries(cache.success, cache.denial);
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
        let answer = Upstream {
            rcode: entry.answer.rcode,
            answers: age_records(&entry.answer.answers),
            authorities: age_records(&entry.answer.authorities),
            additionals: age_records(&entry.answer.additionals),
        };
        Some((answer, entry.kind))
    }

    fn store(&self, key: CacheKey, answer: &Upstream) {
        let Some(ttl) = cache_ttl(answer) else { return };
        let cache_config = &self.config.cache;
        let (kind, cap) = if answer.is_denial() {
            (CacheKind::Denial, cache_config.denial_ttl)
        } else {
            (CacheKind::Success, cache_config.max_ttl)
        };
        let ttl = Duration::from_secs(u64::from(ttl)).min(cap);
        if ttl.is_zero() || cache_config.capacity == 0 {
            return;
        }
        let mut cache = self.lock_cache();
        cache.remove(&key);
        if cache.entries.len() >= cache_config.capacity {
            cache.entries.retain(|_, c| c.stored.elapsed() < c.ttl);
            cache.recount();
        }
        if cache.entries.len() >= cache_config.capacity {
            // Still full of live answers: start over rather than track recency.
            cache.entries.clear();
            cache.recount();
        }
        cache.entries.insert(
            key,
            Cached {
                stored: Instant::now(),
                ttl,
                kind,
                answer: Arc::new(answer.clone()),
            },
        );
        cache.count(kind, true);
        self.metrics.cache_entries(cache.success, cache.denial);
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

/// Whether the dotless, lower-case `name` is `suffix` or lies below it.
fn within(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// `<random>.<random>.loop-probe.invalid.`: two 64-bit numbers from the standard library's
/// per-process random hash keys (seeded from the operating system), as CoreDNS's two
/// random numbers.
fn probe_name() -> Result<Name, hickory_proto::ProtoError> {
    let random = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.finish()
    };
    Name::from_ascii(format!("{}.{}.{PROBE_DOMAIN}", random(), random()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(stubs: &[(&str, &str)]) -> Forwarder {
        let config = ForwardConfig {
            upstreams: vec!["192.0.2.53:53".parse().expect("addr")],
            stub_domains: stubs
                .iter()
                .map(|(suffix, addr)| {
                    (
                        suffix.parse().expect("suffix"),
                        vec![addr.parse().expect("addr")],
                    )
                })
                .collect(),
            ..ForwardConfig::default()
        };
        Forwarder::new(config, Arc::new(Metrics::new()))
    }

    #[test]
    fn the_longest_stub_domain_wins() {
        let f = forwarder(&[
            ("corp.example", "192.0.2.1:53"),
            ("eu.corp.example", "192.0.2.2:53"),
        ]);
        let to = |name: &str| f.upstreams_for(&Name::from_ascii(name).expect("name"))[0];
        assert_eq!(to("a.eu.corp.example."), "192.0.2.2:53".parse().expect("a"));
        assert_eq!(to("eu.corp.example."), "192.0.2.2:53".parse().expect("a"));
        assert_eq!(to("b.corp.example."), "192.0.2.1:53".parse().expect("a"));
        // A suffix matches whole labels only.
        assert_eq!(to("xcorp.example."), "192.0.2.53:53".parse().expect("a"));
        assert_eq!(to("example.org."), "192.0.2.53:53".parse().expect("a"));
    }

    #[test]
    fn denials_and_answers_are_capped_separately() {
        let mut f = forwarder(&[]);
        f.config.cache = CacheConfig {
            capacity: 10,
            max_ttl: Duration::from_secs(20),
            denial_ttl: Duration::from_secs(0),
        };
        let name = Name::from_ascii("a.example.").expect("name");
        let answer = Upstream {
            answers: vec![Record::from_rdata(
                name.clone(),
                600,
                RData::A("192.0.2.1".parse().expect("ip")),
            )],
            ..Upstream::empty(ResponseCode::NoError)
        };
        let key = (name.clone(), RecordType::A, DNSClass::IN);
        f.store(key.clone(), &answer);
        let (_, kind) = f.cached(&key).expect("cached");
        assert_eq!(kind, CacheKind::Success);
        assert_eq!(f.lock_cache().entries[&key].ttl, Duration::from_secs(20));
        // Denial caching off: an NXDOMAIN is not kept.
        let nx = (name, RecordType::AAAA, DNSClass::IN);
        f.store(nx.clone(), &Upstream::empty(ResponseCode::NXDomain));
        assert!(f.cached(&nx).is_none());
        let text = f.metrics.encode();
        assert!(
            text.contains(r#"coredns_cache_entries{server="",type="success",zones="."} 1"#),
            "{text}"
        );
    }

    #[test]
    fn probe_names_are_random_and_outside_any_real_zone() {
        let a = probe_name().expect("name");
        let b = probe_name().expect("name");
        assert_ne!(a, b);
        assert!(a.to_ascii().ends_with(".loop-probe.invalid."), "{a}");
        assert_eq!(a.num_labels(), 4);
    }
}
