//! The books of who holds which address, podCIDR and nodePort, and how free values are found.
//!
//! One [`IpBook`] covers every kind of address (Node, Pod, ClusterIP, load balancer), so no
//! address is ever handed out twice, even when misconfigured ranges overlap. Allocation runs
//! in three passes over all objects — declared values, then values kept from the previous
//! state, then fresh ones — so a fresh allocation never takes what another object declared
//! or held before.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use netd_model::{NodeName, ObjectId, ServiceRef};

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub(crate) fn of_net(net: &IpNet) -> Self {
        Family::of(net.addr())
    }

    /// The API spelling, for `ipFamilies` and EndpointSlice `addressType` alike.
    pub(crate) fn as_api_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    pub(crate) fn other(self) -> Self {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        // Callers stay inside an IPv4 range, so `v` fits in 32 bits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The allocatable addresses of a network: from its `skip`-th address to its last, without
/// the IPv4 broadcast address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpRange {
    net: IpNet,
    first: u128,
    last: u128,
}

impl IpRange {
    /// `skip` 1 leaves out the network address (ClusterIPs, load-balancer IPs); `skip` 2
    /// also the first host, which is the gateway on a podCIDR and the lab's external client
    /// on the node network.
    pub(crate) fn new(net: IpNet, skip: u128) -> Self {
        let net = net.trunc();
        let first = to_u128(net.network()).saturating_add(skip);
        let broadcast = to_u128(net.broadcast());
        let last = match net {
            IpNet::V4(_) => broadcast.saturating_sub(1),
            IpNet::V6(_) => broadcast,
        };
        Self { net, first, last }
    }

    pub(crate) fn net(&self) -> IpNet {
        self.net
    }

    pub(crate) fn family(&self) -> Family {
        Family::of_net(&self.net)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        Family::of(ip) == self.family() && self.first <= v && v <= self.last
    }

    /// The number of addresses, saturating.
    fn len(&self) -> u128 {
        if self.first > self.last {
            0
        } else {
            (self.last - self.first).saturating_add(1)
        }
    }
}

/// Who holds each address, and where the sequential search of each range stands.
#[derive(Debug, Default)]
pub(crate) struct IpBook {
    holders: HashMap<IpAddr, ObjectId>,
    cursors: HashMap<IpNet, u128>,
}

impl IpBook {
    /// Whether `who` may take `ip`: nobody holds it, or `who` already does.
    pub(crate) fn available_to(&self, ip: IpAddr, who: &ObjectId) -> bool {
        self.holders.get(&ip).is_none_or(|h| h == who)
    }

    /// Claims `ip` for `who`; on conflict returns the holder.
    pub(crate) fn claim(&mut self, ip: IpAddr, who: &ObjectId) -> Result<(), ObjectId> {
        match self.holders.get(&ip) {
            Some(h) if h != who => Err(h.clone()),
            Some(_) => Ok(()),
            None => {
                self.holders.insert(ip, who.clone());
                Ok(())
            }
        }
    }

    /// Takes `ip` for `who` if nobody holds it. For addresses that may legitimately be
    /// shared (load-balancer IPs) or merely kept from allocation (reserved ClusterIPs).
    pub(crate) fn share(&mut self, ip: IpAddr, who: &ObjectId) {
        self.holders.entry(ip).or_insert_with(|| who.clone());
    }

    /// The lowest free address of `range`, claimed for `who`.
    ///
    /// The search resumes where the last one stopped: this is only correct because fresh
    /// allocations come after every declared and kept address is claimed, so an address
    /// passed over stays taken.
    pub(crate) fn next_free(&mut self, range: &IpRange, who: &ObjectId) -> Option<IpAddr> {
        let family = range.family();
        let mut v = self
            .cursors
            .get(&range.net)
            .copied()
            .unwrap_or(range.first)
            .max(range.first);
        while v <= range.last {
            let ip = from_u128(v, family);
            if let Entry::Vacant(slot) = self.holders.entry(ip) {
                slot.insert(who.clone());
                self.cursors.insert(range.net, v.saturating_add(1));
                return Some(ip);
            }
            if v == range.last {
                break;
            }
            v += 1;
        }
        self.cursors.insert(range.net, range.last.saturating_add(1));
        None
    }

    /// A free address of `range` found from `hash`, claimed for `who`: upstream allocates
    /// ClusterIPs at random, preferring the range above a low band kept for static
    /// assignment; a hash gives the same spread and stays the same from run to run.
    pub(crate) fn hashed_free(
        &mut self,
        range: &IpRange,
        hash: u64,
        who: &ObjectId,
    ) -> Option<IpAddr> {
        let family = range.family();
        let band = static_band(range.len(), 16, 256);
        let holders = &self.holders;
        let v = probe(range.first, range.last, band, hash, |v| {
            !holders.contains_key(&from_u128(v, family))
        })?;
        let ip = from_u128(v, family);
        self.holders.insert(ip, who.clone());
        Some(ip)
    }
}

