//! The server over real sockets on loopback, asked with `dig` (dnsutils).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use netd_dns::{DnsError, DnsServer, ServeConfig, ZoneUpdate};
use netd_model::ClusterState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

struct Running {
    dns: SocketAddr,
    metrics: SocketAddr,
    state: watch::Sender<Arc<ClusterState>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), DnsError>>,
}

async fn start(state: ClusterState, upstreams: Vec<SocketAddr>) -> Running {
    start_with(state, upstreams, false).await
}

/// A server with `/health`, `/ready` and `/metrics` on one ephemeral port; `awaiting_sync`:
/// `state` only stands in until the next snapshot.
async fn start_with(
    state: ClusterState,
    upstreams: Vec<SocketAddr>,
    awaiting_sync: bool,
) -> Running {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.forward.upstreams = upstreams;
    let http = Some("127.0.0.1:0".parse().expect("addr"));
    config.metrics_listen = http;
    config.health_listen = http;
    config.ready_listen = http;
    let mut server = DnsServer::bind(config).await.expect("bind");
    if awaiting_sync {
        server = server.awaiting_sync();
    }
    let dns = server.local_addr();
    let metrics = server.metrics_addr().expect("metrics listener");
    assert_eq!(
        server.ready_addr(),
        Some(metrics),
        "one listener for all three"
    );
    let (tx, rx) = watch::channel(Arc::new(state));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.run(rx, async {
        let _ = stopped.await;
    }));
    Running {
        dns,
        metrics,
        state: tx,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("join").expect("clean shutdown");
    }
}

/// `dig` output; `args` after the server and port.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=3", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig is installed (dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(server, &all).await.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn dig_over_udp_and_tcp() {
    let s = start(common::cluster(), vec![]).await;
    for transport in ["+notcp", "+tcp"] {
        assert_eq!(
            short(s.dns, &[transport, "web.default.svc.cluster.local", "A"]).await,
            ["10.96.0.20"]
        );
        assert_eq!(
            short(s.dns, &[transport, "db.default.svc.cluster.local", "A"]).await,
            ["10.244.1.5", "10.244.2.6", "10.244.2.8"]
        );
        assert_eq!(
            short(
                s.dns,
                &[transport, "_http._tcp.web.default.svc.cluster.local", "SRV"]
            )
            .await,
            ["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            short(s.dns, &[transport, "-x", "10.96.0.20"]).await,
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            short(s.dns, &[transport, "dns-version.cluster.local", "TXT"]).await,
            ["\"1.1.0\""]
        );
        assert_eq!(
            short(
                s.dns,
                &[transport, "ext.default.svc.cluster.local", "CNAME"]
            )
            .await,
            ["example.com."]
        );
        let full = dig(s.dns, &[transport, "nope.default.svc.cluster.local", "A"]).await;
        assert!(
            full.contains("status: NXDOMAIN") && full.contains("flags: qr aa rd ra"),
            "{full}"
        );
        assert!(
            full.contains(
                "cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."
            ),
            "{full}"
        );
        let nodata = dig(s.dns, &[transport, "web.default.svc.cluster.local", "AAAA"]).await;
        assert!(
            nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0, AUTHORITY: 1"),
            "{nodata}"
        );
        // No upstream: SERVFAIL, at once.
        let out = dig(s.dns, &[transport, "example.com", "A"]).await;
        assert!(out.contains("status: SERVFAIL"), "{out}");
    }
    s.stop().await;
}

#[tokio::test]
async fn truncates_over_udp_and_answers_in_full_over_tcp() {
    let s = start(netd_testkit::state(&common::big_headless(300)), vec![]).await;
    let udp = dig(
        s.dns,
        &["+ignore", "+noedns", "many.big.svc.cluster.local", "A"],
    )
    .await;
    assert!(udp.contains("flags: qr aa tc rd ra"), "{udp}");
    let tcp = dig(s.dns, &["+tcp", "many.big.svc.cluster.local", "A"]).await;
    assert!(tcp.contains("ANSWER: 300,"), "{tcp}");
    // dig retries a truncated UDP answer over TCP by itself.
    assert_eq!(
        short(s.dns, &["many.big.svc.cluster.local", "A"])
            .await
            .len(),
        300
    );
    s.stop().await;
}

