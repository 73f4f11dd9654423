//! The IPVS service back end: a [`ServicePlan`] rendered into kube-proxy's IPVS layout.
//!
//! Four parts, each a plain value ([`IpvsRules`]):
//! - the kernel's virtual servers: one per (address, port, protocol) for every ClusterIP,
//!   external IP, load-balancer IP, and nodePort on each node address; their real servers are
//!   the endpoints the plan lets that kind of traffic use ([`VirtualServer`]);
//! - the addresses bound to the dummy interface [`DUMMY_INTERFACE`] so the host accepts
//!   packets for them (ClusterIPs, and external and load-balancer IPs that are not already
//!   node addresses);
//! - the ipsets of upstream's `ipsetInfo` ([`IpvsSet`]), always all of them, filled per sync;
//! - the fixed iptables rules IPVS mode still needs, as a [`Ruleset`]: nat `KUBE-SERVICES`
//!   (masquerade marks by set), `KUBE-NODE-PORT`, `KUBE-LOAD-BALANCER`, `KUBE-POSTROUTING`
//!   (hairpin and marked SNAT), `KUBE-MARK-MASQ`; filter `KUBE-FORWARD`, `KUBE-NODE-PORT`
//!   (health-check ports), `KUBE-PROXY-FIREWALL` → `KUBE-SOURCE-RANGES-FIREWALL`,
//!   `KUBE-IPVS-FILTER` (new connections to a bound address on a port that is no Service's
//!   are rejected, kubernetes#72236) and `KUBE-IPVS-OUT-FILTER` (the node may not reach a
//!   load-balancer IP whose source ranges exclude it, kubernetes#119656).
//!
//! Which endpoints a virtual server gets is the plan's [`Disposition`]: `Cluster` and `Local`
//! as named; `Reject` none (the kernel's IPVS answers a virtual server without real servers
//! with ICMP port unreachable, the reject); `Drop` — a `Local` policy with no endpoint on this
//! node — the cluster endpoints, as upstream since kubernetes#97081: IPVS cannot tell pods
//! from outside clients at the virtual server, so pods keep reaching the Service and outside
//! clients get replies from a pod address they discard.
//!
//! [`diff`] compares two sets of virtual servers (what is in the kernel, what should be):
//! what to add, edit and remove, removed real servers first set to weight 0 so their
//! connections drain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use netd_model::Protocol;
use netd_model::view::TrafficPolicy;
use netd_proxy::{
    ClusterIpMasquerade, Disposition, IpFamily, NodePortIps, ServicePlan, ServicePortPlan,
};

use crate::chains::{
    KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
};
use crate::ipset::{IpSet, IpSets, SetDefinition};
use crate::iptables::{
    ChainName, CtState, Direction, HookRule, MarkOp, Match, Rule, Ruleset, Table, Target,
};
use crate::services::local_traffic;

/// The dummy interface that holds the Service addresses.
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";
/// The scheduler used when none is configured (`--ipvs-scheduler`).
pub const DEFAULT_SCHEDULER: &str = "rr";
/// nat: nodePort traffic, masqueraded unless `externalTrafficPolicy: Local`; filter:
/// health-check node ports accepted.
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
/// nat: load-balancer traffic, masqueraded unless `externalTrafficPolicy: Local`.
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// filter: drops load-balancer traffic that no source range admits.
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter: rejects new connections to a bound Service address on a non-Service port.
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: drops the node's own traffic to load-balancer IPs whose source ranges exclude it.
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// Rendering choices that are not part of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsOptions {
    /// The IPVS scheduler of every virtual server (`--ipvs-scheduler`; `mh` also sets the
    /// source-port hash flag, as upstream).
    pub scheduler: String,
    /// This node's local addresses of the plan's family (upstream: every local address
    /// except those on [`DUMMY_INTERFACE`]). NodePorts get a virtual server on each, or on the
    /// plan's `nodeport_addresses` when those are set; loopback addresses never get one.
    /// External and load-balancer IPs among them are not bound to the dummy interface.
    pub node_addresses: Vec<IpAddr>,
    /// `MASQUERADE --random-fully`.
    pub masquerade_random_fully: bool,
}

impl Default for IpvsOptions {
    fn default() -> Self {
        Self {
            scheduler: DEFAULT_SCHEDULER.to_owned(),
            node_addresses: Vec::new(),
            masquerade_random_fully: false,
        }
    }
}

/// A virtual server's identity: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualAddr {
    /// The address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl VirtualAddr {
    /// The address and port as one value.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl fmt::Display for VirtualAddr {
    /// `ipvsadm`'s service argument: `-t 10.0.0.1:80`, `-u [fd00::1]:53`, `--sctp-service …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
            Protocol::Sctp => "--sctp-service",
        };
        write!(f, "{flag} {}", self.socket_addr())
    }
}

/// One virtual server's parameters and real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    /// The scheduler (`rr`, `wrr`, `lc`, `sh`, `mh`, …).
    pub scheduler: String,
    /// With `sessionAffinity: ClientIP`: the persistence timeout in seconds.
    pub persistence: Option<u32>,
    /// The source-port hash flag (set with the `mh` scheduler).
    pub source_hash: bool,
    /// The real servers by address; every one is forwarded to by masquerading (NAT), so the
    /// target port may differ from the Service port.
    pub real_servers: BTreeMap<SocketAddr, RealServer>,
}

impl VirtualServer {
    /// Whether the parameters (not the real servers) equal `other`'s.
    pub fn same_parameters(&self, other: &VirtualServer) -> bool {
        self.scheduler == other.scheduler
            && self.persistence == other.persistence
            && self.source_hash == other.source_hash
    }
}

/// One real server of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    /// The weight: 1 for every endpoint in use, 0 while a removed one drains.
    pub weight: u32,
    /// The connections the kernel counts for it (active and inactive); 0 in a rendered
    /// representation, filled from a dump in the kernel's.
    pub connections: u32,
}

impl RealServer {
    /// A real server in use: weight 1.
    pub const IN_USE: RealServer = RealServer {
        weight: 1,
        connections: 0,
    };
}

