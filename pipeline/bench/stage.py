"""The benchmark registry: ``clipcurate bench add NAME --from SOURCE`` and ``bench list``.

A benchmark is copied into the workspace so that every later stage (and every rerun) sees exactly
the same samples::

    benchmarks/{name}/samples.parquet   [benchmarks] one row per sample, image bytes included
    benchmarks/{name}/classes.json      class names, in label order ([] for caption benchmarks)
    benchmarks/{name}/templates.txt     zero-shot prompt templates, one per line, "{}" = class name
    benchmarks/{name}/meta.json         kind, source, n, skipped, fingerprint, ...

Two kinds: ``classification`` (label + class names + templates, as CIFAR-10) and ``captions``
(several captions per image, as COCO / Flickr30k). Sources:

- a folder tree, one subfolder per class (the ImageFolder layout);
- a folder with ``captions.jsonl`` (``{"image": "rel/path.jpg", "captions": [...]}`` per line);
- Parquet (the shape of a Hugging Face ``datasets`` export: an image column that is a struct
  ``{bytes, path}`` or raw bytes, and a ``label`` column, or a ``captions`` list column); class
  names come from ``--classes``, the ClassLabel names in the file's Hugging Face metadata, or the
  label values themselves when they are strings;
- webdataset tars: ``{key}.jpg|png|...`` with ``{key}.cls`` (an integer label) or ``{key}.txt``
  (captions, one per line) / ``{key}.json`` (``{"captions": [...]}``);
- ``torchvision:NAME`` (e.g. ``torchvision:CIFAR10``): its test split, downloaded into a cache
  folder when the machine has internet; without internet, one line says so.

Each sample keeps its position in the source as a stable ``index`` and gets
``uid = make_uid("bench", name, index, sha256)``. Images that cannot be decoded are skipped and
counted (``meta.json`` lists the first reasons); they never stop the import. The benchmark is
written into a staging folder and renamed into place at the end, so a kill leaves either the old
benchmark or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core.console import log, progress, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import write_json, write_text
from clipcurate.core.uid import make_uid
from clipcurate.core.workspace import Workspace

STAGE = "bench"
FOLDER = "benchmarks"
STAGING = ".staging"
KINDS = ("classification", "captions")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
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
registry.register_stage(STAGE, FOLDER, "clipcurate bench add NAME --from SOURCE", ("benchmarks",))


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


@dataclasses.dataclass
class _Raw:
    """One sample as read from a source, before it is checked and written."""

    index: int
    data: bytes | None
    label: int | None = None
    captions: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# public API


def bench_dir(ws: Workspace, name: str) -> Path:
    return ws.path(FOLDER, name)


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
    src = _open_source(source, kind, class_names, cache_dir)
    if src.kind == "classification" and not src.classes:
        raise ClipcurateError(
            f"{source!r} has integer labels but no class names: pass --classes FILE (one name per line, in label order)")

    # 2. Stream the samples into a staging folder, checking that each image decodes.
    staging_root = ws.path(FOLDER, STAGING)
    stage = staging_root / f"{name}.{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        stats = _write_samples(stage / "samples.parquet", name, src)
        meta = {
            "name": name, "kind": src.kind, "source": src.description, "n": stats["n"],
            "n_skipped": stats["n_skipped"], "skipped": stats["skipped"][:20],
            "n_classes": len(src.classes), "n_templates": len(template_list) if src.kind == "classification" else 0,
            "n_captions": stats["n_captions"], "added_at": time.time(),
            "fingerprint": stats["fingerprint"],
        }
        write_json(stage / "classes.json", list(src.classes))
        write_text(stage / "templates.txt", "".join(t + "\n" for t in template_list))
        write_json(stage / "meta.json", meta)
        # 3. Swap it into place: the old benchmark (if --force) moves aside first.
        old = None
        if target.exists():
            old = staging_root / f"{name}.old.{os.getpid()}"
            os.replace(target, old)
        os.replace(stage, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    _refresh_status(ws)
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
# sources


@dataclasses.dataclass
class _Source:
    kind: str
    classes: list[str]
    samples: Iterable[_Raw]
    total: int | None
    description: str


def _open_source(source: str, kind: str | None, class_names: list[str] | None, cache_dir: str | None) -> _Source:
    if source.startswith("torchvision:"):
        return _torchvision_source(source, kind, class_names, cache_dir)
    p = Path(source).expanduser()
    if not p.exists():
        raise ClipcurateError(f"benchmark source {source!r} not found: give a folder, a .parquet, a .tar or torchvision:NAME")
    desc = str(p.absolute())
    if p.is_file() and p.suffix == ".parquet":
        return _parquet_source([p], kind, class_names, desc)
    if p.is_file() and p.suffix == ".tar":
        return _tar_source([p], kind, class_names, desc)
    if p.is_file():
        raise ClipcurateError(f"benchmark source {source!r}: a file must be .parquet or .tar")
    if (p / "captions.jsonl").is_file():
        return _captions_folder_source(p, kind, desc)
    parquets = sorted(p.glob("*.parquet"))
    if parquets:
        return _parquet_source(parquets, kind, class_names, desc)
    tars = sorted(p.glob("*.tar"))
    if tars:
        return _tar_source(tars, kind, class_names, desc)
    return _folder_source(p, kind, class_names, desc)


def _folder_source(root: Path, kind, class_names, desc) -> _Source:
    """ImageFolder: root/{class}/{image}; classes are the sorted folder names (or --classes)."""
    if kind == "captions":
        raise ClipcurateError(f"{desc}: a caption benchmark folder needs captions.jsonl")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ClipcurateError(f"{desc}: no class subfolders, captions.jsonl, .parquet or .tar files found")
    names = folders
    if class_names is not None:
        names = _map_names(class_names, folders, desc)
    files = [(ci, f) for ci, c in enumerate(folders) for f in sorted((root / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_EXTS]

    def gen():
        for i, (ci, f) in enumerate(files):
            yield _Raw(index=i, data=f.read_bytes(), label=ci)

    return _Source("classification", names, gen(), len(files), desc)


def _map_names(class_names, folders, desc) -> list[str]:
    """--classes for a folder tree: a {folder: name} dict, or a list in sorted-folder order."""
    if isinstance(class_names, dict):
        missing = [f for f in folders if f not in class_names]
        if missing:
            raise ClipcurateError(f"--classes has no name for folder(s) {missing[:5]} of {desc}")
        return [class_names[f] for f in folders]
    if len(class_names) != len(folders):
        raise ClipcurateError(
            f"--classes lists {len(class_names)} names but {desc} has {len(folders)} class folders")
    return list(class_names)


def _captions_folder_source(root: Path, kind, desc) -> _Source:
    if kind == "classification":
        raise ClipcurateError(f"{desc} has captions.jsonl: it is a caption benchmark (drop --kind classification)")
    lines = (root / "captions.jsonl").read_text("utf-8").splitlines()

    def gen():
        for i, line in enumerate(ln for ln in lines if ln.strip()):
            try:
                rec = json.loads(line)
                rel = rec.get("image") or rec.get("file") or rec.get("file_name")
                caps = rec.get("captions") or ([rec["caption"]] if rec.get("caption") else [])
                data = (root / rel).read_bytes()
            except (ValueError, TypeError, KeyError, OSError, AttributeError) as exc:
                yield _Raw(index=i, data=None, error=f"captions.jsonl line {i + 1}: {exc.__class__.__name__}: {exc}")
                continue
            yield _Raw(index=i, data=data, captions=[str(c) for c in caps])

    return _Source("captions", [], gen(), sum(1 for ln in lines if ln.strip()), desc)


IMAGE_COLUMNS = ("image", "img", "jpg", "png", "image_bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "fine_label", "target")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "txt")


def _parquet_source(paths: list[Path], kind, class_names, desc) -> _Source:
    """HF export shape: an image column (struct {bytes, path} or binary) + label or captions."""
    schema = pq.read_schema(paths[0])
    names = schema.names
    img_col = next((c for c in IMAGE_COLUMNS if c in names), None)
    if img_col is None:
        img_col = next((f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
                        or (pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0)), None)
    if img_col is None:
        raise ClipcurateError(f"{desc}: no image column (looked for {', '.join(IMAGE_COLUMNS)} or a binary column)")
    label_col = next((c for c in LABEL_COLUMNS if c in names), None)
    cap_col = next((c for c in CAPTION_COLUMNS if c in names), None)
    if kind is None:
        kind = "classification" if label_col else "captions" if cap_col else None
    if kind is None:
        raise ClipcurateError(f"{desc}: no label column ({', '.join(LABEL_COLUMNS)}) nor captions column "
                              f"({', '.join(CAPTION_COLUMNS)}); columns are {names}")
    if kind == "classification" and label_col is None:
        raise ClipcurateError(f"{desc}: --kind classification but no label column ({', '.join(LABEL_COLUMNS)})")
    if kind == "captions" and cap_col is None:
        raise ClipcurateError(f"{desc}: --kind captions but no captions column ({', '.join(CAPTION_COLUMNS)})")

    classes: list[str] = []
    string_labels = False
    if kind == "classification":
        ltype = schema.field(label_col).type
        string_labels = pa.types.is_string(ltype) or pa.types.is_large_string(ltype) or pa.types.is_dictionary(ltype)
        if class_names is not None:
            classes = list(class_names.values()) if isinstance(class_names, dict) else list(class_names)
        elif string_labels:
            values = set()
            for p in paths:
                values.update(v for v in pq.read_table(p, columns=[label_col]).column(0).to_pylist() if v is not None)
            classes = sorted(values)
        else:
            classes = _hf_class_names(schema, label_col)
    lookup = {c: i for i, c in enumerate(classes)}
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    cols = [img_col] + ([label_col] if kind == "classification" else [cap_col])

    def gen():
        i = 0
        for p in paths:
            pf = pq.ParquetFile(p)
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                images = batch.column(0).to_pylist()
                other = batch.column(1).to_pylist()
                for img, val in zip(images, other):
                    data = img.get("bytes") if isinstance(img, dict) else img
                    if data is None:
                        yield _Raw(index=i, data=None, error=f"row {i}: no image bytes")
                    elif kind == "classification":
                        if val is None:
                            yield _Raw(index=i, data=None, error=f"row {i}: no label")
                        elif string_labels:
                            yield _Raw(index=i, data=data, label=lookup[val] if val in lookup else -1)
                        else:
                            yield _Raw(index=i, data=data, label=int(val))
                    else:
                        caps = [val] if isinstance(val, str) else [str(c) for c in (val or [])]
                        yield _Raw(index=i, data=data, captions=caps)
                    i += 1

    return _Source(kind, classes, gen(), total, desc)


def _hf_class_names(schema: pa.Schema, label_col: str) -> list[str]:
    """ClassLabel names from a Hugging Face ``datasets`` Parquet export's schema metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return []
    try:
        feats = json.loads(raw)["info"]["features"]
        return [str(n) for n in feats[label_col]["names"]]
    except (ValueError, KeyError, TypeError):
        return []


