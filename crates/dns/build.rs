//! Build information for `coredns_build_info`: the git commit the crate is built from and
//! the compiler's version, handed to the crate as `NETD_DNS_GIT_REVISION` and
//! `NETD_DNS_RUSTC_VERSION`. Either is left unset when it cannot be found (a source tarball
//! without `.git`, no `git` installed); the crate then says `unknown` and `rust`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    if let Some(revision) = git(&dir, &["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=NETD_DNS_GIT_REVISION={revision}");
        // A new commit, a checkout or a branch that moves: build the revision again.
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watched.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name]) {
                println!("cargo:rerun-if-changed={}", dir.join(path).display());
            }
        }
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if let Some(version) = output(Command::new(rustc).arg("--version")) {
        // "rustc 1.85.0 (4d91de4e4 2025-02-17)": the name and the release.
        let release: Vec<&str> = version.split_whitespace().take(2).collect();
        println!(
            "cargo:rustc-env=NETD_DNS_RUSTC_VERSION={}",
            release.join(" ")
        );
    }
}

/// `git args` run in `dir`: its trimmed output, if it succeeded with some.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    output(Command::new("git").arg("-C").arg(dir).args(args))
}

fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
