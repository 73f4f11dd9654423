//! Measures nftnl transactions in a scratch namespace and prints a table:
//! `cargo run --release -p netd-kernel --example nftnl_bench -- 1000 10000`.
//!
//! The shape: a `service-ips` verdict map with one element per Service; per Service a chain
//! choosing among its endpoints with `numgen random mod N vmap @<service>-endpoints`; per
//! endpoint a chain with DNAT. Timed: the first full load (one batch), one endpoint replaced
//! (element delete + add in the Service's map), and one Service added. Wall-clock times include
//! encoding, the kernel's commit and reading every acknowledgement.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netd_kernel::netns;
use netd_kernel::nftnl::{
    BaseChain, Chain, ChainType, Data, Element, Expr, Family, HookPoint, Key, KeyType, NatKind,
    Policy, Register, Rule, Set, Transaction, Verdict,
};

const T: &str = "bench";
const IP: Family = Family::Ip;
const ENDPOINTS: u32 = 2;
const R0: Register = Register::reg32(0);
const R1: Register = Register::reg32(1);
const R2: Register = Register::reg32(2);

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number of Services"))
        .collect();
    let sizes = if sizes.is_empty() { vec![1000] } else { sizes };
    println!(
        "| Services | endpoints each | full load | one endpoint replaced | one Service added |"
    );
    println!("|---|---|---|---|---|");
    for n in sizes {
        let ns = format!("nftnl-{}-bench", std::process::id());
        netns::add(&ns).expect("namespace");
        let result = std::panic::catch_unwind(|| measure(&ns, n));
        netns::delete(&ns).expect("delete namespace");
        let (full, endpoint, service) = result.expect("measure");
        println!(
            "| {n} | {ENDPOINTS} | {} | {} | {} |",
            ms(full),
            ms(endpoint),
            ms(service)
        );
    }
}

fn measure(ns: &str, n: u32) -> (Duration, Duration, Duration) {
    let mut full = Transaction::new();
    full.add_table(IP, T)
        .add_chain(
            IP,
            T,
            Chain::base(
                "nat-prerouting",
                BaseChain {
                    kind: ChainType::Nat,
                    hook: HookPoint::Prerouting,
                    priority: -100,
                    policy: Policy::Accept,
                },
            ),
        )
        .add_chain(IP, T, Chain::regular("services"))
        .add_set(
            IP,
            T,
            Set::verdict_map(
                "service-ips",
                &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            ),
        )
        .add_rule(IP, T, "nat-prerouting", Rule::new(vec![jump("services")]))
        .add_rule(
            IP,
            T,
            "services",
            Rule::new(vec![
                Expr::daddr(IP, R0),
                Expr::l4proto(R1),
                Expr::th_dport(R2),
                Expr::Lookup {
                    set: "service-ips".into(),
                    sreg: R0,
                    dreg: Some(Register::VERDICT),
                    invert: false,
                },
            ]),
        );
    let mut elements = Vec::new();
    for i in 0..n {
        add_service(&mut full, i);
        elements.push(service_element(i));
    }
    full.add_elements(IP, T, "service-ips", elements);
    let full_time = timed(|| full.commit(ns).expect("full load"));

    let mut endpoint = Transaction::new();
    let last = n - 1;
    endpoint
        .add_chain(IP, T, Chain::regular(format!("svc-{last}-ep-new")))
        .add_rule(
            IP,
            T,
            &format!("svc-{last}-ep-new"),
            Rule::new(dnat(last, 99)),
        )
        .delete_elements(
            IP,
            T,
            &format!("svc-{last}-endpoints"),
            vec![Element::key(Key::new().mark(0))],
        )
        .add_elements(
            IP,
            T,
            &format!("svc-{last}-endpoints"),
            vec![Element::verdict(
                Key::new().mark(0),
                Verdict::Goto(format!("svc-{last}-ep-new")),
            )],
        );
    let endpoint_time = timed(|| endpoint.commit(ns).expect("endpoint change"));

    let mut service = Transaction::new();
    add_service(&mut service, n);
    service.add_elements(IP, T, "service-ips", vec![service_element(n)]);
    let service_time = timed(|| service.commit(ns).expect("service added"));
    (full_time, endpoint_time, service_time)
}

fn add_service(tx: &mut Transaction, i: u32) {
    let chain = format!("svc-{i}");
    let map = format!("svc-{i}-endpoints");
    tx.add_chain(IP, T, Chain::regular(chain.clone())).add_set(
        IP,
        T,
        Set::verdict_map(map.clone(), &[KeyType::Mark]),
    );
    let mut elements = Vec::new();
    for e in 0..ENDPOINTS {
        let ep = format!("svc-{i}-ep-{e}");
        tx.add_chain(IP, T, Chain::regular(ep.clone()))
            .add_rule(IP, T, &ep, Rule::new(dnat(i, e)));
        elements.push(Element::verdict(Key::new().mark(e), Verdict::Goto(ep)));
    }
    tx.add_elements(IP, T, &map, elements).add_rule(
        IP,
        T,
        &chain,
        Rule::new(vec![
            Expr::Numgen {
                dreg: R0,
                modulus: ENDPOINTS,
                offset: 0,
            },
            Expr::Lookup {
                set: map,
                sreg: R0,
                dreg: Some(Register::VERDICT),
                invert: false,
            },
        ]),
    );
}

fn service_element(i: u32) -> Element {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
    Element::verdict(
        Key::new().ip(IpAddr::V4(ip)).proto(6).port(80),
        Verdict::Goto(format!("svc-{i}")),
    )
}

fn dnat(service: u32, endpoint: u32) -> Vec<Expr> {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + service * 16 + endpoint);
    vec![
        Expr::l4proto(R0),
        Expr::eq(R0, [6]),
        Expr::Immediate {
            dreg: R0,
            data: Data::ip(IpAddr::V4(ip)),
        },
        Expr::Immediate {
            dreg: R1,
            data: Data::port(8080),
        },
        Expr::Nat {
            kind: NatKind::Dnat,
            family: IP,
            addr: Some(R0),
            port: Some(R1),
        },
    ]
}

fn jump(chain: &str) -> Expr {
    Expr::verdict(Verdict::Jump(chain.to_owned()))
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
