"""`cephnode evaluate`: the real pipeline on a labelled split, errors in true millimetres.

Ground truth is the mean of both annotators; errors are radial distances with the data's own
pixel spacing (row and column separately), never an S-N calibration. Images 173 and 283 are
excluded (duplicates of training images). Stage 0 anchors are scored separately so one can see
what the priors contribute. Needs only numpy and OpenCV (no torch).
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cephnode.domain.landmarks import ISBI_19
from cephnode.training import isbi

THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
STAGE0_ANCHORS = ("S", "N", "Me", "ANS", "Go", "Pog")


def radial_errors_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """(..., 2) x,y pixels -> (...) mm. spacing = (row, column): x scales by column, y by row.
    NaN predictions give NaN errors."""
    row, col = spacing_mm
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return np.hypot(d[..., 0] * col, d[..., 1] * row)


@dataclass
class Summary:
    n: int                 # points scored (including missing ones)
    missing: int           # points the pipeline gave no position for (count as failures)
    mre_mm: float          # mean over the points with a position
    sd_mm: float
    sdr: dict[str, float]  # threshold (str, mm) -> fraction of ALL points within it

    def to_dict(self) -> dict:
        return {"n": self.n, "missing": self.missing, "mre_mm": self.mre_mm, "sd_mm": self.sd_mm,
                "sdr": self.sdr}


def summarise(errors_mm: np.ndarray) -> Summary:
    e = np.asarray(errors_mm, dtype=np.float64).ravel()
    ok = np.isfinite(e)
    have = e[ok]
    return Summary(
        n=int(e.size), missing=int((~ok).sum()),
        mre_mm=float(have.mean()) if have.size else float("nan"),
        sd_mm=float(have.std()) if have.size else float("nan"),
        sdr={f"{t:g}": float((have <= t).sum() / e.size) if e.size else float("nan") for t in THRESHOLDS_MM},
    )


def metrics(errors_mm: np.ndarray, names: tuple[str, ...] = ISBI_19) -> dict:
    """errors (n_images, n_landmarks) -> overall + per-landmark summaries."""
    return {
        "overall": summarise(errors_mm).to_dict(),
        "per_landmark": {n: summarise(errors_mm[:, i]).to_dict() for i, n in enumerate(names)},
    }


def quality_summary(ids: list[str], verdicts: list[str | None], errors_mm: np.ndarray) -> dict:
    """Quality-gate verdicts (inference.quality) against the images' real errors: how many of
    each, the mean radial error per verdict, and the verdicts of the films over 5 and 10 mm."""
    image_mre = np.nanmean(errors_mm, axis=1)
    out: dict = {"counts": {v: verdicts.count(v) for v in ("pass", "review", "fail")}}
    out["mre_mm"] = {v: (round(float(image_mre[[x == v for x in verdicts]].mean()), 3)
                         if v in verdicts else None) for v in ("pass", "review", "fail")}
    for lim in (5, 10):
        out[f"over_{lim}mm"] = {cid: verdicts[i] for i, cid in enumerate(ids) if image_mre[i] > lim}
    return out


def stage1_trained_on(manifest: dict) -> set[str]:
    """The ISBI splits a pack's Stage 1 saw in training (pack.json provenance
    "stage1_trained_on"; packs before 1.5.0 say nothing and were trained on train only)."""
    return set(manifest.get("provenance", {}).get("stage1_trained_on", ["train"]))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=isbi.REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate(*, split: str = "test1", models_dir=None, device: str = "auto", threads: int | None = None,
             limit: int | None = None, orientation: tuple[str, str] | None = None, progress=None,
             test_time_shifts: tuple[tuple[int, int], ...] | None = None, refine: float | None = None) -> dict:
    """Run inference.pipeline.Pipeline on every case of the split; return the report dict.
    test_time_shifts: override the pack's Stage 1 test-time augmentation (None: the pack's).
    refine: the landmark refiner's weight instead of the pack's (0: off; None: the pack's)."""
    from cephnode.inference.pipeline import Pipeline

    pipe = Pipeline.load(models_dir, device=device, threads=threads)
    if test_time_shifts is not None:
        pipe.test_time_shifts = tuple(test_time_shifts)
    if refine is not None:
        pipe.set_refine_weight(refine)
    cases = isbi.load_cases(split, exclude_duplicates=True)
    if limit:
        cases = cases[:limit]
    spacing = isbi.pixel_spacing_mm()
    n = len(cases)
    pred = np.full((n, len(ISBI_19), 2), np.nan)
    anchors = np.full((n, len(STAGE0_ANCHORS), 2), np.nan)
    truth = np.stack([c.mean for c in cases])
    seconds, flipped, degraded, verdicts = [], [], [], []
    for k, case in enumerate(cases):
        img = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)
        t = time.perf_counter()
        res = pipe.run(img, pixel_spacing_mm=spacing, patient_orientation=orientation, name=case.case_id)
        seconds.append(time.perf_counter() - t)
        for i, name in enumerate(ISBI_19):
            lm = res.landmark(name)
            if lm.available:
                pred[k, i] = (lm.x, lm.y)
        for i, name in enumerate(STAGE0_ANCHORS):
            a = res.stage0.anchors.get(name)
            if a is not None:
                anchors[k, i] = a
        flipped.append(bool(res.orientation.flipped))
        degraded.append(bool(res.degraded))
        verdicts.append(res.qc.verdict if res.qc is not None else None)
        if progress:
            progress(k + 1, n)
    err = radial_errors_mm(pred, truth, spacing)
    a_err = radial_errors_mm(anchors, truth[:, [ISBI_19.index(a) for a in STAGE0_ANCHORS]], spacing)
    report = {
        "split": split,
        "images": n,
        "excluded": sorted(isbi.EXCLUDED_FROM_TEST),
        "ground_truth": "mean of senior and junior annotators",
        "pixel_spacing_mm": {"row": spacing[0], "column": spacing[1]},
        "pack": {"name": pipe.pack.name, "version": pipe.pack.version, "root": str(pipe.pack.root)},
        "providers": {k: v for k, v in pipe.providers.items()},
        "stage1_test_time_shifts": [list(t) for t in pipe.test_time_shifts],
        "refinement": asdict(pipe.refinement) if pipe.refinement else None,
        # a pack trained on these very images (the shipped pack may use all 300): not held out
        "in_sample": split in stage1_trained_on(pipe.pack.manifest) or (
            split == "val" and "train" in stage1_trained_on(pipe.pack.manifest)
            and not pipe.pack.manifest.get("provenance", {}).get("validation_held_out", False)),
        "commit": git_commit(),
        "stage1": metrics(err),
        "stage0_anchors": metrics(a_err, STAGE0_ANCHORS),
        "stage1_on_anchor_landmarks": metrics(err[:, [ISBI_19.index(a) for a in STAGE0_ANCHORS]], STAGE0_ANCHORS),
        "orientation_mirrored": int(sum(flipped)),
        "degraded": int(sum(degraded)),
        "quality": quality_summary([c.case_id for c in cases], verdicts, err),
        "seconds_per_image": {"mean": float(np.mean(seconds)), "p50": float(np.median(seconds))},
        "per_image": {c.case_id: [None if not np.isfinite(v) else round(float(v), 3) for v in row]
                      for c, row in zip(cases, err)},
    }
    report["_arrays"] = {"pred": pred, "truth": truth}
    return report


