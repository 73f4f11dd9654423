//! The servers through real sockets on 127.0.0.1: status lines, headers and bodies as
//! kube-proxy writes them, listeners opened and closed by `sync`, health transitions driven
//! by a hand-moved clock, and the probe counters on `/metrics`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use netd_healthcheck::{
    Clock, CurrentNamespace, DEFAULT_HEALTH_TIMEOUT, HealthError, HealthMetrics, HealthServers,
    HttpServer, IpFamily, ProxyHealth, bind, serve_metrics,
};
use netd_model::ServiceRef;
use pretty_assertions::assert_eq;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// 2026-11-20T09:50:17.123456789Z, then moved only by `step`.
#[derive(Debug)]
struct FakeClock(AtomicU64);

const T0: &str = "2026-11-20T09:50:17.123456789Z";
const T0_PLUS_60: &str = "2026-11-20T09:51:17.123456789Z";

impl FakeClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(0)))
    }

    fn step(&self, d: Duration) {
        self.0.fetch_add(
            u64::try_from(d.as_nanos()).expect("small step"),
            Ordering::SeqCst,
        );
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::new(1_795_168_217, 123_456_789)
            + Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

fn proxy_health(clock: &Arc<FakeClock>, registry: &mut Registry) -> ProxyHealth {
    ProxyHealth::new(
        DEFAULT_HEALTH_TIMEOUT,
        clock.clone(),
        HealthMetrics::register(registry),
    )
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(localhost(0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[derive(Debug, PartialEq)]
struct Reply {
    status: String,
    /// Every header but `Date` (which the server takes from the real clock), in order.
    headers: Vec<String>,
    body: String,
}

/// One HTTP/1.1 exchange on an open connection, reading exactly one response. A server that
/// does not answer fails the test instead of hanging it.
async fn exchange(conn: &mut BufReader<TcpStream>, method: &str, path: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(30), exchange_inner(conn, method, path))
        .await
        .expect("no answer within 30s")
}

async fn exchange_inner(conn: &mut BufReader<TcpStream>, method: &str, path: &str) -> Reply {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut status = String::new();
    conn.read_line(&mut status).await.expect("status line");
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("header line");
        let line = line.trim_end_matches("\r\n").to_owned();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse().expect("content length");
        }
        if !line.starts_with("Date: ") {
            headers.push(line);
        }
    }
    // A response to HEAD announces the body's length but carries none.
    let mut body = vec![0; if method == "HEAD" { 0 } else { length }];
    conn.read_exact(&mut body).await.expect("body");
    Reply {
        status: status.trim_end().to_owned(),
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.expect("connect"))
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    exchange(&mut connect(addr).await, "GET", path).await
}

fn service_body(ns: &str, name: &str, endpoints: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"{ns}\",\n\t\t\"name\": \"{name}\"\n\t}},\n\t\"localEndpoints\": {endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
    )
}

fn json_headers(len: usize, weight: Option<usize>) -> Vec<String> {
    let mut headers = vec![
        "Content-Type: application/json".to_owned(),
        "X-Content-Type-Options: nosniff".to_owned(),
    ];
    if let Some(w) = weight {
        headers.push(format!("X-Load-Balancing-Endpoint-Weight: {w}"));
    }
    headers.push(format!("Content-Length: {len}"));
    headers
}

fn servers(health: &ProxyHealth) -> HealthServers {
    HealthServers::new(
        vec![Ipv4Addr::LOCALHOST.into()],
        health.clone(),
        Arc::new(CurrentNamespace),
    )
}

