"""Copy signals that survive everyday edits, on the CPU, without learned weights.

Two families, both about *one pair* of images:

**PDQ, edit-tolerant** (``pdqhash``, Meta's production photo hash: 256 bits from a 64×64 DCT of the
luminance, with a quality score). Reposting changes a photo in ways a whole-image hash sees: a
border, a letterbox, a screenshot's frame, a mirror. So a pool image is hashed in up to four
*variants* — as it is, mirrored, with its uniform border rows/columns trimmed away
(:func:`trim_border`), and trimmed + mirrored — and the pair's ``pdq_dist`` is the smallest Hamming
distance (0-256) between the benchmark image's hash and any variant. Greyscale and gamma changes
barely move it (luminance DCT signs).

**Keypoints verified by alignment** (OpenCV SIFT, :func:`verify_pair`). Keypoint matches that one
geometric transform explains are strong evidence of a copy, but two failure modes produce many
"inliers" without a copy: flat or repetitive images (every match agrees with a degenerate fit) and
two different pictures of one scene. So a fit only counts when it passes guards, and is then
*checked by alignment*:

1. matches: Lowe's ratio test, each keypoint of B used once;
2. RANSAC on a 6-parameter affine map (crop, zoom, aspect change, small rotation — what copies
   undergo; a full homography fits too much);
3. guards: at least 8 inliers; the map's two singular values in [1/6, 6] and their ratio at most 2.5 (no collapse,
   no wild shear); the inliers spread over at least 4 % of each image's area (a cluster in one
   corner is a shared logo or texture patch);
4. alignment: B is warped onto A with the map, both are blurred and compared by normalised
   cross-correlation over the region where they overlap (at least 25 % of A). A copy correlates
   (0.6-1.0 even after gamma or greyscale); a neighbouring crop or a look-alike does not.

**Direct alignment when keypoints fail** (:func:`ecc_align`). Thumbnails, drawings and repetitive
textures give SIFT too few distinctive matches for any fit, though their copies still align: for
such pairs (fewer than 8 ratio-test matches, and one image at most 64 px on its longer side) an
intensity-based affine fit (OpenCV's ECC, coarse to fine, from the identity) takes the keypoint
fit's place, under the same guard, and is scored by the same correlation. Matches that no guarded
fit explains, or no matches between images large enough for SIFT, are kept as evidence against a
copy: on a contaminated pool of real photographs, ECC's alignments of unmatched pairs cost the
calibration more than they found.

The pair's ``kp_inliers`` is the inlier count when the keypoint guards pass (else 0), and ``kp_ncc``
the correlation after alignment — by the keypoint fit, else by ECC (null when neither aligned).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from clipcurate.overlap.keypoints import KP_SIDE

PDQ_BITS = 256


def trim_border(img: Image.Image, tol: float = 10.0, min_keep: float = 0.3) -> Image.Image:
    """The image without its uniform border rows and columns (borders, letterboxes, plain frames).

    A row (column) is border while nearly all of its pixels (95 %) lie within ``tol`` grey levels of
    its median; rows are peeled from each side until one is not. When less than ``min_keep`` of the
    area would remain, the image is returned as it is (a flat image is not all border)."""
    g = np.asarray(img.convert("L"), np.float32)
    if g.shape[0] < 8 or g.shape[1] < 8:
        return img

    def flat(lines: np.ndarray) -> np.ndarray:  # [n, m] → n booleans
        med = np.median(lines, axis=1, keepdims=True)
        return (np.abs(lines - med) <= tol).mean(axis=1) >= 0.95

    rows, cols = flat(g), flat(g.T)
    top = int(np.argmin(rows)) if not rows.all() else 0
    bottom = len(rows) - int(np.argmin(rows[::-1])) if not rows.all() else len(rows)
    left = int(np.argmin(cols)) if not cols.all() else 0
    right = len(cols) - int(np.argmin(cols[::-1])) if not cols.all() else len(cols)
    if (bottom - top) * (right - left) < min_keep * g.size or (top, left, bottom, right) == (0, 0, *g.shape):
        return img
    return img.crop((left, top, right, bottom))


def pdq_hash(img: Image.Image) -> np.ndarray:
    """PDQ hash of an image as 256 booleans (``pdqhash.compute`` on its RGB pixels)."""
    import pdqhash  # pdqhash: a compiled extension; only the overlap signals need it

    bits, _quality = pdqhash.compute(np.ascontiguousarray(np.asarray(img.convert("RGB"))))
    return bits.astype(bool)


def pdq_variants(img: Image.Image) -> np.ndarray:
    """[4, 256] booleans: PDQ of the image, mirrored, border-trimmed, trimmed and mirrored."""
    t = trim_border(img)
    return np.stack([pdq_hash(v) for v in (img, ImageOps.mirror(img), t, ImageOps.mirror(t))])


def pack(bits: np.ndarray) -> np.ndarray:
    """[..., 256] booleans → [..., 4] uint64 (for XOR + popcount)."""
    return np.packbits(bits, axis=-1).view(">u8").astype(np.uint64)


def pdq_distance_matrix(bench: np.ndarray, pool_variants: np.ndarray) -> np.ndarray:
    """[nb, np] smallest Hamming distance between each benchmark hash ([nb, 4] uint64 packed) and
    any variant of each pool image ([np, V, 4] uint64 packed)."""
    out = np.full((len(bench), len(pool_variants)), PDQ_BITS, np.int32)
    for v in range(pool_variants.shape[1]):
        x = bench[:, None, :] ^ pool_variants[None, :, v, :]
        out = np.minimum(out, np.bitwise_count(x).sum(-1).astype(np.int32))
    return out


def grey_frame(img: Image.Image) -> np.ndarray:
    """Grey pixels rescaled like the keypoint detector's frame (longer side KP_SIDE)."""
    import cv2  # OpenCV: 0.2 s to import; only verified pairs pay it

    g = np.asarray(img.convert("L"), np.float32)
    s = KP_SIDE / max(g.shape)
    return cv2.resize(g, (max(8, round(g.shape[1] * s)), max(8, round(g.shape[0] * s))), interpolation=cv2.INTER_AREA)


