//! The real kubectl (`/usr/bin/kubectl`, v1.32) against a server started in the test over a
//! temporary store: what users type, and what they see.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netd_apiserver::{ApiServer, FileStorage, Registry, ServeOptions, write_kubeconfig};
use netd_model::{ClusterConfig, FieldValidation, Kind, ObjectId};
use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";

/// How long a test waits for a line of `kubectl get -w` before failing (a bound on failure,
/// not a measurement).
const WATCH_WAIT: Duration = Duration::from_secs(20);

/// How often the test servers send bookmarks.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(300);

const SEED: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {node-role.kubernetes.io/control-plane: ""}}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status:
  addresses: [{type: InternalIP, address: 192.168.50.11}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: default, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: echo, ports: [{containerPort: 8080, protocol: TCP}]}]
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}]
  containerStatuses: [{name: web, ready: true, restartCount: 0, image: echo, imageID: "", started: true}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.100.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP, name: ""}]
endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}, nodeName: node-1}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
"#;

/// A server on a free port of 127.0.0.1 over a store in a temporary directory, and a
/// kubeconfig for it.
struct Cluster {
    registry: Arc<Registry>,
    server: Option<ApiServer>,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        Cluster::with_history(1000)
    }

    /// A server whose registry keeps `history` events for watches.
    fn with_history(history: usize) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let storage = FileStorage::new(dir.path().join("store"))?;
        let registry = Arc::new(Registry::new(
            Box::new(storage),
            ClusterConfig::default(),
            history,
        )?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let server = {
            let _guard = runtime.enter();
            let options = ServeOptions {
                bookmark_interval: BOOKMARK_INTERVAL,
                ..ServeOptions::default()
            };
            ApiServer::start_with(registry.clone(), "127.0.0.1:0".parse()?, options)?
        };
        write_kubeconfig(&dir.path().join("kubeconfig"), "test", &server.url())?;
        Ok(Cluster {
            registry,
            server: Some(server),
            runtime,
            dir,
        })
    }

    fn seeded() -> Result<Cluster> {
        let cluster = Cluster::start()?;
        for document in serde_yaml_ng::Deserializer::from_str(SEED) {
            let object: Value = serde::Deserialize::deserialize(document)?;
            cluster
                .registry
                .create(object, FieldValidation::Strict)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(cluster)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            // kubectl caches discovery under $HOME/.kube: keep it in the test's directory.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command(args).output()?)
    }

    /// Runs kubectl, failing the test with its stderr if it fails; returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs kubectl with `input` on its standard input.
    fn with_stdin(&self, args: &[&str], input: &str) -> Result<Output> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.registry
            .get(&ObjectId {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            })
            .ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn get_every_kind_in_wide_json_and_yaml() -> Result<()> {
    let c = Cluster::seeded()?;
    let kinds = "nodes,pods,svc,endpointslices,networkpolicies";
    let wide = c.ok(&["get", kinds, "-A", "-o", "wide"])?;
    let lines: Vec<&str> = wide.lines().collect();
    let has = |needles: &[&str]| {
        lines.iter().any(|l| {
            needles
                .iter()
                .all(|n| l.split_whitespace().any(|w| w == *n))
        })
    };
    assert!(
        has(&["NAME", "STATUS", "ROLES", "INTERNAL-IP"]),
        "node header:\n{wide}"
    );
    assert!(
        has(&["node/node-1", "Ready", "control-plane", "192.168.50.11"]),
        "{wide}"
    );
    assert!(
        has(&["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"]),
        "{wide}"
    );
    assert!(
        has(&[
            "default",
            "pod/web-a",
            "1/1",
            "Running",
            "10.244.1.5",
            "node-1"
        ]),
        "{wide}"
    );
    assert!(
        has(&[
            "default",
            "service/web",
            "ClusterIP",
            "10.96.100.10",
            "80/TCP",
            "app=web"
        ]),
        "{wide}"
    );
    assert!(
        has(&[
            "default",
            "endpointslice.discovery.k8s.io/web-abc",
            "IPv4",
            "8080",
            "10.244.1.5"
        ]),
        "{wide}"
    );
    assert!(
        has(&[
            "default",
            "networkpolicy.networking.k8s.io/deny-egress",
            "app=web"
        ]),
        "{wide}"
    );

    let json: Value = serde_json::from_str(&c.ok(&["get", kinds, "-A", "-o", "json"])?)?;
    let kinds_seen: Vec<&str> = json["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert_eq!(
        kinds_seen,
        ["Node", "Pod", "Service", "EndpointSlice", "NetworkPolicy"]
    );
    assert_eq!(json["items"][1]["status"]["podIP"], "10.244.1.5");

    let yaml: Value = serde_yaml_ng::from_str(&c.ok(&["get", kinds, "-A", "-o", "yaml"])?)?;
    assert_eq!(yaml["items"][2]["spec"]["clusterIP"], "10.96.100.10");
    assert_eq!(yaml["items"][0]["metadata"]["resourceVersion"], "1");

    let out = c.run(&["get", "pod", "nope"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"pods "nope" not found"#),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn get_pods_watch_shows_a_change_as_it_happens() -> Result<()> {
    let c = Cluster::seeded()?;
    let mut child = c
        .command(&["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |want: &str| -> Result<String> {
        loop {
            let line = rx
                .recv_timeout(WATCH_WAIT)
                .context(format!("waiting for {want}"))?;
            if line.contains(want) {
                return Ok(line);
            }
        }
    };
    let header = next("NAME")?;
    assert!(
        header.contains("READY") && header.contains("STATUS"),
        "{header}"
    );
    next("web-a")?;
    let mut pod = c.object(Kind::Pod, "default", "web-a").context("pod")?;
    pod["metadata"]["name"] = "web-b".into();
    pod["metadata"]["resourceVersion"] = Value::Null;
    pod["status"]["phase"] = "Pending".into();
    c.registry
        .create(pod, FieldValidation::Strict)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let line = next("web-b")?;
    assert!(line.contains("Pending"), "{line}");
    c.ok(&["delete", "pod", "web-a", "--wait=false"])?;
    let deleted = next("web-a")?;
    assert!(deleted.contains("Running"), "{deleted}");
    child.kill()?;
    child.wait()?;
    Ok(())
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: echo:1
          ports: [{containerPort: 8080, protocol: TCP}, {containerPort: 9090, protocol: TCP}]
        - name: sidecar
          image: side:1
"#;

#[test]
fn client_side_apply_creates_then_patches() -> Result<()> {
    let c = Cluster::start()?;
    let path = c.file("deploy.yaml", DEPLOYMENT)?;
    let path = path.to_str().context("path")?;
    let out = c.ok(&["apply", "-f", path])?;
    assert_eq!(out.trim(), "deployment.apps/web created");
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("created")?;
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    // A label removed, a container dropped, one of its ports dropped, the image changed.
    let changed = DEPLOYMENT
        .replace("labels: {app: web, tier: front}", "labels: {app: web}")
        .replace("echo:1", "echo:2")
        .replace(", {containerPort: 9090, protocol: TCP}", "")
        .replace("        - name: sidecar\n          image: side:1\n", "");
    c.file("deploy.yaml", &changed)?;
    let out = c.ok(&["apply", "-f", path])?;
    assert_eq!(out.trim(), "deployment.apps/web configured");
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("kept")?;
    assert_eq!(d["metadata"]["labels"], serde_json::json!({"app": "web"}));
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    assert_eq!(containers[0]["image"], "echo:2");
    assert_eq!(
        containers[0]["ports"],
        serde_json::json!([{"containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(d["metadata"]["generation"], 2);

    let out = c.ok(&["apply", "-f", path])?;
    assert_eq!(out.trim(), "deployment.apps/web unchanged");

    c.ok(&["scale", "deploy", "web", "--replicas=5"])?;
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("scaled")?;
    assert_eq!(d["spec"]["replicas"], 5);
    Ok(())
}

#[test]
fn server_side_apply_creates_merges_and_drops_what_it_no_longer_applies() -> Result<()> {
    let c = Cluster::start()?;
    let path = c.file("deploy.yaml", DEPLOYMENT)?;
    let path = path.to_str().context("path")?;
    let out = c.ok(&["apply", "--server-side", "-f", path])?;
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("created")?;
    assert_eq!(d["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(d["metadata"]["managedFields"][0]["operation"], "Apply");

    // Another writer's label survives; the label this manager stops applying goes.
    c.ok(&["label", "deploy", "web", "owner=someone-else"])?;
    let changed = DEPLOYMENT
        .replace("labels: {app: web, tier: front}", "labels: {app: web}")
        .replace("replicas: 2", "replicas: 3");
    c.file("deploy.yaml", &changed)?;
    c.ok(&["apply", "--server-side", "-f", path])?;
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("applied")?;
    assert_eq!(
        d["metadata"]["labels"],
        serde_json::json!({"app": "web", "owner": "someone-else"})
    );
    assert_eq!(d["spec"]["replicas"], 3);
    let yaml = c.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ])?;
    assert!(yaml.contains("f:replicas"), "{yaml}");

    // Another applier changing a field kubectl applied conflicts, unless it forces.
    let other = c.file("other.yaml", &changed.replace("replicas: 3", "replicas: 4"))?;
    let other = other.to_str().context("path")?;
    let args = ["apply", "--server-side", "--field-manager=ci", "-f", other];
    let out = c.run(&args)?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(r#"conflict with "kubectl""#) && err.contains(".spec.replicas"),
        "{err}"
    );
    assert_eq!(
        c.object(Kind::Deployment, "default", "web")
            .context("kept")?["spec"]["replicas"],
        3
    );
    c.ok(&[&args[..], &["--force-conflicts"]].concat())?;
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("forced")?;
    assert_eq!(d["spec"]["replicas"], 4);
    // The field moved to the new owner: kubectl may now leave it out without removing it.
    c.file("deploy.yaml", &changed.replace("  replicas: 3\n", ""))?;
    c.ok(&["apply", "--server-side", "-f", path])?;
    let d = c
        .object(Kind::Deployment, "default", "web")
        .context("applied")?;
    assert_eq!(d["spec"]["replicas"], 4);
    Ok(())
}

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  selector: {app: db}
  ports: [{port: 5432, protocol: TCP}]
"#;

#[test]
fn create_replace_label_and_delete() -> Result<()> {
    let c = Cluster::start()?;
    let path = c.file("svc.yaml", SERVICE)?;
    let path = path.to_str().context("path")?;
    let dry = c.ok(&["apply", "--dry-run=server", "-f", path])?;
    assert_eq!(dry.trim(), "service/db created (server dry run)");
    assert!(c.object(Kind::Service, "default", "db").is_none());
    assert_eq!(c.ok(&["create", "-f", path])?.trim(), "service/db created");
    c.ok(&["delete", "--dry-run=server", "-f", path])?;
    assert!(c.object(Kind::Service, "default", "db").is_some());
    let out = c.run(&["create", "-f", path])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"services "db" already exists"#),
        "{}",
        stderr(&out)
    );

    c.file("svc.yaml", &SERVICE.replace("5432", "5433"))?;
    assert_eq!(
        c.ok(&["replace", "-f", path])?.trim(),
        "service/db replaced"
    );
    let s = c.object(Kind::Service, "default", "db").context("svc")?;
    assert_eq!(s["spec"]["ports"][0]["port"], 5433);

    assert_eq!(
        c.ok(&["label", "svc", "db", "tier=data"])?.trim(),
        "service/db labeled"
    );
    let out = c.run(&["label", "svc", "db", "tier=other"])?;
    assert!(!out.status.success(), "relabelling needs --overwrite");
    c.ok(&["label", "svc", "db", "tier=other", "--overwrite"])?;
    c.ok(&["annotate", "svc", "db", "note=hello"])?;
    let s = c.object(Kind::Service, "default", "db").context("svc")?;
    assert_eq!(s["metadata"]["labels"]["tier"], "other");
    assert_eq!(s["metadata"]["annotations"]["note"], "hello");

    // A stale resourceVersion conflicts.
    let out = c.run(&["label", "svc", "db", "x=y", "--resource-version=1"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the object has been modified"),
        "{}",
        stderr(&out)
    );

    assert_eq!(
        c.ok(&["delete", "-f", path])?.trim(),
        r#"service "db" deleted"#
    );
    assert!(c.object(Kind::Service, "default", "db").is_none());

    // kubectl's typed clients send protobuf: `create deployment` with what it sets.
    c.ok(&[
        "create",
        "deployment",
        "api",
        "--image=nginx",
        "--replicas=2",
        "--port=8080",
        "--",
        "sleep",
        "1",
    ])?;
    let d = c
        .object(Kind::Deployment, "default", "api")
        .context("deployment")?;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "api");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["command"], serde_json::json!(["sleep", "1"]));
    c.ok(&[
        "create",
        "service",
        "nodeport",
        "api",
        "--tcp=80:8080",
        "--node-port=30080",
    ])?;
    let s = c
        .object(Kind::Service, "default", "api")
        .context("service")?;
    assert_eq!(s["spec"]["type"], "NodePort");
    assert_eq!(s["spec"]["selector"]["app"], "api");
    let port = &s["spec"]["ports"][0];
    assert_eq!(
        (&port["port"], &port["targetPort"], &port["nodePort"]),
        (
            &serde_json::json!(80),
            &serde_json::json!(8080),
            &serde_json::json!(30080)
        )
    );

    // No containers: logs and exec say so, and where the lab's alternative is.
    c.ok(&["run", "client", "--image=busybox"])?;
    for args in [
        &["logs", "client"][..],
        &["exec", "client", "--", "hostname"],
    ] {
        let out = c.run(args)?;
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("kube-netd runs none")
                && err.contains("kube-netd lab exec default/client"),
            "{args:?}: {err}"
        );
    }
    let out = c.run(&["logs", "nobody"])?;
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    c.ok(&["create", "namespace", "team"])?;
    let team = c.file(
        "svc-team.yaml",
        &SERVICE.replace("namespace: default", "namespace: team"),
    )?;
    c.ok(&["create", "-n", "team", "-f", team.to_str().context("path")?])?;
    c.ok(&[
        "patch",
        "svc",
        "db",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels","value":{"p":"q"}}]"#,
    ])?;
    let s = c.object(Kind::Service, "team", "db").context("svc")?;
    assert_eq!(s["metadata"]["labels"]["p"], "q");
    let ns = c.object(Kind::Namespace, "", "team").context("ns")?;
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(
        c.ok(&["delete", "service", "db", "-n", "team"])?.trim(),
        r#"service "db" deleted"#
    );
    assert_eq!(
        c.ok(&["delete", "namespace", "team"])?.trim(),
        r#"namespace "team" deleted"#
    );
    let out = c.run(&["delete", "service", "db", "-n", "team"])?;
    assert!(
        stderr(&out).contains(r#"services "db" not found"#),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn an_invalid_object_is_refused_naming_the_field() -> Result<()> {
    let c = Cluster::start()?;
    let bad = SERVICE.replace("5432", "70000");
    for verb in [
        &["apply", "-f", "-"][..],
        &["create", "-f", "-"],
        &["apply", "--server-side", "-f", "-"],
    ] {
        let out = c.with_stdin(verb, &bad)?;
        assert!(!out.status.success(), "{verb:?}");
        let err = stderr(&out);
        assert!(
            err.contains(r#"The Service "db" is invalid"#) && err.contains("spec.ports[0].port"),
            "{verb:?}: {err}"
        );
    }
    let unknown = SERVICE.replace("selector:", "selectr:");
    let out = c.with_stdin(&["apply", "-f", "-"], &unknown)?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("selectr"), "{}", stderr(&out));
    let out = c.with_stdin(&["create", "-f", "-"], "{not json")?;
    assert!(!out.status.success());
    assert!(c.object(Kind::Service, "default", "db").is_none());
    Ok(())
}

#[test]
fn get_raw_of_a_list_and_a_watch() -> Result<()> {
    let c = Cluster::seeded()?;
    let list: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"])?)?;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web-a");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_owned();

    let watch = c.ok(&["get", "--raw", "/api/v1/pods?watch=1&timeoutSeconds=1"])?;
    let events: Vec<Value> = watch
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 1, "{watch}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "web-a");

    c.ok(&["label", "pod", "web-a", "x=1"])?;
    let since = format!("/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion={rv}");
    let watch = c.ok(&["get", "--raw", &since])?;
    let event: Value = serde_json::from_str(watch.lines().next().context("one event")?)?;
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["metadata"]["labels"]["x"], "1");

    let selected = "/api/v1/pods?watch=1&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dnode-2";
    assert_eq!(c.ok(&["get", "--raw", selected])?, "");
    Ok(())
}

#[test]
fn concurrent_labels_all_succeed_or_conflict_and_none_is_lost() -> Result<()> {
    let c = Cluster::seeded()?;
    let rv = c.object(Kind::Pod, "default", "web-a").context("pod")?["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_owned();
    let mut children = Vec::new();
    for i in 0..20 {
        let label = format!("k{i}=v{i}");
        let mut args = vec!["label", "pod", "web-a", "--overwrite", label.as_str()];
        // Half of them insist on the version read before: all but one of those must conflict.
        let precondition = format!("--resource-version={rv}");
        if i % 2 == 1 {
            args.push(&precondition);
        }
        let child = c
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        children.push((i, child));
    }
    let mut succeeded = Vec::new();
    for (i, child) in children {
        let out = child.wait_with_output()?;
        if out.status.success() {
            succeeded.push(i);
        } else {
            assert!(
                stderr(&out).contains("the object has been modified"),
                "k{i}: {}",
                stderr(&out)
            );
        }
    }
    for i in (0..20).step_by(2) {
        assert!(
            succeeded.contains(&i),
            "k{i} without a precondition must succeed"
        );
    }
    let conditional = succeeded.iter().filter(|i| *i % 2 == 1).count();
    assert!(conditional <= 1, "{succeeded:?}");
    let pod = c.object(Kind::Pod, "default", "web-a").context("pod")?;
    for i in &succeeded {
        assert_eq!(
            pod["metadata"]["labels"][format!("k{i}")],
            format!("v{i}"),
            "{pod}"
        );
    }
    Ok(())
}

/// Watch lines from `kubectl get --raw` of a watch path.
fn watch_events(c: &Cluster, path: &str) -> Result<Vec<Value>> {
    c.ok(&["get", "--raw", path])?
        .lines()
        .map(|l| serde_json::from_str(l).context("a watch line"))
        .collect()
}

#[test]
fn watches_resume_send_bookmarks_follow_selectors_and_expire() -> Result<()> {
    let c = Cluster::with_history(3)?;
    c.with_stdin(&["create", "-f", "-"], SERVICE)?;
    let rv =
        c.object(Kind::Service, "default", "db").context("svc")?["metadata"]["resourceVersion"]
            .as_str()
            .context("rv")?
            .to_owned();
    c.ok(&["label", "svc", "db", "app=db"])?;
    c.ok(&["label", "svc", "db", "app-"])?;

    // Resuming from the create: the label added, then removed; seen through a label
    // selector, the Service enters and leaves the selection.
    let from = format!(
        "/api/v1/namespaces/default/services?watch=1&timeoutSeconds=1&resourceVersion={rv}"
    );
    let types: Vec<Value> = watch_events(&c, &from)?
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, ["MODIFIED", "MODIFIED"]);
    let selected = format!("{from}&labelSelector=app%3Ddb");
    let events = watch_events(&c, &selected)?;
    let types: Vec<&Value> = events.iter().map(|e| &e["type"]).collect();
    assert_eq!(types, ["ADDED", "DELETED"], "{events:?}");

    // Bookmarks carry the current resourceVersion.
    let bookmarks = format!(
        "/api/v1/services?watch=1&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion={rv}"
    );
    let events = watch_events(&c, &bookmarks)?;
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .context("a bookmark")?;
    assert_eq!(bookmark["object"]["kind"], "Service");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        c.registry.resource_version().to_string()
    );

    // Two more writes push the create out of the three-event history: 410 Gone, Expired.
    c.ok(&["label", "svc", "db", "x=1"])?;
    c.ok(&["label", "svc", "db", "y=1"])?;
    let events = watch_events(&c, &from)?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    Ok(())
}
