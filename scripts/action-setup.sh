#!/usr/bin/env bash
# The composite action's one step (action.yml): install peercache, then
#   peercache init --github-env          state dir, identity, port; PEERCACHE_HOME/PORT/PEER_ID
#   peercache serve --daemon             the node, detached: it lives on until the job ends
#   peercache register                   publish this node in the registries
#   peercache discover --github-env --connect   find the others, dial them, PEERCACHE_BOOTSTRAP_PEERS
# and set the outputs peer-id, port (from init), peers, peer-count (from discover) and api-url.
#
# The inputs arrive as INPUT_* variables (action.yml maps each one in `env:`). An input left empty,
# or at its default, leaves the job's own PEERCACHE_* (or legacy) variable in charge. The secret
# and the token are masked and passed to peercache through its environment only; they are never
# written to GITHUB_ENV, GITHUB_OUTPUT or a file.
#
# When peer sharing cannot start (no secret, serve failed, ...) the job goes on with the local
# cache and a warning that says why; with fail-on-error: true that is an error and the step fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- workflow commands --------------------------------------------------------------------------
# The data of a workflow command, escaped so that it cannot end the command or start another one.
escape_data() {
  local s="$1"
  s="${s//'%'/%25}"
  s="${s//$'\r'/%0D}"
  s="${s//$'\n'/%0A}"
  printf '%s' "$s"
}
mask() {
  local line
  while IFS= read -r line; do
    if [[ -n "$line" ]]; then printf '::add-mask::%s\n' "$(escape_data "$line")"; fi
  done <<<"$1"
}
notice() { printf '::notice title=peercache::%s\n' "$(escape_data "$*")"; }

# How long each phase took, for the closing notice (bash 5's EPOCHREALTIME, in microseconds).
timings=()
now_us() { local t="${EPOCHREALTIME:-0}"; printf '%s' "${t/[.,]/}"; }
took() { timings+=("$1 $((($(now_us) - $2) / 1000)) ms"); }

case "${INPUT_FAIL_ON_ERROR:-false}" in
  true | True | TRUE) fail_on_error=true ;;
  false | False | FALSE | '') fail_on_error=false ;;
  *)
    printf '::error title=peercache::%s\n' "$(escape_data "fail-on-error: expected true or false, got \"$INPUT_FAIL_ON_ERROR\"")"
    exit 1
    ;;
esac

# Peer sharing could not start: an error (fail-on-error) or a warning, then the job goes on.
started=false
degrade() {
  local why="$1"
  if [[ "$fail_on_error" == true ]]; then
    printf '::error title=peercache::%s\n' "$(escape_data "$why")"
    if [[ "$started" == true ]]; then "$binary" stop >/dev/null 2>&1 || true; fi
    exit 1
  fi
  printf '::warning title=peercache::%s\n' "$(escape_data "$why; the job goes on with the local cache only")"
}

# Appends NAME=value to a GITHUB_ENV or GITHUB_OUTPUT file; values are one line (checked below).
put() {
  local file="$1" name="$2" value="$3"
  if [[ -n "$file" ]]; then printf '%s=%s\n' "$name" "$value" >>"$file"; fi
}

# --- secrets: masked at once, into peercache's environment only ---------------------------------
mask "${INPUT_SECRET:-}"
mask "${INPUT_GITHUB_TOKEN:-}"
if [[ -n "${INPUT_SECRET:-}" ]]; then export PEERCACHE_SECRET="$INPUT_SECRET"; fi
if [[ -n "${INPUT_GITHUB_TOKEN:-}" ]]; then export PEERCACHE_TOKEN="$INPUT_GITHUB_TOKEN"; fi
unset INPUT_SECRET INPUT_GITHUB_TOKEN

