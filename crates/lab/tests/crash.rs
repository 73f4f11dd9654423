//! `lab down` after a `lab up` killed with SIGKILL (mid-build and after it finished) leaves no
//! namespace, process or file behind.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = netd_lab::down(&self.0, &state_root());
    }
}

fn killed_up(test: &str, delay: Option<Duration>) {
    let name = lab_name(test);
    let _guard = Down(name.clone());
    let manifest = state_root().join(format!("{name}.json"));
    std::fs::create_dir_all(state_root()).expect("state root");
    let values = netd_lab::objects::encode_all(&objects(CLUSTER)).expect("encode");
    std::fs::write(&manifest, serde_json::to_vec(&values).expect("json")).expect("manifest");
    let root = state_root().to_string_lossy().into_owned();
    let mut child = Command::new(helper())
        .args(["up", &name, &root, &manifest.to_string_lossy()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn up");
    match delay {
        Some(d) => std::thread::sleep(d),
        None => {
            // Wait until it reports the lab up, then kill it anyway.
            let mut buf = [0u8; 3];
            child
                .stdout
                .take()
                .expect("stdout")
                .read_exact(&mut buf)
                .expect("up printed");
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let _ = std::fs::remove_file(&manifest);
    assert!(netd_lab::down(&name, &state_root()).expect("down") || delay.is_some());
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert!(
        !netd_lab::down(&name, &state_root()).expect("down again"),
        "down is idempotent"
    );
}

#[test]
fn down_after_up_killed_mid_build_leaves_nothing() {
    for ms in [20, 80, 160] {
        killed_up(&format!("k{ms}"), Some(Duration::from_millis(ms)));
    }
}

#[test]
fn down_after_up_killed_once_built_leaves_nothing() {
    killed_up("kdone", None);
}
