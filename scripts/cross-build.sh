#!/usr/bin/env bash
# Cross-compiles babycryd for the Raspberry Pi targets and packages a .deb for each.
# Needs a machine with Docker (or Podman) and cross-rs: `cargo install cross cargo-deb`.
# This project's CI machine has no ARM standard library and no container engine, so CI
# only checks that Cross.toml names these targets and that the ALSA-free build works.
#
#   scripts/cross-build.sh                     # all three targets
#   scripts/cross-build.sh aarch64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf arm-unknown-linux-gnueabihf)
command -v cross >/dev/null || { echo "cross not found: cargo install cross" >&2; exit 1; }
for t in "${targets[@]}"; do
  echo "== $t"
  PKG_CONFIG_ALLOW_CROSS=1 cross build --release --target "$t"
  if command -v cargo-deb >/dev/null; then
    cargo deb --target "$t" --no-build --no-strip
  fi
done
ls -l target/*/release/babycryd target/*/debian/*.deb 2>/dev/null || true
