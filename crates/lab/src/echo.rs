//! kube-netd's built-in echo server: what every lab Pod runs on each of its container ports.
//!
//! On a TCP connection it first writes one line of JSON, [`EchoReply`], naming the Pod and the
//! client address it sees, then echoes whatever it receives; an SCTP association (one-to-one
//! style, `SOCK_STREAM` with `IPPROTO_SCTP`) is served the same way. On UDP it answers every
//! datagram with that line. A probe thus learns who served it and whether it was NATed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use netd_kernel::module;
use netd_model::{PodRef, Protocol};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

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
    sctp: Vec<Socket>,
}

/// IANA's protocol number for SCTP (`IPPROTO_SCTP`).
const IPPROTO_SCTP: i32 = 132;

/// A one-to-one style SCTP socket for `addr`'s family: the kind `connect` and `accept` work on
/// as on TCP.
pub(crate) fn sctp_socket(addr: &SocketAddr) -> std::io::Result<Socket> {
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(socket2::Protocol::from(IPPROTO_SCTP)),
    )
}

/// An SCTP listener on `addr` (an IPv6 one also accepts IPv4 associations).
fn sctp_listen(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = sctp_socket(&addr)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(128)?;
    Ok(socket)
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
    /// dual-stack socket; IPv4 alone where the namespace has no IPv6). For SCTP ports it loads
    /// the `sctp` module if need be; where the running kernel still has no SCTP sockets they
    /// are skipped with a logged warning, so the Pod's other ports are served.
    pub fn bind(pod: PodRef, ports: &[(Protocol, u16)]) -> Result<EchoServer, LabError> {
        let mut server = EchoServer {
            pod,
            tcp: Vec::new(),
            udp: Vec::new(),
            sctp: Vec::new(),
        };
        let mut sctp = None;
        for &(protocol, port) in ports {
            match protocol {
                Protocol::Tcp => server.tcp.push(bind_any("tcp", port, TcpListener::bind)?),
                Protocol::Udp => server.udp.push(bind_any("udp", port, UdpSocket::bind)?),
                Protocol::Sctp => {
                    let available =
                        *sctp.get_or_insert_with(|| match module::ensure(&[module::SCTP]) {
                            Ok(()) => module::sctp_sockets(),
                            Err(e) => {
                                tracing::warn!(pod = %server.pod, error = %e, "cannot load sctp");
                                false
                            }
                        });
                    if available {
                        server.sctp.push(bind_any("sctp", port, sctp_listen)?);
                    } else {
                        tracing::warn!(pod = %server.pod, port, "SCTP port skipped: this kernel has no SCTP sockets");
                    }
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
        for listener in self.sctp {
            let pod = pod.clone();
            std::thread::spawn(move || serve_sctp(&pod, &listener));
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
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        if stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .is_err()
        {
            continue;
        }
        let pod = pod.to_owned();
        std::thread::spawn(move || answer(&pod, peer, stream));
    }
}

fn serve_sctp(pod: &str, listener: &Socket) {
    loop {
        let Ok((association, peer)) = listener.accept() else {
            continue;
        };
        let Some(peer) = peer.as_socket() else {
            continue;
        };
        if association
            .set_read_timeout(Some(Duration::from_secs(30)))
            .is_err()
        {
            continue;
        }
        let pod = pod.to_owned();
        std::thread::spawn(move || answer(&pod, peer, association));
    }
}

/// Writes the reply line on a TCP connection or SCTP association, then echoes what comes
/// until the peer closes or is silent for the read timeout.
fn answer(pod: &str, peer: SocketAddr, mut stream: impl Read + Write) {
    if stream.write_all(reply_line(pod, peer).as_bytes()).is_err() {
        return;
    }
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

/// Reads the first line a server sent on `stream` (a TCP connection or an SCTP association).
pub(crate) fn read_reply(stream: impl Read) -> Option<EchoReply> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    EchoReply::parse(&line)
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

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

    #[test]
    #[ignore = "needs SCTP sockets in the running kernel: run with --ignored in scripts/kernel-vm.sh (issue 14)"]
    fn sctp_associations_get_the_reply_line_and_their_echo() {
        module::ensure(&[module::SCTP]).expect("the sctp module");
        assert!(module::sctp_sockets(), "no SCTP sockets in this kernel");
        let server = EchoServer::bind(PodRef::new("x", "a"), &[(Protocol::Sctp, 0)]).expect("bind");
        let port = server.sctp[0]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("addr")
            .port();
        std::thread::spawn(move || server.serve(|| true));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = sctp_socket(&addr).expect("socket");
        client
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .expect("connect");
        let mut reader = BufReader::new(&client);
        let mut line = String::new();
        reader.read_line(&mut line).expect("reply line");
        let reply = EchoReply::parse(&line).expect("an echo reply");
        assert_eq!(reply.pod, "x/a");
        let local = client
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("local");
        assert_eq!(reply.client.port(), local.port());
        (&client).write_all(b"ping\n").expect("send");
        line.clear();
        reader.read_line(&mut line).expect("echo");
        assert_eq!(line, "ping\n");
    }
}
