//! Running a tool and turning its failure into a [`KernelError`].

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::KernelError;

/// The command line as a person would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion, feeding `stdin` if given; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output, KernelError> {
    let command = describe(cmd);
    let spawn_failed = |source| KernelError::SpawnFailed {
        command: command.clone(),
        source,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_failed)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_failed)?;
    }
    let output = child.wait_with_output().map_err(spawn_failed)?;
    if !output.status.success() {
        return Err(KernelError::CommandFailed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<Output, KernelError> {
    run(Command::new("ip").args(args), None)
}
