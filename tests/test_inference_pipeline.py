"""The whole pipeline on real radiographs with stand-in packs: inputs, degradation, rules,
batching and threads."""
from __future__ import annotations

import json
import shutil
import threading

import cv2
import numpy as np
import pytest

from cephnode.dicom_io.image_files import trace_file
from cephnode.domain.landmarks import CANONICAL_25
from cephnode.inference.pack import write_manifest
from cephnode.inference.pipeline import Pipeline
from cephnode.domain.result import InferenceResult
from tests.support.dicomgen import make_dx
from tests.support.standin import build_standin_pack
from cephnode.training import isbi


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    return build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small")


@pytest.fixture(scope="module")
def pipe(pack_dir):
    p = Pipeline.load(pack_dir, threads=1)
    # The stand-in pack's confidences mean nothing, so pose verification would pick poses at
    # random; it is tested with the real pack (tests/test_quality.py).
    p.verify_pose = False
    return p


@pytest.fixture(scope="module")
def case():
    return isbi.load_cases("train")[0]


@pytest.fixture(scope="module")
def grey(case):
    return cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)


def _xy(result):
    return np.array([[lm.x, lm.y] for lm in result.landmarks], dtype=float)


def test_full_run_on_a_real_radiograph(pipe, grey):
    r = pipe.run(grey, pixel_spacing_mm=(0.2, 0.2), name="001")
    assert [lm.name for lm in r.landmarks] == list(CANONICAL_25)
    assert not r.degraded and r.stage0.ok and r.stage0.failed_phase is None
    assert (r.width, r.height) == (968, 1200)
    xy = _xy(r)
    assert np.isfinite(xy).all() and (xy[:, 0] >= -1).all() and (xy[:, 0] <= 968).all()
    # the small stand-in Stage 1 echoes its priors: every channel has a clear peak
    assert all(lm.level == "high" and lm.predicted for lm in r.landmarks)
    for phase in ("prepare", "orient", "0A", "0B", "0C", "0D", "0E", "attention", "stage1", "decode", "total"):
        assert phase in r.timings_ms
    assert r.providers["stage1"][-1] == "CPUExecutionProvider"
    assert set(r.stage0.contours) >= {"cranial_base", "mandibular_border"}
    # the prior of an anchor and the Stage 1 output agree (Stage 1 echoes the maps)
    s = r.landmark("S")
    assert np.hypot(s.x - r.stage0.anchors["S"][0], s.y - r.stage0.anchors["S"][1]) < 3.0
    back = InferenceResult.from_dict(json.loads(r.to_json()))
    assert back == r


def test_uint16_float_rgb_and_files_give_the_same_tracing(pipe, grey, tmp_path):
    from cephnode.inference.imageio import prepare
    ref = _xy(pipe.run(grey))
    # Lossless equivalents of the 8-bit grey image: the very same tracing.
    cv2.imwrite(str(tmp_path / "a.tif"), grey)
    cv2.imwrite(str(tmp_path / "a.bmp"), grey)
    cv2.imwrite(str(tmp_path / "a8.png"), grey)
    assert np.abs(_xy(pipe.run(np.repeat(grey[:, :, None], 3, axis=2))) - ref).max() < 1e-6
    for f in ("a.tif", "a.bmp", "a8.png"):
        r = trace_file(pipe, tmp_path / f)
        assert r.image_name == f and "read_file" in r.timings_ms
        assert np.abs(_xy(r) - ref).max() < 1e-6, f
    # Float and 16-bit inputs reach the same working image (up to 8-bit rounding, or the
    # 16-bit percentile stretch), and trace without degradation.
    base = prepare(grey).grey
    as_float = prepare(grey.astype(np.float32) / 255.0).grey
    assert np.abs(as_float - base).max() <= 1.0 / 255 + 1e-6
    cv2.imwrite(str(tmp_path / "a16.png"), grey.astype(np.uint16) * 257)
    for arr in (grey.astype(np.uint16) * 257, cv2.imread(str(tmp_path / "a16.png"), cv2.IMREAD_UNCHANGED)):
        assert arr.dtype == np.uint16
        w = prepare(arr).grey
        assert np.corrcoef(w.ravel(), base.ravel())[0, 1] > 0.995
        assert not pipe.run(arr).degraded
    r16 = trace_file(pipe, tmp_path / "a16.png")
    assert not r16.degraded and np.isfinite(_xy(r16)).all()


