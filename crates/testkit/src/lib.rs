//! # netd-testkit: test support shared by kube-netd's crates
//!
//! Tests describe clusters the way users do, as YAML, with [`objects`] and [`state`]:
//!
//! ```
//! let state = netd_testkit::state(r#"
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: a, namespace: x, labels: {pod: a}}
//! spec: {nodeName: node-1, containers: [{name: c, image: i}]}
//! status: {podIP: 10.244.1.2}
//! "#);
//! assert_eq!(state.pods().count(), 1);
//! ```
//!
//! The YAML is parsed straight into k8s-openapi types, without the loader's validation, so a
//! test can build exactly the resolved state it needs (IPs, nodes, conditions set by hand).
//! This is test code: it panics on malformed input, naming the document.
//!
//! [`sctp_missing`] and [`ipvs_missing`] tell the tests that need SCTP or IPVS whether this
//! kernel has it.
//!
//! [`scale`] writes the clusters the benchmarks measure (such as 10,000 Pods and 1,000
//! NetworkPolicies), so that every bench of a size describes the same objects.
//!
//! [`held::HeldConnection`] keeps a TCP connection to a lab echo server open from inside a
//! network namespace, for tests that check a connection survives a change.
//! [`scratch::ScratchNetns`] is a network namespace for one test, deleted when dropped;
//! [`nft::load`] and [`nft::nft`] run `nft` inside it, [`nft::listed`] reads a table back.
//! [`api::TestApiServer`] is a Kubernetes API server for one test, for clients such as
//! kubectl and `kube-netd agent`. [`bench::median`] times the benchmarks that print their own
//! tables.
//!
//! [`node_1!`] and [`two_nodes!`] are the Nodes most tests' clusters start with, as string
//! literals to `concat!` the rest of the cluster onto.

pub mod api;
pub mod bench;
pub mod held;
pub mod nft;
pub mod scale;
pub mod scratch;

/// The YAML of Node `node-1` (pod CIDR 10.244.1.0/24, InternalIP 172.18.0.2), ending in a
/// document separator: a string literal, so that `concat!(netd_testkit::node_1!(), "...")`
/// is one `&'static str`.
#[macro_export]
macro_rules! node_1 {
    () => {
        "apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
"
    };
}

/// [`node_1!`] and `node-2` (10.244.2.0/24, 172.18.0.3), ending in a document separator: the
/// two Nodes most tests' clusters start with, as one string literal for `concat!`.
#[macro_export]
macro_rules! two_nodes {
    () => {
        concat!(
            $crate::node_1!(),
            "apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
---
"
        )
    };
}

/// How to run the tests a kernel feature is missing for.
const VM_HINT: &str = "run them with --ignored in scripts/kernel-vm.sh";

/// Why the tests that need SCTP cannot run on this machine, or `None` when they can: loads
/// the `sctp` module if need be, then opens an SCTP socket. The lab tests' harnesses report
/// such tests as ignored with this reason, and fail them when asked for them (`--ignored`,
/// as `scripts/kernel-vm.sh` runs them on a kernel that has SCTP).
pub fn sctp_missing() -> Option<String> {
    use netd_kernel::module;
    if let Err(e) = module::ensure(&[module::SCTP]) {
        return Some(format!("{e}; {VM_HINT}"));
    }
    if !module::sctp_sockets() {
        return Some(format!(
            "the running kernel opens no SCTP sockets; {VM_HINT}"
        ));
    }
    None
}

/// Why the tests that need IPVS cannot run on this machine, or `None` when they can: loads
/// IPVS mode's modules ([`netd_kernel::module::IPVS_MODULES`]) if need be; reported and
/// failed as [`sctp_missing`]'s are.
pub fn ipvs_missing() -> Option<String> {
    use netd_kernel::module;
    module::ensure(&module::IPVS_MODULES)
        .err()
        .map(|e| format!("{e}; {VM_HINT}"))
}

use netd_model::{ClusterConfig, ClusterState, Object};
use serde::de::DeserializeOwned;

/// Parses multi-document YAML into objects. Panics (naming the document) on anything
/// malformed or of a kind the model does not know.
pub fn objects(yaml: &str) -> Vec<Object> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("document {}: not YAML: {e}", i + 1));
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let object = match kind.as_str() {
            "Namespace" => Object::Namespace(parse(value, i)),
            "Node" => Object::Node(Box::new(parse(value, i))),
            "Deployment" => Object::Deployment(Box::new(parse(value, i))),
            "Pod" => Object::Pod(Box::new(parse(value, i))),
            "Service" => Object::Service(Box::new(parse(value, i))),
            "EndpointSlice" => Object::EndpointSlice(parse(value, i)),
            "NetworkPolicy" => Object::NetworkPolicy(Box::new(parse(value, i))),
            other => panic!("document {}: unsupported kind {other:?}", i + 1),
        };
        out.push(object);
    }
    out
}

/// Builds a [`ClusterState`] from YAML with the default [`ClusterConfig`].
pub fn state(yaml: &str) -> ClusterState {
    state_with(yaml, ClusterConfig::default())
}

/// Builds a [`ClusterState`] from YAML with the given configuration.
pub fn state_with(yaml: &str, config: ClusterConfig) -> ClusterState {
    ClusterState::new(objects(yaml), config).unwrap_or_else(|e| panic!("invalid test cluster: {e}"))
}

/// Builds a [`ClusterState`] from YAML with the default [`ClusterConfig`] as the agent's and
/// cluster DNS's store holds one: [without its objects](ClusterState::without_objects).
pub fn state_without_objects(yaml: &str) -> ClusterState {
    let mut state = ClusterState::without_objects(ClusterConfig::default());
    for object in objects(yaml) {
        let id = object.id();
        state
            .insert(object)
            .unwrap_or_else(|e| panic!("invalid test object {id}: {e}"));
    }
    state
}

fn parse<T: DeserializeOwned>(mut value: serde_json::Value, index: usize) -> T {
    // apiVersion/kind are not fields of the k8s-openapi structs' serde form; drop them.
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("document {}: {e}", index + 1))
}

/// A seeded random number generator (splitmix64) for tests that draw cases from a seed:
/// small, deterministic across platforms and releases, good enough to draw test cases.
///
/// ```
/// let mut a = netd_testkit::Rng::new(7);
/// let mut b = netd_testkit::Rng::new(7);
/// assert_eq!(a.below(100), b.below(100));
/// ```
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // `n` fits in u64 and the remainder is below `n`, so both conversions are lossless.
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items` (not empty).
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
