//! Cluster DNS inside the lab, through the binary, with real namespaces (needs root and
//! `/usr/bin/kubectl`): the built-in `kube-system/coredns` Pod runs kube-netd's DNS server,
//! watching the lab's Kubernetes API, and Pods find Services with `dig` and with their own
//! resolver (`getent`), by short name, `name.namespace` and full name; what kubectl changes
//! (a scaled Deployment behind a headless Service, a new or deleted Service) is answered once
//! the watch has brought it, polled for a bounded number of tries.
//!
//! `lab_dns_pod_answers_inside_the_lab` asks the DNS Pod directly and needs nothing else. It
//! prints how long a Service applied with kubectl takes to be answered (from kubectl's
//! acknowledgement to the first answer, in `dig`s, each one `lab exec`, whose own time it
//! prints beside).
//! `lab_dns_service_ip_answers_through_resolv_conf` goes through the cluster DNS Service IP
//! (10.96.0.10), so it needs the agents' Service rules; it fails, saying so, when that address
//! does not answer.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

// Shared by the lab tests; this one does not use `TestLab::fails`.
#[allow(dead_code)]
mod common;
#[path = "common/kubectl.rs"]
mod kubectl;

use common::TestLab;
use kubectl::Kubectl;
const DNS_SERVICE_IP: &str = "10.96.0.10";
/// Tries of a query whose answer must follow a change (the API's watch, then the zone).
const FOLLOW_TRIES: usize = 100;
/// A Service applied with kubectl while the lab runs.
const LATE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: late, namespace: default}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
"#;

/// A ClusterIP Service `web` in `default` and another in `other`, a headless Service `hl`
/// over a Deployment of three, and a client Pod.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: other, labels: {app: web}}
spec: {containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: hl, namespace: default}
spec: {clusterIP: None, selector: {app: hl}, ports: [{name: http, port: 80}]}
"#;

fn headless_deployment(replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hl, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: hl}}}}
  template:
    metadata: {{labels: {{app: hl}}}}
    spec: {{containers: [{{name: c, image: echo, ports: [{{containerPort: 80}}]}}]}}
"#
    )
}

/// A lab of CLUSTER and the headless Deployment, with the DNS questions the tests ask.
struct DnsLab(TestLab);

impl std::ops::Deref for DnsLab {
    type Target = TestLab;

    fn deref(&self) -> &TestLab {
        &self.0
    }
}

impl DnsLab {
    /// Brings up a lab of CLUSTER and the headless Deployment with three replicas.
    fn up(test: &str) -> DnsLab {
        let lab = TestLab::new(&format!("dns-{test}"));
        let cluster = lab.file("cluster.yaml", CLUSTER);
        let deployment = lab.file("hl.yaml", &headless_deployment(3));
        lab.ok(&["up", "-f", &cluster, "-f", &deployment]);
        DnsLab(lab)
    }

    /// Runs `command` in the Pod `pod` (`ns/name`); its output, and whether it succeeded.
    fn exec(&self, pod: &str, command: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        let out = self.run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `dig +short` from `pod` with `args`: the addresses answered (sorted), or the failure.
    fn dig(&self, pod: &str, args: &[&str]) -> Result<BTreeSet<IpAddr>, String> {
        let mut command = vec!["dig", "+short", "+time=2", "+tries=2"];
        command.extend_from_slice(args);
        let (ok, text) = self.exec(pod, &command);
        if !ok || text.contains(";;") {
            return Err(text);
        }
        text.lines()
            .map(|l| l.trim().parse().map_err(|_| text.clone()))
            .collect()
    }

    /// Asks `dig` until the answer is `want` (an answer that must follow a change), then
    /// returns it; the last answer if it never was.
    fn dig_until(
        &self,
        pod: &str,
        args: &[&str],
        want: &BTreeSet<IpAddr>,
    ) -> Result<BTreeSet<IpAddr>, String> {
        self.follow(pod, args, |got| got.as_ref().is_ok_and(|got| got == want))
            .0
    }

    /// Asks `dig` until `done` holds of its answer, at most [`FOLLOW_TRIES`] more times:
    /// the last answer, and how many were asked.
    fn follow(
        &self,
        pod: &str,
        args: &[&str],
        done: impl Fn(&Result<BTreeSet<IpAddr>, String>) -> bool,
    ) -> (Result<BTreeSet<IpAddr>, String>, usize) {
        let mut last = self.dig(pod, args);
        let mut tries = 1;
        while !done(&last) && tries <= FOLLOW_TRIES {
            std::thread::sleep(Duration::from_millis(20));
            last = self.dig(pod, args);
            tries += 1;
        }
        (last, tries)
    }

    /// The response status `dig` reports (`NOERROR`, `NXDOMAIN`, ...) for `args` from `pod`.
    fn status(&self, pod: &str, args: &[&str]) -> String {
        let mut command = vec!["dig", "+time=2", "+tries=1"];
        command.extend_from_slice(args);
        let (_, text) = self.exec(pod, &command);
        text.split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .to_owned()
    }

    /// [`DnsLab::status`] until it is `want`, a bounded number of times; the last status.
    fn status_until(&self, pod: &str, args: &[&str], want: &str) -> String {
        let mut last = self.status(pod, args);
        for _ in 0..FOLLOW_TRIES {
            if last == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            last = self.status(pod, args);
        }
        last
    }

    /// Objects of `kind` in `namespace`, as `lab get -o json` prints them (a `List`, or the
    /// object itself when there is one).
    fn get(&self, kind: &str, namespace: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["get", kind, "-n", namespace, "-o", "json"]);
        let value: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        match value["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![value],
        }
    }