def test_dicom_file_uses_its_spacing_and_orientation(pipe, grey, tmp_path):
    ds = make_dx(grey, pixel_spacing_mm=(0.2, 0.2), bits=12, patient_orientation=("A", "F"))
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = trace_file(pipe, path)
    assert r.pixel_spacing_mm == (0.2, 0.2)
    assert r.orientation.source == "dicom" and r.orientation.flipped
    # trace_file is exactly: decode with dicom_io.pixels, then run() with the file's geometry
    from cephnode.dicom_io.pixels import read_dicom_image
    di = read_dicom_image(path)
    same = pipe.run(di.pixels, pixel_spacing_mm=di.pixel_spacing_mm, patient_orientation=di.patient_orientation)
    assert np.abs(_xy(r) - _xy(same)).max() < 1e-9
    # and the 12-bit DICOM reaches (nearly) the working image of the 8-bit original
    from cephnode.inference.imageio import prepare
    assert np.corrcoef(prepare(di.pixels).grey.ravel(), prepare(grey).grey.ravel())[0, 1] > 0.99


def test_blank_image_degrades_but_stage1_still_runs(pipe):
    r = pipe.run(np.zeros((600, 500), np.uint8), name="blank")
    assert r.degraded and not r.stage0.ok
    assert r.stage0.failed_phase == "0A" and "foreground pixels" in r.stage0.reason
    assert "stage1" in r.timings_ms
    # zeroed priors -> the echo Stage 1 has nothing: every landmark is low confidence, but present
    assert all(lm.level == "low" and lm.x is not None for lm in r.landmarks)
    # 0C ran on the fallback boxes
    assert r.stage0.zone_boxes["z2"] == (0, 0, 384, 307)


def test_landmarks_the_pack_does_not_predict_are_marked(pack_dir, tmp_path, grey):
    root = tmp_path / "rules"
    shutil.copytree(pack_dir, root)
    predicted = [n for n in CANONICAL_25 if n not in ("Co", "Ba", "Prn")]
    write_manifest(root, name="ours", version="1", predicted=predicted,
                   rules={"Prn": "Phase 0B profile geometry"}, provenance={}, accuracy={})
    p = Pipeline.load(root, threads=1)
    r = p.run(grey)
    co = r.landmark("Co")
    assert co.x is None and co.y is None and co.level == "unavailable" and not co.predicted
    prn = r.landmark("Prn")
    assert not prn.predicted and "Phase 0B" in prn.note
    assert (prn.x, prn.y) == pytest.approx(r.stage0.anchors["Prn"], abs=0.01)
    assert r.landmark("S").predicted


def test_batch_with_dynamic_stage1_matches_single_runs(tmp_path, grey):
    root = build_standin_pack(tmp_path / "dyn", kind="small", dynamic_batch=True)
    p = Pipeline.load(root, threads=1)
    imgs = [grey, grey[:, ::-1].copy(), np.rot90(grey).copy()]
    batch = p.run_batch([{"image": im, "name": f"i{i}"} for i, im in enumerate(imgs)], batch_stage1=True)
    assert [r.image_name for r in batch] == ["i0", "i1", "i2"]
    for im, r in zip(imgs, batch):
        assert np.abs(_xy(r) - _xy(p.run(im))).max() < 1e-3


