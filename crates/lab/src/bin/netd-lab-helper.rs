//! The lab's helper processes for programs other than `kube-netd` (the lab's own tests and
//! benchmarks):
//!
//! - `netd-lab-helper agent|echo ...` runs [`netd_lab::helper_main`]. An agent's rules come
//!   from `STATE_DIR/test-rules/<node>.rules` (an `iptables-restore` payload) when that file
//!   exists, so that tests can drive the [`netd_lab::Programmer`] seam of the iptables back
//!   end with rules of their own.
//! - `netd-lab-helper up NAME STATE_ROOT MANIFEST.json` builds a lab from stored objects and
//!   leaves it running (for crash tests that kill it).

use std::path::PathBuf;
use std::process::ExitCode;

use netd_agent::{Backend, Iptables};
use netd_lab::{BoxError, Lab, LabOptions, NodeRules, Programmer};
use netd_model::{ClusterState, NodeName};

/// Rules read from a directory, one `iptables-restore` payload per Node.
struct RulesFromFiles {
    dir: PathBuf,
}

impl Programmer for RulesFromFiles {
    fn program(&self, _: &ClusterState, node: &NodeName) -> Result<NodeRules, BoxError> {
        let path = self.dir.join(format!("{node}.rules"));
        match std::fs::read_to_string(&path) {
            Ok(payload) => Ok(NodeRules {
                iptables: Some(payload),
                ..NodeRules::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeRules::default()),
            Err(e) => Err(e.into()),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, name, root, manifest] if cmd == "up" => up(name, root, manifest),
        _ => {
            let dir = PathBuf::from(args.get(1).cloned().unwrap_or_default()).join("test-rules");
            let make = move |_: &netd_agent::BackendConfig| {
                let programmer = Box::new(RulesFromFiles { dir: dir.clone() });
                Box::new(Iptables::new(programmer)) as Box<dyn Backend>
            };
            netd_lab::helper_main(&args, &make).map_err(BoxError::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netd-lab-helper: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn up(name: &str, root: &str, manifest: &str) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(manifest)?;
    let values: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    let objects = netd_lab::objects::decode_all(values)?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let mut options = LabOptions::new(name, vec![exe]);
    options.state_root = root.into();
    let lab = Lab::up(options, objects, netd_lab::resolved_as_given())?;
    println!("up");
    lab.detach();
    Ok(())
}
