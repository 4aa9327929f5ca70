#!/usr/bin/env bash
# Checks the hub's deployment files offline: the Kubernetes manifests against the API schemas that
# kubernetes-validate ships (strict: unknown fields are errors), and the systemd unit with
# systemd-analyze when it is installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# kubernetes-validate bundles the schemas of every Kubernetes release: no network at check time.
venv="$root/target/tools-deploy"
pin="kubernetes-validate==1.37.0"
if [[ "$(cat "$venv/pins" 2>/dev/null)" != "$pin" ]]; then
  echo "installing into $venv: $pin" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin" >&2
  echo "$pin" >"$venv/pins"
fi
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
echo "deploy/k8s: valid against the Kubernetes 1.37 schemas"

if command -v systemd-analyze >/dev/null 2>&1; then
  # The unit names the installed binary; verify it against a stand-in at that path's place.
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  printf '#!/bin/sh\n' >"$scratch/peercache"
  chmod +x "$scratch/peercache"
  sed "s|/usr/local/bin/peercache|$scratch/peercache|" deploy/systemd/peercache-hub.service \
    >"$scratch/peercache-hub.service"
  systemd-analyze verify "$scratch/peercache-hub.service"
  echo "deploy/systemd: systemd-analyze verify passed"
else
  echo "deploy/systemd: systemd-analyze is not installed; unit not verified" >&2
fi
