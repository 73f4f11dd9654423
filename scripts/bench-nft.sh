#!/usr/bin/env bash
# nftables mode side by side: kube-netd's nftables back end (over netlink) and the
# kube-proxy-shaped nftables ruleset of the dataplane benchmark tools (`nft -f`, as
# kube-proxy's knftables does), at the same size in one run. Prints one markdown table:
# first full sync, one endpoint changed, one Service added, new-connection latency to the
# last Service / to the first, and NetworkPolicy (1,000 policies, 1,000 pods on the node) first
# apply (kube-netd only: the tools have no NetworkPolicy).
#
# Usage: scripts/bench-nft.sh [--services N] [--endpoints K] [--reps R] [--connections C]
#                             [--rounds R] [--dataplane DIR] [--no-kube-proxy]
# Defaults: 10,000 Services x 10 endpoints, 5 repetitions of each small change, 1,000
# connections per target and round, 3 rounds. DIR (or $DATAPLANE_BENCH) is the dataplane
# benchmark directory, by default ../shared/bench/dataplane beside the repository; without
# it only kube-netd's column is measured, and the script says so.
# Needs root (network namespaces), cargo, python3 (>= 3.9), gcc, nft. Expect minutes at the
# default size: the kube-proxy shape's single-transaction full load alone takes ~3 minutes of
# kernel time at 10,000 Services.
#
# Everything runs in network namespaces: ours are named nftb<pid>-... (this script's PID),
# the tools' are their own fixed dpb-* names; both are removed on exit, also on failure or
# interrupt. The tools are run from DIR; only the two small C clients they need are compiled,
# into a temporary directory (DIR may be read-only), with a copy of the scripts beside them.
set -euo pipefail

services=10000
endpoints=10
reps=5
connections=1000
rounds=3
dataplane="${DATAPLANE_BENCH:-}"
kube_proxy=1
while [ $# -gt 0 ]; do
  case "$1" in
    --services) services="$2"; shift 2 ;;
    --endpoints) endpoints="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --dataplane) dataplane="$2"; shift 2 ;;
    --no-kube-proxy) kube_proxy=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
repo="$(pwd)"
[ -n "$dataplane" ] || dataplane="$repo/../shared/bench/dataplane"

if [ "$(id -u)" != 0 ]; then
  echo "bench-nft: needs root (it creates network namespaces)" >&2
  exit 1
fi

prefix="nftb$$"
tmp="$(mktemp -d)"
child=""
# The dpb-* namespaces the tools invoked below create (bench_apply.py, bench_dataplane.py
# with one design and one size: lanes 1-3).
tool_namespaces="dpb-ap-fresh dpb-ap-nft dpb-srv dpb-c1 dpb-c2 dpb-c3 dpb-n1 dpb-n2 dpb-n3"
cleanup() {
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  for ns in $(ip netns list | awk '{print $1}'); do
    case "$ns" in
      "$prefix"-*) ;;
      *) case " $tool_namespaces " in *" $ns "*) ;; *) continue ;; esac ;;
    esac
    ip netns exec "$ns" nft flush ruleset 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" in the background as the one child the trap stops, and waits for it.
run_child() {
  "$@" &
  child=$!
  wait "$child"
  child=""
}

echo "== building the nft_sync example (release)" >&2
CARGO_INCREMENTAL=0 cargo build --release --locked -q -p netd-agent --example nft_sync
echo "== kube-netd: $services Services x $endpoints endpoints" >&2
run_child target/release/examples/nft_sync --services "$services" --endpoints "$endpoints" \
  --reps "$reps" --connections "$connections" --rounds "$rounds" --prefix "$prefix" \
  > "$tmp/ours.txt"
cat "$tmp/ours.txt" >&2

kp_note=""
if [ "$kube_proxy" = 0 ]; then
  kp_note="not measured (--no-kube-proxy)"
elif [ ! -f "$dataplane/gen_rules.py" ] || [ ! -f "$dataplane/bench_apply.py" ]; then
  kp_note="not measured: no dataplane benchmark at $dataplane (give --dataplane DIR or DATAPLANE_BENCH)"
  echo "bench-nft: $kp_note" >&2