MAX_FEATURES = 500  # SIFT keypoints kept per image (the strongest; OpenCV keeps ties with the last one too)


def features(g: np.ndarray, max_features: int = MAX_FEATURES):
    """(xy [K, 2], SIFT descriptors [K, 128] or None) of a grey frame (:func:`grey_frame`). The contrast
    threshold is a quarter of OpenCV's default: web thumbnails are small and often upscaled, and the
    default finds almost no keypoints on them."""
    import cv2  # OpenCV: 0.2 s to import (see grey_frame)

    img = np.clip(g, 0, 255).astype(np.uint8)
    sift = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=0.01)
    # OpenCV finds the extrema on several threads and concatenates them in the order the threads
    # finish; sorted here (strongest first, then position), the matches, the FLANN index and RANSAC's
    # samples do not depend on the machine's load (same seed, same manifests)
    kps = sorted(sift.detect(img, None), key=lambda k: (-k.response, k.pt[0], k.pt[1], k.size, k.angle, k.octave))
    if not kps:
        return np.zeros((0, 2), np.float32), None
    kps, desc = sift.compute(img, kps)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), None
    return np.array([k.pt for k in kps], np.float32), desc


def _spread(xy: np.ndarray, shape: tuple) -> float:
    """Area of the inliers' bounding box over the image's area."""
    span = xy.max(0) - xy.min(0)
    return float(span[0] * span[1]) / float(shape[0] * shape[1])


