#!/usr/bin/env bash
# Create training/.venv with a CPU-only PyTorch from PyPI (no NVIDIA wheels) and the
# pinned training requirements.  Idempotent; run from anywhere:  bash training/setup.sh
# Needs: Python >= 3.11 with venv ($PYTHON, else python3, python3.13, python3.12 or
# python3.11), gcc and binutils (readelf, nm) for the CUDA stubs.
# BABYCRY_FULL_TORCH=1 installs torch with all its dependencies instead (multi-GB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/find-python.sh"
if ! py="$(training_python)"; then
    echo "training/setup.sh: needs Python >= 3.11 with venv (apt install python3.11-venv, or set PYTHON)" >&2
    exit 1
fi
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade --quiet pip
"$venv/bin/pip" install -r "$here/requirements.txt"
if [ "${BABYCRY_FULL_TORCH:-0}" = "1" ]; then
    "$venv/bin/pip" install -r "$here/requirements-torch.txt"
else
    # The PyPI Linux wheel links against CUDA libraries shipped in separate multi-GB
    # wheels. Install torch alone and satisfy the loader with tiny generated stubs.
    "$venv/bin/pip" install --no-deps -r "$here/requirements-torch.txt"
    torchlib="$("$venv/bin/python" -c 'import importlib.util,os; print(os.path.join(importlib.util.find_spec("torch").submodule_search_locations[0], "lib"))')"
    "$venv/bin/python" "$here/cuda_stubs.py" "$torchlib"
fi
"$venv/bin/python" - <<'PY'
import torch, librosa, onnx, onnxruntime, sklearn, soundfile
x = torch.randn(8, 8)
assert torch.allclose(x @ torch.eye(8), x)
try:
    torch.zeros(2)[5]
except IndexError:
    pass
print(f"ok: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"librosa {librosa.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")
PY
