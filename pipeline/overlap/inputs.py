"""Reading what ``embed`` wrote: the model tags, the pool shards and the benchmark embeddings.

The file layout under ``embed/{tag}/`` is the contract between the two stages (docs/design.md;
:mod:`clipcurate.embed`); the embed package's own readers give the benchmark vectors and the
model.json, and the pool is read shard by shard (``pool/{shard}.npy`` + its ``.parquet`` of row →
uid), only the shards whose ``.done`` marker says they are finished. Every reader checks what the
search relies on — one model, rows 0..n-1, finite vectors — and fails with one line naming the
command that repairs it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate import embed
from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import read_json
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.search import check_unit_norm, check_vectors

model_info = embed.model_info  # embed/{tag}/model.json, through the embed stage's reader


def embed_root(ws: Workspace) -> Path:
    return ws.root / "embed"


def model_tags(ws: Workspace, kind: str = "clip") -> list[str]:
    """Tags under embed/ whose model.json says ``kind`` (a missing kind counts as clip)."""
    out = []
    for p in sorted(embed_root(ws).glob("*/model.json")):
        try:
            info = read_json(p)
        except (OSError, ValueError):
            continue
        if (info.get("kind") or "clip") == kind:
            out.append(p.parent.name)
    return out


def pick_tag(ws: Workspace, tag: str | None) -> str:
    tags = model_tags(ws)
    # Only models that embedded the pool can be searched (eval embeds benchmarks alone for the
    # checkpoints it evaluates); prefer those, fall back to all so the error names what is missing.
    with_pool = [t for t in tags if any((embed_root(ws) / t / "pool").glob("*.npy"))]
    if not tag and with_pool:
        tags = with_pool
    if tag:
        if not (embed_root(ws) / tag / "model.json").is_file():
            raise ClipcurateError(
                f"--model-tag {tag!r}: no embed/{tag}/model.json; embedded CLIP tags: {', '.join(tags) or 'none'}")
        return tag
    if not tags:
        raise MissingUpstream(f"CLIP embeddings ({embed_root(ws)}/*/model.json)", "clipcurate embed")
    if len(tags) > 1:
        log(f"overlap: several embedded models ({', '.join(tags)}); using {tags[0]} (choose with --model-tag)")
    return tags[0]


@dataclasses.dataclass
class PoolShard:
    name: str
    npy: Path
    meta: Path
    rows: int


@dataclasses.dataclass
class Bench:
    name: str
    vectors: np.ndarray  # float16 [m, d], rows in embedding order
    index: np.ndarray  # int64 benchmark index per row
    uid: np.ndarray  # object (str) benchmark uid per row


def npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return np.load(path, mmap_mode="r").shape
    except Exception as exc:
        raise ClipcurateError(f"{path}: not a readable .npy ({exc.__class__.__name__}); rerun `clipcurate embed --force`") from None


def pool_shards(ws: Workspace, tag: str) -> tuple[list[PoolShard], int]:
    """Finished pool shards (``.done`` present) in name order, and how many are unfinished."""
    folder = embed_root(ws) / tag / "pool"
    shards, unfinished = [], 0
    for npy in sorted(folder.glob("*.npy")):
        name = npy.name[:-len(".npy")]
        if "." in name or name.startswith("."):  # e.g. {shard}.text.npy
            continue
        if not (folder / f"{name}.done").exists():
            unfinished += 1
            continue
        shape = npy_shape(npy)
        shards.append(PoolShard(name, npy, folder / f"{name}.parquet", int(shape[0])))
    return shards, unfinished


def read_meta(path: Path, tag: str, n_rows: int, columns=("row", "uid", "index", "model_tag")) -> pa.Table:
    try:
        tbl = pq.read_table(path, columns=list(columns))
    except FileNotFoundError:
        raise ClipcurateError(f"{path}: missing (the rows ↔ uids of its .npy); rerun `clipcurate embed --force`") from None
    except Exception as exc:
        raise ClipcurateError(f"{path}: unreadable ({exc.__class__.__name__}); rerun `clipcurate embed --force`") from None
    tags = set(tbl.column("model_tag").unique().to_pylist())
    if tags - {tag}:
        raise ClipcurateError(
            f"{path}: made by model {sorted(tags - {tag})[0]!r}, not {tag!r}; embed everything with one model "
            f"(`clipcurate embed --force`)")
    rows = tbl.column("row").to_numpy()
    if tbl.num_rows != n_rows or (n_rows and (rows.min() != 0 or rows.max() != n_rows - 1)):
        raise ClipcurateError(
            f"{path}: {tbl.num_rows} rows for a .npy of {n_rows} vectors; rerun `clipcurate embed --force`")
    return tbl.take(pa.array(np.argsort(rows, kind="stable")))


def pool_uids(shard: PoolShard, tag: str) -> np.ndarray:
    return np.asarray(read_meta(shard.meta, tag, shard.rows).column("uid").to_pylist(), dtype=object)


def bench_names(ws: Workspace, tag: str) -> tuple[list[str], list[str]]:
    """Embedded benchmarks (``bench/{name}.done`` present), and the unfinished ones."""
    folder = embed_root(ws) / tag / "bench"
    found = sorted(p.parent.name for p in folder.glob("*/image.npy"))
    return [n for n in found if (folder / f"{n}.done").exists()], [n for n in found if not (folder / f"{n}.done").exists()]


def load_bench(ws: Workspace, tag: str, name: str) -> Bench:
    """One benchmark's image embeddings through the embed stage's reader, plus the checks that
    the search needs: not empty, finite, one model."""
    indices, uids, image, *_ = embed.load_bench(ws, tag, name)
    npy = embed_root(ws) / tag / "bench" / name / "image.npy"
    if image.ndim != 2 or len(image) == 0:
        raise ClipcurateError(
            f"benchmark {name!r} has no embedded images ({npy} has shape {tuple(image.shape)}): add samples with "
            f"`clipcurate bench add {name}` and rerun `clipcurate embed`")
    read_meta(npy.with_suffix(".parquet"), tag, len(image))  # same model, rows 0..n-1
    try:
        check_vectors(image.astype(np.float32), "benchmark embeddings")
        check_unit_norm(image, "benchmark embeddings")
    except ClipcurateError as exc:
        raise ClipcurateError(f"{npy}: {exc}") from None
    return Bench(name, image, np.asarray(indices, np.int64), np.asarray(uids, dtype=object))
