//! Helpers shared by this crate's real-kernel tests.

use netd_kernel::netns;

/// A namespace named `<prefix>-<pid>-<suffix>`, deleted on drop (also when a test fails).
pub struct Ns(pub String);

impl Ns {
    pub fn new(prefix: &str, suffix: &str) -> Ns {
        let name = format!("{prefix}-{}-{suffix}", std::process::id());
        netns::add(&name).expect("add namespace");
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}