# --- settings: input -> variable, for this step and (non-secret ones) for the later steps --------
#            input           variable                   default  exported to GITHUB_ENV
settings=(
  "api-url         PEERCACHE_API_URL          -        yes"
  "port            PEERCACHE_PORT             auto     no"
  "bootstrap-peers PEERCACHE_BOOTSTRAP_PEERS  -        no"
  "registry        PEERCACHE_REGISTRY         -        yes"
  "cache-dir       PEERCACHE_CACHE_DIR        -        yes"
  "ttl             PEERCACHE_TTL              300      yes"
  "mdns            PEERCACHE_MDNS             true     yes"
  "scope           PEERCACHE_SCOPE            repository yes"
  "log-level       PEERCACHE_LOG              info     yes"
)
for row in "${settings[@]}"; do
  read -r input variable default export_it <<<"$row"
  input_var="INPUT_${input//-/_}"
  input_var="${input_var^^}"
  value="${!input_var:-}"
  if [[ "$value" == *$'\n'* || "$value" == *$'\r'* ]]; then
    printf '::error title=peercache::%s\n' "$(escape_data "$input: expected one line")"
    exit 1
  fi
  # Empty, or the default: the job's own variable (or the built-in default) stays in charge.
  if [[ -z "$value" || "$value" == "$default" ]]; then continue; fi
  if [[ "$variable" == PEERCACHE_CACHE_DIR ]]; then
    if [[ "$value" != /* ]]; then value="$PWD/$value"; fi # later steps may run elsewhere
  fi
  export "$variable=$value"
  if [[ "$export_it" == yes ]]; then put "${GITHUB_ENV:-}" "$variable" "$value"; fi
done

# The outputs discover did not set, when it did not run: no peers.
no_peers() {
  put "${GITHUB_OUTPUT:-}" peers ""
  put "${GITHUB_OUTPUT:-}" peer-count 0
}

# --- install ------------------------------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

binary=""
# stdout (the binary's path) is captured; stderr goes to the log and to install.err for the reason.
start="$(now_us)"
if ! binary="$({ bash "$here/install.sh" 2>&1 1>&4 4>&- | tee "$work/install.err" >&2; } 4>&1)"; then
  reason="$(sed -n 's/^peercache install: error: //p' "$work/install.err" | tail -n 1)"
  binary=""
  degrade "peercache could not be installed: ${reason:-see the log above}; later steps will not find it"
  no_peers
  exit 0
fi
took install "$start"

# Runs a peercache subcommand with its stdout in $work/out and stderr passed through and kept in
# $work/err. Returns its exit status.
run() {
  local start status=0
  start="$(now_us)"
  { "$binary" "$@" </dev/null 2>&1 >"$work/out" | tee "$work/err" >&2; } || status=$?
  took "$1" "$start"
  return "$status"
}
last_error() { grep -v '^[[:space:]]*$' "$work/err" | tail -n 1; }

# --- init ---------------------------------------------------------------------------------------
if ! run init --github-env; then
  degrade "peercache init failed: $(last_error)"
  no_peers
  exit 0
fi
cat "$work/out"
while IFS= read -r line; do
  case "$line" in
    PEERCACHE_HOME=* | PEERCACHE_PORT=* | PEERCACHE_PEER_ID=*) export "${line?}" ;;
  esac
done <"$work/out"

# --- serve --------------------------------------------------------------------------------------
# Every stream of `serve --daemon` goes to a file: the daemon itself runs in a new session with
# its output in $PEERCACHE_HOME/serve.log, so the step ends while the node lives on.
api=""
if run serve --daemon; then
  started=true
  api="$(sed -n 's/^PEERCACHE_API=//p' "$work/out" | tail -n 1)"
else
  degrade "peercache serve failed, so this job has no node and no peers: $(last_error)"
fi
peers_json=""
if [[ -n "$api" ]]; then
  # The capability token in the URL keeps other users of the host out of this node: mask it.
  capability="${api##*/}"
  if [[ -n "$capability" && "$capability" != "$api" ]]; then mask "$capability"; fi
  cat "$work/out" # only now that the capability is masked
  put "${GITHUB_ENV:-}" PEERCACHE_API "$api"
  put "${GITHUB_OUTPUT:-}" api-url "$api"
  export PEERCACHE_API="$api"
  if command -v curl >/dev/null 2>&1; then
    # The URL (with the capability) goes to curl on stdin, as a config line: never in argv,
    # where every local user could read it in /proc/*/cmdline.
    peers_json="$(curl --silent --show-error --max-time 10 --config - <<<"url = \"$api/api/peers\"" 2>&1 || true)"
  else
    peers_json='"enabled":true' # cannot ask; register and discover will tell
  fi
fi

# --- register and discover, when the node shares ------------------------------------------------
discovered=false
if [[ -n "$api" ]]; then
  if [[ "$peers_json" != *'"enabled":true'* ]]; then
    reason="$(sed -n 's/.*"reason":"\(\([^"\\]\|\\.\)*\)".*/\1/p' <<<"$peers_json")"
    if [[ -z "${PEERCACHE_SECRET:-}" ]]; then reason="${reason:+$reason }(the action's \`secret\` input sets it)"; fi
    degrade "peer sharing is off: ${reason:-the node does not share (see $PEERCACHE_HOME/serve.log)}"
  elif ! run register; then
    degrade "peercache register failed: $(last_error)"
  else
    cat "$work/out"
    if run discover --github-env --connect; then
      cat "$work/out"
      discovered=true
    else
      degrade "peercache discover failed: $(last_error)"
    fi
  fi
fi
if [[ "$discovered" != true ]]; then no_peers; fi

# One line for people reading the log: what this job got.
peer_count="$(sed -n 's/^peer-count=//p' "${GITHUB_OUTPUT:-/dev/null}" | tail -n 1)"
times="$(IFS=,; printf '%s' "${timings[*]}")"
if [[ "$discovered" == true ]]; then
  notice "peer ${PEERCACHE_PEER_ID:-?} on port ${PEERCACHE_PORT:-?}, ${peer_count:-0} peer(s) found, local API ready (${times//,/, })"
elif [[ -n "$api" ]]; then
  notice "peer ${PEERCACHE_PEER_ID:-?} on port ${PEERCACHE_PORT:-?}: local cache and API only (${times//,/, })"
fi
