#!/usr/bin/env bash
# The steps of .github/workflows/e2e.yml: jobs that use the action (`uses: ./`) and fetch the same
# endpoints from the stand-in GitHub API (tests/fakehub), which must count each endpoint once.
#
#   action-e2e.sh hub       start the stand-in, or reuse the one the jobs on this host share;
#                           exports E2E_HUB_URL and E2E_DIR to GITHUB_ENV, and the swarm secret
#                           the jobs of this host share as the step output `secret` (masked)
#   action-e2e.sh outputs   check the action's outputs (OUT_* variables) and environment
#   action-e2e.sh fetch     wait for the other jobs' nodes, fetch, wait for them to finish, check
#                           the stand-in's counts
#   action-e2e.sh stop      stop this job's node; the last job out stops the stand-in
#
# PEERCACHE_E2E_DIR names a directory that all jobs of the matrix share because they run on one
# host (act in host mode: scripts/test-action.sh sets it). Then the stand-in and the registry
# (`dir:$E2E_DIR/peers`) are shared, and every node must find the E2E_JOB_TOTAL - 1 others.
# Without it each job has a directory of its own ($RUNNER_TEMP: GitHub-hosted runners are separate
# machines), its own stand-in and no peers. FAKEHUB_BIN names a built fakehub binary; without it,
# it is built with cargo.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
endpoints=10      # /repos/octo/swarm/contents/r0 .. r9
wait_seconds=120  # for the other jobs, at each barrier

die() {
  printf '::error title=e2e::%s\n' "$*"
  exit 1
}

if [[ -n "${PEERCACHE_E2E_DIR:-}" ]]; then
  dir="$PEERCACHE_E2E_DIR"
  job_total="${E2E_JOB_TOTAL:?E2E_JOB_TOTAL: the number of jobs that share PEERCACHE_E2E_DIR}"
else
  dir="${RUNNER_TEMP:?}/peercache-e2e"
  job_total=1
fi
job="${E2E_JOB:?E2E_JOB: the name of this job in the matrix}"

# wait_for WHAT COMMAND...: runs COMMAND until it succeeds, for at most $wait_seconds.
wait_for() {
  local what="$1" deadline=$((SECONDS + wait_seconds))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || die "gave up after ${wait_seconds}s waiting for $what"
    sleep 0.2
  done
}
# at_least N PATTERN: whether N files match PATTERN (one per job that got there).
at_least() { (($(compgen -G "$2" | wc -l) >= $1)); }
# The URL goes to curl on stdin (a config line), never in argv: it may hold the capability.
get() { curl --silent --show-error --fail --max-time 10 --config - <<<"url = \"$1\""; }

