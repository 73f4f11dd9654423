//! # netd-proxy
//!
//! The service plan: for one Node, every service port's frontends and the endpoints each may use, decided once for every back end.
