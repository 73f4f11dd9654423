//! Benchmark: one Node's whole rule set for a cluster of 10,000 Pods and 1,000 policies,
//! compiled, rendered and applied into a fresh network namespace's kernel (`ipset restore`,
//! then `iptables-restore --noflush`), then re-synced (`iptables-save` + restore) and
//! cleaned up. Needs root. Run with `cargo bench -p netd-agent --bench apply`.
//!
//! Applying into a kernel takes seconds, so each step runs once per scenario and is timed
//! with a wall clock (criterion's statistics would need hundreds of runs).

use std::fmt::Write as _;
use std::time::Instant;

use netd_agent::{NodeProgrammer, apply, cleanup};
use netd_kernel::{netns, rules};
use netd_model::NodeName;

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 10;

/// 10,000 Pods in 100 namespaces on `nodes` Nodes, 1,000 policies (ingress from pod and
/// namespace selectors with numbered, ranged and named ports; egress to an ipBlock with an
/// except and to pods on a named port).
fn cluster(nodes: usize) -> String {
    let mut y = String::new();
    for n in 0..nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.{}.{}}}]}}\n",
            n / 250,
            n % 250 + 2
        );
    }
    let mut k = 0usize;
    for ns in 0..NAMESPACES {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{}}}}}\n",
            ns % 5
        );
        for p in 0..PODS_PER_NS {
            let tier = if p % 2 == 0 { "front" } else { "back" };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{p}, namespace: ns-{ns}, labels: {{app: a{}, tier: {tier}}}}}\nspec: {{nodeName: node-{}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: {}}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n",
                p % 20,
                k % nodes,
                8000 + p % 3,
                244 + k / 62500,
                k / 250 % 250,
                k % 250 + 1
            );
            k += 1;
        }
        for i in 0..POLICIES_PER_NS {
            let _ = write!(
                y,
                "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: np-{i}, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: a{i}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]
    ports: [{{port: 8080}}, {{port: 9000, endPort: 9100}}]
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{tier: front}}}}}}]
    ports: [{{port: http}}]
  egress:
  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}}}]
  - to: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}]
    ports: [{{port: http}}]
",
                (i + 1) % 20,
                i % 5,
                (i + 2) % 20
            );
        }
    }
    y
}

fn ms(start: Instant) -> String {
    format!("{:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0)
}

fn scenario(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let yaml = cluster(nodes);
    let state = netd_testkit::state(&yaml);
    let node = NodeName::new("node-0");
    println!(
        "== 10,000 pods, 1,000 policies, {nodes} node(s): node-0 runs {} pods",
        state.pods_on("node-0").count()
    );
    let t = Instant::now();
    let node_rules = NodeProgrammer::default().rules(&state, &node)?;
    println!("compile + render (services and policy)  {}", ms(t));
    let ipset = node_rules.ipset.clone().unwrap_or_default();
    let text = node_rules.to_text();
    let iptables = &text[text.find("*filter").unwrap_or(0)..];
    println!(
        "payloads: ipset {} lines, iptables {} lines ({} rules), {} sets",
        ipset.lines().count(),
        iptables.lines().count(),
        iptables.lines().filter(|l| l.starts_with("-A ")).count(),
        node_rules.sets.len()
    );

    let ns = format!("netd-bench-{}", std::process::id());
    netns::add(&ns)?;
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let t = Instant::now();
        rules::ipset_restore(&ns, &ipset)?;
        println!("ipset restore (fresh kernel)            {}", ms(t));
        let t = Instant::now();
        rules::iptables_restore(&ns, iptables)?;
        println!("iptables-restore --noflush (fresh)      {}", ms(t));
        let t = Instant::now();
        apply(&ns, &node_rules)?;
        println!("full re-sync (ipset + save + restore)   {}", ms(t));
        let t = Instant::now();
        let removed = cleanup(&ns)?;
        println!(
            "cleanup ({} chains, {} sets)          {}",
            removed.chains,
            removed.sets,
            ms(t)
        );
        Ok(())
    })();
    netns::delete(&ns)?;
    result
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (such as `cargo test --benches`) only
    // checks that the benchmark builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for nodes in [10, 1] {
        if let Err(e) = scenario(nodes) {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
