"""Stage 0 of the whole-pack training (`cephnode train` runs it, then Stage 1, export, manifest).

Used by `cephnode train`; resumable (phase weights and Stage 1 checkpoints live in the
checkpoint folder, never in the repository).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cephnode.training import cache, labels, stage0, stage1


def stage0_all(ds: cache.CanonicalSet, ckpt_dir: Path, cfg: stage0.Stage0Config, *, log=print,
               bar_factory=None) -> dict[str, torch.nn.Module]:
    """Train (or load finished) profile, z1..z4 and phase0e; returns the nets."""
    from cephnode.training.nets import AnchorMLP, profile_net, zone_net
    from cephnode.training.zones import ZONE_CLASSES

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tr = ds.split == "train"
    images, lms, masks = ds.images[tr], ds.landmarks[tr], ds.profile[tr]
    nets: dict[str, torch.nn.Module] = {}

    def done(name):
        return ckpt_dir / f"stage0_{name}.pt"

    if done("profile").exists():
        nets["profile"] = profile_net()
        nets["profile"].load_state_dict(torch.load(done("profile")))
    else:
        t = time.time()
        nets["profile"] = stage0.train_profile(images, masks, cfg, log=log, bar_factory=bar_factory)
        torch.save(nets["profile"].state_dict(), done("profile"))
        log(json.dumps({"event": "phase_done", "phase": "profile", "s": round(time.time() - t, 1)}))
    for z, classes in ZONE_CLASSES.items():
        if done(z).exists():
            nets[z] = zone_net(len(classes))
            nets[z].load_state_dict(torch.load(done(z)))
        else:
            t = time.time()
            nets[z] = stage0.train_zone(z, images, lms, masks, cfg, log=log, bar_factory=bar_factory)
            torch.save(nets[z].state_dict(), done(z))
            log(json.dumps({"event": "phase_done", "phase": z, "s": round(time.time() - t, 1)}))
    if done("phase0e").exists():
        nets["phase0e"] = AnchorMLP()
        nets["phase0e"].load_state_dict(torch.load(done("phase0e")))
    else:
        t = time.time()
        prn = np.stack([_prn_or_fallback(m, lm) for m, lm in zip(masks, lms)])
        nets["phase0e"] = stage0.train_mlp(lms, prn, cfg, log=log, bar_factory=bar_factory)
        torch.save(nets["phase0e"].state_dict(), done("phase0e"))
        log(json.dumps({"event": "phase_done", "phase": "phase0e", "s": round(time.time() - t, 1)}))
    for n in nets.values():
        n.eval()
    return nets


def _prn_or_fallback(mask: np.ndarray, lm19: np.ndarray) -> np.ndarray:
    p = labels.profile_prn(mask)
    if p is None:  # no profile: the MLP sees a missing anchor (0.5, 0.5) anyway half the time
        return np.array([255.5, 255.5])
    return p
