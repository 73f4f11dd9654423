//! The HTTP server: hyper on a Tokio listener, routing Kubernetes REST paths to the
//! [`Registry`], and writing the kubeconfig that points kubectl at it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use netd_model::{FieldValidation, Kind, LabelSelector, Labels, ObjectId};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{ApiError, ServeError};
use crate::patch::{
    self, apply_merge, field_set, json_patch, merge_patch, remove_dropped, strategic_merge,
};
use crate::resource::{self, GROUPS, Resource};
use crate::store::{self, EventType, Registry, WriteOptions};
use crate::table::table;
use crate::{openapi, proto};

/// The Kubernetes version the server reports (`/version`): the kubectl it is tested with.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "32");

/// How the server runs its watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long a watch lasts when the client does not say (`timeoutSeconds`).
    pub watch_timeout: Duration,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for ServeOptions {
    /// Half an hour per watch, as the API server's default `--min-request-timeout` gives
    /// on average; a bookmark every five seconds.
    fn default() -> Self {
        ServeOptions {
            watch_timeout: Duration::from_secs(1800),
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running API server. Dropping it stops it; [`ApiServer::shutdown`] stops it and waits
/// until its listener and connections are closed.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Serves `registry` on `addr` (port 0 for a free one) with the default options. Must be
    /// called from within a Tokio runtime.
    pub fn start(registry: Arc<Registry>, addr: SocketAddr) -> Result<ApiServer, ServeError> {
        ApiServer::start_with(registry, addr, ServeOptions::default())
    }

    /// [`ApiServer::start`] with `options`.
    pub fn start_with(
        registry: Arc<Registry>,
        addr: SocketAddr,
        options: ServeOptions,
    ) -> Result<ApiServer, ServeError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::BindFailed { addr, source })?;
        ApiServer::start_on(registry, listener, options)
    }

    /// Serves `registry` on `listener`, already bound (say, from a thread inside another
    /// network namespace: the socket stays there), with `options`. Must be called from
    /// within a Tokio runtime.
    pub fn start_on(
        registry: Arc<Registry>,
        listener: std::net::TcpListener,
        options: ServeOptions,
    ) -> Result<ApiServer, ServeError> {
        let unusable = |source| ServeError::ListenerUnusable { source };
        listener.set_nonblocking(true).map_err(unusable)?;
        let addr = listener.local_addr().map_err(unusable)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(unusable)?;
        let api = Arc::new(Api {
            registry,
            addr,
            options,
        });
        let task = tokio::spawn(accept_loop(listener, api));
        Ok(ApiServer { addr, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the `server:` of a kubeconfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and returns once its listener and connections are closed.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The join completes once the task (owning the sockets) is dropped; `Cancelled` is
        // the expected result.
        let _ = (&mut self.task).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a kubeconfig at `path` whose one context, `name`, reaches the server at `server`
/// (`http://127.0.0.1:PORT`) without credentials. The file is replaced atomically.
pub fn write_kubeconfig(path: &Path, name: &str, server: &str) -> Result<(), ServeError> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    let failed = |source| ServeError::KubeconfigFailed {
        path: path.to_owned(),
        source,
    };
    let text = serde_yaml_ng::to_string(&config).map_err(|e| failed(std::io::Error::other(e)))?;
    store::write_durably(path, text.as_bytes()).map_err(|e| failed(std::io::Error::other(e)))
}

type Body = BoxBody<Bytes, Infallible>;

struct Api {
    registry: Arc<Registry>,
    addr: SocketAddr,
    options: ServeOptions,
}

/// Pause after a failed `accept` (out of file descriptors) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

async fn accept_loop(listener: tokio::net::TcpListener, api: Arc<Api>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, api.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, api: Arc<Api>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(request).await) }
    });
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "API connection ended with an error");
    }
}

/// What a request path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn id(&self) -> Option<ObjectId> {
        let name = self.name.clone()?;
        Some(ObjectId {
            kind: self.resource.kind,
            namespace: if self.resource.namespaced() {
                self.namespace.clone().unwrap_or_else(|| "default".into())
            } else {
                String::new()
            },
            name,
        })
    }
}

/// The query parameters, decoded.
type Params = BTreeMap<String, String>;