#[tokio::test]
async fn servers_move_when_the_addresses_change() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let mut hcs = servers(&health);
    let svc = ServiceRef::new("ns1", "web");
    let port = free_port();
    let services = BTreeMap::from([(svc.clone(), (port, 1))]);
    assert!(hcs.sync(&services).await.is_empty());

    // The same addresses: the server stays.
    hcs.set_addresses(vec![Ipv4Addr::LOCALHOST.into()]).await;
    assert_eq!(
        hcs.listening(),
        BTreeMap::from([(svc.clone(), vec![localhost(port)])])
    );

    // Other addresses: closed now, opened there by the next sync.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    hcs.set_addresses(vec![other.into()]).await;
    assert!(hcs.listening().is_empty());
    assert!(TcpStream::connect(localhost(port)).await.is_err());
    assert!(hcs.sync(&services).await.is_empty());
    let moved = SocketAddr::new(other.into(), port);
    assert_eq!(hcs.listening(), BTreeMap::from([(svc, vec![moved])]));
    assert_eq!(get(moved, "/").await.status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn service_health_answers_like_kube_proxy() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let mut hcs = servers(&health);
    let svc = ServiceRef::new("ns1", "web");
    let port = free_port();

    let failed = hcs.sync(&BTreeMap::from([(svc.clone(), (port, 2))])).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        hcs.listening(),
        BTreeMap::from([(svc.clone(), vec![localhost(port)])])
    );

    // Any path and any method.
    let mut conn = connect(localhost(port)).await;
    for (method, path) in [("GET", "/healthz"), ("POST", "/"), ("HEAD", "/x/y?z=1")] {
        let body = service_body("ns1", "web", 2, true);
        let reply = exchange(&mut conn, method, path).await;
        let expected_body = if method == "HEAD" {
            String::new()
        } else {
            body.clone()
        };
        assert_eq!(
            reply,
            Reply {
                status: "HTTP/1.1 200 OK".into(),
                headers: json_headers(body.len(), Some(2)),
                body: expected_body,
            },
            "{method} {path}"
        );
    }

    // A new count is served on the same connection: the server was not restarted.
    let failed = hcs.sync(&BTreeMap::from([(svc.clone(), (port, 0))])).await;
    assert!(failed.is_empty(), "{failed:?}");
    let body = service_body("ns1", "web", 0, true);
    assert_eq!(
        exchange(&mut conn, "GET", "/").await,
        Reply {
            status: "HTTP/1.1 503 Service Unavailable".into(),
            headers: json_headers(body.len(), Some(0)),
            body,
        }
    );

    // Endpoints but an unhealthy proxy: 503, and it says why.
    hcs.sync(&BTreeMap::from([(svc.clone(), (port, 3))])).await;
    health.updated(IpFamily::V4);
    health.queued_update(IpFamily::V4);
    clock.step(DEFAULT_HEALTH_TIMEOUT);
    let body = service_body("ns1", "web", 3, false);
    assert_eq!(
        exchange(&mut conn, "GET", "/").await,
        Reply {
            status: "HTTP/1.1 503 Service Unavailable".into(),
            headers: json_headers(body.len(), Some(3)),
            body,
        }
    );
    health.updated(IpFamily::V4);
    assert_eq!(
        exchange(&mut conn, "GET", "/").await.status,
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn sync_opens_and_closes_listeners() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let mut hcs = servers(&health);
    let (a, b) = (ServiceRef::new("ns", "a"), ServiceRef::new("ns", "b"));
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let refused = |port| async move {
        let err = TcpStream::connect(localhost(port))
            .await
            .expect_err("port should be closed");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}"
        );
    };

    assert!(
        hcs.sync(&BTreeMap::from([
            (a.clone(), (pa, 1)),
            (b.clone(), (pb, 1))
        ]))
        .await
        .is_empty()
    );
    assert_eq!(
        get(localhost(pa), "/").await.body,
        service_body("ns", "a", 1, true)
    );
    assert_eq!(
        get(localhost(pb), "/").await.body,
        service_body("ns", "b", 1, true)
    );

    // b goes away.
    assert!(
        hcs.sync(&BTreeMap::from([(a.clone(), (pa, 1))]))
            .await
            .is_empty()
    );
    refused(pb).await;
    assert_eq!(
        get(localhost(pa), "/").await.body,
        service_body("ns", "a", 1, true)
    );

    // a moves to another port; b takes a's old port in the same sync.
    assert!(
        hcs.sync(&BTreeMap::from([
            (a.clone(), (pc, 1)),
            (b.clone(), (pa, 1))
        ]))
        .await
        .is_empty()
    );
    assert_eq!(
        get(localhost(pc), "/").await.body,
        service_body("ns", "a", 1, true)
    );
    assert_eq!(
        get(localhost(pa), "/").await.body,
        service_body("ns", "b", 1, true)
    );

    // Everything goes away.
    assert!(hcs.sync(&BTreeMap::new()).await.is_empty());
    assert!(hcs.listening().is_empty());
    refused(pa).await;
    refused(pc).await;
}

