#!/usr/bin/env bash
# Benchmarks on one machine, figures printed and written down (not timed tests). Builds the
# static release binary, installs what it is compared with when it can (wrk, nginx, gh, and a
# font for the chart: Debian packages, as root or through sudo), then runs the driver
# (tests/bench), which starts and stops everything else itself: the stand-in GitHub API with
# 50 ms on every answer, the daemons, nginx, wrk and gh.
#
#   scripts/bench.sh --quick       # 3 nodes x 20 endpoints, what the swarm saved; under a minute once built
#   scripts/bench.sh               # the full run (about 12 minutes): every section of the README's table
#   scripts/bench.sh --only budget,latency --out /tmp/figures
#
# Writes report.json, report.md (the README's table) and report.png (its chart) to target/bench/
# unless --out says otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=false
for arg in "$@"; do
  [[ "$arg" == "--quick" ]] && quick=true
done

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo_cmd=(sudo -n)
fi
missing=()
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v file >/dev/null 2>&1 || missing+=(file)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if [[ "$quick" == false ]]; then
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v gh >/dev/null 2>&1 || missing+=(gh)
fi
# Installs Debian packages; a policy-rc.d keeps the nginx package from starting a system nginx.
install_packages() {
  local policy=/usr/sbin/policy-rc.d created=false status=0
  "${sudo_cmd[@]}" apt-get update -qq || return 1
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null &&
      "${sudo_cmd[@]}" chmod +x "$policy" && created=true
  fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || status=$?
  if [[ "$created" == true ]]; then
    "${sudo_cmd[@]}" rm -f "$policy"
  fi
  return "$status"
}
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "==> installing Debian packages: ${missing[*]}" >&2
  if ! install_packages "${missing[@]}" >&2; then
    echo "could not install ${missing[*]}; the sections that need them are reported as not measured" >&2
  fi
fi

echo "==> building the static binary" >&2
binary="$(scripts/build-static.sh)"
echo "==> building the benchmark driver" >&2
cargo build --locked --profile bench -p peercache-bench >&2
exec "$root/target/release/peercache-bench" --binary "$binary" "$@"
