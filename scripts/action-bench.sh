#!/usr/bin/env bash
# Measures the composite action's overhead when the binary is already in the tool cache: the whole
# step, scripts/action-setup.sh, as action.yml runs it (install from the tool cache with its
# SHA-256 check, init, serve --daemon, register, discover --connect), RUNS times (default 10).
# Each run is a new job on this host (its own RUNNER_TEMP and cache dir) with the secret and a
# `dir:` registry that the earlier runs' nodes are in, so discover finds and dials them, as in
# a busy fleet. The binary is the static release build, installed once beforehand from a fake
# release on loopback (that first, downloading run is not counted). mDNS is off, so that other
# nodes on this machine stay out of the figures.
#
#   scripts/action-bench.sh            # RUNS=10
#   RUNS=20 scripts/action-bench.sh
#
# Prints every run, then the median and the median of each phase (from the step's notice).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${RUNS:-10}"

work="$(mktemp -d)"
server=""
cleanup() {
  local home
  for home in "$work"/job-*/tmp/peercache; do
    if [[ -f "$home/serve.json" ]]; then PEERCACHE_HOME="$home" "$static" stop >/dev/null 2>&1 || true; fi
  done
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

static="$(scripts/build-static.sh)"
mkdir -p "$work/release/pack"
cp "$static" "$work/release/pack/peercache"
tar -czf "$work/release/peercache-x86_64-unknown-linux-musl.tar.gz" -C "$work/release/pack" peercache
(cd "$work/release" && sha256sum peercache-x86_64-unknown-linux-musl.tar.gz >SHA256SUMS)
python3 tests/action/fake_release.py "$work/release" "$work/requests.log" >"$work/release.out" 2>&1 &
server=$!
for _ in $(seq 100); do
  url="$(sed -n 's/^FAKE_RELEASE_URL=//p' "$work/release.out")"
  [[ -n "$url" ]] && break
  sleep 0.05
done
[[ -n "${url:-}" ]] || { echo "the fake release server did not start" >&2; exit 1; }

# job N: one run of the action's step as a new job; prints its wall time in ms.
job() {
  local d="$work/job-$1" start end
  mkdir -p "$d/tmp" "$d/home"
  : >"$d/env"
  : >"$d/output"
  : >"$d/path"
  start="${EPOCHREALTIME/[.,]/}"
  env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$d/home" XDG_CACHE_HOME="$d/home/.cache" \
    GITHUB_ACTIONS=true RUNNER_OS=Linux RUNNER_ARCH=X64 RUNNER_TEMP="$d/tmp" RUNNER_TOOL_CACHE="$work/tool-cache" \
    GITHUB_ENV="$d/env" GITHUB_OUTPUT="$d/output" GITHUB_PATH="$d/path" GITHUB_WORKFLOW=action-bench \
    GITHUB_ACTION_PATH="$root" PEERCACHE_PORT_LOCK_DIR="$work/port-locks" \
    PEERCACHE_DOWNLOAD_URL="$url" INPUT_VERSION=0.0.0-bench INPUT_SECRET=ActionBench0iqehmi6L6yxQHplLeH6ieBlvwChWqe7MJ2qCp2 \
    INPUT_GITHUB_TOKEN=ghs_benchtoken INPUT_REGISTRY="dir:$work/peers" INPUT_PORT=auto INPUT_TTL=300 \
    INPUT_MDNS=false INPUT_LOG_LEVEL=info INPUT_FAIL_ON_ERROR=true \
    bash scripts/action-setup.sh >"$d/log" 2>&1 || { cat "$d/log" >&2; exit 1; }
  end="${EPOCHREALTIME/[.,]/}"
  echo $(((end - start) / 1000))
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

first="$(job 0)"
echo "run 0 (downloads and installs into the tool cache; not counted): $first ms"
times=()
for ((i = 1; i <= runs; i++)); do
  times+=("$(job "$i")")
  printf 'run %d: %s ms (%s)\n' "$i" "${times[-1]}" \
    "$(sed -n 's/^::notice title=peercache::.*found, local API ready (\(.*\))$/\1/p' "$work/job-$i/log")"
done
if grep -q 'peercache-x86_64' <(tail -n +3 "$work/requests.log"); then
  echo "error: a counted run downloaded the binary again" >&2
  exit 1
fi

echo
echo "the whole step with a cached binary, $runs runs: median $(printf '%s\n' "${times[@]}" | median) ms" \
  "(min $(printf '%s\n' "${times[@]}" | sort -n | head -n 1), max $(printf '%s\n' "${times[@]}" | sort -n | tail -n 1))"
for phase in install init serve register discover; do
  printf '  %-9s median %s ms\n' "$phase" "$(for ((i = 1; i <= runs; i++)); do
    sed -n "s/^::notice title=peercache::.*[(, ]$phase \([0-9]*\) ms.*/\1/p" "$work/job-$i/log"
  done | median)"
done
echo "peers found by the last run: $(sed -n 's/^peer-count=//p' "$work/job-$runs/output" | tail -n 1)"
