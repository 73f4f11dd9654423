//! The minimal HTTP/1.1 server under every endpoint of this crate: hyper on a Tokio listener,
//! answering by path only (kube-proxy's handlers ignore the method), with Go's canonical
//! header spelling (`Content-Type`, `X-Content-Type-Options`).
//!
//! Sockets are bound by the caller ([`bind`], or any [`Listen`]), so they can be created inside
//! a network namespace and served from anywhere.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::HealthError;

/// Creates listening sockets for the per-Service health servers.
///
/// The socket is created by whoever implements this, so it lives in whatever network
/// namespace that code chooses (for example a thread that has `setns`ed into a lab node's
/// namespace). Closures `Fn(SocketAddr) -> io::Result<std::net::TcpListener>` implement it.
pub trait Listen: Send + Sync {
    /// Binds a TCP listener on `addr`.
    fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener>;
}

impl<F> Listen for F
where
    F: Fn(SocketAddr) -> io::Result<std::net::TcpListener> + Send + Sync,
{
    fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self(addr)
    }
}

/// Binds in the network namespace of the calling thread, as kube-proxy does.
#[derive(Clone, Copy, Debug, Default)]
pub struct CurrentNamespace;

impl Listen for CurrentNamespace {
    fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(addr)
    }
}

/// Binds a listener on `addr` in the calling thread's network namespace (Rust's standard
/// library sets `SO_REUSEADDR`, as Go does, so a port can be re-bound at once after a close).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HealthError> {
    CurrentNamespace
        .listen(addr)
        .map_err(|source| HealthError::BindFailed { addr, source })
}

/// A running HTTP server. Dropping it stops it (the listener and every open connection are
/// closed soon after); [`HttpServer::shutdown`] stops it and waits until they are.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and returns once its listener and connections are closed.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The join completes after the task's future (holding the sockets) is dropped; its
        // result is `Cancelled`, which is what we asked for.
        let _ = (&mut self.task).await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one request, given its path.
pub(crate) type Handler = Arc<dyn Fn(&str) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `listener`. Must be called from within a Tokio runtime.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    handler: Handler,
) -> Result<HttpServer, HealthError> {
    let setup = |source| HealthError::ListenerSetupFailed { source };
    let addr = listener.local_addr().map_err(setup)?;
    listener.set_nonblocking(true).map_err(setup)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(setup)?;
    let task = tokio::spawn(accept_loop(listener, handler));
    Ok(HttpServer { addr, task })
}

/// A response with kube-proxy's two fixed headers and a JSON body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Go's `http.NotFound`, which its `ServeMux` sends for unknown paths.
pub(crate) fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `X-Content-Type-Options`.
pub(crate) const X_CONTENT_TYPE_OPTIONS: HeaderName =
    HeaderName::from_static("x-content-type-options");

/// How long to wait after a failed `accept` (typically out of file descriptors) before
/// trying again, so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

async fn accept_loop(listener: tokio::net::TcpListener, handler: Handler) {
    // Connections live in this set, so stopping the server (dropping this future) closes
    // them too, as Go's `Server.Close` does.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, handler.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a health check connection failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, handler: Handler) {
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let response = handler(request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "health check connection ended with an error");
    }
}
