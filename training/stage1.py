"""Stage 1 heatmap network: data, priors as Stage 1 sees them, and the resumable training loop.

Attention priors during training: the pipeline renders Phase 0E's 25 Gaussians (sigmas
PRIOR_SIGMA_256) from Stage 0's estimates. Training renders them from the ground truth moved
by a random jitter (half a prior sigma, occasionally a gross miss) and drops channels at random
(and, sometimes, all of them, which is what a failed Stage 0 gives), so the network learns to
use the priors without trusting them blindly. Channels of points without labels (Co, Ba,
U1_root, L1_root, Pm) and Prn get a blob at a random place or nothing, so Stage 1 learns that
they carry no information it can be scored on.
The ablation arm "none" trains the same network on the same schedule with all 25 channels zero.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cephnode.domain.landmarks import CANONICAL_25, ISBI_19, PRIOR_SIGMA_256
from cephnode.training import augment, heatmaps
from cephnode.training.nets import stage1_net

ISBI_TO_25 = np.array([CANONICAL_25.index(n) for n in ISBI_19])
SIGMA_25 = np.array([PRIOR_SIGMA_256[n] for n in CANONICAL_25], dtype=np.float32)
LABELLED_25 = np.zeros(25, bool)
LABELLED_25[ISBI_TO_25] = True
TARGET_SIGMA = 2.0  # px on the 256 grid (about 1.5-1.9 mm on ISBI)


@dataclass
class Stage1Config:
    arm: str = "priors"            # "priors" | "none" (zeroed attention channels)
    arch: str = "unet-s4-fine"     # training.nets.STAGE1_ARCHS
    epochs: int = 40
    batch: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 2015
    prior_jitter: float = 0.5      # x prior sigma
    prior_channel_drop: float = 0.15
    prior_all_drop: float = 0.1
    checkpoint_every_s: float = 180.0
    device_shift: float = 0.0      # share of samples shown through augment.device_shift (0: off)
    # Fine-tuning: start from the Stage 1 of an exported pack (its ONNX file) instead of random
    # weights, with BatchNorm statistics frozen (batches of 4 are too small to re-estimate them,
    # and the exported file has them folded into the convolutions).
    init_from: str = ""
    freeze_bn: bool = False


def render_priors(rng: np.random.Generator, pts25_256: np.ndarray, cfg: Stage1Config) -> np.ndarray:
    """(25,2) ground truth on the 256 grid (NaN where unlabelled) -> (25,256,256) priors."""
    if cfg.arm == "none" or rng.random() < cfg.prior_all_drop:
        return np.zeros((25, 256, 256), np.float32)
    pts = pts25_256.copy()
    present = LABELLED_25.copy()
    jitter = rng.normal(0.0, 1.0, (25, 2)) * (cfg.prior_jitter * SIGMA_25[:, None])
    gross = rng.random(25) < 0.05
    jitter[gross] = rng.uniform(-3, 3, (int(gross.sum()), 2)) * SIGMA_25[gross, None]
    pts[LABELLED_25] += jitter[LABELLED_25]
    present &= rng.random(25) >= cfg.prior_channel_drop
    # No-information channels: random blob or nothing.
    free = ~LABELLED_25
    blob = free & (rng.random(25) < 0.5)
    pts[free] = rng.uniform(32, 224, (int(free.sum()), 2))
    present |= blob
    return heatmaps.gaussians(pts, SIGMA_25, present)


def make_sample(rng: np.random.Generator, img: np.ndarray, lm19_512: np.ndarray, cfg: Stage1Config,
                train: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> grey (512,512) float32, priors (25,256,256), targets (19,256,256)."""
    if train:
        m, _ = augment.random_affine(rng, 512, augment.GeometryParams())
        img = augment.warp_image(img, m)
        lm19_512 = augment.warp_points(lm19_512, m)
        if cfg.device_shift and rng.random() < cfg.device_shift:
            grey = augment.device_shift(rng, img)
        else:
            grey = augment.intensity(rng, img)
    else:
        grey = img.astype(np.float32) / 255.0
    lm256 = heatmaps.to_grid(lm19_512)
    pts25 = np.full((25, 2), np.nan)
    pts25[ISBI_TO_25] = lm256
    priors = render_priors(rng, np.nan_to_num(pts25, nan=128.0), cfg)
    target = heatmaps.gaussians(lm256, np.full(19, TARGET_SIGMA), np.ones(19, bool))
    return grey, priors, target


def assemble_input(grey: torch.Tensor, priors256: torch.Tensor) -> torch.Tensor:
    """(B,512,512) grey + (B,25,256,256) priors -> (B,28,512,512): RGB /255 + priors upsampled bilinearly."""
    up = F.interpolate(priors256, size=(512, 512), mode="bilinear", align_corners=False)
    rgb = grey[:, None].expand(-1, 3, -1, -1)
    return torch.cat([rgb, up], 1)


