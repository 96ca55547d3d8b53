"""One command: train, cross-validate, export and report.

    training/.venv/bin/python training/train.py --model detector|reason|old-baseline|all
    (or: bash training/train.sh [detector|reason|all])

--data defaults to ../shared/data relative to the repository root. Decoded audio, features
and out-of-fold predictions are cached under training/cache/ (delete it to recompute).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as D  # noqa: E402
import report  # noqa: E402

ROOT = HERE.parent


def save(res: dict, name: str) -> None:
    D.CACHE.mkdir(exist_ok=True)
    (D.CACHE / f"{name}-result.pkl").write_bytes(pickle.dumps(res))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["detector", "reason", "old-baseline", "all", "report"],
                    default="all", help="report: rewrite reports and model cards from the last results")
    ap.add_argument("--data", type=Path, default=D.DEFAULT_DATA)
    ap.add_argument("--reports", type=Path, default=HERE / "reports")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--version", default="2026.11.30")
    ap.add_argument("--skip-old", action="store_true",
                    help="reason: do not train the old-recipe baseline (use cached results if any)")
    args = ap.parse_args()
    D.check_data(args.data)
    if args.model in ("old-baseline",):
        import reason
        reason.run_old_baseline(args.data)
    if args.model in ("reason", "all"):
        import reason
        res = reason.run(args.data, args.reports, args.models_dir, args.version, args.skip_old)
        save(res, "reason")
        report.write_reason(res, args.reports)
    if args.model in ("detector", "all"):
        import detector
        res = detector.run(args.data, args.reports, args.models_dir, args.version)
        save(res, "detector")
        report.write_detector(res, args.reports)
    if args.model == "report":
        for name, writer in (("reason", report.write_reason), ("detector", report.write_detector)):
            p = D.CACHE / f"{name}-result.pkl"
            if p.exists():
                writer(pickle.loads(p.read_bytes()), args.reports)
    if args.model in ("reason", "detector", "all", "report"):
        report.write_model_card(args.reports, args.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
