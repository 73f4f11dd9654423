//! Serving: DNS over UDP and TCP, the zone fed by snapshots or by one change at a time,
//! and small HTTP listeners for `/health`, `/ready` and `/metrics` (CoreDNS's `:8080`,
//! `:8181` and `:9153` in [`crate::DnsConfig`]'s defaults; several may share one address).
//!
//! At start the server checks for a forwarding loop ([`DnsError::ForwardingLoop`]) as
//! CoreDNS's `loop` plugin does. A server made [`DnsServer::awaiting_sync`] answers cluster
//! names with SERVFAIL, and `/ready` with 503, until it has built a zone from a second
//! snapshot: the first one stands in until the API server's first lists are complete.
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
    /// Where `/metrics` is served over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where `/health` is served over HTTP, if anywhere: 200 while the process serves.
    pub health_listen: Option<SocketAddr>,
    /// Where `/ready` is served over HTTP, if anywhere: 200 once the zone reflects a complete
    /// view of the cluster and no forwarding loop was found, 503 before.
    pub ready_listen: Option<SocketAddr>,
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
            health_listen: None,
            ready_listen: None,
        }
    }

    /// The HTTP listeners to bind: each distinct address once, with what it serves.
    fn http_listeners(&self) -> Vec<(SocketAddr, Routes)> {
        let mut out: Vec<(SocketAddr, Routes)> = Vec::new();
        for (addr, route) in [
            (self.health_listen, Routes::HEALTH),
            (self.ready_listen, Routes::READY),
            (self.metrics_listen, Routes::METRICS),
        ] {
            let Some(addr) = addr else { continue };
            match out.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, routes)) => *routes = routes.with(route),
                None => out.push((addr, route)),
            }
        }
        out
    }
}

/// The paths one HTTP listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Routes {
    health: bool,
    ready: bool,
    metrics: bool,
}

impl Routes {
    const HEALTH: Routes = Routes {
        health: true,
        ready: false,
        metrics: false,
    };
    const READY: Routes = Routes {
        health: false,
        ready: true,
        metrics: false,
    };
    const METRICS: Routes = Routes {
        health: false,
        ready: false,
        metrics: true,
    };

    fn with(self, other: Routes) -> Routes {
        Routes {
            health: self.health || other.health,
            ready: self.ready || other.ready,
            metrics: self.metrics || other.metrics,
        }
    }
}

/// What `/ready` reports: the zone is built from a complete view (`synced`, which also lets
/// the handler answer cluster names) and the loop check passed (`started`).
#[derive(Debug, Default)]
struct Readiness {
    synced: Arc<AtomicBool>,
    started: AtomicBool,
}

impl Readiness {
    fn ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.synced.load(Ordering::Acquire)
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
    http: Vec<(TcpListener, Routes)>,
    metrics: Arc<Metrics>,
    awaiting_sync: bool,
}

/// Tries at finding one ephemeral port free for both UDP and TCP.
const EPHEMERAL_TRIES: usize = 16;

/// At most this many UDP workers (one per CPU below that).
const MAX_UDP_WORKERS: usize = 8;

impl DnsServer {
    /// Binds the DNS sockets (UDP and TCP on one port) and the HTTP listeners. The UDP
    /// socket is shared by one worker thread per CPU (up to 8).
    pub async fn bind(config: ServeConfig) -> Result<Self, DnsError> {
        let sockets = Sockets::bind(&config)?;
        Self::with_sockets(config, sockets)
    }

