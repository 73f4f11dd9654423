//! Ending processes by PID, never by name, and only the ones that are ours.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::KernelError;

/// Whether process `pid` exists and its command line contains `marker` as one argument.
/// Guards against PID reuse: a recorded PID is only ours if the process still carries the
/// marker we started it with.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes()),
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid` if it is still ours (see [`is_ours`]). Returns whether a signal was
/// sent; a process that is gone (or no longer ours) is not an error.
pub fn kill_if_ours(pid: u32, marker: &str) -> Result<bool, KernelError> {
    if !is_ours(pid, marker) {
        return Ok(false);
    }
    let raw = i32::try_from(pid).map_err(|_| KernelError::KillFailed {
        pid,
        source: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(nix::Error::ESRCH) => Ok(false),
        Err(source) => Err(KernelError::KillFailed { pid, source }),
    }
}

/// Whether process `pid` is alive (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_carries_its_arguments() {
        let pid = std::process::id();
        let me = std::env::args().next().unwrap_or_default();
        assert!(is_ours(pid, &me));
        assert!(!is_ours(pid, "no-such-marker-argument"));
        assert!(is_alive(pid));
    }
}
