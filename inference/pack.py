"""Model packs: a folder holding the seven CephTrace v4 files, plus (ours) a pack.json manifest.

A pack folder with the published files and no manifest loads as the published pack. With a
manifest, every listed file must exist with the recorded size and sha256. Input/output shapes
are checked when the ONNX Runtime sessions are created (inference.sessions), where ONNX
Runtime parses the graph anyway; those errors are PackErrors too, naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from cephnode import models
from cephnode.inference import contract
from cephnode.domain.landmarks import CANONICAL_25

MANIFEST = "pack.json"
PUBLISHED_NAME = "cephtrace-v4-published"
PM_NOTE = "unvalidated: no public data set labels Pm; the published code puts it on the soft-tissue chin-lip inflection"
# A valid ONNX file is a protobuf; anything shorter than this cannot hold a usable graph.
MIN_MODEL_BYTES = 64


class PackError(ValueError):
    """A model pack cannot be used. The message names the file and the problem."""


@dataclass(frozen=True)
class Refinement:
    """pack.json "refinement": the optional landmark refiner (inference.refine) and the settings
    it was validated with."""
    landmarks: tuple[str, ...]     # refiner output channels, in order
    min_peak: float                # a refined position below this peak is not used
    max_move_px: float             # nor one further than this from Stage 1's (1024-grid pixels)
    weight: float                  # final = Stage 1 + weight * (refined - Stage 1)


@dataclass
class ModelPack:
    root: Path
    name: str
    version: str
    files: dict[str, Path]                 # contract key -> absolute path
    predicted: frozenset[str]              # landmarks the pack really predicts
    rules: dict[str, str]                  # landmark -> stated rule (not a prediction)
    manifest: dict = field(default_factory=dict)

    @property
    def published(self) -> bool:
        return not self.manifest or self.manifest.get("name") == PUBLISHED_NAME

    @property
    def test_time_shifts(self) -> tuple[tuple[int, int], ...]:
        """Stage 1 test-time augmentation the pack was validated with (pack.json
        "stage1_test_time_shifts": [[dx, dy], ...] in 512-grid pixels, even, so each maps to a
        whole heatmap pixel); empty: one pass."""
        return test_time_shifts(self.manifest.get("stage1_test_time_shifts", []), f"{self.root}: stage1_test_time_shifts")

    @property
    def refinement(self) -> Refinement | None:
        """The landmark refiner's settings when the pack has one (its file is files["refiner"])."""
        return refinement(self.manifest, self.root / MANIFEST) if contract.REFINER.key in self.files else None

    def note_for(self, landmark: str) -> str:
        """Why a landmark's output is not a validated prediction ('' when it is one)."""
        if landmark in self.rules:
            return f"rule: {self.rules[landmark]}"
        if landmark not in self.predicted:
            return "not predicted by this model pack"
        if landmark == "Pm":
            return PM_NOTE
        return ""


MAX_TEST_TIME_SHIFT = 64     # 512-grid pixels; further, the shifted input loses too much of the head


def test_time_shifts(items, where: str) -> tuple[tuple[int, int], ...]:
    """[[dx, dy], ...] -> ((dx, dy), ...), each value even (so the heatmap moves by whole pixels)
    and at most MAX_TEST_TIME_SHIFT; PackError naming `where` otherwise."""
    shifts = []
    for item in items:
        try:
            dx, dy = (int(v) for v in item)
        except (TypeError, ValueError):
            raise PackError(f"{where}: {item!r} is not a pair of whole pixel values") from None
        if dx % 2 or dy % 2 or max(abs(dx), abs(dy)) > MAX_TEST_TIME_SHIFT:
            raise PackError(f"{where}: {item!r}: even values of at most {MAX_TEST_TIME_SHIFT} px")
        shifts.append((dx, dy))
    return tuple(shifts)