else
  dataplane="$(cd "$dataplane" && pwd)"
  rules="$tmp/rules"
  echo "== kube-proxy shape: generating the rulesets ($dataplane/gen_rules.py)" >&2
  run_child python3 "$dataplane/gen_rules.py" "$rules/$services" "$services" "$endpoints"

  echo "== kube-proxy shape: full load, one transaction (bench_apply.py nft.full)" >&2
  run_child python3 "$dataplane/bench_apply.py" --rules "$rules" --sizes "$services" \
    --cases nft.full --reps-small 1 --reps-big 1 --out "$tmp/apply.jsonl" >&2
  echo "== kube-proxy shape: one endpoint changed (bench_apply.py nft.inc)" >&2
  run_child python3 "$dataplane/bench_apply.py" --rules "$rules" --sizes "$services" \
    --cases nft.inc --reps-small "$reps" --reps-big "$reps" --out "$tmp/apply.jsonl" >&2

  # One Service added in kube-proxy's layout (its chain, its endpoints' chains, its
  # service-ips element) and removed again, with nft -f against the loaded table; the
  # tools have no such case, so this uses their generator and their netns runner.
  echo "== kube-proxy shape: one Service added (nft -f, in $prefix-kp)" >&2
  cat > "$tmp/service_add.py" <<'PY'
import glob, json, os, sys
dp, d, n, k, reps, ns, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
sys.path.insert(0, dp)
import gen_rules as g
from nsutil import ns_add, ns_del, run_in_ns
s = g.Svc(n, k)  # the next Service after the loaded ones
add = ["add table %s" % g.T] + g.nft_full_cmds([s])[len(g.nft_static_cmds()):]
delete = ["delete element %s service-ips { %s . tcp . %d }" % (g.T, s.vip, g.SVC_PORT),
          "delete chain %s %s" % (g.T, s.nft_svc_chain)] + \
         ["delete chain %s %s" % (g.T, s.nft_ep_chain(ep)) for ep in s.eps]
files = {}
for name, cmds in (("add", add), ("delete", delete)):
    files[name] = os.path.join(d, "kp-service-%s.nft" % name)
    with open(files[name], "w") as f:
        f.write("\n".join(cmds) + "\n")
ns_add(ns)
try:
    for c in sorted(glob.glob(d + "/nft-chunk-*.nft")):
        r = run_in_ns(ns, ["nft", "-f", c])
        if r["rc"]:
            raise SystemExit("load %s: %s" % (c, r["err"]))
    with open(out, "w") as o:
        for rep in range(-1, reps):
            r = run_in_ns(ns, ["nft", "-f", files["add"]])
            if r["rc"]:
                raise SystemExit("add: " + r["err"])
            if rep >= 0:
                o.write(json.dumps({"case": "service.add", "wall": r["wall"], "sys": r["sys"]}) + "\n")
            print("rep=%d service.add wall=%.4fs sys=%.3f" % (rep, r["wall"], r["sys"]), flush=True)
            r = run_in_ns(ns, ["nft", "-f", files["delete"]])
            if r["rc"]:
                raise SystemExit("delete: " + r["err"])
finally:
    run_in_ns(ns, ["nft", "flush", "ruleset"])
    ns_del(ns)
