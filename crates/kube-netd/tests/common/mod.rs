//! A lab run through the binary, as a user runs it: its own name and state root, manifests in
//! a directory of its own, and `lab down` on drop.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kube-netd");
/// Where test labs keep their state.
pub const STATE_ROOT: &str = "/run/kube-netd-tests";

/// One test's lab.
pub struct TestLab {
    /// The lab's name: unique per test process and test.
    pub name: String,
    dir: PathBuf,
}

impl TestLab {
    /// A lab named after this process and `test` (not built yet: run `up`).
    pub fn new(test: &str) -> TestLab {
        let name = format!("cli{}-{test}", std::process::id() % 100_000);
        let dir = PathBuf::from(STATE_ROOT).join(format!("{name}-manifests"));
        std::fs::create_dir_all(&dir).expect("manifest dir");
        TestLab { name, dir }
    }

    /// Writes a manifest and returns its path.
    pub fn file(&self, file: &str, text: &str) -> String {
        let path = self.dir.join(file);
        std::fs::write(&path, text).expect("write manifest");
        path.to_string_lossy().into_owned()
    }

    /// `kube-netd lab ARGS[0] --name NAME --state-root ROOT ARGS[1..]`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("lab")
            .arg(args[0])
            .args(["--name", &self.name, "--state-root", STATE_ROOT])
            .args(&args[1..])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a `lab` subcommand.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kube-netd")
    }

    /// Runs a `lab` subcommand that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kube-netd lab {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `lab` subcommand that must fail with exit status 1; returns stdout and stderr.
    pub fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kube-netd lab {args:?} should exit 1: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl TestLab {
    /// The lab's processes still running: those whose command line names its state
    /// directory (every helper's does), as `PID: COMMAND LINE`.
    pub fn processes(&self) -> Vec<String> {
        let marker = format!("{STATE_ROOT}/{}", self.name);
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
                let spaced: Vec<u8> = cmdline
                    .iter()
                    .map(|&b| if b == 0 { b' ' } else { b })
                    .collect();
                out.push(format!(
                    "process {}: {}",
                    e.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&spaced)
                ));
            }
        }
        out
    }

    /// What of this lab is still on the machine: its namespaces, its processes
    /// ([`TestLab::processes`]) and its state directory.
    pub fn leftovers(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        let mut out: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        out.extend(self.processes());
        let dir = PathBuf::from(STATE_ROOT).join(&self.name);
        if dir.exists() {
            out.push(dir.to_string_lossy().into_owned());
        }
        out
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.command(&["down"]).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
