//! A Pod labelled `kube-netd.io/workload: dns` runs the cluster DNS server instead of the echo
//! server: it watches the lab's API, answers from inside the lab, follows changes made with
//! `Lab::apply` (published, then synced into the API the server watches), and goes away with
//! the lab. Needs root; asks the DNS Pod directly (no Service rules involved).

mod common;

use std::collections::BTreeSet;

use netd_lab::{Lab, Place};

use common::*;

const DNS_POD_IP: &str = "10.244.1.10";

/// The DNS Pod on node-1, a client on node-2, and a Service `x/web`.
const CLUSTER: &str = concat!(
    netd_testkit::two_nodes!(),
    r#"apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns, kube-netd.io/workload: dns}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53}]}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}
"#
);

const API: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: x}
spec: {clusterIP: 10.96.5.6, ports: [{name: http, port: 80}]}
"#;

/// Tries of a query whose answer must follow a change (the API's watch, then the zone).
const FOLLOW_TRIES: usize = 100;

/// `dig +short` from x/a to the DNS Pod: the answer's lines.
fn dig(lab: &Lab, args: &[&str]) -> BTreeSet<String> {
    let from: Place = "x/a".parse().expect("place");
    let out = lab
        .command(&from, "dig")
        .expect("command")
        .args(["+short", "+time=2", "+tries=2", &format!("@{DNS_POD_IP}")])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// [`dig`] until the answer is `want`, a bounded number of times; the last answer.
fn dig_until(lab: &Lab, args: &[&str], want: &BTreeSet<String>) -> BTreeSet<String> {
    let mut got = dig(lab, args);
    for _ in 0..FOLLOW_TRIES {
        if &got == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = dig(lab, args);
    }
    got
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_dns_workload_answers_follows_changes_and_goes_with_the_lab() {
    let name = lab_name("dns");
    let mut options = options(&name);
    // The DNS Pod watches the lab's API.
    options.api_server = true;
    let lab = Lab::up(options, objects(CLUSTER), netd_lab::resolved_as_given()).expect("lab up");

    // The first lists may still be under way when `up` returns.
    let web = set(&["10.96.5.5"]);
    assert_eq!(dig_until(&lab, &["web.x.svc.cluster.local"], &web), web);
    assert_eq!(
        dig(&lab, &["+tcp", "+search", "web"]),
        web,
        "TCP, and the pod's search path"
    );
    assert_eq!(
        dig(&lab, &["-x", "10.96.5.5"]),
        set(&["web.x.svc.cluster.local."])
    );

    lab.apply(objects(API)).expect("apply");
    let api = set(&["10.96.5.6"]);
    assert_eq!(dig_until(&lab, &["api.x.svc.cluster.local"], &api), api);

    lab.down().expect("down");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}
