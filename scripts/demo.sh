#!/usr/bin/env bash
# The main job on one machine, with no access to GitHub needed: builds peercache, starts the
# stand-in GitHub API on loopback (50 ms latency), fetches 20 endpoints twice (as two CI jobs
# with different tokens would) and shows what reached "GitHub".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==> building peercache and the stand-in GitHub API (release)" >&2
cargo build --release --locked -p peercache -p fakehub >&2
bin="$root/target/release"

work="$(mktemp -d)"
hub_pid=""
cleanup() {
  if [[ -n "$hub_pid" ]]; then kill "$hub_pid" 2>/dev/null || true; wait "$hub_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/fakehub" --listen 127.0.0.1:0 --latency-ms 50 --generate 20 --size 20480 >"$work/hub.out" &
hub_pid=$!
for _ in $(seq 100); do
  grep -q '^FAKEHUB_URL=' "$work/hub.out" 2>/dev/null && break
  sleep 0.05
done
hub_url="$(sed -n 's/^FAKEHUB_URL=//p' "$work/hub.out")"
[[ -n "$hub_url" ]] || { echo "the stand-in GitHub API did not start" >&2; exit 1; }

export PEERCACHE_HOME="$work/home" PEERCACHE_CACHE_DIR="$work/cache" PEERCACHE_API_URL="$hub_url"

run_job() {
  local token="$1" sources=()
  for i in $(seq 0 19); do
    sources+=("$(PEERCACHE_TOKEN="$token" "$bin/peercache" fetch -i "repos/octo/swarm/contents/r$i" | sed -n 's/^x-peercache-source: //p' | tr -d '\r')")
  done
  printf '%s\n' "${sources[@]}" | sort | uniq -c | awk '{printf "    %s x %s\n", $1, $2}'
}

echo "job 1 (token A), 20 endpoints:"
run_job "demo-token-A"
echo "job 2 (token B), same 20 endpoints:"
run_job "demo-token-B"
echo "job 3 (token C), --ttl 0 forces revalidation:"
export PEERCACHE_TTL=0
run_job "demo-token-C"

stats="$(curl -fsS "$hub_url/_fakehub/stats?records=false" 2>/dev/null || python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$hub_url/_fakehub/stats?records=false")"
python3 - "$stats" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
by = s.get("by_status", {})
print(f"requests that reached the stand-in GitHub API: {s['total']} for 60 fetches "
      f"({by.get('200', 0)} answered 200, {by.get('304', 0)} answered 304 at no quota cost)")
PY
