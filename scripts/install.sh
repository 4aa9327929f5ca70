#!/usr/bin/env bash
# Installs peercache for the composite action (action.yml) and prints the binary's path on stdout.
#
# Where the binary comes from, first match wins:
#   1. INPUT_BINARY (the `binary` input): a preinstalled binary, used as it is.
#   2. The tool cache: $RUNNER_TOOL_CACHE/peercache/<version>/<arch>/peercache, when an earlier
#      run installed it (its SHA-256 is checked again on every use; nothing is downloaded).
#   3. The release: the asset for RUNNER_OS/RUNNER_ARCH of the release <version> of the action's
#      own repository (GITHUB_ACTION_REPOSITORY), over HTTPS with TLS 1.2 or later, checked
#      against the checksums pinned in the action, else the release's SHA256SUMS. A checksum
#      mismatch is refused, never installed.
#
# Pinned checksums: `checksums.sha256` at the root of the action's checkout at its tag (written
# into the tag's commit by .github/workflows/release.yml), lines `<sha256>  <tag>/<file>` for
# each asset and for the binary inside it (`<tag>/<asset without .tar.gz>/peercache`). A job
# cannot change the action's checkout of another job, but on a self-hosted runner it can change
# the tool cache: so a pinned binary is checked against the pin on every use of the tool cache,
# never against the checksum stored beside it. A version without pins (a `version` input other
# than the action's own tag) falls back to the release's SHA256SUMS and the checksum recorded at
# install time, with a note in the log.
#   4. A build from source with cargo, from the action's own checkout ($GITHUB_ACTION_PATH), when
#      the ref has no release (a branch, a commit SHA, `uses: ./`) or no asset fits the runner.
#
# The version is INPUT_VERSION (the `version` input) or PEERCACHE_VERSION, else the action's ref
# (GITHUB_ACTION_REF) when it is a release tag such as v0.1.0. The directory is added to
# GITHUB_PATH when that is set, so later steps find `peercache` on PATH.
#
# For mirrors and tests: PEERCACHE_DOWNLOAD_URL replaces the release directory
# (https://github.com/OWNER/REPO/releases/download/TAG); `{tag}` and `{version}` in it are filled
# in. Plain http is accepted for loopback hosts only (127.0.0.0/8, localhost, [::1]).
# CARGO names the cargo to build with; PEERCACHE_BUILD_DIR the cargo target dir of source builds.
set -euo pipefail

readonly tool=peercache

log() { printf 'peercache install: %s\n' "$*" >&2; }
fail() {
  printf 'peercache install: error: %s\n' "$*" >&2
  exit 1
}

work=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { if [[ -n "$work" ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT

# Adds the binary's directory to GITHUB_PATH (when in a workflow step) and prints the binary.
finish() {
  local binary="$1"
  if [[ -n "${GITHUB_PATH:-}" ]]; then
    printf '%s\n' "$(dirname "$binary")" >>"$GITHUB_PATH"
  fi
  printf '%s\n' "$binary"
  exit 0
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Checks that a file holds a working peercache: prints its version line.
probe() {
  local binary="$1" out
  if ! out="$("$binary" --version 2>&1)"; then
    fail "$binary does not run: $out"
  fi
  printf '%s\n' "$out"
}

# --- 1. a preinstalled binary -------------------------------------------------------------------
if [[ -n "${INPUT_BINARY:-}" ]]; then
  binary="$INPUT_BINARY"
  [[ -f "$binary" && -x "$binary" ]] || fail "binary: $binary is not an executable file"
  binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
  about="$(probe "$binary")"
  log "using the preinstalled $binary ($about)"
  # Later steps call it `peercache`, and only it goes on PATH: a link in a directory of its own.
  link_dir="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/peercache-bin"
  mkdir -p "$link_dir"
  ln -sfn "$binary" "$link_dir/$tool"
  finish "$link_dir/$tool"
fi

# --- the runner ---------------------------------------------------------------------------------
os="${RUNNER_OS:-}"
if [[ -z "$os" ]]; then
  case "$(uname -s)" in
    Linux) os=Linux ;;
    Darwin) os=macOS ;;
    *) os="$(uname -s)" ;;
  esac
fi
arch="${RUNNER_ARCH:-}"
if [[ -z "$arch" ]]; then
  case "$(uname -m)" in
    x86_64 | amd64) arch=X64 ;;
    aarch64 | arm64) arch=ARM64 ;;
    *) arch="$(uname -m)" ;;
  esac
