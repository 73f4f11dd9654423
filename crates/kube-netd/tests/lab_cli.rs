//! `kube-netd lab ...` end to end, through the binary, with real namespaces (needs root).
//! Each test uses its own lab name and state root and runs `lab down` on drop.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
const STATE_ROOT: &str = "/run/kube-netd-tests";

const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: echo}}
spec: {nodeName: node-1, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: echo}}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
spec: {selector: {app: echo}, ports: [{port: 80}]}
"#;

const EXTRA_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 8080}]}]}
"#;

struct TestLab {
    name: String,
    dir: PathBuf,
}

impl TestLab {
    fn new(test: &str) -> TestLab {
        let name = format!("cli{}-{test}", std::process::id() % 100_000);
        let dir = PathBuf::from(STATE_ROOT).join(format!("{name}-manifests"));
        std::fs::create_dir_all(&dir).expect("manifest dir");
        TestLab { name, dir }
    }

    fn file(&self, file: &str, text: &str) -> String {
        let path = self.dir.join(file);
        std::fs::write(&path, text).expect("write manifest");
        path.to_string_lossy().into_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("lab")
            .arg(args[0])
            .args(["--name", &self.name, "--state-root", STATE_ROOT])
            .args(&args[1..]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kube-netd")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kube-netd lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn leftovers(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        let mut out: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let marker = format!("{STATE_ROOT}/{}", self.name);
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
                out.push(format!("process {}", e.file_name().to_string_lossy()));
            }
        }
        if PathBuf::from(&marker).exists() {
            out.push(marker);
        }
        out
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.command(&["down"]).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn lab_commands_build_probe_change_and_remove_a_cluster() {
    let lab = TestLab::new("cmds");
    let manifest = lab.file("cluster.yaml", CLUSTER);
    let refused = lab.run(&["up", "-f", &manifest, "--mode", "nftables"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nftables"),
        "a clear refusal"
    );

    let up = lab.ok(&["up", "-f", &manifest]);
    assert!(
        up.contains("2 nodes, 3 pods"),
        "x/a, x/b and the cluster DNS: {up}"
    );
    let again = lab.run(&["up", "-f", &manifest]);
    assert!(
        !again.status.success(),
        "a second lab of the same name is refused"
    );

    let pods = lab.ok(&["get", "pods", "-n", "x", "-o", "json"]);
    assert!(pods.contains("\"podIP\""), "{pods}");

    let probe = lab.ok(&[
        "probe", "x/a", "x/b", "--port", "80", "-o", "json", "--count", "2",
    ]);
    let lines: Vec<serde_json::Value> = probe
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per attempt"))
        .collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        assert_eq!(v["outcome"], "connected", "{v}");
        assert_eq!(v["served_by"], "x/b", "{v}");
        assert_eq!(v["protocol"], "tcp", "{v}");
        assert!(
            v["client_ip_seen"].is_string() && v["latency_ms"].is_number(),
            "{v}"
        );
    }
    let closed = lab.ok(&["probe", "x/b", "x/a", "--port", "81", "-o", "json"]);
    assert!(closed.contains("\"outcome\":\"refused\""), "{closed}");
    let udp = lab.ok(&["probe", "x/a", "x/b", "--port", "53", "--protocol", "udp"]);
    assert!(
        udp.contains("connected") && udp.contains("served by x/b"),
        "{udp}"
    );

    let matrix = lab.ok(&["matrix", "--port", "80", "-n", "x", "-o", "json"]);
    let m: serde_json::Value = serde_json::from_str(&matrix).expect("matrix json");
    assert_eq!(
        m["allowed"],
        serde_json::json!([[true, true], [true, true]]),
        "{m}"
    );
    let text = lab.ok(&["matrix", "--port", "80"]);
    assert!(text.contains("x/a") && text.contains('.'), "{text}");

    let resolv = lab.ok(&["exec", "x/a", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search x.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(
        !lab.run(&["exec", "external", "--", "false"])
            .status
            .success(),
        "exit status is passed on"
    );

    let extra = lab.file("extra.yaml", EXTRA_POD);
    assert!(lab.ok(&["apply", "-f", &extra]).contains("pod/c created"));
    let probe = lab.ok(&["probe", "x/a", "x/c", "--port", "8080"]);
    assert!(probe.contains("served by x/c"), "{probe}");
    assert!(lab.ok(&["delete", "-f", &extra]).contains("pod/c deleted"));

    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(lab.ok(&["down"]).contains("no lab"), "down is idempotent");
}

#[test]
fn down_after_a_killed_up_leaves_nothing() {
    let lab = TestLab::new("kill");
    let manifest = lab.file("cluster.yaml", CLUSTER);
    for delay in [50, 250, 1000] {
        let mut child = lab
            .command(&["up", "-f", &manifest])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        lab.ok(&["down"]);
        assert_eq!(
            lab.leftovers(),
            Vec::<String>::new(),
            "killed after {delay} ms"
        );
    }
}

/// The outcome of each attempt of `lab probe ARGS -o json`.
fn probe_outcomes(lab: &TestLab, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["probe"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    lab.ok(&argv)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).expect("one JSON object per attempt");
            format!("{} -> {}: {}", v["from"], v["to"], v["outcome"])
        })
        .collect()
}

/// Two Pods deleted and re-created on every round, one per Node, behind Service `y/re`.
const RECREATED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: y, labels: {app: re}}
spec: {nodeName: node-1, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: y, labels: {app: re}}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
"#;

