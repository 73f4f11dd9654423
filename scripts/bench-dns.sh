#!/usr/bin/env bash
# Cluster DNS under load: `kube-netd dns serve` for a zone of 10,000 Services and 50,000 Pods,
# queried with dnsperf on loopback, and Debian's `knot` (an authoritative server) serving the
# same records from a zone file, one after the other in the same run. Prints a table of
# queries per second, latency (average from dnsperf; p50 and p99 from its per-query log at
# half the flat-out rate) and each server's memory (VmRSS after the load), for UDP and TCP.
#
# Usage: scripts/bench-dns.sh [--services N] [--pods N] [--duration SECONDS] [--port PORT]
#                             [--clients N] [--outstanding N]
# The binary is $KUBE_NETD if set, else target/release/kube-netd (built if missing).
# Installs dnsperf and knot (Debian packages) with apt-get when missing. Nothing leaves the
# machine: every query is for a name inside the cluster zone and both servers listen on
# 127.0.0.1 only (knot on PORT+1, with its own configuration and directories under a
# temporary directory; it is stopped by PID at exit).
set -euo pipefail

services=10000
pods=50000
duration=10
port=5399
clients=4
outstanding=200
namespaces=100
pods_per_node=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --services) services="$2"; shift 2 ;;
    --pods) pods="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --outstanding) outstanding="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."

