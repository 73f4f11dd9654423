//! `nft` run inside a test's network namespace: for tests that load rendered nftables rules
//! into a kernel and read them back.

use std::io::Write as _;
use std::process::Stdio;

use netd_kernel::netns;

/// Runs `nft <args>` in the namespace `ns` with `stdin` as its input: its output, or the
/// error nft printed.
pub fn nft(ns: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = netns::command(ns, "nft")
        .map_err(|e| e.to_string())?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(stdin.as_bytes())
        .map_err(|e| format!("write to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads `payload` into `ns` in one `nft -f -` transaction; panics with nft's error and the
/// payload when the kernel refuses it.
pub fn load(ns: &str, payload: &str) {
    if let Err(e) = nft(ns, &["-f", "-"], payload) {
        panic!("nft -f failed: {e}\n--- payload:\n{payload}");
    }
}
