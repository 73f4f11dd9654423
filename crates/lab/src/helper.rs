//! The lab's helper processes: a Node's agent and a Pod's workload (the echo server, or the
//! cluster DNS server). The lab starts them by running its helper program (for `kube-netd`,
//! `kube-netd lab internal`) with these arguments, which [`helper_main`] parses:
//!
//! - `agent STATE_DIR NODE [--after-go]`: with `--after-go`, the agent first waits for one
//!   byte on standard input, which `lab up` writes once the agent's PID is recorded.
//! - `echo STATE_DIR NS/POD PROTO/PORT...` (run inside the Pod's namespace; it too waits for
//!   the agent's byte on standard input): the echo server on the Pod's ports, the workload
//!   of every Pod but the DNS Pods.
//! - `dns STATE_DIR NS/POD NETNS` (run in the agent's namespace, waiting for the agent's byte
//!   like `echo`): the workload of a Pod labelled [`crate::dns::WORKLOAD_LABEL`]` = dns`, the
//!   cluster DNS server ([`crate::dns`]), watching the lab's API from here and listening on
//!   port 53 in the Pod's namespace `NETNS`.
//! - `apiserver STATE_DIR --after-go` (run in this machine's namespace, listening on
//!   `127.0.0.1` and, from inside the underlay namespace, on the lab's in-lab address): the
//!   lab's Kubernetes API ([`crate::api`]), with
//!   [`netd_controlplane::resolve`] as its control plane. Like an agent, it waits for the byte
//!   `lab up` writes once its PID is recorded.
//!
//! The state directory is always the second argument: it marks the process as the lab's
//! (so `lab down` kills by PID only processes that still carry it) and the process exits on
//! its own when the directory disappears.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use netd_model::{NodeName, PodRef, Protocol};

use crate::LabError;
use crate::agent::{MakeBackend, run_agent};
use crate::dns;
use crate::echo::EchoServer;

/// The agent argument by which `lab up` asks an agent to wait until its PID is recorded.
pub const AFTER_GO: &str = "--after-go";

/// The argument by which a test binary that doubles as the lab's helper knows it is being run
/// as one: such a binary gives the lab `[its own path, HELPER_FLAG]` as its helper program
/// ([`crate::LabOptions::program`]) and begins `main` with [`helper_if_asked`].
pub const HELPER_FLAG: &str = "--netd-helper";

/// For a test binary that is also the lab's helper: when `args` (those after the program
/// name) begin with [`HELPER_FLAG`], runs [`helper_main`] on the rest and returns its exit
/// status; otherwise `None`, and the binary goes on to run its tests.
pub fn helper_if_asked(args: &[String], make_backend: &MakeBackend) -> Option<ExitCode> {
    let (first, rest) = args.split_first()?;
    if first != HELPER_FLAG {
        return None;
    }
    Some(match helper_main(rest, make_backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helper: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Runs the helper that `args` (without the program name and leading arguments) asks for,
/// until the lab is removed. `make_backend` builds an agent's back end from the lab's mode
/// and options ([`netd_agent::backend`] for kube-netd's own).
pub fn helper_main(args: &[String], make_backend: &MakeBackend) -> Result<(), LabError> {
    let bad = |expected| LabError::BadHelperArgs {
        args: args.to_vec(),
        expected,
    };
    match args {
        [cmd, dir, node] if cmd == "agent" => {
            run_agent(Path::new(dir), &NodeName::new(node.as_str()), make_backend)
        }
        [cmd, dir, node, flag] if cmd == "agent" && flag == AFTER_GO => {
            // `lab up` writes one byte once it has recorded this process's PID. End of input
            // instead means `up` died before recording it: nothing could ever stop this agent
            // by PID, so it leaves before doing anything.
            if go_ahead() {
                run_agent(Path::new(dir), &NodeName::new(node.as_str()), make_backend)
            } else {
                Ok(())
            }
        }
        [cmd, dir, pod, ports @ ..] if cmd == "echo" => {
            let pod: PodRef = pod
                .parse()
                .map_err(|_| bad("echo STATE_DIR NS/POD PROTO/PORT..."))?;
            let ports = ports
                .iter()
                .map(|p| parse_port(p).ok_or_else(|| bad("ports as tcp/80, udp/53, sctp/9")))
                .collect::<Result<Vec<_>, _>>()?;
            let dir = PathBuf::from(dir);
            // The agent writes one byte once this process's PID is recorded; end of input
            // means the agent died before that, and nothing could stop this process by PID.
            if !go_ahead() {
                return Ok(());
            }
            let server = EchoServer::bind(pod, &ports)?;
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "ready");
            let _ = stdout.flush();
            server.serve(move || dir.exists());
            Ok(())
        }
        [cmd, dir, pod, pod_netns] if cmd == "dns" => {
            let pod: PodRef = pod.parse().map_err(|_| bad("dns STATE_DIR NS/POD NETNS"))?;
            // As for `echo`: no byte, no recorded PID, so the process does not start.
            if !go_ahead() {
                return Ok(());
            }
            dns::serve(Path::new(dir), &pod, pod_netns)
        }
        [cmd, dir, flag] if cmd == "apiserver" && flag == AFTER_GO => {
            if go_ahead() {
                crate::api::serve(Path::new(dir), control_plane())
            } else {
                Ok(())
            }
        }
        _ => Err(bad(
            "agent STATE_DIR NODE | echo STATE_DIR NS/POD PROTO/PORT... | dns STATE_DIR NS/POD \
             NETNS | apiserver STATE_DIR --after-go",
        )),
    }
}

/// The control plane the API server resolves writes with: the one `kube-netd lab` uses.
fn control_plane() -> crate::Resolver {
    std::sync::Arc::new(|objects, config, previous| {
        Ok(netd_controlplane::resolve(objects, config, previous)?)
    })
}

/// Waits for the one byte a parent writes once it has recorded this process's PID.
fn go_ahead() -> bool {
    let mut go = [0u8; 1];
    matches!(std::io::stdin().read(&mut go), Ok(1))
}

fn parse_port(s: &str) -> Option<(Protocol, u16)> {
    let (proto, port) = s.split_once('/')?;
    Some((proto.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_helper_arguments_are_refused() {
        for args in [
            vec![],
            vec!["agent".to_owned()],
            vec!["echo".into(), "/x".into(), "nopod".into()],
            vec!["echo".into(), "/x".into(), "a/b".into(), "tcp:80".into()],
            vec!["dns".into(), "/x".into(), "nopod".into(), "ns".into()],
            vec!["dns".into(), "/x".into(), "a/b".into()],
            vec!["apiserver".into(), "/x".into()],
        ] {
            assert!(
                matches!(
                    helper_main(&args, &netd_agent::backend),
                    Err(LabError::BadHelperArgs { .. })
                ),
                "{args:?}"
            );
        }
        assert_eq!(parse_port("udp/53"), Some((Protocol::Udp, 53)));
    }
}
