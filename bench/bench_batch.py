"""Stage 1 in one batch or image by image, on this machine's CPU; prints JSON.

    .venv/bin/python bench/bench_batch.py [--images 4] [--runs 3] [--threads N] [--device cpu]

The default pack (its Stage 1 batch axis is dynamic) traces `--images` ISBI test1 images
(968 x 1200) two ways: Pipeline.run on each in turn, and Pipeline.run_batch on all of them
(Stage 0 and pose checks still run image by image; only Stage 1 is one call). For each: p50
wall and CPU (time.process_time, every thread of the process) milliseconds per image, over
`--runs` runs after one warm-up. 'max_landmark_diff_px' is the largest distance between a
landmark of the batch and of the single run of the same image. Issue 14: on the CPU, batching
is used only if it measures faster; on a loaded shared host compare the CPU figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _xy(result) -> np.ndarray:
    return np.array([(lm.x, lm.y) if lm.x is not None else (np.nan, np.nan) for lm in result.landmarks], float)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    import cv2
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    from cephnode.inference.pipeline import Pipeline
    from cephnode.training import isbi

    pipe = Pipeline.load(device=args.device, threads=args.threads)
    cases = isbi.load_cases("test1")[: args.images]
    images = [cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE) for c in cases]
    items = [{"image": im, "name": c.case_id} for im, c in zip(images, cases)]

    def single():
        return [pipe.run(it["image"], name=it["name"]) for it in items]

    def batch():
        return pipe.run_batch(items, batch_stage1=True)    # the batched path, whatever the default

    out = {"images": len(images), "runs": args.runs, "providers": pipe.providers,
           "stage1_dynamic_batch": bool(pipe.sessions.io["stage1"].dynamic_batch) if "stage1" in pipe.sessions.io else None,
           "load_average_start": list(os.getloadavg()), "per_image_ms": {}}
    last = {}
    for name, fn in (("single", single), ("batch", batch)):
        last[name] = fn()                  # warm-up (arena growth, first-call costs)
        wall, cpu = [], []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            last[name] = fn()
            wall.append((time.perf_counter() - t) * 1000 / len(images))
            cpu.append((time.process_time() - c) * 1000 / len(images))
        out["per_image_ms"][name] = {"wall_p50": round(float(np.median(wall)), 1),
                                     "cpu_p50": round(float(np.median(cpu)), 1)}
    diffs = [np.nanmax(np.hypot(*(_xy(a) - _xy(b)).T)) for a, b in zip(last["single"], last["batch"])]
    out["max_landmark_diff_px"] = float(max(diffs))
    s, b = out["per_image_ms"]["single"], out["per_image_ms"]["batch"]
    out["batch_faster_cpu"] = b["cpu_p50"] < s["cpu_p50"]
    out["batch_faster_wall"] = b["wall_p50"] < s["wall_p50"]
    out["load_average_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
