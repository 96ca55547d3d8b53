"""Test models for the Rust side.

    training/.venv/bin/python training/make_test_models.py              # tests/fixtures/models/
    training/.venv/bin/python training/make_test_models.py --placeholders  # also models/*.onnx|toml

tests/fixtures/models/old-format.onnx|toml: a tiny model (AvgPool 28 -> 8x8, Linear -> 8
logits, seed 0) with the old Python project's exact contract: input [1, 1, 224, 224] (128-mel,
n_fft 1024, hop 256, min-max dB image resized bilinearly to 224x224), output [1, 8] logits.
old-format.expected.json: for two front-end fixture signals zero-padded to the 7 s window,
the model input statistics, the logits and the probabilities computed by onnxruntime from
babycry_features' input (end-to-end parity: audio -> features -> resize -> ONNX -> softmax).

shipped.expected.json: the same end-to-end parity for the shipped models/cry-detector.onnx
and models/cry-reason.onnx (every run; after retraining, run this again and commit it with
the models: tests/models.rs fails until then).

--placeholders writes random-init (seed 0) models/cry-detector.* and models/cry-reason.* with
the final recipes and architectures, so the daemon can run end to end before training.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import babycry_features as bf  # noqa: E402
import models as M  # noqa: E402
import recipes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def old_format(out: Path) -> None:
    torch.manual_seed(0)
    net = M.TinyOld()
    with torch.no_grad():  # larger weights so the 8 probabilities differ clearly
        net.fc.weight.normal_(0.0, 1.0)
        net.fc.bias.normal_(0.0, 0.5)
    sc = recipes.old_sidecar()
    shape = sc["input"]["shape"]
    out.mkdir(parents=True, exist_ok=True)
    M.export_onnx(net, shape, out / "old-format.onnx")
    header = ("Test fixture: the old Python project's model contract (ResNet18 export layout),\n"
              "with a tiny random model (seed 0). Made by training/make_test_models.py.")
    (out / "old-format.toml").write_text(bf.dump_toml(sc, header))

    cases = []
    for case in ["old_cry", "old_chirp"]:
        sig_path = ROOT / "tests/fixtures/frontend" / case / "signal.f32"
        y = np.fromfile(sig_path, dtype="<f4")
        x = bf.sidecar_input(y.astype(np.float64), sc)
        logits = onnx_logits(out / "old-format.onnx", x)[0]
        with torch.no_grad():
            tl = net.eval()(torch.from_numpy(x)).numpy()[0]
        assert np.allclose(logits, tl, atol=1e-5), (logits, tl)
        probs = bf.softmax_probs(logits, sc)
        cases.append({
            "signal": f"../frontend/{case}/signal.f32",
            "n_samples": int(len(y)),
            "padded_to": bf.window_samples(sc),
            "input_shape": list(x.shape),
            "input_min": float(x.min()), "input_max": float(x.max()),
            "input_mean": float(x.astype(np.float64).mean()),
            "logits": [float(v) for v in logits],
            "probabilities": [float(v) for v in probs],
            "top_label": sc["labels"][int(np.argmax(probs))],
        })
    doc = {
        "model": "old-format.onnx", "sidecar": "old-format.toml",
        "how": "signal (little-endian f32, 8 kHz) zero-padded at the end to padded_to samples, "
               "features per the sidecar (babycry_features.py, float64), bilinear resize to "
               "224x224, onnxruntime, softmax(logits / temperature)",
        "suggested_tolerance": {"probabilities_abs": 1e-4, "logits_abs": 1e-3},
        "cases": cases,
    }
    (out / "old-format.expected.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"old-format: {(out / 'old-format.onnx').stat().st_size} bytes, cases "
          + ", ".join(f"{c['signal']} -> {c['top_label']}" for c in cases))


# Fixture signals (tests/fixtures/frontend/<case>/signal.f32) the shipped models' parity is
# checked on: a cry-like sound, noise, silence, a clipped one and a chirp.
SHIPPED_CASES = ["reason_cry", "detector_cry", "detector_noise", "old_silence",
                 "detector_clipped", "old_chirp"]


def shipped(models_dir: Path, out: Path) -> None:
    """onnxruntime's probabilities for the shipped models on the fixture signals."""
    models = []
    for name in ["cry-detector", "cry-reason"]:
        sc = bf.load_sidecar(models_dir / f"{name}.toml")
        cases = []
        for case in SHIPPED_CASES:
            y = np.fromfile(ROOT / "tests/fixtures/frontend" / case / "signal.f32", dtype="<f4")
            x = bf.sidecar_input(y.astype(np.float64), sc)
            logits = onnx_logits(models_dir / f"{name}.onnx", x)[0]
            probs = bf.softmax_probs(logits, sc)
            cases.append({
                "signal": f"../frontend/{case}/signal.f32",
                "probabilities": [float(v) for v in probs],
                "top_label": sc["labels"][int(np.argmax(probs))],
            })
        models.append({"model": f"{name}.onnx", "version": sc["version"], "cases": cases})
    doc = {
        "how": "signal (little-endian f32, 8 kHz) fitted to the sidecar's window, features per "
               "the sidecar (babycry_features.py, float64), onnxruntime, softmax(logits / "
               "temperature); made by training/make_test_models.py",
        "suggested_tolerance": {"probabilities_abs": 1e-4},
        "models": models,
    }
    (out / "shipped.expected.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("shipped: " + "; ".join(
        f"{m['model']} {m['version']}: " + ", ".join(c["top_label"] for c in m["cases"])
        for m in models))


def placeholders(out: Path, version: str) -> None:
    note = ("PLACEHOLDER: random-init weights (torch seed 0), NOT trained. Final recipe and\n"
            "architecture; replaced by training/train.sh. Made by training/make_test_models.py.")
    torch.manual_seed(0)
    det = M.detector_net()
    sc = recipes.sidecar(name="cry-detector", version=version, kind="detector",
                         labels=recipes.DETECTOR_LABELS, temperature=1.0, threshold=0.5,
                         positive_label="cry", features=recipes.DETECTOR_FEATURES,
                         window_s=recipes.DETECTOR_WINDOW_S)
    det_shape = sc["input"]["shape"]
    M.export_onnx(det, det_shape, out / "cry-detector.onnx")
    (out / "cry-detector.toml").write_text(bf.dump_toml(sc, note))
    torch.manual_seed(0)
    rea = M.reason_net()
    sc = recipes.sidecar(name="cry-reason", version=version, kind="reason",
                         labels=recipes.REASON_LABELS, temperature=1.0, threshold=0.5,
                         features=recipes.REASON_FEATURES, window_s=recipes.REASON_WINDOW_S)
    rea_shape = sc["input"]["shape"]
    M.export_onnx(rea, rea_shape, out / "cry-reason.onnx")
    (out / "cry-reason.toml").write_text(bf.dump_toml(sc, note))
    for name, net, shape in [("cry-detector", det, det_shape), ("cry-reason", rea, rea_shape)]:
        print(f"{name}: {(out / (name + '.onnx')).stat().st_size} bytes, params "
              f"{M.count_params(net)}, MACs {M.count_macs(net, shape)}, ops "
              f"{M.onnx_ops(out / (name + '.onnx'))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/models")
    ap.add_argument("--placeholders", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--version", default="2026.11.24-placeholder")
    args = ap.parse_args()
    old_format(args.out)
    if args.placeholders:
        placeholders(args.models_dir, args.version)
    shipped(args.models_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
