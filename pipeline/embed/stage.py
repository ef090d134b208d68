"""Stage ``embed``: open_clip (or copy-detector) embeddings of the pool and of the benchmarks.

Layout (the contract with overlap and eval; docs/design.md)::

    embed/{tag}/model.json                 {model, pretrained, tag, dim, kind: "clip"|"detector", ...}
    embed/{tag}/pool/{shard}.npy           float16 [n, d] L2-normalised image embeddings
    embed/{tag}/pool/{shard}.text.npy      float16 [n, d] caption embeddings, same rows (clip only)
    embed/{tag}/pool/{shard}.parquet       [embeddings] row -> uid, same row order
    embed/{tag}/pool/{shard}.done          completion marker, written last
    embed/{tag}/bench/{name}/image.npy + image.parquet
    embed/{tag}/bench/{name}/classes.npy   [C, d] zero-shot weights (classification, clip)
    embed/{tag}/bench/{name}/captions.npy + captions_index.npy   (caption benchmarks, clip)
    embed/{tag}/bench/{name}.done          marker (holds the benchmark's fingerprint)

How it runs, per call:

1. Work is cut into *parts*: a pool shard is one part (its tar); a benchmark is cut into parts of
   ``PART_ROWS`` rows of its samples.parquet so that several workers share one benchmark.
2. DataLoader workers (an IterableDataset, parts dealt round-robin to workers) read the bytes,
   decode each image with PIL and run the *PIL half* of the model's eval transform (resize, centre
   crop, RGB). They send **uint8** batches (4x less than float through shared memory) plus the
   tokenised captions. An image that fails to decode is counted and skipped, never fatal.
3. The main process does the *tensor half* of the transform on the whole batch at once, on the
   device — ``x.float() / 255``, then ``(x - mean) / std``: the very operations of torchvision's
   ToTensor + Normalize, so the pixels are bit-identical to ``preprocess(img)`` — then the model
   under autocast (bf16/fp16) with channels-last and pinned, non-blocking copies on CUDA.
4. When all parts of a shard or benchmark have arrived, its files are written atomically and then
   its ``.done`` marker: a kill -9 at any moment loses at most the shards in flight, and a rerun
   skips every finished one (a pool shard whose tar changed since, or a benchmark re-added with
   other samples, is redone).

Any image encoder can use the same path (:func:`embed_images`): an object with ``tag``, ``dim``,
``kind``, ``info``, ``preprocess`` and ``encode_tensors(x)``; the copy detector's descriptors
(``clipcurate embed --detector PATH``) are written in the same layout this way.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core.console import log, progress, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_open, clean_temp, read_json, write_json, write_text
from clipcurate.core.models import LoadedModel, ModelSpec
from clipcurate.core.stage import PLAN, SUCCESS, done_info, is_done, mark_done, marker
from clipcurate.core.workspace import Workspace

STAGE = "embed"
FOLDER = "embed"
PART_ROWS = 1024
MAX_BAD_REASONS = 20

EMBEDDINGS = manifest.register(
    "embeddings", version=1, glob=f"{FOLDER}/**/*.parquet", stage=STAGE,
    doc="Row -> uid of every embedding .npy under embed/{model_tag}/ (pool shards and benchmarks).",
    columns=[
        ("model_tag", pa.string(), "the model that made the vectors (folder embed/{model_tag})"),
        ("source", pa.string(), "'pool' or 'bench'"),
        ("name", pa.string(), "pool shard name, or benchmark name"),
        ("row", pa.int64(), "row of the vector in the .npy next to this file"),
        ("uid", pa.string(), "pool sample uid or benchmark sample uid"),
        ("index", pa.int64(), "benchmark index of the sample; null for pool rows"),
    ],
)

DEFAULTS = {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "device": "auto", "precision": "auto",
            "batch_size": 256, "workers": -1, "benchmarks": [], "decode": "pil"}
config.section(STAGE, DEFAULTS, {
    "model": "open_clip architecture (ViT-B-32, clipcurate-tiny, ...) or hf-hub:org/name",
    "pretrained": "hub tag (laion2b_s34b_b79k), a checkpoint file (train's epoch_N.pt), or random",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16",
    "batch_size": "images per forward pass",
    "workers": "DataLoader worker processes decoding images (-1: one per CPU core but one, at most 16)",
    "benchmarks": "benchmarks to embed (empty: all of them)",
    "decode": "pil (bit-identical to the model's transform) or torch (torchvision.io on the device: nvJPEG on CUDA)",
})
registry.register_stage(STAGE, FOLDER, "clipcurate embed", ("embeddings",))


# ---------------------------------------------------------------------------------------------
# Encoders: what turns pixels (and text) into vectors


class ClipEncoder:
    """An open_clip model as an encoder of images and tokenised text."""

    kind = "clip"

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.tag, self.dim = lm.tag, lm.dim
        self.preprocess, self.tokenizer = lm.preprocess, lm.tokenizer
        self.info = lm.info()
        self.device = lm.device

    def to(self, device: str) -> "ClipEncoder":
        return self  # models.load already placed it

    def encode_tensors(self, x):
        return self.lm.encode_image(x)

    def encode_tokens(self, tokens):
        return self.lm.encode_text(tokens)


def clip_encoder(spec: ModelSpec, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    from clipcurate.core import models

    dev = models.resolve_device(device)
    if precision in (None, "", "auto"):
        precision = "bf16" if dev.startswith("cuda") else "fp32"
    return ClipEncoder(models.load(spec, device=dev, precision=precision))


# Other encoders reachable from the CLI: kind -> "module:function(path) -> encoder".
ENCODER_LOADERS = {"detector": "clipcurate.detector.stage:load_descriptor"}


def load_encoder(kind: str, path: str):
    """e.g. ``load_encoder("detector", "workspace/detector/run1")`` (the hook `embed --detector` uses)."""
    import importlib

    if kind not in ENCODER_LOADERS:
        raise ClipcurateError(f"unknown encoder kind {kind!r}; known: {', '.join(ENCODER_LOADERS)}")
    mod, _, fn = ENCODER_LOADERS[kind].partition(":")
    try:
        loader = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise ClipcurateError(f"--{kind} needs {mod}.{fn}, which this installation lacks") from None
    return loader(path)


def _split_preprocess(preprocess):
    """Split an eval transform ending in ToTensor + Normalize into (PIL part, mean, std).

    The PIL part runs in the workers; ToTensor + Normalize run batched on the device. None when
    the transform has another shape (then workers run all of it and send float tensors)."""
    from torchvision import transforms as T

    ts = getattr(preprocess, "transforms", None)
    if not ts or len(ts) < 2 or not isinstance(ts[-1], T.Normalize) or not isinstance(ts[-2], T.ToTensor):
        return None
    return T.Compose(list(ts[:-2])), tuple(float(v) for v in ts[-1].mean), tuple(float(v) for v in ts[-1].std)


# ---------------------------------------------------------------------------------------------
# Reading: parts and the worker dataset


@dataclasses.dataclass(frozen=True)
class Part:
    group: str  # "pool/{shard}" or "bench/{name}"
    number: int
    total: int
    path: str  # a tar (pool) or a samples.parquet (bench)
    start: int = 0  # row range (bench)
    stop: int = 0


def _pool_records(path: str) -> Iterator[tuple[str, str | None, bytes | None, str]]:
    """(key, uid, image bytes, caption) per sample of a pool tar, in tar order."""
    from clipcurate.bench.stage import IMAGE_EXTS, _tar_samples

    for key, files in _tar_samples(Path(path)):
        ext = next((e for e in files if "." + e in IMAGE_EXTS), None)
        uid = None
        if "json" in files:
            try:
                uid = json.loads(files["json"]).get("uid")
            except (ValueError, AttributeError):
                uid = None
        caption = files["txt"].decode("utf-8", "replace") if "txt" in files else ""
        yield key, uid, files.get(ext) if ext else None, caption


def _bench_records(path: str, start: int, stop: int) -> Iterator[tuple[str, str, bytes | None, list[str], int]]:
    """(key, uid, image bytes, captions, index) for rows [start, stop) of a samples.parquet."""
    pf = pq.ParquetFile(path)
    row = 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if row + n <= start or row >= stop:
            row += n
            continue
        t = pf.read_row_group(rg, columns=["uid", "index", "captions", "image"])
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        for i in range(t.num_rows):
            if start <= row + i < stop:
                yield str(cols["index"][i]), cols["uid"][i], cols["image"][i], cols["captions"][i] or [], cols["index"][i]
        row += n


class _PartsDataset:
    """IterableDataset over parts; worker w of W takes parts w, w+W, ... and yields batches."""

    def __init__(self, parts: Sequence[Part], preprocess, split, tokenizer, batch_size: int, decode: str = "pil"):
        self.parts = list(parts)
        self.decode = decode
        self.preprocess = preprocess
        self.split = split
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __iter__(self):
        import torch.utils.data as tud

        info = tud.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for j, part in enumerate(self.parts):
            if j % nw == wid:
                yield from self._part(part)

    def _pixels(self, data: bytes):
        """Decode + the PIL half of the transform -> uint8 CHW tensor (or the full float transform)."""
        import torch
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if self.split is None:
                return self.preprocess(im)
            out = self.split[0](im)
            if out.mode != "RGB":
                out = out.convert("RGB")
            return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)

    def _part(self, part: Part):
        import torch

        pool = part.group.startswith("pool/")
        records = _pool_records(part.path) if pool else (
            (k, u, d, c, idx) for k, u, d, c, idx in _bench_records(part.path, part.start, part.stop))
        batch: dict[str, list] = {"uids": [], "index": [], "pixels": [], "captions": []}
        bad: list[str] = []
        n_bad = 0

        def emit():
            texts = batch["captions"]
            tokens = cap_index = None
            if self.tokenizer is not None:
                if pool:
                    flat, cap_index = texts, None
                else:
                    flat = [c for caps in texts for c in caps]
                    cap_index = [batch["index"][i] for i, caps in enumerate(texts) for _ in caps]
                tokens = self.tokenizer(flat) if flat else None
            item = {"group": part.group, "part": part.number, "end": False, "uids": list(batch["uids"]),
                    "index": list(batch["index"]), "tokens": tokens, "cap_index": cap_index}
            if self.decode == "torch":
                # Encoded bytes, concatenated: one shared-memory tensor per batch, not one per image.
                item["raw"] = torch.cat(batch["pixels"])
                item["raw_sizes"] = [len(r) for r in batch["pixels"]]
            else:
                item["pixels"] = torch.stack(batch["pixels"])
            for v in batch.values():
                v.clear()
            return item

        for rec in records:
            key, uid, data = rec[0], rec[1], rec[2]
            reason = None
            if data is None:
                reason = "no image"
            elif not uid:
                reason = "no uid in its .json"
            elif self.decode == "torch":
                px = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                try:
                    px = self._pixels(data)
                except Exception as exc:  # any decoder failure: count it, keep going
                    reason = f"undecodable image ({exc.__class__.__name__}: {str(exc)[:80]})"
            if reason is not None:
                n_bad += 1
                if len(bad) < MAX_BAD_REASONS:
                    bad.append(f"{part.group}:{key}: {reason}")
                continue
            batch["uids"].append(uid)
            batch["index"].append(rec[4] if not pool else None)
            batch["pixels"].append(px)
            batch["captions"].append(rec[3])
            if len(batch["uids"]) >= self.batch_size:
                yield emit()
        if batch["uids"]:
            yield emit()
        yield {"group": part.group, "part": part.number, "end": True, "n_bad": n_bad, "bad": bad}


_DATASET_CLS = None


def _dataset_cls():
    """``_PartsDataset`` as a torch IterableDataset, built on first use (importing torch.utils.data
    at module import would slow every CLI command). Reachable as ``clipcurate.embed.stage.PartsDataset``
    so that spawned workers can unpickle it."""
    global _DATASET_CLS
    if _DATASET_CLS is None:
        from torch.utils.data import IterableDataset

        class PartsDataset(_PartsDataset, IterableDataset):
            pass

        PartsDataset.__module__ = __name__
        _DATASET_CLS = PartsDataset
    return _DATASET_CLS


def __getattr__(name: str):
    if name == "PartsDataset":
        return _dataset_cls()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# The embedding loop


@dataclasses.dataclass
class _Acc:
    """What one part accumulated."""

    uids: list = dataclasses.field(default_factory=list)
    index: list = dataclasses.field(default_factory=list)
    image: list = dataclasses.field(default_factory=list)
    text: list = dataclasses.field(default_factory=list)
    cap_index: list = dataclasses.field(default_factory=list)
    n_bad: int = 0
    bad: list = dataclasses.field(default_factory=list)
    ended: bool = False


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _auto_workers(workers: int | None) -> int:
    """-1: one worker per core but one (the main process feeds the model), at most 16."""
    if workers is None or workers < 0:
        return max(1, min(16, _cpu_count() - 1))
    return workers


@contextmanager
def _cpu_threads(device: str, workers: int):
    """On CPU, leave the cores to the decoding workers: the model gets cores - workers threads (at
    least one). Oversubscribed OpenMP threads spin against the workers and against each other; on a
    busy 2-core machine one thread ran the tiny model 5-10x faster than two."""
    import torch

    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, _cpu_count() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_parts(enc, parts: Sequence[Part], *, device: str, batch_size: int, workers: int,
               on_group: Callable[[str, list[_Acc]], None], description: str,
               timing: dict | None = None, decode: str = "pil") -> None:
    """Feed parts through the encoder; call ``on_group(group, accs)`` when a group is complete."""
    import torch
    from torch.utils.data import DataLoader

    if not parts:
        return
    split = _split_preprocess(enc.preprocess)
    tokenizer = getattr(enc, "tokenizer", None) if hasattr(enc, "encode_tokens") else None
    if decode not in DECODERS:
        raise ClipcurateError(f"decode {decode!r} is not one of {', '.join(DECODERS)}")
    if decode == "torch" and split is None:
        log("embed: --decode torch needs a resize/crop + ToTensor + Normalize transform; decoding with PIL")
        decode = "pil"
    ds = _dataset_cls()(parts, enc.preprocess, split, tokenizer, batch_size, decode)
    workers = min(_auto_workers(workers), len(parts))
    cuda = device.startswith("cuda")
    loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=cuda,
                        prefetch_factor=2 if workers else None, persistent_workers=False)
    if split is not None:
        mean = torch.tensor(split[1], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(split[2], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    groups: dict[str, dict[int, _Acc]] = {}
    totals = {p.group: p.total for p in parts}
    n_images = 0
    t_model = 0.0
    t_start = time.perf_counter()
    with progress(description, total=None) as advance, _cpu_threads(device, workers):
        t_first = None
        for item in loader:
            if t_first is None:  # worker start-up (fork, first tar opened, first batch decoded)
                t_first = time.perf_counter()
            acc = groups.setdefault(item["group"], {}).setdefault(item["part"], _Acc())
            if item["end"]:
                acc.ended = True
                acc.n_bad += item["n_bad"]
                acc.bad += item["bad"]
                parts_of = groups[item["group"]]
                if len(parts_of) == totals[item["group"]] and all(a.ended for a in parts_of.values()):
                    on_group(item["group"], [parts_of[k] for k in sorted(parts_of)])
                    del groups[item["group"]]
                continue
            t0 = time.perf_counter()
            if "raw" in item:
                raws = list(torch.split(item["raw"], item["raw_sizes"]))
                x, keep, reasons = _torch_decode(raws, device, split[0])
                if reasons:
                    _drop_rows(item, keep)
                    acc.n_bad += len(reasons)
                    acc.bad += [f"{item['group']}:{r}" for r in reasons][:MAX_BAD_REASONS]
                if x is None:
                    continue
            else:
                x = item["pixels"].to(device, non_blocking=cuda)
            if split is not None:
                # ToTensor + Normalize, batched: the same float ops in the same order.
                x = x.float().div(255).sub_(mean).div_(std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            v = enc.encode_tensors(x)
            acc.image.append(v.to(torch.float16).cpu().numpy())
            if item["tokens"] is not None:
                t = item["tokens"].to(device, non_blocking=cuda)
                acc.text.append(enc.encode_tokens(t).to(torch.float16).cpu().numpy())
            if timing is not None and cuda:
                torch.cuda.synchronize()
            t_model += time.perf_counter() - t0
            acc.uids += item["uids"]
            acc.index += item["index"]
            if item["cap_index"] is not None:
                acc.cap_index += item["cap_index"]
            n_images += len(item["uids"])
            advance(len(item["uids"]))
    if timing is not None:
        timing.update(images=n_images, seconds=time.perf_counter() - t_start, model_seconds=t_model,
                      startup_seconds=(t_first or t_start) - t_start)
    if groups:  # a worker died without finishing its parts: DataLoader raises before this
        raise ClipcurateError(f"embed: unfinished parts {sorted(groups)}; rerun `clipcurate embed`")


DECODERS = ("pil", "torch")


def _torch_decode(raws: list, device: str, pil_half):
    """Decode a batch of encoded images with torchvision.io on ``device`` (nvJPEG on CUDA), then run
    the resize/crop half of the transform on same-size stacks. Returns (uint8 [n, 3, H, W] or None,
    kept row numbers, reasons for the rows dropped). Not bit-identical to PIL: another JPEG decoder
    and another resampler (differences of a few 1e-3 in cosine)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    n = len(raws)
    imgs: list = [None] * n
    jpeg = [i for i, r in enumerate(raws) if len(r) > 2 and int(r[0]) == 0xFF and int(r[1]) == 0xD8]
    if jpeg:
        try:
            for i, im in zip(jpeg, decode_jpeg([raws[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)):
                imgs[i] = im
        except RuntimeError:  # one bad file fails the batch call: decode one by one
            for i in jpeg:
                try:
                    imgs[i] = decode_jpeg(raws[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass
    reasons: list[str] = []
    for i in range(n):
        if imgs[i] is None:  # not a JPEG (PNG, WebP...) or nvJPEG refused it: the CPU decoder
            try:
                imgs[i] = decode_image(raws[i], mode=ImageReadMode.RGB).to(device)
            except Exception as exc:
                reasons.append(f"row {i}: undecodable image ({exc.__class__.__name__}: {str(exc)[:80]})")
    out: list = [None] * n
    buckets: dict[tuple, list[int]] = {}
    for i, im in enumerate(imgs):
        if im is not None:
            buckets.setdefault(tuple(im.shape), []).append(i)
    for idx in buckets.values():
        y = pil_half(torch.stack([imgs[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = y[j]
    keep = [i for i in range(n) if out[i] is not None]
    return (torch.stack([out[i] for i in keep]) if keep else None), keep, reasons


def _drop_rows(item: dict, keep: list[int]) -> None:
    """Keep only rows ``keep`` of a batch (and their captions' tokens)."""
    kept_index = [item["index"][i] for i in keep]
    if item["tokens"] is not None:
        if item["cap_index"] is None:  # pool: one caption per row
            item["tokens"] = item["tokens"][keep] if keep else None
        else:
            keep_set = set(kept_index)
            mask = [j for j, b in enumerate(item["cap_index"]) if b in keep_set]
            item["tokens"] = item["tokens"][mask] if mask else None
            item["cap_index"] = [item["cap_index"][j] for j in mask]
    item["uids"] = [item["uids"][i] for i in keep]
    item["index"] = kept_index


def _cat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float16) if chunks else np.zeros((0, dim), np.float16)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, arr)


def _write_rows(path: Path, tag: str, source: str, name: str, uids: list, index: list) -> None:
    manifest.write(EMBEDDINGS, {"model_tag": [tag] * len(uids), "source": [source] * len(uids),
                                "name": [name] * len(uids), "row": list(range(len(uids))), "uid": uids,
                                "index": index}, path)


# ---------------------------------------------------------------------------------------------
# Public API


def tag_dir(ws: Workspace, tag: str) -> Path:
    return ws.path(FOLDER, tag)


def _write_model_json(ws: Workspace, enc) -> None:
    info = {"model": enc.info.get("model", enc.info.get("name", enc.tag)),
            "pretrained": enc.info.get("pretrained", enc.info.get("file")),
            **{k: v for k, v in enc.info.items() if k not in ("model", "pretrained")},
            "tag": enc.tag, "dim": int(enc.dim), "kind": enc.kind}
    p = tag_dir(ws, enc.tag) / "model.json"
    if p.is_file():
        old = read_json(p)
        if old.get("dim") != info["dim"] or old.get("kind", "clip") != info["kind"]:
            raise ClipcurateError(
                f"{p} says dim {old.get('dim')} / kind {old.get('kind')} but this model has dim {info['dim']} / "
                f"kind {info['kind']}: delete {p.parent} or use --force with the original model")
    write_json(p, info)


def pool_shards(ws: Workspace) -> list[tuple[str, Path]]:
    """Downloaded pool shards ready to embed: (shard, tar) with the download's completion marker."""
    tars = sorted(ws.path("pool", "shards").glob("*.tar"))
    tars = [t for t in tars if not t.name.startswith(".")]
    if not tars:
        raise MissingUpstream(f"pool shards ({ws.path('pool', 'shards')}/*.tar)", "clipcurate download")
    folder = ws.path("pool")
    marked = [t for t in tars if is_done(folder, t.stem)]
    if not any(marker(folder, t.stem).exists() for t in tars):
        return [(t.stem, t) for t in tars]  # a pool made elsewhere (no markers): take every tar
    if len(marked) < len(tars):
        warn(f"embed: {len(tars) - len(marked)} pool shard(s) are still downloading (no .done); left out")
    return [(t.stem, t) for t in marked]


def embed_pool(ws: Workspace, spec: ModelSpec, device: str = "auto", precision: str = "auto",
               batch_size: int = 256, workers: int = -1, force: bool = False, encoder=None,
               timing: dict | None = None, executor=None, decode: str = "pil") -> str:
    """Embed every downloaded pool shard (images and captions); returns the model tag."""
    enc = encoder or clip_encoder(spec, device, precision)
    return embed_images(ws, enc, pool=True, benchmarks=[], device=_device_of(enc, device), batch_size=batch_size,
                        workers=workers, force=force, timing=timing, executor=executor, decode=decode,
                        encoder_factory=None if encoder else (lambda: clip_encoder(spec, device, precision)))


def embed_benchmarks(ws: Workspace, spec: ModelSpec, names: Sequence[str] | None = None, device: str = "auto",
                     precision: str = "auto", batch_size: int = 256, workers: int = -1, force: bool = False,
                     encoder=None, decode: str = "pil") -> str:
    """Embed benchmark images, class prompts (zero-shot weights) and captions; returns the model tag."""
    enc = encoder or clip_encoder(spec, device, precision)
    return embed_images(ws, enc, pool=False, benchmarks=names, device=_device_of(enc, device),
                        batch_size=batch_size, workers=workers, force=force, decode=decode)


def _device_of(enc, device: str) -> str:
    from clipcurate.core.models import resolve_device

    return getattr(enc, "device", None) or resolve_device(device)


def embed_images(ws: Workspace, enc, *, pool: bool = True, benchmarks: Sequence[str] | None = None,
                 device: str = "cpu", batch_size: int = 256, workers: int = -1, force: bool = False,
                 timing: dict | None = None, executor=None, encoder_factory=None, decode: str = "pil") -> str:
    """The generic path: any encoder with tag, dim, kind, info, preprocess, encode_tensors(x)
    (and, for text, tokenizer + encode_tokens) writes embed/{tag}/ in the contract layout.
    ``benchmarks=None`` means all benchmarks, ``[]`` none."""
    from clipcurate.bench import stage as benchmod

    if hasattr(enc, "model") and not isinstance(enc, ClipEncoder):
        enc.model.to(device).eval()  # e.g. the detector's Descriptor
    if batch_size < 1:
        raise ClipcurateError(f"--batch-size {batch_size}: must be at least 1")
    root = tag_dir(ws, enc.tag)
    root.mkdir(parents=True, exist_ok=True)
    _write_model_json(ws, enc)

    # 1. What to do: pool shards without a valid marker, benchmarks whose marker is stale.
    parts: list[Part] = []
    pool_dir = root / "pool"
    pool_todo: dict[str, Path] = {}
    if pool:
        shards = pool_shards(ws)
        pool_dir.mkdir(parents=True, exist_ok=True)
        clean_temp(pool_dir)
        write_json(pool_dir / PLAN, {"stage": STAGE, "shards": [s for s, _ in shards]})
        for s, tar in shards:
            if force or not _pool_done(pool_dir, s, tar):
                marker(pool_dir, s).unlink(missing_ok=True)
                pool_todo[s] = tar
                parts.append(Part(f"pool/{s}", 0, 1, str(tar)))
        if len(pool_todo) < len(shards):
            log(f"embed: {len(shards) - len(pool_todo)}/{len(shards)} pool shards already done, skipping them")
        if pool_todo:
            (pool_dir / SUCCESS).unlink(missing_ok=True)
    bench_dir = root / "bench"
    bench_meta: dict[str, Any] = {}
    if benchmarks is None or len(benchmarks):
        available = [m["name"] for m in benchmod.list_benchmarks(ws)]
        names = available if benchmarks is None else list(benchmarks)
        if benchmarks is not None:
            for n in names:
                benchmod.load(ws, n, columns=["uid"])  # one clear line if missing
        elif not available and not pool:
            raise MissingUpstream(f"benchmarks ({ws.path('benchmarks')})", "clipcurate bench add NAME --from SOURCE")
        bench_dir.mkdir(parents=True, exist_ok=True)
        clean_temp(bench_dir)
        plan = read_json(bench_dir / PLAN).get("shards", []) if (bench_dir / PLAN).is_file() else []
        write_json(bench_dir / PLAN, {"stage": STAGE, "shards": sorted(set(plan) | set(names))})
        skipped = []
        for n in names:
            b = benchmod.load(ws, n, columns=["uid"])
            if not force and is_done(bench_dir, n) and done_info(bench_dir, n).get("fingerprint") == b.meta["fingerprint"]:
                skipped.append(n)
                continue
            marker(bench_dir, n).unlink(missing_ok=True)
            (bench_dir / SUCCESS).unlink(missing_ok=True)
            out = bench_dir / n
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            bench_meta[n] = b
            path = benchmod.bench_dir(ws, n) / "samples.parquet"
            nrows = b.samples.num_rows
            chunks = max(1, -(-nrows // PART_ROWS))
            parts += [Part(f"bench/{n}", i, chunks, str(path), i * PART_ROWS, min(nrows, (i + 1) * PART_ROWS))
                      for i in range(chunks)]
        if skipped:
            log(f"embed: {len(skipped)} benchmark(s) already embedded by {enc.tag}, skipping them: "
                f"{', '.join(skipped)} (--force redoes them)")

    # 2. Embed; write each shard / benchmark as soon as all of its parts are in.
    summary = {"images": 0, "bad": 0, "groups_bad": 0, "example": ""}

    def on_group(group: str, accs: list[_Acc]) -> None:
        kind, _, name = group.partition("/")
        uids = [u for a in accs for u in a.uids]
        image = _cat([c for a in accs for c in a.image], enc.dim)
        n_bad = sum(a.n_bad for a in accs)
        bad = [r for a in accs for r in a.bad][:MAX_BAD_REASONS]
        summary["images"] += len(uids)
        summary["bad"] += n_bad
        if n_bad:
            summary["groups_bad"] += 1
            summary["example"] = summary["example"] or bad[0]
        if kind == "pool":
            _save_npy(pool_dir / f"{name}.npy", image)
            if hasattr(enc, "encode_tokens"):
                _save_npy(pool_dir / f"{name}.text.npy", _cat([c for a in accs for c in a.text], enc.dim))
            _write_rows(pool_dir / f"{name}.parquet", enc.tag, "pool", name, uids, [None] * len(uids))
            tar = pool_todo[name]
            st = tar.stat()
            mark_done(pool_dir, name, {"n": len(uids), "n_bad": n_bad, "bad": bad, "tar_size": st.st_size,
                                       "tar_mtime_ns": st.st_mtime_ns})
        else:
            out = bench_dir / name
            index = [i for a in accs for i in a.index]
            _save_npy(out / "image.npy", image)
            _write_rows(out / "image.parquet", enc.tag, "bench", name, uids, index)
            b = bench_meta[name]
            n_caps = 0
            if hasattr(enc, "encode_tokens"):
                if b.kind == "classification":
                    _save_npy(out / "classes.npy", _class_weights(enc, b.classes, b.templates, device, batch_size))
                else:
                    caps = _cat([c for a in accs for c in a.text], enc.dim)
                    cap_index = np.asarray([i for a in accs for i in a.cap_index], dtype=np.int64)
                    n_caps = len(cap_index)
                    _save_npy(out / "captions.npy", caps)
                    _save_npy(out / "captions_index.npy", cap_index)
            mark_done(bench_dir, name, {"n": len(uids), "n_bad": n_bad, "bad": bad, "n_captions": n_caps,
                                        "fingerprint": b.meta["fingerprint"]})

    if executor is not None and executor.kind != "local" and pool_todo:  # --executor ray: pool shards on actors
        from clipcurate.embed.remote import embed_pool_shards
        summary["images"] += embed_pool_shards(executor, enc, encoder_factory, pool_dir, pool_todo,
                                               batch_size=batch_size, workers=workers)
        parts = [p for p in parts if not p.group.startswith("pool/")]
    _run_parts(enc, parts, device=device, batch_size=batch_size, workers=workers, on_group=on_group,
               description=f"embed {enc.tag}", timing=timing, decode=decode)
    if pool:
        write_text(pool_dir / SUCCESS, "")
    if bench_meta or (benchmarks is None or len(benchmarks)):
        if bench_dir.is_dir() and all(is_done(bench_dir, n) for n in read_json(bench_dir / PLAN)["shards"]):
            write_text(bench_dir / SUCCESS, "")
    _refresh_status(ws)
    if summary["bad"]:
        warn(f"embed: skipped {summary['bad']} unreadable sample(s) in {summary['groups_bad']} shard(s)/benchmark(s) "
             f"(listed in their .done markers), e.g. {summary['example']}")
    if parts:
        log(f"embed {enc.tag}: {summary['images']} images embedded, {summary['bad']} skipped")
    return enc.tag


def _pool_done(folder: Path, shard: str, tar: Path) -> bool:
    """Finished, and the tar is the one that was embedded (same size and mtime)."""
    if not is_done(folder, shard):
        return False
    try:
        info = done_info(folder, shard)
    except (OSError, ValueError):
        return False
    st = tar.stat()
    return info.get("tar_size") == st.st_size and info.get("tar_mtime_ns") == st.st_mtime_ns


def _class_weights(enc, classes: list[str], templates: list[str], device: str, batch_size: int) -> np.ndarray:
    """Zero-shot weights: per class, the mean of its normalised prompt embeddings, renormalised."""
    from clipcurate.bench.stage import prompts

    if not classes:
        return np.zeros((0, enc.dim), np.float16)
    texts = prompts(classes, templates)
    vecs = []
    for i in range(0, len(texts), batch_size):
        vecs.append(enc.encode_tokens(enc.tokenizer(texts[i:i + batch_size]).to(device)).cpu().numpy())
    v = np.concatenate(vecs).astype(np.float32).reshape(len(classes), len(templates), enc.dim).mean(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
    return v.astype(np.float16)


def _refresh_status(ws: Workspace) -> None:
    """embed/_plan.json lists every {tag}/pool/{shard} and {tag}/bench/{name}; `status` reads it."""
    root = ws.path(FOLDER)
    shards = []
    for plan in sorted(root.glob("*/*/" + PLAN)):
        rel = plan.parent.relative_to(root).as_posix()
        shards += [f"{rel}/{s}" for s in read_json(plan).get("shards", [])]
    write_json(root / PLAN, {"stage": STAGE, "shards": shards})
    if shards and all(is_done(root, s) for s in shards):
        write_text(root / SUCCESS, "")
    else:
        (root / SUCCESS).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Readers for overlap / eval


def model_info(ws: Workspace, tag: str) -> dict:
    p = tag_dir(ws, tag) / "model.json"
    if not p.is_file():
        tags = sorted(q.parent.name for q in ws.path(FOLDER).glob("*/model.json"))
        raise MissingUpstream(f"embeddings of model {tag!r} (have: {', '.join(tags) or 'none'})", "clipcurate embed")
    return read_json(p)


def check_compatible(ws: Workspace, tag_a: str, tag_b: str) -> None:
    """Raise a one-line error unless both tags hold vectors from the same model and dimension."""
    a, b = model_info(ws, tag_a), model_info(ws, tag_b)
    if a.get("dim") != b.get("dim"):
        raise ClipcurateError(
            f"embedding dimension mismatch: {tag_a} has dim {a.get('dim')}, {tag_b} has dim {b.get('dim')}; "
            f"embed the pool and the benchmarks with one model (`clipcurate embed --model ...`)")
    if tag_a != tag_b or a.get("kind", "clip") != b.get("kind", "clip"):
        raise ClipcurateError(
            f"model mismatch: {tag_a} ({a.get('model')} / {a.get('pretrained')}) vs {tag_b} "
            f"({b.get('model')} / {b.get('pretrained')}); vectors of different models are not comparable: "
            f"embed both with the same model")


def _load_npy(path: Path, dim: int | None = None) -> np.ndarray:
    try:
        x = np.load(path)
    except FileNotFoundError:
        raise ClipcurateError(f"{path} not found: rerun `clipcurate embed`") from None
    except Exception as exc:
        raise ClipcurateError(f"{path}: not a readable .npy ({exc.__class__.__name__}); rerun `clipcurate embed --force`") from None
    if dim is not None and x.ndim == 2 and x.shape[1] != dim:
        raise ClipcurateError(f"{path}: dimension {x.shape[1]} but model.json says {dim}; rerun `clipcurate embed --force`")
    return x


def iter_pool(ws: Workspace, tag: str) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """(shard, uids, float16 [n, d]) for every finished pool shard of a model, in shard order."""
    dim = model_info(ws, tag).get("dim")
    folder = tag_dir(ws, tag) / "pool"
    plan = read_json(folder / PLAN).get("shards", []) if (folder / PLAN).is_file() else []
    done = [s for s in plan if is_done(folder, s)]
    if not done:
        raise MissingUpstream(f"pool embeddings of {tag} ({folder})", "clipcurate embed")
    for s in done:
        x = _load_npy(folder / f"{s}.npy", dim)
        tbl = manifest.read(EMBEDDINGS, folder / f"{s}.parquet", ["row", "uid"])
        if tbl.num_rows != len(x):
            raise ClipcurateError(f"{folder / s}.parquet has {tbl.num_rows} rows for {len(x)} vectors; rerun `clipcurate embed --force`")
        yield s, tbl.column("uid").to_pylist(), x


def load_bench(ws: Workspace, tag: str, name: str):
    """(indices, uids, image [m, d], classes [C, d] or None, captions [k, d] or None, captions_index or None)."""
    info = model_info(ws, tag)
    folder = tag_dir(ws, tag) / "bench" / name
    if not is_done(folder.parent, name):
        raise MissingUpstream(f"embeddings of benchmark {name!r} by {tag}",
                              f"clipcurate embed --model {info.get('model')} --pretrained {info.get('pretrained')}")
    dim = info.get("dim")
    image = _load_npy(folder / "image.npy", dim)
    tbl = manifest.read(EMBEDDINGS, folder / "image.parquet", ["row", "uid", "index"])
    if tbl.num_rows != len(image):
        raise ClipcurateError(f"{folder}/image.parquet has {tbl.num_rows} rows for {len(image)} vectors; rerun `clipcurate embed --force`")
    indices = tbl.column("index").to_numpy(zero_copy_only=False).astype(np.int64)
    uids = tbl.column("uid").to_pylist()
    classes = _load_npy(folder / "classes.npy", dim) if (folder / "classes.npy").is_file() else None
    captions = _load_npy(folder / "captions.npy", dim) if (folder / "captions.npy").is_file() else None
    cap_index = np.load(folder / "captions_index.npy") if (folder / "captions_index.npy").is_file() else None
    return indices, uids, image, classes, captions, cap_index
