"""Stage ``embed``: open_clip (or copy-detector) embeddings of the pool and of the benchmarks.

What it writes is the layout of :mod:`clipcurate.embed.layout` (the contract with overlap and eval).
How it runs, per call (:func:`embed_images`):

1. Two stages in the sense of :class:`clipcurate.core.stage.Stage`, one per folder:
   :class:`PoolEmbed` (``embed/{tag}/pool``, a shard per pool tar) and :class:`BenchEmbed`
   (``embed/{tag}/bench``, a shard per benchmark). Each first says what is left to do
   (:meth:`PoolEmbed.todo`: no marker, or a marker for a tar that changed since — re-downloaded;
   :meth:`BenchEmbed.todo`: no marker, or a benchmark re-added with other samples), deleting the
   stale markers.
2. One :class:`~clipcurate.embed.feed.Feed` — a DataLoader pass over the *parts* of everything left
   (:mod:`clipcurate.embed.reader`: a pool tar is one part, a benchmark is cut into parts of
   ``PART_ROWS`` rows so that several workers share it) — is opened around both stage runs.
3. The stage runner calls ``run_shard`` for each shard left: it takes that shard's vectors from the
   feed, writes its files atomically and returns what the marker keeps; the runner writes the
   ``.done`` marker after the files, the ``_plan.json`` before and ``_SUCCESS`` after all of them.
   A kill -9 at any moment loses at most the shards in flight, and a rerun skips every finished one.

``--executor ray``: the pool stage runs on a pool of Ray actors (``run_stage(actors=True)``): each
actor gets its own copy of the :class:`PoolEmbed` object, builds the encoder once (the same model,
seeded, on the actor's device — its GPU when Ray gave it one) and embeds whole shards with a feed of
its own. The driver keeps the benchmarks.

Any image encoder can use this path (:mod:`clipcurate.embed.encoders`); the copy detector's
descriptors (``clipcurate embed --detector PATH``) are written in the same layout this way.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipcurate.core import config
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import read_json
from clipcurate.core.models import ModelSpec, resolve_device
from clipcurate.core.stage import PLAN, Stage, done_info, is_done, marker
from clipcurate.core.workspace import Workspace
from clipcurate.embed.encoders import ClipEncoder, clip_encoder, device_of, load_encoder, model_spec
from clipcurate.embed.feed import Acc, Feed
from clipcurate.embed.layout import STAGE, cat, refresh_status, save_npy, tag_dir, write_model_json, \
    write_rows
from clipcurate.embed.reader import MAX_BAD_REASONS, Part

# The bench stage's readers (benchmark list, samples, class prompts); see embed/reader.py for why
# the module and not the package.
from clipcurate import bench as benchmod

PART_ROWS = 1024

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


def _summarise(summary: dict | None, accs: list[Acc], n: int) -> tuple[int, list[str]]:
    """(bad images, their first reasons) of a group; adds them to the run's summary when given."""
    n_bad = sum(a.n_bad for a in accs)
    bad = [r for a in accs for r in a.bad][:MAX_BAD_REASONS]
    if summary is not None:
        summary["images"] += n
        summary["bad"] += n_bad
        if n_bad:
            summary["groups_bad"] += 1
            summary["example"] = summary["example"] or bad[0]
    return n_bad, bad


# ---------------------------------------------------------------------------------------------
# The pool


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