def heatmap_loss(logits25: torch.Tensor, target19: torch.Tensor) -> torch.Tensor:
    """BCE on the 19 labelled channels only, positives weighted up (they are ~0.1 % of pixels)."""
    idx = torch.as_tensor(ISBI_TO_25, device=logits25.device)
    lg = logits25[:, idx]
    w = 1.0 + 20.0 * target19
    return (F.binary_cross_entropy_with_logits(lg, target19, reduction="none") * w).mean()


def validation_error(net: torch.nn.Module, images: np.ndarray, landmarks: np.ndarray, cfg: Stage1Config, *,
                     mm_per_px512: tuple[float, float] = (1.0, 1.0), device: str = "cpu") -> dict[str, float]:
    """Mean radial error of the heatmap peaks on held-out canonical images (never test1): the
    number to choose epochs, recipes and architectures by. mm_per_px512 = (x, y) size of one
    512-grid pixel. The priors arm gets priors rendered from the truth (optimistic: in the
    pipeline they come from Stage 0); the zeroed arm gets zeros, as in the pipeline."""
    was_training = net.training
    net.eval()
    rng = np.random.default_rng(cfg.seed)
    errs = []
    with torch.no_grad():
        for start in range(0, len(images), 4):
            samples = [make_sample(rng, images[i], landmarks[i], cfg, train=False)
                       for i in range(start, min(start + 4, len(images)))]
            grey = torch.from_numpy(np.stack([s[0] for s in samples])).to(device)
            pri = torch.from_numpy(np.stack([s[1] for s in samples])).to(device)
            heat = net(assemble_input(grey, pri))[:, torch.as_tensor(ISBI_TO_25)].cpu().numpy()
            b, c, h, w = heat.shape
            flat = heat.reshape(b, c, -1).argmax(-1)
            peak256 = np.stack([flat % w, flat // w], -1).astype(np.float64)
            d = (heatmaps.from_grid(peak256) - landmarks[start:start + b]) * np.asarray(mm_per_px512)
            errs.append(np.hypot(d[..., 0], d[..., 1]))
    net.train(was_training)
    e = np.concatenate(errs)
    return {"val_mre": round(float(e.mean()), 4), "val_sdr2": round(float((e <= 2.0).mean()), 4)}


def train(images: np.ndarray, landmarks: np.ndarray, cfg: Stage1Config, ckpt_dir: Path, *,
          log=print, device: str = "cpu", progress: bool = False, reschedule: bool = False,
          val: tuple[np.ndarray, np.ndarray, tuple[float, float]] | None = None) -> torch.nn.Module:
    """Resumable: continues from ckpt_dir/stage1_<arm>.pt if present. With reschedule=True a
    checkpoint made for another number of epochs continues on a schedule of cfg.epochs.
    val = (images, landmarks, mm per 512-grid pixel): held-out images scored after each epoch
    (validation_error), logged with the epoch; model choices are made on these, never on test1."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"stage1_{cfg.arm}.pt"
    torch.manual_seed(cfg.seed)
    net = stage1_net(cfg.arch)
    if cfg.init_from and not ckpt.exists():
        init_from_onnx(net, Path(cfg.init_from))
        log(json.dumps({"event": "init", "arm": cfg.arm, "from": cfg.init_from}))
    net = net.to(device)
    net.sigmoid = False  # train on logits; the export puts the sigmoid back into the graph
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.05)
    epoch = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        saved = _with_defaults(state["config"])
        rescheduled = saved.get("epochs") != cfg.epochs and reschedule
        if rescheduled:
            saved["epochs"] = cfg.epochs
        if saved != asdict(cfg):
            raise ValueError(f"{ckpt}: checkpoint was made with another config; remove it to restart")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        epoch = state["epoch"]
        if rescheduled:
            # Same one-cycle shape stretched or squeezed to the new length, continued from here.
            sched.last_epoch = epoch * steps_per_epoch - 1
            sched.step()
            log(json.dumps({"event": "reschedule", "arm": cfg.arm, "epoch": epoch,
                            "from_epochs": state["config"]["epochs"], "to_epochs": cfg.epochs}))
        else:
            sched.load_state_dict(state["sched"])
        log(json.dumps({"event": "resume", "arm": cfg.arm, "epoch": epoch}))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=epoch * steps_per_epoch, desc=f"stage1[{cfg.arm}]", unit="step")
    if epoch == 0 and cfg.init_from and val:
        # the starting point's score, so the log shows what the fine-tuning changed
        log(json.dumps({"event": "epoch", "arm": cfg.arm, "epoch": 0, "elapsed_s": 0.0,
                        **validation_error(net, val[0], val[1], cfg, mm_per_px512=val[2], device=device)}))
    last_save = time.time()
    t0 = time.time()
    while epoch < cfg.epochs:
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n)
        net.train()
        if cfg.freeze_bn:
            freeze_batchnorm(net)
        losses = []
        for b in range(steps_per_epoch):
            ids = order[b * cfg.batch:(b + 1) * cfg.batch]
            samples = [make_sample(rng, images[i], landmarks[i], cfg) for i in ids]
            grey = torch.from_numpy(np.stack([s[0] for s in samples])).to(device)
            pri = torch.from_numpy(np.stack([s[1] for s in samples])).to(device)
            tgt = torch.from_numpy(np.stack([s[2] for s in samples])).to(device)
            loss = heatmap_loss(net(assemble_input(grey, pri)), tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch)
        epoch += 1
        scores = validation_error(net, val[0], val[1], cfg, mm_per_px512=val[2], device=device) if val else {}
        log(json.dumps({"event": "epoch", "arm": cfg.arm, "epoch": epoch, "loss": float(np.mean(losses)),
                        "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 1), **scores}))
        if time.time() - last_save > cfg.checkpoint_every_s or epoch == cfg.epochs:
            _save(ckpt, net, opt, sched, epoch, cfg)
            last_save = time.time()
    if bar:
        bar.close()
    net.sigmoid = True
    return net


def _save(path: Path, net, opt, sched, epoch: int, cfg: Stage1Config) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "epoch": epoch, "config": asdict(cfg)}, tmp)
    tmp.replace(path)


def _with_defaults(config: dict) -> dict:
    """Checkpoints from before the `arch` field were all the plain stride-4 U-Net; those from
    before `device_shift` trained without it."""
    return {"arch": "unet-s4", "device_shift": 0.0, "init_from": "", "freeze_bn": False, **config}


def freeze_batchnorm(net: torch.nn.Module) -> None:
    """BatchNorm layers use (and keep) their running statistics; their scale and shift still train."""
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()


def init_from_onnx(net: torch.nn.Module, onnx_path: Path) -> None:
    """Load the weights of an exported Stage 1 (same architecture) back into `net`.

    The exporter folds each BatchNorm into the convolution before it (weight and bias), so the
    file holds one weight (and bias) per Conv node. Conv nodes appear in the ONNX graph in the
    order the tracer met them, which is the order the network calls its Conv2d modules; a dry
    forward pass records that order. A folded conv's BatchNorm becomes the identity plus the
    folded bias (running mean 0, variance 1, scale sqrt(1 + eps)), so in eval mode, or with
    freeze_batchnorm, the torch network computes what the file computes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "Conv"]
    modules = dict(net.named_modules())
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, name=name: called.append(name))
             for name, m in modules.items() if isinstance(m, torch.nn.Conv2d)]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 28, 512, 512))
    for h in hooks:
        h.remove()
    net.train(was_training)
    if len(called) != len(nodes):
        raise ValueError(f"{onnx_path}: {len(nodes)} Conv nodes, the network has {len(called)} convolutions")
    with torch.no_grad():
        for name, node in zip(called, nodes):
            conv = modules[name]
            w = weights[node.input[1]]
            b = weights[node.input[2]] if len(node.input) > 2 else None
            if tuple(conv.weight.shape) != w.shape:
                raise ValueError(f"{onnx_path}: {name} is {tuple(conv.weight.shape)}, the file has {w.shape}")
            conv.weight.copy_(torch.from_numpy(w.copy()))
            parent, _, idx = name.rpartition(".")
            seq = modules.get(parent)
            bn = seq[int(idx) + 1] if (idx.isdigit() and isinstance(seq, torch.nn.Sequential) and int(idx) + 1 < len(seq)
                                       and isinstance(seq[int(idx) + 1], torch.nn.BatchNorm2d)) else None
            if bn is not None:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_(math.sqrt(1.0 + bn.eps))
                bn.bias.copy_(torch.from_numpy(b.copy()) if b is not None else torch.zeros_like(bn.bias))
            elif conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(b.copy()))
            elif b is not None:
                raise ValueError(f"{onnx_path}: {name} has no bias in the network but one in the file")


def load_trained(ckpt: Path) -> torch.nn.Module:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    net = stage1_net(_with_defaults(state["config"])["arch"])
    net.load_state_dict(state["model"])
    net.sigmoid = True
    if state["config"]["arm"] == "none":
        zero_prior_weights(net)
    return net.eval()


def zero_prior_weights(net: torch.nn.Module) -> None:
    """The no-prior arm never saw non-zero attention channels: zero their input weights so the
    exported network is exactly that network with zeroed priors, whatever the pipeline feeds it."""
    first = net.stem[0][0]
    with torch.no_grad():
        first.weight[:, 3:] = 0.0
