//! # netd-lab: a real multi-node cluster on one machine, built from network namespaces
//!
//! Start with [`Lab`]: [`Lab::up`] builds a lab from objects, [`Lab::apply`] and
//! [`Lab::delete`] change it (returning once every Node has converged),
//! [`Lab::restart_agent_with`] stops one Node's agent (SIGTERM, or SIGKILL as a crash would)
//! and starts it again,
//! [`Lab::probe`] and [`Lab::matrix`] send real packets, and dropping a `Lab` that `up`
//! returned (or calling [`down`]) removes everything it made. [`list`] finds the labs on
//! this machine.
//!
//! ```no_run
//! use netd_lab::{Lab, LabOptions, Place, ProbeSpec, Target};
//! # fn objects() -> Vec<netd_model::Object> { Vec::new() }
//! let options = LabOptions::new("demo", vec!["/usr/bin/kube-netd".into(), "lab".into(), "internal".into()]);
//! let lab = Lab::up(options, objects(), netd_lab::resolved_as_given())?;
//! let from: Place = "default/client".parse()?;
//! let to: Target = "svc/default/web".parse()?;
//! for result in lab.probe(&from, &to, &ProbeSpec::default())? {
//!     println!("{result}"); // default/client -> svc/default/web 80/tcp: connected (served by ...)
//! }
//! lab.down()?;
//! # Ok::<(), netd_lab::LabError>(())
//! ```
//!
//! Modules:
//! - [`lab`]: the [`Lab`] value, [`list`] and [`down`].
//! - `api` (private): the lab's Kubernetes API server (for kubectl), over the state directory: writes
//!   resolved through the control plane, reads served from the resolved cluster.
//! - [`agent`]: each Node's level-triggered reconcile loop, and the [`Programmer`] seam through
//!   which the service proxy and the policy enforcer supply a Node's rules.
//! - [`demo`]: `kube-netd lab demo`, a guided tour of Kubernetes networking with real
//!   packets, each step checked against what Kubernetes specifies.
//! - [`dns`]: cluster DNS in the lab: the DNS server that the Pods of the cluster DNS add-on
//!   (`kube-system/kube-dns` and `coredns`, from [`netd_controlplane::addons`]) run instead of
//!   the echo server, watching the lab's Kubernetes API as `kube-netd dns` watches a
//!   cluster's, with its listeners in the Pod's namespace.
//! - [`echo`]: the echo server every other Pod runs on its container ports.
//! - [`matrix`]: [`ProbeMatrix`], every Pod probed from every Pod, each cell the kernel's
//!   answer.
//! - [`probe`]: probe sources ([`Place`]), targets ([`Target`]) and results ([`ProbeResult`]).
//! - [`helper`]: the helper processes (agent, echo server, DNS server) and their arguments.
//! - [`names`]: how namespaces and interfaces are named (per-lab prefix, 15-byte interfaces).
//! - [`objects`]: objects as the lab stores them.
//! - `topology` (private): the underlay switch, the external namespace, each Node's bridge
//!   (`cni0`, with `br_netfilter` and hairpin ports) and routes, each Pod's namespace (a /32
//!   routed via the bridge, with permanent neighbour entries: nothing ARPs at run time).
//! - `store` (private): the state directory (`/run/kube-netd/labs/<name>/`), which records
//!   every namespace before it is created and every PID, so [`down`] cleans up after a crash.
//!
//! The kernel is touched only through `netd-kernel`, and only inside namespaces the lab made.

pub mod agent;
mod api;
pub mod demo;
pub mod dns;
pub mod echo;
pub mod error;
pub mod helper;
pub mod lab;
pub mod matrix;
pub mod names;
pub mod objects;
pub mod probe;
mod store;
mod topology;

pub use agent::{MakeBackend, NodeRules, Programmer};
pub use error::{BoxError, LabError};
pub use helper::{HELPER_FLAG, helper_if_asked, helper_main};
pub use lab::{
    Action, AgentStop, Change, Lab, LabOptions, LabSummary, Resolver, down, list, resolved_as_given,
};
pub use matrix::ProbeMatrix;
pub use netd_proxy::IpFamily;
pub use probe::{HoldResult, Outcome, Place, ProbeProtocol, ProbeResult, ProbeSpec, Target};
pub use store::{DEFAULT_MODE, DEFAULT_STATE_ROOT};
