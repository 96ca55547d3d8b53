"""Cry detector: windows, augmentation, group CV, stream false alarms, export, report."""
from __future__ import annotations

import pickle
import re
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

SR = R.SAMPLE_RATE
WIN = int(R.DETECTOR_WINDOW_S * SR)      # 8000 samples
HOP = SR // 2                            # the daemon runs the detector every 0.5 s
N_SPLITS = 5
SEEDS = (0,)              # fold seed of the detailed report and of the operating point
COMPARE_SEEDS = (0, 1, 2)  # fold seeds over which CONFIGS are compared
SAMPLES_PER_EPOCH = 12000
# Candidates compared by group CV (recording recall at <= FA_TARGET false episodes per hour
# of the negatives/ stream, rule DEFAULT_RULE); the winner is trained on everything.
# Optional keys (absent = the e8 recipe): "mixup" (Beta alpha of mixup on the log-mel batch),
# "neg_power" (non-cry windows drawn with category mass ~ count ** (1 - power): 0 = as now,
# 1 = every category equally), "channels" (detector_net widths), "normalize" ("standard":
# per-window standardised log-mel instead of absolute dB; "pcen": per-channel energy
# normalisation, experiments only, the Rust front end has none), "train_seed" (another
# initialisation and draw order on the same folds, to see the run-to-run spread), "arch"
# ("tc": the 1-D temporal CNN, models.TemporalCNN; "s2": the strided 2-D models.StridedCNN;
# default the 2-D SmallCNN with max-pooling), "pos_voicing" (train only on cry windows at
# least this voiced), "pos_screen" (train only on cry recordings of this screen), "focal"
# (focal-loss gamma), "train_frac" (learning curve: a nested share of the training groups,
# no augmented copies) with "train_frac_of" ("cry" or "not_cry":
# thin only that kind).
# CONFIGS is in order of preference, cheapest network first: the first configuration whose
# recall is not clearly below the best one's (paired per-fold difference: mean + sd >= 0) is
# chosen, so a cheaper network wins a tie.
CONFIGS = {"e8": {"epochs": 8, "window_s": 1.0}, "w1.5-e8": {"epochs": 8, "window_s": 1.5}}
# Tried on the same folds by training/experiments.py (report: reports/detector-experiments.md);
# none beat e8 clearly enough to replace it, so train.sh does not cross-validate them. The
# strided 2-D net (s2-e8) runs twice as fast per MAC in tract but stays below e8 on all
# three fold seeds (0.468 ± 0.005 against 0.497 ± 0.027): not worth a missed cry. Training
# only on the cry windows that hold phonation (v20-e8: voiced_fraction >= 0.2, a label-free
# filter) lost 0.038 on the shipped folds; 1.5 s windows with 20 epochs and category-balanced
# negatives (w1.5-e20-bal) gained 0.124 there but lost 0.034 on fold seed 1, and drawing
# every non-cry category equally (e20-bal1) gained 0.017: the operating point rests on the
# one or two hardest non-cry clips of each fold. Per-channel energy normalisation (pcen-e8,
# -0.036), training on verified cries only (ver-e8, -0.007) and a focal loss (focal-e8,
# -0.005) did not help either, and the learning curve (lc*-e8, fold seeds 0-2) is flat from
# three quarters of the training groups to all of them (window AUC 0.899 -> 0.898, recall
# 0.508 -> 0.514): more recordings of the same kind would not close the gap to 0.95. Longer
# context within the MAC budget (w2-n6-e8: 2 s windows, channels cut to keep 37 M MACs per
# 7 s) raised the window AUC (0.910) but lost 0.076 of recall on the shipped folds.
EXPERIMENTS = {"e20": {"epochs": 20, "window_s": 1.0},
               "e8-bal": {"epochs": 8, "window_s": 1.0, "neg_power": 0.5},
               "e8-mix": {"epochs": 8, "window_s": 1.0, "mixup": 0.4},
               "wide-e8": {"epochs": 8, "window_s": 1.0, "channels": [10, 20, 40, 64]},
               "std-e8": {"epochs": 8, "window_s": 1.0, "normalize": "standard"},
               "e20-bal": {"epochs": 20, "window_s": 1.0, "neg_power": 0.5},
               "e8-r1": {"epochs": 8, "window_s": 1.0, "train_seed": 1},
               "e20-bal-r1": {"epochs": 20, "window_s": 1.0, "neg_power": 0.5, "train_seed": 1},
               "tc-e8": {"epochs": 8, "window_s": 1.0, "arch": "tc"},
               "s2-e8": {"epochs": 8, "window_s": 1.0, "arch": "s2"},
               "v20-e8": {"epochs": 8, "window_s": 1.0, "pos_voicing": 0.2},
               "w1.5-e20-bal": {"epochs": 20, "window_s": 1.5, "neg_power": 0.5},
               "e20-bal1": {"epochs": 20, "window_s": 1.0, "neg_power": 1.0},
               "pcen-e8": {"epochs": 8, "window_s": 1.0, "normalize": "pcen"},
               **{f"lc{frac:g}-e8": {"epochs": 8, "window_s": 1.0, "train_frac": frac}
                  for frac in (0.25, 0.5, 0.75, 1.0)},
               **{f"lc0.5{of}-e8": {"epochs": 8, "window_s": 1.0, "train_frac": 0.5, "train_frac_of": of}
                  for of in ("cry", "not_cry")},
               "ver-e8": {"epochs": 8, "window_s": 1.0, "pos_screen": "verified"},
               "focal-e8": {"epochs": 8, "window_s": 1.0, "focal": 2.0},
               "w2-n6-e8": {"epochs": 8, "window_s": 2.0, "channels": [6, 12, 24, 48]}}
