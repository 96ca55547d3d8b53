"""The one feature front end of babycryd's models (see docs/model-contract.md).

Everything that turns audio into a model input goes through this module: training,
evaluation, the golden parity fixtures in tests/fixtures/frontend/ and the expected
outputs in tests/fixtures/models/. The Rust daemon re-implements exactly this.

    feats = features(y, sample_rate, sidecar["features"])          # [n_mels, frames] float32
    x = model_input(feats, sidecar["input"])                        # e.g. [1, 1, 64, 219] float32

All arithmetic is float64; results are returned as float32.
"""
from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import librosa
import numpy as np

# [features] keys of the sidecar, in the order we write them. Optional ones have a default
# (None meaning "derived" or "absent").
FEATURE_KEYS = (
    "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax", "window", "center",
    "pad_mode", "power", "mel_norm", "htk", "db", "db_ref", "amin", "top_db", "normalize",
)
OPTIONAL_FEATURE_KEYS = ("win_length", "fmax", "top_db")
TOP_KEYS = ("name", "version", "kind", "labels", "output", "temperature", "threshold",
            "positive_label")
INPUT_KEYS = ("shape", "resize", "channels")


@dataclass(frozen=True)
class FeatureRecipe:
    """A validated [features] table with defaults resolved for one sample rate."""

    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    window: str
    center: bool
    pad_mode: str
    power: float
    mel_norm: str
    htk: bool
    db: bool
    db_ref: str | float
    amin: float
    top_db: float | None
    normalize: str

    @staticmethod
    def from_table(table: Mapping[str, Any], sample_rate: int) -> "FeatureRecipe":
        unknown = set(table) - set(FEATURE_KEYS)
        if unknown:
            raise ValueError(f"unknown [features] keys: {sorted(unknown)}")
        missing = [k for k in FEATURE_KEYS if k not in table and k not in OPTIONAL_FEATURE_KEYS]
        if missing:
            raise ValueError(f"missing [features] keys: {missing}")
        n_fft = int(table["n_fft"])
        win_length = int(table.get("win_length", n_fft))
        fmax = float(table.get("fmax", sample_rate / 2))
        top_db = table.get("top_db")
        db_ref = table["db_ref"]
        if isinstance(db_ref, str):
            if db_ref != "max":
                raise ValueError(f"db_ref must be \"max\" or a number, got {db_ref!r}")
        else:
            db_ref = float(db_ref)
        r = FeatureRecipe(
            n_fft=n_fft, win_length=win_length, hop_length=int(table["hop_length"]),
            n_mels=int(table["n_mels"]), fmin=float(table["fmin"]), fmax=fmax,
            window=str(table["window"]), center=bool(table["center"]),
            pad_mode=str(table["pad_mode"]), power=float(table["power"]),
            mel_norm=str(table["mel_norm"]), htk=bool(table["htk"]), db=bool(table["db"]),
            db_ref=db_ref, amin=float(table["amin"]),
            top_db=None if top_db is None else float(top_db),
            normalize=str(table["normalize"]),
        )
        if r.window not in ("hann", "hamming"):
            raise ValueError(f"window must be hann or hamming, got {r.window!r}")
        if r.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be constant or reflect, got {r.pad_mode!r}")
        if r.mel_norm not in ("slaney", "none"):
            raise ValueError(f"mel_norm must be slaney or none, got {r.mel_norm!r}")
        if r.normalize not in ("none", "minmax", "standard"):
            raise ValueError(f"normalize must be none, minmax or standard, got {r.normalize!r}")
        if not (0 < r.win_length <= r.n_fft) or r.hop_length <= 0 or r.n_mels <= 0:
            raise ValueError("need 0 < win_length <= n_fft, hop_length > 0, n_mels > 0")
        if r.power not in (1.0, 2.0):
            raise ValueError("power must be 1.0 or 2.0")
        return r

    def n_frames(self, n_samples: int) -> int:
        if self.center:
            return 1 + n_samples // self.hop_length
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def to_table(self) -> dict[str, Any]:
        """All keys written explicitly (top_db omitted when absent: TOML has no null)."""
        t: dict[str, Any] = {}
        for k in FEATURE_KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            t[k] = v
        return t


@functools.lru_cache(maxsize=32)
def _mel_basis(sample_rate: int, r: FeatureRecipe) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=r.n_fft, n_mels=r.n_mels, fmin=r.fmin,
                               fmax=r.fmax, htk=r.htk,
                               norm="slaney" if r.mel_norm == "slaney" else None,
                               dtype=np.float64)


def mel_power(y: np.ndarray, sample_rate: int, r: FeatureRecipe) -> np.ndarray:
    """librosa.feature.melspectrogram in float64: [..., n_mels, frames].

    Same steps as librosa.feature.melspectrogram (|stft|**power, then the mel basis
    applied with the same einsum), with the mel basis cached and any leading batch axes
    allowed; tests check it against librosa.feature.melspectrogram itself.
    """
    y = np.asarray(y, dtype=np.float64)
    stft = librosa.stft(y, n_fft=r.n_fft, hop_length=r.hop_length, win_length=r.win_length,
                        window=r.window, center=r.center, pad_mode=r.pad_mode)
    s = np.abs(stft) ** r.power
    return np.einsum("...ft,mf->...mt", s, _mel_basis(sample_rate, r), optimize=True)


def mel_power_reference(y: np.ndarray, sample_rate: int, r: FeatureRecipe) -> np.ndarray:
    """librosa.feature.melspectrogram itself (slow; for tests)."""
    return librosa.feature.melspectrogram(
        y=np.asarray(y, dtype=np.float64), sr=sample_rate, n_fft=r.n_fft,
        hop_length=r.hop_length, win_length=r.win_length, window=r.window, center=r.center,
        pad_mode=r.pad_mode, power=r.power, n_mels=r.n_mels, fmin=r.fmin, fmax=r.fmax,
        htk=r.htk, norm="slaney" if r.mel_norm == "slaney" else None, dtype=np.float64)


