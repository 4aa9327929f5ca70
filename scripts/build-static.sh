#!/usr/bin/env bash
# Builds the release binary as one statically linked musl executable and prints its path and size.
#
#   scripts/build-static.sh            # x86_64-unknown-linux-musl
#   TARGET=aarch64-unknown-linux-musl scripts/build-static.sh   (needs a cross linker)
#
# Installs what is missing through scripts/ensure-tools.sh.
set -euo pipefail

target="${TARGET:-x86_64-unknown-linux-musl}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "$target" == x86_64-unknown-linux-musl ]]; then
  # The target, and Debian's musl-tools: ring and aws-lc compile C with musl-gcc.
  scripts/ensure-tools.sh
elif ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2
fi

# Removes the ~25 ms jitter-entropy seeding from the first TLS handshake of each process.
export AWS_LC_SYS_NO_JITTER_ENTROPY=1
cargo build --release --locked --target "$target" --bin peercache >&2

binary="$root/target/$target/release/peercache"
size="$(stat -c %s "$binary")"
echo "$binary"
echo "size: $size bytes ($((size / 1024 / 1024)) MiB)" >&2
if command -v file >/dev/null 2>&1; then
  file "$binary" >&2
fi
