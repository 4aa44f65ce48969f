"""Augmentation moves landmarks with the pixels (flip and rotation included), Stage 1 samples put
their targets and priors where the landmarks are, and a few real training steps run and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")  # the optional `train` extra

from cephnode.training import augment, cache, heatmaps, isbi, stage1  # noqa: E402


def _dots(points: np.ndarray, size: int = 512) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    for x, y in np.round(points).astype(int):
        img[y - 1:y + 2, x - 1:x + 2] = 255
    return img


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_geometry_keeps_landmarks_on_their_pixels(seed):
    rng = np.random.default_rng(seed)
    g = np.arange(140, 380, 60.0)  # well apart, so each dot's neighbourhood holds only itself
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + rng.integers(-5, 6, (len(g) ** 2, 2))
    geo = augment.GeometryParams(max_rotation_deg=10, flip_prob=1.0 if seed % 2 else 0.0)
    m, flipped = augment.random_affine(rng, 512, geo)
    assert flipped == bool(seed % 2)
    warped = augment.warp_image(_dots(pts), m)
    moved = augment.warp_points(pts, m)
    for x, y in moved:
        xi, yi = int(round(x)), int(round(y))
        patch = warped[yi - 4:yi + 5, xi - 4:xi + 5].astype(float)
        assert patch.max() > 100, "no dot where the landmark went"
        ys, xs = np.mgrid[-4:5, -4:5]
        cy, cx = (patch * ys).sum() / patch.sum() + yi, (patch * xs).sum() / patch.sum() + xi
        assert np.hypot(cx - x, cy - y) < 0.75


def test_flip_alone_mirrors_pixel_centres():
    rng = np.random.default_rng(5)
    geo = augment.GeometryParams(max_rotation_deg=0, scale_range=(1, 1), max_shift_frac=0, flip_prob=1.0)
    m, flipped = augment.random_affine(rng, 512, geo)
    assert flipped
    np.testing.assert_allclose(augment.warp_points(np.array([[0.0, 7.0], [100.0, 9.0]]), m),
                               [[511.0, 7.0], [411.0, 9.0]], atol=1e-9)
    img = np.zeros((512, 512), np.uint8)
    img[9, 100] = 200
    assert augment.warp_image(img, m)[9, 411] == 200


def test_intensity_changes_values_not_structure():
    rng = np.random.default_rng(0)
    img = _dots(np.array([[200.0, 200.0]]))
    out = augment.intensity(rng, img)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert np.unravel_index(np.argmax(out), out.shape) in {(199, 199), (199, 200), (199, 201), (200, 199), (200, 200),
                                                          (200, 201), (201, 199), (201, 200), (201, 201)}


def test_canonical_mapping_round_trips_and_mirrors():
    w, h = isbi.metadata()["image_size"]
    pts = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [300.25, 811.5]])
    c = cache.to_canonical(pts, w, h)
    assert c[0, 0] > c[1, 0]  # face-right image: the left edge goes to the right
    np.testing.assert_allclose(cache.from_canonical(c, w, h), pts, atol=1e-9)


def test_stage1_sample_targets_and_priors_sit_on_the_landmarks():
    case = isbi.load_cases("train")[0]
    w, h = isbi.metadata()["image_size"]
    img = cache.canonical_image(case.image_path)
    lm = cache.to_canonical(case.mean, w, h)
    rng = np.random.default_rng(0)
    cfg = stage1.Stage1Config(prior_jitter=0.0, prior_channel_drop=0.0, prior_all_drop=0.0)
    grey, priors, target = stage1.make_sample(rng, img, lm, cfg, train=False)
    assert grey.shape == (512, 512) and priors.shape == (25, 256, 256) and target.shape == (19, 256, 256)
    want = heatmaps.to_grid(lm)
    for i in range(19):
        y, x = np.unravel_index(np.argmax(target[i]), target[i].shape)
        assert abs(x - want[i, 0]) <= 0.5 and abs(y - want[i, 1]) <= 0.5
        j = stage1.ISBI_TO_25[i]
        y, x = np.unravel_index(np.argmax(priors[j]), priors[j].shape)
        assert abs(x - want[i, 0]) <= 0.5 and abs(y - want[i, 1]) <= 0.5
    none = stage1.make_sample(rng, img, lm, stage1.Stage1Config(arm="none"), train=True)[1]
    assert not none.any()


def test_a_few_stage1_steps_run_save_and_resume(tmp_path):
    import torch

    torch.set_num_threads(1)
    ds = cache.load()
    cfg = stage1.Stage1Config(epochs=1, batch=2)
    net = stage1.train(ds.images[:2], ds.landmarks[:2], cfg, tmp_path, log=lambda s: None)
    ck = tmp_path / "stage1_priors.pt"
    assert ck.exists() and torch.load(ck, weights_only=False)["epoch"] == 1
    out = net(torch.zeros(1, 28, 512, 512))
    assert out.shape == (1, 25, 256, 256) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    lines: list[str] = []
    stage1.train(ds.images[:2], ds.landmarks[:2], cfg, tmp_path, log=lines.append)  # already done
    assert any('"resume"' in s for s in lines) and not any('"event": "epoch"' in s for s in lines)
    with pytest.raises(ValueError, match="another config"):
        stage1.train(ds.images[:2], ds.landmarks[:2], stage1.Stage1Config(epochs=2, batch=2), tmp_path)
    # a longer (or shorter) schedule continues from the checkpoint when asked to
    lines.clear()
    stage1.train(ds.images[:2], ds.landmarks[:2], stage1.Stage1Config(epochs=2, batch=2), tmp_path,
                 log=lines.append, reschedule=True)
    assert any('"reschedule"' in s for s in lines)
    assert [json.loads(s)["epoch"] for s in lines if '"event": "epoch"' in s] == [2]
    assert torch.load(ck, weights_only=False)["config"]["epochs"] == 2


def test_no_prior_arm_ignores_the_attention_channels(tmp_path):
    import torch

    from cephnode.training.nets import stage1_net

    net = stage1_net("unet-s4")
    torch.save({"model": net.state_dict(), "config": {"arm": "none"}}, tmp_path / "s.pt")
    loaded = stage1.load_trained(tmp_path / "s.pt")
    x = torch.rand(1, 28, 512, 512)
    y = x.clone()
    y[:, 3:] = 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), loaded(y))


def test_checkpoints_rebuild_the_architecture_they_were_trained_with(tmp_path):
    import torch

    from cephnode.training.nets import stage1_net

    fine, plain = stage1_net("unet-s4-fine"), stage1_net("unet-s4")
    assert fine.fine is not None and plain.fine is None
    # a checkpoint records its arch; one from before the field existed is the plain net
    torch.save({"model": fine.state_dict(), "config": {"arm": "none", "arch": "unet-s4-fine"}}, tmp_path / "f.pt")
    torch.save({"model": plain.state_dict(), "config": {"arm": "none"}}, tmp_path / "p.pt")
    assert stage1.load_trained(tmp_path / "f.pt").fine is not None
    assert stage1.load_trained(tmp_path / "p.pt").fine is None
    with pytest.raises(ValueError, match="unknown Stage 1 architecture"):
        stage1_net("hrnet-w32")
    # a checkpoint written before the field existed resumes under the plain net's config
    torch.set_num_threads(1)
    ds = cache.load()
    cfg = stage1.Stage1Config(arm="none", arch="unet-s4", epochs=1, batch=2)
    stage1.train(ds.images[:2], ds.landmarks[:2], cfg, tmp_path, log=lambda s: None)
    ck = tmp_path / "stage1_none.pt"
    state = torch.load(ck, weights_only=False)
    del state["config"]["arch"]
    torch.save(state, ck)
    lines: list[str] = []
    stage1.train(ds.images[:2], ds.landmarks[:2], cfg, tmp_path, log=lines.append)
    assert any('"resume"' in s for s in lines)
    with pytest.raises(ValueError, match="another config"):
        stage1.train(ds.images[:2], ds.landmarks[:2], stage1.Stage1Config(arm="none", epochs=1, batch=2), tmp_path)