const RECREATED_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: re, namespace: y}
spec: {selector: {app: re}, ports: [{port: 80}]}
"#;

#[test]
fn recreated_pods_are_reachable_as_soon_as_apply_returns() {
    let lab = TestLab::new("recreate");
    let cluster = lab.file(
        "cluster.yaml",
        &format!("{CLUSTER}---\n{RECREATED_SERVICE}---\n{RECREATED}"),
    );
    let pods = lab.file("pods.yaml", RECREATED);
    lab.ok(&["up", "-f", &cluster]);
    let ips = |lab: &TestLab| lab.ok(&["get", "pods", "-n", "y", "-o", "wide"]);
    let first_ips = ips(&lab);
    // Generous: a stale neighbour entry costs seconds, a healthy connection a millisecond.
    let probe = ["--port", "80", "--timeout-ms", "2000"];
    let mut failures = Vec::new();
    // Round 0 fills every peer's neighbour cache with the first incarnations' addresses.
    for round in 0..=10 {
        if round > 0 {
            lab.ok(&["delete", "-f", &pods]);
            lab.ok(&["apply", "-f", &pods]);
            assert_eq!(ips(&lab), first_ips, "the same names get the same IPs");
        }
        // x/a shares node-1 with y/p1, x/b node-2 with y/p2.
        for from in ["x/a", "x/b"] {
            for (to, count) in [("y/p1", "1"), ("y/p2", "1"), ("svc/y/re", "4")] {
                let mut args = vec![from, to, "--count", count];
                args.extend_from_slice(&probe);
                failures.extend(
                    probe_outcomes(&lab, &args)
                        .into_iter()
                        .filter(|o| !o.ends_with("\"connected\""))
                        .map(|o| format!("round {round}: {o}")),
                );
            }
        }
    }
    assert_eq!(failures, Vec::<String>::new());
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

/// `y/routed` (its endpoint on node-2) and `y/empty` (NodePort 30080, no endpoints).
const REJECT_SERVICES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: y, labels: {app: far}}
spec: {nodeName: node-2, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: y}
spec: {selector: {app: nothing}, type: NodePort, ports: [{port: 80, nodePort: 30080}]}
"#;

const ROUTED_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: y}
spec: {selector: {app: far}, ports: [{port: 80}]}
"#;

