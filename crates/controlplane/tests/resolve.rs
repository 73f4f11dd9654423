//! Table-driven tests of `resolve`, one group per responsibility of the control plane.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use netd_controlplane::{
    CONTROLLER_NAME, MANAGED_BY_LABEL, POD_TEMPLATE_HASH_LABEL, Pool, ResolveError, resolve,
};
use netd_model::view::EndpointSlice;
use netd_model::{
    ClusterConfig, ClusterState, IpFamilies, Kind, Object, ObjectId, PodRef, ServiceRef,
};
use pretty_assertions::assert_eq;

fn run(yaml: &str) -> ClusterState {
    run_with(yaml, &ClusterConfig::default())
}

fn run_with(yaml: &str, config: &ClusterConfig) -> ClusterState {
    resolve(netd_testkit::objects(yaml), config, None)
        .unwrap_or_else(|e| panic!("resolve: {e}: {e:?}"))
}

fn fail(yaml: &str) -> ResolveError {
    fail_with(yaml, &ClusterConfig::default())
}

fn fail_with(yaml: &str, config: &ClusterConfig) -> ResolveError {
    match resolve(netd_testkit::objects(yaml), config, None) {
        Ok(_) => panic!("resolve should fail"),
        Err(e) => e,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("net")
}

fn dual_stack() -> ClusterConfig {
    ClusterConfig {
        cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
        service_cidrs: vec![net("10.96.0.0/12"), net("fd00:10:96::/112")],
        ..ClusterConfig::default()
    }
}

fn id(kind: Kind, ns: &str, name: &str) -> ObjectId {
    ObjectId {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

fn service_obj<'a>(state: &'a ClusterState, ns: &str, name: &str) -> &'a core::Service {
    match state.object(&id(Kind::Service, ns, name)) {
        Some(Object::Service(s)) => s,
        other => panic!("no service {ns}/{name}: {other:?}"),
    }
}

fn pod_obj<'a>(state: &'a ClusterState, ns: &str, name: &str) -> &'a core::Pod {
    match state.object(&id(Kind::Pod, ns, name)) {
        Some(Object::Pod(p)) => p,
        other => panic!("no pod {ns}/{name}: {other:?}"),
    }
}

fn slices_of<'a>(state: &'a ClusterState, ns: &str, name: &str) -> Vec<&'a EndpointSlice> {
    state
        .endpoint_slices_for(&ServiceRef::new(ns, name))
        .collect()
}

fn pod_ip(state: &ClusterState, ns: &str, name: &str) -> Option<IpAddr> {
    state
        .pod(&PodRef::new(ns, name))
        .and_then(|p| p.ips.first().copied())
}

fn pod_node(state: &ClusterState, ns: &str, name: &str) -> Option<String> {
    state
        .pod(&PodRef::new(ns, name))
        .and_then(|p| p.node.as_ref())
        .map(ToString::to_string)
}

fn pod(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  containers: [{{name: c, image: i}}]\n{extra}\n"
    )
}

const HOSTNAMES: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hostnames}
spec:
  selector: {matchLabels: {app: hostnames}}
  replicas: 3
  template:
    metadata: {labels: {app: hostnames}}
    spec:
      containers:
      - name: hostnames
        image: registry.k8s.io/serve_hostname
---
apiVersion: v1
kind: Service
metadata: {name: hostnames}
spec:
  selector: {app: hostnames}
  ports:
  - {name: default, protocol: TCP, port: 80, targetPort: 9376}
"#;

#[test]
fn the_seed_hostnames_example_gives_three_pods_on_two_nodes_behind_one_slice() {
    let state = run(HOSTNAMES);
    let nodes: Vec<String> = state.nodes().map(|n| n.name.to_string()).collect();
    assert_eq!(nodes, ["node-1", "node-2"]);
    let pods: Vec<_> = state.pods().collect();
    assert_eq!(pods.len(), 3);
    let on = |n: &str| {
        pods.iter()
            .filter(|p| p.node.as_ref().map(|x| x.as_str()) == Some(n))
            .count()
    };
    assert_eq!((on("node-1"), on("node-2")), (2, 1));
    for p in &pods {
        assert!(p.key.name.starts_with("hostnames-"), "{}", p.key);
        assert!(p.labels.contains_key(POD_TEMPLATE_HASH_LABEL));
        assert!(p.ready);
        assert_eq!(p.ips.len(), 1);
    }
    let svc = state
        .service(&ServiceRef::new("default", "hostnames"))
        .expect("service");
    assert_eq!(svc.cluster_ips.len(), 1);
    assert!(state.config().in_service_cidrs(svc.cluster_ips[0]));
    let slices = slices_of(&state, "default", "hostnames");
    assert_eq!(slices.len(), 1);
    let slice = slices[0];
    assert_eq!(slice.endpoints.len(), 3);
    assert_eq!(slice.ports.len(), 1);
    assert_eq!(
        (slice.ports[0].name.as_str(), slice.ports[0].port),
        ("default", 9376)
    );
    let mut endpoint_ips: Vec<IpAddr> = slice.endpoints.iter().map(|e| e.addresses[0]).collect();
    let mut pod_ips: Vec<IpAddr> = pods.iter().map(|p| p.ips[0]).collect();
    endpoint_ips.sort();
    pod_ips.sort();
    assert_eq!(endpoint_ips, pod_ips);
    assert!(
        slice
            .endpoints
            .iter()
            .all(|e| e.conditions.ready && e.conditions.serving && !e.conditions.terminating)
    );
}