def _stage1_batch_sizes(p, monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = p.sessions.run

    def counting(key, x):
        if key == "stage1":
            sizes.append(int(x.shape[0]))
        return real(key, x)

    monkeypatch.setattr(p.sessions, "run", counting)
    return sizes


def test_batch_on_cpu_runs_stage1_image_by_image_unless_asked(tmp_path, grey, monkeypatch):
    """On the CPU a batch measured no faster (bench/bench_batch.py), so by default it is not used."""
    p = Pipeline.load(build_standin_pack(tmp_path / "dyn", kind="small", dynamic_batch=True), threads=1)
    p.verify_pose = False
    assert p.providers["stage1"][0] == "CPUExecutionProvider" and not p.batches_stage1()
    sizes = _stage1_batch_sizes(p, monkeypatch)
    items = [{"image": grey}, {"image": grey[:, ::-1].copy()}]
    auto = p.run_batch(items)
    assert sizes == [1, 1]
    forced = p.run_batch(items, batch_stage1=True)
    assert sizes == [1, 1, 2]
    for a, b in zip(auto, forced):
        assert np.abs(_xy(a) - _xy(b)).max() < 1e-3


def test_default_pack_batch_equals_single_runs():
    """The shipped pack's Stage 1 takes a dynamic batch: one batch gives what single runs give."""
    p = Pipeline.load(threads=1)
    assert p.sessions.io["stage1"].dynamic_batch
    cases = isbi.load_cases("test1")[:2]
    imgs = [cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE) for c in cases]
    batch = p.run_batch([{"image": im, "name": c.case_id} for im, c in zip(imgs, cases)], batch_stage1=True)
    for im, c, r in zip(imgs, cases, batch):
        single = p.run(im, name=c.case_id)
        assert r.image_name == c.case_id
        assert [lm.name for lm in r.landmarks] == [lm.name for lm in single.landmarks]
        got, want = _xy(r), _xy(single)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.nanmax(np.abs(got - want)) < 1e-3
        assert [lm.confidence for lm in r.landmarks] == pytest.approx([lm.confidence for lm in single.landmarks], abs=1e-4)
        assert r.qc.verdict == single.qc.verdict


def test_batch_with_fixed_stage1_runs_one_by_one(pipe, grey):
    out = pipe.run_batch([{"image": grey, "pixel_spacing_mm": (0.1, 0.1)}, {"image": grey[::2, ::2].copy()}])
    assert len(out) == 2 and out[0].pixel_spacing_mm == (0.1, 0.1) and out[1].width == 484


def test_concurrent_runs_are_independent(pipe):
    cases = isbi.load_cases("train")[1:4]
    imgs = [cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE) for c in cases]
    seq = [_xy(pipe.run(im)) for im in imgs]
    got: dict[int, np.ndarray] = {}

    def work(i):
        got[i] = _xy(pipe.run(imgs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        assert np.abs(got[i] - seq[i]).max() < 1e-6


def test_two_channel_profile_output_is_accepted(tmp_path, grey, pipe):
    root = build_standin_pack(tmp_path / "two", kind="small", profile_two_channel=True)
    p = Pipeline.load(root, threads=1)
    r = p.run(grey)
    assert not r.degraded
    assert r.stage0.profile_pixels == pipe.run(grey).stage0.profile_pixels


def test_working_image_is_pixel_identical_to_the_training_cache(case):
    # Training (training/cache.py) and inference must feed the networks the same pixels.
    from cephnode.inference.imageio import prepare
    from cephnode.training.cache import canonical_image
    trained = canonical_image(case.image_path).astype(np.float32) / 255.0
    ours = prepare(cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)).grey[:, ::-1]
    assert np.abs(trained - ours).max() < 1e-6


def test_zone_nets_that_find_nothing_fail_phase_0c(pack_dir, grey):
    p = Pipeline.load(pack_dir, threads=1)
    real_run = p.sessions.run

    def no_contours(key, x):          # fault injection on a real pipeline: zone nets say "nothing"
        out = real_run(key, x)
        return np.full_like(out, -10.0) if key in ("z1", "z2", "z3", "z4") else out

    p.sessions.run = no_contours
    r = p.run(grey)
    assert r.degraded and r.stage0.failed_phase == "0C" and "no primary contour" in r.stage0.reason
    assert r.stage0.contours == {} and r.stage0.anchors["Prn"] is not None     # 0B still reported
    assert all(lm.level == "low" for lm in r.landmarks)                       # zeroed priors


def test_a_network_error_in_stage0_degrades_instead_of_crashing(pack_dir, grey):
    p = Pipeline.load(pack_dir, threads=1)
    real_run = p.sessions.run

    def broken(key, x):
        if key == "phase0e":
            raise RuntimeError("simulated ONNX Runtime failure")
        return real_run(key, x)

    p.sessions.run = broken
    r = p.run(grey)
    assert r.degraded and r.stage0.failed_phase == "0E" and "simulated ONNX Runtime failure" in r.stage0.reason
    assert len(r.landmarks) == 25 and "stage1" in r.timings_ms
