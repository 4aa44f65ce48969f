"""The landmark refiner (inference.refine, training.refine): geometry, gating, pack entry."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from cephnode.inference import contract
from cephnode.inference import refine as R
from cephnode.inference.geometry import rescale
from cephnode.inference.imageio import apply_pose, normalise_input
from cephnode.inference.pack import PackError, load_pack


def _peak(a):
    y, x = np.unravel_index(np.argmax(a), a.shape)
    return np.array([x, y], float)


@pytest.mark.parametrize("pose", [(0, False), (0, True), (1, False), (3, True), (2, False)])
def test_grid_image_is_the_canonical_film_whichever_way_it_was_stored(pose):
    """A film stored turned and mirrored gives the canonical grid of the upright film."""
    rng = np.random.default_rng(3)
    upright = (rng.random((700, 560)) * 255).astype(np.uint8)
    upright = cv2.GaussianBlur(upright, (0, 0), 3)
    k, flip = pose
    stored = apply_pose(upright, k, flip)
    # the pose that brings the stored film back: a mirrored turn is its own inverse
    back_pose = (k, True) if flip else ((4 - k) % 4, False)
    g_stored = R.grid_image(normalise_input(stored), back_pose)
    g_upright = R.grid_image(normalise_input(upright), (0, False))
    assert np.abs(g_stored - g_upright).mean() < 0.01


def test_patch_reads_the_grid_where_the_matrix_says():
    """A patch centred beside a dot shows the dot where patch_matrix puts it (turned and scaled)."""
    grid = np.zeros((R.GRID, R.GRID), np.float32)
    dot = np.array([500.0, 610.0])
    grid[610, 500] = 1.0
    grid = cv2.GaussianBlur(grid, (0, 0), 1.5)
    for scale, angle, offset in ((1.0, 0.0, (7.0, -5.0)), (1.1, 8.0, (-12.0, 9.0))):
        m = R.patch_matrix(dot + offset, scale, angle)
        p = cv2.warpAffine(grid, m, (R.PATCH, R.PATCH), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        inv = cv2.invertAffineTransform(m)
        want = inv[:, :2] @ dot + inv[:, 2]
        assert np.hypot(*(_peak(p) - want)) <= 1.0
        assert np.allclose(R.patch_to_grid(m, want), dot)


def test_training_sample_target_is_where_the_landmark_is_in_the_patch():
    from cephnode.training import refine as T

    grid = np.zeros((R.GRID, R.GRID), np.float32)
    grid[400, 380] = 1.0
    grid = cv2.GaussianBlur(grid, (0, 0), 1.2) * 50
    rng = np.random.default_rng(0)
    for _ in range(5):
        patch, heat_xy = T.make_sample(rng, grid, np.array([380.0, 400.0]), train=False)
        assert np.hypot(*(_peak(patch) - rescale(heat_xy, R.OUT, R.PATCH))) <= 1.0


def _fake_refiner(target_heat_xy, peak=0.9):
    """A 'network' that answers a Gaussian at a fixed heatmap position, in every channel."""
    from cephnode.training.heatmaps import gaussians

    def run(x):
        n = x.shape[0]
        g = gaussians(np.tile(np.asarray(target_heat_xy, float), (19, 1)), np.full(19, 1.5), np.ones(19, bool), size=R.OUT)
        return np.repeat(g[None] * peak, n, axis=0)
    return run


def test_refine_maps_the_refiners_answer_back_to_the_working_grid_and_gates_it():
    grid = np.zeros((R.GRID, R.GRID), np.float32)
    pts = np.array([[200.0, 230.0], [300.5, 120.25], [np.nan, np.nan]])
    channels = np.array([0, 5, 3])
    # the refiner says: 6 heatmap px right of and 4 above the patch centre = 12 and -8 grid px
    centre_heat = (R.OUT - 1) / 2
    run = _fake_refiner((centre_heat + 6, centre_heat - 4))
    out = R.refine(run, grid, pts, channels, min_peak=0.5, max_move_px=32)
    expect = rescale(rescale(pts[:2], 512, R.GRID) + [12.0, -8.0], R.GRID, 512)
    assert np.allclose(out.points[:2], expect, atol=0.05)
    assert out.used.tolist() == [True, True, False] and np.isnan(out.points[2]).all()
    # a weak answer, or one too far away, leaves Stage 1's point as it was
    weak = R.refine(_fake_refiner((centre_heat + 6, centre_heat - 4), peak=0.3), grid, pts, channels,
                    min_peak=0.5, max_move_px=32)
    far = R.refine(run, grid, pts, channels, min_peak=0.5, max_move_px=10)
    for r in (weak, far):
        assert not r.used.any() and np.allclose(r.points[:2], pts[:2])
    skip = R.refine(run, grid, pts, np.array([-1, -1, -1]), min_peak=0.0, max_move_px=32)
    assert not skip.used.any()


# ---- the pack entry ----------------------------------------------------------------------------

def _pack_with_refiner(tmp_path, pack):
    """A copy of the default pack with an (untrained) refiner exported into it."""
    pytest.importorskip("torch")
    from cephnode.training import refine as T

    root = tmp_path / "pack"
    shutil.copytree(pack, root, ignore=shutil.ignore_patterns("evaluation"))
    T.export(T.refiner_net(), root)
    T.write_settings(root, {"min_peak": 0.0, "max_move_px": 32.0, "weight": 1.0})
    return root


def test_refinement_settings_are_checked(tmp_path, pack):
    root = _pack_with_refiner(tmp_path, pack)
    manifest = json.loads((root / "pack.json").read_text())

    def write(data):
        (root / "pack.json").write_text(json.dumps(data))

    bad = json.loads(json.dumps(manifest))
    bad["refinement"]["weight"] = 1.5
    write(bad)
    with pytest.raises(PackError, match="weight"):
        load_pack(root)
    bad = json.loads(json.dumps(manifest))
    del bad["files"][contract.REFINER.path]
    write(bad)
    with pytest.raises(PackError, match="not listed"):
        load_pack(root)
    bad = json.loads(json.dumps(manifest))
    bad["refinement"]["landmarks"] = bad["refinement"]["landmarks"][:5]
    write(bad)
    with pytest.raises(PackError, match="channels"):
        load_pack(root)
    write(manifest)
    (root / contract.REFINER.path).write_bytes(b"x" * 100)
    with pytest.raises(PackError, match="refiner.onnx"):
        load_pack(root)
