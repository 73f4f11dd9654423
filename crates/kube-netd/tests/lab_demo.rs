//! `kube-netd lab demo` end to end, through the binary, with real namespaces (needs root).
//! Each test uses its own lab name and state root and runs `lab down` on drop.
//!
//! The demo is an acceptance test of the lab, the NetworkPolicy enforcer and the service
//! proxy at once: every check it prints must hold, and its exit status must say so.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
const STATE_ROOT: &str = "/run/kube-netd-tests";

/// A lab name for one test, removed (with `lab down`) when dropped.
struct DemoLab {
    name: String,
}

impl DemoLab {
    fn new(test: &str) -> DemoLab {
        DemoLab {
            name: format!("demo{}-{test}", std::process::id() % 100_000),
        }
    }

    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["lab", sub, "--name", &self.name, "--state-root", STATE_ROOT]);
        cmd
    }

    fn demo(&self, args: &[&str]) -> Output {
        self.command("demo")
            .args(args)
            .output()
            .expect("run kube-netd lab demo")
    }

    /// Namespaces, processes and state the lab left behind.
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

impl Drop for DemoLab {
    fn drop(&mut self) {
        let _ = self.command("down").stdout(Stdio::null()).status();
    }
}

/// One check as printed: `  ✔ what` then `expected:` and `observed:` lines.
#[derive(Debug)]
struct Check {
    passed: bool,
    what: String,
    expected: String,
    observed: String,
}

/// One step as printed: `Step N. title` and its checks.
#[derive(Debug)]
struct Step {
    title: String,
    checks: Vec<Check>,
}

/// The demo's text, parsed: its steps (up to `Summary:`) and its summary lines.
fn parse(stdout: &str) -> (Vec<Step>, Vec<String>) {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = stdout.lines();
    let mut summary = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with("Summary:") {
            summary.push(line.to_owned());
            summary.extend(lines.by_ref().map(str::to_owned));
            break;
        }
        if let Some(rest) = line.strip_prefix("Step ") {
            let (number, title) = rest.split_once(". ").expect("Step N. title");
            assert_eq!(
                number,
                (steps.len() + 1).to_string(),
                "steps are numbered in order"
            );
            steps.push(Step {
                title: title.to_owned(),
                checks: Vec::new(),
            });
            continue;
        }
        let mark = if let Some(what) = line.strip_prefix("  ✔ ") {
            Some((true, what))
        } else {
            line.strip_prefix("  ✘ ").map(|what| (false, what))
        };
        if let Some((passed, what)) = mark {
            let step = steps.last_mut().expect("a check inside a step");
            let expected = lines
                .next()
                .and_then(|l| l.strip_prefix("      expected: "));
            let observed = lines
                .next()
                .and_then(|l| l.strip_prefix("      observed: "));
            step.checks.push(Check {
                passed,
                what: what.to_owned(),
                expected: expected.expect("an expected: line").to_owned(),
                observed: observed.expect("an observed: line").to_owned(),
            });
        }
    }
    (steps, summary)
}

fn find<'a>(step: &'a Step, what: &str) -> &'a Check {
    step.checks
        .iter()
        .find(|c| c.what.contains(what))
        .unwrap_or_else(|| panic!("no check {what:?} in step {:?}", step.title))
}

