"""Feature recipes ([features] tables) and sidecar skeletons shared by every script."""
from __future__ import annotations

import copy
from typing import Any

SAMPLE_RATE = 8000

REASON_LABELS = ["belly_pain", "burping", "cold_hot", "discomfort", "hungry", "lonely",
                 "scared", "tired"]
DETECTOR_LABELS = ["not_cry", "cry"]

# The old Python project's front end (ResNet18 on a resized 224x224 image).
OLD_FEATURES: dict[str, Any] = {
    "n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 128, "fmin": 0.0,
    "fmax": 4000.0, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0,
    "mel_norm": "slaney", "htk": False, "db": True, "db_ref": "max", "amin": 1e-10,
    "top_db": 80.0, "normalize": "minmax",
}

# Cry detector: 1 s windows, absolute log-mel (keeps the level, which tells a quiet room
# from a crying baby), no per-window normalisation.
DETECTOR_FEATURES: dict[str, Any] = {
    "n_fft": 256, "win_length": 256, "hop_length": 128, "n_mels": 40, "fmin": 50.0,
    "fmax": 4000.0, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0,
    "mel_norm": "slaney", "htk": False, "db": True, "db_ref": 1.0, "amin": 1e-10,
    "normalize": "none",
}
DETECTOR_WINDOW_S = 1.0

# Cry reason: 7 s windows, per-recording dB relative to max, standardised (phone gain
# and distance removed). Hop = n_fft (64 ms): the network's first layer used to stride 2
# over 32 ms frames anyway, and half the frames halve the front end's cost.
REASON_FEATURES: dict[str, Any] = {
    "n_fft": 512, "win_length": 512, "hop_length": 512, "n_mels": 64, "fmin": 50.0,
    "fmax": 4000.0, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0,
    "mel_norm": "slaney", "htk": False, "db": True, "db_ref": "max", "amin": 1e-10,
    "top_db": 80.0, "normalize": "standard",
}
REASON_WINDOW_S = 7.0

# Exercises every other branch of the contract (fixtures only).
EXOTIC_FEATURES: dict[str, Any] = {
    "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 48, "fmin": 20.0,
    "fmax": 3800.0, "window": "hamming", "center": True, "pad_mode": "reflect", "power": 1.0,
    "mel_norm": "none", "htk": True, "db": True, "db_ref": 1.0, "amin": 1e-5,
    "normalize": "standard",
}

# Power mel without dB (db = false) and center = false (fixtures only).
RAW_FEATURES: dict[str, Any] = {
    "n_fft": 256, "win_length": 256, "hop_length": 100, "n_mels": 32, "fmin": 0.0,
    "fmax": 4000.0, "window": "hann", "center": False, "pad_mode": "constant", "power": 2.0,
    "mel_norm": "slaney", "htk": False, "db": False, "db_ref": "max", "amin": 1e-10,
    "normalize": "minmax",
}


def n_frames(features: dict[str, Any], n_samples: int) -> int:
    if features["center"]:
        return 1 + n_samples // features["hop_length"]
    return 1 + (n_samples - features["n_fft"]) // features["hop_length"]


def sidecar(*, name: str, version: str, kind: str, labels: list[str], temperature: float,
            threshold: float, features: dict[str, Any], window_s: float,
            resize: list[int] | None = None, channels: int = 1,
            positive_label: str | None = None,
            thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    n = int(round(window_s * SAMPLE_RATE))
    doc: dict[str, Any] = {
        "name": name, "version": version, "kind": kind, "labels": list(labels),
        "output": "logits", "temperature": float(temperature), "threshold": float(threshold),
    }
    if positive_label is not None:
        doc["positive_label"] = positive_label
    if thresholds:
        doc["thresholds"] = {k: float(v) for k, v in thresholds.items()}
    doc["audio"] = {"sample_rate": SAMPLE_RATE, "window_seconds": float(window_s)}
    doc["features"] = copy.deepcopy(features)
    hw = resize if resize else [features["n_mels"], n_frames(features, n)]
    inp: dict[str, Any] = {"shape": [1, channels, hw[0], hw[1]]}
    if resize:
        inp["resize"] = list(resize)
    inp["channels"] = channels
    doc["input"] = inp
    return doc


def old_sidecar(version: str = "old-format") -> dict[str, Any]:
    return sidecar(name="old-format", version=version, kind="reason", labels=REASON_LABELS,
                   temperature=1.0, threshold=0.0, features=OLD_FEATURES, window_s=7.0,
                   resize=[224, 224], channels=1)
