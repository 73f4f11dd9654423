//! # netd-kernel
//!
//! The only code that touches the kernel: network namespaces, applying rule sets atomically, conntrack.