#[test]
fn demo_walks_the_seed_checks_the_pod_network_and_exits_by_its_checks() {
    let lab = DemoLab::new("walk");
    let out = lab.demo(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (steps, summary) = parse(&stdout);

    let titles: Vec<&str> = steps.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(
        titles.len(),
        4,
        "four steps: {titles:?}\n{stdout}\n{stderr}"
    );
    for (title, topic) in titles.iter().zip([
        "deny-egress-test",
        "test-network-policy",
        "hostnames",
        "NodePort",
    ]) {
        assert!(title.contains(topic), "{title:?} is about {topic}");
    }
    for step in &steps {
        assert!(
            !step.checks.is_empty(),
            "step {:?} checks something",
            step.title
        );
        for c in &step.checks {
            assert!(!c.expected.is_empty() && !c.observed.is_empty(), "{c:?}");
        }
    }
    // The seed's narrative: the policy is shown, the engine says why, the rules are shown.
    assert!(
        stdout.contains("    | kind: NetworkPolicy"),
        "the policy is printed"
    );
    let why = stdout
        .lines()
        .find(|l| l.starts_with("  policy engine: new-ns/deny-egress-test -> default/"))
        .expect("the engine explains the blocked ping");
    assert!(
        why.ends_with(
            "ICMP: blocked: isolated for egress by new-ns/deny-egress-test; no egress rule allows it"
        ),
        "{why}"
    );
    assert!(
        stdout.contains("nat table (iptables-save -t nat"),
        "{stdout}"
    );

    // The pod network holds with any programmer.
    let ping = find(&steps[0], "ping before any policy");
    assert!(ping.passed, "{ping:?}");
    assert!(ping.observed.starts_with("a reply"), "{ping:?}");
    assert!(find(&steps[1], "before any policy").passed);
    let direct = find(&steps[2], "each endpoint's pod IP");
    assert!(direct.passed, "{direct:?}");
    assert_eq!(
        direct
            .observed
            .matches("connected, served by default/hostnames-")
            .count(),
        3
    );
    assert!(
        find(&steps[3], "pod IP").passed,
        "no route from outside to pod IPs"
    );
    assert!(
        summary
            .iter()
            .any(|l| l == "  pod network: 4 of 4 as expected"),
        "{summary:?}"
    );

    // The summary agrees with the checks, and the exit status with the summary.
    let checks: Vec<&Check> = steps.iter().flat_map(|s| s.checks.iter()).collect();
    let passed = checks.iter().filter(|c| c.passed).count();
    assert_eq!(
        summary[0],
        format!("Summary: {passed} of {} checks as expected", checks.len())
    );
    for (i, step) in steps.iter().enumerate() {
        let mark = if step.checks.iter().all(|c| c.passed) {
            '✔'
        } else {
            '✘'
        };
        let prefix = format!("  {mark} step {}: ", i + 1);
        assert!(
            summary.iter().any(|l| l.starts_with(&prefix)),
            "{prefix:?} in {summary:?}"
        );
    }
    assert_eq!(out.status.success(), passed == checks.len(), "{stderr}");
    if !out.status.success() {
        assert!(stderr.contains("checks observed something other than what Kubernetes specifies"));
    }

    assert!(stdout.contains(&format!("The lab {} is removed.", lab.name)));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn every_check_of_the_demo_holds_with_the_real_programmer() {
    let lab = DemoLab::new("all");
    let out = lab.demo(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (steps, _) = parse(&stdout);
    let failed: Vec<&Check> = steps
        .iter()
        .flat_map(|s| s.checks.iter())
        .filter(|c| !c.passed)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The details the seed points at, beyond the marks.
    let blocked = steps[1]
        .checks
        .iter()
        .find(|c| c.what == "default/stranger -> default/db:6379")
        .expect("the stranger's check with the policy");
    assert!(!blocked.observed.starts_with("connected"), "{blocked:?}");
    let served = find(&steps[2], "which pods answered");
    assert_eq!(
        served.observed.matches("default/hostnames-").count(),
        3,
        "{served:?}"
    );
    assert!(
        stdout.contains("-j KUBE-SVC-"),
        "the KUBE-SVC chain is shown"
    );
    assert!(
        stdout.contains("DNAT --to-destination"),
        "the KUBE-SEP DNAT rules are shown"
    );
    // web runs on node-1: the eTP Local NodePort is asked of node-1 first, then node-2.
    let etp_local: Vec<&Check> = steps[3]
        .checks
        .iter()
        .filter(|c| c.what.ends_with(":30081"))
        .collect();
    assert_eq!(etp_local.len(), 2, "{etp_local:?}");
    assert!(etp_local[0].what.contains("node-1"), "{etp_local:?}");
    assert!(
        etp_local[0]
            .observed
            .ends_with("which saw the client as 172.18.0.1"),
        "{etp_local:?}"
    );
    assert!(etp_local[1].observed.contains("timeout"), "{etp_local:?}");
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn demo_keeps_its_lab_with_keep() {
    let lab = DemoLab::new("keep");
    let out = lab.demo(&["--keep", "--connections", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("is still running"), "{stdout}");
    let pods = lab
        .command("get")
        .args(["pods", "-A"])
        .output()
        .expect("run kube-netd lab get");
    assert!(
        pods.status.success(),
        "{}",
        String::from_utf8_lossy(&pods.stderr)
    );
    assert!(String::from_utf8_lossy(&pods.stdout).contains("deny-egress-test"));
    assert!(!lab.leftovers().is_empty(), "the lab is still there");
    let down = lab
        .command("down")
        .output()
        .expect("run kube-netd lab down");
    assert!(down.status.success());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn an_interrupted_demo_removes_its_lab() {
    let lab = DemoLab::new("int");
    let mut child = lab
        .command("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kube-netd lab demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    // Interrupted in the middle of step 1, with the lab up and a policy being applied.
    while !line.starts_with("  Applying ") {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the demo's output");
        assert!(n > 0, "the demo ended before step 1 applied its policy");
    }
    assert!(!lab.leftovers().is_empty(), "the lab is up");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = child.wait().expect("wait for the demo");
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