PY
  run_child python3 "$tmp/service_add.py" "$dataplane" "$rules/$services" "$services" \
    "$endpoints" "$reps" "$prefix-kp" "$tmp/add.jsonl" >&2

  echo "== kube-proxy shape: connection latency (bench_dataplane.py, design nft)" >&2
  tools="$dataplane"
  if [ ! -x "$dataplane/tcpconn" ] || [ ! -x "$dataplane/tcpsrv" ]; then
    tools="$tmp/dataplane"
    mkdir -p "$tools"
    cp "$dataplane"/*.py "$tools/"
    gcc -O2 -Wall -o "$tools/tcpconn" "$dataplane/tcpconn.c"
    gcc -O2 -Wall -o "$tools/tcpsrv" "$dataplane/tcpsrv.c"
  fi
  run_child python3 "$tools/bench_dataplane.py" --rules "$rules" --sizes "$services" \
    --designs nft --reps "$rounds" --count "$connections" --warmup $((connections / 10)) \
    --out "$tmp/dataplane.jsonl" >&2
fi

python3 - "$tmp" "$kp_note" <<'PY'
import json, os, sys
tmp, note = sys.argv[1], sys.argv[2]

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

ours = {}
for line in open(os.path.join(tmp, "ours.txt")):
    if line.startswith("RESULT "):
        _, key, value = line.split()
        ours[key] = float(value)

def records(name):
    path = os.path.join(tmp, name)
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]

apply = records("apply.jsonl") + records("add.jsonl")
def kp(case, field="wall"):
    return median([r[field] for r in apply if r["case"] == case and r.get("rc", 0) == 0])
lat = {}
for r in records("dataplane.jsonl"):
    if r.get("design") == "nft" and r.get("rc", 0) == 0 and "p50_us" in r:
        lat.setdefault(r["target"], []).append(r["p50_us"])
kp_first, kp_last = median(lat.get("first", [])), median(lat.get("last", []))

def t(ms):
    return "%.2f s" % (ms / 1000) if ms >= 1000 else "%.2f ms" % ms
def o(key):
    return ours[key + "_commit_ms"]
def applied(key):
    s = lambda part: t(ours[key + "_sync_" + part + "_ms"])
    return "%s end to end (`Nftables::sync`; plan %s, render + table update %s, lowering %s, commit %s)" % (
        t(ours[key + "_sync_ms"]), s("plan"), s("update"), s("lower"), s("commit"))
def nft_f(case):
    w, s = kp(case), kp(case, "sys")
    return "%s wall (%s kernel)" % (t(w * 1000), t(s * 1000)) if w is not None else "–"

missing = "not measured" if note else "–"
n, k = int(ours["services"]), int(ours["endpoints"])
print("| at %s Services × %d endpoints | goal (at 10,000) | kube-netd nftables (netlink) | kube-proxy shape (`nft -f`) |" % (format(n, ","), k))
print("|---|---|---|---|")
full = ours["full_commit_ms"] + ours["full_lower_ms"] + ours["full_render_ms"]
print("| first full sync, kernel included | ≤ 2 s | %s (commit %s, lowering %s, plan + render %s) | %s |" % (
    t(full), t(o("full")), t(ours["full_lower_ms"]), t(ours["full_render_ms"]),
    nft_f("nft.full") if not note else missing))
print("| one endpoint of one Service changed, applied | ≤ 10 ms | %s | %s |" % (
    applied("endpoint"), nft_f("nft.inc") if not note else missing))
print("| one Service added, applied | ≤ 20 ms | %s | %s |" % (
    applied("service"), nft_f("service.add") if not note else missing))
f, l = ours["connect_first_p50_us"], ours["connect_last_p50_us"]
kp_lat = ("%.2f (p50 connect %.0f µs last, %.0f µs first)" % (kp_last / kp_first, kp_last, kp_first)
          if kp_first and kp_last else missing)
print("| new-connection latency, last Service ÷ first | ≤ 1.1 | %.2f (p50 connect %.0f µs last, %.0f µs first) | %s |" % (
    l / f, l, f, kp_lat))
if "policy_commit_ms" in ours:
    pol = ours["policy_commit_ms"] + ours["policy_lower_ms"] + ours["policy_render_ms"]
    print("| NetworkPolicy: 1,000 policies, 1,000 pods on the node, first apply | ≤ 1 s | %s (commit %s, lowering %s, compile + render %s) | – (the tools have no NetworkPolicy) |" % (
        t(pol), t(o("policy")), t(ours["policy_lower_ms"]), t(ours["policy_render_ms"])))
if note:
    print()
    print("kube-proxy shape " + note + ".")
PY
