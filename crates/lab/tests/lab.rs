//! The lab end to end, with real namespaces and packets. Needs root; every test builds its own
//! lab (unique name, private state root) and removes it on drop, even when an assertion fails.

mod common;

use std::time::Duration;

use netd_lab::{Action, Outcome, Place, ProbeProtocol, ProbeSpec, Target};
use netd_model::{Kind, ObjectId, PodRef, Protocol};

use common::*;

fn spec(protocol: ProbeProtocol, port: Option<u16>) -> ProbeSpec {
    ProbeSpec {
        port,
        protocol,
        count: 1,
        timeout: Duration::from_millis(700),
        family: None,
    }
}

fn pod(s: &str) -> Place {
    s.parse().expect("place")
}

fn target(s: &str) -> Target {
    s.parse().expect("target")
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_see_true_outcomes() {
    let name = lab_name("flat");
    let lab = up(&name, CLUSTER);

    // ICMP across nodes, flat: no NAT anywhere.
    let ping = lab
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Icmp, None),
        )
        .expect("ping");
    assert_eq!(ping[0].outcome, Outcome::Connected, "{}", ping[0]);
    assert_eq!(ping[0].port, None);

    // TCP and UDP echo name the serving pod and the client address it saw.
    for (protocol, port) in [(ProbeProtocol::Tcp, 80), (ProbeProtocol::Udp, 53)] {
        let r = lab
            .probe(&pod("x/a"), &target("x/b"), &spec(protocol, Some(port)))
            .expect("probe");
        assert_eq!(r[0].outcome, Outcome::Connected, "{}", r[0]);
        assert_eq!(r[0].served_by.as_deref(), Some("x/b"));
        assert_eq!(r[0].client_ip_seen, Some("10.244.1.2".parse().expect("ip")));
    }
    // Same node, through the bridge.
    let r = lab
        .probe(
            &pod("x/a"),
            &target("x/c"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("x/c"));

    // A closed port is refused, for TCP (RST) and UDP (ICMP port unreachable).
    let r = lab
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Tcp, Some(81)),
        )
        .expect("probe");
    assert_eq!(r[0].outcome, Outcome::Refused, "{}", r[0]);
    let r = lab
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Udp, Some(54)),
        )
        .expect("probe");
    assert_eq!(r[0].outcome, Outcome::Refused, "{}", r[0]);

    // A DROP rule loaded into the destination pod makes it a timeout.
    let b_ns = lab.netns_of(&pod("x/b")).expect("netns");
    netd_kernel::rules::iptables_restore(
        &b_ns,
        "*filter\n-A INPUT -p tcp --dport 80 -j DROP\nCOMMIT\n",
    )
    .expect("load drop rule");
    let r = lab
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].outcome, Outcome::Timeout, "{}", r[0]);
    assert_eq!(r[0].served_by, None);

    // The matrix shows exactly that column blocked.
    let m = lab
        .matrix(80, Protocol::Tcp, &[], Duration::from_millis(500), None)
        .expect("matrix");
    let (a, b, c) = (
        PodRef::new("x", "a"),
        PodRef::new("x", "b"),
        PodRef::new("x", "c"),
    );
    assert_eq!(m.pods(), &[a.clone(), b.clone(), c.clone()]);
    for from in [&a, &b, &c] {
        assert_eq!(m.allowed(from, &b), Some(false), "{from} -> x/b");
        assert_eq!(m.allowed(from, &c), Some(true), "{from} -> x/c");
    }

    // Nodes reach pods; external reaches node IPs but has no route to pod IPs.
    let r = lab
        .probe(
            &Place::Node("node-2".into()),
            &target("x/a"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(
        r[0].client_ip_seen,
        Some("172.18.0.3".parse().expect("ip")),
        "{}",
        r[0]
    );
    let r = lab
        .probe(
            &Place::External,
            &target("node/node-1"),
            &spec(ProbeProtocol::Icmp, None),
        )
        .expect("probe");
    assert_eq!(r[0].outcome, Outcome::Connected, "{}", r[0]);
    let r = lab
        .probe(
            &Place::External,
            &target("x/a"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].outcome, Outcome::Unreachable, "{}", r[0]);

    // Pods get the cluster's resolv.conf.
    let out = lab
        .command(&pod("x/a"), "cat")
        .expect("cmd")
        .arg("/etc/resolv.conf")
        .output()
        .expect("cat");
    let resolv = String::from_utf8_lossy(&out.stdout);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search x.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    lab.down().expect("down");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn apply_and_delete_reconcile_pods() {
    let name = lab_name("crud");
    let lab = up(&name, CLUSTER);
    let d = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: y}\nspec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 8080}]}]}\nstatus: {podIP: 10.244.2.9}\n";
    let changes = lab.apply(objects(d)).expect("apply");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, Action::Created);
    assert_eq!(changes[0].to_string(), "pod/d created (namespace y)");
    let desired = lab.desired().expect("desired");
    assert!(
        desired
            .iter()
            .any(|o| o.namespace() == "y" && o.name() == "d")
    );
    assert_eq!(desired.len(), 6, "the five objects of CLUSTER and y/d");
    let r = lab
        .probe(
            &pod("x/a"),
            &target("y/d"),
            &spec(ProbeProtocol::Tcp, Some(8080)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("y/d"), "{}", r[0]);
    assert_eq!(
        lab.apply(objects(d)).expect("apply")[0].action,
        Action::Unchanged
    );

    // Changing the pod's IP rebuilds it at the new address.
    let moved = d.replace("10.244.2.9", "10.244.2.10");
    assert_eq!(
        lab.apply(objects(&moved)).expect("apply")[0].action,
        Action::Configured
    );
    let r = lab
        .probe(
            &pod("x/a"),
            &target("10.244.2.10"),
            &spec(ProbeProtocol::Tcp, Some(8080)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("y/d"), "{}", r[0]);

    let id = ObjectId {
        kind: Kind::Pod,
        namespace: "y".into(),
        name: "d".into(),
    };
    let changes = lab.delete(std::slice::from_ref(&id)).expect("delete");
    assert_eq!(changes[0].action, Action::Deleted);
    assert!(!netd_kernel::netns::exists(&format!("{name}-pod-y.d")));
    let r = lab
        .probe(
            &pod("x/a"),
            &target("10.244.2.10"),
            &spec(ProbeProtocol::Tcp, Some(8080)),
        )
        .expect("probe");
    assert_ne!(r[0].outcome, Outcome::Connected, "{}", r[0]);
    assert_eq!(
        lab.delete(&[id]).expect("delete")[0].action,
        Action::NotFound
    );
    drop(lab);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn two_labs_coexist_with_the_same_addresses() {
    let (n1, n2) = (lab_name("one"), lab_name("two"));
    let one = up(&n1, CLUSTER);
    let two = up(&n2, CLUSTER);
    for lab in [&one, &two] {
        let r = lab
            .probe(
                &pod("x/a"),
                &target("x/b"),
                &spec(ProbeProtocol::Tcp, Some(80)),
            )
            .expect("probe");
        assert_eq!(r[0].served_by.as_deref(), Some("x/b"), "{}", r[0]);
    }
    drop(one);
    assert_eq!(leftovers(&n1), Vec::<String>::new());
    let r = two
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(
        r[0].outcome,
        Outcome::Connected,
        "the second lab survives the first's removal"
    );
    drop(two);
    assert_eq!(leftovers(&n2), Vec::<String>::new());
}

#[test]
fn a_killed_echo_server_is_restarted() {
    let name = lab_name("heal");
    let lab = up(&name, CLUSTER);
    let ns = lab.netns_of(&pod("x/b")).expect("netns");
    let before = netd_kernel::netns::exec(&ns, &["ss", "-Htlnp"]).expect("ss");
    let listing = String::from_utf8_lossy(&before.stdout).into_owned();
    let pid: u32 = listing
        .split("pid=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no listener pid in {listing:?}"));
    let marker = lab.state_dir().to_string_lossy().into_owned();
    assert!(netd_kernel::process::kill_if_ours(pid, &marker).expect("kill"));
    let mut outcome = Outcome::Refused;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        outcome = lab
            .probe(
                &pod("x/a"),
                &target("x/b"),
                &spec(ProbeProtocol::Tcp, Some(80)),
            )
            .expect("probe")[0]
            .outcome;
        if outcome == Outcome::Connected {
            break;
        }
    }
    assert_eq!(outcome, Outcome::Connected);
}

