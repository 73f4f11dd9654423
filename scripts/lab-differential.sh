#!/usr/bin/env bash
# The randomised differential lab test (crates/lab/tests/differential.rs) with more seeds and
# steps than CI runs: seeded sequences of apply, delete, re-create, scale, relabel and policy
# edits, the lab's matrix and Services checked against the engine after every step. A failure
# prints the seed and the shortest failing sequence found. Needs root.
#
# Usage: scripts/lab-differential.sh [--seeds N] [--steps K] [--seed S [--only LIST]]
#   --seeds N     seeds 1..N (default 20)
#   --steps K     steps per seed (default 100)
#   --seed S      only seed S (replays a failure with the same --steps)
#   --only LIST   only these steps of seed S's sequence (e.g. 6,7: a shrunk failure)
# Example: scripts/lab-differential.sh --seed 1 --steps 12 --only 6,7
set -euo pipefail

seeds=20
steps=100
seed=
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --only) export NETD_DIFF_ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
export NETD_DIFF_STEPS="$steps"
if [ -n "${NETD_DIFF_ONLY:-}" ] && [ -z "$seed" ]; then
  echo "--only needs --seed" >&2; exit 2
fi
if [ -n "$seed" ]; then
  export NETD_DIFF_SEED="$seed"
else
  export NETD_DIFF_SEEDS="$seeds"
fi
exec cargo test -p netd-lab --test differential
