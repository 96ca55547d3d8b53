"""The replaced Python service's pipeline, for bench/compare.sh: librosa front end (the
training code's babycry_features, which follows the model's sidecar exactly as the old
service's librosa calls did) and onnxruntime on the same ONNX file, one thread.

    python bench/old_service.py --model models/cry-reason.onnx FILE...

Prints one JSON line per file as soon as it is classified (so the caller can time the
first answer), then a summary line {"summary": ...} with the per-window median (front
end, inference, total) in ms and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import babycry_features as bf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    sidecar = bf.load_sidecar(args.model.with_suffix(".toml"))
    sr = sidecar["audio"]["sample_rate"]
    n = bf.window_samples(sidecar)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fe_ms, nn_ms = [], []
    for f in args.files:
        y, _ = librosa.load(str(f), sr=sr, mono=True)
        y = bf.fit_window(y.astype(np.float64), n)
        t0 = time.perf_counter()
        x = bf.sidecar_input(y, sidecar)
        t1 = time.perf_counter()
        logits = sess.run(None, {name: x})[0][0]
        t2 = time.perf_counter()
        fe_ms.append((t1 - t0) * 1e3)
        nn_ms.append((t2 - t1) * 1e3)
        probs = bf.softmax_probs(logits, sidecar)
        top = int(np.argmax(probs))
        print(json.dumps({"file": str(f), "label": sidecar["labels"][top],
                          "probability": float(probs[top])}), flush=True)
    tot = [a + b for a, b in zip(fe_ms, nn_ms)]
    print(json.dumps({"summary": {
        "front_end_ms": float(np.median(fe_ms)), "inference_ms": float(np.median(nn_ms)),
        "window_ms": float(np.median(tot)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
