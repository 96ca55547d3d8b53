"""Old Python pipeline versus babycryd on the same recordings, alternating, one thread
each. Called by bench/compare.sh (which builds babycryd and makes the venv); prints a
Markdown table of the ratios and writes bench/out/compare.json.

For each model and each round: the Python service (bench/old_service.py) classifies the
files, then `babycryd classify` does, then `babycryd bench` times the same windows.
Measured per process: start to the first answer on stdout, peak RSS (wait4's ru_maxrss);
per window (median over the files): front end + inference, as each program times itself.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           NUMBA_NUM_THREADS="1", RAYON_NUM_THREADS="1")


def run_timed(cmd: list[str]) -> tuple[float, float, list[str]]:
    """(seconds to the first stdout line, peak RSS MiB, stdout lines)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=ENV, cwd=ROOT)
    assert p.stdout is not None
    first = p.stdout.readline()
    t_first = time.perf_counter() - t0
    lines = [first] + p.stdout.readlines()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:3]} failed with {p.returncode}")
    return t_first, usage.ru_maxrss / 1024, lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--babycryd", default=str(ROOT / "target/release/babycryd"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    results = []
    for model in a.model:
        py, rs = [], []
        for _ in range(a.rounds):
            t, rss, lines = run_timed([sys.executable, "bench/old_service.py", "--model", model,
                                       *a.files])
            summary = json.loads(lines[-1])["summary"]
            py.append({"first_s": t, "rss_mib": rss, "window_ms": summary["window_ms"],
                       "front_end_ms": summary["front_end_ms"],
                       "inference_ms": summary["inference_ms"]})
            t, rss, _ = run_timed([a.babycryd, "classify", "--json", "--no-detector",
                                   "--model", model, *a.files])
            _, _, lines = run_timed([a.babycryd, "bench", "--json", "--no-detector",
                                     "--model", model, "--iterations", str(len(a.files)),
                                     *[x for f in a.files for x in ("--input", f)]])
            report = json.loads(lines[0])
            st = {row["stage"]: row["time"]["median_ms"] for row in report["stages"]}
            name = report["models"][0]["name"]
            rs.append({"first_s": t, "rss_mib": rss,
                       "window_ms": report["cry_window_path"]["median_ms"],
                       "front_end_ms": st[f"{name}: front end"],
                       "inference_ms": st[f"{name}: network"]})
        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        row = {"model": model, "files": len(a.files), "rounds": a.rounds,
               "python": {k: med(py, k) for k in py[0]},
               "babycryd": {k: med(rs, k) for k in rs[0]}}
        results.append(row)
    out = ROOT / "bench/out/compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | measure | Python (librosa + onnxruntime) | babycryd | ratio |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        p, b = r["python"], r["babycryd"]
        for key, label, unit in [("front_end_ms", "front end per window", "ms"),
                                 ("inference_ms", "inference per window", "ms"),
                                 ("window_ms", "front end + inference per window", "ms"),
                                 ("first_s", "start to first answer", "s"),
                                 ("rss_mib", "peak RSS", "MiB")]:
            print(f"| {Path(r['model']).name} | {label} | {p[key]:.3f} {unit} | "
                  f"{b[key]:.3f} {unit} | {p[key] / b[key]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