fi
target=""
case "$os/$arch" in
  Linux/X64) target=x86_64-unknown-linux-musl ;;
  Linux/ARM64) target=aarch64-unknown-linux-musl ;;
esac
arch_dir="$(tr '[:upper:]' '[:lower:]' <<<"$arch")"

tool_cache="${RUNNER_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/peercache/tool-cache}"

# --- the version --------------------------------------------------------------------------------
version="${INPUT_VERSION:-${PEERCACHE_VERSION:-}}"
explicit_version=true
if [[ -z "$version" ]]; then
  explicit_version=false
  ref="${GITHUB_ACTION_REF:-}"
  if [[ "$ref" =~ ^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?$ ]]; then
    version="$ref"
  fi
fi
if [[ -n "$version" && ! "$version" =~ ^v?[0-9A-Za-z][0-9A-Za-z.+_-]*$ ]]; then
  fail "version: \"$version\" is not a release tag (expected something like v0.1.0)"
fi
tag=""
if [[ -n "$version" ]]; then
  tag="v${version#v}"
  version="${version#v}"
fi

# The checksums pinned in the action's checkout (see the top of this file).
action_dir="${GITHUB_ACTION_PATH:-$(dirname "${BASH_SOURCE[0]}")/..}"
pins="$action_dir/checksums.sha256"

# pinned NAME: the pinned SHA-256 of <tag>/NAME, or nothing.
pinned() {
  [[ -n "$tag" && -f "$pins" ]] || return 0
  awk -v name="$tag/$1" 'length($1) == 64 && $1 ~ /^[0-9a-fA-F]+$/ && $2 == name { print tolower($1); exit }' "$pins"
}

# Uses an installed tool cache entry: <dir>/peercache and the <dir>.complete marker, checked
# against the pinned SHA-256 of the binary when there is one (a checksum stored beside the binary
# can be swapped with it), else against the one recorded at install time. Never downloads.
use_cached() {
  local dir="$1" want got source="recorded at install time"
  [[ -f "$dir.complete" && -x "$dir/$tool" && -f "$dir/$tool.sha256" ]] || return 1
  want="$(<"$dir/$tool.sha256")"
  if [[ -n "${pinned_binary:-}" ]]; then
    want="$pinned_binary"
    source="pinned in the action"
  fi
  got="$(sha256_of "$dir/$tool")"
  if [[ "$want" != "$got" ]]; then
    log "warning: the cached $dir/$tool is not the binary it should be (SHA-256 $got, $source $want); installing it again"
    rm -f "$dir.complete"
    return 1
  fi
  log "using the tool cache: $dir/$tool (SHA-256 $source)"
  finish "$dir/$tool"
}

# Moves a verified binary into the tool cache entry <dir> atomically, then marks it complete.
store() {
  local binary="$1" dir="$2" staging
  mkdir -p "$(dirname "$dir")"
  staging="$(mktemp -d "$dir.staging.XXXXXX")"
  cp "$binary" "$staging/$tool"
  chmod 0755 "$staging/$tool"
  sha256_of "$staging/$tool" >"$staging/$tool.sha256"
  rm -rf "$dir" "$dir.complete"
  mv -T "$staging" "$dir"
  : >"$dir.complete"
  log "installed $dir/$tool"
}