def align_ncc(ga: np.ndarray, gb: np.ndarray, m: np.ndarray, min_cover: float = 0.25) -> float | None:
    """Normalised cross-correlation of A and B warped onto A by the affine map ``m`` (A→B
    coordinates), over the part of A that B covers; None when B covers less than ``min_cover``."""
    import cv2  # OpenCV: 0.2 s to import (see grey_frame)

    h, w = ga.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(gb, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    cover = cv2.warpAffine(np.ones_like(gb), m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cover > 0.99
    if mask.mean() < min_cover:
        return None
    a = cv2.GaussianBlur(ga, (0, 0), 1.0)[mask]
    b = cv2.GaussianBlur(np.where(warped < 0, 0, warped), (0, 0), 1.0)[mask]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-6 else None


def _plausible(m: np.ndarray) -> bool:
    """The guard on an affine map's linear part: singular values in [1/6, 6], ratio at most 2.5."""
    sv = np.linalg.svd(m[:, :2], compute_uv=False)
    return bool(sv.min() >= 1 / 6 and sv.max() <= 6 and sv.max() / max(sv.min(), 1e-9) <= 2.5)


ECC_SIDES = (32, 64, 128)


def ecc_align(ga: np.ndarray, gb: np.ndarray) -> float | None:
    """Alignment without keypoints: the NCC of A and B after a direct, intensity-based affine fit.

    Small, flat-ish or repetitive images (thumbnails, textures, drawings) give SIFT too few
    distinctive keypoints for a fit, yet a copy of them still *aligns*. OpenCV's ECC
    (``cv2.findTransformECC``, Evangelidis & Psarakis 2008) maximises the correlation of A and B
    warped by a 6-parameter affine map, starting from the identity (a copy is mostly in place:
    crop, zoom, aspect change and small rotation move it a little). It runs coarse to fine — both
    frames resized to 32, 64 and 128 px squares (the aspect change is part of the map), the
    translation doubled from one level to the next — so shifts of a fifth of the image converge.
    The map must pass the same guard as a keypoint fit, and the score is :func:`align_ncc` on the
    128 px frames (None when ECC does not converge, the guard fails, B covers under a quarter of A,
    or an image is flat). A different image can align in part — shared layout, a periodic texture —
    so the score is calibrated like every other signal, not trusted as it is."""
    import cv2  # OpenCV: 0.2 s to import (see grey_frame)

    m = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    for i, side in enumerate(ECC_SIDES):
        if i:
            m[:, 2] *= side / ECC_SIDES[i - 1]
        a = cv2.resize(ga, (side, side), interpolation=cv2.INTER_AREA)
        b = cv2.resize(gb, (side, side), interpolation=cv2.INTER_AREA)
        try:
            _, m = cv2.findTransformECC(a, b, m, cv2.MOTION_AFFINE, crit, None, 5)
        except cv2.error:  # no convergence, or a flat image (ECC's correlation is undefined)
            return None
    if not _plausible(m):
        return None
    return align_ncc(a, b, m)


ECC_MAX_SIDE = 64  # ECC only for thumbnails: an image this small on its longer side gives SIFT too few pixels


def verify_pair(fa, fb, ga: np.ndarray, gb: np.ndarray, ratio: float = 0.8, reproj_px: float = 5.0,
                min_matches: int = 8, ecc: bool = True) -> tuple[int, float | None]:
    """(inliers, ncc) for one pair: features ``fa``/``fb`` (:func:`features`) and grey
    frames ``ga``/``gb`` (:func:`grey_frame`). With too few keypoint matches to fit anything and
    ``ecc`` (a thumbnail in the pair: :data:`ECC_MAX_SIDE`), inliers is 0 and ncc comes from the
    direct alignment (:func:`ecc_align`; None when that fails too). Matches that no guarded fit
    explains are evidence against a copy (a neighbouring crop shares a strip of matches): then
    (0, None), without ECC; so is a lack of matches between two images large enough for SIFT."""
    n, ncc, matched = _keypoint_fit(fa, fb, ga, gb, ratio, reproj_px, min_matches)
    return (n, ncc) if matched or not ecc else (0, ecc_align(ga, gb))


def _keypoint_fit(fa, fb, ga, gb, ratio, reproj_px, min_matches) -> tuple[int, float | None, bool]:
    """(inliers, ncc, whether there were enough ratio-test matches to attempt a fit)."""
    import cv2  # OpenCV: 0.2 s to import (see grey_frame)

    (xa, da), (xb, db) = fa, fb
    if da is None or db is None or len(xa) < min_matches or len(xb) < min_matches:
        return 0, None, False
    best: dict[int, tuple[float, int]] = {}
    for pair in cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2):
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            m = pair[0]
            if m.trainIdx not in best or m.distance < best[m.trainIdx][0]:
                best[m.trainIdx] = (m.distance, m.queryIdx)
    if len(best) < min_matches:
        return 0, None, False
    src = np.float32([xa[q] for _, q in best.values()])
    dst = np.float32([xb[t] for t in best])
    m, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj_px, maxIters=2000,
                                   confidence=0.995)
    if m is None or mask is None:
        return 0, None, True
    inl = mask.ravel().astype(bool)
    n = int(inl.sum())
    if (n < min_matches or not _plausible(m)
            or _spread(src[inl], ga.shape) < 0.04 or _spread(dst[inl], gb.shape) < 0.04):
        return 0, None, True
    return n, align_ncc(ga, gb, m), True


