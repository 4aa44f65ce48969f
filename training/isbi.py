"""The ISBI 2015 cephalometric data set, read in place (never copied into the repository).

Location: $CEPHNODE_ISBI_DIR, else ../shared/data/isbi2015 beside the checkout.
Needs only numpy: used by training, `cephnode evaluate` and the tests.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cephnode.domain.landmarks import ISBI_19

REPO_ROOT = Path(__file__).resolve().parent.parent
# Images 283 and 173 (test1) are byte-identical to 038 and 144 (train): never report them.
EXCLUDED_FROM_TEST = frozenset({"173", "283"})


def data_dir() -> Path:
    env = os.environ.get("CEPHNODE_ISBI_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data" / "isbi2015")


def samples_dir() -> Path:
    env = os.environ.get("CEPHNODE_SAMPLES_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data" / "samples")


@dataclass(frozen=True)
class IsbiCase:
    case_id: str            # "001" .. "300"
    split: str              # "train" | "test1"
    image_path: Path
    senior: np.ndarray      # (19, 2) x, y in stored-image pixels, ISBI_19 order
    junior: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """The challenge's ground truth: the mean of both annotators."""
        return (self.senior + self.junior) / 2.0


@lru_cache(maxsize=None)
def metadata() -> dict:
    return json.loads((data_dir() / "dataset.json").read_text())


def image_size() -> tuple[int, int]:
    """(width, height) of the stored images."""
    w, h = metadata()["image_size"]
    return int(w), int(h)


def pixel_spacing_mm() -> tuple[float, float]:
    """(row, column) spacing of the stored 968 x 1200 images."""
    ps = metadata()["pixel_spacing_mm"]
    return float(ps["row"]), float(ps["column"])


@lru_cache(maxsize=None)
def _all_cases() -> tuple[IsbiCase, ...]:
    root = data_dir()
    rows: dict[str, dict[str, np.ndarray]] = {}
    splits: dict[str, str] = {}
    with open(root / "landmarks.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            cid = row["image"].split(".")[0]
            pts = np.array([[float(row[f"{n}_x"]), float(row[f"{n}_y"])] for n in ISBI_19])
            rows.setdefault(cid, {})[row["annotator"]] = pts
            splits[cid] = row["split"]
    return tuple(
        IsbiCase(cid, splits[cid], root / "images" / f"{cid}.jpg", a["senior"], a["junior"])
        for cid, a in sorted(rows.items())
    )


def forget_loaded_data() -> None:
    """Drop what was read from the data folder (after $CEPHNODE_ISBI_DIR changed)."""
    metadata.cache_clear()
    _all_cases.cache_clear()


# The validation split: the last train images by number, held out of Stage 1 training by
# `cephnode train --val 20` and scored by `cephnode evaluate --split val`. Recipes, epochs and
# test-time augmentation are chosen on these, never on test1.
VAL_IMAGES = 20


def load_cases(split: str | None = None, *, exclude_duplicates: bool = False) -> list[IsbiCase]:
    """split: "train", "test1", "val" (the last VAL_IMAGES train images) or None (all)."""
    if split == "val":
        return sorted(load_cases("train"), key=lambda c: c.case_id)[-VAL_IMAGES:]
    cases = [c for c in _all_cases() if split is None or c.split == split]
    if exclude_duplicates:
        cases = [c for c in cases if c.case_id not in EXCLUDED_FROM_TEST]
    return cases
