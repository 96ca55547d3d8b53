#!/usr/bin/env bash
# Train, cross-validate, export and report the babycryd models.
#   bash training/train.sh [all|detector|reason|old-baseline|report] [--data PATH] [...]
# Writes models/cry-*.onnx|toml, models/README.md, training/reports/ and the models'
# parity fixture tests/fixtures/models/shipped.expected.json. Caches under
# training/cache/ (delete it for a from-scratch run). BABYCRY_THREADS sets torch threads (2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -x "$here/.venv/bin/python" ] || bash "$here/setup.sh"
what="${1:-all}"
[ $# -gt 0 ] && shift
"$here/.venv/bin/python" "$here/train.py" --model "$what" "$@"
# The shipped models' parity fixture (tests/models.rs) follows the models just exported.
exec "$here/.venv/bin/python" "$here/make_test_models.py"
