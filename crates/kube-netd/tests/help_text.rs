//! Every `--help`, as a user reads it, walked through the binary's command tree: it speaks to
//! users (no project-internal words), shows an example, and every `lab` command shows the
//! `KUBE_NETD_LAB` variable that names the lab.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");

/// Words that mean something only inside the project.
const INTERNAL_WORDS: [&str; 3] = ["seed", "issue", "walkthrough"];

fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .output()
        .expect("run kube-netd");
    assert!(out.status.success(), "{path:?} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands a help text lists under `Commands:`, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_help_text_speaks_to_users_and_every_lab_command_names_its_variable() {
    let mut pending = vec![Vec::<String>::new()];
    let mut leaves = Vec::new();
    while let Some(path) = pending.pop() {
        let text = help(&path);
        let lower = text.to_lowercase();
        for word in INTERNAL_WORDS {
            assert!(
                !lower.contains(word),
                "{path:?} --help says {word:?}:\n{text}"
            );
        }
        if path.first().map(String::as_str) == Some("lab") {
            assert!(text.contains("KUBE_NETD_LAB"), "{path:?} --help:\n{text}");
        }
        let children = subcommands(&text);
        if children.is_empty() {
            assert!(
                text.contains("Example"),
                "{path:?} --help has no example:\n{text}"
            );
            leaves.push(path.join(" "));
        }
        for child in children {
            pending.push([path.clone(), vec![child]].concat());
        }
    }
    for expected in [
        "lab up",
        "lab delete",
        "lab list",
        "policy check",
        "dns serve",
    ] {
        assert!(
            leaves.iter().any(|l| l == expected),
            "{expected} not found in {leaves:?}"
        );
    }
}