    fn cluster_ip(&self, namespace: &str, service: &str) -> BTreeSet<IpAddr> {
        let services = self.get("services", namespace);
        let svc = services
            .iter()
            .find(|s| s["metadata"]["name"] == service)
            .unwrap_or_else(|| panic!("no service {namespace}/{service}"));
        let ip = svc["spec"]["clusterIP"].as_str().expect("a clusterIP");
        BTreeSet::from([ip.parse().expect("an IP")])
    }

    /// The IPs of the Pods of `namespace` whose name starts with `prefix`.
    fn pod_ips(&self, namespace: &str, prefix: &str) -> BTreeSet<IpAddr> {
        self.get("pods", namespace)
            .iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .map(|p| {
                p["status"]["podIP"]
                    .as_str()
                    .expect("a pod IP")
                    .parse()
                    .expect("an IP")
            })
            .collect()
    }
}

#[test]
fn lab_dns_pod_answers_inside_the_lab() {
    let lab = DnsLab::up("pod");
    let kubectl = Kubectl::for_lab(&lab);
    let dns = lab.pod_ips("kube-system", "coredns-");
    assert_eq!(dns.len(), 1, "one built-in DNS pod: {dns:?}");
    let server = format!("@{}", dns.first().expect("the DNS pod"));
    let server = server.as_str();
    let web = lab.cluster_ip("default", "web");
    let other_web = lab.cluster_ip("other", "web");
    assert_ne!(web, other_web);

    // The server's first lists may still be under way when `up` returns.
    let full = [server, "web.default.svc.cluster.local"];
    assert_eq!(
        lab.dig_until("default/client", &full, &web),
        Ok(web.clone())
    );
    for (args, want) in [
        (vec![server, "web.default.svc.cluster.local"], &web),
        (vec![server, "+tcp", "web.default.svc.cluster.local"], &web),
        (vec![server, "+search", "web"], &web),
        (vec![server, "+search", "web.other"], &other_web),
        (vec![server, "web.other.svc.cluster.local."], &other_web),
    ] {
        assert_eq!(
            lab.dig("default/client", &args).as_ref(),
            Ok(want),
            "dig {args:?}"
        );
    }
    // The pod's search path starts with its own namespace.
    assert_eq!(
        lab.dig("other/web", &[server, "+search", "web"]).as_ref(),
        Ok(&other_web)
    );

    // No upstream: a name outside the zone is SERVFAIL at once, never forwarded.
    assert_eq!(
        lab.status("default/client", &[server, "example.com"]),
        "SERVFAIL"
    );
    assert_eq!(
        lab.status(
            "default/client",
            &[server, "nope.default.svc.cluster.local"]
        ),
        "NXDOMAIN"
    );

    // A headless Service: one address per pod, following `kubectl scale`.
    let three = lab.pod_ips("default", "hl-");
    assert_eq!(three.len(), 3, "{three:?}");
    let hl = [server, "hl.default.svc.cluster.local"];
    assert_eq!(
        lab.dig_until("default/client", &hl, &three),
        Ok(three.clone())
    );
    for replicas in [2, 4] {
        kubectl.ok(&[
            "scale",
            "deployment",
            "hl",
            &format!("--replicas={replicas}"),
        ]);
        let now = lab.pod_ips("default", "hl-");
        assert_eq!(now.len(), replicas, "{now:?}");
        assert_eq!(lab.dig_until("default/client", &hl, &now), Ok(now));
    }

    // A Service applied with kubectl: answered once the watch brings it. Measured, not
    // asserted: from kubectl's acknowledgement to the first answer.
    let late = lab.file("late.yaml", LATE);
    let question = [server, "late.default.svc.cluster.local"];
    let asked = Instant::now();
    assert_eq!(lab.dig("default/client", &full), Ok(web.clone()));
    let one_dig = asked.elapsed();
    kubectl.ok(&["apply", "-f", &late]);
    let acknowledged = Instant::now();
    let (answer, tries) = lab.follow("default/client", &question, |got| {
        got.as_ref().is_ok_and(|ips| !ips.is_empty())
    });
    let elapsed = acknowledged.elapsed();
    assert_eq!(answer, Ok(lab.cluster_ip("default", "late")));
    println!(
        "kubectl apply -> answered: {} ms, {tries} dig(s); one dig of a known name: {} ms",
        elapsed.as_millis(),
        one_dig.as_millis()
    );

    // `kubectl delete service`: NXDOMAIN, and the other namespace's web still answers.
    kubectl.ok(&["delete", "service", "web", "-n", "other"]);
    let gone = [server, "web.other.svc.cluster.local"];
    assert_eq!(
        lab.status_until("default/client", &gone, "NXDOMAIN"),
        "NXDOMAIN"
    );
    assert_eq!(lab.dig("default/client", &full), Ok(web));

    // What it served came from the watch, one change at a time: two whole zones (the empty
    // stand-in, then the first complete lists) and every later change applied alone. Its
    // build is named as CoreDNS names its own.
    let url = format!("http://{}:9153/metrics", dns.first().expect("the DNS pod"));
    let (ok, metrics) = lab.exec("default/client", &["curl", "-s", "--max-time", "5", &url]);
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("netd_dns_zone_builds_total 2\n"),
        "{metrics}"
    );
    let changes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("netd_dns_zone_changes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no netd_dns_zone_changes_total in {metrics}"));
    // Two scales (slices), a new Service and its slice, a deleted Service and its slice.
    assert!(changes >= 4, "{changes} changes applied:\n{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coredns_build_info{goversion=\"")
                && l.contains(",version=\"")
                && l.ends_with("} 1")),
        "{metrics}"
    );

    // The DNS server is one of the lab's processes, stopped by PID like any Pod's.
    assert!(!lab.processes().is_empty());
    assert!(lab.ok(&["down"]).contains("removed"));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn lab_dns_service_ip_answers_through_resolv_conf() {
    let lab = DnsLab::up("svc");
    let web = lab.cluster_ip("default", "web");
    let other_web = lab.cluster_ip("other", "web");

    // dig without @server asks the resolv.conf's nameserver, the cluster DNS Service IP.
    let (_, resolv) = lab.exec("default/client", &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {DNS_SERVICE_IP}")),
        "{resolv}"
    );
    let full = ["web.default.svc.cluster.local"];
    if let Err(e) = lab.dig_until("default/client", &full, &web) {
        panic!(
            "the cluster DNS Service IP {DNS_SERVICE_IP} does not answer from default/client: \
             the agents' Service rules (DNAT of kube-system/kube-dns to its pod) are missing \
             or wrong.\n{e}"
        );
    }
    for (args, want) in [
        (vec!["web.default.svc.cluster.local"], &web),
        (vec!["+tcp", "web.default.svc.cluster.local"], &web),
        (vec!["+search", "web"], &web),
        (vec!["+search", "web.other"], &other_web),
        (vec!["+search", "+tcp", "web.other"], &other_web),
    ] {
        assert_eq!(
            lab.dig("default/client", &args).as_ref(),
            Ok(want),
            "dig {args:?}"
        );
    }

    // The pod's own resolver (glibc, through its resolv.conf and search path).
    for (name, want) in [
        ("web", &web),
        ("web.other", &other_web),
        ("web.default.svc.cluster.local", &web),
        ("web.other.svc.cluster.local", &other_web),
    ] {
        let (ok, out) = lab.exec("default/client", &["getent", "hosts", name]);
        assert!(ok, "getent hosts {name}: {out}");
        let got: BTreeSet<IpAddr> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        assert_eq!(&got, want, "getent hosts {name}: {out}");
    }
    let (ok, out) = lab.exec("default/client", &["getent", "hosts", "nope"]);
    assert!(!ok, "an unknown name does not resolve: {out}");

    // The headless Service through the Service IP follows scaling too.
    let three = lab.pod_ips("default", "hl-");
    let hl = ["+search", "hl"];
    assert_eq!(lab.dig_until("default/client", &hl, &three), Ok(three));
    let scaled = lab.file("hl-2.yaml", &headless_deployment(2));
    lab.ok(&["apply", "-f", &scaled]);
    let two = lab.pod_ips("default", "hl-");
    assert_eq!(lab.dig_until("default/client", &hl, &two), Ok(two));
}
