"""Exports a ResNet18-shaped model in the old project's format (input [1, 1, 224, 224],
8 logits; random init, seed 0: for timing only) with its sidecar, into a gitignored
folder (44 MB, never committed):

    training/.venv/bin/python bench/export_resnet18.py bench/out/old-resnet18.onnx
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

import torch  # noqa: E402

import babycry_features as bf  # noqa: E402
import models as M  # noqa: E402
import recipes  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench/out/old-resnet18.onnx")
    torch.manual_seed(0)
    net = M.ResNet18(len(recipes.REASON_LABELS))
    sc = recipes.old_sidecar(version="timing-only")
    sc["name"] = "old-resnet18"
    M.export_onnx(net, sc["input"]["shape"], out)
    out.with_suffix(".toml").write_text(bf.dump_toml(
        sc, "Timing only: ResNet18 layout of the old project, random init (seed 0)."))
    print(f"{out}: {out.stat().st_size} bytes, MACs {M.count_macs(net, sc['input']['shape'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
