//! A `kill -9` of the server loses no write kubectl saw acknowledged: the server runs in a
//! child process (this test binary, re-run as its helper), kubectl processes write to it
//! concurrently, the child is killed with SIGKILL in the middle of their writes, and the
//! store is read back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netd_apiserver::{ApiServer, FileStorage, Registry, write_kubeconfig};
use netd_model::{ClusterConfig, Kind, ObjectId};

/// Set in the helper's environment: the directory it serves its store from.
const SERVE_DIR: &str = "NETD_APISERVER_TEST_SERVE_DIR";

/// How many acknowledged writes to wait for before the kill.
const WRITES_BEFORE_KILL: usize = 24;

/// Writer threads, each running kubectl after kubectl.
const WRITERS: usize = 4;

/// How long the test waits for the helper to come up, or for the writes, before failing.
const PATIENCE: Duration = Duration::from_secs(60);

fn registry(dir: &Path) -> Result<Registry> {
    let storage = FileStorage::new(dir.join("store"))?.compact_after(10);
    Ok(Registry::new(
        Box::new(storage),
        ClusterConfig::default(),
        1000,
    )?)
}

/// The helper: serves a store until it is killed. Does nothing when run as a test.
#[test]
#[ignore = "the helper process of kill_9_loses_no_acknowledged_write, which runs it"]
fn helper_serve_until_killed() -> Result<()> {
    let Ok(dir) = std::env::var(SERVE_DIR) else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    let registry = Arc::new(registry(dir)?);
    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();
    let server = ApiServer::start(registry, "127.0.0.1:0".parse()?)?;
    let tmp = dir.join("kubeconfig.tmp");
    write_kubeconfig(&tmp, "durability", &server.url())?;
    std::fs::rename(tmp, dir.join("kubeconfig"))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut helper = Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "helper_serve_until_killed"])
        .env(SERVE_DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let start = std::time::Instant::now();
    while !kubeconfig.exists() {
        if start.elapsed() > PATIENCE {
            helper.kill()?;
            bail!("the helper did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (acknowledged, count, stop) = (acknowledged.clone(), count.clone(), stop.clone());
        let kubeconfig = kubeconfig.clone();
        let home = dir.path().to_owned();
        writers.push(std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("w{w}-{i}");
                let out = Command::new("/usr/bin/kubectl")
                    .args(["create", "namespace", &name])
                    .env("KUBECONFIG", &kubeconfig)
                    .env("HOME", &home)
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    if let Ok(mut a) = acknowledged.lock() {
                        a.push(name);
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    while count.load(Ordering::SeqCst) < WRITES_BEFORE_KILL {
        if start.elapsed() > PATIENCE {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGKILL, by PID, while the writers are still writing.
    helper.kill()?;
    helper.wait()?;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?;
    }

    let acknowledged = acknowledged
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert!(
        acknowledged.len() >= WRITES_BEFORE_KILL,
        "only {} writes before the kill",
        acknowledged.len()
    );
    let registry = registry(dir.path())?;
    for name in acknowledged.iter() {
        let id = ObjectId {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.clone(),
        };
        registry
            .get(&id)
            .with_context(|| format!("acknowledged namespace {name} was lost"))?;
    }
    Ok(())
}
