//! Benchmark: the real kubectl listing 10,000 Pods from the API server (`kubectl get pods -A`,
//! which asks for a server-side Table, and `-o json`), and the server's own time for the
//! same requests without kubectl. Needs `/usr/bin/kubectl`. Run with
//! `cargo bench -p netd-apiserver --bench list [-- PODS]`.
//!
//! Each step runs a few times and the median is printed (a wall clock: one run is seconds).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd_testkit::bench::median;

use netd_apiserver::{ApiServer, FileStorage, Registry, ServeOptions, write_kubeconfig};
use netd_model::{ClusterConfig, FieldValidation};
use serde_json::json;

const DEFAULT_PODS: usize = 10_000;
const NAMESPACES: usize = 100;
const RUNS: usize = 5;
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn main() {
    let pods = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_PODS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = FileStorage::new(dir.path().join("store")).expect("storage");
    let registry = Arc::new(
        Registry::new(Box::new(storage), ClusterConfig::default(), 1000).expect("registry"),
    );
    let t = Instant::now();
    for i in 0..pods {
        registry
            .create(pod(i), FieldValidation::Strict)
            .expect("create pod");
    }
    let created = t.elapsed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = {
        let _guard = runtime.enter();
        ApiServer::start_with(
            registry.clone(),
            "127.0.0.1:0".parse().expect("address"),
            ServeOptions::default(),
        )
        .expect("server")
    };
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, "bench", &server.url()).expect("kubeconfig");
    let addr = server.url().trim_start_matches("http://").to_owned();

    let kubectl = |args: &[&str]| {
        let out = Command::new("/usr/bin/kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout.len()
    };
    // Discovery is cached under $HOME/.kube after the first call, as for a user.
    kubectl(&["get", "pods", "-A", "--no-headers"]);
    let table = median(RUNS, || {
        kubectl(&["get", "pods", "-A"]);
    });
    let json = median(RUNS, || {
        kubectl(&["get", "pods", "-A", "-o", "json"]);
    });
    let server_table = median(RUNS, || {
        get(&addr, "/api/v1/pods", TABLE);
    });
    let server_json = median(RUNS, || {
        get(&addr, "/api/v1/pods", "application/json");
    });
    runtime.block_on(server.shutdown());

    println!("API server: {pods} Pods in {NAMESPACES} namespaces (median of {RUNS} runs)");
    println!();
    println!("| request | kubectl, end to end | the server's response alone |");
    println!("|---|---|---|");
    println!(
        "| `kubectl get pods -A` (Table) | {} | {} |",
        secs(table),
        secs(server_table)
    );
    println!(
        "| `kubectl get pods -A -o json` | {} | {} |",
        secs(json),
        secs(server_json)
    );
    println!("({pods} creates took {})", secs(created));
}

fn pod(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod-{i}"),
            "namespace": format!("ns-{}", i % NAMESPACES),
            "labels": {"app": format!("app-{}", i % 50)},
        },
        "spec": {
            "nodeName": format!("node-{}", i % 10),
            "containers": [{"name": "c", "image": "echo", "ports": [{"containerPort": 8080}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": format!("10.{}.{}.{}", 244 + i / 62_500, i / 250 % 250, i % 250 + 1),
        },
    })
}

/// One HTTP/1.1 GET with `accept`, read to the end; returns the response's length.
fn get(addr: &str, path: &str, accept: &str) -> usize {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    assert!(response.starts_with(b"HTTP/1.1 200"), "not a 200");
    response.len()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
