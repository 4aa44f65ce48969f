"""The landmark refiner (inference.refine): its data, resumable training loop and ONNX export.

Training never needs Stage 1: each sample is a patch centred on the true landmark moved by a
random error shaped like Stage 1's (mostly within a millimetre or two, sometimes up to four),
so the refiner learns to find the landmark wherever Stage 1 left it inside its patch. The
patches go through the same inference.refine functions the pipeline uses (grid image, patch
matrix, standardisation), with a random scale and turn of the patch and intensity changes
(gamma, blur or edge enhancement, noise) on top, for films from other devices.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cephnode.domain.landmarks import ISBI_19
from cephnode.inference import refine as R
from cephnode.inference.decode import decode_heatmaps
from cephnode.inference.geometry import rescale
from cephnode.inference.imageio import normalise_input
from cephnode.training import heatmaps, isbi
from cephnode.training.cache import cache_dir
from cephnode.training.nets import UNet

TARGET_SIGMA = 1.5          # heatmap pixels (3 grid pixels: about 0.6 mm on ISBI)
ONNX_PATH = "refine/refiner.onnx"


def refiner_net(n_landmarks: int = len(ISBI_19)) -> UNet:
    """(B,1,64,64) standardised patches -> (B,K,32,32) sigmoid heatmaps, ~50 M multiply-adds each."""
    return UNet(1, n_landmarks, (24, 32, 48, 64), stem_stride=2, out_size=R.OUT, sigmoid=True)


# ---- data ------------------------------------------------------------------------------------

def grid_cache() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(case ids, (N,1024,1024) uint8 canonical grid images, (N,19,2) mean-annotator landmarks on
    the grid) for all 300 ISBI images, decoded once into the cache folder."""
    path = cache_dir() / f"isbi-grid{R.GRID}.npz"
    if path.exists():
        z = np.load(path)
        return [str(c) for c in z["ids"]], z["images"], z["points"]
    cases = isbi.load_cases()
    ids, imgs, pts = [], [], []
    for c in cases:
        img = cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE)
        h, w = img.shape
        grid = R.grid_image(normalise_input(img), (0, True))        # ISBI faces right: mirror
        imgs.append(np.round(grid * 255).astype(np.uint8))
        p = c.mean.copy()
        p[:, 0] = (w - 1) - p[:, 0]
        pts.append(np.stack([rescale(p[:, 0], w, R.GRID), rescale(p[:, 1], h, R.GRID)], 1))
        ids.append(c.case_id)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array(ids), images=np.stack(imgs), points=np.stack(pts))
    tmp.replace(path)
    return ids, np.stack(imgs), np.stack(pts)


