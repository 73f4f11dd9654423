//! `kube-netd trace --mode`: the same packet walked through the iptables, nftables and IPVS
//! rules of a node, through the binary as a user runs it.

use std::io::Write as _;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// One node; `app/web` has two endpoints behind ClusterIP 10.96.0.110 and nodePort 30080.
const CLUSTER: &str = concat!(
    netd_testkit::node_1!(),
    r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {type: NodePort, clusterIP: 10.96.0.110, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-1, namespace: app, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-1}
- {addresses: [10.244.1.11], nodeName: node-1}
"#
);

/// `kube-netd ARGS -f CLUSTER`.
fn on_cluster(args: &[&str]) -> Output {
    on_manifest(CLUSTER, args)
}

/// `kube-netd ARGS -f MANIFEST`.
fn on_manifest(manifest: &str, args: &[&str]) -> Output {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(manifest.as_bytes()).expect("write manifest");
    let path = file.path().to_str().expect("UTF-8 path").to_owned();
    Command::new(BIN)
        .args(args)
        .args(["-f", &path])
        .output()
        .expect("run kube-netd")
}

fn trace(mode: &str, to: &str) -> Output {
    on_cluster(&[
        "trace",
        "--node",
        "node-1",
        "--mode",
        mode,
        "203.0.113.7",
        to,
    ])
}

/// The `NN.NN% VERDICT ...` lines of a trace.
fn branches(out: &str) -> Vec<&str> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.contains("% "))
        .collect()
}

#[test]
fn every_mode_traces_the_same_branches_through_its_own_rules() {
    let mut seen = Vec::new();
    for (mode, rule) in [
        ("iptables", "nat/KUBE-NODEPORTS"),
        ("nftables", "ip kube-netd/services"),
        (
            "ipvs",
            "ipvs -t 172.18.0.2:30080 -s rr: real server 10.244.1.10:8080",
        ),
    ] {
        let out = trace(mode, "172.18.0.2:30080");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(out.status.success(), "{mode}: {text}");
        assert!(text.contains(rule), "{mode} names its own rules:\n{text}");
        let b: Vec<String> = branches(&text).into_iter().map(str::to_owned).collect();
        assert_eq!(
            b,
            [
                "50.00% ACCEPT DNAT to 10.244.1.10:8080, masqueraded",
                "50.00% ACCEPT DNAT to 10.244.1.11:8080, masqueraded",
            ],
            "{mode}:\n{text}"
        );
        seen.push(b);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
}

/// A Pod of node-1 whose egress is limited to the endpoints' port 8080 reaches nodePort
/// 30080 of its own node, judged by the endpoint it is sent to, in every mode (in IPVS mode
/// the virtual server is the node's own address: the packet is judged once IPVS picked the
/// real server, not at `INPUT`); the node's other ports stay closed to it.
#[test]
fn every_mode_judges_a_pods_own_node_port_by_its_endpoint() {
    let manifest = format!(
        "{CLUSTER}---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: app, labels: {{role: client}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.1.30}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-egress, namespace: app}}
spec:
  podSelector: {{matchLabels: {{role: client}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 10.244.1.0/24}}}}], ports: [{{port: 8080}}]}}]
"
    );
    for mode in ["iptables", "nftables", "ipvs"] {
        let trace = |to: &str| {
            let out = on_manifest(
                &manifest,
                &[
                    "trace",
                    "--node",
                    "node-1",
                    "--mode",
                    mode,
                    "app/client",
                    to,
                ],
            );
            let text = String::from_utf8(out.stdout).expect("UTF-8");
            assert!(out.status.success(), "{mode}: {text}");
            text
        };
        let text = trace("172.18.0.2:30080");
        assert_eq!(
            branches(&text),
            [
                "50.00% ACCEPT DNAT to 10.244.1.10:8080, masqueraded",
                "50.00% ACCEPT DNAT to 10.244.1.11:8080, masqueraded",
            ],
            "{mode}:\n{text}"
        );
        let text = trace("172.18.0.2:10256");
        assert_eq!(branches(&text), ["100.00% DROP"], "{mode}:\n{text}");
    }
}

#[test]
fn ipvs_mode_gives_each_hostnames_pod_a_third() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let run = |mode: &str| {
        let out = Command::new(BIN)
            .args(["trace", "-f", examples, "--mode", mode])
            .args(["default/frontend", "svc/default/hostnames:80"])
            .output()
            .expect("run kube-netd");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(out.status.success(), "{mode}: {text}");
        text
    };
    let ipvs = run("ipvs");
    let first_node: Vec<&str> = ipvs
        .split("branch ")
        .next()
        .map(branches)
        .unwrap_or_default();
    assert_eq!(
        first_node,
        [
            "33.33% ACCEPT DNAT to 10.244.0.3:9376",
            "33.33% ACCEPT DNAT to 10.244.1.3:9376",
            "33.33% ACCEPT DNAT to 10.244.1.4:9376",
        ],
        "{ipvs}"
    );
    assert_eq!(
        ipvs.matches("ipvs -t 10.108.229.168:80 -s rr: real server ")
            .count(),
        3,
        "{ipvs}"
    );
    assert!(
        ipvs.contains("nat/KUBE-SERVICES #4: -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
        "the ClusterIP set lets the packet through nat to the virtual server:\n{ipvs}"
    );
    // The branches forwarded to node-2 end there as in iptables mode.
    let result = |text: &str| -> Vec<String> {
        let mut r: Vec<String> = text
            .split("result:")
            .nth(1)
            .map(branches)
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        r.sort();
        r
    };
    assert_eq!(result(&ipvs), result(&run("iptables")), "{ipvs}");
    assert_eq!(result(&ipvs).len(), 3, "{ipvs}");
}

#[test]
fn render_and_trace_take_the_agents_ipvs_scheduler() {
    let rendered = on_cluster(&[
        "render",
        "--node",
        "node-1",
        "--mode",
        "ipvs",
        "--ipvs-scheduler",
        "wrr",
    ]);
    let text = String::from_utf8(rendered.stdout).expect("UTF-8");
    assert!(rendered.status.success(), "{text}");
    assert!(text.contains("-A -t 10.96.0.110:80 -s wrr"), "{text}");
    assert!(
        !text.contains("-s rr"),
        "every virtual server has the scheduler:\n{text}"
    );

    let traced = on_cluster(&[
        "trace",
        "--node",
        "node-1",
        "--mode",
        "ipvs",
        "--ipvs-scheduler",
        "sh",
        "203.0.113.7",
        "172.18.0.2:30080",
    ]);
    let text = String::from_utf8(traced.stdout).expect("UTF-8");
    assert!(traced.status.success(), "{text}");
    assert!(
        text.contains("ipvs -t 172.18.0.2:30080 -s sh: real server 10.244.1.10:8080"),
        "{text}"
    );

    let flags = [
        "--node",
        "node-1",
        "--mode",
        "ipvs",
        "--ipvs-scheduler",
        "fair",
    ];
    let packet = ["203.0.113.7", "172.18.0.2:30080"];
    for command in [vec!["render"], vec!["trace"]] {
        let extra: &[&str] = if command[0] == "trace" { &packet } else { &[] };
        let args: Vec<&str> = command.iter().chain(&flags).chain(extra).copied().collect();
        let refused = on_cluster(&args);
        let stderr = String::from_utf8(refused.stderr).expect("UTF-8");
        assert!(!refused.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr
                .contains("--ipvs-scheduler: unknown scheduler \"fair\": expected one of rr, wrr"),
            "{args:?}: {stderr}"
        );
    }
}