class PairVerifier:
    """Features and grey frames computed once per image while verifying many pairs."""

    def __init__(self):
        self.cache: dict = {}

    def _get(self, key, img: Image.Image):
        if key not in self.cache:
            g = grey_frame(img)
            self.cache[key] = (features(g), g, max(img.size))
        return self.cache[key]

    def features_of(self, key, img: Image.Image):
        """The image's SIFT features (computed once; kept for :meth:`verify`)."""
        return self._get(key, img)[0]

    def verify(self, key_a, img_a: Image.Image, key_b, img_b: Image.Image) -> tuple[int, float | None]:
        (fa, ga, sa), (fb, gb, sb) = self._get(key_a, img_a), self._get(key_b, img_b)
        return verify_pair(fa, fb, ga, gb, ecc=min(sa, sb) <= ECC_MAX_SIDE)


def keypoint_votes(bench_feats: list, pool_feats: list, k: int = 8, ratio: float = 0.8) -> np.ndarray:
    """[nb, np] keypoint votes: every benchmark descriptor against all pool descriptors at once
    (FLANN kd-trees), so keypoints can propose candidates without a pair loop. Lowe's ratio test
    against the second neighbour fails when the pool holds several copies of one image (their
    descriptors are each other's second neighbour), so the reference is the k-th neighbour: every
    pool image among the k nearest with a distance under ``ratio`` times the k-th's gets one vote.
    ``*_feats``: (xy, descriptors) per image (:func:`features`)."""
    import cv2  # OpenCV: 0.2 s to import (see grey_frame)

    votes = np.zeros((len(bench_feats), len(pool_feats)), np.int32)
    have = [(j, d) for j, (_, d) in enumerate(pool_feats) if d is not None and len(d)]
    if not have:
        return votes
    owner = np.concatenate([np.full(len(d), j) for j, d in have])
    desc = np.concatenate([d for _, d in have]).astype(np.float32)
    k = min(k, len(desc))
    flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    flann.add([desc])
    # the kd-trees split on randomly chosen dimensions drawn from OpenCV's (thread-local) generator:
    # seed it, so one run's candidates are the next run's (same seed, same manifests)
    cv2.setRNGSeed(0)
    flann.train()
    for i, (_, d) in enumerate(bench_feats):
        if d is None or len(d) < 2 or k < 2:
            continue
        for ms in flann.knnMatch(d.astype(np.float32), k=k):
            if len(ms) < k:
                continue
            ref = ms[-1].distance
            for j in {owner[m.trainIdx] for m in ms[:-1] if m.distance < ratio * ref}:
                votes[i, j] += 1
    return votes