#[tokio::test]
async fn sync_reports_a_port_in_use_and_retries_it() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let mut hcs = servers(&health);
    let svc = ServiceRef::new("ns", "a");
    let squatter = std::net::TcpListener::bind(localhost(0)).expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let wanted = BTreeMap::from([(svc.clone(), (port, 1))]);

    let failed = hcs.sync(&wanted).await;
    assert!(
        matches!(failed.get(&svc), Some(HealthError::BindFailed { addr, .. }) if *addr == localhost(port)),
        "{failed:?}"
    );
    assert!(hcs.listening().is_empty());

    drop(squatter);
    assert!(hcs.sync(&wanted).await.is_empty());
    assert_eq!(
        get(localhost(port), "/healthz").await.status,
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn sockets_come_from_the_given_listen() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let listen = {
        let asked = asked.clone();
        move |addr: SocketAddr| {
            asked.lock().expect("lock").push(addr);
            std::net::TcpListener::bind(localhost(0))
        }
    };
    let mut hcs = HealthServers::new(vec![Ipv4Addr::UNSPECIFIED.into()], health, Arc::new(listen));
    let svc = ServiceRef::new("ns", "a");
    assert!(
        hcs.sync(&BTreeMap::from([(svc.clone(), (31000, 1))]))
            .await
            .is_empty()
    );
    assert_eq!(
        *asked.lock().expect("lock"),
        vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 31000))]
    );
    let addr = hcs.listening()[&svc][0];
    assert_eq!(get(addr, "/").await.body, service_body("ns", "a", 1, true));
}

async fn serve_health(health: &ProxyHealth) -> HttpServer {
    health
        .serve(bind(localhost(0)).expect("bind"))
        .expect("serve")
}

fn healthz_headers(len: usize) -> Vec<String> {
    json_headers(len, None)
}

