#!/usr/bin/env bash
# The three proxy modes in one VM boot: full sync and one endpoint changed at 10,000
# Services x 10 endpoints in iptables, nftables and IPVS mode, and new-connection latency to
# the last Service / to the first, measured by the proxy_modes example (release) inside
# scripts/kernel-vm.sh, which boots Debian's stock kernel (it has IPVS; this machine's own
# kernel may not). Prints the example's progress lines, its markdown table (a column per
# mode) and its RESULT lines.
#
# Usage: scripts/bench-ipvs.sh [--size NxK[:MODES]]... [--reps R] [--connections C]
#                              [--rounds R] [--mem MB] [--cpus N] [--timeout S] [--host]
# Each --size is one run of the example in the same VM boot: N Services x K endpoints, in
# MODES (comma-separated; default every mode), e.g. --size 1000x10 --size 10000x10:nftables,ipvs
# when iptables mode at the full size takes too long. Defaults: one size, 10000x10, 5
# repetitions of the endpoint change, 1,000 connections per target and round, 3 rounds, a VM
# of 4096 MB with 2 virtual CPUs stopped after 7200 s (--cpus 1 leaves a core of a 2-core
# machine to other work; each sync runs on one CPU anyway). --host runs on this machine's
# kernel instead (it must have IPVS for IPVS mode).
# The VM emulates its CPU in software (TCG) unless KERNEL_VM_ACCEL=kvm: its times are many
# times a real machine's; compare the modes with each other, in the same run.
# Needs root, cargo, and for the VM scripts/install-deps.sh --vm.
set -euo pipefail

args=()
sizes=()
mem=4096
cpus=2
timeout_s=7200
host=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) sizes+=("$2"); shift 2 ;;
    --reps|--connections|--rounds) args+=("$1" "$2"); shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --host) host=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench-ipvs: needs root (it creates network namespaces)" >&2
  exit 1
fi

echo "== building the proxy_modes example (release)" >&2
CARGO_INCREMENTAL=0 cargo build --release --locked -q -p netd-agent --example proxy_modes
example=target/release/examples/proxy_modes
[ ${#sizes[@]} -gt 0 ] || sizes=(10000x10)
# One line per run: the example's arguments.
runs=()
for spec in "${sizes[@]}"; do
  size=${spec%%:*}
  modes=iptables,nftables,ipvs
  [ "$size" = "$spec" ] || modes=${spec#*:}
  case "$size" in
    *x*) ;;
    *) echo "bench-ipvs: --size $spec: expected NxK[:MODES]" >&2; exit 2 ;;
  esac
  runs+=("--services ${size%x*} --endpoints ${size#*x} --modes $modes ${args[*]-}")
done
# Runs every line of runs on the kernel it is on; the first failure ends it.
all_runs=$(printf '%s\n' "${runs[@]}")
runner='while read -r line; do
  [ -n "$line" ] || continue
  echo "== proxy_modes $line"
  "$0" $line || exit 1
done <<EOF
'"$all_runs"'
EOF'
if [ "$host" = 1 ]; then
  exec bash -c "$runner" "$example"
fi
echo "== running it in scripts/kernel-vm.sh (--mem $mem, --cpus $cpus, --timeout $timeout_s)" >&2
exec ./scripts/kernel-vm.sh --modules "ip_vs ip_vs_rr" --mem "$mem" --cpus "$cpus" \
  --timeout "$timeout_s" \
  -- bash -c "$runner" "$example"
