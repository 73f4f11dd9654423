//! Targets are named the same way in every command — `NS/POD`, `svc/NS/NAME`, `node/NAME`, an
//! IP — and `-n NS` lets a bare name stand for `NS/NAME`, through the binary on examples/.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["-f", EXAMPLES])
        .output()
        .expect("run kube-netd")
}

/// Standard output, whatever the exit status: a blocked flow may exit non-zero, and what is
/// compared here is the verdict.
fn stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.stdout.is_empty(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn stderr_of_failure(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).expect("UTF-8")
}

fn cluster_ip(service: &str) -> String {
    let svc: serde_json::Value =
        serde_json::from_str(&stdout(&["get", "svc", service, "-o", "json"])).expect("JSON");
    svc["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_owned()
}

#[test]
fn policy_check_and_show_read_every_form_and_bare_names_in_the_namespace_of_n() {
    let check = |args: &[&str]| {
        let mut all = vec!["policy", "check"];
        all.extend_from_slice(args);
        stdout(&all)
    };
    let full = check(&["default/frontend", "default/db", "--port", "6379"]);
    assert_eq!(
        check(&["-n", "default", "frontend", "db", "--port", "6379"]),
        full
    );
    assert_eq!(check(&["frontend", "pod/db", "--port", "6379"]), full);

    let ip = cluster_ip("hostnames");
    let by_ip = check(&["default/stranger", &ip, "--port", "80"]);
    assert!(by_ip.contains("is service default/hostnames"), "{by_ip}");
    assert_eq!(
        check(&["default/stranger", "svc/default/hostnames", "--port", "80"]),
        by_ip
    );
    assert_eq!(
        check(&["-n", "default", "stranger", "svc/hostnames", "--port", "80"]),
        by_ip
    );

    let other_ns = check(&["-n", "myproject", "client", "default/db", "--port", "6379"]);
    assert!(
        other_ns.starts_with("myproject/client -> default/db"),
        "{other_ns}"
    );

    let show = stdout(&["policy", "show", "default/db"]);
    assert_eq!(stdout(&["policy", "show", "-n", "default", "db"]), show);
    assert!(stderr_of_failure(&["policy", "show", "svc/db"]).contains("not a pod"));

    let external = stderr_of_failure(&["policy", "check", "external", "default/db"]);
    assert!(external.contains("not an endpoint"), "{external}");
    let bad = stderr_of_failure(&["policy", "check", "default/db", "svc/a/b/c"]);
    assert!(bad.contains("svc/[NS/]NAME"), "the forms are listed: {bad}");
}

#[test]
fn trace_reads_the_same_forms() {
    let trace = |args: &[&str]| {
        let mut all = vec!["trace", "--node", "node-1"];
        all.extend_from_slice(args);
        stdout(&all)
    };
    let full = trace(&["default/frontend", "svc/default/hostnames:80"]);
    assert_eq!(
        trace(&["-n", "default", "frontend", "svc/hostnames:80"]),
        full
    );
    let ip = cluster_ip("hostnames");
    assert_eq!(trace(&["frontend", &format!("{ip}:80")]), full);

    let dns = stderr_of_failure(&["trace", "--node", "node-1", "frontend", "db.default.svc:80"]);
    assert!(dns.contains("a DNS name"), "{dns}");
}

#[test]
fn lab_probe_reads_the_same_forms_before_it_looks_for_a_lab() {
    let name = format!("c1-no-lab-{}", std::process::id());
    let probe = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["lab", "probe", "--name", &name, "--port", "80"])
            .args(args)
            .output()
            .expect("run kube-netd");
        assert!(!out.status.success());
        String::from_utf8(out.stderr).expect("UTF-8")
    };
    let bad_to = probe(&["default/client", "svc/"]);
    assert!(bad_to.contains("svc/[NS/]NAME"), "{bad_to}");
    let bad_from = probe(&["svc/default/web", "default/db"]);
    assert!(bad_from.contains("node/NAME or external"), "{bad_from}");
    let good = probe(&["-n", "x", "a", "svc/web"]);
    assert!(
        !good.contains("expected") && good.contains(&name),
        "well-formed targets get as far as finding the lab: {good}"
    );
}