impl Api {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let params = query(request.uri().query().unwrap_or(""));
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let accept = header(ACCEPT);
        let mut content_type = header(CONTENT_TYPE);
        let mut body = match request.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(&ApiError::BadRequest(format!("cannot read the body: {e}"))),
        };
        if content_type.contains("protobuf") || content_type.contains("cbor") {
            match proto::decode(&body) {
                Some(object) => {
                    body = Bytes::from(object.to_string());
                    content_type = "application/json".to_owned();
                }
                None => {
                    return error(&ApiError::UnsupportedMediaType(
                        "application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
                    ));
                }
            }
        }
        tracing::debug!(%method, %path, "request");
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(doc) = self.discovery(&segments) {
            return if method == Method::GET {
                json_response(StatusCode::OK, &doc, &[])
            } else {
                error(&ApiError::MethodNotAllowed)
            };
        }
        let Some(target) = target(&segments) else {
            return error(&ApiError::NoSuchPath);
        };
        let request = Call {
            method,
            params,
            table: accept.contains("as=Table"),
            content_type,
            body,
        };
        self.serve(target, request)
            .await
            .unwrap_or_else(|e| error(&e))
    }

    /// The discovery document at `segments`, if it is one.
    fn discovery(&self, segments: &[&str]) -> Option<Value> {
        Some(match segments {
            ["version"] => json!({
                "major": KUBERNETES_VERSION.0,
                "minor": KUBERNETES_VERSION.1,
                "gitVersion": format!("v{}.{}.0+kube-netd", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1),
                "gitCommit": "",
                "gitTreeState": "clean",
                "buildDate": "",
                "goVersion": "",
                "compiler": "",
                "platform": "linux/amd64",
            }),
            ["api"] => resource::core_versions(&self.addr.to_string()),
            ["apis"] => resource::group_list(),
            ["apis", group] if GROUPS.contains(group) => resource::group(group),
            ["api", version] => resource::resource_list("", version)?,
            ["apis", group, version] => resource::resource_list(group, version)?,
            ["openapi", "v3"] => openapi::root(),
            ["openapi", "v3", rest @ ..] => openapi::group_version(&rest.join("/"))?,
            _ => return None,
        })
    }

    async fn serve(&self, target: Target, call: Call) -> Result<Response<Body>, ApiError> {
        let fields = WriteOptions {
            fields: field_validation(&call.params),
            dry_run: match call.params.get("dryRun").map(String::as_str) {
                None | Some("") => false,
                Some("All") => true,
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported dryRun value {other:?}: only \"All\" is"
                    )));
                }
            },
        };
        match (&call.method, &target.name, target.subresource.as_deref()) {
            (&Method::GET, None, None) => {
                if call
                    .params
                    .get("watch")
                    .is_some_and(|w| w == "true" || w == "1")
                {
                    return self.watch(&target, &call);
                }
                self.list(&target, &call)
            }
            (&Method::POST, None, None) => {
                let object = self.body_object(&target, &call)?;
                let written = self.registry.create(object, fields)?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &written.object,
                    &written.warnings,
                ))
            }
            (&Method::GET, Some(_), None | Some("status")) => {
                let object = self.registry.get(&self.id(&target)?)?;
                Ok(self.one(&target, &call, object))
            }
            (&Method::PUT, Some(name), None | Some("status")) => {
                let object = self.body_object(&target, &call)?;
                if object["metadata"]["name"].as_str() != Some(name) {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        object["metadata"]["name"].as_str().unwrap_or("")
                    )));
                }
                let written = self.registry.update(object, fields)?;
                Ok(json_response(
                    StatusCode::OK,
                    &written.object,
                    &written.warnings,
                ))
            }
            (&Method::PATCH, Some(_), None | Some("status")) => {
                let id = self.id(&target)?;
                let written = self.patch(&target, &id, &call, fields)?;
                Ok(json_response(
                    StatusCode::OK,
                    &written.object,
                    &written.warnings,
                ))
            }
            (&Method::DELETE, Some(_), None) => {
                let id = self.id(&target)?;
                let options: Value = if call.body.is_empty() {
                    json!({})
                } else {
                    parse_json(&call.body)?
                };
                let precondition = options["preconditions"]["resourceVersion"].as_str();
                // A delete's options, dry run included, come in its body.
                let dry_run = options["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
                let fields = WriteOptions {
                    dry_run: fields.dry_run || dry_run,
                    ..fields
                };
                let deleted = self.registry.delete(&id, precondition, fields)?;
                Ok(json_response(StatusCode::OK, &deleted, &[]))
            }
            (_, Some(_), Some("scale")) if target.resource.kind == Kind::Deployment => {
                self.scale(&target, &call, fields)
            }
            (_, Some(pod), Some(sub @ ("log" | "exec" | "attach" | "portforward")))
                if target.resource.kind == Kind::Pod =>
            {
                // A Pod that is not there is 404, as for any read of it.
                self.registry.get(&self.id(&target)?)?;
                Err(ApiError::NoContainers {
                    namespace: target.namespace.clone().unwrap_or_default(),
                    pod: pod.clone(),
                    subresource: sub.to_owned(),
                })
            }
            (_, _, Some(_)) => Err(ApiError::NoSuchPath),
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    fn id(&self, target: &Target) -> Result<ObjectId, ApiError> {
        target.id().ok_or(ApiError::NoSuchPath)
    }

    /// The object in a create or update body, in the path's namespace.
    fn body_object(&self, target: &Target, call: &Call) -> Result<Value, ApiError> {
        let mut object = parse_body(&call.body, &call.content_type)?;
        if !object.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        check_type(&object, target.resource)?;
        if target.resource.namespaced() {
            let path_ns = target.namespace.as_deref().unwrap_or("default");
            match object["metadata"]["namespace"].as_str() {
                Some(ns) if !ns.is_empty() && ns != path_ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request"
                            .into(),
                    ));
                }
                _ => object["metadata"]["namespace"] = json!(path_ns),
            }
        }
        Ok(object)
    }

    fn list(&self, target: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
        let filter = Filter::new(target.resource.kind, &call.params)?;
        let (items, rv) = self
            .registry
            .list(target.resource.kind, target.namespace.as_deref());
        let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
        if call.table {
            let t = table(target.resource.kind, &items, rv, jiff::Timestamp::now());
            return Ok(json_response(StatusCode::OK, &t, &[]));
        }
        let list = json!({
            "kind": format!("{}List", target.resource.kind.as_str()),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list, &[]))
    }

    fn one(&self, target: &Target, call: &Call, object: Value) -> Response<Body> {
        if call.table {
            let rv = self.registry.resource_version();
            let t = table(target.resource.kind, &[object], rv, jiff::Timestamp::now());
            return json_response(StatusCode::OK, &t, &[]);
        }
        json_response(StatusCode::OK, &object, &[])
    }

    fn patch(
        &self,
        target: &Target,
        id: &ObjectId,
        call: &Call,
        fields: WriteOptions,
    ) -> Result<store::Written, ApiError> {
        let kind = target.resource.kind.as_str();
        let media = call.content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json" => {
                let patch = parse_json(&call.body)?;
                self.registry.modify(id, fields, false, |current| {
                    let mut object = current.cloned().unwrap_or_default();
                    match media {
                        "application/strategic-merge-patch+json" => {
                            strategic_merge(&mut object, &patch, kind)?;
                        }
                        "application/json-patch+json" => json_patch(&mut object, &patch)?,
                        _ => merge_patch(&mut object, &patch),
                    }
                    Ok(object)
                })
            }
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                let manager = call
                    .params
                    .get("fieldManager")
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "PATCH requests with apply content type must set the fieldManager parameter"
                                .into(),
                        )
                    })?
                    .clone();
                let applied = parse_body(&call.body, "application/yaml")?;
                check_type(&applied, target.resource)?;
                if applied["metadata"]["name"].as_str() != Some(id.name.as_str()) {
                    return Err(ApiError::BadRequest(
                        "the name of the applied object does not match the name on the URL".into(),
                    ));
                }
                let apply = ApplyRequest {
                    manager,
                    force: call.params.get("force").is_some_and(|f| f == "true"),
                };
                self.registry.modify(id, fields, true, |current| {
                    server_side_apply(current, applied, &apply, id, kind)
                })
            }
            _ => Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
            )),
        }
    }

    /// `deployments/<name>/scale`: an `autoscaling/v1` Scale over the Deployment's replicas.
    fn scale(
        &self,
        target: &Target,
        call: &Call,
        fields: WriteOptions,
    ) -> Result<Response<Body>, ApiError> {
        let id = self.id(target)?;
        let written = match call.method {
            Method::GET => self.registry.get(&id)?,
            Method::PUT | Method::PATCH => {
                let body = parse_json(&call.body)?;
                let media = call.content_type.split(';').next().unwrap_or("").trim();
                let update = call.method == Method::PUT;
                if !update
                    && !matches!(
                        media,
                        "application/merge-patch+json" | "application/strategic-merge-patch+json"
                    )
                {
                    return Err(ApiError::UnsupportedMediaType(
                        "application/merge-patch+json, application/strategic-merge-patch+json",
                    ));
                }
                self.registry
                    .modify(&id, fields, false, |current| {
                        let mut deployment = current.cloned().unwrap_or_default();
                        let mut scale = scale_of(&deployment);
                        if update {
                            scale = body.clone();
                        } else {
                            merge_patch(&mut scale, &body);
                        }
                        let asked = scale["metadata"]["resourceVersion"].as_str().unwrap_or("");
                        if update
                            && !asked.is_empty()
                            && asked != deployment["metadata"]["resourceVersion"]
                        {
                            return Err(ApiError::Conflict(store::subject(&id)));
                        }
                        let replicas = scale["spec"]["replicas"].as_i64().ok_or_else(|| {
                            ApiError::BadRequest("spec.replicas must be an integer".into())
                        })?;
                        deployment["spec"]["replicas"] = json!(replicas);
                        Ok(deployment)
                    })?
                    .object
            }
            _ => return Err(ApiError::MethodNotAllowed),
        };
        Ok(json_response(StatusCode::OK, &scale_of(&written), &[]))
    }

    fn watch(&self, target: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
        let filter = Filter::new(target.resource.kind, &call.params)?;
        let from = match call.params.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(
                rv.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
            ),
        };
        let timeout = match call.params.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(
                s.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {s:?}")))?,
            ),
            None => self.options.watch_timeout,
        };
        let watch = Watch {
            registry: self.registry.clone(),
            kind: target.resource.kind,
            namespace: target.namespace.clone(),
            filter,
            from,
            timeout,
            bookmark_interval: self.options.bookmark_interval,
            bookmarks: call
                .params
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            initial_events_end: call
                .params
                .get("sendInitialEvents")
                .is_some_and(|b| b == "true"),
            table: call.table,
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(watch.run(tx));
        let mut response = Response::new(WatchBody { rx }.boxed());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }
}

