//! The real kubectl (`/usr/bin/kubectl`) against a test lab's API server, for the tests that
//! drive a lab with it (included by those alone, so the others carry no unused helper).

use std::process::{Command, Output};

use crate::common::{STATE_ROOT, TestLab};

/// kubectl against one lab, with its own HOME so its discovery cache stays in the test's files.
pub struct Kubectl {
    /// The lab's kubeconfig, as `lab kubeconfig` prints it.
    pub kubeconfig: String,
    /// Its HOME (for its discovery cache).
    pub home: String,
}

impl Kubectl {
    /// kubectl for the running lab `lab` (after `up`).
    pub fn for_lab(lab: &TestLab) -> Kubectl {
        Kubectl {
            kubeconfig: lab.ok(&["kubeconfig"]).trim().to_owned(),
            home: format!("{STATE_ROOT}/{}-manifests", lab.name),
        }
    }

    /// Runs `kubectl ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .output()
            .expect("run kubectl")
    }

    /// Runs `kubectl ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