knotd=/usr/sbin/knotd
if ! command -v dnsperf >/dev/null 2>&1 || [ ! -x "$knotd" ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends dnsperf knot >/dev/null
fi

bin="${KUBE_NETD:-}"
if [ -z "$bin" ]; then
  bin=target/release/kube-netd
  if [ ! -x "$bin" ]; then
    cargo build --release -p kube-netd
  fi
fi

tmp="$(mktemp -d)"
server_pid=""
knot_pid=""
stop() {
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill "$1"
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  stop "$server_pid"
  stop "$knot_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT

# The cluster, written out resolved so that the zone, not the control plane, is measured:
# Nodes with /22 podCIDRs (1,000 Pods each) in 10.128.0.0/9, Services `svc-<i>` spread over
# `ns-<i % 100>` with ClusterIPs 10.100.<i/250>.<i%250+1>, every tenth headless, and five
# Pods `svc-<i>-<k>` per Service (the rest of the Pods, if any, belong to no Service).
# The same awk writes knot's zone files with the records our server derives for them:
# `cluster.local` (A, SRV and the headless Services' per-Pod names) and `10.in-addr.arpa`.
mkdir -p "$tmp/manifests" "$tmp/knot/zones" "$tmp/knot/db" "$tmp/knot/run"
awk -v services="$services" -v pods="$pods" -v nsc="$namespaces" -v per_node="$pods_per_node" \
  -v out="$tmp/manifests" -v zones="$tmp/knot/zones" '
function node_of(p) { return int(p / per_node) }
function cidr_base(n,   o2, o3) { o2 = 128 + int(n / 64); o3 = (n % 64) * 4; return o2 "." o3 }
function rev(ip,   o) { split(ip, o, "."); return o[4] "." o[3] "." o[2] ".10.in-addr.arpa." }
BEGIN {
  fwd = zones "/cluster.local.zone"; rz = zones "/10.in-addr.arpa.zone"
  soa = "SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
  print "$TTL 5\ncluster.local. " soa "\ncluster.local. NS ns.dns.cluster.local.\nns.dns.cluster.local. A 10.96.0.10" > fwd
  print "dns-version.cluster.local. TXT \"1.1.0\"" > fwd
  print "$TTL 5\n10.in-addr.arpa. " soa "\n10.in-addr.arpa. NS ns.dns.cluster.local." > rz
  nodes = int((pods + per_node - 1) / per_node); if (nodes < 1) nodes = 1
  for (n = 0; n < nodes; n++) {
    split(cidr_base(n), b, ".")
    printf "apiVersion: v1\nkind: Node\nmetadata: {name: node-%d}\nspec: {podCIDR: 10.%d.%d.0/22}\nstatus: {addresses: [{type: InternalIP, address: 172.16.%d.%d}]}\n---\n", \
      n + 1, b[1], b[2], int(n / 250), n % 250 + 2 > (out "/nodes.yaml")
  }
  for (i = 0; i < nsc; i++)
    printf "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-%d}\n---\n", i > (out "/namespaces.yaml")
  for (i = 0; i < services; i++) {
    ip = (i % 10 == 9) ? "None" : sprintf("10.100.%d.%d", int(i / 250), i % 250 + 1)
    printf "apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: ns-%d}\nspec: {clusterIP: %s, selector: {app: svc-%d}, ports: [{name: http, port: 80}]}\n---\n", \
      i, i % nsc, ip, i > (out "/services.yaml")
    if (ip != "None") {
      base = sprintf("svc-%d.ns-%d.svc.cluster.local.", i, i % nsc)
      print base " A " ip "\n_http._tcp." base " SRV 0 100 80 " base > fwd
      print rev(ip) " PTR " base > rz
    }
  }
  for (p = 0; p < pods; p++) {
    n = node_of(p); o = p % per_node + 2
    split(cidr_base(n), b, ".")
    s = int(p / 5)
    if (s < services) { name = sprintf("svc-%d-%d", s, p % 5); ns = s % nsc; app = "svc-" s }
    else { name = sprintf("pod-%d", p); ns = p % nsc; app = "none" }
    pip = sprintf("10.%d.%d.%d", b[1], b[2] + int(o / 256), o % 256)
    printf "apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: ns-%d, labels: {app: %s}}\nspec: {nodeName: node-%d, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}\nstatus: {phase: Running, podIP: %s, conditions: [{type: Ready, status: \"True\"}]}\n---\n", \
      name, ns, app, n + 1, pip > (out "/pods.yaml")
    if (s < services && s % 10 == 9) {
      base = sprintf("svc-%d.ns-%d.svc.cluster.local.", s, ns)
      host = pip; gsub(/\./, "-", host); host = host "." base
      count = pods - 5 * s; if (count > 5) count = 5
      print base " A " pip "\n" host " A " pip "\n_http._tcp." base " SRV 0 " int(100 / count) " 80 " host > fwd
      print rev(pip) " PTR " host > rz
    }
  }
}' </dev/null

# The query mix, in dnsperf's format (`name type`), deterministic: 40% A of ClusterIP
# Services, 10% A of headless Services (five addresses each), 20% SRV of the named port, 15%
# PTR of ClusterIPs, 15% names that do not exist (NXDOMAIN).
awk -v services="$services" -v nsc="$namespaces" 'BEGIN {
  srand(1)
  for (q = 0; q < 200000; q++) {
    r = rand(); i = int(rand() * services)
    clusterip = (i % 10 == 9) ? i - 1 : i
    headless = i - i % 10 + 9; if (headless >= services) headless -= 10
    if (r < 0.40) {
      printf "svc-%d.ns-%d.svc.cluster.local A\n", clusterip, clusterip % nsc
    } else if (r < 0.50 && headless >= 0) {
      printf "svc-%d.ns-%d.svc.cluster.local A\n", headless, headless % nsc
    } else if (r < 0.70) {
      printf "_http._tcp.svc-%d.ns-%d.svc.cluster.local SRV\n", i, i % nsc
    } else if (r < 0.85) {
      printf "%d.%d.100.10.in-addr.arpa PTR\n", clusterip % 250 + 1, int(clusterip / 250)
    } else {
      printf "missing-%d.ns-%d.svc.cluster.local A\n", i, i % nsc
    }
  }
}' >"$tmp/queries.txt"

echo "zone: $services Services, $pods Pods ($(du -sh "$tmp/manifests" | cut -f1) of manifests); $(wc -l <"$tmp/queries.txt") queries in the mix" >&2

start_ms=$(( $(date +%s%N) / 1000000 ))
"$bin" dns serve -f "$tmp/manifests" --listen "127.0.0.1:$port" --upstream 127.0.0.1:9 \
  --cluster-cidr 10.128.0.0/9 --node-network 172.16.0.0/16 2>"$tmp/server.log" &
server_pid=$!
ready=""
for _ in $(seq 1 1200); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the DNS server exited:" >&2
    cat "$tmp/server.log" >&2
    exit 1
  fi
  if dig +short +time=1 +tries=1 -p "$port" @127.0.0.1 svc-0.ns-0.svc.cluster.local 2>/dev/null | grep -q '^10\.'; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "the DNS server did not answer within 10 minutes" >&2
  exit 1
fi
load_ms=$(( $(date +%s%N) / 1000000 - start_ms ))

# Sanity: the mix's kinds of answer.
check() {
  local got
  got=$(dig +short -p "$port" @127.0.0.1 "$@" | wc -l)
  [ "$got" -gt 0 ] || { echo "no answer for $*" >&2; exit 1; }
}
check svc-0.ns-0.svc.cluster.local A
if [ "$pods" -ge 50 ] && [ "$services" -ge 10 ]; then
  check svc-9.ns-9.svc.cluster.local A # headless: its five Pods
fi
check _http._tcp.svc-0.ns-0.svc.cluster.local SRV
check -x 10.100.0.1
dig -p "$port" @127.0.0.1 missing-1.ns-1.svc.cluster.local | grep -q 'status: NXDOMAIN' \
  || { echo "no NXDOMAIN for a missing name" >&2; exit 1; }

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
# The allocator returns what loading the manifests used within its decay time (10 s).
rss_ready=$(kib "$server_pid" VmRSS)
sleep 11
rss_loaded=$(kib "$server_pid" VmRSS)

# Two passes per server and protocol: flat out, for queries per second and dnsperf's average
# latency; then at half that rate with a per-query log, for latency percentiles of a server
# that is not saturated (logging every query costs the client time).
rows=""
declare -A qps_of
run() {
  local name="$1" pid="$2" at="$3" mode="$4"
  local out="$tmp/dnsperf-$name-$mode.txt" log="$tmp/dnsperf-$name-$mode-v.txt"
  dnsperf -s 127.0.0.1 -p "$at" -m "$mode" -d "$tmp/queries.txt" -l "$duration" \
    -c "$clients" -q "$outstanding" >"$out" 2>&1 || true
  local qps avg lost rss p50="n/a" p99="n/a"
  qps=$(awk '/Queries per second:/ { printf "%.0f", $4 }' "$out")
  # The first average is the queries'; TCP runs add one for connections.
  avg=$(awk '/Average Latency \(s\):/ && !seen { printf "%.3f", $4 * 1000; seen = 1 }' "$out")
  lost=$(awk '/Queries lost:/ { print $3 }' "$out")
  rss=$(( $(kib "$pid" VmRSS) / 1024 ))
  if [ -n "$qps" ] && [ "$qps" -gt 1 ]; then
    dnsperf -s 127.0.0.1 -p "$at" -m "$mode" -d "$tmp/queries.txt" -l "$duration" \
      -c "$clients" -q "$outstanding" -Q $(( qps / 2 )) -v >"$log" 2>&1 || true
    # Verbose lines: `> RCODE NAME TYPE LATENCY-SECONDS`.
    awk '$1 == ">" && NF >= 5 { print $NF * 1000 }' "$log" | sort -n >"$tmp/lat.txt"
    local n
    n=$(wc -l <"$tmp/lat.txt")
    if [ "$n" -gt 0 ]; then
      p50=$(printf "%.3f" "$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$tmp/lat.txt")")
      p99=$(printf "%.3f" "$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$tmp/lat.txt")")
    fi
  fi
  rows+=$(printf "| %-9s | %-5s | %8s | %8s | %8s | %14s | %14s | %7s |" \
    "$name" "$mode" "${qps:-0}" "${lost:-?}" "${avg:-?}" "$p50" "$p99" "$rss")$'\n'
  echo "$name $mode answers:$(awk -F: '/Response codes:/ { print $2 }' "$out")" >&2
  qps_of[$name-$mode]=${qps:-0}
}

run kube-netd "$server_pid" "$port" udp
run kube-netd "$server_pid" "$port" tcp
ours_hwm=$(( $(kib "$server_pid" VmHWM) / 1024 ))
stop "$server_pid"
server_pid=""

# knot, from the zone files, with its own configuration, database and run directories.
knot_port=$(( port + 1 ))
cat >"$tmp/knot/knot.conf" <<EOF
server:
    rundir: "$tmp/knot/run"
    listen: 127.0.0.1@$knot_port
log:
  - target: stderr
    any: warning
database:
    storage: "$tmp/knot/db"
template:
  - id: default
    storage: "$tmp/knot/zones"
    file: "%s.zone"
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: cluster.local
  - domain: 10.in-addr.arpa
EOF
"$knotd" -c "$tmp/knot/knot.conf" 2>"$tmp/knot.log" &
knot_pid=$!
ready=""
for _ in $(seq 1 600); do
  if ! kill -0 "$knot_pid" 2>/dev/null; then
    echo "knot exited:" >&2
    cat "$tmp/knot.log" >&2
    exit 1
  fi
  if dig +short +time=1 +tries=1 -p "$knot_port" @127.0.0.1 svc-0.ns-0.svc.cluster.local 2>/dev/null | grep -q '^10\.'; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "knot did not answer within 5 minutes" >&2
  exit 1
fi
port="$knot_port" check _http._tcp.svc-0.ns-0.svc.cluster.local SRV
run knot "$knot_pid" "$knot_port" udp
run knot "$knot_pid" "$knot_port" tcp
knot_hwm=$(( $(kib "$knot_pid" VmHWM) / 1024 ))

echo
echo "$services Services, $pods Pods; dnsperf ${duration}s per protocol and server, $clients clients, $outstanding outstanding; $(nproc) CPUs"
echo "kube-netd dns serve: zone loaded and answering after $(( load_ms / 1000 )).$(( load_ms % 1000 / 100 )) s (read, resolve, build the zone); RSS then: $(( rss_ready / 1024 )) MiB, 11 s later: $(( rss_loaded / 1024 )) MiB; peak (VmHWM): $ours_hwm MiB"
echo "knot $("$knotd" --version 2>/dev/null | awk '{ print $NF }'), from zone files; peak (VmHWM): $knot_hwm MiB"
echo
printf "| %-9s | %-5s | %8s | %8s | %8s | %14s | %14s | %7s |\n" server proto QPS lost "avg ms" "p50 ms (½ QPS)" "p99 ms (½ QPS)" "RSS MiB"
printf "|-----------|-------|----------|----------|----------|----------------|----------------|---------|\n"
printf "%s" "$rows"
if [ "${qps_of[knot-udp]}" -gt 0 ]; then
  echo
  awk -v a="${qps_of[kube-netd-udp]}" -v b="${qps_of[knot-udp]}" \
    'BEGIN { printf "UDP queries/s: kube-netd at %.2f x knot\n", a / b }'
fi
