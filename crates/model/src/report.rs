//! How an error is told on one line: the error and each of its causes, joined by `: `, as
//! `{:#}` of an `anyhow::Error` prints them (for logs and the messages of processes that
//! have no `anyhow`).

use std::error::Error;

/// `error` and its chain of sources, joined by `: `.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load {what}")]
    struct Outer {
        what: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn every_cause_follows_in_order() {
        let io = std::io::Error::other("disk gone");
        assert_eq!(error_chain(&io), "disk gone");
        let outer = Outer {
            what: "the file",
            source: io,
        };
        assert_eq!(error_chain(&outer), "cannot load the file: disk gone");
    }
}
