//! kube-netd's built-in echo server: what every lab Pod runs on each of its container ports.
//!
//! On a TCP connection it first writes one line of JSON, [`EchoReply`], naming the Pod and the
//! client address it sees, then echoes whatever it receives. On UDP it answers every datagram
//! with that line. A probe thus learns who served it and whether it was NATed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use netd_model::{PodRef, Protocol};
use serde::{Deserialize, Serialize};

use crate::LabError;

/// The line an echo server answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// The Pod that served the request, `ns/name`.
    pub pod: String,
    /// The client address as the server saw it, `ip:port`.
    pub client: SocketAddr,
}

impl EchoReply {
    /// Parses the first line of a reply.
    pub fn parse(line: &str) -> Option<EchoReply> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// A bound echo server, ready to [`serve`](EchoServer::serve).
#[derive(Debug)]
pub struct EchoServer {
    pod: PodRef,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

/// Binds `port` on every address of the current namespace: one dual-stack socket, or IPv4
/// alone where the namespace has no IPv6.
fn bind_any<S>(
    protocol: &'static str,
    port: u16,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> Result<S, LabError> {
    bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .map_err(|source| LabError::EchoBindFailed {
            protocol,
            port,
            source,
        })
}

impl EchoServer {
    /// Binds every port on all addresses of the current namespace, IPv6 and IPv4 (one
    /// dual-stack socket; IPv4 alone where the namespace has no IPv6). SCTP ports are skipped
    /// with a logged note: this lab's kernels have no SCTP.
    pub fn bind(pod: PodRef, ports: &[(Protocol, u16)]) -> Result<EchoServer, LabError> {
        let mut server = EchoServer {
            pod,
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        for &(protocol, port) in ports {
            match protocol {
                Protocol::Tcp => server.tcp.push(bind_any("tcp", port, TcpListener::bind)?),
                Protocol::Udp => server.udp.push(bind_any("udp", port, UdpSocket::bind)?),
                Protocol::Sctp => {
                    tracing::info!(pod = %server.pod, port, "SCTP port skipped: no SCTP in this kernel");
                }
            }
        }
        Ok(server)
    }

    /// Serves on threads of its own until `keep_running` returns false (checked every half
    /// second), then returns.
    pub fn serve(self, keep_running: impl Fn() -> bool) {
        let pod = self.pod.to_string();
        for listener in self.tcp {
            let pod = pod.clone();
            std::thread::spawn(move || serve_tcp(&pod, &listener));
        }
        for socket in self.udp {
            let pod = pod.clone();
            std::thread::spawn(move || serve_udp(&pod, &socket));
        }
        while keep_running() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn reply_line(pod: &str, client: SocketAddr) -> String {
    // A dual-stack socket sees an IPv4 client as `::ffff:a.b.c.d`: report it as IPv4.
    let reply = EchoReply {
        pod: pod.to_owned(),
        client: SocketAddr::new(client.ip().to_canonical(), client.port()),
    };
    // Serializing a struct of a string and an address cannot fail; fall back to an empty
    // object rather than panic.
    let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_owned());
    line.push('\n');
    line
}

fn serve_tcp(pod: &str, listener: &TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let pod = pod.to_owned();
        std::thread::spawn(move || answer_tcp(&pod, stream));
    }
}

fn answer_tcp(pod: &str, mut stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    if stream.write_all(reply_line(pod, peer).as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn serve_udp(pod: &str, socket: &UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((_, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let _ = socket.send_to(reply_line(pod, peer).as_bytes(), peer);
    }
}

/// Reads the first line a server sent on `stream`.
pub(crate) fn read_reply(stream: &TcpStream) -> Option<EchoReply> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    EchoReply::parse(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_pod_and_the_client() {
        let server = EchoServer::bind(PodRef::new("x", "a"), &[(Protocol::Tcp, 0)]).expect("bind");
        let addr = server.tcp[0].local_addr().expect("addr");
        std::thread::spawn(move || server.serve(|| true));
        let stream = TcpStream::connect(("127.0.0.1", addr.port())).expect("connect");
        let reply = read_reply(&stream).expect("a reply line");
        assert_eq!(reply.pod, "x/a");
        assert_eq!(reply.client, stream.local_addr().expect("local"));
    }
}
