//! The rules agree with the plan: for every golden scenario and every Service port, a
//! packet traced through the rendered rules — iptables and nftables alike — meets the fate
//! the plan decided: the same endpoints with equal shares, the same masquerade, reject or
//! drop.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use netd_model::ServicePortName;
use netd_proxy::{
    ClusterIpMasquerade, Disposition, IpFamily, LocalDetector, PlannedEndpoint, plan,
};
use netd_render::nft::{render_services_nft, trace_nft};
use netd_render::trace::{Host, Packet, Verdict, trace};
use netd_render::{RenderOptions, render_services};

type Fate = BTreeMap<(Verdict, Option<SocketAddr>, bool), f64>;

fn expected(disposition: Disposition, endpoints: &[PlannedEndpoint], masquerade: bool) -> Fate {
    match disposition {
        Disposition::Reject => [((Verdict::Reject, None, false), 1.0)].into(),
        Disposition::Drop => [((Verdict::Drop, None, false), 1.0)].into(),
        Disposition::Cluster | Disposition::Local => {
            let share = 1.0 / endpoints.len() as f64;
            endpoints
                .iter()
                .map(|ep| ((Verdict::Accept, Some(ep.addr), masquerade), share))
                .collect()
        }
    }
}

/// Equal fates, shares within one of the nftables back end's 65,536 (its plain Services give
/// each endpoint a whole number of them, so a third is 21,845 or 21,846 / 65,536).
fn same(a: &Fate, b: &Fate) -> bool {
    let share = 1.0 / f64::from(netd_render::nft::SHARES);
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, pa), (kb, pb))| ka == kb && (pa - pb).abs() <= share)
}

#[test]
fn traces_agree_with_the_plan() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in common::scenarios() {
        let yaml = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
        let (node, family, opts) = common::options(&yaml);
        let state = netd_testkit::state(&yaml);
        let p = plan(&state, &node, family, &opts);
        let rules = render_services(&p, &RenderOptions::default()).installed();
        let table = render_services_nft(&p, &RenderOptions::default());
        let node_ip: IpAddr = match family {
            IpFamily::V4 => opts
                .node_ips
                .first()
                .copied()
                .unwrap_or_else(|| "172.18.0.2".parse().expect("ip")),
            IpFamily::V6 => "fd00:18::2".parse().expect("ip"),
        };
        let host = Host {
            local_addrs: vec![node_ip],
            ..Host::default()
        };
        let external: IpAddr = match family {
            IpFamily::V4 => "203.0.113.77".parse().expect("ip"),
            IpFamily::V6 => "2001:db8::77".parse().expect("ip"),
        };
        let endpoint_ips: Vec<IpAddr> = p
            .ports
            .values()
            .flat_map(|x| x.serving_endpoints.iter().map(|a| a.ip()))
            .collect();
        // A pod's packet, as the detector knows it: from inside the range, or arriving on
        // the pod interface (from a cluster address either way).
        let cluster_range = opts
            .cluster_cidrs
            .iter()
            .copied()
            .find(|c| family.contains_net(c));
        let (range, pod_interface) = match &p.local_detector {
            Some(LocalDetector::Cidr(cidr)) => (Some(*cidr), None),
            Some(LocalDetector::Interface(name)) => (cluster_range, Some(name.to_string())),
            Some(LocalDetector::InterfacePrefix(prefix)) => {
                (cluster_range, Some(format!("{prefix}0")))
            }
            None => (None, None),
        };
        let pod = range
            .and_then(|cidr| cidr.hosts().find(|ip| !endpoint_ips.contains(ip)))
            .expect("a pod address outside the endpoints");
        let from_pod = |packet: Packet| Packet {
            in_interface: pod_interface.clone(),
            ..packet
        };
        for (name, port) in &p.ports {
            let mut check = |what: &str, packet: Packet, want: Fate| {
                let iptables = trace(&rules, &host, &packet).expect("trace").summary();
                let nftables = trace_nft(&table, &host, &packet)
                    .expect("nft trace")
                    .summary();
                for (mode, got) in [("iptables", iptables), ("nftables", nftables)] {
                    if !same(&got, &want) {
                        failures.push(format!(
                            "{}: {mode}: {name} {what}: want {want:?}, got {got:?}",
                            dir.display()
                        ));
                    }
                    checked += 1;
                }
            };
            let masq_pod = matches!(port.cluster_ip_masquerade, ClusterIpMasquerade::All);
            let want = expected(port.internal, port.endpoints_for(port.internal), masq_pod);
            check(
                "pod to ClusterIP",
                from_pod(tcp_or(name, pod, port.cluster_ip, port.port)),
                want,
            );
            // An off-cluster client routed to the ClusterIP (it arrives on no pod interface):
            // SNATed whenever the plan masquerades anyone.
            let masq_external = port.cluster_ip_masquerade != ClusterIpMasquerade::Never;
            let want = expected(
                port.internal,
                port.endpoints_for(port.internal),
                masq_external,
            );
            check(
                "off-cluster to ClusterIP",
                tcp_or(name, external, port.cluster_ip, port.port),
                want,
            );
            let Some(ext) = port.external else { continue };
            let want = expected(
                ext.disposition,
                port.endpoints_for(ext.disposition),
                ext.masquerade_all,
            );
            if let Some(node_port) = port.node_port {
                check(
                    "external to NodePort",
                    tcp_or(name, external, node_ip, node_port),
                    want.clone(),
                );
            }
            for ip in &port.external_ips {
                check(
                    "external to external IP",
                    tcp_or(name, external, *ip, port.port),
                    want.clone(),
                );
            }
            if port.load_balancer_source_ranges.is_empty() {
                for ip in &port.load_balancer_ips {
                    check(
                        "external to LB IP",
                        tcp_or(name, external, *ip, port.port),
                        want.clone(),
                    );
                }
            }
            if let Some(lb) = port
                .load_balancer_ips
                .first()
                .filter(|_| !port.load_balancer_source_ranges.is_empty())
            {
                let inside = port.load_balancer_source_ranges[0]
                    .hosts()
                    .next()
                    .expect("host in range");
                check(
                    "admitted source to LB IP",
                    tcp_or(name, inside, *lb, port.port),
                    want,
                );
            }
        }
    }
    assert!(checked > 80, "only {checked} traces checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tcp_or(name: &ServicePortName, src: IpAddr, dst: IpAddr, dport: u16) -> Packet {
    let mut p = Packet::tcp(src, dst, dport);
    p.protocol = name.protocol;
    p
}
