#!/usr/bin/env bash
# Runs every benchmark and prints one table of medians.
#
# Criterion benches (pure: control plane, policy, render, DNS zone) are run with --quick and
# read back from target/criterion/**/new/estimates.json; the kernel benches (lab, agent apply,
# conntrack: real namespaces, need root) and the API server's list and a lab's apply latency
# with the real kubectl print their own tables, which are passed through.
# Usage: scripts/bench.sh [--no-kernel]
set -euo pipefail
cd "$(dirname "$0")/.."

kernel=1
[ "${1:-}" = "--no-kernel" ] && kernel=0

rm -rf target/criterion
for spec in netd-controlplane:resolve netd-policy:policy netd-render:services netd-dns:zone; do
  crate=${spec%%:*} bench=${spec##*:}
  echo "running $crate/$bench ..." >&2
  cargo bench -q -p "$crate" --bench "$bench" -- --quick >/dev/null 2>&1
done

python3 - <<'PY'
import json, pathlib
rows = []
for est in sorted(pathlib.Path("target/criterion").glob("**/new/estimates.json")):
    name = "/".join(est.parts[2:-2])
    ns = json.loads(est.read_text())["median"]["point_estimate"]
    rows.append((name, ns))
def fmt(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"
width = max((len(r[0]) for r in rows), default=10)
print(f"| {'benchmark':<{width}} | median |")
print(f"|{'-' * (width + 2)}|--------|")
for name, ns in rows:
    print(f"| {name:<{width}} | {fmt(ns)} |")
PY

if [ "$kernel" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "kernel benches skipped: they need root" >&2
    exit 0
  fi
  echo
  cargo bench -q -p netd-lab --bench lab 2>/dev/null
  echo
  cargo bench -q -p netd-agent --bench apply 2>/dev/null
  echo
  cargo bench -q -p netd-kernel --bench conntrack 2>/dev/null
  if [ -x /usr/bin/kubectl ]; then
    echo
    cargo bench -q -p netd-apiserver --bench list 2>/dev/null
    echo
    cargo bench -q -p kube-netd --bench lab_apply 2>/dev/null
  fi
fi
