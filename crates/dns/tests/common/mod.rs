//! The test cluster shared by the DNS tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::{RData, Record};
use netd_model::ClusterState;
use tokio::net::UdpSocket;

/// Services of every kind, a headless Service with ready, not-ready, named and unnamed
/// endpoints, and a few Pods.
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30, "fd00:10:96::30"]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: proxied
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}
spec:
  clusterIP: 10.96.0.40
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.2.6]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: db-1, namespace: default}
- addresses: [10.244.1.7]
  conditions: {ready: false}
- addresses: [10.244.2.8]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: pnr, namespace: other}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pnr-1
  namespace: other
  labels: {kubernetes.io/service-name: pnr}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.1.9]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: default, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  nodeName: node-2
  containers: [{name: c, image: i}]
status: {podIP: 10.244.2.6}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: i}]
status: {podIP: 10.244.1.3}
"#;

/// The test cluster.
pub fn cluster() -> ClusterState {
    netd_testkit::state(CLUSTER)
}

/// A headless Service `big/many` with `n` ready endpoints (for truncation).
pub fn big_headless(n: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: big}\n\
         spec: {clusterIP: None, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: many-1, namespace: big, labels: {kubernetes.io/service-name: many}}\n\
         addressType: IPv4\nports: [{name: http, port: 80, protocol: TCP}]\nendpoints:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "- addresses: [10.244.{}.{}]\n",
            10 + i / 250,
            1 + i % 250
        ));
    }
    yaml
}

/// A resolver on loopback answering every A question with 192.0.2.1 (TTL 60), counting
/// questions.
pub async fn fake_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().clone();
            r.add_answer(Record::from_rdata(
                name,
                60,
                RData::A("192.0.2.1".parse().expect("ip")),
            ));
            let _ = socket.send_to(&r.to_vec().expect("encode"), peer).await;
        }
    });
    (addr, count)
}

/// A UDP upstream on 127.0.0.1 that answers every question NXDOMAIN, as a resolver answers
/// names under `.invalid`.
pub async fn nxdomain_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
            r.add_queries(q.queries.clone());
            let _ = socket.send_to(&r.to_vec().expect("encode"), peer).await;
        }
    });
    addr
}
