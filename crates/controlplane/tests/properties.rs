//! Properties over generated clusters: no address or nodePort is ever handed out twice, and
//! resolving again with the previous state keeps every allocation of the objects that remain.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use netd_controlplane::resolve;
use netd_model::{ClusterConfig, ClusterState};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Svc {
    kind: usize,
    local: bool,
    app: usize,
    ports: usize,
    declared_ip: bool,
    declared_node_port: bool,
}

#[derive(Clone, Debug)]
struct PodSpec {
    app: usize,
    host_network: bool,
    node: Option<usize>,
}

#[derive(Clone, Debug)]
struct Cluster {
    nodes: usize,
    deployments: Vec<usize>,
    pods: Vec<PodSpec>,
    services: Vec<Svc>,
}

fn config() -> ClusterConfig {
    let net = |s: &str| s.parse::<IpNet>().expect("net");
    ClusterConfig {
        node_cidr_prefix_v4: 26,
        service_cidrs: vec![net("10.96.0.0/24")],
        node_port_range: 30000..=30039,
        load_balancer_pool: net("172.18.255.0/28"),
        ..ClusterConfig::default()
    }
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let svc = (
        0..4usize,
        any::<bool>(),
        0..3usize,
        1..=3usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, local, app, ports, declared_ip, declared_node_port)| Svc {
                kind,
                local,
                app,
                ports,
                declared_ip,
                declared_node_port,
            },
        );
    let pod = (
        0..4usize,
        prop::bool::weighted(0.2),
        prop::option::of(0..4usize),
    )
        .prop_map(|(app, host_network, node)| PodSpec {
            app,
            host_network,
            node,
        });
    (
        0..4usize,
        prop::collection::vec(0..5usize, 0..3),
        prop::collection::vec(pod, 0..6),
        prop::collection::vec(svc, 0..8),
    )
        .prop_map(|(nodes, deployments, pods, services)| Cluster {
            nodes,
            deployments,
            pods,
            services,
        })
}

fn yaml(c: &Cluster) -> String {
    let mut y = String::new();
    for n in 0..c.nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: n{n}}}\n"
        );
    }
    for (d, replicas) in c.deployments.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d{d}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: a{d}}}}}\n  template:\n    metadata: {{labels: {{app: a{d}}}}}\n    spec: {{containers: [{{name: c, image: i}}]}}\n"
        );
    }
    for (i, p) in c.pods.iter().enumerate() {
        let node = match p.node {
            Some(n) if n < c.nodes => format!(", nodeName: n{n}"),
            _ => String::new(),
        };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: a{}}}}}\nspec: {{hostNetwork: {}{node}, containers: [{{name: c, image: i}}]}}\n",
            p.app, p.host_network
        );
    }
    for (i, s) in c.services.iter().enumerate() {
        y.push_str(&service_yaml(&format!("s{i}"), i, s));
    }
    y
}

