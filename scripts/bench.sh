#!/usr/bin/env bash
# Benchmarks that print figures (not timed tests): builds the static release binary and measures
# whole-process `peercache fetch` latency by source against the stand-in GitHub API.
#
#   scripts/bench.sh                 # 200 runs
#   BENCH_RUNS=1000 scripts/bench.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

binary="$(scripts/build-static.sh)"
PEERCACHE_BIN="$binary" cargo bench --locked --bench fetch
