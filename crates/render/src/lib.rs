//! # netd-render
//!
//! Renders plans into kernel rule sets: iptables-restore and ipset input, with a packet tracer over our own rule representation.