/// Upstream's static band: the low part of a range that dynamic allocation avoids until the
/// rest is full, `min(max(16, len / divisor), max)`.
fn static_band(len: u128, divisor: u128, max: u128) -> u128 {
    (len / divisor).max(16).min(max)
}

/// Finds a free value in `[first, last]`: from a hash-chosen point of the range above the
/// static band, wrapping round, then the band from its bottom.
fn probe(
    first: u128,
    last: u128,
    band: u128,
    hash: u64,
    mut free: impl FnMut(u128) -> bool,
) -> Option<u128> {
    if first > last {
        return None;
    }
    let upper_first = first.saturating_add(band).min(last.saturating_add(1));
    if upper_first <= last {
        let upper_len = (last - upper_first).saturating_add(1);
        let start = u128::from(hash) % upper_len;
        let mut i = 0;
        while i < upper_len {
            let v = upper_first + (start + i) % upper_len;
            if free(v) {
                return Some(v);
            }
            i += 1;
        }
    }
    (first..upper_first).find(|v| free(*v))
}

/// Who holds each nodePort (nodePorts and healthCheckNodePorts share one range, as upstream's
/// allocator does).
#[derive(Debug)]
pub(crate) struct PortBook {
    range: RangeInclusive<u16>,
    holders: HashMap<u16, ServiceRef>,
}

impl PortBook {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            holders: HashMap::new(),
        }
    }

    pub(crate) fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    pub(crate) fn available_to(&self, port: u16, who: &ServiceRef) -> bool {
        self.range.contains(&port) && self.holders.get(&port).is_none_or(|h| h == who)
    }

    /// Claims `port` for `who` (a Service may use one nodePort for several of its ports);
    /// on conflict returns the holder.
    pub(crate) fn claim(&mut self, port: u16, who: &ServiceRef) -> Result<(), ServiceRef> {
        match self.holders.get(&port) {
            Some(h) if h != who => Err(h.clone()),
            Some(_) => Ok(()),
            None => {
                self.holders.insert(port, who.clone());
                Ok(())
            }
        }
    }

    /// A free port found from `hash` (upstream picks at random), claimed for `who`.
    pub(crate) fn hashed_free(&mut self, hash: u64, who: &ServiceRef) -> Option<u16> {
        let (first, last) = (
            u128::from(*self.range.start()),
            u128::from(*self.range.end()),
        );
        let band = static_band((last + 1).saturating_sub(first), 32, 128);
        let holders = &self.holders;
        // Every value probed lies in the u16 range.
        let port = probe(first, last, band, hash, |v| {
            !holders.contains_key(&(v as u16))
        })? as u16;
        self.holders.insert(port, who.clone());
        Some(port)
    }
}

/// Which Node holds each podCIDR, and where the search of each cluster CIDR stands.
#[derive(Debug, Default)]
pub(crate) struct CidrBook {
    taken: Vec<(IpNet, NodeName)>,
    cursors: HashMap<IpNet, u128>,
}

impl CidrBook {
    /// A Node other than `who` holding a range overlapping `net`.
    pub(crate) fn conflict(&self, net: &IpNet, who: &NodeName) -> Option<&NodeName> {
        self.taken
            .iter()
            .find(|(t, n)| n != who && overlaps(t, net))
            .map(|(_, n)| n)
    }

    /// Claims `net` for `who`; on overlap with another Node's range returns that Node.
    pub(crate) fn claim(&mut self, net: IpNet, who: &NodeName) -> Result<(), NodeName> {
        if let Some(n) = self.conflict(&net, who) {
            return Err(n.clone());
        }
        self.taken.push((net, who.clone()));
        Ok(())
    }

    /// The first free `/prefix` of `cluster`, claimed for `who`. As with [`IpBook::next_free`],
    /// the search resumes where it stopped, which is right once all declared and kept ranges
    /// are claimed.
    pub(crate) fn next_free(
        &mut self,
        cluster: IpNet,
        prefix: u8,
        who: &NodeName,
    ) -> Option<IpNet> {
        let cluster = cluster.trunc();
        let shift = u32::from(cluster.max_prefix_len().checked_sub(prefix)?);
        let bits = u32::from(prefix.checked_sub(cluster.prefix_len())?);
        let count = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
        let base = to_u128(cluster.network());
        let family = Family::of_net(&cluster);
        let mut i = self.cursors.get(&cluster).copied().unwrap_or(0);
        while i < count {
            let start = base + (i << shift);
            i += 1;
            let Ok(net) = IpNet::new(from_u128(start, family), prefix) else {
                break;
            };
            if self.conflict(&net, who).is_none() {
                self.taken.push((net, who.clone()));
                self.cursors.insert(cluster, i);
                return Some(net);
            }
        }
        self.cursors.insert(cluster, i);
        None
    }
}

/// The `/prefix` of `cluster` that contains `ip`, if `ip` lies in `cluster`.
pub(crate) fn subnet_containing(cluster: IpNet, prefix: u8, ip: IpAddr) -> Option<IpNet> {
    if !cluster.contains(&ip) || prefix < cluster.prefix_len() {
        return None;
    }
    IpNet::new(ip, prefix).ok().map(|n| n.trunc())
}

