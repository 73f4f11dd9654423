//! A scratch network namespace for one real-kernel test: created with a per-test name and
//! deleted when the guard is dropped, also when the test panics.

use netd_kernel::netns;

/// A network namespace named `<prefix>-<pid>-<suffix>`, deleted on drop.
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
}

impl ScratchNetns {
    /// Creates the namespace; panics if it cannot be created (the test needs root).
    pub fn new(prefix: &str, suffix: &str) -> ScratchNetns {
        let name = format!("{prefix}-{}-{suffix}", std::process::id());
        // A namespace left over by an earlier run under the same PID is stale.
        if netns::exists(&name) {
            let _ = netns::delete(&name);
        }
        netns::add(&name).unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        ScratchNetns { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `argv` (a program and its arguments) to run inside the namespace.
    pub fn command(&self, argv: &[&str]) -> std::process::Command {
        let (program, args) = argv.split_first().expect("a program to run");
        let mut command = netns::command(&self.name, program).expect("the namespace's name");
        command.args(args);
        command
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.name);
    }
}