/// The ipsets IPVS mode keeps (upstream's `ipsetInfo`), all created on every sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpvsSet {
    /// Local endpoints as `ip,proto:port,ip`: a pod reaching itself through a Service (hairpin).
    LoopBack,
    /// ClusterIP and port.
    ClusterIp,
    /// External IP and port, `externalTrafficPolicy: Cluster`.
    ExternalIp,
    /// External IP and port, `externalTrafficPolicy: Local`.
    ExternalIpLocal,
    /// Load-balancer IP and port.
    LoadBalancer,
    /// Load-balancer IP and port with source ranges.
    LoadBalancerFw,
    /// Load-balancer IP and port, `externalTrafficPolicy: Local`.
    LoadBalancerLocal,
    /// Load-balancer IP, port and the IP itself, when a source range contains a node address.
    LoadBalancerSourceIp,
    /// Load-balancer IP, port and each source range.
    LoadBalancerSourceCidr,
    /// TCP nodePorts.
    NodePortTcp,
    /// TCP nodePorts, `externalTrafficPolicy: Local`.
    NodePortLocalTcp,
    /// UDP nodePorts.
    NodePortUdp,
    /// UDP nodePorts, `externalTrafficPolicy: Local`.
    NodePortLocalUdp,
    /// SCTP nodePorts on each node address (`bitmap:port` cannot hold SCTP).
    NodePortSctp,
    /// SCTP nodePorts on each node address, `externalTrafficPolicy: Local`.
    NodePortLocalSctp,
    /// Health-check node ports.
    HealthCheckNodePort,
    /// Every address bound to the dummy interface.
    IpvsIps,
}

/// The kinds of ipset IPVS mode uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `hash:ip`.
    HashIp,
    /// `hash:ip,port`.
    HashIpPort,
    /// `hash:ip,port,ip`.
    HashIpPortIp,
    /// `hash:ip,port,net`.
    HashIpPortNet,
    /// `bitmap:port range 0-65535` (no address family).
    BitmapPort,
}

impl SetKind {
    /// The type as `ipset` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashIpPort => "hash:ip,port",
            SetKind::HashIpPortIp => "hash:ip,port,ip",
            SetKind::HashIpPortNet => "hash:ip,port,net",
            SetKind::BitmapPort => "bitmap:port",
        }
    }
}

/// The longest name the kernel accepts for an ipset.
const MAX_SET_NAME: usize = 31;

impl IpvsSet {
    /// Every set, in upstream's order.
    pub const ALL: [IpvsSet; 17] = [
        IpvsSet::LoopBack,
        IpvsSet::ClusterIp,
        IpvsSet::ExternalIp,
        IpvsSet::ExternalIpLocal,
        IpvsSet::LoadBalancer,
        IpvsSet::LoadBalancerFw,
        IpvsSet::LoadBalancerLocal,
        IpvsSet::LoadBalancerSourceIp,
        IpvsSet::LoadBalancerSourceCidr,
        IpvsSet::NodePortTcp,
        IpvsSet::NodePortLocalTcp,
        IpvsSet::NodePortUdp,
        IpvsSet::NodePortLocalUdp,
        IpvsSet::NodePortSctp,
        IpvsSet::NodePortLocalSctp,
        IpvsSet::HealthCheckNodePort,
        IpvsSet::IpvsIps,
    ];

    /// The IPv4 name (`KUBE-CLUSTER-IP`).
    pub fn base_name(self) -> &'static str {
        match self {
            IpvsSet::LoopBack => "KUBE-LOOP-BACK",
            IpvsSet::ClusterIp => "KUBE-CLUSTER-IP",
            IpvsSet::ExternalIp => "KUBE-EXTERNAL-IP",
            IpvsSet::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            IpvsSet::LoadBalancer => "KUBE-LOAD-BALANCER",
            IpvsSet::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            IpvsSet::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            IpvsSet::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            IpvsSet::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            IpvsSet::NodePortTcp => "KUBE-NODE-PORT-TCP",
            IpvsSet::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            IpvsSet::NodePortUdp => "KUBE-NODE-PORT-UDP",
            IpvsSet::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            IpvsSet::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            IpvsSet::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            IpvsSet::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            IpvsSet::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The name in `family`: IPv6 sets start `KUBE-6-` (both families' sets coexist in one
    /// kernel), cut to the kernel's 31 characters as upstream cuts them.
    pub fn name(self, family: IpFamily) -> String {
        let base = self.base_name();
        match family {
            IpFamily::V4 => base.to_owned(),
            IpFamily::V6 => {
                let mut name = base.replacen("KUBE-", "KUBE-6-", 1);
                name.truncate(MAX_SET_NAME);
                name
            }
        }
    }

    /// The set's type.
    pub fn kind(self) -> SetKind {
        match self {
            IpvsSet::LoopBack | IpvsSet::LoadBalancerSourceIp => SetKind::HashIpPortIp,
            IpvsSet::LoadBalancerSourceCidr => SetKind::HashIpPortNet,
            IpvsSet::NodePortTcp
            | IpvsSet::NodePortLocalTcp
            | IpvsSet::NodePortUdp
            | IpvsSet::NodePortLocalUdp
            | IpvsSet::HealthCheckNodePort => SetKind::BitmapPort,
            IpvsSet::IpvsIps => SetKind::HashIp,
            IpvsSet::ClusterIp
            | IpvsSet::ExternalIp
            | IpvsSet::ExternalIpLocal
            | IpvsSet::LoadBalancer
            | IpvsSet::LoadBalancerFw
            | IpvsSet::LoadBalancerLocal
            | IpvsSet::NodePortSctp
            | IpvsSet::NodePortLocalSctp => SetKind::HashIpPort,
        }
    }

    /// The comment of the iptables rules that match the set (upstream's wording, which
    /// existing dumps and tools grep for).
    pub fn comment(self) -> &'static str {
        match self {
            IpvsSet::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            IpvsSet::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            IpvsSet::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            IpvsSet::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            IpvsSet::LoadBalancer => "Kubernetes service lb portal",
            IpvsSet::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            IpvsSet::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            IpvsSet::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            IpvsSet::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            IpvsSet::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            IpvsSet::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            IpvsSet::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            IpvsSet::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            IpvsSet::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            IpvsSet::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            IpvsSet::HealthCheckNodePort => "Kubernetes health check node port",
            IpvsSet::IpvsIps => "Addresses on the ipvs interface",
        }
    }
}

/// One ipset member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetEntry {
    /// `hash:ip`: `10.96.0.1`.
    Ip(IpAddr),
    /// `hash:ip,port`: `10.96.0.1,tcp:443`.
    IpPort(IpAddr, Protocol, u16),
    /// `hash:ip,port,ip`: `10.244.1.2,tcp:8080,10.244.1.2`.
    IpPortIp(IpAddr, Protocol, u16, IpAddr),
    /// `hash:ip,port,net`: `1.2.3.4,tcp:80,203.0.113.0/25`.
    IpPortNet(IpAddr, Protocol, u16, IpNet),
    /// `bitmap:port`: `30080`.
    Port(u16),
}

