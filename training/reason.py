"""Cry-reason classifier: data, group CV with baselines, final training, export, report."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

import babycry_features as bf
import data as D
import metrics as MT
import models as M
import recipes as R
import trainutil as TU

LABELS = R.REASON_LABELS
HUNGRY = LABELS.index("hungry")
N_SPLITS = 5
SEEDS = (0, 1, 2)

# Hyper-parameter candidates compared by group CV (seed 0 folds); the winner is run on
# all seeds and exported.
CONFIGS = {
    "cw0.0": {"class_weight_power": 0.0, "label_smoothing": 0.05},
    "cw0.25": {"class_weight_power": 0.25, "label_smoothing": 0.05},
    "cw0.5": {"class_weight_power": 0.5, "label_smoothing": 0.05},
    "cw1.0": {"class_weight_power": 1.0, "label_smoothing": 0.05},
}
EPOCHS = 15
# Old recipe (ResNet18 on the 224x224 min-max image, from scratch): expensive on 2 CPU
# cores (~0.4 s per training sample-step), so reduced; see the report.
OLD_EPOCHS = 2
OLD_SEEDS = (0,)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def reason_items(items: list[D.Item]) -> list[D.Item]:
    """Verified cries with a reason plus unscreened lonely/scared; never rejected ones."""
    out = []
    for it in items:
        if it.source != "donateacry" or it.label not in LABELS:
            continue
        if it.screen == "verified" or (it.screen == "unscreened" and it.label in ("lonely", "scared")):
            out.append(it)
    return out


def window(y: np.ndarray) -> np.ndarray:
    return bf.fit_window(y.astype(np.float64), int(R.REASON_WINDOW_S * R.SAMPLE_RATE))


def features(audio: list[np.ndarray], table: dict, name: str) -> np.ndarray:
    path = D.CACHE / f"reason-{name}-{hashlib.sha256(repr(table).encode()).hexdigest()[:8]}.npy"
    if path.exists():
        x = np.load(path)
        if len(x) == len(audio):
            return x
    ys = np.stack([window(y) for y in audio])
    x = bf.features_batch(ys, R.SAMPLE_RATE, table)
    np.save(path, x)
    return x


def old_inputs(audio: list[np.ndarray]) -> np.ndarray:
    path = D.CACHE / "reason-old224.npy"
    if path.exists():
        x = np.load(path)
        if len(x) == len(audio):
            return x
    f = features(audio, R.OLD_FEATURES, "oldmel")
    sc = R.old_sidecar()
    x = np.stack([bf.model_input(m, sc["input"])[0, 0] for m in f])
    np.save(path, x)
    return x


def class_weights(y: np.ndarray, power: float) -> list[float]:
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    w = (len(y) / (len(LABELS) * np.maximum(counts, 1.0))) ** power
    return (w / w[y].mean()).tolist()


def prior(y: np.ndarray) -> np.ndarray:
    c = np.bincount(y, minlength=len(LABELS)).astype(np.float64) + 1.0
    return c / c.sum()


def make_cfg(name: str, ytr: np.ndarray, epochs: int = EPOCHS) -> TU.TrainConfig:
    c = CONFIGS[name]
    return TU.TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, weight_decay=1e-2,
                          class_weights=class_weights(ytr, c["class_weight_power"]),
                          label_smoothing=c["label_smoothing"],
                          augment=TU.spec_augment(max_f=8, max_t=10, n_masks=2, max_shift=15,
                                                  noise=0.05))  # frames of 64 ms


def net_tag() -> str:
    """Cache-name part for the CNN's architecture and input recipe, so a changed network or
    hop never reuses another one's out-of-fold logits."""
    key = repr((M.REASON_TC_LAYERS, R.REASON_FEATURES, EPOCHS))
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def run_cv(method: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold logits for one method and one seed (cached)."""
    path = D.CACHE / f"reason-oof-{method}{'' if method == 'old_resnet18' else '-' + net_tag()}-s{seed}.npy"
    if path.exists():
        return np.load(path)
    oof = np.zeros((len(y), len(LABELS)))
    for f in range(folds.max() + 1):
        tr, te = folds != f, folds == f
        t0 = time.time()
        if method == "old_resnet18":
            cfg = TU.TrainConfig(epochs=OLD_EPOCHS, batch_size=32, lr=1e-3, weight_decay=0.0)
            TU.seed_all(seed)
            net = M.ResNet18(len(LABELS))
            TU.train(net, x[tr][:, None], y[tr], cfg, seed=seed * 100 + f)
            oof[te] = TU.predict(net, x[te][:, None], batch=32)
        else:
            TU.seed_all(seed * 100 + f)
            net = M.reason_net()
            TU.train(net, x[tr][:, None], y[tr], make_cfg(method, y[tr]), seed=seed * 100 + f)
            oof[te] = TU.predict(net, x[te][:, None])
        log(f"{method} seed {seed} fold {f}: {te.sum()} test items, {time.time() - t0:.0f} s")
    np.save(path, oof)
    return oof


def evaluate(oof: np.ndarray | None, y: np.ndarray, folds: np.ndarray, kind: str) -> dict:
    """Per-fold metrics. kind: 'model' (logits, cross-fitted temperature), 'model_bias'
    (the same logits, decision argmax(logits + b * e_hungry) with b cross-fitted on the other
    folds' OOF logits to maximise macro-F1), 'hungry', 'prior'."""
    per_fold = []
    probs_cal = np.zeros((len(y), len(LABELS)))
    temps, biases = [], []
    pred_all = (oof.argmax(axis=1) if kind == "model" else np.full(len(y), HUNGRY))
    for f in range(folds.max() + 1):
        tr, te = folds != f, folds == f
        pri = prior(y[tr])
        if kind in ("model", "model_bias"):
            t = MT.fit_temperature(oof[tr], y[tr])  # fitted on the other folds' OOF logits
            temps.append(t)
            p = MT.softmax(oof[te], t)
            p_raw = MT.softmax(oof[te])
            pred = oof[te].argmax(axis=1)
            if kind == "model_bias":
                b = best_bias(oof[tr], y[tr])
                biases.append(b)
                pred = bias_pred(oof[te], b)
                pred_all[te] = pred
        elif kind == "hungry":
            p = p_raw = np.tile(pri, (te.sum(), 1))
            pred = np.full(te.sum(), HUNGRY)
        else:  # prior: always the training prior; argmax = hungry
            p = p_raw = np.tile(pri, (te.sum(), 1))
            pred = p.argmax(axis=1)
        probs_cal[te] = p
        r = MT.prf(y[te], pred, len(LABELS))
        per_fold.append({
            "fold": f, "n": int(te.sum()), "macro_f1": r["macro_f1"],
            "log_loss": MT.log_loss(p, y[te]), "log_loss_uncalibrated": MT.log_loss(p_raw, y[te]),
            "log_loss_prior": MT.log_loss(np.tile(pri, (te.sum(), 1)), y[te]),
            "accuracy": float((pred == y[te]).mean()),
        })
    pooled = MT.prf(y, pred_all, len(LABELS))
    e, bins = MT.ece(probs_cal, y)
    out = {
        "per_fold": per_fold,
        "pooled": pooled,
        "confusion": MT.confusion(y, pred_all, len(LABELS)),
        "ece_calibrated": e, "reliability": bins,
        "temperatures": temps, "hungry_biases": biases,
    }
    if kind in ("model", "model_bias"):
        out["ece_uncalibrated"] = MT.ece(MT.softmax(oof), y)[0]
    out["probs_calibrated"] = probs_cal
    return out


BIASES = np.round(np.arange(-1.0, 6.01, 0.25), 2)


def bias_pred(logits: np.ndarray, b: float) -> np.ndarray:
    z = logits.copy()
    z[:, HUNGRY] += b
    return z.argmax(axis=1)


def best_bias(logits: np.ndarray, y: np.ndarray) -> float:
    scores = [MT.prf(y, bias_pred(logits, b), len(LABELS))["macro_f1"] for b in BIASES]
    return float(BIASES[int(np.argmax(scores))])


def summarize(evals: list[dict]) -> dict:
    """Mean/std over every (seed, fold) and over seeds of the pooled macro-F1."""
    folds = [pf for e in evals for pf in e["per_fold"]]
    return {
        "macro_f1_folds": MT.mean_std(pf["macro_f1"] for pf in folds),
        "macro_f1_seeds_pooled": MT.mean_std(e["pooled"]["macro_f1"] for e in evals),
        "log_loss": MT.mean_std(pf["log_loss"] for pf in folds),
        "log_loss_prior": MT.mean_std(pf["log_loss_prior"] for pf in folds),
        "log_loss_minus_prior": MT.mean_std(pf["log_loss"] - pf["log_loss_prior"] for pf in folds),
        "accuracy": MT.mean_std(pf["accuracy"] for pf in folds),
        "ece_calibrated": MT.mean_std(e["ece_calibrated"] for e in evals),
        "per_class_f1_mean": np.mean([e["pooled"]["f1"] for e in evals], axis=0).tolist(),
        "per_class_recall_mean": np.mean([e["pooled"]["recall"] for e in evals], axis=0).tolist(),
        "per_class_precision_mean": np.mean([e["pooled"]["precision"] for e in evals], axis=0).tolist(),
    }


MARGIN = 0.05      # accepted predictions must beat always-hungry accuracy by this much
MIN_ACCEPTED = 30


def choose_thresholds(p_cal: np.ndarray, y: np.ndarray) -> tuple[float, dict, list[dict]]:
    """Abstention, from pooled out-of-fold calibrated probabilities.

    Global threshold t on the top probability: the smallest t at which the accepted
    predictions (at least MIN_ACCEPTED) are right at least MARGIN more often than
    'always hungry' is on every item, i.e. a reason is only shown when the model knows
    clearly more than the class prior. If no t qualifies the threshold is 1.0: the daemon
    always says 'uncertain'. Per-class overrides of 1.0 (never shown) for classes whose
    accepted predictions are not more precise than that class's prior frequency + MARGIN."""
    conf = p_cal.max(axis=1)
    pred = p_cal.argmax(axis=1)
    base = float((y == HUNGRY).mean())
    curve = []
    chosen = None
    for t in np.round(np.arange(0.10, 1.0, 0.05), 2):
        acc = conf >= t
        if acc.sum() == 0:
            curve.append({"threshold": float(t), "coverage": 0.0})
            continue
        a = float((pred[acc] == y[acc]).mean())
        curve.append({"threshold": float(t), "coverage": float(acc.mean()), "accuracy": a,
                      "n": int(acc.sum())})
        if chosen is None and a >= base + MARGIN and acc.sum() >= MIN_ACCEPTED:
            chosen = float(t)
    if chosen is None:
        return 1.0, {}, curve
    per_class = {}
    freq = np.bincount(y, minlength=len(LABELS)) / len(y)
    for c, name in enumerate(LABELS):
        m = (pred == c) & (conf >= chosen)
        prec = float((y[m] == c).mean()) if m.sum() else 0.0
        if m.sum() < 3 or prec < freq[c] + MARGIN:
            per_class[name] = 1.0
    return chosen, per_class, curve


def run_old_baseline(root: Path) -> None:
    """Only the old-recipe CV (cached OOF logits), so it can run apart from the rest."""
    TU.set_threads()
    items = reason_items(D.read_donateacry(root))
    audio = D.load_audio(root, items)
    y = np.array([LABELS.index(it.label) for it in items])
    groups = [it.group for it in items]
    xo = old_inputs(audio)
    for s in OLD_SEEDS:
        folds = D.group_folds(y, groups, N_SPLITS, seed=s)
        run_cv("old_resnet18", xo, y, folds, s)


def run(root: Path, reports: Path, models_dir: Path, version: str, skip_old: bool) -> dict:
    TU.set_threads()
    items = reason_items(D.read_donateacry(root))
    audio = D.load_audio(root, items)
    y = np.array([LABELS.index(it.label) for it in items])
    groups = [it.group for it in items]
    log(f"reason: {len(items)} recordings, {len(set(groups))} groups, counts "
        + str(dict(zip(LABELS, np.bincount(y, minlength=8).tolist()))))
    x = features(audio, R.REASON_FEATURES, "mel64")
    folds = {s: D.group_folds(y, groups, N_SPLITS, seed=s) for s in SEEDS}
    for s in SEEDS:
        D.assert_no_group_leak(folds[s], groups)

    # 1. choose the configuration on seed 0
    cv0 = {}
    for name in CONFIGS:
        oof = run_cv(name, x, y, folds[0], 0)
        cv0[name] = evaluate(oof, y, folds[0], "model")
        log(f"config {name}: seed-0 macro-F1 {cv0[name]['pooled']['macro_f1']:.3f}")
    best = max(CONFIGS, key=lambda n: (np.mean([pf["macro_f1"] for pf in cv0[n]["per_fold"]]),
                                       -np.mean([pf["log_loss"] for pf in cv0[n]["per_fold"]])))
    log(f"chosen config: {best}")

    # 2. all seeds for the chosen config and the baselines
    evals = {"cnn": [], "cnn_hungry_bias": [], "always_hungry": [], "prior": [], "old_resnet18": []}
    oofs = {}
    for s in SEEDS:
        oofs[s] = run_cv(best, x, y, folds[s], s)
        evals["cnn"].append(evaluate(oofs[s], y, folds[s], "model"))
        evals["cnn_hungry_bias"].append(evaluate(oofs[s], y, folds[s], "model_bias"))
        evals["always_hungry"].append(evaluate(None, y, folds[s], "hungry"))
        evals["prior"].append(evaluate(None, y, folds[s], "prior"))
    if not skip_old:
        xo = old_inputs(audio)
        for s in OLD_SEEDS:
            oof = run_cv("old_resnet18", xo, y, folds[s], s)
            evals["old_resnet18"].append(evaluate(oof, y, folds[s], "model"))
    else:
        for s in OLD_SEEDS:
            p = D.CACHE / f"reason-oof-old_resnet18-s{s}.npy"
            if p.exists():
                evals["old_resnet18"].append(evaluate(np.load(p), y, folds[s], "model"))

    # same seeds as the old baseline, for a like-for-like line in the report
    summary = {k: summarize(v) for k, v in evals.items() if v}
    summary["cnn_on_old_seeds"] = summarize([evals["cnn"][SEEDS.index(s)] for s in OLD_SEEDS])
    summary["configs_seed0"] = {n: summarize([cv0[n]]) for n in CONFIGS}

    # 3. calibration and abstention on pooled OOF of the chosen config
    all_logits = np.concatenate([oofs[s] for s in SEEDS])
    all_y = np.concatenate([y for _ in SEEDS])
    temperature = MT.fit_temperature(all_logits, all_y)
    p_cal = np.concatenate([e["probs_calibrated"] for e in evals["cnn"]])
    threshold, per_class, curve = choose_thresholds(p_cal, all_y)
    log(f"temperature {temperature:.3f}, threshold {threshold}, per-class {per_class}")

    # 4. final model on all data, exported
    TU.seed_all(0)
    net = M.reason_net()
    TU.train(net, x[:, None], y, make_cfg(best, y), seed=0)
    sc = R.sidecar(name="cry-reason", version=version, kind="reason", labels=LABELS,
                   temperature=round(temperature, 4), threshold=threshold,
                   features=R.REASON_FEATURES, window_s=R.REASON_WINDOW_S,
                   thresholds=per_class or None)
    onnx_path = models_dir / "cry-reason.onnx"
    M.export_onnx(net, sc["input"]["shape"], onnx_path)
    header = ("Cry-reason classifier (8 parents' labels, noisy). Trained by: bash training/train.sh reason\n"
              "See models/README.md for data, group-CV numbers and known limits.")
    (models_dir / "cry-reason.toml").write_text(bf.dump_toml(sc, header))

    result = {
        "n_items": len(items), "n_groups": len(set(groups)),
        "class_counts": dict(zip(LABELS, np.bincount(y, minlength=8).tolist())),
        "seeds": list(SEEDS), "n_splits": N_SPLITS, "epochs": EPOCHS, "configs": CONFIGS,
        "chosen_config": best, "old_epochs": OLD_EPOCHS, "old_seeds": list(OLD_SEEDS),
        "summary": summary,
        "confusion_cnn_seed0": evals["cnn"][0]["confusion"],
        "confusion_cnn_all_seeds": np.sum([e["confusion"] for e in evals["cnn"]], axis=0).tolist(),
        "confusion_old_resnet18": evals["old_resnet18"][0]["confusion"] if evals["old_resnet18"] else None,
        "reliability_cnn": MT.ece(p_cal, all_y)[1],
        "reliability_cnn_uncalibrated": MT.ece(MT.softmax(all_logits), all_y)[1],
        "temperature": temperature, "threshold": threshold, "per_class_thresholds": per_class,
        "abstention_curve": curve,
        "per_fold": {k: [e["per_fold"] for e in v] for k, v in evals.items() if v},
        "params": M.count_params(net), "architecture": M.describe(net),
        "macs": M.count_macs(net, sc["input"]["shape"]),
        "onnx_bytes": onnx_path.stat().st_size, "onnx_ops": M.onnx_ops(onnx_path),
        "input_shape": sc["input"]["shape"],
    }
    reports.mkdir(parents=True, exist_ok=True)
    MT.plot_confusion(result["confusion_cnn_all_seeds"], LABELS, reports / "reason-confusion.png",
                      f"cry-reason CNN, group {N_SPLITS}-fold OOF, seeds {list(SEEDS)} summed")
    curves = {"CNN after temperature scaling": result["reliability_cnn"],
              "CNN uncalibrated": result["reliability_cnn_uncalibrated"]}
    if evals["old_resnet18"]:
        curves["old ResNet18 (calibrated)"] = evals["old_resnet18"][0]["reliability"]
    MT.plot_reliability(curves, reports / "reason-reliability.png",
                        "cry-reason reliability (top-class confidence, OOF)")
    return result