def refinement(manifest: Mapping, where: Path) -> Refinement | None:
    entry = manifest.get("refinement")
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise PackError(f"{where}: 'refinement' must be an object")
    try:
        names = tuple(_validate_landmarks(entry["landmarks"], f"{where}: refinement.landmarks"))
        r = Refinement(names, float(entry["min_peak"]), float(entry["max_move_px"]), float(entry["weight"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PackError):
            raise
        raise PackError(f"{where}: refinement needs landmarks, min_peak, max_move_px and weight ({exc})") from None
    if len(names) != contract.REFINER.output_shapes[0][1]:
        raise PackError(f"{where}: refinement.landmarks names {len(names)} channels, "
                        f"the refiner has {contract.REFINER.output_shapes[0][1]}")
    if not 0.0 <= r.weight <= 1.0 or r.max_move_px <= 0:
        raise PackError(f"{where}: refinement.weight must be within 0-1 and max_move_px positive")
    return r


def default_pack_dir() -> Path:
    """$CEPHNODE_MODELS, else the pack embedded in the package (models/default in a checkout)."""
    env = os.environ.get("CEPHNODE_MODELS")
    return Path(env) if env else models.default_pack_dir()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: manifest is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PackError(f"{path}: manifest must be a JSON object")
    for key in ("name", "version", "files"):
        if key not in data:
            raise PackError(f"{path}: manifest lacks '{key}'")
    if not isinstance(data["files"], dict):
        raise PackError(f"{path}: 'files' must map relative paths to {{sha256, bytes}}")
    return data


def _check_listed_file(root: Path, rel: str, entry: Mapping, *, verify_hash: bool) -> None:
    path = root / rel
    if not path.is_file():
        raise PackError(f"{path}: missing (listed in {MANIFEST})")
    size = path.stat().st_size
    want = entry.get("bytes")
    if want is not None and size != int(want):
        what = "truncated" if size < int(want) else "larger than recorded"
        raise PackError(f"{path}: {what}: {size} bytes, manifest says {int(want)}")
    if verify_hash and entry.get("sha256"):
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise PackError(f"{path}: corrupt: sha256 {got[:16]}... does not match the manifest's {str(entry['sha256'])[:16]}...")


def _validate_landmarks(names: Iterable[str], where: str) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in CANONICAL_25]
    if unknown:
        raise PackError(f"{where}: unknown landmark names {unknown}")
    return names


def load_pack(path: Path | str | None = None, *, verify_hash: bool = True) -> ModelPack:
    """Open a pack folder; raise PackError naming the file and the problem if it is unusable."""
    root = Path(path) if path is not None else default_pack_dir()
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise PackError(f"{root}: model pack folder does not exist")
    manifest_path = root / MANIFEST
    manifest: dict = {}
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        for rel, entry in manifest["files"].items():
            if not isinstance(entry, Mapping):
                raise PackError(f"{manifest_path}: entry for {rel} must be an object with sha256 and bytes")
            _check_listed_file(root, rel, entry, verify_hash=verify_hash)

    files: dict[str, Path] = {}
    for spec in contract.MODELS:
        p = root / spec.path
        if not p.is_file():
            raise PackError(f"{p}: missing ({spec.phase} model '{spec.key}' of the CephTrace v4 contract)")
        if p.stat().st_size < MIN_MODEL_BYTES:
            raise PackError(f"{p}: truncated: only {p.stat().st_size} bytes")
        if manifest and spec.path not in manifest["files"]:
            raise PackError(f"{p}: present but not listed in {manifest_path}, so it cannot be verified")
        files[spec.key] = p
    if manifest.get("refinement") is not None:
        # optional beyond the contract: only a refiner the manifest lists (and so verifies) is used
        spec = contract.REFINER
        if spec.path not in manifest["files"]:
            raise PackError(f"{manifest_path}: 'refinement' is set but {spec.path} is not listed in 'files'")
        refinement(manifest, manifest_path)
        files[spec.key] = root / spec.path

    if manifest:
        predicted = frozenset(_validate_landmarks(manifest.get("predicted_landmarks", CANONICAL_25),
                                                  f"{manifest_path}: predicted_landmarks"))
        rules = dict(manifest.get("rule_landmarks", {}))
        _validate_landmarks(rules, f"{manifest_path}: rule_landmarks")
        return ModelPack(root, str(manifest["name"]), str(manifest["version"]), files,
                         predicted - set(rules), rules, manifest)
    # The published CephTrace v4 files as they come: all 25 channels are predictions (Pm noted).
    return ModelPack(root, PUBLISHED_NAME, "v4", files, frozenset(CANONICAL_25), {}, {})


def write_manifest(root: Path | str, *, name: str, version: str, predicted: Iterable[str],
                   rules: Mapping[str, str], provenance: dict, accuracy: dict,
                   settings: Mapping | None = None) -> Path:
    """Write <root>/pack.json with sha256 and size of every contract file present. `settings`:
    top-level keys the pipeline reads (e.g. stage1_test_time_shifts)."""
    root = Path(root)
    files = {}
    for spec in contract.MODELS:
        p = root / spec.path
        if not p.is_file():
            raise PackError(f"{p}: missing; a pack needs all seven contract files")
        files[spec.path] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    if (settings or {}).get("refinement") is not None:
        p = root / contract.REFINER.path
        if not p.is_file():
            raise PackError(f"{p}: missing, and the settings name a refinement")
        files[contract.REFINER.path] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    predicted = _validate_landmarks(predicted, "predicted")
    rules = dict(rules)
    _validate_landmarks(rules, "rules")
    data = {
        "name": name,
        "version": version,
        "files": files,
        "predicted_landmarks": [n for n in CANONICAL_25 if n in set(predicted) and n not in rules],
        "rule_landmarks": rules,
        "not_predicted": [n for n in CANONICAL_25 if n not in set(predicted) and n not in rules],
        **dict(settings or {}),
        "provenance": provenance,
        "accuracy": accuracy,
    }
    out = root / MANIFEST
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, out)
    return out
