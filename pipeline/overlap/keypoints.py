"""Local-feature verification of a candidate pair: keypoints + RANSAC (OpenCV, no learned weights).

SIFT (or ORB) keypoints in both images, nearest-neighbour matches kept by Lowe's ratio test, then
a RANSAC homography: the number of matches that agree with one geometric transform. A copy
(cropped, zoomed, stretched, slightly rotated) keeps many such *inliers*; two different images of
the same object keep almost none. It costs milliseconds per pair, so it only verifies the
candidate pairs the cheaper signals propose (the ``kp_inliers`` signal).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipcurate.core.errors import ClipcurateError

KP_SIDE = 256  # images are rescaled so their longer side is this many pixels before detection


def keypoint_features(img: Image.Image, method: str = "sift", max_features: int = 500):
    """(xy [K, 2] float32 in the rescaled frame, descriptors [K, D]) — K may be 0.

    Tiny images give too few keypoints and huge ones too many, so the image is first rescaled to a
    fixed longer side (upscaling included: detectors need some pixels per corner)."""
    import cv2  # OpenCV: 0.2 s to import; only pairs that reach keypoint verification pay it

    g = np.asarray(img.convert("L"))
    h, w = g.shape
    s = KP_SIDE / max(h, w)
    g = cv2.resize(g, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_CUBIC)
    if method == "sift":
        det = cv2.SIFT_create(nfeatures=max_features)
    elif method == "orb":
        det = cv2.ORB_create(nfeatures=max_features, edgeThreshold=15, patchSize=15, fastThreshold=10)
    else:
        raise ClipcurateError(f"keypoint method {method!r} unknown; use sift or orb")
    kps, desc = det.detectAndCompute(g, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), None
    return np.array([k.pt for k in kps], np.float32), desc


def ransac_inliers(fa, fb, ratio: float = 0.8, reproj_px: float = 6.0, method: str = "sift") -> int:
    """Matches between two feature sets that one homography explains (0 when fewer than 4 matches).

    1. For each descriptor of A, its two nearest neighbours in B; keep the match when the nearest is
       clearly nearer than the second (Lowe's ratio test) — repetitive texture is ambiguous and drops.
    2. Keep each B keypoint at most once (the best match), so one point cannot vote many times.
    3. RANSAC fits a homography to random 4-match samples and counts the matches that land within
       ``reproj_px`` pixels of where it maps them; the best count is the signal."""
    import cv2  # OpenCV: 0.2 s to import (see keypoint_features)

    (xa, da), (xb, db) = fa, fb
    if da is None or db is None or len(xa) < 4 or len(xb) < 4:
        return 0
    norm = cv2.NORM_L2 if method == "sift" else cv2.NORM_HAMMING
    knn = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
    best: dict[int, tuple[float, int]] = {}
    for pair in knn:
        if len(pair) < 2:
            continue
        m, n = pair
        if m.distance < ratio * n.distance and (m.trainIdx not in best or m.distance < best[m.trainIdx][0]):
            best[m.trainIdx] = (m.distance, m.queryIdx)
    if len(best) < 4:
        return 0
    src = np.float32([xa[q] for _, q in best.values()]).reshape(-1, 1, 2)
    dst = np.float32([xb[t] for t in best]).reshape(-1, 1, 2)
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, reproj_px, maxIters=2000, confidence=0.995)
    if H is None or mask is None:
        return 0
    return int(mask.sum())


def keypoint_inliers(img_a: Image.Image, img_b: Image.Image, method: str = "sift") -> int:
    """The keypoint signal for one pair of images (``kp_inliers``)."""
    return ransac_inliers(keypoint_features(img_a, method), keypoint_features(img_b, method), method=method)


class KeypointCache:
    """Features computed once per image while verifying many pairs: ``inliers(key_a, img_a, key_b, img_b)``."""

    def __init__(self, method: str = "sift"):
        self.method = method
        self.features: dict = {}

    def get(self, key, img: Image.Image | None):
        if key not in self.features:
            self.features[key] = (keypoint_features(img, self.method) if img is not None
                                  else (np.zeros((0, 2), np.float32), None))
        return self.features[key]

    def inliers(self, key_a, img_a, key_b, img_b) -> int:
        return ransac_inliers(self.get(key_a, img_a), self.get(key_b, img_b), method=self.method)
