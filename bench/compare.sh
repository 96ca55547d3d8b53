#!/usr/bin/env bash
# The old Python service's pipeline (librosa + onnxruntime) against babycryd, on the same
# recordings, alternating in one run; prints the ratios. Not CI. Two tables: the same ONNX
# model in both programs (shipped cry-reason, and the old ResNet18), and the old service
# (Python, ResNet18) against babycryd's whole cry-window path with the shipped models
# (detector + reason), with the >= 15x per-window budget.
#
#   bash bench/compare.sh            # 100 recordings, 2 rounds
#   N=20 ROUNDS=1 bash bench/compare.sh
#   BABYCRYD=/tmp/babycryd bash bench/compare.sh   # an already built binary, no cargo
#
# Env: BABYCRYD (the babycryd binary; default: `cargo build --release`, then
# target/release/babycryd), DATA (folder of recordings, default
# ../shared/data/donateacry/audio), N, ROUNDS, VENV (a Python venv with librosa,
# onnxruntime and torch; default training/.venv, made by training/setup.sh when missing).
# The ResNet18-shaped old-format model is exported once into bench/out/ (gitignored,
# 44 MB).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/training/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    bash training/setup.sh
fi
py="$venv/bin/python"
data="${DATA:-$root/../shared/data/donateacry/audio}"
n="${N:-100}"
if [ -n "${BABYCRYD:-}" ]; then
    babycryd="$BABYCRYD"
else
    cargo build --release --quiet
    babycryd="$root/target/release/babycryd"
fi
mkdir -p bench/out
if [ ! -f bench/out/old-resnet18.onnx ]; then
    "$py" bench/export_resnet18.py bench/out/old-resnet18.onnx
fi
mapfile -t files < <(find "$data" -type f \( -name '*.flac' -o -name '*.wav' -o -name '*.ogg' -o -name '*.mp3' \) | sort | head -n "$n")
echo "recordings: ${#files[@]} from $data; machine: $(nproc) cores, $(uname -m); babycryd: $babycryd"
echo "MACs (bench/macs.py, from the ONNX graph):"
"$py" bench/macs.py models/cry-detector.onnx models/cry-reason.onnx bench/out/old-resnet18.onnx
"$py" bench/compare.py --babycryd "$babycryd" --rounds "${ROUNDS:-2}" \
    --model models/cry-reason.onnx --model bench/out/old-resnet18.onnx \
    --old-model bench/out/old-resnet18.onnx \
    --shipped-model models/cry-reason.onnx --shipped-detector models/cry-detector.onnx \
    "${files[@]}"
