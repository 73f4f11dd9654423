//! `kube-netd agent` end to end against a real API server, without touching the host's
//! namespace: the API server (netd-apiserver, on 127.0.0.1) and the agent run inside the same
//! scratch network namespace, so the agent reaches the server only there and programs only
//! that namespace.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd_kernel::netns;
use netd_testkit::api::TestApiServer;
use netd_testkit::scratch::ScratchNetns;
use serde_json::json;

/// The agent process, killed by PID on drop.
struct Agent(Child);

/// The argument that marks our agent processes (checked before signalling one by PID).
const AGENT_MARKER: &str = "--hostname-override=node-1";

impl Agent {
    /// `kube-netd agent` for node-1 inside `ns`, against the API server of `kubeconfig`, with
    /// `flags` after the ones every test gives.
    fn start(ns: &str, kubeconfig: &std::path::Path, mode: &str, flags: &[&str]) -> Agent {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kube-netd")])
            .arg("agent")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                AGENT_MARKER,
                &format!("--proxy-mode={mode}"),
                "--min-sync-period=100ms",
                "--healthz-bind-address=127.0.0.1:10256",
            ])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent");
        Agent(child)
    }

    /// Stops the agent with `signal` and waits for it to exit.
    fn stop(&mut self, signal: netd_kernel::process::Signal) {
        netd_kernel::process::signal_if_ours(self.0.id(), AGENT_MARKER, signal)
            .expect("signal the agent");
        self.0.wait().expect("wait for the agent");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An API server in `ns` storing under `dir`, holding the `default` Namespace, Node
/// `node-1` and the Service `web` (10.96.0.20:80 to 8080) with one endpoint, 10.244.1.5; and
/// the path of a kubeconfig for it.
fn seeded(ns: &str, dir: &std::path::Path) -> (TestApiServer, std::path::PathBuf) {
    let server = TestApiServer::start(Some(ns), &dir.join("api"));
    server.create([
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}]}}),
        slice(&["10.244.1.5"], None),
    ]);
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    (server, kubeconfig)
}

fn slice(addresses: &[&str], rv: Option<&str>) -> serde_json::Value {
    let mut slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}, "nodeName": "node-1"}],
    });
    if let Some(rv) = rv {
        slice["metadata"]["resourceVersion"] = json!(rv);
    }
    slice
}

/// `slice` with the EndpointSlice controller's last-change-trigger-time `at`.
fn triggered(mut slice: serde_json::Value, at: &str) -> serde_json::Value {
    slice["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": at});
    slice
}

/// The value of the sample `name` on the agent's `/metrics` (127.0.0.1:10249 in `ns`), once
/// it is at least `at_least`.
fn wait_for_metric(ns: &str, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(ns);
        if let Some(v) = sample(&text, name).filter(|v| *v >= at_least) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {at_least}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent's `/metrics` text (127.0.0.1:10249 in `ns`).
fn metrics(ns: &str) -> String {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter");
        let mut stream = TcpStream::connect(("127.0.0.1", 10249)).expect("connect");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    })
    .join()
    .expect("metrics thread")
}

/// The value of the sample `name` (labels included) in metrics `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
}