impl fmt::Display for SetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetEntry::Ip(ip) => write!(f, "{ip}"),
            SetEntry::IpPort(ip, p, port) => write!(f, "{ip},{}:{port}", p.as_lower_str()),
            SetEntry::IpPortIp(ip, p, port, ip2) => {
                write!(f, "{ip},{}:{port},{ip2}", p.as_lower_str())
            }
            SetEntry::IpPortNet(ip, p, port, net) => {
                write!(f, "{ip},{}:{port},{net}", p.as_lower_str())
            }
            SetEntry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// The rendered IPVS mode of one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsRules {
    /// The plan's family.
    pub family: IpFamily,
    /// The virtual servers, by identity. When two Service ports claim the same one (two
    /// Services sharing an external IP and port), the first in plan order keeps it.
    pub virtual_servers: BTreeMap<VirtualAddr, VirtualServer>,
    /// The addresses bound to [`DUMMY_INTERFACE`] (as /32 or /128).
    pub bound_addresses: BTreeSet<IpAddr>,
    /// The node addresses every nodePort has a virtual server on.
    pub nodeport_addresses: Vec<IpAddr>,
    /// Every set and its members (empty sets included: the rules refer to them).
    pub sets: BTreeMap<IpvsSet, BTreeSet<SetEntry>>,
    /// The iptables rules (nat and filter).
    pub ruleset: Ruleset,
    /// The jumps from the built-in chains into ours, in upstream's order; each is inserted at
    /// the top of its chain if absent.
    pub hooks: Vec<HookRule>,
}

/// Renders a service plan into kube-proxy's IPVS layout.
pub fn render_ipvs(plan: &ServicePlan, opts: &IpvsOptions) -> IpvsRules {
    let mut r = IpvsRenderer {
        plan,
        opts,
        node_ips: nodeport_addresses(plan, opts),
        virtual_servers: BTreeMap::new(),
        bound: BTreeSet::new(),
        sets: IpvsSet::ALL.iter().map(|s| (*s, BTreeSet::new())).collect(),
        out_filter: Vec::new(),
    };
    for port in plan.ports.values() {
        r.service_port(port);
    }
    let bound = r.bound.clone();
    r.set(IpvsSet::IpvsIps)
        .extend(bound.iter().map(|ip| SetEntry::Ip(*ip)));
    let ruleset = r.iptables_rules();
    IpvsRules {
        family: plan.family,
        virtual_servers: r.virtual_servers,
        bound_addresses: r.bound,
        nodeport_addresses: r.node_ips,
        sets: r.sets,
        ruleset,
        hooks: hooks(),
    }
}

impl IpvsRules {
    /// The virtual servers as `ipvsadm-restore` input: each `-A` line followed by its `-a`
    /// lines, in address order.
    pub fn ipvsadm_input(&self) -> String {
        let mut out = String::new();
        for (addr, vs) in &self.virtual_servers {
            let _ = writeln!(out, "-A {addr}{}", ServiceArgs(vs));
            for (rs, real) in &vs.real_servers {
                let _ = writeln!(out, "-a {addr} -r {rs} -m -w {}", real.weight);
            }
        }
        out
    }

    /// Every set with its definition and members, in upstream's order.
    pub fn ipsets(&self) -> IpSets {
        self.sets
            .iter()
            .map(|(set, entries)| {
                let name = set.name(self.family);
                IpSet {
                    scratch: scratch_name(&name),
                    name,
                    definition: definition(set.kind(), self.family),
                    members: entries.iter().map(SetEntry::to_string).collect(),
                }
            })
            .collect()
    }

    /// The `ipset restore -exist` payload: every set created if missing, then refilled through
    /// a scratch set swapped in, so no set the kernel matches against is seen half-filled
    /// ([`IpSets::full_input`]).
    pub fn ipset_input(&self) -> String {
        self.ipsets().full_input()
    }

    /// The `iptables-restore --noflush` payload (or `ip6tables-restore` for an IPv6 plan):
    /// every chain of IPVS mode declared, so flushed, and refilled in one transaction.
    pub fn restore_input(&self) -> String {
        self.ruleset.to_restore()
    }

    /// The rules plus the hook rules in the built-in chains: what the kernel holds after the
    /// applier has run.
    pub fn installed(&self) -> Ruleset {
        let mut rs = self.ruleset.clone();
        for hook in &self.hooks {
            rs.prepend(hook.table, &hook.chain, hook.rule.clone());
        }
        rs
    }

    /// Everything, as `render --mode ipvs` prints it: the dummy interface's addresses, the
    /// `ipvsadm-restore`, `ipset restore` and `iptables-restore` parts, each under a `#`
    /// heading.
    pub fn to_text(&self) -> String {
        let prefix = match self.family {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        };
        let mut out = format!("# {DUMMY_INTERFACE} addresses\n");
        for ip in &self.bound_addresses {
            let _ = writeln!(out, "{ip}/{prefix}");
        }
        out.push_str("# ipvsadm-restore\n");
        out.push_str(&self.ipvsadm_input());
        out.push_str("# ipset restore\n");
        out.push_str(&self.ipset_input());
        out.push_str("# iptables-restore\n");
        out.push_str(&self.restore_input());
        out
    }
}

/// One change to the kernel's virtual servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsChange {
    /// A new virtual server (its real servers follow as [`IpvsChange::AddReal`]).
    AddService(VirtualAddr, VirtualServer),
    /// A virtual server whose scheduler, persistence or flags changed (its connections stay).
    EditService(VirtualAddr, VirtualServer),
    /// A new real server.
    AddReal(VirtualAddr, SocketAddr, RealServer),
    /// A real server whose weight changed (one draining at weight 0 that is wanted again).
    EditReal(VirtualAddr, SocketAddr, RealServer),
    /// A real server no longer wanted that still has connections: set to weight 0 so it gets
    /// no new ones while the current ones finish (a later diff removes it once the kernel
    /// counts none; a deadline for stragglers needs a clock, so it is the applier's).
    QuiesceReal(VirtualAddr, SocketAddr),
    /// A real server no longer wanted and without connections, or of a UDP or SCTP virtual
    /// server (no graceful termination there, as upstream: with `expire_nodest_conn=1` their
    /// flows end at their next packet).
    RemoveReal(VirtualAddr, SocketAddr),
    /// A virtual server no longer wanted, deleted with its real servers.
    RemoveService(VirtualAddr),
}

