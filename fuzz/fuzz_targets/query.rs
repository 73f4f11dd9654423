//! Any bytes sent to the DNS server: parsed, answered from a small cluster zone, encoded.
//! The server must never panic, and must answer with a well-formed response carrying the
//! query's ID, or not at all. `netd-dns`'s `arbitrary_bytes_never_break_the_handler`
//! proptest checks the same property on stable.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use netd_dns::{ForwardConfig, Handler, Metrics, SharedZone, Transport, Zone, ZoneConfig};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
- addresses: [10.244.2.6]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.com}
"#;

struct Target {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let zone = Zone::build(&netd_testkit::state(CLUSTER), &ZoneConfig::default());
        // No upstream: questions outside the zone get SERVFAIL without any network I/O.
        let handler = Handler::new(
            SharedZone::new(zone),
            ForwardConfig::default(),
            Arc::new(Metrics::new()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Target { runtime, handler }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(out) = t.runtime.block_on(t.handler.answer_bytes(data, transport)) {
            assert!(out.len() >= 12, "a response has a header");
            assert_eq!(out[..2], data[..2], "a response carries the query's ID");
            assert_eq!(out[2] & 0x80, 0x80, "QR is set");
        }
    }
});
