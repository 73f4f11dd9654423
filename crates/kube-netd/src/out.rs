//! Standard output that survives a closed pipe.
//!
//! `print!` panics when the reader has gone (`kube-netd get pods | head -1`). Commands write
//! through [`stdout`] instead, and `main` turns the resulting [`io::ErrorKind::BrokenPipe`]
//! into a quiet exit with the status a shell reports for a program killed by SIGPIPE, as
//! coreutils and kubectl end.

use std::io::{self, Write as _};

/// The exit status of a program that SIGPIPE ended: 128 + 13.
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// Writes `text` to standard output and flushes it, so a closed pipe is seen here.
pub fn stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether `error` (or one of its causes) is a write to a closed pipe.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
