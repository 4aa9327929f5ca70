#!/usr/bin/env bash
# Benchmarks that print figures (not timed tests). Builds the static release binary, then
# measures it against the stand-in GitHub API (50 ms latency) on loopback:
#   benches/fetch.rs   whole-process `peercache fetch` latency by source, no daemon
#   benches/swarm.rs   upstream calls for N nodes x M endpoints at once, peer-hit latency,
#                      daemon RSS idle and with peers, start-to-ready time
#
#   scripts/bench.sh                        # 200 runs, 10 nodes x 50 endpoints
#   BENCH_RUNS=1000 BENCH_NODES=20 scripts/bench.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

binary="$(scripts/build-static.sh)"
export PEERCACHE_BIN="$binary"
cargo bench --locked --bench fetch
cargo bench --locked --bench swarm
