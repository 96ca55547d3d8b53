#!/usr/bin/env bash
# Runs the README's quick-start command exactly as written and checks it produced a verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(timeout 300 cargo run --release -- classify --demo --json)
echo "$out"
echo "$out" | grep -q '"decision"' || { echo "quick start produced no verdict" >&2; exit 1; }