/// kube-proxy's options end to end: `--network-policy=false` programs no policy chain, and
/// `--detect-local-mode=BridgeInterface` exempts what arrives on the bridge from the
/// ClusterIP's masquerade rule, in iptables and nftables mode.
#[test]
fn the_agent_takes_kube_proxys_options() {
    for mode in ["iptables", "nftables"] {
        let ns = ScratchNetns::new("agto", mode);
        let dir = tempfile::tempdir().expect("temp dir");
        let (_server, kubeconfig) = seeded(ns.name(), dir.path());
        let _agent = Agent::start(
            ns.name(),
            &kubeconfig,
            mode,
            &[
                "--network-policy=false",
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cni0",
            ],
        );
        wait_for(ns.name(), "10.244.1.5");
        let rules = rules(ns.name());
        // In nftables mode a plain ClusterIP port (no affinity, no node ports) has no rule of
        // its own: one masquerade rule serves every port in the `plain-services` set.
        let (service, detector, masquerade, policy) = match mode {
            "iptables" => ("10.96.0.20", "! -i cni0", "-j KUBE-MARK-MASQ", "KNP-"),
            _ => (
                "@plain-services",
                "iifname != \"cni0\"",
                "jump mark-for-masquerade",
                "policy-",
            ),
        };
        assert!(
            rules
                .lines()
                .any(|l| l.contains(service) && l.contains(detector) && l.contains(masquerade)),
            "{mode}: {rules}"
        );
        if mode == "nftables" {
            let plain = rules
                .split("set plain-services {")
                .nth(1)
                .and_then(|set| set.split("\n\t}").next())
                .unwrap_or_default();
            assert!(plain.contains("10.96.0.20"), "{mode}: {rules}");
        }
        assert!(!rules.contains(policy), "{mode}: {rules}");
    }
}

/// `--iptables-localhost-nodeports` turns `route_localnet` on in the agent's namespace and
/// adds the rule that drops the martian packets it lets in; without it neither happens.
#[test]
fn localhost_nodeports_route_localnet() {
    for on in [false, true] {
        let ns = ScratchNetns::new("agtl", if on { "on" } else { "off" });
        let dir = tempfile::tempdir().expect("temp dir");
        let (_server, kubeconfig) = seeded(ns.name(), dir.path());
        let flags: &[&str] = if on {
            &["--iptables-localhost-nodeports"]
        } else {
            &[]
        };
        let _agent = Agent::start(ns.name(), &kubeconfig, "iptables", flags);
        wait_for(ns.name(), "10.244.1.5");
        let sysctl = netd_kernel::link::read_sysctl(ns.name(), "net.ipv4.conf.all.route_localnet")
            .expect("read route_localnet");
        assert_eq!(
            sysctl.as_deref(),
            Some(if on { "1" } else { "0" }),
            "on: {on}"
        );
        let rules = rules(ns.name());
        assert_eq!(
            rules.contains("block incoming localnet connections"),
            on,
            "on: {on}: {rules}"
        );
    }
}

/// A kubeconfig that cannot be read stops the agent before it touches the kernel: the rules
/// another proxy mode left (which a starting agent removes) are still there.
#[test]
fn an_unreadable_kubeconfig_changes_no_rule() {
    let ns = ScratchNetns::new("agt", "nokc");
    netns::exec(ns.name(), &["nft", "add", "table", "ip", "kube-netd"]).expect("nft add table");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut agent = Agent::start(ns.name(), &dir.path().join("missing"), "iptables", &[]);
    let status = agent.0.wait().expect("wait for the agent");
    assert!(!status.success(), "{status}");
    assert!(
        rules(ns.name()).contains("table ip kube-netd"),
        "{}",
        rules(ns.name())
    );
}

/// Every rule of the namespace, iptables and nftables together.
fn rules(ns: &str) -> String {
    let mut out = netd_kernel::rules::iptables_save(ns).expect("iptables-save");
    let nft = netns::exec(ns, &["nft", "list", "ruleset"]).expect("nft list ruleset");
    out.push_str(&String::from_utf8_lossy(&nft.stdout));
    out
}

