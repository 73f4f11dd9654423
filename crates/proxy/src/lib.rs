//! # netd-proxy: the back-end-neutral service plan
//!
//! Start with [`plan()`]: from a [`ClusterState`](netd_model::ClusterState), one Node and one IP
//! family, it decides everything kube-proxy decides before it writes a single rule — for every
//! Service port its frontends (ClusterIP, nodePort, external IPs, load-balancer IPs and source
//! ranges), which endpoints each kind of traffic may use (kube-proxy's `CategorizeEndpoints`:
//! ready endpoints filtered by topology hints, the serving-and-terminating fallback, the
//! node-local set for `Local` traffic policies), what happens when there are none (reject or
//! drop), and where traffic is masqueraded. The back ends (iptables, nftables, IPVS) only render
//! a [`ServicePlan`].
//!
//! - [`options`]: [`ProxySettings`] (kube-proxy's flags every back end honours) and
//!   [`ProxyOptions`] (those settings met with one Node: masquerade, the local-traffic
//!   detector, nodePort addresses, zone and IPs).
//! - [`plan`](mod@plan): [`ServicePlan`], [`ServicePortPlan`] and the decisions they carry.
//! - [`topology`]: endpoint categorisation, exactly as upstream's `topology.go`.
//! - Partial syncs: [`ServicePlan::changed_services`] compares two plans (their port maps:
//!   [`differing_services`]); [`replan()`] brings a plan to a changed state, planning again
//!   only the Services whose inputs changed ([`changed_services()`]).
//!
//! The crate is pure: no I/O, no clock; the same snapshot gives the same plan.

pub mod options;
pub mod plan;
pub mod topology;

pub use options::{
    BadInterfaceName, BadSetting, DetectLocal, InterfaceName, IpFamily, LocalDetector,
    NodePortAddresses, NodePortIps, ProxyOptions, ProxySettings,
};
pub use plan::{
    ClusterIpMasquerade, Disposition, ExternalPlan, PlannedEndpoint, PortPlans, Replanned,
    ServicePlan, ServicePortPlan, changed_services, differing_services, plan, replan,
};
pub use topology::{Categorized, categorize};
