"""Markdown/JSON reports and the model cards (models/README.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

import recipes as R


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items() if k != "probs_calibrated"}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, float) and (o != o):
        return None
    return o


def ms(d: dict, nd: int = 3) -> str:
    return f"{d['mean']:.{nd}f} ± {d['std']:.{nd}f} (n={d['n']})"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_reason(res: dict, reports: Path) -> None:
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "reason.json").write_text(json.dumps(_clean(res), indent=1) + "\n")
    s = res["summary"]
    L = R.REASON_LABELS
    lines = [
        "# Cry-reason classifier: group cross-validation report",
        "",
        "Produced by `bash training/train.sh reason` (= `training/.venv/bin/python training/train.py --model reason`).",
        "",
        f"Data: {res['n_items']} recordings (verified with a reason + unscreened lonely/scared), "
        f"{res['n_groups']} uploader groups. Class counts: "
        + ", ".join(f"{k} {v}" for k, v in res["class_counts"].items()) + ".",
        "",
        f"Protocol: StratifiedGroupKFold({res['n_splits']}) on `group`, a new shuffle per seed "
        f"(seeds {res['seeds']}); every method sees the same folds. CNN: {res['epochs']} epochs; "
        f"config chosen on seed-0 folds among {list(res['configs'])}: **{res['chosen_config']}**. "
        f"Probabilities after temperature scaling fitted on the other folds' out-of-fold logits.",
        "",
        "| method | macro-F1 over folds×seeds | macro-F1 pooled per seed | log-loss | log-loss − prior's | accuracy | ECE (calibrated) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = [("always_hungry", "always hungry"), ("prior", "class prior (log-loss reference)"),
             ("cnn", "this CNN (all seeds)"),
             ("cnn_hungry_bias", "this CNN + cross-fitted hungry bias (all seeds)"), ("cnn_on_old_seeds", "this CNN (old baseline's seeds)"),
             ("old_resnet18", f"old recipe ResNet18 ({res['old_epochs']} epochs, seeds {res['old_seeds']})")]
    for k, title in names:
        if k not in s:
            continue
        v = s[k]
        lines.append(f"| {title} | {ms(v['macro_f1_folds'])} | {ms(v['macro_f1_seeds_pooled'])} | "
                     f"{ms(v['log_loss'])} | {ms(v['log_loss_minus_prior'])} | {ms(v['accuracy'])} | "
                     f"{ms(v['ece_calibrated'])} |")
    lines += ["", "Configurations on seed-0 folds:", "",
              "| config | macro-F1 over folds | log-loss − prior's |", "|---|---|---|"]
    for k, v in s["configs_seed0"].items():
        lines.append(f"| {k} {res['configs'][k]} | {ms(v['macro_f1_folds'])} | {ms(v['log_loss_minus_prior'])} |")
    lines += ["", "Per-class F1 on seed-0 folds for every configuration (pooled out-of-fold), to show which "
              "classes any of them can tell apart:", "",
              "| config | " + " | ".join(L) + " |", "|---" * (len(L) + 1) + "|"]
    for k, v in s["configs_seed0"].items():
        lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v["per_class_f1_mean"]) + " |")
    lines += ["", "Per-class (CNN, pooled out-of-fold predictions, mean over seeds):", "",
              "| class | n | precision | recall | F1 | old ResNet18 F1 |", "|---|---|---|---|---|---|"]
    old_f1 = s.get("old_resnet18", {}).get("per_class_f1_mean")
    for i, c in enumerate(L):
        lines.append(f"| {c} | {res['class_counts'][c]} | {s['cnn']['per_class_precision_mean'][i]:.3f} | "
                     f"{s['cnn']['per_class_recall_mean'][i]:.3f} | {s['cnn']['per_class_f1_mean'][i]:.3f} | "
                     + (f"{old_f1[i]:.3f} |" if old_f1 else "n/a |"))
    lines += ["", "Confusion matrix (rows true, columns predicted; CNN out-of-fold, seeds summed): "
              "`reason-confusion.png`", "", "| true \\ pred | " + " | ".join(L) + " |",
              "|---" * (len(L) + 1) + "|"]
    for i, row in enumerate(res["confusion_cnn_all_seeds"]):
        lines.append(f"| {L[i]} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"Calibration: temperature {res['temperature']:.3f} (fitted on all out-of-fold logits); "
              f"reliability plot `reason-reliability.png`.", "",
              f"Abstention: threshold {res['threshold']} on the calibrated top probability "
              f"(the smallest value at which at least 30 accepted out-of-fold predictions are right at least "
              f"5 points more often than 'always hungry' is on everything; 1.0 when no value qualifies, "
              f"i.e. the daemon always says `uncertain`); per-class overrides {res['per_class_thresholds']} "
              f"(1.0 = never shown: accepted predictions of that class were not 5 points more precise than its prior).",
              "", "| threshold | coverage | accuracy of accepted |", "|---|---|---|"]
    for c in res["abstention_curve"]:
        if c.get("coverage", 0) > 0:
            lines.append(f"| {c['threshold']} | {c['coverage']:.3f} | {c['accuracy']:.3f} |")
    lines += ["", f"Model: {res['params']} parameters, {res['macs'] / 1e6:.2f} M MACs per 7 s window, "
              f"ONNX {res['onnx_bytes']} bytes, ops {res['onnx_ops']}, input {res['input_shape']}.", ""]
    (reports / "reason.md").write_text("\n".join(lines))


def write_detector(res: dict, reports: Path) -> None:
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "detector.json").write_text(json.dumps(_clean(res), indent=1) + "\n")
    s = res["summary"]
    c = res["chosen"]
    k, n = res["rule"]
    lines = [
        "# Cry detector: group cross-validation report",
        "",
        "Produced by `bash training/train.sh detector` (= `training/.venv/bin/python training/train.py --model detector`).",
        "",
        f"Data: {res['n_items']} recordings ({res['n_cry_recordings']} cries: verified + unscreened; "
        f"negatives: rejected Donate-a-cry files and every category of negatives/), {res['n_groups']} groups. "
        f"{res['n_base_windows']} windows of {res.get('window_s', 1.0):g} s every 0.5 s (chosen configuration) plus {res['n_aug_windows']} augmented copies "
        "(cries mixed under a non-cry sound of the same fold at 0-20 dB SNR, non-cry sounds mixed with each other; "
        "random gain -25..+6/+10 dB with clipping).",
        "",
        f"Protocol: {res['n_splits']} folds; Donate-a-cry by StratifiedGroupKFold on `group` (cry vs not), "
        f"negatives/ by StratifiedGroupKFold on their `group` (category-stratified; baby_laugh and room_tone are one "
        f"group each, so each is held out whole in one fold). Configurations compared over fold seeds {res['compare_seeds']}; the "
        f"operating point and the figures below come from fold seed {res['seeds'][0]}. "
        f"Class-balanced sampling, {res['samples_per_epoch']} draws per epoch. The held-out non-cry recordings of "
        "each fold are concatenated (seeded random order) into two continuous streams, run every 0.5 s like the "
        "daemon, each second of audio once (the overlapping 5 s cuts of the one baby-laughter and the one room-tone "
        "recording are tiled, not replayed five times): `neg` = negatives/ only (speech, music, household, baby "
        "laughter, environment, animals, room tone), "
        "`rej` = rejected Donate-a-cry files (label-noisy hard negatives: mostly not cries, some babble and adults "
        f"imitating cries). A false episode starts at a confirmation ({k} of the last {n} windows ≥ threshold) more than "
        f"{res['quiet_hops'] / 2:g} s after the previous confirmation (the daemon's default `quiet_seconds` = 10).",
        "",
        "Configurations compared (rule "
        f"{k}-of-{n}, best threshold with ≤ {res['fa_target']:g} false episodes per hour of the `neg` stream):",
        "",
        f"| config | window AUC (pooled, fold seed {res['seeds'][0]}) | threshold | recording recall | "
        f"recall by fold seed {res['compare_seeds']} | mean ± sd over fold seeds | vs the best (seeds × folds) "
        "| false/h neg | false/h rej |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in res["config_comparison"].items():
        b = v["best_at_target"]
        d = v["vs_top"]
        vs = "" if name == res["top_config"] else f"{d['mean']:+.3f} ± {d['std']:.3f}"
        by_seed = ", ".join(f"{r:.3f}" for r in v["recall_by_seed"])
        over = ms(v["recall_over_seeds"])
        if b:
            lines.append(f"| {name} {res['configs'][name]} | {v['window_auc']:.4f} | {b['threshold']} | "
                         f"{b['recording_recall']:.4f} | {by_seed} | {over} | {vs} | "
                         f"{b['false_per_hour_neg']:.2f} | {b['false_per_hour_rej']:.2f} |")
        else:
            lines.append(f"| {name} {res['configs'][name]} | {v['window_auc']:.4f} | none reaches the target "
                         f"| | {by_seed} | {over} | {vs} | | |")
    lines += [
        "",
        f"Rule: each configuration's operating point is searched on each fold seed {res['compare_seeds']} "
        "(the highest recall with at most one false episode in that seed's `neg` stream, threshold grid "
        "refined to 0.0025 above 0.9); the configurations are listed cheapest network first, and the "
        "first whose recall is not clearly below the best mean's (paired per-fold difference over seeds × "
        f"folds, mean + sd ≥ 0) is chosen. Everything below is on fold seed {res['seeds'][0]}.",
        "",
        f"Chosen: **{res['chosen_config']}**; operating point P(cry) ≥ **{res['threshold']}** (after temperature "
        f"{res['temperature']:.3f}), rule **{k} of the last {n}** windows"
        + ("" if res["target_met"] else " (NO threshold reaches the false-alarm target: the one with the fewest false episodes)") + ".",
        "",
        "| metric (held-out groups) | mean ± sd over folds | pooled |",
        "|---|---|---|",
        f"| window ROC AUC (active cry windows vs all non-cry windows) | {ms(s['window_auc'], 4)} | {res['pooled_window_auc']:.4f} |",
        f"| cry-window recall at threshold | {ms(s['window_recall'])} | |",
        f"| non-cry window false-positive rate | {ms(s['window_fpr'], 4)} | |",
        f"| cry recording recall (rule fires within the recording) | {ms(s['recording_recall'])} | {c['recording_recall']:.4f} ({c['n_recordings']} recordings) |",
        f"| ... verified cries only | | {c.get('recording_recall_verified', float('nan')):.4f} ({c.get('n_recordings_verified')} recordings) |",
        f"| ... unscreened cries only (never listened to; some may not be cries) | | {c.get('recording_recall_unscreened', float('nan')):.4f} ({c.get('n_recordings_unscreened')} recordings) |",
        f"| cry recording recall within 3 s of its start | {ms(s['recording_recall_3s'])} | {c['recording_recall_3s']:.4f} |",
        f"| false episodes per hour, `neg` stream | {ms(s['false_per_hour_neg'], 2)} | {c['false_per_hour_neg']:.2f} ({c['false_episodes_neg']} in {c['hours_neg']:.2f} h) |",
        f"| false episodes per hour, `rej` stream | {ms(s['false_per_hour_rej'], 2)} | {c['false_per_hour_rej']:.2f} ({c['false_episodes_rej']} in {c['hours_rej']:.2f} h) |",
        "",
        f"False episodes by category: neg {c['false_by_category_neg']}, rej {c['false_by_category_rej']}.",
        f"Median confirmation time of detected cry recordings: {c['median_latency_s']} s after the recording starts.",
        "Cry recording recall with held-out non-cry audio of the same fold mixed in at a fixed SNR: "
        + ", ".join(f"{k2} {v:.3f}" for k2, v in res["noisy_recording_recall"].items()) + ".",
        "",
        f"Best threshold per rule with ≤ {res['fa_target']:g} false episodes per hour of the `neg` stream (pooled over folds):",
        "",
        "| rule | threshold | recording recall | verified only | recall within 3 s | false/h neg | false/h rej | median latency s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in res["best_by_rule"].items():
        if r is None:
            lines.append(f"| {key} | none reaches the target | | | | | | |")
        else:
            lines.append(f"| {key} | {r['threshold']} | {r['recording_recall']:.4f} | {r.get('recording_recall_verified', float('nan')):.4f} | {r['recording_recall_3s']:.4f} | "
                         f"{r['false_per_hour_neg']:.2f} | {r['false_per_hour_rej']:.2f} | {r['median_latency_s']} |")
    lines += ["", f"Trade-off at rule {k}-of-{n} (pooled; the last column says which held-out sounds the false episodes of the `neg` stream came from):", "",
              "| threshold | recording recall | verified only | within 3 s | false/h neg | false/h rej | false episodes in `neg` by category |",
              "|---|---|---|---|---|---|---|"]
    for r in res["sweep"]:
        if (r["k"], r["n"]) == (k, n) and round(r["threshold"] * 40) % 4 == 0:
            by_cat = sorted(r["false_by_category_neg"].items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append(f"| {r['threshold']} | {r['recording_recall']:.4f} | {r.get('recording_recall_verified', float('nan')):.4f} | {r['recording_recall_3s']:.4f} | "
                         f"{r['false_per_hour_neg']:.2f} | {r['false_per_hour_rej']:.2f} | {', '.join(f'{c} {v}' for c, v in by_cat)} |")
    lines += ["", "Windows by category at the chosen threshold (out-of-fold):", "",
              "| category | windows | P(cry) ≥ threshold | ROC AUC vs active cry windows |", "|---|---|---|---|"]
    for key, v in res["windows_by_category"].items():
        a = "" if v["auc_vs_cry"] is None else f"{v['auc_vs_cry']:.4f}"
        lines.append(f"| {key} | {v['windows']} | {v['positive_rate']:.4f} | {a} |")
    lines += ["", f"Window confusion (rows true not_cry/cry, columns predicted): {res['window_confusion']} (`detector-confusion.png`).",
              f"Calibration of P(cry) on out-of-fold windows: ECE {res['ece_uncalibrated']:.4f} uncalibrated, "
              f"{res['ece_calibrated']:.4f} after temperature scaling (`detector-reliability.png`).",
              "", f"Model: {res['params']} parameters, {res['macs_per_window'] / 1e6:.2f} M MACs per window, "
              f"{res['macs_per_7s'] / 1e6:.1f} M MACs per 7 s of audio at one window every 0.5 s; ONNX "
              f"{res['onnx_bytes']} bytes, ops {res['onnx_ops']}, input {res['input_shape']}.", ""]
    (reports / "detector.md").write_text("\n".join(lines))


def write_model_card(reports: Path, models_dir: Path) -> None:
    try:
        import model_card
    except ImportError:
        return
    model_card.write(reports, models_dir)