fn wait_for(ns: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rules(ns).contains(what) {
        assert!(
            Instant::now() < deadline,
            "{what} never programmed:\n{}",
            rules(ns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET path` on 127.0.0.1:port inside `ns`: the status line.
fn http_status(ns: &str, port: u16, path: &str) -> String {
    try_http_status(ns, port, path).unwrap_or_else(|| panic!("nothing answers on :{port}"))
}

/// The status line of `GET path` on 127.0.0.1:port inside `ns`, or `None` if nothing
/// answers (yet).
fn try_http_status(ns: &str, port: u16, path: &str) -> Option<String> {
    let ns = ns.to_owned();
    let path = path.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.lines().next().map(str::to_owned)
    })
    .join()
    .expect("http thread")
}

fn agent_follows_the_api_server(mode: &str) {
    let ns = ScratchNetns::new("agt", mode);
    // A Pod on a bridge, as a bridge CNI makes them, on a node that bridges past netfilter.
    let pod = ScratchNetns::new("agt", &format!("{mode}-pod"));
    netd_kernel::link::add_bridge(ns.name(), "cni0").expect("bridge");
    netd_kernel::link::add_veth(ns.name(), "veth0", pod.name(), "eth0").expect("veth");
    netd_kernel::link::set_master(ns.name(), "veth0", "cni0").expect("bridge port");
    let bridged = "net.bridge.bridge-nf-call-iptables";
    netd_kernel::link::sysctl(ns.name(), bridged, "0").expect("sysctl");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, kubeconfig) = seeded(ns.name(), dir.path());
    let api = server.registry();
    let mut agent = Agent::start(ns.name(), &kubeconfig, mode, &[]);

    wait_for(ns.name(), "10.244.1.5");
    wait_for(ns.name(), "10.96.0.20");
    // The agent made bridged traffic meet the policy rules, and says so.
    wait_for_metric(ns.name(), "kubeproxy_network_policy_enforced", 1.0);
    assert_eq!(
        netd_kernel::link::read_sysctl(ns.name(), bridged).expect("read"),
        Some("1".to_owned())
    );

    // A change through the API server is programmed.
    let current = api
        .get(&netd_apiserver::store::object_id(&slice(&[], None)).expect("id"))
        .expect("the slice");
    let rv = current["metadata"]["resourceVersion"].as_str().expect("rv");
    // The first sync counted what it programmed; NetworkPolicy's chains are there.
    let policy = if mode == "iptables" {
        "KNP-"
    } else {
        "policy-"
    };
    assert!(rules(ns.name()).contains(policy), "{}", rules(ns.name()));
    let endpoint_changes = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
    let first = wait_for_metric(ns.name(), endpoint_changes, 1.0);
    wait_for_metric(
        ns.name(),
        "kubeproxy_sync_proxy_rules_service_changes_total",
        1.0,
    );
    let now = jiff::Timestamp::now().to_string();
    api.update(
        triggered(slice(&["10.244.1.6"], Some(rv)), &now),
        netd_apiserver::WriteOptions::default(),
    )
    .expect("update");
    wait_for(ns.name(), "10.244.1.6");
    assert!(
        !rules(ns.name()).contains("10.244.1.5"),
        "old endpoint left"
    );
    // Counted, and measured from the slice's trigger time.
    wait_for_metric(ns.name(), endpoint_changes, first + 1.0);
    wait_for_metric(
        ns.name(),
        "kubeproxy_network_programming_duration_seconds_count",
        1.0,
    );

    // Without the API server the rules stay and /healthz still answers.
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(rules(ns.name()).contains("10.244.1.6"));
    assert_eq!(http_status(ns.name(), 10256, "/healthz"), "HTTP/1.0 200 OK");
    assert!(
        agent.0.try_wait().expect("agent status").is_none(),
        "agent exited"
    );

    // Stopping the agent flushes nothing.
    agent.stop(netd_kernel::process::Signal::SIGKILL);
    assert!(rules(ns.name()).contains("10.244.1.6"));
}

/// The agent says which API state it has programmed: per kind, the highest resourceVersion
/// among the events of the last snapshot it applied, a delete's included. While the rules
/// of a write cannot be applied (a chain the agent must remove is held by a jump from a
/// chain of the test's), the metric stays below the write's resourceVersion.
#[test]
fn the_agent_exports_the_resource_versions_it_has_programmed() {
    let ns = ScratchNetns::new("agt", "rv");
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, kubeconfig) = seeded(ns.name(), dir.path());
    // Failed syncs are retried every sync period.
    let _agent = Agent::start(ns.name(), &kubeconfig, "iptables", &["--sync-period=1s"]);
    let api = server.registry();
    let slices = r#"netd_agent_programmed_resource_version{kind="EndpointSlice"}"#;
    wait_for(ns.name(), "10.244.1.5");
    let seeded = wait_for_metric(ns.name(), slices, 1.0);

    // The endpoint's chain, which the next change removes, is held.
    let saved = rules(ns.name());
    let endpoint_chain = saved
        .lines()
        .filter(|l| l.contains("10.244.1.5"))
        .find_map(|l| {
            l.strip_prefix("-A ")?
                .split(' ')
                .next()?
                .strip_prefix("KUBE-SEP-")
        })
        .map(|hash| format!("KUBE-SEP-{hash}"))
        .unwrap_or_else(|| panic!("no endpoint chain for 10.244.1.5:\n{saved}"));
    let iptables = |args: &[&str]| {
        let out = netns::exec(
            ns.name(),
            &[&["iptables", "-w", "-t", "nat"], args].concat(),
        )
        .expect("iptables");
        assert!(out.status.success(), "iptables {args:?}: {out:?}");
    };
    iptables(&["-N", "TEST-HOLD"]);
    iptables(&["-A", "TEST-HOLD", "-j", &endpoint_chain]);

    let id = netd_apiserver::store::object_id(&slice(&[], None)).expect("id");
    let current = api.get(&id).expect("the slice");
    let rv = current["metadata"]["resourceVersion"].as_str().expect("rv");
    let written = api
        .update(
            slice(&["10.244.1.6"], Some(rv)),
            netd_apiserver::WriteOptions::default(),
        )
        .expect("update");
    let updated = resource_version(&written.object);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failures = "kubeproxy_sync_proxy_rules_restore_failures_total{";
    let text = loop {
        let text = metrics(ns.name());
        if text.lines().any(|l| l.starts_with(failures)) {
            break text;
        }
        assert!(Instant::now() < deadline, "no restore failed:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sample(&text, slices), Some(seeded), "{text}");
    assert!((seeded as u64) < updated);
    assert!(!rules(ns.name()).contains("10.244.1.6"));

    // Released, the change is programmed, and then said to be.
    iptables(&["-F", "TEST-HOLD"]);
    iptables(&["-X", "TEST-HOLD"]);
    wait_for_metric(ns.name(), slices, updated as f64);
    assert!(rules(ns.name()).contains("10.244.1.6"));

    // A delete's resourceVersion is the deletion's.
    let deleted = api
        .delete(&id, None, netd_apiserver::WriteOptions::default())
        .expect("delete");
    wait_for_metric(ns.name(), slices, resource_version(&deleted) as f64);
    assert!(!rules(ns.name()).contains("10.244.1.6"));
}

/// An update the agent reads nothing of (an annotation it drops) changes no rule and causes
/// no sync, yet the state it stands for is programmed: the metric reaches its
/// resourceVersion without waiting for the periodic sync (an hour here).
#[test]
fn an_update_that_changes_no_rule_counts_as_programmed() {
    let ns = ScratchNetns::new("agt", "rvnop");
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, kubeconfig) = seeded(ns.name(), dir.path());
    let _agent = Agent::start(ns.name(), &kubeconfig, "iptables", &["--sync-period=1h"]);
    let services = r#"netd_agent_programmed_resource_version{kind="Service"}"#;
    wait_for(ns.name(), "10.244.1.5");
    let seeded = wait_for_metric(ns.name(), services, 1.0);
    let api = server.registry();
    let id = netd_apiserver::store::object_id(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"}
    }))
    .expect("id");
    let mut service = api.get(&id).expect("the Service");
    service["metadata"]["annotations"] = json!({"example.com/note": "read by nobody"});
    let written = api
        .update(service, netd_apiserver::WriteOptions::default())
        .expect("update");
    let annotated = resource_version(&written.object);
    assert!((seeded as u64) < annotated);
    wait_for_metric(ns.name(), services, annotated as f64);
}

fn resource_version(object: &serde_json::Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("a numeric resourceVersion")
}

/// The Service of [`agent_follows_the_api_server`] in front of a real echo server in a pod
/// namespace behind a veth; clients in the node connect to it without pause while the agent
/// is stopped (SIGTERM, then SIGKILL) and started again, and one connection is held open
/// throughout. Not one connection may fail, and the held one keeps echoing.
fn agent_restarts_under_traffic_fail_no_connection(mode: &str) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use netd_kernel::process::Signal;
    use netd_testkit::held::{HeldConnection, in_netns};

    let node = ScratchNetns::new("agt", &format!("rs-{mode}"));
    let pod = ScratchNetns::new("agt", &format!("rp-{mode}"));
    netd_kernel::link::add_veth(node.name(), "vpod", pod.name(), "eth0").expect("veth");
    netd_kernel::link::add_address(node.name(), "vpod", "10.244.1.1".parse().expect("ip"), 24)
        .expect("node address");
    netd_kernel::link::add_address(pod.name(), "eth0", "10.244.1.5".parse().expect("ip"), 24)
        .expect("pod address");
    netd_kernel::link::replace_route(pod.name(), "default", "10.244.1.1".parse().expect("ip"), 4)
        .expect("pod route");
    // Connecting to a ClusterIP needs a route before the DNAT picks the endpoint.
    netd_kernel::link::replace_route(node.name(), "default", "10.244.1.5".parse().expect("ip"), 4)
        .expect("node route");
    let serving = Arc::new(AtomicBool::new(true));
    let echo = in_netns(pod.name(), || {
        netd_lab::echo::EchoServer::bind(
            netd_model::PodRef::new("default", "web-a"),
            &[(netd_model::Protocol::Tcp, 8080)],
        )
        .expect("bind the echo server")
    });
    {
        let serving = serving.clone();
        std::thread::spawn(move || echo.serve(|| serving.load(Ordering::Relaxed)));
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, kubeconfig) = seeded(node.name(), dir.path());
    let mut agent = Agent::start(node.name(), &kubeconfig, mode, &[]);
    wait_for(node.name(), "10.96.0.20");
    let vip: std::net::SocketAddr = "10.96.0.20:80".parse().expect("vip");
    let mut held = HeldConnection::open(node.name(), vip, Duration::from_secs(5));

    let running = Arc::new(AtomicBool::new(true));
    let (connected, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients = {
        let (ns, running) = (node.name().to_owned(), running.clone());
        let (connected, failed) = (connected.clone(), failed.clone());
        std::thread::spawn(move || {
            netns::enter(&ns).expect("enter the node");
            while running.load(Ordering::Relaxed) {
                let greeted = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(
                    |mut stream| {
                        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut first = [0u8; 1];
                        stream.read_exact(&mut first)
                    },
                );
                match greeted {
                    Ok(()) => connected.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    for signal in [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGTERM] {
        std::thread::sleep(Duration::from_millis(500));
        agent.stop(signal);
        std::thread::sleep(Duration::from_millis(300));
        agent = Agent::start(node.name(), &kubeconfig, mode, &[]);
        // Up again once it serves /healthz; then traffic flows past its first sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !try_http_status(node.name(), 10256, "/healthz").is_some_and(|s| s.contains("200")) {
            assert!(
                Instant::now() < deadline,
                "the restarted agent never served /healthz"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        held.round_trip(&format!("after {signal:?}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    running.store(false, Ordering::Relaxed);
    clients.join().expect("clients");
    serving.store(false, Ordering::Relaxed);
    let (connected, failed) = (
        connected.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed",
        connected + failed
    );
    assert!(connected > 0, "no connection was made");
    held.round_trip("at the end");
}

#[test]
fn nftables_agent_follows_the_api_server() {
    agent_follows_the_api_server("nftables");
}

#[test]
fn iptables_agent_follows_the_api_server() {
    agent_follows_the_api_server("iptables");
}

#[test]
fn iptables_agent_restarts_under_traffic_fail_no_connection() {
    agent_restarts_under_traffic_fail_no_connection("iptables");
}

#[test]
fn nftables_agent_restarts_under_traffic_fail_no_connection() {
    agent_restarts_under_traffic_fail_no_connection("nftables");
}
