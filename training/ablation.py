"""The priors ablation: the same Stage 1 network, seed and schedule trained with Stage 0 priors
and with zeroed priors, both evaluated on test1 through the same pipeline."""
from __future__ import annotations

import shutil
from pathlib import Path

from cephnode.training import cache, evaluate, export, pipeline_train, stage0, stage1
from cephnode.training.manifest import write_pack_manifest
from cephnode.training.release import PACK_NAME


def run_ablation(*, epochs: int, device: str, threads: int | None, out: Path, checkpoints: Path | None = None,
                 work: Path | None = None, reschedule: bool = False, bar_factory=None) -> str:
    """Train and evaluate both arms; writes ablation_<arm>.json/png and ablation.md to `out`
    and returns the markdown table."""
    ckpt = checkpoints or cache.cache_dir() / "ckpt"
    work = work or cache.cache_dir() / "ablation"
    ds = cache.load()
    tr = ds.split == "train"
    s0cfg = stage0.Stage0Config()
    nets = pipeline_train.stage0_all(ds, ckpt, s0cfg, bar_factory=bar_factory)
    rows = {}
    for arm in ("priors", "none"):
        cfg = stage1.Stage1Config(arm=arm, epochs=epochs)
        stage1.train(ds.images[tr], ds.landmarks[tr], cfg, ckpt, device=device, progress=True, reschedule=reschedule)
        arm_nets = dict(nets)
        arm_nets["stage1"] = stage1.load_trained(ckpt / f"stage1_{arm}.pt")
        root = work / arm
        if root.exists():
            shutil.rmtree(root)
        export.export_pack(arm_nets, root)
        write_pack_manifest(root, s0cfg, cfg, name=f"{PACK_NAME}-ablation-{arm}", log_dir=ckpt.parent)
        rep = evaluate.evaluate(split="test1", models_dir=root, device="cpu", threads=threads)
        evaluate.write_report(rep, out, f"ablation_{arm}")
        rows[arm] = rep
    table = ablation_table(rows, epochs)
    (out / "ablation.md").write_text(table + "\n")
    return table


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