/// The changes that turn `current` (usually the kernel's, with connection counts) into
/// `desired` (rendered), in the order to apply them: services added, services edited, real
/// servers added and edited, real servers quiesced or removed, services removed. A TCP real
/// server of `current` not in `desired`, already at weight 0 and with connections, is
/// draining and left alone.
pub fn diff(
    current: &BTreeMap<VirtualAddr, VirtualServer>,
    desired: &BTreeMap<VirtualAddr, VirtualServer>,
) -> Vec<IpvsChange> {
    let mut services = Vec::new();
    let mut reals = Vec::new();
    let mut quiesce = Vec::new();
    let mut removed = Vec::new();
    let empty = BTreeMap::new();
    for (addr, want) in desired {
        let have_reals = match current.get(addr) {
            None => {
                services.push(IpvsChange::AddService(*addr, want.clone()));
                &empty
            }
            Some(have) => {
                if !have.same_parameters(want) {
                    services.push(IpvsChange::EditService(*addr, want.clone()));
                }
                &have.real_servers
            }
        };
        for (rs, real) in &want.real_servers {
            match have_reals.get(rs) {
                None => reals.push(IpvsChange::AddReal(*addr, *rs, *real)),
                Some(old) if old.weight != real.weight => {
                    reals.push(IpvsChange::EditReal(*addr, *rs, *real))
                }
                Some(_) => {}
            }
        }
        let graceful = addr.protocol == Protocol::Tcp;
        for (rs, old) in have_reals {
            if want.real_servers.contains_key(rs) {
                continue;
            }
            if !graceful || old.connections == 0 {
                quiesce.push(IpvsChange::RemoveReal(*addr, *rs));
            } else if old.weight > 0 {
                quiesce.push(IpvsChange::QuiesceReal(*addr, *rs));
            }
        }
    }
    for addr in current.keys() {
        if !desired.contains_key(addr) {
            removed.push(IpvsChange::RemoveService(*addr));
        }
    }
    services.extend(reals);
    services.extend(quiesce);
    services.extend(removed);
    services
}

/// The changes as `ipvsadm-restore` input (`-A`, `-E`, `-a`, `-e`, `-d`, `-D`).
pub fn changes_to_ipvsadm(changes: &[IpvsChange]) -> String {
    let mut out = String::new();
    for c in changes {
        let _ = match c {
            IpvsChange::AddService(a, vs) => writeln!(out, "-A {a}{}", ServiceArgs(vs)),
            IpvsChange::EditService(a, vs) => writeln!(out, "-E {a}{}", ServiceArgs(vs)),
            IpvsChange::AddReal(a, rs, r) => writeln!(out, "-a {a} -r {rs} -m -w {}", r.weight),
            IpvsChange::EditReal(a, rs, r) => writeln!(out, "-e {a} -r {rs} -m -w {}", r.weight),
            IpvsChange::QuiesceReal(a, rs) => writeln!(out, "-e {a} -r {rs} -m -w 0"),
            IpvsChange::RemoveReal(a, rs) => writeln!(out, "-d {a} -r {rs}"),
            IpvsChange::RemoveService(a) => writeln!(out, "-D {a}"),
        };
    }
    out
}

/// ` -s SCHED [-p TIMEOUT] [-b mh-port]`.
struct ServiceArgs<'a>(&'a VirtualServer);

impl fmt::Display for ServiceArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " -s {}", self.0.scheduler)?;
        if let Some(t) = self.0.persistence {
            write!(f, " -p {t}")?;
        }
        if self.0.source_hash {
            f.write_str(" -b mh-port")?;
        }
        Ok(())
    }
}

/// The hook rules of upstream's `iptablesJumpChain`, in its order.
fn hooks() -> Vec<HookRule> {
    const PORTALS: &str = "kubernetes service portals";
    const FIREWALL: &str = "kube-proxy firewall rules";
    const FILTER: &str = "kubernetes ipvs access filter";
    [
        (Table::Nat, "OUTPUT", KUBE_SERVICES, PORTALS),
        (Table::Nat, "PREROUTING", KUBE_SERVICES, PORTALS),
        (
            Table::Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            "kubernetes postrouting rules",
        ),
        (
            Table::Filter,
            "FORWARD",
            KUBE_FORWARD,
            "kubernetes forwarding rules",
        ),
        (
            Table::Filter,
            "INPUT",
            KUBE_NODE_PORT,
            "kubernetes health check rules",
        ),
        (Table::Filter, "INPUT", KUBE_PROXY_FIREWALL, FIREWALL),
        (Table::Filter, "FORWARD", KUBE_PROXY_FIREWALL, FIREWALL),
        (Table::Filter, "INPUT", KUBE_IPVS_FILTER, FILTER),
        (Table::Filter, "OUTPUT", KUBE_IPVS_OUT_FILTER, FILTER),
    ]
    .into_iter()
    .map(|(table, from, to, comment)| HookRule {
        table,
        chain: ChainName::from(from),
        rule: Rule::new().comment(comment).jump(&ChainName::from(to)),
    })
    .collect()
}

/// The chain NetworkPolicy's `INPUT` hook goes through in IPVS mode (see [`policy_hooks`]).
pub const POLICY_IPVS_INPUT: &str = "KNP-IPVS-INPUT";

