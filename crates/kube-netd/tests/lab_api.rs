//! The lab's Kubernetes API with the real kubectl (needs root and `/usr/bin/kubectl`): what
//! kubectl writes is resolved by the lab's control plane and programmed by its agents, and
//! checked with real packets (`lab probe`).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
#[path = "common/kubectl.rs"]
mod kubectl;

use common::TestLab;
use kubectl::Kubectl;

const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec: {nodeName: node-1, containers: [{name: c, image: echo}]}
"#;

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"#;

const DENY_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
"#;

const EXTRA_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-9}
"#;

const BAD_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: default}
spec: {selector: {app: web}, ports: [{port: 0}]}
"#;

/// Waits (up to 60 s) until `check` holds; the last answer is in the failure message.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: never happened; {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS` inside the lab's `place` (`lab exec`'s
/// target), as a client in the lab's network would.
fn kubectl_in(
    lab: &TestLab,
    kubectl: &Kubectl,
    place: &str,
    kubeconfig: &str,
    args: &[&str],
) -> Output {
    lab.command(&["exec", place, "--", "kubectl", "--kubeconfig", kubeconfig])
        .args(args)
        .env("HOME", &kubectl.home)
        .output()
        .expect("run kubectl in the lab")
}

fn probe_web(lab: &TestLab) -> Output {
    lab.run(&[
        "probe",
        "default/client",
        "svc/default/web",
        "--port",
        "80",
        "--count",
        "3",
    ])
}