#[test]
fn a_reject_right_after_forwarded_traffic_is_not_rate_limited_away() {
    let lab = TestLab::new("reject");
    let cluster = lab.file(
        "cluster.yaml",
        &format!("{CLUSTER}---\n{REJECT_SERVICES}---\n{ROUTED_SERVICE}"),
    );
    let routed = lab.file("routed.yaml", ROUTED_SERVICE);
    lab.ok(&["up", "-f", &cluster]);
    // The client routes the service range via node-1, as a static route on a router would.
    lab.ok(&[
        "exec",
        "external",
        "--",
        "ip",
        "route",
        "add",
        "10.96.0.0/12",
        "via",
        "172.18.0.2",
    ]);
    let served = lab.ok(&["probe", "external", "svc/y/routed", "--port", "80"]);
    // node-1 forwarded the connection back out of its eth0, to node-2.
    assert!(served.contains("served by y/far"), "{served}");
    lab.ok(&["delete", "-f", &routed]);
    // Each attempt waits less than the SYN retransmit (1 s): a reject that the kernel
    // suppressed shows as a timeout.
    let outcomes = probe_outcomes(
        &lab,
        &[
            "external",
            "node/node-1",
            "--port",
            "30080",
            "--count",
            "3",
            "--timeout-ms",
            "700",
        ],
    );
    assert_eq!(
        outcomes,
        vec!["\"external\" -> \"node/node-1\": \"refused\""; 3]
    );
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

/// `x/held` at a fixed ClusterIP, over x/a and x/b.
const HELD_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: held, namespace: x}
spec: {selector: {app: echo}, clusterIP: 10.96.0.80, ports: [{port: 80}]}
"#;

/// The agents' PIDs recorded in the lab's state, by Node.
fn recorded_agents(lab: &TestLab) -> std::collections::BTreeMap<String, u64> {
    let path = PathBuf::from(STATE_ROOT).join(&lab.name).join("lab.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("lab.json")).expect("JSON");
    json["agents"]
        .as_object()
        .expect("agents by node")
        .iter()
        .map(|(node, pid)| (node.clone(), pid.as_u64().expect("pid")))
        .collect()
}

#[test]
fn restart_replaces_an_agent_and_keeps_established_connections() {
    let lab = TestLab::new("restart");
    let manifest = lab.file("cluster.yaml", &format!("{CLUSTER}---\n{HELD_SERVICE}"));
    lab.ok(&["up", "-f", &manifest]);
    let client_ns = netd_lab::names::Names::new(&lab.name)
        .expect("lab name")
        .pod_ns(&netd_model::PodRef::new("x", "a"));
    let mut conn = netd_testkit::held::HeldConnection::open(
        &client_ns,
        "10.96.0.80:80".parse().expect("address"),
        Duration::from_secs(5),
    );
    assert!(conn.greeting().contains("\"pod\""), "{}", conn.greeting());
    conn.round_trip("before");

    for (node, extra) in [("node-1", None), ("node-2", Some("--kill"))] {
        let before = recorded_agents(&lab);
        let mut args = vec!["restart", node];
        args.extend(extra);
        // The connection keeps echoing while the agent is replaced and the Node resyncs.
        let mut restart = lab
            .command(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn lab restart");
        let mut ticks = 0;
        while restart.try_wait().expect("poll lab restart").is_none() {
            conn.round_trip(&format!("during {node} {ticks}"));
            ticks += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = restart.wait_with_output().expect("lab restart");
        assert!(out.status.success(), "lab restart {args:?} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("agent of node {node} restarted")),
            "{text}"
        );
        conn.round_trip(&format!("after {node}"));
        let after = recorded_agents(&lab);
        assert_ne!(
            after[node], before[node],
            "a new agent of {node} is recorded"
        );
        for other in before.keys().filter(|n| n.as_str() != node) {
            assert_eq!(after[other], before[other], "{other}'s agent untouched");
        }
        let old = u32::try_from(before[node]).expect("pid");
        assert!(
            !netd_kernel::process::is_alive(old),
            "the old agent of {node} is gone"
        );
    }
    // The restarted agents follow the next change.
    let extra = lab.file("extra.yaml", EXTRA_POD);
    lab.ok(&["apply", "-f", &extra]);
    let probe = lab.ok(&["probe", "x/a", "x/c", "--port", "8080"]);
    assert!(probe.contains("served by x/c"), "{probe}");

    let unknown = lab.run(&["restart", "node-9"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("node-9"),
        "a clear error naming the node"
    );
    drop(conn);
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