#[tokio::test]
async fn garbage_over_udp_gets_formerr_and_the_server_lives_on() {
    let s = start(common::cluster(), vec![]).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xc0, 0xff, 0x3f, 0x01]);
    client.send_to(&garbage, s.dns).await.expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = client.recv_from(&mut buf).await.expect("a reply");
    let m = Message::from_vec(&buf[..n]).expect("valid");
    assert_eq!(m.metadata.id, 0xabcd);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(
        short(s.dns, &["web.default.svc.cluster.local"]).await,
        ["10.96.0.20"]
    );
    s.stop().await;
}

/// A query for `name`'s A records with message ID `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

/// Reads `count` responses sent to `client` by `server`, by message ID.
async fn responses(client: &UdpSocket, server: SocketAddr, count: usize) -> BTreeMap<u16, Message> {
    let mut got = BTreeMap::new();
    let mut buf = [0u8; 4096];
    while got.len() < count {
        // A guard against a lost answer hanging the test, not a measurement.
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{} of {count} answered", got.len()))
            .expect("receive");
        assert_eq!(from, server);
        let m = Message::from_vec(&buf[..n]).expect("a valid response");
        assert!(
            got.insert(m.metadata.id, m).is_none(),
            "one answer per query"
        );
    }
    got
}

fn addresses(m: &Message) -> Vec<String> {
    let mut ips: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn a_burst_of_queries_is_answered_each_to_its_own_sender() {
    let s = start(common::cluster(), vec![]).await;
    let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let second = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // More than a worker reads at once, sent before any is answered: well-formed queries
    // for two names and one missing, malformed ones, and ones longer than the server reads.
    let burst = 100u16;
    for id in 0..burst {
        let message = match id % 10 {
            3 => vec![
                (id >> 8) as u8,
                id as u8,
                0x01,
                0x00,
                0x00,
                0x01,
                0,
                0,
                0,
                0,
                0,
                0,
                0xc0,
                0xff,
            ],
            7 => {
                let mut long = a_query(id, "web.default.svc.cluster.local");
                long.resize(5000, 0);
                long
            }
            5 => a_query(id, "missing.default.svc.cluster.local"),
            n if n % 2 == 0 => a_query(id, "web.default.svc.cluster.local"),
            _ => a_query(id, "db.default.svc.cluster.local"),
        };
        first.send_to(&message, s.dns).await.expect("send");
        if id == burst / 2 {
            second
                .send_to(&a_query(id, "db.default.svc.cluster.local"), s.dns)
                .await
                .expect("send");
        }
    }
    let answers = responses(&first, s.dns, usize::from(burst)).await;
    for (id, m) in &answers {
        let (rcode, ips): (ResponseCode, &[&str]) = match id % 10 {
            3 | 7 => (ResponseCode::FormErr, &[]),
            5 => (ResponseCode::NXDomain, &[]),
            n if n % 2 == 0 => (ResponseCode::NoError, &["10.96.0.20"]),
            _ => (
                ResponseCode::NoError,
                &["10.244.1.5", "10.244.2.6", "10.244.2.8"],
            ),
        };
        assert_eq!(m.metadata.response_code, rcode, "query {id}");
        assert_eq!(addresses(m), ips, "query {id}");
    }
    let other = responses(&second, s.dns, 1).await;
    let m = &other[&(burst / 2)];
    assert_eq!(
        addresses(m),
        ["10.244.1.5", "10.244.2.6", "10.244.2.8"],
        "the second client's own question"
    );
    s.stop().await;
}

#[tokio::test]
async fn forwards_to_an_upstream() {
    let (upstream, count) = common::fake_upstream().await;
    let s = start(common::cluster(), vec![upstream]).await;
    assert_eq!(short(s.dns, &["www.example.org", "A"]).await, ["192.0.2.1"]);
    assert_eq!(
        short(s.dns, &["+tcp", "www.example.org", "A"]).await,
        ["192.0.2.1"]
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "the loop probe and the first question: the second answer came from the cache"
    );
    assert_eq!(
        short(s.dns, &["ext.default.svc.cluster.local", "A"]).await,
        ["192.0.2.1", "example.com."]
    );
    s.stop().await;
}

#[tokio::test]
async fn follows_new_snapshots_and_serves_metrics() {
    let s = start(common::cluster(), vec![]).await;
    assert_eq!(
        short(s.dns, &["web.default.svc.cluster.local"]).await,
        ["10.96.0.20"]
    );
    s.state.send_replace(Arc::new(netd_testkit::state(
        &common::CLUSTER.replace("10.96.0.20", "10.96.0.99"),
    )));
    let mut seen = Vec::new();
    // The rebuild happens in the background; poll (bounded) rather than sleep.
    for _ in 0..100 {
        seen = short(s.dns, &["web.default.svc.cluster.local"]).await;
        if seen == ["10.96.0.99"] {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, ["10.96.0.99"]);
    assert!(
        http_get(s.metrics, "/health")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(s.metrics, "/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let metrics = http_get(s.metrics, "/metrics").await;
    assert!(
        metrics.contains(r#"coredns_dns_responses_total{server="dns://127.0.0.1:"#)
            && metrics.contains(r#"zone="cluster.local.",rcode="NOERROR"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("coredns_dns_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netd_dns_zone_builds_total 2"),
        "{metrics}"
    );
    s.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn cluster_names_get_servfail_until_the_first_synced_snapshot() {
    let (upstream, _) = common::fake_upstream().await;
    let s = start_with(ClusterState::default(), vec![upstream], true).await;
    let early = dig(s.dns, &["web.default.svc.cluster.local", "A"]).await;
    assert!(early.contains("status: SERVFAIL"), "{early}");
    let reverse = dig(s.dns, &["-x", "10.96.0.20"]).await;
    assert!(reverse.contains("status: SERVFAIL"), "{reverse}");
    // Names outside the zone are forwarded meanwhile.
    assert_eq!(short(s.dns, &["www.example.org", "A"]).await, ["192.0.2.1"]);
    assert!(
        http_get(s.metrics, "/ready")
            .await
            .starts_with("HTTP/1.1 503")
    );
    assert!(
        http_get(s.metrics, "/health")
            .await
            .starts_with("HTTP/1.1 200")
    );
    s.state.send_replace(Arc::new(common::cluster()));
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = short(s.dns, &["web.default.svc.cluster.local"]).await;
        if !seen.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, ["10.96.0.20"]);
    assert!(
        http_get(s.metrics, "/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    s.stop().await;
}

/// A port free for UDP and TCP on 127.0.0.1 when asked (for a server that must know its own
/// address before it binds).
async fn free_port() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = udp.local_addr().expect("addr");
        if tokio::net::TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
}

#[tokio::test]
async fn an_upstream_that_is_the_server_itself_is_a_forwarding_loop() {
    let addr = free_port().await;
    let mut config = ServeConfig::new(addr);
    config.forward.upstreams = vec![addr];
    let server = DnsServer::bind(config).await.expect("bind");
    let (_tx, rx) = watch::channel(Arc::new(common::cluster()));
    let err = server
        .run(rx, std::future::pending())
        .await
        .expect_err("a loop refuses to start");
    assert!(
        matches!(err, DnsError::ForwardingLoop { upstream, .. } if upstream == addr),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("upstream {addr}")) && message.contains("loop-probe.invalid."),
        "{message}"
    );
}

#[tokio::test]
async fn an_upstream_answering_nxdomain_is_no_loop() {
    let upstream = common::nxdomain_upstream().await;
    let s = start(common::cluster(), vec![upstream]).await;
    let out = dig(s.dns, &["www.example.org", "A"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    let mut ready = String::new();
    // The loop check runs beside the first answers; /ready waits for it.
    for _ in 0..100 {
        ready = http_get(s.metrics, "/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    s.stop().await;
}

#[tokio::test]
async fn a_snapshot_sent_before_run_starts_still_ends_the_stand_in() {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.ready_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = DnsServer::bind(config).await.expect("bind").awaiting_sync();
    let dns = server.local_addr();
    let ready = server.ready_addr().expect("ready listener");
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    // The first complete snapshot arrives before the server reads the channel.
    tx.send_replace(Arc::new(common::cluster()));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(rx, async {
        let _ = stopped.await;
    }));
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = short(dns, &["web.default.svc.cluster.local"]).await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ["10.96.0.20"]);
    assert!(http_get(ready, "/ready").await.starts_with("HTTP/1.1 200"));
    let _ = stop.send(());
    task.await.expect("join").expect("clean shutdown");
    drop(tx);
}

/// The SOA serial in `dig` output for the zone's SOA.
async fn soa_serial(server: SocketAddr) -> u32 {
    let out = short(server, &["cluster.local", "SOA"]).await;
    out.first()
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no SOA serial in {out:?}"))
}

#[tokio::test]
async fn applies_object_changes_from_the_update_channel() {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = DnsServer::bind(config).await.expect("bind");
    let dns = server.local_addr();
    let metrics = server.metrics_addr().expect("metrics listener");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_updates(Arc::new(common::cluster()), rx, async {
        let _ = stopped.await;
    }));
    let first = soa_serial(dns).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The first zone is stamped with the time it was built.
    assert!(
        u64::from(first) + 60 > now && u64::from(first) <= now,
        "{first} vs {now}"
    );
    let added = netd_testkit::objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: default}\n\
         spec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}\n",
    );
    tx.send(ZoneUpdate::Upsert(Box::new(added[0].clone())))
        .await
        .expect("send");
    let mut answered = Vec::new();
    for _ in 0..50 {
        answered = short(dns, &["new.default.svc.cluster.local", "A"]).await;
        if !answered.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(answered, ["10.96.0.99"]);
    let second = soa_serial(dns).await;
    assert!(
        netd_dns::Serial::new(second).is_after(netd_dns::Serial::new(first)),
        "{second} after {first}"
    );
    // An invalid object is refused; the zone keeps answering as before.
    let bad = netd_testkit::objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: default}\n\
         spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
    );
    tx.send(ZoneUpdate::Upsert(Box::new(bad[0].clone())))
        .await
        .expect("send");
    tx.send(ZoneUpdate::Delete(netd_model::ObjectId {
        kind: netd_model::Kind::Service,
        namespace: "default".to_owned(),
        name: "web".to_owned(),
    }))
    .await
    .expect("send");
    let mut gone = dig(dns, &["web.default.svc.cluster.local", "A"]).await;
    for _ in 0..50 {
        if gone.contains("NXDOMAIN") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        gone = dig(dns, &["web.default.svc.cluster.local", "A"]).await;
    }
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
    assert_eq!(
        short(dns, &["new.default.svc.cluster.local", "A"]).await,
        ["10.96.0.99"]
    );
    assert!(netd_dns::Serial::new(soa_serial(dns).await).is_after(netd_dns::Serial::new(second)));
    // One whole build (the first zone); two changes applied, the refused one not counted.
    let body = http_get(metrics, "/metrics").await;
    for want in [
        "netd_dns_zone_builds_total 1",
        "netd_dns_zone_changes_total 2",
    ] {
        assert!(body.contains(want), "{want} missing from:\n{body}");
    }
    let _ = stop.send(());
    task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn binding_from_a_prepared_thread_serves_and_reports_a_failed_preparation() {
    let config = ServeConfig::new("127.0.0.1:0".parse().expect("addr"));
    let refused = DnsServer::bind_with(config.clone(), || {
        Err(std::io::Error::other("no such namespace"))
    })
    .await;
    assert!(
        matches!(refused, Err(DnsError::BindPrepareFailed { .. })),
        "{:?}",
        refused.err()
    );
    let prepared = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = prepared.clone();
    let server = DnsServer::bind_with(config, move || {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    })
    .await
    .expect("bind");
    assert!(prepared.load(Ordering::SeqCst));
    let dns = server.local_addr();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_updates(Arc::new(common::cluster()), rx, async {
        let _ = stopped.await;
    }));
    assert_eq!(
        short(dns, &["+tcp", "web.default.svc.cluster.local"]).await,
        ["10.96.0.20"]
    );
    assert_eq!(
        short(dns, &["web.default.svc.cluster.local"]).await,
        ["10.96.0.20"]
    );
    let _ = stop.send(());
    task.await.expect("join").expect("clean shutdown");
}
