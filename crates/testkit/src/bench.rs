//! Timing for the benchmarks that print tables of their own (real kernels and servers, where
//! criterion's many iterations would take minutes), and [`ConnectBench`], the new-connection
//! latency through a node namespace's Service rules that the proxy benchmarks share.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netd_kernel::{link, netns};

use crate::held::in_netns;
use crate::scale::ServiceScale;
use crate::scratch::ScratchNetns;

/// What the benchmark helpers fail with: the kernel's or the socket's error, as it came.
pub type BoxError = Box<dyn std::error::Error>;

/// The median wall-clock time of `runs` calls of `step` (at least one).
pub fn median(runs: usize, mut step: impl FnMut()) -> Duration {
    median_duration(
        (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                step();
                start.elapsed()
            })
            .collect(),
    )
}

/// The median of `times` timed by the caller (a benchmark timing several steps of one run);
/// zero for none.
pub fn median_duration(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The median of `xs` (NaN when empty).
pub fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The `p` quantile (0 to 1) of `xs`, the nearest sample (NaN when empty).
pub fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    // `p` is in [0, 1], so the index is within the samples.
    let i = ((xs.len().saturating_sub(1)) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    xs.get(i).copied().unwrap_or(f64::NAN)
}

/// The median and 99th percentile of the connection times to one target, in µs.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// How many connections were timed.
    pub samples: usize,
    /// The median, µs.
    pub p50_us: f64,
    /// The 99th percentile, µs.
    pub p99_us: f64,
}

impl Latency {
    /// One row of a benchmark's markdown table: `connect()` to the `name` Service at `ip`.
    pub fn row(&self, name: &str, ip: Ipv4Addr) -> String {
        format!(
            "| connect() to the {name} Service      | {ip}:80, {} connections | p50 {:>8.1} µs | p99 {:>8.1} µs |               |",
            self.samples, self.p50_us, self.p99_us
        )
    }
}

/// New-connection latency through a node namespace's Service rules, whatever the proxy mode:
/// a client namespace connects over a veth to ClusterIPs, the node namespace DNATs (or IPVS
/// forwards) and routes to a server namespace where every endpoint address of
/// [`ServiceScale`] is local (`ip route add local`) and one thread accepts and closes
/// connections on [`ServiceScale::TARGET_PORT`].
pub struct ConnectBench {
    client: ScratchNetns,
    server: ScratchNetns,
}

impl ConnectBench {
    /// Wires a client and a server namespace (named after `prefix`) to namespace `node`.
    pub fn new(prefix: &str, node: &str) -> Result<ConnectBench, BoxError> {
        let client = ScratchNetns::new(prefix, "cli");
        let server = ScratchNetns::new(prefix, "srv");
        let (c, s) = (client.name(), server.name());
        let endpoints = ServiceScale::ENDPOINT_NET;
        let moved = ServiceScale::MOVED_ENDPOINT;
        link::add_veth(c, "eth0", node, "to-cli")?;
        link::add_veth(node, "to-srv", s, "eth0")?;
        netns::ip_batch(
            c,
            &[
                "addr add 172.16.0.2/24 dev eth0".into(),
                "link set lo up".into(),
                "route add default via 172.16.0.1".into(),
            ],
        )?;
        netns::ip_batch(
            node,
            &[
                "addr add 172.16.0.1/24 dev to-cli".into(),
                "addr add 172.17.0.1/24 dev to-srv".into(),
                "link set lo up".into(),
                format!("route add {endpoints} via 172.17.0.2"),
                format!("route add {moved}/32 via 172.17.0.2"),
            ],
        )?;
        netns::ip_batch(
            s,
            &[
                "addr add 172.17.0.2/24 dev eth0".into(),
                "link set lo up".into(),
                format!("route add local {endpoints} dev lo"),
                format!("route add local {moved}/32 dev lo"),
                "route add 172.16.0.0/24 via 172.17.0.1".into(),
            ],
        )?;
        link::sysctl(node, "net.ipv4.ip_forward", "1")?;
        for ns in [c, node, s] {
            link::sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
            link::sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")?;
        }
        let listener = in_netns(s, || {
            TcpListener::bind(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                ServiceScale::TARGET_PORT,
            )))
        })?;
        // The listener's socket stays in the server namespace; the thread only accepts, and
        // ends with the process.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        Ok(ConnectBench { client, server })
    }

    /// The server namespace's name.
    pub fn server(&self) -> &str {
        self.server.name()
    }

    /// [`ConnectBench::latencies`] to the first and to the last Service of `scale`.
    pub fn first_and_last(
        &self,
        scale: &ServiceScale,
        connections: usize,
        rounds: usize,
    ) -> Result<[Latency; 2], BoxError> {
        let targets = [ServiceScale::cluster_ip(0), scale.last_cluster_ip()];
        let l = self.latencies(&targets, connections, rounds)?;
        Ok([l[0], l[1]])
    }

    /// The latency of `connections` new connections to each of `targets` (port 80) per
    /// round, over `rounds` rounds that alternate the targets' order (so drift in the
    /// machine's load is shared), each after `connections / 10` untimed ones.
    pub fn latencies(
        &self,
        targets: &[Ipv4Addr],
        connections: usize,
        rounds: usize,
    ) -> Result<Vec<Latency>, BoxError> {
        let mut samples = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = if round % 2 == 0 {
                    k
                } else {
                    targets.len() - 1 - k
                };
                let to = SocketAddrV4::new(targets[i], 80);
                samples[i].extend(self.connect_times(to, connections)?);
            }
        }
        Ok(samples
            .into_iter()
            .map(|s| Latency {
                samples: s.len(),
                p50_us: percentile(s.clone(), 0.5),
                p99_us: percentile(s, 0.99),
            })
            .collect())
    }

    /// `count` connection times (µs) to `to`, after `count / 10` untimed ones.
    fn connect_times(&self, to: SocketAddrV4, count: usize) -> Result<Vec<f64>, BoxError> {
        let timeout = Duration::from_secs(2);
        let times = in_netns(self.client.name(), || -> std::io::Result<Vec<f64>> {
            let mut times = Vec::with_capacity(count);
            for i in 0..count + count / 10 {
                let t = Instant::now();
                let stream = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)?;
                let took = t.elapsed();
                drop(stream);
                if i >= count / 10 {
                    times.push(took.as_secs_f64() * 1e6);
                }
            }
            Ok(times)
        })
        .map_err(|e| format!("connect to {to} from {}: {e}", self.client.name()))?;
        Ok(times)
    }
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The command-line options every proxy benchmark takes: `--services N (10000)`
/// `--endpoints K (10)` `--reps R (5)` `--connections C (1000)` `--rounds R (3)` `--prefix P`.
#[derive(Clone, Debug)]
pub struct ProxyBenchOptions {
    /// The cluster's size.
    pub scale: ServiceScale,
    /// Repetitions of each small change.
    pub reps: usize,
    /// Timed connections per target and round.
    pub connections: usize,
    /// Rounds of connections.
    pub rounds: usize,
    /// The namespaces' name prefix.
    pub prefix: String,
    /// The arguments that are none of these, in order, for the benchmark's own options.
    pub rest: Vec<String>,
}

