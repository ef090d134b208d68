"""The embedding loop: one DataLoader pass over the parts of every shard and benchmark to embed.

A :class:`Feed` is opened around the stage runs of one ``embed`` call. On the first
:meth:`Feed.group` it starts the DataLoader (:mod:`clipcurate.embed.reader`: workers decode the
parts) and then, batch by batch, the main process does the *tensor half* of the transform on the
whole batch at once, on the device — ``x.float() / 255``, then ``(x - mean) / std``: the very
operations of torchvision's ToTensor + Normalize, so the pixels are bit-identical to
``preprocess(img)`` — then the model under autocast (bf16/fp16) with channels-last and pinned,
non-blocking copies on CUDA. Vectors accumulate per part; when all parts of a group (a pool shard,
a benchmark) have ended, the group is complete. ``group(name)`` returns the accumulators of that
group, reading on until it is complete (groups that complete first wait, in memory, for their own
call): the stage's ``run_shard`` asks for its shard and writes it, and the stage runner writes the
marker. So the workers keep decoding across shard boundaries while shards are written one by one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from contextlib import contextmanager
from typing import Sequence

from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError
from clipcurate.embed.encoders import split_preprocess
from clipcurate.embed.reader import MAX_BAD_REASONS, Part, dataset_cls

DECODERS = ("pil", "torch")


@dataclasses.dataclass
class Acc:
    """What one part accumulated."""

    uids: list = dataclasses.field(default_factory=list)
    index: list = dataclasses.field(default_factory=list)
    image: list = dataclasses.field(default_factory=list)
    text: list = dataclasses.field(default_factory=list)
    cap_index: list = dataclasses.field(default_factory=list)
    n_bad: int = 0
    bad: list = dataclasses.field(default_factory=list)
    ended: bool = False


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_workers(workers: int | None) -> int:
    """-1: one worker per core but one (the main process feeds the model), at most 16."""
    if workers is None or workers < 0:
        return max(1, min(16, cpu_count() - 1))
    return workers


@contextmanager
def cpu_threads(device: str, workers: int):
    """On CPU, leave the cores to the decoding workers: the model gets cores - workers threads (at
    least one). Oversubscribed OpenMP threads spin against the workers and against each other; on a
    busy 2-core machine one thread ran the tiny model 5-10x faster than two."""
    import torch  # torch: 2.6 s to import (see Feed)

    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cpu_count() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Feed:
    """The DataLoader pass over ``parts``, read group by group (see the module docstring).

    Use as a context manager: on a normal exit it reads what is left, fills ``timing`` (images,
    seconds, model_seconds, startup_seconds) and checks that no part was left unfinished."""

    def __init__(self, enc, parts: Sequence[Part], *, device: str, batch_size: int, workers: int,
                 decode: str = "pil", timing: dict | None = None):
        self.enc, self.parts, self.device = enc, list(parts), device
        self.batch_size, self.workers, self.decode, self.timing = batch_size, workers, decode, timing
        self.totals = {p.group: p.total for p in self.parts}
        self.groups: dict[str, dict[int, Acc]] = {}  # groups still receiving batches
        self.complete: dict[str, list[Acc]] = {}  # finished groups not asked for yet
        self.items = None
        self.stack = contextlib.ExitStack()
        self.n_images, self.t_model, self.t_start, self.t_first = 0, 0.0, 0.0, None

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.items is not None:
                for item in self.items:
                    self._take(item)
                if self.timing is not None:
                    self.timing.update(images=self.n_images, seconds=time.perf_counter() - self.t_start,
                                       model_seconds=self.t_model,
                                       startup_seconds=(self.t_first or self.t_start) - self.t_start)
                if self.groups:  # a worker died without finishing its parts: DataLoader raises before this
                    raise ClipcurateError(f"embed: unfinished parts {sorted(self.groups)}; rerun `clipcurate embed`")
        finally:
            self.items = None  # the DataLoader's workers go with their iterator
            self.stack.close()

    def _start(self) -> None:
        import torch  # torch: 2.6 s to import; every CLI command but the embedding ones stays without it
        from torch.utils.data import DataLoader

        enc = self.enc
        self.split = split = split_preprocess(enc.preprocess)
        tokenizer = getattr(enc, "tokenizer", None) if hasattr(enc, "encode_tokens") else None
        if self.decode not in DECODERS:
            raise ClipcurateError(f"decode {self.decode!r} is not one of {', '.join(DECODERS)}")
        if self.decode == "torch" and split is None:
            log("embed: --decode torch needs a resize/crop + ToTensor + Normalize transform; decoding with PIL")
            self.decode = "pil"
        ds = dataset_cls()(self.parts, enc.preprocess, split, tokenizer, self.batch_size, self.decode)
        workers = min(auto_workers(self.workers), len(self.parts))
        self.cuda = self.device.startswith("cuda")
        loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=self.cuda,
                            prefetch_factor=2 if workers else None, persistent_workers=False)
        if split is not None:
            self.mean = torch.tensor(split[1], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self.std = torch.tensor(split[2], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.t_start = time.perf_counter()
        self.stack.enter_context(cpu_threads(self.device, workers))
        self.items = iter(loader)

    def group(self, name: str) -> list[Acc]:
        """The accumulators of group ``name`` ("pool/{shard}" or "bench/{name}"), one per part in part order."""
        if self.items is None:
            self._start()
        while name not in self.complete:
            item = next(self.items, None)
            if item is None:
                raise ClipcurateError(f"embed: unfinished parts {sorted(self.groups) or [name]}; "
                                      f"rerun `clipcurate embed`")
            self._take(item)
        return self.complete.pop(name)

    def _take(self, item: dict) -> None:
        """One item from the workers: a batch to encode, or the end of a part."""
        if self.t_first is None:  # worker start-up (fork, first tar opened, first batch decoded)
            self.t_first = time.perf_counter()
        acc = self.groups.setdefault(item["group"], {}).setdefault(item["part"], Acc())
        if item["end"]:
            acc.ended = True
            acc.n_bad += item["n_bad"]
            acc.bad += item["bad"]
            parts_of = self.groups[item["group"]]
            if len(parts_of) == self.totals[item["group"]] and all(a.ended for a in parts_of.values()):
                self.complete[item["group"]] = [parts_of[k] for k in sorted(parts_of)]
                del self.groups[item["group"]]
            return
        self._encode(item, acc)

    def _encode(self, item: dict, acc: Acc) -> None:
        import torch  # torch: 2.6 s to import (see _start)

        enc, device, cuda = self.enc, self.device, self.cuda
        t0 = time.perf_counter()
        if "raw" in item:
            raws = list(torch.split(item["raw"], item["raw_sizes"]))
            x, keep, reasons = torch_decode(raws, device, self.split[0])
            if reasons:
                drop_rows(item, keep)
                acc.n_bad += len(reasons)
                acc.bad += [f"{item['group']}:{r}" for r in reasons][:MAX_BAD_REASONS]
            if x is None:
                return
        else:
            x = item["pixels"].to(device, non_blocking=cuda)
        if self.split is not None:
            # ToTensor + Normalize, batched: the same float ops in the same order.
            x = x.float().div(255).sub_(self.mean).div_(self.std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        v = enc.encode_tensors(x)
        acc.image.append(v.to(torch.float16).cpu().numpy())
        if item["tokens"] is not None:
            t = item["tokens"].to(device, non_blocking=cuda)
            acc.text.append(enc.encode_tokens(t).to(torch.float16).cpu().numpy())
        if self.timing is not None and cuda:
            torch.cuda.synchronize()
        self.t_model += time.perf_counter() - t0
        acc.uids += item["uids"]
        acc.index += item["index"]
        if item["cap_index"] is not None:
            acc.cap_index += item["cap_index"]
        self.n_images += len(item["uids"])


def torch_decode(raws: list, device: str, pil_half):
    """Decode a batch of encoded images with torchvision.io on ``device`` (nvJPEG on CUDA), then run
    the resize/crop half of the transform on same-size stacks. Returns (uint8 [n, 3, H, W] or None,
    kept row numbers, reasons for the rows dropped). Not bit-identical to PIL: another JPEG decoder
    and another resampler (differences of a few 1e-3 in cosine)."""
    import torch  # torch: 2.6 s to import (see Feed)
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


def drop_rows(item: dict, keep: list[int]) -> None:
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
