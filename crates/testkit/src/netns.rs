//! A network namespace that lives as long as a test holds it: created with a per-test,
//! per-process name and removed when dropped, also when the test panics.

use netd_kernel::netns;

/// A namespace named `<prefix>-<pid>-<suffix>`, deleted on drop. Panics (naming it) when it
/// cannot be created: test code.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates the namespace, with its loopback up. A leftover of the same name (from a
    /// process that had this PID and was killed) is removed first.
    pub fn new(prefix: &str, suffix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}-{suffix}", std::process::id());
        let _ = netns::delete(&name);
        netns::add(&name).unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = netns::delete(&self.name);
    }
}
