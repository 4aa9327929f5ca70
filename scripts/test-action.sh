#!/usr/bin/env bash
# Tests of the composite action (action.yml) and the workflows (.github/workflows), called by
# scripts/test.sh. Prints one line per test and a closing `N passed, M failed`; exits 1 on any
# failure.
#
#   lint      shellcheck, check-jsonschema (action and workflows), zizmor (nothing high), no
#             `${{ }}` inside a `run:` script, the tables of inputs and outputs in README.md and
#             docs/action.md = action.yml
#   install   scripts/install.sh against a fake release on loopback (good and bad checksums, the
#             tool cache, refused URLs, builds from source with a stand-in cargo)
#   setup     scripts/action-setup.sh as the action runs it: warnings, fail-on-error, secrets,
#             two jobs finding each other, the overhead with a cached binary
#   act       act runs .github/workflows/e2e.yml in host mode: three jobs, one swarm
#
#   scripts/test-action.sh                 # all of them
#   scripts/test-action.sh lint install    # some
#
# Uses what scripts/ensure-tools.sh installs (act, check-jsonschema and zizmor in target/tools;
# ShellCheck from Debian) and builds what it runs (the debug binaries, the static one for act).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# act, check-jsonschema, zizmor (and the python3 with ruamel.yaml) from scripts/ensure-tools.sh's venv.
if [[ ! -x target/tools/bin/zizmor ]]; then scripts/ensure-tools.sh; fi
PATH="$root/target/tools/bin:$PATH"
export PATH