def _intensity(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """Grid patch in [0, 1] -> the same anatomy as another detector might render it."""
    p = np.clip(p, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    r = rng.random()
    if r < 0.3:
        p = cv2.GaussianBlur(p, (0, 0), rng.uniform(0.4, 1.3))
    elif r < 0.5:
        blur = cv2.GaussianBlur(p, (0, 0), rng.uniform(0.8, 2.0))
        p = p + rng.uniform(0.3, 1.5) * (p - blur)
    if rng.random() < 0.5:
        p = p + rng.normal(0.0, rng.uniform(0.005, 0.04), p.shape).astype(np.float32)
    return p.astype(np.float32)


def stage1_like_error(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) grid-pixel offsets: most within ~1.2 mm (6 px), a fifth spread up to ~4 mm."""
    off = rng.normal(0.0, 6.0, (n, 2))
    wide = rng.random(n) < 0.2
    off[wide] = rng.uniform(-22.0, 22.0, (int(wide.sum()), 2))
    return off


def make_sample(rng: np.random.Generator, grid: np.ndarray, point: np.ndarray, train: bool = True,
                offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> standardised patch (64,64), the landmark's position on the heatmap (2,)."""
    if offset is None:
        offset = stage1_like_error(rng, 1)[0]
    scale = rng.uniform(0.85, 1.15) if train else 1.0
    angle = rng.uniform(-10.0, 10.0) if train else 0.0
    m = R.patch_matrix(point + offset, scale, angle)
    raw = R.warp_patch(grid, m)
    if train:
        raw = _intensity(rng, raw)
    inv = cv2.invertAffineTransform(m)
    in_patch = inv[:, :2] @ point + inv[:, 2]
    return R.standardise(raw), rescale(in_patch, R.PATCH, R.OUT)


# ---- training --------------------------------------------------------------------------------

@dataclass
class RefinerConfig:
    epochs: int = 30
    batch: int = 32
    per_landmark: int = 2          # patches per image and landmark in each epoch
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 2015
    checkpoint_every_s: float = 120.0


def _loss(pred: torch.Tensor, channel: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE between the patch's own channel and its Gaussian, positives weighted up."""
    own = pred[torch.arange(len(channel)), channel]
    w = 1.0 + 10.0 * target
    return (F.binary_cross_entropy(own.clamp(1e-6, 1 - 1e-6), target, reduction="none") * w).mean()


def validation_error(net, grids: np.ndarray, points: np.ndarray, mm_per_grid_px: tuple[float, float],
                     seed: int = 7) -> dict:
    """Mean radial error (mm) after refining patches placed with a fixed Stage 1-like error."""
    rng = np.random.default_rng(seed)
    n, k = points.shape[:2]
    offs = stage1_like_error(rng, n * k).reshape(n, k, 2)
    errs, before = [], []
    net.eval()
    with torch.no_grad():
        for i in range(n):
            xs, tg = zip(*(make_sample(rng, grids[i], points[i, j], False, offs[i, j]) for j in range(k)))
            heat = net(torch.from_numpy(np.stack(xs)[:, None])).numpy()
            own = heat[np.arange(k), np.arange(k)]
            xy, _ = decode_heatmaps(own)
            d = (xy - np.stack(tg)) * (R.PATCH / R.OUT) * np.asarray(mm_per_grid_px)
            errs.append(np.hypot(d[:, 0], d[:, 1]))
            b = offs[i] * np.asarray(mm_per_grid_px)
            before.append(np.hypot(b[:, 0], b[:, 1]))
    net.train()
    e = np.concatenate(errs)
    return {"val_mre": round(float(e.mean()), 4), "val_sdr2": round(float((e <= 2).mean()), 4),
            "val_mre_placed": round(float(np.concatenate(before).mean()), 4)}


def train(grids: np.ndarray, points: np.ndarray, cfg: RefinerConfig, ckpt: Path, *, log=print,
          val: tuple[np.ndarray, np.ndarray, tuple[float, float]] | None = None) -> torch.nn.Module:
    """Resumable from `ckpt` (a .pt file). grids (N,1024,1024) uint8, points (N,19,2) grid px."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = refiner_net(points.shape[1])
    net.sigmoid = True
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, k = points.shape[:2]
    per_epoch = n * k * cfg.per_landmark
    steps = math.ceil(per_epoch / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.1)
    epoch = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt}: checkpoint was made with another config; remove it to restart")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        epoch = state["epoch"]
        log(json.dumps({"event": "resume", "epoch": epoch}))
    grids_f = [g.astype(np.float32) / 255.0 for g in grids]
    t0, last = time.time(), time.time()
    while epoch < cfg.epochs:
        rng = np.random.default_rng([cfg.seed, epoch])
        pairs = np.array([(i, j) for i in range(n) for j in range(k)] * cfg.per_landmark)
        pairs = pairs[rng.permutation(len(pairs))]
        losses = []
        net.train()
        for s in range(steps):
            chunk = pairs[s * cfg.batch:(s + 1) * cfg.batch]
            xs, tgs = zip(*(make_sample(rng, grids_f[i], points[i, j]) for i, j in chunk))
            target = heatmaps.gaussians(np.stack(tgs), np.full(len(chunk), TARGET_SIGMA),
                                        np.ones(len(chunk), bool), size=R.OUT)
            pred = net(torch.from_numpy(np.stack(xs)[:, None]))
            loss = _loss(pred, torch.from_numpy(chunk[:, 1]), torch.from_numpy(target))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        epoch += 1
        scores = validation_error(net, val[0], val[1], val[2]) if val else {}
        log(json.dumps({"event": "epoch", "epoch": epoch, "loss": round(float(np.mean(losses)), 5),
                        "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 1), **scores}))
        if time.time() - last > cfg.checkpoint_every_s or epoch == cfg.epochs:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch, "config": asdict(cfg)}, tmp)
            tmp.replace(ckpt)
            last = time.time()
    return net.eval()


def export(net: torch.nn.Module, root: Path) -> Path:
    """ONNX with a dynamic batch axis (the pipeline sends all of an image's patches at once)."""
    import warnings

    out = Path(root) / ONNX_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval().cpu()
    dummy = torch.zeros((1, 1, R.PATCH, R.PATCH), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(out), input_names=["input"], output_names=["output"],
                          opset_version=14, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    return out


# ---- into a pack -------------------------------------------------------------------------------

def train_into_pack(pack: Path, ckpt: Path, cfg: RefinerConfig, *, splits: tuple[str, ...], val_images: int,
                    settings: dict, threads: int | None = None, say=print) -> Path:
    """Train on the ISBI images of `splits` (less the last `val_images` train images, scored
    each epoch), export into `pack` and record the refiner in its pack.json."""
    if threads:
        torch.set_num_threads(int(threads))
    ids, grids, points = grid_cache()
    cases = {c.case_id: c for c in isbi.load_cases()}
    split = np.array([cases[i].split for i in ids])
    # the last `val_images` train images by number, as `cephnode train --val` holds out
    train_ids = sorted(c.case_id for c in isbi.load_cases("train"))
    held = np.isin(ids, train_ids[len(train_ids) - val_images:] if val_images else [])
    use = np.isin(split, splits) & ~held
    row, col = isbi.pixel_spacing_mm()
    w, h = isbi.image_size()
    val = (grids[held].astype(np.float32) / 255.0, points[held], (col * w / R.GRID, row * h / R.GRID)) if held.any() else None
    say(f"training the refiner on {int(use.sum())} images ({'+'.join(splits)}), {int(held.sum())} held out; "
        f"checkpoint {ckpt}, log {ckpt.with_suffix('.log')}")
    with open(ckpt.with_suffix(".log"), "a") as fh:
        def log(line: str) -> None:
            fh.write(line + "\n")
            fh.flush()
            say(line)
        t0 = time.time()
        net = train(grids[use], points[use], cfg, ckpt, log=log, val=val)
    path = export(net, pack)
    provenance = {
        "trained_on": list(splits), "validation_held_out": bool(val_images),
        "images": int(use.sum()), "config": asdict(cfg), "target_sigma_heat_px": TARGET_SIGMA,
        "grid": R.GRID, "patch": R.PATCH, "labels": "mean of senior and junior annotators",
        "trainer": "cephnode train-refiner (training/refine.py), torch CPU",
        "cpu_wall_seconds_last_session": round(time.time() - t0, 1),
    }
    write_settings(pack, settings, provenance=provenance)
    return path


def write_settings(pack: Path, settings: dict, *, provenance: dict | None = None) -> Path:
    """Record the refiner in pack.json: its file (sha256, bytes), the settings the pipeline
    reads and, after training, its provenance. Checked as the pipeline will read it."""
    from cephnode.inference import contract
    from cephnode.inference.pack import MANIFEST, refinement, sha256_file

    path = Path(pack) / MANIFEST
    data = json.loads(path.read_text())
    f = Path(pack) / contract.REFINER.path
    data["files"][contract.REFINER.path] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    data["refinement"] = {"landmarks": list(ISBI_19), **{k: float(v) for k, v in settings.items()}}
    refinement(data, path)
    if provenance is not None:
        data.setdefault("provenance", {})["refiner"] = provenance
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
