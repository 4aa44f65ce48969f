"""How long building the returned DICOM objects takes on this machine; prints JSON.

    nice -n 15 .venv/bin/python bench/bench_report.py [--runs 7] [--case 001] [--sizes isbi,large]

The source is a DX built from a real ISBI image (tests.support.dicomgen.make_dx) and the
landmarks are that image's real senior annotation (as tests/support/report_cases.py does):
  isbi   the image at its stored size (968 x 1200, 8-bit, ISBI spacing);
  large  the image resized to 2000 x 2500 and stored 16-bit (landmarks scaled with it).
For each size: p50 / p95 wall milliseconds ("ms") of the analysis (cephalometry.analysis.analyse)
and of each kind's builder (sr, seg, gsps, sc), called as dicom_io.outputs.build_outputs calls
them (the sc decoding the source itself, as `cephnode report` does; 'sc_given_image': from the
image already decoded, as the node builds it), plus build_outputs for all four kinds end to end, 'node_job_objects' (what a node's worker does per
job: node.result_objects.build_result_objects for all four kinds with the source already decoded,
each written to bytes; issue 14's target is 150 ms; 'node_job_objects_no_sc': the same for
SR, SEG and GSPS, for a destination without the tracing sheet), and '<kind>_encode': writing the built
object to bytes with dicom_io.encode.file_bytes, as the node does next. "cpu_ms" is the same in CPU time of this process
(time.process_time, all its threads): on a loaded shared host wall time waits for a core,
CPU time much less so. Each run reads the source back from a file and decodes its
pixels first, untimed, as the node does before inference, so no run profits from another's work.
The machine's load average is recorded: on a shared host the figures move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PACK_NAME = "isbi-annotation"
PACK_VERSION = "bench-1"


def _stats(ms: list[float]) -> dict[str, float]:
    v = np.asarray(ms, float)
    return {"p50": round(float(np.percentile(v, 50)), 1), "p95": round(float(np.percentile(v, 95)), 1)}


def make_case(case_id: str, size: str, folder: Path):
    """(path of the saved source DX, InferenceResult from the real annotation)."""
    import cv2

    from cephnode.cephalometry.annotations import result_from_points
    from cephnode.domain.landmarks import ISBI_19
    from tests.support.dicomgen import make_dx, read_grey
    from cephnode.training import isbi

    case = next(c for c in isbi.load_cases() if c.case_id == case_id)
    img = read_grey(case.image_path)
    points = np.asarray(case.senior, float)
    spacing = isbi.pixel_spacing_mm()
    bits = 8
    if size == "large":
        h, w = img.shape
        img = cv2.resize(img, (2000, 2500), interpolation=cv2.INTER_CUBIC)
        sx, sy = 2000 / w, 2500 / h
        points = points * [sx, sy]
        spacing = (spacing[0] / sy, spacing[1] / sx)   # (row, column) spacing of the resized grid
        bits = 16
    elif size != "isbi":
        raise ValueError(size)
    ds = make_dx(img, pixel_spacing_mm=spacing, bits=bits, patient_id="BENCH-1", patient_name="Bench^Report")
    path = folder / f"{size}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = result_from_points(
        dict(zip(ISBI_19, map(tuple, points))), width=img.shape[1], height=img.shape[0],
        pixel_spacing_mm=spacing, name=str(ds.SOPInstanceUID), face="right",
        source="ISBI 2015 senior annotation", missing_note="not labelled in ISBI 2015",
    )
    return path, result, img.shape


def bench_size(path: Path, result, runs: int) -> dict:
    import pydicom

    from cephnode.cephalometry.analysis import analyse
    from cephnode.dicom_io.encode import file_bytes
    from cephnode.dicom_io.outputs import build_output, build_outputs
    from cephnode.domain.outputs import ALL_OUTPUT_KINDS, OutputKind
    from cephnode.dicom_io.pixels import read_dicom_image

    def node_source():
        ds = pydicom.dcmread(path)
        read_dicom_image(ds)          # the node decodes the source for inference before building
        return ds

    from types import SimpleNamespace

    from cephnode.node.result_objects import build_result_objects

    pack = SimpleNamespace(name=PACK_NAME, version=PACK_VERSION)
    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def timed(row, cpu_row, key, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        row[key] = (time.perf_counter() - t) * 1000
        cpu_row[key] = (time.process_time() - c) * 1000
        return out

    for run in range(runs + 1):          # run 0 warms imports and caches; not counted
        row, cpu_row = {}, {}
        analysis = timed(row, cpu_row, "analysis", lambda: analyse(result))
        for kind in ALL_OUTPUT_KINDS:
            source = node_source()
            # no image given: the SC decodes the source itself, as `cephnode report` does
            built = timed(row, cpu_row, str(kind), lambda: build_output(
                kind, source, result, analysis, pack_name=PACK_NAME, pack_version=PACK_VERSION))
            if built is not None:
                timed(row, cpu_row, f"{kind}_encode", lambda: file_bytes(built))   # as the node writes it
        source = pydicom.dcmread(path)
        image = read_dicom_image(source)
        # the sheet as the node builds it: from the image it decoded for inference
        timed(row, cpu_row, "sc_given_image", lambda: build_output(
            OutputKind.SC, source, result, analysis, pack_name=PACK_NAME, pack_version=PACK_VERSION, image=image))

        def node_job():
            built = build_result_objects(source, result, kinds=ALL_OUTPUT_KINDS, pack=pack, image=image)
            return [file_bytes(ds) for ds in built.objects.values()]

        timed(row, cpu_row, "node_job_objects", node_job)

        def node_job_no_sc():
            built = build_result_objects(source, result, kinds=(OutputKind.SR, OutputKind.SEG, OutputKind.GSPS), pack=pack, image=image)
            return [file_bytes(ds) for ds in built.objects.values()]

        timed(row, cpu_row, "node_job_objects_no_sc", node_job_no_sc)
        source = node_source()
        timed(row, cpu_row, "build_outputs_all",
              lambda: build_outputs(source, result, pack_name=PACK_NAME, pack_version=PACK_VERSION))
        if run:
            for k, v in row.items():
                timings.setdefault(k, []).append(v)
            for k, v in cpu_row.items():
                cpu.setdefault(k, []).append(v)
    return {"ms": {k: _stats(v) for k, v in timings.items()}, "cpu_ms": {k: _stats(v) for k, v in cpu.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--case", default="001")
    ap.add_argument("--sizes", default="isbi,large")
    args = ap.parse_args(argv)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))   # no per-run info lines
    out = {"runs": args.runs, "case": args.case, "load_average_start": list(os.getloadavg()), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            path, result, shape = make_case(args.case, size, Path(tmp))
            out["sizes"][size] = {"rows_columns": list(shape), **bench_size(path, result, args.runs)}
    out["load_average_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