def write_report(report: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = report.pop("_arrays", None)
    jpath = out_dir / f"{stem}.json"
    jpath.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    ppath = out_dir / f"{stem}.png"
    if arrays is not None:
        cv2.imwrite(str(ppath), plot(report, arrays["pred"], arrays["truth"], isbi.pixel_spacing_mm()))
    return jpath, ppath


# ---------------------------------------------------------------- plot (OpenCV only)

def _text(img, s, org, scale=0.45, color=(0, 0, 0), thick=1):
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def plot(report: dict, pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """Left: per-landmark MRE with +-1 SD bars and SDR@2mm. Right: every prediction's error
    vector drawn at its landmark on the mean face (mm), 2 mm circles."""
    W, H = 1500, 800
    img = np.full((H, W, 3), 255, np.uint8)
    per = report["stage1"]["per_landmark"]
    ov = report["stage1"]["overall"]
    _text(img, f"{report['pack']['name']} {report['pack']['version']} on ISBI {report['split']} "
               f"({report['images']} images{', 173/283 excluded' if report['split'] == 'test1' else ''}): MRE {ov['mre_mm']:.2f} mm, "
               f"SDR 2/2.5/3/4 mm {ov['sdr']['2']*100:.1f}/{ov['sdr']['2.5']*100:.1f}/"
               f"{ov['sdr']['3']*100:.1f}/{ov['sdr']['4']*100:.1f} %", (20, 28), 0.6, thick=2)
    # --- bars
    x0, y0, pw, ph = 70, 70, 640, 600
    vmax = max(4.0, max(per[n]["mre_mm"] + per[n]["sd_mm"] for n in ISBI_19 if np.isfinite(per[n]["mre_mm"])))
    vmax = float(np.ceil(vmax))
    step = max(1, int(np.ceil(vmax / 10)))
    for t in range(0, int(vmax) + 1, step):
        yy = y0 + ph - int(ph * t / vmax)
        cv2.line(img, (x0, yy), (x0 + pw, yy), (225, 225, 225), 1)
        _text(img, f"{t}", (x0 - 25, yy + 5))
    yy2 = y0 + ph - int(ph * 2.0 / vmax)
    cv2.line(img, (x0, yy2), (x0 + pw, yy2), (0, 140, 0), 1)
    _text(img, "2mm", (x0 + pw + 4, yy2 + 4), color=(0, 140, 0))
    bw = pw / len(ISBI_19)
    for i, n in enumerate(ISBI_19):
        m, sd = per[n]["mre_mm"], per[n]["sd_mm"]
        cx = int(x0 + bw * (i + 0.5))
        if np.isfinite(m):
            top = y0 + ph - int(ph * m / vmax)
            cv2.rectangle(img, (cx - int(bw * 0.35), top), (cx + int(bw * 0.35), y0 + ph), (200, 130, 60), -1)
            hi = y0 + ph - int(ph * min(vmax, m + sd) / vmax)
            lo = y0 + ph - int(ph * max(0.0, m - sd) / vmax)
            cv2.line(img, (cx, hi), (cx, lo), (0, 0, 0), 1)
            cv2.line(img, (cx - 4, hi), (cx + 4, hi), (0, 0, 0), 1)
            cv2.line(img, (cx - 4, lo), (cx + 4, lo), (0, 0, 0), 1)
            _text(img, f"{per[n]['sdr']['2']*100:.0f}", (cx - 10, y0 + ph + 32), 0.38, (0, 110, 0))
        label = np.full((20, 70, 3), 255, np.uint8)
        _text(label, n, (2, 15), 0.42)
        label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img[y0 + ph + 40:y0 + ph + 110, cx - 10:cx + 10] = label[:, :20]
    cv2.rectangle(img, (x0, y0), (x0 + pw, y0 + ph), (0, 0, 0), 1)
    _text(img, "mean radial error (mm), bars +-1 SD; green: SDR@2mm %", (x0, y0 - 10), 0.45)
    # --- mean face
    fx0, fy0, fw, fh = 790, 60, 690, 690
    row, col = spacing_mm
    tmm = truth * np.array([col, row])
    pmm = pred * np.array([col, row])
    mean_face = tmm.mean(0)
    lo, hi = mean_face.min(0) - 15, mean_face.max(0) + 15
    s = min(fw / (hi[0] - lo[0]), fh / (hi[1] - lo[1]))
    err_scale = 3.0  # error vectors magnified for visibility

    def at(p):
        return (int(fx0 + (p[0] - lo[0]) * s), int(fy0 + (p[1] - lo[1]) * s))

    for i, n in enumerate(ISBI_19):
        c = mean_face[i]
        d = (pmm[:, i] - tmm[:, i])
        d = d[np.all(np.isfinite(d), 1)]
        for v in d:
            bad = np.hypot(*v) > 2.0
            q = at(c + err_scale * v)
            if not (fx0 - 20 <= q[0] <= W and fy0 - 20 <= q[1] <= H):
                continue  # far misses stay off the bar chart; they are in the bars and the JSON
            cv2.circle(img, q, 2, (40, 40, 220) if bad else (60, 160, 60), -1)
        cv2.circle(img, at(c), int(2.0 * err_scale * s), (0, 140, 0), 1)
        cv2.circle(img, at(c), 3, (0, 0, 0), -1)
        _text(img, n, (at(c)[0] + 6, at(c)[1] - 6), 0.4)
    _text(img, f"errors on the mean face ({report['images']} images), vectors x{err_scale:g}; "
               f"circle = 2 mm; red > 2 mm", (fx0, fy0 - 10), 0.45)
    return img
