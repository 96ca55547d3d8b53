#!/usr/bin/env bash
# The README's first quick-start command: on a fresh Debian/Ubuntu machine it installs
# what the build needs, then runs the monitor on a bundled synthetic night (no
# microphone, no broker) and prints one JSON line per event. Arguments go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
exec cargo run --release -- run --demo "$@"
