"""The review image loader: tar header index vs tarfile, lookups, errors as lines, prefetch."""

from __future__ import annotations

import io
import tarfile

import pytest

from clipcurate.core.imageload import MediaLoader, TarIndex
from clipcurate.review import ReviewSession

from _review_helpers import build


def _tar(path, fmt, names):
    with tarfile.open(path, "w", format=fmt) as tf:
        for i, name in enumerate(names):
            data = bytes([i % 251]) * (i * 37 % 1500 + 1)
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        d = tarfile.TarInfo("a-folder")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_index_matches_tarfile(tmp_path, fmt):
    names = [f"{i:09d}.{ext}" for i in range(200) for ext in ("jpg", "txt", "json")]
    names += ["deep/" * 20 + "prefixed.jpg"]  # > 100 characters: ustar prefix, GNU or pax long name
    if fmt != tarfile.USTAR_FORMAT:
        names += ["é" * 120 + ".png"]
    p = tmp_path / "s.tar"
    _tar(p, fmt, names)
    idx = TarIndex(p)
    assert idx.members == idx._scan_tarfile()
    with tarfile.open(p) as tf:
        for name in names:
            assert idx.read(name) == tf.extractfile(name).read()
    assert idx.read("missing.jpg") is None


def test_loader_texts_images_and_errors(tmp_path):
    ws = build(tmp_path / "ws", 6)
    s = ReviewSession(ws, "ana")
    loader = MediaLoader(ws, max_side=32)
    m = loader.load(s.pair())
    assert m.pool.image.size == (32, 32) and m.pool.size == (48, 48) and m.pool.format == "JPEG"
    assert m.pool.lines[0] == "my drawing of a circle" and m.pool.lines[2] == "url  https://img.example/0.jpg"
    assert m.bench.image.size == (32, 32) and m.bench.lines[0] == "label  circle (0)"
    # text-only: the header's size, no decode
    t = MediaLoader(ws, decode_images=False).load(s.pair())
    assert t.pool.image is None and t.pool.size == (48, 48)
    # futures are shared: a prefetched pair is not loaded twice
    f1 = loader.request(s.pair(1))
    assert loader.request(s.pair(1)) is f1 and f1.result().pair_id == s.pair(1)["pair_id"]
    loader.warm(s.queue.benchmarks).result()
    loader.close()

    # broken inputs become one line on that side, never an exception
    with tarfile.open(ws.root / "pool" / "shards" / "00000.tar", "a") as tf:
        ti = tarfile.TarInfo("000000000.jpg")  # a later member of the same name wins, as in tarfile
        ti.size = 4
        tf.addfile(ti, io.BytesIO(b"nope"))
    m = MediaLoader(ws).load(s.pair())
    assert m.pool.image is None and m.pool.error == "cannot decode 000000000 in 00000.tar (UnidentifiedImageError)"
    assert m.pool.lines[0] == "my drawing of a circle" and m.bench.image is not None
    pair = dict(s.pair(), pool_uid="0" * 32, benchmark="imagenet")
    m = MediaLoader(ws).load(pair)
    assert "is not in the pool manifest" in m.pool.error
    assert "benchmarks/imagenet/samples.parquet not found" in m.bench.error
    pair = dict(s.pair(), bench_index=999)
    assert "index 999 is not in benchmark cifar10" in MediaLoader(ws).load(pair).bench.error
    (ws.root / "pool" / "manifest" / "00000.parquet").unlink()
    assert "pool manifest not found" in MediaLoader(ws).load(s.pair()).pool.error


@pytest.mark.parametrize("style,size,box", [("photo", (48, 48), (72, 36)), ("bench", (64, 32), (40, 30)),
                                            ("texture", (30, 90), (50, 20)), ("photo", (200, 120), (33, 17))])
def test_fast_halfcell_equals_textual_image(style, size, box, monkeypatch):
    """The review screen's half-cell strips are exactly textual-image's half-cell renderable."""
    from textual_image._terminal import CellSize, get_cell_size

    from clipcurate.core import synth
    from clipcurate.review.app import halfcell_reference, halfcell_strips

    monkeypatch.setattr(get_cell_size, "_result", CellSize(10, 20), raising=False)
    img = synth.make_image(3, 1, style, 64).resize(size)

    def cells(strips):  # (text, style) of the image cells, without the centring pad or blank lines
        return [[(s.text, s.style) for s in st if s.style is not None] for st in strips if any(s.style for s in st)]

    fast, ref = cells(halfcell_strips(img, *box)), cells(halfcell_reference(img, *box))
    assert fast and fast == ref