hub() {
  mkdir -p "$dir"
  exec 9>"$dir/hub.lock"
  flock -w 600 9 || die "timed out waiting for another job to start the stand-in"
  if [[ -s "$dir/hub.url" ]] && get "$(<"$dir/hub.url")/_fakehub/stats?records=false" >/dev/null 2>&1; then
    echo "reusing the stand-in GitHub API at $(<"$dir/hub.url")"
  else
    local fakehub="${FAKEHUB_BIN:-}"
    if [[ -z "$fakehub" ]]; then
      (cd "$root" && cargo build --locked -p fakehub >&2)
      fakehub="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/fakehub"
    fi
    [[ -x "$fakehub" ]] || die "no fakehub binary at $fakehub"
    # Detached with every stream redirected, so that this step ends while the stand-in runs on;
    # without the lock's descriptor, which would otherwise keep the lock held for its lifetime.
    setsid "$fakehub" --listen 127.0.0.1:0 --generate "$endpoints" --latency-ms 20 \
      </dev/null >"$dir/hub.out" 2>"$dir/hub.log" 9>&- &
    echo "$!" >"$dir/hub.pid"
    wait_for "the stand-in to listen" grep -q "^FAKEHUB_URL=" "$dir/hub.out"
    sed -n 's/^FAKEHUB_URL=//p' "$dir/hub.out" >"$dir/hub.url"
    echo "started the stand-in GitHub API at $(<"$dir/hub.url") (pid $(<"$dir/hub.pid"))"
  fi
  # The swarm secret of the jobs that share this host: made once (32 random bytes, as
  # `peercache secret` makes them), kept 0600, masked, handed to the action as a step output.
  if [[ ! -s "$dir/swarm.secret" ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 >"$dir/swarm.secret.tmp" && mv "$dir/swarm.secret.tmp" "$dir/swarm.secret")
  fi
  local secret
  secret="$(<"$dir/swarm.secret")"
  echo "::add-mask::$secret"
  printf 'secret=%s\n' "$secret" >>"$GITHUB_OUTPUT"
  printf 'E2E_HUB_URL=%s\nE2E_DIR=%s\n' "$(<"$dir/hub.url")" "$dir" >>"$GITHUB_ENV"
}

outputs() {
  local problems=()
  [[ "${OUT_PEER_ID:-}" =~ ^12D3KooW ]] || problems+=("peer-id output: \"${OUT_PEER_ID:-}\"")
  [[ "${OUT_PORT:-}" =~ ^[0-9]+$ ]] || problems+=("port output: \"${OUT_PORT:-}\"")
  [[ "${OUT_PEER_COUNT:-}" =~ ^[0-9]+$ ]] || problems+=("peer-count output: \"${OUT_PEER_COUNT:-}\"")
  [[ "${OUT_API_URL:-}" =~ ^http://127\.0\.0\.1:[0-9]+/ ]] || problems+=("api-url output: \"${OUT_API_URL:-}\"")
  [[ "${OUT_API_URL:-}" == "${PEERCACHE_API:-}" ]] || problems+=("PEERCACHE_API is \"${PEERCACHE_API:-}\", not the api-url output")
  [[ "${OUT_PEERS:-}" == "${PEERCACHE_BOOTSTRAP_PEERS:-}" ]] ||
    problems+=("PEERCACHE_BOOTSTRAP_PEERS is \"${PEERCACHE_BOOTSTRAP_PEERS:-}\", not the peers output \"${OUT_PEERS:-}\"")
  [[ "${PEERCACHE_PEER_ID:-}" == "${OUT_PEER_ID:-}" ]] || problems+=("PEERCACHE_PEER_ID is \"${PEERCACHE_PEER_ID:-}\"")
  [[ -n "${PEERCACHE_HOME:-}" && -d "${PEERCACHE_HOME:-}" ]] || problems+=("PEERCACHE_HOME is \"${PEERCACHE_HOME:-}\"")
  command -v peercache >/dev/null 2>&1 || problems+=("peercache is not on PATH ($PATH)")
  # The secret and the token stay inside the action's step.
  [[ -z "${PEERCACHE_SECRET:-}" ]] || problems+=("PEERCACHE_SECRET reached a later step")
  [[ -z "${PEERCACHE_TOKEN:-}" ]] || problems+=("PEERCACHE_TOKEN reached a later step")
  if ((${#problems[@]} > 0)); then
    printf '%s\n' "${problems[@]}" >&2
    die "the action's outputs and environment are wrong (above)"
  fi
  # For scripts/test-action.sh: act does not stop background processes, so it stops what is left.
  mkdir -p "$dir"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$PEERCACHE_HOME/serve.json" >"$dir/daemon-$job.pid"
  echo "outputs: peer-id $OUT_PEER_ID, port $OUT_PORT, $OUT_PEER_COUNT peer(s), api-url set; peercache at $(command -v peercache)"
}

connected_peers() {
  get "$PEERCACHE_API/api/peers" | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_count"])'
}
connected_to_at_least() { (($(connected_peers) >= $1)); }

fetch() {
  local want=$((job_total - 1)) i source sources=()
  wait_for "$want peer(s) to connect" connected_to_at_least "$want"
  echo "connected to $(connected_peers) peer(s)"
  for ((i = 0; i < endpoints; i++)); do
    source="$(peercache fetch -i "repos/octo/swarm/contents/r$i" | sed -n 's/^x-peercache-source: //p' | tr -d '\r')"
    sources+=("$source")
    echo "repos/octo/swarm/contents/r$i: $source"
  done
  printf '%s\n' "${sources[@]}" >"$dir/sources-$job.tmp"
  mv "$dir/sources-$job.tmp" "$dir/sources-$job"
  wait_for "the other jobs to fetch" at_least "$job_total" "$dir/sources-*"

  get "$E2E_HUB_URL/_fakehub/stats?records=false" >"$RUNNER_TEMP/e2e-stats.json"
  python3 - "$RUNNER_TEMP/e2e-stats.json" "$endpoints" "$job_total" "$dir"/sources-* <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
endpoints, jobs = int(sys.argv[2]), int(sys.argv[3])
counts = {f"/repos/octo/swarm/contents/r{i}": stats["by_path"].get(f"/repos/octo/swarm/contents/r{i}", 0) for i in range(endpoints)}
sources = {}
for path in sys.argv[4:]:
    for line in open(path):
        sources[line.strip()] = sources.get(line.strip(), 0) + 1
print(f"the stand-in answered {stats['total']} requests for {endpoints} endpoints x {jobs} job(s); "
      f"where the jobs' answers came from: {sources}")
wrong = {path: n for path, n in counts.items() if n != 1}
if wrong:
    print(f"::error title=e2e::endpoints not counted exactly once: {wrong}")
    sys.exit(1)
# Every job has a cache dir of its own: what one job fetched, the others got from it.
want = {"upstream": endpoints, "peer": endpoints * (jobs - 1)} if jobs > 1 else {"upstream": endpoints}
if sources != want:
    print(f"::error title=e2e::expected the answers {want}, got {sources}")
    sys.exit(1)
print("each endpoint reached the stand-in GitHub API exactly once")
PY
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
    {
      echo "### e2e job $job: $endpoints endpoints, $job_total job(s) sharing one stand-in GitHub API"
      printf '%s\n' "${sources[@]}" | sort | uniq -c | awk '{ printf "- %s: %s\n", $2, $1 }'
    } >>"$GITHUB_STEP_SUMMARY"
  fi
}

stop() {
  if command -v peercache >/dev/null 2>&1 && [[ -n "${PEERCACHE_API:-}" ]]; then peercache stop || true; fi
  mkdir -p "$dir"
  exec 9>"$dir/hub.lock"
  flock -w 60 9 || true
  : >"$dir/stopped-$job"
  if at_least "$job_total" "$dir/stopped-*" && [[ -s "$dir/hub.pid" ]]; then
    local pid
    pid="$(<"$dir/hub.pid")"
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */fakehub ]]; then
      kill "$pid" && echo "stopped the stand-in GitHub API (pid $pid)"
    fi
    rm -f "$dir/hub.pid" "$dir/hub.url"
  fi
}

case "${1:-}" in
  hub | outputs | fetch | stop) "$1" ;;
  *) die "usage: $0 hub|outputs|fetch|stop" ;;
esac