#[test]
fn resolving_is_deterministic() {
    let a = run(HOSTNAMES);
    let b = run(HOSTNAMES);
    let objects = |s: &ClusterState| s.objects().cloned().collect::<Vec<_>>();
    assert_eq!(objects(&a), objects(&b));
}

#[test]
fn default_nodes_get_labels_ips_and_pod_cidrs() {
    let state = run("");
    let config = ClusterConfig {
        default_node_count: 3,
        ..ClusterConfig::default()
    };
    let three = resolve(Vec::new(), &config, None).expect("resolves");
    assert_eq!(three.nodes().count(), 3);
    // (node, InternalIP, podCIDR)
    let cases = [
        ("node-1", "172.18.0.2", "10.244.0.0/24"),
        ("node-2", "172.18.0.3", "10.244.1.0/24"),
    ];
    for (name, addr, cidr) in cases {
        let node = state.node(name).expect("node");
        assert_eq!(node.internal_ips, vec![ip(addr)], "{name}");
        assert_eq!(node.pod_cidrs, vec![net(cidr)], "{name}");
        assert_eq!(
            node.labels
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some(name)
        );
        assert_eq!(
            node.labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
    }
}

#[test]
fn declared_nodes_keep_what_they_declare_and_the_rest_is_allocated_around_it() {
    let state = run(r#"
apiVersion: v1
kind: Node
metadata: {name: b}
spec: {podCIDR: 10.244.0.0/24}
---
apiVersion: v1
kind: Node
metadata: {name: a}
status: {addresses: [{type: InternalIP, address: 192.168.7.7}]}
---
apiVersion: v1
kind: Node
metadata: {name: c}
"#);
    // (node, InternalIPs, podCIDRs)
    let cases = [
        ("a", vec![ip("192.168.7.7")], vec![net("10.244.1.0/24")]),
        ("b", vec![ip("172.18.0.2")], vec![net("10.244.0.0/24")]),
        ("c", vec![ip("172.18.0.3")], vec![net("10.244.2.0/24")]),
    ];
    for (name, ips, cidrs) in cases {
        let node = state.node(name).expect("node");
        assert_eq!(
            (&node.internal_ips, &node.pod_cidrs),
            (&ips, &cidrs),
            "{name}"
        );
    }
}

#[test]
fn node_names_are_ordered_naturally_for_allocation() {
    let config = ClusterConfig {
        default_node_count: 10,
        ..ClusterConfig::default()
    };
    let state = resolve(Vec::new(), &config, None).expect("resolves");
    assert_eq!(
        state.node("node-2").expect("node").internal_ips,
        vec![ip("172.18.0.3")]
    );
    assert_eq!(
        state.node("node-10").expect("node").internal_ips,
        vec![ip("172.18.0.11")]
    );
}

#[test]
fn dual_stack_nodes_and_pods_get_both_families() {
    let state = run_with(&pod("a", ""), &dual_stack());
    let node = state.node("node-1").expect("node");
    assert_eq!(
        node.pod_cidrs,
        vec![net("10.244.0.0/24"), net("fd00:10:244::/64")]
    );
    let p = state.pod(&PodRef::new("default", "a")).expect("pod");
    assert_eq!(p.ips, vec![ip("10.244.0.2"), ip("fd00:10:244::2")]);
}

#[test]
fn an_ipv6_node_network_gives_every_node_a_second_internal_ip_kept_across_resolves() {
    let config = ClusterConfig::for_families(IpFamilies::Dual);
    let yaml = [pod("a", ""), service("s", PORT_80)].concat();
    let state = run_with(&yaml, &config);
    let ips =
        |state: &ClusterState, node: &str| state.node(node).expect("node").internal_ips.clone();
    assert_eq!(
        ips(&state, "node-1"),
        vec![ip("172.18.0.2"), ip("fd00:172:18::2")]
    );
    assert_eq!(
        ips(&state, "node-2"),
        vec![ip("172.18.0.3"), ip("fd00:172:18::3")]
    );
    // Without ipFamilies a Service is single-stack of the first family, as the API server
    // defaults it.
    let spec = service_obj(&state, "default", "s")
        .spec
        .clone()
        .expect("spec");
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));

    // Resolved again on top of that state, a Node keeps both of its addresses.
    let again = resolve(netd_testkit::objects(&yaml), &config, Some(&state)).expect("resolve");
    assert_eq!(ips(&again, "node-1"), ips(&state, "node-1"));
}

