"""`cephnode infer` and `cephnode models list|verify|fetch`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cephnode.domain.devices import DEVICES
from cephnode.domain.landmarks import CANONICAL_25
from cephnode.models import models_root
from cephnode.inference.pack import MANIFEST, PackError, default_pack_dir, load_pack


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="trace lateral cephalograms (PNG/JPEG/TIFF/BMP/DICOM files)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--models", type=Path, default=None, help="model pack folder (default: $CEPHNODE_MODELS or models/default)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write all results as a JSON list")
    p.add_argument("--overlay", type=Path, default=None, metavar="DIR", help="write <name>.overlay.png tracings here")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session")
    p.add_argument("--spacing", type=float, nargs=2, default=None, metavar=("ROW_MM", "COL_MM"),
                   help="pixel spacing for raster files (DICOM files carry their own)")
    p.set_defaults(func=cmd_infer)

    m = sub.add_parser("models", help="list, verify or fetch model packs")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    ml = msub.add_parser("list", help="model packs under models/ (and $CEPHNODE_MODELS)")
    ml.add_argument("--root", type=Path, default=models_root())
    ml.set_defaults(func=cmd_models_list)
    mv = msub.add_parser("verify", help="check sizes, checksums and ONNX shapes of a pack")
    mv.add_argument("pack", nargs="?", type=Path, default=None)
    mv.add_argument("--device", default="cpu", choices=DEVICES)
    mv.set_defaults(func=cmd_models_verify)
    from cephnode.inference.fetch import DEFAULT_REPO_ID, DEFAULT_REVISION

    mf = msub.add_parser("fetch", help="download the published CephTrace v4 weights (CC BY-NC-SA 4.0)")
    mf.add_argument("--dest", type=Path, default=models_root() / "cephtrace-v4")
    mf.add_argument("--repo-id", default=DEFAULT_REPO_ID)
    mf.add_argument("--revision", default=DEFAULT_REVISION)
    mf.add_argument("--endpoint", default=None, help="hub URL (default: $HF_ENDPOINT or huggingface.co)")
    mf.set_defaults(func=cmd_models_fetch)


def _table(result) -> str:
    o = result.orientation
    pose = f"orientation k={o.rotation_k} flip={o.flipped}" + (" inverted" if o.inverted else "") + f" ({o.source}"
    pose += f", {o.verification} after {o.hypotheses_tried} poses)" if o.verification else ")"
    lines = [f"{result.image_name}  {result.width}x{result.height}  pack {result.pack_name} {result.pack_version}  "
             f"{pose}  {result.timings_ms.get('total', 0):.0f} ms"]
    qc = result.qc
    doubtful = set(qc.doubtful_landmarks) if qc else set()
    if qc is not None:
        lines.append(f"  QC: {qc.verdict.upper()}" + ("" if qc.verdict != "fail" else
                                                       "  (automated tracing failed: needs manual tracing)"))
        lines += [f"    - {r}" for r in qc.reasons]
    if result.degraded:
        lines.append(f"  DEGRADED: Stage 0 phase {result.stage0.failed_phase} failed: {result.stage0.reason}")
    lines.append(f"  {'landmark':<9} {'x':>9} {'y':>9} {'conf':>6}  {'level':<11} note")
    for lm in result.landmarks:
        x = f"{lm.x:9.1f}" if lm.x is not None else f"{'-':>9}"
        y = f"{lm.y:9.1f}" if lm.y is not None else f"{'-':>9}"
        note = ("DOUBTFUL (QC)  " if lm.name in doubtful else "") + lm.note
        lines.append(f"  {lm.name:<9} {x} {y} {lm.confidence:6.2f}  {lm.level:<11} {note}")
    return "\n".join(lines)


def cmd_infer(args: argparse.Namespace) -> int:
    from cephnode.dicom_io.image_files import read_file
    from cephnode.inference.imageio import ImageError
    from cephnode.inference.overlay import write_overlay
    from cephnode.inference.pipeline import Pipeline

    try:
        pipe = Pipeline.load(args.models, device=args.device, threads=args.threads)
    except PackError as exc:
        print(f"cephnode infer: {exc}", file=sys.stderr)
        return 2
    results, failures = [], 0
    for path in args.files:
        try:
            t0 = time.perf_counter()
            f = read_file(path)                  # decoded once: tracing and overlay share it
            read_ms = (time.perf_counter() - t0) * 1e3
            spacing = f.pixel_spacing_mm or (tuple(args.spacing) if args.spacing else None)
            r = pipe.run(f.pixels, pixel_spacing_mm=spacing, patient_orientation=f.patient_orientation, name=path.name)
            r.timings_ms = {"read_file": round(read_ms, 3), **r.timings_ms}
        except ImageError as exc:
            print(f"cephnode infer: {exc}", file=sys.stderr)
            failures += 1
            continue
        results.append(r)
        print(_table(r))
        print()
        if args.overlay:
            out = write_overlay(f.pixels, r, args.overlay / f"{path.stem}.overlay.png")
            print(f"  overlay: {out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    return 1 if failures else 0


def _pack_dirs(root: Path) -> list[Path]:
    found = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and ((d / MANIFEST).exists() or (d / "stage1").is_dir()):
                found.append(d)
    env_default = default_pack_dir()
    if env_default.is_dir() and env_default.resolve() not in {d.resolve() for d in found}:
        found.append(env_default)
    return found


def cmd_models_list(args: argparse.Namespace) -> int:
    dirs = _pack_dirs(args.root)
    if not dirs:
        print(f"no model packs under {args.root}")
        return 0
    default = default_pack_dir().resolve()
    for d in dirs:
        mark = "*" if d.resolve() == default else " "
        try:
            pack = load_pack(d, verify_hash=False)
        except PackError as exc:
            print(f"{mark} {d}: UNUSABLE: {exc}")
            continue
        size = sum(p.stat().st_size for p in pack.files.values()) / 1e6
        rules = f", {len(pack.rules)} by rule" if pack.rules else ""
        print(f"{mark} {d}: {pack.name} {pack.version}, {size:.1f} MB, predicts {len(pack.predicted)}/25{rules}")
    print("(* = default pack)")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from cephnode.inference.sessions import ModelSessions

    try:
        pack = load_pack(args.pack)
        sessions = ModelSessions(pack, device=args.device, threads=1)
    except PackError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"OK {pack.root}: {pack.name} {pack.version}")
    for key, path in pack.files.items():
        io = sessions.io[key]
        print(f"  {path.relative_to(pack.root)}: {path.stat().st_size / 1e6:.1f} MB, input {io.input_name} "
              f"{tuple(io.input_shape)} -> {tuple(io.output_shape)}, providers {sessions.providers[key]}")
    if pack.rules:
        print(f"  by stated rule: {', '.join(f'{n} ({r})' for n, r in sorted(pack.rules.items()))}")
    not_predicted = [n for n in CANONICAL_25 if n not in pack.predicted and n not in pack.rules]
    if not_predicted:
        print(f"  not predicted: {', '.join(not_predicted)}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from cephnode.inference.fetch import FetchError, fetch_published

    try:
        dest = fetch_published(args.dest, repo_id=args.repo_id, revision=args.revision, endpoint=args.endpoint)
        load_pack(dest)
    except (FetchError, PackError) as exc:
        print(f"cephnode models fetch: {exc}", file=sys.stderr)
        return 1
    print(f"fetched {args.repo_id}@{args.revision} into {dest}; use it with --models {dest} "
          f"(licence CC BY-NC-SA 4.0: non-commercial use only)")
    return 0
