"""The download's cheaper paths give exactly what the plain ones give: the tar writer against
tarfile, the Resizer fast paths against img2dataset's own Resizer, the lazy module."""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from clipcurate.download import img2dataset_child as dl
from clipcurate.download import TarStream
from clipcurate.core.synth import make_image


def _tarfile_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _stream_bytes(members) -> bytes:
    buf = io.BytesIO()
    tar = TarStream(buf)
    for name, data in members:
        tar.add(name, data)
    tar.close()
    return buf.getvalue()


def test_tar_stream_is_byte_identical_to_tarfile():
    rng = random.Random(0)
    cases = [[], [("a.jpg", b"")], [("000000000.jpg", b"x" * 512), ("000000000.txt", b"caption \xc3\xa9")]]
    for _ in range(60):
        members = []
        for _ in range(rng.randint(1, 6)):
            stem = "d/" * rng.randint(0, 45) + f"{rng.randrange(10 ** 9):09d}"  # up to ~100 bytes and over
            size = rng.choice([0, 1, 511, 512, 513, rng.randrange(20000)])
            members.append((stem + rng.choice([".jpg", ".txt", ".json", "é.json"]), os.urandom(size)))
        cases.append(members)
    for members in cases:
        try:
            want = _tarfile_bytes(members)
        except ValueError:  # a name tarfile cannot store in USTAR: TarStream raises the same
            with pytest.raises(ValueError):
                _stream_bytes(members)
            continue
        assert _stream_bytes(members) == want


def _jpeg(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    from PIL import Image

    rgb = make_image(3, 3, "photo", size=64)
    wide = rgb.resize((80, 40))
    png = io.BytesIO()
    rgba = wide.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(png, "PNG")
    plain = _jpeg(rgb)
    no_jfif = plain[:2] + plain[2 + 2 + int.from_bytes(plain[4:6], "big"):]  # no APP0, DQT first: still "jpeg"
    comment_first = plain[:2] + b"\xff\xfe\x00\x05abc" + plain[2:]  # a JPEG imghdr does not recognise
    return {
        "rgb": _jpeg(rgb), "wide": _jpeg(wide), "tall": _jpeg(rgb.resize((30, 70))),
        "gray": _jpeg(rgb.convert("L")), "cmyk": _jpeg(rgb.convert("CMYK")), "no-jfif": no_jfif, "comment-first": comment_first,
        "png-rgba": png.getvalue(), "exif": _jpeg(rgb, exif=Image.Exif()),
        "not-an-image": b"<html>no</html>" * 10, "truncated": _jpeg(rgb)[:300],
    }


@pytest.fixture(scope="module")
def resizers():
    import img2dataset.resizer as i2d_resizer

    original = getattr(i2d_resizer.Resizer.__call__, "__wrapped__", i2d_resizer.Resizer.__call__)
    return original, dl._resizer_call(original, i2d_resizer), i2d_resizer


@pytest.mark.parametrize("mode,skip,size,extra", [
    ("no", True, 64, {}), ("no", True, 64, {"min_image_size": 50}), ("no", True, 64, {"max_image_area": 3000}),
    ("no", True, 64, {"max_aspect_ratio": 1.5}), ("no", False, 64, {}), ("border", True, 64, {}),
    ("border", False, 64, {}), ("border", False, 96, {}), ("center_crop", False, 48, {}),
    ("keep_ratio", False, 48, {}),
])
def test_resizer_fast_paths_match_img2dataset(resizers, mode, skip, size, extra):
    """Patched Resizer (header-only path, cached transforms, PadIfNeeded pass-through) == img2dataset's."""
    original, _, i2d_resizer = resizers
    decoded = []

    def counted(self, stream, bbox=None):
        decoded.append(1)
        return original(self, stream, bbox)

    fast = dl._resizer_call(counted, i2d_resizer)
    rz = i2d_resizer.Resizer(size, mode, False, encode_quality=95, skip_reencode=skip, **extra)
    real_a = i2d_resizer.A
    for name, data in _images().items():
        i2d_resizer.A = real_a if not isinstance(real_a, dl._CachedTransforms) else real_a._module
        want = original(rz, io.BytesIO(data))
        i2d_resizer.A = dl._CachedTransforms(i2d_resizer.A)
        decoded.clear()
        try:
            got = fast(rz, io.BytesIO(data))
        finally:
            i2d_resizer.A = real_a
        assert got == want, (name, got[1:], want[1:])
        # JPEGs kept as they are skip img2dataset's decode; everything else goes through it
        header_only = mode == "no" and skip and name in ("rgb", "wide", "tall", "gray", "exif", "no-jfif")
        assert decoded == ([] if header_only else [1]), name


def test_pad_if_needed_passthrough_only_when_nothing_to_pad(resizers):
    import numpy as np

    calls = []

    def transform(**kw):
        calls.append(kw["image"].shape)
        return {"image": "padded"}

    pad = dl._PadIfNeeded(transform, 4, 6)
    big = np.zeros((4, 6, 3), np.uint8)
    assert pad(image=big)["image"] is big and not calls
    assert pad(image=np.zeros((3, 6, 3), np.uint8))["image"] == "padded"
    assert pad(image=np.zeros((4, 5), np.uint8))["image"] == "padded"
    assert calls == [(3, 6, 3), (4, 5)]


def test_lazy_module_imports_on_first_use(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    lazy = dl._LazyModule("colorsys")
    monkeypatch.setitem(sys.modules, "colorsys", lazy)
    assert lazy.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert sys.modules["colorsys"] is not lazy  # the real module took its place