# Serializes installs of one tool cache entry (several jobs on one host start at once).
lock_entry() {
  local dir="$1"
  mkdir -p "$(dirname "$dir")"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir.lock"
    flock -w 900 9 || fail "timed out waiting for another job to install $dir"
  fi
}

# --- 2 and 3. the tool cache, then the release --------------------------------------------------
release_missing=""
pinned_asset=""
pinned_binary=""
if [[ -n "$version" && -n "$target" ]]; then
  pinned_asset="$(pinned "$tool-$target.tar.gz")"
  pinned_binary="$(pinned "$tool-$target/$tool")"
  if [[ -n "$pinned_asset" && -z "$pinned_binary" ]] || [[ -z "$pinned_asset" && -n "$pinned_binary" ]]; then
    fail "$pins pins only one of $tag/$tool-$target.tar.gz and $tag/$tool-$target/$tool; it needs both"
  fi
  if [[ -z "$pinned_asset" ]]; then
    log "note: release $tag is not pinned in the action ($pins); checking it against the release's SHA256SUMS"
  fi
  entry="$tool_cache/$tool/$version/$arch_dir"
  use_cached "$entry" || true

  if [[ -n "${PEERCACHE_DOWNLOAD_URL:-}" ]]; then
    base="${PEERCACHE_DOWNLOAD_URL%/}"
    base="${base//\{tag\}/$tag}"
    base="${base//\{version\}/$version}"
  elif [[ -n "${GITHUB_ACTION_REPOSITORY:-}" ]]; then
    base="${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_ACTION_REPOSITORY/releases/download/$tag"
  else
    base=""
    release_missing="there is no action repository to download release $tag from (GITHUB_ACTION_REPOSITORY is empty, e.g. under \`uses: ./\`); set PEERCACHE_DOWNLOAD_URL"
  fi

  if [[ -n "$base" ]]; then
    # HTTPS only (TLS 1.2+), and redirects only to HTTPS; plain http only to loopback.
    authority="${base#*://}"
    authority="${authority%%/*}"
    [[ "$authority" != *@* ]] || fail "download URL $base: credentials in URLs are not accepted"
    host="${authority%:*}"
    if [[ "$authority" == \[* ]]; then host="${authority%%]*}]"; fi
    case "$base" in
      https://*) proto='=https' ;;
      http://*)
        if [[ "$host" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ || "$host" == localhost || "$host" == '[::1]' ]]; then
          proto='=http'
        else
          fail "download URL $base: plain http is allowed for loopback hosts only; use https"
        fi
        ;;
      *) fail "download URL $base: expected an https:// URL" ;;
    esac
    curl_args=(--silent --show-error --location --proto "$proto" --proto-redir '=https' --tlsv1.2
      --connect-timeout 20 --max-time 600 --retry 3 --retry-delay 2)
    command -v curl >/dev/null 2>&1 || fail "curl is needed to download peercache; install it or pass the \`binary\` input"

    lock_entry "$entry"
    use_cached "$entry" || true # another job may have installed it while we waited

    work="$(mktemp -d)"
    asset="$tool-$target.tar.gz"
    log "downloading release $tag for $os/$arch from $base"
    if [[ -n "$pinned_asset" ]]; then
      status=pinned # the pins of the action's own checkout, not the release's file, are trusted
    else
      status="$(curl "${curl_args[@]}" --output "$work/SHA256SUMS" --write-out '%{http_code}' "$base/SHA256SUMS")" ||
        fail "cannot download $base/SHA256SUMS (curl failed${status:+, HTTP $status})"
    fi
    if [[ "$status" == 404 ]]; then
      release_missing="release $tag has no SHA256SUMS at $base (HTTP 404)"
    elif [[ "$status" != 200 && "$status" != pinned ]]; then
      fail "cannot download $base/SHA256SUMS: HTTP $status"
    else
      if [[ -n "$pinned_asset" ]]; then
        want="$pinned_asset"
      else
        want="$(awk -v name="$asset" '{ n = $2; sub(/^\*/, "", n) } n == name { print tolower($1); exit }' "$work/SHA256SUMS")"
      fi
      [[ "$want" =~ ^[0-9a-f]{64}$ ]] || fail "SHA256SUMS of release $tag has no checksum for $asset"
      status="$(curl "${curl_args[@]}" --output "$work/$asset" --write-out '%{http_code}' "$base/$asset")" ||
        fail "cannot download $base/$asset (curl failed${status:+, HTTP $status})"
      [[ "$status" == 200 ]] || fail "cannot download $base/$asset: HTTP $status"
      got="$(sha256_of "$work/$asset")"
      if [[ "$got" != "$want" ]]; then
        fail "checksum mismatch for $asset of release $tag: ${pinned_asset:+the action pins}${pinned_asset:-SHA256SUMS says} $want, the download is $got; refusing to install it"
      fi
      log "verified SHA-256 $got of $asset${pinned_asset:+ (pinned in the action)}"
      mkdir "$work/unpacked"
      tar -xzf "$work/$asset" -C "$work/unpacked" "$tool" ||
        fail "$asset does not hold a \`$tool\` binary at its top level"
      if [[ -n "$pinned_binary" && "$(sha256_of "$work/unpacked/$tool")" != "$pinned_binary" ]]; then
        fail "the $tool binary in $asset of release $tag is not the one the action pins ($pinned_binary); refusing to install it"
      fi
      probe "$work/unpacked/$tool" >/dev/null
      store "$work/unpacked/$tool" "$entry"
      finish "$entry/$tool"
    fi
  fi
