#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). On a fresh Debian/Ubuntu machine it
# installs what the build and the tests need, then checks formatting and lints, and runs
# every test. Tests that need ../shared/data say so clearly when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh test

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

# Supply chain (deny.toml): licences, banned crates and sources always. Security
# advisories need the RustSec database, a git repository on GitHub: checked when it can
# be fetched, and said loudly when it cannot (a machine that reaches only the package
# registries cannot).
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
cargo deny check --hide-inclusion-graph licenses bans sources
if deny_fetch=$(cargo deny fetch db 2>&1); then
  cargo deny check --hide-inclusion-graph advisories
else
  echo "=================================================================================="
  echo "WARNING: security advisories NOT checked: cargo-deny cannot fetch the RustSec"
  echo "advisory database (https://github.com/RustSec/advisory-db):"
  echo "$deny_fetch" | grep -E "fatal|ERROR" | head -3 || true
  echo "=================================================================================="
fi

cargo build --no-default-features
# Mutation fuzzing (tests/fuzz.rs): seconds per target; five targets, about 100 s in all.
export BABYCRY_FUZZ_SECONDS="${BABYCRY_FUZZ_SECONDS:-20}"
cargo test --all-targets

# The training code's light tests (issue 3: manifest parsing, group folds that never leak a
# group, the feature recipes; no training). They need the training venv (CPU torch and
# librosa from PyPI), which training/setup.sh makes once; the Rust build never needs it.
bash training/setup.sh
training/.venv/bin/python -m pytest -q training/tests
