//! Plan + render for a large cluster: 10,000 Services × 10 endpoints (reference D10's
//! scale), full sync payload and a partial sync after one endpoint changed; and the same for
//! the nftables back end: render, the full `nft -f` text, and the incremental update after
//! one endpoint changed and after one Service was added. With `NFT_BENCH_OUT=<dir>` the
//! nftables payloads are also written there (`full.nft`, `endpoint.nft`, `service.nft`), to
//! time `nft -f` on them in a scratch namespace.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use netd_model::{NodeName, ServiceRef};
use netd_proxy::{IpFamily, ProxyOptions, ProxySettings, ServicePlan, plan};
use netd_render::nft::{diff, render_services_nft};
use netd_render::{RenderOptions, SyncScope, render_services};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn cluster_yaml() -> String {
    let mut y = String::new();
    for s in 0..SERVICES {
        let (hi, lo) = (s / 250, s % 250 + 1);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
             spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: svc{s}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for e in 0..ENDPOINTS {
            let n = s * ENDPOINTS + e;
            let _ = writeln!(
                y,
                "- {{addresses: [10.{}.{}.{}], nodeName: node-{}}}",
                100 + n / 65536,
                (n / 256) % 256,
                n % 256,
                e % 3
            );
        }
    }
    y
}

fn bench(c: &mut Criterion) {
    let state = netd_testkit::state(&cluster_yaml());
    let node = NodeName::new("node-0");
    let opts = ProxyOptions::for_node(&state, &node, &ProxySettings::default());
    let ropts = RenderOptions::default();
    let mut g = c.benchmark_group("services_10k_x_10");
    g.sample_size(10);
    g.bench_function("plan", |b| {
        b.iter(|| black_box(plan(&state, &node, IpFamily::V4, &opts)))
    });
    let p = plan(&state, &node, IpFamily::V4, &opts);
    g.bench_function("render", |b| {
        b.iter(|| black_box(render_services(&p, &ropts)))
    });
    let rules = render_services(&p, &ropts);
    let none = BTreeSet::new();
    let full = rules.restore_input(&p, &SyncScope::Full, &none);
    let partial = rules.restore_input(
        &p,
        &SyncScope::Partial([ServiceRef::new("bench", "svc42")].into()),
        &none,
    );
    println!(
        "payload: full {} lines / {} bytes; partial (one Service) {} lines / {} bytes; nat rules {}",
        full.lines().count(),
        full.len(),
        partial.lines().count(),
        partial.len(),
        rules.ruleset.rule_count(netd_render::Table::Nat),
    );
    g.bench_function("restore_full", |b| {
        b.iter(|| black_box(rules.restore_input(&p, &SyncScope::Full, &none)))
    });
    let changed = SyncScope::Partial([ServiceRef::new("bench", "svc42")].into());
    g.bench_function("restore_partial", |b| {
        b.iter(|| black_box(rules.restore_input(&p, &changed, &none)))
    });
    g.bench_function("plan_render_full", |b| {
        b.iter(|| {
            let p = plan(&state, &node, IpFamily::V4, &opts);
            black_box(render_services(&p, &ropts).restore_input(&p, &SyncScope::Full, &none))
        })
    });
    g.finish();
    bench_nft(c, &p, &ropts);
}

/// `plan` with the last cluster endpoint of `bench/svc42` gone.
fn one_endpoint_less(p: &ServicePlan) -> ServicePlan {
    let mut next = p.clone();
    let svc42 = ServiceRef::new("bench", "svc42");
    let port = next
        .ports
        .values_mut()
        .find(|port| port.name.service == svc42)
        .map(Arc::make_mut);
    if let Some((port, gone)) = port.and_then(|p| p.endpoints.cluster.pop().map(|g| (p, g))) {
        port.endpoints.all_reachable.retain(|e| e.addr != gone.addr);
        port.endpoints.local.retain(|e| e.addr != gone.addr);
    }
    next
}

/// `plan` with one more Service, a copy of `bench/svc42` on its own ClusterIP.
fn one_service_more(p: &ServicePlan) -> ServicePlan {
    let mut next = p.clone();
    if let Some(port) = next
        .ports
        .values()
        .find(|port| port.name.service == ServiceRef::new("bench", "svc42"))
        .map(|port| (**port).clone())
    {
        let mut port = port;
        port.name.service = ServiceRef::new("bench", "extra");
        port.cluster_ip = [10, 96, 200, 1].into();
        next.ports.insert(port.name.clone(), Arc::new(port));
    }
    next
}

fn bench_nft(c: &mut Criterion, p: &ServicePlan, ropts: &RenderOptions) {
    let mut g = c.benchmark_group("nft_services_10k_x_10");
    g.sample_size(10);
    g.bench_function("render", |b| {
        b.iter(|| black_box(render_services_nft(p, ropts)))
    });
    let table = render_services_nft(p, ropts);
    g.bench_function("to_nft", |b| b.iter(|| black_box(table.to_nft())));
    let endpoint = render_services_nft(&one_endpoint_less(p), ropts);
    g.bench_function("render_and_diff_endpoint", |b| {
        b.iter(|| {
            let next = render_services_nft(&one_endpoint_less(p), ropts);
            black_box(diff(&table, &next))
        })
    });
    g.bench_function("diff_endpoint", |b| {
        b.iter(|| black_box(diff(&table, &endpoint)))
    });
    g.finish();
    let service = render_services_nft(&one_service_more(p), ropts);
    let payloads = [
        ("full.nft", table.to_nft()),
        ("endpoint.nft", diff(&table, &endpoint)),
        ("service.nft", diff(&table, &service)),
    ];
    for (name, text) in &payloads {
        println!(
            "nft payload {name}: {} lines / {} bytes",
            text.lines().count(),
            text.len()
        );
    }
    if let Some(dir) = std::env::var_os("NFT_BENCH_OUT") {
        for (name, text) in &payloads {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
