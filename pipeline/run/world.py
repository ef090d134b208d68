"""The demo's small, self-contained world — everything the real stages need, generated here.

``build_world(folder, size)`` writes, deterministically from a seed:

- ``enwiki-demo-pages-articles.xml.bz2``: a MediaWiki export (schema 0.10) whose articles are written
  from the world's vocabulary — the shape names, colours and filler words — with real wiki markup
  (links, templates, refs, tables, categories) so that ``queries build`` strips it for real;
- ``pageviews-20240101-000000.gz``: hourly page views for those article titles;
- ``images/``: the web pool's images (``photo`` style) and the *planted* copies: App. C
  transformations of benchmark images, each with a caption that names its label; each planted
  benchmark image recurs ``repeats`` times (separate copies, as popular images recur on the web),
  so that a small model trained on the pool as downloaded can memorise it — the contamination
  effect the demo's counterfactual measures;
- ``candidates.parquet``: (url, caption) pairs whose URLs use the placeholder host
  :data:`PLACEHOLDER`, pointed at a loopback server at download time (uids stay those of the
  placeholder URLs, so they do not depend on the server's port), including URLs that will fail (404) and captions that match no
  query (so matching has something to drop);
- ``benchmarks/{name}/{class}/*.png``: labelled evaluation sets drawn in styles that are rare in
  the pool (checkerboard ``bench`` style, high-frequency ``texture`` style), so that seeing a
  benchmark image during training can actually help — contamination can matter;
- ``truth.parquet``: which pool URL is a planted copy of which benchmark sample.

:class:`ImageServer` serves ``images/`` on 127.0.0.1 from a background thread and always stops.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import http.server
import json
import random
import threading
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.augment import app_c_copy
from clipcurate.core.io import atomic_path, write_json
from clipcurate.core.synth import CLASSES, caption_for, jpeg_bytes, make_image, png_bytes

PLACEHOLDER = "http://world.clipcurate.invalid"
# How hard the planted copies are transformed (clipcurate.core.augment: 1.0 = App. C's full ranges). Web
# copies are mostly resized, re-encoded and lightly cropped; calibration still plants full-strength.
PLANT_STRENGTH = 0.35
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
FILLER = ("the", "a", "of", "and", "in", "is", "shape", "drawn", "with", "on", "paper", "geometry",
          "symbol", "used", "often", "found", "logo", "design", "history", "form", "sides", "figure",
          "art", "sign", "pattern", "modern", "ancient", "culture", "plane", "image")


@dataclasses.dataclass(frozen=True)
class WorldSize:
    pool: int  # clean web images
    bench_per_class: int  # per benchmark, per class
    planted_fraction: float  # of each benchmark's samples copied into the pool
    repeats: int  # web copies of each planted benchmark image: popular images recur on many pages
    articles: int
    failures: int  # URLs that will 404
    unmatched: int  # captions that match no query


SIZES = {
    "tiny": WorldSize(pool=160, bench_per_class=4, planted_fraction=0.25, repeats=4, articles=40, failures=4,
                      unmatched=6),
    "small": WorldSize(pool=300, bench_per_class=12, planted_fraction=0.3, repeats=4, articles=160, failures=12,
                       unmatched=30),
}

BENCHMARKS = {"shapes-checker": "bench", "shapes-texture": "texture"}


def _article(rng: random.Random, title: str, focus: list[str]) -> str:
    """Wikitext with markup that the parser must strip (templates, refs, tables, files, categories)."""
    sents = []
    for _ in range(rng.randint(6, 12)):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        for _ in range(rng.randint(1, 3)):
            w = rng.choice(focus)
            words.insert(rng.randrange(len(words) + 1), f"[[{w.capitalize()}|{w}]]" if rng.random() < 0.3 else w)
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), f"{rng.choice(COLOURS)} {rng.choice(CLASSES)}")
        sents.append(" ".join(words).capitalize() + ".")
    body = " ".join(sents)
    return (f"{{{{Infobox shape|name={title}|sides=3}}}}\n'''{title}''' {body}"
            f"<ref>{{{{cite web|url=http://example.org|title=Ref}}}}</ref>\n\n== History ==\n"
            f"{' '.join(rng.sample(sents, min(3, len(sents))))}\n\n"
            "{| class=\"wikitable\"\n|-\n! Property !! Value\n|-\n| sides || many\n|}\n"
            f"[[File:{title}.svg|thumb|A {title} drawn]]\n[[Category:Shapes]]\n")


def write_dump(path: Path, size: WorldSize, seed: int) -> list[str]:
    rng = random.Random(seed)
    titles = [c.capitalize() for c in CLASSES] + [f"{c.capitalize()} (symbol)" for c in CLASSES]
    titles += [f"{rng.choice(COLOURS).capitalize()} {rng.choice(CLASSES)}" for _ in range(size.articles)]
    titles = list(dict.fromkeys(titles))[: size.articles]
    pages = []
    for i, title in enumerate(titles):
        focus = [title.split()[0].lower()] + list(rng.sample(CLASSES, 3))
        pages.append(
            f"  <page>\n    <title>{escape(title)}</title>\n    <ns>0</ns>\n    <id>{i + 1}</id>\n"
            f"    <revision>\n      <id>{1000 + i}</id>\n      <model>wikitext</model>\n"
            f"      <format>text/x-wiki</format>\n"
            f"      <text xml:space=\"preserve\">{escape(_article(rng, title, focus))}</text>\n"
            f"    </revision>\n  </page>\n")
    # a redirect and a non-article namespace page: both must be skipped
    pages.append("  <page>\n    <title>Circles</title>\n    <ns>0</ns>\n    <id>90001</id>\n"
                 "    <redirect title=\"Circle\" />\n    <revision>\n      <id>1</id>\n"
                 "      <text xml:space=\"preserve\">#REDIRECT [[Circle]]</text>\n    </revision>\n  </page>\n")
    pages.append("  <page>\n    <title>Talk:Circle</title>\n    <ns>1</ns>\n    <id>90002</id>\n"
                 "    <revision>\n      <id>2</id>\n      <text xml:space=\"preserve\">zzztalkonly words</text>\n"
                 "    </revision>\n  </page>\n")
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
           "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n  </siteinfo>\n" + "".join(pages) + "</mediawiki>\n")
    with atomic_path(path) as tmp:
        tmp.write_bytes(bz2.compress(xml.encode("utf-8")))
    return titles


def write_pageviews(path: Path, titles: list[str], seed: int) -> None:
    rng = random.Random(seed + 1)
    lines = []
    for t in titles:
        lines.append(f"en {t.replace(' ', '_')} {rng.choice([10, 60, 90, 200])} 0")
        lines.append(f"en.m {t.replace(' ', '_')} 500 0")  # mobile rows do not count
    lines.append("en Special:Search 900 0")  # titles with ':' are excluded
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt") as fh:
            fh.write("\n".join(lines) + "\n")


def build_world(folder: str | Path, size: str = "small", seed: int = 0) -> dict:
    """Write the whole world under ``folder``; returns a summary dict (also world.json)."""
    folder = Path(folder)
    if (folder / "world.json").exists():
        return json.loads((folder / "world.json").read_text())
    sz = SIZES[size]
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    titles = write_dump(folder / "enwiki-demo-pages-articles.xml.bz2", sz, seed)
    write_pageviews(folder / "pageviews-20240101-000000.gz", titles, seed)

    rows = []  # candidate (url, caption)
    # 1. the clean web pool: photo-style images of every class with captions naming the class
    for i in range(sz.pool):
        label = int(rng.integers(len(CLASSES)))
        name = f"pool-{i:05d}.jpg"
        (img_dir / name).write_bytes(jpeg_bytes(make_image(label, 10_000 + i, "photo", 64)))
        rows.append({"url": f"{PLACEHOLDER}/{name}", "caption": caption_for(label, rng)})

    # 2. benchmarks in rare styles, and planted App. C copies of some of their images
    truth = []
    bench_dirs = {}
    for b, (bench, style) in enumerate(BENCHMARKS.items()):
        bdir = folder / "benchmarks" / bench
        bench_dirs[bench] = str(bdir)
        index = 0
        for label, cls in enumerate(CLASSES):
            (bdir / cls).mkdir(parents=True, exist_ok=True)
            for j in range(sz.bench_per_class):
                img = make_image(label, 50_000 * (b + 1) + j, style, 64)
                fname = f"{j:04d}.png"
                (bdir / cls / fname).write_bytes(png_bytes(img))
                if rng.random() < sz.planted_fraction:
                    # a planted image recurs `repeats` times, each a separate web copy (own URL,
                    # transformation, caption): what a model can memorise, as popular images are
                    for rep in range(sz.repeats):
                        copy = app_c_copy(img, int(rng.integers(1 << 31)), strength=PLANT_STRENGTH)
                        name = f"plant-{bench}-{cls}-{j:04d}" + (f"-{rep}" if rep else "") + ".jpg"
                        (img_dir / name).write_bytes(jpeg_bytes(copy, quality=int(rng.integers(60, 95))))
                        caption = f"{cls} {prng.choice(['picture', 'pattern', 'wallpaper', 'print'])}"
                        rows.append({"url": f"{PLACEHOLDER}/{name}", "caption": caption})
                        truth.append({"url": f"{PLACEHOLDER}/{name}", "caption": caption, "benchmark": bench,
                                      "class_name": cls, "file": f"{cls}/{fname}"})
                index += 1

    # 3. noise the pipeline must account for: dead links and captions that match no query
    for i in range(sz.failures):
        rows.append({"url": f"{PLACEHOLDER}/missing-{i}.jpg", "caption": f"a photo of a {CLASSES[i % len(CLASSES)]}"})
    for i in range(sz.unmatched):
        name = f"pool-{i % max(1, sz.pool):05d}.jpg"
        rows.append({"url": f"{PLACEHOLDER}/{name}?u={i}", "caption": f"zzq{i} qqx"})
    prng.shuffle(rows)
    with atomic_path(folder / "candidates.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    with atomic_path(folder / "truth.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(truth, schema=pa.schema(
            [("url", pa.string()), ("caption", pa.string()), ("benchmark", pa.string()),
             ("class_name", pa.string()), ("file", pa.string())])), tmp)
    summary = {"size": size, "seed": seed, "articles": len(titles), "pool_images": sz.pool,
               "planted": len(truth), "candidates": len(rows), "benchmarks": bench_dirs,
               "dump": str(folder / "enwiki-demo-pages-articles.xml.bz2"),
               "pageviews": str(folder / "pageviews-20240101-000000.gz")}
    write_json(folder / "world.json", summary)
    return summary


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the demo's stderr for progress bars
        pass

    def translate_path(self, path):
        return super().translate_path(path.split("?", 1)[0])


def preferred_port(ws) -> int:
    """The port the demo's server used last time in this workspace (0: any), so a rerun after a
    kill fetches the same URLs."""
    p = Path(ws.root) / "world" / "server.json"
    try:
        return int(json.loads(p.read_text())["port"])
    except (OSError, ValueError, KeyError):
        return 0


class ImageServer:
    """``with ImageServer(folder) as base:`` serves ``folder`` on 127.0.0.1 and always stops."""

    def __init__(self, folder: str | Path, port: int = 0):
        self.folder = str(folder)
        self.port = port

    def __enter__(self) -> str:
        handler = lambda *a, **kw: _Handler(*a, directory=self.folder, **kw)  # noqa: E731
        try:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        except OSError:  # the preferred port is taken: any free one
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        write_json(Path(self.folder).parent / "server.json", {"port": self.httpd.server_address[1]})
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        return False
