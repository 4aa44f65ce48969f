"""How good is a Stage 0 soft-tissue profile? Prints JSON.

The profile itself has no ground truth in ISBI, but the soft-tissue points Phase 0B reads off it
(Sn, UL, LL, Pog_soft) are annotated: their error against the annotators' mean measures the
profile. Also counted: how often the profile's most anterior point above 35 % of its height (the
0B nose-tip rule) lies in front of the annotated Sn and UL, i.e. whether the profile includes the
nose at all, and how far each annotated point lies from the traced skin line (skin_gap: the
profile's own quality, apart from how 0B's height windows pick points on it).

Runs the 0A network exactly as the pipeline does (the cached canonical 512 image is bit-identical
to the pipeline's working image for ISBI, see notes on inference conventions), then the
pipeline's own 0B code (inference.profile.analyse_profile). With --labels it scores the derived
training label masks instead (training.labels.derive_profile_mask), i.e. what the net is taught.

    .venv/bin/python bench/profile_quality.py --onnx models/default/stage0/v4_stage0_profile.onnx --ids 121-150
    .venv/bin/python bench/profile_quality.py --labels --ids 1-150
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cephnode.inference.landmarks import ISBI_19  # noqa: E402
from cephnode.inference.profile import StageFailure, analyse_profile, profile_mask  # noqa: E402
from cephnode.training import cache, isbi  # noqa: E402

IX = {n: i for i, n in enumerate(ISBI_19)}
POINTS = ("Sn", "UL", "LL", "Pog_soft")


def mm_per_px512() -> np.ndarray:
    """(x, y) mm per pixel of the canonical 512 frame for the ISBI images."""
    meta = isbi.metadata()
    w, h = meta["image_size"]
    sp = meta["pixel_spacing_mm"]
    return np.array([w * sp["column"] / 512.0, h * sp["row"] / 512.0])


def _ids(spec: str) -> set[str]:
    lo, hi = (int(v) for v in spec.split("-"))
    return {f"{i:03d}" for i in range(lo, hi + 1)}


def score(masks: dict[str, np.ndarray], lms: dict[str, np.ndarray]) -> dict:
    """0B point errors (mm) and nose inclusion over the given masks."""
    scale = mm_per_px512()
    errs: dict[str, list[float]] = {p: [] for p in POINTS}
    gaps: dict[str, list[float]] = {p: [] for p in POINTS}
    nose_ok = 0
    failed = []
    per_case = {}
    for cid, mask in masks.items():
        lm = lms[cid]
        try:
            prof = analyse_profile(mask)
        except StageFailure as e:
            failed.append(cid)
            per_case[cid] = {"failed": str(e)}
            continue
        row = {}
        front = np.stack([prof.xs, prof.ys], 1)
        for p in POINTS:
            # how far the annotated point lies from the traced skin line, whatever 0B's rules pick
            gaps[p].append(float(np.min(np.hypot(*((front - lm[IX[p]]) * scale).T))))
            if p in prof.points:
                e = float(np.hypot(*((np.array(prof.points[p]) - lm[IX[p]]) * scale)))
            else:
                e = float("nan")
            errs[p].append(e)
            row[p] = round(e, 2)
        # most anterior profile point in the top 35 % (the 0B nose region), raw profile
        yn = (prof.ys - prof.ys[0]) / max(1.0, prof.ys[-1] - prof.ys[0])
        tip_x = float(prof.xs[yn < 0.35].min())
        ok = tip_x < lm[IX["Sn"]][0] and tip_x < lm[IX["UL"]][0]
        nose_ok += ok
        row["nose_included"] = bool(ok)
        per_case[cid] = row
    out = {"n": len(masks), "failed": failed,
           "nose_included_frac": round(nose_ok / max(1, len(masks)), 3)}
    allv = []
    for p in POINTS:
        v = np.array(errs[p])
        allv.extend(v.tolist())
        g = np.array(gaps[p])
        out[p] = {"mean_mm": round(float(np.nanmean(v)), 2), "median_mm": round(float(np.nanmedian(v)), 2),
                  "within_2mm": round(float(np.mean(v <= 2.0)), 3), "missing": int(np.isnan(v).sum()),
                  "skin_gap_mean_mm": round(float(np.mean(g)), 2), "skin_gap_median_mm": round(float(np.median(g)), 2)}
    allv = np.array(allv)
    out["all4_skin_gap_mean_mm"] = round(float(np.mean(np.concatenate([gaps[p] for p in POINTS]))), 2)
    out["all4_mean_mm"] = round(float(np.nanmean(allv)), 2)
    out["all4_median_mm"] = round(float(np.nanmedian(allv)), 2)
    out["per_case"] = per_case
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, help="a 0A profile ONNX file to score")
    ap.add_argument("--labels", action="store_true", help="score the derived label masks instead")
    ap.add_argument("--ids", default="121-150", help="train case range, e.g. 121-150")
    ap.add_argument("--per-case", action="store_true")
    args = ap.parse_args(argv)
    ds = cache.load()
    keep = _ids(args.ids)
    sel = [i for i, (c, s) in enumerate(zip(ds.ids, ds.split)) if s == "train" and str(c) in keep]
    lms = {str(ds.ids[i]): ds.landmarks[i] for i in sel}
    masks: dict[str, np.ndarray] = {}
    if args.labels:
        from cephnode.training.labels import derive_profile_mask
        for i in sel:
            masks[str(ds.ids[i])] = derive_profile_mask(ds.images[i], ds.landmarks[i])
    else:
        import onnxruntime as ort
        sess = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in sel:
            x = (ds.images[i].astype(np.float32) / 255.0)[None, None]
            masks[str(ds.ids[i])] = profile_mask(sess.run(None, {name: x})[0])
    res = score(masks, lms)
    if not args.per_case:
        res.pop("per_case")
    res["source"] = "labels" if args.labels else str(args.onnx)
    res["ids"] = args.ids
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
