//! `kube-netd dns` against a real API server (netd-apiserver on 127.0.0.1), written to with
//! the real kubectl and asked with `dig`: nothing answers for the cluster before the first
//! lists, a Service created resolves, a deleted one goes NXDOMAIN, and the last zone keeps
//! answering when the API server goes away. Nothing leaves the loopback interface: the only
//! upstream is a closed port on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use netd_testkit::api::TestApiServer;

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// `kube-netd dns`, killed by PID on drop, with the addresses it printed.
struct Dns {
    child: Child,
    dns: SocketAddr,
    ready: SocketAddr,
}

impl Dns {
    /// Starts `kube-netd dns ARGS` on ephemeral loopback ports, forwarding to a closed port.
    fn start(args: &[&str]) -> Dns {
        let mut child = Command::new(BIN)
            .arg("dns")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"])
            .args(["--health", "", "--metrics", "", "--ready", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kube-netd dns");
        let stderr = child.stderr.take().expect("stderr");
        let (dns, ready) = addresses(stderr);
        Dns { child, dns, ready }
    }

    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .arg(format!("@{}", self.dns.ip()))
            .args(["-p", &self.dns.port().to_string(), "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("dig is installed (dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asks until the answer contains `want` (the watch delivers in the background).
    fn wait_for(&self, args: &[&str], want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.dig(args);
            if out.contains(want) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} never gave {want:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process's resident set size, as /proc reports it.
    fn rss(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }

    fn ready_status(&self) -> String {
        let mut stream = TcpStream::connect(self.ready).expect("connect");
        write!(stream, "GET /ready HTTP/1.0\r\n\r\n").expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer.lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DNS and readiness addresses `kube-netd dns` prints on stderr; the rest of stderr is
/// drained in the background.
fn addresses(stderr: ChildStderr) -> (SocketAddr, SocketAddr) {
    let mut lines = BufReader::new(stderr).lines();
    let (mut dns, mut ready) = (None, None);
    while dns.is_none() || ready.is_none() {
        let line = lines
            .next()
            .expect("kube-netd dns exited before serving")
            .expect("stderr");
        if let Some(rest) = line.strip_prefix("serving DNS for cluster.local on ") {
            dns = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("ready on http://") {
            ready = rest.strip_suffix("/ready").and_then(|a| a.parse().ok());
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (dns.expect("DNS address"), ready.expect("ready address"))
}

/// kubectl with `kubeconfig`, with a HOME of its own so its cache stays in the test's files.
fn kubectl(kubeconfig: &std::path::Path, home: &std::path::Path, args: &[&str], stdin: &str) {
    let mut child = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}
spec:
  clusterIP: 10.96.0.51
  ports: [{port: 5432}]
";

#[test]
fn services_written_with_kubectl_resolve_and_deleted_ones_go_nxdomain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api = TestApiServer::start(None, &dir.path().join("api"));
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let dns = Dns::start(&[&format!("--kubeconfig={}", kubeconfig.display())]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dns.ready_status() != "HTTP/1.1 200 OK" {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            dns.ready_status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let applied = Instant::now();
    kubectl(&kubeconfig, dir.path(), &["apply", "-f", "-"], SERVICES);
    let written = applied.elapsed();
    dns.wait_for(
        &["+short", "web.default.svc.cluster.local", "A"],
        "10.96.0.50",
    );
    // Measured, not asserted: printed for the notes (`--nocapture`).
    eprintln!(
        "kubectl apply took {written:?}; answered {:?} after it returned; RSS {}",
        applied.elapsed() - written,
        dns.rss()
    );
    // A Service another proxy routes still has its name: DNS watches every Service.
    dns.wait_for(
        &["+short", "db.default.svc.cluster.local", "A"],
        "10.96.0.51",
    );
    dns.wait_for(&["-x", "10.96.0.50"], "web.default.svc.cluster.local.");

    kubectl(&kubeconfig, dir.path(), &["delete", "service", "db"], "");
    let gone = dns.wait_for(&["db.default.svc.cluster.local", "A"], "status: NXDOMAIN");
    assert!(gone.contains("flags: qr aa"), "{gone}");

    // The API server goes away: the last zone keeps answering.
    api.stop();
    for _ in 0..5 {
        let out = dns.dig(&["+short", "web.default.svc.cluster.local", "A"]);
        assert_eq!(out.trim(), "10.96.0.50");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn before_the_first_lists_cluster_names_get_servfail_and_ready_is_503() {
    // Nothing listens there: the watches keep retrying, and no list completes.
    let dns = Dns::start(&["--master", "http://127.0.0.1:9"]);
    let out = dns.dig(&["web.default.svc.cluster.local", "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert_eq!(dns.ready_status(), "HTTP/1.1 503 Service Unavailable");
}

#[test]
fn an_upstream_that_is_the_server_itself_stops_it_naming_the_upstream() {
    // A port free for UDP and TCP, so the server can be told its own address as upstream.
    let addr = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = udp.local_addr().expect("addr");
        if std::net::TcpListener::bind(addr).is_ok() {
            break addr;
        }
    };
    let out = Command::new(BIN)
        .args(["dns", "--master", "http://127.0.0.1:9"])
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &addr.to_string(),
        ])
        .args(["--health", "", "--ready", "", "--metrics", ""])
        .stdin(Stdio::null())
        .output()
        .expect("run kube-netd dns");
    assert!(!out.status.success(), "a forwarding loop must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forwarding loop detected") && stderr.contains(&format!("upstream {addr}")),
        "{stderr}"
    );
}
