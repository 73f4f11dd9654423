//! The real kube-rs watch path against a scripted API server on 127.0.0.1: lists, a watch
//! stream of JSON lines with a bookmark, a dropped watch resumed from the bookmark, 410 Gone,
//! the relist after it, and a list the server first refuses (503), into the store.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use netd_model::{ClusterConfig, Kind};
use netd_source::{ApiOptions, SharedStore, Store};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the server was asked: `GET path?query` and the Accept header.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    query: String,
    accept: String,
}

impl Request {
    fn is_watch(&self) -> bool {
        self.query.split('&').any(|p| p == "watch=true")
    }

    fn resource_version(&self) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|p| p.strip_prefix("resourceVersion="))
    }
}

/// The scripted API server: Pods go through a full story, every other kind is an empty list
/// and a watch that stays quiet.
#[derive(Default)]
struct Script {
    requests: Mutex<Vec<Request>>,
    pod_lists: Mutex<usize>,
    pod_watches: Mutex<usize>,
    node_lists: Mutex<usize>,
    /// Released by the test to end the first Pod watch.
    end_first_watch: Notify,
}

enum Reply {
    Body(Value),
    /// An HTTP error with a `Status` body.
    Failure(u16, Value),
    /// A watch: these lines, then end the response (`true`) or stay open.
    Stream(Vec<Value>, bool),
}

fn with_rv(mut pod: Value, rv: u32) -> Value {
    pod["metadata"]["resourceVersion"] = json!(rv.to_string());
    pod
}

fn pod_json(name: &str, ip: &str, probe: u32) -> Value {
    serde_json::to_value(pod("web", name, ip, "front", probe)).expect("json")
}

impl Script {
    async fn reply(&self, req: &Request) -> Reply {
        if req.path == "/api/v1/nodes" && !req.is_watch() {
            let mut n = self.node_lists.lock().expect("lock");
            *n += 1;
            if *n == 1 {
                // The API server is not answering yet: the list is retried after a backoff.
                return Reply::Failure(
                    503,
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
                        "status": "Failure", "reason": "ServiceUnavailable", "code": 503,
                        "message": "the server is currently unable to handle the request"}),
                );
            }
        }
        if req.path != "/api/v1/pods" {
            return if req.is_watch() {
                Reply::Stream(vec![], false)
            } else {
                Reply::Body(json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "1"}, "items": []}))
            };
        }
        if !req.is_watch() {
            let n = {
                let mut n = self.pod_lists.lock().expect("lock");
                *n += 1;
                *n
            };
            let (rv, items) = if n == 1 {
                (
                    "100",
                    vec![
                        pod_json("a", "10.244.1.2", 1),
                        pod_json("b", "10.244.1.3", 1),
                        pod_json("c", "10.244.1.4", 1),
                    ],
                )
            } else {
                // After the 410: c and d were deleted while the watch was away, e is new.
                (
                    "200",
                    vec![
                        pod_json("a", "10.244.1.2", 9),
                        pod_json("e", "10.244.1.6", 1),
                    ],
                )
            };
            return Reply::Body(json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": rv}, "items": items}));
        }
        let n = {
            let mut n = self.pod_watches.lock().expect("lock");
            *n += 1;
            *n
        };
        match n {
            1 => {
                let mut b_deleted = pod_json("b", "10.244.1.3", 1);
                b_deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
                Reply::Stream(
                    vec![
                        json!({"type": "ADDED", "object": with_rv(pod_json("d", "10.244.1.5", 1), 101)}),
                        json!({"type": "MODIFIED", "object": with_rv(pod_json("a", "10.244.1.2", 2), 102)}),
                        json!({"type": "DELETED", "object": with_rv(b_deleted, 103)}),
                        json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"resourceVersion": "110"}}}),
                    ],
                    true,
                )
            }
            2 => Reply::Stream(
                vec![
                    json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status",
                    "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                    "message": "too old resource version: 110 (150)"}}),
                ],
                true,
            ),
            _ => Reply::Stream(vec![], false),
        }
    }
}

async fn serve(listener: TcpListener, script: Arc<Script>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(answer(socket, script.clone()));
    }
}