#[test]
fn kubectl_changes_the_lab_and_packets_follow() {
    let lab = TestLab::new("api");
    let client = lab.file("client.yaml", CLIENT);
    let web = lab.file("web.yaml", WEB);
    let deny = lab.file("deny.yaml", DENY_WEB);
    let bad = lab.file("bad.yaml", BAD_SERVICE);
    let node = lab.file("node.yaml", EXTRA_NODE);

    let up = lab.ok(&["up", "-f", &client]);
    let kubectl = Kubectl::for_lab(&lab);
    assert!(
        up.contains(&format!("export KUBECONFIG={}", kubectl.kubeconfig)),
        "`up` prints the kubeconfig: {up}"
    );

    // Reads serve the resolved cluster: Nodes, the scheduled client with its IP, the DNS add-on.
    let all = kubectl.ok(&[
        "get",
        "nodes,pods,svc,endpointslices,networkpolicies",
        "-A",
        "-o",
        "wide",
    ]);
    for expected in [
        "node/node-1",
        "node/node-2",
        "pod/client",
        "service/kube-dns",
    ] {
        assert!(all.contains(expected), "{expected} in:\n{all}");
    }
    let ip = kubectl.ok(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10."), "the client has its lab IP: {ip:?}");

    // Inside the lab's network, where a Node's agent runs: the in-lab kubeconfig reaches the
    // API server on the underlay, as a control-plane node's address; the host's 127.0.0.1
    // listener is not there.
    let in_lab = lab.ok(&["kubeconfig", "--in-lab"]).trim().to_owned();
    let config = std::fs::read_to_string(&in_lab).expect("the in-lab kubeconfig");
    assert!(
        config.contains("server: http://172.18.0.254:6443"),
        "the API server's underlay address: {config}"
    );
    let nodes = kubectl_in(
        &lab,
        &kubectl,
        "node/node-1",
        &in_lab,
        &["get", "nodes", "-o", "name"],
    );
    assert!(
        nodes.status.success(),
        "kubectl in node-1: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout),
        "node/node-1\nnode/node-2\n"
    );
    // A Pod reaches it too, with its own address (the underlay routes the replies back).
    let from_pod = kubectl_in(
        &lab,
        &kubectl,
        "default/client",
        &in_lab,
        &["get", "nodes", "-o", "name"],
    );
    assert_eq!(
        String::from_utf8_lossy(&from_pod.stdout),
        "node/node-1\nnode/node-2\n",
        "kubectl in default/client: {}",
        String::from_utf8_lossy(&from_pod.stderr)
    );
    // And as in-cluster clients do, through the `kubernetes` Service, found by name.
    let listed = kubectl.ok(&["get", "svc,endpointslices", "kubernetes", "-o", "wide"]);
    assert!(
        listed.contains("10.96.0.1") && listed.contains("172.18.0.254"),
        "{listed}"
    );
    let through_service = kubectl_in(
        &lab,
        &kubectl,
        "default/client",
        &in_lab,
        &[
            "--server=http://kubernetes.default.svc.cluster.local:443",
            "get",
            "nodes",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&through_service.stdout),
        "node/node-1\nnode/node-2\n",
        "kubectl in default/client through the kubernetes Service: {}",
        String::from_utf8_lossy(&through_service.stderr)
    );
    let host = kubectl_in(
        &lab,
        &kubectl,
        "node/node-1",
        &kubectl.kubeconfig,
        &["get", "nodes", "--request-timeout=2s"],
    );
    assert!(
        !host.status.success(),
        "the host's listener is not in the Node's namespace: {}",
        String::from_utf8_lossy(&host.stdout)
    );

    // A Deployment and its Service, applied with kubectl, answer with real packets.
    let applied = kubectl.ok(&["apply", "-f", &web]);
    assert!(applied.contains("deployment.apps/web created"), "{applied}");
    eventually("web answers through its Service", || {
        let out = probe_web(&lab);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });

    // Scaling makes Pods: scheduled, addressed, in the EndpointSlice and behind the Service;
    // the rollout is seen done as kubectl reads a Deployment's status.
    kubectl.ok(&["scale", "deploy", "web", "--replicas=3"]);
    let rolled = kubectl.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    kubectl.ok(&[
        "wait",
        "--for=condition=Available",
        "deploy/web",
        "--timeout=60s",
    ]);
    eventually("three web Pods with IPs in the API", || {
        let ips = kubectl.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.status.podIP} {end}",
        ]);
        let n = ips.split_whitespace().count();
        (n == 3).then_some(()).ok_or(format!("pod IPs: {ips:?}"))
    });
    let slices = kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {end}",
    ]);
    assert_eq!(slices.split_whitespace().count(), 3, "endpoints: {slices}");
    let lab_pods = lab.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(
        lab_pods.lines().count(),
        3,
        "the lab resolved them: {lab_pods}"
    );
    eventually("every web Pod serves the Service", || {
        let out = probe_web(&lab);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });

    // An invalid object is refused with the field named, and changes nothing.
    let refused = kubectl.run(&["apply", "-f", &bad]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("spec.ports[0].port"), "{stderr}");
    assert!(kubectl.run(&["get", "svc", "bad"]).status.code() != Some(0));

    // A write the lab's control plane refuses (a lab's Nodes are fixed) is refused as
    // Invalid, and nothing changes.
    let refused = kubectl.run(&["apply", "-f", &node]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is invalid") && stderr.contains("the write was refused"),
        "{stderr}"
    );
    assert!(kubectl.run(&["get", "node", "node-9"]).status.code() != Some(0));
    let nodes = lab.ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");

    // A NetworkPolicy applied with kubectl blocks the packets.
    kubectl.ok(&["apply", "-f", &deny]);
    eventually("the policy blocks web", || {
        let out = probe_web(&lab);
        (out.status.code() == Some(1))
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let (blocked, _) = lab.fails(&["probe", "default/client", "svc/default/web", "--port", "80"]);
    assert!(!blocked.contains("connected"), "{blocked}");
    kubectl.ok(&["delete", "networkpolicy", "deny-web"]);

    // Deleting through kubectl removes the Deployment's Pods from the lab.
    kubectl.ok(&["delete", "-f", &web]);
    eventually("the web Pods are gone", || {
        let pods = lab.ok(&["get", "pods", "-A", "-o", "name"]);
        (!pods.contains("web"))
            .then_some(())
            .ok_or(format!("pods: {pods}"))
    });

    lab.ok(&["down"]);
    assert_eq!(
        lab.leftovers(),
        Vec::<String>::new(),
        "`lab down` leaves nothing"
    );
}

/// In an IPv6-only lab the `kubernetes` Service is IPv6 and leads to the API server's IPv6
/// address in the lab, so Pods with no IPv4 address reach the API as in-cluster clients do.
#[test]
fn an_ipv6_only_pod_reaches_the_api_through_the_kubernetes_service() {
    let lab = TestLab::new("api6");
    let client = lab.file("client.yaml", CLIENT);
    lab.ok(&["up", "--ip-family", "ipv6", "-f", &client]);
    let kubectl = Kubectl::for_lab(&lab);
    let service = kubectl.ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.addressType} {.endpoints[0].addresses[0]}",
    ]);
    assert_eq!(service, "IPv6 fd00:172:18::fe");
    let in_lab = lab.ok(&["kubeconfig", "--in-lab"]).trim().to_owned();
    eventually("kubectl in default/client reaches the API", || {
        let out = kubectl_in(
            &lab,
            &kubectl,
            "default/client",
            &in_lab,
            &[
                "--server=http://kubernetes.default.svc.cluster.local:443",
                "--request-timeout=2s",
                "get",
                "nodes",
                "-o",
                "name",
            ],
        );
        (String::from_utf8_lossy(&out.stdout) == "node/node-1\nnode/node-2\n")
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    lab.ok(&["down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

/// The API server's PID, as `lab up` recorded it.
fn api_server_pid(lab: &TestLab) -> i32 {
    let path = format!("{}/{}/lab.json", common::STATE_ROOT, lab.name);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("lab.json")).expect("JSON");
    let pid = record["apiserver"]
        .as_i64()
        .expect("the API server's PID is recorded");
    i32::try_from(pid).expect("a PID")
}

#[test]
fn lab_commands_and_kubectl_see_one_cluster_and_a_killed_server_loses_nothing() {
    let lab = TestLab::new("apikill");
    let client = lab.file("client.yaml", CLIENT);
    let web = lab.file("web.yaml", WEB);
    lab.ok(&["up", "-f", &client]);
    let kubectl = Kubectl::for_lab(&lab);

    // `lab apply` publishes a generation the API server then serves.
    lab.ok(&["apply", "-f", &web]);
    eventually("kubectl sees what `lab apply` made", || {
        let pods = kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        (pods.lines().count() == 1)
            .then_some(())
            .ok_or(format!("pods: {pods:?}"))
    });

    // A Deployment's Pod belongs to the control plane: deleted, it is made again.
    let pod = kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let pod = pod.trim();
    kubectl.ok(&["delete", pod]);
    eventually("the Deployment's Pod comes back", || {
        let out = kubectl.run(&["get", pod, "-o", "jsonpath={.status.podIP}"]);
        let ip = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !ip.is_empty())
            .then_some(())
            .ok_or(format!("{pod}: {ip:?}"))
    });

    // An acknowledged write survives a kill -9 of the API server: it is in the lab's state.
    kubectl.ok(&["scale", "deploy", "web", "--replicas=2"]);
    kubectl.ok(&["label", "svc", "web", "tier=front"]);
    let pid = api_server_pid(&lab);
    // By the PID this lab recorded for its API server, never by name.
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let pods = lab.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(pods.lines().count(), 2, "the scale was kept: {pods}");
    let svc = lab.ok(&["get", "svc", "web", "-o", "json"]);
    assert!(
        svc.contains("\"tier\": \"front\""),
        "the label was kept: {svc}"
    );

    lab.ok(&["down"]);
    assert_eq!(
        lab.leftovers(),
        Vec::<String>::new(),
        "`lab down` leaves nothing"
    );
}
