//! # netd-lab
//!
//! The lab: a real multi-node cluster on one Linux machine, built from network namespaces.
