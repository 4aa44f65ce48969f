"""pack.json for a trained pack: files and checksums (inference.pack writes them), provenance,
measured accuracy, and what the training logs say about time and schedule changes."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from cephnode.domain.landmarks import ISBI_19
from cephnode.inference.pack import write_manifest
from cephnode.training import cache, evaluate
from cephnode.training.release import PACK_HISTORY, PACK_NAME, PACK_VERSION


def write_pack_manifest(root: Path, s0cfg, s1cfg, *, accuracy_json: Path | None = None,
                        name: str = PACK_NAME, version: str = PACK_VERSION, log_dir: Path | None = None,
                        split: str = "train (001-150) only; labels = mean of senior and junior annotators",
                        provenance_extra: dict | None = None, settings: dict | None = None,
                        accuracy_extra: dict | None = None) -> Path:
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
        "split": split,
        "derived_labels": "profile mask from the image (edge path guided by soft-tissue landmarks); "
                          "contours = thick polylines through annotated landmarks; incisor axes empty",
        "stage0": asdict(s0cfg),
        "stage1": asdict(s1cfg),
        "seeds": {"stage0": s0cfg.seed, "stage1": s1cfg.seed},
        "commit": evaluate.git_commit(),
        "trainer": "cephnode train (training/), torch CPU",
        "history": [h for h in PACK_HISTORY if name == PACK_NAME],
        "schedule_changes": schedule_changes(log_dir, s1cfg.arm),
        "cpu_wall_seconds": training_seconds(log_dir, s1cfg.arm),
        **(provenance_extra or {}),
    }
    accuracy.update(accuracy_extra or {})
    # The landmark refiner (cephnode train-refiner) is recorded by its own command: keep it.
    old = root / "pack.json"
    if old.exists():
        prev = json.loads(old.read_text())
        if prev.get("refinement") is not None:
            settings = {**(settings or {}), "refinement": prev["refinement"]}
            if "refiner" in prev.get("provenance", {}):
                provenance["refiner"] = prev["provenance"]["refiner"]
    return write_manifest(root, name=name, version=version, predicted=ISBI_19,
                          rules={"Prn": "Phase 0B profile geometry: most anterior point of the soft-tissue profile "
                                        "above 35 % of its height (not a trained prediction; no data labels Prn)"},
                          provenance=provenance, accuracy=accuracy, settings=settings)


def training_seconds(log_dir: Path | None, arm: str) -> dict:
    """Wall-clock seconds the finished phases took, from the training logs (interrupted and
    resumed runs add up; work thrown away by a restart from scratch is not counted)."""
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


def schedule_changes(log_dir: Path | None, arm: str) -> list[dict]:
    """Reschedule events from the Stage 1 log (a run shortened to fit the CPU budget says so)."""
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
