//! # netd-testkit
//!
//! Builders for tests: objects, clusters and address plans.