/// Whether `net` is exactly one of the `/prefix` blocks `cluster` is cut into.
pub(crate) fn is_block_of(cluster: IpNet, prefix: u8, net: IpNet) -> bool {
    net.prefix_len() == prefix && net.trunc() == net && cluster.contains(&net)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn id(name: &str) -> ObjectId {
        ObjectId {
            kind: netd_model::Kind::Pod,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn ranges_skip_network_gateway_and_broadcast() {
        let r = IpRange::new(net("10.244.1.0/24"), 2);
        for (addr, inside) in [
            ("10.244.1.0", false),
            ("10.244.1.1", false),
            ("10.244.1.2", true),
            ("10.244.1.254", true),
            ("10.244.1.255", false),
            ("10.244.2.2", false),
            ("fd00::2", false),
        ] {
            assert_eq!(r.contains(ip(addr)), inside, "{addr}");
        }
        let v6 = IpRange::new(net("fd00:10:244:1::/64"), 2);
        assert!(v6.contains(ip("fd00:10:244:1:ffff:ffff:ffff:ffff")));
        assert!(!v6.contains(ip("fd00:10:244:1::1")));
    }

    #[test]
    fn sequential_allocation_skips_held_addresses_and_runs_out() {
        let mut book = IpBook::default();
        let r = IpRange::new(net("10.0.0.0/29"), 2); // .2 .. .6
        book.claim(ip("10.0.0.3"), &id("declared")).expect("free");
        let got: Vec<_> = (0..4)
            .map(|i| book.next_free(&r, &id(&format!("p{i}"))))
            .collect();
        assert_eq!(
            got,
            vec![
                Some(ip("10.0.0.2")),
                Some(ip("10.0.0.4")),
                Some(ip("10.0.0.5")),
                Some(ip("10.0.0.6"))
            ]
        );
        assert_eq!(book.next_free(&r, &id("late")), None);
    }

    #[test]
    fn claims_conflict_only_between_different_holders() {
        let mut book = IpBook::default();
        assert!(book.claim(ip("10.0.0.9"), &id("a")).is_ok());
        assert!(book.claim(ip("10.0.0.9"), &id("a")).is_ok());
        assert_eq!(book.claim(ip("10.0.0.9"), &id("b")), Err(id("a")));
        book.share(ip("10.0.0.9"), &id("c"));
        assert!(book.available_to(ip("10.0.0.9"), &id("a")));
        assert!(!book.available_to(ip("10.0.0.9"), &id("c")));
    }

    #[test]
    fn hashed_allocation_prefers_the_upper_band_and_fills_the_range() {
        let mut book = IpBook::default();
        let r = IpRange::new(net("10.96.0.0/27"), 1); // .1 .. .30, band 16 → upper .17 .. .30
        let first = book.hashed_free(&r, 7, &id("s0")).expect("free");
        assert!(to_u128(first) >= to_u128(ip("10.96.0.17")), "{first}");
        let mut all = vec![first];
        for i in 1..30 {
            all.push(
                book.hashed_free(&r, 7, &id(&format!("s{i}")))
                    .expect("free"),
            );
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 30);
        assert_eq!(book.hashed_free(&r, 7, &id("late")), None);
    }

    #[test]
    fn node_ports_are_unique_and_bounded() {
        let svc = |n: &str| ServiceRef::new("default", n);
        let mut ports = PortBook::new(30000..=30004);
        assert!(ports.claim(30002, &svc("a")).is_ok());
        assert_eq!(ports.claim(30002, &svc("b")), Err(svc("a")));
        let mut got: Vec<u16> = (0..4)
            .map(|i| ports.hashed_free(i, &svc(&format!("s{i}"))).expect("free"))
            .collect();
        got.push(30002);
        got.sort_unstable();
        assert_eq!(got, vec![30000, 30001, 30002, 30003, 30004]);
        assert_eq!(ports.hashed_free(9, &svc("late")), None);
        assert!(!ports.available_to(29999, &svc("a")));
    }

    #[test]
    fn pod_cidrs_are_cut_in_order_around_declared_ones() {
        let node = |n: &str| NodeName::new(n);
        let mut book = CidrBook::default();
        let cluster = net("10.244.0.0/22");
        book.claim(net("10.244.1.0/24"), &node("declared"))
            .expect("free");
        assert_eq!(
            book.claim(net("10.244.1.128/25"), &node("x")),
            Err(node("declared"))
        );
        let got: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| book.next_free(cluster, 24, &node(n)))
            .collect();
        assert_eq!(
            got,
            vec![
                Some(net("10.244.0.0/24")),
                Some(net("10.244.2.0/24")),
                Some(net("10.244.3.0/24")),
                None
            ]
        );
        assert_eq!(
            subnet_containing(cluster, 24, ip("10.244.3.9")),
            Some(net("10.244.3.0/24"))
        );
        assert_eq!(subnet_containing(cluster, 24, ip("10.245.0.1")), None);
        assert!(is_block_of(cluster, 24, net("10.244.2.0/24")));
        assert!(!is_block_of(cluster, 24, net("10.244.2.0/25")));
    }
}
