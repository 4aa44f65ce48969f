"""`cephnode report FILE.dcm --out DIR`: the objects the node would send back, for one image,
written to files without any network, so an admin can look at them (and at a PNG of the
tracing sheet) before pointing a modality at the node."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pydicom

from cephnode.domain.devices import DEVICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the SR/SEG/GSPS/tracing sheet for one DICOM image (no network)")
    p.add_argument("file", type=Path, metavar="FILE.dcm")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the objects (created)")
    p.add_argument("--models", type=Path, default=None, help="model pack folder (default: $CEPHNODE_MODELS or models/default)")
    p.add_argument("--kinds", default="sr,seg,gsps,sc", help="comma-separated subset of sr,seg,gsps,sc (default: all)")
    p.add_argument("--result", type=Path, default=None, metavar="RESULT.json",
                   help="use landmarks from this InferenceResult JSON (e.g. from `cephnode infer --json`) "
                        "instead of running the models")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_report)


def _load_result(path: Path, source: pydicom.Dataset):
    from cephnode.domain.result import InferenceResult

    data = json.loads(path.read_text())
    if isinstance(data, list):
        uid = str(source.SOPInstanceUID)
        matches = [d for d in data if d.get("image_name") in (uid, str(source.filename) if hasattr(source, "filename") else "")]
        if len(matches) != 1 and len(data) != 1:
            raise SystemExit(f"{path}: {len(data)} results, none named {uid}")
        data = matches[0] if matches else data[0]
    return InferenceResult.from_dict(data)


def cmd_report(args: argparse.Namespace) -> int:
    import cv2

    from cephnode.dicom_io import qc_content
    from cephnode.dicom_io.outputs import build_outputs, gated
    from cephnode.domain.outputs import OutputKind, parse_kinds
    from cephnode.dicom_io.pixels import PixelDataError, read_dicom_image

    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as exc:
        print(f"cephnode report: {exc}", file=sys.stderr)
        return 2
    if not kinds:
        print("cephnode report: --kinds names no object", file=sys.stderr)
        return 2
    source = pydicom.dcmread(str(args.file))
    try:
        image = read_dicom_image(source)
    except PixelDataError as exc:
        print(f"cephnode report: {args.file}: {exc}", file=sys.stderr)
        return 1

    if args.result is not None:
        result = _load_result(args.result, source)
        pack_name, pack_version = result.pack_name, result.pack_version
    else:
        from cephnode.inference.pack import PackError
        from cephnode.inference.pipeline import Pipeline

        try:
            pipeline = Pipeline.load(args.models, device=args.device, threads=args.threads)
        except (PackError, FileNotFoundError) as exc:
            print(f"cephnode report: model pack: {exc}", file=sys.stderr)
            return 1
        result = pipeline.run(image.pixels, pixel_spacing_mm=image.pixel_spacing_mm,
                              patient_orientation=image.patient_orientation, name=str(source.SOPInstanceUID))
        pack_name, pack_version = pipeline.pack.name, pipeline.pack.version

    shown, analysis = gated(result)      # a failed tracing is withheld and not measured
    objects = build_outputs(source, shown, kinds=kinds, pack_name=pack_name, pack_version=pack_version,
                            analysis=analysis)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in objects.items():
        path = out / f"{kind}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append((str(kind), path))
        if kind is OutputKind.SC:
            png = out / f"tracing-sheet-{ds.SOPInstanceUID}.png"
            cv2.imwrite(str(png), cv2.cvtColor(ds.pixel_array, cv2.COLOR_RGB2BGR))
            written.append(("png", png))
    (out / "result.json").write_text(result.to_json(indent=1))
    written.append(("json", out / "result.json"))

    print(f"{args.file}: {len(analysis.computed)} measurements, {len(analysis.omitted)} left out; "
          f"pixel spacing {image.pixel_spacing_mm or 'unknown'} ({image.spacing_source}); "
          f"pack {pack_name} {pack_version}{'; DEGRADED' if result.degraded else ''}")
    if result.qc is not None and result.qc.verdict != "pass":
        print(f"  QC {result.qc.verdict.upper()}" + (": tracing withheld, needs manual tracing" if qc_content.failed(result)
                                                     else "") + "".join(f"\n    - {r}" for r in result.qc.reasons))
    for c in analysis.classifications:
        print(f"  {c.name}: {c.category or 'not determined'}")
    for kind, path in written:
        print(f"  {kind:5s} {path}")
    return 0
