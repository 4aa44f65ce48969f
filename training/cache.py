"""Decode the ISBI 2015 images once into a canonical-pose cache for training (never into the repo).

Canonical pose = the CephTrace v4 contract's: face to the LEFT. ISBI faces right, so x is
mirrored. Every image is resized to 512 x 512 (the contract's Stage 1 / profile input, bilinear
/ area); landmarks are mapped with the same half-pixel-centre convention as cv2.resize:
    x512 = (x_src + 0.5) * 512 / W - 0.5
The cache also holds the derived soft-tissue profile labels (see training.labels).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cephnode.training import isbi

SIZE = 512
# training.labels' profile derivation the cached masks were made with (1: edge path, 2: skin search)
PROFILE_LABEL_VERSION = 2


def cache_dir() -> Path:
    root = Path(os.environ.get("CEPHNODE_CACHE", Path.home() / ".cache" / "cephnode"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def to_canonical(points: np.ndarray, width: int, height: int, mirror: bool = True) -> np.ndarray:
    """Source pixel coordinates -> canonical 512 frame (mirrored when the face points right)."""
    p = np.asarray(points, dtype=np.float64).copy()
    if mirror:
        p[..., 0] = (width - 1) - p[..., 0]
    p[..., 0] = (p[..., 0] + 0.5) * SIZE / width - 0.5
    p[..., 1] = (p[..., 1] + 0.5) * SIZE / height - 0.5
    return p


def from_canonical(points: np.ndarray, width: int, height: int, mirror: bool = True) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).copy()
    p[..., 0] = (p[..., 0] + 0.5) * width / SIZE - 0.5
    p[..., 1] = (p[..., 1] + 0.5) * height / SIZE - 0.5
    if mirror:
        p[..., 0] = (width - 1) - p[..., 0]
    return p


def canonical_image(path: Path, mirror: bool = True) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(path)
    if mirror:
        img = img[:, ::-1]
    # Bilinear, as the contract's flow decodes and resizes (step 1).
    return cv2.resize(np.ascontiguousarray(img), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


@dataclass
class CanonicalSet:
    ids: np.ndarray          # (N,) str
    split: np.ndarray        # (N,) str
    images: np.ndarray       # (N, 512, 512) uint8, face left
    landmarks: np.ndarray    # (N, 19, 2) float32 mean of annotators, canonical 512 frame, ISBI_19 order
    senior: np.ndarray
    junior: np.ndarray
    profile: np.ndarray      # (N, 512, 512) uint8 {0,1} derived soft-tissue label
    src_size: tuple[int, int]  # (W, H) of the stored images


def build(path: Path | None = None, *, progress: bool = True) -> Path:
    from cephnode.training.labels import derive_profile_mask

    path = path or cache_dir() / "isbi512.npz"
    cases = isbi.load_cases()
    w, h = isbi.metadata()["image_size"]
    imgs, lms, sen, jun, prof = [], [], [], [], []
    for i, c in enumerate(cases):
        img = canonical_image(c.image_path)
        lm = to_canonical(c.mean, w, h)
        imgs.append(img)
        lms.append(lm)
        sen.append(to_canonical(c.senior, w, h))
        jun.append(to_canonical(c.junior, w, h))
        prof.append(derive_profile_mask(img, lm))
        if progress and i % 50 == 0:
            print(f"cache: {i}/{len(cases)}", flush=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array([c.case_id for c in cases]), split=np.array([c.split for c in cases]),
             images=np.stack(imgs), landmarks=np.stack(lms).astype(np.float32),
             senior=np.stack(sen).astype(np.float32), junior=np.stack(jun).astype(np.float32),
             profile=np.stack(prof), src_size=np.array([w, h]),
             profile_version=np.array(PROFILE_LABEL_VERSION))
    os.replace(tmp, path)
    return path


def load(path: Path | None = None) -> CanonicalSet:
    path = path or cache_dir() / "isbi512.npz"
    if not path.exists():
        build(path)
    z = np.load(path)
    profile = z["profile"]
    version = int(z["profile_version"]) if "profile_version" in z.files else 1
    if version != PROFILE_LABEL_VERSION:
        # derived with an older training.labels: derive again (seconds), so `cephnode train`
        # never trains on stale profile labels; the file is left as it is for concurrent readers
        from cephnode.training.labels import derive_profile_mask
        profile = np.stack([derive_profile_mask(im, lm) for im, lm in zip(z["images"], z["landmarks"])])
    return CanonicalSet(z["ids"], z["split"], z["images"], z["landmarks"], z["senior"], z["junior"],
                        profile, tuple(int(v) for v in z["src_size"]))
