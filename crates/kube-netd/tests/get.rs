//! `kube-netd get`, through the binary, the way kubectl users type it: kinds by short name,
//! `KIND NAME`, `KIND/NAME`, `KIND,KIND`, `-l`, `-o name`, Lists, every namespace, and a
//! pipe closed early.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// Two declared namespaces (one with a label of its own), two that only exist because a Pod
/// or a Service names them, and a policy that admits pods of `shop` by the automatic
/// `kubernetes.io/metadata.name` label.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db, tier: back}}
spec: {containers: [{name: c, ports: [{containerPort: 6379}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {role: web, tier: front}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {role: web}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: lonely, namespace: only-a-pod}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {selector: {role: db}, ports: [{port: 6379}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: only-a-service}
spec: {ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
"#;

struct Cluster {
    _dir: tempfile::TempDir,
    file: String,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cluster.yaml");
        std::fs::write(&file, CLUSTER).expect("write manifest");
        Self {
            file: file.display().to_string(),
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["-f", &self.file])
            .output()
            .expect("run kube-netd")
    }

    /// Standard output of a run that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// Standard error of a run that must fail.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).expect("UTF-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

fn names(list: &Value) -> Vec<String> {
    assert_eq!(list["kind"], "List", "{list}");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| o["metadata"]["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[test]
fn get_takes_kubectls_forms() {
    let c = Cluster::new();
    let by_name = c.ok(&["get", "pod", "db"]);
    assert_eq!(by_name.lines().count(), 2, "{by_name}");
    assert!(by_name.lines().nth(1).is_some_and(|l| l.starts_with("db ")));
    assert_eq!(c.ok(&["get", "pods/db"]), by_name);
    assert_eq!(c.ok(&["get", "po", "db", "-o", "name"]), "pod/db\n");
    assert_eq!(
        c.ok(&["get", "pods/db", "svc/db", "-o", "name"]),
        "pod/db\nservice/db\n"
    );
    assert_eq!(
        c.ok(&["get", "svc,po", "-o", "name"]),
        "service/db\npod/db\npod/web\n"
    );
    let both = c.ok(&["get", "po,svc"]);
    assert!(
        both.contains("pod/web") && both.contains("\n\nNAME"),
        "{both}"
    );
    assert!(both.contains("service/db"), "{both}");
    for (short, kind) in [
        ("po", "pod/"),
        ("pods", "pod/"),
        ("svc", "service/"),
        ("services", "service/"),
        ("eps", "endpointslice.discovery.k8s.io/"),
        ("endpointslices", "endpointslice.discovery.k8s.io/"),
        ("netpol", "networkpolicy.networking.k8s.io/"),
        ("networkpolicy", "networkpolicy.networking.k8s.io/"),
        ("no", "node/"),
        ("nodes", "node/"),
        ("ns", "namespace/"),
        ("namespace", "namespace/"),
    ] {
        let out = c.ok(&["get", short, "-o", "name"]);
        assert!(
            !out.is_empty() && out.lines().all(|l| l.starts_with(kind)),
            "{short}: {out}"
        );
    }
    assert!(c.ok(&["get", "deploy", "-o", "name"]).is_empty());
    for derived in ["ep", "endpoints", "rs", "replicasets"] {
        assert!(c.run(&["get", derived]).status.success(), "{derived}");
    }

    assert_eq!(
        c.ok(&[
            "get",
            "pods",
            "-l",
            "tier in (front,back),role!=web",
            "-o",
            "name"
        ]),
        "pod/db\n"
    );
    assert_eq!(
        c.ok(&["get", "pods", "-A", "-l", "role=web", "-o", "name"]),
        "pod/web\npod/cart\n"
    );
    assert!(
        c.fails(&["get", "pods", "-l", "role in (web"])
            .contains("role in (web")
    );
    assert!(
        c.fails(&["get", "pod", "db", "-l", "role=db"])
            .contains("selector")
    );
    assert!(c.fails(&["get", "pod", "db", "-A"]).contains("-n"));
    assert!(c.fails(&["get", "pods", "pods/db"]).contains("KIND/NAME"));

    let missing = c.run(&["get", "pod", "db", "nope"]);
    assert!(!missing.status.success(), "a missing object is an error");
    assert!(String::from_utf8_lossy(&missing.stdout).contains("db "));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains(r#"pods "nope" not found"#),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let none = c.run(&["get", "pods", "-n", "empty"]);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "No resources found in empty namespace.\n"
    );
    let no_nodes = c.run(&["get", "nodes", "-l", "absent"]);
    assert_eq!(
        String::from_utf8_lossy(&no_nodes.stderr),
        "No resources found\n",
        "nodes are cluster-scoped: no namespace in the message"
    );
}

#[test]
fn listing_prints_a_list_whatever_the_count_and_a_name_prints_the_object() {
    let c = Cluster::new();
    for format in ["json", "yaml"] {
        let parse = |text: String| -> Value {
            if format == "json" {
                serde_json::from_str(&text).expect("JSON")
            } else {
                serde_yaml_ng::from_str(&text).expect("YAML")
            }
        };
        let none = parse(c.ok(&["get", "pods", "-n", "empty", "-o", format]));
        assert_eq!(none["apiVersion"], "v1");
        assert_eq!(none["metadata"]["resourceVersion"], "");
        assert_eq!(names(&none), Vec::<String>::new());
        let one = parse(c.ok(&["get", "svc", "-o", format]));
        assert_eq!(names(&one), ["db"], "one Service is still a List");
        let two = parse(c.ok(&["get", "pods", "-o", format]));
        assert_eq!(names(&two), ["db", "web"]);
        let named = parse(c.ok(&["get", "pod", "db", "-o", format]));
        assert_eq!(named["kind"], "Pod");
        assert_eq!(named["metadata"]["name"], "db");
        let slash = parse(c.ok(&["get", "pods/db", "-o", format]));
        assert_eq!(slash, named);
        let several = parse(c.ok(&["get", "pods/db", "pods/web", "-o", format]));
        assert_eq!(names(&several), ["db", "web"]);
    }
}

#[test]
fn get_ns_lists_every_namespace_the_policy_engine_sees() {
    let c = Cluster::new();
    let all = c.json(&["get", "ns", "-o", "json"]);
    assert_eq!(
        names(&all),
        [
            "default",
            "kube-public",
            "kube-system",
            "only-a-pod",
            "only-a-service",
            "shop"
        ]
    );
    for ns in all["items"].as_array().expect("items") {
        let name = &ns["metadata"]["name"];
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            *name
        );
    }
    let shop = c.json(&["get", "ns", "shop", "-o", "json"]);
    assert_eq!(
        shop["metadata"]["labels"]["team"], "a",
        "declared labels stay"
    );

    // The label `get ns -l` selects by is the one the policy's namespaceSelector reads.
    let selected = c.ok(&[
        "get",
        "ns",
        "-l",
        "kubernetes.io/metadata.name=shop",
        "-o",
        "name",
    ]);
    assert_eq!(selected, "namespace/shop\n");
    // Only the verdict's text is read: whether a blocked flow exits non-zero is not this
    // test's concern.
    let check = |from: &str| {
        let out = c.run(&["policy", "check", from, "default/db", "--port", "6379"]);
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    assert!(
        check("shop/cart").contains(": allowed"),
        "{}",
        check("shop/cart")
    );
    let stranger = check("only-a-pod/lonely");
    assert!(stranger.contains(": blocked"), "{stranger}");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let c = Cluster::new();
    for args in [
        &["get", "pods", "-A", "-o", "json"][..],
        &["render", "--node", "node-1"],
        &["policy", "matrix", "--port", "6379"],
        &[
            "policy",
            "check",
            "default/web",
            "default/db",
            "--port",
            "80",
        ],
        &["trace", "default/web", "svc/default/db:80"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .args(["-f", &c.file])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run kube-netd");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{args:?}: no panic, no message"
        );
        assert_eq!(
            out.status.code(),
            Some(141),
            "{args:?}: as SIGPIPE ends a program"
        );
    }
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_under_no_color() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}], nodeNme: x}\n",
    )
    .expect("write");
    let args = ["get", "pods", "--validate=warn", "-f"];
    let piped = Command::new(BIN)
        .args(args)
        .arg(&file)
        .output()
        .expect("run kube-netd");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        stderr.contains("spec.nodeNme"),
        "a warning is logged: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape codes into a pipe: {stderr:?}"
    );

    // On a terminal (util-linux `script` gives the command one), colour unless NO_COLOR is
    // set to something.
    let on_a_terminal = |no_color: Option<&str>| {
        let line = format!("{BIN} {} {}", args.join(" "), file.display());
        let mut script = Command::new("script");
        script.args(["-qec", &line, "/dev/null"]);
        match no_color {
            Some(v) => script.env("NO_COLOR", v),
            None => script.env_remove("NO_COLOR"),
        };
        let out = script.output().expect("run script(1)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(None);
    assert!(
        coloured.contains("spec.nodeNme") && coloured.contains('\u{1b}'),
        "{coloured:?}"
    );
    assert!(
        on_a_terminal(Some("")).contains('\u{1b}'),
        "an empty NO_COLOR is unset"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(
        plain.contains("spec.nodeNme") && !plain.contains('\u{1b}'),
        "{plain:?}"
    );
}

#[test]
fn an_empty_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("nothing-here");
    std::fs::create_dir(&empty).expect("mkdir");
    for command in [&["get", "all"][..], &["render", "--node", "node-1"]] {
        let out = Command::new(BIN)
            .args(command)
            .arg("-f")
            .arg(&empty)
            .output()
            .expect("run kube-netd");
        assert!(!out.status.success(), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}: no .yaml", Path::new(&empty).display())),
            "{command:?}: {stderr}"
        );
    }
}

#[test]
fn jsonpath_templates_read_what_json_prints() {
    let c = Cluster::new();
    assert_eq!(
        c.ok(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]),
        "db web"
    );
    let template =
        r#"jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.role}{"\n"}{end}"#;
    // Every namespace: the cluster DNS's Pod too, which has no `role` label.
    let all = c.ok(&["get", "pods", "-A", "-o", template]);
    let ours: Vec<&str> = all.lines().filter(|l| !l.starts_with("coredns-")).collect();
    assert_eq!(ours, ["db=db", "web=web", "lonely=", "cart=web"], "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("coredns-") && l.ends_with('=')),
        "{all}"
    );
    assert_eq!(
        c.ok(&["get", "svc", "db", "-o", "jsonpath={.spec.ports[0].port}"]),
        "6379",
        "one named object: the template reads the object, not a List"
    );
    let bad = c.fails(&["get", "pods", "-o", "jsonpath={range .items[*]}"]);
    assert!(bad.contains("{end}"), "{bad}");
}

#[test]
fn replica_sets_and_endpoints_are_shown_as_their_controllers_keep_them() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hostnames");
    let get = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["get"])
            .args(args)
            .args(["-f", dir])
            .output()
            .expect("run kube-netd");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let hash = get(&[
        "pods",
        "-o",
        "jsonpath={.items[0].metadata.labels.pod-template-hash}",
    ]);
    let rs_name = format!("hostnames-{hash}");
    assert_eq!(
        get(&["rs", "-o", "name"]),
        format!("replicaset.apps/{rs_name}\n")
    );
    let rs: Value =
        serde_json::from_str(&get(&["replicaset", &rs_name, "-o", "json"])).expect("JSON");
    assert_eq!(rs["kind"], "ReplicaSet");
    assert_eq!(rs["spec"]["replicas"], 3);
    assert_eq!(rs["status"]["readyReplicas"], 3);
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        *hash
    );
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let owners = get(&[
        "pods",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(
        owners,
        [rs_name.as_str(); 3].join(" "),
        "the pods belong to it"
    );
    assert!(get(&["all"]).contains(&format!("replicaset.apps/{rs_name}")));

    let mut from_endpoints: Vec<String> = get(&[
        "ep",
        "hostnames",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
    ])
    .split(' ')
    .map(str::to_owned)
    .collect();
    let mut from_slices: Vec<String> = get(&[
        "eps",
        "-l",
        "kubernetes.io/service-name=hostnames",
        "-o",
        "jsonpath={.items[*].endpoints[*].addresses[*]}",
    ])
    .split(' ')
    .map(str::to_owned)
    .collect();
    from_endpoints.sort();
    from_slices.sort();
    assert_eq!(from_endpoints.len(), 3);
    assert_eq!(from_endpoints, from_slices);
    let table = get(&["endpoints"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hostnames ") && l.contains(":9376")),
        "{table}"
    );
}

#[test]
fn render_takes_the_agents_proxy_flags() {
    let c = Cluster::new();
    let render = |flags: &[&str]| c.ok(&[&["render", "--node", "node-1"][..], flags].concat());
    let masquerade = |rules: &str| -> Vec<String> {
        rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-MARK-MASQ"))
            .map(str::to_owned)
            .collect()
    };
    let default = render(&[]);
    assert!(default.contains("KNP-"), "{default}");
    let by_cidr = masquerade(&default);
    assert!(
        !by_cidr.is_empty() && by_cidr.iter().all(|l| l.contains("! -s 10.244.0.0/16")),
        "{by_cidr:?}"
    );

    let services_only = render(&["--network-policy=false"]);
    assert!(!services_only.contains("KNP-"), "{services_only}");
    let by_bridge = masquerade(&render(&[
        "--detect-local-mode=BridgeInterface",
        "--pod-bridge-interface=cni0",
    ]));
    assert!(
        !by_bridge.is_empty() && by_bridge.iter().all(|l| l.contains("! -i cni0")),
        "{by_bridge:?}"
    );
    let all = masquerade(&render(&["--masquerade-all"]));
    assert!(
        !all.is_empty()
            && all
                .iter()
                .all(|l| !l.contains("! -s") && !l.contains("! -i")),
        "{all:?}"
    );

    let nft = |flags: &[&str]| render(&[&["--mode", "nftables"][..], flags].concat());
    assert!(
        !nft(&[]).contains("set nodeport-ips"),
        "every local address"
    );
    assert!(
        nft(&["--nodeport-addresses", "primary"]).contains("set nodeport-ips"),
        "the Node's primary address only"
    );

    let err = c.fails(&[
        "render",
        "--node",
        "node-1",
        "--detect-local-mode=BridgeInterface",
    ]);
    assert!(err.contains("--detect-local-mode"), "{err}");
}
