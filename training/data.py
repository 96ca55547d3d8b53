"""Manifests, decoded-audio cache and group-aware folds."""
from __future__ import annotations

import csv
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.model_selection import StratifiedGroupKFold

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
CACHE = HERE / "cache"
SR = 8000


@dataclass
class Item:
    file: str          # path relative to its dataset folder
    source: str        # "donateacry" or "negatives"
    label: str         # cry reason, or negative category
    screen: str        # verified / unscreened / rejected / negative
    group: str         # split unit (prefixed by source so ids never collide)
    platform: str = ""
    license: str = ""

    @property
    def is_cry(self) -> bool:
        return self.source == "donateacry" and self.screen in ("verified", "unscreened")


def read_donateacry(root: Path) -> list[Item]:
    with open(root / "donateacry" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [Item(file=r["file"], source="donateacry", label=r["label"], screen=r["screen"],
                 group="dac:" + r["group"].lower(), platform=r["platform"],
                 license="ODbL-1.0/DbCL-1.0") for r in rows]


def read_negatives(root: Path) -> list[Item]:
    with open(root / "negatives" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [Item(file=r["file"], source="negatives", label=r["category"], screen="negative",
                 group=f"neg:{r['category']}:{r['group']}", license=r["license"])
            for r in rows]


def check_data(root: Path) -> None:
    for sub in ("donateacry", "negatives"):
        if not (root / sub / "manifest.csv").exists():
            raise SystemExit(f"data missing: {root / sub / 'manifest.csv'} (use --data)")


def load_audio(root: Path, items: list[Item]) -> list[np.ndarray]:
    """Decoded float32 audio for every item, cached under training/cache/."""
    key = hashlib.sha256("\n".join(f"{it.source}/{it.file}" for it in items).encode()).hexdigest()[:16]
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"audio-{key}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    out = []
    for it in items:
        y, sr = sf.read(root / it.source / it.file, dtype="float32", always_2d=False)
        if y.ndim > 1:
            y = y.mean(axis=1)
        if sr != SR:
            raise ValueError(f"{it.file}: sample rate {sr}, want {SR}")
        out.append(np.ascontiguousarray(y, dtype=np.float32))
    with open(path, "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    return out


def group_folds(y: list[str] | np.ndarray, groups: list[str], n_splits: int, seed: int
                ) -> np.ndarray:
    """Fold index per item from StratifiedGroupKFold (shuffled with seed)."""
    y = np.asarray(y)
    fold = np.full(len(y), -1, dtype=np.int64)
    n_groups = len(set(groups))
    k = min(n_splits, n_groups)
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, te) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
        fold[te] = f
    assert (fold >= 0).all()
    return fold


def assert_no_group_leak(fold: np.ndarray, groups: list[str]) -> None:
    seen: dict[str, int] = {}
    for f, g in zip(fold, groups):
        if seen.setdefault(g, int(f)) != int(f):
            raise AssertionError(f"group {g} in folds {seen[g]} and {f}")
