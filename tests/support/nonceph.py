"""Images that are not lateral cephalograms, made here (no data set needed): a blank frame, a
random texture, a chest-like frame (two dark lungs in a bright field) and a hand (a palm and
five fingers). The quality gate must fail every one of them (tests/test_quality.py,
bench/bench_quality.py)."""
from __future__ import annotations

import cv2
import numpy as np


def non_ceph_images(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = 1200, 968
    yy, xx = np.mgrid[0:h, 0:w]
    chest = np.full((h, w), 200, np.uint8)                       # bright mediastinum, two dark lungs
    for cx in (0.3 * w, 0.7 * w):
        chest[((xx - cx) / (0.17 * w)) ** 2 + ((yy - 0.5 * h) / (0.33 * h)) ** 2 < 1] = 60
    chest = cv2.GaussianBlur(chest, (0, 0), 15)
    hand = np.zeros((h, w), np.uint8)                            # a palm and five fingers
    cv2.ellipse(hand, (w // 2, int(0.72 * h)), (int(0.22 * w), int(0.18 * h)), 0, 0, 360, 170, -1)
    for i, ang in enumerate((-60, -25, -8, 10, 28)):
        length = 0.42 * h if i else 0.28 * h
        tip = (int(w / 2 + length * np.sin(np.radians(ang))), int(0.65 * h - length * np.cos(np.radians(ang))))
        cv2.line(hand, (w // 2, int(0.65 * h)), tip, 190, int(0.06 * w))
    hand = cv2.GaussianBlur(hand, (0, 0), 4)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.uint8), (0, 0), 3)
    return {"blank": np.full((h, w), 128, np.uint8), "texture": texture, "chest": chest, "hand": hand}