/// One request, as the handlers read it.
struct Call {
    method: Method,
    params: Params,
    table: bool,
    content_type: String,
    body: Bytes,
}

/// One watch stream.
struct Watch {
    registry: Arc<Registry>,
    kind: Kind,
    namespace: Option<String>,
    filter: Filter,
    from: Option<u64>,
    timeout: Duration,
    bookmark_interval: Duration,
    bookmarks: bool,
    initial_events_end: bool,
    table: bool,
}

impl Watch {
    async fn run(self, tx: mpsc::Sender<Bytes>) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut changed = self.registry.subscribe();
        let mut first = true;
        let mut last = match self.from {
            Some(rv) => rv,
            None => {
                let (items, rv) = self.registry.list(self.kind, self.namespace.as_deref());
                for object in items.into_iter().filter(|o| self.filter.matches(o)) {
                    if !self
                        .send(&tx, EventType::Added, object, rv, &mut first)
                        .await
                    {
                        return;
                    }
                }
                if self.initial_events_end && !self.bookmark(&tx, rv, true).await {
                    return;
                }
                rv
            }
        };
        let mut ticks = tokio::time::interval(self.bookmark_interval);
        ticks.tick().await;
        loop {
            let events = match self.registry.events_since(last) {
                Ok(events) => events,
                Err(e) => {
                    let line = json!({"type": "ERROR", "object": e.status()});
                    let _ = tx.send(line_bytes(&line)).await;
                    return;
                }
            };
            for event in events {
                last = event.resource_version;
                if event.id.kind != self.kind
                    || self
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| ns != event.id.namespace)
                {
                    continue;
                }
                let now_matches = self.filter.matches(&event.object);
                let was_matching = event.previous.as_ref().map(|p| self.filter.matches(p));
                let kind = match (event.kind, was_matching, now_matches) {
                    (EventType::Modified, Some(false), true) => EventType::Added,
                    (EventType::Modified, Some(true), false) => EventType::Deleted,
                    (_, _, true) => event.kind,
                    _ => continue,
                };
                if !self.send(&tx, kind, event.object, last, &mut first).await {
                    return;
                }
            }
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { return },
                _ = ticks.tick(), if self.bookmarks => {
                    if !self.bookmark(&tx, last, false).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    }

