//! # netd-controlplane
//!
//! The embedded control plane: computes, as a pure function of the desired objects, the state a cluster would have (Pods from Deployments, scheduling, IPAM, ClusterIPs, nodePorts, load-balancer IPs, EndpointSlices).
