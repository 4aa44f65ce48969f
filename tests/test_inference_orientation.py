"""Orientation: Patient Orientation codes, detection from the image, and mapping points back."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from cephnode.inference.orientation import (POSES, detect_pose, forward_points, inverse_points,
                                   pose_from_patient_orientation, to_canonical)
from tests.support.standin import build_standin_pack
from cephnode.training import isbi

BOLTON = isbi.samples_dir() / "bolton_brush_B1893L12_lateral.jpg"


def _detect(grey):
    """Detection the way the pipeline runs it: on a 64 x 64 thumbnail of the input."""
    from cephnode.inference.imageio import normalise_input, thumbnail
    return detect_pose(thumbnail(normalise_input(grey)), cropped_64=True)


def _transform(img, k, flip):
    """Apply a pose to an image: the test's own forward transform (independent of to_canonical)."""
    out = np.rot90(img, k)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def _undo(k, flip):
    """The pose (k', f') with to_canonical(_transform(img, k, flip), k', f') == img."""
    for kk, ff in POSES:
        probe = np.arange(12).reshape(3, 4)
        if np.array_equal(to_canonical(_transform(probe, k, flip), kk, ff), probe):
            return kk, ff
    raise AssertionError


def test_point_mapping_round_trips_and_follows_the_pixels():
    h, w = 30, 50
    img = np.zeros((h, w), int)
    pts = np.array([[3.0, 7.0], [44.0, 2.0], [0.0, 29.0]])
    for i, (x, y) in enumerate(pts.astype(int), 1):
        img[y, x] = i
    for k, flip in POSES:
        t = to_canonical(img, k, flip)
        fp = forward_points(pts, w, h, k, flip)
        for i, (x, y) in enumerate(fp.round().astype(int), 1):
            assert t[y, x] == i
        assert np.allclose(inverse_points(fp, w, h, k, flip), pts)


def _anatomy_image(row_code: str, col_code: str) -> np.ndarray:
    """A 3 x 3 image whose pixel values encode anatomy: +x is row_code, +y is col_code."""
    img = np.zeros((3, 3), "<U2")
    opp = {"A": "P", "P": "A", "H": "F", "F": "H"}
    img[1, 2], img[1, 0] = row_code, opp[row_code]
    img[2, 1], img[0, 1] = col_code, opp[col_code]
    return img


@pytest.mark.parametrize("po", [("P", "F"), ("A", "F"), ("P", "H"), ("A", "H"),
                                ("F", "P"), ("F", "A"), ("H", "P"), ("H", "A")])
def test_patient_orientation_pairs_give_the_canonical_pose(po):
    pose = pose_from_patient_orientation(po)
    canon = to_canonical(_anatomy_image(*po), *pose)
    assert canon[1, 2] == "P" and canon[2, 1] == "F"      # +x posterior, +y feet: face left, upright


def test_patient_orientation_that_is_not_lateral_is_ignored():
    assert pose_from_patient_orientation(("L", "F")) is None
    assert pose_from_patient_orientation(("A", "P")) is None
    assert pose_from_patient_orientation(None) is None
    assert pose_from_patient_orientation(("AF", "FP")) == pose_from_patient_orientation(("A", "F"))


def test_detects_all_eight_poses_of_isbi_test_images():
    cases = isbi.load_cases("test1", exclude_duplicates=True)     # all 148, each in 8 poses
    for case in cases:
        grey = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        canonical = grey[:, ::-1]                            # ISBI faces right
        for k, flip in POSES:
            shown = _transform(canonical, k, flip)
            pose, margin = _detect(shown)
            assert np.array_equal(to_canonical(shown, *pose), canonical), (case.case_id, k, flip)
            assert margin > 0


def test_detects_the_rotated_bolton_film():
    grey = cv2.imread(str(BOLTON), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    pose, _ = _detect(grey)
    # Stored with the vertex at the left and the face at the top: a transpose (quarter turn
    # clockwise, then mirror) brings the face to the left, upright.
    assert pose == (3, True)
    for k, flip in [(1, False), (2, True)]:
        shown = _transform(grey, k, flip)
        p2, _ = _detect(shown)
        assert np.array_equal(to_canonical(shown, *p2), to_canonical(grey, *pose))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from cephnode.inference.pipeline import Pipeline
    root = build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small")
    return Pipeline.load(root, threads=1)


def test_mirrored_and_rotated_inputs_give_the_same_anatomy(pipeline):
    case = isbi.load_cases("train")[4]
    img = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    base = pipeline.run(img, name="base")
    assert base.orientation.flipped and base.orientation.rotation_k == 0 and base.orientation.source == "image"
    ref = np.array([[lm.x, lm.y] for lm in base.landmarks])
    for k, flip in [(0, True), (1, False), (2, False), (3, True)]:
        shown = _transform(img, k, flip)
        res = pipeline.run(shown, name=f"{k}{flip}")
        got = np.array([[lm.x, lm.y] for lm in res.landmarks])
        # expected: the base points carried through the same transform
        want = forward_points(ref, w, h, k, flip)
        assert res.width == shown.shape[1] and res.height == shown.shape[0]
        assert np.abs(got - want).max() < 0.05, (k, flip)


def test_dicom_patient_orientation_beats_image_detection(pipeline):
    case = isbi.load_cases("train")[4]
    img = cv2.imread(str(case.image_path), cv2.IMREAD_GRAYSCALE)
    # The same pixels claimed to be face-left: Patient Orientation wins, no flip is applied.
    res = pipeline.run(img, patient_orientation=("P", "F"))
    assert res.orientation.source == "dicom" and not res.orientation.flipped
    res2 = pipeline.run(img, patient_orientation=("A", "F"))
    assert res2.orientation.source == "dicom" and res2.orientation.flipped


def test_full_size_16bit_working_image_is_the_same_in_every_stored_pose():
    from cephnode.inference.imageio import normalise_input, work_image
    grey = cv2.imread(str(isbi.load_cases("train")[7].image_path), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, (2000, 2500), interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 250
    ref = work_image(normalise_input(big)).grey
    for k, flip in POSES:
        shown = _transform(big, k, flip)
        got = work_image(normalise_input(shown), _undo(k, flip)).grey
        assert np.array_equal(got, ref), (k, flip)
