//! Ending processes by PID, never by name, and only the ones that are ours.

pub use nix::sys::signal::Signal;

use nix::sys::signal::kill;
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
    signal_if_ours(pid, marker, Signal::SIGKILL)
}

/// Sends `signal` to `pid` if it is still ours (see [`is_ours`]): [`kill_if_ours`] with the
/// signal of the caller's choice (SIGTERM to let a process stop on its own terms). Returns
/// whether a signal was sent; a process that is gone (or no longer ours) is not an error.
pub fn signal_if_ours(pid: u32, marker: &str, signal: Signal) -> Result<bool, KernelError> {
    if !is_ours(pid, marker) {
        return Ok(false);
    }
    let raw = i32::try_from(pid).map_err(|_| KernelError::KillFailed {
        pid,
        source: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
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

    #[test]
    fn only_a_process_carrying_the_marker_gets_the_signal() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Until the child has exec'd, its command line is still this test's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_ours(pid, "600") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!signal_if_ours(pid, "no-such-marker-argument", Signal::SIGTERM).expect("signal"));
        assert!(is_alive(pid));
        assert!(signal_if_ours(pid, "600", Signal::SIGTERM).expect("signal"));
        let status = child.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        assert!(!signal_if_ours(pid, "600", Signal::SIGTERM).expect("gone is no error"));
    }
}