def _tar_source(paths: list[Path], kind, class_names, desc) -> _Source:
    """Webdataset tars: {key}.{image ext} with {key}.cls (label) or {key}.txt / {key}.json (captions)."""
    has_cls = False
    for p in paths[:1]:
        for _key, files in _tar_samples(p):
            has_cls = "cls" in files
            break
    if kind is None:
        kind = "classification" if has_cls else "captions"
    classes = list(class_names.values()) if isinstance(class_names, dict) else list(class_names or [])

    def gen():
        i = 0
        for p in paths:
            for key, files in _tar_samples(p):
                ext = next((e for e in files if "." + e in IMAGE_EXTS), None)
                data = files.get(ext) if ext else None
                if data is None:
                    yield _Raw(index=i, data=None, error=f"{p.name}:{key}: no image")
                elif kind == "classification":
                    try:
                        yield _Raw(index=i, data=data, label=int(files["cls"].decode().strip()))
                    except (KeyError, ValueError):
                        yield _Raw(index=i, data=None, error=f"{p.name}:{key}: no integer .cls")
                else:
                    caps: list[str] = []
                    if "json" in files:
                        try:
                            caps = [str(c) for c in json.loads(files["json"]).get("captions", [])]
                        except (ValueError, AttributeError):
                            caps = []
                    if not caps and "txt" in files:
                        caps = [ln.strip() for ln in files["txt"].decode("utf-8", "replace").splitlines() if ln.strip()]
                    yield _Raw(index=i, data=data, captions=caps)
                i += 1

    return _Source(kind, classes, gen(), None, desc)


