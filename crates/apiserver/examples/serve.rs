//! Serves a store directory on a free local port and writes a kubeconfig for it, optionally
//! seeding it with generated Pods first, for trying kubectl against the server and for
//! measuring it.
//!
//! ```text
//! cargo run -p netd-apiserver --example serve -- DIR [PODS]
//! export KUBECONFIG=DIR/kubeconfig
//! time kubectl get pods -A
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use netd_apiserver::{ApiServer, FileStorage, Registry, write_kubeconfig};
use netd_model::{ClusterConfig, FieldValidation};
use serde_json::json;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: serve DIR [PODS]")?);
    let pods: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(0);
    let storage = FileStorage::new(dir.join("store"))?;
    let registry = Arc::new(Registry::new(
        Box::new(storage),
        ClusterConfig::default(),
        1000,
    )?);
    if pods > 0 {
        let start = Instant::now();
        for i in 0..pods {
            let pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{}", i % 10),
                    "labels": {"app": format!("app-{}", i % 100)}},
                "spec": {"nodeName": format!("node-{}", i % 3),
                    "containers": [{"name": "c", "image": "echo", "ports": [{"containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)},
            });
            registry
                .create(pod, FieldValidation::Strict)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let took = start.elapsed();
        eprintln!(
            "created {pods} pods in {took:?} ({:?} per acknowledged write)",
            took / u32::try_from(pods)?
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();
    let server = ApiServer::start(registry, "127.0.0.1:0".parse()?)?;
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, "netd-apiserver", &server.url())?;
    println!("export KUBECONFIG={}", kubeconfig.display());
    runtime.block_on(std::future::pending::<()>());
    Ok(())
}