impl ProxyBenchOptions {
    /// Reads the options from `args` (without the program's name); `prefix` is the default
    /// namespace prefix.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        prefix: &str,
    ) -> Result<ProxyBenchOptions, String> {
        let (mut services, mut endpoints) = (10_000, 10);
        let mut o = ProxyBenchOptions {
            scale: ServiceScale::new(2, 1)?,
            reps: 5,
            connections: 1000,
            rounds: 3,
            prefix: prefix.to_owned(),
            rest: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--services" => &mut services,
                "--endpoints" => &mut endpoints,
                "--reps" => &mut o.reps,
                "--connections" => &mut o.connections,
                "--rounds" => &mut o.rounds,
                "--prefix" => {
                    o.prefix = args.next().ok_or("--prefix needs a value")?;
                    continue;
                }
                _ => {
                    o.rest.push(arg);
                    continue;
                }
            };
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            *slot = value
                .parse::<usize>()
                .map_err(|e| format!("{arg} {value}: {e}"))?;
        }
        o.scale = ServiceScale::new(services, endpoints)
            .map_err(|e| format!("--services, --endpoints: {e}"))?;
        if o.reps == 0 || o.rounds == 0 || o.connections == 0 {
            return Err("--reps, --rounds and --connections must be at least 1".into());
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<ProxyBenchOptions, String> {
        ProxyBenchOptions::parse(args.split_whitespace().map(String::from), "b")
    }

    #[test]
    fn proxy_bench_options_keep_the_benchmarks_own_arguments() {
        let o = parse("--services 20 --no-policy --reps 2 --modes ipvs").expect("parses");
        assert_eq!(o.scale, ServiceScale::new(20, 10).expect("fits"));
        assert_eq!((o.reps, o.connections, o.rounds), (2, 1000, 3));
        assert_eq!(o.prefix, "b");
        assert_eq!(o.rest, ["--no-policy", "--modes", "ipvs"]);
        assert!(
            parse("--services 1")
                .expect_err("too few")
                .contains("--services")
        );
        assert!(parse("--reps 0").is_err());
        assert!(
            parse("--rounds")
                .expect_err("no value")
                .contains("needs a value")
        );
    }

    #[test]
    fn quantiles_of_samples() {
        assert_eq!(median_of(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median_of(Vec::new()).is_nan());
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(xs.clone(), 0.5), 51.0);
        assert_eq!(percentile(xs, 0.99), 99.0);
    }
}
