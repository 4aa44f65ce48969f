"""`cephnode evaluate`: metric arithmetic on cases whose answer is known, and a short real run of
the committed default pack through the real pipeline on ISBI test1 images."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from cephnode.domain.landmarks import ISBI_19
from cephnode.training import evaluate, isbi


def test_radial_error_uses_row_and_column_spacing_separately():
    pred = np.array([[13.0, 24.0], [0.0, 0.0]])
    truth = np.array([[10.0, 20.0], [0.0, 5.0]])
    # 3 columns x 0.1 mm and 4 rows x 0.2 mm -> hypot(0.3, 0.8); 5 rows x 0.2 mm -> 1.0
    got = evaluate.radial_errors_mm(pred, truth, (0.2, 0.1))
    np.testing.assert_allclose(got, [math.hypot(0.3, 0.8), 1.0])
    assert np.isnan(evaluate.radial_errors_mm(np.array([np.nan, 1.0]), np.array([0.0, 0.0]), (1, 1)))


def test_summary_counts_missing_points_as_failures():
    s = evaluate.summarise(np.array([1.0, 2.0, 3.0, np.nan, 4.5]))
    assert s.n == 5 and s.missing == 1
    assert s.mre_mm == pytest.approx(2.625)           # mean of the four positions
    assert s.sd_mm == pytest.approx(np.std([1.0, 2.0, 3.0, 4.5]))
    # SDR over ALL five points: <=2: 2, <=2.5: 2, <=3: 3, <=4: 3
    assert s.sdr == {"2": 0.4, "2.5": 0.4, "3": 0.6, "4": 0.6}


def test_metrics_per_landmark_and_overall():
    err = np.zeros((3, len(ISBI_19)))
    err[:, ISBI_19.index("Go")] = [1.0, 3.0, 5.0]
    m = evaluate.metrics(err)
    assert m["per_landmark"]["Go"]["mre_mm"] == pytest.approx(3.0)
    assert m["per_landmark"]["Go"]["sdr"]["2"] == pytest.approx(1 / 3)
    assert m["per_landmark"]["S"]["mre_mm"] == 0.0
    assert m["overall"]["mre_mm"] == pytest.approx(9.0 / err.size)
    assert m["overall"]["sdr"]["4"] == pytest.approx((err.size - 1) / err.size)


def test_ablation_table_lists_both_arms():
    from cephnode.training.ablation import ablation_table

    rep = {"stage1": {"overall": {"mre_mm": 2.0, "sd_mm": 1.0, "sdr": {"2": 0.5, "2.5": 0.6, "3": 0.7, "4": 0.9}}},
           "images": 148}
    table = ablation_table({"priors": rep, "none": rep}, 10)
    assert table.count("| 2.000 |") == 2 and "50.0 %" in table and "10 epochs" in table


def test_evaluate_command_on_real_test_images_with_the_default_pack(tmp_path):
    from cephnode.cli.main import main

    assert main(["evaluate", "--split", "test1", "--limit", "3", "--threads", "1", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    # a shipped pack trained on all 300 files its test1 figures as in-sample (tests/test_finetune_tta.py)
    stem = "test1-in-sample" if (tmp_path / "test1-in-sample.json").exists() else "test1"
    rep = json.loads((tmp_path / f"{stem}.json").read_text())
    assert rep["images"] == 3 and rep["ground_truth"].startswith("mean")
    assert set(rep["per_image"]) == {c.case_id for c in isbi.load_cases("test1", exclude_duplicates=True)[:3]}
    ov = rep["stage1"]["overall"]
    assert ov["n"] == 3 * 19 and ov["missing"] == 0
    assert 0.3 < ov["mre_mm"] < 6.0            # a trained pack, not noise (an untrained one is ~100 mm)
    assert rep["orientation_mirrored"] == 3    # ISBI faces right: every image turned to face left
    png = cv2.imread(str(tmp_path / f"{stem}.png"))
    assert png is not None and png.shape[0] >= 600 and png.shape[1] >= 1000


def test_quality_summary_sets_verdicts_against_real_errors():
    err = np.array([[1.0, 1.0], [2.0, 4.0], [12.0, 20.0], [6.0, 6.0]])
    q = evaluate.quality_summary(["a", "b", "c", "d"], ["pass", "pass", "fail", "review"], err)
    assert q["counts"] == {"pass": 2, "review": 1, "fail": 1}
    assert q["mre_mm"] == {"pass": 2.0, "review": 6.0, "fail": 16.0}
    assert q["over_10mm"] == {"c": "fail"} and q["over_5mm"] == {"c": "fail", "d": "review"}
