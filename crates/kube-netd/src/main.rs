//! The `kube-netd` command line.

fn main() {}
