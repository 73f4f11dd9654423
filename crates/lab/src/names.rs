//! Names of everything a lab creates, all derived from the lab's name so that two labs never
//! share one, and interface names short enough for the kernel (15 bytes).

use data_encoding::BASE32_NOPAD;
use netd_model::{NodeName, PodRef};
use sha2::{Digest, Sha256};

use crate::LabError;

/// The names of one lab's namespaces and interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    lab: String,
}

/// The bridge in every Node namespace that the Node's pods attach to.
pub const NODE_BRIDGE: &str = "cni0";
/// The underlay interface of a Node and of the external namespace.
pub const UNDERLAY_IF: &str = "eth0";
/// The bridge of the underlay switch.
pub const SWITCH_BRIDGE: &str = "br0";
/// A Pod's interface.
pub const POD_IF: &str = "eth0";

impl Names {
    /// The names of the lab `lab`; fails unless `lab` is lower-case letters, digits and `-`,
    /// at most 40 characters, starting with a letter or digit.
    pub fn new(lab: &str) -> Result<Names, LabError> {
        let ok = !lab.is_empty()
            && lab.len() <= 40
            && !lab.starts_with('-')
            && lab
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(LabError::InvalidName {
                name: lab.to_owned(),
            });
        }
        Ok(Names {
            lab: lab.to_owned(),
        })
    }

    /// The lab's name.
    pub fn lab(&self) -> &str {
        &self.lab
    }

    /// The namespace holding a Node's networking: `<lab>-<node>` (`kube-netd-node-1`).
    pub fn node_ns(&self, node: &NodeName) -> String {
        format!("{}-{}", self.lab, node)
    }

    /// The namespace of a Pod: `<lab>-pod-<ns>.<name>`, or a hash of it when that is long.
    /// (Namespace names have no dots, so the form is unambiguous.)
    pub fn pod_ns(&self, pod: &PodRef) -> String {
        let readable = format!("{}-pod-{}.{}", self.lab, pod.namespace, pod.name);
        if readable.len() <= 120 {
            return readable;
        }
        format!("{}-pod-{}", self.lab, hash(&pod.to_string(), 16))
    }

    /// The namespace of the underlay switch.
    pub fn underlay_ns(&self) -> String {
        format!("{}-underlay", self.lab)
    }

    /// The namespace standing outside the cluster.
    pub fn external_ns(&self) -> String {
        format!("{}-external", self.lab)
    }
}

/// Refuses Node names whose namespace could be mistaken for the lab's own.
pub(crate) fn check_node_name(node: &NodeName) -> Result<(), LabError> {
    let n = node.as_str();
    if n == "underlay" || n == "external" || n.starts_with("pod-") || n.contains('/') {
        return Err(LabError::InvalidNode {
            node: node.clone(),
            reason: "this name is reserved by the lab (underlay, external, pod-*)",
        });
    }
    Ok(())
}

/// The Node-side interface of a Pod's veth: `veth` + 8 characters of a hash of the Pod.
pub fn pod_veth(pod: &PodRef) -> String {
    format!("veth{}", hash(&pod.to_string(), 8))
}

/// The switch-side interface of a Node's underlay veth.
pub fn switch_port(node: &NodeName) -> String {
    format!("sw{}", hash(node.as_str(), 10))
}

/// The switch-side interface of the external namespace's underlay veth.
pub const SWITCH_EXTERNAL_PORT: &str = "swexternal";

/// `len` lower-case base32 characters of the SHA-256 of `s` (kube-proxy's chain-name scheme).
pub fn hash(s: &str, len: usize) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut encoded = BASE32_NOPAD.encode(&digest).to_ascii_lowercase();
    encoded.truncate(len);
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_differ() {
        let a = pod_veth(&PodRef::new(
            "default",
            "a-very-long-pod-name-indeed-0123456789",
        ));
        let b = pod_veth(&PodRef::new("default", "b"));
        assert!(a.len() <= 15 && b.len() <= 15 && switch_port(&"node-1".into()).len() <= 15);
        assert_ne!(a, b);
        assert_eq!(
            a,
            pod_veth(&PodRef::new(
                "default",
                "a-very-long-pod-name-indeed-0123456789"
            ))
        );
    }

    #[test]
    fn namespace_names_carry_the_lab_prefix() {
        let n = Names::new("t1").expect("valid");
        assert_eq!(n.node_ns(&"node-1".into()), "t1-node-1");
        assert_eq!(n.pod_ns(&PodRef::new("x", "a")), "t1-pod-x.a");
        assert!(n.pod_ns(&PodRef::new("x", "a".repeat(200))).len() < 60);
        for bad in ["", "Upper", "-x", "a/b", &"a".repeat(41)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
        assert!(check_node_name(&"external".into()).is_err());
        assert!(check_node_name(&"node-1".into()).is_ok());
    }
}
