"""Classification metrics, calibration (temperature scaling, ECE) and plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the NLL of softmax(logits / T), T in [0.05, 20]."""
    res = minimize_scalar(lambda lt: log_loss(softmax(logits, float(np.exp(lt))), y),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    bins = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        m = (conf > lo) & (conf <= hi) if i > 0 else (conf >= lo) & (conf <= hi)
        if m.sum() == 0:
            bins.append({"lo": lo, "hi": hi, "n": 0})
            continue
        acc, c = float(correct[m].mean()), float(conf[m].mean())
        total += m.mean() * abs(acc - c)
        bins.append({"lo": lo, "hi": hi, "n": int(m.sum()), "accuracy": acc, "confidence": c})
    return float(total), bins


def binary_ece(p_pos: np.ndarray, y: np.ndarray, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Calibration of P(positive) itself (reliability of a detector score)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    bins = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        m = (p_pos > lo) & (p_pos <= hi) if i > 0 else (p_pos >= lo) & (p_pos <= hi)
        if m.sum() == 0:
            bins.append({"lo": lo, "hi": hi, "n": 0})
            continue
        frac, c = float(y[m].mean()), float(p_pos[m].mean())
        total += m.mean() * abs(frac - c)
        bins.append({"lo": lo, "hi": hi, "n": int(m.sum()), "accuracy": frac, "confidence": c})
    return float(total), bins


def prf(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(n_classes)),
                                                 zero_division=0)
    return {"precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(),
            "support": s.tolist(), "macro_f1": float(np.mean(f))}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()


def auc(y: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def mean_std(xs) -> dict:
    a = np.asarray(list(xs), dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "n": int(len(a))}


def sd_suffix(values) -> str:
    """" ± sd" (sample sd, 3 decimals) to follow a mean in a report, or "" for one value."""
    a = np.asarray(list(values), dtype=np.float64)
    return f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else ""


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm_a = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)), dpi=80)
    ax.imshow(cm_a / np.maximum(cm_a.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            frac = cm_a[i, j] / max(cm_a[i].sum(), 1)
            ax.text(j, i, str(cm_a[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if frac > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(curves: dict[str, list[dict]], path: Path, title: str,
                     xlabel: str = "confidence") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=80)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, bins in curves.items():
        xs = [b["confidence"] for b in bins if b["n"] > 0]
        ys = [b["accuracy"] for b in bins if b["n"] > 0]
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
