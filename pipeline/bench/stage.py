"""The benchmark registry: ``clipcurate bench add NAME --from SOURCE`` and ``bench list``.

A benchmark is copied into the workspace so that every later stage (and every rerun) sees exactly
the same samples::

    benchmarks/{name}/samples.parquet   [benchmarks] one row per sample, image bytes included
    benchmarks/{name}/classes.json      class names, in label order ([] for caption benchmarks)
    benchmarks/{name}/templates.txt     zero-shot prompt templates, one per line, "{}" = class name
    benchmarks/{name}/meta.json         kind, source, n, skipped, fingerprint, ...

Two kinds: ``classification`` (label + class names + templates, as CIFAR-10) and ``captions``
(several captions per image, as COCO / Flickr30k). The sources it reads — an ImageFolder tree, a
folder with ``captions.jsonl``, Parquet (a Hugging Face ``datasets`` export), webdataset tars,
``torchvision:NAME`` — are in :mod:`clipcurate.bench.sources`.

Each sample keeps its position in the source as a stable ``index`` and gets
``uid = make_uid("bench", name, index, sha256)``. Images that cannot be decoded are skipped and
counted (``meta.json`` lists the first reasons); they never stop the import. The benchmark is
written into a staging folder and renamed into place at the end, so a kill leaves either the old
benchmark or the new one, never half of one.

The rename is the work of a stage on the one runner (clipcurate.core.stage): the benchmarks are
the shards of ``benchmarks/``, so the runner writes ``benchmarks/_plan.json``,
``benchmarks/{name}.done`` after the rename and ``benchmarks/_SUCCESS`` last (`status` shows bench
done once a benchmark is in place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError

from clipcurate.core import config
from clipcurate.core import manifest
from clipcurate.core.console import log, progress, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.imageload import ImageTooLarge, open_image
from clipcurate.core.io import read_json, write_json, write_text
from clipcurate.core.stage import Stage, marker
from clipcurate.core.uid import make_uid
from clipcurate.core.workspace import Workspace
from clipcurate.bench.sources import Source, open_source

STAGE = "bench"
FOLDER = "benchmarks"
STAGING = ".staging"
KINDS = ("classification", "captions")
ROW_GROUP = 512

# A small prompt ensemble in the style of CLIP's (the paper uses 80 for ImageNet; a handful
# already gives most of the gain).
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a drawing of a {}.",
    "itap of a {}.",
    "a good photo of a {}.",
    "a bad photo of the {}.",
)

BENCHMARKS = manifest.register(
    "benchmarks", version=1, glob=f"{FOLDER}/*/samples.parquet", stage=STAGE,
    doc="Benchmark samples copied into the workspace by `clipcurate bench add` (one file per benchmark).",
    columns=[
        ("uid", pa.string(), 'make_uid("bench", benchmark, index, sha256): 32 hex characters'),
        ("benchmark", pa.string(), "benchmark name (the folder under benchmarks/)"),
        ("index", pa.int64(), "stable position of the sample in its source"),
        ("label", pa.int32(), "class index into classes.json; null for caption benchmarks"),
        ("label_name", pa.string(), "class name; null for caption benchmarks"),
        ("captions", pa.list_(pa.string()), "reference captions (caption benchmarks); empty list otherwise"),
        ("width", pa.int32(), "image width in pixels"),
        ("height", pa.int32(), "image height in pixels"),
        ("sha256", pa.string(), "sha256 of the stored image bytes"),
        ("image", pa.binary(), "the image file's bytes as stored (original encoding; PNG for in-memory sources)"),
    ],
    view_exclude=("image",),
)

config.section(STAGE, {"cache_dir": "", "templates": ""}, {
    "cache_dir": "where torchvision:NAME sources are downloaded (default ~/.cache/clipcurate/torchvision)",
    "templates": "default prompt template file for new benchmarks (empty: the built-in set)",
})


@dataclasses.dataclass
class Benchmark:
    name: str
    kind: str
    samples: pa.Table
    classes: list[str]
    templates: list[str]
    meta: dict

    @property
    def folder(self) -> Path:
        return Path(self.meta["_folder"])


# ---------------------------------------------------------------------------------------------
# public API


def bench_dir(ws: Workspace, name: str) -> Path:
    return ws.path(FOLDER, name)


class AddBenchmark(Stage):
    """The last step of ``bench add``: rename the staged benchmark into place, as a shard of
    ``benchmarks/`` whose shards are the benchmarks.

    The benchmarks already in place are shards too, and done: a benchmark folder only ever appears
    whole (by rename), so one without a marker (added before markers were kept) is marked as it
    is. ``benchmarks/_SUCCESS`` thus means every listed benchmark is in place.
    """

    name = STAGE
    description = STAGE

    def __init__(self, ws: Workspace, bench: str, staged: Path):
        super().__init__(ws.path(FOLDER))
        self.bench, self.staged = bench, staged

    def shards(self) -> list[str]:
        have = {d.name for d in self.folder.iterdir()
                if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file()}
        return sorted(have | {self.bench})

    def run_shard(self, shard: str) -> dict:
        target = self.folder / shard
        if shard == self.bench:  # the old benchmark (if --force) moves aside first
            old = None
            if target.exists():
                old = self.staged.parent / f"{shard}.old.{os.getpid()}"
                os.replace(target, old)
            os.replace(self.staged, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return {"samples": int(read_json(target / "meta.json").get("n", 0))}


def add(ws: Workspace, name: str, source: str, classes: str | list[str] | None = None,
        templates: str | list[str] | None = None, kind: str | None = None, force: bool = False,
        cache_dir: str | None = None) -> dict:
    """Copy a benchmark into the workspace; returns its meta.json content."""
    _check_name(name)
    if kind is not None and kind not in KINDS:
        raise ClipcurateError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    target = bench_dir(ws, name)
    if target.exists() and not force:
        raise ClipcurateError(f"benchmark {name!r} already exists in {target}: pass --force to replace it")
    class_names = _read_names(classes, "classes") if classes is not None else None
    template_list = _read_templates(templates)

    # 1. Open the source: an iterator of raw samples, the kind and the class names it knows.
    src = open_source(source, kind, class_names, cache_dir)
    if src.kind == "classification" and not src.classes:
        raise ClipcurateError(
            f"{source!r} has integer labels but no class names: pass --classes FILE (one name per line, in label order)")

    # 2. Stream the samples into a staging folder, checking that each image decodes.
    staged = ws.path(FOLDER, STAGING) / f"{name}.{os.getpid()}"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    try:
        stats = _write_samples(staged / "samples.parquet", name, src)
        meta = {
            "name": name, "kind": src.kind, "source": src.description, "n": stats["n"],
            "n_skipped": stats["n_skipped"], "skipped": stats["skipped"][:20],
            "n_classes": len(src.classes), "n_templates": len(template_list) if src.kind == "classification" else 0,
            "n_captions": stats["n_captions"], "added_at": time.time(),
            "fingerprint": stats["fingerprint"],
        }
        write_json(staged / "classes.json", list(src.classes))
        write_text(staged / "templates.txt", "".join(t + "\n" for t in template_list))
        write_json(staged / "meta.json", meta)
        # 3. Swap it into place, as this benchmark's shard of benchmarks/ (always redone: a marker
        #    left by an earlier copy of the same name says nothing about this one).
        marker(ws.path(FOLDER), name).unlink(missing_ok=True)
        AddBenchmark(ws, name, staged).run()
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    if stats["n_skipped"]:
        warn(f"bench {name}: skipped {stats['n_skipped']} unreadable sample(s), e.g. {stats['skipped'][0]}")
    if stats["n"] == 0:
        warn(f"bench {name}: no readable samples in {source!r}")
    log(f"bench {name}: {stats['n']} {src.kind} samples, {len(src.classes)} classes -> {target}")
    return meta


def list_benchmarks(ws: Workspace) -> list[dict]:
    """meta.json of every benchmark in the workspace, by name."""
    root = ws.path(FOLDER)
    rows = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file():
                rows.append(json.loads((d / "meta.json").read_text("utf-8")))
    return rows


def load(ws: Workspace, name: str, columns: list[str] | None = None) -> Benchmark:
    """The samples table, class names, templates and kind of one benchmark."""
    d = bench_dir(ws, name)
    if not (d / "meta.json").is_file():
        have = [m["name"] for m in list_benchmarks(ws)]
        raise MissingUpstream(f"benchmark {name!r} (have: {', '.join(have) or 'none'})",
                              f"clipcurate bench add {name} --from SOURCE")
    meta = json.loads((d / "meta.json").read_text("utf-8"))
    meta["_folder"] = str(d)
    samples = manifest.read(BENCHMARKS, d / "samples.parquet", columns)
    classes = json.loads((d / "classes.json").read_text("utf-8"))
    templates = [t for t in (d / "templates.txt").read_text("utf-8").splitlines() if t.strip()]
    return Benchmark(name=name, kind=meta["kind"], samples=samples, classes=classes, templates=templates, meta=meta)


def prompts(classes: list[str], templates: list[str]) -> list[str]:
    """Class-major prompt list: classes[0] x every template, then classes[1], ..."""
    return [t.replace("{}", c) for c in classes for t in templates]


# ---------------------------------------------------------------------------------------------
# writing


def _write_samples(path: Path, name: str, src: Source) -> dict:
    """Check each image (full decode), compute its uid, write row groups of ROW_GROUP rows."""
    schema = BENCHMARKS.schema
    compression = {c.name: ("NONE" if c.name == "image" else "ZSTD") for c in BENCHMARKS.columns}
    n = n_captions = 0
    skipped: list[str] = []
    n_skipped = 0
    fp = hashlib.sha256()
    rows: list[dict] = []
    n_classes = len(src.classes)

    def flush(writer):
        if rows:
            writer.write_table(manifest.table(BENCHMARKS, rows))
            rows.clear()

    writer = pq.ParquetWriter(path, schema, compression=compression)
    try:
        with progress(f"bench add {name}", total=src.total) as advance:
            for raw in src.samples:
                advance()
                err = raw.error
                if err is None and src.kind == "classification" and not (0 <= raw.label < max(n_classes, 1)):
                    err = f"sample {raw.index}: label {raw.label} outside the {n_classes} classes"
                if err is None:
                    try:
                        with open_image(raw.data) as im:  # the one pixel rule: a bomb is a counted skip
                            im.load()
                            w, h = im.size
                    except ImageTooLarge as exc:
                        err = f"sample {raw.index}: {exc}"
                    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                        err = f"sample {raw.index}: undecodable image ({exc.__class__.__name__})"
                if err is not None:
                    n_skipped += 1
                    if len(skipped) < 100:
                        skipped.append(err)
                    continue
                sha = hashlib.sha256(raw.data).hexdigest()
                uid = make_uid("bench", name, raw.index, sha)
                fp.update(uid.encode())
                cls = src.kind == "classification"
                rows.append({"uid": uid, "benchmark": name, "index": raw.index,
                             "label": raw.label if cls else None,
                             "label_name": src.classes[raw.label] if cls else None,
                             "captions": [] if cls else raw.captions, "width": w, "height": h,
                             "sha256": sha, "image": raw.data})
                n += 1
                n_captions += 0 if cls else len(raw.captions)
                if len(rows) >= ROW_GROUP:
                    flush(writer)
        flush(writer)
    finally:
        writer.close()
    for c in src.classes:
        fp.update(b"\x1f" + c.encode())
    return {"n": n, "n_skipped": n_skipped, "skipped": skipped, "n_captions": n_captions,
            "fingerprint": fp.hexdigest()[:32]}


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ClipcurateError(f"benchmark name {name!r}: use letters, digits, '_', '-' and '.' (e.g. cifar10)")


def _read_names(value, what: str):
    """A list, or a file: JSON (list or {folder: name}) or one name per line."""
    if isinstance(value, (list, tuple, dict)):
        return value
    p = Path(value).expanduser()
    if not p.is_file():
        raise ClipcurateError(f"--{what} file {value!r} not found")
    text = p.read_text("utf-8")
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClipcurateError(f"--{what} file {value!r} is not valid JSON ({exc})") from None
        if not isinstance(data, (list, dict)):
            raise ClipcurateError(f"--{what} file {value!r}: expected a JSON list or object")
        return data
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _read_templates(value) -> list[str]:
    if value in (None, ""):
        return list(DEFAULT_TEMPLATES)
    items = list(value) if isinstance(value, (list, tuple)) else _read_names(value, "templates")
    bad = [t for t in items if "{}" not in t]
    if bad or not items:
        raise ClipcurateError(f"templates must each contain '{{}}' for the class name; got {bad[:3] or items}")
    return list(items)
