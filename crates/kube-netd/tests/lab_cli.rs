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

const DUAL_STACK_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo6, namespace: x}
spec: {ipFamilyPolicy: PreferDualStack, selector: {app: echo}, ports: [{port: 80}]}
"#;

const ISOLATE_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-b, namespace: x}
spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}
"#;

/// The Service `x/NAME` as `lab get svc -n x -o json` prints it (alone, or in a List).
fn service_json(lab: &TestLab, name: &str) -> serde_json::Value {
    let out = lab.ok(&["get", "svc", "-n", "x", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("service json");
    let items = match v.get("items").and_then(serde_json::Value::as_array) {
        Some(items) => items.clone(),
        None => vec![v],
    };
    items
        .into_iter()
        .find(|s| s["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no service x/{name} in {out}"))
}

/// The JSON lines of a `lab probe -o json`, each of which must have connected.
fn connected(out: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per attempt"))
        .collect();
    assert!(!lines.is_empty(), "no attempts: {out}");
    for v in &lines {
        assert_eq!(v["outcome"], "connected", "{v}");
    }
    lines
}

#[test]
fn a_dual_stack_lab_answers_over_both_families() {
    let lab = TestLab::new("dual");
    // x/b labelled for ISOLATE_B.
    let cluster = CLUSTER.replace(
        "name: b, namespace: x, labels: {app: echo}",
        "name: b, namespace: x, labels: {app: echo, pod: b}",
    );
    let manifest = lab.file("cluster.yaml", &format!("{cluster}---{DUAL_STACK_SERVICE}"));
    let bad = lab.run(&["up", "-f", &manifest, "--ip-family", "ipv5"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("ipv5") && err.contains("dual"), "{err}");
    let both = lab.run(&[
        "up",
        "--ip-family",
        "dual",
        "--service-cidr",
        "10.96.0.0/16",
    ]);
    assert!(
        !both.status.success(),
        "--ip-family picks the ranges itself"
    );
    assert!(
        !PathBuf::from(STATE_ROOT).join(&lab.name).exists(),
        "nothing built"
    );

    lab.ok(&["up", "-f", &manifest, "--ip-family", "dual"]);
    let svc = service_json(&lab, "echo6");
    assert_eq!(
        svc["spec"]["ipFamilies"],
        serde_json::json!(["IPv4", "IPv6"]),
        "{svc}"
    );
    assert_eq!(
        svc["spec"]["clusterIPs"].as_array().map(Vec::len),
        Some(2),
        "{svc}"
    );

    // Pod to pod across Nodes, over IPv6: the server sees the client's IPv6 address.
    let direct = lab.ok(&[
        "probe",
        "x/a",
        "x/b",
        "--port",
        "80",
        "--ip-family",
        "ipv6",
        "-o",
        "json",
    ]);
    for v in connected(&direct) {
        assert_eq!(v["served_by"], "x/b", "{v}");
        let seen = v["client_ip_seen"].as_str().unwrap_or_default();
        assert!(seen.starts_with("fd00:10:244:"), "{v}");
    }
    for family in ["ipv4", "ipv6"] {
        let via_service = lab.ok(&[
            "probe",
            "x/a",
            "svc/x/echo6",
            "--port",
            "80",
            "--ip-family",
            family,
            "--count",
            "4",
            "-o",
            "json",
        ]);
        connected(&via_service);
        // By name: the lab's DNS answers A and AAAA for the dual-stack Service.
        let by_name = lab.ok(&[
            "probe",
            "x/b",
            "echo6",
            "--port",
            "80",
            "--ip-family",
            family,
            "-o",
            "json",
        ]);
        connected(&by_name);
    }
    let single = lab.run(&[
        "probe",
        "x/a",
        "svc/x/echo",
        "--port",
        "80",
        "--ip-family",
        "ipv6",
    ]);
    assert!(
        !single.status.success(),
        "a single-stack IPv4 Service has no IPv6 ClusterIP"
    );
    let err = String::from_utf8_lossy(&single.stderr);
    assert!(err.contains("IPv6 ClusterIP"), "{err}");
    // Nor an AAAA record: its name does not resolve over IPv6 (not to `::ffff:` + IPv4).
    let by_name = lab.run(&[
        "probe",
        "x/a",
        "echo",
        "--port",
        "80",
        "--ip-family",
        "ipv6",
    ]);
    assert!(
        !by_name.status.success(),
        "no AAAA record for a single-stack IPv4 Service"
    );
    let err = String::from_utf8_lossy(&by_name.stderr);
    assert!(err.contains("cannot resolve \"echo\""), "{err}");

    let matrix = lab.ok(&[
        "matrix",
        "--port",
        "80",
        "-n",
        "x",
        "--ip-family",
        "ipv6",
        "-o",
        "json",
    ]);
    let m: serde_json::Value = serde_json::from_str(&matrix).expect("matrix json");
    assert_eq!(
        m["allowed"],
        serde_json::json!([[true, true], [true, true]]),
        "{m}"
    );
    // A policy isolates x/b in both families: its node programs iptables and ip6tables.
    let policy = lab.file("policy.yaml", ISOLATE_B);
    lab.ok(&["apply", "-f", &policy]);
    for family in ["ipv4", "ipv6"] {
        let matrix = lab.ok(&[
            "matrix",
            "--port",
            "80",
            "-n",
            "x",
            "--ip-family",
            family,
            "-o",
            "json",
        ]);
        let m: serde_json::Value = serde_json::from_str(&matrix).expect("matrix json");
        assert_eq!(
            m["allowed"],
            serde_json::json!([[true, false], [true, true]]),
            "{family}: {m}"
        );
    }

    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn an_ipv6_only_lab_answers_over_ipv6() {
    let lab = TestLab::new("six");
    let manifest = lab.file("cluster.yaml", CLUSTER);
    lab.ok(&["up", "-f", &manifest, "--ip-family", "ipv6"]);
    let svc = service_json(&lab, "echo");
    assert_eq!(
        svc["spec"]["ipFamilies"],
        serde_json::json!(["IPv6"]),
        "{svc}"
    );
    // No --ip-family: the cluster's only family. The name resolves to an AAAA record of
    // the lab's DNS, itself reached through its IPv6 ClusterIP.
    let by_name = lab.ok(&[
        "probe", "x/a", "echo", "--port", "80", "--count", "4", "-o", "json",
    ]);
    connected(&by_name);
    let icmp = lab.ok(&["probe", "external", "node/node-2", "--protocol", "icmp"]);
    assert!(icmp.contains("connected"), "{icmp}");
    let matrix = lab.ok(&["matrix", "--port", "80", "-n", "x", "-o", "json"]);
    let m: serde_json::Value = serde_json::from_str(&matrix).expect("matrix json");
    assert_eq!(
        m["allowed"],
        serde_json::json!([[true, true], [true, true]]),
        "{m}"
    );
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