ALL_CONFIGS = {**CONFIGS, **EXPERIMENTS}
TRAIN_KEYS = ("mixup", "neg_power", "channels", "train_seed", "arch", "pos_voicing", "train_frac",
              "train_frac_of", "pos_screen", "focal")   # "normalize" is in the feature tag
QUIET_HOPS = 20        # the daemon ends an episode after 10 s (20 hops) without confirmed crying
PAUSE_DB = 20.0        # cry-recording windows this far below the recording's loudest are pauses
RULES = [(1, 1), (2, 2), (2, 3), (3, 4), (3, 5), (4, 6)]
DEFAULT_RULE = (3, 4)
THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.025), 3)
# Operating points are searched on a grid refined to 0.0025 above 0.9: at <= 1 false episode
# per hour (at most one in the 1.0 h `neg` stream) one 0.025 step near 0.95 moves recall by
# up to 0.14, more than any difference between the configurations.
FINE_THRESHOLDS = np.unique(np.round(np.r_[THRESHOLDS, np.arange(0.9, 0.9995, 0.0025)], 4))
FA_TARGET = 1.0        # false episodes per hour of the negative stream


FEATURES = R.DETECTOR_FEATURES


def set_window(seconds: float, normalize: str = "none") -> None:
    """Window length and normalisation used by every function below (module globals, per
    configuration); normalize is the recipe's per-window normalisation ("none" or "standard")."""
    global WIN, FEATURES
    WIN = int(round(seconds * SR))
    FEATURES = dict(R.DETECTOR_FEATURES, normalize=normalize)


def set_config(name: str) -> None:
    c = ALL_CONFIGS[name]
    set_window(c["window_s"], c.get("normalize", "none"))


def feat_tag() -> str:
    """Cache-name suffix of the window length and normalisation ("" for the 1 s absolute-dB default)."""
    return ("" if WIN == SR else f"-w{WIN}") + ("" if FEATURES["normalize"] == "none"
                                                  else f"-{FEATURES['normalize']}")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def frame_starts(n: int) -> np.ndarray:
    if n <= WIN:
        return np.array([0])
    return np.arange(0, n - WIN + 1, HOP)


