"""Old Python pipeline versus babycryd on the same recordings, alternating, one thread
each. Called by bench/compare.sh (which builds babycryd and makes the venv); prints
Markdown tables of the ratios and writes bench/out/compare.json.

Two kinds of comparison, all run in each round, Python then babycryd, before the next
round starts:

- same model (one per --model): the Python pipeline (bench/old_service.py) and babycryd
  (no detector) both run that ONNX file;
- old service versus babycryd (with --old-model): the Python service with the old model
  (the ResNet18 on a 224x224 mel image) against babycryd's whole cry-window path with the
  shipped models (--shipped-model and --shipped-detector: both front ends and both
  networks, `babycryd bench`'s `cry_window_path`).

For each comparison and round: the Python service classifies the files, then
`babycryd classify` does, then `babycryd bench` times the same windows. Measured per
process: start to the first answer on stdout, peak RSS (wait4's ru_maxrss); per window
(median over the files): front end + inference, as each program times itself.
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
OLD_VS_SHIPPED = "old service (Python, ResNet18) vs babycryd (shipped detector + reason)"
MEASURES = [("front_end_ms", "front end per window", "ms"),
            ("inference_ms", "inference per window", "ms"),
            ("window_ms", "front end + inference per window", "ms"),
            ("first_s", "start to first answer", "s"),
            ("rss_mib", "peak RSS", "MiB")]


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


def python_round(model: str, files: list[str]) -> dict[str, float]:
    """The old service (bench/old_service.py) on `files` with `model`."""
    t, rss, lines = run_timed([sys.executable, "bench/old_service.py", "--model", model,
                               *files])
    summary = json.loads(lines[-1])["summary"]
    return {"first_s": t, "rss_mib": rss, "window_ms": summary["window_ms"],
            "front_end_ms": summary["front_end_ms"], "inference_ms": summary["inference_ms"]}


def babycryd_round(babycryd: str, model: str, detector: str | None,
                   files: list[str]) -> dict[str, float]:
    """`babycryd classify` (start to first answer, peak RSS), then `babycryd bench` (per
    window: the cry-window path; front end and inference summed over the models used)."""
    models = ["--model", model, *(["--detector", detector] if detector else ["--no-detector"])]
    t, rss, _ = run_timed([babycryd, "classify", "--json", *models, *files])
    _, _, lines = run_timed([babycryd, "bench", "--json", *models,
                             "--iterations", str(max(len(files), 3)),
                             *[x for f in files for x in ("--input", f)]])
    report = json.loads(lines[0])
    st = {row["stage"]: row["time"]["median_ms"] for row in report["stages"]}
    names = [m["name"] for m in report["models"]]
    return {"first_s": t, "rss_mib": rss,
            "window_ms": report["cry_window_path"]["median_ms"],
            "front_end_ms": sum(st[f"{n}: front end"] for n in names),
            "inference_ms": sum(st[f"{n}: network"] for n in names)}


def summarise(py: list[dict[str, float]], rs: list[dict[str, float]]) -> dict:
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    p = {k: med(py, k) for k in py[0]}
    b = {k: med(rs, k) for k in rs[0]}
    return {"python": p, "babycryd": b, "ratio": {k: p[k] / b[k] for k in p},
            "per_round": {"python": py, "babycryd": rs}}


def print_rows(first_col: str, p: dict[str, float], b: dict[str, float]) -> None:
    for key, label, unit in MEASURES:
        print(f"| {first_col}{label} | {p[key]:.3f} {unit} | {b[key]:.3f} {unit} | "
              f"{p[key] / b[key]:.1f}x |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--babycryd", default=str(ROOT / "target/release/babycryd"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", action="append", default=[],
                    help="an ONNX model both programs run (one table row group each)")
    ap.add_argument("--old-model",
                    help="the old service's model (e.g. bench/out/old-resnet18.onnx): adds "
                         "the old service versus shipped babycryd block")
    ap.add_argument("--shipped-model", default="models/cry-reason.onnx")
    ap.add_argument("--shipped-detector", default="models/cry-detector.onnx")
    ap.add_argument("--budget", type=float, default=15.0,
                    help="per-window speed-up babycryd must reach in the old-service block")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    if not a.model and not a.old_model:
        ap.error("give at least one --model or --old-model")

    same = {m: ([], []) for m in a.model}
    old: tuple[list, list] = ([], [])
    for _ in range(a.rounds):
        for model, (py, rs) in same.items():
            py.append(python_round(model, a.files))
            rs.append(babycryd_round(a.babycryd, model, None, a.files))
        if a.old_model:
            old[0].append(python_round(a.old_model, a.files))
            old[1].append(babycryd_round(a.babycryd, a.shipped_model, a.shipped_detector,
                                         a.files))

    results: dict = {"files": len(a.files), "rounds": a.rounds, "same_model": []}
    for model, (py, rs) in same.items():
        results["same_model"].append({"model": model, **summarise(py, rs)})
    if a.old_model:
        block = {"title": OLD_VS_SHIPPED, "python_model": a.old_model,
                 "babycryd_model": a.shipped_model, "babycryd_detector": a.shipped_detector,
                 **summarise(*old)}
        block["budget_per_window_x"] = a.budget
        block["budget_met"] = block["ratio"]["window_ms"] >= a.budget
        results["old_vs_shipped"] = block
    out = ROOT / "bench/out/compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    if results["same_model"]:
        print("| model | measure | Python (librosa + onnxruntime) | babycryd | ratio |")
        print("|---|---|---:|---:|---:|")
        for r in results["same_model"]:
            print_rows(f"{Path(r['model']).name} | ", r["python"], r["babycryd"])
    if a.old_model:
        b = results["old_vs_shipped"]
        print(f"\n{OLD_VS_SHIPPED}; {len(a.files)} recordings, {a.rounds} round(s), "
              "medians over rounds\n")
        print(f"| measure | old service ({Path(a.old_model).name}) | babycryd "
              f"({Path(a.shipped_detector).name} + {Path(a.shipped_model).name}) | ratio |")
        print("|---|---:|---:|---:|")
        print_rows("", b["python"], b["babycryd"])
        print(f"\nper-window budget: babycryd >= {a.budget:g}x faster than the Python "
              f"service: {b['ratio']['window_ms']:.1f}x, "
              f"{'met' if b['budget_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
