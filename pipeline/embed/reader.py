"""Reading: the work cut into parts, and the dataset that decodes them in DataLoader workers.

Work is cut into *parts*: a pool shard is one part (its tar); a benchmark is cut into parts of
``PART_ROWS`` rows (:mod:`clipcurate.embed.stage`) of its samples.parquet so that several workers
share one benchmark. DataLoader workers (an IterableDataset, parts dealt round-robin to workers)
read the bytes, decode each image with PIL and run the *PIL half* of the model's eval transform
(resize, centre crop, RGB). They send **uint8** batches (4x less than float through shared memory)
plus the tokenised captions; with ``decode = "torch"`` they send the encoded bytes instead, for the
device to decode. An image that fails to decode is counted and skipped (the first
``MAX_BAD_REASONS`` reasons are kept), never fatal. After its last batch a part sends an ``end``
item with those counts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

# The webdataset tar reader of the bench stage (the pool is read exactly as `bench add` reads a tar).
from clipcurate.bench import IMAGE_EXTS, tar_samples
from clipcurate.core.imageload import ImageTooLarge, open_image

MAX_BAD_REASONS = 20


@dataclasses.dataclass(frozen=True)
class Part:
    group: str  # "pool/{shard}" or "bench/{name}"
    number: int
    total: int
    path: str  # a tar (pool) or a samples.parquet (bench)
    start: int = 0  # row range (bench)
    stop: int = 0


def expected_uids(tar: Path) -> dict[str, str] | None:
    """uid -> key of the samples the pool manifest says a pool tar holds (status ``success``), read
    from ``pool/manifest/{shard}.parquet`` beside ``pool/shards/{shard}.tar``; None without one."""
    path = tar.parent.parent / "manifest" / f"{tar.stem}.parquet"
    try:
        t = pq.read_table(path, columns=["uid", "key", "status"])
    except (OSError, ValueError, KeyError):  # no manifest (a tar made by hand), or not ours: no check
        return None
    return {u: k for u, k, s in zip(*(t.column(c).to_pylist() for c in ("uid", "key", "status")))
            if s == "success" and u}


def pool_records(path: str) -> Iterator[tuple[str, str | None, bytes | None, str, str | None]]:
    """(key, uid, image bytes, caption, why unreadable or None) per sample of a pool tar, in tar order.

    The tar is checked against the pool manifest: a tar cut short (inside a member or between two)
    ends the walk, and every sample the manifest lists that was not read comes last, with no bytes
    and its reason, so that it is counted as a skip rather than lost silently."""
    expected = expected_uids(Path(path))
    cut: list[str] = []
    seen: set[str] = set()
    for key, files in tar_samples(Path(path), on_error=lambda k, why: cut.append(k or "the first")):
        ext = next((e for e in files if "." + e in IMAGE_EXTS), None)
        uid = None
        if "json" in files:
            try:
                uid = json.loads(files["json"]).get("uid")
            except (ValueError, AttributeError):
                uid = None
        seen.add(uid)
        caption = files["txt"].decode("utf-8", "replace") if "txt" in files else ""
        yield key, uid, files.get(ext) if ext else None, caption, None
    if expected is None:
        if cut:  # no manifest to name the samples: one skip for the cut
            yield cut[0], None, None, "", "the tar is cut short inside this sample"
        return
    why = (f"in the pool manifest, not readable: the tar is cut short (inside sample {cut[0]})" if cut else
           "in the pool manifest but not in the tar (the tar ends early: truncated?)")
    for uid in sorted(set(expected) - seen, key=lambda u: expected[u]):
        yield expected[uid], uid, None, "", why


def bench_records(path: str, start: int, stop: int) -> Iterator[tuple[str, str, bytes | None, list[str], int]]:
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
        import torch.utils.data as tud  # torch: 2.6 s to import; runs in the DataLoader workers only

        info = tud.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for j, part in enumerate(self.parts):
            if j % nw == wid:
                yield from self._part(part)

    def _pixels(self, data: bytes):
        """Decode + the PIL half of the transform -> uint8 CHW tensor (or the full float transform)."""
        import torch  # torch: 2.6 s to import (see __iter__)

        with open_image(data) as im:  # the one pixel rule (ImageTooLarge: a counted skip)
            im.load()
            if self.split is None:
                return self.preprocess(im)
            out = self.split[0](im)
            if out.mode != "RGB":
                out = out.convert("RGB")
            return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)

    def _part(self, part: Part):
        import torch  # torch: 2.6 s to import (see __iter__)

        pool = part.group.startswith("pool/")
        records = pool_records(part.path) if pool else (
            (k, u, d, c, idx) for k, u, d, c, idx in bench_records(part.path, part.start, part.stop))
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
            reason = rec[4] if pool else None  # a sample the pool manifest lists that the tar lacks
            if reason is not None:
                pass
            elif data is None:
                reason = "no image"
            elif not uid:
                reason = "no uid in its .json"
            elif self.decode == "torch":
                try:  # the header only, for the pixel rule; the device decodes the bytes
                    open_image(data).close()
                    px = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                except ImageTooLarge as exc:
                    reason = str(exc)
                except Exception:  # noqa: BLE001 - not an image: let the device's decoder count it
                    px = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                try:
                    px = self._pixels(data)
                except ImageTooLarge as exc:
                    reason = str(exc)
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


def dataset_cls():
    """``_PartsDataset`` as a torch IterableDataset, built on first use (importing torch.utils.data
    at module import would slow every CLI command). Reachable as ``clipcurate.embed.reader.PartsDataset``
    so that spawned workers can unpickle it."""
    global _DATASET_CLS
    if _DATASET_CLS is None:
        from torch.utils.data import IterableDataset  # torch: 2.6 s to import, so not at module import

        class PartsDataset(_PartsDataset, IterableDataset):
            pass

        PartsDataset.__module__ = __name__
        _DATASET_CLS = PartsDataset
    return _DATASET_CLS


def __getattr__(name: str):
    if name == "PartsDataset":
        return dataset_cls()
    raise AttributeError(name)
