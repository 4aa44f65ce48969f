"""Stage 0 training: profile net (0A), four zone contour nets (0C), anchor MLP (0E).

Each phase is short on a CPU and saves its finished weights to the checkpoint folder; a phase
whose weights are there is not trained again (resume granularity = one phase).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cephnode.inference.landmarks import ANCHOR_ORDER, DERIVED_ORDER, ISBI_19
from cephnode.training import augment, zones
from cephnode.training.nets import AnchorMLP, profile_net, zone_net

IX = {n: i for i, n in enumerate(ISBI_19)}


@dataclass
class Stage0Config:
    # 30, not 12: with the skin-search labels, trained on train 001-120 and scored on 121-150
    # (bench/profile_quality.py), 12 epochs left the nose out on 40 % of those images, 30 on 20 %
    profile_epochs: int = 30
    zone_epochs: int = 10
    mlp_steps: int = 4000
    batch: int = 8
    lr: float = 3e-3
    seed: int = 2015


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    denom = p.sum((2, 3)) + target.sum((2, 3))
    # classes that are empty by design (incisor axes) contribute only through BCE
    has = target.sum((2, 3)) > 0
    dice = 1 - (2 * inter + 1) / (denom + 1)
    dice = (dice * has).sum() / has.sum().clamp(min=1)
    return bce + dice


def _loop(net, make_batch, n: int, epochs: int, cfg: Stage0Config, name: str, log, bar_factory=None):
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = math.ceil(n / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps, pct_start=0.1)
    bar = bar_factory(epochs * steps, name) if bar_factory else None
    for ep in range(epochs):
        rng = np.random.default_rng([cfg.seed, ep, hash(name) % 1000])
        order = rng.permutation(n)
        losses = []
        net.train()
        for b in range(steps):
            x, y = make_batch(rng, order[b * cfg.batch:(b + 1) * cfg.batch])
            loss = _bce_dice(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar:
                bar.update(1)
        log(json.dumps({"event": "epoch", "phase": name, "epoch": ep + 1, "loss": float(np.mean(losses))}))
    if bar:
        bar.close()
    return net.eval()


def train_profile(images: np.ndarray, masks: np.ndarray, cfg: Stage0Config, log=print, bar_factory=None):
    net = profile_net()
    net.sigmoid = False
    geo = augment.GeometryParams(flip_prob=0.5)  # the pipeline may meet either orientation

    def batch(rng, ids):
        xs, ys = [], []
        for i in ids:
            m, _ = augment.random_affine(rng, 512, geo)
            xs.append(augment.intensity(rng, augment.warp_image(images[i], m)))
            ys.append(augment.warp_image(masks[i], m, nearest=True).astype(np.float32))
        return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]

    net = _loop(net, batch, len(images), cfg.profile_epochs, cfg, "profile", log, bar_factory)
    net.sigmoid = True
    return net


def jitter_box(rng, box, amount: int = 15):
    x1, y1, x2, y2 = box
    d = rng.integers(-amount, amount + 1, 4)
    return zones._clamp_box(x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3])


def train_zone(zone: str, images: np.ndarray, landmarks: np.ndarray, masks: np.ndarray, cfg: Stage0Config,
               log=print, bar_factory=None):
    n_cls = len(zones.ZONE_CLASSES[zone])
    net = zone_net(n_cls)
    geo = augment.GeometryParams(max_rotation_deg=6.0)
    boxes = [zones.zone_boxes(m)[zone] for m in masks]

    def batch(rng, ids):
        xs, ys = [], []
        for i in ids:
            m, _ = augment.random_affine(rng, 512, geo)
            img = augment.warp_image(images[i], m)
            lm = augment.warp_points(landmarks[i], m)
            box = jitter_box(rng, boxes[i])
            grey = (augment.intensity(rng, img) * 255).astype(np.uint8)
            xs.append(zones.crop_zone(grey, box, zone).astype(np.float32) / 255.0)
            ys.append(zones.contour_label(lm, box, zone).astype(np.float32))
        return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))

    return _loop(net, batch, len(images), cfg.zone_epochs, cfg, zone, log, bar_factory)


def anchors_from(lm19_512: np.ndarray, prn512: np.ndarray) -> np.ndarray:
    """(7,2) anchors in the 512 frame, ANCHOR_ORDER."""
    return np.stack([prn512 if n == "Prn" else lm19_512[IX[n]] for n in ANCHOR_ORDER])


DERIVED_LABELLED = np.array([n in IX for n in DERIVED_ORDER])
DERIVED_IDX = np.array([IX.get(n, 0) for n in DERIVED_ORDER])


def normalise(points512: np.ndarray) -> np.ndarray:
    return (np.asarray(points512, dtype=np.float64) + 0.5) / 512.0


def train_mlp(landmarks: np.ndarray, prn: np.ndarray, cfg: Stage0Config, log=print, bar_factory=None):
    """Anchors (with Stage-0-like noise and random misses) -> derived points; loss on labelled targets only."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = AnchorMLP()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.mlp_steps)
    mask = torch.from_numpy(np.repeat(DERIVED_LABELLED, 2)).float()
    bar = bar_factory(cfg.mlp_steps, "phase0e") if bar_factory else None
    n = len(landmarks)
    for step in range(cfg.mlp_steps):
        ids = rng.integers(0, n, 32)
        xs, ys = [], []
        for i in ids:
            m, _ = augment.random_affine(rng, 512, augment.GeometryParams(max_rotation_deg=10, max_shift_frac=0.08))
            lm = augment.warp_points(landmarks[i], m)
            pr = augment.warp_points(prn[i][None], m)[0]
            a = anchors_from(lm, pr) + rng.normal(0, 4.0, (7, 2))
            a = normalise(a)
            miss = rng.random(7) < 0.1
            a[miss] = 0.5  # the contract's encoding of a missing anchor
            xs.append(a.ravel())
            ys.append(normalise(lm[DERIVED_IDX]).ravel())
        x = torch.tensor(np.array(xs), dtype=torch.float32)
        y = torch.tensor(np.array(ys), dtype=torch.float32)
        loss = (((net(x) - y) ** 2) * mask).sum() / (mask.sum() * len(ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if bar:
            bar.update(1)
        if (step + 1) % 500 == 0:
            rmse_px = math.sqrt(float(loss.detach())) * 512
            log(json.dumps({"event": "step", "phase": "phase0e", "step": step + 1, "rmse_px512": round(rmse_px, 2)}))
    if bar:
        bar.close()
    return net.eval()