async fn answer(socket: TcpStream, script: Arc<Script>) {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    if read.read_line(&mut line).await.is_err() {
        return;
    }
    let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut accept = String::new();
    loop {
        let mut header = String::new();
        if read.read_line(&mut header).await.unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("accept:") {
            accept = v.trim().to_owned();
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let req = Request {
        path: path.to_owned(),
        query: query.to_owned(),
        accept,
    };
    script.requests.lock().expect("lock").push(req.clone());
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n";
    match script.reply(&req).await {
        Reply::Failure(code, body) => {
            let body = body.to_string();
            let msg = format!(
                "HTTP/1.1 {code} Service Unavailable\r\nContent-Type: application/json\r\n\
                 Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = write.write_all(msg.as_bytes()).await;
        }
        Reply::Body(body) => {
            let body = body.to_string();
            let msg = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
            let _ = write.write_all(msg.as_bytes()).await;
        }
        Reply::Stream(lines, end) => {
            let _ = write
                .write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
                .await;
            for l in lines {
                let l = format!("{l}\n");
                let _ = write
                    .write_all(format!("{:x}\r\n{l}\r\n", l.len()).as_bytes())
                    .await;
            }
            let _ = write.flush().await;
            if !end {
                std::future::pending::<()>().await;
            }
            if script.pod_watches.lock().map(|n| *n == 1).unwrap_or(false) {
                script.end_first_watch.notified().await;
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        }
    }
}

fn pod_names(store: &SharedStore) -> BTreeSet<String> {
    store.with(|s| s.ids(Kind::Pod).into_iter().map(|id| id.name).collect())
}

/// Waits until `done` holds of the store, at most a minute (a hang guard, not a timing claim).
async fn until(store: &SharedStore, what: &str, done: impl Fn(&SharedStore) -> bool) {
    let wait = async {
        while !done(store) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .is_err()
    {
        panic!(
            "gave up waiting for {what}; pods are {:?}",
            pod_names(store)
        );
    }
}

/// The Pod requests the server was sent, in order: `list RV` or `watch RV` (`-` for none).
fn pod_requests(script: &Script) -> Vec<String> {
    let requests = script.requests.lock().expect("lock");
    requests
        .iter()
        .filter(|r| r.path == "/api/v1/pods")
        .map(|r| {
            let kind = if r.is_watch() { "watch" } else { "list" };
            format!("{kind} {}", r.resource_version().unwrap_or("-"))
        })
        .collect()
}

#[tokio::test]
async fn the_kube_rs_watch_feeds_the_store_through_a_bookmark_a_410_and_a_relist() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let script = Arc::new(Script::default());
    let server = tokio::spawn(serve(listener, script.clone()));
    let client = ApiOptions {
        kubeconfig: None,
        master: Some(format!("http://127.0.0.1:{port}")),
    }
    .client()
    .await
    .expect("client");
    let store = SharedStore::new(Store::new(ClusterConfig::default()));
    let watch = tokio::spawn(netd_source::watch_cluster(client, store.clone()));

    // The lists, then the first watch's events: d added, a's probe (no change), b deleted.
    until(&store, "the first list and watch events", |s| {
        s.with(|s| s.ready())
            && pod_names(s) == BTreeSet::from(["a".into(), "c".into(), "d".into()])
    })
    .await;
    let first = store.with(|s| s.snapshot()).expect("ready");
    assert_eq!(first.state.pods().count(), 3);

    // The watch drops; it resumes from the bookmark, is told 410 Gone, relists.
    script.end_first_watch.notify_one();
    until(&store, "the relist after 410 Gone", |s| {
        pod_names(s) == BTreeSet::from(["a".into(), "e".into()])
    })
    .await;
    let after = store.with(|s| s.snapshot()).expect("ready");
    let ips: Vec<String> = after
        .state
        .pods()
        .map(|p| format!("{} {:?}", p.key, p.ips))
        .collect();
    assert_eq!(ips, vec!["web/a [10.244.1.2]", "web/e [10.244.1.6]"]);

    // The store has the relist's objects before the watch that follows it is opened.
    until(&store, "the watch after the relist", |_| {
        pod_requests(&script).len() >= 5
    })
    .await;
    watch.abort();
    server.abort();
    let requests = script.requests.lock().expect("lock").clone();
    let pods = pod_requests(&script);
    assert_eq!(
        pods[..5],
        ["list -", "watch 100", "watch 110", "list -", "watch 200"],
        "{pods:?}"
    );
    let pod_list = requests
        .iter()
        .find(|r| r.path == "/api/v1/pods")
        .expect("pods");
    assert!(
        pod_list
            .query
            .contains("fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed"),
        "{}",
        pod_list.query
    );
    let services = requests
        .iter()
        .find(|r| r.path == "/api/v1/services")
        .expect("services");
    assert!(
        services
            .query
            .contains("labelSelector=%21service.kubernetes.io%2Fservice-proxy-name"),
        "{}",
        services.query
    );
    let namespaces = requests
        .iter()
        .find(|r| r.path == "/api/v1/namespaces")
        .expect("namespaces");
    assert!(
        namespaces.accept.contains("as=partialobjectmetadata"),
        "{}",
        namespaces.accept
    );
    let node_lists = requests
        .iter()
        .filter(|r| r.path == "/api/v1/nodes" && !r.is_watch())
        .count();
    assert_eq!(node_lists, 2, "the failed Node list was retried once");
    for path in [
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ] {
        assert!(
            requests.iter().any(|r| r.path == path),
            "{path} was not watched"
        );
    }
}
