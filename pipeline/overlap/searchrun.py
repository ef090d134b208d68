"""The pool pass of ``overlap``, with its resume point: every pool shard once into a running top-k.

The search itself is :mod:`clipcurate.overlap.search` (one shard against all benchmark vectors,
floor pairs out, running top-k updated). This module runs it over the pool so that a kill at any
moment costs little and a rerun with the same inputs costs nothing:

- ``overlap/search/params.json`` says what the state holds: model tag, k, per-benchmark floors and a
  fingerprint of the inputs (benchmark vectors and uids, the pool shards' sizes and mtimes). A rerun
  whose inputs match, with a k no larger and floors no lower, reuses the state (its results contain
  the answer; they are filtered on the way out); anything else searches again from scratch.
- ``overlap/search/pairs/{shard}.parquet``: the floor pairs of each shard, written as soon as the
  shard is searched.
- ``overlap/search/state.npz``: the running top-k and the shards *folded* into it, written every
  ``checkpoint_s`` seconds and at the end. The ``{shard}.done`` markers in ``overlap/`` are the
  stage runner's; a marker counts only for a shard the state holds (:meth:`SearchRun.open` drops the
  others, so a kill between a marker and the next checkpoint searches those shards again).

Order on every shard: pair part → (state, when a checkpoint is due) → marker.

``--executor ray``: runs of consecutive shards are searched by Ray tasks (:class:`RaySearchRuns`,
a stage of its own under ``overlap/search/ray_topk/``), each writing its shards' pair parts and the
run's own top-k; the driver folds those top-ks into the running one **in pool order** and
checkpoints once. Every row of a top-k is sorted by (score desc, pool position asc) — a total order,
positions being unique — so the top-k of the union is the top-k of the parts, and the result equals
the local streaming pass.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_open, atomic_path, clean_temp, read_json, write_json
from clipcurate.core.stage import SUCCESS, Stage, marker
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.inputs import Bench, PoolShard
from clipcurate.overlap.search import Pairs, Searcher, TopK, check_unit_norm, merge_topk

RUNS_PER_SLOT = 4  # overlap on Ray: about this many runs of consecutive shards per parallel slot


def fingerprint(tag: str, benches: list[Bench], shards: list[PoolShard]) -> str:
    """What the search saw: the model tag, every benchmark's vectors and uids, each pool shard's
    name, rows, size and mtime (not its bytes: the pool is too big to hash on every run)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(tag.encode())
    for b in benches:
        h.update(b.name.encode() + b"\0" + str(b.vectors.shape).encode())
        h.update(hashlib.blake2b(np.ascontiguousarray(b.vectors).tobytes(), digest_size=16).digest())
        h.update("\x1f".join(b.uid.tolist()).encode())
    for s in shards:
        st = s.npy.stat()
        h.update(f"{s.name}:{s.rows}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _after_shard_hook(shard: str) -> None:
    """Called after a shard's pairs are written, before its checkpoint; tests make it crash."""


def _write_part(path: Path, p: Pairs) -> None:
    tbl = pa.table({"query": p.query, "pos": p.pos, "score": p.score})
    with atomic_path(path) as tmp:
        pq.write_table(tbl, tmp)


def _read_part(path: Path) -> Pairs:
    if not path.is_file():
        raise ClipcurateError(f"{path} is missing; rerun `clipcurate overlap --force`")
    t = pq.read_table(path)
    return Pairs(t.column("query").to_numpy().astype(np.int64), t.column("pos").to_numpy().astype(np.int64),
                 t.column("score").to_numpy().astype(np.float32))


class SearchRun:
    """The pool pass: :meth:`open` (parameters, resume point), :meth:`fold` per shard (the stage
    runner calls it through ``OverlapStage.run_shard``), :meth:`close` (last checkpoint, results)."""

    def __init__(self, ws: Workspace, tag: str, benches: list[Bench], shards: list[PoolShard], k: int,
                 floors: dict[str, float], backend: str, block_elems: int, checkpoint_s: float, force: bool):
        self.ws, self.tag, self.benches, self.shards = ws, tag, benches, shards
        self.k, self.floors, self.backend = k, floors, backend
        self.block_elems, self.checkpoint_s, self.force = block_elems or None, checkpoint_s, force
        self.folder = ws.root / "overlap"
        self.sdir = self.folder / "search"
        self.offsets = np.cumsum([0] + [s.rows for s in shards]).astype(np.int64)
        self.q_off = np.cumsum([0] + [len(b.vectors) for b in benches]).astype(np.int64)
        self.params = {"tag": tag, "k": k, "floors": floors, "fingerprint": fingerprint(tag, benches, shards),
                       "shards": [s.name for s in shards]}
        self.at = {s.name: i for i, s in enumerate(shards)}

    def _compatible(self, old: dict) -> bool:
        """Reuse a previous search when it saw the same data with a k at least as large and floors
        at least as low (its results then contain ours; they are filtered on the way out)."""
        return (old.get("tag") == self.tag and old.get("fingerprint") == self.params["fingerprint"]
                and old.get("k", 0) >= self.k
                and all(old.get("floors", {}).get(b, 9.0) <= f for b, f in self.floors.items()))

    def open(self) -> list[str]:
        """Start a new search or resume the one on disk; returns the shards still to search."""
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_temp(self.folder)
        pfile = self.sdir / "params.json"
        old = read_json(pfile) if pfile.is_file() else None
        if self.force or old is None or not self._compatible(old):
            if old is not None and not self.force:
                log("overlap: inputs or search parameters changed; searching the pool again")
            shutil.rmtree(self.sdir, ignore_errors=True)
            for s in self.folder.glob("*.done"):
                s.unlink()
            (self.folder / SUCCESS).unlink(missing_ok=True)
            (self.sdir / "pairs").mkdir(parents=True, exist_ok=True)
            write_json(pfile, self.params)
            old = self.params
        # The state's k and floors (a wider search than this run's is filtered in close()).
        self.k_state = int(old["k"])
        floors_state = old["floors"]
        floor_vec = np.concatenate([np.full(len(b.vectors), floors_state[b.name], np.float32) for b in self.benches])
        queries = np.concatenate([b.vectors for b in self.benches])
        self.searcher = Searcher(queries, self.k_state, floor_vec, backend=self.backend, block_elems=self.block_elems)
        self.folded: list[str] = []
        sfile = self.sdir / "state.npz"
        if sfile.is_file():
            with np.load(sfile, allow_pickle=False) as z:
                self.searcher.set_top(z["scores"], z["pos"])
                self.folded = [str(s) for s in z["folded"]]
        self.in_state = done = set(self.folded)
        for s in self.shards:  # a marker written after the last checkpoint: the state lacks that shard
            if s.name not in done:
                marker(self.folder, s.name).unlink(missing_ok=True)
        if done:
            log(f"overlap: {len(done)}/{len(self.shards)} pool shards already searched (resume point)")
        self.pending: list[str] = []
        self.t_last = time.monotonic()
        self.t0 = time.perf_counter()
        self.todo = [s.name for s in self.shards if s.name not in done]
        return list(self.todo)

    def fold(self, name: str) -> dict:
        """Search one pool shard into the running top-k; write its floor pairs; checkpoint when due."""
        if name in self.in_state:  # already in the state (folded by the Ray pass)
            return {}
        i = self.at[name]
        s = self.shards[i]
        searcher = self.searcher
        x = np.load(s.npy)
        if x.ndim != 2 or x.shape[1] != searcher.d:
            raise ClipcurateError(
                f"{s.npy}: pool vectors of dimension {x.shape[-1] if x.ndim else '?'} but the benchmark "
                f"vectors have {searcher.d}; embed both with the same model (`clipcurate embed --force`)")
        try:
            check_unit_norm(x, "pool embeddings")
            pairs = searcher.add(x, int(self.offsets[i]))
        except ClipcurateError as exc:
            raise ClipcurateError(f"{s.npy}: {exc}") from None
        del x
        _write_part(self.sdir / "pairs" / f"{s.name}.parquet", pairs)
        _after_shard_hook(s.name)
        self.pending.append(s.name)
        if time.monotonic() - self.t_last >= self.checkpoint_s:
            self.checkpoint()
        return {}

    def checkpoint(self) -> None:
        """Fold the pending shards into the resume point: ``state.npz`` (running top-k + folded)."""
        self.folded += self.pending
        self.in_state.update(self.pending)
        self.pending = []
        top = self.searcher.top
        with atomic_path(self.sdir / "state.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, scores=top.scores, pos=top.pos, folded=np.array(self.folded, dtype=str))
        self.t_last = time.monotonic()

    def close(self) -> tuple[TopK, Pairs, dict]:
        """The last checkpoint, then this run's top-k and floor pairs (filtered to its k and floors)."""
        if self.pending:
            self.checkpoint()
        seconds = time.perf_counter() - self.t0
        parts = [_read_part(self.sdir / "pairs" / f"{s.name}.parquet") for s in self.shards]
        pairs = Pairs.concat(parts)
        # filter to this run's k and floors (the state may come from a wider search)
        final = self.searcher.top
        top = TopK(final.scores[:, :self.k].copy(), final.pos[:, :self.k].copy())
        floor_now = np.concatenate([np.full(len(b.vectors), self.floors[b.name], np.float32) for b in self.benches])
        keep = pairs.score >= floor_now[pairs.query]
        pairs = Pairs(pairs.query[keep], pairs.pos[keep], pairs.score[keep])
        stats = {"backend": self.searcher.backend, "pairs_scored": self.searcher.pairs_scored, "seconds": seconds,
                 "shards_searched": len(self.todo), "shards_total": len(self.shards)}
        return top, pairs, stats

    def search_on_ray(self, executor) -> None:
        """``overlap --executor ray``: the shards still to search, as runs of consecutive shards on
        Ray tasks (:class:`RaySearchRuns`); their top-ks folded here in pool order, one checkpoint.

        A top-k is m × k entries (1M benchmark rows × k=10 → 120 MB) whatever the size of the run,
        so a task takes several shards when there are many: about :data:`RUNS_PER_SLOT` runs per
        parallel slot. Each run's top-k and marker stay in ``overlap/search/ray_topk/``, so a driver
        killed before the merge finds the finished runs there."""
        todo = [self.at[n] for n in self.todo]
        if not todo:
            return
        searcher = self.searcher
        gpu = searcher.backend == "torch"  # the torch backend searches on a GPU: one per task when present
        per_task = max(1, len(todo) // (RUNS_PER_SLOT * executor.parallelism(gpu=gpu)))
        groups = [list(todo[i:i + per_task]) for i in range(0, len(todo), per_task)]
        runs = {f"{self.shards[g[0]].name}-{self.shards[g[-1]].name}":
                [(self.shards[i].name, str(self.shards[i].npy), int(self.offsets[i])) for i in g] for g in groups}
        stage = RaySearchRuns(self.sdir / "ray_topk", searcher, self.block_elems, runs, self.sdir / "pairs")
        executor.run_stage(stage, gpu=gpu)
        for name in runs:  # pool order: a deterministic merge
            with np.load(stage.folder / f"{name}.npz", allow_pickle=False) as z:
                scores, pos = z["scores"], z["pos"]
                searcher.pairs_scored += int(z["pairs_scored"])
            rows, cols = np.nonzero(pos >= 0)
            merge_topk(searcher.top, None, rows.astype(np.int64), pos[rows, cols], scores[rows, cols])
        self.pending += [self.shards[i].name for i in todo]
        self.checkpoint()


class RaySearchRuns(Stage):
    """Runs of consecutive pool shards against all benchmark vectors, one Ray task per run.

    A task streams its shards through a Searcher like the driver's (same backend, block sizes and
    floors), exactly as the local pass does, writes each shard's floor pairs where the local pass
    writes them (``overlap/search/pairs/{shard}.parquet``) and the run's top-k next to its marker
    (``overlap/search/ray_topk/{first}-{last}.npz``). The object is pickled to the tasks once."""

    name = "overlap"
    description = "overlap search on ray"

    def __init__(self, folder: Path, searcher: Searcher, block_elems: int | None, runs: dict, pairs_dir: Path):
        super().__init__(folder)
        self.q, self.k, self.floor, self.backend = searcher.q, searcher.k, searcher.floor, searcher.backend
        self.block_elems, self.runs, self.pairs_dir = block_elems, runs, Path(pairs_dir)

    def shards(self) -> list[str]:
        return list(self.runs)

    def run_shard(self, name: str) -> dict:
        # Ray hands numpy arrays over read-only (zero-copy from its object store); torch wants to own one.
        q = self.q if self.q.flags.writeable else self.q.copy()
        s = Searcher(q, self.k, self.floor, backend=self.backend, block_elems=self.block_elems)
        pairs = 0
        for shard, npy, offset in self.runs[name]:
            x = np.load(npy)
            try:
                check_unit_norm(x, "pool embeddings")
                part = s.add(x, offset)
            except ClipcurateError as exc:
                raise ClipcurateError(f"{npy}: {exc}") from None
            _write_part(self.pairs_dir / f"{shard}.parquet", part)
            pairs += len(part)
            del x
        with atomic_open(self.folder / f"{name}.npz", "wb") as fh:
            np.savez(fh, scores=s.top.scores, pos=s.top.pos, pairs_scored=np.int64(s.pairs_scored))
        return {"shards": len(self.runs[name]), "pairs": pairs, "pairs_scored": int(s.pairs_scored)}
