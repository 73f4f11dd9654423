//! # netd-policy
//!
//! NetworkPolicy semantics: the engine that decides whether a flow is allowed and why, and the back-end-neutral plan the renderers turn into rules.