def _tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) in tar order; the key is the member name up to the first dot of its basename."""
    key, files = None, {}
    try:
        tf = tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise ClipcurateError(f"{path}: not a readable tar file ({exc})") from None
    with tf:
        for m in tf:
            if not m.isfile():
                continue
            d, base = os.path.split(m.name)
            if base.startswith("."):
                continue
            k, _, ext = base.partition(".")
            k = os.path.join(d, k)
            if k != key:
                if key is not None:
                    yield key, files
                key, files = k, {}
            files[ext.lower()] = tf.extractfile(m).read()
        if key is not None:
            yield key, files


def _torchvision_source(source: str, kind, class_names, cache_dir) -> _Source:
    """torchvision:NAME — its test split (train=False, else split="test"/"val"), downloaded if needed."""
    import inspect

    name = source.split(":", 1)[1]
    datasets = __import__("torchvision.datasets", fromlist=["datasets"])
    cls = getattr(datasets, name, None)
    if cls is None or not inspect.isclass(cls):
        raise ClipcurateError(f"{source!r}: torchvision.datasets has no dataset {name!r} (e.g. torchvision:CIFAR10)")
    root = Path(cache_dir or Path.home() / ".cache" / "clipcurate" / "torchvision").expanduser()
    params = inspect.signature(cls).parameters
    kwargs = {}
    if "root" in params:
        kwargs["root"] = str(root)
        root.mkdir(parents=True, exist_ok=True)
    if "train" in params:
        kwargs["train"] = False
    elif "split" in params:
        kwargs["split"] = "test"
    if "download" in params:
        kwargs["download"] = True
    try:
        ds = cls(**kwargs)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, ValueError...
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        if "split" in kwargs and "split" in msg.lower():
            try:
                kwargs["split"] = "val"
                ds = cls(**kwargs)
            except Exception:
                raise ClipcurateError(f"{source!r}: could not open its test or val split ({msg})") from None
        else:
            raise ClipcurateError(
                f"{source!r} could not be downloaded into {root} ({exc.__class__.__name__}: {msg}); no internet? "
                f"Copy the dataset there, or export it elsewhere and pass --from FOLDER or FILE.parquet") from None
    if kind == "captions":
        raise ClipcurateError(f"{source!r}: torchvision sources are imported as classification benchmarks")
    classes = class_names or [str(c) for c in getattr(ds, "classes", [])]
    if isinstance(classes, dict):
        classes = list(classes.values())

    def gen():
        from PIL import Image

        for i in range(len(ds)):
            try:
                img, label = ds[i]
            except Exception as exc:
                yield _Raw(index=i, data=None, error=f"item {i}: {exc.__class__.__name__}: {exc}")
                continue
            if not isinstance(img, Image.Image):
                yield _Raw(index=i, data=None, error=f"item {i}: not a PIL image")
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            yield _Raw(index=i, data=buf.getvalue(), label=int(label))

    if not classes and len(ds):
        # A dataset without class names (e.g. FakeData): name the labels by number.
        n_classes = getattr(ds, "num_classes", None)
        if n_classes:
            classes = [str(c) for c in range(n_classes)]
    return _Source("classification", list(classes), gen(), len(ds), f"{source} ({root})")


# ---------------------------------------------------------------------------------------------
# writing


def _write_samples(path: Path, name: str, src: _Source) -> dict:
    """Check each image (full decode), compute its uid, write row groups of ROW_GROUP rows."""
    from PIL import Image, UnidentifiedImageError

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
                        with Image.open(io.BytesIO(raw.data)) as im:
                            im.load()
                            w, h = im.size
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


def _refresh_status(ws: Workspace) -> None:
    """`status` shows bench as done once any benchmark is in place."""
    from clipcurate.core.stage import SUCCESS

    root = ws.path(FOLDER)
    if list_benchmarks(ws):
        write_text(root / SUCCESS, "")


def _check_name(name: str) -> None:
    import re

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
