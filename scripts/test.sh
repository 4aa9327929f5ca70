#!/usr/bin/env bash
# Runs every check and test of the project: the README's test command, and what .ci/run calls.
#
# On a fresh machine it first installs what it needs (scripts/ensure-tools.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "tools"
scripts/ensure-tools.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "shellcheck scripts/"
shellcheck scripts/*.sh .ci/run

step "static musl build"
binary="$(scripts/build-static.sh)"
description="$(file -b "$binary")"
echo "$description"
case "$description" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "error: $binary is not statically linked: $description" >&2; exit 1 ;;
esac
if ldd "$binary" 2>&1 | grep -q "=>"; then # a static-pie binary: "statically linked", exit status 0
  echo "error: ldd resolves shared libraries for $binary" >&2
  exit 1
fi

step "the hub's deployment files: Kubernetes manifests (schema-checked offline) and the systemd unit"
scripts/check-deploy.sh

step "cargo test (unit and integration tests, against the stand-in GitHub API on loopback)"
cargo test --workspace --locked

step "fuzz smoke: every cargo-fuzz target of fuzz/ for a few seconds (scripts/fuzz.sh --smoke)"
scripts/fuzz.sh --smoke

step "the composite action: lint, install.sh, action-setup.sh, and act running e2e.yml"
scripts/test-action.sh

step "the quick benchmark: a 3-node swarm against the stand-in, its table, JSON and chart"
quick_out="$root/target/bench/quick"
rm -rf "$quick_out"
scripts/bench.sh --quick --out "$quick_out"
for artefact in report.json report.md report.png; do
  [[ -s "$quick_out/$artefact" ]] || { echo "error: scripts/bench.sh --quick wrote no $artefact" >&2; exit 1; }
done
case "$(file -b "$quick_out/report.png")" in
  "PNG image data"*) ;;
  *) echo "error: $quick_out/report.png is not a PNG" >&2; exit 1 ;;
esac
