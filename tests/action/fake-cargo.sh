#!/usr/bin/env bash
# A stand-in for cargo, for scripts/test-action.sh: checks that install.sh asks for a release
# build of the peercache binary, logs the call to $FAKE_CARGO_LOG, and "builds" it by copying
# $FAKE_CARGO_BINARY to <target dir>/release/peercache.
set -euo pipefail

printf '%s\n' "$*" >>"${FAKE_CARGO_LOG:?}"
[[ "${1:-}" == build ]] || { echo "fake cargo: expected 'build', got: $*" >&2; exit 1; }
target_dir=""
want_release=false want_locked=false want_bin=false manifest=""
shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    --release) want_release=true ;;
    --locked) want_locked=true ;;
    --bin) shift; [[ "$1" == peercache ]] && want_bin=true ;;
    --manifest-path) shift; manifest="$1" ;;
    --target-dir) shift; target_dir="$1" ;;
    *) echo "fake cargo: unexpected argument $1" >&2; exit 1 ;;
  esac
  shift
done
[[ "$want_release" == true && "$want_locked" == true && "$want_bin" == true ]] ||
  { echo "fake cargo: expected --release --locked --bin peercache" >&2; exit 1; }
[[ -f "$manifest" ]] || { echo "fake cargo: no manifest at $manifest" >&2; exit 1; }
[[ -n "$target_dir" ]] || { echo "fake cargo: no --target-dir" >&2; exit 1; }
mkdir -p "$target_dir/release"
cp "${FAKE_CARGO_BINARY:?}" "$target_dir/release/peercache"
echo "fake cargo: built $target_dir/release/peercache" >&2
