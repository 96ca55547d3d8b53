#!/usr/bin/env bash
# Runs the README's quick-start command exactly as written (with a time limit) and checks
# that the monitor produced events: a confirmed cry episode with its reason windows.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(timeout 600 bash scripts/demo.sh)
echo "$out" | cut -c1-160
for kind in episode_start window episode_end summary; do
  echo "$out" | grep -q "\"type\":\"$kind\"" || { echo "quick start produced no $kind event" >&2; exit 1; }
done
echo "quick start: ok"
