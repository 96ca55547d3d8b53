"""Detector experiments: group CV of other training recipes on the shipped folds, no export.

    training/.venv/bin/python training/experiments.py [--seeds 0,1,2 NAME ...]
    (default, the committed report reports/detector-experiments.md: every configuration in
    detector.CONFIGS and detector.EXPERIMENTS on fold seed 0, the shipped folds, and e8,
    w1.5-e8, e20-bal, s2-e8, w1.5-e20-bal and the learning curve (lc*) also on fold seeds 1
    and 2, then the ENSEMBLES below; with arguments the report goes to
    training/cache/detector-experiments.md)

Each configuration is cross-validated exactly as `train.sh detector` does its candidates
(same folds, streams and rule; checkpoints and out-of-fold results cached under
training/cache/), then evaluated on a finer threshold grid above 0.9, because at the
<= 1 false episode per hour target (at most one false episode in the 1.0 h `neg` stream)
one step of the standard grid (0.95 -> 0.975) moves recall by up to 0.14. Writes
reports/detector-experiments.md: recall at the target with its spread over folds, the
paired per-fold difference against e8, recall within 3 s, false episodes per hour, the
window ROC AUC against the hardest non-cry categories, what averaging several networks
(ENSEMBLES) would gain, and a learning curve (e8 on a quarter, half, three quarters and all
of the training groups): how much more data of the same kind would buy.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as D  # noqa: E402
import detector as DT  # noqa: E402
import metrics as MT  # noqa: E402
import trainutil as TU  # noqa: E402

HARD = ("baby_laugh", "environment", "animal", "rejected_donateacry")


def at_target(ev) -> dict:
    """detector.best_threshold on the fine grid, with recall per fold at that threshold."""
    best = DT.best_threshold(ev, DT.DEFAULT_RULE)
    best["per_fold"] = DT.per_fold_recall(ev, best).tolist()
    return best


def evaluate(name: str, items, audio, seed: int) -> dict:
    """One configuration on the folds of one fold seed (seed 0: the shipped folds)."""
    t0 = time.time()
    _, _, ev = DT.cross_validated(name, items, audio, seed)
    cats = np.array([DT.item_category(it) for it in items])[ev.bitem]
    cry = ev.evalw & (ev.blabel == 1)
    cat_auc = {}
    for c in HARD:
        neg = (cats == c) & ev.evalw
        cat_auc[c] = MT.auc(np.r_[np.ones(cry.sum()), np.zeros(neg.sum())], np.r_[ev.pw[cry], ev.pw[neg]])
    return {"name": name, "seed": seed, "config": DT.ALL_CONFIGS[name], "seconds": time.time() - t0,
            "auc": MT.auc(ev.blabel[ev.evalw], ev.pw[ev.evalw]), "cat_auc": cat_auc,
            "best": at_target(ev)}


# Averages of out-of-fold logits of networks cross-validated on the same 1 s windows of the
# shipped folds: how much of the gap to the target is the variance of one small network.
ENSEMBLES = {"e8 + e8-r1": ("e8", "e8-r1"),
             "e20-bal + e20-bal-r1": ("e20-bal", "e20-bal-r1"),
             "5 recipes": ("e8", "e8-r1", "e20", "e20-bal", "e20-bal-r1"),
             "every 1 s network": ("e8", "e8-r1", "e20", "e20-bal", "e20-bal-r1", "e8-bal", "e8-mix",
                                   "wide-e8", "s2-e8", "tc-e8", "v20-e8")}


def ensembles(items, audio) -> list[dict]:
    """ENSEMBLES evaluated like one configuration (temperature, operating point) on fold seed 0."""
    fold = DT.assign_folds(items, 0)
    DT.set_config("e8")   # every member runs on the 1 s absolute-dB windows
    W = DT.build_windows(items, audio, fold, 0)
    cv = {}               # each network's out-of-fold result, loaded once
    for n in dict.fromkeys(n for names in ENSEMBLES.values() for n in names):
        DT.set_config(n)
        cv[n] = DT.cross_validate(n, items, audio, fold, W, 0)
    out = []
    for label, names in ENSEMBLES.items():
        rs = [cv[n] for n in names]
        res = {"oof": np.mean([r["oof"] for r in rs], axis=0), "noisy": rs[0]["noisy"],
               "streams": {k: dict(v, logits=np.mean([r["streams"][k]["logits"] for r in rs], axis=0))
                           for k, v in rs[0]["streams"].items()}}
        ev = DT.Evaluator(res, items, fold, W)
        out.append({"label": label, "names": names, "auc": MT.auc(ev.blabel[ev.evalw], ev.pw[ev.evalw]),
                    "best": at_target(ev)})
    return out


def write(results: list[dict], path: Path, ens: list[dict] | None = None) -> None:
    base = {r["seed"]: r for r in results if r["name"] == "e8"}

    def paired(r) -> np.ndarray | None:
        b = base.get(r["seed"])
        if b is None or r is b:
            return None
        return np.array(r["best"]["per_fold"]) - np.array(b["best"]["per_fold"])

    lines = [
        "# Cry detector: experiments on the shipped folds",
        "",
        "Produced by `training/.venv/bin/python training/experiments.py`: group CV, 5 folds, rule 3 of",
        "the last 4 windows, no model exported. Fold seed 0 gives the shipped folds; seeds",
        "1 and 2 reshuffle the groups into other folds (and other augmentation draws). The operating",
        "point of each row is the highest recall on a threshold grid refined to 0.0025 above 0.9 with",
        "at most one false episode in the held-out `neg` stream (1.0 h, each second of audio once:",
        "<= 1 false episode per hour). \"vs e8\" is the mean and sd over folds of the paired per-fold difference in",
        "recording recall against e8 on the same folds.",
        "",
        "| config | fold seed | recipe | window AUC | threshold | recording recall (folds) | vs e8 | within 3 s | false/h neg | false/h rej | "
        + " | ".join(f"AUC vs {c}" for c in HARD) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(HARD),
    ]
    for r in results:
        b = r["best"]
        pf = np.array(b["per_fold"])
        d = paired(r)
        vs = "" if d is None else f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}"
        recipe = ", ".join(f"{k} {v}" for k, v in r["config"].items())
        lines.append(
            f"| {r['name']} | {r['seed']} | {recipe} | {r['auc']:.4f} | {b['threshold']:.4f} | "
            f"{b['recording_recall']:.4f} ({pf.mean():.3f} ± {pf.std(ddof=1):.3f}) | {vs} | "
            f"{b['recording_recall_3s']:.4f} | {b['false_per_hour_neg']:.2f} | {b['false_per_hour_rej']:.2f} | "
            + " | ".join(f"{r['cat_auc'][c]:.3f}" for c in HARD) + " |")
    seeds = sorted({r["seed"] for r in results})
    if len(seeds) > 1:
        lines += ["", f"Over fold seeds {seeds} (configurations run on every one of them):", "",
                  "| config | recording recall, mean ± sd over seeds | vs e8, mean ± sd over seeds x folds | false/h rej, mean |",
                  "|---|---|---|---|"]
        for name in dict.fromkeys(r["name"] for r in results):
            rs = [r for r in results if r["name"] == name]
            if {r["seed"] for r in rs} != set(seeds):
                continue
            rec = np.array([r["best"]["recording_recall"] for r in rs])
            ds = [paired(r) for r in rs]
            vs = "" if any(d is None for d in ds) else \
                f"{np.concatenate(ds).mean():+.3f} ± {np.concatenate(ds).std(ddof=1):.3f}"
            rej = np.mean([r["best"]["false_per_hour_rej"] for r in rs])
            lines.append(f"| {name} | {rec.mean():.3f} ± {rec.std(ddof=1):.3f} | {vs} | {rej:.2f} |")
    curve = [r for r in results if "train_frac" in r["config"]]
    if curve:
        lines += ["", "Learning curve: e8 trained on a nested random subset of the training folds' groups",
                  "(babies and non-cry recordings alike, or only the cry or only the non-cry recordings",
                  "thinned), without the augmented copies (their backgrounds could come from groups left",
                  "out); the held-out folds are unchanged. Mean ± sd over the fold seeds each row was run on:", "",
                  "| fraction of training groups | thinned | fold seeds | window AUC | AUC vs environment | AUC vs animal | recording recall at <= 1 false/h | false/h rej |",
                  "|---|---|---|---|---|---|---|---|"]

        def point(r) -> tuple[float, str]:
            return r["config"]["train_frac"], r["config"].get("train_frac_of", "all")

        for frac, of in sorted({point(r) for r in curve}):
            rs = [r for r in curve if point(r) == (frac, of)]
            auc = np.array([r["auc"] for r in rs])
            rec = np.array([r["best"]["recording_recall"] for r in rs])
            cat = {c: np.array([r["cat_auc"][c] for r in rs]) for c in ("environment", "animal")}
            rej = np.mean([r["best"]["false_per_hour_rej"] for r in rs])
            lines.append(f"| {frac:g} | {of} | {', '.join(str(r['seed']) for r in rs)} | {auc.mean():.4f}{MT.sd_suffix(auc)} | "
                         + " | ".join(f"{a.mean():.3f}{MT.sd_suffix(a)}" for a in cat.values())
                         + f" | {rec.mean():.3f}{MT.sd_suffix(rec)} | {rej:.2f} |")
    if ens:
        lines += ["", "Ensembles on fold seed 0 (the mean of the networks' out-of-fold logits, then the same",
                  "temperature and operating point search; each would cost its networks' MACs together):", "",
                  "| networks | window AUC | threshold | recording recall (folds) | false/h neg |",
                  "|---|---|---|---|---|"]
        for e in ens:
            b, pf = e["best"], np.array(e["best"]["per_fold"])
            lines.append(f"| {e['label']}: {', '.join(e['names'])} | {e['auc']:.4f} | {b['threshold']:.4f} | "
                         f"{b['recording_recall']:.4f} ({pf.mean():.3f} ± {pf.std(ddof=1):.3f}) | "
                         f"{b['false_per_hour_neg']:.2f} |")
    lines += ["", "Target (issue 3): recording recall >= 0.95 at <= 1 false episode per hour; no row is near it.", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--seeds"] and len(args) > 2:
        runs = [(n, int(seed)) for seed in args[1].split(",") for n in args[2:]]
    elif args:
        runs = [(n, 0) for n in args]
    else:
        runs = [(n, 0) for n in [*DT.CONFIGS, *DT.EXPERIMENTS]] + \
            [(n, seed) for seed in (1, 2) for n in ("e8", "w1.5-e8", "e20-bal", "s2-e8", "w1.5-e20-bal",
                                                    *(n for n, c in DT.EXPERIMENTS.items() if "train_frac" in c))]
    unknown = [n for n, _ in runs if n not in DT.ALL_CONFIGS]
    if unknown:
        print(f"unknown configuration(s) {unknown}; known: {list(DT.ALL_CONFIGS)}", file=sys.stderr)
        return 2
    TU.set_threads()
    root = D.DEFAULT_DATA
    D.check_data(root)
    items = D.read_donateacry(root) + D.read_negatives(root)
    audio = D.load_audio(root, items)
    results = [evaluate(n, items, audio, seed) for n, seed in runs]
    # Only the default run rewrites the committed report; a run of chosen configurations
    # writes beside the cache, so it cannot leave a partial report behind.
    out = HERE / "reports" / "detector-experiments.md" if not args else D.CACHE / "detector-experiments.md"
    write(results, out, ensembles(items, audio) if not args else None)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
