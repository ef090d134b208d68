"""The copy augmentations of CLIP's App. C, used to plant and to detect near-duplicates.

CLIP trained its duplicate detector on "random crop and zoom, aspect ratio distortion, downsizing
and upscaling to different resolutions, minor rotations, jpeg compression, and HSV color jitter",
with random interpolation methods. :func:`app_c_copy` applies that chain with a seeded generator,
so the same (image, seed) always gives the same copy. ``strength`` in (0, 1] scales every range:
1.0 is the full App. C range, smaller values give lighter copies.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

INTERPOLATIONS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                  Image.Resampling.LANCZOS, Image.Resampling.BOX, Image.Resampling.HAMMING)


def _interp(rng: np.random.Generator):
    return INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]


def random_crop_zoom(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Keep a random window of 70–100 % of each side (at strength 1) and zoom back to the size."""
    w, h = img.size
    keep = 1.0 - 0.3 * strength * rng.random()
    cw, ch = max(8, int(round(w * keep))), max(8, int(round(h * keep)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), _interp(rng))


def aspect_distort(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Stretch one side by up to ±25 %."""
    w, h = img.size
    f = 1.0 + 0.25 * strength * rng.uniform(-1, 1)
    if rng.random() < 0.5:
        return img.resize((max(8, int(w * f)), h), _interp(rng))
    return img.resize((w, max(8, int(h * f))), _interp(rng))


def rescale(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Downscale to 40–100 % and upscale to another resolution, each with a random interpolation."""
    w, h = img.size
    down = 1.0 - 0.6 * strength * rng.random()
    small = img.resize((max(8, int(w * down)), max(8, int(h * down))), _interp(rng))
    up = 1.0 + 0.5 * strength * rng.random()
    return small.resize((max(8, int(w * up)), max(8, int(h * up))), _interp(rng))


def rotate(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A minor rotation, up to ±10° at strength 1, filled by edge-free expansion then center crop."""
    angle = 10.0 * strength * rng.uniform(-1, 1)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=_mean_color(img))


def hsv_jitter(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Shift hue by up to ±0.05 of the circle, scale saturation and value by up to ±20 %."""
    hsv = np.asarray(img.convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 255 * 0.05 * strength * rng.uniform(-1, 1)) % 255
    hsv[..., 1] *= 1.0 + 0.2 * strength * rng.uniform(-1, 1)
    hsv[..., 2] *= 1.0 + 0.2 * strength * rng.uniform(-1, 1)
    return Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), "HSV").convert("RGB")


def jpeg(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Re-encode as JPEG at a random quality (95 down to 30 at strength 1)."""
    q = int(round(95 - 65 * strength * rng.random()))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _mean_color(img: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(img.convert("RGB")).reshape(-1, 3).mean(0)
    return tuple(int(v) for v in a)


CHAIN = (random_crop_zoom, aspect_distort, rescale, rotate, hsv_jitter, jpeg)


def app_c_copy(img: Image.Image, seed: int | np.random.Generator, strength: float = 1.0,
               p: float = 0.8) -> Image.Image:
    """A near-duplicate of ``img``: each App. C transform applied with probability ``p``; JPEG always."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = img.convert("RGB")
    for fn in CHAIN:
        if fn is jpeg or rng.random() < p:
            out = fn(out, rng, strength)
    return out