fn service_yaml(name: &str, i: usize, s: &Svc) -> String {
    let kind = ["ClusterIP", "NodePort", "LoadBalancer", "ClusterIP"][s.kind];
    let mut spec = format!("  type: {kind}\n  selector: {{app: a{}}}\n", s.app);
    if s.kind == 3 {
        spec.push_str("  clusterIP: None\n");
    } else if s.declared_ip {
        let _ = writeln!(spec, "  clusterIP: 10.96.0.{}", 100 + i);
    }
    if s.local && matches!(s.kind, 1 | 2) {
        spec.push_str("  externalTrafficPolicy: Local\n");
    }
    spec.push_str("  ports:\n");
    for j in 0..s.ports {
        let node_port = if j == 0 && s.declared_node_port && matches!(s.kind, 1 | 2) {
            format!(", nodePort: {}", 30030 + i)
        } else {
            String::new()
        };
        let _ = writeln!(
            spec,
            "  - {{name: p{j}, port: {}, targetPort: {}{node_port}}}",
            80 + j,
            8080 + j
        );
    }
    format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

/// Every address given to a Node, a (non-hostNetwork) Pod, a ClusterIP or a load balancer,
/// and every nodePort, with who holds it; fails on any value held twice.
fn check_unique(state: &ClusterState) -> Result<(), TestCaseError> {
    let mut ips: HashMap<IpAddr, String> = HashMap::new();
    let mut take = |ip: IpAddr, who: String| -> Result<(), TestCaseError> {
        match ips.insert(ip, who.clone()) {
            Some(other) => Err(TestCaseError::fail(format!(
                "{ip} given to {other} and {who}"
            ))),
            None => Ok(()),
        }
    };
    for n in state.nodes() {
        for ip in &n.internal_ips {
            take(*ip, format!("node {}", n.name))?;
        }
    }
    for p in state.pods().filter(|p| !p.host_network) {
        for ip in &p.ips {
            take(*ip, format!("pod {}", p.key))?;
        }
    }
    let mut ports: HashMap<u16, String> = HashMap::new();
    for s in state.services() {
        for ip in s.cluster_ips.iter().chain(&s.load_balancer_ips) {
            take(*ip, format!("service {}", s.key))?;
        }
        for port in s
            .ports
            .iter()
            .filter_map(|p| p.node_port)
            .chain(s.health_check_node_port)
        {
            // One Service may use a nodePort for a port number it serves over two protocols.
            match ports.insert(port, s.key.to_string()) {
                Some(other) if other != s.key.to_string() => {
                    return Err(TestCaseError::fail(format!(
                        "nodePort {port} given to {other} and {}",
                        s.key
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_sticky(before: &ClusterState, after: &ClusterState) -> Result<(), TestCaseError> {
    for n in before.nodes() {
        if let Some(now) = after.node(n.name.as_str()) {
            prop_assert_eq!(&now.internal_ips, &n.internal_ips, "node {}", n.name);
            prop_assert_eq!(&now.pod_cidrs, &n.pod_cidrs, "node {}", n.name);
        }
    }
    for p in before.pods() {
        if let Some(now) = after.pod(&p.key) {
            prop_assert_eq!(&now.node, &p.node, "pod {}", p.key);
            prop_assert_eq!(&now.ips, &p.ips, "pod {}", p.key);
        }
    }
    for s in before.services() {
        if let Some(now) = after.service(&s.key) {
            prop_assert_eq!(&now.cluster_ips, &s.cluster_ips, "service {}", s.key);
            let ports = |x: &netd_model::view::Service| {
                x.ports.iter().map(|p| p.node_port).collect::<Vec<_>>()
            };
            prop_assert_eq!(ports(now), ports(s), "service {}", s.key);
            prop_assert_eq!(
                now.health_check_node_port,
                s.health_check_node_port,
                "service {}",
                s.key
            );
            prop_assert_eq!(
                &now.load_balancer_ips,
                &s.load_balancer_ips,
                "service {}",
                s.key
            );
        }
    }
    Ok(())
}

/// The same cluster with more: a replica more in each Deployment, the first Pod gone, a new
/// Pod and a new Service whose names sort first.
fn grown(c: &Cluster, extra: &Svc) -> String {
    let mut next = c.clone();
    for r in &mut next.deployments {
        *r += 1;
    }
    let mut y = yaml(&next);
    if !c.pods.is_empty() {
        let first = y
            .find("kind: Pod\nmetadata: {name: p0,")
            .map(|i| y[..i].rfind("---").unwrap_or(i));
        if let Some(start) = first {
            let end = y[start + 3..]
                .find("---")
                .map_or(y.len(), |e| start + 3 + e);
            y.replace_range(start..end, "");
        }
    }
    y.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: a-new, labels: {app: a0}}\nspec: {containers: [{name: c, image: i}]}\n");
    let fresh = Svc {
        declared_ip: false,
        declared_node_port: false,
        ..extra.clone()
    };
    y.push_str(&service_yaml("a-new", 99, &fresh));
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn nothing_is_handed_out_twice_and_allocations_stick(c in cluster(), extra in (0..3usize, any::<bool>(), 0..3usize, 1..=3usize).prop_map(|(kind, local, app, ports)| Svc { kind, local, app, ports, declared_ip: false, declared_node_port: false })) {
        let config = config();
        let first = resolve(netd_testkit::objects(&yaml(&c)), &config, None)
            .map_err(|e| TestCaseError::fail(format!("first resolve: {e:?}")))?;
        check_unique(&first)?;
        let again = resolve(netd_testkit::objects(&yaml(&c)), &config, None)
            .map_err(|e| TestCaseError::fail(format!("second resolve: {e:?}")))?;
        prop_assert_eq!(first.objects().cloned().collect::<Vec<_>>(), again.objects().cloned().collect::<Vec<_>>());
        let next = resolve(netd_testkit::objects(&grown(&c, &extra)), &config, Some(&first))
            .map_err(|e| TestCaseError::fail(format!("resolve with previous: {e:?}")))?;
        check_unique(&next)?;
        check_sticky(&first, &next)?;
        let same = resolve(netd_testkit::objects(&yaml(&c)), &config, Some(&first))
            .map_err(|e| TestCaseError::fail(format!("resolve unchanged: {e:?}")))?;
        prop_assert_eq!(first.objects().cloned().collect::<Vec<_>>(), same.objects().cloned().collect::<Vec<_>>());
    }
}
