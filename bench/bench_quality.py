"""Calibration of the quality gate (inference.quality); prints JSON.

    .venv/bin/python bench/bench_quality.py --from runs.jsonl [--step 1]

--from: the records bench_pose.py --save wrote (test1 in 8 poses, every device-shift preset);
without it only the extra sets below are run. Extra sets, traced here:
  * forced wrong poses: every test1 film with one wrong pose forced (cycling through the 7),
    so verification cannot correct it: the gate must fail every one;
  * non-cephalometric images (tests/support/nonceph.py: blank, random texture, chest-like,
    hand; 3 seeds, each also turned 90 degrees): the gate must fail every one;
  * heavily degraded films (training.deviceshift.DEGRADED: strong blur, heavy noise, low
    contrast): what the gate makes of them.
Per set: share of pass / review / fail, image MRE per verdict, films over 5 and 10 mm and
what they got. For test1 (upright presentation): per-landmark confidence band against error
(share of "high" points within 2 mm, ...). Targets: fail < 2 % of test1; every forced wrong
pose and every non-ceph image fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trust_cases as tc  # noqa: E402


def verdict_summary(rows: list[dict]) -> dict:
    n = len(rows)
    v = Counter(r["qc"]["verdict"] for r in rows)
    out = {"images": n, **{f"{k}_share": round(v.get(k, 0) / n, 4) if n else None for k in ("pass", "review", "fail")}}
    for k in ("pass", "review", "fail"):
        m = [r["mre_mm"] for r in rows if r["qc"]["verdict"] == k and r.get("mre_mm") is not None]
        out[f"mre_mm_{k}"] = round(float(np.mean(m)), 3) if m else None
    for lim in (5, 10):
        bad = [r for r in rows if r.get("mre_mm") is not None and r["mre_mm"] > lim]
        out[f"over_{lim}mm"] = len(bad)
        out[f"over_{lim}mm_verdicts"] = dict(Counter(r["qc"]["verdict"] for r in bad))
    reasons = Counter(k for r in rows for k in r["qc"]["codes"])
    out["reason_kinds"] = dict(reasons)
    out["not_pass_examples"] = [f"{r['name']}: {r['qc']['verdict']}: {'; '.join(r['qc']['reasons'])[:200]}"
                                for r in rows if r["qc"]["verdict"] != "pass"][:6]
    return out


def bands(rows: list[dict]) -> dict:
    err = np.array([e for r in rows for e in r["errors_mm"]], float)
    lev = np.array([lv for r in rows for lv in r["level"]])
    conf = np.array([c for r in rows for c in r["confidence"]], float)
    out = {}
    for band in ("high", "medium", "low"):
        sel = lev == band
        out[band] = {"points": int(sel.sum()), "share_of_points": round(float(sel.mean()), 4),
                     "within_2mm": round(float((err[sel] <= 2).mean()), 4) if sel.any() else None,
                     "within_4mm": round(float((err[sel] <= 4).mean()), 4) if sel.any() else None,
                     "mre_mm": round(float(err[sel].mean()), 3) if sel.any() else None}
    # finer: error by confidence decile, to see whether the number means what it says
    edges = np.quantile(conf, np.linspace(0, 1, 6))
    out["by_confidence_quintile"] = [
        {"confidence": [round(float(lo), 3), round(float(hi), 3)],
         "within_2mm": round(float((err[(conf >= lo) & (conf <= hi)] <= 2).mean()), 4),
         "mre_mm": round(float(err[(conf >= lo) & (conf <= hi)].mean()), 3)}
        for lo, hi in zip(edges[:-1], edges[1:])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="records", type=Path, help="bench_pose.py --save output")
    ap.add_argument("--step", type=int, default=1, help="every Nth test1 film for the extra sets")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", type=Path, default=None,
                    help="model pack (default: the default pack). Give a pack not trained on test1 (the "
                         "protocol model) for figures on unseen films")
    args = ap.parse_args()

    from cephnode.inference.orientation import POSES
    from cephnode.inference.pipeline import Pipeline
    from tests.support.nonceph import non_ceph_images
    from cephnode.training import deviceshift

    sets: dict[str, list[dict]] = {}
    if args.records:
        for line in args.records.read_text().splitlines():
            r = json.loads(line)
            sets.setdefault(r["set"], []).append(r)
    pipe = Pipeline.load(args.models, device="cpu", threads=args.threads)
    films = tc.load_test1(args.step)
    right = (0, True)                      # ISBI films face right
    wrong = [p for p in POSES if p != right]
    for i, (cid, img, truth) in enumerate(films):
        p = tc.present(img, truth, None, right, int(cid))           # shown as stored (faces right)
        assert tuple(p.expected[:2]) == right
        sets.setdefault("forced wrong pose", []).append(tc.trace(pipe, p, cid, orientation=wrong[i % len(wrong)]))
        p = tc.present(img, truth, deviceshift.DEGRADED, POSES[i % 8], int(cid))
        sets.setdefault("degraded", []).append(tc.trace(pipe, p, cid))
        print(f"{i + 1}/{len(films)}", file=sys.stderr, flush=True)
    nonceph = []
    for seed in (1, 2, 3):
        for kind, im in non_ceph_images(seed).items():
            for k in (0, 1):
                if kind != "texture" and seed > 1 and k == 0:
                    continue                    # only the texture changes with the seed
                shown = np.ascontiguousarray(np.rot90(im, k))
                res = pipe.run(shown, pixel_spacing_mm=(0.2, 0.2), name=f"{kind}-{seed}-k{k}")
                nonceph.append({"name": res.image_name, "qc": res.qc.to_dict(), "mre_mm": None,
                                "extra_ms": res.timings_ms.get("pose_verification", 0.0)})
    sets["non-cephalometric"] = nonceph

    test1_upright = [r for r in sets.get("test1", []) if r["expected"][:2] == [0, False]]
    shifted = [r for k, rows in sets.items() if k in {s.name for s in deviceshift.PRESETS} for r in rows]
    print(json.dumps({
        "pack": pipe.pack.version,
        "targets": {
            "test1_fail_share": verdict_summary(sets["test1"])["fail_share"] if "test1" in sets else None,
            "forced_wrong_pose_caught": sum(r["qc"]["verdict"] == "fail" for r in sets["forced wrong pose"]),
            "forced_wrong_pose_total": len(sets["forced wrong pose"]),
            "non_ceph_caught": sum(r["qc"]["verdict"] == "fail" for r in nonceph),
            "non_ceph_total": len(nonceph),
        },
        "mean_confidence_range": {k: [round(min(r["qc"]["signals"]["mean_confidence"] for r in v), 4),
                                      round(max(r["qc"]["signals"]["mean_confidence"] for r in v), 4)]
                                  for k, v in sets.items()},
        "sets": {k: verdict_summary(v) for k, v in sets.items()},
        "device_shift_all_presets": verdict_summary(shifted) if shifted else None,
        "test1_confidence_bands": bands(test1_upright) if test1_upright else None,
        "non_ceph_verification_ms_mean": round(float(np.mean([r["extra_ms"] for r in nonceph])), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
