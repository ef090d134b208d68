"""Procedural images for the demo, the tests and the benchmarks: no downloads, fully seeded.

A sample is a class (a shape) drawn in a *style*:

- ``"photo"``: soft gradient background, shape in a random colour, light noise — the web pool;
- ``"bench"``: a checkerboard background with a thick outline — a style that is rare in the pool,
  so an evaluation set drawn in it benefits from seeing its own images during training
  (contamination can matter, as CLIP §5 asks);
- ``"texture"``: high-frequency stripes (the case App. C says CLIP embeddings miss after
  re-interpolation).

``make_image(label, seed, style)`` is deterministic: the same arguments give the same pixels.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "arrow", "moon")
STYLES = ("photo", "bench", "texture")


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float):
    def ring(n, radii):
        pts = []
        for i in range(n * len(radii)):
            a = rot + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if kind == "square":
        return ring(4, [r])
    if kind == "triangle":
        return ring(3, [r])
    if kind == "star":
        return ring(5, [r, r * 0.45])
    if kind == "diamond":
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)]
    if kind == "hexagon":
        return ring(6, [r])
    if kind == "arrow":
        return [(cx - r, cy - r * 0.25), (cx + r * 0.2, cy - r * 0.25), (cx + r * 0.2, cy - r * 0.6),
                (cx + r, cy), (cx + r * 0.2, cy + r * 0.6), (cx + r * 0.2, cy + r * 0.25), (cx - r, cy + r * 0.25)]
    return None


def make_image(label: int, seed: int, style: str = "photo", size: int = 64) -> Image.Image:
    if style not in STYLES:
        raise ValueError(f"style {style!r} not in {STYLES}")
    rng = np.random.default_rng([int(label), int(seed), STYLES.index(style)])
    kind = CLASSES[label % len(CLASSES)]
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if style == "bench":
        cell = int(rng.integers(4, 9))
        board = (((np.arange(s)[:, None] // cell) + (np.arange(s)[None, :] // cell)) % 2).astype(np.float32)
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        bg = board[..., None] * c1 + (1 - board[..., None]) * c2
    elif style == "texture":
        freq = rng.uniform(0.25, 0.45) * s
        ang = rng.uniform(0, math.pi)
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(ang) + yy * math.sin(ang)))
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        bg = wave[..., None] * c1 + (1 - wave[..., None]) * c2
    else:
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        bg = t[..., None] * c1 + (1 - t[..., None]) * c2
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy = rng.uniform(0.35, 0.65, 2) * s
    r = rng.uniform(0.18, 0.32) * s
    rot = rng.uniform(0, 2 * math.pi)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    outline = (0, 0, 0) if style == "bench" else None
    width = max(1, s // 20) if style == "bench" else 1
    pts = _polygon(kind, cx, cy, r, rot)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color, outline=outline, width=width)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=max(2, int(r * 0.35)))
    elif kind == "cross":
        t = r * 0.3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=color)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=color)
    elif kind == "moon":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        off = r * 0.5
        draw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=img.getpixel((0, 0)))
    else:
        draw.polygon(pts, fill=color, outline=outline, width=width)
    if style == "photo":
        noise = rng.normal(0, 6, (s, s, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
    return img


def caption_for(label: int, rng: np.random.Generator | None = None) -> str:
    """A web-style caption that names the class."""
    rng = rng or np.random.default_rng(label)
    kind = CLASSES[label % len(CLASSES)]
    patterns = ("a photo of a {c}", "{c} icon on a gradient background", "a colourful {c} shape",
                "stock image: {c}", "the {c} logo, high resolution", "my drawing of a {c}")
    return patterns[int(rng.integers(len(patterns)))].format(c=kind)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
