"""The edit-tolerant signals: border trimming, PDQ variants (vs pdqhash itself), and keypoint fits
verified by alignment (copies align, neighbouring crops and flat images do not)."""

from __future__ import annotations

import numpy as np
import pdqhash
from PIL import Image, ImageOps

from clipcurate.overlap import verify


def blobs(seed: int, size: int = 192) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((size, size),
                                                                                     Image.Resampling.BICUBIC)


def test_trim_border_removes_letterbox_and_frame_only():
    img = blobs(0, 120)
    boxed = Image.new("RGB", (200, 120), (0, 0, 0))
    boxed.paste(img, (40, 0))
    t = verify.trim_border(boxed)
    assert abs(t.size[0] - 120) <= 2 and t.size[1] == 120
    framed = ImageOps.expand(img, border=9, fill=(255, 255, 255))
    assert abs(verify.trim_border(framed).size[0] - 120) <= 2
    assert verify.trim_border(img).size == img.size  # nothing to trim
    flat = Image.new("RGB", (64, 64), (90, 90, 90))
    assert verify.trim_border(flat).size == (64, 64)  # a flat image is not all border


def test_pdq_variants_match_pdqhash_and_catch_mirrors_and_borders():
    img = blobs(1, 160)
    bits, _ = pdqhash.compute(np.asarray(img))
    v = verify.pdq_variants(img)
    assert (v[0] == bits.astype(bool)).all()
    b = verify.pack(v[:1])
    for copy in (ImageOps.mirror(img), ImageOps.expand(img, border=14, fill=(0, 0, 0))):
        plain = verify.pdq_distance_matrix(b, verify.pack(verify.pdq_variants(copy))[None, :1])[0, 0]
        tolerant = verify.pdq_distance_matrix(b, verify.pack(verify.pdq_variants(copy))[None])[0, 0]
        assert tolerant <= 31 < plain
    other = verify.pdq_distance_matrix(b, verify.pack(verify.pdq_variants(blobs(2, 160)))[None])[0, 0]
    assert other > 70


def test_alignment_separates_copies_from_neighbouring_crops():
    big = blobs(3, 400)
    a = big.crop((0, 0, 200, 200))
    pv = verify.PairVerifier()
    copy = a.rotate(4, resample=Image.Resampling.BICUBIC).crop((15, 10, 190, 195)).resize((150, 160))
    n, ncc = pv.verify("a", a, "copy", copy)
    assert n >= 10 and ncc is not None and ncc > 0.8
    # the neighbouring crop shares a 40-pixel strip: some matches, but it does not align as a whole
    neighbour = big.crop((160, 0, 360, 200))
    n2, ncc2 = pv.verify("a", a, "neighbour", neighbour)
    assert ncc2 is None or ncc2 < 0.5
    flat = Image.new("RGB", (200, 200), (120, 120, 120))
    assert pv.verify("a", a, "flat", flat) == (0, None)


def test_keypoint_votes_rank_copies_first_even_with_several_copies_in_the_pool():
    """Two copies of one image in the pool must not cancel each other's votes (the k-th-neighbour
    reference, not Lowe's second neighbour)."""
    imgs = [blobs(10 + i, 160) for i in range(4)]
    pool = [ImageOps.mirror(blobs(50, 160)), imgs[0].rotate(3), imgs[0].resize((120, 120)), imgs[1].crop((10, 10, 150, 150)),
            blobs(60, 160), blobs(61, 160)]
    feats = lambda ims: [verify.features(verify.grey_frame(im)) for im in ims]  # noqa: E731
    votes = verify.keypoint_votes(feats(imgs), feats(pool))
    assert set(np.argsort(-votes[0])[:2]) == {1, 2} and votes[0, 1] >= 8 and votes[0, 2] >= 8
    assert np.argmax(votes[1]) == 3
    assert votes[2].max() < votes[0, 1]  # an image without a copy gets only chance votes


def test_direct_alignment_when_keypoints_fail():
    """A small drawing gives SIFT no fit; its copy still aligns by ECC (kp_ncc without inliers),
    a different drawing of the same kind aligns worse, and a flat image not at all."""
    from clipcurate.core.synth import make_image

    a = make_image(3, 1, "bench", 64)
    copy = a.crop((3, 2, 61, 60)).resize((64, 64), Image.Resampling.BILINEAR).rotate(2, fillcolor=(128, 128, 128))
    other = make_image(3, 2, "bench", 64)
    ga, gc, go = (verify.grey_frame(im) for im in (a, copy, other))
    c = verify.ecc_align(ga, gc)
    o = verify.ecc_align(ga, go)
    assert c is not None and c > 0.85
    assert o is None or o < c - 0.2
    assert verify.ecc_align(ga, verify.grey_frame(Image.new("RGB", (64, 64), (90, 90, 90)))) is None
    # through verify_pair: no keypoint fit, the direct alignment's score
    pv = verify.PairVerifier()
    n, ncc = pv.verify("a", a, "c", copy)
    assert ncc is not None and ncc > 0.85 and (n > 0 or ncc == c)


def test_keypoint_votes_are_reproducible():
    """FLANN's randomised kd-trees are seeded: the same inputs give the same votes every call."""
    imgs = [blobs(20 + i, 128) for i in range(6)]
    pool = [im.rotate(2) for im in imgs[:3]] + [blobs(80 + i, 128) for i in range(12)]
    fa = [verify.features(verify.grey_frame(im)) for im in imgs]
    fb = [verify.features(verify.grey_frame(im)) for im in pool]
    first = verify.keypoint_votes(fa, fb)
    assert all((verify.keypoint_votes(fa, fb) == first).all() for _ in range(3))
