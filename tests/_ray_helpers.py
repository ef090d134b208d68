"""Toy per-shard work for the Ray tests, following the clipcurate.core.stage contract.

Each shard writes ``out/{shard}.npy`` (float16 vectors) and ``out/{shard}.parquet`` (uids) atomically;
every execution also drops a file in ``runs/`` so a test can count how often each shard really ran.
The functions are pickled by value (the tests folder is not importable on Ray workers).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path
from clipcurate.core.uid import make_uid

ROWS = 40


def shard_names(n: int) -> list[str]:
    return [f"{i:05d}" for i in range(n)]


def record_run(root: Path, shard: str) -> None:
    runs = Path(root) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{shard}.{os.getpid()}.{uuid.uuid4().hex[:8]}").touch()


def runs_of(root: Path) -> list[str]:
    runs = Path(root) / "runs"
    return sorted(p.name.split(".")[0] for p in runs.iterdir()) if runs.is_dir() else []


def toy_work(root: Path, shard: str, model: np.ndarray | None = None, sleep: float = 0.0,
             fail_once: str | None = None) -> dict:
    """The shard's outputs, written atomically; returns counts for the marker."""
    root = Path(root)
    record_run(root, shard)
    if fail_once is not None and shard == fail_once:
        flag = root / f"failed-{shard}"
        if not flag.exists():
            flag.touch()
            raise ClipcurateError(f"planted failure on shard {shard}")
    if sleep:
        time.sleep(sleep)
    rng = np.random.default_rng(int(shard))
    x = rng.standard_normal((ROWS, 8)).astype(np.float32)
    if model is not None:  # "embed" with a per-worker model
        x = x @ model
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [make_uid("toy", shard, i) for i in range(ROWS)]
    out = root / "out"
    with atomic_path(out / f"{shard}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, x.astype(np.float16))
    with atomic_path(out / f"{shard}.parquet") as tmp:
        pq.write_table(pa.table({"uid": uids, "row": list(range(ROWS))}), tmp)
    return {"rows": ROWS}


def load_model(root: Path, seed: int = 7) -> np.ndarray:
    """setup() for actors: counted, so a test can check it ran once per actor."""
    setups = Path(root) / "setups"
    setups.mkdir(parents=True, exist_ok=True)
    (setups / f"{os.getpid()}.{uuid.uuid4().hex[:8]}").touch()
    return np.random.default_rng(seed).standard_normal((8, 8)).astype(np.float32)


def read_outputs(root: Path) -> tuple[list[str], np.ndarray]:
    """All uids and vectors, in shard order."""
    out = Path(root) / "out"
    uids, vecs = [], []
    for p in sorted(out.glob("*.parquet")):
        uids += pq.read_table(p).column("uid").to_pylist()
        vecs.append(np.load(out / (p.stem + ".npy")))
    return uids, (np.concatenate(vecs) if vecs else np.zeros((0, 8), np.float16))
