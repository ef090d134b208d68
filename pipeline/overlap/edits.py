"""Everyday edits: what reposting does to a photo, for planting copies that are not App. C's.

CLIP's App. C chain (:mod:`clipcurate.core.augment`) is what its detector was trained on; copies on
the web also go through recompression, resizing, crops, borders and letterboxes, mirroring,
greyscale, gamma changes, text overlays, screenshot frames and small rotations. Each edit is
``fn(img, rng) -> img`` with a numpy generator; :func:`everyday_copy` picks one by name or index.
``overlap calibrate`` plants half App. C copies and half these; ``benchmarks/realphoto_devset.py``
plants them into the real-photo development set.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageOps

def _jpeg(img, q):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(q))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def recompress(img, rng):
    return _jpeg(img, rng.integers(15, 40))


def resize(img, rng):
    f = rng.uniform(0.35, 0.7) if rng.random() < 0.7 else rng.uniform(1.3, 2.0)
    return img.resize((max(16, round(img.width * f)), max(16, round(img.height * f))), Image.Resampling.BICUBIC)


def crop(img, rng):
    keep = rng.uniform(0.6, 0.85)
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def border(img, rng):
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) if rng.random() < 0.5 else (255, 255, 255)
    return ImageOps.expand(img, border=int(rng.integers(6, 20)), fill=colour)


def letterbox(img, rng):
    """Into a wider (or taller) canvas with black bars, as a video frame or a phone screenshot."""
    w, h = img.size
    if rng.random() < 0.5:
        canvas = Image.new("RGB", (round(w * rng.uniform(1.3, 1.8)), h), (0, 0, 0))
    else:
        canvas = Image.new("RGB", (w, round(h * rng.uniform(1.3, 1.8))), (0, 0, 0))
    canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
    return canvas


def mirror(img, rng):
    return ImageOps.mirror(img)


def greyscale(img, rng):
    return img.convert("L").convert("RGB")


def gamma(img, rng):
    g = rng.uniform(0.45, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    lut = [round(255 * (i / 255) ** g) for i in range(256)] * 3
    return img.point(lut)


def text_overlay(img, rng):
    out = img.copy()
    d = ImageDraw.Draw(out)
    words = ["when you see it", "LOL", "#nofilter", "repost", "me irl", "caption this", "wow"]
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(0, max(1, out.height - 14)))
        d.text((int(rng.integers(0, out.width // 3)), y), str(rng.choice(words)), fill=(255, 255, 255),
               stroke_width=2, stroke_fill=(0, 0, 0), font_size=int(rng.integers(12, 20)))
    return out


def screenshot(img, rng):
    """Padded into a light 'app' frame: a title bar, a caption line, margins."""
    w, h = img.size
    top, bottom, side = int(rng.integers(18, 36)), int(rng.integers(24, 48)), int(rng.integers(4, 16))
    canvas = Image.new("RGB", (w + 2 * side, h + top + bottom), (245, 245, 245))
    d = ImageDraw.Draw(canvas)
    d.rectangle((0, 0, canvas.width, top - 4), fill=(40, 90, 160))
    d.text((side, top + h + 4), "liked by 1,204 others", fill=(20, 20, 20), font_size=11)
    canvas.paste(img, (side, top))
    return canvas


def rotation(img, rng):
    a = float(rng.uniform(2, 8)) * (1 if rng.random() < 0.5 else -1)
    return img.rotate(a, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))


def chained(img, rng):
    """Mirror or crop, then resize, then recompress: a copy reposted twice."""
    img = mirror(img, rng) if rng.random() < 0.5 else crop(img, rng)
    return recompress(resize(img, rng), rng)


EDITS = {f.__name__: f for f in (recompress, resize, crop, border, letterbox, mirror, greyscale, gamma,
                                 text_overlay, screenshot, rotation, chained)}




def everyday_copy(img: Image.Image, rng: np.random.Generator, which: int | str) -> tuple[str, Image.Image]:
    """(edit name, edited copy) for the ``which``-th edit (modulo their number) or the named one."""
    name = which if isinstance(which, str) else list(EDITS)[which % len(EDITS)]
    return name, EDITS[name](img.convert("RGB"), rng).convert("RGB")