groups=("$@")
if [[ ${#groups[@]} -eq 0 ]]; then groups=(lint install setup act); fi

work="$(mktemp -d)"
# The pids of the servers this script starts (tests run in subshells, hence a file).
: >"$work/pids"
cleanup() {
  set +e # clean up as much as possible, whatever fails
  local pid
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
  # Daemons and the stand-in that act's jobs left running (act does not stop them).
  cat "$work"/e2e/daemon-*.pid "$work"/e2e/hub.pid 2>/dev/null | while read -r pid; do
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
      */peercache | */fakehub) kill "$pid" 2>/dev/null || true ;;
    esac
  done
  local home
  for home in "$work"/setup-*/tmp/peercache; do
    if [[ -f "$home/serve.json" ]]; then PEERCACHE_HOME="$home" "$debug_bin" stop >/dev/null 2>&1 || true; fi
  done
  if [[ -z "${KEEP_WORK:-}" ]]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT

passed=0
failed=0
# t NAME FUNCTION [ARGS]: runs one test in a background subshell (so that `set -e` holds inside
# it), its output kept in a log that is shown when it fails.
t() {
  local name="$1" log="$work/test.log" pid
  shift
  ("$@") >"$log" 2>&1 &
  pid=$!
  if wait "$pid"; then
    passed=$((passed + 1))
    printf 'ok     %s\n' "$name"
  else
    failed=$((failed + 1))
    printf 'FAILED %s\n' "$name"
    sed 's/^/       | /' "$log" | tail -n 60
  fi
}
fail() {
  echo "assertion failed: $*" >&2
  exit 1
}
# expect_in FILE PATTERN: FILE holds a line matching the extended regex PATTERN.
expect_in() { grep -Eq -- "$2" "$1" || fail "$1 has no line matching /$2/: $(head -c 2000 "$1")"; }
expect_not_in() { ! grep -Eq -- "$2" "$1" || fail "$1 has a line matching /$2/"; }

# --- lint ---------------------------------------------------------------------------------------
lint_shellcheck() { shellcheck scripts/*.sh tests/action/*.sh .ci/run; }
lint_action_schema() { check-jsonschema --builtin-schema vendor.github-actions action.yml; }
lint_workflow_schema() { check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml; }
lint_zizmor() {
  zizmor --offline --no-progress action.yml .github/workflows || true # the whole report, for the log
  zizmor --offline --no-progress --min-severity high action.yml .github/workflows
}
lint_no_expressions_in_run() {
  python3 - action.yml .github/workflows/*.yml <<'PY'
import sys
from ruamel.yaml import YAML

bad = []
for path in sys.argv[1:]:
    doc = YAML(typ="safe").load(open(path, encoding="utf-8"))
    steps = list((doc.get("runs") or {}).get("steps") or [])
    for job in (doc.get("jobs") or {}).values():
        steps += job.get("steps") or []
    for step in steps:
        if "${{" in str(step.get("run", "")):
            bad.append(f"{path}: step {step.get('name') or step.get('id') or step['run'][:40]!r}")
print("\n".join(bad) or "no ${{ }} in any run: script")
sys.exit(1 if bad else 0)
PY
}
lint_readme_table() { python3 tests/action/check_readme_table.py action.yml README.md docs/action.md; }

# --- install ------------------------------------------------------------------------------------
# A fake peercache: install.sh only runs `--version`.
make_fake_binary() {
  mkdir -p "$work/fake-bin"
  printf '#!/bin/sh\necho "peercache 9.9.9-fake"\n' >"$work/fake-bin/peercache"
  chmod +x "$work/fake-bin/peercache"
}

# make_release DIR BINARY [bad]: a release dir with the x86_64 asset and SHA256SUMS (with a
# wrong checksum when asked).
make_release() {
  local dir="$1" binary="$2" staging sum
  mkdir -p "$dir"
  staging="$(mktemp -d)"
  cp "$binary" "$staging/peercache"
  tar -czf "$dir/peercache-x86_64-unknown-linux-musl.tar.gz" -C "$staging" peercache
  rm -rf "$staging"
  sum="$(sha256sum "$dir/peercache-x86_64-unknown-linux-musl.tar.gz" | cut -d' ' -f1)"
  if [[ "${3:-}" == bad ]]; then sum="$(printf '%s' "$sum" | tr '0-9a-f' '1-9a-f0')"; fi
  printf '%s  peercache-x86_64-unknown-linux-musl.tar.gz\n%s  peercache-aarch64-unknown-linux-musl.tar.gz\n' \
    "$sum" "$(printf '0%.0s' {1..64})" >"$dir/SHA256SUMS"
}

# start_release_server DIR: serves DIR on loopback; sets release_url and release_log.
start_release_server() {
  release_log="$work/release-requests-$RANDOM.log"
  : >"$release_log"
  : >"$work/release.out" # before the server's own redirect: the loop below reads it at once
  python3 tests/action/fake_release.py "$1" "$release_log" >"$work/release.out" 2>&1 &
  echo "$!" >>"$work/pids"
  local i
  for i in $(seq 100); do
    release_url="$(sed -n 's/^FAKE_RELEASE_URL=//p' "$work/release.out")"
    [[ -n "$release_url" ]] && return 0
    sleep 0.05
  done
  fail "the fake release server did not start: $(cat "$work/release.out")"
}

# run_install DIR [VAR=value]...: install.sh in a clean environment of a Linux X64 runner whose
# RUNNER_TEMP, RUNNER_TOOL_CACHE and GITHUB_PATH are under DIR; stdout to DIR/out, stderr to
# DIR/err; returns its status.
run_install() {
  local dir="$1"
  shift
  mkdir -p "$dir/tmp" "$dir/tool-cache"
  : >>"$dir/path"
  env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$dir" RUNNER_OS=Linux RUNNER_ARCH=X64 \
    RUNNER_TEMP="$dir/tmp" RUNNER_TOOL_CACHE="$dir/tool-cache" GITHUB_PATH="$dir/path" \
    GITHUB_ACTION_PATH="$root" "$@" bash scripts/install.sh >"$dir/out" 2>"$dir/err"
}

install_good_then_cached() {
  local d="$work/i-good" entry
  make_release "$work/rel-good" "$work/fake-bin/peercache"
  start_release_server "$work/rel-good"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" || fail "install failed: $(cat "$d/err")"
  entry="$d/tool-cache/peercache/9.9.9/x64"
  [[ "$(cat "$d/out")" == "$entry/peercache" ]] || fail "printed $(cat "$d/out"), expected $entry/peercache"
  [[ -x "$entry/peercache" && -f "$entry.complete" ]] || fail "nothing complete in $entry"
  [[ "$(cat "$d/path")" == "$entry" ]] || fail "GITHUB_PATH holds $(cat "$d/path")"
  expect_in "$release_log" '^/SHA256SUMS$'
  expect_in "$release_log" '^/peercache-x86_64-unknown-linux-musl.tar.gz$'
  expect_in "$d/err" 'verified SHA-256'

  # A second run uses the tool cache and downloads nothing.
  : >"$release_log"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" || fail "second install failed: $(cat "$d/err")"
  [[ "$(cat "$d/out")" == "$entry/peercache" ]] || fail "second run printed $(cat "$d/out")"
  [[ ! -s "$release_log" ]] || fail "the second run downloaded: $(cat "$release_log")"
  expect_in "$d/err" 'using the tool cache'

  # A binary changed in the tool cache is not trusted: it is downloaded again.
  printf '#!/bin/sh\necho tampered\n' >"$entry/peercache"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" || fail "reinstall failed: $(cat "$d/err")"
  expect_in "$d/err" 'is not the binary it should be .*recorded at install time'
  expect_in "$release_log" '^/peercache-x86_64-unknown-linux-musl.tar.gz$'
  cmp -s "$entry/peercache" "$work/fake-bin/peercache" || fail "the tampered binary stayed"
}

# pin_release DIR ACTION_DIR: an action checkout (ACTION_DIR/checksums.sha256) that pins the
# release v9.9.9 in DIR, as release.yml writes it into the tag's commit.
pin_release() {
  local dir="$1" action="$2" staging
  mkdir -p "$action"
  staging="$(mktemp -d)"
  tar -xzf "$dir/peercache-x86_64-unknown-linux-musl.tar.gz" -C "$staging" peercache
  {
    echo "# the release v9.9.9, pinned in the action at its tag"
    printf '%s  v9.9.9/peercache-x86_64-unknown-linux-musl.tar.gz\n' "$(sha256sum "$dir/peercache-x86_64-unknown-linux-musl.tar.gz" | cut -d' ' -f1)"
    printf '%s  v9.9.9/peercache-x86_64-unknown-linux-musl/peercache\n' "$(sha256sum "$staging/peercache" | cut -d' ' -f1)"
  } >"$action/checksums.sha256"
  rm -rf "$staging"
}

install_pinned_tool_cache_swap_refused() {
  local d="$work/i-pinned" action="$work/pinned-action" entry evil
  make_release "$work/rel-pinned" "$work/fake-bin/peercache"
  pin_release "$work/rel-pinned" "$action"
  start_release_server "$work/rel-pinned"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" GITHUB_ACTION_PATH="$action" ||
    fail "install failed: $(cat "$d/err")"
  expect_in "$d/err" 'verified SHA-256 .* \(pinned in the action\)'
  expect_not_in "$release_log" '^/SHA256SUMS$' # the pins, not the release's file, are trusted
  entry="$d/tool-cache/peercache/9.9.9/x64"
  # Another job on the runner swaps the cached binary and the checksum stored beside it.
  evil="$(printf '#!/bin/sh\necho evil\n')"
  printf '%s\n' "$evil" >"$entry/peercache"
  sha256sum "$entry/peercache" | cut -d' ' -f1 >"$entry/peercache.sha256"
  : >"$release_log"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" GITHUB_ACTION_PATH="$action" ||
    fail "reinstall failed: $(cat "$d/err")"
  expect_in "$d/err" 'is not the binary it should be .*pinned in the action'
  expect_in "$release_log" '^/peercache-x86_64-unknown-linux-musl.tar.gz$'
  cmp -s "$entry/peercache" "$work/fake-bin/peercache" || fail "the swapped binary stayed in the tool cache"
  [[ "$(cat "$d/out")" == "$entry/peercache" ]] || fail "printed $(cat "$d/out")"
  # An untouched cache is used as it is, checked against the pin.
  : >"$release_log"
  run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" GITHUB_ACTION_PATH="$action" ||
    fail "third install failed: $(cat "$d/err")"
  expect_in "$d/err" 'using the tool cache: .*\(SHA-256 pinned in the action\)'
  [[ ! -s "$release_log" ]] || fail "the third run downloaded: $(cat "$release_log")"
}

install_pinned_mismatch_refused() {
  local d="$work/i-pinned-bad" action="$work/pinned-bad-action"
  # The pins name one binary; the release (its SHA256SUMS agreeing) serves another.
  make_release "$work/rel-pinned-other" "$work/fake-bin/peercache"
  pin_release "$work/rel-pinned-other" "$action"
  mkdir -p "$work/other-bin"
  printf '#!/bin/sh\necho "peercache 9.9.9 (another build)"\n' >"$work/other-bin/peercache"
  chmod +x "$work/other-bin/peercache"
  make_release "$work/rel-pinned-bad" "$work/other-bin/peercache"
  start_release_server "$work/rel-pinned-bad"
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url" GITHUB_ACTION_PATH="$action"; then
    fail "a download that is not the pinned one was installed"
  fi
  expect_in "$d/err" 'error: checksum mismatch for peercache-x86_64-unknown-linux-musl.tar.gz of release v9.9.9: the action pins'
  [[ ! -e "$d/tool-cache/peercache/9.9.9/x64/peercache" ]] || fail "something was installed"
}

install_bad_checksum_refused() {
  local d="$work/i-bad"
  make_release "$work/rel-bad" "$work/fake-bin/peercache" bad
  start_release_server "$work/rel-bad"
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL="$release_url"; then
    fail "a checksum mismatch was installed"
  fi
  expect_in "$d/err" 'error: checksum mismatch for peercache-x86_64-unknown-linux-musl.tar.gz of release v9.9.9'
  [[ ! -e "$d/tool-cache/peercache/9.9.9/x64.complete" && ! -e "$d/tool-cache/peercache/9.9.9/x64/peercache" ]] ||
    fail "something was installed"
  [[ ! -s "$d/path" ]] || fail "GITHUB_PATH was written"
}

install_refuses_plain_http_elsewhere() {
  local d="$work/i-http"
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL=http://example.com/release; then
    fail "plain http to example.com was accepted"
  fi
  expect_in "$d/err" 'plain http is allowed for loopback hosts only'
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL=http://127.0.0.1.example.com/release; then
    fail "plain http to a name that starts like a loopback address was accepted"
  fi
  expect_in "$d/err" 'plain http is allowed for loopback hosts only'
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL=http://127.0.0.1@example.com/; then
    fail "credentials in the URL were accepted"
  fi
  expect_in "$d/err" 'credentials in URLs are not accepted'
  if run_install "$d" INPUT_VERSION=v9.9.9 PEERCACHE_DOWNLOAD_URL=ftp://127.0.0.1/; then
    fail "ftp was accepted"
  fi
  expect_in "$d/err" 'expected an https:// URL'
}

install_explicit_version_without_release_fails() {
  local d="$work/i-norel"
  mkdir -p "$work/rel-empty"
  start_release_server "$work/rel-empty"
  if run_install "$d" INPUT_VERSION=v9.9.7 PEERCACHE_DOWNLOAD_URL="$release_url" CARGO=/nonexistent/cargo; then
    fail "a missing release was accepted"
  fi
  expect_in "$d/err" 'error: version v9.9.7: release v9.9.7 has no SHA256SUMS'
}

# The default download URL: the action's own repository at its ref.
install_default_url() {
  local d="$work/i-url"
  # A ref that is a release tag, on a server that cannot answer: the URL shows in the error.
  if run_install "$d" GITHUB_ACTION_REF=v1.2.3 GITHUB_ACTION_REPOSITORY=octo/peercache \
    GITHUB_SERVER_URL=https://127.0.0.1:9 CARGO=/nonexistent/cargo; then
    fail "an unreachable release was accepted"
  fi
  expect_in "$d/err" 'downloading release v1.2.3 for Linux/X64 from https://127.0.0.1:9/octo/peercache/releases/download/v1.2.3'
}

install_from_source() {
  local d="$work/i-src" entry
  export FAKE_CARGO_LOG="$work/cargo.log" FAKE_CARGO_BINARY="$work/fake-bin/peercache"
  : >"$FAKE_CARGO_LOG"
  # A branch ref has no release: built from source, once.
  run_install "$d" GITHUB_ACTION_REF=main GITHUB_ACTION_REPOSITORY=octo/peercache CARGO="$root/tests/action/fake-cargo.sh" \
    FAKE_CARGO_LOG="$FAKE_CARGO_LOG" FAKE_CARGO_BINARY="$FAKE_CARGO_BINARY" || fail "source install failed: $(cat "$d/err")"
  entry="$(cat "$d/out")"
  [[ "$entry" == "$d/tool-cache/peercache/0.0.0-src."*/x64/peercache ]] || fail "installed at $entry"
  expect_in "$d/err" 'is not a release tag; building from source'
  [[ "$(wc -l <"$FAKE_CARGO_LOG")" -eq 1 ]] || fail "cargo ran $(wc -l <"$FAKE_CARGO_LOG") times"
  # The same source again: the tool cache, no build.
  run_install "$d" GITHUB_ACTION_REF=main CARGO="$root/tests/action/fake-cargo.sh" \
    FAKE_CARGO_LOG="$FAKE_CARGO_LOG" FAKE_CARGO_BINARY="$FAKE_CARGO_BINARY" || fail "second source install failed: $(cat "$d/err")"
  [[ "$(cat "$d/out")" == "$entry" ]] || fail "the second run printed $(cat "$d/out")"
  [[ "$(wc -l <"$FAKE_CARGO_LOG")" -eq 1 ]] || fail "cargo ran again"
  # A release tag whose release is missing (404) also falls back to the source.
  mkdir -p "$work/rel-none"
  start_release_server "$work/rel-none"
  rm -rf "$d/tool-cache"
  run_install "$d" GITHUB_ACTION_REF=v9.9.6 PEERCACHE_DOWNLOAD_URL="$release_url" CARGO="$root/tests/action/fake-cargo.sh" \
    FAKE_CARGO_LOG="$FAKE_CARGO_LOG" FAKE_CARGO_BINARY="$FAKE_CARGO_BINARY" || fail "fallback failed: $(cat "$d/err")"
  expect_in "$d/err" 'release v9.9.6 has no SHA256SUMS .*; building from source'
  [[ "$(wc -l <"$FAKE_CARGO_LOG")" -eq 2 ]] || fail "cargo did not run for the missing release"
}

install_unsupported_without_cargo() {
  local d="$work/i-win"
  if run_install "$d" RUNNER_OS=Windows GITHUB_ACTION_REF=v1.0.0 CARGO=/nonexistent/cargo; then
    fail "Windows without cargo was accepted"
  fi
  expect_in "$d/err" 'no prebuilt binary for Windows/X64'
  expect_in "$d/err" 'error: no release binary fits and cargo is not installed'
}

install_preinstalled_binary() {
  local d="$work/i-bin"
  cp "$work/fake-bin/peercache" "$work/fake-bin/my-peercache"
  run_install "$d" INPUT_BINARY="$work/fake-bin/my-peercache" || fail "binary input failed: $(cat "$d/err")"
  [[ "$(cat "$d/out")" == "$d/tmp/peercache-bin/peercache" ]] || fail "printed $(cat "$d/out")"
  [[ "$("$d/tmp/peercache-bin/peercache" --version)" == "peercache 9.9.9-fake" ]] || fail "the link does not run the binary"
  [[ "$(cat "$d/path")" == "$d/tmp/peercache-bin" ]] || fail "GITHUB_PATH holds $(cat "$d/path")"
  if run_install "$d" INPUT_BINARY="$work/nonexistent"; then fail "a missing binary was accepted"; fi
  expect_in "$d/err" 'is not an executable file'
}

# --- setup --------------------------------------------------------------------------------------
debug_bin="$root/target/debug/peercache"

# run_setup NAME [VAR=value]...: action-setup.sh as the action's step runs it, in a job of its own
# under $work/setup-NAME (RUNNER_TEMP, GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH); stdout and stderr
# to its `log`; returns its status.
run_setup() {
  local d="$work/setup-$1"
  shift
  mkdir -p "$d/tmp" "$d/home"
  : >"$d/env"
  : >"$d/output"
  : >"$d/path"
  env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$d/home" XDG_CACHE_HOME="$work/setup-cache" \
    GITHUB_ACTIONS=true RUNNER_OS=Linux RUNNER_ARCH=X64 RUNNER_TEMP="$d/tmp" RUNNER_TOOL_CACHE="$d/tool-cache" \
    GITHUB_ENV="$d/env" GITHUB_OUTPUT="$d/output" GITHUB_PATH="$d/path" GITHUB_WORKFLOW=setup-test \
    GITHUB_ACTION_PATH="$root" PEERCACHE_PORT_LOCK_DIR="$work/port-locks" \
    INPUT_BINARY="$debug_bin" INPUT_GITHUB_TOKEN=ghs_jobtoken1234 INPUT_PORT=auto INPUT_TTL=300 INPUT_MDNS=false \
    INPUT_LOG_LEVEL=info INPUT_FAIL_ON_ERROR=false "$@" \
    "${setup_tracer[@]}" bash scripts/action-setup.sh >"$d/log" 2>&1
}
# A command that run_setup puts in front of the step (setup_capability_not_in_argv traces it).
setup_tracer=()
stop_setup() { PEERCACHE_HOME="$work/setup-$1/tmp/peercache" "$debug_bin" stop >/dev/null 2>&1 || true; }

setup_no_secret_warns() {
  local d="$work/setup-nosecret"
  run_setup nosecret || fail "exit status $? without a secret: $(cat "$d/log")"
  expect_in "$d/log" '^::warning title=peercache::peer sharing is off: .*secret.*the job goes on with the local cache only$'
  expect_in "$d/output" '^peer-count=0$'
  expect_in "$d/output" '^api-url=http://127\.0\.0\.1:[0-9]+/'
  expect_in "$d/output" '^peer-id=12D3KooW'
  expect_in "$d/env" '^PEERCACHE_API=http://127\.0\.0\.1:'
  expect_in "$d/env" '^PEERCACHE_HOME='
  expect_in "$d/env" '^PEERCACHE_MDNS=false$'
  expect_in "$d/path" '/peercache-bin$'
  # The token is masked first thing, and written nowhere.
  [[ "$(head -n 1 "$d/log")" == '::add-mask::ghs_jobtoken1234' ]] || fail "the token is not masked first: $(head -n 1 "$d/log")"
  expect_not_in "$d/env" 'ghs_jobtoken1234'
  expect_not_in "$d/output" 'ghs_jobtoken1234'
  # The capability of the local API is masked before anything prints it.
  local capability
  capability="$(sed -n 's|^api-url=http://127\.0\.0\.1:[0-9]*/||p' "$d/output")"
  [[ -n "$capability" ]] || fail "no capability in the api-url output"
  [[ "$(grep -n -m1 -F -- "$capability" "$d/log" | cut -d: -f1)" == "$(grep -n -m1 -F -- "::add-mask::$capability" "$d/log" | cut -d: -f1)" ]] ||
    fail "the capability shows in the log before its ::add-mask::"
  # The node runs on for the later steps, and fetch finds it.
  curl -fsS -K- <<<"url = \"$(sed -n 's/^PEERCACHE_API=//p' "$d/env")/api/peers\"" >/dev/null || fail "the daemon does not answer"
  stop_setup nosecret
}

setup_no_secret_fail_on_error() {
  local d="$work/setup-strict" status=0
  run_setup strict INPUT_FAIL_ON_ERROR=true || status=$?
  [[ "$status" -eq 1 ]] || fail "exit status $status with fail-on-error and no secret, expected 1: $(cat "$d/log")"
  expect_in "$d/log" '^::error title=peercache::peer sharing is off: '
  expect_not_in "$d/log" '^::warning'
  # The daemon it started is stopped again.
  local api
  api="$(sed -n 's/^api-url=//p' "$d/output")"
  [[ -n "$api" ]] || fail "no api-url output: the daemon never started"
  if curl -fsS --max-time 5 -K- <<<"url = \"$api/api/peers\"" >/dev/null 2>&1; then
    stop_setup strict
    fail "the daemon was left running"
  fi
}

setup_install_failure_warns() {
  local d="$work/setup-noinstall" status=0
  run_setup noinstall INPUT_BINARY="$work/nonexistent/peercache" || status=$?
  [[ "$status" -eq 0 ]] || fail "exit status $status when the install fails: $(cat "$d/log")"
  expect_in "$d/log" '^::warning title=peercache::peercache could not be installed: binary: .* is not an executable file; later steps will not find it; the job goes on'
  expect_in "$d/output" '^peer-count=0$'
  run_setup noinstall INPUT_BINARY="$work/nonexistent/peercache" INPUT_FAIL_ON_ERROR=true && fail "fail-on-error did not fail"
  expect_in "$d/log" '^::error title=peercache::peercache could not be installed'
}

setup_bad_input_fails() {
  local d="$work/setup-badinput"
  run_setup badinput INPUT_FAIL_ON_ERROR=maybe && fail "fail-on-error: maybe was accepted"
  expect_in "$d/log" "^::error title=peercache::fail-on-error: expected true or false"
  run_setup badinput INPUT_TTL=$'60\nPEERCACHE_EVIL=1' && fail "a two-line input was accepted"
  expect_in "$d/log" '^::error title=peercache::ttl: expected one line'
  expect_not_in "$d/env" 'EVIL'
}

setup_two_jobs_find_each_other() {
  local registry="dir:$work/setup-registry" first_id second_log="$work/setup-second/log"
  run_setup first INPUT_SECRET=SetupSwarm0lj9kOKzVk5eHA0yQnEUGPyK8ga1l1iN9drXL6lCpAxc INPUT_REGISTRY="$registry" ||
    fail "first job: $(cat "$work/setup-first/log")"
  expect_in "$work/setup-first/output" '^peer-count=0$'
  expect_not_in "$work/setup-first/log" '::warning'
  first_id="$(sed -n 's/^peer-id=//p' "$work/setup-first/output")"
  run_setup second INPUT_SECRET=SetupSwarm0lj9kOKzVk5eHA0yQnEUGPyK8ga1l1iN9drXL6lCpAxc INPUT_REGISTRY="$registry" ||
    fail "second job: $(cat "$second_log")"
  expect_not_in "$second_log" '::warning'
  expect_in "$work/setup-second/output" '^peer-count=1$'
  expect_in "$work/setup-second/output" "^peers=.*/p2p/$first_id\$"
  expect_in "$work/setup-second/env" "^PEERCACHE_BOOTSTRAP_PEERS=.*/p2p/$first_id\$"
  expect_in "$work/setup-second/env" "^PEERCACHE_REGISTRY=$registry\$"
  # The secret is masked, and stays out of GITHUB_ENV and GITHUB_OUTPUT.
  expect_in "$second_log" '^::add-mask::SetupSwarm0lj9kOKzVk5eHA0yQnEUGPyK8ga1l1iN9drXL6lCpAxc$'
  expect_not_in "$work/setup-second/env" 'SetupSwarm0lj9kOKzVk5eHA0yQnEUGPyK8ga1l1iN9drXL6lCpAxc'
  expect_not_in "$work/setup-second/output" 'SetupSwarm0lj9kOKzVk5eHA0yQnEUGPyK8ga1l1iN9drXL6lCpAxc'
  stop_setup first
  stop_setup second
}

setup_weak_secret_refused() {
  local d="$work/setup-weak" status=0
  run_setup weak INPUT_SECRET=s3cret INPUT_FAIL_ON_ERROR=true || status=$?
  [[ "$status" -eq 1 ]] || fail "exit status $status with a weak secret and fail-on-error, expected 1: $(cat "$d/log")"
  expect_in "$d/log" "^::error title=peercache::peercache init failed: .*PEERCACHE_SECRET is too weak.*'peercache secret'"
  expect_not_in "$d/log" '^[^:].*s3cret' # masked, and never echoed
}

# No process the step starts carries the capability (or the secret, or the token) in its
# arguments, which every local user reads in /proc/*/cmdline: strace records every execve of
# the step and its children, with whole argument strings.
setup_capability_not_in_argv() {
  local d="$work/setup-argv" secret=ArgvCheck0mtbcje2LfpKCKE1flM62tMeW4Q83FvKwOwhyQ8vQ capability
  command -v strace >/dev/null 2>&1 || fail "strace is missing (scripts/ensure-tools.sh installs it)"
  # -b execve: each process is let go once it runs another program, so the daemon the step
  # leaves running is not held by strace (what those programs start is theirs, not the step's).
  setup_tracer=(strace -f -qq -b execve -e trace=execve -e signal=none -s 65536 -o "$d.execve")
  run_setup argv INPUT_SECRET="$secret" INPUT_REGISTRY="dir:$work/setup-argv-registry" ||
    { setup_tracer=(); fail "the step failed: $(cat "$d/log")"; }
  setup_tracer=()
  capability="$(sed -n 's|^api-url=http://127\.0\.0\.1:[0-9]*/||p' "$d/output")"
  [[ -n "$capability" ]] || fail "no capability in the api-url output"
  expect_in "$d.execve" 'execve\("[^"]*curl"'
  expect_in "$d.execve" 'execve\("[^"]*peercache", \[[^]]*"discover"'
  for needle in "$capability" "$secret" ghs_jobtoken1234; do
    if grep -F -- "$needle" "$d.execve" | grep -q 'execve('; then
      fail "a process got ${needle:0:8}… in its arguments: $(grep -F -- "$needle" "$d.execve" | head -n 3)"
    fi
  done
  stop_setup argv
}

# The action's overhead with the binary cached: the whole step (install through discover).
setup_overhead() {
  local i start times=() median
  for i in 1 2 3 4 5; do
    start="$(date +%s%N)"
    run_setup "overhead$i" INPUT_SECRET=Overhead0BQhQ345OMxCxZqbRsPC4DiZRGH0HmYogaqZcN5vv INPUT_REGISTRY="dir:$work/overhead-registry" ||
      fail "run $i: $(cat "$work/setup-overhead$i/log")"
    times+=("$((($(date +%s%N) - start) / 1000000))")
  done
  for i in 1 2 3 4 5; do stop_setup "overhead$i"; done
  median="$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)"
  echo "whole step, cached binary, 5 runs: ${times[*]} ms; median $median ms"
  ((median < 3000)) || fail "median $median ms, the target is under 3 s"
}

# --- act ----------------------------------------------------------------------------------------
act_e2e() {
  local static e2e="$work/e2e" status=0 log="$work/act.log"
  static="$(scripts/build-static.sh 2>"$work/build-static.log")" ||
    fail "scripts/build-static.sh failed: $(tail -n 30 "$work/build-static.log")"
  make_release "$work/rel-act" "$static"
  start_release_server "$work/rel-act"
  mkdir -p "$e2e"
  act push -W .github/workflows/e2e.yml -P ubuntu-latest=-self-hosted --no-cache-server \
    --concurrent-jobs 3 --action-cache-path "$work/act" \
    --env PEERCACHE_E2E_DIR="$e2e" --env FAKEHUB_BIN="$root/target/debug/fakehub" \
    --env PEERCACHE_DOWNLOAD_URL="$release_url" --env PEERCACHE_VERSION=0.0.0-act \
    </dev/null >"$log" 2>&1 || status=$?
  # What matters, for the log: each job's summary and any failure.
  grep -E 'connected to|reached the stand-in|the stand-in answered|::error|::warning|Job (succeeded|failed)|installed|tool cache|Error' "$log" || true
  [[ "$status" -eq 0 ]] || fail "act exited $status; the end of its log: $(tail -n 80 "$log")"
  [[ "$(grep -c 'Job succeeded' "$log")" -eq 3 ]] || fail "not 3 jobs succeeded"
  [[ "$(grep -c 'each endpoint reached the stand-in GitHub API exactly once' "$log")" -eq 3 ]] ||
    fail "not every job saw each endpoint counted once"
  [[ "$(grep -c 'connected to 2 peer(s)' "$log")" -eq 3 ]] || fail "not every node connected to the 2 others"
  # Three jobs, one tool cache: the release was downloaded once.
  [[ "$(grep -c '^/peercache-x86_64-unknown-linux-musl.tar.gz$' "$release_log")" -eq 1 ]] ||
    fail "the asset was downloaded $(grep -c 'tar.gz' "$release_log") times: $(cat "$release_log")"
}

# --- run ----------------------------------------------------------------------------------------
for group in "${groups[@]}"; do
  case "$group" in
    lint)
      t "shellcheck: scripts/, tests/action/, .ci/run" lint_shellcheck
      t "check-jsonschema: action.yml (vendor.github-actions)" lint_action_schema
      t "check-jsonschema: .github/workflows/*.yml (vendor.github-workflows)" lint_workflow_schema
      t "zizmor: no finding of high severity" lint_zizmor
      t "no \${{ }} expression inside a run: script" lint_no_expressions_in_run
      t "the tables of inputs and outputs in README.md and docs/action.md match action.yml" lint_readme_table
      ;;
    install)
      make_fake_binary
      t "install: a good checksum installs; a second run uses the tool cache; a changed one is replaced" install_good_then_cached
      t "install: a checksum mismatch is refused" install_bad_checksum_refused
      t "install: pinned in the action: a swapped tool cache (binary and checksum) is not used" install_pinned_tool_cache_swap_refused
      t "install: pinned in the action: a release that is not the pinned one is refused" install_pinned_mismatch_refused
      t "install: plain http only to loopback, no credentials, https only" install_refuses_plain_http_elsewhere
      t "install: an explicit version without a release is an error" install_explicit_version_without_release_fails
      t "install: the default URL is the action's own release" install_default_url
      t "install: no release for the ref: build from source once, then the tool cache" install_from_source
      t "install: no binary for the platform and no cargo: a clear error" install_unsupported_without_cargo
      t "install: a preinstalled binary" install_preinstalled_binary
      ;;
    setup)
      cargo build --locked -p peercache -p fakehub >&2
      t "setup: no secret: a warning, the local cache and API, masked token and capability" setup_no_secret_warns
      t "setup: no secret with fail-on-error: an error, exit 1, no daemon left" setup_no_secret_fail_on_error
      t "setup: a failed install: a warning (an error with fail-on-error)" setup_install_failure_warns
      t "setup: bad inputs are refused" setup_bad_input_fails
      t "setup: two jobs with one secret and registry find each other; the secret stays out" setup_two_jobs_find_each_other
      t "setup: no process of the step has the capability, the secret or the token in argv" setup_capability_not_in_argv
      t "setup: a weak secret is refused with the fix (an error with fail-on-error)" setup_weak_secret_refused
      t "setup: the whole step with a cached binary takes under 3 s (median of 5)" setup_overhead
      ;;
    act)
      cargo build --locked -p fakehub >&2
      t "act: e2e.yml, three jobs in host mode, one swarm, each endpoint fetched once" act_e2e
      ;;
    *)
      echo "unknown test group: $group (expected lint, install, setup, act)" >&2
      exit 2
      ;;
  esac
done

echo
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