    /// [`DnsServer::bind`], with the sockets opened on a thread of their own that first runs
    /// `prepare`: for a server whose listeners belong elsewhere than the process, such as a
    /// network namespace the thread enters (`setns(2)` changes only the calling thread, and a
    /// socket stays in the namespace it was opened in, whichever thread serves it). An error
    /// of `prepare` is returned as [`DnsError::BindPrepareFailed`].
    pub async fn bind_with(
        config: ServeConfig,
        prepare: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> Result<Self, DnsError> {
        let for_thread = config.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let bound = prepare()
                .map_err(|source| DnsError::BindPrepareFailed { source })
                .and_then(|()| Sockets::bind(&for_thread));
            // The receiver waits below; if it is gone, so is the server.
            let _ = tx.send(bound);
        });
        let sockets = rx.await.map_err(|_| DnsError::BindPrepareFailed {
            source: std::io::Error::other("the thread binding the sockets ended without them"),
        })??;
        Self::with_sockets(config, sockets)
    }

    /// The server over sockets already bound; they join the current Tokio runtime.
    fn with_sockets(config: ServeConfig, sockets: Sockets) -> Result<Self, DnsError> {
        let Sockets { udp, tcp, http } = sockets;
        let listen = tcp.local_addr().unwrap_or(config.listen);
        let tcp = TcpListener::from_std(tcp).map_err(|source| DnsError::BindFailed {
            addr: listen,
            source,
        })?;
        let http = http
            .into_iter()
            .map(|(addr, listener, routes)| {
                TcpListener::from_std(listener)
                    .map(|l| (l, routes))
                    .map_err(|source| DnsError::MetricsBindFailed { addr, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = Arc::new(Metrics::for_listener(listen, &config.zone.origin));
        Ok(Self {
            config,
            udp,
            tcp,
            http,
            metrics,
            awaiting_sync: false,
        })
    }

    /// Marks the channel's initial value as a stand-in: until [`DnsServer::run`]'s receiver
    /// sees a value sent after it (before or after `run` starts) and its zone is built,
    /// cluster names get SERVFAIL (other names are still forwarded) and `/ready` 503. For a
    /// server fed by API watches whose first lists are not complete yet; the receiver must
    /// be the one `watch::channel` returned with the stand-in, not a later `subscribe`.
    pub fn awaiting_sync(mut self) -> Self {
        self.awaiting_sync = true;
        self
    }

    /// The address DNS is served on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.listen)
    }

    /// The address of the metrics listener, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http_addr(|r| r.metrics)
    }

    /// The address of the health listener, if one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.http_addr(|r| r.health)
    }

    /// The address of the readiness listener, if one is configured.
    pub fn ready_addr(&self) -> Option<SocketAddr> {
        self.http_addr(|r| r.ready)
    }

    fn http_addr(&self, serves: impl Fn(&Routes) -> bool) -> Option<SocketAddr> {
        self.http
            .iter()
            .find(|(_, routes)| serves(routes))
            .and_then(|(l, _)| l.local_addr().ok())
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
        // A stand-in is read without being marked seen: a real snapshot sent before this
        // point still counts as the change that opens the gate.
        let first = if self.awaiting_sync {
            state.borrow().clone()
        } else {
            state.borrow_and_update().clone()
        };
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
            awaiting_sync,
        } = self;
        let readiness = Arc::new(Readiness::default());
        readiness.synced.store(!awaiting_sync, Ordering::Release);
        let mut tasks = JoinSet::new();
        for (listener, routes) in http {
            tasks.spawn(serve_http(
                listener,
                routes,
                metrics.clone(),
                readiness.clone(),
            ));
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
            readiness.synced.clone(),
        ));
        let handler =
            Handler::new(zone, config.forward.clone(), metrics).gated(readiness.synced.clone());
        let forwarder = handler.forwarder();
        let mut frontend = Frontend::start(handler, udp, tcp)
            .map_err(|source| DnsError::ServeFailed { source })?;
        // The listeners are up, so a probe that loops back through an upstream reaches us.
        if let Err(e) = forwarder.detect_loop().await {
            tasks.abort_all();
            // The loop is the error to report; a failed shutdown adds nothing to it.
            let _ = frontend.shutdown().await;
            return Err(e);
        }
        readiness.started.store(true, Ordering::Release);
        tracing::info!(listen = %config.listen, zone = %config.zone.origin, "serving cluster DNS");
        let result = tokio::select! {
            () = shutdown => frontend.shutdown().await.map_err(|source| DnsError::ServeFailed { source }),
            source = frontend.wait() => Err(DnsError::ServeFailed { source }),
        };
        tasks.abort_all();
        result
    }
}

/// Applies updates to the served zone until the sender goes away; a snapshot built into the
/// zone marks it `synced`.
async fn feed_zone(
    zone: SharedZone,
    mut updates: mpsc::Receiver<ZoneUpdate>,
    config: ZoneConfig,
    metrics: Arc<Metrics>,
    synced: Arc<AtomicBool>,
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
                        synced.store(true, Ordering::Release);
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
            Ok(Some(records)) => metrics.zone_changed(records),
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

/// The sockets of a server, bound but not yet part of any runtime.
struct Sockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
    http: Vec<(SocketAddr, std::net::TcpListener, Routes)>,
}

impl Sockets {
    /// Binds DNS on `config.listen` and every HTTP listener of `config`, in the calling
    /// thread's network namespace.
    fn bind(config: &ServeConfig) -> Result<Sockets, DnsError> {
        let (udp, tcp) = bind_dns(config.listen)?;
        let mut http = Vec::new();
        for (addr, routes) in config.http_listeners() {
            let listener = tcp_listener(addr)
                .map_err(|source| DnsError::MetricsBindFailed { addr, source })?;
            http.push((addr, listener, routes));
        }
        Ok(Sockets { udp, tcp, http })
    }
}

