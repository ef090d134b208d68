"""Benchmark sources: read any supported layout as a stream of raw samples.

:func:`open_source` looks at what ``bench add --from`` names and returns a :class:`Source` — the
kind, the class names it knows, and an iterator of :class:`RawSample` (the image bytes, a label or
captions, or the reason the sample cannot be read). The layouts:

- a folder tree, one subfolder per class (the ImageFolder layout);
- a folder with ``captions.jsonl`` (``{"image": "rel/path.jpg", "captions": [...]}`` per line);
- Parquet (a Hugging Face ``datasets`` export: an image column that is a struct ``{bytes, path}``
  or raw bytes, and a ``label`` column or a ``captions`` list column);
- webdataset tars (:func:`tar_samples` reads them; the embed stage reads benchmark tars with it too);
- ``torchvision:NAME``: its test split, downloaded into a cache folder when there is internet.

Nothing here checks or writes images: :mod:`clipcurate.bench.stage` decodes each one and skips
(and counts) what does not decode.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipcurate.core.errors import ClipcurateError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclasses.dataclass
class RawSample:
    """One sample as read from a source, before it is checked and written."""

    index: int
    data: bytes | None
    label: int | None = None
    captions: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None



@dataclasses.dataclass
class Source:
    kind: str
    classes: list[str]
    samples: Iterable[RawSample]
    total: int | None
    description: str


def open_source(source: str, kind: str | None, class_names: list[str] | None, cache_dir: str | None) -> Source:
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


def _folder_source(root: Path, kind, class_names, desc) -> Source:
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
            yield RawSample(index=i, data=f.read_bytes(), label=ci)

    return Source("classification", names, gen(), len(files), desc)


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


def _captions_folder_source(root: Path, kind, desc) -> Source:
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
                yield RawSample(index=i, data=None, error=f"captions.jsonl line {i + 1}: {exc.__class__.__name__}: {exc}")
                continue
            yield RawSample(index=i, data=data, captions=[str(c) for c in caps])

    return Source("captions", [], gen(), sum(1 for ln in lines if ln.strip()), desc)


IMAGE_COLUMNS = ("image", "img", "jpg", "png", "image_bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "fine_label", "target")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "txt")


def _parquet_source(paths: list[Path], kind, class_names, desc) -> Source:
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
                        yield RawSample(index=i, data=None, error=f"row {i}: no image bytes")
                    elif kind == "classification":
                        if val is None:
                            yield RawSample(index=i, data=None, error=f"row {i}: no label")
                        elif string_labels:
                            yield RawSample(index=i, data=data, label=lookup[val] if val in lookup else -1)
                        else:
                            yield RawSample(index=i, data=data, label=int(val))
                    else:
                        caps = [val] if isinstance(val, str) else [str(c) for c in (val or [])]
                        yield RawSample(index=i, data=data, captions=caps)
                    i += 1

    return Source(kind, classes, gen(), total, desc)


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


def _tar_source(paths: list[Path], kind, class_names, desc) -> Source:
    """Webdataset tars: {key}.{image ext} with {key}.cls (label) or {key}.txt / {key}.json (captions)."""
    has_cls = False
    for p in paths[:1]:
        for _key, files in tar_samples(p):
            has_cls = "cls" in files
            break
    if kind is None:
        kind = "classification" if has_cls else "captions"
    classes = list(class_names.values()) if isinstance(class_names, dict) else list(class_names or [])

    def gen():
        i = 0
        for p in paths:
            for key, files in tar_samples(p):
                ext = next((e for e in files if "." + e in IMAGE_EXTS), None)
                data = files.get(ext) if ext else None
                if data is None:
                    yield RawSample(index=i, data=None, error=f"{p.name}:{key}: no image")
                elif kind == "classification":
                    try:
                        yield RawSample(index=i, data=data, label=int(files["cls"].decode().strip()))
                    except (KeyError, ValueError):
                        yield RawSample(index=i, data=None, error=f"{p.name}:{key}: no integer .cls")
                else:
                    caps: list[str] = []
                    if "json" in files:
                        try:
                            caps = [str(c) for c in json.loads(files["json"]).get("captions", [])]
                        except (ValueError, AttributeError):
                            caps = []
                    if not caps and "txt" in files:
                        caps = [ln.strip() for ln in files["txt"].decode("utf-8", "replace").splitlines() if ln.strip()]
                    yield RawSample(index=i, data=data, captions=caps)
                i += 1

    return Source(kind, classes, gen(), None, desc)


def tar_samples(path: Path, on_error: Callable[[str, str], None] | None = None
                ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) in tar order; the key is the member name up to the first dot of its basename.

    A tar that ends inside a member (truncated, or corrupt past some point) stops the walk there: the
    samples before it are yielded, the one being read is not. ``on_error(key, reason)`` is told which
    (key None when no sample was being read); without it, a one-line error is raised.
    """
    key, files = None, {}
    try:
        tf = tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise ClipcurateError(f"{path}: not a readable tar file ({exc})") from None
    with tf:
        members = iter(tf)
        while True:
            try:
                m = next(members, None)
                if m is None:
                    break
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
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                reason = f"the tar is cut short inside this sample ({exc.__class__.__name__}: {exc})"
                if on_error is None:
                    raise ClipcurateError(f"{path}: unreadable after {key or 'the start'}: {reason}") from None
                on_error(key, reason)
                return
        if key is not None:
            yield key, files


def _torchvision_source(source: str, kind, class_names, cache_dir) -> Source:
    """torchvision:NAME — its test split (train=False, else split="test"/"val"), downloaded if needed."""
    name = source.split(":", 1)[1]
    # torchvision imports torch (2.6 s); every stage module is imported by `clipcurate status`
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
        for i in range(len(ds)):
            try:
                img, label = ds[i]
            except Exception as exc:
                yield RawSample(index=i, data=None, error=f"item {i}: {exc.__class__.__name__}: {exc}")
                continue
            if not isinstance(img, Image.Image):
                yield RawSample(index=i, data=None, error=f"item {i}: not a PIL image")
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            yield RawSample(index=i, data=buf.getvalue(), label=int(label))

    if not classes and len(ds):
        # A dataset without class names (e.g. FakeData): name the labels by number.
        n_classes = getattr(ds, "num_classes", None)
        if n_classes:
            classes = [str(c) for c in range(n_classes)]
    return Source("classification", list(classes), gen(), len(ds), f"{source} ({root})")