    async fn send(
        &self,
        tx: &mpsc::Sender<Bytes>,
        kind: EventType,
        object: Value,
        rv: u64,
        first: &mut bool,
    ) -> bool {
        let object = if self.table {
            let mut t = table(self.kind, &[object], rv, jiff::Timestamp::now());
            if !*first && let Some(map) = t.as_object_mut() {
                // As the API server does, only the first event of a watch carries the
                // column definitions.
                map.insert("columnDefinitions".into(), Value::Null);
            }
            t
        } else {
            object
        };
        *first = false;
        let line = json!({"type": kind.as_str(), "object": object});
        tx.send(line_bytes(&line)).await.is_ok()
    }

    async fn bookmark(&self, tx: &mpsc::Sender<Bytes>, rv: u64, initial_end: bool) -> bool {
        let r = Resource::of(self.kind);
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let line = json!({
            "type": "BOOKMARK",
            "object": {"kind": self.kind.as_str(), "apiVersion": r.api_version(), "metadata": metadata},
        });
        tx.send(line_bytes(&line)).await.is_ok()
    }
}

fn line_bytes(v: &Value) -> Bytes {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch response body: one chunk per event line, ending when the watch ends.
struct WatchBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: LabelSelector,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn new(kind: Kind, params: &Params) -> Result<Filter, ApiError> {
        let labels = match params.get("labelSelector") {
            Some(s) if !s.is_empty() => s
                .parse::<LabelSelector>()
                .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?,
            _ => LabelSelector::everything(),
        };
        let mut fields = Vec::new();
        for term in params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: {term:?}; can't understand it"
                )));
            };
            if !field_supported(kind, field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            fields.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(Filter { labels, fields })
    }

    fn matches(&self, object: &Value) -> bool {
        let labels: Labels = object["metadata"]["labels"]
            .as_object()
            .map(|l| {
                l.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if !self.labels.matches(&labels) {
            return false;
        }
        self.fields.iter().all(|(field, equal, value)| {
            let mut at = object;
            for part in field.split('.') {
                at = &at[part];
            }
            let actual = match at {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// The fields a kind can be selected by, as the API server allows them.
fn field_supported(kind: Kind, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match kind {
        Kind::Pod => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        Kind::Node => field == "spec.unschedulable",
        Kind::Namespace => field == "status.phase",
        Kind::Service => matches!(field, "spec.clusterIP" | "spec.type"),
        _ => false,
    }
}

/// The resource a path names, with its namespace, name and subresource.
fn target(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| Resource::find(group, version, plural);
    let (resource, namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|r| r.namespaced()) => {
            (find(plural)?, Some((*ns).to_owned()), rest)
        }
        [plural, rest @ ..] => (find(plural)?, None, rest),
        [] => return None,
    };
    let (name, subresource) = match rest {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

/// The Scale object of a Deployment.
fn scale_of(deployment: &Value) -> Value {
    let meta = &deployment["metadata"];
    let selector: Vec<String> = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": deployment["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": deployment["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(","),
        },
    })
}

/// Server-side apply of `applied` by `manager`: creates the object if it is missing,
/// otherwise merges the applied configuration in and removes what the manager applied last
/// time and no longer does; records the manager's field set in `managedFields`.
fn server_side_apply(
    current: Option<&Value>,
    applied: Value,
    apply: &ApplyRequest,
    id: &ObjectId,
    kind: &str,
) -> Result<Value, ApiError> {
    let manager = apply.manager.as_str();
    let new_set = field_set(&applied, kind);
    let mut others: Vec<Value> = current
        .map(managed_entries)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
        .collect();
    let mut object = match current {
        None => applied.clone(),
        Some(current) => {
            let mut object = current.clone();
            apply_merge(&mut object, &applied, kind)?;
            let previous = managed_entries(current)
                .into_iter()
                .find(|e| e["manager"] == manager && e["operation"] == "Apply");
            if let Some(previous) = previous {
                remove_dropped(&mut object, &previous["fieldsV1"], &new_set);
            }
            take_ownership(current, &object, &new_set, &mut others, apply, id)?;
            object
        }
    };
    if id.kind.is_namespaced() {
        object["metadata"]["namespace"] = json!(id.namespace);
    }
    others.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": Resource::of(id.kind).api_version(),
        "time": store::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": new_set,
    }));
    object["metadata"]["managedFields"] = Value::Array(others);
    Ok(object)
}

/// The fields this apply sets that other appliers own: a change to one of them is a conflict
/// unless the apply forces it, and then the field moves to this manager.
fn take_ownership(
    before: &Value,
    after: &Value,
    new_set: &Value,
    others: &mut [Value],
    apply: &ApplyRequest,
    id: &ObjectId,
) -> Result<(), ApiError> {
    let mine = patch::leaves(new_set);
    let mut conflicts = Vec::new();
    for other in others.iter_mut().filter(|e| e["operation"] == "Apply") {
        let owner = other["manager"].as_str().unwrap_or("").to_owned();
        let theirs = patch::leaves(&other["fieldsV1"]);
        for leaf in mine.iter().filter(|l| theirs.contains(l)) {
            if patch::value_at(before, leaf) == patch::value_at(after, leaf) {
                continue;
            }
            if apply.force {
                patch::remove_leaf(&mut other["fieldsV1"], leaf);
            } else {
                let version = other["apiVersion"].as_str().unwrap_or("");
                conflicts.push(format!(
                    "conflict with {owner:?} using {version}: {}",
                    patch::path_text(leaf)
                ));
            }
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(ApiError::ApplyConflict {
        subject: store::subject(id),
        conflicts,
    })
}

/// Who applies, and whether they take fields from other managers.
struct ApplyRequest {
    manager: String,
    force: bool,
}

fn managed_entries(object: &Value) -> Vec<Value> {
    object["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `fieldValidation` parameter: strict refuses unknown fields (kubectl's default sends
/// it), anything else warns.
fn field_validation(params: &Params) -> FieldValidation {
    match params.get("fieldValidation").map(String::as_str) {
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        _ => FieldValidation::Warn,
    }
}

fn check_type(object: &Value, resource: Resource) -> Result<(), ApiError> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    if kind != resource.kind.as_str() || api_version != resource.api_version() {
        return Err(ApiError::BadRequest(format!(
            "the body is a {kind:?} of {api_version:?}, not a {} of {:?}",
            resource.kind.as_str(),
            resource.api_version()
        )));
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// A body in JSON or, for a YAML media type, YAML.
fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        return serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")));
    }
    parse_json(body)
}

fn json_response(status: StatusCode, body: &Value, warnings: &[String]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for warning in warnings {
        let text = format!("299 - {}", json!(warning));
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.append("warning", value);
        }
    }
    response
}

fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.status(), &[])
}

/// Decodes a query string (`a=b&c=d%2Ce`).
fn query(q: &str) -> Params {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_namespaces_and_subresources() {
        let t = target(&["api", "v1", "namespaces", "web", "pods", "a"]).expect("pod");
        assert_eq!(t.resource.kind, Kind::Pod);
        assert_eq!(t.namespace.as_deref(), Some("web"));
        assert_eq!(t.name.as_deref(), Some("a"));
        let t = target(&["api", "v1", "namespaces", "web"]).expect("namespace");
        assert_eq!(t.resource.kind, Kind::Namespace);
        assert_eq!(t.name.as_deref(), Some("web"));
        let t = target(&[
            "apis",
            "apps",
            "v1",
            "namespaces",
            "d",
            "deployments",
            "w",
            "scale",
        ])
        .expect("scale");
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        let t = target(&["apis", "discovery.k8s.io", "v1", "endpointslices"]).expect("all");
        assert_eq!(t.namespace, None);
        assert!(target(&["api", "v1", "configmaps"]).is_none());
    }

    #[test]
    fn queries_are_decoded() {
        let q = query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn field_selectors_filter_and_unknown_fields_are_refused() {
        let params: Params = [(
            "fieldSelector".into(),
            "spec.nodeName=n1,metadata.name!=b".into(),
        )]
        .into_iter()
        .collect();
        let f = Filter::new(Kind::Pod, &params).expect("filter");
        assert!(f.matches(&json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "b"}, "spec": {"nodeName": "n1"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n2"}})));
        let params: Params = [("fieldSelector".into(), "spec.nodeName=n1".into())]
            .into_iter()
            .collect();
        assert!(Filter::new(Kind::Service, &params).is_err());
    }
}
