//! kube-proxy's health servers in the lab, probed with curl: each Node's agent serves a
//! `healthCheckNodePort` per `externalTrafficPolicy: Local` LoadBalancer Service (200 with
//! the local endpoint count on a Node that has one, 503 on one that has none), `/healthz` and
//! `/livez` on 10256, and `/metrics` on 127.0.0.1:10249 with its full and partial sync counts.
//! Needs root and curl.
//!
//! The lab runs its helpers from a program; this test binary is that program
//! (`harness = false`): started with `--netd-helper ARGS...` it is a helper whose agents
//! program their Nodes with [`netd_agent::NodeProgrammer`], otherwise it runs the test.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use netd_lab::{Lab, LabOptions, Place};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(status) = netd_lab::helper_if_asked(&args, &netd_agent::backend) {
        return status;
    }
    let name = "health_checks_follow_local_endpoints";
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return ExitCode::SUCCESS;
    }
    if args
        .iter()
        .find(|a| !a.starts_with('-'))
        .is_some_and(|f| !name.contains(f.as_str()))
    {
        return ExitCode::SUCCESS;
    }
    let ok = catch_unwind(AssertUnwindSafe(health_checks_follow_local_endpoints)).is_ok();
    println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

const NODES: &str = concat!(
    netd_testkit::two_nodes!(),
    r#"apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  selector: {app: web}
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 172.18.255.10}]}}
"#
);

fn pod(name: &str, node: u8) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\n\
         spec: {{nodeName: node-{node}, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\n\
         status: {{podIP: 10.244.{node}.5, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

fn slice(nodes: &[u8]) -> String {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{{addresses: [10.244.{n}.5], nodeName: node-{n}, conditions: {{ready: true}}}}"
            )
        })
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         ports: [{{port: 80, protocol: TCP}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// `curl -i` from `place`: the status code and the whole response.
fn get(lab: &Lab, place: &str, url: &str) -> (u16, String) {
    let place: Place = place.parse().expect("place");
    let out = lab
        .command(&place, "curl")
        .expect("curl in the lab")
        .args(["-s", "-i", "--max-time", "3", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn health_checks_follow_local_endpoints() {
    let exe = std::env::current_exe().expect("test binary");
    let mut options = LabOptions::new(
        format!("hc{}", std::process::id() % 100_000),
        vec![
            exe.to_string_lossy().into_owned(),
            netd_lab::HELPER_FLAG.to_owned(),
        ],
    );
    options.state_root = PathBuf::from("/run/kube-netd-tests");
    options.converge_timeout = Duration::from_secs(60);
    let yaml = format!("{NODES}{}{}", pod("web-a", 1), slice(&[1]));
    let lab = Lab::up(
        options,
        netd_testkit::objects(&yaml),
        netd_lab::resolved_as_given(),
    )
    .expect("lab up");

    let (code, body) = get(&lab, "external", "http://172.18.0.2:32000/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
    assert!(
        body.contains("X-Load-Balancing-Endpoint-Weight: 1"),
        "{body}"
    );
    let (code, body) = get(&lab, "external", "http://172.18.0.3:32000/");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");

    for path in ["healthz", "livez"] {
        let (code, body) = get(&lab, "external", &format!("http://172.18.0.3:10256/{path}"));
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.contains("\"healthy\":true"), "{path}: {body}");
    }
    let (_, metrics) = get(&lab, "node/node-1", "http://127.0.0.1:10249/metrics");
    let full = "kubeproxy_sync_proxy_rules_total{family=\"ipv4\",scope=\"full\"}";
    let partial = "kubeproxy_sync_proxy_rules_total{family=\"ipv4\",scope=\"partial\"}";
    assert_eq!(metric(&metrics, full), 1, "{metrics}");

    // A second endpoint, on node-2: its health check turns 200, by a partial sync.
    let before = metric(&metrics, partial);
    let yaml = format!(
        "{NODES}{}{}{}",
        pod("web-a", 1),
        pod("web-b", 2),
        slice(&[1, 2])
    );
    lab.apply(netd_testkit::objects(&yaml)).expect("apply");
    let (code, body) = get(&lab, "external", "http://172.18.0.3:32000/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
    let (_, metrics) = get(&lab, "node/node-1", "http://127.0.0.1:10249/metrics");
    assert_eq!(metric(&metrics, full), 1, "{metrics}");
    assert!(metric(&metrics, partial) > before, "{metrics}");
    let file = std::fs::read_to_string(netd_lab::agent::metrics_path(
        lab.state_dir(),
        &"node-1".into(),
    ))
    .expect("metrics file");
    assert!(file.contains(partial), "{file}");
    lab.down().expect("lab down");
}