#[test]
fn an_ipv6_only_cluster_gives_pods_and_services_ipv6_addresses_alone() {
    let config = ClusterConfig::for_families(IpFamilies::Ipv6);
    let yaml = [pod("a", ""), service("s", PORT_80)].concat();
    let state = run_with(&yaml, &config);
    let node = state.node("node-1").expect("node");
    assert_eq!(node.pod_cidrs, vec![net("fd00:10:244::/64")]);
    assert_eq!(
        node.internal_ips,
        vec![ip("172.18.0.2"), ip("fd00:172:18::2")]
    );
    let p = state.pod(&PodRef::new("default", "a")).expect("pod");
    assert_eq!(p.ips, vec![ip("fd00:10:244::2")]);
    let spec = service_obj(&state, "default", "s")
        .spec
        .clone()
        .expect("spec");
    assert_eq!(spec.ip_families, Some(vec!["IPv6".to_owned()]));
    let cluster_ip: IpAddr = spec.cluster_ip.expect("clusterIP").parse().expect("ip");
    assert!(
        net("fd00:10:96::/112").contains(&cluster_ip),
        "{cluster_ip}"
    );
    let slices = slices_of(&state, "default", "s");
    assert!(
        slices
            .iter()
            .all(|s| s.address_type == netd_model::view::AddressType::IPv6)
    );
}

#[test]
fn the_scheduler_places_least_loaded_first_and_honours_bindings() {
    let yaml = [
        pod("a", ""),
        pod("b", ""),
        pod("c", ""),
        pod("pinned", "  nodeName: node-2"),
        pod("pinned2", "  nodeName: node-2"),
    ]
    .concat();
    let state = run(&yaml);
    // (pod, node): the pinned pods load node-2 first, so a and b go to node-1, then c ties
    // and goes to the first node by name.
    let cases = [
        ("a", "node-1"),
        ("b", "node-1"),
        ("c", "node-1"),
        ("pinned", "node-2"),
        ("pinned2", "node-2"),
    ];
    for (p, node) in cases {
        assert_eq!(pod_node(&state, "default", p).as_deref(), Some(node), "{p}");
    }
    let spread = run(&[pod("a", ""), pod("b", ""), pod("c", "")].concat());
    let cases = [("a", "node-1"), ("b", "node-2"), ("c", "node-1")];
    for (p, node) in cases {
        assert_eq!(
            pod_node(&spread, "default", p).as_deref(),
            Some(node),
            "{p}"
        );
    }
}

