"""Is the pose right on every film, and what does verifying it cost? Prints JSON.

    .venv/bin/python bench/bench_pose.py [--step 1] [--save runs.jsonl]

ISBI test1 (148 films, 173 and 283 excluded as in `cephnode evaluate`) presented in all 8
poses, plus every film under each device-shift preset of training.deviceshift (inverted
polarity, intensity curves, blur/sharpening and noise, 0.1-0.2 mm/px, crops, padding,
collimation, burnt-in labels and rulers), each preset film in one of the 8 poses (cycling, so
every preset meets every pose). Pose = rotation, mirror and polarity, found from the image
(no DICOM tag). Reports wrong poses (target 0), how often verification ran, and its time:
`extra_ms` is what verification added to an image (0 where it did not run); `total_ms` is the
pipeline's wall time per image including it (the p50 target is <= 300 ms on 2 cores).
--save writes every record (points' errors, confidences, verdicts) for bench_quality.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trust_cases as tc  # noqa: E402


def summary(rows: list[dict]) -> dict:
    extra = np.array([r["extra_ms"] for r in rows])
    wall = np.array([r["wall_ms"] for r in rows])
    ran = extra > 0
    return {
        "images": len(rows),
        "wrong_pose": int(sum(not r["pose_ok"] for r in rows)),
        "wrong": [f"{r['name']} expected {r['expected']} got {r['got']}" for r in rows if not r["pose_ok"]][:20],
        "verified": int(sum(bool(r["verification"]) for r in rows)),
        "overturned": int(sum(r["verification"] == "overturned" for r in rows)),
        "extra_ms_mean": round(float(extra.mean()), 1),
        "extra_ms_when_verified_p50": round(float(np.median(extra[ran])), 1) if ran.any() else 0.0,
        "total_ms_p50": round(float(np.percentile(wall, 50)), 1),
        "total_ms_p95": round(float(np.percentile(wall, 95)), 1),
        "mre_mm": round(float(np.mean([r["mre_mm"] for r in rows])), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", type=int, default=1, help="every Nth test1 film (1: all 148)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", type=Path, default=None,
                    help="model pack (default: the default pack). Give a pack not trained on test1 (the "
                         "protocol model) for figures on unseen films")
    ap.add_argument("--save", type=Path, help="write every record as JSON lines")
    args = ap.parse_args()

    from cephnode.inference.orientation import POSES
    from cephnode.inference.pipeline import Pipeline
    from cephnode.training import deviceshift

    pipe = Pipeline.load(args.models, device="cpu", threads=args.threads)
    films = tc.load_test1(args.step)
    sets: dict[str, list[dict]] = {}
    out = open(args.save, "w") if args.save else None
    for i, (cid, img, truth) in enumerate(films):
        for pose in POSES:
            r = tc.trace(pipe, tc.present(img, truth, None, pose, int(cid)), cid)
            r["set"] = "test1"
            sets.setdefault("test1 (8 poses)", []).append(r)
            if out:
                out.write(json.dumps(r) + "\n")
        for j, shift in enumerate(deviceshift.PRESETS):
            pose = POSES[(i + j) % len(POSES)]
            r = tc.trace(pipe, tc.present(img, truth, shift, pose, int(cid)), cid)
            r["set"] = shift.name
            sets.setdefault(shift.name, []).append(r)
            if out:
                out.write(json.dumps(r) + "\n")
        print(f"{i + 1}/{len(films)}", file=sys.stderr, flush=True)
    if out:
        out.close()
    everything = [r for rows in sets.values() for r in rows]
    print(json.dumps({
        "films": len(films), "pack": pipe.pack.version, "load_avg": os.getloadavg(),
        "all": summary(everything),
        "device_shift": summary([r for k, rows in sets.items() if k != "test1 (8 poses)" for r in rows]),
        "sets": {k: summary(v) for k, v in sets.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
