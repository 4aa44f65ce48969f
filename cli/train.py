"""CLI: `cephnode train`, `cephnode evaluate`, `cephnode ablation`.

torch is imported only inside `train` and `ablation` (the optional `train` extra); `evaluate`
runs the real ONNX pipeline and needs only the runtime dependencies.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cephnode.inference import contract
from cephnode.domain.devices import DEVICES
from cephnode.models import default_pack_dir
from cephnode.training import TORCH_DEVICES, isbi
from cephnode.training.release import ABLATION_STAGE1_EPOCHS, DEFAULT_STAGE1_EPOCHS, report_dir


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the whole default model pack from scratch (resumable)")
    _data_arg(p)
    p.add_argument("--out", type=Path, default=default_pack_dir(), help="pack folder to write")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder (default ~/.cache/cephnode/ckpt)")
    p.add_argument("--epochs", type=int, default=DEFAULT_STAGE1_EPOCHS, help="Stage 1 epochs")
    p.add_argument("--device", default="auto", choices=TORCH_DEVICES)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--reschedule", action="store_true",
                   help="continue a checkpoint made for another --epochs on the new schedule's length")
    p.add_argument("--stage1-priors", choices=("zeroed", "stage0"), default="zeroed",
                   help="Stage 1 trained with zeroed attention channels (default: the better arm of the "
                        "ablation, on the train split and on test1) or with Stage 0 style priors")
    p.add_argument("--stage1-arch", default=None,
                   help="Stage 1 backbone: unet-s4-fine (default: Stage1Config's; a stride-4 U-Net with a "
                        "decoder block at 256) or unet-s4 (the same without it; packs up to 1.3.0)")
    p.add_argument("--device-shift", type=float, default=0.0, metavar="P",
                   help="show this share of Stage 1 samples through training.augment.device_shift "
                        "(other devices' intensity curves, blur/sharpening, noise, coarser pixels, "
                        "collimation, labels); default 0: the 1.4.0 recipe")
    p.add_argument("--val", type=int, default=0, metavar="N",
                   help="hold the last N train images (by number) out of Stage 1 training and log their "
                        "error after every epoch (stage1_<arm>.log: val_mre mm, val_sdr2), to choose "
                        "recipes on; test1 is never used for that. Default 0: train on all 150")
    p.add_argument("--finetune", type=Path, default=None, metavar="PACK",
                   help="continue the Stage 1 of PACK (same architecture; BatchNorm statistics frozen) instead "
                        "of training from scratch; Stage 0 is copied from PACK unchanged")
    p.add_argument("--train-on", choices=("train", "all"), default="train",
                   help="Stage 1 images: train (001-150, the benchmark protocol) or all (001-300: a pack to "
                        "ship, whose test1 figure is then not a held-out figure)")
    p.add_argument("--lr", type=float, default=None, help="Stage 1 peak learning rate (one-cycle)")
    p.add_argument("--version", default=None, help="pack version written into pack.json")
    p.add_argument("--pack-test-time-shifts", default=None, metavar="DX:DY,...",
                   help="Stage 1 test-time shifts written into pack.json (chosen on --split val), e.g. 4:4,-4:-4")
    p.add_argument("--protocol", type=Path, default=None, metavar="JSON",
                   help="with --manifest-only for a pack trained on all 300: the protocol model's (001-150) "
                        "test1 evaluate JSON, whose held-out figures become pack.json's accuracy")
    p.add_argument("--stage0-epochs", type=int, default=None, help="profile and zone net epochs (quick trials)")
    p.add_argument("--mlp-steps", type=int, default=None, help="anchor MLP steps (quick trials)")
    p.add_argument("--manifest-only", action="store_true",
                   help="only rewrite pack.json for the files already in --out (e.g. after `cephnode evaluate`)")
    p.add_argument("--accuracy", type=Path, default=None,
                   help="evaluate JSON whose figures go into pack.json's accuracy (default: the pack's evaluation/test1.json if present)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("train-refiner", help="train the landmark refiner into a pack (resumable)")
    _data_arg(p)
    p.add_argument("--pack", type=Path, required=True, help="pack folder the refiner is added to (its pack.json is updated)")
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint file (default ~/.cache/cephnode/refiner-<train-on>.pt)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train-on", choices=("train", "all"), default="train",
                   help="train: ISBI train 001-150 (the protocol); all: the 300 labelled images")
    p.add_argument("--val", type=int, default=0, metavar="N", help="hold the last N train images out and score them each epoch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--weight", type=float, default=1.0, help="final = Stage 1 + WEIGHT x (refined - Stage 1); choose on val")
    p.add_argument("--min-peak", type=float, default=0.0, help="refined positions with a lower peak are not used")
    p.add_argument("--max-move", type=float, default=32.0, help="nor those further than this from Stage 1's (1024-grid px)")
    p.add_argument("--settings-only", action="store_true", help="only rewrite the refinement settings in pack.json")
    p.set_defaults(func=cmd_train_refiner)

    p = subparsers.add_parser("evaluate", help="MRE / SDR of a model pack on a labelled ISBI split, in true mm")
    _data_arg(p)
    p.add_argument("--split", default="test1", choices=("train", "val", "test1"),
                   help="val: the last 20 train images (131-150), the split `cephnode train --val 20` holds "
                        "out; choose recipes on it, report test1 last")
    p.add_argument("--test-time-shifts", default=None, metavar="DX:DY,...",
                   help="Stage 1 test-time shifts in 512-grid pixels, e.g. 4:4,-4:-4, or 'none' "
                        "(default: what the pack's pack.json says)")
    p.add_argument("--refine", default="pack", metavar="pack|none|WEIGHT",
                   help="the landmark refiner: as the pack says, off, or at this weight (0-1)")
    p.add_argument("--models", type=Path, default=None, help="pack folder (default: the default pack)")
    p.add_argument("--out", type=Path, default=None, help="folder for <split>.json and <split>.png")
    p.add_argument("--device", default="auto", choices=DEVICES)
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
    p.add_argument("--device", default="auto", choices=TORCH_DEVICES)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reschedule", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="where the two arms' packs go (default ~/.cache/cephnode/ablation)")
    p.add_argument("--out", type=Path, default=report_dir(), help="folder for ablation.json / .md")
    p.set_defaults(func=cmd_ablation)


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help=f"ISBI 2015 folder (default {isbi.data_dir()})")


def _use_data(args) -> None:
    if args.data is not None:
        os.environ["CEPHNODE_ISBI_DIR"] = str(args.data)
        isbi.forget_loaded_data()


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
                               limit=args.limit, orientation=orientation, progress=progress,
                               test_time_shifts=_shifts(args.test_time_shifts), refine=_refine_arg(args.refine))
    if bar:
        bar.close()
    out = args.out or (Path(report["pack"]["root"]) / "evaluation")
    report["command"] = "cephnode " + " ".join(sys.argv[1:]) if sys.argv and "cephnode" in sys.argv[0] else "cephnode evaluate"
    stem = f"{args.split}-in-sample" if report["in_sample"] else args.split
    jpath, ppath = evaluate.write_report(report, out, stem)
    _print_table(report)
    if report["in_sample"]:
        print(f"NOTE: this pack's Stage 1 was trained on the {args.split} images: these figures are not "
              f"held out (pack.json provenance, stage1_trained_on); the held-out figure is the protocol "
              f"model's, in pack.json accuracy")
    print(f"wrote {jpath} and {ppath}")
    return 0


def _refine_arg(text: str) -> float | None:
    """pack -> None (the pack's setting); none -> 0 (off); a number -> that weight."""
    if text == "pack":
        return None
    if text == "none":
        return 0.0
    try:
        w = float(text)
    except ValueError:
        raise SystemExit(f"--refine {text!r}: expected pack, none or a weight between 0 and 1") from None
    if not 0.0 <= w <= 1.0:
        raise SystemExit(f"--refine {text!r}: the weight must be between 0 and 1")
    return w


def cmd_train_refiner(args) -> int:
    from cephnode.training import cache
    from cephnode.training.refine import RefinerConfig, train_into_pack, write_settings

    _use_data(args)
    settings = {"min_peak": args.min_peak, "max_move_px": args.max_move, "weight": args.weight}
    if args.settings_only:
        print(f"wrote {write_settings(args.pack, settings)}", file=sys.stderr)
        return 0
    ckpt = args.checkpoints or cache.cache_dir() / f"refiner-{args.train_on}.pt"
    path = train_into_pack(args.pack, ckpt, RefinerConfig(epochs=args.epochs), splits=TRAIN_ON_SPLITS[args.train_on],
                           val_images=args.val, settings=settings, threads=args.threads,
                           say=lambda text: print(text, file=sys.stderr))
    print(f"wrote {path}; choose the weight with: cephnode evaluate --split val --models {args.pack} --refine W",
          file=sys.stderr)
    return 0


def _shifts(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """DX:DY,... or none -> the shifts, checked as a pack's are (inference.pack.test_time_shifts)."""
    from cephnode.inference.pack import PackError, test_time_shifts

    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return test_time_shifts([item.split(":") for item in text.split(",")], f"test-time shifts {text!r}")
    except PackError as exc:
        raise SystemExit(f"{exc} (expected DX:DY,... with even values, e.g. 4:4,-4:-4, or none)") from None


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

def cmd_train(args) -> int:
    from cephnode.training import cache, stage0, stage1
    from cephnode.training.manifest import write_pack_manifest
    from cephnode.training.pipeline_train import torch_device, train_pack

    _use_data(args)
    ckpt = args.checkpoints or cache.cache_dir() / "ckpt"
    s0cfg = stage0.Stage0Config()
    if args.stage0_epochs:
        s0cfg.profile_epochs = s0cfg.zone_epochs = args.stage0_epochs
    if args.mlp_steps:
        s0cfg.mlp_steps = args.mlp_steps
    arch = {"arch": args.stage1_arch} if args.stage1_arch else {}
    extra = {"lr": args.lr} if args.lr else {}
    if args.finetune:
        extra.update(init_from=str((args.finetune / contract.STAGE1.path).resolve()), freeze_bn=True)
    s1cfg = stage1.Stage1Config(arm=_arm(args), epochs=args.epochs, device_shift=args.device_shift, **arch, **extra)
    if args.finetune and not args.manifest_only:
        from cephnode.training.pipeline_train import finetune_pack

        finetune_pack(args.finetune, args.out, ckpt, s1cfg, device=torch_device(args.device, args.threads),
                      splits=TRAIN_ON_SPLITS[args.train_on], val_images=args.val, reschedule=args.reschedule,
                      say=lambda text: print(text, file=sys.stderr))
        print(f"wrote {args.out}; evaluate with: cephnode evaluate --split val --models {args.out}, then write "
              f"its pack.json with --manifest-only", file=sys.stderr)
        return 0
    if args.manifest_only:
        kw: dict = {"version": args.version} if args.version else {}
        if args.finetune:
            kw.update(_finetune_manifest(args))
            # name the starting point by what it is, not by where it lay on the training machine
            s1cfg.init_from = kw["provenance_extra"]["finetuned_from"]["describe"]
        path = write_pack_manifest(args.out, s0cfg, s1cfg, accuracy_json=args.protocol or args.accuracy,
                                   log_dir=ckpt.parent, **kw)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    path = train_pack(args.out, ckpt, s0cfg, s1cfg, device=torch_device(args.device, args.threads),
                      reschedule=args.reschedule, accuracy_json=args.accuracy, bar_factory=_bar, val_images=args.val,
                      say=lambda text: print(text, file=sys.stderr))
    print(f"wrote {args.out} ({path.name}); evaluate with: cephnode evaluate --split test1", file=sys.stderr)
    return 0


# --train-on -> the ISBI splits Stage 1 trains on
TRAIN_ON_SPLITS = {"train": ("train",), "all": ("train", "test1")}


def _finetune_manifest(args) -> dict:
    """What pack.json says about a fine-tuned pack: which images each stage saw, whether the
    validation images were held out, the test-time shifts, and whose test1 figure it carries."""
    import json

    base = json.loads((args.finetune / "pack.json").read_text())
    images = ("ISBI train 001-150" if args.train_on == "train" else "all 300 labelled ISBI images (train 001-150 "
              "and test1 151-300, 173 and 283 included)")
    if args.val:
        images += f" less the validation images (the last {args.val} train images, held out)"
    split = (f"Stage 1: fine-tuned from {base['name']} {base['version']}'s Stage 1 (trained on ISBI train 001-150) "
             f"on {images}; Stage 0: {base['name']} {base['version']}'s, train 001-150 only; labels = mean of "
             f"senior and junior annotators")
    shifts = _shifts(args.pack_test_time_shifts) or ()
    sha = base["files"][contract.STAGE1.path]["sha256"]
    extra = {"stage1_trained_on": list(TRAIN_ON_SPLITS[args.train_on]), "validation_held_out": bool(args.val),
             "finetuned_from": {"name": base["name"], "version": base["version"], "stage1_sha256": sha,
                                "describe": f"{base['name']} {base['version']} {contract.STAGE1.path} (sha256 {sha[:12]}...)"}}
    if args.protocol:
        rep = json.loads(args.protocol.read_text())
        proto_manifest = Path(rep["pack"]["root"]) / "pack.json"
        proto = json.loads(proto_manifest.read_text()) if proto_manifest.exists() else {}
        extra["protocol_model"] = {
            "version": rep["pack"]["version"], "evaluated_commit": rep.get("commit"),
            "split": proto.get("provenance", {}).get("split"),
            "stage1": proto.get("provenance", {}).get("stage1"),
            "stage1_sha256": proto.get("files", {}).get(contract.STAGE1.path, {}).get("sha256"),
            "stage1_test_time_shifts": rep.get("stage1_test_time_shifts"),
            "refinement": rep.get("refinement"),
            "refiner": proto.get("provenance", {}).get("refiner"),
            "refiner_sha256": proto.get("files", {}).get(contract.REFINER.path, {}).get("sha256"),
            "test1_mre_mm": rep["stage1"]["overall"]["mre_mm"], "test1_sdr": rep["stage1"]["overall"]["sdr"],
        }
        if extra["protocol_model"]["stage1"]:
            extra["protocol_model"]["stage1"]["init_from"] = extra["finetuned_from"]["describe"]
    accuracy_extra = {}
    if args.train_on == "all":
        accuracy_extra["model"] = ("the protocol model (same recipe, Stage 1 trained on train 001-150 only); this "
                                   "pack saw test1 in training, so its own test1 figure is not held out")
    return {"split": split, "provenance_extra": extra, "accuracy_extra": accuracy_extra,
            "settings": {"stage1_test_time_shifts": [list(t) for t in shifts]} if shifts else None}


def _arm(args) -> str:
    return "none" if args.stage1_priors == "zeroed" else "priors"


# ------------------------------------------------------------------------------- ablation

def cmd_ablation(args) -> int:
    from cephnode.training.ablation import run_ablation
    from cephnode.training.pipeline_train import torch_device

    _use_data(args)
    print(run_ablation(epochs=args.epochs, device=torch_device(args.device, args.threads), threads=args.threads,
                       out=args.out, checkpoints=args.checkpoints, work=args.work, reschedule=args.reschedule,
                       bar_factory=_bar))
    return 0