/// NetworkPolicy's hooks in IPVS mode, in place of [`PolicyRules::hooks`](crate::PolicyRules),
/// with the chain they need added to `ruleset`. IPVS takes a packet to a virtual server in
/// `INPUT` (its address is the node's own: on [`DUMMY_INTERFACE`], or a node address for a
/// nodePort) and sends it on to the real server it picks through `OUTPUT`, not `FORWARD`. So
/// a Pod's egress would be judged against the virtual address, and the chosen Pod's ingress
/// not at all. Instead:
/// - `INPUT` → [`POLICY_IPVS_INPUT`]: what is addressed to a virtual server returns (it is
///   judged after IPVS): an address on the IPVS interface, or a nodePort on one of the node
///   addresses nodePorts have virtual servers on (a port without endpoints has a virtual
///   server too, which refuses the packet: nothing behind it is reached); the rest goes on to
///   `KNP-INPUT` (Pods reaching the node itself, its health-check node ports included);
/// - `OUTPUT`, for requests IPVS forwarded (`-m ipvs --ipvs --vdir ORIGINAL`) → `KNP-FORWARD`,
///   with the real server's address, as the packet would have been judged in iptables mode;
/// - `FORWARD` → `KNP-FORWARD`, as in every mode.
pub fn policy_hooks(ipvs: &IpvsRules, ruleset: &mut Ruleset) -> Vec<HookRule> {
    let family = ipvs.family;
    let input = ChainName::from(POLICY_IPVS_INPUT);
    let forward = ChainName::from(crate::policy::POLICY_FORWARD);
    let after_ipvs = "to a virtual server: judged in OUTPUT once IPVS picked a real server";
    ruleset.declare(Table::Filter, &input);
    ruleset.append(
        Table::Filter,
        &input,
        Rule::new()
            .comment(after_ipvs)
            .with(Match::Set {
                name: IpvsSet::IpvsIps.name(family),
                directions: vec![Direction::Dst],
                negated: false,
            })
            .target(Target::Return),
    );
    // The nodePort sets hold ports (TCP, UDP) or node address and port (SCTP), as the nat
    // table's nodePort rules read them.
    let node_ports = [
        (Protocol::Tcp, IpvsSet::NodePortTcp, vec![Direction::Dst]),
        (Protocol::Udp, IpvsSet::NodePortUdp, vec![Direction::Dst]),
        (
            Protocol::Sctp,
            IpvsSet::NodePortSctp,
            vec![Direction::Dst, Direction::Dst],
        ),
    ];
    for ip in &ipvs.nodeport_addresses {
        for (protocol, set, directions) in &node_ports {
            ruleset.append(
                Table::Filter,
                &input,
                Rule::new()
                    .comment(after_ipvs)
                    .destination(*ip)
                    .with(Match::ProtocolOnly(*protocol))
                    .with(Match::Set {
                        name: set.name(family),
                        directions: directions.clone(),
                        negated: false,
                    })
                    .target(Target::Return),
            );
        }
    }
    ruleset.append(
        Table::Filter,
        &input,
        Rule::new().jump(&ChainName::from(crate::policy::POLICY_INPUT)),
    );
    let policy = || Rule::new().comment("kube-netd network policy");
    let hook = |chain: &str, rule: Rule| HookRule {
        table: Table::Filter,
        chain: ChainName::from(chain),
        rule,
    };
    vec![
        hook("OUTPUT", policy().with(Match::IpvsForwarded).jump(&forward)),
        hook("INPUT", policy().jump(&input)),
        hook("FORWARD", policy().jump(&forward)),
    ]
}

/// The addresses nodePorts get virtual servers on.
fn nodeport_addresses(plan: &ServicePlan, opts: &IpvsOptions) -> Vec<IpAddr> {
    let source = match &plan.nodeport_addresses {
        NodePortIps::Local => &opts.node_addresses,
        NodePortIps::Only(ips) => ips,
    };
    let set: BTreeSet<IpAddr> = source
        .iter()
        .copied()
        .filter(|ip| plan.family.contains(*ip) && !ip.is_loopback())
        .collect();
    set.into_iter().collect()
}

/// A scratch set's name: a digest of the real one, so it stays within the kernel's limit.
fn scratch_name(name: &str) -> String {
    format!("KUBE-TMP-{}", crate::chains::hash(name))
}

fn definition(kind: SetKind, family: IpFamily) -> SetDefinition {
    match kind {
        SetKind::BitmapPort => SetDefinition {
            kind: kind.as_str(),
            family: None,
            options: "range 0-65535",
        },
        _ => SetDefinition {
            kind: kind.as_str(),
            family: Some(family),
            options: "hashsize 1024 maxelem 65536",
        },
    }
}

/// One of upstream's `ipsetWithIptablesChain` rows: a set, the chain its rule goes in, the
/// target, the set's lookup directions and an optional protocol match.
type SetJump<'a> = (
    IpvsSet,
    Table,
    &'a ChainName,
    Target,
    &'a [Direction],
    Option<Protocol>,
);

struct IpvsRenderer<'a> {
    plan: &'a ServicePlan,
    opts: &'a IpvsOptions,
    node_ips: Vec<IpAddr>,
    virtual_servers: BTreeMap<VirtualAddr, VirtualServer>,
    bound: BTreeSet<IpAddr>,
    sets: BTreeMap<IpvsSet, BTreeSet<SetEntry>>,
    /// Load-balancer frontends the node itself may not reach (source ranges exclude it).
    out_filter: Vec<VirtualAddr>,
}

