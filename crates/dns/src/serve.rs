//! Serving: DNS over UDP and TCP, the zone fed by snapshots or by one change at a time,
//! and a small HTTP listener for `/metrics`, `/health` and `/ready`.
//!
//! # Feeding the zone
//!
//! [`DnsServer::run_updates`] is the seam for sources of cluster state: it takes a first
//! snapshot, builds the zone from it and drops it, then applies [`ZoneUpdate`]s from an
//! `mpsc` channel as they come: [`ZoneUpdate::Upsert`] / [`ZoneUpdate::Delete`] of one
//! object ([`Zone::apply`], answered from the next query on), or a whole
//! [`ZoneUpdate::Snapshot`] (rebuilt off the async workers, then swapped in). The server
//! keeps no snapshot: a watch-driven source sends each event as it arrives, a file source
//! sends a snapshot per reload. [`DnsServer::run`] is the same over a `watch` channel of
//! snapshots, whose sender keeps the latest one alive.
//!
//! Every change that alters an answer advances the SOA serial to the time of the change
//! ([`Serial::next_at`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use netd_model::{ClusterState, Object, ObjectId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::DnsError;
use crate::adapter::{ForwardConfig, Frontend, Handler, SharedZone};
use crate::metrics::Metrics;
use crate::zone::{Serial, Zone, ZoneChange, ZoneConfig, ZoneError};

/// Everything `kube-netd dns serve` configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Where DNS is served, UDP and TCP on the same port (port 0: an ephemeral port).
    pub listen: SocketAddr,
    /// The zone: origin, TTL and pod mode.
    pub zone: ZoneConfig,
    /// Forwarding of names outside the zone.
    pub forward: ForwardConfig,
    /// Where `/metrics`, `/health` and `/ready` are served over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServeConfig {
    /// A configuration serving on `listen` with the default zone, no upstream and no
    /// metrics listener.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            zone: ZoneConfig::default(),
            forward: ForwardConfig::default(),
            metrics_listen: None,
        }
    }
}

/// One update to the served zone, sent to [`DnsServer::run_updates`].
#[derive(Clone, Debug)]
pub enum ZoneUpdate {
    /// A complete snapshot: the zone is rebuilt from it, and the snapshot is dropped.
    Snapshot(Arc<ClusterState>),
    /// An object added or replaced (the kept form `netd-source` produces), boxed: objects
    /// are large.
    Upsert(Box<Object>),
    /// An object removed.
    Delete(ObjectId),
}

/// A DNS server with its sockets bound, not yet serving.
pub struct DnsServer {
    config: ServeConfig,
    /// One per UDP worker, sharing the port (blocking sockets: each worker is a thread).
    udp: Vec<std::net::UdpSocket>,
    tcp: TcpListener,
    http: Option<TcpListener>,
    metrics: Arc<Metrics>,
}

/// Tries at finding one ephemeral port free for both UDP and TCP.
const EPHEMERAL_TRIES: usize = 16;

/// At most this many UDP workers (one per CPU below that).
const MAX_UDP_WORKERS: usize = 8;

impl DnsServer {
    /// Binds the DNS sockets (UDP and TCP on one port) and the metrics listener.
    /// UDP is bound once per CPU (up to 8) with `SO_REUSEPORT`, one socket per worker
    /// thread.
    pub async fn bind(config: ServeConfig) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_dns(config.listen).await?;
        let http = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DnsError::MetricsBindFailed { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            udp,
            tcp,
            http,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The address DNS is served on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.listen)
    }

    /// The address of the metrics listener, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes. The zone is built from the snapshot in `state`
    /// and rebuilt whenever the channel sees a new one; if the sender goes away, the last
    /// zone keeps being served. The channel keeps the latest snapshot alive:
    /// [`DnsServer::run_updates`] does not.
    pub async fn run(
        self,
        mut state: watch::Receiver<Arc<ClusterState>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DnsError> {
        let first = state.borrow_and_update().clone();
        let (tx, rx) = mpsc::channel(1);
        let relay = tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let snapshot = state.borrow_and_update().clone();
                if tx.send(ZoneUpdate::Snapshot(snapshot)).await.is_err() {
                    return;
                }
            }
        });
        let result = self.run_updates(first, rx, shutdown).await;
        relay.abort();
        result
    }

    /// Serves until `shutdown` completes: the zone is built from `first` (then dropped) and
    /// follows `updates` (see the [module docs](self)). If the sender goes away, the last
    /// zone keeps being served. A change the zone refuses (an invalid object) is logged and
    /// the zone is left as it was.
    pub async fn run_updates(
        self,
        first: Arc<ClusterState>,
        updates: mpsc::Receiver<ZoneUpdate>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DnsError> {
        let DnsServer {
            config,
            udp,
            tcp,
            http,
            metrics,
        } = self;
        let ready = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        if let Some(http) = http {
            tasks.spawn(serve_http(http, metrics.clone(), ready.clone()));
        }
        let mut zone = build_zone(first, config.zone.clone()).await?;
        zone.set_serial(Serial::default().next_at(unix_now()));
        metrics.zone_built(zone.record_count());
        let zone = SharedZone::new(zone);
        tasks.spawn(feed_zone(
            zone.clone(),
            updates,
            config.zone.clone(),
            metrics.clone(),
        ));
        let mut forward = config.forward.clone();
        // Forwarding to ourselves would loop until the client gives up.
        let local = tcp.local_addr().ok();
        forward.upstreams.retain(|u| Some(*u) != local);
        let handler = Handler::new(zone, forward, metrics);
        let mut frontend = Frontend::start(handler, udp, tcp)
            .map_err(|source| DnsError::ServeFailed { source })?;
        ready.store(true, Ordering::Release);
        tracing::info!(listen = %config.listen, zone = %config.zone.origin, "serving cluster DNS");
        let result = tokio::select! {
            () = shutdown => frontend.shutdown().await.map_err(|source| DnsError::ServeFailed { source }),
            source = frontend.wait() => Err(DnsError::ServeFailed { source }),
        };
        tasks.abort_all();
        result
    }
}