#[tokio::test]
async fn healthz_and_livez_follow_the_clock_and_the_node() {
    let clock = FakeClock::new();
    let health = proxy_health(&clock, &mut Registry::default());
    let server = serve_health(&health).await;
    let addr = server.local_addr();

    // Starting up: healthy, no families yet, lastUpdated reported as now.
    let body = format!(
        r#"{{"lastUpdated":"{T0}","currentTime":"{T0}","nodeEligible":true,"healthy":true}}"#
    );
    assert_eq!(
        get(addr, "/healthz").await,
        Reply {
            status: "HTTP/1.1 200 OK".into(),
            headers: healthz_headers(body.len()),
            body
        }
    );

    // Synced at T0, a change queued at T0 and still waiting at T0 + 60s: unhealthy.
    health.updated(IpFamily::V4);
    health.queued_update(IpFamily::V4);
    clock.step(Duration::from_secs(59));
    assert_eq!(get(addr, "/healthz").await.status, "HTTP/1.1 200 OK");
    clock.step(Duration::from_secs(1));
    let body = format!(
        r#"{{"lastUpdated":"{T0}","currentTime":"{T0_PLUS_60}","nodeEligible":true,"healthy":false,"status":{{"IPv4":{{"lastUpdated":"{T0}","healthy":false}}}}}}"#
    );
    assert_eq!(
        get(addr, "/healthz").await,
        Reply {
            status: "HTTP/1.1 503 Service Unavailable".into(),
            headers: healthz_headers(body.len()),
            body,
        }
    );
    let body = format!(
        r#"{{"lastUpdated":"{T0}","currentTime":"{T0_PLUS_60}","healthy":false,"status":{{"IPv4":{{"lastUpdated":"{T0}","healthy":false}}}}}}"#
    );
    assert_eq!(get(addr, "/livez").await.body, body);

    // Synced: healthy again.
    health.updated(IpFamily::V4);
    let body = format!(
        r#"{{"lastUpdated":"{T0_PLUS_60}","currentTime":"{T0_PLUS_60}","nodeEligible":true,"healthy":true,"status":{{"IPv4":{{"lastUpdated":"{T0_PLUS_60}","healthy":true}}}}}}"#
    );
    assert_eq!(get(addr, "/healthz").await.body, body);

    // The Node is being deleted: /healthz fails, /livez (which ignores the Node) passes.
    health.set_node_eligible(false);
    let healthz = get(addr, "/healthz").await;
    assert_eq!(healthz.status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        healthz.body,
        format!(
            r#"{{"lastUpdated":"{T0_PLUS_60}","currentTime":"{T0_PLUS_60}","nodeEligible":false,"healthy":true,"status":{{"IPv4":{{"lastUpdated":"{T0_PLUS_60}","healthy":true}}}}}}"#
        )
    );
    let livez = get(addr, "/livez").await;
    assert_eq!(livez.status, "HTTP/1.1 200 OK");
    assert_eq!(
        livez.body,
        format!(
            r#"{{"lastUpdated":"{T0_PLUS_60}","currentTime":"{T0_PLUS_60}","healthy":true,"status":{{"IPv4":{{"lastUpdated":"{T0_PLUS_60}","healthy":true}}}}}}"#
        )
    );

    // Other paths are Go's 404.
    assert_eq!(
        get(addr, "/metrics").await,
        Reply {
            status: "HTTP/1.1 404 Not Found".into(),
            headers: vec![
                "Content-Type: text/plain; charset=utf-8".into(),
                "X-Content-Type-Options: nosniff".into(),
                "Content-Length: 19".into(),
            ],
            body: "404 page not found\n".into(),
        }
    );

    server.shutdown().await;
    let err = TcpStream::connect(addr).await.expect_err("closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn probe_counters_are_served_on_metrics() {
    let clock = FakeClock::new();
    let mut registry = Registry::with_prefix("kubeproxy");
    let health = proxy_health(&clock, &mut registry);
    let metrics =
        serve_metrics(bind(localhost(0)).expect("bind"), Arc::new(registry)).expect("serve");
    let server = serve_health(&health).await;
    let addr = server.local_addr();

    get(addr, "/healthz").await;
    get(addr, "/healthz").await;
    get(addr, "/livez").await;
    health.set_node_eligible(false);
    get(addr, "/healthz").await;

    let reply = get(metrics.local_addr(), "/metrics").await;
    assert_eq!(reply.status, "HTTP/1.1 200 OK");
    assert!(
        reply.headers.contains(
            &"Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8".into()
        ),
        "{:?}",
        reply.headers
    );
    // A label family's samples come in no particular order.
    let mut samples: Vec<&str> = reply.body.lines().filter(|l| !l.starts_with('#')).collect();
    samples.sort_unstable();
    assert_eq!(
        samples,
        [
            r#"kubeproxy_proxy_healthz_total{code="200"} 2"#,
            r#"kubeproxy_proxy_healthz_total{code="503"} 1"#,
            r#"kubeproxy_proxy_livez_total{code="200"} 1"#,
        ]
    );
    assert!(
        reply
            .body
            .contains("# HELP kubeproxy_proxy_healthz Cumulative proxy healthz HTTP status"),
        "{}",
        reply.body
    );
    assert_eq!(
        get(metrics.local_addr(), "/").await.status,
        "HTTP/1.1 404 Not Found"
    );
}
