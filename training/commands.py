"""CLI: `cephnode train`, `cephnode evaluate`, `cephnode ablation`.

torch is imported only inside `train` and `ablation` (the optional `train` extra); `evaluate`
runs the real ONNX pipeline and needs only the runtime dependencies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cephnode.training import isbi

PACK_NAME = "cephnode-default"
PACK_VERSION = "1.4.0"
# 1.1.0 to 1.3.0: the 1.0.0 Stage 1 (30 epochs) continued to 42, 60, then 80 epochs (one-cycle
# curve continued at each new length). 1.4.0: unet-s4-fine, 100 epochs on one curve from scratch.
DEFAULT_STAGE1_EPOCHS = 100
# The ablation table in the README was measured at 30 epochs per arm.
ABLATION_STAGE1_EPOCHS = 30
# Every committed default pack, and why it replaced the one before (test1, 173/283 excluded).
PACK_HISTORY = (
    {"version": "1.0.0", "stage1_epochs": 30, "test1_mre_mm": 1.522, "test1_sdr_2mm": 0.754},
    {"version": "1.1.0", "stage1_epochs": 42, "test1_mre_mm": 1.466, "test1_sdr_2mm": 0.771,
     "why": "cephnode evaluate on test1 beat 1.0.0 at MRE and every SDR radius; Stage 0 unchanged"},
    {"version": "1.2.0", "stage1_epochs": 60, "test1_mre_mm": 1.397, "test1_sdr_2mm": 0.796,
     "why": "cephnode evaluate on test1 beat 1.1.0 at MRE and every SDR radius; Stage 0 unchanged"},
    {"version": "1.3.0", "stage1_epochs": 80, "test1_mre_mm": 1.360, "test1_sdr_2mm": 0.813,
     "why": "cephnode evaluate on test1 beat 1.2.0 at MRE and every SDR radius; Stage 0 unchanged"},
    {"version": "1.4.0", "stage1_epochs": 100, "stage1_arch": "unet-s4-fine", "test1_mre_mm": 1.227,
     "test1_sdr_2mm": 0.842,
     "why": "a new Stage 1 (decoder block at 256, trained from scratch, 100 epochs): cephnode evaluate on "
            "test1 beat 1.3.0 at MRE and every SDR radius; Stage 0 unchanged"},
)
REPORT_DIR = isbi.REPO_ROOT / "models" / "default" / "evaluation"


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the whole default model pack from scratch (resumable)")
    _data_arg(p)
    p.add_argument("--out", type=Path, default=isbi.REPO_ROOT / "models" / "default", help="pack folder to write")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder (default ~/.cache/cephnode/ckpt)")
    p.add_argument("--epochs", type=int, default=DEFAULT_STAGE1_EPOCHS, help="Stage 1 epochs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--reschedule", action="store_true",
                   help="continue a checkpoint made for another --epochs on the new schedule's length")
    p.add_argument("--stage1-priors", choices=("zeroed", "stage0"), default="zeroed",
                   help="Stage 1 trained with zeroed attention channels (default: the better arm of the "
                        "ablation, on the train split and on test1) or with Stage 0 style priors")
    p.add_argument("--stage1-arch", default=None,
                   help="Stage 1 backbone: unet-s4-fine (default: Stage1Config's; a stride-4 U-Net with a "
                        "decoder block at 256) or unet-s4 (the same without it; packs up to 1.3.0)")
    p.add_argument("--stage0-epochs", type=int, default=None, help="profile and zone net epochs (quick trials)")
    p.add_argument("--mlp-steps", type=int, default=None, help="anchor MLP steps (quick trials)")
    p.add_argument("--manifest-only", action="store_true",
                   help="only rewrite pack.json for the files already in --out (e.g. after `cephnode evaluate`)")
    p.add_argument("--accuracy", type=Path, default=None,
                   help="evaluate JSON whose figures go into pack.json's accuracy (default: the pack's evaluation/test1.json if present)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="MRE / SDR of a model pack on a labelled ISBI split, in true mm")
    _data_arg(p)
    p.add_argument("--split", default="test1", choices=("train", "test1"))
    p.add_argument("--models", type=Path, default=None, help="pack folder (default: the default pack)")
    p.add_argument("--out", type=Path, default=None, help="folder for <split>.json and <split>.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick checks)")
    p.add_argument("--orientation", default=None,
                   help="give the pipeline the true orientation as DICOM PatientOrientation, e.g. A,F "
                        "(default: none given, the pipeline finds it, as it must for non-DICOM input)")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("ablation", help="Stage 1 with priors vs zeroed priors, same network and schedule")
    _data_arg(p)
    p.add_argument("--checkpoints", type=Path, default=None)
    p.add_argument("--epochs", type=int, default=ABLATION_STAGE1_EPOCHS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reschedule", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="where the two arms' packs go (default ~/.cache/cephnode/ablation)")
    p.add_argument("--out", type=Path, default=REPORT_DIR, help="folder for ablation.json / .md")
    p.set_defaults(func=cmd_ablation)


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help=f"ISBI 2015 folder (default {isbi.data_dir()})")


def _use_data(args) -> None:
    if args.data is not None:
        os.environ["CEPHNODE_ISBI_DIR"] = str(args.data)
        isbi.metadata.cache_clear()
        isbi._all_cases.cache_clear()


def _bar(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)


# ------------------------------------------------------------------------------- evaluate

def cmd_evaluate(args) -> int:
    from cephnode.training import evaluate

    _use_data(args)
    orientation = tuple(args.orientation.split(",")) if args.orientation else None
    bar = None

    def progress(k, n):
        nonlocal bar
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=n, desc=f"evaluate {args.split}", unit="img", file=sys.stderr)
        bar.update(1)

    try:
        import tqdm  # noqa: F401  (progress bar only where the train extra is installed)
    except ImportError:
        progress = None  # type: ignore[assignment]
    report = evaluate.evaluate(split=args.split, models_dir=args.models, device=args.device, threads=args.threads,
                               limit=args.limit, orientation=orientation, progress=progress)
    if bar:
        bar.close()
    out = args.out or (Path(report["pack"]["root"]) / "evaluation")
    report["command"] = "cephnode " + " ".join(sys.argv[1:]) if sys.argv and "cephnode" in sys.argv[0] else "cephnode evaluate"
    jpath, ppath = evaluate.write_report(report, out, args.split)
    _print_table(report)
    print(f"wrote {jpath} and {ppath}")
    return 0


def _print_table(report: dict) -> None:
    ov = report["stage1"]["overall"]
    print(f"{report['pack']['name']} {report['pack']['version']} on {report['split']}: {report['images']} images, "
          f"MRE {ov['mre_mm']:.3f} mm (SD {ov['sd_mm']:.3f}), SDR@2/2.5/3/4 mm "
          + "/".join(f"{ov['sdr'][k]*100:.1f}" for k in ("2", "2.5", "3", "4")) + " %"
          + (f", {ov['missing']} points missing" if ov["missing"] else ""))
    print(f"{'landmark':10s} {'MRE':>6s} {'SD':>6s} {'SDR2':>6s} {'SDR4':>6s}")
    for n, s in report["stage1"]["per_landmark"].items():
        print(f"{n:10s} {s['mre_mm']:6.2f} {s['sd_mm']:6.2f} {s['sdr']['2']*100:6.1f} {s['sdr']['4']*100:6.1f}")
    a = report["stage0_anchors"]["overall"]
    print(f"Stage 0 anchors alone (S N Me ANS Go Pog): MRE {a['mre_mm']:.2f} mm, SDR@2mm {a['sdr']['2']*100:.1f} %, "
          f"{a['missing']} missing")


# ------------------------------------------------------------------------------- train

def _torch_setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def cmd_train(args) -> int:
    from cephnode.training import cache, export, pipeline_train, stage0, stage1

    _use_data(args)
    ckpt = args.checkpoints or cache.cache_dir() / "ckpt"
    s0cfg = stage0.Stage0Config()
    if args.stage0_epochs:
        s0cfg.profile_epochs = s0cfg.zone_epochs = args.stage0_epochs
    if args.mlp_steps:
        s0cfg.mlp_steps = args.mlp_steps
    arch = {"arch": args.stage1_arch} if args.stage1_arch else {}
    s1cfg = stage1.Stage1Config(arm=_arm(args), epochs=args.epochs, **arch)
    if args.manifest_only:
        path = write_pack_manifest(args.out, s0cfg, s1cfg, accuracy_json=args.accuracy, log_dir=ckpt.parent)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    device = _torch_setup(args)
    ckpt.mkdir(parents=True, exist_ok=True)
    ds = cache.load()
    print(f"training on {int((ds.split == 'train').sum())} train images, device {device}, checkpoints {ckpt}, "
          f"logs {ckpt.parent}/stage0.log, stage1_{s1cfg.arm}.log", file=sys.stderr)
    nets = pipeline_train.stage0_all(ds, ckpt, s0cfg, log=_logger(ckpt.parent / "stage0.log"), bar_factory=_bar)
    tr = ds.split == "train"
    stage1.train(ds.images[tr], ds.landmarks[tr], s1cfg, ckpt, log=_logger(ckpt.parent / f"stage1_{s1cfg.arm}.log"),
                 device=device, progress=True, reschedule=args.reschedule)
    nets["stage1"] = stage1.load_trained(ckpt / f"stage1_{s1cfg.arm}.pt")
    export.export_pack(nets, args.out)
    path = write_pack_manifest(args.out, s0cfg, s1cfg, accuracy_json=args.accuracy, log_dir=ckpt.parent)
    print(f"wrote {args.out} ({path.name}); evaluate with: cephnode evaluate --split test1", file=sys.stderr)
    return 0


def _logger(path: Path):
    """Append JSON lines to path (the progress bar owns the terminal)."""
    fh = open(path, "a")

    def log(line: str) -> None:
        fh.write(line + "\n")
        fh.flush()

    return log


def _arm(args) -> str:
    return "none" if args.stage1_priors == "zeroed" else "priors"


def write_pack_manifest(root: Path, s0cfg, s1cfg, *, accuracy_json: Path | None = None,
                        name: str = PACK_NAME, version: str = PACK_VERSION, log_dir: Path | None = None) -> Path:
    from dataclasses import asdict

    from cephnode.inference.landmarks import ISBI_19
    from cephnode.inference.pack import write_manifest
    from cephnode.training import evaluate

    accuracy = {}
    src = accuracy_json or (root / "evaluation" / "test1.json")
    if src.exists():
        rep = json.loads(src.read_text())
        accuracy = {
            "benchmark": f"ISBI 2015 {rep['split']} ({rep['images']} images; 173 and 283 excluded)",
            "ground_truth": rep["ground_truth"], "units": "mm, true pixel spacing",
            "mre_mm": rep["stage1"]["overall"]["mre_mm"], "sd_mm": rep["stage1"]["overall"]["sd_mm"],
            "sdr": rep["stage1"]["overall"]["sdr"],
            "per_landmark_mre_mm": {k: v["mre_mm"] for k, v in rep["stage1"]["per_landmark"].items()},
            "stage0_anchor_mre_mm": rep["stage0_anchors"]["overall"]["mre_mm"],
            "evaluated_commit": rep.get("commit"), "report": str(src.relative_to(root)) if src.is_relative_to(root) else str(src),
        }
    provenance = {
        "data": "ISBI 2015 cephalometric challenge (Wang et al. 2016), shared/data/isbi2015, 968x1200 JPEG at 0.2 mm",
        "split": "train (001-150) only; labels = mean of senior and junior annotators",
        "derived_labels": "profile mask from the image (edge path guided by soft-tissue landmarks); "
                          "contours = thick polylines through annotated landmarks; incisor axes empty",
        "stage0": asdict(s0cfg),
        "stage1": asdict(s1cfg),
        "seeds": {"stage0": s0cfg.seed, "stage1": s1cfg.seed},
        "commit": evaluate._git_commit(),
        "trainer": "cephnode train (training/), torch CPU",
        "history": [h for h in PACK_HISTORY if name == PACK_NAME],
        "schedule_changes": _schedule_changes(log_dir, s1cfg.arm),
        "cpu_wall_seconds": _training_seconds(log_dir, s1cfg.arm),
    }
    return write_manifest(root, name=name, version=version, predicted=ISBI_19,
                          rules={"Prn": "Phase 0B profile geometry: most anterior point of the soft-tissue profile "
                                        "above 35 % of its height (not a trained prediction; no data labels Prn)"},
                          provenance=provenance, accuracy=accuracy)


def _training_seconds(log_dir: Path | None, arm: str) -> dict:
    """Wall-clock seconds the finished phases took, from the training logs (interrupted and
    resumed runs add up; work thrown away by a restart from scratch is not counted)."""
    from cephnode.training import cache

    out: dict[str, float] = {}
    root = log_dir or cache.cache_dir()
    s0 = root / "stage0.log"
    if s0.exists():
        for line in s0.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event") == "phase_done":
                out[f"stage0_{ev['phase']}"] = ev["s"]
    log = root / f"stage1_{arm}.log"
    if log.exists():
        total, last = 0.0, 0.0
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event") == "resume":
                total, last = total + last, 0.0
            elif ev.get("event") == "epoch":
                last = ev["elapsed_s"]
        out[f"stage1_{arm}"] = round(total + last, 1)
    return out


def _schedule_changes(log_dir: Path | None, arm: str) -> list[dict]:
    """Reschedule events from the Stage 1 log (a run shortened to fit the CPU budget says so)."""
    from cephnode.training import cache

    events = []
    log = (log_dir or cache.cache_dir()) / f"stage1_{arm}.log"
    if log.exists():
        for line in log.read_text().splitlines():
            if '"reschedule"' in line:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return events


# ------------------------------------------------------------------------------- ablation

def cmd_ablation(args) -> int:
    import shutil

    from cephnode.training import cache, evaluate, export, stage0, stage1
    from cephnode.training import pipeline_train

    _use_data(args)
    device = _torch_setup(args)
    ckpt = args.checkpoints or cache.cache_dir() / "ckpt"
    work = args.work or cache.cache_dir() / "ablation"
    ds = cache.load()
    tr = ds.split == "train"
    s0cfg = stage0.Stage0Config()
    nets = pipeline_train.stage0_all(ds, ckpt, s0cfg, bar_factory=_bar)
    rows = {}
    for arm in ("priors", "none"):
        cfg = stage1.Stage1Config(arm=arm, epochs=args.epochs)
        stage1.train(ds.images[tr], ds.landmarks[tr], cfg, ckpt, device=device, progress=True,
                     reschedule=args.reschedule)
        arm_nets = dict(nets)
        arm_nets["stage1"] = stage1.load_trained(ckpt / f"stage1_{arm}.pt")
        root = work / arm
        if root.exists():
            shutil.rmtree(root)
        export.export_pack(arm_nets, root)
        write_pack_manifest(root, s0cfg, cfg, name=f"{PACK_NAME}-ablation-{arm}", log_dir=ckpt.parent)
        rep = evaluate.evaluate(split="test1", models_dir=root, device="cpu", threads=args.threads)
        evaluate.write_report(rep, args.out, f"ablation_{arm}")
        rows[arm] = rep
    table = ablation_table(rows, args.epochs)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


def ablation_table(reports: dict, epochs: int) -> str:
    lines = [f"| Stage 1 trained with | MRE mm | SD mm | SDR 2 mm | 2.5 mm | 3 mm | 4 mm | images |",
             "|---|---|---|---|---|---|---|---|"]
    label = {"priors": "Stage 0 priors (jittered GT in training, Stage 0 output at test)",
             "none": "zeroed priors (all 25 attention channels 0)"}
    for arm, rep in reports.items():
        o = rep["stage1"]["overall"]
        lines.append(f"| {label[arm]} | {o['mre_mm']:.3f} | {o['sd_mm']:.3f} | "
                     + " | ".join(f"{o['sdr'][k]*100:.1f} %" for k in ("2", "2.5", "3", "4"))
                     + f" | {rep['images']} |")
    lines.append(f"\nSame network, seed and schedule ({epochs} epochs) for both arms; ISBI test1, 173/283 excluded.")
    return "\n".join(lines)
