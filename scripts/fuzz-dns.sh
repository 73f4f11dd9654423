#!/usr/bin/env bash
# Fuzzes the DNS server's request path (fuzz/fuzz_targets/query.rs: any bytes in, a
# well-formed answer with the query's ID or none out, never a panic) for a fixed time, on the
# stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags). Not run by CI.
#
# Usage: scripts/fuzz-dns.sh [SECONDS]   (default 600)
# Installs cargo-fuzz from crates.io when it is missing. Exits non-zero on a crash; libFuzzer
# leaves the input that crashed in fuzz/artifacts/query/.
set -euo pipefail

seconds="${1:-600}"
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

RUSTC_BOOTSTRAP=1 cargo fuzz build query
start=$(date +%s)
RUSTC_BOOTSTRAP=1 cargo fuzz run query -- -max_total_time="$seconds" -print_final_stats=1
echo "query: no crash in $(($(date +%s) - start)) s of fuzzing"