#[test]
fn programmed_rules_apply_before_convergence_and_hairpin_works() {
    let name = lab_name("rules");
    let lab = up(&name, CLUSTER);
    // A Service-like DNAT of 10.96.0.100:80 to x/a on both Nodes, masquerading the hairpin
    // case (x/a reaching itself) as kube-proxy does.
    let rules = "*nat\n:NETD-TEST - [0:0]\n-A PREROUTING -j NETD-TEST\n\
        -A NETD-TEST -d 10.96.0.100/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.1.2:80\n\
        -A POSTROUTING -s 10.244.1.2/32 -d 10.244.1.2/32 -j MASQUERADE\nCOMMIT\n";
    let dir = lab.state_dir().join("test-rules");
    std::fs::create_dir_all(&dir).expect("rules dir");
    for node in ["node-1", "node-2"] {
        std::fs::write(dir.join(format!("{node}.rules")), rules).expect("rules");
    }
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: trigger}\n";
    lab.apply(objects(ns))
        .expect("apply returns once the rules are programmed");

    let r = lab
        .probe(
            &pod("x/b"),
            &target("10.96.0.100"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("x/a"), "{}", r[0]);
    assert_eq!(
        r[0].client_ip_seen,
        Some("10.244.2.2".parse().expect("ip")),
        "no NAT across nodes"
    );
    let r = lab
        .probe(
            &pod("x/a"),
            &target("10.96.0.100"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("x/a"), "hairpin: {}", r[0]);
    assert_eq!(
        r[0].client_ip_seen,
        Some("10.244.1.1".parse().expect("ip")),
        "hairpin is masqueraded"
    );
}

#[test]
fn host_network_pods_serve_from_their_node() {
    let name = lab_name("hostnet");
    let h = "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {nodeName: node-2, hostNetwork: true, containers: [{name: c, image: i, ports: [{containerPort: 9090}]}]}\nstatus: {podIP: 172.18.0.3}\n";
    let lab = up(&name, &format!("{CLUSTER}---\n{h}"));
    let r = lab
        .probe(
            &pod("x/a"),
            &target("node/node-2"),
            &spec(ProbeProtocol::Tcp, Some(9090)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("x/h"), "{}", r[0]);
    let r = lab
        .probe(
            &pod("x/h"),
            &target("x/a"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(
        r[0].client_ip_seen,
        Some("172.18.0.3".parse().expect("ip")),
        "{}",
        r[0]
    );
    assert_eq!(
        lab.netns_of(&pod("x/h")).expect("netns"),
        format!("{name}-node-2")
    );
}

#[test]
fn external_routes_only_service_external_and_load_balancer_ips() {
    let name = lab_name("ext");
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {selector: {pod: b}, clusterIP: 10.96.0.50, externalIPs: [198.51.100.7], ports: [{port: 80}], type: LoadBalancer}
status: {loadBalancer: {ingress: [{ip: 172.18.255.9}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 80, protocol: TCP, name: ""}]
endpoints: [{addresses: [10.244.2.2], nodeName: node-2}]
"#;
    let lab = up(&name, &format!("{CLUSTER}---\n{svc}"));
    let ext = lab.names().external_ns();
    let routes = || {
        let out = netd_kernel::netns::exec(&ext, &["ip", "-o", "route"]).expect("routes");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = routes();
    // Towards the node with the endpoint, as a MetalLB speaker would announce.
    assert!(table.contains("198.51.100.7 via 172.18.0.3"), "{table}");
    assert!(table.contains("172.18.255.9 via 172.18.0.3"), "{table}");
    assert!(
        !table.contains("10.244.") && !table.contains("10.96."),
        "{table}"
    );
    let r = lab
        .probe(
            &Place::External,
            &target("svc/x/s"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(
        r[0].outcome,
        Outcome::Unreachable,
        "no route to ClusterIPs: {}",
        r[0]
    );

    let id = |kind, name: &str| ObjectId {
        kind,
        namespace: "x".into(),
        name: name.into(),
    };
    lab.delete(&[id(Kind::Service, "s"), id(Kind::EndpointSlice, "s-1")])
        .expect("delete");
    let table = routes();
    assert!(
        !table.contains("198.51.100.7") && !table.contains("172.18.255.9"),
        "{table}"
    );
}

#[test]
fn a_programmer_fault_fails_the_change_quickly_and_names_the_node() {
    let name = lab_name("fault");
    let lab = up(&name, CLUSTER);
    let dir = lab.state_dir().join("test-rules");
    std::fs::create_dir_all(&dir).expect("rules dir");
    std::fs::write(
        dir.join("node-2.rules"),
        "*filter\n-A NOPE -j DROP\nCOMMIT\n",
    )
    .expect("rules");
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: trigger}\n";
    let err = lab
        .apply(objects(ns))
        .expect_err("node-2 cannot program its rules");
    let text = err.to_string();
    assert!(
        text.contains("node-2") && text.contains("iptables-restore"),
        "{text}"
    );
    assert!(!text.contains("node-1:"), "node-1 converged: {text}");
    assert!(
        !lab.converged().expect("records"),
        "node-2 has not programmed the latest generation"
    );

    // Fixing the rules lets the agent converge on the next change.
    std::fs::remove_file(dir.join("node-2.rules")).expect("remove");
    let ns2 = "apiVersion: v1\nkind: Namespace\nmetadata: {name: trigger2}\n";
    lab.apply(objects(ns2)).expect("converges again");
    assert!(lab.converged().expect("records"), "every Node converged");
}

#[test]
fn a_failed_up_removes_what_it_built() {
    let name = lab_name("fail");
    let mut options = options(&name);
    options.program = vec!["/nonexistent/helper".into()];
    let err = netd_lab::Lab::up(options, objects(CLUSTER), netd_lab::resolved_as_given())
        .expect_err("agents cannot start");
    assert!(err.to_string().contains("agent of node node-1"), "{err}");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// The agents' PIDs recorded in the lab's state, by Node.
fn recorded_agents(lab: &netd_lab::Lab) -> std::collections::BTreeMap<String, u32> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("lab.json")).expect("lab.json"))
            .expect("lab.json is JSON");
    json["agents"]
        .as_object()
        .expect("agents by node")
        .iter()
        .map(|(node, pid)| {
            let pid = pid
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .expect("pid");
            (node.clone(), pid)
        })
        .collect()
}

#[test]
fn a_restarted_agent_is_recorded_and_the_lab_stays_managed() {
    let name = lab_name("restart");
    let lab = up(&name, CLUSTER);
    let before = recorded_agents(&lab);
    let node = netd_model::NodeName::new("node-2");
    lab.restart_agent(&node)
        .expect("restart the agent of node-2");
    let after = recorded_agents(&lab);
    assert_eq!(
        after["node-1"], before["node-1"],
        "node-1's agent untouched"
    );
    assert_ne!(after["node-2"], before["node-2"], "a new agent is recorded");
    assert!(!netd_kernel::process::is_alive(before["node-2"]));
    assert!(netd_kernel::process::is_alive(after["node-2"]));

    // The new agent adopted node-2's Pod and its echo server.
    let r = lab
        .probe(
            &pod("x/a"),
            &target("x/b"),
            &spec(ProbeProtocol::Tcp, Some(80)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("x/b"), "{}", r[0]);

    // And it follows the next change: a new Pod on its Node is built and served.
    let d = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: y}\nspec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 8080}]}]}\nstatus: {podIP: 10.244.2.9}\n";
    let changes = lab.apply(objects(d)).expect("apply after the restart");
    assert_eq!(changes[0].action, Action::Created);
    let r = lab
        .probe(
            &pod("x/a"),
            &target("y/d"),
            &spec(ProbeProtocol::Tcp, Some(8080)),
        )
        .expect("probe");
    assert_eq!(r[0].served_by.as_deref(), Some("y/d"), "{}", r[0]);

    assert!(matches!(
        lab.restart_agent(&netd_model::NodeName::new("node-9")),
        Err(netd_lab::LabError::UnknownTarget { what: "node", .. })
    ));
    lab.down().expect("down");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}