def windows_of(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    if len(y) < WIN:
        y = bf.fit_window(y, WIN)
    st = frame_starts(len(y))
    return np.stack([y[s:s + WIN] for s in st])


def rms_db(w: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.mean(w ** 2, axis=-1) + 1e-12)


def feats(ws: np.ndarray) -> np.ndarray:
    out = []
    pcen = FEATURES["normalize"] == "pcen"
    table = dict(FEATURES, normalize="none") if pcen else FEATURES
    for i in range(0, len(ws), 512):
        x = bf.features_batch(ws[i:i + 512], SR, table)
        out.append(pcen_of_db(x) if pcen else x)
    return np.concatenate(out) if out else np.zeros((0, 40, 63), np.float32)


def pcen_of_db(db: np.ndarray) -> np.ndarray:
    """Experiment ("normalize": "pcen"): per-channel energy normalisation of each window's
    mel magnitudes (librosa.pcen defaults, magnitudes on the int32 scale as librosa advises),
    from the absolute dB log-mel (db_ref 1, no top_db, so the power is 10 ** (dB / 10))."""
    import librosa
    mag = 10.0 ** (db.astype(np.float64) / 20.0) * 2.0 ** 31
    return librosa.pcen(mag, sr=SR, hop_length=FEATURES["hop_length"], axis=-1).astype(np.float32)


def voiced_fraction(ws: np.ndarray, frame: int = 256, hop: int = 128, r_min: float = 0.6
                    ) -> np.ndarray:
    """Per window: the fraction of its 32 ms frames (hop 16 ms) that are voiced in a cry's
    pitch range, i.e. whose normalised autocorrelation peaks at >= r_min for a lag of
    10..32 samples (F0 250..800 Hz at 8 kHz) and that are above -60 dBFS. Uses no label:
    it picks which windows of a cry recording hold phonation (a cry) rather than breaths,
    pauses or the room."""
    lo, hi = SR // 800, SR // 250
    n = (ws.shape[1] - frame) // hop + 1
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    out = np.empty(len(ws))
    for s in range(0, len(ws), 256):
        fr = ws[s:s + 256][:, idx].astype(np.float64)
        fr = fr - fr.mean(-1, keepdims=True)
        ac = np.fft.irfft(np.abs(np.fft.rfft(fr, 2 * frame, axis=-1)) ** 2, axis=-1)[..., :hi + 1]
        e = ac[..., 0] + 1e-12
        r = (ac[..., lo:hi + 1] / e[..., None]).max(-1)
        loud = 10 * np.log10(e / frame) > -60
        out[s:s + 256] = ((r >= r_min) & loud).mean(-1)
    return out


def base_voicing(audio) -> np.ndarray:
    """voiced_fraction of every base window, in build_windows' order (cached)."""
    path = D.CACHE / f"detector-voicing-w{WIN}.npy"
    if path.exists():
        return np.load(path)
    v = np.concatenate([voiced_fraction(windows_of(y)) for y in audio])
    np.save(path, v)
    return v


def assign_folds(items: list[D.Item], seed: int) -> np.ndarray:
    """Donate-a-cry: stratified (cry / not cry) group k-fold on the uploader group;
    negatives: stratified (category) group k-fold on their recording/voice group."""
    fold = np.zeros(len(items), dtype=np.int64)
    dac = [i for i, it in enumerate(items) if it.source == "donateacry"]
    neg = [i for i, it in enumerate(items) if it.source == "negatives"]
    fold[dac] = D.group_folds([items[i].is_cry for i in dac], [items[i].group for i in dac], N_SPLITS, seed)
    fold[neg] = D.group_folds([items[i].label for i in neg], [items[i].group for i in neg], N_SPLITS, seed)
    D.assert_no_group_leak(fold, [it.group for it in items])
    return fold


def build_windows(items, audio, fold, seed: int):
    """Base windows of every item plus one augmented copy of each training-usable window.

    Augmentation backgrounds are drawn from non-cry windows of the SAME fold as the item,
    so no held-out audio ever reaches training. Returns dict of arrays."""
    path = D.CACHE / (f"detector-windows-s{seed}.npz" if not feat_tag()
                      else f"detector-windows{feat_tag()}-s{seed}.npz")
    if path.exists():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    rng = np.random.default_rng(seed)
    base_w, base_item, base_start, base_active = [], [], [], []
    for i, y in enumerate(audio):
        ws = windows_of(y)
        db = rms_db(ws)
        active = db >= db.max() - PAUSE_DB
        base_w.append(ws.astype(np.float32))
        base_item += [i] * len(ws)
        base_start += list(frame_starts(max(len(y), WIN)))
        base_active += list(active)
    base_w = np.concatenate(base_w)
    base_item = np.array(base_item)
    base_start = np.array(base_start)
    base_active = np.array(base_active)
    is_cry_item = np.array([it.is_cry for it in items])
    cry = is_cry_item[base_item]
    wfold = fold[base_item]
    # background pools per fold: non-cry windows
    pools = {f: np.where((~cry) & (wfold == f))[0] for f in range(N_SPLITS)}

    def scale_db(w, gain_db):
        return np.clip(w * 10 ** (gain_db / 20.0), -1.0, 1.0)

    aug_w, aug_src, aug_label = [], [], []
    for j in range(len(base_w)):
        if cry[j] and not base_active[j]:
            continue
        bg = base_w[rng.choice(pools[wfold[j]])].astype(np.float64)
        w = base_w[j].astype(np.float64)
        if cry[j]:
            # cry under speech/music/household/room sounds at 0-20 dB SNR, then a gain
            snr = rng.uniform(0.0, 20.0)
            ps, pb = np.mean(w ** 2) + 1e-12, np.mean(bg ** 2) + 1e-12
            mix = w + bg * np.sqrt(ps / (pb * 10 ** (snr / 10.0)))
            mix = scale_db(mix, rng.uniform(-25.0, 6.0))
        else:
            # another non-cry sound at -10..10 dB relative, then a gain
            rel = rng.uniform(-10.0, 10.0)
            ps, pb = np.mean(w ** 2) + 1e-12, np.mean(bg ** 2) + 1e-12
            mix = w + bg * np.sqrt(ps / pb) * 10 ** (rel / 20.0) * (rng.random() < 0.5)
            mix = scale_db(mix, rng.uniform(-25.0, 10.0))
        aug_w.append(mix.astype(np.float32))
        aug_src.append(j)
        aug_label.append(int(cry[j]))
    log(f"detector: {len(base_w)} base windows, {len(aug_w)} augmented; computing features")
    out = {
        "base_x": feats(base_w), "base_item": base_item, "base_start": base_start,
        "base_active": base_active, "aug_x": feats(np.stack(aug_w)),
        "aug_src": np.array(aug_src), "aug_label": np.array(aug_label),
    }
    np.savez(path, **out)
    return out


CUT_RE = re.compile(r"^(.*)_(\d+)\.flac$")
CUT_CATEGORIES = ("baby_laugh", "room_tone")   # negatives/README: 5 s cuts of ONE recording
STREAM_VERSION = 2   # 2: overlapping cuts of one recording play once (stream_items)


def stream_items(items, audio, idx: list[int]) -> list[int]:
    """`idx` without the cuts that overlap an earlier kept cut of the same recording.
    negatives/ cuts two recordings (baby_laugh, room_tone) into 5 s windows starting every
    second (`..._<start s>.flac`): a continuous stream must play each second of audio once,
    or one laughing moment is five chances of a false episode in 5x the time. Greedy in
    start order, so the kept cuts tile the recording."""
    cuts: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i in idx:
        m = CUT_RE.match(items[i].file) if items[i].label in CUT_CATEGORIES else None
        if m:
            cuts.setdefault((items[i].group, m.group(1)), []).append((int(m.group(2)), i))
    drop = set()
    for cs in cuts.values():
        end = -1.0
        for start, i in sorted(cs):
            if start < end:
                drop.add(i)
            else:
                end = start + len(audio[i]) / SR
    return [i for i in idx if i not in drop]


def stream_for_fold(items, audio, fold, f: int, seed: int, which: str):
    """A continuous stream of held-out non-cry recordings of fold f, concatenated in a seeded
    random order: which = "neg" (negatives/ only) or "rej" (rejected Donate-a-cry files),
    each second of audio once (stream_items). Returns features of every window (1 s every
    0.5 s), the category at each window's centre and the stream length in hours. Cached."""
    path = D.CACHE / f"detector-stream{STREAM_VERSION}-{which}{feat_tag()}-f{f}-s{seed}.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["cats"], float(z["hours"])
    src = "negatives" if which == "neg" else "donateacry"
    idx = [i for i, it in enumerate(items) if fold[i] == f and not it.is_cry and it.source == src]
    idx = stream_items(items, audio, idx)
    rng = np.random.default_rng(1000 + seed * 10 + f)
    idx = list(rng.permutation(idx))
    y = np.concatenate([audio[i].astype(np.float64) for i in idx])
    owner = np.concatenate([np.full(len(audio[i]), i) for i in idx])
    st = frame_starts(len(y))
    cats = np.array([items[owner[min(s + WIN // 2, len(y) - 1)]].label if src == "negatives"
                     else "rejected_donateacry" for s in st])
    x = feats(windows_of(y))
    hours = len(y) / SR / 3600.0
    np.savez(path, x=x, cats=cats, hours=hours)
    return x, cats, hours


NOISY_SNRS = (10.0, 5.0, 0.0)


def noisy_cry_logits(net, items, audio, fold, f: int, seed: int) -> dict:
    """Held-out cry recordings of fold f mixed with held-out non-cry audio of the same fold
    (speech, music, household, rejected files...) at fixed SNRs: logits per recording."""
    rng = np.random.default_rng(5000 + seed * 10 + f)
    bg_idx = [i for i, it in enumerate(items) if fold[i] == f and not it.is_cry and len(audio[i]) >= SR]
    bg = np.concatenate([audio[i].astype(np.float64) for i in rng.permutation(bg_idx)])
    out = {}
    for snr in NOISY_SNRS:
        recs = {}
        for i, it in enumerate(items):
            if fold[i] != f or not it.is_cry:
                continue
            y = audio[i].astype(np.float64)
            s0 = int(rng.integers(0, max(1, len(bg) - len(y))))
            b = bg[s0:s0 + len(y)]
            if len(b) < len(y):
                b = np.resize(b, len(y))
            ps, pb = np.mean(y ** 2) + 1e-12, np.mean(b ** 2) + 1e-12
            mix = np.clip(y + b * np.sqrt(ps / (pb * 10 ** (snr / 10.0))), -1.0, 1.0)
            recs[i] = TU.predict(net, feats(windows_of(mix))[:, None])
        out[snr] = recs
    return out


def rule_fires(pos: np.ndarray, k: int, n: int) -> np.ndarray:
    """Boolean per hop: at least k of the last n windows positive."""
    c = np.cumsum(np.concatenate([[0], pos.astype(np.int64)]))
    idx = np.arange(1, len(pos) + 1)
    lo = np.maximum(0, idx - n)
    return (c[idx] - c[lo]) >= k


def episodes(fire: np.ndarray, quiet: int = QUIET_HOPS) -> np.ndarray:
    """Hop indices where a new episode starts: a confirmation more than `quiet` hops after
    the previous confirmation (the daemon's episode ends after 10 s without crying)."""
    starts = []
    last = -10 ** 9
    for i in np.flatnonzero(fire):
        if i - last > quiet:
            starts.append(int(i))
        last = i
    return np.array(starts, dtype=np.int64)


def recording_detect(p: np.ndarray, t: float, k: int, n: int, win: int | None = None
                     ) -> tuple[bool, float | None]:
    fire = rule_fires(p >= t, k, n)
    if not fire.any():
        return False, None
    first = int(np.argmax(fire))
    return True, (first * HOP + (win or WIN)) / SR   # seconds after recording start when confirmed


def cfg_for(labels, epochs: int, cats: np.ndarray | None = None, neg_power: float = 0.0,
            mixup: float = 0.0, focal: float = 0.0) -> TU.TrainConfig:
    """Class-balanced draws; with neg_power > 0 the non-cry half is spread over categories
    (cats: category per training window) with mass ~ count ** (1 - neg_power)."""
    cnt = np.bincount(labels, minlength=2).astype(np.float64)
    sw = (1.0 / cnt)[labels]
    if neg_power > 0 and cats is not None:
        neg = labels == 0
        names, inv, ccount = np.unique(cats[neg], return_inverse=True, return_counts=True)
        mass = ccount.astype(np.float64) ** (1.0 - neg_power)
        sw[neg] = (mass / mass.sum())[inv] / ccount[inv]
        sw[~neg] = 1.0 / cnt[1]
    return TU.TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, weight_decay=1e-2,
                          sample_weights=sw / sw.sum(), samples_per_epoch=SAMPLES_PER_EPOCH,
                          augment=TU.spec_augment(max_f=4, max_t=8, n_masks=1, max_shift=0,
                                                  noise=0.0), mixup=mixup, focal=focal)


def item_category(it: D.Item) -> str:
    if it.source == "negatives":
        return it.label
    return "cry" if it.is_cry else "rejected_donateacry"


def train_cfg(name: str, labels: np.ndarray, cats: np.ndarray) -> TU.TrainConfig:
    c = ALL_CONFIGS[name]
    return cfg_for(labels, c["epochs"], cats, c.get("neg_power", 0.0), c.get("mixup", 0.0),
                   c.get("focal", 0.0))


def net_for(name: str) -> M.SmallCNN:
    c = ALL_CONFIGS[name]
    return M.detector_net(c.get("channels"), standardised=c.get("normalize", "none") != "none",
                          arch=c.get("arch", "cnn2d"))


def ck_tag(name: str) -> str:
    """Checkpoint suffix: configurations that differ only in window and epochs share the
    plain names; any other training key adds the configuration's name."""
    return f"-{name}" if any(k in ALL_CONFIGS[name] for k in TRAIN_KEYS) else ""


def training_windows(name: str, W, blabel: np.ndarray, items, audio) -> tuple[np.ndarray, np.ndarray]:
    """Which base and augmented windows configuration `name` trains on, in the folds and in
    the final model alike: every non-cry window and the cry windows that are not pauses;
    with "pos_voicing" only the cry windows that hold phonation, with "pos_screen" only the
    cry recordings of that screen, with "train_frac" (learning curve) a nested share of the
    groups and no augmented copies, since their backgrounds may come from groups left out
    (evaluation is unchanged)."""
    base_ok = ~(blabel.astype(bool) & ~W["base_active"])
    aug_ok = np.ones(len(W["aug_label"]), dtype=bool)
    if "pos_screen" in ALL_CONFIGS[name]:
        other = np.array([it.is_cry and it.screen != ALL_CONFIGS[name]["pos_screen"]
                          for it in items])[W["base_item"]]
        base_ok &= ~other
        aug_ok &= ~other[W["aug_src"]]
    if "pos_voicing" in ALL_CONFIGS[name]:
        unvoiced = base_voicing(audio) < ALL_CONFIGS[name]["pos_voicing"]
        base_ok &= ~(blabel.astype(bool) & unvoiced)
        aug_ok &= ~((W["aug_label"] == 1) & unvoiced[W["aug_src"]])
    frac = ALL_CONFIGS[name].get("train_frac")
    if frac is not None:
        base_ok &= learning_subset(items, frac, ALL_CONFIGS[name].get("train_frac_of", "all"))[W["base_item"]]
        aug_ok[:] = False
    return base_ok, aug_ok


def learning_subset(items, frac: float, of: str = "all") -> np.ndarray:
    """Per item: whether its group is among the first `frac` of the groups in one fixed
    random order (so the subsets are nested: 0.25 within 0.5 within 0.75). of = "cry" or
    "not_cry" thins only the items of that kind and keeps every item of the other."""
    thinned = [of == "all" or it.is_cry == (of == "cry") for it in items]
    groups = sorted({it.group for it, t in zip(items, thinned) if t})
    order = np.random.default_rng(777).permutation(len(groups))
    kept = {groups[j] for j in order[:int(round(frac * len(groups)))]}
    return np.array([not t or it.group in kept for it, t in zip(items, thinned)])


def cross_validate(name, items, audio, fold, W, seed) -> dict:
    """Out-of-fold logits of base windows, both streams and the noisy cries (cached)."""
    path = D.CACHE / f"detector-cv-{name}-s{seed}.pkl"
    stale = None
    if path.exists():
        with open(path, "rb") as fh:
            stale = pickle.load(fh)
        if stale.get("stream_version") == STREAM_VERSION:
            return stale
        # Only the streams changed: the fold networks (checkpoints), their out-of-fold
        # windows and noisy cries are kept.
    epochs = ALL_CONFIGS[name]["epochs"]
    is_cry = np.array([it.is_cry for it in items])
    bx, bitem = W["base_x"], W["base_item"]
    blabel = is_cry[bitem].astype(np.int64)
    bfold = fold[bitem]
    ax, alabel, afold = W["aug_x"], W["aug_label"], fold[bitem[W["aug_src"]]]
    train_ok, aug_ok = training_windows(name, W, blabel, items, audio)
    cats_item = np.array([item_category(it) for it in items])
    acats = cats_item[bitem[W["aug_src"]]]
    res = {"oof": np.zeros((len(bx), 2)), "streams": {}, "noisy": {},
           "stream_version": STREAM_VERSION}
    if stale is not None:
        res["oof"], res["noisy"] = stale["oof"], stale["noisy"]
    for f in range(N_SPLITS):
        t0 = time.time()
        trb = (bfold != f) & train_ok
        tra = (afold != f) & aug_ok
        xtr = np.concatenate([bx[trb], ax[tra]])[:, None]
        ytr = np.concatenate([blabel[trb], alabel[tra]])
        ctr = np.concatenate([cats_item[bitem[trb]], acats[tra]])
        tseed = seed * 100 + f + 1000 * ALL_CONFIGS[name].get("train_seed", 0)
        TU.seed_all(tseed)
        net = net_for(name)
        ck = D.CACHE / f"detector-fold{f}-s{seed}-e{epochs}-n{SAMPLES_PER_EPOCH}{feat_tag()}{ck_tag(name)}.pt"
        if ck.exists():
            net.load_state_dict(torch.load(ck))
            net.eval()
        else:
            TU.train(net, xtr, ytr, train_cfg(name, ytr, ctr), seed=tseed)
            torch.save(net.state_dict(), ck)
        if stale is None:
            te = bfold == f
            res["oof"][te] = TU.predict(net, bx[te][:, None])
            res["noisy"][f] = noisy_cry_logits(net, items, audio, fold, f, seed)
        for which in ("neg", "rej"):
            sx, scat, hours = stream_for_fold(items, audio, fold, f, seed, which)
            res["streams"][(f, which)] = {"logits": TU.predict(net, sx[:, None]), "cats": scat,
                                          "hours": hours}
        log(f"detector {name} fold {f}: train {len(ytr)} windows, {time.time() - t0:.0f} s")
    with open(path, "wb") as fh:
        pickle.dump(res, fh)
    return res


class Evaluator:
    """Recording recall, latency and stream false episodes for one CV result."""

    def __init__(self, res, items, fold, W):
        self.items, self.fold = items, fold
        self.win = WIN
        is_cry = np.array([it.is_cry for it in items])
        self.bitem = W["base_item"]
        self.blabel = is_cry[self.bitem].astype(np.int64)
        self.evalw = ~(self.blabel.astype(bool) & ~W["base_active"])
        self.temperature = MT.fit_temperature(res["oof"][self.evalw], self.blabel[self.evalw])
        self.pw = MT.softmax(res["oof"], self.temperature)[:, 1]
        self.sp = {k: MT.softmax(v["logits"], self.temperature)[:, 1] for k, v in res["streams"].items()}
        self.streams = res["streams"]
        self.noisy = res["noisy"]
        self.rec_windows: dict[int, list[int]] = {}
        for j in np.argsort(W["base_start"], kind="stable"):
            self.rec_windows.setdefault(int(self.bitem[j]), []).append(int(j))
        self.cry_items = [i for i in range(len(items)) if is_cry[i]]

    def __call__(self, t, k, n, folds_sel=None) -> dict:
        fs = list(range(N_SPLITS)) if folds_sel is None else list(folds_sel)
        det = det3 = n_rec = 0
        by_screen: dict[str, list[int]] = {}
        lat = []
        for i in self.cry_items:
            if self.fold[i] not in fs:
                continue
            ok, when = recording_detect(self.pw[self.rec_windows[i]], t, k, n, self.win)
            n_rec += 1
            det += ok
            by_screen.setdefault(self.items[i].screen, []).append(int(ok))
            if ok:
                lat.append(when)
                det3 += when <= 3.0
        out = {"threshold": float(t), "k": k, "n": n, "n_recordings": n_rec,
               "recording_recall": det / max(n_rec, 1), "recording_recall_3s": det3 / max(n_rec, 1),
               "median_latency_s": float(np.median(lat)) if lat else None}
        for scr, v in by_screen.items():
            out[f"recording_recall_{scr}"] = float(np.mean(v))
            out[f"n_recordings_{scr}"] = len(v)
        for which in ("neg", "rej"):
            eps, hours, by_cat = 0, 0.0, {}
            for f in fs:
                e = episodes(rule_fires(self.sp[(f, which)] >= t, k, n))
                eps += len(e)
                hours += self.streams[(f, which)]["hours"]
                for c in self.streams[(f, which)]["cats"][e]:
                    by_cat[str(c)] = by_cat.get(str(c), 0) + 1
            out[f"false_episodes_{which}"] = int(eps)
            out[f"hours_{which}"] = hours
            out[f"false_per_hour_{which}"] = eps / hours
            out[f"false_by_category_{which}"] = by_cat
        out["false_per_hour_all"] = ((out["false_episodes_neg"] + out["false_episodes_rej"])
                                     / (out["hours_neg"] + out["hours_rej"]))
        return out

    def noisy_recall(self, t, k, n) -> dict:
        out = {}
        for snr in NOISY_SNRS:
            det = n_rec = 0
            for f in self.noisy:
                for lg in self.noisy[f][snr].values():
                    ok, _ = recording_detect(MT.softmax(lg, self.temperature)[:, 1], t, k, n)
                    det += ok
                    n_rec += 1
            out[f"{snr:g}dB"] = det / max(n_rec, 1)
        return out


def best_threshold(ev: Evaluator, rule, grid=FINE_THRESHOLDS) -> dict | None:
    """The threshold of `grid` with the highest recording recall at <= FA_TARGET false
    episodes per hour of the `neg` stream (None when no threshold gets there)."""
    rows = [ev(t, *rule) for t in grid]
    ok = [r for r in rows if r["false_per_hour_neg"] <= FA_TARGET]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["recording_recall"], r["recording_recall_3s"], r["threshold"]))


def cross_validated(name: str, items, audio, seed: int, fold: np.ndarray | None = None):
    """Configuration `name` cross-validated on the folds of fold seed `seed` (cached under
    training/cache/): its windows, out-of-fold result and Evaluator."""
    fold = assign_folds(items, seed) if fold is None else fold
    set_config(name)
    W = build_windows(items, audio, fold, seed)
    res = cross_validate(name, items, audio, fold, W, seed)
    return W, res, Evaluator(res, items, fold, W)


def per_fold_recall(ev: Evaluator, at: dict | None) -> np.ndarray | None:
    """Recording recall of each fold at the pooled operating point `at` (best_threshold's row)."""
    if at is None:
        return None
    return np.array([ev(at["threshold"], *DEFAULT_RULE, folds_sel=[f])["recording_recall"]
                     for f in range(N_SPLITS)])


def run(root: Path, reports: Path, models_dir: Path, version: str) -> dict:
    TU.set_threads()
    items = D.read_donateacry(root) + D.read_negatives(root)
    audio = D.load_audio(root, items)
    is_cry = np.array([it.is_cry for it in items])
    log(f"detector: {len(items)} recordings ({is_cry.sum()} cries), "
        f"{sum(len(a) for a in audio) / SR / 3600:.2f} h")
    seed = SEEDS[0]
    fold = assign_folds(items, seed)

    # 1. every candidate configuration, compared at the default rule over COMPARE_SEEDS (a
    # single fold seed's winner is often the luck of where one hard negative fell)
    cv, evs, cmp, Ws, recall = {}, {}, {}, {}, {}
    for name in CONFIGS:
        recall[name] = []
        for s in COMPARE_SEEDS:
            W_s, cv_s, ev_s = cross_validated(name, items, audio, s, fold if s == seed else None)
            b = best_threshold(ev_s, DEFAULT_RULE)
            own = per_fold_recall(ev_s, b)
            recall[name].append(np.zeros(N_SPLITS) if own is None else own)
            if s == seed:
                Ws[name], cv[name], evs[name] = W_s, cv_s, ev_s
                cmp[name] = {"window_auc": MT.auc(ev_s.blabel[ev_s.evalw], ev_s.pw[ev_s.evalw]),
                             "best_at_target": b}
            del W_s
        cmp[name]["recall_by_seed"] = [float(r.mean()) for r in recall[name]]
        cmp[name]["recall_over_seeds"] = MT.mean_std(cmp[name]["recall_by_seed"])
        log(f"config {name}: AUC {cmp[name]['window_auc']:.4f}, best at target "
            f"{cmp[name]['best_at_target']}, recall by fold seed {cmp[name]['recall_by_seed']}")
    top = max(CONFIGS, key=lambda n: (cmp[n]["recall_over_seeds"]["mean"], cmp[n]["window_auc"]))
    for name in CONFIGS:
        cmp[name]["vs_top"] = MT.mean_std(np.concatenate(recall[name]) - np.concatenate(recall[top]))
    best = next(n for n in CONFIGS if n == top or
                cmp[n]["vs_top"]["mean"] + cmp[n]["vs_top"]["std"] >= 0)
    ev = evs[best]
    set_config(best)
    W = Ws[best]
    log(f"chosen config {best}")

    # 2. rules and threshold
    best_by_rule = {f"{k}of{n}": best_threshold(ev, (k, n)) for (k, n) in RULES}
    chosen = best_by_rule[f"{DEFAULT_RULE[0]}of{DEFAULT_RULE[1]}"]
    target_met = chosen is not None
    if chosen is None:  # no threshold reaches the target: the one with the fewest false episodes
        rows = [ev(t, *DEFAULT_RULE) for t in FINE_THRESHOLDS]
        chosen = min(rows, key=lambda r: (r["false_per_hour_neg"], -r["recording_recall"]))
    t_star = chosen["threshold"]
    sweep = [ev(t, k, n) for (k, n) in RULES for t in THRESHOLDS]
    per_fold = []
    for f in range(N_SPLITS):
        te = (fold[ev.bitem] == f) & ev.evalw
        r = ev(t_star, *DEFAULT_RULE, folds_sel=[f])
        r["window_auc"] = MT.auc(ev.blabel[te], ev.pw[te])
        r["window_recall"] = float((ev.pw[te & (ev.blabel == 1)] >= t_star).mean())
        r["window_fpr"] = float((ev.pw[te & (ev.blabel == 0)] >= t_star).mean())
        per_fold.append(r)
    noisy_recall = ev.noisy_recall(t_star, *DEFAULT_RULE)
    log(f"threshold {t_star}: {chosen}; noisy recall {noisy_recall}")

    def cat_of(it):
        if it.source == "negatives":
            return it.label
        return ("cry_" + it.screen) if it.is_cry else "rejected_donateacry"

    cats = np.array([cat_of(it) for it in items])[ev.bitem]
    cat_w = {}
    for c in sorted(set(cats)):
        m = (cats == c) & ev.evalw
        cry_like = c.startswith("cry_")
        auc_c = None if cry_like else MT.auc(
            np.r_[np.ones(int((ev.evalw & (ev.blabel == 1)).sum())), np.zeros(int(m.sum()))],
            np.r_[ev.pw[ev.evalw & (ev.blabel == 1)], ev.pw[m]])
        cat_w[c] = {"windows": int(m.sum()), "positive_rate": float((ev.pw[m] >= t_star).mean()),
                    "auc_vs_cry": auc_c}
    y_e = ev.blabel[ev.evalw].astype(np.float64)
    ece_w, bins = MT.binary_ece(ev.pw[ev.evalw], y_e)
    ece_raw, bins_raw = MT.binary_ece(MT.softmax(cv[best]["oof"])[ev.evalw][:, 1], y_e)

    # 3. final model on all data with the chosen configuration
    bx, bitem = W["base_x"], W["base_item"]
    blabel = is_cry[bitem].astype(np.int64)
    train_ok, aug_ok = training_windows(best, W, blabel, items, audio)
    xtr = np.concatenate([bx[train_ok], W["aug_x"][aug_ok]])[:, None]
    ytr = np.concatenate([blabel[train_ok], W["aug_label"][aug_ok]])
    icat = np.array([item_category(it) for it in items])
    ctr = np.concatenate([icat[bitem[train_ok]], icat[bitem[W["aug_src"][aug_ok]]]])
    TU.seed_all(seed)
    net = net_for(best)
    TU.train(net, xtr, ytr, train_cfg(best, ytr, ctr), seed=seed)
    sc = R.sidecar(name="cry-detector", version=version, kind="detector", labels=R.DETECTOR_LABELS,
                   temperature=round(ev.temperature, 4), threshold=t_star, positive_label="cry",
                   features=FEATURES, window_s=WIN / SR)
    onnx_path = models_dir / "cry-detector.onnx"
    M.export_onnx(net, sc["input"]["shape"], onnx_path)
    header = (f"Cry detector: {WIN / SR:g} s windows, run every 0.5 s; crying confirmed when {DEFAULT_RULE[0]} of the last\n"
              f"{DEFAULT_RULE[1]} windows have P(cry) >= threshold. Trained by: bash training/train.sh detector\n"
              "See models/README.md for data, group-CV numbers and known limits.")
    (models_dir / "cry-detector.toml").write_text(bf.dump_toml(sc, header))

    reports.mkdir(parents=True, exist_ok=True)
    MT.plot_reliability({"after temperature scaling": bins, "uncalibrated": bins_raw},
                        reports / "detector-reliability.png",
                        "cry detector: P(cry) reliability, OOF windows", xlabel="P(cry)")
    pred = (ev.pw[ev.evalw] >= t_star).astype(int)
    cm = MT.confusion(ev.blabel[ev.evalw], pred, 2)
    MT.plot_confusion(cm, R.DETECTOR_LABELS, reports / "detector-confusion.png",
                      f"cry detector windows, OOF, threshold {t_star}")
    macs = M.count_macs(net, sc["input"]["shape"])
    return {
        "n_items": len(items), "n_cry_recordings": int(is_cry.sum()),
        "n_groups": len({it.group for it in items}),
        "n_base_windows": int(len(bx)), "n_aug_windows": int(len(W["aug_x"])),
        "seeds": list(SEEDS), "compare_seeds": list(COMPARE_SEEDS), "n_splits": N_SPLITS, "configs": CONFIGS, "config_comparison": cmp,
        "chosen_config": best, "top_config": top, "epochs": CONFIGS[best]["epochs"],
        "samples_per_epoch": SAMPLES_PER_EPOCH, "temperature": ev.temperature,
        "threshold": t_star, "rule": list(DEFAULT_RULE), "target_met": target_met,
        "fa_target": FA_TARGET, "quiet_hops": QUIET_HOPS, "chosen": chosen,
        "best_by_rule": best_by_rule, "per_fold": per_fold,
        "noisy_recording_recall": noisy_recall,
        "summary": {
            "window_auc": MT.mean_std(r["window_auc"] for r in per_fold),
            "window_recall": MT.mean_std(r["window_recall"] for r in per_fold),
            "window_fpr": MT.mean_std(r["window_fpr"] for r in per_fold),
            "recording_recall": MT.mean_std(r["recording_recall"] for r in per_fold),
            "recording_recall_3s": MT.mean_std(r["recording_recall_3s"] for r in per_fold),
            "false_per_hour_neg": MT.mean_std(r["false_per_hour_neg"] for r in per_fold),
            "false_per_hour_rej": MT.mean_std(r["false_per_hour_rej"] for r in per_fold),
        },
        "pooled_window_auc": MT.auc(ev.blabel[ev.evalw], ev.pw[ev.evalw]),
        "window_confusion": cm, "windows_by_category": cat_w,
        "ece_calibrated": ece_w, "ece_uncalibrated": ece_raw, "reliability": bins,
        "sweep": sweep,
        "params": M.count_params(net), "architecture": M.describe(net), "macs_per_window": macs,
        "macs_per_7s": macs * 14, "window_s": WIN / SR, "onnx_bytes": onnx_path.stat().st_size,
        "onnx_ops": M.onnx_ops(onnx_path), "input_shape": sc["input"]["shape"],
    }
