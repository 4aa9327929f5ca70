#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a set time, one after the other, and prints a table
# of executions and crashes per target.
#
#   scripts/fuzz.sh [--smoke] [--seconds N] [--runs N] [TARGET...]
#
#   --smoke       a few seconds per target (what scripts/test.sh runs), built without
#                 optimisation (half the build time; slower runs); --seconds overrides it
#   --seconds N   seconds per target (default 600)
#   --runs N      stop a target after N executions (whichever of the two comes first)
#   TARGET...     only these targets (default: every target in fuzz/Cargo.toml)
#
# Stable toolchain: cargo-fuzz needs nightly flags, which RUSTC_BOOTSTRAP=1 allows. Builds with
# AddressSanitizer and debug assertions, in fuzz/target (optimised, except for --smoke). One
# fuzzer process at a time, at nice 19, so that other work on the machine keeps the cores.
# Each target's working corpus is
# fuzz/corpus/TARGET (not in git), seeded from fuzz/seeds/TARGET; a crash is saved under
# fuzz/artifacts/TARGET and makes the script exit 1. The table also goes to
# fuzz/target/fuzz-report.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds=600
runs=""
profile=()
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke)
      seconds=4
      profile=(--dev)
      ;;
    --seconds)
      [[ "${2:-}" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "fuzz.sh: --seconds needs a whole number of seconds" >&2; exit 2; }
      seconds="$2"
      shift
      ;;
    --runs)
      [[ "${2:-}" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "fuzz.sh: --runs needs a whole number" >&2; exit 2; }
      runs="$2"
      shift
      ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done

command -v cargo-fuzz >/dev/null 2>&1 || scripts/ensure-tools.sh
export RUSTC_BOOTSTRAP=1
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz.sh: no fuzz targets found in fuzz/" >&2; exit 1; }

echo "building ${#targets[@]} fuzz targets (AddressSanitizer, debug assertions${profile[*]:+, unoptimised})" >&2
nice -n 19 cargo fuzz build "${profile[@]}" --fuzz-dir fuzz >&2

report="fuzz/target/fuzz-report.md"
mkdir -p "$(dirname "$report")"
{
  echo "| target | seconds | executions | executions/s | crashes |"
  echo "|---|---:|---:|---:|---:|"
} >"$report"
failed=0
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  seeds="fuzz/seeds/$target"
  mkdir -p "$corpus" "$seeds" "fuzz/artifacts/$target"
  log="fuzz/target/fuzz-$target.log"
  status=0
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="fuzz/artifacts/$target/")
  if [[ -f "fuzz/dicts/$target.dict" ]]; then options+=(-dict="fuzz/dicts/$target.dict"); fi
  if [[ -n "$runs" ]]; then options+=(-runs="$runs"); fi
  nice -n 19 cargo fuzz run "${profile[@]}" --fuzz-dir fuzz "$target" "$corpus" "$seeds" -- "${options[@]}" >"$log" 2>&1 ||
    status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  crashes=0
  if [[ "$status" -ne 0 ]]; then
    crashes=1
    failed=1
    echo "fuzz.sh: $target failed (exit $status); the input is in fuzz/artifacts/$target/, the log in $log:" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 10 >&2 || tail -n 20 "$log" >&2
  fi
  took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)"
  took="${took:-$seconds}"
  rate=$(( ${execs:-0} / (took > 0 ? took : 1) ))
  printf '| %s | %s | %s | %s | %s |\n' "$target" "$took" "${execs:-?}" "$rate" "$crashes" >>"$report"
done
cat "$report"
exit "$failed"