def to_db(s: np.ndarray, r: FeatureRecipe) -> np.ndarray:
    """librosa.power_to_db with the recipe's ref/amin/top_db (identity when db=false)."""
    if not r.db:
        return s
    ref = np.max if r.db_ref == "max" else float(r.db_ref)
    return librosa.power_to_db(s, ref=ref, amin=r.amin, top_db=r.top_db)


def normalize(x: np.ndarray, mode: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if mode == "none":
        return x
    if mode == "minmax":
        lo, hi = x.min(), x.max()
        if hi == lo:
            return np.zeros_like(x)
        return (x - lo) / (hi - lo)
    if mode == "standard":
        mean = x.mean()
        std = x.std()  # population std (ddof = 0)
        if std == 0:
            return np.zeros_like(x)
        return (x - mean) / std
    raise ValueError(f"unknown normalize {mode!r}")


def feature_stages(y: np.ndarray, sample_rate: int, table: Mapping[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(db, norm) in float64: the matrix after power_to_db (the power mel when db=false)
    and after normalisation, both [n_mels, frames]."""
    r = FeatureRecipe.from_table(table, sample_rate)
    db = to_db(mel_power(y, sample_rate, r), r)
    return db, normalize(db, r.normalize)


def features(y: np.ndarray, sample_rate: int, table: Mapping[str, Any]) -> np.ndarray:
    """The normalised feature matrix [n_mels, frames] as float32."""
    return feature_stages(y, sample_rate, table)[1].astype(np.float32)


def features_batch(ys: np.ndarray, sample_rate: int, table: Mapping[str, Any]) -> np.ndarray:
    """features() for a batch of equal-length signals [b, n] -> [b, n_mels, frames] float32.
    dB reference (max) and normalisation are per signal, exactly as in features()."""
    r = FeatureRecipe.from_table(table, sample_rate)
    mel = mel_power(np.asarray(ys, dtype=np.float64), sample_rate, r)
    out = np.empty(mel.shape, dtype=np.float32)
    for i in range(mel.shape[0]):
        out[i] = normalize(to_db(mel[i], r), r.normalize).astype(np.float32)
    return out


def fit_window(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad at the end or cut to exactly n_samples (the contract's window rule)."""
    y = np.asarray(y)
    if len(y) >= n_samples:
        return y[:n_samples]
    return np.concatenate([y, np.zeros(n_samples - len(y), dtype=y.dtype)])


def _bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of torch's bilinear (align_corners=False, antialias=False)."""
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, w1


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(x[None, None], (height, width), mode='bilinear',
    align_corners=False) for a 2-D array, in float64."""
    x = np.asarray(x, dtype=np.float64)
    h0, h1, hw = _bilinear_weights(x.shape[0], height)
    w0, w1, ww = _bilinear_weights(x.shape[1], width)
    rows = x[h0, :] * (1.0 - hw)[:, None] + x[h1, :] * hw[:, None]
    return rows[:, w0] * (1.0 - ww)[None, :] + rows[:, w1] * ww[None, :]


def model_input(feats: np.ndarray, input_table: Mapping[str, Any]) -> np.ndarray:
    """The ONNX input tensor per the sidecar's [input] table, float32."""
    unknown = set(input_table) - set(INPUT_KEYS)
    if unknown:
        raise ValueError(f"unknown [input] keys: {sorted(unknown)}")
    shape = [int(v) for v in input_table["shape"]]
    channels = int(input_table.get("channels", 1))
    x = np.asarray(feats, dtype=np.float64)
    if "resize" in input_table:
        h, w = (int(v) for v in input_table["resize"])
        x = resize_bilinear(x, h, w)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != channels or list(x.shape) != shape[2:]:
        raise ValueError(f"features {list(x.shape)} x {channels} channels do not fit shape {shape}")
    x = np.repeat(x[None, None], channels, axis=1)
    return x.astype(np.float32)


def window_samples(sidecar: Mapping[str, Any]) -> int:
    a = sidecar["audio"]
    return int(round(float(a["window_seconds"]) * int(a["sample_rate"])))


def sidecar_input(y: np.ndarray, sidecar: Mapping[str, Any]) -> np.ndarray:
    """Audio at the sidecar's sample rate -> model input (window fitted first)."""
    sr = int(sidecar["audio"]["sample_rate"])
    y = fit_window(y, window_samples(sidecar))
    return model_input(features(y, sr, sidecar["features"]), sidecar["input"])


def softmax_probs(logits: np.ndarray, sidecar: Mapping[str, Any]) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if sidecar.get("output", "logits") == "probabilities":
        return z
    z = z / float(sidecar.get("temperature", 1.0))
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


# ---------------------------------------------------------------- sidecar TOML

def load_sidecar(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("no nan/inf in sidecars")
        s = repr(v)
        return s if ("." in s or "e" in s) else s + ".0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v)} to TOML")


def dump_toml(doc: Mapping[str, Any], header: str = "") -> str:
    """Tiny deterministic TOML writer: top-level scalars/arrays, then one level of tables."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
    tables = []
    for k, v in doc.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, t in tables:
        lines.append("")
        lines.append(f"[{k}]")
        for kk, vv in t.items():
            lines.append(f"{kk} = {_toml_value(vv)}")
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == {k: (dict(v) if isinstance(v, Mapping) else
                                       (list(v) if isinstance(v, tuple) else v))
                                   for k, v in doc.items()}
    return text