/// A non-blocking TCP listener on `addr`, ready for [`TcpListener::from_std`].
fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn bind_dns(
    listen: SocketAddr,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), DnsError> {
    let fail = |source| DnsError::BindFailed {
        addr: listen,
        source,
    };
    let (first, tcp) = if listen.port() != 0 {
        let udp = std::net::UdpSocket::bind(listen).map_err(fail)?;
        let tcp = tcp_listener(listen).map_err(fail)?;
        (udp, tcp)
    } else {
        let mut bound = None;
        let mut last = std::io::Error::other("no free port");
        for _ in 0..EPHEMERAL_TRIES {
            let udp = std::net::UdpSocket::bind(listen).map_err(fail)?;
            let addr = udp.local_addr().map_err(fail)?;
            match tcp_listener(addr) {
                Ok(tcp) => {
                    bound = Some((udp, tcp));
                    break;
                }
                Err(e) => last = e,
            }
        }
        bound.ok_or_else(|| fail(last))?
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_UDP_WORKERS);
    // One socket shared by every worker: whichever is idle reads the next queries, so a
    // burst from one client is served by all of them (with a socket per worker, the kernel
    // would hash each client to one worker, however busy).
    let mut udp = Vec::with_capacity(workers);
    for _ in 1..workers {
        udp.push(first.try_clone().map_err(fail)?);
    }
    udp.push(first);
    Ok((udp, tcp))
}

/// How long an HTTP client may take to send its request.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve_http(
    listener: TcpListener,
    routes: Routes,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            if let Err(e) = http_exchange(stream, routes, &metrics, &readiness).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn http_exchange(
    mut stream: TcpStream,
    routes: Routes,
    metrics: &Metrics,
    readiness: &Readiness,
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
    let (status, content_type, body) = http_route(
        head.lines().next().unwrap_or_default(),
        routes,
        metrics,
        readiness.ready(),
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn http_route(
    request_line: &str,
    routes: Routes,
    metrics: &Metrics,
    ready: bool,
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
        "/metrics" if routes.metrics => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/health" if routes.health => ("200 OK", TEXT, "OK\n".to_owned()),
        "/ready" if routes.ready && ready => ("200 OK", TEXT, "OK\n".to_owned()),
        "/ready" if routes.ready => (
            "503 Service Unavailable",
            TEXT,
            "the cluster zone is not synced yet\n".to_owned(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Routes = Routes {
        health: true,
        ready: true,
        metrics: true,
    };

    #[test]
    fn routes_health_ready_and_metrics() {
        let metrics = Metrics::new();
        let route = |line, routes, ready| http_route(line, routes, &metrics, ready).0;
        assert_eq!(route("GET /health HTTP/1.1", ALL, false), "200 OK");
        assert_eq!(
            route("GET /ready HTTP/1.1", ALL, false),
            "503 Service Unavailable"
        );
        assert_eq!(route("GET /ready HTTP/1.1", ALL, true), "200 OK");
        let (status, _, body) = http_route("GET /metrics HTTP/1.1", ALL, &metrics, true);
        assert_eq!(status, "200 OK");
        assert!(body.contains("netd_dns_zone_builds_total"), "{body}");
        assert_eq!(
            route("POST /metrics HTTP/1.1", ALL, true),
            "405 Method Not Allowed"
        );
        assert_eq!(route("GET /nope HTTP/1.1", ALL, true), "404 Not Found");
        assert_eq!(route("", ALL, true), "400 Bad Request");
        // A listener serves only its own paths.
        assert_eq!(
            route("GET /metrics HTTP/1.1", Routes::READY, true),
            "404 Not Found"
        );
        assert_eq!(
            route("GET /ready HTTP/1.1", Routes::HEALTH, true),
            "404 Not Found"
        );
    }

    #[test]
    fn a_dns_address_already_served_is_refused() {
        let (udp, _tcp) = bind_dns("127.0.0.1:0".parse().expect("addr")).expect("first bind");
        let taken = udp[0].local_addr().expect("local address");
        assert!(udp.iter().all(|s| s.local_addr().ok() == Some(taken)));
        match bind_dns(taken) {
            Err(DnsError::BindFailed { addr, source }) => {
                assert_eq!(addr, taken);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("a second server on {taken} was not refused: {other:?}"),
        }
    }

    #[test]
    fn listeners_sharing_an_address_are_bound_once() {
        let a: SocketAddr = "127.0.0.1:9153".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let mut config = ServeConfig::new("127.0.0.1:53".parse().expect("addr"));
        config.metrics_listen = Some(a);
        config.ready_listen = Some(a);
        config.health_listen = Some(b);
        assert_eq!(
            config.http_listeners(),
            vec![
                (b, Routes::HEALTH),
                (a, Routes::READY.with(Routes::METRICS))
            ]
        );
    }
}