impl IpvsRenderer<'_> {
    fn set(&mut self, set: IpvsSet) -> &mut BTreeSet<SetEntry> {
        self.sets.entry(set).or_default()
    }

    fn service_port(&mut self, p: &ServicePortPlan) {
        let proto = p.protocol();
        for ep in &p.endpoints.all_reachable {
            if ep.local {
                let ip = ep.ip();
                self.set(IpvsSet::LoopBack)
                    .insert(SetEntry::IpPortIp(ip, proto, ep.port(), ip));
            }
        }
        self.set(IpvsSet::ClusterIp)
            .insert(SetEntry::IpPort(p.cluster_ip, proto, p.port));
        self.virtual_server(p, p.cluster_ip, p.port, p.internal);
        self.bound.insert(p.cluster_ip);

        let external = p
            .external
            .map(|e| e.disposition)
            .unwrap_or(Disposition::Reject);
        let local = p.external.is_some_and(|e| e.policy == TrafficPolicy::Local);
        for ip in &p.external_ips {
            let set = if local {
                IpvsSet::ExternalIpLocal
            } else {
                IpvsSet::ExternalIp
            };
            self.set(set).insert(SetEntry::IpPort(*ip, proto, p.port));
            self.virtual_server(p, *ip, p.port, external);
            self.bind_unless_node_address(*ip);
        }
        for ip in &p.load_balancer_ips {
            let entry = SetEntry::IpPort(*ip, proto, p.port);
            self.set(IpvsSet::LoadBalancer).insert(entry);
            if local {
                self.set(IpvsSet::LoadBalancerLocal).insert(entry);
            }
            if !p.load_balancer_source_ranges.is_empty() {
                self.set(IpvsSet::LoadBalancerFw).insert(entry);
                for net in &p.load_balancer_source_ranges {
                    self.set(IpvsSet::LoadBalancerSourceCidr)
                        .insert(SetEntry::IpPortNet(*ip, proto, p.port, *net));
                }
                if p.load_balancer_admits_node {
                    self.set(IpvsSet::LoadBalancerSourceIp)
                        .insert(SetEntry::IpPortIp(*ip, proto, p.port, *ip));
                } else {
                    self.out_filter.push(VirtualAddr {
                        ip: *ip,
                        port: p.port,
                        protocol: proto,
                    });
                }
            }
            self.virtual_server(p, *ip, p.port, external);
            self.bind_unless_node_address(*ip);
        }
        if let Some(node_port) = p.node_port {
            // Upstream skips the rest of the port (its health-check port included) when it
            // found no node address to put nodePorts on.
            if self.node_ips.is_empty() {
                return;
            }
            let (set, local_set) = match proto {
                Protocol::Tcp => (IpvsSet::NodePortTcp, IpvsSet::NodePortLocalTcp),
                Protocol::Udp => (IpvsSet::NodePortUdp, IpvsSet::NodePortLocalUdp),
                Protocol::Sctp => (IpvsSet::NodePortSctp, IpvsSet::NodePortLocalSctp),
            };
            let entries: Vec<SetEntry> = match proto {
                Protocol::Sctp => self
                    .node_ips
                    .iter()
                    .map(|ip| SetEntry::IpPort(*ip, proto, node_port))
                    .collect(),
                Protocol::Tcp | Protocol::Udp => vec![SetEntry::Port(node_port)],
            };
            self.set(set).extend(entries.iter().copied());
            if local {
                self.set(local_set).extend(entries.iter().copied());
            }
            for ip in self.node_ips.clone() {
                self.virtual_server(p, ip, node_port, external);
            }
        }
        if let Some(hc) = p.health_check_node_port {
            self.set(IpvsSet::HealthCheckNodePort)
                .insert(SetEntry::Port(hc));
        }
    }

    fn bind_unless_node_address(&mut self, ip: IpAddr) {
        if !self.opts.node_addresses.contains(&ip) {
            self.bound.insert(ip);
        }
    }

    fn virtual_server(&mut self, p: &ServicePortPlan, ip: IpAddr, port: u16, d: Disposition) {
        let endpoints = match d {
            Disposition::Drop => p.endpoints_for(Disposition::Cluster),
            other => p.endpoints_for(other),
        };
        let key = VirtualAddr {
            ip,
            port,
            protocol: p.protocol(),
        };
        self.virtual_servers
            .entry(key)
            .or_insert_with(|| VirtualServer {
                scheduler: self.opts.scheduler.clone(),
                persistence: p.session_affinity,
                source_hash: self.opts.scheduler == "mh",
                real_servers: endpoints
                    .iter()
                    .map(|e| (e.addr, RealServer::IN_USE))
                    .collect(),
            });
    }

    fn has(&self, set: IpvsSet) -> bool {
        self.sets.get(&set).is_some_and(|s| !s.is_empty())
    }

    fn set_match(&self, set: IpvsSet, directions: &[Direction]) -> Match {
        Match::Set {
            name: set.name(self.plan.family),
            directions: directions.to_vec(),
            negated: false,
        }
    }

    /// A rule `[-p P] -m comment --comment SET-COMMENT -m set --match-set SET DIRS`.
    fn commented_set_rule(
        &self,
        set: IpvsSet,
        directions: &[Direction],
        protocol: Option<Protocol>,
    ) -> Rule {
        let mut rule = Rule::new();
        if let Some(p) = protocol {
            rule = rule.with(Match::ProtocolOnly(p));
        }
        rule.comment(set.comment())
            .with(self.set_match(set, directions))
    }

    /// Upstream's `writeIptablesRules`, rule for rule and in its order.
    fn iptables_rules(&self) -> Ruleset {
        use Direction::{Dst, Src};
        let family = self.plan.family;
        let mark = self.plan.masquerade_mark;
        let mut rs = Ruleset::new(family);
        let services = ChainName::from(KUBE_SERVICES);
        let postrouting = ChainName::from(KUBE_POSTROUTING);
        let node_port = ChainName::from(KUBE_NODE_PORT);
        let load_balancer = ChainName::from(KUBE_LOAD_BALANCER);
        let mark_masq = ChainName::from(KUBE_MARK_MASQ);
        let forward = ChainName::from(KUBE_FORWARD);
        let firewall = ChainName::from(KUBE_PROXY_FIREWALL);
        let ranges = ChainName::from(KUBE_SOURCE_RANGES_FIREWALL);
        let filter = ChainName::from(KUBE_IPVS_FILTER);
        let out_filter = ChainName::from(KUBE_IPVS_OUT_FILTER);
        for c in [
            &services,
            &postrouting,
            &node_port,
            &load_balancer,
            &mark_masq,
        ] {
            rs.declare(Table::Nat, c);
        }
        for c in [
            &forward,
            &node_port,
            &firewall,
            &ranges,
            &filter,
            &out_filter,
        ] {
            rs.declare(Table::Filter, c);
        }

        rs.append(
            Table::Nat,
            &services,
            Rule::new().source(family.loopback()).target(Target::Return),
        );

        let dd = [Dst, Dst];
        let dds = [Dst, Dst, Src];
        let by_set: [SetJump<'_>; 12] = [
            (
                IpvsSet::LoopBack,
                Table::Nat,
                &postrouting,
                self.masquerade(),
                &dds,
                None,
            ),
            (
                IpvsSet::LoadBalancer,
                Table::Nat,
                &services,
                Target::Jump(load_balancer.clone()),
                &dd,
                None,
            ),
            (
                IpvsSet::LoadBalancerLocal,
                Table::Nat,
                &load_balancer,
                Target::Return,
                &dd,
                None,
            ),
            (
                IpvsSet::NodePortLocalTcp,
                Table::Nat,
                &node_port,
                Target::Return,
                &[Dst],
                Some(Protocol::Tcp),
            ),
            (
                IpvsSet::NodePortTcp,
                Table::Nat,
                &node_port,
                Target::Jump(mark_masq.clone()),
                &[Dst],
                Some(Protocol::Tcp),
            ),
            (
                IpvsSet::NodePortLocalUdp,
                Table::Nat,
                &node_port,
                Target::Return,
                &[Dst],
                Some(Protocol::Udp),
            ),
            (
                IpvsSet::NodePortUdp,
                Table::Nat,
                &node_port,
                Target::Jump(mark_masq.clone()),
                &[Dst],
                Some(Protocol::Udp),
            ),
            (
                IpvsSet::NodePortLocalSctp,
                Table::Nat,
                &node_port,
                Target::Return,
                &dd,
                Some(Protocol::Sctp),
            ),
            (
                IpvsSet::NodePortSctp,
                Table::Nat,
                &node_port,
                Target::Jump(mark_masq.clone()),
                &dd,
                Some(Protocol::Sctp),
            ),
            (
                IpvsSet::LoadBalancerFw,
                Table::Filter,
                &firewall,
                Target::Jump(ranges.clone()),
                &dd,
                None,
            ),
            (
                IpvsSet::LoadBalancerSourceCidr,
                Table::Filter,
                &ranges,
                Target::Return,
                &dds,
                None,
            ),
            (
                IpvsSet::LoadBalancerSourceIp,
                Table::Filter,
                &ranges,
                Target::Return,
                &dds,
                None,
            ),
        ];
        for (set, table, chain, target, dirs, proto) in by_set {
            if self.has(set) {
                rs.append(
                    table,
                    chain,
                    self.commented_set_rule(set, dirs, proto).target(target),
                );
            }
        }

        if self.has(IpvsSet::ClusterIp) {
            let base = self.commented_set_rule(IpvsSet::ClusterIp, &dd, None);
            let rule = match (self.cluster_ip_masquerade(), &self.plan.local_detector) {
                (ClusterIpMasquerade::All, _) => base,
                (ClusterIpMasquerade::OffCluster, Some(detector)) => {
                    base.with(local_traffic(detector, true))
                }
                // Without a detector upstream masquerades the host's own connections from a
                // VIP (the dummy interface makes a VIP the chosen source for another VIP).
                (ClusterIpMasquerade::OffCluster | ClusterIpMasquerade::Never, _) => {
                    self.commented_set_rule(IpvsSet::ClusterIp, &[Src, Dst], None)
                }
            };
            rs.append(Table::Nat, &services, rule.jump(&mark_masq));
        }
        for (set, masquerade) in [
            (IpvsSet::ExternalIp, true),
            (IpvsSet::ExternalIpLocal, false),
        ] {
            if !self.has(set) {
                continue;
            }
            let base = self.commented_set_rule(set, &dd, None);
            if masquerade {
                rs.append(Table::Nat, &services, base.clone().jump(&mark_masq));
            }
            rs.append(
                Table::Nat,
                &services,
                base.clone()
                    .with(Match::PhysDevIsIn { negated: true })
                    .with(Match::AddrTypeLocal {
                        direction: Src,
                        negated: true,
                    })
                    .target(Target::Accept),
            );
            rs.append(
                Table::Nat,
                &services,
                base.local(Dst).target(Target::Accept),
            );
        }
        rs.append(
            Table::Nat,
            &services,
            Rule::new().local(Dst).jump(&node_port),
        );
        rs.append(Table::Nat, &load_balancer, Rule::new().jump(&mark_masq));
        rs.append(Table::Filter, &ranges, Rule::new().target(Target::Drop));
        for vip in &self.out_filter {
            rs.append(
                Table::Filter,
                &out_filter,
                Rule::new()
                    .source(vip.ip)
                    .with(Match::IpvsVirtual {
                        addr: vip.ip,
                        protocol: vip.protocol,
                        port: vip.port,
                    })
                    .target(Target::Drop),
            );
        }
        for set in [IpvsSet::ClusterIp, IpvsSet::LoadBalancer] {
            if self.has(set) {
                rs.append(
                    Table::Nat,
                    &services,
                    Rule::new()
                        .with(self.set_match(set, &dd))
                        .target(Target::Accept),
                );
            }
        }
        rs.append(
            Table::Filter,
            &forward,
            Rule::new()
                .comment("kubernetes forwarding rules")
                .with(Match::Mark {
                    value: mark,
                    mask: mark,
                    negated: false,
                })
                .target(Target::Accept),
        );
        rs.append(
            Table::Filter,
            &forward,
            Rule::new()
                .comment("kubernetes forwarding conntrack rule")
                .ctstate(&[CtState::Related, CtState::Established])
                .target(Target::Accept),
        );
        rs.append(
            Table::Filter,
            &node_port,
            self.commented_set_rule(IpvsSet::HealthCheckNodePort, &[Dst], None)
                .target(Target::Accept),
        );
        for (set, dirs) in [
            (IpvsSet::LoadBalancer, &dd[..]),
            (IpvsSet::ClusterIp, &dd[..]),
            (IpvsSet::ExternalIp, &dd[..]),
            (IpvsSet::ExternalIpLocal, &dd[..]),
            (IpvsSet::HealthCheckNodePort, &[Dst][..]),
        ] {
            rs.append(
                Table::Filter,
                &filter,
                Rule::new()
                    .with(self.set_match(set, dirs))
                    .target(Target::Return),
            );
        }
        rs.append(
            Table::Filter,
            &filter,
            Rule::new()
                .ctstate(&[CtState::New])
                .with(self.set_match(IpvsSet::IpvsIps, &[Dst]))
                .target(Target::Reject),
        );
        rs.append(
            Table::Nat,
            &postrouting,
            Rule::new()
                .with(Match::Mark {
                    value: mark,
                    mask: mark,
                    negated: true,
                })
                .target(Target::Return),
        );
        rs.append(
            Table::Nat,
            &postrouting,
            Rule::new().target(Target::Mark(MarkOp::Xor(mark))),
        );
        rs.append(
            Table::Nat,
            &postrouting,
            Rule::new()
                .comment("kubernetes service traffic requiring SNAT")
                .target(self.masquerade()),
        );
        rs.append(
            Table::Nat,
            &mark_masq,
            Rule::new().target(Target::Mark(MarkOp::Or(mark))),
        );
        rs
    }

    fn masquerade(&self) -> Target {
        Target::Masquerade {
            random_fully: self.opts.masquerade_random_fully,
        }
    }

    /// The ClusterIP masquerade decision, the same for every port of a plan (it comes from
    /// the proxy's options).
    fn cluster_ip_masquerade(&self) -> ClusterIpMasquerade {
        self.plan
            .ports
            .values()
            .next()
            .map(|p| p.cluster_ip_masquerade)
            .unwrap_or(ClusterIpMasquerade::Never)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_model::NodeName;
    use netd_proxy::{ProxyOptions, plan};

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.5
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-2}
- {addresses: [10.244.1.10], nodeName: node-1}
"#;

    fn rules(node: &str) -> IpvsRules {
        let state = netd_testkit::state(CLUSTER);
        let opts = ProxyOptions {
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            ..ProxyOptions::default()
        };
        let p = plan(&state, &NodeName::new(node), IpFamily::V4, &opts);
        render_ipvs(
            &p,
            &IpvsOptions {
                node_addresses: vec!["172.18.0.2".parse().expect("ip")],
                ..IpvsOptions::default()
            },
        )
    }

    fn addr(s: &str, protocol: Protocol) -> VirtualAddr {
        let sa: SocketAddr = s.parse().expect("socket address");
        VirtualAddr {
            ip: sa.ip(),
            port: sa.port(),
            protocol,
        }
    }

    fn reals(r: &IpvsRules, vip: &str) -> Vec<String> {
        r.virtual_servers[&addr(vip, Protocol::Tcp)]
            .real_servers
            .keys()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn cluster_ip_uses_cluster_endpoints_and_node_port_the_local_ones() {
        let r = rules("node-1");
        assert_eq!(
            reals(&r, "10.96.0.5:80"),
            ["10.244.1.10:8080", "10.244.2.9:8080"]
        );
        assert_eq!(reals(&r, "172.18.0.2:30080"), ["10.244.1.10:8080"]);
        let vs = &r.virtual_servers[&addr("10.96.0.5:80", Protocol::Tcp)];
        assert_eq!((vs.scheduler.as_str(), vs.persistence), ("rr", Some(300)));
        assert_eq!(
            r.bound_addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.96.0.5"]
        );
        assert!(r.sets[&IpvsSet::NodePortLocalTcp].contains(&SetEntry::Port(30080)));
        assert!(r.sets[&IpvsSet::LoopBack].contains(&SetEntry::IpPortIp(
            "10.244.1.10".parse().expect("ip"),
            Protocol::Tcp,
            8080,
            "10.244.1.10".parse().expect("ip")
        )));
    }

    #[test]
    fn local_policy_without_local_endpoints_falls_back_to_cluster_endpoints() {
        // Node 3 has no endpoint: upstream (kubernetes#97081) gives the nodePort the cluster
        // endpoints so pods on the node still reach the Service.
        let r = rules("node-3");
        assert_eq!(
            reals(&r, "172.18.0.2:30080"),
            ["10.244.1.10:8080", "10.244.2.9:8080"]
        );
        assert!(r.sets[&IpvsSet::LoopBack].is_empty());
    }

    #[test]
    fn ipvsadm_and_ipset_text() {
        let r = rules("node-1");
        let text = r.ipvsadm_input();
        assert!(text.starts_with(
            "-A -t 10.96.0.5:80 -s rr -p 300\n-a -t 10.96.0.5:80 -r 10.244.1.10:8080 -m -w 1\n"
        ));
        let ipset = r.ipset_input();
        assert!(ipset.contains("create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n"));
        assert!(ipset.contains(
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n"
        ));
        assert_eq!(ipset.matches("\ncreate KUBE-TMP-").count(), 17);
    }

    #[test]
    fn ipv6_set_names_are_prefixed_and_cut_to_the_kernel_limit() {
        assert_eq!(IpvsSet::ClusterIp.name(IpFamily::V6), "KUBE-6-CLUSTER-IP");
        let long = IpvsSet::NodePortLocalSctp.name(IpFamily::V6);
        assert_eq!(long, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS");
        assert_eq!(long.len(), MAX_SET_NAME);
    }

    #[test]
    fn diff_adds_edits_quiesces_and_removes() {
        // (address, weight, connections)
        let vs = |scheduler: &str, reals: &[(&str, u32, u32)]| VirtualServer {
            scheduler: scheduler.to_owned(),
            persistence: None,
            source_hash: false,
            real_servers: reals
                .iter()
                .map(|(a, weight, connections)| {
                    let real = RealServer {
                        weight: *weight,
                        connections: *connections,
                    };
                    (a.parse().expect("addr"), real)
                })
                .collect(),
        };
        let a = addr("10.96.0.1:80", Protocol::Tcp);
        let b = addr("10.96.0.2:53", Protocol::Udp);
        let c = addr("10.96.0.3:80", Protocol::Tcp);
        let current = BTreeMap::from([
            (
                a,
                vs(
                    "rr",
                    &[
                        ("10.0.0.1:80", 1, 7),
                        ("10.0.0.2:80", 1, 3),
                        ("10.0.0.3:80", 0, 2),
                        ("10.0.0.4:80", 0, 5),
                        ("10.0.0.6:80", 0, 0),
                        ("10.0.0.7:80", 1, 0),
                    ],
                ),
            ),
            (b, vs("rr", &[("10.0.0.8:53", 1, 4), ("10.0.0.9:53", 1, 4)])),
            (c, vs("lc", &[("10.0.0.5:80", 1, 1)])),
        ]);
        let desired = BTreeMap::from([
            (a, vs("rr", &[("10.0.0.1:80", 1, 0), ("10.0.0.3:80", 1, 0)])),
            (b, vs("rr", &[("10.0.0.9:53", 1, 0)])),
            (
                addr("[fd00::1]:443", Protocol::Sctp),
                vs("rr", &[("[fd00::2]:443", 1, 0)]),
            ),
        ]);
        let text = changes_to_ipvsadm(&diff(&current, &desired));
        assert_eq!(
            text,
            "-A --sctp-service [fd00::1]:443 -s rr\n\
             -e -t 10.96.0.1:80 -r 10.0.0.3:80 -m -w 1\n\
             -a --sctp-service [fd00::1]:443 -r [fd00::2]:443 -m -w 1\n\
             -e -t 10.96.0.1:80 -r 10.0.0.2:80 -m -w 0\n\
             -d -t 10.96.0.1:80 -r 10.0.0.6:80\n\
             -d -t 10.96.0.1:80 -r 10.0.0.7:80\n\
             -d -u 10.96.0.2:53 -r 10.0.0.8:53\n\
             -D -t 10.96.0.3:80\n"
        );
        assert!(diff(&desired, &desired).is_empty());
        let mut edited = desired.clone();
        if let Some(v) = edited.get_mut(&a) {
            v.persistence = Some(60);
        }
        assert_eq!(
            changes_to_ipvsadm(&diff(&desired, &edited)),
            "-E -t 10.96.0.1:80 -s rr -p 60\n"
        );
    }
}