class PoolEmbed(Stage):
    """``embed/{tag}/pool``: a shard per pool tar → ``{shard}.npy``, ``.text.npy`` (text encoders)
    and ``.parquet`` (row → uid); the marker keeps the counts and the tar's size and mtime.

    On the driver the shards come from the shared :attr:`feed`. Pickled to a Ray actor, the object
    leaves the feed (and the driver's model, when a factory can build it again) behind: the actor
    builds the encoder once, on first use, and reads each shard with a feed of its own."""

    name = STAGE

    def __init__(self, folder: Path, tars: dict[str, Path], enc, *, device: str, batch_size: int, workers: int,
                 force: bool = False, encoder_factory=None):
        super().__init__(folder, root=folder.parents[2])  # embed/{tag}/pool: the workspace is three up
        self.reads = ("pool",)  # the runner checks it is complete
        self.tars, self.enc, self.device = tars, enc, device
        self.batch_size, self.workers, self.redo = batch_size, workers, force
        if encoder_factory is None and isinstance(enc, ClipEncoder):  # the same model, on the actor's device
            encoder_factory = functools.partial(clip_encoder, enc.lm.spec, "auto", enc.lm.precision)
        self.encoder_factory = encoder_factory
        self.tag, self.dim, self.text = enc.tag, enc.dim, hasattr(enc, "encode_tokens")
        self.description = f"embed {enc.tag}"
        self.feed: Feed | None = None
        self.summary: dict | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, feed=None, summary=None)
        if self.encoder_factory is not None:
            state["enc"] = None  # built again on the actor (encoder())
        return state

    def encoder(self):
        if self.enc is None:
            self.enc = self.encoder_factory()
        return self.enc

    def shards(self) -> list[str]:
        return list(self.tars)

    def todo(self) -> list[str]:
        """Shards without a valid marker (``force``: all of them); their stale markers are deleted."""
        todo = []
        for s, tar in self.tars.items():
            if self.redo or not _pool_done(self.folder, s, tar):
                marker(self.folder, s).unlink(missing_ok=True)
                todo.append(s)
        if len(todo) < len(self.tars):
            log(f"embed: {len(self.tars) - len(todo)}/{len(self.tars)} pool shards already done, skipping them")
        return todo

    def parts(self, shards: Sequence[str]) -> list[Part]:
        return [Part(f"pool/{s}", 0, 1, str(self.tars[s])) for s in shards]

    def run_shard(self, shard: str) -> dict:
        enc = self.encoder()
        if self.feed is not None:
            accs = self.feed.group(f"pool/{shard}")
        else:  # a Ray actor: this shard alone, on the actor's device
            with Feed(enc, self.parts([shard]), device=device_of(enc, "auto"), batch_size=self.batch_size,
                      workers=self.workers) as feed:
                accs = feed.group(f"pool/{shard}")
        uids = [u for a in accs for u in a.uids]
        n_bad, bad = _summarise(self.summary, accs, len(uids))
        save_npy(self.folder / f"{shard}.npy", cat([c for a in accs for c in a.image], self.dim))
        if self.text:
            save_npy(self.folder / f"{shard}.text.npy", cat([c for a in accs for c in a.text], self.dim))
        write_rows(self.folder / f"{shard}.parquet", self.tag, "pool", shard, uids, [None] * len(uids))
        st = self.tars[shard].stat()
        return {"n": len(uids), "n_bad": n_bad, "bad": bad, "tar_size": st.st_size, "tar_mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# The benchmarks


def class_weights(enc, classes: list[str], templates: list[str], device: str, batch_size: int) -> np.ndarray:
    """Zero-shot weights: per class, the mean of its normalised prompt embeddings, renormalised."""
    if not classes:
        return np.zeros((0, enc.dim), np.float16)
    texts = benchmod.prompts(classes, templates)
    vecs = []
    for i in range(0, len(texts), batch_size):
        vecs.append(enc.encode_tokens(enc.tokenizer(texts[i:i + batch_size]).to(device)).cpu().numpy())
    v = np.concatenate(vecs).astype(np.float32).reshape(len(classes), len(templates), enc.dim).mean(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
    return v.astype(np.float16)


class BenchEmbed(Stage):
    """``embed/{tag}/bench``: a shard per benchmark → ``{name}/image.npy`` + ``image.parquet`` and,
    for text encoders, ``classes.npy`` (zero-shot weights) or ``captions.npy`` + ``captions_index.npy``;
    the marker keeps the counts and the benchmark's fingerprint.

    The plan keeps the benchmarks embedded by earlier calls (``embed --bench A`` then
    ``embed --bench B``: both planned), so ``_SUCCESS`` means every planned benchmark is done."""

    name = STAGE

    def __init__(self, folder: Path, ws: Workspace, names: Sequence[str], enc, *, device: str, batch_size: int,
                 force: bool = False):
        super().__init__(folder, root=ws.root)
        self.reads = ("benchmarks",)  # the runner checks it is complete
        self.ws, self.names, self.enc, self.device = ws, list(names), enc, device
        self.batch_size, self.redo = batch_size, force
        self.description = f"embed {enc.tag} benchmarks"
        self.meta: dict[str, Any] = {}
        self.feed: Feed | None = None
        self.summary: dict | None = None
        plan = read_json(folder / PLAN).get("shards", []) if (folder / PLAN).is_file() else []
        self.planned = [n for n in plan if is_done(folder, n)]

    def shards(self) -> list[str]:
        return sorted(set(self.planned) | set(self.names))

    def todo(self) -> list[str]:
        """Benchmarks without a marker, or whose marker holds another fingerprint (``force``: all
        asked for); their stale markers and outputs are deleted."""
        todo, skipped = [], []
        for n in self.names:
            b = benchmod.load(self.ws, n, columns=["uid"])
            if not self.redo and is_done(self.folder, n) and \
                    done_info(self.folder, n).get("fingerprint") == b.meta["fingerprint"]:
                skipped.append(n)
                continue
            marker(self.folder, n).unlink(missing_ok=True)
            out = self.folder / n
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            self.meta[n] = b
            todo.append(n)
        if skipped:
            log(f"embed: {len(skipped)} benchmark(s) already embedded by {self.enc.tag}, skipping them: "
                f"{', '.join(skipped)} (--force redoes them)")
        return todo

    def parts(self, names: Sequence[str]) -> list[Part]:
        parts = []
        for n in names:
            path = benchmod.bench_dir(self.ws, n) / "samples.parquet"
            nrows = self.meta[n].samples.num_rows
            chunks = max(1, -(-nrows // PART_ROWS))
            parts += [Part(f"bench/{n}", i, chunks, str(path), i * PART_ROWS, min(nrows, (i + 1) * PART_ROWS))
                      for i in range(chunks)]
        return parts

    def run_shard(self, name: str) -> dict:
        enc, out, b = self.enc, self.folder / name, self.meta[name]
        accs = self.feed.group(f"bench/{name}")
        uids = [u for a in accs for u in a.uids]
        n_bad, bad = _summarise(self.summary, accs, len(uids))
        save_npy(out / "image.npy", cat([c for a in accs for c in a.image], enc.dim))
        write_rows(out / "image.parquet", enc.tag, "bench", name, uids, [i for a in accs for i in a.index])
        n_caps = 0
        if hasattr(enc, "encode_tokens"):
            if b.kind == "classification":
                save_npy(out / "classes.npy", class_weights(enc, b.classes, b.templates, self.device, self.batch_size))
            else:
                caps = cat([c for a in accs for c in a.text], enc.dim)
                cap_index = np.asarray([i for a in accs for i in a.cap_index], dtype=np.int64)
                n_caps = len(cap_index)
                save_npy(out / "captions.npy", caps)
                save_npy(out / "captions_index.npy", cap_index)
        return {"n": len(uids), "n_bad": n_bad, "bad": bad, "n_captions": n_caps, "fingerprint": b.meta["fingerprint"]}


# ---------------------------------------------------------------------------------------------
# Public API


def embed_images(ws: Workspace, enc, *, pool: bool = True, benchmarks: Sequence[str] | None = None,
                 device: str = "cpu", batch_size: int = 256, workers: int = -1, force: bool = False,
                 timing: dict | None = None, executor=None, encoder_factory=None, decode: str = "pil") -> str:
    """The generic path: any encoder with tag, dim, kind, info, preprocess, encode_tensors(x)
    (and, for text, tokenizer + encode_tokens) writes embed/{tag}/ in the contract layout.
    ``benchmarks=None`` means all benchmarks, ``[]`` none."""
    if hasattr(enc, "model") and not isinstance(enc, ClipEncoder):
        enc.model.to(device).eval()  # e.g. the detector's Descriptor
    if batch_size < 1:
        raise ClipcurateError(f"--batch-size {batch_size}: must be at least 1")
    root = tag_dir(ws, enc.tag)
    root.mkdir(parents=True, exist_ok=True)
    write_model_json(ws, enc)

    # 1. What to do: pool shards without a valid marker, benchmarks whose marker is stale.
    stages, parts = [], []
    summary = {"images": 0, "bad": 0, "groups_bad": 0, "example": ""}
    on_ray = executor is not None and executor.kind != "local"
    if pool:
        ps = PoolEmbed(root / "pool", dict(pool_shards(ws)), enc, device=device, batch_size=batch_size,
                       workers=workers, force=force, encoder_factory=encoder_factory)
        ps.folder.mkdir(parents=True, exist_ok=True)
        todo = ps.todo()
        stages.append(ps)
        parts += [] if on_ray else ps.parts(todo)
    if benchmarks is None or len(benchmarks):
        available = [m["name"] for m in benchmod.list_benchmarks(ws)]
        names = available if benchmarks is None else list(benchmarks)
        if benchmarks is not None:
            for n in names:
                benchmod.load(ws, n, columns=["uid"])  # one clear line if missing
        elif not available and not pool:
            raise MissingUpstream(f"benchmarks ({ws.path('benchmarks')})", "clipcurate bench add NAME --from SOURCE")
        bs = BenchEmbed(root / "bench", ws, names, enc, device=device, batch_size=batch_size, force=force)
        bs.folder.mkdir(parents=True, exist_ok=True)
        parts += bs.parts(bs.todo())
        stages.append(bs)

    # 2. Embed: one feed for every part left; each stage takes its shards from it, in its order.
    with Feed(enc, parts, device=device, batch_size=batch_size, workers=workers, decode=decode,
              timing=timing) as feed:
        for stage in stages:
            stage.feed, stage.summary = feed, summary
            if on_ray and isinstance(stage, PoolEmbed):  # --executor ray: pool shards on Ray actors
                stage.description = f"embed {enc.tag} on ray"
                left = [s for s in stage.shards() if not is_done(stage.folder, s)]
                executor.run_stage(stage, actors=True, gpu=True)
                summary["images"] += sum(int(done_info(stage.folder, s).get("n", 0)) for s in left)
            else:
                stage.run()
    refresh_status(ws)
    if summary["bad"]:
        warn(f"embed: skipped {summary['bad']} unreadable sample(s) in {summary['groups_bad']} shard(s)/benchmark(s) "
             f"(listed in their .done markers), e.g. {summary['example']}")
    if parts:
        log(f"embed {enc.tag}: {summary['images']} images embedded, {summary['bad']} skipped")
    return enc.tag


def embed_pool(ws: Workspace, spec: ModelSpec, device: str = "auto", precision: str = "auto",
               batch_size: int = 256, workers: int = -1, force: bool = False, encoder=None,
               timing: dict | None = None, executor=None, decode: str = "pil") -> str:
    """Embed every downloaded pool shard (images and captions); returns the model tag."""
    enc = encoder or clip_encoder(spec, device, precision)
    return embed_images(ws, enc, pool=True, benchmarks=[], device=device_of(enc, device), batch_size=batch_size,
                        workers=workers, force=force, timing=timing, executor=executor, decode=decode,
                        encoder_factory=None if encoder else (lambda: clip_encoder(spec, device, precision)))


def embed_benchmarks(ws: Workspace, spec: ModelSpec, names: Sequence[str] | None = None, device: str = "auto",
                     precision: str = "auto", batch_size: int = 256, workers: int = -1, force: bool = False,
                     encoder=None, decode: str = "pil") -> str:
    """Embed benchmark images, class prompts (zero-shot weights) and captions; returns the model tag."""
    enc = encoder or clip_encoder(spec, device, precision)
    return embed_images(ws, enc, pool=False, benchmarks=names, device=device_of(enc, device),
                        batch_size=batch_size, workers=workers, force=force, decode=decode)


def run(ws: Workspace, *, model: str = DEFAULTS["model"], pretrained: str | None = DEFAULTS["pretrained"],
        detector: str | None = None, pool: bool | None = None, benchmarks: Sequence[str] | None = None,
        device: str = "auto", precision: str = "auto", batch_size: int = 256, workers: int = -1,
        decode: str = "pil", force: bool = False, executor=None, timing: dict | None = None) -> str:
    """``clipcurate embed`` (and the ``embed`` step of ``clipcurate run``) from command-level
    arguments; returns the model tag.

    CLIP embeddings of ``model`` + ``pretrained`` (None, "" or "random": seeded random weights, see
    :func:`~clipcurate.embed.encoders.model_spec`) or, with ``detector`` (a ``detector.pt`` or its
    run folder), that copy detector's descriptors. ``pool=None``: the pool when ``pool/shards`` has
    tars, or when no benchmark is asked for or present. ``benchmarks``: None = all, [] = none."""
    if pool is None:  # default: the pool when there is one; a workspace with only benchmarks is fine too
        pool = any(ws.path("pool", "shards").glob("*.tar")) or benchmarks == [] or not benchmod.list_benchmarks(ws)
    if pool:  # a missing upstream is said before any model is loaded
        pool_shards(ws)
    common = dict(pool=pool, benchmarks=benchmarks, batch_size=batch_size, workers=workers, force=force,
                  executor=executor, decode=decode, timing=timing)
    if detector:
        enc = load_encoder("detector", detector)
        return embed_images(ws, enc, device=resolve_device(device), **common)
    spec = model_spec(model, pretrained)
    enc = clip_encoder(spec, device, precision)
    return embed_images(ws, enc, device=enc.device, encoder_factory=lambda: clip_encoder(spec, device, precision),
                        **common)
