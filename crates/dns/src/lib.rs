//! # netd-dns
//!
//! Cluster DNS: the zone computed from a ClusterState, served over UDP and TCP through hickory.
