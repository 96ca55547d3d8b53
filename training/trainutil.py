"""Deterministic small-CNN training loop on precomputed feature tensors."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def threads() -> int:
    """CPU threads for training and inference (BABYCRY_THREADS, default 2)."""
    return int(os.environ.get("BABYCRY_THREADS", "2"))


def set_threads() -> None:
    torch.set_num_threads(threads())


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    sample_weights: np.ndarray | None = None   # per-item sampling weights (None = uniform)
    samples_per_epoch: int | None = None       # with sample_weights: draws per epoch
    mixup: float = 0.0                         # Beta(alpha, alpha) mixup of input pairs (0 = off)
    focal: float = 0.0                         # focal-loss gamma: (1 - p_true) ** gamma weights (0 = off)
    extra: dict = field(default_factory=dict)


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int,
          log: Callable[[str], None] | None = None) -> nn.Module:
    """x: [N, 1, H, W] float32, y: [N] int64. AdamW + one-cycle, fixed seed."""
    seed_all(seed)
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.int64))
    n = len(y)
    steps_per_epoch = max(1, (cfg.samples_per_epoch or n) // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.2)
    w = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
    ce = nn.CrossEntropyLoss(weight=w, label_smoothing=cfg.label_smoothing,
                             reduction="none" if cfg.focal > 0 else "mean")

    def lossf(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if cfg.focal <= 0:
            return ce(out, target)
        # Focal loss: down-weights windows the network already gets right, so the hard
        # ones (the most cry-like non-cry sounds, the faintest cries) carry the gradient.
        p_true = torch.softmax(out, 1).gather(1, target[:, None])[:, 0].detach()
        return ((1.0 - p_true) ** cfg.focal * ce(out, target)).mean()
    sw = None if cfg.sample_weights is None else torch.tensor(cfg.sample_weights, dtype=torch.double)
    net.train()
    for ep in range(cfg.epochs):
        if sw is None:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.multinomial(sw, steps_per_epoch * cfg.batch_size, replacement=True, generator=g)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb = xt[idx]
            if cfg.augment is not None:
                xb = cfg.augment(xb, g)
            if cfg.mixup > 0:
                lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
                perm = torch.randperm(len(idx), generator=g)
                out = net(lam * xb + (1.0 - lam) * xb[perm])
                loss = lam * lossf(out, yt[idx]) + (1.0 - lam) * lossf(out, yt[idx][perm])
            else:
                loss = lossf(net(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if log:
            log(f"  epoch {ep + 1}/{cfg.epochs} loss {total / steps_per_epoch:.4f}")
    net.eval()
    return net


@torch.no_grad()
def predict(net: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(net(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out).astype(np.float64)


def spec_augment(max_f: int, max_t: int, n_masks: int, max_shift: int, noise: float):
    """Frequency/time masks (filled with the batch item's mean), circular time shift and
    Gaussian noise, on [B, 1, F, T]."""

    def aug(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = xb.clone()
        b, _, f, t = xb.shape
        for i in range(b):
            fill = xb[i].mean()
            if max_shift > 0:
                sh = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=g))
                xb[i] = torch.roll(xb[i], sh, dims=2)
            for _ in range(n_masks):
                if max_f > 0:
                    w = int(torch.randint(0, max_f + 1, (1,), generator=g))
                    f0 = int(torch.randint(0, max(1, f - w), (1,), generator=g))
                    xb[i, :, f0:f0 + w, :] = fill
                if max_t > 0:
                    w = int(torch.randint(0, max_t + 1, (1,), generator=g))
                    t0 = int(torch.randint(0, max(1, t - w), (1,), generator=g))
                    xb[i, :, :, t0:t0 + w] = fill
        if noise > 0:
            xb = xb + noise * torch.randn(xb.shape, generator=g)
        return xb

    return aug
