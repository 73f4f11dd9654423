//! Benchmark: UDP conntrack clean-up among 100,000 entries in a fresh network namespace, over
//! ctnetlink (`nftnl::conntrack`, what the reconciler does) side by side with the
//! `conntrack` tool (what it did before). Needs root. Run with
//! `cargo bench -p netd-kernel --bench conntrack [-- ENTRIES]`.
//!
//! Each step runs a few times and the median is printed.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use netd_testkit::bench::median;

use netd_kernel::nftnl::{Family, conntrack};
use netd_kernel::{link, netns, rules};

const DEFAULT_ENTRIES: u32 = 100_000;
const RUNS: usize = 5;
const NS: &str = "kbench-ct";

fn main() {
    let entries = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_ENTRIES);
    let ns = format!("{NS}-{}", std::process::id());
    netns::add(&ns).expect("add namespace");
    let result = std::panic::catch_unwind(|| run(&ns, entries));
    let _ = netns::delete(&ns);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run(ns: &str, entries: u32) {
    // Datagrams to 10.96.0.0/12 leave through the loopback and are dropped on the way back
    // in (not local, no forwarding): tracked once each, answered never.
    link::add_address(ns, "lo", Ipv4Addr::new(10, 96, 0, 1).into(), 12).expect("address");
    // Entries live for the whole run; a NEW-state match turns tracking on in the namespace.
    link::sysctl(ns, "net.netfilter.nf_conntrack_udp_timeout", "3600").expect("timeout");
    link::sysctl(ns, "net.netfilter.nf_conntrack_max", "1048576").ok();
    rules::iptables_restore(
        ns,
        "*filter\n-A OUTPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n",
    )
    .expect("rules");
    send(ns, (0..entries).map(target).collect());
    let listed = conntrack::list_protocol(ns, Family::Ip, conntrack::UDP, None).expect("list");
    assert!(
        listed.len() as u32 >= entries,
        "{} of {entries} entries tracked",
        listed.len()
    );

    // A destination none of the others has: each step tracks one entry to it and removes it.
    let victim = target(entries);
    let netlink_list = median(RUNS, || {
        conntrack::list_protocol(ns, Family::Ip, conntrack::UDP, None).expect("list");
    });
    let filtered_delete = median(RUNS, || {
        send(ns, vec![victim]);
        let filter = conntrack::FlowFilter {
            protocol: conntrack::UDP,
            orig_dst: victim,
            reply_src: None,
        };
        let stale = conntrack::list(ns, &filter).expect("list");
        assert_eq!(conntrack::delete(ns, &stale).expect("delete"), 1);
    });
    let tool_list = median(RUNS, || {
        netns::exec(ns, &["conntrack", "-L", "-p", "udp"]).expect("conntrack -L");
    });
    let (ip, port) = (victim.ip().to_string(), victim.port().to_string());
    let tool_delete = median(RUNS, || {
        send(ns, vec![victim]);
        netns::exec(
            ns,
            &[
                "conntrack",
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                &ip,
                "--orig-port-dst",
                &port,
            ],
        )
        .expect("conntrack -D");
    });

    println!("UDP conntrack clean-up among {entries} entries (median of {RUNS} runs)");
    println!();
    println!("| step | kube-netd (ctnetlink) | conntrack tool |");
    println!("|---|---|---|");
    println!(
        "| read every UDP entry (a full reconcile) | {} | {} (`conntrack -L`) |",
        ms(netlink_list),
        ms(tool_list)
    );
    println!(
        "| delete the stale entry of one changed Service | {} (kernel-filtered dump, delete by tuple) | {} (`conntrack -D` with a filter) |",
        ms(filtered_delete),
        ms(tool_delete)
    );
}

/// The `i`-th destination: a distinct address and port in 10.96.0.0/12 for each entry.
fn target(i: u32) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(10, 96, 1, 0));
    SocketAddr::new(
        Ipv4Addr::from(base + i / 1000).into(),
        1000 + (i % 1000) as u16,
    )
}

/// Sends one datagram from one socket in `ns` to each destination.
fn send(ns: &str, to: Vec<SocketAddr>) {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter");
        let socket = UdpSocket::bind("10.96.0.1:0").expect("bind");
        for addr in to {
            socket.send_to(b"x", addr).expect("send");
        }
    })
    .join()
    .expect("sender");
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
