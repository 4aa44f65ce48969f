"""`cephnode report FILE.dcm --out DIR` end to end through the real Pipeline (ONNX Runtime on the
default pack when one is installed, else on the stand-in pack with the contract's seven files)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cephnode.dicom_io import codes
from cephnode.inference.pack import PackError, default_pack_dir, load_pack
from tests.support.dicomgen import make_dx, read_grey, save
from tests.support.standin import build_standin_pack
from cephnode.training import isbi

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    try:
        return load_pack(default_pack_dir()).root
    except (PackError, FileNotFoundError, OSError):
        return build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small")


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory) -> Path:
    case = next(c for c in isbi.load_cases() if c.case_id == "007")
    ds = make_dx(read_grey(case.image_path), pixel_spacing_mm=isbi.pixel_spacing_mm())
    return save(ds, tmp_path_factory.mktemp("in") / "ceph.dcm")


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cephnode", "report", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_report_writes_every_object_from_the_real_pipeline(models_dir, dicom_file, tmp_path):
    out = tmp_path / "out"
    proc = _report(str(dicom_file), "--out", str(out), "--models", str(models_dir), "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = {p.name.split("-")[0]: p for p in out.glob("*.dcm")}
    assert set(written) == {"sr", "seg", "gsps", "sc"}
    assert list(out.glob("tracing-sheet-*.png"))
    source = pydicom.dcmread(dicom_file)
    pack = load_pack(models_dir)
    result = json.loads((out / "result.json").read_text())
    assert result["pack_version"] == pack.version and result["image_name"] == source.SOPInstanceUID

    for kind, path in written.items():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID, kind

    # The SR holds exactly the points the pipeline found.
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(written["sr"]))
    points = {}
    for g in sr.content.get_planar_roi_measurement_groups():
        name = codes.LANDMARK_BY_CODE[(g.finding_type.scheme_designator, g.finding_type.value)]
        points[name] = np.float32(g.roi.value[0])
    available = {lm["name"]: lm for lm in result["landmarks"] if lm["x"] is not None}
    assert points.keys() == available.keys()
    for name, lm in available.items():
        np.testing.assert_array_equal(points[name], np.float32([lm["x"] + 0.5, lm["y"] + 0.5]))
    algo = [it.TextValue for g in sr.content.get_planar_roi_measurement_groups()[:1]
            for it in g[0].ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "111003"]
    assert algo == [pack.version]

    # Run again with a subset: the same UIDs (a retry rebuilds the very same objects).
    again = tmp_path / "again"
    proc = _report(str(dicom_file), "--out", str(again), "--models", str(models_dir), "--device", "cpu",
                   "--kinds", "sr,gsps")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in again.glob("*.dcm")} == {written["sr"].name, written["gsps"].name}


def test_report_refuses_unknown_kinds(dicom_file, tmp_path):
    proc = _report(str(dicom_file), "--out", str(tmp_path), "--kinds", "sr,pdf")
    assert proc.returncode == 2 and "unknown output kind" in proc.stderr