fi

if [[ -n "$release_missing" && "$explicit_version" == true && -n "$target" ]]; then
  fail "version $tag: $release_missing"
fi

# --- 4. a build from source ---------------------------------------------------------------------
# A build of the action's own checkout has no pins: its tool cache entry is checked against the
# checksum recorded when it was built (use a release tag on runners that jobs share).
pinned_binary=""
src="${GITHUB_ACTION_PATH:-$(dirname "${BASH_SOURCE[0]}")/..}"
src="$(cd "$src" && pwd)"
if [[ -n "$release_missing" ]]; then
  log "$release_missing; building from source"
elif [[ -z "$target" ]]; then
  log "there is no prebuilt binary for $os/$arch${tag:+ (asked for $tag)}; building the action's own source instead"
else
  log "the action's ref (${GITHUB_ACTION_REF:-none, a local action}) is not a release tag; building from source in $src"
fi
[[ -f "$src/Cargo.toml" ]] || fail "no Cargo.toml in $src to build peercache from"
cargo="${CARGO:-cargo}"
command -v "$cargo" >/dev/null 2>&1 ||
  fail "no release binary fits and cargo is not installed to build one: install Rust on the runner, set the \`version\` input to a release tag (Linux X64/ARM64), or pass a preinstalled \`binary\`"

# The tool cache key of a source build: a digest of everything that goes into the binary.
digest="$(cd "$src" && find Cargo.toml Cargo.lock src tests/fakehub/Cargo.toml tests/fakehub/src -type f 2>/dev/null |
  LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum | cut -c1-16)"
entry="$tool_cache/$tool/0.0.0-src.$digest/$arch_dir"
use_cached "$entry" || true
lock_entry "$entry"
use_cached "$entry" || true

target_dir="${PEERCACHE_BUILD_DIR:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/peercache-build}"
log "cargo build --release --locked --bin $tool (target dir $target_dir); this takes a few minutes once per runner"
"$cargo" build --release --locked --bin "$tool" --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" >&2 ||
  fail "cargo build failed"
built="$target_dir/release/$tool"
[[ -x "$built" ]] || fail "cargo build left no $built"
probe "$built" >/dev/null
store "$built" "$entry"
finish "$entry/$tool"
