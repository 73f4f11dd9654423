//! Benchmark: one Node's whole rule set for a cluster of 10,000 Pods and 1,000 policies,
//! compiled, rendered and applied into a fresh network namespace's kernel (`ipset restore`,
//! then `iptables-restore --noflush`), then re-synced (`iptables-save` + restore) and
//! cleaned up. Needs root. Run with `cargo bench -p netd-agent --bench apply`.
//!
//! Applying into a kernel takes seconds, so each step runs once per scenario and is timed
//! with a wall clock (criterion's statistics would need hundreds of runs).

use std::time::Instant;

use netd_agent::{NodeProgrammer, apply, cleanup};
use netd_kernel::{netns, rules};
use netd_model::NodeName;

fn ms(start: Instant) -> String {
    format!("{:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0)
}

fn scenario(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let yaml = netd_testkit::scale::policy_cluster(nodes);
    let state = netd_testkit::state(&yaml);
    let node = NodeName::new("node-0");
    println!(
        "== 10,000 pods, 1,000 policies, {nodes} node(s): node-0 runs {} pods",
        state.pods_on("node-0").count()
    );
    let t = Instant::now();
    let node_rules = NodeProgrammer::default().rules(&state, &node)?;
    println!("compile + render (services and policy)  {}", ms(t));
    let ipset = node_rules.ipset.full_input();
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
