//! A TCP connection held open from inside a network namespace, to an echo server (the lab's,
//! which greets with one line and then echoes): for tests that check that an established
//! connection survives a change (an agent restart, an endpoint going away).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An open connection to an echo server. Panics (naming what failed) on any error: test code.
#[derive(Debug)]
pub struct HeldConnection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    greeting: String,
}

impl HeldConnection {
    /// Connects to `to` from a thread inside the namespace `ns` (the socket stays in that
    /// namespace) and reads the server's greeting line. Reads wait at most `timeout`.
    pub fn open(ns: &str, to: SocketAddr, timeout: Duration) -> HeldConnection {
        let stream = in_netns(ns, move || {
            TcpStream::connect_timeout(&to, timeout)
                .unwrap_or_else(|e| panic!("connect to {to} from {ns}: {e}"))
        });
        stream
            .set_read_timeout(Some(timeout))
            .expect("set the read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        let mut conn = HeldConnection {
            stream,
            reader,
            greeting: String::new(),
        };
        conn.greeting = conn
            .line()
            .unwrap_or_else(|e| panic!("the greeting of {to}: {e}"));
        conn
    }

    /// The server's first line (the lab's echo server: JSON naming the serving Pod).
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Sends `text` and expects it echoed on the same connection.
    pub fn round_trip(&mut self, text: &str) {
        self.stream
            .write_all(format!("{text}\n").as_bytes())
            .unwrap_or_else(|e| panic!("send {text:?} on the held connection: {e}"));
        let got = self
            .line()
            .unwrap_or_else(|e| panic!("echo of {text:?} on the held connection: {e}"));
        assert_eq!(got, format!("{text}\n"), "echo of {text:?}");
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line)
    }
}

/// Runs `f` on a thread inside the namespace `ns` (sockets it opens stay in that namespace).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netd_kernel::netns::enter(ns)
                    .unwrap_or_else(|e| panic!("enter namespace {ns}: {e}"));
                f()
            })
            .join()
            .expect("thread in namespace")
    })
}
