//! Issue 10's speed line, with real namespaces and the real kubectl (needs root and
//! `/usr/bin/kubectl`): `cargo bench -p kube-netd --bench lab_apply`. Prints a table;
//! nothing is asserted.
//!
//! A 3-node iptables lab at small size (a Deployment of 3 Pods behind a Service, and the
//! cluster DNS), built with the binary as a user builds it. Each run changes one Service (its
//! targetPort, 8080 and 8081 in turn: both are the Pods' ports, so the EndpointSlice and the
//! Service's rules change each time):
//!
//! - `kubectl apply -f`: from starting kubectl until every Node's agent has programmed the
//!   change ([`Lab::converged`]), split into kubectl's own run (it returns once the API has
//!   acknowledged the write, which the lab publishes before acknowledging) and the wait for
//!   the agents after it;
//! - `kube-netd lab apply -f` of the same change, which itself returns once every Node has
//!   converged;
//! - for scale, `kubectl get svc web`: kubectl's own start-up and one request.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netd_lab::Lab;
use netd_testkit::bench::{median, median_duration};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
const STATE_ROOT: &str = "/run/kube-netd-bench";
const RUNS: usize = 15;

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: echo, ports: [{containerPort: 8080}, {containerPort: 8081}]}
"#;

fn service(target_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: {target_port}}}]}}\n"
    )
}

fn succeeded(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lab(name: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("lab")
        .arg(args[0])
        .args(["--name", name, "--state-root", STATE_ROOT])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run kube-netd")
}

/// Removes the lab and its manifests when dropped, also when a step panics.
struct Down<'a> {
    name: &'a str,
    dir: &'a Path,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let out = lab(self.name, &["down"]);
        if !out.status.success() {
            eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let name = format!("bench{}-apply", std::process::id() % 10_000);
    let dir = Path::new(STATE_ROOT).join(format!("{name}-manifests"));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    let web = dir.join("web.yaml");
    std::fs::write(&web, format!("{WEB}---\n{}", service(8080))).expect("write manifest");
    let svc = dir.join("svc.yaml");
    let web = web.to_string_lossy().into_owned();
    let svc_path = svc.to_string_lossy().into_owned();

    let down = Down {
        name: &name,
        dir: &dir,
    };
    succeeded(
        "lab up",
        lab(
            &name,
            &["up", "--nodes", "3", "--mode", "iptables", "-f", &web],
        ),
    );
    let opened = Lab::open(&name, Path::new(STATE_ROOT), netd_lab::resolved_as_given())
        .unwrap_or_else(|e| panic!("open the lab: {e}"));
    let kubeconfig = opened.kubeconfig().expect("the lab's kubeconfig");
    let converged = || opened.converged().unwrap_or_else(|e| panic!("{e}"));
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir)
            .output()
            .expect("run kubectl")
    };
    // Warm kubectl's discovery cache, as a user's is after the first command.
    succeeded("kubectl get", kubectl(&["get", "svc", "web"]));
    let get = median(RUNS, || {
        succeeded("kubectl get", kubectl(&["get", "svc", "web", "-o", "name"]));
    });

    let (mut kubectl_runs, mut agents, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let port = if run % 2 == 0 { 8081 } else { 8080 };
        std::fs::write(&svc, service(port)).expect("write manifest");
        let start = Instant::now();
        succeeded("kubectl apply", kubectl(&["apply", "-f", &svc_path]));
        let acknowledged = Instant::now();
        while !converged() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let done = Instant::now();
        kubectl_runs.push(acknowledged - start);
        agents.push(done - acknowledged);
        total.push(done - start);
    }
    let mut lab_apply = Vec::new();
    for run in 0..RUNS {
        let port = if run % 2 == 0 { 8081 } else { 8080 };
        std::fs::write(&svc, service(port)).expect("write manifest");
        let start = Instant::now();
        succeeded("lab apply", lab(&name, &["apply", "-f", &svc_path]));
        lab_apply.push(start.elapsed());
    }
    drop(down);

    println!(
        "3-node iptables lab, 3 web Pods + DNS; one Service's targetPort changed (median of {RUNS} runs)"
    );
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| `kubectl apply -f` → every Node's rules applied | {} |",
        ms(median_duration(total))
    );
    println!(
        "| of which: kubectl, until the API acknowledged the write | {} |",
        ms(median_duration(kubectl_runs))
    );
    println!(
        "| of which: after that, until the last Node converged | {} |",
        ms(median_duration(agents))
    );
    println!(
        "| `kube-netd lab apply -f` (returns once every Node converged) | {} |",
        ms(median_duration(lab_apply))
    );
    println!(
        "| for scale: `kubectl get svc web` (kubectl's start-up and one request) | {} |",
        ms(get)
    );
}
