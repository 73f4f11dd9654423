//! A Kubernetes API server (netd-apiserver) for one test: on an ephemeral port of 127.0.0.1,
//! served from a thread of its own (inside a scratch network namespace when asked), storing
//! in a directory the test owns; stopped by [`TestApiServer::stop`] or when dropped.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use netd_apiserver::{ApiServer, FileStorage, Registry, WriteOptions, store::DEFAULT_HISTORY};
use netd_model::ClusterConfig;
use tokio::sync::oneshot;

/// A running API server; see the module's documentation.
pub struct TestApiServer {
    registry: Arc<Registry>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestApiServer {
    /// Serves what `dir` holds (an empty or new directory: nothing) on 127.0.0.1 of the
    /// network namespace `netns`, or of this process's own with `None`.
    pub fn start(netns: Option<&str>, dir: &Path) -> TestApiServer {
        let (started, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let netns = netns.map(str::to_owned);
        let dir = dir.to_owned();
        let thread = std::thread::spawn(move || {
            if let Some(netns) = &netns {
                netd_kernel::netns::enter(netns).expect("enter the namespace");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let storage = FileStorage::new(dir).expect("storage");
                let registry = Arc::new(
                    Registry::new(Box::new(storage), ClusterConfig::default(), DEFAULT_HISTORY)
                        .expect("registry"),
                );
                let server =
                    ApiServer::start(registry.clone(), "127.0.0.1:0".parse().expect("addr"))
                        .expect("start the API server");
                started
                    .send((registry, server.url()))
                    .expect("the test waits for the server");
                let _ = stopped.await;
                server.shutdown().await;
            });
        });
        let (registry, url) = ready.recv().expect("the API server started");
        TestApiServer {
            registry,
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The objects it serves, to read and write without HTTP.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates each object (JSON, as a client would send it).
    pub fn create(&self, objects: impl IntoIterator<Item = serde_json::Value>) {
        for object in objects {
            self.registry
                .create(object, WriteOptions::default())
                .expect("create");
        }
    }

    /// Writes a kubeconfig for this server at `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        netd_apiserver::write_kubeconfig(path, "test", &self.url).expect("kubeconfig");
    }

    /// Stops serving and waits for the thread (once; later calls do nothing).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("API server thread");
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
