"""The layout ``embed`` writes — the contract with overlap and eval (docs/design.md) — and its readers::

    embed/{tag}/model.json                 {model, pretrained, tag, dim, kind: "clip"|"detector", ...}
    embed/{tag}/pool/{shard}.npy           float16 [n, d] L2-normalised image embeddings
    embed/{tag}/pool/{shard}.text.npy      float16 [n, d] caption embeddings, same rows (clip only)
    embed/{tag}/pool/{shard}.parquet       [embeddings] row -> uid, same row order
    embed/{tag}/pool/{shard}.done          completion marker, written last
    embed/{tag}/bench/{name}/image.npy + image.parquet
    embed/{tag}/bench/{name}/classes.npy   [C, d] zero-shot weights (classification, clip)
    embed/{tag}/bench/{name}/captions.npy + captions_index.npy   (caption benchmarks, clip)
    embed/{tag}/bench/{name}.done          marker (holds the benchmark's fingerprint)
    embed/_plan.json                       every {tag}/pool/{shard} and {tag}/bench/{name}, for `status`

Writers (:func:`save_npy`, :func:`write_rows`) write atomically; readers (:func:`model_info`,
:func:`iter_pool`, :func:`load_bench`) check shapes and row counts and name the command that
repairs a damaged file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from clipcurate.core import manifest
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_open, read_json, write_json, write_text
from clipcurate.core.stage import PLAN, SUCCESS, is_done
from clipcurate.core.workspace import Workspace

STAGE = "embed"
FOLDER = "embed"

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


def tag_dir(ws: Workspace, tag: str) -> Path:
    return ws.path(FOLDER, tag)


def write_model_json(ws: Workspace, enc) -> None:
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


def cat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float16) if chunks else np.zeros((0, dim), np.float16)


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, arr)


def write_rows(path: Path, tag: str, source: str, name: str, uids: list, index: list) -> None:
    manifest.write(EMBEDDINGS, {"model_tag": [tag] * len(uids), "source": [source] * len(uids),
                                "name": [name] * len(uids), "row": list(range(len(uids))), "uid": uids,
                                "index": index}, path)


def refresh_status(ws: Workspace) -> None:
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