#[test]
fn a_pod_bound_to_a_missing_node_is_an_error() {
    match fail(&pod("a", "  nodeName: nowhere")) {
        ResolveError::UnknownNode { pod, node } => {
            assert_eq!(
                (pod.to_string(), node.to_string()),
                ("default/a".into(), "nowhere".into())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unschedulable_nodes_get_no_new_pods_and_unplaceable_pods_stay_pending() {
    let nodes = r#"
apiVersion: v1
kind: Node
metadata: {name: cordoned}
spec: {unschedulable: true}
---
apiVersion: v1
kind: Node
metadata: {name: open}
"#;
    let state = run(&format!("{nodes}{}{}", pod("a", ""), pod("b", "")));
    assert_eq!(pod_node(&state, "default", "a").as_deref(), Some("open"));
    assert_eq!(pod_node(&state, "default", "b").as_deref(), Some("open"));

    let only_cordoned =
        "apiVersion: v1\nkind: Node\nmetadata: {name: cordoned}\nspec: {unschedulable: true}\n";
    let state = run(&format!("{only_cordoned}{}", pod("a", "")));
    let p = pod_obj(&state, "default", "a");
    let status = p.status.as_ref().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(status.pod_ip.is_none());
    assert!(!state.pod(&PodRef::new("default", "a")).expect("pod").ready);
}

#[test]
fn pod_ips_come_from_the_node_pod_cidr_after_the_gateway() {
    let yaml = [
        pod("a", "  nodeName: node-1"),
        pod("b", "  nodeName: node-1"),
        pod("c", "  nodeName: node-2"),
        pod(
            "declared",
            "  nodeName: node-1\nstatus: {podIP: 10.244.0.9}",
        ),
        pod("stale", "  nodeName: node-2\nstatus: {podIP: 10.99.0.9}"),
        pod("gateway", "  nodeName: node-2\nstatus: {podIP: 10.244.1.1}"),
        pod("host", "  nodeName: node-2\n  hostNetwork: true"),
    ]
    .concat();
    let state = run(&yaml);
    // (pod, IP): declared valid IPs are kept, invalid ones (outside the podCIDR, or the
    // gateway) are replaced; hostNetwork Pods have their Node's IP.
    let cases = [
        ("a", "10.244.0.2"),
        ("b", "10.244.0.3"),
        ("declared", "10.244.0.9"),
        ("c", "10.244.1.2"),
        ("gateway", "10.244.1.3"),
        ("stale", "10.244.1.4"),
        ("host", "172.18.0.3"),
    ];
    for (p, want) in cases {
        assert_eq!(pod_ip(&state, "default", p), Some(ip(want)), "{p}");
    }
    let status = pod_obj(&state, "default", "a")
        .status
        .as_ref()
        .expect("status");
    assert_eq!(status.host_ip.as_deref(), Some("172.18.0.2"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
}

#[test]
fn a_declared_pod_ip_places_an_unbound_pod_and_its_node_cidr() {
    // node-1 gets the /24 holding its declared Pod's IP; the unbound Pod with an IP in that
    // block is placed there too.
    let yaml = [
        pod("a", "  nodeName: node-1\nstatus: {podIP: 10.244.5.7}"),
        pod("b", "status: {podIP: 10.244.5.8}"),
    ]
    .concat();
    let state = run(&yaml);
    assert_eq!(
        state.node("node-1").expect("node").pod_cidrs,
        vec![net("10.244.5.0/24")]
    );
    assert_eq!(
        state.node("node-2").expect("node").pod_cidrs,
        vec![net("10.244.0.0/24")]
    );
    assert_eq!(pod_node(&state, "default", "b").as_deref(), Some("node-1"));
    assert_eq!(pod_ip(&state, "default", "b"), Some(ip("10.244.5.8")));
}

#[test]
fn two_pods_declaring_one_ip_is_an_error() {
    let yaml = [
        pod("a", "  nodeName: node-1\nstatus: {podIP: 10.244.0.7}"),
        pod("b", "  nodeName: node-1\nstatus: {podIP: 10.244.0.7}"),
    ]
    .concat();
    assert!(matches!(fail(&yaml), ResolveError::AddressInUse { .. }));
}

#[test]
fn pod_conditions_default_to_ready_and_declared_ones_are_kept() {
    let yaml = [
        pod("fresh", ""),
        pod(
            "unready",
            "status: {conditions: [{type: Ready, status: \"False\"}]}",
        ),
        pod("done", "status: {phase: Succeeded}"),
    ]
    .concat();
    let state = run(&yaml);
    // (pod, ready)
    for (p, ready) in [("fresh", true), ("unready", false), ("done", false)] {
        assert_eq!(
            state.pod(&PodRef::new("default", p)).expect("pod").ready,
            ready,
            "{p}"
        );
    }
    let conditions = pod_obj(&state, "default", "unready")
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone());
    let conditions = conditions.expect("conditions");
    assert_eq!(conditions.iter().filter(|c| c.type_ == "Ready").count(), 1);
    let containers_ready = conditions
        .iter()
        .find(|c| c.type_ == "ContainersReady")
        .expect("ContainersReady");
    assert_eq!(containers_ready.status, "False");
}

#[test]
fn pools_run_out_with_an_error_naming_the_pool() {
    let tiny = ClusterConfig {
        node_cidr_prefix_v4: 30,
        default_node_count: 1,
        ..ClusterConfig::default()
    };
    // A /30 podCIDR has one Pod address: network .0, gateway .1, pod .2, broadcast .3.
    run_with(&pod("a", ""), &tiny);
    match fail_with(&[pod("a", ""), pod("b", "")].concat(), &tiny) {
        ResolveError::PoolExhausted {
            pool: Pool::PodCidr { node, cidr },
            what,
        } => {
            assert_eq!(
                (node.as_str(), cidr, what.name.as_str()),
                ("node-1", net("10.244.0.0/30"), "b")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn service(name: &str, spec: &str) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}

const PORT_80: &str = "  selector: {app: web}\n  ports: [{port: 80}]";

#[test]
fn cluster_ips_follow_the_api_server() {
    let yaml = [
        service("kubernetes", "  ports: [{name: https, port: 443, targetPort: 6443}]"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\nspec:\n  selector: {k8s-app: kube-dns}\n  ports: [{name: dns, port: 53, protocol: UDP}]\n".to_owned(),
        service("web", PORT_80),
        service("fixed", &format!("{PORT_80}\n  clusterIP: 10.96.100.100")),
        service("headless", &format!("{PORT_80}\n  clusterIP: None")),
    ]
    .concat();
    let state = run(&yaml);
    // (namespace, service, ClusterIPs)
    let cases: [(&str, &str, Option<&str>); 4] = [
        ("default", "kubernetes", Some("10.96.0.1")),
        ("kube-system", "kube-dns", Some("10.96.0.10")),
        ("default", "fixed", Some("10.96.100.100")),
        ("default", "headless", None),
    ];
    for (ns, name, want) in cases {
        let svc = state.service(&ServiceRef::new(ns, name)).expect("service");
        assert_eq!(
            svc.cluster_ips.first().copied(),
            want.map(ip),
            "{ns}/{name}"
        );
    }
    let web = state
        .service(&ServiceRef::new("default", "web"))
        .expect("service");
    assert!(state.config().in_service_cidrs(web.cluster_ips[0]));
    let spec = service_obj(&state, "default", "web")
        .spec
        .clone()
        .expect("spec");
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.cluster_ips, Some(vec![web.cluster_ips[0].to_string()]));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let headless = service_obj(&state, "default", "headless")
        .spec
        .clone()
        .expect("spec");
    assert_eq!(headless.cluster_ips, Some(vec!["None".to_owned()]));
}

#[test]
fn reserved_cluster_ips_are_never_given_to_other_services() {
    // A /27 has 30 addresses; two are reserved, so 28 Services fill it.
    let config = ClusterConfig {
        service_cidrs: vec![net("10.96.0.0/27")],
        ..ClusterConfig::default()
    };
    let yaml: String = (0..28)
        .map(|i| service(&format!("s{i}"), PORT_80))
        .collect();
    let state = run_with(&yaml, &config);
    let mut all: Vec<IpAddr> = state
        .services()
        .flat_map(|s| s.cluster_ips.clone())
        .collect();
    assert!(!all.contains(&ip("10.96.0.1")) && !all.contains(&ip("10.96.0.10")));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 28);
    let more: String = (0..29)
        .map(|i| service(&format!("s{i}"), PORT_80))
        .collect();
    assert!(matches!(
        fail_with(&more, &config),
        ResolveError::PoolExhausted {
            pool: Pool::ServiceCidr(_),
            ..
        }
    ));
}

#[test]
fn conflicting_declarations_are_refused() {
    let two_ips = [
        service("a", &format!("{PORT_80}\n  clusterIP: 10.96.5.5")),
        service("b", &format!("{PORT_80}\n  clusterIP: 10.96.5.5")),
    ]
    .concat();
    assert!(matches!(fail(&two_ips), ResolveError::AddressInUse { .. }));
    let np = |name: &str| {
        service(
            name,
            "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 30080}]",
        )
    };
    match fail(&[np("a"), np("b")].concat()) {
        ResolveError::NodePortInUse {
            port,
            service,
            owner,
        } => {
            assert_eq!(
                (port, service.name.as_str(), owner.name.as_str()),
                (30080, "b", "a")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn node_ports_health_checks_and_load_balancer_ips() {
    let yaml = [
        service("np", "  type: NodePort\n  selector: {app: web}\n  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 31000}]"),
        service("lb", "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: web}\n  ports: [{port: 80}]"),
        service("lb2", "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80}]"),
        service("asked", "  type: LoadBalancer\n  loadBalancerIP: 172.18.255.77\n  selector: {app: web}\n  ports: [{port: 80}]"),
        format!(
            "{}status: {{loadBalancer: {{ingress: [{{ip: 203.0.113.9}}]}}}}\n",
            service("given", "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80}]")
        ),
        service("nolbports", "  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  selector: {app: web}\n  ports: [{port: 80}]"),
    ]
    .concat();
    let state = run(&yaml);
    let get = |n: &str| {
        state
            .service(&ServiceRef::new("default", n))
            .expect("service")
    };
    let range = 30000..=32767;
    let np = get("np");
    assert!(
        np.ports
            .iter()
            .all(|p| p.node_port.is_some_and(|n| range.contains(&n)))
    );
    assert_eq!(np.ports[1].node_port, Some(31000));
    assert!(
        get("lb")
            .health_check_node_port
            .is_some_and(|n| range.contains(&n))
    );
    assert_eq!(get("lb2").health_check_node_port, None);
    assert!(get("nolbports").ports[0].node_port.is_none());
    // (service, ingress IPs): the pool hands out from its first host, in service order.
    let cases = [
        ("asked", vec![ip("172.18.255.77")]),
        ("given", vec![ip("203.0.113.9")]),
        ("lb", vec![ip("172.18.255.1")]),
        ("lb2", vec![ip("172.18.255.2")]),
        ("nolbports", vec![ip("172.18.255.3")]),
    ];
    for (name, want) in cases {
        assert_eq!(get(name).load_balancer_ips, want, "{name}");
    }
    let mut all: Vec<u16> = state
        .services()
        .flat_map(|s| {
            s.ports
                .iter()
                .filter_map(|p| p.node_port)
                .chain(s.health_check_node_port)
        })
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a nodePort was handed out twice");
}

#[test]
fn ip_families_are_defaulted_and_checked_as_the_api_server_does() {
    // (case, spec lines, config, expected ipFamilies and policy or error)
    type Want = Result<(&'static [&'static str], &'static str), ()>;
    let cases: [(&str, &str, ClusterConfig, Want); 7] = [
        (
            "default single stack",
            "",
            ClusterConfig::default(),
            Ok((&["IPv4"], "SingleStack")),
        ),
        (
            "prefer on single-stack",
            "  ipFamilyPolicy: PreferDualStack",
            ClusterConfig::default(),
            Ok((&["IPv4"], "PreferDualStack")),
        ),
        (
            "require on single-stack",
            "  ipFamilyPolicy: RequireDualStack",
            ClusterConfig::default(),
            Err(()),
        ),
        (
            "v6 on a v4 cluster",
            "  ipFamilies: [IPv6]",
            ClusterConfig::default(),
            Err(()),
        ),
        (
            "require on dual-stack",
            "  ipFamilyPolicy: RequireDualStack",
            dual_stack(),
            Ok((&["IPv4", "IPv6"], "RequireDualStack")),
        ),
        (
            "v6 first",
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6, IPv4]",
            dual_stack(),
            Ok((&["IPv6", "IPv4"], "PreferDualStack")),
        ),
        (
            "two families need a dual policy",
            "  ipFamilies: [IPv4, IPv6]",
            dual_stack(),
            Err(()),
        ),
    ];
    for (case, extra, config, want) in cases {
        let yaml = service("s", &format!("{PORT_80}\n{extra}"));
        match (resolve(netd_testkit::objects(&yaml), &config, None), want) {
            (Ok(state), Ok((families, policy))) => {
                let spec = service_obj(&state, "default", "s")
                    .spec
                    .clone()
                    .expect("spec");
                let got: Vec<String> = spec.ip_families.clone().unwrap_or_default();
                assert_eq!(
                    got,
                    families.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                    "{case}"
                );
                assert_eq!(spec.ip_family_policy.as_deref(), Some(policy), "{case}");
                assert_eq!(
                    spec.cluster_ips.map(|c| c.len()),
                    Some(families.len()),
                    "{case}"
                );
            }
            (Err(ResolveError::IpFamiliesRejected { .. }), Err(())) => {}
            (got, want) => panic!("{case}: got {:?}, want {want:?}", got.map(|_| "a state")),
        }
    }
}

#[test]
fn headless_services_without_selector_get_every_family() {
    let state = run(&service("ext", "  clusterIP: None\n  ports: [{port: 80}]"));
    let spec = service_obj(&state, "default", "ext")
        .spec
        .clone()
        .expect("spec");
    assert_eq!(
        spec.ip_families,
        Some(vec!["IPv4".to_owned(), "IPv6".to_owned()])
    );
    assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
}

#[test]
fn external_name_services_get_no_cluster_ip_and_no_slices() {
    let yaml = [
        service("ext", "  type: ExternalName\n  externalName: example.com"),
        pod("a", ""),
    ]
    .concat();
    let state = run(&yaml);
    let svc = state
        .service(&ServiceRef::new("default", "ext"))
        .expect("service");
    assert!(svc.cluster_ips.is_empty());
    assert!(slices_of(&state, "default", "ext").is_empty());
}

fn conditions(state: &ClusterState, svc: &str, pod_name: &str) -> (bool, bool, bool) {
    let want = PodRef::new("default", pod_name);
    let e = slices_of(state, "default", svc)
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .find(|e| e.pod.as_ref() == Some(&want))
        .unwrap_or_else(|| panic!("no endpoint for {pod_name}"));
    (
        e.conditions.ready,
        e.conditions.serving,
        e.conditions.terminating,
    )
}

#[test]
fn endpoint_conditions_follow_the_pods() {
    let pods = [
        pod("ready", ""),
        pod(
            "unready",
            "status: {conditions: [{type: Ready, status: \"False\"}]}",
        ),
        pod("leaving", "").replace(
            "labels: {app: web}}",
            "labels: {app: web}, deletionTimestamp: \"2024-01-01T00:00:00Z\"}",
        ),
        pod("done", "status: {phase: Failed}"),
    ]
    .concat();
    let yaml = [
        pods,
        service("web", PORT_80),
        service(
            "publish",
            &format!("{PORT_80}\n  publishNotReadyAddresses: true"),
        ),
    ]
    .concat();
    let state = run(&yaml);
    // (service, pod, (ready, serving, terminating))
    let cases = [
        ("web", "ready", (true, true, false)),
        ("web", "unready", (false, false, false)),
        ("web", "leaving", (false, true, true)),
        ("publish", "unready", (true, false, false)),
        ("publish", "leaving", (true, true, true)),
    ];
    for (svc, p, want) in cases {
        assert_eq!(conditions(&state, svc, p), want, "{svc} {p}");
    }
    let done = PodRef::new("default", "done");
    assert!(
        slices_of(&state, "default", "web")
            .iter()
            .all(|s| s.endpoints.iter().all(|e| e.pod.as_ref() != Some(&done)))
    );
}

#[test]
fn named_target_ports_are_resolved_per_pod_and_protocol() {
    let with_ports = |name: &str, ports: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  containers: [{{name: c, image: i, ports: {ports}}}]\n"
        )
    };
    let yaml = [
        with_ports("a", "[{name: http, containerPort: 8080}]"),
        with_ports("b", "[{name: http, containerPort: 8080}]"),
        with_ports("c", "[{name: http, containerPort: 9090}]"),
        with_ports("udp", "[{name: http, containerPort: 7070, protocol: UDP}]"),
        service(
            "web",
            "  selector: {app: web}\n  ports: [{name: web, port: 80, targetPort: http}]",
        ),
    ]
    .concat();
    let state = run(&yaml);
    let slices = slices_of(&state, "default", "web");
    // (port numbers of the slice, pods in it); the UDP-only Pod has no TCP "http" port, so
    // it is in a slice without ports.
    let mut got: Vec<(Vec<u16>, Vec<String>)> = slices
        .iter()
        .map(|s| {
            let mut pods: Vec<String> = s
                .endpoints
                .iter()
                .filter_map(|e| e.pod.as_ref())
                .map(|p| p.name.clone())
                .collect();
            pods.sort();
            (s.ports.iter().map(|p| p.port).collect(), pods)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (vec![], vec!["udp".to_owned()]),
            (vec![8080], vec!["a".to_owned(), "b".to_owned()]),
            (vec![9090], vec!["c".to_owned()]),
        ]
    );
}

#[test]
fn endpoints_carry_node_zone_hostname_and_target() {
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: db}}
spec: {hostname: other, subdomain: elsewhere, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, labels: {team: data}}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
"#;
    let state = run(yaml);
    let slices = slices_of(&state, "default", "db");
    assert_eq!(slices.len(), 1);
    let endpoint = |name: &str| {
        slices[0]
            .endpoints
            .iter()
            .find(|e| e.pod.as_ref().is_some_and(|p| p.name == name))
            .expect("endpoint")
    };
    let db0 = endpoint("db-0");
    assert_eq!(db0.hostname.as_deref(), Some("db-0"));
    assert_eq!(db0.node.as_ref().map(|n| n.as_str()), Some("n1"));
    assert_eq!(db0.zone.as_deref(), Some("zone-a"));
    assert_eq!(endpoint("other").hostname, None);
    let raw = match state.object(&id(
        Kind::EndpointSlice,
        "default",
        slices[0].key.name.as_str(),
    )) {
        Some(Object::EndpointSlice(s)) => s.clone(),
        other => panic!("no slice: {other:?}"),
    };
    let labels = raw.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("db")
    );
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(CONTROLLER_NAME)
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("data"));
    assert!(labels.contains_key("service.kubernetes.io/headless"));
    let name = raw.metadata.name.clone().expect("name");
    assert!(
        name.starts_with("db-") && name.len() == "db-".len() + 5,
        "{name}"
    );
    let target = raw.endpoints[0].target_ref.clone().expect("targetRef");
    let pod_uid = pod_obj(&state, "default", target.name.as_deref().expect("name"))
        .metadata
        .uid
        .clone();
    assert_eq!(target.uid, pod_uid);
    assert_eq!(target.kind.as_deref(), Some("Pod"));
}

#[test]
fn slices_hold_at_most_100_endpoints_and_one_family_each() {
    let config = ClusterConfig {
        node_cidr_prefix_v4: 22,
        ..dual_stack()
    };
    let yaml: String = (0..250)
        .map(|i| pod(&format!("p{i}"), ""))
        .chain([service(
            "web",
            &format!("{PORT_80}\n  ipFamilyPolicy: RequireDualStack"),
        )])
        .collect();
    let state = run_with(&yaml, &config);
    let slices = slices_of(&state, "default", "web");
    let mut sizes: Vec<(String, usize)> = slices
        .iter()
        .map(|s| (format!("{:?}", s.address_type), s.endpoints.len()))
        .collect();
    sizes.sort();
    let want: Vec<(String, usize)> = [
        ("IPv4", 50),
        ("IPv4", 100),
        ("IPv4", 100),
        ("IPv6", 50),
        ("IPv6", 100),
        ("IPv6", 100),
    ]
    .iter()
    .map(|(f, n)| ((*f).to_owned(), *n))
    .collect();
    assert_eq!(sizes, want);
}

#[test]
fn a_service_without_endpoints_gets_an_empty_placeholder_slice() {
    let state = run(&service(
        "lonely",
        "  selector: {app: nobody}\n  ports: [{port: 80}]",
    ));
    let slices = slices_of(&state, "default", "lonely");
    assert_eq!(slices.len(), 1);
    assert!(slices[0].endpoints.is_empty());
}

#[test]
fn selectorless_services_keep_their_slices_and_managed_slices_are_replaced() {
    let yaml = [
        pod("a", ""),
        service("manual", "  ports: [{port: 80}]"),
        service("web", PORT_80),
        r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints: [{addresses: [192.0.2.10]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-stale
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
endpoints: [{addresses: [192.0.2.99]}]
"#
        .to_owned(),
    ]
    .concat();
    let state = run(&yaml);
    let manual = slices_of(&state, "default", "manual");
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].key.name, "manual-1");
    assert_eq!(manual[0].endpoints[0].addresses, vec![ip("192.0.2.10")]);
    let web = slices_of(&state, "default", "web");
    assert_eq!(web.len(), 1);
    assert_ne!(web[0].key.name, "web-stale");
    assert_eq!(web[0].endpoints.len(), 1);
}

#[test]
fn traffic_distribution_sets_zone_hints() {
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {trafficDistribution: PreferClose, selector: {app: web}, ports: [{port: 80}]}
"#;
    let state = run(yaml);
    let slices = slices_of(&state, "default", "web");
    assert_eq!(
        slices[0].endpoints[0].zone_hints,
        Some(vec!["zone-a".to_owned()])
    );
}

fn raw_slices(state: &ClusterState) -> Vec<discovery::EndpointSlice> {
    state
        .objects()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn slice_names_are_stable_from_run_to_run() {
    let names = |s: &ClusterState| {
        raw_slices(s)
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&run(HOSTNAMES)), names(&run(HOSTNAMES)));
}

#[test]
fn allocations_are_sticky_when_more_objects_are_applied() {
    let config = ClusterConfig::default();
    let first_yaml = [
        HOSTNAMES.to_owned(),
        pod("zz", ""),
        service("np", "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: web}\n  ports: [{port: 80}]"),
    ]
    .concat();
    let first = resolve(netd_testkit::objects(&first_yaml), &config, None).expect("first");
    // New objects that sort before the old ones and would take their values on a fresh run.
    let more = [
        first_yaml.replace("replicas: 3", "replicas: 5"),
        pod("aa", ""),
        service("aaa", "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80}]"),
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-0}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n".to_owned(),
    ]
    .concat();
    let second = resolve(netd_testkit::objects(&more), &config, Some(&first)).expect("second");
    for node in first.nodes() {
        let now = second.node(node.name.as_str()).expect("node kept");
        assert_eq!(
            (&now.internal_ips, &now.pod_cidrs),
            (&node.internal_ips, &node.pod_cidrs),
            "{}",
            node.name
        );
    }
    for p in first.pods() {
        let now = second.pod(&p.key).expect("pod kept");
        assert_eq!((&now.node, &now.ips), (&p.node, &p.ips), "{}", p.key);
    }
    for s in first.services() {
        let now = second.service(&s.key).expect("service kept");
        let node_ports =
            |x: &netd_model::view::Service| x.ports.iter().map(|p| p.node_port).collect::<Vec<_>>();
        assert_eq!(now.cluster_ips, s.cluster_ips, "{}", s.key);
        assert_eq!(node_ports(now), node_ports(s), "{}", s.key);
        assert_eq!(
            now.health_check_node_port, s.health_check_node_port,
            "{}",
            s.key
        );
        assert_eq!(now.load_balancer_ips, s.load_balancer_ips, "{}", s.key);
    }
    assert_eq!(
        second
            .pods()
            .filter(|p| p.key.name.starts_with("hostnames-"))
            .count(),
        5
    );
    // Without the previous state, the newcomers would have taken node-1's address and the
    // first load-balancer IP.
    let fresh = resolve(netd_testkit::objects(&more), &config, None).expect("fresh");
    assert_ne!(
        fresh.node("node-1").expect("node").internal_ips,
        first.node("node-1").expect("node").internal_ips
    );
}

#[test]
fn scaling_down_keeps_the_surviving_pods() {
    let config = ClusterConfig::default();
    let first = resolve(netd_testkit::objects(HOSTNAMES), &config, None).expect("first");
    let second = resolve(
        netd_testkit::objects(&HOSTNAMES.replace("replicas: 3", "replicas: 2")),
        &config,
        Some(&first),
    )
    .expect("second");
    let survivors: Vec<_> = second.pods().collect();
    assert_eq!(survivors.len(), 2);
    for p in survivors {
        let before = first.pod(&p.key).expect("survivor existed");
        assert_eq!((&p.node, &p.ips), (&before.node, &before.ips));
    }
    let slice = &slices_of(&second, "default", "hostnames")[0];
    assert_eq!(slice.endpoints.len(), 2);
}

#[test]
fn invalid_input_is_refused_before_anything_is_resolved() {
    let bad = pod("a", "status: {podIP: not-an-ip}");
    assert!(matches!(fail(&bad), ResolveError::InvalidInput(_)));
}

#[test]
fn every_conflict_and_bad_template_has_its_error() {
    let first = run(HOSTNAMES);
    let generated = first.pods().next().expect("a pod").key.name.clone();
    let taken = format!("{HOSTNAMES}{}", pod(&generated, ""));
    let two_nodes_one_ip = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.9}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.9}]}\n";
    let overlapping_cidrs = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nspec: {podCIDR: 10.244.0.0/23}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {podCIDR: 10.244.1.0/24}\n";
    let bad_template = HOSTNAMES.replace(
        "image: registry.k8s.io/serve_hostname",
        "image: x\n        ports: [{containerPort: 0}]",
    );
    // (case, input, check)
    type Check = fn(&ResolveError) -> bool;
    let cases: [(&str, String, Check); 4] = [
        ("generated pod name declared", taken, |e| {
            matches!(e, ResolveError::PodNameTaken { .. })
        }),
        (
            "two nodes, one InternalIP",
            two_nodes_one_ip.to_owned(),
            |e| matches!(e, ResolveError::AddressInUse { object, owner, .. } if object.name == "b" && owner.name == "a"),
        ),
        (
            "overlapping podCIDRs",
            overlapping_cidrs.to_owned(),
            |e| matches!(e, ResolveError::PodCidrInUse { node, owner, .. } if node.as_str() == "b" && owner.as_str() == "a"),
        ),
        ("invalid template port", bad_template, |e| {
            matches!(e, ResolveError::BuildStateFailed(_))
        }),
    ];
    for (case, yaml, check) in cases {
        let e = fail(&yaml);
        assert!(check(&e), "{case}: {e:?}");
    }
}

#[test]
fn a_port_served_over_two_protocols_gets_one_node_port() {
    let state = run(&service(
        "dns",
        "  type: NodePort\n  selector: {app: dns}\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}, {name: metrics, port: 9153}]",
    ));
    let svc = state
        .service(&ServiceRef::new("default", "dns"))
        .expect("service");
    let ports: Vec<Option<u16>> = svc.ports.iter().map(|p| p.node_port).collect();
    assert!(ports.iter().all(Option::is_some), "{ports:?}");
    assert_eq!(ports[0], ports[1]);
    assert_ne!(ports[0], ports[2]);
}