/// Applies updates to the served zone until the sender goes away.
async fn feed_zone(
    zone: SharedZone,
    mut updates: mpsc::Receiver<ZoneUpdate>,
    config: ZoneConfig,
    metrics: Arc<Metrics>,
) {
    while let Some(update) = updates.recv().await {
        let change = match &update {
            ZoneUpdate::Snapshot(state) => {
                match build_zone(state.clone(), config.clone()).await {
                    Ok(mut rebuilt) => {
                        let previous = zone.read(Zone::serial);
                        rebuilt.set_serial(previous.next_at(unix_now()));
                        metrics.zone_built(rebuilt.record_count());
                        drop(zone.replace(rebuilt));
                    }
                    // The previous zone keeps being served.
                    Err(e) => tracing::error!(error = %e, "rebuilding the zone failed"),
                }
                continue;
            }
            ZoneUpdate::Upsert(object) => ZoneChange::Upsert(object),
            ZoneUpdate::Delete(id) => ZoneChange::Delete(id),
        };
        let applied = zone.update(|zone| {
            let changed = zone.apply(change)?;
            if changed {
                zone.set_serial(zone.serial().next_at(unix_now()));
            }
            Ok::<_, ZoneError>(changed.then(|| zone.record_count()))
        });
        match applied {
            Ok(Some(records)) => metrics.zone_built(records),
            Ok(None) => {}
            Err(e) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                tracing::warn!(error = %e, cause, "a change was not applied to the zone");
            }
        }
    }
}

/// Seconds since the Unix epoch; 0 if the clock is before it.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds and serves until `shutdown`: [`DnsServer::bind`] then [`DnsServer::run`].
pub async fn serve(
    config: ServeConfig,
    state: watch::Receiver<Arc<ClusterState>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    DnsServer::bind(config).await?.run(state, shutdown).await
}

/// Builds a zone off the async workers: a large cluster takes a few hundred milliseconds.
async fn build_zone(state: Arc<ClusterState>, config: ZoneConfig) -> Result<Zone, DnsError> {
    tokio::task::spawn_blocking(move || Zone::build(&state, &config))
        .await
        .map_err(|source| DnsError::ZoneBuildFailed { source })
}

async fn bind_dns(listen: SocketAddr) -> Result<(Vec<std::net::UdpSocket>, TcpListener), DnsError> {
    let fail = |source| DnsError::BindFailed {
        addr: listen,
        source,
    };
    let (first, tcp) = if listen.port() != 0 {
        let udp = udp_socket(listen).map_err(fail)?;
        let tcp = TcpListener::bind(listen).await.map_err(fail)?;
        (udp, tcp)
    } else {
        let mut bound = None;
        let mut last = std::io::Error::other("no free port");
        for _ in 0..EPHEMERAL_TRIES {
            let udp = udp_socket(listen).map_err(fail)?;
            let addr = udp.local_addr().map_err(fail)?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    bound = Some((udp, tcp));
                    break;
                }
                Err(e) => last = e,
            }
        }
        bound.ok_or_else(|| fail(last))?
    };
    let addr = first.local_addr().map_err(fail)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_UDP_WORKERS);
    let mut udp = vec![first];
    for _ in 1..workers {
        udp.push(udp_socket(addr).map_err(fail)?);
    }
    Ok((udp, tcp))
}

/// A UDP socket bound with `SO_REUSEPORT`, so that each worker has its own socket on the
/// port and the kernel spreads clients among them.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// How long an HTTP client may take to send its request.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if let Err(e) = http_exchange(stream, &metrics, &ready).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn http_exchange(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head only; the endpoints take no body.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = tokio::time::timeout(HTTP_READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow HTTP client"))??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, content_type, body) =
        http_route(head.lines().next().unwrap_or_default(), metrics, ready);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn http_route(
    request_line: &str,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", TEXT, "bad request\n".to_owned());
    };
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".to_owned());
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/health" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/ready" if ready.load(Ordering::Acquire) => ("200 OK", TEXT, "ready\n".to_owned()),
        "/ready" => (
            "503 Service Unavailable",
            TEXT,
            "zone not built yet\n".to_owned(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_health_ready_and_metrics() {
        let metrics = Metrics::new();
        let ready = AtomicBool::new(false);
        assert_eq!(
            http_route("GET /health HTTP/1.1", &metrics, &ready).0,
            "200 OK"
        );
        assert_eq!(
            http_route("GET /ready HTTP/1.1", &metrics, &ready).0,
            "503 Service Unavailable"
        );
        ready.store(true, Ordering::Release);
        assert_eq!(
            http_route("GET /ready HTTP/1.1", &metrics, &ready).0,
            "200 OK"
        );
        let (status, _, body) = http_route("GET /metrics HTTP/1.1", &metrics, &ready);
        assert_eq!(status, "200 OK");
        assert!(body.contains("netd_dns_zone_builds_total"), "{body}");
        assert_eq!(
            http_route("POST /metrics HTTP/1.1", &metrics, &ready).0,
            "405 Method Not Allowed"
        );
        assert_eq!(
            http_route("GET /nope HTTP/1.1", &metrics, &ready).0,
            "404 Not Found"
        );
        assert_eq!(http_route("", &metrics, &ready).0, "400 Bad Request");
    }
}
