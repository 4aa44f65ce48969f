"""The whole-pack training `cephnode train` runs: Stage 0, then Stage 1, export, manifest.

Used by `cephnode train`; resumable (phase weights and Stage 1 checkpoints live in the
checkpoint folder, never in the repository).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cephnode.training import cache, isbi, labels, stage0, stage1


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


def torch_device(device: str, threads: int | None) -> str:
    """The torch device for `device` ("auto" takes CUDA when torch sees one), threads set."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def json_lines_logger(path: Path):
    """Append JSON lines to path (the progress bar owns the terminal)."""
    fh = open(path, "a")

    def log(line: str) -> None:
        fh.write(line + "\n")
        fh.flush()

    return log


def hold_out_validation(ds: cache.CanonicalSet, use: np.ndarray, val_images: int, say=print):
    """Take the last `val_images` train images (by number; isbi.load_cases("val") names the same
    ones) out of `use`, in place, and return them as Stage 1's validation set (images,
    landmarks, mm per 512-grid pixel), or None when val_images is 0."""
    if not val_images:
        return None
    tr = ds.split == "train"
    held = np.flatnonzero(tr)[np.argsort(ds.ids[tr])][-val_images:]
    use[held] = False
    w, h = ds.src_size
    row, col = isbi.pixel_spacing_mm()
    say(f"validation: {len(held)} held-out train images ({', '.join(sorted(ds.ids[held])[:3])} ...)")
    return ds.images[held], ds.landmarks[held], (w * col / 512.0, h * row / 512.0)


def train_pack(out: Path, ckpt: Path, s0cfg: stage0.Stage0Config, s1cfg: stage1.Stage1Config, *, device: str,
               reschedule: bool = False, accuracy_json: Path | None = None, bar_factory=None, say=print,
               val_images: int = 0) -> Path:
    """Train (resuming from `ckpt`) and export the whole pack into `out`; returns pack.json.
    val_images: hold the last N train images (by number) out of Stage 1 and score them after
    every epoch, to choose recipes on (test1 is never used for that)."""
    from cephnode.training import export
    from cephnode.training.manifest import write_pack_manifest

    ckpt.mkdir(parents=True, exist_ok=True)
    ds = cache.load()
    say(f"training on {int((ds.split == 'train').sum())} train images, device {device}, checkpoints {ckpt}, "
        f"logs {ckpt.parent}/stage0.log, stage1_{s1cfg.arm}.log")
    nets = stage0_all(ds, ckpt, s0cfg, log=json_lines_logger(ckpt.parent / "stage0.log"), bar_factory=bar_factory)
    tr = ds.split == "train"
    val = hold_out_validation(ds, tr, val_images, say)
    stage1.train(ds.images[tr], ds.landmarks[tr], s1cfg, ckpt, log=json_lines_logger(ckpt.parent / f"stage1_{s1cfg.arm}.log"),
                 device=device, progress=True, reschedule=reschedule, val=val)
    nets["stage1"] = stage1.load_trained(ckpt / f"stage1_{s1cfg.arm}.pt")
    export.export_pack(nets, out)
    return write_pack_manifest(out, s0cfg, s1cfg, accuracy_json=accuracy_json, log_dir=ckpt.parent)


def finetune_pack(base: Path, out: Path, ckpt: Path, s1cfg: stage1.Stage1Config, *, device: str,
                  splits: tuple[str, ...] = ("train",), val_images: int = 0, reschedule: bool = False,
                  say=print) -> Path:
    """Continue the Stage 1 of the pack in `base` (s1cfg.init_from = its ONNX file) on the
    images of `splits`, holding the last `val_images` train images (by number) out and scoring
    them after every epoch; Stage 0 is copied from `base` unchanged. Writes the pack to `out`
    and returns its Stage 1 ONNX path; the manifest is written by the caller (it knows which
    protocol the pack follows)."""
    import shutil

    from cephnode.inference import contract
    from cephnode.training import export

    ckpt.mkdir(parents=True, exist_ok=True)
    ds = cache.load()
    use = np.isin(ds.split, splits)
    val = hold_out_validation(ds, use, val_images, say)
    say(f"fine-tuning Stage 1 of {base} on {int(use.sum())} images ({'+'.join(splits)}), device {device}, "
        f"checkpoints {ckpt}, log {ckpt.parent}/stage1_{s1cfg.arm}.log")
    stage1.train(ds.images[use], ds.landmarks[use], s1cfg, ckpt, log=json_lines_logger(ckpt.parent / f"stage1_{s1cfg.arm}.log"),
                 device=device, progress=True, reschedule=reschedule, val=val)
    out.mkdir(parents=True, exist_ok=True)
    for spec in contract.MODELS:
        if spec is not contract.STAGE1 and (Path(base) / spec.path).resolve() != (out / spec.path).resolve():
            (out / spec.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(base) / spec.path, out / spec.path)
    return export.export_model(stage1.load_trained(ckpt / f"stage1_{s1cfg.arm}.pt"), contract.STAGE1, out,
                               dynamic_batch=True)
