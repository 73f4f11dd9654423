//! `kube-netd lab ...` end to end, through the binary, with real namespaces (needs root).
//! Each test uses its own lab name and state root and runs `lab down` on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, STATE_ROOT, TestLab};
use netd_render::nft::services::{SHARD_COUNT, shard_chain, shard_map};
use netd_testkit::nft::{normalised, without};
use netd_testkit::scratch::ScratchNetns;

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

#[test]
fn lab_commands_build_probe_change_and_remove_a_cluster() {
    let lab = TestLab::new("cmds");
    let manifest = lab.file("cluster.yaml", CLUSTER);
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
    let list: serde_json::Value = serde_json::from_str(&pods).expect("JSON");
    assert_eq!(list["kind"], "List", "a listing is a List: {pods}");
    let one = lab.ok(&["get", "pod", "a", "-n", "x", "-o", "json"]);
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(one["kind"], "Pod", "a named object is the object");
    let namespaces = lab.ok(&["get", "ns", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/x\n") && namespaces.contains("namespace/kube-system\n"),
        "{namespaces}"
    );

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
    let bare = lab.ok(&["probe", "-n", "x", "a", "b", "--port", "80"]);
    assert!(
        bare.starts_with("x/a -> x/b 80/tcp: connected"),
        "-n names the namespace of bare pods: {bare}"
    );
    // A refused attempt makes the probe fail, and says so.
    let (stdout, stderr) = lab.fails(&["probe", "x/b", "x/a", "--port", "81", "-o", "json"]);
    assert!(stdout.contains("\"outcome\":\"refused\""), "{stdout}");
    assert!(
        stderr.contains("1 of 1 attempts did not connect"),
        "the failure is explained: {stderr}"
    );
    let zero = lab.run(&["probe", "x/a", "x/b", "--port", "80", "--count", "0"]);
    assert!(!zero.status.success() && zero.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("--count"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
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

/// `iptables-save` output without its comments and the counters of chains, which depend on
/// the traffic seen, not on the rules.
fn rules_only(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn offline(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["-f", EXAMPLES])
        .output()
        .expect("run kube-netd");
    assert!(
        out.status.success(),
        "kube-netd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the lab's API server adds to the manifests it was built from, the `default/kubernetes`
/// Service and its EndpointSlice, as a manifest file for the offline commands that are to
/// describe the same cluster.
fn api_objects(lab: &TestLab) -> String {
    let get = |kind: &str, selector: &str| {
        lab.ok(&["get", kind, "-n", "default", "-l", selector, "-o", "yaml"])
    };
    let service = get("services", "provider=kubernetes");
    let slice = get("endpointslices", "kubernetes.io/service-name=kubernetes");
    assert!(service.contains("name: kubernetes"), "{service}");
    lab.file("api-objects.yaml", &format!("{service}---\n{slice}"))
}

/// The one object of `get -o json` output, printed as a `List` or on its own.
fn only_item(json: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json).expect("get -o json");
    match v.get("items").and_then(serde_json::Value::as_array) {
        Some(items) => {
            assert_eq!(items.len(), 1, "{json}");
            items[0].clone()
        }
        None => v,
    }
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

#[test]
fn offline_commands_describe_the_cluster_the_lab_runs() {
    let lab = TestLab::new("same");
    lab.ok(&["up", "-f", EXAMPLES]);

    // The same Pods, with the same names, IPs and Nodes, the cluster DNS's among them.
    let pods = offline(&["get", "pods", "-A", "-o", "json"]);
    assert_eq!(pods, lab.ok(&["get", "pods", "-A", "-o", "json"]));
    assert!(pods.contains("\"coredns-"), "{pods}");
    let show = offline(&["policy", "show", "myproject/client"]);
    let client = only_item(&lab.ok(&["get", "pods", "-n", "myproject", "-o", "json"]));
    for want in [&client["spec"]["nodeName"], &client["status"]["podIP"]] {
        let want = want.as_str().expect("placed");
        assert!(
            show.contains(want),
            "policy show says {show}, the lab {want}"
        );
    }

    // `policy matrix` and `lab matrix` have the same rows and columns, the cluster DNS's
    // among them. (Which cells agree is the differential lab test's business.)
    let rows = |json: &str| {
        let m: serde_json::Value = serde_json::from_str(json).expect("matrix json");
        m["pods"].clone()
    };
    let matrix = ["matrix", "--port", "80", "-o", "json"];
    let offline_rows = rows(&offline(&[&["policy"], &matrix[..]].concat()));
    assert_eq!(offline_rows, rows(&lab.ok(&matrix)));
    assert!(offline_rows.to_string().contains("kube-system/coredns-"));

    // `render --node node-1` is what node-1 has (with the Service the lab's API server adds):
    // loaded into a namespace of its own, it reads back as node-1's rules do.
    let api = api_objects(&lab);
    let render = offline(&["render", "--node", "node-1", "-f", &api]);
    let scratch = ScratchNetns::new(&lab.name, "render");
    let mut restore = scratch
        .command(&["iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    std::io::Write::write_all(&mut restore.stdin.take().expect("stdin"), render.as_bytes())
        .expect("feed iptables-restore");
    assert!(
        restore.wait().expect("iptables-restore").success(),
        "{render}"
    );
    let rendered = scratch.command(&["iptables-save"]).output().expect("save");
    let node = lab.ok(&["exec", "node/node-1", "--", "iptables-save"]);
    assert_eq!(
        rules_only(&String::from_utf8_lossy(&rendered.stdout)),
        rules_only(&node)
    );

    // `dns serve` answers for the cluster DNS Service, at the lab's ClusterIP for it.
    let mut serve = scratch
        .command(&[BIN, "dns", "serve", "-f", EXAMPLES])
        .args(["--listen", "127.0.0.1:5353", "--upstream", "127.0.0.1:9"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dns serve");
    let mut answer = String::new();
    for _ in 0..50 {
        let out = scratch
            .command(&[
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                "@127.0.0.1",
                "-p",
                "5353",
            ])
            .arg("kube-dns.kube-system.svc.cluster.local")
            .output()
            .expect("dig");
        answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !answer.contains(";;") && !answer.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let svc = only_item(&lab.ok(&["get", "svc", "-n", "kube-system", "-o", "json"]));
    assert_eq!(
        answer,
        svc["spec"]["clusterIP"].as_str().expect("clusterIP")
    );

    drop(scratch);
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
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
            "echo6.x",
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
        "echo.x",
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
    assert!(err.contains("cannot resolve \"echo.x\""), "{err}");

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

/// The outcome of each attempt of `lab probe ARGS -o json` (which exits 1 when any attempt
/// did not connect: the outcomes are the answer here).
fn probe_outcomes(lab: &TestLab, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["probe"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let out = lab.run(&argv);
    String::from_utf8_lossy(&out.stdout)
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

#[test]
fn held_connections_report_survival_and_a_deleted_server_cuts_them() {
    let lab = TestLab::new("hold");
    let manifest = lab.file("cluster.yaml", CLUSTER);
    lab.ok(&["up", "-f", &manifest]);

    let out = lab.ok(&[
        "probe", "x/a", "x/b", "--port", "80", "--hold", "1", "--count", "3", "-o", "json",
    ]);
    let held: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per connection"))
        .collect();
    assert_eq!(held.len(), 3, "{out}");
    for (i, v) in held.iter().enumerate() {
        assert_eq!(v["connection"], i + 1, "{v}");
        assert_eq!(v["survived"], true, "{v}");
        assert!(v["failure"].is_null(), "{v}");
        assert_eq!(v["served_by"], "x/b", "{v}");
        assert!(v["messages_echoed"].as_u64().is_some_and(|n| n > 0), "{v}");
        assert!(v["longest_stall_ms"].is_number(), "{v}");
    }
    let text = lab.ok(&["probe", "x/a", "x/b", "--port", "80", "--hold", "0.5"]);
    assert!(
        text.contains("#1: survived") && text.contains("(served by x/b)"),
        "{text}"
    );

    // The server goes away while the connection is held: the hold reports it lost and fails.
    let extra = lab.file("extra.yaml", EXTRA_POD);
    lab.ok(&["apply", "-f", &extra]);
    let holding = lab
        .command(&["probe", "x/a", "x/c", "--port", "8080", "--hold", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the hold");
    std::thread::sleep(Duration::from_millis(500));
    lab.ok(&["delete", "-f", &extra]);
    let lost = holding.wait_with_output().expect("the hold ends");
    assert!(!lost.status.success(), "a lost connection fails the probe");
    let text = String::from_utf8_lossy(&lost.stdout);
    assert!(
        text.contains("#1: lost after") && text.contains("served by x/c"),
        "{text}"
    );

    for bad in [
        vec!["--hold", "0"],
        vec!["--hold", "1", "--count", "0"],
        vec!["--hold", "1", "--protocol", "udp"],
    ] {
        let mut args = vec!["probe", "x/a", "x/b", "--port", "80"];
        args.extend(bad.iter().copied());
        let out = lab.run(&args);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{bad:?} is refused"
        );
    }
}

#[test]
fn matrix_marks_refused_dropped_and_dns_answers_and_prints_a_legend() {
    let lab = TestLab::new("mtx");
    let manifest = lab.file("cluster.yaml", CLUSTER);
    lab.ok(&["up", "-f", &manifest]);
    let pods = lab.ok(&["get", "pods", "-n", "kube-system", "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("pods json");
    let pod = &pods["items"][0];
    let dns_pod = pod["metadata"]["name"]
        .as_str()
        .map(|n| format!("kube-system/{n}"))
        .expect("the cluster DNS pod");

    // x/b's echo server answers UDP 53 as echo, x/a has no UDP 53 (refused), the DNS pod
    // answers as DNS.
    for protocol in ["udp", "tcp"] {
        let probe = lab.ok(&[
            "probe",
            "x/a",
            &dns_pod,
            "--port",
            "53",
            "--protocol",
            protocol,
        ]);
        assert!(probe.contains(": answered"), "{protocol}: {probe}");
    }
    let json = lab.ok(&[
        "matrix",
        "-n",
        "x,kube-system",
        "--port",
        "53",
        "--protocol",
        "udp",
        "-o",
        "json",
    ]);
    let m: serde_json::Value = serde_json::from_str(&json).expect("matrix json");
    let names: Vec<&str> = m["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    let col = |name: &str| names.iter().position(|p| *p == name).expect(name);
    let row = &m["outcomes"][col("x/b")];
    assert_eq!(row[col(&dns_pod)], "answered", "{m}");
    assert_eq!(row[col("x/a")], "refused", "{m}");
    assert_eq!(row[col("x/b")], "connected", "{m}");
    assert_eq!(
        m["allowed"][col("x/b")][col("x/a")],
        true,
        "refused got through"
    );

    let text = lab.ok(&[
        "matrix",
        "-n",
        "x,kube-system",
        "--port",
        "53",
        "--protocol",
        "udp",
    ]);
    assert!(
        text.contains("rows are sources") && text.contains("A answered"),
        "{text}"
    );
    let table: Vec<&str> = text.lines().skip_while(|l| !l.is_empty()).skip(1).collect();
    assert_eq!(table.len(), 4, "a header and three rows: {text}");
    let width = table[0].len();
    assert!(table.iter().all(|l| l.len() == width), "aligned: {text}");
    // Columns in row order: the DNS pod, x/a, x/b.
    let from_b = table
        .iter()
        .find(|l| l.contains(" x/b"))
        .expect("x/b's row");
    assert!(from_b.ends_with(" A R ."), "{text}");

    // After all that traffic, no namespace resolved a neighbour at run time: every entry a
    // Pod or a Node's bridge holds is permanent (the kernel's ARP table is shared by every
    // namespace on the machine and overflows with per-pair entries, dropping packets).
    for (place, args) in [
        ("x/a", vec!["ip", "-4", "neigh", "show"]),
        (
            "node/node-1",
            vec!["ip", "-4", "neigh", "show", "dev", "cni0"],
        ),
    ] {
        let mut cmd = vec!["exec", place, "--"];
        cmd.extend(args);
        let neigh = lab.ok(&cmd);
        assert!(!neigh.trim().is_empty(), "{place} has its entries");
        assert!(
            neigh.lines().all(|l| l.trim_end().ends_with("PERMANENT")),
            "{place}: {neigh}"
        );
    }

    let ping = lab.ok(&["matrix", "-n", "x", "--protocol", "icmp", "-o", "json"]);
    let m: serde_json::Value = serde_json::from_str(&ping).expect("icmp json");
    assert!(m["port"].is_null(), "{m}");
    assert_eq!(
        m["outcomes"],
        serde_json::json!([["connected", "connected"], ["connected", "connected"]])
    );

    let tsv = lab.ok(&["matrix", "-n", "x", "--port", "80", "-o", "tsv"]);
    let policy = Command::new(BIN)
        .args([
            "policy", "matrix", "-f", &manifest, "-n", "x", "--port", "80",
        ])
        .output()
        .expect("policy matrix");
    assert_eq!(tsv, String::from_utf8_lossy(&policy.stdout), "diffable");

    let partly = lab.run(&["matrix", "-n", "x,typo", "--port", "80"]);
    assert!(partly.status.success());
    assert!(
        String::from_utf8_lossy(&partly.stderr).contains("no pods in namespace typo"),
        "a namespace without pods is named"
    );

    let nothing = lab.run(&["matrix", "-n", "no-such-namespace"]);
    assert!(!nothing.status.success(), "no pods is an error");
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("no pods to probe"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
    // SCTP works where the kernel has SCTP sockets (the sctp module loaded if need be);
    // elsewhere the error names what is missing.
    let sctp = lab.run(&["matrix", "-n", "x", "--protocol", "sctp"]);
    let stderr = String::from_utf8_lossy(&sctp.stderr);
    if netd_testkit::sctp_missing().is_some() {
        assert!(!sctp.status.success(), "sctp without SCTP sockets");
        assert!(
            stderr.contains("kernel module sctp is missing")
                || stderr.contains("protocol sctp is not supported by this kernel"),
            "{stderr}"
        );
    } else {
        assert!(sctp.status.success(), "{stderr}");
    }
}

/// 4 Nodes, 200 Pods: 20 Deployments of 10 in namespaces n0…n3, one namespace-selector
/// policy per namespace (n0 admits n0 and n1, the others only themselves).
fn burst_manifest() -> String {
    let mut docs = Vec::new();
    for ns in 0..4 {
        let group = if ns < 2 { "shared" } else { "alone" };
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{ns}, labels: {{group: {group}}}}}\n"
        ));
        for d in 0..5 {
            docs.push(format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d{d}, namespace: n{ns}}}\n\
                 spec:\n  replicas: 10\n  selector: {{matchLabels: {{app: d{d}}}}}\n  template:\n    \
                 metadata: {{labels: {{app: d{d}}}}}\n    \
                 spec: {{containers: [{{name: c, image: echo, ports: [{{containerPort: 8080}}]}}]}}\n"
            ));
        }
        let from = if ns == 0 {
            "{matchLabels: {group: shared}}".to_owned()
        } else {
            format!("{{matchLabels: {{kubernetes.io/metadata.name: n{ns}}}}}")
        };
        docs.push(format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: ingress, namespace: n{ns}}}\n\
             spec: {{podSelector: {{}}, ingress: [{{from: [{{namespaceSelector: {from}}}]}}]}}\n"
        ));
    }
    docs.join("---\n")
}

#[test]
fn a_100_by_100_matrix_under_burst_equals_policy_matrix_three_times() {
    let lab = TestLab::new("burst");
    let manifest = lab.file("burst.yaml", &burst_manifest());
    let up = lab.ok(&["up", "--nodes", "4", "-f", &manifest]);
    assert!(up.contains("4 nodes, 201 pods"), "{up}");
    let policy = Command::new(BIN)
        .args([
            "policy", "matrix", "-f", &manifest, "-n", "n0,n1", "--port", "8080",
        ])
        .args(["-o", "json"])
        .output()
        .expect("policy matrix");
    assert!(policy.status.success(), "{policy:?}");
    let want: serde_json::Value = serde_json::from_slice(&policy.stdout).expect("policy json");
    assert_eq!(want["pods"].as_array().map(Vec::len), Some(100));
    for run in 1..=3 {
        let got = lab.ok(&["matrix", "-n", "n0,n1", "--port", "8080", "-o", "json"]);
        let got: serde_json::Value = serde_json::from_str(&got).expect("lab json");
        assert_eq!(
            got["pods"], want["pods"],
            "run {run}: the same pods, same order"
        );
        eprintln!(
            "run {run}: {} pairs recovered when probed again",
            got["recovered"]
        );
        let differ = (0..100)
            .flat_map(|i| (0..100).map(move |j| (i, j)))
            .filter(|&(i, j)| got["allowed"][i][j] != want["allowed"][i][j])
            .map(|(i, j)| format!("{} -> {}", got["pods"][i], got["pods"][j]))
            .collect::<Vec<_>>();
        assert!(
            differ.is_empty(),
            "run {run}: {} cells differ, e.g. {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
    }
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
        "probe", "x/a", "echo.x", "--port", "80", "--count", "4", "-o", "json",
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

/// `x/a` on node-1 behind NodePort 30090.
const LOCALHOST_NODEPORT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: np}}
spec: {nodeName: node-1, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: x}
spec: {type: NodePort, selector: {app: np}, ports: [{port: 80, nodePort: 30090}]}
"#;

#[test]
fn localhost_nodeports_answer_only_when_the_lab_asks_for_them() {
    for (flag, want) in [(false, "refused"), (true, "connected")] {
        let lab = TestLab::new(if flag { "lhnp" } else { "nolhnp" });
        let manifest = lab.file("np.yaml", LOCALHOST_NODEPORT);
        let mut up = vec!["up", "-f", &manifest];
        if flag {
            up.push("--localhost-nodeports");
        }
        lab.ok(&up);
        // From the node itself and from a Pod on it (whose 127.0.0.1 is its own).
        let probe = lab.run(&[
            "probe",
            "node/node-1",
            "127.0.0.1",
            "--port",
            "30090",
            "-o",
            "json",
        ]);
        let out = String::from_utf8_lossy(&probe.stdout);
        assert!(
            out.contains(&format!("\"outcome\":\"{want}\"")),
            "localhost nodePorts {flag}: {out}"
        );
        assert_eq!(probe.status.success(), flag, "{out}");
        if flag {
            assert!(out.contains("x/a"), "served by the endpoint: {out}");
        }
        let rules = lab.ok(&["exec", "node/node-1", "--", "iptables-save", "-t", "filter"]);
        assert_eq!(
            rules.contains("block incoming localnet connections"),
            flag,
            "KUBE-FIREWALL's martian drop comes with the option: {rules}"
        );
        let localnet = lab.ok(&[
            "exec",
            "node/node-1",
            "--",
            "cat",
            "/proc/sys/net/ipv4/conf/all/route_localnet",
        ]);
        assert_eq!(localnet.trim(), if flag { "1" } else { "0" });
        // A restarted agent keeps the option: it runs the program the lab recorded.
        lab.ok(&["restart", "node-1"]);
        let again = lab.run(&["probe", "node/node-1", "127.0.0.1", "--port", "30090"]);
        assert_eq!(again.status.success(), flag);
        assert!(lab.ok(&["down"]).contains("removed"));
        assert_eq!(lab.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn nftables_mode_renders_what_the_lab_runs() {
    let lab = TestLab::new("nft");
    lab.ok(&["up", "--mode", "nftables", "-f", EXAMPLES]);
    let listed = lab.ok(&["list", "-o", "json"]);
    assert!(listed.contains("\"nftables\""), "{listed}");

    // `render --mode nftables` is what node-1 holds: loaded into a namespace of its own, its
    // table lists as node-1's does (but for the plain Services' endpoint maps and the rules
    // that look them up, which `nft -f` declares otherwise than the agent's netlink: their
    // element counts are compared, the Service is probed below); and node-1 has no iptables
    // rules of kube-netd's.
    let api = api_objects(&lab);
    let render = offline(&[
        "render", "--mode", "nftables", "--node", "node-1", "-f", &api,
    ]);
    let scratch = ScratchNetns::new(&lab.name, "nftrender");
    let mut load = scratch
        .command(&["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft -f");
    std::io::Write::write_all(&mut load.stdin.take().expect("stdin"), render.as_bytes())
        .expect("feed nft");
    assert!(load.wait().expect("nft").success(), "{render}");
    let list = ["nft", "-j", "list", "table", "ip", "kube-netd"];
    let rendered = scratch.command(&list).output().expect("nft list");
    assert!(rendered.status.success());
    let node = lab.ok(&[&["exec", "node/node-1", "--"], &list[..]].concat());
    let share_maps: Vec<String> = (0..SHARD_COUNT).map(shard_map).collect();
    let lb_chains: Vec<String> = (0..SHARD_COUNT).map(shard_chain).collect();
    let comparable = |json: &str| without(normalised(json), &share_maps, &lb_chains);
    assert_eq!(
        comparable(&String::from_utf8_lossy(&rendered.stdout)),
        comparable(&node)
    );
    let save = lab.ok(&["exec", "node/node-1", "--", "iptables-save"]);
    assert!(!save.contains("KUBE-NETD-"), "{save}");

    // The Service balances and the seed's policy holds: frontend reaches db:6379, a stranger
    // does not.
    let served = lab.ok(&[
        "probe",
        "myproject/client",
        "svc/default/hostnames",
        "--port",
        "80",
    ]);
    assert!(served.contains("hostnames-"), "{served}");
    lab.ok(&["probe", "default/frontend", "default/db", "--port", "6379"]);
    lab.fails(&["probe", "default/stranger", "default/db", "--port", "6379"]);
}
