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

/// A network namespace of the test's own (`<lab>-<what>`), removed on drop.
struct ScratchNetns(String);

impl ScratchNetns {
    fn new(lab: &TestLab, what: &str) -> ScratchNetns {
        let name = format!("{}-{what}", lab.name);
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "creating {name}");
        let ns = ScratchNetns(name);
        assert!(
            ns.command(&["ip", "link", "set", "lo", "up"])
                .status()
                .expect("ip")
                .success()
        );
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(args);
        cmd
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
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

    // `render --node node-1` is what node-1 has: loaded into a namespace of its own, it reads
    // back as node-1's rules do.
    let render = offline(&["render", "--node", "node-1"]);
    let scratch = ScratchNetns::new(&lab, "render");
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
